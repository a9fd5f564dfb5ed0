//! The cron worker: fires `on.cron` schedules of each repository's default branch.
//!
//! At every due instant of a known schedule (and at least every [`RESCAN`]), for each
//! repository:
//! 1. Read the schedules from the pipeline files at the head of the default branch in
//!    the bare mirror. The mirror is fetched at most every [`FETCH_INTERVAL`] per
//!    repository (pushes keep it fresh anyway: the planner fetches on every run); the
//!    files are parsed again only when the head moves.
//! 2. For each schedule (`pipeline`, `name`), find the most recent scheduled instant at
//!    or before now. If it is newer than the schedule's watermark in the store
//!    (`cron_state.last_fired_at`), claim it with
//!    [`Store::claim_cron`](crate::store::Store::claim_cron) — true for exactly one
//!    caller per instant across replicas — and create a `cron` run on the default
//!    branch's head (fetched right then, so the run builds the current commit), with
//!    the schedule in params (see [`crate::workers::planner::PARAM_CRON`]); then wake the planner.
//!
//! Rules, and why:
//! * **No catch-up bursts.** Only the most recent due instant is considered, so a server
//!   that was down for a week fires an hourly schedule once, not 168 times.
//! * **Nothing before first sight.** A schedule seen for the first time is claimed at
//!   *now* without a run (a watermark), so adding `nightly` at noon does not fire last
//!   night's run. The watermark is persistent: after downtime, the latest missed instant
//!   fires once (that is the point of a nightly build).
//! * **At most once.** The instant is claimed before the run is created: a crash in
//!   between loses that run rather than risking two.
//! * Schedules are evaluated in UTC.

use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::time::{Duration, Instant};

use ::cron::Schedule;
use chrono::{DateTime, Timelike, Utc};
use serde_json::json;
use tokio::task::JoinHandle;

use crate::daemon::state::AppState;
use crate::git::Mirror;
use crate::git::lock_mirror;
use crate::store::{self, Event, NewRun, Repo, RepoId, Run, Trigger};
use crate::workers::planner::{PARAM_CRON, PARAM_PIPELINE};

/// How often the schedules themselves are read again (a push may have added or changed
/// one; a repository may have been registered). Firing does not wait for this: the
/// worker sleeps until the next due instant of the schedules it knows.
pub const RESCAN: Duration = Duration::from_secs(15);
/// How often one repository's mirror is fetched just to read its schedules.
pub const FETCH_INTERVAL: Duration = Duration::from_secs(600);
/// Woken this long after an instant, so that the wall clock has surely reached it.
const SLACK: Duration = Duration::from_millis(20);

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut cron = Cron::default();
        loop {
            let now = Utc::now();
            if let Err(e) = cron.tick(&state, now).await {
                tracing::warn!(error = %e, "cron: tick failed");
            }
            let wait = cron.wait_after(now, Utc::now());
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = tokio::time::sleep(wait) => {}
            }
        }
        tracing::debug!("cron worker stopped");
    })
}

/// The cron worker's memory: per repository, the schedules at the last head seen.
#[derive(Default)]
pub struct Cron {
    repos: HashMap<RepoId, Known>,
}

struct Known {
    fetched_at: Option<Instant>,
    /// Fetch parameters last used; a change forces a fetch.
    source: (String, String),
    head: Option<String>,
    entries: Vec<Entry>,
}

#[derive(Debug, Clone)]
pub struct Entry {
    pub pipeline: String,
    pub name: String,
    pub expr: String,
    pub schedule: Schedule,
}

impl Cron {
    /// One pass over every repository at time `now` (injected so tests are
    /// deterministic); returns the runs created.
    pub async fn tick(&mut self, state: &AppState, now: DateTime<Utc>) -> store::Result<Vec<Run>> {
        let repos = state.store.list_repos().await?;
        self.repos.retain(|id, _| repos.iter().any(|r| r.id == *id));
        let mut created = Vec::new();
        for repo in &repos {
            if state.shutdown.is_cancelled() {
                break;
            }
            let fetched_now = self.refresh(state, repo).await;
            let Some(known) = self.repos.get(&repo.id) else {
                continue;
            };
            let Some(head) = known.head.clone() else {
                continue;
            };
            let entries = known.entries.clone();
            let mut fresh_head: Option<String> = fetched_now.then(|| head.clone());
            for entry in &entries {
                let Some(instant) = self.due(state, repo, entry, now).await? else {
                    continue;
                };
                if !state
                    .store
                    .claim_cron(repo.id, &entry.pipeline, &entry.name, instant)
                    .await?
                {
                    continue; // another replica fired it
                }
                if fresh_head.is_none() {
                    fresh_head = Some(
                        read_head(state, repo, true)
                            .await
                            .ok()
                            .and_then(|(h, _)| h)
                            .unwrap_or_else(|| head.clone()),
                    );
                }
                let sha = fresh_head.clone().unwrap_or_else(|| head.clone());
                let run = state
                    .store
                    .create_run(repo.id, cron_run(repo, entry, &sha))
                    .await?;
                tracing::info!(repo = %repo.name, pipeline = %entry.pipeline, schedule = %entry.name, run = run.number, "cron fired");
                created.push(run);
            }
        }
        if !created.is_empty() {
            state.wake.planner.notify_waiters();
        }
        Ok(created)
    }

