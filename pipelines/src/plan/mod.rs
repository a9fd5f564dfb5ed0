//! Pipeline + event → plan: which stages run (and why others do not), in what order,
//! with every plan-time value resolved.
//!
//! Here: which stages run, in what order. `trigger` checks `on`, `stage_when` a
//! stage's `when`, `stage` plans one stage (or matrix combination), `values` renders
//! plan-time expressions, `planned` is the plan's shape, `trust` what an untrusted run
//! may not plan.

mod planned;
mod stage;
mod stage_when;
mod trigger;
mod trust;
mod values;

use std::collections::HashMap;

use crate::event::EventContext;
use crate::matrix::{Combination, combination_id};
use crate::model::{Pipeline, Stage};
use stage::plan_stage;
use stage_when::when_rejects;
use trigger::check_trigger;
use values::Values;

pub use planned::{
    Plan, PlanError, PlannedKind, PlannedService, PlannedStage, PlannedStep, Result, SkippedStage,
};
pub use trust::untrusted_service_accounts;

pub fn plan(pipeline: &Pipeline, ctx: &EventContext) -> Result<Plan> {
    let mut event = ctx.clone();
    check_trigger(pipeline, &mut event)?;
    let values = Values {
        ev: &event,
        pipeline,
    };

    let mut planned: Vec<PlannedStage> = Vec::new();
    let mut skipped: Vec<SkippedStage> = Vec::new();
    // Stage name → ids of its planned expansions (empty: skipped).
    let mut ids: HashMap<&str, Vec<String>> = HashMap::new();
    for stage in topological(pipeline) {
        let combos: Vec<Combination> = stage
            .matrix
            .clone()
            .unwrap_or_else(|| vec![Combination::new()]);
        let skip_reason = stage
            .needs
            .iter()
            .find(|n| ids.get(n.as_str()).is_some_and(|v| v.is_empty()))
            .map(|n| format!("needs `{n}`, which was skipped"))
            .or_else(|| when_rejects(&stage.when, &event));
        let mut stage_ids = Vec::new();
        for combo in combos {
            let id = combination_id(&stage.name, &combo);
            if let Some(reason) = &skip_reason {
                skipped.push(SkippedStage {
                    id,
                    stage: stage.name.clone(),
                    reason: reason.clone(),
                });
                continue;
            }
            let needs = stage
                .needs
                .iter()
                .flat_map(|n| ids.get(n.as_str()).cloned().unwrap_or_default())
                .collect();
            stage_ids.push(id.clone());
            planned.push(plan_stage(&values, stage, id, combo, needs));
        }
        ids.insert(&stage.name, stage_ids);
    }
    Ok(Plan {
        pipeline: pipeline.name.clone(),
        file: pipeline.file.clone(),
        yaml_sha256: pipeline.yaml_sha256.clone(),
        event,
        stages: planned,
        skipped,
    })
}

/// Kahn's algorithm, always taking the earliest-declared ready stage. Needs on
/// undeclared stages are ignored, and a cycle (impossible after `parse`) is broken by
/// declaration order rather than by panicking.
fn topological(p: &Pipeline) -> Vec<&Stage> {
    let index: HashMap<&str, usize> = p
        .stages
        .iter()
        .enumerate()
        .map(|(i, s)| (s.name.as_str(), i))
        .collect();
    let mut done = vec![false; p.stages.len()];
    let mut out = Vec::with_capacity(p.stages.len());
    let is_ready = |done: &[bool], s: &Stage| {
        s.needs.iter().all(|n| {
            index
                .get(n.as_str())
                .is_none_or(|i| done.get(*i).copied().unwrap_or(true))
        })
    };
    while out.len() < p.stages.len() {
        let pending = || {
            p.stages
                .iter()
                .enumerate()
                .filter(|(i, _)| !done.get(*i).copied().unwrap_or(true))
        };
        let next = pending()
            .find(|(_, s)| is_ready(&done, s))
            .or_else(|| pending().next());
        let Some((i, s)) = next else { break };
        if let Some(d) = done.get_mut(i) {
            *d = true;
        }
        out.push(s);
    }
    out
}
