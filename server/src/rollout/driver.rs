//! One tick of one rollout: read what people asked for, apply the traffic the current
//! step wants (idempotent), judge the step, and move on, pause, roll back or finish.
//!
//! Nothing here remembers anything between ticks but the rollout row (step, memo) and
//! the measurements: a replica that takes a rollout over after a crash re-applies the
//! persisted step — the same objects, so nothing changes — and goes on from there.
//!
//! Longer than the project's files usually are: it is one job (a tick), and its parts —
//! the step loop, applying the traffic, finishing and rolling back, analysing — share
//! the lease- and step-conditional saves. The next change here should move the cluster
//! half (`apply`, `finish`, `restore_traffic`, `remove_objects`) into a module of its own.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use pipelines::{Pause, Traffic};
use serde_json::{Value, json};

use super::actions::{Action, AnalysisKind, Desired, actions, canary_replicas, desired_at};
use super::analysis::{Verdict, check_name, measure, verdict};
use super::cluster::{Cluster, rolled_out, stuck};
use super::objects::{
    CanaryPods, canary_deployment, canary_name, canary_service, container_image, replicas,
    switched_selector,
};
use super::traffic::{canary_ingress, canary_ingress_name, route_for};
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

type R<T> = Result<T, String>;

/// How long the new version's pods stay after traffic left them (requests in flight
/// finish), before the rollout removes them.
const DRAIN_MS: i64 = 1_000;

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

    async fn remember_stable(&self, r: &mut RolloutRecord) -> R<()> {
        let c = self.cluster;
        let d = c
            .get(&c.deployments(), "Deployment", &r.deployment)
            .await?
            .ok_or_else(|| {
                format!(
                    "Deployment {} does not exist in namespace {}",
                    r.deployment, c.namespace
                )
            })?;
        r.stable_image = container_image(&d, r.spec.target.container.as_deref());
        if r.stable_image.is_none() {
            return Err(match &r.spec.target.container {
                Some(n) => format!("Deployment {} has no container `{n}`", r.deployment),
                None => format!("Deployment {} has no containers", r.deployment),
            });
        }
        r.memo["stable_replicas"] = json!(replicas(&d));
        let svc = self.service_name(r);
        if let Some(s) = c.get(&c.services(), "Service", &svc).await? {
            let sel = s.spec.and_then(|s| s.selector).unwrap_or_default();
            r.memo["stable_selector"] = json!(sel);
        }
        (self.log)(
            r,
            format!(
                "{} in {} runs {} ({} replicas); rolling out {}",
                r.deployment,
                c.namespace,
                r.stable_image.as_deref().unwrap_or("?"),
                replicas(&d),
                r.image
            ),
        );
        Ok(())
    }

    fn service_name(&self, r: &RolloutRecord) -> String {
        r.spec
            .target
            .service
            .clone()
            .unwrap_or_else(|| r.deployment.clone())
    }

    fn preview_name(&self, r: &RolloutRecord) -> String {
        match &r.spec.strategy {
            pipelines::Strategy::BlueGreen(bg) => bg
                .preview_service
                .clone()
                .unwrap_or_else(|| format!("{}-preview", self.service_name(r))),
            _ => format!("{}-preview", self.service_name(r)),
        }
    }

    fn stable_replicas(r: &RolloutRecord) -> i32 {
        r.memo["stable_replicas"].as_i64().unwrap_or(1) as i32
    }

    fn stable_selector(r: &RolloutRecord) -> BTreeMap<String, String> {
        serde_json::from_value(r.memo["stable_selector"].clone()).unwrap_or_default()
    }

    async fn stable(&self, r: &RolloutRecord) -> R<Deployment> {
        let c = self.cluster;
        c.get(&c.deployments(), "Deployment", &r.deployment)
            .await?
            .ok_or_else(|| format!("Deployment {} was deleted during the rollout", r.deployment))
    }

    async fn stable_service(&self, r: &RolloutRecord) -> R<Service> {
        let c = self.cluster;
        let name = self.service_name(r);
        c.get(&c.services(), "Service", &name)
            .await?
            .ok_or_else(|| format!("Service {name} does not exist in namespace {}", c.namespace))
    }

    /// Brings the cluster to `d`; `true` once the new version's pods are ready for it.
    async fn apply(&self, r: &mut RolloutRecord, d: &Desired) -> R<bool> {
        let c = self.cluster;
        let traffic = super::actions::traffic(&r.spec.strategy);
        let blue_green = matches!(r.spec.strategy, pipelines::Strategy::BlueGreen(_));
        let total = Self::stable_replicas(r);
        let stable = self.stable(r).await?;
        let keep = traffic == Traffic::Replicas && !blue_green;
        let want = if blue_green {
            total
        } else {
            canary_replicas(total, d.weight).max(i32::from(d.canary_up()))
        };
        let selector = Self::stable_selector(r);
        let canary = canary_deployment(
            &stable,
            &CanaryPods {
                image: &r.image,
                container: r.spec.target.container.as_deref(),
                replicas: want,
                keep_stable_labels: keep,
                service_selector: &selector,
                rollout: r.id,
            },
        )?;
        let now = self
            .ensure(r, &c.deployments(), "Deployment", &canary)
            .await?;
        if let Some(why) = stuck(&now) {
            return Err(format!("the new version does not come up: {why}"));
        }
        let canary_ready = rolled_out(&now);
        if !keep {
            let svc = self.stable_service(r).await?;
            let name = if blue_green {
                self.preview_name(r)
            } else {
                canary_name(&self.service_name(r))
            };
            let cs = canary_service(&name, &stable, &svc, r.id)?;
            self.ensure(r, &c.services(), "Service", &cs).await?;
        }
        if !canary_ready {
            return Ok(false);
        }
        match &traffic {
            Traffic::Replicas if !blue_green => {
                // The new pods are ready: the old make room for them.
                let rest = (total - want).max(0);
                self.set_stable(r, None, rest).await?;
            }
            Traffic::Gateway { route } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                c.update_route(route, |cur| route_for(cur, &stable_svc, &canary_svc, d))
                    .await?;
            }
            Traffic::Nginx { ingress } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                let base = c
                    .get(&c.ingresses(), "Ingress", ingress)
                    .await?
                    .ok_or_else(|| {
                        format!(
                            "Ingress {ingress} does not exist in namespace {}",
                            c.namespace
                        )
                    })?;
                let meta = canary.metadata.clone();
                let ing = canary_ingress(&base, &stable_svc, &canary_svc, d, meta)?;
                self.ensure(r, &c.ingresses(), "Ingress", &ing).await?;
            }
            Traffic::Replicas => {}
        }
        if blue_green {
            let target = if d.switched {
                switched_selector(&r.deployment)
            } else {
                selector
            };
            self.set_selector(r, target).await?;
        }
        Ok(true)
    }

    /// [`Cluster::ensure`], skipped when this rollout already applied exactly `want`
    /// and the object is still there (its digest is in the memo): each object is
    /// written once per change, not once per tick, and never again after a restart.
    async fn ensure<K>(
        &self,
        r: &mut RolloutRecord,
        api: &kube::Api<K>,
        what: &str,
        want: &K,
    ) -> R<K>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        use sha2::{Digest, Sha256};
        let name = want.meta().name.clone().unwrap_or_default();
        let key = format!("{what}/{name}");
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(want).map_err(|e| e.to_string())?,
        ));
        if r.memo["applied"][&key] == json!(digest)
            && let Some(current) = self.cluster.get(api, what, &name).await?
        {
            return Ok(current);
        }
        let got = self.cluster.ensure(api, what, want).await?;
        if !r.memo["applied"].is_object() {
            r.memo["applied"] = json!({});
        }
        r.memo["applied"][&key] = json!(digest);
        Ok(got)
    }

    /// Whether traffic left the new version at least [`DRAIN_MS`] ago, so its pods may
    /// go without cutting a request in flight; the first call starts the clock.
    fn drained(&self, r: &mut RolloutRecord) -> bool {
        let now = self.store.now_ms();
        match r.memo["drain_since"].as_i64() {
            Some(since) => now - since >= DRAIN_MS,
            None => {
                r.memo["drain_since"] = json!(now);
                false
            }
        }
    }

    async fn set_selector(&self, r: &RolloutRecord, sel: BTreeMap<String, String>) -> R<()> {
        let c = self.cluster;
        let name = self.service_name(r);
        c.update(&c.services(), "Service", &name, |cur| {
            let mut s = cur.clone();
            s.spec.get_or_insert_with(Default::default).selector = Some(sel.clone());
            Ok(s)
        })
        .await?;
        Ok(())
    }

    /// Sets the stable Deployment's replicas, and its image when `image` is given.
    async fn set_stable(&self, r: &RolloutRecord, image: Option<&str>, n: i32) -> R<Deployment> {
        let c = self.cluster;
        let container = r.spec.target.container.clone();
        let got = c
            .update(&c.deployments(), "Deployment", &r.deployment, |cur| {
                let mut d = cur.clone();
                let spec = d.spec.get_or_insert_with(Default::default);
                spec.replicas = Some(n);
                if let Some(image) = image {
                    let pod = spec.template.spec.get_or_insert_with(Default::default);
                    let ctr = match &container {
                        Some(name) => pod.containers.iter_mut().find(|c| &c.name == name),
                        None => pod.containers.first_mut(),
                    };
                    ctr.ok_or_else(|| format!("Deployment {} lost its container", r.deployment))?
                        .image = Some(image.to_string());
                }
                Ok(d)
            })
            .await?;
        got.ok_or_else(|| format!("Deployment {} was deleted during the rollout", r.deployment))
    }

    /// Recreate's first half: every old pod gone. `true` once none is left.
    async fn recreate(&self, r: &mut RolloutRecord) -> R<bool> {
        let d = self.set_stable(r, None, 0).await?;
        let left = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        Ok(left == 0 && rolled_out(&d))
    }

    /// The last step: the stable Deployment takes the new image; once it has rolled
    /// out, traffic goes back to it alone and the rollout's objects go.
    async fn finish(&self, r: &mut RolloutRecord) -> R<bool> {
        let n = Self::stable_replicas(r);
        let image = r.image.clone();
        let d = self.set_stable(r, Some(&image), n).await?;
        if let Some(why) = stuck(&d) {
            return Err(format!("the stable Deployment does not roll out: {why}"));
        }
        if !rolled_out(&d) {
            return Ok(false);
        }
        self.restore_traffic(r).await?;
        if !self.drained(r) {
            return Ok(false);
        }
        self.remove_objects(r).await?;
        Ok(true)
    }

    async fn restore_traffic(&self, r: &RolloutRecord) -> R<()> {
        let c = self.cluster;
        match super::actions::traffic(&r.spec.strategy) {
            Traffic::Gateway { route } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                c.update_route(&route, |cur| {
                    route_for(cur, &stable_svc, &canary_svc, &Desired::default())
                })
                .await
            }
            Traffic::Nginx { ingress } => {
                c.delete(&c.ingresses(), "Ingress", &canary_ingress_name(&ingress))
                    .await
            }
            Traffic::Replicas => {
                if matches!(r.spec.strategy, pipelines::Strategy::BlueGreen(_)) {
                    let sel = Self::stable_selector(r);
                    if !sel.is_empty() {
                        self.set_selector(r, sel).await?;
                    }
                }
                Ok(())
            }
        }
    }

    async fn remove_objects(&self, r: &RolloutRecord) -> R<()> {
        let c = self.cluster;
        let svc = self.service_name(r);
        c.delete(&c.services(), "Service", &canary_name(&svc))
            .await?;
        c.delete(&c.services(), "Service", &self.preview_name(r))
            .await?;
        c.delete(&c.deployments(), "Deployment", &canary_name(&r.deployment))
            .await
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

/// The rollout's memo for people: what it remembered of the stable version.
pub fn summary(r: &RolloutRecord) -> Value {
    json!({
        "stable_replicas": r.memo["stable_replicas"],
        "rollback": r.memo["rollback"],
    })
}