    /// How long to sleep after a tick at `now`: until just after the next instant of any
    /// known schedule, or [`RESCAN`] if that comes first.
    pub fn next_wait(&self, now: DateTime<Utc>) -> Duration {
        self.repos
            .values()
            .flat_map(|k| &k.entries)
            .filter_map(|e| e.schedule.after(&now).next())
            .filter_map(|next| (next - now).to_std().ok())
            .map(|d| d + SLACK)
            .fold(RESCAN, Duration::min)
    }

    /// How long to sleep after a tick that looked at the schedules as of `looked_at`
    /// and ended at `now`: until just after the next instant after `looked_at`. One
    /// that passed while the tick ran (a first fetch, a slow disk) is due at once,
    /// not at the next rescan.
    pub fn wait_after(&self, looked_at: DateTime<Utc>, now: DateTime<Utc>) -> Duration {
        let took = (now - looked_at).to_std().unwrap_or_default();
        self.next_wait(looked_at).saturating_sub(took)
    }

    /// The instant (unix ms) to fire now, if any; records the first-sight watermark.
    async fn due(
        &self,
        state: &AppState,
        repo: &Repo,
        entry: &Entry,
        now: DateTime<Utc>,
    ) -> store::Result<Option<i64>> {
        let Some(last) = state
            .store
            .cron_last_fired(repo.id, &entry.pipeline, &entry.name)
            .await?
        else {
            state
                .store
                .claim_cron(
                    repo.id,
                    &entry.pipeline,
                    &entry.name,
                    now.timestamp_millis(),
                )
                .await?;
            tracing::info!(repo = %repo.name, pipeline = %entry.pipeline, schedule = %entry.name, expr = %entry.expr, "cron schedule registered");
            return Ok(None);
        };
        Ok(latest_at_or_before(&entry.schedule, now)
            .map(|t| t.timestamp_millis())
            .filter(|t| *t > last))
    }

    /// Brings the schedules of `repo` up to date; true if the mirror was fetched.
    async fn refresh(&mut self, state: &AppState, repo: &Repo) -> bool {
        let source = (repo.clone_url.clone(), repo.default_branch.clone());
        let known = self.repos.entry(repo.id).or_insert_with(|| Known {
            fetched_at: None,
            source: source.clone(),
            head: None,
            entries: Vec::new(),
        });
        let fetch = known.source != source
            || known
                .fetched_at
                .is_none_or(|t| t.elapsed() >= FETCH_INTERVAL);
        let (head, files) = match read_head(state, repo, fetch).await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(repo = %repo.name, error = %e, "cron: reading the default branch failed");
                if fetch {
                    // Don't hammer an unreachable forge every tick.
                    known.fetched_at = Some(Instant::now());
                }
                return false;
            }
        };
        if fetch {
            known.fetched_at = Some(Instant::now());
            known.source = source;
        }
        if head != known.head {
            known.entries = match (&head, files) {
                (Some(sha), Some(files)) => entries_of(&repo.name, sha, &files),
                _ => Vec::new(),
            };
            known.head = head;
        }
        fetch
    }
}

