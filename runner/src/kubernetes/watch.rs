//! Following one pod: a task keeps the latest object in a `tokio::sync::watch`
//! channel, from a watch on the pod's name. Whenever a watch ends (it timed out,
//! a 410 Expired, a broken connection) the pod is read again and watched from
//! that read's `resourceVersion`: no change is missed, and a deletion is seen
//! even if its event was. One GET per watch period is the price.

use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{WatchEvent, WatchParams};
use tokio::sync::watch;
use tokio::task::AbortHandle;

/// What is known of the pod.
#[derive(Debug, Clone)]
pub enum PodView {
    Present(Arc<Pod>),
    /// Deleted (and its containers stopped).
    Gone,
}

/// Seconds a single watch request stays open; the API server caps it anyway.
const WATCH_SECONDS: u32 = 290;
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Starts following `initial` (as returned by create or get).
pub fn follow(pods: Api<Pod>, initial: Pod) -> (watch::Receiver<PodView>, AbortHandle) {
    let name = initial.metadata.name.clone().unwrap_or_default();
    let rv = initial
        .metadata
        .resource_version
        .clone()
        .unwrap_or_default();
    let (tx, rx) = watch::channel(PodView::Present(Arc::new(initial)));
    let task = tokio::spawn(run(pods, name, rv, tx));
    (rx, task.abort_handle())
}

async fn run(pods: Api<Pod>, name: String, mut rv: String, tx: watch::Sender<PodView>) {
    let mut backoff = Duration::from_millis(100);
    loop {
        let wp = WatchParams::default()
            .fields(&format!("metadata.name={name}"))
            .timeout(WATCH_SECONDS);
        let mut progressed = false;
        match pods.watch(&wp, &rv).await {
            Ok(stream) => {
                let mut stream = std::pin::pin!(stream);
                while let Some(event) = stream.next().await {
                    match event {
                        Ok(WatchEvent::Added(p)) | Ok(WatchEvent::Modified(p)) => {
                            progressed = true;
                            backoff = Duration::from_millis(100);
                            if tx.send(PodView::Present(Arc::new(p))).is_err() {
                                return;
                            }
                        }
                        Ok(WatchEvent::Deleted(_)) => {
                            let _ = tx.send(PodView::Gone);
                            return;
                        }
                        Ok(WatchEvent::Bookmark(_)) => {}
                        Ok(WatchEvent::Error(e)) => {
                            // 410 Expired included: re-read below, watch from there.
                            tracing::debug!(pod = %name, code = e.code, reason = %e.reason, "pod watch error");
                            break;
                        }
                        Err(e) => {
                            tracing::debug!(pod = %name, error = %e, "pod watch interrupted");
                            break;
                        }
                    }
                }
            }
            Err(e) => tracing::warn!(pod = %name, error = %e, "cannot watch pod"),
        }
        if tx.is_closed() {
            return;
        }
        if !progressed {
            // A watch that fails or ends at once must not turn into a busy loop.
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        // Resynchronise: the pod may have changed (or gone) while nobody watched.
        loop {
            match pods.get_opt(&name).await {
                Ok(Some(p)) => {
                    rv = p.metadata.resource_version.clone().unwrap_or_default();
                    if tx.send(PodView::Present(Arc::new(p))).is_err() {
                        return;
                    }
                    break;
                }
                Ok(None) => {
                    let _ = tx.send(PodView::Gone);
                    return;
                }
                Err(e) => {
                    tracing::warn!(pod = %name, error = %e, "cannot read pod");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(BACKOFF_MAX);
                }
            }
        }
    }
}
