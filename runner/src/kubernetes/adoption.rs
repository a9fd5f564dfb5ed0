//! What outlives a runner: sweeping a crashed runner's pods and Secrets, listing the
//! stage pods a restarted runner can take over, and adopting one.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};

use kube::api::{DeleteParams, ListParams};

use super::status::{self, Progress};
use super::{KubeStage, KubernetesBackend, api_err, ignore_not_found, names, pod, watch};
use crate::backend::{StageHandle, StepExit};
use crate::error::{Error, Result};

/// A stage pod a restarted runner may take over.
#[derive(Debug, Clone)]
pub struct Adoptable {
    pub handle: StageHandle,
    /// [`StageSpec::adoption`](crate::StageSpec::adoption) as the stage was set up with it.
    pub data: Option<String>,
}

impl KubernetesBackend {
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
    /// [`StageSpec::adoption`](crate::StageSpec::adoption) data each was set up with: what a restarted runner
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
    /// `handle` works with every [`Backend`](crate::Backend) method. Refused when the pod never
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
}
