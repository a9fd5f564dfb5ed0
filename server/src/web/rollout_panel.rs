//! The run page's rollout panels: for each rollout stage of the run, its phase (with
//! what it waits for, or why it failed), the strategy's steps with the current one
//! marked, the current weight, stable → new image, the analysis measurements (a table,
//! newest first, and a small chart), and the promote / abort / retry forms for people
//! with the environment's release permission — whom that is, for everyone else.
//!
//! Read from the store as the API's `GET …/rollout` reads it (`describe_steps`,
//! `measurements`); who may act is decided by the API's own
//! [`may_release`](crate::api::rollouts::may_release), the check its handlers make.

use pipelines::{Strategy, Traffic};

use super::rollout_chart::{self, ChartPoint};
use super::session::SignedIn;
use super::view::{Badge, duration};
use crate::api::rollouts::{may_release, who_may_release};
use crate::daemon::state::AppState;
use crate::rollout::actions::{Action, actions, desired_at, traffic};
use crate::rollout::driver::describe_steps;
use crate::store::rollouts::{Measurement, PromoteRequest, RolloutPhase, RolloutRecord};
use crate::store::{Repo, Run, StageWithSteps};

/// One step of the strategy as the panel lists it.
pub struct StepLine {
    pub text: String,
    /// `done`, `current`, `todo` or `failed`: a CSS class and `aria-current`.
    pub state: &'static str,
    /// ✓, ▶, ‖, ✗ or ○: the state without colour.
    pub icon: &'static str,
}

/// An image reference shown short, with the whole reference kept for a title.
pub struct ImageRef {
    pub short: String,
    pub full: String,
}

pub struct MeasurementRow {
    pub analysis: String,
    pub step: String,
    pub seq: i64,
    pub check: String,
    pub outcome: String,
    /// `m-bad` for fail and error, `m-wait` for inconclusive, empty for pass.
    pub class: &'static str,
    pub icon: &'static str,
    pub value: String,
    pub detail: String,
    pub time: String,
    pub time_full: String,
}

pub struct RolloutPanel {
    pub stage_id: i64,
    pub stage: String,
    pub environment: String,
    pub target: String,
    pub strategy: String,
    pub badge: Badge,
    /// What the phase means right now, in a sentence (the reason when it failed).
    pub headline: String,
    /// Not final: the page's script refreshes the panel.
    pub live: bool,
    pub steps: Vec<StepLine>,
    /// The new version's share (`None`: the strategy has no weights).
    pub weight: Option<u8>,
    pub weight_text: String,
    /// Header/cookie matches and mirroring in force.
    pub traffic_notes: Vec<String>,
    pub stable: Option<ImageRef>,
    pub image: ImageRef,
    pub since: String,
    pub measurements: Vec<MeasurementRow>,
    /// The chart of numeric measurements, SVG (empty: nothing numeric to draw).
    pub chart: String,
    /// A request taken but not acted on yet.
    pub pending: String,
    pub can_release: bool,
    pub can_promote: bool,
    pub can_abort: bool,
    pub can_retry: bool,
    /// Who may act, for someone who may not.
    pub who_may: String,
    /// The run page of the rollout's run (`/repos/o/n/runs/7`): its forms post there.
    pub run_page: String,
    /// The session's CSRF token, for the forms.
    pub csrf: String,
    /// Where the forms come back to (empty: the run page).
    pub back: String,
}

/// The panels of a run's rollouts, in stage order.
pub async fn panels(
    state: &AppState,
    me: &SignedIn,
    repo: &Repo,
    run: &Run,
    stages: &[StageWithSteps],
) -> crate::store::Result<Vec<RolloutPanel>> {
    let rollouts = state.store.rollouts_of_run(run.id).await?;
    let mut out = Vec::new();
    for s in stages {
        let Some(r) = rollouts.iter().find(|r| r.stage_id == s.stage.id) else {
            continue;
        };
        out.push(panel_of(state, me, repo, run.number, &s.stage.key, r).await?);
    }
    Ok(out)
}

