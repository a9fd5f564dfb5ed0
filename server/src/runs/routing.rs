//! Which runner may run which stage.
//!
//! A stage carries labels (`stages.labels`): the YAML's `runs_on`, plus what its kind
//! implies. A runner registers with labels: its `--labels`, plus `backend:<name>` for
//! the backend it runs stages on. The queue hands a runner only stages whose labels are
//! all among the runner's ([`Store::lease_stage`](crate::store::Store::lease_stage)); a
//! stage without labels goes to any runner. A runner also has a repository scope
//! ([`RepoScope`](crate::store::RepoScope), from the token it registered with): it only ever leases stages of
//! repositories in that scope, so their secrets only reach runners allowed for them.
//!
//! The implied requirement, kept deliberately small: a `kind: image` stage needs a
//! container engine, so it requires `backend:docker`, unless its `runs_on` already
//! names a backend (`backend:kubernetes` for an image stage built in a builder pod, on
//! runners configured with a builder image). A deploy stage with its own steps (a
//! deploy script with the environment's credentials) runs them on any runner; a deploy
//! stage with a rollout (`strategy:` or `canary:`) is driven by the server's rollout
//! controller, not by a runner, so nothing is implied for it (the YAML reader refuses
//! `runs_on` there). Run stages with an `image:` are not restricted: the local backend
//! runs their steps on the host, which is what `slipway exec` does too;
//! `runs_on: [backend:docker]` asks for isolation.

use pipelines::{BACKEND_LABEL_PREFIX, IMAGE_BACKEND, PlannedKind, PlannedStage, backend_label};

use crate::store::Runner;

/// The labels a runner must have to run `stage`.
pub fn stage_labels(stage: &PlannedStage) -> Vec<String> {
    let mut labels = stage.runs_on.clone();
    let names_backend = labels.iter().any(|l| l.starts_with(BACKEND_LABEL_PREFIX));
    let implied = match stage.kind {
        PlannedKind::Image { .. } => Some(IMAGE_BACKEND),
        PlannedKind::Run | PlannedKind::Scan { .. } | PlannedKind::Deploy { .. } => None,
    };
    if let Some(backend) = implied
        && !names_backend
    {
        labels.push(backend_label(backend));
    }
    labels
}

/// The labels a runner registers with: its own (without any `backend:` label, which
/// only the backend itself may claim) and `backend:<backend>`. Each label once.
pub fn runner_labels(own: &[String], backend: &str) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for l in own {
        if !l.starts_with(BACKEND_LABEL_PREFIX) && !out.contains(l) {
            out.push(l.clone());
        }
    }
    out.push(backend_label(backend));
    out
}

/// Whether a runner with `runner` labels may run a stage that needs `stage` labels.
pub fn can_take(runner: &[String], stage: &[String]) -> bool {
    stage.iter().all(|l| runner.contains(l))
}

