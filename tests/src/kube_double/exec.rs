//! `pods/exec` over WebSocket, the channel protocol kube and kubectl speak
//! (`v5.channel.k8s.io`, `v4.channel.k8s.io`): binary frames whose first byte is
//! the channel — 0 stdin, 1 stdout, 2 stderr, 3 the final `Status`, 255 close
//! (v5: `[255, 0]` closes stdin). Runs as a Docker exec in the container, so a
//! backend can copy files out of (or into) a pod with `tar`, as `kubectl cp` does.
//!
//! v5 is offered only from 1.30 and when [`KubeDoubleOptions::exec_v5_protocol`]
//! is set: the API server gained it behind the `TranslateStreamCloseWebsocketRequests`
//! gate (alpha in 1.29, on by default from 1.30), and a proxy in front of a newer
//! one may still only pass v4. On v4, as upstream's `wsstream.Conn`
//! (`staging/src/k8s.io/apimachinery/pkg/util/httpstream/wsstream/conn.go`, `handle`
//! and `Close`) does, a frame for channel 255 is for no known channel and is
//! ignored, so stdin cannot be closed on its own; a client closing the socket
//! closes every channel and the socket: the command's stdin ends, its output is
//! dropped and no `Status` is sent. client-go says as much
//! (`staging/src/k8s.io/client-go/tools/remotecommand/websocket.go`: legacy
//! servers "will not handle the new CLOSE signal").

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::response::Response;
use bollard::exec::{CreateExecOptions, StartExecResults};
use futures::{SinkExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use serde_json::json;
use tokio::io::AsyncWriteExt;

use super::docker::PodNames;
use super::pod_runtime::Ctx;
use super::status::ApiError;

const STDIN: u8 = 0;
const STDOUT: u8 = 1;
const STDERR: u8 = 2;
const STATUS: u8 = 3;
const CLOSE: u8 = 255;

const V5: &str = "v5.channel.k8s.io";
const V4: &str = "v4.channel.k8s.io";

/// Payload bytes that crossed the double's exec streams, all execs together.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ExecTraffic {
    /// Received on channel 0 (stdin).
    pub stdin_bytes: u64,
    /// Sent on channels 1 and 2 (stdout and stderr).
    pub output_bytes: u64,
}

/// The counters behind [`ExecTraffic`].
#[derive(Debug, Default)]
pub struct Traffic {
    stdin: AtomicU64,
    output: AtomicU64,
}

impl Traffic {
    pub fn snapshot(&self) -> ExecTraffic {
        ExecTraffic {
            stdin_bytes: self.stdin.load(Ordering::Relaxed),
            output_bytes: self.output.load(Ordering::Relaxed),
        }
    }
}

struct ExecRequest {
    container: String,
    docker_name: String,
    command: Vec<String>,
    stdin: bool,
    stdout: bool,
    stderr: bool,
    tty: bool,
    /// `v5.channel.k8s.io` was negotiated: `[255, 0]` closes stdin.
    v5: bool,
}

pub async fn pod_exec(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Query<Vec<(String, String)>>,
    ws: Result<WebSocketUpgrade, axum::extract::ws::rejection::WebSocketUpgradeRejection>,
) -> Result<Response, ApiError> {
    let flag = |k: &str| q.iter().any(|(qk, v)| qk == k && (v == "true" || v == "1"));
    let command: Vec<String> = q
        .iter()
        .filter(|(k, _)| k == "command")
        .map(|(_, v)| v.clone())
        .collect();
    let pod = ctx
        .store
        .get::<Pod>(&ns, &name)
        .ok_or_else(|| ApiError::not_found("pods", &name))?;
    if ctx.node_health.lost() {
        return Err(ApiError::kubelet_unreachable(&format!("exec/{ns}/{name}")));
    }
    let spec = pod.spec.clone().unwrap_or_default();
    let all: Vec<String> = spec
        .init_containers
        .iter()
        .flatten()
        .chain(&spec.containers)
        .map(|c| c.name.clone())
        .collect();
    let container = match q.iter().find(|(k, v)| k == "container" && !v.is_empty()) {
        Some((_, c)) => c.clone(),
        None if spec.containers.len() == 1 => spec.containers[0].name.clone(),
        None => {
            return Err(ApiError::bad_request(format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                all.join(" ")
            )));
        }
    };
    if !all.contains(&container) {
        return Err(ApiError::bad_request(format!(
            "container {container} is not valid for pod {name}"
        )));
    }
    if command.is_empty() {
        return Err(ApiError::bad_request("you must specify at least 1 command"));
    }
    let running = pod
        .status
        .unwrap_or_default()
        .init_container_statuses
        .into_iter()
        .flatten()
        .chain(pod_status_main(&ctx, &ns, &name))
        .any(|c| c.name == container && super::pod_status::is_running(&c));
    if !running {
        return Err(ApiError::bad_request(format!(
            "unable to upgrade connection: container not found (\"{container}\")"
        )));
    }
    let ws = ws.map_err(|_| {
        ApiError::bad_request("pods/exec needs a WebSocket upgrade (SPDY is not supported by the Kubernetes test double)")
    })?;
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    let offered: &[&'static str] = if ctx.options.exec_v5_protocol && ctx.options.version >= (1, 30)
    {
        &[V5, V4]
    } else {
        &[V4]
    };
    let ws = ws.protocols(offered.iter().copied());
    let v5 = ws.selected_protocol().is_some_and(|p| p == V5);
    let req = ExecRequest {
        docker_name: PodNames::new(&ctx.instance, &uid).container(&container),
        container,
        command,
        stdin: flag("stdin"),
        stdout: flag("stdout"),
        stderr: flag("stderr"),
        tty: flag("tty"),
        v5,
    };
    Ok(ws.on_upgrade(move |socket| async move {
        if let Err(e) = run(ctx, req, socket).await {
            tracing::debug!("kube double exec: {e}");
        }
    }))
}

