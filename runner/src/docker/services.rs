//! Service containers (databases, caches) started before a stage's steps, reachable
//! by their name on the stage network, and waited for.
//!
//! Ready means running, and `healthy` when the image (or its config) declares a
//! HEALTHCHECK: a database accepting connections, not merely a started process.
//! The wait is bounded; a service that exits, turns unhealthy or never gets ready
//! fails the stage with its name and the last lines of its output.

use std::time::Duration;

use bollard::Docker;
use bollard::models::{
    ContainerCreateBody, EndpointSettings, HealthStatusEnum, HostConfig, NetworkingConfig,
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

/// Creates and starts `service` on `network`; returns the container name.
pub async fn start(
    docker: &Docker,
    runner: &str,
    stage: &str,
    index: usize,
    service: &ServiceSpec,
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
                    format!("its healthcheck reports unhealthy{logs}"),
                ));
            }
            Some(HealthStatusEnum::STARTING) => {}
        }
        if Instant::now() >= deadline {
            let logs = last_logs(docker, container).await;
            return Err(failed(
                service,
                format!("not healthy within {limit:?} (healthcheck still starting){logs}"),
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