/// One rollout's panel as `me` sees it: its measurements from the store and whether
/// they may act (else who may). Shared by the run page and the environment page.
pub async fn panel_of(
    state: &AppState,
    me: &SignedIn,
    repo: &Repo,
    run_number: i64,
    stage: &str,
    r: &RolloutRecord,
) -> crate::store::Result<RolloutPanel> {
    let caller = super::actions::caller(me);
    let measurements = state.store.measurements(r.id).await?;
    let can_release = may_release(state, &caller, repo, &r.environment).await?;
    let who_may = if can_release {
        String::new()
    } else {
        let approvers = state
            .store
            .find_environment(repo.id, &r.environment)
            .await?
            .map(|e| e.rules.approver_users)
            .unwrap_or_default();
        who_may_release(repo, &r.environment, &approvers)
    };
    let mut p = panel(stage, r, &measurements, state.store.now_ms(), can_release);
    p.who_may = who_may;
    p.run_page = format!(
        "/repos/{}/runs/{run_number}",
        crate::admin::repos::url_path(&repo.name)
    );
    p.csrf = me.csrf().to_string();
    Ok(p)
}

/// One rollout's panel (pure: everything it shows comes in).
pub fn panel(
    stage: &str,
    r: &RolloutRecord,
    measurements: &[Measurement],
    now: i64,
    can_release: bool,
) -> RolloutPanel {
    let acts = actions(&r.spec.strategy);
    let step = usize::try_from(r.step).unwrap_or(0);
    let final_ = r.phase.is_final();
    let steps = describe_steps(r)
        .into_iter()
        .enumerate()
        .map(|(i, text)| {
            let (state, icon) = step_state(r.phase, i, step);
            StepLine { text, state, icon }
        })
        .collect();
    let has_weights = acts.iter().any(|a| matches!(a, Action::Weight(_)));
    let desired = desired_at(&acts, step.min(acts.len().saturating_sub(1)));
    let weight = has_weights.then_some(match r.phase {
        RolloutPhase::Succeeded => 100,
        RolloutPhase::Failed | RolloutPhase::Aborted | RolloutPhase::RollingBack => 0,
        _ => desired.weight,
    });
    let unit = match traffic(&r.spec.strategy) {
        Traffic::Replicas => "of the pods",
        _ => "of the requests",
    };
    let weight_text = match (weight, r.phase) {
        (None, _) => String::new(),
        (Some(_), RolloutPhase::RollingBack) => {
            "going back to 0%: traffic returns to stable".into()
        }
        (Some(_), RolloutPhase::Failed | RolloutPhase::Aborted) => {
            "0%: traffic is back on the stable version".into()
        }
        (Some(w), _) => format!("{w}% {unit} on the new version"),
    };
    let mut traffic_notes = Vec::new();
    if !final_ && r.phase != RolloutPhase::RollingBack {
        if let Some(m) = &desired.matched {
            traffic_notes.push(match m {
                pipelines::RequestMatch::Header { name, value } => {
                    format!("requests with header {name}: {value} go to the new version")
                }
                pipelines::RequestMatch::Cookie { name, value } => {
                    format!("requests with cookie {name}={value} go to the new version")
                }
            });
        }
        if let Some(p) = desired.mirror {
            traffic_notes.push(format!("{p}% of requests are mirrored to the new version"));
        }
        if desired.switched {
            traffic_notes.push("the active service selects the new version".into());
        } else if desired.preview {
            traffic_notes.push("the new version answers on the preview service".into());
        }
    }
    let mut rows: Vec<MeasurementRow> = measurements.iter().map(measurement_row).collect();
    rows.reverse();
    let points: Vec<ChartPoint> = measurements
        .iter()
        .filter_map(|m| {
            Some(ChartPoint {
                check: m.check.as_str(),
                value: m.value.as_deref()?.trim().parse::<f64>().ok()?,
                ok: m.outcome == "pass",
                at: m.at,
            })
        })
        .collect();
    let pending = if r.abort_requested && !final_ {
        format!(
            "abort requested{}: the controller rolls back on its next round",
            r.aborted_by
                .as_deref()
                .map(|b| format!(" by {b}"))
                .unwrap_or_default()
        )
    } else {
        match r.promote_request {
            Some(PromoteRequest::Step) if !final_ => {
                "promote requested: the controller moves on at its next round".into()
            }
            Some(PromoteRequest::Full) if !final_ => {
                "full promote requested: the controller skips to the end at its next round".into()
            }
            _ => String::new(),
        }
    };
    let moving = !final_ && r.phase != RolloutPhase::RollingBack && !r.abort_requested;
    RolloutPanel {
        stage_id: r.stage_id,
        stage: stage.to_string(),
        environment: r.environment.clone(),
        target: format!("Deployment {} in {}", r.deployment, r.namespace),
        strategy: strategy_text(&r.spec.strategy),
        badge: phase_badge(r.phase),
        headline: headline(r),
        live: !final_,
        steps,
        weight,
        weight_text,
        traffic_notes,
        stable: r.stable_image.as_deref().map(image_ref),
        image: image_ref(&r.image),
        since: duration(Some(r.created_at), r.finished_at, now),
        measurements: rows,
        chart: rollout_chart::svg(&points),
        pending,
        can_release,
        can_promote: can_release && moving,
        can_abort: can_release && moving,
        can_retry: can_release && matches!(r.phase, RolloutPhase::Failed | RolloutPhase::Aborted),
        who_may: String::new(),
        run_page: String::new(),
        csrf: String::new(),
        back: String::new(),
    }
}

