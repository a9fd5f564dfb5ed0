//! What an untrusted run may not plan: a stage with a Kubernetes service account.

use super::planned::Plan;
use crate::diagnostic::{Diagnostic, Severity, codes};

/// What the server reports for a run that is not trusted (a repository not marked
/// trusted, or any pull request from a fork) whose plans would run a stage with a
/// `kubernetes.service_account`: one error per `service_account` key, at that key.
/// Skipped stages do not count (they never get a pod), so a deploy stage limited to
/// pushes does not break pull requests. Works on stored plans too, so that re-running a
/// plan checks the same thing.
pub fn untrusted_service_accounts(plans: &[Plan]) -> Vec<Diagnostic> {
    let mut out: Vec<Diagnostic> = Vec::new();
    for plan in plans {
        for stage in &plan.stages {
            let Some(sa) = &stage.kubernetes.service_account else {
                continue;
            };
            // A matrix stage plans once per combination; its key is reported once.
            if out
                .iter()
                .any(|d| d.file == plan.file && (d.line, d.column) == (sa.line, sa.column))
            {
                continue;
            }
            out.push(Diagnostic {
                severity: Severity::Error,
                code: codes::UNTRUSTED_SERVICE_ACCOUNT.into(),
                file: plan.file.clone(),
                line: sa.line,
                column: sa.column,
                message: format!(
                    "stage `{}` sets `service_account: {}`, but this run is not trusted: the \
                     repository must be marked trusted for its runs to use a service account, \
                     and pull requests from forks never get one",
                    stage.stage, sa.name
                ),
                hint: Some(
                    "mark the repository trusted (`slipway repo add --trusted`, or \
                     `\"trusted\": true` through the repository API), or remove \
                     `service_account`"
                        .into(),
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::event::{Event, EventContext};
    use crate::plan::plan;
    fn plans(yaml: &str, event: Event) -> Vec<Plan> {
        let pipeline = crate::parse(".slipway/deploy.yml", yaml).expect("valid");
        let ctx = EventContext {
            event,
            branch: Some("main".into()),
            sha: "0".repeat(40),
            ..EventContext::default()
        };
        vec![plan(&pipeline, &ctx).expect("plan")]
    }

    const YAML: &str = "stages:
  build:
    matrix: { os: [a, b] }
    kubernetes: { service_account: builder }
    steps: [make]
  deploy:
    kind: deploy
    environment: prod
    when: { event: push }
    kubernetes:
      service_account: deployer
    steps: [./deploy.sh]
";

    #[test]
    fn service_accounts_are_reported_once_per_key_and_only_for_planned_stages() {
        let push = untrusted_service_accounts(&plans(YAML, Event::Push));
        let at: Vec<(&str, usize, usize)> = push
            .iter()
            .map(|d| (d.file.as_str(), d.line, d.column))
            .collect();
        assert_eq!(
            at,
            [
                (".slipway/deploy.yml", 4, 19),
                (".slipway/deploy.yml", 11, 7)
            ]
        );
        assert!(
            push.iter()
                .all(|d| d.code == codes::UNTRUSTED_SERVICE_ACCOUNT)
        );
        assert!(
            push[1].message.contains("`service_account: deployer`"),
            "{}",
            push[1]
        );
        // A pull request skips the deploy stage: only the build's account is reported.
        let pr = untrusted_service_accounts(&plans(YAML, Event::PullRequest));
        assert_eq!(pr.len(), 1);
        assert_eq!(pr[0].line, 4);
        assert!(
            untrusted_service_accounts(&plans("stages: { a: { steps: [x] } }\n", Event::Push))
                .is_empty()
        );
    }
}
