//! One pod run through its phases, like a kubelet: volumes, sandbox, secret volumes,
//! init containers (sidecars left running), the regular containers (restarted per
//! `restartPolicy`), sidecars stopped; the deadline and deletion stop it anywhere.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::ctx::{Ctx, Runtime};
use crate::kube_double::docker::{self, PodNames, PodNetwork};
use crate::kube_double::pod_status::{self, PodState};

impl Ctx {
    /// Starts running a freshly stored pod.
    pub fn spawn_pod(self: &Arc<Self>, pod: Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let stop = CancellationToken::new();
        let grace = Arc::new(AtomicI64::new(0));
        let engine_calls = TaskTracker::new();
        let run = Arc::new(PodRun::new(
            self.clone(),
            pod,
            stop.clone(),
            grace.clone(),
            engine_calls.clone(),
        ));
        let mut runtimes = self.runtimes();
        let task = tokio::spawn(run.run());
        runtimes.insert(
            uid,
            Runtime {
                stop,
                grace,
                task: Some(task),
                engine_calls,
            },
        );
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Slot {
    Init(usize),
    Main(usize),
}

enum Outcome {
    Finished,
    DeadlineExceeded,
    Deleted,
    SandboxFailed(String),
}

/// When a container that ended runs again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Restart {
    Always,
    OnFailure,
    Never,
}

impl Restart {
    /// The pod's policy for its regular containers (unset is the API default, Always).
    pub(super) fn of_pod(spec: &k8s_openapi::api::core::v1::PodSpec) -> Restart {
        match spec.restart_policy.as_deref() {
            Some("Never") => Restart::Never,
            Some("OnFailure") => Restart::OnFailure,
            _ => Restart::Always,
        }
    }

    /// For a regular init container: restarted until it succeeds unless the pod
    /// never restarts anything.
    pub(super) fn for_init(pod: Restart) -> Restart {
        match pod {
            Restart::Never => Restart::Never,
            _ => Restart::OnFailure,
        }
    }

    pub(super) fn wants(self, exit_code: i32) -> bool {
        match self {
            Restart::Always => true,
            Restart::OnFailure => exit_code != 0,
            Restart::Never => false,
        }
    }
}

pub(super) enum Started {
    Running(String),
    /// The engine refused to start it (e.g. the command does not exist).
    FailedToStart(i32),
}

pub(super) struct PodRun {
    pub(super) ctx: Arc<Ctx>,
    pub(super) pod: Pod,
    pub(super) ns: String,
    pub(super) name: String,
    pub(super) names: PodNames,
    pub(super) labels: HashMap<String, String>,
    pub(super) state: Mutex<PodState>,
    /// Docker ids of the containers created so far, by slot.
    pub(super) started: Mutex<Vec<(Slot, String)>>,
    pub(super) stop: CancellationToken,
    pub(super) grace: Arc<AtomicI64>,
    pub(super) engine_calls: TaskTracker,
}

pub(super) fn docker_time(s: Option<&str>) -> Option<Time> {
    let s = s?;
    if s.starts_with("0001-") {
        return None;
    }
    s.parse().ok().map(Time)
}

impl PodRun {
    fn new(
        ctx: Arc<Ctx>,
        pod: Pod,
        stop: CancellationToken,
        grace: Arc<AtomicI64>,
        engine_calls: TaskTracker,
    ) -> PodRun {
        let spec = pod.spec.clone().unwrap_or_default();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let image = |c: &Container| c.image.clone().unwrap_or_default();
        let init: Vec<ContainerStatus> = spec
            .init_containers
            .iter()
            .flatten()
            .map(|c| pod_status::waiting(&c.name, &image(c), "PodInitializing", None))
            .collect();
        let first = if init.is_empty() {
            "ContainerCreating"
        } else {
            "PodInitializing"
        };
        let main = spec
            .containers
            .iter()
            .map(|c| pod_status::waiting(&c.name, &image(c), first, None))
            .collect();
        PodRun {
            names: PodNames::new(&ctx.instance, &uid),
            labels: docker::labels(&ctx.instance, &pod),
            ns: pod.metadata.namespace.clone().unwrap_or_default(),
            name: pod.metadata.name.clone().unwrap_or_default(),
            state: Mutex::new(PodState::new(init, main)),
            started: Mutex::new(Vec::new()),
            ctx,
            pod,
            stop,
            grace,
            engine_calls,
        }
    }

