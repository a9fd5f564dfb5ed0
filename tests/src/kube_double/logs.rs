//! `GET /api/v1/namespaces/{ns}/pods/{name}/log`: a container's output as plain
//! text (stdout and stderr merged, as the kubelet serves it), from the engine's
//! json-file log. With `follow=true` it streams while the container runs and ends
//! when it exits. Errors use the API server's wording: a container that has not
//! started yet is a 400 "is waiting to start".

use std::collections::HashMap;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bollard::query_parameters::LogsOptions;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;

use super::docker::PodNames;
use super::pod_runtime::Ctx;
use super::status::ApiError;

/// How [`crate::kube_double::KubeDouble::cut_log_streams`] ends the open log streams.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogCut {
    /// The body ends as if complete: what a client sees when the API server ends its
    /// proxied response because the kubelet's side went away.
    End,
    /// The connection is aborted mid-body (a reset, an idle load balancer's close):
    /// the client's read fails.
    Reset,
}

fn flag(q: &HashMap<String, String>, k: &str) -> bool {
    q.get(k).is_some_and(|v| v == "true" || v == "1")
}

/// `sinceSeconds` or `sinceTime` (RFC 3339) as the engine's `since` (unix seconds;
/// 0: from the start).
fn since(q: &HashMap<String, String>) -> Result<i32, ApiError> {
    use k8s_openapi::jiff::Timestamp;
    let at = match (q.get("sinceSeconds"), q.get("sinceTime")) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_request(
                "at most one of sinceTime or sinceSeconds may be specified",
            ));
        }
        (Some(secs), None) => {
            let secs: i64 =
                secs.parse().ok().filter(|s| *s > 0).ok_or_else(|| {
                    ApiError::bad_request("sinceSeconds must be a positive integer")
                })?;
            Timestamp::now().as_second() - secs
        }
        (None, Some(time)) => time
            .parse::<Timestamp>()
            .map_err(|e| ApiError::bad_request(format!("sinceTime {time:?}: {e}")))?
            .as_second(),
        (None, None) => 0,
    };
    Ok(at.clamp(0, i32::MAX as i64) as i32)
}

