//! The Docker backend: each stage gets a user-defined network and a workspace
//! volume; services and steps are containers on that network mounting the volume.
//!
//! Every object is labelled with the runner's name and the stage ([`names`]), so
//! that `destroy_stage` and the start-up [`DockerBackend::sweep`] find what to
//! remove by asking the engine rather than by remembering: a runner that crashed
//! leaves labelled leftovers, and its next start removes them before it leases.
//!
//! Modules: [`names`] (valid, unique names and labels), [`image`] (present or
//! pulled, else a clear error), [`volume`] (files in and out of the volume through
//! a created-not-started container), [`archive`] (tar out with symlinks kept, tar in
//! extracted safely), [`services`] (start and readiness), [`step`] (step
//! containers and their output), [`cleanup`] (removal by label).

mod cleanup;
mod engine;
mod image;
pub(crate) mod names;
mod services;
mod step;
mod volume;

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use bollard::Docker;
use bollard::models::{NetworkCreateRequest, VolumeCreateRequest};
use bollard::query_parameters::{
    RemoveContainerOptionsBuilder, StopContainerOptionsBuilder, WaitContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::io::AsyncWriteExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

pub use cleanup::DockerSweepReport;

use crate::archive;
use crate::artifacts::Artifact;
use crate::backend::{Backend, BuiltImage, LogChunk, LogStream, StageHandle, StepExit, StepHandle};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::registry::Registry;
use crate::spec::{ContainerSettings, ImageSpec, Source, StageSpec, StepSpec};

/// Where the workspace volume is mounted in every container.
pub const WORKSPACE: &str = "/workspace";
/// The oldest Engine API this backend speaks (Docker 20.10).
const MIN_API: bollard::ClientVersion = bollard::ClientVersion {
    major_version: 1,
    minor_version: 41,
};

/// Settings of a [`DockerBackend`].
#[derive(Debug, Clone)]
pub struct DockerOptions {
    /// Value of the `io.slipway.runner` label on everything this backend creates.
    /// Must be stable for a runner across restarts (the sweep removes what carries
    /// it) and distinct between runners sharing an engine.
    pub runner_name: String,
    /// The engine's address (`unix:///var/run/docker.sock`, `tcp://…`); `None`:
    /// `DOCKER_HOST` or the platform default.
    pub host: Option<String>,
    /// How long pulling a missing image may take before the stage fails.
    pub pull_timeout: Duration,
    /// Time between SIGTERM and SIGKILL when a step is stopped.
    pub kill_grace: Duration,
    /// How long services may take to become ready.
    pub service_timeout: Duration,
}

impl DockerOptions {
    pub fn new(runner_name: impl Into<String>) -> Self {
        DockerOptions {
            runner_name: runner_name.into(),
            host: None,
            pull_timeout: Duration::from_secs(30),
            kill_grace: Duration::from_secs(2),
            service_timeout: Duration::from_secs(120),
        }
    }
}

/// Runs stages as containers on a Docker engine. Cheap to clone; clones share state.
#[derive(Clone)]
pub struct DockerBackend {
    inner: Arc<Inner>,
}

struct Inner {
    docker: Docker,
    options: DockerOptions,
    stages: Registry<DockerStage>,
}

impl std::fmt::Debug for DockerBackend {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerBackend")
            .field("options", &self.inner.options)
            .field("stages", &self.inner.stages)
            .finish_non_exhaustive()
    }
}

struct DockerStage {
    image: String,
    env: BTreeMap<String, String>,
    container: ContainerSettings,
    workdir: String,
    steps: Registry<DockerStep>,
}

struct DockerStep {
    container: String,
    logs: Mutex<Option<mpsc::Receiver<Result<LogChunk>>>>,
    reader: AbortHandle,
}

