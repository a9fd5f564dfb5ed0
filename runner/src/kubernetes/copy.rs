//! Files in and out of a pod through `pods/exec` and `tar`, as `kubectl cp` does:
//! the runner streams a tar into the `source` container's stdin, and reads one
//! from the `workspace` container's stdout. Nothing else reaches the pod, so it
//! needs no credentials and no route back to the runner.

use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::error::{Error, Result};

/// Stderr kept for an error message.
const STDERR_MAX: usize = 16 * 1024;

fn exec_err(op: &'static str) -> impl Fn(kube::Error) -> Error {
    move |e| Error::Backend {
        op,
        message: e.to_string(),
    }
}

/// Runs `command` in `container` with the file at `input` on its stdin; fails
/// unless it exits 0.
pub async fn exec_with_input(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[&str],
    input: &Path,
) -> Result<()> {
    let ap = AttachParams::default()
        .container(container)
        .stdin(true)
        .stdout(false)
        .stderr(true);
    let mut process = pods
        .exec(pod, command.iter().copied(), &ap)
        .await
        .map_err(exec_err("exec"))?;
    let status = process.take_status();
    let mut stdin = process.stdin();
    let mut stderr = process.stderr();
    let feed = async {
        let Some(stdin) = stdin.as_mut() else {
            return Ok(());
        };
        let mut file = tokio::fs::File::open(input)
            .await
            .map_err(|e| Error::io(format!("opening {}", input.display()), e))?;
        // A broken pipe means the command exited early; its status says why.
        let _ = tokio::io::copy(&mut file, stdin).await;
        let _ = stdin.shutdown().await;
        Ok::<(), Error>(())
    };
    let (fed, err_text) = tokio::join!(feed, read_bounded(stderr.as_mut()));
    fed?;
    drop(stdin);
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = process.join().await;
    check_status(command, status, &err_text)
}

/// Runs `command` in `container` and writes its stdout to `out`; fails unless it
/// exits 0.
pub async fn exec_to_file(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[&str],
    out: &Path,
) -> Result<()> {
    let ap = AttachParams::default()
        .container(container)
        .stdin(false)
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(pod, command.iter().copied(), &ap)
        .await
        .map_err(exec_err("exec"))?;
    let status = process.take_status();
    let mut stdout = process.stdout();
    let mut stderr = process.stderr();
    let drain = async {
        let mut file = tokio::fs::File::create(out)
            .await
            .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
        if let Some(stdout) = stdout.as_mut() {
            tokio::io::copy(stdout, &mut file)
                .await
                .map_err(|e| Error::io(format!("reading the output of {command:?}"), e))?;
        }
        file.flush()
            .await
            .map_err(|e| Error::io(format!("writing {}", out.display()), e))
    };
    let (drained, err_text) = tokio::join!(drain, read_bounded(stderr.as_mut()));
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    let _ = process.join().await;
    drained?;
    check_status(command, status, &err_text)
}

async fn read_bounded<R: tokio::io::AsyncRead + Unpin>(r: Option<&mut R>) -> String {
    let Some(r) = r else {
        return String::new();
    };
    let mut kept = Vec::new();
    let mut buf = [0u8; 4096];
    while let Ok(n) = r.read(&mut buf).await {
        if n == 0 {
            break;
        }
        let room = STDERR_MAX.saturating_sub(kept.len());
        kept.extend_from_slice(&buf[..n.min(room)]);
    }
    String::from_utf8_lossy(&kept).trim().to_owned()
}

fn check_status(
    command: &[&str],
    status: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Status>,
    stderr: &str,
) -> Result<()> {
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => Ok(()),
        Some(s) => Err(Error::Backend {
            op: "exec",
            message: format!(
                "`{}` in the pod failed: {}{}",
                command.join(" "),
                s.message.unwrap_or_default(),
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(" ({stderr})")
                }
            ),
        }),
        None => Err(Error::Backend {
            op: "exec",
            message: format!(
                "`{}` in the pod ended without a status{}",
                command.join(" "),
                if stderr.is_empty() {
                    String::new()
                } else {
                    format!(" ({stderr})")
                }
            ),
        }),
    }
}
