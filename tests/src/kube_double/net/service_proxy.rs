//! What kube-proxy does for a ClusterIP Service, on loopback: one listener per
//! Service port on `127.0.0.1:<ephemeral>` (the cluster IP itself is not routable
//! from the host), each accepted connection spliced to one ready endpoint chosen
//! round robin when it arrives (kube-proxy balances connections, not requests: a
//! client that keeps a connection open stays on one pod). With no ready endpoint
//! the connection is reset at once, as kube-proxy's REJECT rule for a Service
//! without endpoints refuses it; a pod that refuses is reset the same way.
//!
//! Listeners follow the stored Services (`reconcile`): created with the Service,
//! kept while a port stays (its address is stable across updates), closed — and
//! their connections cut — when the port or the Service goes.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use super::endpoints;
use crate::kube_double::pod_runtime::Ctx;

const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

struct PortListener {
    addr: SocketAddr,
    stop: CancellationToken,
}

struct ServiceListeners {
    uid: String,
    ports: HashMap<i32, PortListener>,
}

/// Every Service's listeners, by namespace and name.
#[derive(Default)]
pub struct Proxies(Mutex<HashMap<(String, String), ServiceListeners>>);

impl Proxies {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<(String, String), ServiceListeners>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn addr(&self, ns: &str, name: &str, port: i32) -> Option<SocketAddr> {
        self.lock()
            .get(&(ns.to_owned(), name.to_owned()))?
            .ports
            .get(&port)
            .map(|l| l.addr)
    }

    fn keys(&self) -> Vec<(String, String)> {
        self.lock().keys().cloned().collect()
    }
}

/// The TCP ports a stored Service should listen on (none when headless).
fn wanted(svc: &Service) -> Vec<i32> {
    let Some(spec) = &svc.spec else {
        return Vec::new();
    };
    if spec.cluster_ip.as_deref() == Some("None") {
        return Vec::new();
    }
    spec.ports
        .iter()
        .flatten()
        .filter(|p| p.protocol.as_deref().unwrap_or("TCP") == "TCP")
        .map(|p| p.port)
        .collect()
}

/// Brings one Service's listeners in line with the store.
pub fn reconcile(ctx: &Arc<Ctx>, ns: &str, name: &str) {
    let key = (ns.to_owned(), name.to_owned());
    let svc = ctx.store.get::<Service>(ns, name);
    let mut all = ctx.net.proxies.lock();
    let Some(svc) = svc else {
        if let Some(gone) = all.remove(&key) {
            close(gone);
            ctx.net.balance.forget(&balance_prefix(ns, name));
        }
        return;
    };
    let uid = svc.metadata.uid.clone().unwrap_or_default();
    if all.get(&key).is_some_and(|l| l.uid != uid) {
        // Deleted and created again between two reconciles: a new object.
        close(all.remove(&key).expect("checked above"));
    }
    let entry = all.entry(key).or_insert_with(|| ServiceListeners {
        uid,
        ports: HashMap::new(),
    });
    let want = wanted(&svc);
    entry.ports.retain(|port, l| {
        let keep = want.contains(port);
        if !keep {
            l.stop.cancel();
        }
        keep
    });
    for port in want {
        if entry.ports.contains_key(&port) {
            continue;
        }
        match listen(ctx, ns, name, port) {
            Ok(l) => {
                entry.ports.insert(port, l);
            }
            Err(e) => tracing::error!(service = %name, port, "kube double: cannot listen: {e}"),
        }
    }
}

/// Reconciles every Service the store or the listeners know.
pub fn reconcile_all(ctx: &Arc<Ctx>) {
    let (services, _) = ctx.store.list::<Service>(None);
    let mut keys: Vec<(String, String)> = services
        .iter()
        .map(|s| {
            (
                s.metadata.namespace.clone().unwrap_or_default(),
                s.metadata.name.clone().unwrap_or_default(),
            )
        })
        .collect();
    keys.extend(ctx.net.proxies.keys());
    keys.sort();
    keys.dedup();
    for (ns, name) in keys {
        reconcile(ctx, &ns, &name);
    }
}

fn close(listeners: ServiceListeners) {
    for l in listeners.ports.values() {
        l.stop.cancel();
    }
}

fn balance_prefix(ns: &str, name: &str) -> String {
    format!("svc/{ns}/{name}/")
}

fn listen(ctx: &Arc<Ctx>, ns: &str, name: &str, port: i32) -> std::io::Result<PortListener> {
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    std_listener.set_nonblocking(true)?;
    let listener = TcpListener::from_std(std_listener)?;
    let addr = listener.local_addr()?;
    let stop = ctx.shutdown.child_token();
    tokio::spawn(accept_loop(
        ctx.clone(),
        listener,
        ns.to_owned(),
        name.to_owned(),
        port,
        stop.clone(),
    ));
    Ok(PortListener { addr, stop })
}

async fn accept_loop(
    ctx: Arc<Ctx>,
    listener: TcpListener,
    ns: String,
    name: String,
    port: i32,
    stop: CancellationToken,
) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.cancelled() => return,
        };
        let conn = match accepted {
            Ok((conn, _)) => conn,
            Err(e) => {
                // Out of file descriptors and the like: pause rather than spin.
                tracing::warn!(service = %name, "kube double: accept: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let (ctx, ns, name, stop) = (ctx.clone(), ns.clone(), name.clone(), stop.clone());
        tokio::spawn(async move {
            tokio::select! {
                _ = proxy(&ctx, conn, &ns, &name, port) => {}
                _ = stop.cancelled() => {}
            }
        });
    }
}

/// Closes a connection with a reset (what the client of a refused Service sees).
fn reset(conn: TcpStream) {
    let _ = conn.set_zero_linger();
    drop(conn);
}

/// The endpoint the next connection to this Service port goes to.
pub fn pick(ctx: &Ctx, ns: &str, name: &str, port: i32) -> Option<endpoints::Endpoint> {
    let svc = ctx.store.get::<Service>(ns, name)?;
    let sp = endpoints::port(&svc, port)?;
    let ready = endpoints::ready(ctx, ns, &svc, sp);
    if ready.is_empty() {
        return None;
    }
    let key = format!("{}{port}", balance_prefix(ns, name));
    let i = ctx.net.balance.pick(&key, ready.len());
    ready.into_iter().nth(i)
}

async fn proxy(ctx: &Ctx, mut conn: TcpStream, ns: &str, name: &str, port: i32) {
    let Some(endpoint) = pick(ctx, ns, name, port) else {
        return reset(conn);
    };
    let mut upstream =
        match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(endpoint.addr)).await {
            Ok(Ok(s)) => s,
            _ => return reset(conn),
        };
    let _ = conn.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let _ = tokio::io::copy_bidirectional(&mut conn, &mut upstream).await;
}
