//! Files in and out of a pod through `pods/exec` and `tar`, as `kubectl cp` does:
//! the runner streams a tar into the `source` container's stdin, and reads one
//! from the `workspace` container's stdout. Nothing else reaches the pod, so it
//! needs no credentials and no route back to the runner.
//!
//! Stdin is never closed. Closing it alone needs `v5.channel.k8s.io` (the
//! `[255, 0]` frame), which API servers offer by default only from 1.30 and some
//! proxies never pass; on `v4.channel.k8s.io` kube can only close the whole
//! WebSocket, and the command's exit status is lost with it. So what goes into a
//! command's stdin is size-terminated: the command reads exactly the announced
//! number of bytes (`head -c N`, see [`Input::reader`]), and the runner keeps
//! stdin open until the status has arrived. The same on v4 and v5.

use std::future::Future;
use std::path::Path;

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Status;
use kube::Api;
use kube::api::AttachParams;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt, ReadHalf, SimplexStream};

use crate::error::{Error, Result};

/// Stderr kept for an error message.
const STDERR_MAX: usize = 16 * 1024;

/// A command's stdout, as `exec` hands it to its consumer.
pub type Stdout = ReadHalf<SimplexStream>;

/// What a command reads on its stdin: exactly `len` bytes.
pub struct Input {
    source: Box<dyn AsyncRead + Send + Unpin>,
    len: u64,
}

impl Input {
    /// The whole file at `path`.
    pub async fn file(path: &Path) -> Result<Input> {
        let file = tokio::fs::File::open(path)
            .await
            .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
        let len = file
            .metadata()
            .await
            .map_err(|e| Error::io(format!("stat {}", path.display()), e))?
            .len();
        Ok(Input {
            source: Box::new(file),
            len,
        })
    }

    pub fn bytes(data: Vec<u8>) -> Input {
        let len = data.len() as u64;
        Input {
            source: Box::new(std::io::Cursor::new(data)),
            len,
        }
    }

    /// The shell command that reads this input from stdin and writes it to its
    /// stdout, ending after the last byte without waiting for stdin to close:
    /// `{reader} | tar -x …`.
    pub fn reader(&self) -> String {
        format!("head -c {}", self.len)
    }
}

fn exec_err(op: &'static str) -> impl Fn(kube::Error) -> Error {
    move |e| Error::Backend {
        op,
        message: e.to_string(),
    }
}

/// Runs the shell `script` (made from the input's reader, see [`Input::reader`]) in
/// `container` with the file at `input` on its stdin; fails unless it exits 0.
pub async fn exec_with_input(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    script: impl FnOnce(&str) -> String,
    input: &Path,
) -> Result<()> {
    let input = Input::file(input).await?;
    let script = script(&input.reader());
    exec(
        pods,
        pod,
        container,
        &["sh", "-c", &script],
        Some(input),
        |mut stdout| async move {
            tokio::io::copy(&mut stdout, &mut tokio::io::sink())
                .await
                .map(|_| ())
                .map_err(|e| Error::io("reading the output of an upload", e))
        },
    )
    .await
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
    exec(
        pods,
        pod,
        container,
        command,
        None,
        |mut stdout| async move {
            let mut file = tokio::fs::File::create(out)
                .await
                .map_err(|e| Error::io(format!("creating {}", out.display()), e))?;
            tokio::io::copy(&mut stdout, &mut file)
                .await
                .map_err(|e| Error::io(format!("reading the output of {command:?}"), e))?;
            file.flush()
                .await
                .map_err(|e| Error::io(format!("writing {}", out.display()), e))
        },
    )
    .await
}

/// Runs `command` in `container`, with `input` on its stdin (the command must read
/// it with [`Input::reader`]: stdin stays open), and `consume` reading its stdout
/// meanwhile. Fails unless the command exits 0 and `consume` succeeds; a failed
/// command's status wins over what its cut output made `consume` say.
pub async fn exec<T, F, Fut>(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    command: &[&str],
    input: Option<Input>,
    consume: F,
) -> Result<T>
where
    F: FnOnce(Stdout) -> Fut,
    Fut: Future<Output = Result<T>>,
{
    let ap = AttachParams::default()
        .container(container)
        .stdin(input.is_some())
        .stdout(true)
        .stderr(true);
    let mut process = pods
        .exec(pod, command.iter().copied(), &ap)
        .await
        .map_err(exec_err("exec"))?;
    let status = process.take_status();
    let mut stdin = process.stdin();
    let (Some(stdout), Some(mut stderr)) = (process.stdout(), process.stderr()) else {
        process.abort();
        return Err(Error::Backend {
            op: "exec",
            message: "the exec has no stdout or stderr although both were asked for".into(),
        });
    };
    let feed = async {
        let (Some(input), Some(stdin)) = (input, stdin.as_mut()) else {
            return Ok(());
        };
        let fed = feed(input, stdin).await;
        if fed.is_err() {
            // The command waits for bytes that will not come: end it.
            process.abort();
        }
        fed
    };
    let (fed, consumed, err_text) = tokio::join!(feed, consume(stdout), read_bounded(&mut stderr));
    let status = match status {
        Some(s) => s.await,
        None => None,
    };
    // Only now: on v4, closing stdin would have closed the socket before the status.
    drop(stdin);
    let _ = process.join().await;
    match status {
        Some(s) if s.status.as_deref() == Some("Success") => {
            fed?;
            consumed
        }
        // The consumer hung up (e.g. it refused what came), which ended the exec.
        None if consumed.is_err() => consumed,
        status => {
            fed?;
            Err(status_error(command, status, &err_text))
        }
    }
}

/// Sends exactly `input.len` bytes; a broken pipe (the command ended early) is
/// left to the command's status.
async fn feed(input: Input, stdin: &mut (impl tokio::io::AsyncWrite + Unpin)) -> Result<()> {
    let Input { source, len } = input;
    let mut source = source.take(len);
    match tokio::io::copy(&mut source, stdin).await {
        Ok(n) if n == len => {}
        Ok(n) => {
            return Err(Error::Backend {
                op: "exec",
                message: format!("the input ended after {n} of {len} bytes"),
            });
        }
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => return Ok(()),
        Err(e) => return Err(Error::io("sending input to a command in the pod", e)),
    }
    // Flushed, not shut down (see the module doc).
    let _ = stdin.flush().await;
    Ok(())
}

async fn read_bounded<R: AsyncRead + Unpin>(r: &mut R) -> String {
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

fn status_error(command: &[&str], status: Option<Status>, stderr: &str) -> Error {
    let stderr = if stderr.is_empty() {
        String::new()
    } else {
        format!(" ({stderr})")
    };
    let message = match status {
        Some(s) => format!(
            "`{}` in the pod failed: {}{stderr}",
            command.join(" "),
            s.message.unwrap_or_default()
        ),
        None => format!(
            "`{}` in the pod ended without a status{stderr}",
            command.join(" ")
        ),
    };
    Error::Backend {
        op: "exec",
        message,
    }
}