impl DockerBackend {
    /// Connects to the engine and agrees on an API version (at most the engine's;
    /// at least 1.41).
    pub async fn connect(options: DockerOptions) -> Result<DockerBackend> {
        if options.runner_name.is_empty() {
            return Err(Error::InvalidSpec(
                "docker backend: empty runner name".into(),
            ));
        }
        let unreachable = |e: bollard::errors::Error| Error::Backend {
            op: "connect",
            message: format!("cannot reach the Docker engine: {}", engine::message(&e)),
        };
        let docker = match &options.host {
            Some(host) if host.starts_with("unix://") || host.starts_with('/') => {
                Docker::connect_with_unix(host, 120, bollard::API_DEFAULT_VERSION)
            }
            Some(host) => Docker::connect_with_http(host, 120, bollard::API_DEFAULT_VERSION),
            None => Docker::connect_with_local_defaults(),
        }
        .map_err(unreachable)?;
        let docker = docker.negotiate_version().await.map_err(unreachable)?;
        if docker.client_version() < MIN_API {
            return Err(Error::Backend {
                op: "connect",
                message: format!(
                    "the Docker engine speaks API {}; at least {MIN_API} is needed",
                    docker.client_version()
                ),
            });
        }
        Ok(DockerBackend {
            inner: Arc::new(Inner {
                docker,
                options,
                stages: Registry::new("stage"),
            }),
        })
    }

    /// The engine client, e.g. for image builds on the same engine.
    pub fn docker(&self) -> &Docker {
        &self.inner.docker
    }

    pub fn runner_name(&self) -> &str {
        &self.inner.options.runner_name
    }

    /// Removes every container, network and volume labelled with this runner's
    /// name: what a crashed runner left behind. Call it at start-up, before leasing
    /// anything (a leftover step would otherwise still run while the server re-runs
    /// its stage). Never touches other runners' objects.
    pub async fn sweep(&self) -> Result<DockerSweepReport> {
        cleanup::remove_labelled(
            &self.inner.docker,
            names::RUNNER_LABEL,
            &self.inner.options.runner_name,
        )
        .await
    }

    /// A tar of the workspace directory `subdir` (relative; `""` or `.` for the
    /// whole workspace), entries relative to it: e.g. an image build context.
    pub async fn workspace_archive(&self, stage: &StageHandle, subdir: &str) -> Result<Vec<u8>> {
        let st = self.stage(stage)?;
        let path = match step::workdir(&ContainerSettings {
            workdir: Some(subdir.to_owned()),
            ..Default::default()
        }) {
            Ok(p) => p,
            Err(_) => {
                return Err(Error::InvalidSpec(format!(
                    "workspace directory `{subdir}` must be a relative path inside the workspace"
                )));
            }
        };
        let docker = &self.inner.docker;
        let io =
            volume::IoContainer::create(docker, self.runner_name(), &stage.id, &st.image).await?;
        let mut out = Vec::new();
        let read = async {
            let mut stream = std::pin::pin!(io.download(docker, &format!("{path}/.")));
            while let Some(chunk) = stream.next().await {
                out.extend_from_slice(&chunk?);
            }
            Ok::<(), bollard::errors::Error>(())
        }
        .await;
        io.remove(docker).await?;
        read.map_err(|e| {
            if engine::is_not_found(&e) {
                Error::InvalidSpec(format!("workspace directory `{subdir}` does not exist"))
            } else {
                engine::err("download_from_container")(e)
            }
        })?;
        Ok(out)
    }

    fn stage(&self, handle: &StageHandle) -> Result<Arc<DockerStage>> {
        self.inner.stages.get(&handle.id)
    }

