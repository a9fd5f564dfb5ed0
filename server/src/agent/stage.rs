//! One leased stage on this runner, start to end: source, needed artifacts and cache
//! into a work dir, [`runner::run_stage`] on the backend (secret values masked before
//! any line leaves this process), artifacts uploaded and cache saved, then the outcome
//! reported. A stage is `success` only with its artifacts stored.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use runner::{RunOptions, Source, Status};
use tokio_util::sync::CancellationToken;

use super::client::{CallError, OnFull};
use super::files;
use super::forward::{StageCtx, forward, heartbeat_loop};
use super::stage_spec::{OnMissing, SpecError, stage_spec};
use super::{Agent, Session};
use crate::protocol::{self, AdoptionRecord, LeaseResponse, StageFinish, WireStatus};

impl Agent {
    /// Runs one leased stage to the end and reports it.
    /// Runs a leased stage and reports its end; `adopt`: a stage a predecessor
    /// process set up (and left running), taken over rather than set up again.
    pub(super) async fn run_leased(
        self: &Arc<Self>,
        lease: LeaseResponse,
        session: &Session,
        shutdown: &CancellationToken,
        adopt: Option<runner::StageHandle>,
    ) {
        tracing::info!(
            stage_id = lease.stage_id,
            run_id = lease.run_id,
            stage = %lease.stage_key,
            attempt = lease.attempt,
            repo = %lease.repo,
            "stage started"
        );
        let ctx = Arc::new(StageCtx::new(
            self.client.clone(),
            lease.stage_id,
            lease.lease_token.clone(),
            lease.log_offsets.clone(),
            // Past this, the lease has expired anyway: keep nothing pending longer.
            session.lease + session.heartbeat,
            shutdown.clone(),
        ));
        let cancel = CancellationToken::new();
        let done = CancellationToken::new();
        let stopping = Arc::new(AtomicBool::new(false));
        let heartbeat = tokio::spawn(heartbeat_loop(
            ctx.clone(),
            session.heartbeat,
            cancel.clone(),
            done.clone(),
        ));
        let watcher = tokio::spawn({
            let (shutdown, done, cancel, stopping) = (
                shutdown.clone(),
                done.clone(),
                cancel.clone(),
                stopping.clone(),
            );
            let grace = self.shutdown_grace;
            async move {
                tokio::select! {
                    _ = shutdown.cancelled() => {}
                    _ = done.cancelled() => return,
                }
                tokio::select! {
                    _ = tokio::time::sleep(grace) => {}
                    _ = done.cancelled() => return,
                }
                stopping.store(true, Ordering::SeqCst);
                cancel.cancel();
            }
        });

        let Ended {
            mut status,
            mut reason,
            outputs,
            findings,
        } = self.execute(&ctx, &lease, cancel.clone(), adopt).await;

        done.cancel();
        let _ = heartbeat.await;
        let _ = watcher.await;
        if ctx.lost.load(Ordering::SeqCst) {
            tracing::warn!(
                stage_id = lease.stage_id,
                "stage abandoned: its lease is lost or the server stayed unreachable"
            );
            return;
        }
        let shutting_down = stopping.load(Ordering::SeqCst);
        if let Some(why) = ctx.full() {
            // Stopped because the server's disk is full: an infrastructure error,
            // retried by the server like any other.
            status = WireStatus::Error;
            reason = Some(why);
        } else if shutting_down && status == WireStatus::Cancelled {
            status = WireStatus::Error;
            reason = Some("runner shut down before the stage finished".into());
        }
        let finish = StageFinish {
            lease_token: ctx.token.clone(),
            status,
            reason,
            outputs,
            findings,
        };
        match self
            .client
            .call_retrying::<_, serde_json::Value>(
                &protocol::finish_path(lease.stage_id),
                &finish,
                ctx.give_up,
                // The end of the stage is kept until the server can store it.
                OnFull::Wait,
                shutdown,
            )
            .await
        {
            Ok(_) => tracing::info!(
                stage_id = lease.stage_id,
                status = ?finish.status,
                "stage finished"
            ),
            Err(e) => tracing::warn!(
                stage_id = lease.stage_id,
                error = %e,
                "could not report the stage's end; its lease will expire"
            ),
        }
    }