fn pod_status_main(
    ctx: &Ctx,
    ns: &str,
    name: &str,
) -> Vec<k8s_openapi::api::core::v1::ContainerStatus> {
    ctx.store
        .get::<Pod>(ns, name)
        .and_then(|p| p.status?.container_statuses)
        .unwrap_or_default()
}

fn frame(channel: u8, data: &[u8]) -> Message {
    let mut v = Vec::with_capacity(data.len() + 1);
    v.push(channel);
    v.extend_from_slice(data);
    Message::Binary(v.into())
}

async fn run(ctx: Arc<Ctx>, req: ExecRequest, socket: WebSocket) -> Result<(), String> {
    let (mut tx, mut rx) = socket.split();
    let req_v5 = req.v5;
    let docker = &ctx.docker;
    let created = docker
        .create_exec(
            &req.docker_name,
            CreateExecOptions {
                cmd: Some(req.command.clone()),
                attach_stdin: Some(req.stdin),
                attach_stdout: Some(req.stdout),
                attach_stderr: Some(req.stderr),
                tty: Some(req.tty),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| super::docker::message(&e))?;
    let started = docker
        .start_exec(&created.id, None)
        .await
        .map_err(|e| super::docker::message(&e))?;
    let StartExecResults::Attached {
        mut output,
        mut input,
    } = started
    else {
        return Err("exec started detached".into());
    };
    // stdin: from channel 0 until `[255, 0]` (v5 only; v4 ignores the frame) or
    // the socket closes, which also ends the whole exec (see the module doc).
    let socket_closed = tokio_util::sync::CancellationToken::new();
    let stdin_task = tokio::spawn({
        let socket_closed = socket_closed.clone();
        let ctx = ctx.clone();
        async move {
            let mut stdin_open = true;
            loop {
                let b = match rx.next().await {
                    Some(Ok(Message::Binary(b))) => b,
                    Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                    Some(Ok(_)) => continue,
                };
                match b.first() {
                    Some(&STDIN) if b.len() > 1 && stdin_open => {
                        let data = &b[1..];
                        ctx.exec_traffic
                            .stdin
                            .fetch_add(data.len() as u64, Ordering::Relaxed);
                        if input.write_all(data).await.is_err() {
                            stdin_open = false;
                        }
                    }
                    Some(&CLOSE) if req_v5 && b.get(1) == Some(&STDIN) => {
                        stdin_open = false;
                        let _ = input.shutdown().await;
                    }
                    _ => {}
                }
            }
            let _ = input.shutdown().await;
            socket_closed.cancel();
        }
    });
    loop {
        let chunk = tokio::select! {
            chunk = output.next() => chunk,
            () = socket_closed.cancelled() => break,
        };
        let Some(chunk) = chunk else { break };
        let (channel, data) = match chunk {
            Ok(bollard::container::LogOutput::StdErr { message }) => (STDERR, message),
            Ok(out) => (STDOUT, out.into_bytes()),
            Err(_) => break,
        };
        let sent = data.len() as u64;
        if tx.send(frame(channel, &data)).await.is_err() {
            break;
        }
        ctx.exec_traffic.output.fetch_add(sent, Ordering::Relaxed);
    }
    stdin_task.abort();
    if socket_closed.is_cancelled() {
        // The client hung up: every channel is closed, nothing more is sent.
        return Ok(());
    }
    // The output closes a moment before the engine records the exit: bounded poll.
    let mut code = -1;
    for _ in 0..200 {
        match docker.inspect_exec(&created.id).await {
            Ok(i) if i.running != Some(true) => {
                code = i.exit_code.unwrap_or(-1);
                break;
            }
            Ok(_) => tokio::time::sleep(std::time::Duration::from_millis(25)).await,
            Err(_) => break,
        }
    }
    let status = if code == 0 {
        json!({"metadata": {}, "status": "Success"})
    } else {
        json!({
            "metadata": {},
            "status": "Failure",
            "message": format!(
                "command terminated with non-zero exit code: error executing command {:?} in container {:?}, exit code {code}",
                req.command, req.container
            ),
            "reason": "NonZeroExitCode",
            "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
        })
    };
    let _ = tx.send(frame(STATUS, status.to_string().as_bytes())).await;
    let _ = tx.send(Message::Close(None)).await;
    Ok(())
}
