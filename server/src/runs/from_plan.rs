//! Plans → stored stages: the one mapping from the `pipelines` model to the store's rows.

use pipelines::Plan;
use serde_json::Value;

use crate::store::NewStage;

/// The stages of a run planned as `plans` (one plan per triggered pipeline), ready for
/// [`Store::set_run_planned`](crate::store::Store::set_run_planned).
///
/// * Keys are the planned stage ids (`test (features=full)`) when one pipeline runs,
///   and `<pipeline>/<stage id>` when several do, so that two pipelines may both have a
///   `build` stage. `needs` are mapped the same way.
/// * Each stage's `spec` is the JSON of its [`pipelines::PlannedStage`]; skipped stages
///   (a `when` filter, or a need that was skipped) carry the JSON of their
///   [`pipelines::SkippedStage`] and `skip: Some(reason)`, no needs and no steps.
/// * `max_attempts` is 1 + the YAML `retry` (1 for a rollout stage).
/// * A rollout stage (`rollout`) has one step, `rollout`: the controller's log.
pub fn stages_from_plans(plans: &[Plan]) -> Vec<NewStage> {
    let prefix = plans.len() > 1;
    let mut out = Vec::new();
    for plan in plans {
        let key = |id: &str| {
            if prefix {
                format!("{}/{id}", plan.pipeline)
            } else {
                id.to_string()
            }
        };
        for stage in &plan.stages {
            let rollout = matches!(
                stage.kind,
                pipelines::PlannedKind::Deploy {
                    rollout: Some(_),
                    ..
                }
            );
            out.push(NewStage {
                key: key(&stage.id),
                pipeline: plan.pipeline.clone(),
                needs: stage.needs.iter().map(|n| key(n)).collect(),
                spec: serde_json::to_value(stage).unwrap_or(Value::Null),
                // A failed rollout was rolled back on purpose: retrying it would roll
                // the same version out again (`slipway rollout retry` asks for that).
                max_attempts: if rollout {
                    1
                } else {
                    stage.retry.saturating_add(1)
                },
                skip: None,
                succeeded: None,
                carried_from: None,
                steps: crate::agent::stage_spec::step_names(stage),
                labels: crate::runs::routing::stage_labels(stage),
            });
        }
        for skipped in &plan.skipped {
            out.push(NewStage {
                key: key(&skipped.id),
                pipeline: plan.pipeline.clone(),
                needs: Vec::new(),
                spec: serde_json::to_value(skipped).unwrap_or(Value::Null),
                max_attempts: 1,
                skip: Some(skipped.reason.clone()),
                succeeded: None,
                carried_from: None,
                steps: Vec::new(),
                labels: Vec::new(),
            });
        }
    }
    out
}

/// The `error` of a run refused by [`check_trust`] (its diagnostics say where).
pub const UNTRUSTED_REASON: &str =
    "pipeline validation failed: a stage asks for a service account and the run is not trusted";

/// Settings only trusted runs may use, checked on the plans a run would execute: the
/// planner checks a fresh plan and a rerun checks the stored one, so neither path lets
/// an untrusted run through. `Err` holds the diagnostics for the error run (as stored in
/// `runs.diagnostics`): `kubernetes.service_account`
/// ([`pipelines::untrusted_service_accounts`]).
pub fn check_trust(plans: &[Plan], trusted: bool) -> Result<(), Value> {
    if trusted {
        return Ok(());
    }
    let diags = pipelines::untrusted_service_accounts(plans);
    if diags.is_empty() {
        Ok(())
    } else {
        Err(serde_json::to_value(&diags).unwrap_or(Value::Null))
    }
}

/// Reads a run's stored plan (`run.plan`, the JSON of `Vec<Plan>`) back, e.g. to re-run it.
pub fn plans_of(plan: &Value) -> Result<Vec<Plan>, serde_json::Error> {
    serde_json::from_value(plan.clone())
}

#[cfg(test)]
mod tests {
    use super::*;
    use pipelines::{Event, EventContext};

    fn plans(files: &[(&str, &str)], ctx: &EventContext) -> Vec<Plan> {
        let files: Vec<(String, String)> = files
            .iter()
            .map(|(p, t)| (p.to_string(), t.to_string()))
            .collect();
        pipelines::load(&files)
            .unwrap()
            .iter()
            .map(|p| pipelines::plan(p, ctx).unwrap())
            .collect()
    }

    fn push_main() -> EventContext {
        EventContext {
            event: Event::Push,
            branch: Some("main".into()),
            sha: "a".repeat(40),
            ..EventContext::default()
        }
    }

