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
    let shutdown = ctx.shutdown.clone();
    let logs = ctx.docker.logs(&docker_name, Some(opts));
    let logs = logs.take_until(async move { shutdown.cancelled().await });
    let body = logs
        .map(|item| item.map(|out| out.into_bytes()))
        // The engine's stream ends with an error if the container is removed
        // mid-follow (pod deleted): the log simply ends, as on a cluster.
        .take_while(|item| std::future::ready(item.is_ok()))
        .filter_map(move |item| {
            let bytes = item.ok();
            let out = match (bytes, remaining.as_mut()) {
                (None, _) => None,
                (Some(b), None) => Some(b),
                (Some(_), Some(0)) => None,
                (Some(b), Some(left)) => {
                    let b = b.slice(..b.len().min(*left));
                    *left -= b.len();
                    Some(b)
                }
            };
            std::future::ready(out.map(Ok::<_, std::convert::Infallible>))
        });
    Ok(Response::builder()
        .header("content-type", "text/plain")
        .body(Body::from_stream(body))
        .expect("static headers are valid"))
}