    /// Downloads the source and runs the steps; how the stage ended.
    async fn execute(
        &self,
        ctx: &Arc<StageCtx>,
        lease: &LeaseResponse,
        cancel: CancellationToken,
        adopt: Option<runner::StageHandle>,
    ) -> Ended {
        // Held (flocked) by this process while the stage runs: if the process dies,
        // its successor's start-up sweep removes it (`Agent::sweep_scratch`).
        let (base, prefix) = self.scratch();
        let tmp =
            tokio::task::spawn_blocking(move || runner::owned_dir::OwnedDir::create(&base, prefix))
                .await
                .unwrap_or_else(|e| Err(std::io::Error::other(e)));
        let tmp = match tmp {
            Ok(t) => t,
            Err(e) => {
                return Ended::early(
                    WireStatus::Error,
                    Some(format!("creating a temp dir for the source: {e}")),
                );
            }
        };
        let src = tmp.path().join("src");
        let cache = match &adopt {
            // The workspace is in the adopted stage already.
            Some(_) => None,
            None => match self
                .prepare_workspace(ctx, lease, &src, tmp.path(), &cancel)
                .await
            {
                Ok(cache) => cache,
                Err(ended) => return ended,
            },
        };
        let mut spec = match stage_spec(
            &lease.spec,
            &lease.stage_key,
            Source::Directory(src),
            &lease.secrets,
            OnMissing::Omit,
        ) {
            Ok(spec) => spec,
            Err(SpecError::Unsupported(reason)) => {
                return Ended::early(WireStatus::Failure, Some(reason));
            }
            Err(e @ (SpecError::MissingSecret { .. } | SpecError::BadRegistrySecret { .. })) => {
                return Ended::early(WireStatus::Failure, Some(e.to_string()));
            }
        };
        // What the backend tags its objects with (Kubernetes pod labels).
        spec.labels = std::collections::BTreeMap::from([
            ("repo".to_owned(), lease.repo.clone()),
            ("run".to_owned(), lease.run_number.to_string()),
            ("stage".to_owned(), lease.stage_key.clone()),
            ("attempt".to_owned(), lease.attempt.to_string()),
            // What the server's orphan sweep checks a pod against (kube_orphans).
            ("stage-id".to_owned(), lease.stage_id.to_string()),
        ]);
        if self.backend.name() == "kubernetes" {
            // Kept in the stage's Secret: a restarted runner resumes the stage with it.
            // Never the lease token or a secret value: those come back from the server
            // on resume.
            spec.adoption = serde_json::to_string(&AdoptionRecord::from(lease)).ok();
        }
        let declared = spec.artifacts.clone();
        if let Some(c) = cache.as_ref().filter(|c| c.save) {
            // The backend collects the cache paths with the artifacts: every backend
            // can, whatever its workspace is.
            spec.artifacts.extend(c.paths.iter().cloned());
        }
        let collected = tmp.path().join("collected");
        let opts = RunOptions {
            artifact_dir: (!spec.artifacts.is_empty()).then(|| collected.clone()),
            adopt,
            // Only the declared artifacts are uploaded with the run: scan those.
            secret_scan: (!lease.spec.allow_secrets_in_artifacts).then(|| declared.clone()),
        };
        // Bounded: a step printing faster than the server stores its log is slowed
        // down to the server's pace rather than queued here.
        let (tx, rx) = runner::event_channel(runner::DEFAULT_EVENT_BUDGET);
        let forwarder = tokio::spawn(forward(ctx.clone(), rx, cancel.clone()));
        let outcome = runner::run_stage(&*self.backend, &spec, opts, tx, cancel.clone()).await;
        // run_stage dropped its sender: the forwarder drains what is left and ends.
        let _ = forwarder.await;
        if outcome.status.is_success() {
            let stored = tokio::select! {
                r = self.store_outputs(ctx, &outcome.artifacts, &declared, cache.as_ref(), &collected, tmp.path()) => r,
                _ = cancel.cancelled() => return Ended::early(WireStatus::Cancelled, None),
            };
            if let Err(e) = stored {
                return files_failure(ctx, "storing the stage's artifacts", e);
            }
        }
        drop(tmp);
        let status = match &outcome.status {
            // A refused artifact path, a bad Dockerfile: running it again fails the
            // same way, so it is the pipeline's failure, not a retryable error.
            Status::Error(_) if !outcome.retryable => WireStatus::Failure,
            other => WireStatus::from_runner(other),
        };
        let reason = stage_reason(&spec.kind, &outcome);
        Ended {
            status,
            reason,
            outputs: outcome.outputs,
            findings: outcome.findings,
        }
    }

