//! The Kubernetes backend: each stage is one ephemeral pod in a configurable
//! namespace; its steps are ordered init containers sharing an emptyDir workspace
//! (the layout and why: [`pod`]).
//!
//! The runner follows each pod through one watch ([`watch`]) and reads everything
//! from the pod's status ([`status`]): a step's start and exit code, an OOM kill,
//! an image that cannot be pulled, a pod no node can take. Step output comes from
//! the pod log API, one container per step, followed while it runs; the API
//! merges a container's stdout and stderr, so every line is reported as stdout
//! ([`Backend::separates_streams`]). Files move through `exec` + `tar` ([`copy`]).
//!
//! Everything a stage creates carries the runner's label ([`names`]): `sweep`
//! removes a crashed runner's pods, and `adoptable` lists the ones a restarted
//! runner can take over (`adopt`, then `RunOptions::adopt`): pods and their logs
//! outlive the runner, so a finished step reports again from its container status
//! and log, and a running one is simply followed on.
//!
//! Needs Kubernetes 1.29 or later (native sidecars for services). The runner's
//! Role needs, in the build namespace only: pods
//! create/get/list/watch/delete, pods/log get, pods/exec create and get, secrets
//! create/get/list/delete (`deploy/kubernetes/base/rbac.yaml`); the same again in the
//! builder namespace when `kind: image` stages build in builder pods ([`builder`]).

pub mod builder;
mod copy;
mod image;
pub mod names;
pub mod pod;
mod status;
mod watch;

use std::collections::{BTreeMap, HashSet};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use futures::{AsyncReadExt as _, StreamExt};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Api;
use kube::api::{DeleteParams, ListParams, LogParams, PostParams, PropagationPolicy};
use tokio::task::AbortHandle;

use crate::archive;
use crate::artifacts::Artifact;
use crate::backend::{
    Backend, LogChunk, LogStream, LogStreamKind, StageHandle, StepExit, StepHandle,
};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::registry::Registry;
use crate::spec::{StageSpec, StepSpec};

pub use pod::RunAs;
use status::{Blocker, Progress};
use watch::PodView;

/// Settings of a [`KubernetesBackend`].
#[derive(Debug, Clone)]
pub struct KubernetesOptions {
    /// Value of the runner label on everything this backend creates: stable for a
    /// runner across restarts (sweep and adoption select by it), distinct between
    /// runners sharing a namespace.
    pub runner_name: String,
    /// Where stage pods and Secrets go.
    pub namespace: String,
    /// Image of the `source` and `workspace` helper containers: needs `sh`, `tar`
    /// and `sleep` (busybox is enough).
    pub helper_image: String,
    /// Names of `kubernetes.io/dockerconfigjson` Secrets in the namespace, for
    /// pulling images from private registries.
    pub image_pull_secrets: Vec<String>,
    /// Uid/gid of every container when the stage sets no `user`.
    pub run_as: RunAs,
    /// CPU (thousandths) and memory (bytes) of a step container when the stage
    /// sets no `resources`: requested and limited alike.
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// Resources of each service container.
    pub service_cpu_millis: u64,
    pub service_memory_bytes: u64,
    /// Time between SIGTERM and SIGKILL when a pod is deleted.
    pub kill_grace: Duration,
    /// How long a pod may stay unschedulable before the stage fails.
    pub schedule_timeout: Duration,
    /// How long a container may fail to be created (a missing Secret key, a root
    /// image under `runAsNonRoot`) before the stage fails.
    pub config_error_grace: Duration,
    /// `activeDeadlineSeconds` for stages without a timeout.
    pub max_stage_duration: Duration,
    /// Where and with what `kind: image` stages build; `None`: they are refused.
    pub builder: Option<BuilderOptions>,
}

