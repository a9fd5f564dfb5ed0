//! A container's probes while it runs, as the kubelet's prober workers
//! (pkg/kubelet/prober/worker.go): the first probe once `initialDelaySeconds` have
//! passed since the container started, then one every `periodSeconds`, each given
//! `timeoutSeconds`; a result changes the probe's state only after
//! `successThreshold` / `failureThreshold` equal results in a row. A startup probe
//! holds the others back until it succeeds (`started`); a readiness probe starts
//! unready and sets the container's `ready`; a failed liveness or startup probe
//! kills the container (with the probe's `terminationGracePeriodSeconds`, else
//! the pod's), which its restart policy then restarts. Without probes a running
//! container is started and ready.
//!
//! Probes run from the host against the pod's IP (its sandbox's address on the
//! Docker bridge; 127.0.0.1 for a pod on the host network): `httpGet` (HTTP or
//! HTTPS without verification, `httpHeaders`, success for 200–399, redirects
//! not followed: a 3xx is a success, as the kubelet counts one to another host),
//! `tcpSocket` (a connection), `exec` (a Docker exec in the container, exit 0).

use std::sync::{Arc, OnceLock};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Probe};
use tokio::time::{Instant, MissedTickBehavior};

use super::pod_run::{PodRun, Slot};
use crate::kube_double::pod_status;
use crate::kube_double::probe::{self, Kind};

/// Readiness and start of a container that just started running: gated by its
/// probes, if it has them.
pub(super) fn before_first_probe(cs: &mut ContainerStatus, c: &Container) {
    let startup = c.startup_probe.is_some();
    cs.started = Some(!startup);
    cs.ready = !startup && c.readiness_probe.is_none();
}

/// A probe's settled state from its results.
struct Worker {
    success_threshold: u32,
    failure_threshold: u32,
    last: Option<bool>,
    run: u32,
}

impl Worker {
    fn new(p: &Probe) -> Worker {
        let t = probe::timing(p);
        Worker {
            success_threshold: t.success_threshold,
            failure_threshold: t.failure_threshold,
            last: None,
            run: 0,
        }
    }

    /// Records a result; the state it settles on once a threshold is reached.
    fn record(&mut self, ok: bool) -> Option<bool> {
        if self.last == Some(ok) {
            self.run += 1;
        } else {
            self.last = Some(ok);
            self.run = 1;
        }
        let threshold = if ok {
            self.success_threshold
        } else {
            self.failure_threshold
        };
        (self.run >= threshold).then_some(ok)
    }
}

fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            // A new connection per probe, as the kubelet's prober (keep-alives
            // off); also keeps no connection tied to one test's runtime.
            .pool_max_idle_per_host(0)
            .danger_accept_invalid_certs(true)
            .user_agent("kube-probe/1.33")
            .build()
            .expect("a plain reqwest client builds")
    })
}

impl PodRun {
    /// Waits for a running container to exit, probing it meanwhile. A failed
    /// liveness or startup probe kills it; the exit is then recorded as usual.
    pub(super) async fn supervise(self: &Arc<Self>, slot: Slot, id: &str) -> i32 {
        let c = self.container(slot).clone();
        if probe::of(&c).iter().all(|(_, p)| p.is_none()) {
            return self.wait_container(slot, id).await;
        }
        let started = Instant::now();
        tokio::select! {
            code = self.wait_container(slot, id) => code,
            () = self.probe_container(slot, id, &c, started) => self.wait_container(slot, id).await,
        }
    }

    /// Runs the container's probes; returns only after a failed liveness or
    /// startup probe killed the container.
    async fn probe_container(&self, slot: Slot, id: &str, c: &Container, started: Instant) {
        if let Some(p) = &c.startup_probe {
            let ok = self
                .probe_loop(id, c, p, Kind::Startup, started, |_, _| true)
                .await;
            if !ok {
                return self.kill(id, p).await;
            }
            let ready = c.readiness_probe.is_none();
            self.change_container(slot, |cs| {
                if pod_status::is_running(cs) {
                    cs.started = Some(true);
                    cs.ready = ready;
                }
            });
        }
        let readiness = async {
            match &c.readiness_probe {
                Some(p) => {
                    let set = |run: &Self, ready: bool| {
                        run.change_container(slot, |cs| {
                            if pod_status::is_running(cs) {
                                cs.ready = ready;
                            }
                        });
                        false
                    };
                    self.probe_loop(id, c, p, Kind::Readiness, started, set)
                        .await;
                }
                None => std::future::pending().await,
            }
        };
        let liveness = async {
            match &c.liveness_probe {
                Some(p) => {
                    let ok = self
                        .probe_loop(id, c, p, Kind::Liveness, started, |_, ok| !ok)
                        .await;
                    if !ok {
                        self.kill(id, p).await;
                    }
                }
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            () = readiness => {}
            () = liveness => {}
        }
    }

    /// Probes every period from `initialDelaySeconds` after `started`; each
    /// settled state goes to `settled`, and the loop ends (with that state) when
    /// it returns true.
    async fn probe_loop(
        &self,
        id: &str,
        c: &Container,
        p: &Probe,
        kind: Kind,
        started: Instant,
        settled: impl Fn(&Self, bool) -> bool,
    ) -> bool {
        let t = probe::timing(p);
        let mut worker = Worker::new(p);
        let mut ticks = tokio::time::interval_at(started + t.initial_delay, t.period);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let ok = match self.probe_once(id, c, p, t.timeout).await {
                Ok(()) => true,
                Err(why) => {
                    tracing::debug!(pod = %self.name, container = %c.name, probe = kind.field(), %why, "probe failed");
                    false
                }
            };
            if let Some(state) = worker.record(ok)
                && settled(self, state)
            {
                return state;
            }
        }
    }

