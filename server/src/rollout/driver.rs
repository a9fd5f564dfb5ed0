//! One tick of one rollout: read what people asked for, apply the traffic the current
//! step wants (idempotent), judge the step, and move on, pause, roll back or finish.
//!
//! Nothing here remembers anything between ticks but the rollout row (step, memo) and
//! the measurements: a replica that takes a rollout over after a crash re-applies the
//! persisted step — the same objects, so nothing changes — and goes on from there.
//!
//! What a step does to the cluster (the stable and canary objects, traffic, finishing,
//! cleaning up) is in [`super::apply`].

use pipelines::{Pause, Traffic};
use serde_json::json;

use super::actions::{Action, AnalysisKind, actions, desired_at};
use super::analysis::{Verdict, check_name, measure, verdict};
use super::cluster::Cluster;
use crate::store::rollouts::{Measurement, PromoteRequest, RolloutPhase, RolloutRecord};
use crate::store::{StageStatus, Store};

/// What a tick needs from the server.
pub struct Tick<'a> {
    pub store: &'a Store,
    pub owner: &'a str,
    pub http: &'a reqwest::Client,
    pub cluster: &'a Cluster,
    /// Appends a line to the stage's log.
    pub log: &'a (dyn Fn(&RolloutRecord, String) + Send + Sync),
}

/// Where a tick left the rollout.
#[derive(Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Still going (or paused); tick again.
    Continue,
    /// Ended; the stage is finished.
    Done,
    /// Another replica holds it now.
    Lost,
}

pub(super) type R<T> = Result<T, String>;

/// The start of the reason a rollout past its stage's `timeout` rolls back with (and
/// how its end knows to say `timed_out`).
const TIMED_OUT: &str = "the stage's timeout passed";

/// The stage's `timeout`, in seconds, when it has run longer than that.
fn timed_out(stage: &crate::store::Stage, now_ms: i64) -> Option<String> {
    let secs = stage.spec.get("timeout_secs")?.as_u64()?;
    let started = stage.started_at?;
    let limit_ms = i64::try_from(secs.saturating_mul(1000)).unwrap_or(i64::MAX);
    (now_ms.saturating_sub(started) >= limit_ms).then(|| format!("timeout: {secs}s"))
}

/// How long the new version's pods stay after traffic left them (requests in flight
/// finish), before the rollout removes them.
pub(super) const DRAIN_MS: i64 = 1_000;