/// Settings of the builder pods that run `kind: image` stages ([`builder`]).
#[derive(Debug, Clone)]
pub struct BuilderOptions {
    /// An image with `sh` and a rootless `buildah` for uid/gid [`Self::run_as`]
    /// (`newuidmap`/`newgidmap` with file capabilities, subordinate ids), e.g.
    /// `quay.io/buildah/stable`.
    pub image: String,
    /// Namespace of the builder pods and their registry Secrets: Pod Security
    /// `privileged` (see [`builder`]), holding nothing else.
    pub namespace: String,
    /// Registries (`host[:port]`) reached over plain HTTP or without a trusted
    /// certificate.
    pub insecure_registries: Vec<String>,
    /// `kubernetes.io/dockerconfigjson` Secrets in the builder namespace, for pulling
    /// the builder image.
    pub image_pull_secrets: Vec<String>,
    pub run_as: RunAs,
    pub cpu_millis: u64,
    pub memory_bytes: u64,
    /// `activeDeadlineSeconds` of a builder pod.
    pub max_duration: Duration,
}

impl BuilderOptions {
    pub fn new(image: impl Into<String>, namespace: impl Into<String>) -> Self {
        BuilderOptions {
            image: image.into(),
            namespace: namespace.into(),
            insecure_registries: Vec::new(),
            image_pull_secrets: Vec::new(),
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
            },
            cpu_millis: 2000,
            memory_bytes: 4 * 1024 * 1024 * 1024,
            max_duration: Duration::from_secs(2 * 3600),
        }
    }
}

impl KubernetesOptions {
    pub fn new(runner_name: impl Into<String>, namespace: impl Into<String>) -> Self {
        KubernetesOptions {
            runner_name: runner_name.into(),
            namespace: namespace.into(),
            helper_image: "docker.io/library/busybox:1.37".into(),
            image_pull_secrets: Vec::new(),
            run_as: RunAs {
                uid: 1000,
                gid: 1000,
            },
            cpu_millis: 1000,
            memory_bytes: 2 * 1024 * 1024 * 1024,
            service_cpu_millis: 500,
            service_memory_bytes: 512 * 1024 * 1024,
            kill_grace: Duration::from_secs(2),
            schedule_timeout: Duration::from_secs(120),
            config_error_grace: Duration::from_secs(10),
            max_stage_duration: Duration::from_secs(6 * 3600),
            builder: None,
        }
    }
}

/// A stage pod a restarted runner may take over.
#[derive(Debug, Clone)]
pub struct Adoptable {
    pub handle: StageHandle,
    /// [`StageSpec::adoption`] as the stage was set up with it.
    pub data: Option<String>,
}

/// Runs stages as pods. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct KubernetesBackend {
    inner: Arc<Inner>,
}

struct Inner {
    client: kube::Client,
    pods: Api<Pod>,
    secrets: Api<Secret>,
    options: KubernetesOptions,
    stages: Registry<KubeStage>,
}

impl std::fmt::Debug for KubernetesBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KubernetesBackend")
            .field("options", &self.inner.options)
            .field("stages", &self.inner.stages)
            .finish_non_exhaustive()
    }
}

/// A stage's pod as this runner follows it.
struct KubeStage {
    pod: String,
    view: tokio::sync::watch::Receiver<PodView>,
    watcher: AbortHandle,
    /// Steps whose exit this runner has seen (their destroy is a no-op).
    finished: Mutex<HashSet<usize>>,
    /// Steps whose log is being read (tailed at most once).
    tailed: Mutex<HashSet<usize>>,
}

impl Drop for KubeStage {
    fn drop(&mut self) {
        self.watcher.abort();
    }
}

fn api_err(op: &'static str) -> impl Fn(kube::Error) -> Error {
    move |e| Error::Backend {
        op,
        message: e.to_string(),
    }
}

fn is_not_found(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 404)
}

impl KubernetesBackend {
    /// A backend using `client` (e.g. `kube::Client::try_default()`: in-cluster
    /// service account or kubeconfig).
    pub fn new(client: kube::Client, options: KubernetesOptions) -> Result<KubernetesBackend> {
        if options.runner_name.is_empty() || options.namespace.is_empty() {
            return Err(Error::InvalidSpec(
                "kubernetes backend: the runner name and the namespace must not be empty".into(),
            ));
        }
        Ok(KubernetesBackend {
            inner: Arc::new(Inner {
                pods: Api::namespaced(client.clone(), &options.namespace),
                secrets: Api::namespaced(client.clone(), &options.namespace),
                client,
                options,
                stages: Registry::new("stage"),
            }),
        })
    }