    /// One probe, bounded by its timeout.
    async fn probe_once(
        &self,
        id: &str,
        c: &Container,
        p: &Probe,
        timeout: Duration,
    ) -> Result<(), String> {
        let host = || {
            self.state
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .pod_ip
                .clone()
                .unwrap_or_else(|| "127.0.0.1".into())
        };
        let run = async {
            if let Some(h) = &p.http_get {
                let port = probe::resolve_port(&h.port, c)?;
                let host = h
                    .host
                    .clone()
                    .filter(|h| !h.is_empty())
                    .unwrap_or_else(host);
                let scheme = h.scheme.as_deref().unwrap_or("HTTP").to_ascii_lowercase();
                let path = h.path.as_deref().filter(|p| !p.is_empty()).unwrap_or("/");
                let path = if path.starts_with('/') {
                    path.to_owned()
                } else {
                    format!("/{path}")
                };
                let mut req = http_client().get(format!("{scheme}://{host}:{port}{path}"));
                for header in h.http_headers.iter().flatten() {
                    req = req.header(&header.name, &header.value);
                }
                let resp = req.send().await.map_err(|e| e.to_string())?;
                let code = resp.status().as_u16();
                if (200..400).contains(&code) {
                    Ok(())
                } else {
                    Err(format!("HTTP probe failed with statuscode: {code}"))
                }
            } else if let Some(t) = &p.tcp_socket {
                let port = probe::resolve_port(&t.port, c)?;
                tokio::net::TcpStream::connect((host(), port))
                    .await
                    .map(drop)
                    .map_err(|e| e.to_string())
            } else if let Some(e) = &p.exec {
                self.exec_probe(id, e.command.clone().unwrap_or_default())
                    .await
            } else {
                Err("no handler".to_owned())
            }
        };
        tokio::time::timeout(timeout, run)
            .await
            .unwrap_or_else(|_| Err(format!("probe timed out after {timeout:?}")))
    }

    async fn exec_probe(&self, id: &str, cmd: Vec<String>) -> Result<(), String> {
        use bollard::exec::{CreateExecOptions, StartExecResults};
        use futures::StreamExt;
        let docker = &self.ctx.docker;
        let message = crate::kube_double::docker::message;
        let created = docker
            .create_exec(
                id,
                CreateExecOptions {
                    cmd: Some(cmd),
                    attach_stdout: Some(true),
                    attach_stderr: Some(true),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| message(&e))?;
        if let StartExecResults::Attached { mut output, .. } = docker
            .start_exec(&created.id, None)
            .await
            .map_err(|e| message(&e))?
        {
            while output.next().await.is_some() {}
        }
        match docker.inspect_exec(&created.id).await {
            Ok(i) if i.exit_code == Some(0) => Ok(()),
            Ok(i) => Err(format!("command exited with {:?}", i.exit_code)),
            Err(e) => Err(message(&e)),
        }
    }

    /// Kills a container whose liveness or startup probe failed.
    async fn kill(&self, id: &str, p: &Probe) {
        let grace = probe::timing(p)
            .kill_grace
            .or(self.spec().termination_grace_period_seconds)
            .unwrap_or(30);
        self.stop_container(id, grace).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds_settle_the_state() {
        let p: Probe = serde_json::from_value(
            serde_json::json!({"tcpSocket": {"port": 1}, "successThreshold": 2, "failureThreshold": 3}),
        )
        .unwrap();
        let mut w = Worker::new(&p);
        assert_eq!(w.record(true), None);
        assert_eq!(w.record(true), Some(true));
        assert_eq!(w.record(false), None);
        assert_eq!(w.record(false), None);
        assert_eq!(w.record(false), Some(false));
        assert_eq!(w.record(false), Some(false));
        assert_eq!(w.record(true), None);
    }
}
