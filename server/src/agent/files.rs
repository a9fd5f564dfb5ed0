//! The agent's side of artifacts and caches (routes in [`crate::protocol`]).
//!
//! Before a stage: the artifacts of the stages it needs are downloaded into the
//! unpacked source directory (which every backend copies into its workspace), each
//! written through [`runner::safe_path`] and checked against its sha256; then, for a
//! stage with `cache:` paths, the cache saved under its key ([`crate::agent::cache`]) is
//! restored into the same directory. After a successful stage: the collected
//! artifacts are uploaded (a symlink is refused, never followed), then — if the cache
//! missed — the cache paths, collected by the backend alongside the artifacts, are
//! packed and saved. Upload failures fail the stage (it is `success` only with its
//! artifacts stored); cache failures are only logged, a cache being an optimisation.

use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;

use super::client::{Backoff, CallError, Client, DOWNLOAD_IDLE, check, describe};
use super::forward::StageCtx;
use crate::protocol::{self, ArtifactStored, CacheStored, LeaseArtifact, SHA256_HEADER};

/// Attempts per transfer before a transient failure counts.
const TRANSFER_ATTEMPTS: u32 = 4;

/// Why a stage's files could not be moved.
#[derive(Debug)]
pub(super) enum FilesError {
    /// The lease is gone.
    LeaseLost,
    /// The pipeline's fault (a refused name, a symlink, over a limit): `failure`.
    Refused(String),
    /// Infrastructure (network, disk, a corrupt transfer): `error`, retryable.
    Failed(String),
}

impl From<CallError> for FilesError {
    fn from(e: CallError) -> Self {
        match e {
            CallError::LeaseLost => FilesError::LeaseLost,
            CallError::Refused { status, message } if status.is_client_error() => {
                FilesError::Refused(message)
            }
            other => FilesError::Failed(other.to_string()),
        }
    }
}

/// A time limit for moving `size` bytes: generous, but never unbounded.
fn transfer_timeout(size: u64) -> Duration {
    Duration::from_secs(120 + size / 1_000_000)
}