    /// Connects with the default configuration: in-cluster when running in a pod,
    /// else `KUBECONFIG` / `~/.kube/config`.
    pub async fn connect(options: KubernetesOptions) -> Result<KubernetesBackend> {
        let client = kube::Client::try_default()
            .await
            .map_err(|e| Error::Backend {
                op: "connect",
                message: format!("cannot configure a Kubernetes client: {e}"),
            })?;
        KubernetesBackend::new(client, options)
    }

    pub fn options(&self) -> &KubernetesOptions {
        &self.inner.options
    }

    fn runner_selector(&self) -> String {
        format!(
            "{}={}",
            names::RUNNER_LABEL,
            names::label_value(&self.inner.options.runner_name)
        )
    }

    /// Deletes every pod and Secret carrying this runner's label: what a crashed
    /// runner left behind and will not adopt. Returns the pods deleted.
    pub async fn sweep(&self) -> Result<Vec<String>> {
        let lp = ListParams::default().labels(&self.runner_selector());
        let mut deleted = Vec::new();
        for (handle, _) in self.list_stage_pods(&self.runner_selector(), true).await? {
            self.delete_objects(&handle.id).await?;
            deleted.push(handle.id);
        }
        // Secrets whose pod is already gone (the owner GC removes them too, later).
        let secrets = self
            .inner
            .secrets
            .list(&lp)
            .await
            .map_err(api_err("list secrets"))?;
        for s in secrets.items {
            if let Some(name) = s.metadata.name {
                ignore_not_found(
                    self.inner
                        .secrets
                        .delete(&name, &DeleteParams::default())
                        .await
                        .map(|_| ()),
                )
                .map_err(api_err("delete secret"))?;
            }
        }
        deleted.extend(self.sweep_builders().await?);
        Ok(deleted)
    }

    /// This runner's stage pods that are not being deleted, with the
    /// [`StageSpec::adoption`] data each was set up with: what a restarted runner
    /// can take over with [`KubernetesBackend::adopt`] (and then
    /// [`crate::RunOptions::adopt`]) instead of running the stage again.
    pub async fn adoptable(&self) -> Result<Vec<Adoptable>> {
        let mut found = Vec::new();
        for (handle, _) in self.list_stage_pods(&self.runner_selector(), false).await? {
            let secret = self
                .inner
                .secrets
                .get_opt(&handle.id)
                .await
                .map_err(api_err("get secret"))?;
            let data = secret
                .and_then(|s| s.data)
                .and_then(|d| d.get(pod::ADOPTION_KEY).cloned())
                .and_then(|b| String::from_utf8(b.0).ok());
            found.push(Adoptable { handle, data });
        }
        Ok(found)
    }

    /// Every stage pod Slipway created in the namespace, whichever runner created
    /// it, with its labels (not those being deleted): for an orphan sweep by
    /// whoever knows which stages still run (the server).
    pub async fn stage_pods(&self) -> Result<Vec<(StageHandle, BTreeMap<String, String>)>> {
        let selector = format!("{}={}", names::MANAGED_BY_LABEL, names::MANAGED_BY);
        self.list_stage_pods(&selector, false).await
    }