impl Tick<'_> {
    pub async fn run(&self, mut r: RolloutRecord) -> crate::store::Result<Outcome> {
        let acts = actions(&r.spec.strategy);
        let at = r.step;
        if r.phase == RolloutPhase::RollingBack {
            return self.roll_back(r, &acts).await;
        }
        let stage = self.store.get_stage(r.stage_id).await?;
        if stage.cancel_requested || r.abort_requested {
            let why = if r.abort_requested {
                r.aborted_by
                    .as_deref()
                    .map(|u| format!("aborted by {u}"))
                    .unwrap_or_else(|| "aborted".into())
            } else {
                "the run was cancelled".into()
            };
            return self
                .begin_roll_back(r, &acts, RolloutPhase::Aborted, why)
                .await;
        }
        // The stage's `timeout` holds for a rollout as for any stage, pauses included:
        // past it, traffic goes back to stable and the stage ends `timed_out`.
        if let Some(limit) = timed_out(&stage, self.store.now_ms()) {
            return self
                .begin_roll_back(
                    r,
                    &acts,
                    RolloutPhase::Failed,
                    format!("{TIMED_OUT} ({limit})"),
                )
                .await;
        }
        if r.memo.get("stable_replicas").is_none() {
            match self.remember_stable(&mut r).await {
                Ok(()) => {}
                Err(e) => return self.fail_now(r, e).await,
            }
        }
        let finish = acts.len() as i64 - 1;
        match self.store.take_promote_request(r.id, self.owner).await? {
            Some(PromoteRequest::Full) if r.step < finish => {
                (self.log)(&r, "promoted fully: skipping to the last step".into());
                r.step = finish;
                r.phase = RolloutPhase::Progressing;
                r.message = None;
                return self.save(&r, at).await;
            }
            Some(PromoteRequest::Step) => {
                r.memo["promoted_step"] = json!(r.step);
                // A person looked at the inconclusive measurements and went on: the
                // background analysis counts afresh from here.
                if r.phase == RolloutPhase::Paused {
                    r.memo["background_since"] = json!(self.store.now_ms());
                }
            }
            _ => {}
        }
        if let Some(bg) = super::actions::background(&r.spec.strategy).cloned()
            && r.step < finish
        {
            match self.analyse(&r, &bg, -1, AnalysisKind::Background).await? {
                Verdict::Failed(why) => {
                    return self
                        .begin_roll_back(
                            r,
                            &acts,
                            RolloutPhase::Failed,
                            format!("background analysis failed: {why}"),
                        )
                        .await;
                }
                Verdict::Inconclusive(why) if !self.promoted_here(&r) => {
                    return self
                        .pause(r, at, format!("background analysis inconclusive: {why}"))
                        .await;
                }
                _ => {}
            }
        }
        let step = r.step as usize;
        let Some(action) = acts.get(step).cloned() else {
            return self
                .fail_now(r, format!("step {step} is past the rollout's end"))
                .await;
        };
        if r.memo["logged_step"] != json!(r.step) {
            (self.log)(
                &r,
                format!("step {}/{}: {}", step + 1, acts.len(), action.describe()),
            );
            r.memo["logged_step"] = json!(r.step);
        }
        let desired = desired_at(&acts, step);
        let result = match &action {
            Action::Finish => self.finish(&mut r).await,
            Action::Recreate => self.recreate(&mut r).await,
            _ => self.apply(&mut r, &desired).await,
        };
        let ready = match result {
            Ok(ready) => ready,
            Err(e) => {
                return self
                    .begin_roll_back(r, &acts, RolloutPhase::Failed, e)
                    .await;
            }
        };
        if !ready {
            return self.save(&r, at).await;
        }
        let now = self.store.now_ms();
        let advance = match &action {
            Action::Pause(Pause::Elapsed { secs }) => {
                now - r.step_started_at >= (*secs as i64) * 1000 || self.promoted_here(&r)
            }
            Action::Pause(Pause::Promoted) => {
                if !self.promoted_here(&r) {
                    return self.pause(r, at, "waiting for a promote".into()).await;
                }
                true
            }
            Action::KeepOld(secs) => now - r.step_started_at >= (*secs as i64) * 1000,
            Action::Analysis(a, kind) => match self.analyse(&r, a, r.step, *kind).await? {
                Verdict::Running => false,
                Verdict::Passed => true,
                Verdict::Failed(why) => {
                    return self
                        .begin_roll_back(
                            r,
                            &acts,
                            RolloutPhase::Failed,
                            format!("{} analysis failed: {why}", kind.as_str()),
                        )
                        .await;
                }
                Verdict::Inconclusive(_) if self.promoted_here(&r) => true,
                Verdict::Inconclusive(why) => {
                    return self
                        .pause(r, at, format!("analysis inconclusive: {why}"))
                        .await;
                }
            },
            Action::Finish => {
                r.phase = RolloutPhase::Succeeded;
                r.message = Some(format!("{} runs {}", r.deployment, r.image));
                (self.log)(&r, format!("rolled out: {} runs {}", r.deployment, r.image));
                return self.end(r, StageStatus::Success).await;
            }
            _ => true,
        };
        if advance {
            r.step += 1;
            r.phase = RolloutPhase::Progressing;
            r.message = None;
        }
        self.save(&r, at).await
    }

    fn promoted_here(&self, r: &RolloutRecord) -> bool {
        r.memo["promoted_step"] == json!(r.step)
    }

    async fn save(&self, r: &RolloutRecord, at: i64) -> crate::store::Result<Outcome> {
        Ok(if self.store.save_rollout(r, self.owner, at).await? {
            Outcome::Continue
        } else {
            Outcome::Lost
        })
    }

    async fn pause(
        &self,
        mut r: RolloutRecord,
        at: i64,
        why: String,
    ) -> crate::store::Result<Outcome> {
        if r.phase != RolloutPhase::Paused {
            (self.log)(&r, format!("paused: {why}"));
        }
        r.phase = RolloutPhase::Paused;
        r.message = Some(why);
        self.save(&r, at).await
    }

    async fn end(&self, r: RolloutRecord, status: StageStatus) -> crate::store::Result<Outcome> {
        let reason = r.message.clone();
        Ok(
            if self
                .store
                .finish_rollout(&r, self.owner, status, reason.as_deref())
                .await?
            {
                Outcome::Done
            } else {
                Outcome::Lost
            },
        )
    }

    /// A failure before anything was created (no cluster, no target): the stage ends.
    async fn fail_now(&self, mut r: RolloutRecord, why: String) -> crate::store::Result<Outcome> {
        (self.log)(&r, format!("failed: {why}"));
        r.phase = RolloutPhase::Failed;
        r.message = Some(why);
        self.end(r, StageStatus::Failure).await
    }

    async fn begin_roll_back(
        &self,
        mut r: RolloutRecord,
        acts: &[Action],
        phase: RolloutPhase,
        why: String,
    ) -> crate::store::Result<Outcome> {
        (self.log)(&r, format!("rolling back: {why}"));
        r.phase = RolloutPhase::RollingBack;
        r.memo["rollback"] = json!({ "phase": phase.as_str(), "why": why });
        r.message = Some(why);
        let at = r.step;
        match self.save(&r, at).await? {
            Outcome::Continue => self.roll_back(r, acts).await,
            other => Ok(other),
        }
    }

    /// Traffic back to stable at once, the new version removed, stable otherwise
    /// untouched; then the stage ends with the reason. Safe to repeat.
    async fn roll_back(
        &self,
        mut r: RolloutRecord,
        _acts: &[Action],
    ) -> crate::store::Result<Outcome> {
        let mut errors = Vec::new();
        if let Err(e) = self.restore_traffic(&r).await {
            errors.push(e);
        }
        if super::actions::traffic(&r.spec.strategy) == Traffic::Replicas
            && !matches!(r.spec.strategy, pipelines::Strategy::BlueGreen(_))
            && let Err(e) = self.set_stable(&r, None, Self::stable_replicas(&r)).await
        {
            errors.push(e);
        }
        if errors.is_empty() && !self.drained(&mut r) {
            let at = r.step;
            return self.save(&r, at).await;
        }
        if errors.is_empty()
            && let Err(e) = self.remove_objects(&r).await
        {
            errors.push(e);
        }
        if !errors.is_empty() {
            // Tried again next tick; the rollout stays `rolling_back` until it is clean.
            let msg = errors.join("; ");
            (self.log)(&r, format!("rollback not complete yet: {msg}"));
            let at = r.step;
            return self.save(&r, at).await;
        }
        let phase = match r.memo["rollback"]["phase"].as_str() {
            Some("aborted") => RolloutPhase::Aborted,
            _ => RolloutPhase::Failed,
        };
        let why = r.memo["rollback"]["why"]
            .as_str()
            .unwrap_or("rolled back")
            .to_string();
        (self.log)(
            &r,
            format!(
                "rolled back: traffic is on {} again",
                r.stable_image.as_deref().unwrap_or("the stable version")
            ),
        );
        r.phase = phase;
        r.message = Some(format!("rolled back: {why}"));
        let status = if phase == RolloutPhase::Aborted && why == "the run was cancelled" {
            StageStatus::Cancelled
        } else if why.starts_with(TIMED_OUT) {
            StageStatus::TimedOut
        } else {
            StageStatus::Failure
        };
        self.end(r, status).await
    }

    /// Takes a measurement of `a` if one is due, stores it, and judges them all.
    async fn analyse(
        &self,
        r: &RolloutRecord,
        a: &pipelines::Analysis,
        step: i64,
        kind: AnalysisKind,
    ) -> crate::store::Result<Verdict> {
        let all = self.store.measurements(r.id).await?;
        let mine: Vec<&Measurement> = all
            .iter()
            .filter(|m| m.step == step && m.analysis == kind.as_str())
            .collect();
        // What counts toward the verdict (see the promote above); numbering and the
        // interval still go by every measurement.
        let since = match kind {
            AnalysisKind::Background => r.memo["background_since"].as_i64().unwrap_or(0),
            _ => 0,
        };
        fn counted<'a>(ms: &[&'a Measurement], since: i64) -> Vec<&'a Measurement> {
            ms.iter().filter(|m| m.at >= since).copied().collect()
        }
        let v = verdict(a, &counted(&mine, since));
        if v != Verdict::Running {
            return Ok(v);
        }
        let now = self.store.now_ms();
        let last = mine.iter().map(|m| m.at).max();
        let due = match last {
            None => true,
            Some(at) => now - at >= (a.interval_secs as i64) * 1000,
        };
        if !due {
            return Ok(Verdict::Running);
        }
        let seq = mine.iter().map(|m| m.seq).max().unwrap_or(0) + 1;
        let mut fresh = Vec::new();
        for c in &a.checks {
            let got = measure(self.http, c).await;
            let m = Measurement {
                step,
                analysis: kind.as_str().to_string(),
                seq,
                check: check_name(c),
                outcome: got.outcome.to_string(),
                value: got.value,
                detail: got.detail,
                at: self.store.now_ms(),
            };
            if m.outcome != "pass" {
                (self.log)(
                    r,
                    format!(
                        "{} measurement {seq}: {} {}: {}",
                        kind.as_str(),
                        m.check,
                        m.outcome,
                        m.detail
                    ),
                );
            }
            self.store.record_measurement(r.id, &m).await?;
            fresh.push(m);
        }
        let mut mine = mine;
        mine.extend(fresh.iter());
        Ok(verdict(a, &counted(&mine, since)))
    }
}

/// For the API and the UI: the actions of a rollout's strategy, described.
pub fn describe_steps(r: &RolloutRecord) -> Vec<String> {
    actions(&r.spec.strategy)
        .iter()
        .map(Action::describe)
        .collect()
}
