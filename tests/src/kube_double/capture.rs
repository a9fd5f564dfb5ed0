//! Container output kept as the kubelet's container runtime keeps it: the raw
//! bytes of stdout and stderr in arrival order, in one file per container,
//! read through an `attach` opened before the container starts.
//!
//! The engine's own log drivers are not faithful enough for the pod log API: a
//! line longer than 16 KiB is stored in parts, and the newline that ends it can be
//! lost when it arrives on its own; json-file also replaces invalid UTF-8. The
//! engine's log is still used for `timestamps`, `tailLines` and `since*`.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

use bollard::Docker;
use bollard::container::LogOutput;
use bollard::query_parameters::AttachContainerOptionsBuilder;
use bytes::Bytes;
use futures::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::{mpsc, watch};

/// The runtime's longest log entry; longer lines are written in parts.
const PART: usize = 16 * 1024;

fn memchr_newline(b: &[u8]) -> Option<usize> {
    b.iter().position(|&c| c == b'\n')
}

/// Every container's captured output, by engine container name.
pub struct Captures {
    dir: tempfile::TempDir,
    files: Mutex<HashMap<String, Capture>>,
}

#[derive(Clone)]
struct Capture {
    path: PathBuf,
    /// True once the container's output is closed (it stopped).
    done: watch::Receiver<bool>,
}

impl Captures {
    pub fn new() -> std::io::Result<Captures> {
        Ok(Captures {
            dir: tempfile::tempdir()?,
            files: Mutex::new(HashMap::new()),
        })
    }

    /// A fresh, empty, world-writable file for container `name`'s termination
    /// message, to bind-mount at its `terminationMessagePath` (the kubelet makes one
    /// per container the same way, so a non-root process can write it).
    pub fn termination_file(&self, name: &str) -> std::io::Result<PathBuf> {
        use std::os::unix::fs::PermissionsExt;
        let path = self.dir.path().join(format!("{name}.termination-log"));
        std::fs::write(&path, b"")?;
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o666))?;
        Ok(path)
    }

    /// What container `name` wrote to its termination message file: at most the
    /// kubelet's 4096 bytes, `None` when empty or unreadable.
    pub fn termination_message(&self, name: &str) -> Option<String> {
        let bytes = std::fs::read(self.dir.path().join(format!("{name}.termination-log"))).ok()?;
        let bytes = &bytes[..bytes.len().min(4096)];
        (!bytes.is_empty()).then(|| String::from_utf8_lossy(bytes).into_owned())
    }

    /// Attaches to the created, not yet started container `name` and copies its
    /// output to a fresh file until it stops.
    pub async fn attach(&self, docker: &Docker, name: &str) -> Result<(), bollard::errors::Error> {
        let opts = AttachContainerOptionsBuilder::new()
            .stream(true)
            .stdout(true)
            .stderr(true)
            .logs(false)
            .build();
        let attached = docker.attach_container(name, Some(opts)).await?;
        let path = self
            .dir
            .path()
            .join(format!("{name}.{}.log", rand::random::<u32>()));
        let mut file = tokio::fs::File::create(&path).await?;
        let (tx, done) = watch::channel(false);
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_owned(), Capture { path, done });
        let mut output = attached.output;
        tokio::spawn(async move {
            // Per stream, whole lines (or 16 KiB parts of longer ones), as the
            // runtime writes its log entries: a stdout line is never cut by stderr.
            let mut pending: [Vec<u8>; 2] = [Vec::new(), Vec::new()];
            while let Some(Ok(chunk)) = output.next().await {
                let (stream, bytes) = match chunk {
                    LogOutput::StdErr { message } => (1, message),
                    other => (0, other.into_bytes()),
                };
                let buf = &mut pending[stream];
                buf.extend_from_slice(&bytes);
                let mut out = Vec::new();
                loop {
                    let cut = match memchr_newline(buf) {
                        Some(i) => i + 1,
                        None if buf.len() >= PART => PART,
                        None => break,
                    };
                    out.extend(buf.drain(..cut));
                }
                if !out.is_empty()
                    && (file.write_all(&out).await.is_err() || file.flush().await.is_err())
                {
                    break;
                }
            }
            for buf in &pending {
                let _ = file.write_all(buf).await;
            }
            let _ = file.flush().await;
            let _ = tx.send(true);
        });
        Ok(())
    }

    /// Streams `name`'s captured output into `tx` (to the end, or while it runs
    /// with `follow`). False when nothing was captured for it.
    pub fn stream(&self, name: &str, follow: bool, tx: mpsc::Sender<Bytes>) -> bool {
        let Some(capture) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(name)
            .cloned()
        else {
            return false;
        };
        tokio::spawn(async move {
            let Ok(mut file) = tokio::fs::File::open(&capture.path).await else {
                return;
            };
            let mut offset = 0u64;
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                // Read `done` first: all output is in the file once it is true.
                let finished = *capture.done.borrow();
                if file.seek(std::io::SeekFrom::Start(offset)).await.is_err() {
                    return;
                }
                match file.read(&mut buf).await {
                    Ok(0) if finished || !follow => return,
                    Ok(0) => tokio::time::sleep(Duration::from_millis(20)).await,
                    Ok(n) => {
                        offset += n as u64;
                        if tx.send(Bytes::copy_from_slice(&buf[..n])).await.is_err() {
                            return;
                        }
                    }
                    Err(_) => return,
                }
            }
        });
        true
    }
}
