//! Runs one pod on Docker, like a kubelet with `restartPolicy: Never`: volumes and
//! a sandbox holding the network namespace; init containers one after another (a
//! sidecar, `restartPolicy: Always`, is started and left running); then the regular
//! containers together; sidecars stopped when the regular containers are done.
//! Every transition is written to the stored pod's status (one resourceVersion per
//! change, so watchers see each step). `activeDeadlineSeconds` and deletion stop
//! the pod wherever it is.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{CreateContainerOptionsBuilder, StopContainerOptionsBuilder};
use futures::StreamExt;
use k8s_openapi::api::core::v1::{Container, ContainerStatus, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::docker::{self, PodNames, Waiting};
use super::pod_status::{self, Exit, PodState};
use super::store::Store;
use super::{KubeDoubleOptions, docker::PodNetwork};

/// Shared by the HTTP handlers and the pod runners.
pub struct Ctx {
    pub store: Store,
    pub docker: Docker,
    pub instance: String,
    pub options: KubeDoubleOptions,
    pub node: super::scheduling::Node,
    pub runtimes: Mutex<HashMap<String, Runtime>>,
    /// Ends watches and log streams at shutdown.
    pub shutdown: CancellationToken,
    /// Containers' output, as the pod log API serves it.
    pub captures: super::capture::Captures,
}

/// A running pod's controls, by pod uid.
pub struct Runtime {
    stop: CancellationToken,
    grace: Arc<AtomicI64>,
    task: Option<JoinHandle<()>>,
    /// The pod's engine calls that create things. They run as their own tasks, so
    /// stopping the runner never abandons a create half-way (the engine would
    /// finish it after the cleanup); cleanup waits for them instead.
    engine_calls: TaskTracker,
}

/// How long cleanup waits for engine calls in flight.
const ENGINE_CALLS_WAIT: Duration = Duration::from_secs(60);

impl Ctx {
    fn runtimes(&self) -> std::sync::MutexGuard<'_, HashMap<String, Runtime>> {
        self.runtimes.lock().unwrap_or_else(|p| p.into_inner())
    }

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

    /// Deletion after the API set `deletionTimestamp`: stops the containers
    /// (SIGTERM, SIGKILL after `grace` seconds), removes the pod's Docker objects,
    /// then the pod (DELETED), then collects the secrets it owned (or orphans them).
    pub async fn finalize_pod(
        self: Arc<Self>,
        ns: String,
        name: String,
        uid: String,
        grace: i64,
        orphan: bool,
    ) {
        let (task, engine_calls) = match self.runtimes().get_mut(&uid) {
            Some(r) => {
                r.grace.store(grace, Ordering::SeqCst);
                r.stop.cancel();
                (r.task.take(), Some(r.engine_calls.clone()))
            }
            None => (None, None),
        };
        if let Some(task) = task {
            let _ = task.await;
        }
        if let Some(calls) = engine_calls {
            calls.close();
            let _ = tokio::time::timeout(ENGINE_CALLS_WAIT, calls.wait()).await;
        }
        let removed = docker::remove_labelled(&self.docker, docker::POD_UID_LABEL, &uid).await;
        if !removed.errors.is_empty() {
            tracing::warn!(pod = %name, errors = ?removed.errors, "kube double: pod cleanup");
        }
        self.runtimes().remove(&uid);
        if self
            .store
            .get::<Pod>(&ns, &name)
            .is_some_and(|p| p.metadata.uid.as_deref() == Some(uid.as_str()))
        {
            self.store.remove::<Pod>(&ns, &name);
        }
        self.collect_secrets(&ns, &uid, orphan);
    }

    /// Garbage collection of secrets owned by a pod that is gone: deleted, or with
    /// the owner reference removed for `propagationPolicy: Orphan`.
    pub fn collect_secrets(&self, ns: &str, owner_uid: &str, orphan: bool) {
        let (secrets, _) = self.store.list::<Secret>(Some(ns));
        for s in secrets {
            let owned = s
                .metadata
                .owner_references
                .iter()
                .flatten()
                .any(|o| o.uid == owner_uid);
            if !owned {
                continue;
            }
            let name = s.metadata.name.clone().unwrap_or_default();
            if orphan {
                self.store.update::<Secret>(ns, &name, |s| {
                    if let Some(refs) = &mut s.metadata.owner_references {
                        refs.retain(|o| o.uid != owner_uid);
                    }
                });
            } else {
                self.store.remove::<Secret>(ns, &name);
            }
        }
    }

    /// Stops every pod runner (shutdown); returns their engine calls in flight,
    /// to wait for before removing what they create.
    pub fn stop_all(&self) -> Vec<TaskTracker> {
        self.runtimes()
            .values_mut()
            .map(|r| {
                r.stop.cancel();
                if let Some(t) = r.task.take() {
                    t.abort();
                }
                r.engine_calls.close();
                r.engine_calls.clone()
            })
            .collect()
    }

    /// Waits (bounded) for the engine calls returned by [`Ctx::stop_all`].
    pub async fn wait_engine_calls(calls: Vec<TaskTracker>) {
        let all = futures::future::join_all(calls.iter().map(|c| c.wait()));
        let _ = tokio::time::timeout(ENGINE_CALLS_WAIT, all).await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    Init(usize),
    Main(usize),
}

enum Outcome {
    Finished,
    DeadlineExceeded,
    Deleted,
    SandboxFailed(String),
}

enum Started {
    Running(String),
    /// The engine refused to start it (e.g. the command does not exist).
    FailedToStart(i32),
}

struct PodRun {
    ctx: Arc<Ctx>,
    pod: Pod,
    ns: String,
    name: String,
    names: PodNames,
    labels: HashMap<String, String>,
    state: Mutex<PodState>,
    /// Docker ids of the containers created so far, by slot.
    started: Mutex<Vec<(Slot, String)>>,
    stop: CancellationToken,
    grace: Arc<AtomicI64>,
    engine_calls: TaskTracker,
}

fn docker_time(s: Option<&str>) -> Option<Time> {
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
    async fn engine<T: Send + 'static>(
        &self,
        call: impl std::future::Future<Output = T> + Send + 'static,
    ) -> T {
        self.engine_calls
            .spawn(call)
            .await
            .expect("engine calls do not panic")
    }

    fn spec(&self) -> &k8s_openapi::api::core::v1::PodSpec {
        self.pod.spec.as_ref().expect("validated pods have a spec")
    }

    fn container(&self, slot: Slot) -> &Container {
        match slot {
            Slot::Init(i) => &self.spec().init_containers.as_ref().expect("init slot")[i],
            Slot::Main(i) => &self.spec().containers[i],
        }
    }

    fn backoff(&self) -> Duration {
        self.ctx.options.retry_interval
    }

    /// Changes the local state and writes the resulting status to the store.
    fn change(&self, f: impl FnOnce(&mut PodState)) {
        let status = {
            let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut state);
            state.status()
        };
        self.ctx
            .store
            .update::<Pod>(&self.ns, &self.name, |p| p.status = Some(status));
    }

    fn change_container(&self, slot: Slot, f: impl FnOnce(&mut ContainerStatus)) {
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

        let mut sidecars: Vec<(Slot, String, JoinHandle<()>)> = Vec::new();
        let inits = self.spec().init_containers.clone().unwrap_or_default();
        for (i, c) in inits.iter().enumerate() {
            let slot = Slot::Init(i);
            let sidecar = c.restart_policy.as_deref() == Some("Always");
            let id = match self.start_container(slot).await {
                Started::Running(id) => id,
                Started::FailedToStart(code) if !sidecar => return self.init_failed(code),
                Started::FailedToStart(_) => continue,
            };
            if sidecar {
                let me = self.clone();
                let watched = id.clone();
                let waiter = tokio::spawn(async move {
                    me.wait_container(slot, &watched).await;
                });
                sidecars.push((slot, id, waiter));
                continue;
            }
            let code = self.wait_container(slot, &id).await;
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

        let mains = (0..self.spec().containers.len()).map(|i| {
            let slot = Slot::Main(i);
            async move {
                match self.start_container(slot).await {
                    Started::Running(id) => self.wait_container(slot, &id).await,
                    Started::FailedToStart(code) => code,
                }
            }
        });
        let codes = futures::future::join_all(mains).await;

        // Sidecars end when the regular containers are done, in reverse order.
        let grace = self.spec().termination_grace_period_seconds.unwrap_or(30);
        for (_, id, waiter) in sidecars.into_iter().rev() {
            self.stop_container(&id, grace).await;
            let _ = waiter.await;
        }
        let ok = codes.iter().all(|c| *c == 0);
        self.change(|s| s.phase = if ok { "Succeeded" } else { "Failed" });
        Outcome::Finished
    }

    fn init_failed(&self, _code: i32) -> Outcome {
        self.change(|s| s.phase = "Failed");
        Outcome::Finished
    }

    /// Waits until the container can be created (image present, config
    /// resolvable), creates and starts it. Reports each wait as the kubelet does.
    async fn start_container(&self, slot: Slot) -> Started {
        let docker = &self.ctx.docker;
        let c = self.container(slot);
        let image = c.image.clone().unwrap_or_default();
        let name = self.names.container(&c.name);
        let mut pull_attempts = 0u32;
        let wait = |w: Waiting| {
            self.change_container(slot, |cs| {
                *cs = pod_status::waiting(&c.name, &image, w.reason, Some(w.message));
            });
        };
        let body = loop {
            match docker::image_user(docker, &image).await {
                Err(e) => {
                    pull_attempts += 1;
                    // The kubelet alternates between the failed pull and the back-off.
                    let reason = if pull_attempts % 2 == 1 {
                        "ErrImagePull"
                    } else {
                        "ImagePullBackOff"
                    };
                    let message = if docker::is_not_found(&e) {
                        if reason == "ErrImagePull" {
                            format!(
                                "failed to pull image {image:?}: the image is not on the Docker engine and the Kubernetes test double never pulls"
                            )
                        } else {
                            format!("Back-off pulling image {image:?}")
                        }
                    } else {
                        format!("failed to inspect image {image:?}: {}", docker::message(&e))
                    };
                    wait(Waiting { reason, message });
                }
                Ok(user) => {
                    let termination_file = self.ctx.captures.termination_file(&name);
                    if let Err(e) = &termination_file {
                        tracing::warn!(container = %name, error = %e, "no termination message file");
                    }
                    match docker::container_body(
                        &self.pod,
                        c,
                        user.as_deref(),
                        &self.ctx.store,
                        &self.names,
                        &self.labels,
                        termination_file.ok().as_deref(),
                    ) {
                        Ok(body) => {
                            let (d, name) = (docker.clone(), name.clone());
                            let created = self
                                .engine(async move {
                                    // A leftover from an earlier failed attempt.
                                    let force = bollard::query_parameters::RemoveContainerOptionsBuilder::new()
                                        .force(true)
                                        .build();
                                    let _ = d.remove_container(&name, Some(force)).await;
                                    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
                                    d.create_container(Some(opts), body).await
                                })
                                .await;
                            match created {
                                Ok(created) => break created.id,
                                Err(e) => wait(Waiting {
                                    reason: "CreateContainerError",
                                    message: docker::message(&e),
                                }),
                            }
                        }
                        Err(w) => wait(w),
                    }
                }
            }
            tokio::time::sleep(self.backoff()).await;
        };
        self.started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push((slot, body.clone()));
        // Before the start, so no output is missed.
        if let Err(e) = self.ctx.captures.attach(docker, &name).await {
            tracing::warn!(container = %name, error = %docker::message(&e), "cannot capture output; the log falls back to the engine's");
        }
        let (d, id) = (docker.clone(), body.clone());
        let started = self
            .engine(async move { d.start_container(&id, None).await })
            .await;
        if let Err(e) = started {
            // As containerd reports a process that could not be started.
            let now = super::store::now();
            self.change_container(slot, |cs| {
                pod_status::set_terminated(
                    cs,
                    Some(&body),
                    Exit {
                        code: 128,
                        reason: "StartError",
                        message: Some(docker::message(&e)),
                        started: Some(now.clone()),
                        finished: Some(now),
                    },
                )
            });
            return Started::FailedToStart(128);
        }
        let inspect = docker.inspect_container(&body, None).await.ok();
        let started = inspect
            .as_ref()
            .and_then(|i| i.state.as_ref())
            .and_then(|s| docker_time(s.started_at.as_deref()))
            .unwrap_or_else(super::store::now);
        let image_id = inspect.and_then(|i| i.image).unwrap_or_default();
        self.change(|s| {
            let cs = match slot {
                Slot::Init(i) => &mut s.init[i],
                Slot::Main(i) => &mut s.main[i],
            };
            pod_status::set_running(cs, &body, &image_id, started);
            if matches!(slot, Slot::Main(_)) && s.phase == "Pending" {
                s.phase = "Running";
            }
        });
        Started::Running(body)
    }

    /// Waits for the container to exit and records how it ended.
    async fn wait_container(&self, slot: Slot, id: &str) -> i32 {
        let mut wait = self.ctx.docker.wait_container(id, None);
        // The stream ends (or errors, for a non-zero exit) when the container stops.
        let _ = wait.next().await;
        self.record_exit(slot, id, false).await.unwrap_or(137)
    }

    /// `killed`: the double stopped it (pod deleted, deadline), so an exit 137 is
    /// that kill, not an OOM kill worth looking up.
    async fn record_exit(&self, slot: Slot, id: &str, killed: bool) -> Option<i32> {
        let inspect = self.ctx.docker.inspect_container(id, None).await.ok()?;
        let state = inspect.state?;
        if state.running == Some(true) {
            return None;
        }
        let code = state.exit_code.unwrap_or(0) as i32;
        let limited = inspect
            .host_config
            .as_ref()
            .and_then(|h| h.memory)
            .is_some_and(|m| m > 0);
        let oom = state.oom_killed == Some(true)
            || (code == 137
                && limited
                && !killed
                && self.oom_event(id, state.started_at.as_deref()).await);
        let reason = if oom {
            "OOMKilled"
        } else if code == 0 {
            "Completed"
        } else {
            "Error"
        };
        let name = inspect
            .name
            .as_deref()
            .unwrap_or_default()
            .trim_start_matches('/');
        let exit = Exit {
            code,
            reason,
            message: self.ctx.captures.termination_message(name),
            started: docker_time(state.started_at.as_deref()),
            finished: docker_time(state.finished_at.as_deref()),
        };
        self.change_container(slot, |cs| pod_status::set_terminated(cs, Some(id), exit));
        Some(code)
    }

    /// Whether the engine reported an OOM kill for the container. The engine's
    /// `State.OOMKilled` loses a race with the exit on cgroup v1 (the exit event
    /// can overwrite it), while the `oom` event is always emitted — though possibly
    /// a moment after the exit: a bounded look at the event log.
    async fn oom_event(&self, id: &str, started_at: Option<&str>) -> bool {
        use bollard::query_parameters::EventsOptionsBuilder;
        let since = started_at
            .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            .map_or(0, |t| t.as_second() - 1);
        let filters = HashMap::from([
            ("container".to_owned(), vec![id.to_owned()]),
            ("event".to_owned(), vec!["oom".to_owned()]),
        ]);
        for _ in 0..5 {
            // `until` in the past or now: the engine answers from its log at once. With
            // its fraction: whole seconds would leave out an event of this second.
            let now = k8s_openapi::jiff::Timestamp::now();
            let until = format!("{}.{:09}", now.as_second(), now.subsec_nanosecond());
            let opts = EventsOptionsBuilder::new()
                .since(&since.to_string())
                .until(&until)
                .filters(&filters)
                .build();
            let events = self.ctx.docker.events(Some(opts));
            let seen = tokio::time::timeout(Duration::from_secs(5), events.take(1).count()).await;
            if seen.is_ok_and(|n| n > 0) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        false
    }

    /// Updates every started container that no longer runs (after a kill).
    async fn record_exits(&self) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        for (slot, id) in started {
            let running = {
                let s = self.state.lock().unwrap_or_else(|p| p.into_inner());
                match slot {
                    Slot::Init(i) => pod_status::is_running(&s.init[i]),
                    Slot::Main(i) => pod_status::is_running(&s.main[i]),
                }
            };
            if running {
                self.record_exit(slot, &id, true).await;
            }
        }
    }

    async fn stop_container(&self, id: &str, grace: i64) {
        let opts = StopContainerOptionsBuilder::new()
            .t(grace.clamp(0, 3600) as i32)
            .build();
        let _ = self.ctx.docker.stop_container(id, Some(opts)).await;
    }

    /// Stops all of the pod's containers at once (and then the sandbox).
    async fn stop_containers(&self, grace: i64) {
        let started = self
            .started
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone();
        futures::future::join_all(started.iter().map(|(_, id)| self.stop_container(id, grace)))
            .await;
        self.stop_container(&self.names.sandbox(), 0).await;
    }
}
