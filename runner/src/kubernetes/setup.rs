//! Filling a new stage pod: the upload (workspace and step scripts as one tar), the
//! pod's Secret, then the upload exec'd into the `source` container.

use std::collections::HashSet;
use std::path::Path;
use std::sync::{Arc, Mutex};

use k8s_openapi::api::core::v1::{Pod, Secret};

use super::status::{self, Progress};
use super::{KubeStage, KubernetesBackend, RunAs, api_err, copy, names, pod, strict, watch};
use crate::archive;
use crate::error::{Error, Result};
use crate::spec::StageSpec;

impl KubernetesBackend {
    /// Writes the upload for `spec`: the workspace's entries under `workspace/`
    /// (owned by the uid/gid the steps run as) and the step scripts under
    /// `slipway/steps/`. Blocking.
    pub(super) fn upload_archive(
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
    pub(super) async fn fill_pod(
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
            strict::create(&self.inner.client, &self.inner.secrets, &secret)
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
            |stdin| {
                format!(
                    "{stdin} | tar -x -o -f - -C / && touch {}",
                    pod::READY_MARKER
                )
            },
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