    /// Runs an engine call that creates something as its own tracked task: if the
    /// runner is stopped meanwhile, the call still completes and cleanup waits for it.
    pub(super) async fn engine<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.engine_calls
            .spawn(call)
            .await
            .expect("engine calls do not panic")
    }

    pub(super) fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.as_ref().expect("validated pods have a spec")
    }

    pub(super) fn container(&self, slot: Slot) -> &Container {
        match slot {
            Slot::Init(i) => &self.spec().init_containers.as_ref().expect("init slot")[i],
            Slot::Main(i) => &self.spec().containers[i],
        }
    }

    pub(super) fn backoff(&self) -> Duration {
        self.ctx.options.retry_interval
    }

    /// Changes the local state and writes the resulting status to the store.
    pub(super) fn change(&self, f: impl FnOnce(&mut PodState)) {
        let status = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut state);
            state.status()
        };
        // A lost node's kubelet reports nothing: the API keeps the last status.
        if self.ctx.node_health.lost() {
            return;
        }
        self.ctx
            .store
            .update::<Pod>(&self.ns, &self.name, |p| p.status = Some(status));
    }

    pub(super) fn change_container(&self, slot: Slot, f: impl FnOnce(&mut ContainerStatus)) {
        self.change(|s| match slot {
            Slot::Init(i) => f(&mut s.init[i]),
            Slot::Main(i) => f(&mut s.main[i]),
        });
    }

    async fn run(self: Arc<Self>) {
        self.change(|_| {});
        let deadline = self
            .spec()
            .active_deadline_seconds
            .map(|s| tokio::time::Instant::now() + Duration::from_secs(s as u64));
        let outcome = tokio::select! {
            o = self.execute() => o,
            _ = async {
                match deadline {
                    Some(d) => tokio::time::sleep_until(d).await,
                    None => std::future::pending().await,
                }
            } => Outcome::DeadlineExceeded,
            _ = self.stop.cancelled() => Outcome::Deleted,
        };
        match outcome {
            Outcome::Finished => {}
            Outcome::SandboxFailed(message) => self.change(|s| {
                s.phase = "Failed";
                s.reason = Some("SandboxFailed".into());
                s.message = Some(message);
            }),
            Outcome::DeadlineExceeded => {
                // Ends the sidecars' restart loops, as a deletion does.
                self.stop.cancel();
                let grace = self.spec().termination_grace_period_seconds.unwrap_or(30);
                self.stop_containers(grace).await;
                self.record_exits().await;
                self.change(|s| {
                    s.phase = "Failed";
                    s.reason = Some("DeadlineExceeded".into());
                    s.message = Some(
                        "Pod was active on the node longer than the specified deadline".into(),
                    );
                });
            }
            Outcome::Deleted => {
                self.stop_containers(self.grace.load(Ordering::SeqCst))
                    .await;
                self.record_exits().await;
                self.change(|_| {});
            }
        }
    }

    async fn execute(self: &Arc<Self>) -> Outcome {
        let docker = &self.ctx.docker;
        let (d, names, spec, labels) = (
            docker.clone(),
            self.names.clone(),
            self.spec().clone(),
            self.labels.clone(),
        );
        let created = self
            .engine(async move { docker::create_volumes(&d, &names, &spec, &labels).await })
            .await;
        if let Err(e) = created {
            return Outcome::SandboxFailed(format!("creating volumes: {}", docker::message(&e)));
        }
        let network = self.ctx.options.pod_network;
        let (d, names, image, pod, labels) = (
            docker.clone(),
            self.names.clone(),
            self.ctx.options.sandbox_image.clone(),
            self.pod.clone(),
            self.labels.clone(),
        );
        let started = self
            .engine(async move {
                docker::start_sandbox(&d, &names, &image, &pod, network, &labels).await
            })
            .await;
        if let Err(e) = started {
            return Outcome::SandboxFailed(format!(
                "creating the pod sandbox: {}",
                docker::message(&e)
            ));
        }
        if network == PodNetwork::Bridge {
            let ip = docker
                .inspect_container(&self.names.sandbox(), None)
                .await
                .ok()
                .and_then(|i| i.network_settings)
                .and_then(|n| n.networks)
                .and_then(|n| n.get("bridge").and_then(|b| b.ip_address.clone()))
                .filter(|ip| !ip.is_empty());
            self.change(|s| s.pod_ip = ip);
        }
        // Secret volumes wait for their secret, as the kubelet's mount does.
        loop {
            match docker::fill_secret_volumes(docker, &self.names, &self.ctx.store, &self.pod).await
            {
                Ok(()) => break,
                Err(message) => {
                    self.change(|s| {
                        for c in s.init.iter_mut().chain(s.main.iter_mut()) {
                            if pod_status::is_waiting(c) {
                                *c = pod_status::waiting(
                                    &c.name,
                                    &c.image,
                                    "ContainerCreating",
                                    Some(message.clone()),
                                );
                            }
                        }
                    });
                    tokio::time::sleep(self.backoff()).await;
                }
            }
        }

        let restart = Restart::of_pod(self.spec());
        let mut sidecars: Vec<(CancellationToken, JoinHandle<()>)> = Vec::new();
        let inits = self.spec().init_containers.clone().unwrap_or_default();
        for (i, c) in inits.iter().enumerate() {
            let slot = Slot::Init(i);
            if c.restart_policy.as_deref() == Some("Always") {
                // Kept running (and restarted) beside everything after it.
                let first = self.start_container(slot).await;
                let (me, stop) = (self.clone(), CancellationToken::new());
                let stopped = stop.clone();
                let runner = tokio::spawn(async move {
                    me.run_container(slot, Restart::Always, Some(first), Some(stopped))
                        .await;
                });
                sidecars.push((stop, runner));
                self.wait_sidecar_started(i).await;
                continue;
            }
            let code = self
                .run_container(slot, Restart::for_init(restart), None, None)
                .await;
            if code != 0 {
                return self.init_failed(code);
            }
        }
        self.change(|s| {
            s.initialized = true;
            for c in &mut s.main {
                if pod_status::waiting_reason(c).as_deref() == Some("PodInitializing") {
                    *c = pod_status::waiting(&c.name, &c.image, "ContainerCreating", None);
                }
            }
        });

        let mains = (0..self.spec().containers.len())
            .map(|i| self.run_container(Slot::Main(i), restart, None, None));
        let codes = futures::future::join_all(mains).await;

        // Sidecars end when the regular containers are done, in reverse order.
        for (stop, runner) in sidecars.into_iter().rev() {
            stop.cancel();
            let _ = runner.await;
        }
        let ok = codes.iter().all(|c| *c == 0);
        self.change(|s| s.phase = if ok { "Succeeded" } else { "Failed" });
        Outcome::Finished
    }

    /// Holds the next init container back until sidecar `i` runs and its startup
    /// probe (if any) passed — `started` — as the kubelet does (KEP-753: a
    /// restartable init container that is running but not yet started, or that
    /// exited and waits for its restart, keeps `computeInitContainerActions` in
    /// pkg/kubelet/kuberuntime/kuberuntime_container.go from starting the next one).
    /// A sidecar that never starts holds the pod until its deadline or deletion,
    /// which end `execute` (and so this wait) from `run`.
    async fn wait_sidecar_started(&self, i: usize) {
        loop {
            let started = {
                let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                pod_status::is_running(&s.init[i]) && s.init[i].started == Some(true)
            };
            if started {
                return;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    fn init_failed(&self, _code: i32) -> Outcome {
        self.change(|s| s.phase = "Failed");
        Outcome::Finished
    }
}
