//! What follows from the states of a run's stages: which waiting stages may be queued
//! or must be skipped, which unstarted stages a finished run cancels, and the run's final
//! status. Pure, so the store (rows read and written in one transaction) and
//! `slipway exec` (stages in memory) follow the same rules.

use crate::delivery::gate::Gate;
use crate::store::{RunStatus, StageStatus};

/// A stage as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct StageView<'a> {
    pub key: &'a str,
    pub status: StageStatus,
    /// Keys of the stages it needs.
    pub needs: &'a [String],
    /// A deploy stage's gate (`None`: the stage has none).
    pub gate: Option<&'a Gate>,
}

/// A stage's new state; `stage` is its index in the slice given to [`reconcile`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageChange {
    pub stage: usize,
    pub status: StageStatus,
    pub reason: Option<String>,
}

/// Everything [`reconcile`] derived; empty when there is nothing to do.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// At most one change per stage, in the order they were derived.
    pub stages: Vec<StageChange>,
    /// Running stages of a finished run: their runners are asked to stop them.
    pub stop: Vec<usize>,
    /// Waiting stages whose needs succeeded and whose gate is closed: the store opens
    /// their gates (and derives again).
    pub open_gates: Vec<usize>,
    /// The final status of a running run with no stage left unfinished.
    pub run: Option<RunStatus>,
}

/// Re-derives what follows from the stages' states. Of a `running` run: a waiting stage
/// is queued once all its needs succeeded and skipped as soon as one ended otherwise
/// (or is no stage of the run) — skips cascade —; a gated stage whose needs succeeded
/// has its gate opened, stays waiting while it is held, is queued when it passes and
/// ends as the gate says when it fails; once every stage is final the run
/// gets its status: `failure` if a stage failed or timed out, else `error` if one
/// errored, else `cancelled` if one was cancelled, else `success`. Of a finished run:
/// waiting and queued stages are cancelled and running ones asked to stop. A pending run
/// has nothing to derive. Idempotent: applying the changes and calling again yields none.
pub fn reconcile(run: RunStatus, stages: &[StageView]) -> Changes {
    let mut changes = Changes::default();
    let mut status: Vec<StageStatus> = stages.iter().map(|s| s.status).collect();
    if run == RunStatus::Running {
        // A skip can skip a stage earlier in the slice: repeat to a fixpoint.
        let mut changed = true;
        while changed {
            changed = false;
            for (i, s) in stages.iter().enumerate() {
                if status[i] != StageStatus::Waiting {
                    continue;
                }
                let next = next_state(s, |key| {
                    stages.iter().position(|o| o.key == key).map(|j| status[j])
                });
                let (st, reason) = match next {
                    Next::Stay => continue,
                    Next::OpenGate => {
                        if !changes.open_gates.contains(&i) {
                            changes.open_gates.push(i);
                        }
                        continue;
                    }
                    Next::To(st, reason) => (st, reason),
                };
                status[i] = st;
                changes.stages.push(StageChange {
                    stage: i,
                    status: st,
                    reason,
                });
                changed = true;
            }
        }
        if status.iter().all(|s| s.is_final()) {
            changes.run = Some(run_status(&status));
        }
    } else if run.is_final() {
        let reason = format!("run {run}");
        for (i, st) in status.iter().enumerate() {
            match st {
                StageStatus::Waiting | StageStatus::Queued => changes.stages.push(StageChange {
                    stage: i,
                    status: StageStatus::Cancelled,
                    reason: Some(reason.clone()),
                }),
                StageStatus::Running => changes.stop.push(i),
                _ => {}
            }
        }
    }
    changes
}

/// What happens to a waiting stage.
enum Next {
    Stay,
    OpenGate,
    To(StageStatus, Option<String>),
}

/// Where a waiting stage goes, given the current status of each stage by key.
fn next_state(stage: &StageView, status_of: impl Fn(&str) -> Option<StageStatus>) -> Next {
    let needs: Vec<(&str, Option<StageStatus>)> = stage
        .needs
        .iter()
        .map(|n| (n.as_str(), status_of(n)))
        .collect();
    let failed = needs
        .iter()
        .find(|(_, st)| st.is_none_or(|st| st.is_final() && st != StageStatus::Success));
    if let Some((need, st)) = failed {
        let ended = st.map_or("missing".to_string(), |st| st.to_string());
        return Next::To(
            StageStatus::Skipped,
            Some(format!("needs `{need}`, which is {ended}")),
        );
    }
    if !needs
        .iter()
        .all(|(_, st)| *st == Some(StageStatus::Success))
    {
        return Next::Stay;
    }
    match stage.gate {
        None | Some(Gate::Pass) => Next::To(StageStatus::Queued, None),
        Some(Gate::Closed) => Next::OpenGate,
        Some(Gate::Held) => Next::Stay,
        Some(Gate::Fail(st, reason)) => Next::To(*st, Some(reason.clone())),
    }
}