    /// The stage pods matching `selector` (with those being deleted only when
    /// `deleting`), as handles and their labels.
    async fn list_stage_pods(
        &self,
        selector: &str,
        deleting: bool,
    ) -> Result<Vec<(StageHandle, BTreeMap<String, String>)>> {
        let lp = ListParams::default().labels(selector);
        let pods = self
            .inner
            .pods
            .list(&lp)
            .await
            .map_err(api_err("list pods"))?;
        Ok(pods
            .items
            .into_iter()
            .filter(|p| deleting || p.metadata.deletion_timestamp.is_none())
            .filter_map(|p| {
                let id = p.metadata.name?;
                let stage = p
                    .metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(names::STAGE_ANNOTATION))
                    .cloned()
                    .unwrap_or_default();
                let handle = StageHandle {
                    stage,
                    id,
                    workspace: None,
                };
                Some((handle, p.metadata.labels.unwrap_or_default()))
            })
            .collect())
    }

    /// Deletes one stage's pod and Secret (e.g. an orphan not worth adopting).
    pub async fn remove(&self, handle: &StageHandle) -> Result<()> {
        self.delete_objects(&handle.id).await
    }

    /// Follows an existing stage pod again (after a runner restart) so that
    /// `handle` works with every [`Backend`] method. Refused when the pod never
    /// got its whole source (the runner died while copying it in): the stage must
    /// then be run afresh, and the caller deletes the pod.
    pub async fn adopt(&self, handle: &StageHandle) -> Result<()> {
        let pod = self
            .inner
            .pods
            .get_opt(&handle.id)
            .await
            .map_err(api_err("get pod"))?
            .ok_or_else(|| Error::NotFound {
                kind: "stage",
                id: handle.id.clone(),
            })?;
        if !matches!(
            status::progress(&pod, names::SOURCE_CONTAINER),
            Progress::Exited(StepExit { exit_code: 0, .. })
        ) {
            return Err(Error::InvalidState(format!(
                "pod {} was left before its source was in; it cannot be adopted",
                handle.id
            )));
        }
        let (view, watcher) = watch::follow(self.inner.pods.clone(), pod);
        let stage = Arc::new(KubeStage {
            pod: handle.id.clone(),
            view,
            watcher,
            finished: Mutex::new(HashSet::new()),
            tailed: Mutex::new(HashSet::new()),
        });
        self.inner.stages.insert(handle.id.clone(), stage);
        Ok(())
    }

    fn stage(&self, handle: &StageHandle) -> Result<Arc<KubeStage>> {
        self.inner.stages.get(&handle.id)
    }

    /// Deletes the pod (graceful, `kill_grace`) and its Secret; absent is fine.
    async fn delete_objects(&self, pod: &str) -> Result<()> {
        let dp = DeleteParams {
            grace_period_seconds: Some(self.inner.options.kill_grace.as_secs().max(1) as u32),
            propagation_policy: Some(PropagationPolicy::Background),
            ..Default::default()
        };
        ignore_not_found(self.inner.pods.delete(pod, &dp).await.map(|_| ()))
            .map_err(api_err("delete pod"))?;
        ignore_not_found(
            self.inner
                .secrets
                .delete(pod, &DeleteParams::default())
                .await
                .map(|_| ()),
        )
        .map_err(api_err("delete secret"))
    }

    /// [`Self::delete_objects`], then waits (bounded) until the pod is gone.
    async fn delete_and_wait(&self, pod: &str) -> Result<()> {
        self.delete_objects(pod).await?;
        let until = Instant::now() + self.inner.options.kill_grace + Duration::from_secs(30);
        while self
            .inner
            .pods
            .get_opt(pod)
            .await
            .map_err(api_err("get pod"))?
            .is_some()
        {
            if Instant::now() >= until {
                return Err(Error::Backend {
                    op: "delete pod",
                    message: format!("pod {pod} still exists after its deletion"),
                });
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Ok(())
    }

    /// Waits until `ready` says yes, failing on whatever blocks the pod.
    async fn wait_until<T>(
        &self,
        stage: &KubeStage,
        what: &str,
        mut ready: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        let options = &self.inner.options;
        let mut view = stage.view.clone();
        let mut unschedulable_since: Option<Instant> = None;
        let mut config_error_since: Option<Instant> = None;
        loop {
            let current = view.borrow_and_update().clone();
            match current {
                PodView::Gone => {
                    return Err(Error::Backend {
                        op: "pod",
                        message: format!("pod {} was deleted while {what}", stage.pod),
                    });
                }
                PodView::Present(pod) => {
                    if let Some(t) = ready(&pod) {
                        return Ok(t);
                    }
                    match status::blocker(&pod) {
                        Some(b @ Blocker::ImagePull { .. }) | Some(b @ Blocker::Failed(_)) => {
                            return Err(b.into_error());
                        }
                        Some(b @ Blocker::Unschedulable(_)) => {
                            let since = *unschedulable_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= options.schedule_timeout {
                                return Err(b.into_error());
                            }
                        }
                        Some(b @ Blocker::Config { .. }) => {
                            let since = *config_error_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= options.config_error_grace {
                                return Err(b.into_error());
                            }
                        }
                        None => {
                            unschedulable_since = None;
                            config_error_since = None;
                        }
                    }
                }
            }
            // Re-check at least every second: the grace periods are counted here.
            tokio::select! {
                changed = view.changed() => if changed.is_err() {
                    return Err(Error::Backend {
                        op: "pod",
                        message: format!("lost track of pod {} while {what}", stage.pod),
                    });
                },
                _ = tokio::time::sleep(Duration::from_secs(1)) => {}
            }
        }
    }

    /// Writes the upload for `spec`: the workspace's entries under `workspace/`
    /// (owned by the uid/gid the steps run as) and the step scripts under
    /// `slipway/steps/`. Blocking.
    fn upload_archive(
        spec: &StageSpec,
        run_as: RunAs,
        workdir: &str,
    ) -> Result<tempfile::NamedTempFile> {
        let file = tempfile::NamedTempFile::new()
            .map_err(|e| Error::io("creating a temp file for the source archive", e))?;
        let out = std::io::BufWriter::new(
            file.reopen()
                .map_err(|e| Error::io("opening the source archive", e))?,
        );
        let owner = archive::Owner {
            uid: run_as.uid as u64,
            gid: run_as.gid as u64,
        };
        let rel_workdir = workdir
            .strip_prefix(pod::WORKSPACE)
            .unwrap_or_default()
            .trim_start_matches('/')
            .to_owned();
        let extra: Vec<String> = if rel_workdir.is_empty() {
            vec![]
        } else {
            vec![rel_workdir]
        };
        archive::with_source_dir(&spec.source, |dir| {
            let mut b = archive::builder(out);
            // No entry for `workspace/` itself: the emptyDir is not ours to chmod.
            archive::append_tree(&mut b, dir, Path::new("workspace"), false, owner, &extra)?;
            archive::append_tree(&mut b, None, Path::new("slipway/steps"), true, owner, &[])?;
            for (i, step) in spec.steps.iter().enumerate() {
                let path = pod::script_path(i);
                archive::append_file(
                    &mut b,
                    Path::new(path.trim_start_matches('/')),
                    step.script.as_bytes(),
                    0o444,
                    owner,
                )?;
            }
            archive::finish(b)
        })?;
        Ok(file)
    }

    /// `setup_stage` after the pod was created; on error the caller deletes it.
    async fn fill_pod(
        &self,
        spec: &StageSpec,
        created: Pod,
        secret: Option<Secret>,
        upload: &Path,
    ) -> Result<Arc<KubeStage>> {
        let name = created.metadata.name.clone().unwrap_or_default();
        let uid = created.metadata.uid.clone().unwrap_or_default();
        if let Some(mut secret) = secret {
            secret.metadata.owner_references = Some(vec![pod::owned_by_pod(&name, &uid)]);
            self.inner
                .secrets
                .create(&PostParams::default(), &secret)
                .await
                .map_err(api_err("create secret"))?;
        }
        let (view, watcher) = watch::follow(self.inner.pods.clone(), created);
        let stage = Arc::new(KubeStage {
            pod: name.clone(),
            view,
            watcher,
            finished: Mutex::new(HashSet::new()),
            tailed: Mutex::new(HashSet::new()),
        });
        self.wait_until(&stage, "waiting for the source container", |p| {
            matches!(
                status::progress(p, names::SOURCE_CONTAINER),
                Progress::Running
            )
            .then_some(())
        })
        .await?;
        copy::exec_with_input(
            &self.inner.pods,
            &name,
            names::SOURCE_CONTAINER,
            &[
                "sh",
                "-c",
                &format!("tar -x -o -f - -C / && touch {}", pod::READY_MARKER),
            ],
            upload,
        )
        .await
        .map_err(|e| match e {
            Error::Backend { message, .. } => Error::Backend {
                op: "setup_stage",
                message: format!("copying the source of stage `{}` in: {message}", spec.id),
            },
            other => other,
        })?;
        Ok(stage)
    }
}

fn ignore_not_found(
    r: std::result::Result<(), kube::Error>,
) -> std::result::Result<(), kube::Error> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        other => other,
    }
}

