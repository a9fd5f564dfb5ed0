//! Step containers: one per step, from the stage image, on the stage network, with
//! the workspace volume at `/workspace`.
//!
//! Like the local backend, a step is `sh -e <script>`: the script is copied into the
//! created container (outside the workspace, so artifact globs never see it) rather
//! than passed as an argument, which would be limited to 128 KiB. `init` (the
//! engine's tini) is PID 1: it forwards SIGTERM to the shell, so a cancel gets the
//! same TERM-then-KILL as on the local backend, and it reaps zombies.
//!
//! Output is read through `attach`, opened before the container starts: raw bytes
//! (the JSON log driver would mangle non-UTF-8), stdout and stderr demultiplexed
//! (no TTY), nothing lost before the first read. The stream ends when the container
//! stops, and a container stops when its shell exits — background jobs die with
//! its PID namespace.

use std::collections::BTreeMap;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::models::{ContainerCreateBody, HostConfig, HostConfigLogConfig};
use bollard::query_parameters::{
    AttachContainerOptionsBuilder, CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder,
    UploadToContainerOptionsBuilder,
};
use futures::StreamExt;
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use super::{WORKSPACE, engine, names, volume};
use crate::archive;
use crate::backend::{LogChunk, LogStreamKind};
use crate::error::Result;
use crate::spec::ContainerSettings;

/// Where the step script lives in the container.
const SCRIPT_DIR: &str = ".slipway";
const SCRIPT_NAME: &str = "step.sh";
/// Chunks buffered between the attach stream and the consumer (back-pressure, as
/// in the local backend).
const CHUNK_BUFFER: usize = 16;

/// Everything a step container needs besides the script.
pub struct StepConfig<'a> {
    pub runner: &'a str,
    pub stage: &'a str,
    pub image: &'a str,
    pub env: BTreeMap<String, String>,
    pub workdir: String,
    pub settings: &'a ContainerSettings,
}

/// Creates the container, puts the script in, attaches, starts. Returns the
/// output channel and the reader task's abort handle. On error nothing this call
/// created is left: a container it created is removed (one it could not create,
/// e.g. because the name is taken, is not touched).
pub async fn start(
    docker: &Docker,
    name: &str,
    cfg: &StepConfig<'_>,
    script: &str,
) -> Result<(mpsc::Receiver<Result<LogChunk>>, AbortHandle)> {
    let env = cfg.env.iter().map(|(k, v)| format!("{k}={v}")).collect();
    let limits = cfg.settings;
    let body = ContainerCreateBody {
        image: Some(cfg.image.to_owned()),
        // As the entrypoint, so the image's own entrypoint does not wrap the shell
        // and its CMD is not appended (a step is a script, nothing else).
        entrypoint: Some(vec![
            "sh".into(),
            "-e".into(),
            format!("/{SCRIPT_DIR}/{SCRIPT_NAME}"),
        ]),
        cmd: Some(vec![]),
        env: Some(env),
        working_dir: Some(cfg.workdir.clone()),
        user: limits.user.clone(),
        labels: Some(names::labels(cfg.runner, cfg.stage, "step")),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        open_stdin: Some(false),
        host_config: Some(HostConfig {
            mounts: Some(vec![volume::workspace_mount(cfg.stage)]),
            network_mode: Some(cfg.stage.to_owned()),
            init: Some(true),
            memory: limits.memory_bytes.map(|m| m as i64),
            // No swap on top of the limit: over the limit means OOM-killed, which
            // is what the step reports, rather than a slow swap storm.
            memory_swap: limits.memory_bytes.map(|m| m as i64),
            nano_cpus: limits.cpu_millis.map(|c| (c as i64) * 1_000_000),
            // Output is read through attach; the engine need not keep a copy.
            log_config: Some(HostConfigLogConfig {
                typ: Some("none".into()),
                config: None,
            }),
            ..Default::default()
        }),
        ..Default::default()
    };
    let opts = CreateContainerOptionsBuilder::new().name(name).build();
    docker
        .create_container(Some(opts), body)
        .await
        .map_err(engine::err("create_container (step)"))?;
    let started = run_created(docker, name, script).await;
    if started.is_err() {
        let opts = RemoveContainerOptionsBuilder::new().force(true).build();
        let _ = docker.remove_container(name, Some(opts)).await;
    }
    started
}

