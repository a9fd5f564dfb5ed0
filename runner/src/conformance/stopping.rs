//! Cases: timeouts and cancel stop a step and every process it started; a leftover
//! background process neither blocks nor survives its step.

use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_util::sync::CancellationToken;

use super::harness::{Run, drive, run, stage};
use super::process::{PRINT_GRANDCHILD, ProcessRef, assert_grandchild_gone};
use crate::{Backend, RunOptions, StageEvent, Status};

/// Generous bound proving that a timeout or a cancel took effect (the steps sleep
/// for 300 s); not a performance assertion.
const KILL_BOUND: Duration = Duration::from_secs(60);

/// A step timeout kills the step (and its background children) and skips the rest.
pub async fn step_timeout(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "step-timeout",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\nsleep 300"),
            "echo never",
        ],
    );
    spec.steps[0].timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "timeout did not fire in time"
    );
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(r.statuses(), vec![Status::TimedOut, Status::Skipped]);
    assert_eq!(r.outcome.steps[0].exit_code, None);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// A step that ignores SIGTERM is still killed (SIGKILL after the grace period).
pub async fn term_ignored_still_killed(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "term-ignored",
        &image,
        &["trap '' TERM\necho ready\nwhile true; do sleep 1; done"],
    );
    spec.steps[0].timeout = Some(Duration::from_secs(2));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "SIGKILL escalation did not happen"
    );
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["ready"]);
}

/// The stage timeout covers all steps together.
pub async fn stage_timeout(backend: Arc<dyn Backend>, image: Option<String>) {
    let mut spec = stage(
        "stage-timeout",
        &image,
        &["echo first", "sleep 300", "echo never"],
    );
    spec.timeout = Some(Duration::from_secs(8));
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(started.elapsed() < KILL_BOUND + Duration::from_secs(8));
    assert_eq!(r.outcome.status, Status::TimedOut, "{:?}", r.outcome);
    assert_eq!(
        r.statuses(),
        vec![Status::Success, Status::TimedOut, Status::Skipped]
    );
}

/// Cancelling mid-step stops the step and its whole process tree.
pub async fn cancel_kills_process_tree(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "cancel",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\necho ready\nwait"),
            "echo never",
        ],
    );
    let cancel = CancellationToken::new();
    let mut cancelled_at = None;
    let mut seen_alive = None;
    let mut events = Vec::new();
    let outcome = drive(
        &*backend,
        &spec,
        RunOptions::default(),
        cancel.clone(),
        |e| {
            if let StageEvent::Line(l) = &e
                && l.bytes == b"ready"
                && cancelled_at.is_none()
            {
                // The probe must see the grandchild while it runs, or "gone"
                // afterwards would prove nothing. Bounded: `sleep` may still be
                // between fork and exec.
                let lines: Vec<String> = events
                    .iter()
                    .filter_map(|e| match e {
                        StageEvent::Line(l) => Some(String::from_utf8_lossy(&l.bytes).into_owned()),
                        _ => None,
                    })
                    .collect();
                let grandchild = ProcessRef::from_lines(&lines);
                let until = Instant::now() + Duration::from_secs(10);
                while !grandchild.sleep_alive() && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(20));
                }
                seen_alive = Some(grandchild.sleep_alive());
                cancel.cancel();
                cancelled_at = Some(Instant::now());
            }
            events.push(e);
        },
    )
    .await;
    let cancelled_at = cancelled_at.expect("the step never printed `ready`");
    assert_eq!(
        seen_alive,
        Some(true),
        "the running grandchild was not visible in /proc (is the backend on this host?)"
    );
    assert!(
        cancelled_at.elapsed() < KILL_BOUND,
        "cancel did not take effect in time"
    );
    let r = Run { outcome, events };
    assert_eq!(r.outcome.status, Status::Cancelled, "{:?}", r.outcome);
    assert_eq!(r.statuses(), vec![Status::Cancelled, Status::Skipped]);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// A step that leaves a background process behind still finishes when its main
/// process exits, and the leftover is killed.
pub async fn background_process_does_not_block(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "background",
        &image,
        &[
            &format!("sleep 300 &\n{PRINT_GRANDCHILD}\necho done"),
            "echo next",
        ],
    );
    let started = Instant::now();
    let r = run(&*backend, &spec).await;
    assert!(
        started.elapsed() < KILL_BOUND,
        "a background child blocked the step"
    );
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(1), vec!["next"]);
    assert_grandchild_gone(&r.stdout(0)).await;
}

/// A step printing 10 MB to a receiver that takes none of its lines is held back
/// (the event channel is bounded; on the local backend its writes block) and still
/// stopped by a cancel, with every process it started: the driver hears the cancel
/// token while it waits for room. Once the receiver takes lines again the stage ends,
/// cancelled.
pub async fn cancel_while_the_log_is_not_taken(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "unread-log",
        &image,
        &[
            &format!(
                "sleep 300 &\n{PRINT_GRANDCHILD}\n\
                 yes 0123456789012345678901234567890123456789 | head -n 200000\nwait"
            ),
            "echo never",
        ],
    );
    let cancel = CancellationToken::new();
    // Far less than the step prints before the receiver stops taking lines.
    let (tx, mut rx) = crate::event_channel(64 * 1024);
    let receive = async {
        let mut lines = Vec::new();
        while let Some(event) = rx.recv().await {
            if let StageEvent::Line(l) = event {
                lines.push(String::from_utf8_lossy(&l.bytes).into_owned());
                if lines.iter().any(|l| l.starts_with("grandchild=")) {
                    break;
                }
            }
        }
        let grandchild = ProcessRef::from_lines(&lines);
        let until = Instant::now() + Duration::from_secs(10);
        while !grandchild.sleep_alive() && Instant::now() < until {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        assert!(
            grandchild.sleep_alive(),
            "the running grandchild was not visible in /proc (is the backend on this host?)"
        );
        // No line is taken from here until the step's processes are gone. Cancelled
        // once the channel is full, so the driver waits for room when it hears it.
        let until = Instant::now() + KILL_BOUND;
        while rx.room() >= 1024 {
            assert!(
                Instant::now() < until,
                "the step's lines did not fill the channel ({} bytes free)",
                rx.room()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        cancel.cancel();
        let cancelled_at = Instant::now();
        while grandchild.sleep_alive() {
            assert!(
                cancelled_at.elapsed() < KILL_BOUND,
                "a cancel did not stop a step whose log was not taken"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut rest = Vec::new();
        while let Some(event) = rx.recv().await {
            rest.push(event);
        }
        rest
    };
    let (outcome, rest) = tokio::join!(
        crate::run_stage(&*backend, &spec, RunOptions::default(), tx, cancel.clone()),
        receive
    );
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    let statuses: Vec<Status> = outcome.steps.iter().map(|s| s.status.clone()).collect();
    assert_eq!(statuses, vec![Status::Cancelled, Status::Skipped]);
    assert!(
        matches!(rest.last(), Some(StageEvent::StepFinished { index: 1, .. })),
        "the events end with the skipped step's end: {:?}",
        rest.last()
    );
}