#[async_trait]
impl Backend for KubernetesBackend {
    fn name(&self) -> &'static str {
        "kubernetes"
    }

    fn separates_streams(&self) -> bool {
        false
    }

    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle> {
        spec.validate()?;
        let options = &self.inner.options;
        let name = names::pod_name(&spec.id);
        let objects = pod::stage_objects(spec, &name, options)?;
        let run_as = pod::run_as(spec, options)?;
        let workdir = pod::workdir(spec)?;
        let spec_owned = spec.clone();
        let upload = tokio::task::spawn_blocking(move || {
            KubernetesBackend::upload_archive(&spec_owned, run_as, &workdir)
        })
        .await
        .map_err(|e| Error::Backend {
            op: "setup_stage",
            message: e.to_string(),
        })??;

        let created = self
            .inner
            .pods
            .create(&PostParams::default(), &objects.pod)
            .await
            .map_err(|e| match e {
                // The API server refused the pod itself (422): the spec's fault.
                kube::Error::Api(s) if s.code == 422 || s.code == 400 => Error::InvalidSpec(
                    format!("the API server refused the stage's pod: {}", s.message),
                ),
                e => api_err("create pod")(e),
            })?;
        match self
            .fill_pod(spec, created, objects.secret, upload.path())
            .await
        {
            Ok(stage) => {
                self.inner.stages.insert(name.clone(), stage);
                Ok(StageHandle {
                    stage: spec.id.clone(),
                    id: name,
                    workspace: None,
                })
            }
            Err(e) => {
                // Leave nothing behind on failure (trait contract): gone, not going.
                if let Err(cleanup) = self.delete_and_wait(&name).await {
                    tracing::error!(pod = %name, error = %cleanup, "cleaning up a failed set-up");
                }
                Err(e)
            }
        }
    }

    async fn start_step(
        &self,
        stage_handle: &StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> Result<StepHandle> {
        let stage = self.stage(stage_handle)?;
        let container = names::step_container(index);
        let present = match &*stage.view.borrow() {
            PodView::Present(p) => p
                .spec
                .as_ref()
                .and_then(|s| s.init_containers.as_ref())
                .is_some_and(|c| c.iter().any(|c| c.name == container)),
            PodView::Gone => false,
        };
        if !present {
            return Err(Error::InvalidState(format!(
                "pod {} has no step {index} (`{}`)",
                stage.pod, step.name
            )));
        }
        self.wait_until(&stage, "waiting for the step to start", |p| {
            (status::progress(p, &container) != Progress::Waiting).then_some(())
        })
        .await?;
        Ok(StepHandle {
            id: format!("{}/{container}", stage.pod),
            index,
            name: step.name.clone(),
        })
    }

    async fn tail_step(&self, stage_handle: &StageHandle, step: &StepHandle) -> Result<LogStream> {
        let stage = self.stage(stage_handle)?;
        if !lock(&stage.tailed).insert(step.index) {
            return Err(Error::InvalidState(format!(
                "step {} is already being tailed",
                step.id
            )));
        }
        let lp = LogParams {
            container: Some(names::step_container(step.index)),
            follow: true,
            ..Default::default()
        };
        let reader = self
            .inner
            .pods
            .log_stream(&stage.pod, &lp)
            .await
            .map_err(api_err("pod log"))?;
        // The API merges stdout and stderr: everything is reported as stdout.
        let stream = futures::stream::unfold(Some(Box::pin(reader)), |reader| async move {
            let mut reader = reader?;
            let mut buf = vec![0u8; 32 * 1024];
            match reader.read(&mut buf).await {
                Ok(0) => None,
                Ok(n) => {
                    buf.truncate(n);
                    Some((
                        Ok(LogChunk {
                            stream: LogStreamKind::Stdout,
                            bytes: Bytes::from(buf),
                        }),
                        Some(reader),
                    ))
                }
                Err(e) => Some((Err(Error::io("reading the pod log", e)), None)),
            }
        });
        Ok(stream.boxed())
    }

    async fn wait_step(&self, stage_handle: &StageHandle, step: &StepHandle) -> Result<StepExit> {
        let stage = self.stage(stage_handle)?;
        let container = names::step_container(step.index);
        let exit = self
            .wait_until(
                &stage,
                "waiting for the step to exit",
                |p| match status::progress(p, &container) {
                    Progress::Exited(e) => Some(e),
                    _ => None,
                },
            )
            .await?;
        lock(&stage.finished).insert(step.index);
        Ok(exit)
    }

    async fn destroy_step(&self, stage_handle: &StageHandle, step: &StepHandle) -> Result<()> {
        let Ok(stage) = self.stage(stage_handle) else {
            return Ok(());
        };
        if lock(&stage.finished).contains(&step.index) {
            return Ok(());
        }
        let container = names::step_container(step.index);
        let exited = match &*stage.view.borrow() {
            PodView::Present(p) => matches!(status::progress(p, &container), Progress::Exited(_)),
            PodView::Gone => true,
        };
        if exited {
            return Ok(());
        }
        // A step cannot be stopped on its own: the stage's pod goes (later steps
        // would be skipped anyway after a timeout or cancel).
        self.delete_objects(&stage.pod).await?;
        let bound = self.inner.options.kill_grace + Duration::from_secs(30);
        let stopped = tokio::time::timeout(
            bound,
            self.wait_until(&stage, "stopping the step", |p| {
                matches!(status::progress(p, &container), Progress::Exited(_)).then_some(())
            }),
        )
        .await;
        match stopped {
            // Gone also means stopped.
            Ok(_) => Ok(()),
            Err(_) => Err(Error::Backend {
                op: "destroy_step",
                message: format!(
                    "step container {container} still runs {bound:?} after deleting its pod"
                ),
            }),
        }
    }

    async fn collect_artifacts(
        &self,
        stage_handle: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let stage = self.stage(stage_handle)?;
        for g in globs {
            crate::artifacts::check_glob(g)?;
        }
        self.wait_until(&stage, "waiting for the workspace container", |p| {
            (status::progress(p, names::WORKSPACE_CONTAINER) == Progress::Running).then_some(())
        })
        .await?;
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a temp dir for artifacts", e))?;
        let tar_path = scratch.path().join("workspace.tar");
        copy::exec_to_file(
            &self.inner.pods,
            &stage.pod,
            names::WORKSPACE_CONTAINER,
            &["tar", "-c", "-f", "-", "-C", pod::WORKSPACE, "."],
            &tar_path,
        )
        .await?;
        archive::collect_from_tar(scratch, tar_path, globs, dest).await
    }

    /// In a builder pod of its own (rootless buildah, in the builder namespace: see
    /// `image`). Image stages still go to Docker runners (`backend:docker`) unless the
    /// stage asks for `backend:kubernetes`.
    async fn build_image(
        &self,
        stage: &StageHandle,
        image: &crate::spec::ImageSpec,
        log: tokio::sync::mpsc::UnboundedSender<LogChunk>,
    ) -> Result<crate::backend::BuiltImage> {
        self.build_in_pod(stage, image, log).await
    }

    async fn destroy_stage(&self, handle: &StageHandle) -> Result<()> {
        // A build cut short by a cancel or a timeout leaves its builder pod.
        self.delete_builders_of(&handle.id).await?;
        self.delete_objects(&handle.id).await?;
        if let Some(stage) = self.inner.stages.remove(&handle.id) {
            // Return once the pod is gone: no step of this stage runs any more.
            let bound = self.inner.options.kill_grace + Duration::from_secs(30);
            let mut view = stage.view.clone();
            let gone = tokio::time::timeout(bound, async {
                loop {
                    if matches!(*view.borrow_and_update(), PodView::Gone) {
                        return true;
                    }
                    if view.changed().await.is_err() {
                        return false;
                    }
                }
            })
            .await;
            if gone != Ok(true) {
                // Check directly: the watcher may have stopped.
                let still = self
                    .inner
                    .pods
                    .get_opt(&handle.id)
                    .await
                    .map_err(api_err("get pod"))?;
                if still.is_some() {
                    return Err(Error::Backend {
                        op: "destroy_stage",
                        message: format!(
                            "pod {} still exists {bound:?} after its deletion",
                            handle.id
                        ),
                    });
                }
            }
        }
        Ok(())
    }
}