    /// Everything of `setup_stage` after the name was chosen; on error the caller
    /// removes what was created (by label).
    async fn create_stage(&self, spec: &StageSpec, id: &str, image: &str) -> Result<DockerStage> {
        let docker = &self.inner.docker;
        let runner = self.runner_name();
        let workdir = step::workdir(&spec.container)?;

        docker
            .create_volume(VolumeCreateRequest {
                name: Some(id.to_owned()),
                labels: Some(names::labels(runner, id, "workspace")),
                ..Default::default()
            })
            .await
            .map_err(engine::err("create_volume"))?;
        docker
            .create_network(NetworkCreateRequest {
                name: id.to_owned(),
                driver: Some("bridge".into()),
                labels: Some(names::labels(runner, id, "network")),
                ..Default::default()
            })
            .await
            .map_err(engine::err("create_network"))?;

        self.fill_workspace(spec, id, image, &workdir).await?;

        for (i, service) in spec.services.iter().enumerate() {
            let container = services::start(
                docker,
                runner,
                id,
                i,
                service,
                self.inner.options.service_timeout,
            )
            .await?;
            services::wait_ready(
                docker,
                &container,
                service,
                self.inner.options.service_timeout,
            )
            .await?;
        }

        Ok(DockerStage {
            image: image.to_owned(),
            env: spec.env.clone(),
            container: spec.container.clone(),
            workdir,
            steps: Registry::new("step"),
        })
    }

    /// Copies the source into the volume, owned by the user steps run as.
    async fn fill_workspace(
        &self,
        spec: &StageSpec,
        id: &str,
        image: &str,
        workdir: &str,
    ) -> Result<()> {
        let docker = &self.inner.docker;
        let io = volume::IoContainer::create(docker, self.runner_name(), id, image).await?;
        let filled = async {
            let user = match &spec.container.user {
                Some(u) => Some(u.clone()),
                None => docker
                    .inspect_image(image)
                    .await
                    .map_err(engine::err("inspect_image"))?
                    .config
                    .and_then(|c| c.user)
                    .filter(|u| !u.is_empty()),
            };
            let owner = match user {
                Some(u) => volume::resolve_owner(docker, &io, &u).await?,
                None => archive::Owner { uid: 0, gid: 0 },
            };
            let rel_workdir = workdir
                .strip_prefix(WORKSPACE)
                .unwrap_or_default()
                .trim_start_matches('/')
                .to_owned();
            let source = spec.source.clone();
            let tar_file =
                tokio::task::spawn_blocking(move || prepare_archive(&source, owner, rel_workdir))
                    .await
                    .map_err(|e| Error::Backend {
                        op: "setup_stage",
                        message: e.to_string(),
                    })??;
            io.upload_file(docker, tar_file.path(), "/").await
        }
        .await;
        let removed = io.remove(docker).await;
        filled?;
        removed
    }
}

/// Clones or reads the source on the host and writes the workspace archive to a
/// temp file (a repository may not fit in memory). Blocking.
fn prepare_archive(
    source: &Source,
    owner: archive::Owner,
    workdir: String,
) -> Result<tempfile::NamedTempFile> {
    let extra: Vec<String> = if workdir.is_empty() {
        vec![]
    } else {
        vec![workdir]
    };
    // Uploaded at `/`: entries land in the volume mounted at /workspace.
    let root = Path::new(WORKSPACE.trim_start_matches('/'));
    let file = tempfile::NamedTempFile::new()
        .map_err(|e| Error::io("creating a temp file for the workspace archive", e))?;
    let out = std::io::BufWriter::new(
        file.reopen()
            .map_err(|e| Error::io("opening the workspace archive", e))?,
    );
    archive::with_source_dir(source, |dir| {
        archive::tar_tree(dir, root, owner, &extra, out)
    })?;
    Ok(file)
}