    const CI: &str = "stages:
  build:
    retry: 2
    steps:
      - name: compile
        run: make
      - run: make check
  test:
    needs: [build]
    matrix: { os: [linux, mac] }
    steps: [\"make test\"]
  docs:
    when: { branch: release }
    steps: [\"make docs\"]
  publish:
    needs: [docs]
    steps: [\"make publish\"]
";

    #[test]
    fn one_pipeline_keys_are_stage_ids() {
        let stages = stages_from_plans(&plans(&[(".slipway.yml", CI)], &push_main()));
        let keys: Vec<&str> = stages.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            [
                "build",
                "test (os=linux)",
                "test (os=mac)",
                "docs",
                "publish"
            ]
        );
        let build = &stages[0];
        assert_eq!(build.max_attempts, 3);
        assert_eq!(build.steps.len(), 2);
        assert_eq!(build.steps[0], "compile");
        assert_eq!(build.spec["id"], "build");
        assert_eq!(build.pipeline, "default");
        assert!(build.skip.is_none() && build.needs.is_empty());
        assert_eq!(stages[1].needs, ["build"]);
        assert_eq!(stages[1].max_attempts, 1);
        let docs = &stages[3];
        assert!(
            docs.skip.as_deref().unwrap().contains("when.branch"),
            "{docs:?}"
        );
        assert!(docs.steps.is_empty() && docs.needs.is_empty());
        let publish = &stages[4];
        assert!(
            publish.skip.as_deref().unwrap().contains("docs"),
            "{publish:?}"
        );
        // The spec round-trips to the planned stage.
        let back: pipelines::PlannedStage = serde_json::from_value(build.spec.clone()).unwrap();
        assert_eq!(back.id, "build");
    }

    #[test]
    fn several_pipelines_prefix_keys_and_needs() {
        let other = "name: lint\nstages:\n  build: { steps: [\"true\"] }\n  check: { needs: [build], steps: [\"true\"] }\n";
        let stages = stages_from_plans(&plans(
            &[(".slipway/ci.yml", CI), (".slipway/lint.yml", other)],
            &push_main(),
        ));
        let keys: Vec<&str> = stages.iter().map(|s| s.key.as_str()).collect();
        assert!(
            keys.contains(&"ci/build") && keys.contains(&"lint/build"),
            "{keys:?}"
        );
        let check = stages.iter().find(|s| s.key == "lint/check").unwrap();
        assert_eq!(check.needs, ["lint/build"]);
        assert_eq!(check.pipeline, "lint");
        let test = stages.iter().find(|s| s.key == "ci/test (os=mac)").unwrap();
        assert_eq!(test.needs, ["ci/build"]);
    }

    #[test]
    fn stage_rows_carry_runner_labels() {
        let yaml = "stages:
  build: { runs_on: [linux, gpu], steps: [make] }
  image: { kind: image, needs: [build] }
  docs: { when: { branch: release }, runs_on: [linux], steps: [make] }
";
        let stages = stages_from_plans(&plans(&[(".slipway.yml", yaml)], &push_main()));
        let labels: Vec<(&str, Vec<&str>)> = stages
            .iter()
            .map(|s| {
                (
                    s.key.as_str(),
                    s.labels.iter().map(String::as_str).collect(),
                )
            })
            .collect();
        assert_eq!(
            labels,
            [
                ("build", vec!["linux", "gpu"]),
                ("image", vec!["backend:docker"]),
                // Skipped stages never reach a runner.
                ("docs", vec![]),
            ]
        );
    }

    #[test]
    fn service_accounts_need_a_trusted_run() {
        let yaml = "stages:
  test:
    matrix: { arch: [amd64, arm64] }
    kubernetes:
      service_account: tester
    steps: [make]
  deploy:
    needs: test
    kind: deploy
    environment: prod
    when: { branch: release }
    kubernetes: { service_account: deployer }
    steps: [./deploy.sh]
";
        let planned = plans(&[(".slipway/ci.yml", yaml)], &push_main());
        assert_eq!(check_trust(&planned, true), Ok(()));
        let diags = check_trust(&planned, false).unwrap_err();
        // One diagnostic for the matrix stage's key; the skipped deploy stage never
        // gets a pod, so it does not count.
        let diags = diags.as_array().unwrap();
        assert_eq!(diags.len(), 1, "{diags:?}");
        let d = &diags[0];
        assert_eq!(d["file"], ".slipway/ci.yml");
        assert_eq!(
            (d["line"].as_u64(), d["column"].as_u64()),
            (Some(5), Some(7))
        );
        assert_eq!(d["code"], "untrusted-service-account");
        let message = d["message"].as_str().unwrap();
        assert!(
            message.contains("`service_account: tester`")
                && message.contains("must be marked trusted")
                && message.contains("forks never get one"),
            "{message}"
        );
        // Nothing to refuse without service accounts.
        let plain = plans(&[(".slipway.yml", CI)], &push_main());
        assert_eq!(check_trust(&plain, false), Ok(()));
    }

    #[test]
    fn no_plans_no_stages() {
        assert!(stages_from_plans(&[]).is_empty());
    }
}