    /// The source, the needed stages' artifacts and the cache, into `src`; the
    /// stage's cache settings. `Err`: how the stage ended instead.
    async fn prepare_workspace(
        &self,
        ctx: &Arc<StageCtx>,
        lease: &LeaseResponse,
        src: &Path,
        scratch: &Path,
        cancel: &CancellationToken,
    ) -> Result<Option<StageCache>, Ended> {
        let download = self.client.download_source(ctx, src);
        let downloaded = tokio::select! {
            r = download => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        if let Err(e) = downloaded {
            if matches!(e, CallError::LeaseLost) {
                ctx.lost.store(true, Ordering::SeqCst);
            }
            return Err(Ended::early(
                WireStatus::Error,
                Some(format!("downloading the source: {e}")),
            ));
        }
        let placed = tokio::select! {
            r = self.client.place_artifacts(ctx, &lease.artifacts, src) => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        if let Err(e) = placed {
            return Err(files_failure(
                ctx,
                "placing the needed stages' artifacts",
                e,
            ));
        }
        let cache = tokio::select! {
            r = self.prepare_cache(ctx, lease, src, scratch) => r,
            _ = cancel.cancelled() => return Err(Ended::early(WireStatus::Cancelled, None)),
        };
        cache.map_err(|e| files_failure(ctx, "preparing the cache", e))
    }

    /// The stage's cache, if it declares `cache:` paths: its key, restored into `src`
    /// when saved before; `save` when it missed and this run may write caches.
    async fn prepare_cache(
        &self,
        ctx: &StageCtx,
        lease: &LeaseResponse,
        src: &Path,
        scratch: &Path,
    ) -> Result<Option<StageCache>, files::FilesError> {
        let paths = lease.spec.cache.clone();
        if paths.is_empty() {
            return Ok(None);
        }
        if let Err(e) = runner::artifacts::check_globs(&paths) {
            return Err(files::FilesError::Refused(format!("cache paths: {e}")));
        }
        let (stage_key, dir, key_paths) =
            (lease.stage_key.clone(), src.to_path_buf(), paths.clone());
        let key = match tokio::task::spawn_blocking(move || {
            crate::agent::cache::cache_key(&stage_key, &key_paths, &dir)
        })
        .await
        {
            Ok(Ok(key)) => key,
            Ok(Err(e)) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "cannot compute the cache key; running without a cache");
                return Ok(None);
            }
            Err(e) => return Err(files::FilesError::Failed(e.to_string())),
        };
        let hit = self
            .client
            .restore_cache(ctx, &key, &paths, src, scratch)
            .await?;
        Ok(Some(StageCache {
            save: !hit && lease.cache_writable,
            key,
            paths,
        }))
    }

    /// Uploads the declared artifacts among `collected`, then saves the cache.
    async fn store_outputs(
        &self,
        ctx: &StageCtx,
        collected: &[runner::Artifact],
        declared: &[String],
        cache: Option<&StageCache>,
        dir: &Path,
        scratch: &Path,
    ) -> Result<(), files::FilesError> {
        let refused = |e: runner::Error| files::FilesError::Refused(e.to_string());
        let artifacts = runner::artifacts::Matcher::new(declared).map_err(refused)?;
        for a in collected.iter().filter(|a| artifacts.is_match(&a.path)) {
            let stored = self.client.upload_artifact(ctx, dir, a).await?;
            tracing::info!(stage_id = ctx.stage_id, artifact = %stored.name, size = stored.size, new_blob = stored.new_blob, "artifact uploaded");
        }
        let Some(cache) = cache.filter(|c| c.save) else {
            return Ok(());
        };
        let matcher = runner::artifacts::Matcher::new(&cache.paths).map_err(refused)?;
        let names: Vec<String> = collected
            .iter()
            .filter(|a| matcher.is_match(&a.path))
            .map(|a| a.path.clone())
            .collect();
        if names.is_empty() {
            tracing::info!(
                stage_id = ctx.stage_id,
                "the cache paths hold no files; nothing to save"
            );
            return Ok(());
        }
        match self
            .client
            .save_cache(ctx, &cache.key, dir, names, scratch)
            .await
        {
            Ok(saved) => {
                tracing::info!(stage_id = ctx.stage_id, key = %cache.key, saved, "cache saved")
            }
            Err(files::FilesError::LeaseLost) => return Err(files::FilesError::LeaseLost),
            Err(files::FilesError::Refused(e) | files::FilesError::Failed(e)) => {
                tracing::warn!(stage_id = ctx.stage_id, error = %e, "saving the cache failed")
            }
        }
        Ok(())
    }
}

