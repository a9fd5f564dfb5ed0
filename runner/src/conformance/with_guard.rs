//! A backend wrapper that keeps something alive as long as the backend lives.

use std::path::Path;

use crate::{StageSpec, StepSpec};

/// A backend that keeps `guard` alive as long as it lives: e.g. the Kubernetes
/// backend and the API-server test double it talks to, so the double outlives
/// every call of a conformance case.
pub struct WithGuard<B, G> {
    pub backend: B,
    pub guard: G,
}

#[async_trait::async_trait]
impl<B: crate::Backend, G: Send + Sync> crate::Backend for WithGuard<B, G> {
    fn name(&self) -> &'static str {
        self.backend.name()
    }
    fn separates_streams(&self) -> bool {
        self.backend.separates_streams()
    }
    async fn setup_stage(&self, spec: &StageSpec) -> crate::Result<crate::StageHandle> {
        self.backend.setup_stage(spec).await
    }
    fn abandon_setup(&self, spec: &StageSpec) {
        self.backend.abandon_setup(spec)
    }
    async fn start_step(
        &self,
        stage: &crate::StageHandle,
        index: usize,
        step: &StepSpec,
    ) -> crate::Result<crate::StepHandle> {
        self.backend.start_step(stage, index, step).await
    }
    async fn tail_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<crate::LogStream> {
        self.backend.tail_step(stage, step).await
    }
    async fn wait_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<crate::StepExit> {
        self.backend.wait_step(stage, step).await
    }
    async fn destroy_step(
        &self,
        stage: &crate::StageHandle,
        step: &crate::StepHandle,
    ) -> crate::Result<()> {
        self.backend.destroy_step(stage, step).await
    }
    async fn collect_artifacts(
        &self,
        stage: &crate::StageHandle,
        globs: &[String],
        dest: &Path,
    ) -> crate::Result<Vec<crate::Artifact>> {
        self.backend.collect_artifacts(stage, globs, dest).await
    }
    async fn destroy_stage(&self, stage: &crate::StageHandle) -> crate::Result<()> {
        self.backend.destroy_stage(stage).await
    }
    async fn build_image(
        &self,
        stage: &crate::StageHandle,
        image: &crate::ImageSpec,
        log: tokio::sync::mpsc::UnboundedSender<crate::LogChunk>,
    ) -> crate::Result<crate::BuiltImage> {
        self.backend.build_image(stage, image, log).await
    }
}