impl Client {
    fn stage_url(
        &self,
        ctx: &StageCtx,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Url, CallError> {
        let mut url = self.url(path)?;
        {
            let mut pairs = url.query_pairs_mut();
            pairs.append_pair("lease_token", &ctx.token);
            for (k, v) in query {
                pairs.append_pair(k, v);
            }
        }
        Ok(url)
    }

    /// Runs `once` up to [`TRANSFER_ATTEMPTS`] times while it fails transiently.
    async fn with_retries<T, F, Fut>(&self, what: &str, mut once: F) -> Result<T, CallError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, CallError>>,
    {
        let mut backoff = Backoff::new();
        let mut attempt = 0;
        loop {
            attempt += 1;
            match once().await {
                Err(CallError::Transient(e)) if attempt < TRANSFER_ATTEMPTS => {
                    tracing::warn!(what, error = %e, attempt, "transfer failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
                other => return other,
            }
        }
    }

    /// Downloads the artifacts of the needed stages into `src`.
    pub(super) async fn place_artifacts(
        &self,
        ctx: &StageCtx,
        artifacts: &[LeaseArtifact],
        src: &Path,
    ) -> Result<(), FilesError> {
        for a in artifacts {
            if let Err(why) = runner::safe_path::check_name(&a.name) {
                return Err(FilesError::Refused(format!(
                    "artifact {:?} of stage `{}`: {why}",
                    a.name, a.stage_key
                )));
            }
            let what = format!("artifact `{}` of stage `{}`", a.name, a.stage_key);
            self.with_retries(&what, || self.download_artifact_once(ctx, a, src))
                .await
                .map_err(|e| match e {
                    CallError::Refused { message, .. } => {
                        FilesError::Refused(format!("{what}: {message}"))
                    }
                    CallError::LeaseLost => FilesError::LeaseLost,
                    e => FilesError::Failed(format!("{what}: {e}")),
                })?;
            tracing::debug!(stage_id = ctx.stage_id, artifact = %a.name, "artifact placed");
        }
        Ok(())
    }

    async fn download_artifact_once(
        &self,
        ctx: &StageCtx,
        a: &LeaseArtifact,
        src: &Path,
    ) -> Result<(), CallError> {
        let url = self.stage_url(ctx, &a.path, &[])?;
        let resp = self
            .request(Method::GET, url)
            .timeout(transfer_timeout(a.size))
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let resp = check(resp).await?;
        let (root, name, mode) = (src.to_path_buf(), a.name.clone(), a.mode);
        // A symlink in the checkout on the way to the name is the pipeline's problem.
        let file = tokio::task::spawn_blocking(move || {
            runner::safe_path::create_file_in(&root, &name, mode)
        })
        .await
        .map_err(|e| CallError::Transient(e.to_string()))?
        .map_err(|e| CallError::Refused {
            status: StatusCode::UNPROCESSABLE_ENTITY,
            message: e.to_string(),
        })?;
        let (sha, size) = stream_to(resp, tokio::fs::File::from_std(file)).await?;
        if sha != a.sha256 || size != a.size {
            return Err(CallError::Transient(format!(
                "downloaded {size} bytes with sha256 {sha}; expected {} bytes with {}",
                a.size, a.sha256
            )));
        }
        Ok(())
    }

    /// Uploads one collected artifact (`dir/name`).
    pub(super) async fn upload_artifact(
        &self,
        ctx: &StageCtx,
        dir: &Path,
        artifact: &runner::Artifact,
    ) -> Result<ArtifactStored, FilesError> {
        let path = dir.join(&artifact.path);
        let meta = tokio::fs::symlink_metadata(&path)
            .await
            .map_err(|e| FilesError::Failed(format!("artifact `{}`: {e}", artifact.path)))?;
        if meta.file_type().is_symlink() {
            return Err(FilesError::Refused(format!(
                "artifact `{}` is a symlink; symlinks are not uploaded",
                artifact.path
            )));
        }
        if !meta.is_file() {
            return Err(FilesError::Refused(format!(
                "artifact `{}` is not a regular file",
                artifact.path
            )));
        }
        use std::os::unix::fs::PermissionsExt;
        let mode = (meta.permissions().mode() & 0o777).to_string();
        let size = artifact.size.to_string();
        let query = [
            ("name", artifact.path.as_str()),
            ("sha256", artifact.sha256.as_str()),
            ("size", size.as_str()),
            ("mode", mode.as_str()),
        ];
        let what = format!("artifact `{}`", artifact.path);
        let route = protocol::artifacts_path(ctx.stage_id);
        let stored = self
            .with_retries(&what, || {
                self.upload_once(ctx, &route, &query, &path, artifact.size)
            })
            .await
            .map_err(|e| match FilesError::from(e) {
                FilesError::Refused(m) => FilesError::Refused(format!("{what} was refused: {m}")),
                FilesError::Failed(m) => FilesError::Failed(format!("uploading {what}: {m}")),
                lost => lost,
            })?;
        Ok(stored)
    }

    async fn upload_once<R: serde::de::DeserializeOwned>(
        &self,
        ctx: &StageCtx,
        route: &str,
        query: &[(&str, &str)],
        file: &Path,
        size: u64,
    ) -> Result<R, CallError> {
        let url = self.stage_url(ctx, route, query)?;
        let f = tokio::fs::File::open(file)
            .await
            .map_err(|e| CallError::Transient(format!("opening {}: {e}", file.display())))?;
        let body =
            reqwest::Body::wrap_stream(tokio_util::io::ReaderStream::with_capacity(f, 64 * 1024));
        let resp = self
            .request(Method::PUT, url)
            .timeout(transfer_timeout(size))
            .header(reqwest::header::CONTENT_LENGTH, size)
            .body(body)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let resp = check(resp).await?;
        resp.json()
            .await
            .map_err(|e| CallError::Transient(format!("unreadable answer: {e}")))
    }

    /// Restores what the cache saved under `key` holds under the stage's cache `paths`
    /// into `src`; `true` on a hit. Any failure is logged and counts as a miss.
    pub(super) async fn restore_cache(
        &self,
        ctx: &StageCtx,
        key: &str,
        paths: &[String],
        src: &Path,
        scratch: &Path,
    ) -> Result<bool, FilesError> {
        let tar_path = scratch.join("cache-in.tar");
        let fetched = self
            .with_retries("cache", || self.download_cache_once(ctx, key, &tar_path))
            .await;
        match fetched {
            Ok(true) => {}
            Ok(false) => return Ok(false),
            Err(CallError::LeaseLost) => return Err(FilesError::LeaseLost),
            Err(e) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "cache download failed; running without it");
                return Ok(false);
            }
        }
        let (tar, dest, paths) = (tar_path.clone(), src.to_path_buf(), paths.to_vec());
        let unpacked =
            tokio::task::spawn_blocking(move || crate::agent::cache::unpack(&tar, &dest, &paths))
                .await;
        let _ = tokio::fs::remove_file(&tar_path).await;
        match unpacked {
            Ok(Ok(done)) => {
                if done.skipped > 0 {
                    tracing::warn!(
                        stage_id = ctx.stage_id,
                        key,
                        "skipped {} cache entries outside the stage's cache paths",
                        done.skipped
                    );
                }
                tracing::info!(
                    stage_id = ctx.stage_id,
                    key,
                    files = done.files,
                    "cache restored"
                );
                Ok(true)
            }
            // The checkout may be left with part of the cache: harmless, the steps
            // rebuild what is missing.
            Ok(Err(e)) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "restoring the cache failed; running without it");
                Ok(false)
            }
            Err(e) => Err(FilesError::Failed(format!("restoring the cache: {e}"))),
        }
    }

    /// `Ok(false)` when there is no cache under `key`.
    async fn download_cache_once(
        &self,
        ctx: &StageCtx,
        key: &str,
        out: &Path,
    ) -> Result<bool, CallError> {
        let url = self.stage_url(ctx, &protocol::cache_path(ctx.stage_id), &[("key", key)])?;
        let resp = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        if resp.status() == StatusCode::NOT_FOUND {
            return Ok(false);
        }
        let resp = check(resp).await?;
        let expected = resp
            .headers()
            .get(SHA256_HEADER)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
            .ok_or_else(|| CallError::Transient(format!("the answer has no {SHA256_HEADER}")))?;
        let file = tokio::fs::File::create(out)
            .await
            .map_err(|e| CallError::Transient(format!("creating {}: {e}", out.display())))?;
        let (sha, _) = stream_to(resp, file).await?;
        if sha != expected {
            return Err(CallError::Transient(format!(
                "the cache archive's sha256 is {sha}, not {expected}"
            )));
        }
        Ok(true)
    }

    /// Packs `names` (collected under `dir`) and saves them as the cache `key`.
    pub(super) async fn save_cache(
        &self,
        ctx: &StageCtx,
        key: &str,
        dir: &Path,
        names: Vec<String>,
        scratch: &Path,
    ) -> Result<bool, FilesError> {
        let tar_path: PathBuf = scratch.join("cache-out.tar");
        let (root, out) = (dir.to_path_buf(), tar_path.clone());
        let (sha, size) =
            tokio::task::spawn_blocking(move || crate::agent::cache::pack(&root, &names, &out))
                .await
                .map_err(|e| FilesError::Failed(e.to_string()))?
                .map_err(|e| FilesError::Failed(format!("packing the cache: {e}")))?;
        let size_text = size.to_string();
        let query = [
            ("key", key),
            ("sha256", sha.as_str()),
            ("size", size_text.as_str()),
        ];
        let route = protocol::cache_path(ctx.stage_id);
        let stored: Result<CacheStored, CallError> = self
            .with_retries("cache", || {
                self.upload_once(ctx, &route, &query, &tar_path, size)
            })
            .await;
        let _ = tokio::fs::remove_file(&tar_path).await;
        Ok(stored.map_err(FilesError::from)?.saved)
    }

    /// Streams the stage's source tar to a temp file, then unpacks it into `dest`.
    pub(super) async fn download_source(
        &self,
        ctx: &StageCtx,
        dest: &Path,
    ) -> Result<(), CallError> {
        let tar_path = dest.with_extension("tar");
        let mut backoff = Backoff::new();
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.download_once(ctx, &tar_path).await {
                Ok(()) => break,
                Err(CallError::Transient(e)) if attempts < 4 => {
                    tracing::warn!(stage_id = ctx.stage_id, error = %e, "source download failed; retrying");
                    tokio::time::sleep(backoff.next()).await;
                }
                Err(e) => return Err(e),
            }
        }
        let dest = dest.to_path_buf();
        tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            std::fs::create_dir_all(&dest)?;
            let file = std::fs::File::open(&tar_path)?;
            let mut archive = tar::Archive::new(std::io::BufReader::new(file));
            // `unpack` refuses entries that would land outside `dest` (`..`, absolute
            // paths, writes through symlinks); modes keep their 0o777 bits only.
            archive.set_preserve_mtime(true);
            archive.unpack(&dest)?;
            std::fs::remove_file(&tar_path)
        })
        .await
        .map_err(|e| CallError::Transient(e.to_string()))?
        .map_err(|e| CallError::Transient(format!("unpacking the source: {e}")))
    }

    async fn download_once(&self, ctx: &StageCtx, tar_path: &Path) -> Result<(), CallError> {
        let mut url = self.url(&protocol::source_path(ctx.stage_id))?;
        url.query_pairs_mut().append_pair("lease_token", &ctx.token);
        let resp = self
            .request(Method::GET, url)
            .send()
            .await
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let mut resp = check(resp).await?;
        let mut file = tokio::fs::File::create(tar_path)
            .await
            .map_err(|e| CallError::Transient(format!("creating {}: {e}", tar_path.display())))?;
        loop {
            let chunk = tokio::time::timeout(DOWNLOAD_IDLE, resp.chunk())
                .await
                .map_err(|_| CallError::Transient("source download stalled".into()))?
                .map_err(|e| CallError::Transient(describe(&e)))?;
            let Some(chunk) = chunk else { break };
            file.write_all(&chunk)
                .await
                .map_err(|e| CallError::Transient(format!("writing the source: {e}")))?;
        }
        file.flush()
            .await
            .map_err(|e| CallError::Transient(format!("writing the source: {e}")))?;
        Ok(())
    }
}