/// Why a stage that ran ended as it did: the findings that failed a scan stage, the
/// step that failed or timed out, or the runner's error; `None` for success.
fn stage_reason(kind: &runner::StageKind, outcome: &runner::StageOutcome) -> Option<String> {
    // A scan stage that failed because of its findings says which.
    let scan_reason = match (kind, &outcome.status) {
        (runner::StageKind::Scan(scan), Status::Failure) => {
            runner::scan::failure_reason(&outcome.findings, scan.fail_on)
        }
        _ => None,
    };
    let reason = match &outcome.status {
        Status::Error(message) => Some(message.clone()),
        Status::Failure | Status::TimedOut => outcome
            .steps
            .iter()
            .find(|s| s.status == outcome.status)
            .map(|s| match (&s.status, s.exit_code) {
                (Status::TimedOut, _) => format!("step `{}` timed out", s.name),
                (_, Some(code)) if s.oom_killed => {
                    format!(
                        "step `{}` was killed (out of memory, exit code {code})",
                        s.name
                    )
                }
                (_, Some(code)) => format!("step `{}` exited with code {code}", s.name),
                (_, None) => format!("step `{}` failed", s.name),
            })
            .or_else(|| (outcome.status == Status::TimedOut).then(|| "stage timed out".into())),
        _ => None,
    };
    scan_reason.or(reason)
}

/// How a stage ended on this runner: what its finish reports.
struct Ended {
    status: WireStatus,
    reason: Option<String>,
    outputs: std::collections::BTreeMap<String, String>,
    findings: Vec<runner::Finding>,
}

impl Ended {
    /// Ended before the steps ran: no results.
    fn early(status: WireStatus, reason: Option<String>) -> Ended {
        Ended {
            status,
            reason,
            outputs: Default::default(),
            findings: Vec::new(),
        }
    }
}

/// A stage's cache: its key and paths, and whether to save it afterwards.
struct StageCache {
    key: String,
    paths: Vec<String>,
    save: bool,
}

/// The stage's status and reason when moving its files failed.
fn files_failure(ctx: &StageCtx, doing: &str, e: files::FilesError) -> Ended {
    match e {
        files::FilesError::LeaseLost => {
            ctx.lost.store(true, Ordering::SeqCst);
            Ended::early(WireStatus::Error, Some(format!("{doing}: lease lost")))
        }
        files::FilesError::Refused(m) => Ended::early(WireStatus::Failure, Some(m)),
        files::FilesError::Failed(m) => {
            Ended::early(WireStatus::Error, Some(format!("{doing}: {m}")))
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn a_scan_stage_failed_by_its_findings_names_them() {
        let finding = |severity, line| runner::Finding {
            tool: runner::scan::TOOL.into(),
            rule: "github-token".into(),
            severity,
            path: Some("src/config.rs".into()),
            line: Some(line),
            message: "GitHub personal access token (ghp_****)".into(),
        };
        let step = |status: Status, exit_code| runner::StepOutcome {
            name: "scan".into(),
            status,
            exit_code,
            oom_killed: false,
            duration: Duration::ZERO,
        };
        let mut outcome = runner::StageOutcome {
            id: "scan".into(),
            status: Status::Failure,
            steps: vec![step(Status::Success, Some(0)), step(Status::Failure, None)],
            artifacts: Vec::new(),
            outputs: Default::default(),
            findings: vec![
                finding(runner::Severity::Medium, 1),
                finding(runner::Severity::High, 3),
            ],
            retryable: false,
            duration: Duration::ZERO,
        };
        let scan = runner::StageKind::Scan(runner::ScanSpec {
            sarif: Vec::new(),
            fail_on: Some(runner::Severity::High),
        });
        assert_eq!(
            stage_reason(&scan, &outcome).as_deref(),
            Some("scan found 1 finding at or above high: src/config.rs:3 github-token")
        );
        // Not a scan stage, or nothing at `fail_on`: the failing step is named.
        assert_eq!(
            stage_reason(&runner::StageKind::Run, &outcome).as_deref(),
            Some("step `scan` failed")
        );
        outcome.findings.pop();
        assert_eq!(
            stage_reason(&scan, &outcome).as_deref(),
            Some("step `scan` failed")
        );
        outcome.status = Status::Success;
        assert_eq!(stage_reason(&scan, &outcome), None);
    }
}