/// The rest of [`start`] once the container exists.
async fn run_created(
    docker: &Docker,
    name: &str,
    script: &str,
) -> Result<(mpsc::Receiver<Result<LogChunk>>, AbortHandle)> {
    let tar = archive::single_file(SCRIPT_DIR, SCRIPT_NAME, script.as_bytes(), 0o444)?;
    docker
        .upload_to_container(
            name,
            Some(UploadToContainerOptionsBuilder::new().path("/").build()),
            bollard::body_full(tar.into()),
        )
        .await
        .map_err(engine::err("upload_to_container (step script)"))?;

    let attach = docker
        .attach_container(
            name,
            Some(
                AttachContainerOptionsBuilder::new()
                    .stream(true)
                    .stdout(true)
                    .stderr(true)
                    .logs(false)
                    .build(),
            ),
        )
        .await
        .map_err(engine::err("attach_container"))?;
    let (tx, rx) = mpsc::channel(CHUNK_BUFFER);
    let mut output = attach.output;
    let reader = tokio::spawn(async move {
        // Keep `input` alive: dropping it may close the hijacked connection.
        let _input = attach.input;
        while let Some(item) = output.next().await {
            let chunk = match item {
                Ok(LogOutput::StdOut { message }) | Ok(LogOutput::Console { message }) => {
                    Ok(LogChunk {
                        stream: LogStreamKind::Stdout,
                        bytes: message,
                    })
                }
                Ok(LogOutput::StdErr { message }) => Ok(LogChunk {
                    stream: LogStreamKind::Stderr,
                    bytes: message,
                }),
                Ok(LogOutput::StdIn { .. }) => continue,
                Err(e) => Err(engine::err("attach stream")(e)),
            };
            let stop = chunk.is_err();
            if tx.send(chunk).await.is_err() || stop {
                return;
            }
        }
    })
    .abort_handle();

    if let Err(e) = docker.start_container(name, None).await {
        reader.abort();
        return Err(engine::err("start_container (step)")(e));
    }
    Ok((rx, reader))
}

/// `/workspace` or `/workspace/<workdir>`; a workdir that is absolute or climbs
/// out with `..` is refused.
pub fn workdir(settings: &ContainerSettings) -> Result<String> {
    let Some(dir) = settings.workdir.as_deref().filter(|d| !d.is_empty()) else {
        return Ok(WORKSPACE.to_owned());
    };
    let path = std::path::Path::new(dir);
    let mut parts = Vec::new();
    for c in path.components() {
        match c {
            std::path::Component::Normal(p) => parts.push(p.to_string_lossy().into_owned()),
            std::path::Component::CurDir => {}
            _ => {
                return Err(crate::Error::InvalidSpec(format!(
                    "container workdir `{dir}` must be a relative path inside the workspace"
                )));
            }
        }
    }
    if parts.is_empty() {
        return Ok(WORKSPACE.to_owned());
    }
    Ok(format!("{WORKSPACE}/{}", parts.join("/")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdir_stays_inside_the_workspace() {
        let with = |w: &str| ContainerSettings {
            workdir: Some(w.into()),
            ..Default::default()
        };
        assert_eq!(
            workdir(&ContainerSettings::default()).unwrap(),
            "/workspace"
        );
        assert_eq!(workdir(&with("a/./b")).unwrap(), "/workspace/a/b");
        assert_eq!(workdir(&with(".")).unwrap(), "/workspace");
        for bad in ["../x", "/etc", "a/../../b"] {
            assert!(workdir(&with(bad)).is_err(), "{bad}");
        }
    }
}