/// The status of a run whose stages are all final.
fn run_status(stages: &[StageStatus]) -> RunStatus {
    let has = |st: StageStatus| stages.contains(&st);
    if has(StageStatus::Failure) || has(StageStatus::TimedOut) {
        RunStatus::Failure
    } else if has(StageStatus::Error) {
        RunStatus::Error
    } else if has(StageStatus::Cancelled) {
        RunStatus::Cancelled
    } else {
        RunStatus::Success
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use RunStatus::*;

    type Stages = Vec<(String, StageStatus, Vec<String>, Option<Gate>)>;

    /// `key:status`, `key:status<need,need`, each optionally followed by a gate
    /// `@closed`, `@held`, `@pass` or `@rejected`; separated by spaces.
    fn stages(text: &str) -> Stages {
        text.split_whitespace()
            .map(|s| {
                let (s, gate) = s.split_once('@').map_or((s, None), |(s, g)| {
                    let gate = match g {
                        "closed" => Gate::Closed,
                        "held" => Gate::Held,
                        "pass" => Gate::Pass,
                        "rejected" => Gate::Fail(StageStatus::Failure, "rejected by bob".into()),
                        other => panic!("gate {other}"),
                    };
                    (s, Some(gate))
                });
                let (key, rest) = s.split_once(':').unwrap();
                let (status, needs) = rest.split_once('<').unwrap_or((rest, ""));
                let needs = needs
                    .split(',')
                    .filter(|n| !n.is_empty())
                    .map(str::to_string)
                    .collect();
                (key.to_string(), status.parse().unwrap(), needs, gate)
            })
            .collect()
    }

    fn views(stages: &Stages) -> Vec<StageView<'_>> {
        stages
            .iter()
            .map(|(key, status, needs, gate)| StageView {
                key,
                status: *status,
                needs,
                gate: gate.as_ref(),
            })
            .collect()
    }

    /// `key status (reason)`, `open key`, `stop key` and `run status`, joined by `; `.
    fn show(stages: &Stages, changes: &Changes) -> String {
        let mut out: Vec<String> = changes
            .stages
            .iter()
            .map(|c| {
                let key = &stages[c.stage].0;
                match &c.reason {
                    Some(r) => format!("{key} {} ({r})", c.status),
                    None => format!("{key} {}", c.status),
                }
            })
            .collect();
        out.extend(
            changes
                .open_gates
                .iter()
                .map(|&i| format!("open {}", stages[i].0)),
        );
        out.extend(
            changes
                .stop
                .iter()
                .map(|&i| format!("stop {}", stages[i].0)),
        );
        out.extend(changes.run.map(|r| format!("run {r}")));
        out.join("; ")
    }

    /// (run status, stages in, changes out).
    const CASES: &[(RunStatus, &str, &str)] = &[
        // Needs.
        (Running, "a:queued b:waiting<a", ""),
        (Running, "a:running b:waiting<a", ""),
        (Running, "a:success b:waiting<a", "b queued"),
        (Running, "a:success b:running c:waiting<a,b", ""),
        (
            Running,
            "a:failure b:waiting<a",
            "b skipped (needs `a`, which is failure); run failure",
        ),
        (
            Running,
            "a:running b:timed_out c:waiting<a,b",
            "c skipped (needs `b`, which is timed_out)",
        ),
        (
            Running,
            "a:cancelled b:error c:waiting<a,b",
            "c skipped (needs `a`, which is cancelled); run error",
        ),
        (
            Running,
            "a:skipped b:waiting<a",
            "b skipped (needs `a`, which is skipped); run success",
        ),
        (
            Running,
            "b:waiting<gone",
            "b skipped (needs `gone`, which is missing); run success",
        ),
        // Skips cascade, also to stages earlier in the list.
        (
            Running,
            "c:waiting<b b:waiting<a a:failure d:waiting<c",
            "b skipped (needs `a`, which is failure); \
             c skipped (needs `b`, which is skipped); \
             d skipped (needs `c`, which is skipped); run failure",
        ),
        (Running, "a:success b:waiting<a c:waiting<b", "b queued"),
        // The run's status once every stage is final.
        (Running, "", "run success"),
        (Running, "a:success b:skipped", "run success"),
        (Running, "a:success b:failure c:error", "run failure"),
        (Running, "a:timed_out b:cancelled", "run failure"),
        (Running, "a:error b:cancelled", "run error"),
        (Running, "a:cancelled b:success", "run cancelled"),
        (Running, "a:success b:queued", ""),
        // A finished run: unstarted stages are cancelled, running ones stopped.
        (
            Cancelled,
            "a:success b:running c:queued d:waiting<c e:failure",
            "c cancelled (run cancelled); d cancelled (run cancelled); stop b",
        ),
        (Error, "a:waiting<b b:success", "a cancelled (run error)"),
        (Success, "a:success", ""),
        // Gates: opened when the needs succeeded, held, passed or failed.
        (Running, "a:running b:waiting<a@closed", ""),
        (Running, "a:success b:waiting<a@closed", "open b"),
        (Running, "a:waiting@closed", "open a"),
        (Running, "a:success b:waiting<a@held c:waiting<b", ""),
        (Running, "a:success b:waiting<a@pass", "b queued"),
        (
            Running,
            "a:success b:waiting<a@rejected c:waiting<b",
            "b failure (rejected by bob); \
             c skipped (needs `b`, which is failure); run failure",
        ),
        (
            Cancelled,
            "a:success b:waiting<a@held",
            "b cancelled (run cancelled)",
        ),
        // A pending run has no stages to move.
        (Pending, "a:waiting<b b:success", ""),
    ];

    #[test]
    fn each_case_derives_its_changes() {
        for (run, input, expected) in CASES {
            let stages = stages(input);
            let changes = reconcile(*run, &views(&stages));
            assert_eq!(show(&stages, &changes), *expected, "run {run}: {input}");
        }
    }

    #[test]
    fn applying_the_changes_leaves_nothing_to_do() {
        for (run, input, _) in CASES {
            let mut stages = stages(input);
            let changes = reconcile(*run, &views(&stages));
            for c in &changes.stages {
                stages[c.stage].1 = c.status;
            }
            let run = changes.run.unwrap_or(*run);
            let again = reconcile(run, &views(&stages));
            // An opened gate changes no stage: only the store's next read tells.
            assert!(
                again.stages.is_empty() && again.run.is_none(),
                "run {run}: {input}: {again:?}"
            );
        }
    }
}