/// Streams a response body into `file`, hashing it; the sha256 and the byte count.
async fn stream_to(
    mut resp: reqwest::Response,
    file: tokio::fs::File,
) -> Result<(String, u64), CallError> {
    let mut out = tokio::io::BufWriter::with_capacity(64 * 1024, file);
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    loop {
        let chunk = tokio::time::timeout(DOWNLOAD_IDLE, resp.chunk())
            .await
            .map_err(|_| CallError::Transient("download stalled".into()))?
            .map_err(|e| CallError::Transient(describe(&e)))?;
        let Some(chunk) = chunk else { break };
        hasher.update(&chunk);
        size += chunk.len() as u64;
        out.write_all(&chunk)
            .await
            .map_err(|e| CallError::Transient(format!("writing: {e}")))?;
    }
    out.flush()
        .await
        .map_err(|e| CallError::Transient(format!("writing: {e}")))?;
    Ok((hex::encode(hasher.finalize()), size))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio_util::sync::CancellationToken;

    use super::*;

    /// A client pointed at a port nobody listens on: these refusals happen before any
    /// request.
    fn offline() -> (Arc<Client>, StageCtx) {
        let client = Arc::new(Client::new(
            reqwest::Url::parse("http://127.0.0.1:9/").unwrap(),
            "token".into(),
        ));
        let ctx = StageCtx::new(
            client.clone(),
            1,
            "lease".into(),
            Vec::new(),
            Duration::from_secs(1),
            CancellationToken::new(),
        );
        (client, ctx)
    }

    #[tokio::test]
    async fn symlinks_are_never_uploaded() {
        let (agent, ctx) = offline();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::symlink("/etc/passwd", dir.path().join("leak.txt")).unwrap();
        let artifact = runner::Artifact {
            path: "leak.txt".into(),
            size: 1,
            sha256: "0".repeat(64),
        };
        match agent.upload_artifact(&ctx, dir.path(), &artifact).await {
            Err(FilesError::Refused(m)) => assert!(m.contains("symlink"), "{m}"),
            other => panic!("expected a refusal, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn artifact_names_from_a_lease_cannot_escape() {
        let (agent, ctx) = offline();
        let src = tempfile::tempdir().unwrap();
        for bad in ["../../etc/passwd", "/etc/passwd", "a//b"] {
            let lease = [LeaseArtifact {
                id: 1,
                stage_key: "build".into(),
                name: bad.into(),
                sha256: "0".repeat(64),
                size: 1,
                mode: 0o644,
                path: protocol::artifact_path(1, 1),
            }];
            match agent.place_artifacts(&ctx, &lease, src.path()).await {
                Err(FilesError::Refused(m)) => assert!(m.contains("build"), "{m}"),
                other => panic!("{bad}: expected a refusal, got {other:?}"),
            }
        }
        assert_eq!(std::fs::read_dir(src.path()).unwrap().count(), 0);
    }
}