/// The schedules in a set of pipeline files; invalid files give none (their pushes
/// already produce error runs explaining why).
pub fn entries_of(repo: &str, sha: &str, files: &[(String, String)]) -> Vec<Entry> {
    let pipelines = match pipelines::load(files) {
        Ok(p) => p,
        Err(diags) => {
            tracing::info!(
                repo,
                sha,
                errors = diags.len(),
                "cron: pipeline files at the default branch head are invalid; no schedules"
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for p in pipelines {
        for (name, trigger) in &p.triggers.cron {
            match Schedule::from_str(&trigger.schedule) {
                Ok(schedule) => out.push(Entry {
                    pipeline: p.name.clone(),
                    name: name.clone(),
                    expr: trigger.expr.clone(),
                    schedule,
                }),
                Err(e) => {
                    tracing::warn!(repo, pipeline = %p.name, schedule = %name, error = %e, "cron: unusable schedule");
                }
            }
        }
    }
    out
}

/// The most recent instant of `schedule` at or before `now` (second resolution).
pub fn latest_at_or_before(schedule: &Schedule, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    // `next_back` yields instants strictly before its start: start one second after
    // `now`'s second so an instant exactly at `now` counts.
    let start = now.with_nanosecond(0)? + chrono::Duration::seconds(1);
    schedule.after(&start).next_back()
}

fn cron_run(repo: &Repo, entry: &Entry, sha: &str) -> NewRun {
    let git_ref = format!("refs/heads/{}", repo.default_branch);
    let mut new = NewRun::new(Trigger::Cron, Event::Cron, &git_ref, sha);
    new.params = json!({ PARAM_CRON: entry.name, PARAM_PIPELINE: entry.pipeline });
    new.trusted = repo.trusted;
    new.message = format!("schedule `{}` ({})", entry.name, entry.expr);
    new
}

/// The default branch's head in the mirror, if the branch exists, and the pipeline files
/// there.
type Head = (Option<String>, Option<Vec<(String, String)>>);

/// The default branch's head in the mirror (fetched first if `fetch`), and the pipeline
/// files there.
pub(crate) async fn read_head(
    state: &AppState,
    repo: &Repo,
    fetch: bool,
) -> Result<Head, crate::git::GitError> {
    let dir = state.mirror_dir(repo.id);
    let url = repo.clone_url.clone();
    let branch = format!("refs/heads/{}", repo.default_branch);
    let credentials = crate::admin::repos::fetch_credentials(state, repo);
    let _guard = lock_mirror(&dir).await;
    tokio::task::spawn_blocking(move || read_head_blocking(&dir, &url, &branch, credentials, fetch))
        .await
        .unwrap_or_else(|e| {
            Err(crate::git::GitError::Git(git2::Error::from_str(&format!(
                "reading the default branch panicked: {e}"
            ))))
        })
}

fn read_head_blocking(
    dir: &Path,
    url: &str,
    branch: &str,
    credentials: Option<std::sync::Arc<crate::git::CredentialsFn>>,
    fetch: bool,
) -> Result<Head, crate::git::GitError> {
    let mut mirror = Mirror::open_or_init(dir, url)?;
    if let Some(c) = credentials {
        mirror = mirror.with_credentials(c);
    }
    if fetch {
        mirror.fetch(&[branch.to_string()])?;
    }
    let Some(head) = mirror.resolve_ref(branch)? else {
        return Ok((None, None));
    };
    let files = mirror.pipeline_files(&head)?;
    Ok((Some(head), Some(files)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(h: u32, m: u32, s: u32) -> DateTime<Utc> {
        Utc.with_ymd_and_hms(2030, 1, 2, h, m, s).unwrap()
    }

    #[test]
    fn latest_instant_includes_now_and_skips_older_misses() {
        let s = Schedule::from_str("0 0 3 * * *").unwrap();
        assert_eq!(latest_at_or_before(&s, at(3, 0, 0)), Some(at(3, 0, 0)));
        assert_eq!(latest_at_or_before(&s, at(12, 0, 0)), Some(at(3, 0, 0)));
        let before = latest_at_or_before(&s, at(2, 59, 59)).unwrap();
        assert_eq!(before, Utc.with_ymd_and_hms(2030, 1, 1, 3, 0, 0).unwrap());
        let every_minute = Schedule::from_str("0 * * * * *").unwrap();
        assert_eq!(
            latest_at_or_before(&every_minute, at(10, 7, 31)),
            Some(at(10, 7, 0))
        );
    }

    #[test]
    fn sleeps_until_the_next_instant_of_any_schedule() {
        let mut cron = Cron::default();
        assert_eq!(cron.next_wait(at(10, 0, 13)), RESCAN);
        let entry = |expr: &str| Entry {
            pipeline: "p".into(),
            name: expr.into(),
            expr: expr.into(),
            schedule: Schedule::from_str(expr).unwrap(),
        };
        cron.repos.insert(
            1,
            Known {
                fetched_at: None,
                source: Default::default(),
                head: None,
                entries: vec![entry("0 0 3 * * *"), entry("*/20 * * * * *")],
            },
        );
        assert_eq!(
            cron.next_wait(at(10, 0, 13)),
            Duration::from_secs(7) + SLACK
        );
        // At an instant, the next one (that one has just fired).
        assert_eq!(cron.next_wait(at(10, 0, 20)), RESCAN);
        assert_eq!(
            cron.next_wait(at(10, 0, 39)),
            Duration::from_secs(1) + SLACK
        );
        // A tick that looked at 10:00:19 and took until 10:00:21.5 (its first fetch):
        // the 10:00:20 instant passed meanwhile, so the next tick is at once (it fires
        // that instant) rather than 15 s later at the rescan.
        let ended = at(10, 0, 21) + chrono::Duration::milliseconds(500);
        assert_eq!(cron.wait_after(at(10, 0, 19), ended), Duration::ZERO);
        // A quick tick sleeps what is left until the next instant.
        let ended = at(10, 0, 13) + chrono::Duration::milliseconds(250);
        assert_eq!(
            cron.wait_after(at(10, 0, 13), ended),
            Duration::from_millis(6750) + SLACK
        );
    }

    #[test]
    fn entries_come_from_every_pipeline() {
        let files = vec![
            (
                ".slipway/a.yml".to_string(),
                "on: { cron: { nightly: \"0 3 * * *\" } }\nstages: { s: { steps: [\"true\"] } }\n"
                    .to_string(),
            ),
            (
                ".slipway/b.yml".to_string(),
                "on: { push: {} }\nstages: { s: { steps: [\"true\"] } }\n".to_string(),
            ),
        ];
        let e = entries_of("r", "x", &files);
        assert_eq!(e.len(), 1);
        assert_eq!(
            (e[0].pipeline.as_str(), e[0].name.as_str()),
            ("a", "nightly")
        );
        assert!(entries_of("r", "x", &[(".slipway.yml".into(), "stages: [".into())]).is_empty());
    }
}
