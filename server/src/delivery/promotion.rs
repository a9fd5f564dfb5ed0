//! Promotion without rebuild, pure: from the stored plan of a finished run, the stages
//! of a run that deploys that run's results to one environment. The stages that
//! deploy there run again (through the environment's gate); every stage they need,
//! directly or not, is carried over as it succeeded — with its artifacts, pushed image
//! digests and outputs — and nothing else is in the new run.

use std::collections::{BTreeSet, HashMap};

use crate::store::deployments::deploy_target;
use crate::store::{NewStage, Stage, StageStatus};

/// The stages of a promotion of run `number` (whose stages were `original`) to
/// `environment`, from `planned` (the stages of its stored plan). `Err` says why the
/// run cannot be promoted there.
pub fn promotion_stages(
    number: i64,
    planned: Vec<NewStage>,
    original: &[Stage],
    environment: &str,
) -> Result<Vec<NewStage>, String> {
    let deploys_to = |s: &NewStage| deploy_target(&s.spec).map(|(env, _)| env);
    let targets: BTreeSet<String> = planned
        .iter()
        .filter(|s| s.skip.is_none() && deploys_to(s).as_deref() == Some(environment))
        .map(|s| s.key.clone())
        .collect();
    if targets.is_empty() {
        let envs: BTreeSet<String> = planned.iter().filter_map(deploys_to).collect();
        return Err(if envs.is_empty() {
            format!("run #{number} has no deploy stage, so there is nothing to promote")
        } else {
            format!(
                "run #{number} has no stage that deploys to `{environment}` (it deploys to: {})",
                envs.into_iter().collect::<Vec<_>>().join(", ")
            )
        });
    }
    let by_key: HashMap<&str, &NewStage> = planned.iter().map(|s| (s.key.as_str(), s)).collect();
    // Everything the targets need, transitively.
    let mut carried: BTreeSet<String> = BTreeSet::new();
    let mut todo: Vec<String> = targets
        .iter()
        .flat_map(|k| by_key[k.as_str()].needs.clone())
        .collect();
    while let Some(key) = todo.pop() {
        if targets.contains(&key) || !carried.insert(key.clone()) {
            continue;
        }
        if let Some(s) = by_key.get(key.as_str()) {
            todo.extend(s.needs.iter().cloned());
        }
    }
    let ran: HashMap<&str, &Stage> = original.iter().map(|s| (s.key.as_str(), s)).collect();
    for key in &carried {
        match ran.get(key.as_str()) {
            Some(s) if s.status == StageStatus::Success => {}
            Some(s) => {
                return Err(format!(
                    "stage `{key}` of run #{number} is {}: only what succeeded can be promoted",
                    s.status
                ));
            }
            None => return Err(format!("stage `{key}` of run #{number} never ran")),
        }
    }
    let reason = format!("carried from run #{number}");
    Ok(planned
        .into_iter()
        .filter(|s| targets.contains(&s.key) || carried.contains(&s.key))
        .map(|mut s| {
            if carried.contains(&s.key) {
                s.succeeded = Some(reason.clone());
                s.carried_from = ran.get(s.key.as_str()).map(|o| o.id);
            }
            s
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage(key: &str, needs: &[&str], env: Option<&str>) -> NewStage {
        let mut s = NewStage::new(key, needs, &["step 1"]);
        if let Some(env) = env {
            s.spec = serde_json::json!({
                "kind": { "type": "deploy", "environment": env, "approval": null, "rollout": null }
            });
        }
        s
    }

    fn ran(key: &str, id: i64, status: StageStatus) -> Stage {
        Stage {
            id,
            run_id: 1,
            repo_id: 1,
            key: key.into(),
            pipeline: "release".into(),
            status,
            needs: Vec::new(),
            spec: serde_json::Value::Null,
            attempt: 1,
            max_attempts: 1,
            infra_retry_used: false,
            runner_id: None,
            lease_token: None,
            lease_expires_at: None,
            cancel_requested: false,
            reason: None,
            queued_at: None,
            started_at: None,
            finished_at: None,
            created_at: 0,
            labels: Vec::new(),
            waiting: None,
        }
    }

    fn plan() -> Vec<NewStage> {
        vec![
            stage("build", &[], None),
            stage("lint", &[], None),
            stage("image", &["build"], None),
            stage("staging", &["image"], Some("staging")),
            stage("production", &["staging"], Some("production")),
        ]
    }

    #[test]
    fn carries_what_the_target_needs_and_runs_only_the_target() {
        use StageStatus::*;
        let original = [
            ran("build", 11, Success),
            ran("lint", 12, Failure),
            ran("image", 13, Success),
            ran("staging", 14, Success),
            ran("production", 15, Cancelled),
        ];
        let out = promotion_stages(7, plan(), &original, "production").unwrap();
        let shown: Vec<(String, Option<i64>)> = out
            .iter()
            .map(|s| (s.key.clone(), s.carried_from))
            .collect();
        assert_eq!(
            shown,
            [
                ("build".to_string(), Some(11)),
                ("image".into(), Some(13)),
                ("staging".into(), Some(14)),
                ("production".into(), None),
            ]
        );
        assert!(out[0].succeeded.as_deref() == Some("carried from run #7"));
        assert!(out[3].succeeded.is_none());
    }

    #[test]
    fn refuses_what_did_not_succeed_or_does_not_deploy_there() {
        use StageStatus::*;
        let original = [ran("build", 11, Success), ran("image", 13, Failure)];
        let e = promotion_stages(7, plan(), &original, "staging").unwrap_err();
        assert!(e.contains("stage `image` of run #7 is failure"), "{e}");
        let e = promotion_stages(7, plan(), &original, "qa").unwrap_err();
        assert!(e.contains("deploys to: production, staging"), "{e}");
    }
}
