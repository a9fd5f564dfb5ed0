//! From plans to stored stages: the one mapping used by the planner (new runs) and by
//! reruns (from the plan stored with the run), so both insert exactly the same stages.
//!
//! Conventions (readers of stages rely on them):
//! - `run.plan` is the JSON of `Vec<pipelines::Plan>`, one per triggered pipeline.
//! - A stage's key is its plan id (`test (features=full)`) when the run has one
//!   pipeline, `<pipeline>/<id>` when it has several (ids are unique per pipeline only).
//! - A stage's `spec` is the JSON of its [`pipelines::PlannedStage`]; a stage skipped
//!   by the plan has an empty object (it never reaches a runner).

use serde_json::Value;

use crate::store::NewStage;

/// The stages of a run planned as `plans`, in plan order (each pipeline's planned
/// stages in topological order, then the ones its `when` filters skipped).
pub fn stages_from_plans(plans: &[pipelines::Plan]) -> Vec<NewStage> {
    let several = plans.len() > 1;
    let key = |plan: &pipelines::Plan, id: &str| {
        if several {
            format!("{}/{id}", plan.pipeline)
        } else {
            id.to_string()
        }
    };
    let mut out = Vec::new();
    for plan in plans {
        for stage in &plan.stages {
            out.push(NewStage {
                key: key(plan, &stage.id),
                pipeline: plan.pipeline.clone(),
                needs: stage.needs.iter().map(|n| key(plan, n)).collect(),
                // Serialising a PlannedStage cannot fail (string map keys only).
                spec: serde_json::to_value(stage).unwrap_or(Value::Null),
                max_attempts: stage.retry.saturating_add(1),
                skip: None,
                succeeded: None,
                steps: stage.steps.iter().map(|s| s.name.clone()).collect(),
            });
        }
        for skipped in &plan.skipped {
            out.push(NewStage {
                key: key(plan, &skipped.id),
                pipeline: plan.pipeline.clone(),
                // A skipped stage waits for nothing: the plan already skipped whatever
                // needed it, and a stage that needs a skipped one is skipped itself.
                needs: Vec::new(),
                spec: Value::Object(Default::default()),
                max_attempts: 1,
                skip: Some(skipped.reason.clone()),
                succeeded: None,
                steps: Vec::new(),
            });
        }
    }
    out
}

/// Reads a run's stored plan (`run.plan`) back.
pub fn plans_of(plan: &Value) -> Result<Vec<pipelines::Plan>, serde_json::Error> {
    serde_json::from_value(plan.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, yaml: &str) -> pipelines::Plan {
        let p = pipelines::parse(".slipway.yml", yaml).expect("valid pipeline");
        let mut p = p;
        p.name = name.to_string();
        let ctx = pipelines::EventContext {
            event: pipelines::Event::Push,
            branch: Some("main".into()),
            sha: "a".repeat(40),
            ..Default::default()
        };
        pipelines::plan(&p, &ctx).expect("plans")
    }

    const YAML: &str = "\
on:
  push: {}
stages:
  build:
    retry: 2
    steps:
      - name: compile
        run: make
      - name: pack
        run: tar c .
  test:
    needs: [build]
    matrix: { os: [linux, mac] }
    steps:
      - run: make test
  deploy:
    needs: [test]
    when: { branch: release }
    steps:
      - run: deploy
";

    #[test]
    fn one_pipeline_uses_plain_ids() {
        let stages = stages_from_plans(&[plan("default", YAML)]);
        let keys: Vec<&str> = stages.iter().map(|s| s.key.as_str()).collect();
        assert_eq!(
            keys,
            ["build", "test (os=linux)", "test (os=mac)", "deploy"],
            "{stages:#?}"
        );
        let build = &stages[0];
        assert_eq!(build.max_attempts, 3);
        assert_eq!(build.steps, ["compile", "pack"]);
        assert!(build.needs.is_empty());
        let spec: pipelines::PlannedStage = serde_json::from_value(build.spec.clone()).unwrap();
        assert_eq!(spec.id, "build");
        assert_eq!(stages[1].needs, ["build"]);
        assert_eq!(stages[1].max_attempts, 1);
        let deploy = &stages[3];
        assert!(deploy.skip.as_deref().is_some_and(|r| !r.is_empty()));
        assert!(deploy.needs.is_empty() && deploy.steps.is_empty());
    }

    #[test]
    fn several_pipelines_prefix_keys_and_needs() {
        let stages = stages_from_plans(&[plan("ci", YAML), plan("nightly", YAML)]);
        assert_eq!(stages.len(), 8);
        let t = stages
            .iter()
            .find(|s| s.key == "nightly/test (os=mac)")
            .unwrap();
        assert_eq!(t.needs, ["nightly/build"]);
        assert_eq!(t.pipeline, "nightly");
        assert!(
            stages
                .iter()
                .any(|s| s.key == "ci/deploy" && s.skip.is_some())
        );
    }
}