/// Why no registered runner can take a stage of repository `repo` needing `labels`
/// (`None`: one can). A runner must have every label and have `repo` in its scope
/// ([`RepoScope`](crate::store::RepoScope)); the reason names whichever of the two is missing.
pub fn unroutable_reason(labels: &[String], repo: &str, runners: &[Runner]) -> Option<String> {
    if runners
        .iter()
        .any(|r| can_take(&r.labels, labels) && r.repos.allows(repo))
    {
        return None;
    }
    let labelled = runners.iter().any(|r| can_take(&r.labels, labels));
    let scoped = runners.iter().any(|r| r.repos.allows(repo));
    Some(if runners.is_empty() {
        "no runner is registered".to_string()
    } else if !scoped {
        format!("no registered runner may run stages of {repo} (runner scopes)")
    } else if !labelled && labels.is_empty() {
        // Unreachable with registered runners (an empty set is always covered); kept
        // so the function never says something false.
        "no registered runner can take it".to_string()
    } else if !labelled {
        format!(
            "no registered runner has all of the labels {}",
            labels.join(", ")
        )
    } else {
        format!(
            "no registered runner that may run stages of {repo} has all of the labels {}",
            labels.join(", ")
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RepoScope;

    fn planned(yaml: &str) -> PlannedStage {
        let pipeline = pipelines::parse(".slipway.yml", yaml).expect("valid yaml");
        let ctx = pipelines::EventContext {
            branch: Some("main".into()),
            sha: "0".repeat(40),
            ..Default::default()
        };
        pipelines::plan(&pipeline, &ctx)
            .expect("plan")
            .stages
            .remove(0)
    }

    fn runner(labels: &[&str]) -> Runner {
        Runner {
            id: 1,
            name: "r".into(),
            labels: labels.iter().map(|s| s.to_string()).collect(),
            capacity: 1,
            repos: RepoScope::All,
            created_at: 0,
            last_seen_at: 0,
        }
    }

    #[test]
    fn image_stages_need_docker_unless_runs_on_names_a_backend() {
        let run = planned("stages:\n  a:\n    runs_on: [gpu]\n    steps: [make]\n");
        assert_eq!(stage_labels(&run), ["gpu"]);
        let image = planned("stages:\n  a:\n    kind: image\n    runs_on: [fast]\n");
        assert_eq!(stage_labels(&image), ["fast", "backend:docker"]);
        let k8s = planned("stages:\n  a:\n    kind: image\n    runs_on: backend:kubernetes\n");
        assert_eq!(stage_labels(&k8s), ["backend:kubernetes"]);
        let plain = planned("stages:\n  a:\n    steps: [make]\n");
        assert!(stage_labels(&plain).is_empty());
    }

    #[test]
    fn deploy_stages_imply_no_backend() {
        // A rollout is driven by the server's rollout controller: no runner label.
        let digest = "0".repeat(64);
        let rollout = planned(&format!(
            "stages:\n  a:\n    kind: deploy\n    environment: staging\n    target: {{ deployment: app }}\n    image: app@sha256:{digest}\n    strategy: recreate\n"
        ));
        assert!(stage_labels(&rollout).is_empty());
        // The short form too.
        let canary = planned(
            "stages:\n  a:\n    kind: deploy\n    environment: staging\n    canary: { target: { deployment: app }, steps: [{ weight: 100 }] }\n",
        );
        assert!(stage_labels(&canary).is_empty());
        // Pod settings alone do not pick a backend: other backends ignore them.
        let run = planned(
            "stages:\n  a:\n    kubernetes: { node_selector: { pool: ci } }\n    steps: [make]\n",
        );
        assert!(stage_labels(&run).is_empty());
        // A deploy stage with steps runs them on any runner, or where `runs_on` says.
        let script = planned(
            "stages:\n  a:\n    kind: deploy\n    environment: staging\n    steps: [./deploy.sh]\n",
        );
        assert!(stage_labels(&script).is_empty());
        let pinned = planned(
            "stages:\n  a:\n    kind: deploy\n    environment: staging\n    runs_on: [prod-cluster]\n    steps: [./deploy.sh]\n",
        );
        assert_eq!(stage_labels(&pinned), ["prod-cluster"]);
    }

    #[test]
    fn runners_cannot_claim_a_backend() {
        let own = vec!["gpu".to_string(), "backend:docker".into(), "gpu".into()];
        assert_eq!(runner_labels(&own, "local"), ["gpu", "backend:local"]);
    }

    #[test]
    fn matching_is_subset() {
        let r = ["linux".to_string(), "gpu".into(), "backend:local".into()];
        assert!(can_take(&r, &[]));
        assert!(can_take(&r, &["gpu".into()]));
        assert!(can_take(&r, &["gpu".into(), "linux".into()]));
        assert!(!can_take(&r, &["gpu".into(), "arm64".into()]));
        assert!(!can_take(&r, &["backend:docker".into()]));
    }

    #[test]
    fn reasons() {
        let gpu = vec!["gpu".to_string()];
        assert_eq!(
            unroutable_reason(&gpu, "a/b", &[]).as_deref(),
            Some("no runner is registered")
        );
        assert_eq!(
            unroutable_reason(&[], "a/b", &[]).as_deref(),
            Some("no runner is registered")
        );
        let runners = [runner(&["linux"]), runner(&["gpu", "linux"])];
        assert_eq!(unroutable_reason(&gpu, "a/b", &runners), None);
        assert_eq!(unroutable_reason(&[], "a/b", &runners), None);
        let arm = vec!["gpu".to_string(), "arm64".into()];
        assert_eq!(
            unroutable_reason(&arm, "a/b", &runners).as_deref(),
            Some("no registered runner has all of the labels gpu, arm64")
        );
    }

    #[test]
    fn reasons_with_scopes() {
        let mut team = runner(&["linux"]);
        team.repos = RepoScope::Owner("team".into());
        let mut gpu_elsewhere = runner(&["gpu"]);
        gpu_elsewhere.repos = RepoScope::Repos(vec!["other/x".into()]);
        let runners = [team, gpu_elsewhere];
        assert_eq!(unroutable_reason(&[], "team/app", &runners), None);
        assert_eq!(
            unroutable_reason(&[], "acme/app", &runners).as_deref(),
            Some("no registered runner may run stages of acme/app (runner scopes)")
        );
        let gpu = vec!["gpu".to_string()];
        assert_eq!(
            unroutable_reason(&gpu, "team/app", &runners).as_deref(),
            Some("no registered runner that may run stages of team/app has all of the labels gpu")
        );
    }
}
