//! Waiting on a stage pod through its watch until a condition holds, failing on what
//! blocks it (a missing image or a failing service at once; unschedulable or a config
//! error after a grace; a rate-limited pull or a busy runtime after
//! `transient_error_limit`).

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;

use super::status::{self, Blocker};
use super::watch::PodView;
use super::{KubeStage, KubernetesBackend};
use crate::error::{Error, Result};

impl KubernetesBackend {
    /// Waits until `ready` says yes, failing on whatever blocks the pod.
    pub(super) async fn wait_until<T>(
        &self,
        stage: &KubeStage,
        what: &str,
        mut ready: impl FnMut(&Pod) -> Option<T>,
    ) -> Result<T> {
        let options = &self.inner.options;
        let mut view = stage.view.clone();
        let mut unschedulable_since: Option<Instant> = None;
        let mut config_error_since: Option<Instant> = None;
        let mut transient_since: Option<Instant> = None;
        // `ImagePullBackOff` says only "Back-off pulling image": the cause is in the
        // `ErrImagePull` seen before it.
        let mut last_pull_error: Option<String> = None;
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
                    // The cluster removes the pod (a lost node's taint eviction, a
                    // drain): retryable, the stage can run again elsewhere.
                    if let Some(why) = super::node_loss::disruption(&pod) {
                        return Err(Error::Backend {
                            op: "pod",
                            message: format!(
                                "the cluster is removing pod {} while {what}: {why}",
                                stage.pod
                            ),
                        });
                    }
                    // `transient_since` is never reset: between two failed pulls the
                    // container waits with no error (pulling), and the limit counts
                    // from the first failure.
                    match status::blocker(&pod) {
                        Some(Blocker::ImagePull {
                            image,
                            mut message,
                            transient: true,
                        }) => {
                            if message.starts_with("ErrImagePull") {
                                last_pull_error = Some(message.clone());
                            } else if let Some(cause) = &last_pull_error {
                                message = format!("{message} (after {cause})");
                            }
                            let since = *transient_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= options.transient_error_limit {
                                let b = Blocker::ImagePull {
                                    image,
                                    message,
                                    transient: true,
                                };
                                return Err(b.into_error());
                            }
                        }
                        Some(b @ Blocker::Transient { .. }) => {
                            let since = *transient_since.get_or_insert_with(Instant::now);
                            if since.elapsed() >= options.transient_error_limit {
                                return Err(b.into_error());
                            }
                        }
                        Some(
                            b @ (Blocker::ImagePull { .. }
                            | Blocker::Failed(_)
                            | Blocker::Service { .. }),
                        ) => {
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
}
