//! The rollout controller's loop: each round it starts the rollout stages whose gates
//! passed, leases every rollout no other replica holds, and runs one tick of each (see
//! [`crate::rollout`]). The lease is short, so after a crash or `kill -9` another
//! replica — or this one restarted — takes over within a few rounds and resumes from
//! the persisted step.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::task::JoinHandle;

use crate::clock::Ticker;
use crate::daemon::state::AppState;
use crate::logs::{NewLine, StepKey, Stream};
use crate::rollout::cluster::Cluster;
use crate::rollout::driver::{Outcome, Tick};
use crate::store::rollouts::RolloutRecord;

/// How often rollouts are driven: the reaction time to a failed measurement.
const ROUND: Duration = Duration::from_millis(250);
/// How long a replica holds a rollout without renewing it.
const LEASE_MS: i64 = 5_000;

pub fn spawn(state: AppState) -> JoinHandle<()> {
    tokio::spawn(async move {
        let owner = format!("{}-{:016x}", std::process::id(), rand::random::<u64>());
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .unwrap_or_default();
        let mut clusters: HashMap<i64, Arc<Cluster>> = HashMap::new();
        let mut rounds = Ticker::new(state.store.clock(), ROUND);
        loop {
            tokio::select! {
                _ = state.shutdown.cancelled() => break,
                _ = rounds.tick() => {}
            }
            if let Err(e) = round(&state, &owner, &http, &mut clusters).await {
                tracing::warn!(error = %e, "driving rollouts failed; retrying next round");
            }
        }
    })
}

async fn round(
    state: &AppState,
    owner: &str,
    http: &reqwest::Client,
    clusters: &mut HashMap<i64, Arc<Cluster>>,
) -> crate::store::Result<()> {
    for stage in state.store.queued_rollout_stages(20).await? {
        match crate::rollout::start::new_rollout(&state.store, &stage).await? {
            Ok(new) => {
                state
                    .store
                    .start_rollout(stage.id, owner, LEASE_MS, &new)
                    .await?;
            }
            Err(why) => {
                state.store.refuse_rollout(stage.id, &why).await?;
            }
        }
    }
    let leased = state.store.lease_rollouts(owner, LEASE_MS).await?;
    clusters.retain(|id, _| leased.iter().any(|r| r.id == *id));
    let mut ticks = Vec::new();
    for r in leased {
        let cluster = match clusters.get(&r.id) {
            Some(c) => c.clone(),
            None => match connect(state, &r).await? {
                Ok(c) => {
                    let c = Arc::new(c);
                    clusters.insert(r.id, c.clone());
                    c
                }
                Err(why) => {
                    let lines = Mutex::new(vec![format!("failed: {why}")]);
                    flush(state, &r, &lines).await;
                    let mut r = r;
                    r.phase = crate::store::rollouts::RolloutPhase::Failed;
                    r.message = Some(why.clone());
                    state
                        .store
                        .finish_rollout(&r, owner, crate::store::StageStatus::Failure, Some(&why))
                        .await?;
                    continue;
                }
            },
        };
        ticks.push(tick(state, owner, http, cluster, r));
    }
    for result in futures::future::join_all(ticks).await {
        if let Err(e) = result {
            tracing::warn!(error = %e, "a rollout tick failed; retrying next round");
        }
    }
    Ok(())
}

async fn connect(
    state: &AppState,
    r: &RolloutRecord,
) -> crate::store::Result<Result<Cluster, String>> {
    let kubeconfig = match state
        .store
        .find_environment(r.repo_id, &r.environment)
        .await?
    {
        Some(env) => match crate::rollout::kubeconfig(&state.secret_box, &env) {
            Ok(k) => k,
            Err(why) => return Ok(Err(why)),
        },
        None => None,
    };
    Ok(Cluster::connect(kubeconfig.as_deref(), &r.namespace).await)
}

async fn tick(
    state: &AppState,
    owner: &str,
    http: &reqwest::Client,
    cluster: Arc<Cluster>,
    r: RolloutRecord,
) -> crate::store::Result<Outcome> {
    let lines = Mutex::new(Vec::new());
    let log = |_: &RolloutRecord, line: String| {
        lines.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    };
    let t = Tick {
        store: &state.store,
        owner,
        http,
        cluster: &cluster,
        log: &log,
    };
    let probe = r.clone();
    let out = t.run(r).await;
    flush(state, &probe, &lines).await;
    out
}

/// Appends the tick's log lines to the stage's `rollout` step.
async fn flush(state: &AppState, r: &RolloutRecord, lines: &Mutex<Vec<String>>) {
    let lines: Vec<String> = std::mem::take(&mut *lines.lock().unwrap_or_else(|e| e.into_inner()));
    if lines.is_empty() {
        return;
    }
    for l in &lines {
        tracing::info!(rollout = r.id, run = r.run_id, "{l}");
    }
    let now = state.store.now_ms();
    let batch: Vec<NewLine> = lines
        .iter()
        .map(|l| NewLine {
            time_ms: now,
            stream: Stream::Stdout,
            bytes: l.clone().into_bytes(),
        })
        .collect();
    let bytes: i64 = batch.iter().map(|l| l.bytes.len() as i64 + 1).sum();
    let n = batch.len() as i64;
    let key = StepKey {
        run: r.run_id,
        stage: r.stage_id,
        step: 0,
    };
    let logs = state.clone();
    let written = tokio::task::spawn_blocking(move || {
        let _guard = crate::logs::append_lock(key)
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let have = logs.logs.count(key)?;
        logs.logs.append(key, have + 1, &batch)
    })
    .await;
    if !matches!(written, Ok(Ok(_))) {
        tracing::warn!(rollout = r.id, "could not write the rollout's log");
        return;
    }
    if let Ok(steps) = state.store.list_steps(r.stage_id).await
        && let Some(step) = steps.first()
    {
        let _ = state.store.add_step_log_stats(step.id, n, bytes).await;
    }
}
