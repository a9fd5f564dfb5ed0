//! The [`Backend`] impl: a stage is its pod, a step one of its init containers.

use std::path::Path;

use async_trait::async_trait;

use super::status::{self, Progress};
use super::watch::PodView;
use super::{KubernetesBackend, names, pod};
use crate::artifacts::Artifact;
use crate::backend::{Backend, LogChunk, LogStream, StageHandle, StepExit, StepHandle};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::spec::{StageSpec, StepSpec};

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
        let setup = self.inner.setups.begin(spec);
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
            .create_admitted(spec, &setup.setup, &objects.pod)
            .await?;
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
                if let Err(cleanup) = self.delete_until_gone(&name, None).await {
                    tracing::error!(pod = %name, error = %cleanup, "cleaning up a failed set-up");
                }
                Err(e)
            }
        }
    }

    fn abandon_setup(&self, spec: &StageSpec) {
        self.inner.setups.abandon(spec);
    }

    fn waiting_reason(&self, stage_id: &str) -> Option<String> {
        KubernetesBackend::waiting_reason(self, stage_id)
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
        Ok(super::log_follow::follow(
            self.inner.pods.clone(),
            stage.pod.clone(),
            names::step_container(step.index),
            stage.view.clone(),
        ))
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
        let options = &self.inner.options;
        let bound = options.kill_grace + options.force_delete_after;
        let stopped = tokio::time::timeout(bound, async {
            let mut view = stage.view.clone();
            loop {
                match &*view.borrow_and_update() {
                    PodView::Gone => return true,
                    PodView::Present(p) => {
                        if matches!(status::progress(p, &container), Progress::Exited(_)) {
                            return true;
                        }
                        // Its node is lost: nothing will report the stop.
                        if super::node_loss::needs_force(p) {
                            return false;
                        }
                    }
                }
                if view.changed().await.is_err() {
                    return false;
                }
            }
        })
        .await;
        if stopped != Ok(true) {
            // Still "running" on a node that does not answer (or a watcher that
            // stopped): remove the pod from the API; its kubelet, if it comes
            // back, kills what is left.
            tracing::warn!(pod = %stage.pod, %container, "step not seen stopping; forcing the pod's deletion");
            self.force_delete(&stage.pod).await?;
        }
        Ok(())
    }

    async fn collect_artifacts(
        &self,
        stage_handle: &StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let stage = self.stage(stage_handle)?;
        crate::artifacts::check_globs(globs)?;
        self.wait_until(&stage, "waiting for the workspace container", |p| {
            (status::progress(p, names::WORKSPACE_CONTAINER) == Progress::Running).then_some(())
        })
        .await?;
        // Selected in the pod: only the artifacts cross the wire (see `artifacts`).
        self.collect_from_pod(&stage, globs, dest).await
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
        match self.inner.stages.remove(&handle.id) {
            // Return once the pod is gone: no step of this stage runs any more.
            Some(stage) => self
                .delete_until_gone(&handle.id, Some(stage.view.clone()))
                .await
                .map_err(|e| Error::Backend {
                    op: "destroy_stage",
                    message: e.to_string(),
                }),
            None => self.delete_objects(&handle.id).await,
        }
    }
}