#[async_trait]
impl Backend for DockerBackend {
    fn name(&self) -> &'static str {
        "docker"
    }

    async fn setup_stage(&self, spec: &StageSpec) -> Result<StageHandle> {
        spec.validate()?;
        let image = spec.image.clone().ok_or_else(|| {
            Error::InvalidSpec(format!(
                "stage `{}` has no image; the docker backend runs steps in containers",
                spec.id
            ))
        })?;
        step::workdir(&spec.container)?;
        let docker = &self.inner.docker;
        let pull = self.inner.options.pull_timeout;
        image::ensure(docker, &image, pull).await?;
        for service in &spec.services {
            image::ensure(docker, &service.image, pull)
                .await
                .map_err(|e| Error::ServiceFailed {
                    service: service.name.clone(),
                    message: e.to_string(),
                })?;
        }

        let id = names::stage_name(&spec.id);
        match self.create_stage(spec, &id, &image).await {
            Ok(stage) => {
                self.inner.stages.insert(id.clone(), stage);
                Ok(StageHandle {
                    stage: spec.id.clone(),
                    id,
                    workspace: None,
                })
            }
            Err(e) => {
                // Leave nothing behind on failure (trait contract).
                if let Err(cleanup) =
                    cleanup::remove_labelled(docker, names::STAGE_LABEL, &id).await
                {
                    tracing::error!(stage = %id, error = %cleanup, "cleaning up a failed set-up");
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
        let name = names::step_container(&stage_handle.id, index);
        let handle = StepHandle {
            id: name.clone(),
            index,
            name: step.name.clone(),
        };
        let mut env = stage.env.clone();
        env.extend(step.env.clone());
        let cfg = step::StepConfig {
            runner: self.runner_name(),
            stage: &stage_handle.id,
            image: &stage.image,
            env,
            workdir: stage.workdir.clone(),
            settings: &stage.container,
        };
        let docker = &self.inner.docker;
        let (rx, reader) = step::start(docker, &name, &cfg, &step.script).await?;
        stage.steps.insert(
            name.clone(),
            DockerStep {
                container: name,
                logs: Mutex::new(Some(rx)),
                reader,
            },
        );
        Ok(handle)
    }

    async fn tail_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<LogStream> {
        let stage = self.stage(stage)?;
        let st = stage.steps.get(&step.id)?;
        let mut rx = lock(&st.logs).take().ok_or_else(|| {
            Error::InvalidState(format!("step {} is already being tailed", step.id))
        })?;
        Ok(Box::pin(futures::stream::poll_fn(move |cx| {
            rx.poll_recv(cx)
        })))
    }

    async fn wait_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<StepExit> {
        let stage = self.stage(stage)?;
        let st = stage.steps.get(&step.id)?;
        let docker = &self.inner.docker;
        let opts = WaitContainerOptionsBuilder::new()
            .condition("not-running")
            .build();
        let mut wait = docker.wait_container(&st.container, Some(opts));
        match wait.next().await {
            // A non-zero exit arrives as an error carrying the code; the exit code
            // and the OOM flag are read from inspect either way.
            Some(Ok(_)) | Some(Err(bollard::errors::Error::DockerContainerWaitError { .. })) => {}
            Some(Err(e)) => return Err(engine::err("wait_container")(e)),
            None => {
                return Err(Error::Backend {
                    op: "wait_container",
                    message: "the engine closed the wait without a status".into(),
                });
            }
        }
        let info = docker
            .inspect_container(&st.container, None)
            .await
            .map_err(engine::err("inspect_container (step)"))?;
        let state = info.state.unwrap_or_default();
        Ok(StepExit {
            exit_code: state.exit_code.unwrap_or(-1) as i32,
            oom_killed: state.oom_killed.unwrap_or(false),
        })
    }

    async fn destroy_step(&self, stage: &StageHandle, step: &StepHandle) -> Result<()> {
        let Ok(st) = self.stage(stage) else {
            return Ok(());
        };
        let Ok(s) = st.steps.get(&step.id) else {
            return Ok(());
        };
        let docker = &self.inner.docker;
        let grace = self.inner.options.kill_grace.as_secs().max(1) as i32;
        // SIGTERM (forwarded by init to the shell), SIGKILL after the grace period;
        // 304 (already stopped) is success.
        engine::gone_ok(
            docker
                .stop_container(
                    &s.container,
                    Some(StopContainerOptionsBuilder::new().t(grace).build()),
                )
                .await,
        )
        .map_err(engine::err("stop_container"))?;
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        engine::gone_ok(docker.remove_container(&s.container, Some(opts)).await)
            .map_err(engine::err("remove_container (step)"))?;
        // The attach stream ends with the container; abort in case it did not.
        let reader = s.reader.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(30)).await;
            reader.abort();
        });
        st.steps.remove(&step.id);
        Ok(())
    }

    async fn collect_artifacts(
        &self,
        stage: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let st = self.stage(stage)?;
        for g in globs {
            crate::artifacts::check_glob(g)?;
        }
        let docker = &self.inner.docker;
        // The workspace is streamed to a temp file, then extracted off the async
        // runtime: neither step holds the whole workspace in memory.
        let scratch =
            tempfile::tempdir().map_err(|e| Error::io("creating a temp dir for artifacts", e))?;
        let tar_path = scratch.path().join("workspace.tar");
        let io =
            volume::IoContainer::create(docker, self.runner_name(), &stage.id, &st.image).await?;
        let downloaded = async {
            let mut file = tokio::fs::File::create(&tar_path)
                .await
                .map_err(|e| Error::io(format!("creating {}", tar_path.display()), e))?;
            let mut stream = std::pin::pin!(io.download(docker, &format!("{WORKSPACE}/.")));
            while let Some(chunk) = stream.next().await {
                let chunk = chunk.map_err(engine::err("download_from_container"))?;
                file.write_all(&chunk)
                    .await
                    .map_err(|e| Error::io(format!("writing {}", tar_path.display()), e))?;
            }
            file.flush()
                .await
                .map_err(|e| Error::io(format!("writing {}", tar_path.display()), e))
        }
        .await;
        io.remove(docker).await?;
        downloaded?;

        archive::collect_from_tar(scratch, tar_path, globs, dest).await
    }

    async fn destroy_stage(&self, handle: &StageHandle) -> Result<()> {
        let report =
            cleanup::remove_labelled(&self.inner.docker, names::STAGE_LABEL, &handle.id).await?;
        if let Some(first) = report.errors.first() {
            return Err(Error::Backend {
                op: "destroy_stage",
                message: format!("{first} ({} problem(s) in all)", report.errors.len()),
            });
        }
        if let Some(stage) = self.inner.stages.remove(&handle.id) {
            for (_, s) in stage.steps.drain() {
                s.reader.abort();
            }
        }
        Ok(())
    }

    /// Builds through this engine from the workspace's context directory, then pushes.
    async fn build_image(
        &self,
        stage: &StageHandle,
        image: &ImageSpec,
        log: mpsc::UnboundedSender<LogChunk>,
    ) -> Result<BuiltImage> {
        use crate::image_build::{self, BuildContext, DockerfileLocation};
        // Checked before anything is copied: a bad path is the pipeline's mistake.
        let location = image_build::locate_dockerfile(image)?;
        let mut context = BuildContext::new(self.workspace_archive(stage, &image.context).await?);
        if location == DockerfileLocation::OutsideContext {
            let st = self.stage(stage)?;
            let docker = &self.inner.docker;
            let io = volume::IoContainer::create(docker, self.runner_name(), &stage.id, &st.image)
                .await?;
            let path = format!("{WORKSPACE}/{}", image.dockerfile.trim_start_matches("./"));
            let read = io.read_small_file(docker, &path).await;
            io.remove(docker).await?;
            let dockerfile = read?.ok_or_else(|| {
                Error::ImageBuild(format!(
                    "Dockerfile `{}` not found in the workspace",
                    image.dockerfile
                ))
            })?;
            context = context.with_dockerfile(dockerfile);
        }
        image_build::build_and_push(&self.inner.docker, context, image, log).await
    }
}
