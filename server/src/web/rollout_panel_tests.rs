//! The rollout panel from a record: phases, step marks, weights, images, measurements
//! and which buttons show.

use pipelines::{CanaryStep, CanaryStrategy, Pause, Rollout, RolloutTarget, Strategy, Traffic};
use serde_json::json;

use super::*;

fn canary(traffic: Traffic) -> Strategy {
    Strategy::Canary(CanaryStrategy {
        traffic,
        steps: vec![
            CanaryStep::Weight { weight: 20 },
            CanaryStep::Pause(Pause::Promoted),
            CanaryStep::Weight { weight: 100 },
        ],
        background: None,
    })
}

const DIGEST: &str = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

fn record(strategy: Strategy, phase: RolloutPhase, step: i64, message: &str) -> RolloutRecord {
    RolloutRecord {
        id: 1,
        stage_id: 7,
        run_id: 3,
        repo_id: 1,
        environment: "prod".into(),
        namespace: "shop".into(),
        deployment: "web".into(),
        spec: Rollout {
            target: RolloutTarget {
                deployment: "web".into(),
                namespace: None,
                container: None,
                service: None,
            },
            image: Some(format!("reg/web@sha256:{DIGEST}")),
            strategy,
        },
        image: format!("reg/web@sha256:{DIGEST}"),
        stable_image: Some("reg/web:v1".into()),
        phase,
        step,
        step_started_at: 0,
        memo: json!({}),
        message: Some(message.into()).filter(|m: &String| !m.is_empty()),
        promote_request: None,
        abort_requested: false,
        aborted_by: None,
        created_at: 0,
        updated_at: 0,
        finished_at: phase.is_final().then_some(5_000),
    }
}

fn m(seq: i64, outcome: &str, value: &str, at: i64) -> Measurement {
    Measurement {
        step: 2,
        analysis: "step".into(),
        seq,
        check: "prometheus errors".into(),
        outcome: outcome.into(),
        value: Some(value.into()),
        detail: format!("measured {value}"),
        at,
    }
}

#[test]
fn a_paused_canary_marks_its_steps_and_shows_its_weight_and_buttons() {
    let r = record(
        canary(Traffic::Gateway {
            route: "web".into(),
        }),
        RolloutPhase::Paused,
        1,
        "waiting for a promote",
    );
    let p = panel("deploy", &r, &[], 10_000, true);
    assert_eq!(p.badge.label, "paused");
    assert_eq!(p.badge.class, "s-wait");
    assert_eq!(p.headline, "Paused, waiting for a promote.");
    let marks: Vec<(&str, &str)> = p.steps.iter().map(|s| (s.state, s.text.as_str())).collect();
    assert_eq!(
        marks,
        [
            ("done", "set weight 20%"),
            ("current", "pause until promoted"),
            ("todo", "set weight 100%"),
            ("todo", "promote the new version to stable"),
        ]
    );
    assert_eq!(p.weight, Some(20));
    assert_eq!(p.weight_text, "20% of the requests on the new version");
    assert_eq!(p.strategy, "canary, through HTTPRoute web");
    assert_eq!(p.image.short, "reg/web@sha256:0123456789ab");
    assert_eq!(p.image.full, format!("reg/web@sha256:{DIGEST}"));
    assert_eq!(p.stable.as_ref().unwrap().short, "reg/web:v1");
    assert!(p.live && p.can_promote && p.can_abort && !p.can_retry);
    // Someone without the permission gets no buttons at all.
    let p = panel("deploy", &r, &[], 10_000, false);
    assert!(!p.can_promote && !p.can_abort && !p.can_retry && !p.can_release);
}

#[test]
fn a_failed_rollout_says_why_marks_where_it_stopped_and_offers_a_retry() {
    let r = record(
        canary(Traffic::Replicas),
        RolloutPhase::Failed,
        2,
        "rolled back: step analysis failed: 2 of 2 measurements failed",
    );
    let p = panel("deploy", &r, &[], 10_000, true);
    assert_eq!(p.badge.class, "s-bad");
    assert!(
        p.headline
            .starts_with("Failed: rolled back: step analysis failed")
    );
    assert_eq!(p.steps[2].state, "failed");
    assert_eq!(p.steps[1].state, "done");
    assert_eq!(p.weight, Some(0));
    assert!(p.weight_text.contains("back on the stable version"));
    assert!(!p.live && !p.can_promote && !p.can_abort && p.can_retry);
}

#[test]
fn rolling_back_and_succeeded_read_as_such() {
    let r = record(
        canary(Traffic::Replicas),
        RolloutPhase::RollingBack,
        0,
        "aborted by user:rm",
    );
    let p = panel("deploy", &r, &[], 0, true);
    assert_eq!(p.badge.label, "rolling back");
    assert_eq!(p.headline, "Rolling back: aborted by user:rm");
    assert!(p.live && !p.can_promote && !p.can_abort);
    let r = record(
        canary(Traffic::Replicas),
        RolloutPhase::Succeeded,
        3,
        "web runs reg/web@sha256:x",
    );
    let p = panel("deploy", &r, &[], 0, true);
    assert!(p.steps.iter().all(|s| s.state == "done"));
    assert_eq!(p.weight, Some(100));
    assert!(!p.can_retry && !p.live);
}

#[test]
fn measurements_come_newest_first_with_failures_marked() {
    let r = record(Strategy::Recreate, RolloutPhase::Progressing, 0, "");
    let ms = [
        m(1, "pass", "0.01", 1_000),
        m(2, "fail", "0.2", 2_000),
        m(3, "inconclusive", "n/a", 3_000),
    ];
    let p = panel("deploy", &r, &ms, 4_000, true);
    let rows: Vec<(i64, &str)> = p.measurements.iter().map(|m| (m.seq, m.class)).collect();
    assert_eq!(rows, [(3, "m-wait"), (2, "m-bad"), (1, "")]);
    assert_eq!(p.measurements[0].step, "3");
    assert_eq!(p.measurements[2].time, "00:00:01");
    assert_eq!(p.measurements[2].time_full, "1970-01-01T00:00:01.000Z");
    // The two numeric values are charted; the third is not a number.
    assert_eq!(p.chart.matches("<circle").count(), 1, "{}", p.chart);
    assert_eq!(p.chart.matches("class=\"fail\"").count(), 1, "{}", p.chart);
    // Recreate has no weights.
    assert_eq!(p.weight, None);
}

#[test]
fn pending_requests_are_shown_until_the_controller_takes_them() {
    let mut r = record(canary(Traffic::Replicas), RolloutPhase::Paused, 1, "");
    r.promote_request = Some(PromoteRequest::Full);
    let p = panel("deploy", &r, &[], 0, true);
    assert!(
        p.pending.starts_with("full promote requested"),
        "{}",
        p.pending
    );
    r.abort_requested = true;
    r.aborted_by = Some("user:rm".into());
    let p = panel("deploy", &r, &[], 0, true);
    assert!(
        p.pending.starts_with("abort requested by user:rm"),
        "{}",
        p.pending
    );
    assert!(!p.can_abort && !p.can_promote);
}

#[test]
fn only_long_digests_are_shortened() {
    assert_eq!(image_ref("reg/web:v1").short, "reg/web:v1");
    assert_eq!(image_ref("reg/web@sha256:abc").short, "reg/web@sha256:abc");
    assert_eq!(
        image_ref(&format!("reg:5000/a/web:v2@sha256:{DIGEST}")).short,
        "reg:5000/a/web:v2@sha256:0123456789ab"
    );
}
