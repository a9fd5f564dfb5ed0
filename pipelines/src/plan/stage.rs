//! One planned stage (one per matrix combination): env, steps, services, kind and
//! runner labels, with plan-time values filled in.

use std::collections::BTreeMap;

use super::planned::{PlannedKind, PlannedService, PlannedStage, PlannedStep};
use super::values::{Values, short_sha};
use crate::expr::Expr;
use crate::matrix::Combination;
use crate::model::{Rollout, Stage, StageKind};

pub(super) fn plan_stage(
    values: &Values<'_>,
    stage: &Stage,
    id: String,
    combo: Combination,
    needs: Vec<String>,
) -> PlannedStage {
    let ev = values.ev;
    let mut env = BTreeMap::new();
    let builtin = [
        ("CI", "true".to_string()),
        ("SLIPWAY", "true".to_string()),
        ("SLIPWAY_EVENT", ev.event.as_str().to_string()),
        ("SLIPWAY_COMMIT_SHA", ev.sha.clone()),
        ("SLIPWAY_COMMIT_SHORT_SHA", short_sha(&ev.sha)),
        ("SLIPWAY_BRANCH", ev.branch.clone().unwrap_or_default()),
        ("SLIPWAY_TAG", ev.tag.clone().unwrap_or_default()),
        ("SLIPWAY_PIPELINE", values.pipeline.name.clone()),
        ("SLIPWAY_STAGE", stage.name.clone()),
    ];
    for (k, v) in builtin {
        env.insert(k.to_string(), v);
    }
    if let Some(repo) = &ev.repo {
        env.insert("SLIPWAY_REPO".into(), repo.clone());
    }
    if ev.event == crate::Event::PullRequest {
        let pr = [
            ("SLIPWAY_PR_NUMBER", ev.pr_number.map(|n| n.to_string())),
            ("SLIPWAY_SOURCE_BRANCH", ev.source_branch.clone()),
            ("SLIPWAY_TARGET_BRANCH", ev.branch.clone()),
        ];
        for (k, v) in pr {
            env.insert(k.to_string(), v.unwrap_or_default());
        }
    }
    for (k, v) in &combo {
        env.insert(Expr::Matrix(k.clone()).env_var(), v.clone());
    }
    let mut secrets = BTreeMap::new();
    values.env_into(&values.pipeline.env, &combo, &mut env, &mut secrets);
    values.env_into(&stage.env, &combo, &mut env, &mut secrets);

    let steps: Vec<PlannedStep> = stage
        .steps
        .iter()
        .map(|s| {
            let mut step_env = BTreeMap::new();
            let mut step_secrets = BTreeMap::new();
            for (e, _) in s.run.exprs() {
                match e {
                    Expr::Secret(name) => {
                        step_secrets.insert(e.env_var(), name.clone());
                    }
                    _ => {
                        if let Some(v) = values.get(e, &combo) {
                            step_env.insert(e.env_var(), v);
                        }
                    }
                }
            }
            values.env_into(&s.env, &combo, &mut step_env, &mut step_secrets);
            secrets.extend(step_secrets.iter().map(|(k, v)| (k.clone(), v.clone())));
            PlannedStep {
                name: s.name.clone(),
                script: s.run.render_shell(),
                env: step_env,
                timeout_secs: s.timeout_secs,
                secrets: step_secrets,
            }
        })
        .collect();

    let services = stage
        .services
        .iter()
        .map(|(name, svc)| {
            let svc_env = svc
                .env
                .iter()
                .map(|(k, t)| (k.clone(), values.text(t, &combo)))
                .collect();
            (
                name.clone(),
                PlannedService {
                    image: values.text(&svc.image, &combo),
                    env: svc_env,
                    command: svc.command.clone(),
                    ready: svc.ready.clone(),
                },
            )
        })
        .collect();

    let kind = match &stage.kind {
        StageKind::Run => PlannedKind::Run,
        StageKind::Scan { sarif, fail_on } => PlannedKind::Scan {
            sarif: sarif.clone(),
            fail_on: *fail_on,
        },
        StageKind::Image {
            dockerfile,
            context,
            push,
            registry_secret,
            build_args,
            target,
        } => PlannedKind::Image {
            dockerfile: dockerfile.clone(),
            context: context.clone(),
            push: push.as_ref().map(|t| values.text(t, &combo)),
            registry_secret: registry_secret.clone(),
            build_args: build_args
                .iter()
                .map(|(k, t)| (k.clone(), values.text(t, &combo)))
                .collect(),
            target: target.clone(),
        },
        StageKind::Deploy {
            environment,
            approval,
            rollout,
        } => PlannedKind::Deploy {
            environment: environment.clone(),
            approval: approval.clone(),
            rollout: rollout.as_ref().map(|r| Rollout {
                target: r.target.clone(),
                image: r.image.as_ref().map(|t| values.text_late(t, &combo)),
                strategy: r.strategy.clone(),
            }),
        },
    };

    PlannedStage {
        id,
        stage: stage.name.clone(),
        matrix: combo.clone(),
        needs,
        kind,
        image: stage.image.as_ref().map(|t| values.text(t, &combo)),
        env,
        steps,
        services,
        artifacts: stage.artifacts.clone(),
        allow_secrets_in_artifacts: stage.allow_secrets_in_artifacts,
        cache: stage.cache.clone(),
        retry: stage.retry,
        timeout_secs: stage.timeout_secs,
        secrets,
        runs_on: runs_on(values, stage, &combo),
        container: stage.container.clone(),
        kubernetes: stage.kubernetes.clone(),
    }
}

/// The stage's runner labels with plan-time values filled in; a label that renders
/// empty (an unset parameter) is dropped, and each label is kept once.
fn runs_on(values: &Values<'_>, stage: &Stage, combo: &Combination) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for t in &stage.runs_on {
        let label = values.text(t, combo).trim().to_string();
        if !label.is_empty() && !out.contains(&label) {
            out.push(label);
        }
    }
    out
}