fn step_state(phase: RolloutPhase, i: usize, at: usize) -> (&'static str, &'static str) {
    use std::cmp::Ordering::*;
    if phase == RolloutPhase::Succeeded {
        return ("done", "✓");
    }
    match i.cmp(&at) {
        Less => ("done", "✓"),
        Greater => ("todo", "○"),
        Equal => match phase {
            RolloutPhase::Paused => ("current", "‖"),
            RolloutPhase::Progressing => ("current", "▶"),
            _ => ("failed", "✗"),
        },
    }
}

/// The phase's badge: colour class, icon and words.
pub fn phase_badge(phase: RolloutPhase) -> Badge {
    let (class, icon, label) = match phase {
        RolloutPhase::Progressing => ("s-run", "▶", "progressing"),
        RolloutPhase::Paused => ("s-wait", "‖", "paused"),
        RolloutPhase::RollingBack => ("s-bad", "↺", "rolling back"),
        RolloutPhase::Succeeded => ("s-ok", "✓", "succeeded"),
        RolloutPhase::Failed => ("s-bad", "✗", "failed"),
        RolloutPhase::Aborted => ("s-off", "⊘", "aborted"),
    };
    Badge {
        class,
        icon,
        label: label.to_string(),
    }
}

fn headline(r: &RolloutRecord) -> String {
    let msg = r.message.as_deref().unwrap_or_default();
    match r.phase {
        RolloutPhase::Progressing => "Progressing: the controller is moving it on.".into(),
        RolloutPhase::Paused if msg == "waiting for a promote" || msg.is_empty() => {
            "Paused, waiting for a promote.".into()
        }
        RolloutPhase::Paused => format!("Paused: {msg}. Promote to go on anyway, or abort."),
        RolloutPhase::RollingBack => format!("Rolling back: {msg}"),
        RolloutPhase::Succeeded => format!("Succeeded: {msg}"),
        RolloutPhase::Failed => format!("Failed: {msg}"),
        RolloutPhase::Aborted => format!("Aborted: {msg}"),
    }
}

fn strategy_text(s: &Strategy) -> String {
    match s {
        Strategy::Recreate => "recreate".into(),
        Strategy::Rolling { batches, .. } => format!(
            "rolling, in batches of {}",
            batches
                .iter()
                .map(|b| format!("{b}%"))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Strategy::BlueGreen(_) => "blue-green".into(),
        Strategy::Canary(c) => match &c.traffic {
            Traffic::Replicas => "canary, by share of pods".into(),
            Traffic::Gateway { route } => format!("canary, through HTTPRoute {route}"),
            Traffic::Nginx { ingress } => {
                format!("canary, through an ingress-nginx canary of Ingress {ingress}")
            }
        },
    }
}

/// `registry/app@sha256:0123456789ab` for a reference by digest (12 hex digits kept).
pub fn image_ref(full: &str) -> ImageRef {
    let short = match full.split_once("@sha256:") {
        Some((name, hex)) if hex.len() > 12 => format!("{name}@sha256:{}", &hex[..12]),
        _ => full.to_string(),
    };
    ImageRef {
        short,
        full: full.to_string(),
    }
}

fn measurement_row(m: &Measurement) -> MeasurementRow {
    let (class, icon) = match m.outcome.as_str() {
        "pass" => ("", "✓"),
        "inconclusive" => ("m-wait", "?"),
        _ => ("m-bad", "✗"),
    };
    let at = chrono::DateTime::from_timestamp_millis(m.at).unwrap_or_default();
    MeasurementRow {
        analysis: m.analysis.replace('_', "-"),
        step: if m.step < 0 {
            "all".into()
        } else {
            (m.step + 1).to_string()
        },
        seq: m.seq,
        check: m.check.clone(),
        outcome: m.outcome.clone(),
        class,
        icon,
        value: m.value.clone().unwrap_or_default(),
        detail: m.detail.clone(),
        time: at.format("%H:%M:%S").to_string(),
        time_full: at.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    }
}

#[cfg(test)]
#[path = "rollout_panel_tests.rs"]
mod tests;