pub async fn pod_log(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<HashMap<String, String>>,
) -> Result<Response, ApiError> {
    let pod = ctx
        .store
        .get::<Pod>(&ns, &name)
        .ok_or_else(|| ApiError::not_found("pods", &name))?;
    let spec = pod.spec.clone().unwrap_or_default();
    let mains: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    let inits: Vec<&str> = spec
        .init_containers
        .iter()
        .flatten()
        .map(|c| c.name.as_str())
        .collect();
    let container = match q.get("container").filter(|c| !c.is_empty()) {
        Some(c) => c.clone(),
        None if mains.len() == 1 => mains[0].to_owned(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}] or one of the init containers: [{}]",
                mains.join(" "),
                inits.join(" ")
            )));
        }
    };
    if !mains.contains(&container.as_str()) && !inits.contains(&container.as_str()) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    if flag(&q, "previous") {
        return Err(ApiError::bad_request(format!(
            "previous terminated container \"{container}\" in pod \"{name}\" not found"
        )));
    }
    let status = pod.status.unwrap_or_default();
    let cs = status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
        .find(|c| c.name == container)
        .cloned();
    let waiting = cs.as_ref().is_none_or(super::pod_status::is_waiting);
    if waiting {
        let reason = cs
            .as_ref()
            .and_then(super::pod_status::waiting_reason)
            .unwrap_or_else(|| "ContainerCreating".into());
        return Err(ApiError::bad_request(format!(
            "container \"{container}\" in pod \"{name}\" is waiting to start: {reason}"
        )));
    }
    if ctx.node_health.lost() {
        return Err(ApiError::kubelet_unreachable(&format!(
            "containerLogs/{ns}/{name}/{container}"
        )));
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let docker_name = PodNames::new(&ctx.instance, &uid).container(&container);
    let opts = LogsOptions {
        follow: flag(&q, "follow"),
        stdout: true,
        stderr: true,
        timestamps: flag(&q, "timestamps"),
        tail: q
            .get("tailLines")
            .and_then(|t| t.parse::<u64>().ok())
            .map_or("all".to_owned(), |n| n.to_string()),
        since: since(&q)?,
        ..Default::default()
    };
    let mut remaining = q.get("limitBytes").and_then(|l| l.parse::<usize>().ok());
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(16);
    let plain = !opts.timestamps && opts.tail == "all" && opts.since == 0;
    if !(plain && ctx.captures.stream(&docker_name, opts.follow, tx.clone())) {
        tokio::spawn(read_log(ctx.clone(), docker_name, opts, tx));
    }
    // Forwarded until the end, or until a cut (`KubeDouble::cut_log_streams`).
    let (out_tx, out_rx) = tokio::sync::mpsc::channel::<Result<bytes::Bytes, std::io::Error>>(16);
    let mut cut = ctx.log_cut.subscribe();
    cut.mark_unchanged();
    tokio::spawn(async move {
        loop {
            tokio::select! {
                b = rx.recv() => {
                    let Some(mut b) = b else { return };
                    match remaining.as_mut() {
                        None => {}
                        Some(0) => return,
                        Some(left) => {
                            b = b.slice(..b.len().min(*left));
                            *left -= b.len();
                        }
                    }
                    if out_tx.send(Ok(b)).await.is_err() {
                        return;
                    }
                }
                changed = cut.changed() => {
                    if changed.is_ok() && *cut.borrow() == LogCut::Reset {
                        let _ = out_tx
                            .send(Err(std::io::Error::other("log stream cut by the test")))
                            .await;
                    }
                    return;
                }
            }
        }
    });
    let body = futures::stream::unfold(
        out_rx,
        |mut rx| async move { rx.recv().await.map(|b| (b, rx)) },
    );
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))
        .expect("static headers are valid"))
}

/// Sends a container's log to `tx`. The engine's `follow` can end when the
/// container stops before everything written was read (seen with fast writers on
/// both the json-file and local drivers), so once the follow ends and the
/// container has stopped, the whole log is read again and what the follow missed
/// is sent: the kubelet serves a complete log, and so must the double.
async fn read_log(
    ctx: Arc<Ctx>,
    container: String,
    opts: LogsOptions,
    tx: tokio::sync::mpsc::Sender<bytes::Bytes>,
) {
    let shutdown = ctx.shutdown.clone();
    let follow = opts.follow;
    let mut sent = 0usize;
    let read = async {
        let mut logs = ctx.docker.logs(&container, Some(opts.clone()));
        // The engine's stream ends with an error if the container is removed
        // mid-follow (pod deleted): the log simply ends, as on a cluster.
        while let Some(Ok(out)) = logs.next().await {
            let b = out.into_bytes();
            sent += b.len();
            if tx.send(b).await.is_err() {
                return;
            }
        }
        if !follow {
            return;
        }
        for _ in 0..200 {
            match ctx.docker.inspect_container(&container, None).await {
                Ok(info) if info.state.as_ref().and_then(|s| s.running) == Some(true) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Ok(_) => break,
                // Removed: nothing more to read.
                Err(_) => return,
            }
        }
        let mut skip = sent;
        let all = LogsOptions {
            follow: false,
            ..opts
        };
        let mut logs = ctx.docker.logs(&container, Some(all));
        while let Some(Ok(out)) = logs.next().await {
            let b = out.into_bytes();
            if skip >= b.len() {
                skip -= b.len();
                continue;
            }
            let b = b.slice(skip..);
            skip = 0;
            if tx.send(b).await.is_err() {
                return;
            }
        }
    };
    tokio::select! {
        _ = read => {}
        _ = shutdown.cancelled() => {}
    }
}
