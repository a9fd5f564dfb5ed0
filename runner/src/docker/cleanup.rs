//! Removing what stages created, found by label rather than remembered: the same
//! code serves `destroy_stage` (one stage's label) and the start-up sweep (the
//! runner's label), and works after a restart when nothing is remembered.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
    RemoveContainerOptionsBuilder, RemoveVolumeOptionsBuilder,
};

use super::engine;
use crate::error::Result;

/// Attempts at removing a volume that the engine still reports in use (a
/// container removal finishing concurrently).
const VOLUME_ATTEMPTS: u32 = 20;
const VOLUME_RETRY: Duration = Duration::from_millis(250);

/// What [`super::DockerBackend::sweep`] (or a stage's destruction) removed.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct DockerSweepReport {
    pub containers: Vec<String>,
    pub networks: Vec<String>,
    pub volumes: Vec<String>,
    /// Problems that did not stop the sweep.
    pub errors: Vec<String>,
}

impl DockerSweepReport {
    pub fn is_empty(&self) -> bool {
        self.containers.is_empty()
            && self.networks.is_empty()
            && self.volumes.is_empty()
            && self.errors.is_empty()
    }
}

/// Force-removes every container, network and volume carrying `key=value`
/// (containers first: networks and volumes in use cannot be removed). Keeps going
/// after a failure and reports it.
pub async fn remove_labelled(docker: &Docker, key: &str, value: &str) -> Result<DockerSweepReport> {
    let filter = super::names::label_filter(key, value);
    let mut report = DockerSweepReport::default();

    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .map_err(engine::err("list_containers"))?;
    for c in containers {
        let Some(id) = c.id else { continue };
        let name = c
            .names
            .and_then(|n| n.into_iter().next())
            .map(|n| n.trim_start_matches('/').to_owned())
            .unwrap_or_else(|| id.clone());
        // Force: SIGKILL a running step; a sweep or a destroy does not wait for
        // graceful shutdown (destroy_step already gave the grace period).
        let opts = RemoveContainerOptionsBuilder::new()
            .force(true)
            .v(false)
            .build();
        match engine::gone_ok(docker.remove_container(&id, Some(opts)).await) {
            Ok(()) => report.containers.push(name),
            Err(e) => report.errors.push(format!(
                "removing container {name}: {}",
                engine::message(&e)
            )),
        }
    }

    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(engine::err("list_networks"))?;
    for n in networks {
        let Some(name) = n.name else { continue };
        match engine::gone_ok(docker.remove_network(&name).await) {
            Ok(()) => report.networks.push(name),
            Err(e) => report
                .errors
                .push(format!("removing network {name}: {}", engine::message(&e))),
        }
    }

    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .map_err(engine::err("list_volumes"))?;
    for v in volumes.volumes.unwrap_or_default() {
        let name = v.name;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let opts = RemoveVolumeOptionsBuilder::new().force(true).build();
            match engine::gone_ok(docker.remove_volume(&name, Some(opts)).await) {
                Ok(()) => {
                    report.volumes.push(name);
                    break;
                }
                Err(bollard::errors::Error::DockerResponseServerError {
                    status_code: 409, ..
                }) if attempt < VOLUME_ATTEMPTS => tokio::time::sleep(VOLUME_RETRY).await,
                Err(e) => {
                    report
                        .errors
                        .push(format!("removing volume {name}: {}", engine::message(&e)));
                    break;
                }
            }
        }
    }
    Ok(report)
}
