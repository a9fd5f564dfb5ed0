//! Service containers (databases, caches) started before a stage's steps, reachable
//! by their name on the stage network, and waited for.
//!
//! Ready means running, and `healthy` when the image (or its config) declares a
//! HEALTHCHECK: a database accepting connections, not merely a started process. A
//! service's `ready:` command becomes its container's health check (`CMD-SHELL`,
//! every second, failures not counted for the whole wait), so the key means on
//! Docker what it means on Kubernetes (the sidecar's startup probe).
//! The wait is bounded; a service that exits, turns unhealthy or never gets ready
//! fails the stage with its name and the last lines of its output.

use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthConfig, HealthStatusEnum, HostConfig,
    NetworkingConfig,
};
use bollard::query_parameters::{CreateContainerOptionsBuilder, LogsOptionsBuilder};
use futures::StreamExt;
use tokio::time::Instant;

use super::{engine, names};
use crate::error::{Error, Result};
use crate::spec::ServiceSpec;

/// Time between two readiness checks.
const POLL: Duration = Duration::from_millis(250);
/// Lines of a failed service's output quoted in the error.
const LOG_LINES: &str = "20";

/// How often a `ready:` command runs, and how long one run may take.
const READY_INTERVAL: Duration = Duration::from_secs(1);
const READY_TIMEOUT: Duration = Duration::from_secs(10);

/// The health check of a service with a `ready:` command: run every second; its
/// failures never turn the container `unhealthy` within `ready_within` (the start
/// period), so [`wait_ready`]'s own deadline decides, with the command's output.
fn ready_check(service: &ServiceSpec, ready_within: Duration) -> Option<HealthConfig> {
    let command = service.ready.as_ref()?;
    let nanos = |d: Duration| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX);
    Some(HealthConfig {
        test: Some(vec!["CMD-SHELL".into(), command.clone()]),
        interval: Some(nanos(READY_INTERVAL)),
        timeout: Some(nanos(READY_TIMEOUT)),
        retries: Some(3),
        start_period: Some(nanos(ready_within)),
        ..Default::default()
    })
}

/// Creates and starts `service` on `network`; returns the container name.
/// `ready_within`: how long its `ready:` command may keep failing.
pub async fn start(
    docker: &Docker,
    runner: &str,
    stage: &str,
    index: usize,
    service: &ServiceSpec,
    ready_within: Duration,
) -> Result<String> {
    let name = names::service_container(stage, index, &service.name);
    let env = service
        .env
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let body = ContainerCreateBody {
        image: Some(service.image.clone()),
        cmd: service.command.clone(),
        env: Some(env),
        healthcheck: ready_check(service, ready_within),
        labels: Some(names::labels(runner, stage, "service")),
        host_config: Some(HostConfig {
            network_mode: Some(stage.to_owned()),
            init: Some(true),
            ..Default::default()
        }),
        networking_config: Some(NetworkingConfig {
            endpoints_config: Some(
                [(
                    stage.to_owned(),
                    EndpointSettings {
                        aliases: Some(vec![service.name.clone()]),
                        ..Default::default()
                    },
                )]
                .into(),
            ),
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new().name(&name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(|e| {
            failed(
                service,
                format!("cannot create its container: {}", engine::message(&e)),
            )
        })?;
    docker
        .start_container(&name, None)
        .await
        .map_err(|e| failed(service, format!("cannot start: {}", engine::message(&e))))?;
    Ok(name)
}

/// Waits until the service is ready (see the module docs), at most `limit`.
pub async fn wait_ready(
    docker: &Docker,
    container: &str,
    service: &ServiceSpec,
    limit: Duration,
) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        let info = docker
            .inspect_container(container, None)
            .await
            .map_err(engine::err("inspect_container (service)"))?;
        let state = info.state.unwrap_or_default();
        let last_check = state
            .health
            .as_ref()
            .and_then(|h| h.log.as_ref())
            .and_then(|log| log.last())
            .map(|r| {
                let out = r.output.as_deref().unwrap_or_default().trim();
                format!(
                    " (last check: exit code {}{}{out})",
                    r.exit_code.unwrap_or(-1),
                    if out.is_empty() { "" } else { ", output: " }
                )
            })
            .unwrap_or_default();
        let health = state.health.and_then(|h| h.status);
        if state.running != Some(true) {
            let code = state.exit_code.unwrap_or(-1);
            let logs = last_logs(docker, container).await;
            return Err(failed(
                service,
                format!("exited with code {code} before it was ready{logs}"),
            ));
        }
        match health {
            None | Some(HealthStatusEnum::NONE) | Some(HealthStatusEnum::EMPTY) => return Ok(()),
            Some(HealthStatusEnum::HEALTHY) => return Ok(()),
            Some(HealthStatusEnum::UNHEALTHY) => {
                let logs = last_logs(docker, container).await;
                return Err(failed(
                    service,
                    format!("its healthcheck reports unhealthy{last_check}{logs}"),
                ));
            }
            Some(HealthStatusEnum::STARTING) => {}
        }
        if Instant::now() >= deadline {
            let logs = last_logs(docker, container).await;
            let what = match &service.ready {
                Some(command) => format!("its `ready` command `{command}` did not exit 0"),
                None => "its healthcheck did not pass".to_owned(),
            };
            return Err(failed(
                service,
                format!("not ready within {limit:?}: {what}{last_check}{logs}"),
            ));
        }
        tokio::time::sleep(POLL).await;
    }
}

fn failed(service: &ServiceSpec, message: String) -> Error {
    Error::ServiceFailed {
        service: service.name.clone(),
        message,
    }
}

/// `"; last output:\n…"`, or empty when there is none (or it cannot be read).
async fn last_logs(docker: &Docker, container: &str) -> String {
    let opts = LogsOptionsBuilder::new()
        .stdout(true)
        .stderr(true)
        .tail(LOG_LINES)
        .build();
    let mut out = Vec::new();
    let mut stream = docker.logs(container, Some(opts));
    // Bounded: a tail of a stopped or running container without `follow` ends.
    let read = async {
        while let Some(Ok(chunk)) = stream.next().await {
            out.extend_from_slice(chunk.as_ref());
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(10), read).await;
    let text = String::from_utf8_lossy(&out);
    let text = text.trim_end();
    if text.is_empty() {
        String::new()
    } else {
        format!("; last output:\n{text}")
    }
}
