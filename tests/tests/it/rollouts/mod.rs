//! Progressive delivery end to end: a real server process drives rollouts in the
//! Kubernetes API-server double (Deployments whose pods run on Docker, Services that
//! route, an HTTPRoute gateway that routes real HTTP), judged by real HTTP endpoints
//! and a real Prometheus, while these tests send real requests through the gateway.

mod analysis;
mod canary;
mod operations;
mod promotion;
mod readme;
mod restart;
mod strategies;
mod web;

pub use tests::rollout_rig as rig;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::get;

/// Answers counted by version.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Counts {
    pub v1: u64,
    pub v2: u64,
    pub failed: u64,
}

impl Counts {
    /// The new version's share, in percent.
    pub fn v2_share(&self) -> f64 {
        let total = self.v1 + self.v2;
        if total == 0 {
            return 0.0;
        }
        self.v2 as f64 * 100.0 / total as f64
    }
}

fn count(c: &mut Counts, answer: Result<(u16, String), String>) {
    match answer {
        Ok((200, body)) if body.trim() == "v1" => c.v1 += 1,
        Ok((200, body)) if body.trim() == "v2" => c.v2 += 1,
        _ => c.failed += 1,
    }
}

async fn get_once(
    http: &reqwest::Client,
    url: &str,
    header: Option<(&str, &str)>,
) -> Result<(u16, String), String> {
    let mut req = http.get(url);
    if let Some((k, v)) = header {
        req = req.header(k, v);
    }
    let r = req.send().await.map_err(|e| e.to_string())?;
    let status = r.status().as_u16();
    Ok((status, r.text().await.map_err(|e| e.to_string())?))
}

/// `n` requests to `path` through the gateway, one after another.
pub async fn sample(
    gateway: SocketAddr,
    path: &str,
    n: usize,
    header: Option<(&str, &str)>,
) -> Counts {
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .unwrap();
    let url = format!("http://{gateway}{path}");
    let mut c = Counts::default();
    for _ in 0..n {
        count(&mut c, get_once(&http, &url, header).await);
    }
    c
}

/// Requests through the gateway in a loop until stopped: whatever happens to the
/// rollout meanwhile, every answer must come.
pub struct Loop {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Counts>,
}

impl Loop {
    pub fn start(gateway: SocketAddr) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let s = stop.clone();
        let task = tokio::spawn(async move {
            let http = reqwest::Client::new();
            let url = format!("http://{gateway}/");
            let mut c = Counts::default();
            // Bounded: at most 20,000 requests however long the test takes.
            for _ in 0..20_000 {
                if s.load(Ordering::SeqCst) {
                    break;
                }
                count(&mut c, get_once(&http, &url, None).await);
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
            c
        });
        Loop { stop, task }
    }

    pub async fn stop(self) -> Counts {
        self.stop.store(true, Ordering::SeqCst);
        self.task.await.unwrap()
    }
}

/// A real HTTP health endpoint the test flips between 200 and 500.
pub struct Health {
    pub addr: SocketAddr,
    healthy: Arc<AtomicBool>,
}

impl Health {
    pub async fn start() -> Health {
        let healthy = Arc::new(AtomicBool::new(true));
        let h = healthy.clone();
        let app = Router::new().route(
            "/health",
            get(move || {
                let h = h.clone();
                async move {
                    if h.load(Ordering::SeqCst) {
                        (StatusCode::OK, "{\"status\":\"ok\"}")
                    } else {
                        (
                            StatusCode::INTERNAL_SERVER_ERROR,
                            "{\"status\":\"failing\"}",
                        )
                    }
                }
            }),
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Health { addr, healthy }
    }

    pub fn url(&self) -> String {
        format!("http://{}/health", self.addr)
    }

    pub fn fail(&self) {
        self.healthy.store(false, Ordering::SeqCst);
    }
}
