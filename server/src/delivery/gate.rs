//! The rules of an environment's gate, pure: what a deploy stage needs before it may
//! start (the environment's rules, raised — never lowered — by the YAML's `approval:`),
//! which refs may deploy, who may vote, and what a deployment's state means for its
//! stage. The store keeps the rows; these functions decide.

use serde::{Deserialize, Serialize};

use crate::store::{Event, Role, Run, StageStatus, UserId};

/// How an environment takes a deployment while another one is waiting or running.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Concurrency {
    /// The newer deployment waits until the environment is free.
    #[default]
    Queue,
    /// The newer deployment supersedes the ones still waiting at the gate (one that
    /// has started is never interrupted).
    Supersede,
}

impl Concurrency {
    pub fn as_str(self) -> &'static str {
        match self {
            Concurrency::Queue => "queue",
            Concurrency::Supersede => "supersede",
        }
    }
}

impl std::str::FromStr for Concurrency {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "queue" => Ok(Concurrency::Queue),
            "supersede" => Ok(Concurrency::Supersede),
            other => Err(format!("`{other}` is not queue or supersede")),
        }
    }
}

/// An environment's protection, as an admin set it on the server.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct EnvironmentRules {
    /// Deployments need `required_approvals` eligible approvals.
    pub protected: bool,
    pub required_approvals: u32,
    /// Roles (at least) whose members may approve.
    pub approver_roles: Vec<Role>,
    /// Users who may approve whatever their role.
    pub approver_users: Vec<String>,
    /// Whether the run's triggerer, pusher or linked commit author may approve it.
    pub allow_self_approval: bool,
    /// Branch patterns (`main`, `release/*`) and tag patterns (`tag:v*`) that may
    /// deploy here; empty: any branch or tag.
    pub refs: Vec<String>,
    /// Milliseconds a deployment waits after its gate opens, approvals or not.
    pub wait_timer_ms: i64,
    /// Milliseconds after which a deployment still missing approvals is rejected.
    pub approval_timeout_ms: Option<i64>,
    pub concurrency: Concurrency,
    /// A newer push to the branch supersedes a pending approval request.
    pub supersede_on_push: bool,
}

impl Default for EnvironmentRules {
    /// An environment nobody configured: unprotected, any ref, one at a time.
    fn default() -> Self {
        EnvironmentRules {
            protected: false,
            required_approvals: 1,
            approver_roles: Vec::new(),
            approver_users: Vec::new(),
            allow_self_approval: false,
            refs: Vec::new(),
            wait_timer_ms: 0,
            approval_timeout_ms: None,
            concurrency: Concurrency::Queue,
            supersede_on_push: true,
        }
    }
}

/// What one deployment's gate applies, fixed when it opens (a later rule change does
/// not move the bar under votes already cast).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct GateRules {
    /// Distinct eligible approvals needed (0: none).
    pub required: u32,
    pub roles: Vec<Role>,
    pub users: Vec<String>,
    /// The YAML's `approval.role`: every voter needs at least it, on top of the rest.
    pub yaml_role: Option<Role>,
    pub allow_self_approval: bool,
    pub wait_timer_ms: i64,
    pub approval_timeout_ms: Option<i64>,
    pub concurrency: Concurrency,
    pub supersede_on_push: bool,
}

/// The YAML's `approval:` of a deploy stage.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct YamlApproval {
    pub role: Role,
    pub count: u32,
}

/// The gate a deployment gets, and — when the YAML asked for less than the
/// environment requires — the refusal to lower it, for the audit log.
pub fn gate_rules(
    env: &EnvironmentRules,
    yaml: Option<&YamlApproval>,
    environment: &str,
) -> (GateRules, Option<String>) {
    let server_n = if env.protected {
        env.required_approvals
    } else {
        0
    };
    let mut lowered = None;
    if let Some(y) = yaml
        && env.protected
        && y.count < server_n
    {
        lowered = Some(format!(
            "the pipeline asks for {} approval(s), but environment `{environment}` requires \
             {server_n}: a pipeline can only raise the bar, so {server_n} apply",
            y.count
        ));
    }
    let required = server_n.max(yaml.map_or(0, |y| y.count));
    let (roles, users) = if env.protected {
        (env.approver_roles.clone(), env.approver_users.clone())
    } else {
        (Vec::new(), Vec::new())
    };
    (
        GateRules {
            required,
            roles,
            users,
            yaml_role: yaml.map(|y| y.role),
            allow_self_approval: env.allow_self_approval,
            wait_timer_ms: env.wait_timer_ms,
            approval_timeout_ms: env.approval_timeout_ms.filter(|_| required > 0),
            concurrency: env.concurrency,
            supersede_on_push: env.supersede_on_push,
        },
        lowered,
    )
}

/// `Err(why)` when the run's ref may not deploy to an environment with these
/// patterns. Pull-request runs never match a pattern: only a pushed branch or tag can.
pub fn ref_allowed(patterns: &[String], run: &Run, environment: &str) -> Result<(), String> {
    ref_allowed_for(
        patterns,
        run.event,
        run.branch.as_deref(),
        run.tag.as_deref(),
        environment,
    )
}

fn ref_allowed_for(
    patterns: &[String],
    event: Event,
    branch: Option<&str>,
    tag: Option<&str>,
    environment: &str,
) -> Result<(), String> {
    if patterns.is_empty() {
        return Ok(());
    }
    let (what, name) = match (event, tag, branch) {
        (Event::Tag, Some(tag), _) => ("tag", format!("tag:{tag}")),
        (Event::PullRequest, _, _) => {
            return Err(format!(
                "pull-request runs may not deploy to `{environment}` (allowed: {})",
                patterns.join(", ")
            ));
        }
        (_, _, Some(branch)) => ("branch", branch.to_string()),
        _ => {
            return Err(format!(
                "this run has no branch or tag, and `{environment}` only takes {}",
                patterns.join(", ")
            ));
        }
    };
    if patterns.iter().any(|p| pipelines::ref_matches(p, &name)) {
        return Ok(());
    }
    let shown = name.strip_prefix("tag:").unwrap_or(&name);
    Err(format!(
        "{what} `{shown}` may not deploy to `{environment}` (allowed: {})",
        patterns.join(", ")
    ))
}

/// A person about to vote: their id, name and role on the repository.
#[derive(Debug, Clone, Copy)]
pub struct Voter<'a> {
    pub id: UserId,
    pub name: &'a str,
    pub role: Option<Role>,
}

/// The users a run is attributed to, as far as linked identities tell. Used only to
/// refuse self-approval, never to grant anything.
#[derive(Debug, Clone, Default)]
pub struct RunPeople {
    pub triggered_by: Option<UserId>,
    pub pusher: Option<UserId>,
    pub author: Option<UserId>,
}

/// `Err(why)` when `voter` may not vote on a gate with `rules` for a run with `people`.
pub fn may_vote(rules: &GateRules, voter: Voter, people: &RunPeople) -> Result<(), String> {
    let named = rules.users.iter().any(|u| u == voter.name);
    let by_role = |min: Role| voter.role.is_some_and(|r| r >= min);
    let eligible = if rules.roles.is_empty() && rules.users.is_empty() {
        by_role(Role::ReleaseManager)
    } else {
        named || rules.roles.iter().any(|&r| by_role(r))
    };
    if !eligible {
        let mut who: Vec<String> = rules
            .roles
            .iter()
            .map(|r| format!("{} (or higher)", r.as_str()))
            .collect();
        who.extend(rules.users.iter().map(|u| format!("user `{u}`")));
        if who.is_empty() {
            who.push("release-manager (or higher)".into());
        }
        return Err(format!(
            "`{}` may not approve this deployment: approvers are {}",
            voter.name,
            who.join(", ")
        ));
    }
    if let Some(min) = rules.yaml_role
        && !by_role(min)
    {
        return Err(format!(
            "`{}` may not approve this deployment: the pipeline's `approval:` asks for {} (or higher)",
            voter.name,
            min.as_str()
        ));
    }
    if !rules.allow_self_approval {
        let own = [
            (people.triggered_by, "triggered"),
            (people.pusher, "pushed"),
            (people.author, "authored"),
        ];
        if let Some((_, did)) = own.iter().find(|(who, _)| *who == Some(voter.id)) {
            return Err(format!(
                "`{}` {did} this run and may not approve it: the environment does not allow self-approval",
                voter.name
            ));
        }
    }
    Ok(())
}

/// A deployment's state (the `deployments.state` column).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum GateState {
    /// Waiting for approvals.
    Pending,
    /// Approved (or needing none); the stage starts once the wait timer has run and
    /// the environment is free.
    Approved,
    Rejected,
    TimedOut,
    /// A newer push or a newer deployment took its place.
    Superseded,
    /// The run's ref may not deploy to the environment.
    Refused,
    /// The run ended (cancelled, failed elsewhere) before the gate opened.
    Cancelled,
}

impl GateState {
    pub fn as_str(self) -> &'static str {
        match self {
            GateState::Pending => "pending",
            GateState::Approved => "approved",
            GateState::Rejected => "rejected",
            GateState::TimedOut => "timed_out",
            GateState::Superseded => "superseded",
            GateState::Refused => "refused",
            GateState::Cancelled => "cancelled",
        }
    }

    /// The states in which votes are still taken.
    pub fn open(self) -> bool {
        self == GateState::Pending
    }
}

impl std::str::FromStr for GateState {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Ok(match s {
            "pending" => GateState::Pending,
            "approved" => GateState::Approved,
            "rejected" => GateState::Rejected,
            "timed_out" => GateState::TimedOut,
            "superseded" => GateState::Superseded,
            "refused" => GateState::Refused,
            "cancelled" => GateState::Cancelled,
            other => return Err(format!("unknown gate state `{other}`")),
        })
    }
}

/// What a deploy stage's gate says to the run's state machine
/// ([`crate::runs::reconcile`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Gate {
    /// Not opened yet: it opens when the stage's needs have succeeded.
    Closed,
    /// Opened, waiting (approvals, wait timer, or another deployment).
    Held,
    /// The stage may start.
    Pass,
    /// The stage ends without running, with this status and reason.
    Fail(StageStatus, String),
}

/// What a deployment in `state` (with its `reason`) means for its stage: `busy_or_early`
/// when the wait timer has not run out or another deployment holds the environment.
pub fn stage_gate(state: GateState, reason: Option<&str>, busy_or_early: bool) -> Gate {
    let why = |default: &str| reason.unwrap_or(default).to_string();
    match state {
        GateState::Pending => Gate::Held,
        GateState::Approved if busy_or_early => Gate::Held,
        GateState::Approved => Gate::Pass,
        GateState::Rejected => Gate::Fail(StageStatus::Failure, why("rejected")),
        GateState::TimedOut => Gate::Fail(StageStatus::Failure, why("approval timed out")),
        GateState::Refused => Gate::Fail(StageStatus::Failure, why("refused")),
        GateState::Superseded => Gate::Fail(StageStatus::Cancelled, why("superseded")),
        GateState::Cancelled => Gate::Fail(StageStatus::Cancelled, why("cancelled")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn protected(n: u32) -> EnvironmentRules {
        EnvironmentRules {
            protected: true,
            required_approvals: n,
            ..EnvironmentRules::default()
        }
    }

    #[test]
    fn yaml_raises_the_bar_and_never_lowers_it() {
        let yaml = |count| YamlApproval {
            role: Role::ReleaseManager,
            count,
        };
        let (g, note) = gate_rules(&protected(2), Some(&yaml(3)), "production");
        assert_eq!((g.required, note), (3, None));
        let (g, note) = gate_rules(&protected(2), Some(&yaml(1)), "production");
        assert_eq!(g.required, 2);
        assert!(note.unwrap().contains("requires 2"));
        let (g, _) = gate_rules(&EnvironmentRules::default(), Some(&yaml(1)), "staging");
        assert_eq!(g.required, 1);
        let (g, _) = gate_rules(&EnvironmentRules::default(), None, "staging");
        assert_eq!((g.required, g.approval_timeout_ms), (0, None));
    }

    fn voter(id: UserId, name: &str, role: Option<Role>) -> Voter<'_> {
        Voter { id, name, role }
    }

    #[test]
    fn who_may_vote() {
        let (rules, _) = gate_rules(&protected(2), None, "production");
        let people = RunPeople {
            triggered_by: Some(1),
            pusher: Some(2),
            author: Some(3),
        };
        let rm = Some(Role::ReleaseManager);
        assert!(may_vote(&rules, voter(9, "carol", rm), &people).is_ok());
        assert!(may_vote(&rules, voter(9, "dev", Some(Role::Developer)), &people).is_err());
        assert!(may_vote(&rules, voter(9, "nobody", None), &people).is_err());
        for (id, did) in [(1, "triggered"), (2, "pushed"), (3, "authored")] {
            let e = may_vote(&rules, voter(id, "x", rm), &people).unwrap_err();
            assert!(e.contains(did), "{e}");
        }
        let mut selfish = rules.clone();
        selfish.allow_self_approval = true;
        assert!(may_vote(&selfish, voter(1, "x", rm), &people).is_ok());
        let mut named = rules.clone();
        named.users = vec!["dave".into()];
        named.roles = vec![Role::Admin];
        assert!(may_vote(&named, voter(9, "dave", Some(Role::Viewer)), &people).is_ok());
        assert!(may_vote(&named, voter(9, "carol", rm), &people).is_err());
        named.yaml_role = Some(Role::ReleaseManager);
        let e = may_vote(&named, voter(9, "dave", Some(Role::Viewer)), &people).unwrap_err();
        assert!(e.contains("approval:"), "{e}");
    }

    #[test]
    fn which_refs_may_deploy() {
        let p = vec!["main".to_string(), "release/*".into(), "tag:v*".into()];
        let ok = |e, b, t| ref_allowed_for(&p, e, b, t, "production");
        assert!(ok(Event::Push, Some("main"), None).is_ok());
        assert!(ok(Event::Push, Some("release/1.2"), None).is_ok());
        assert!(ok(Event::Push, Some("release/1/2"), None).is_err());
        assert!(ok(Event::Tag, None, Some("v1.0")).is_ok());
        assert!(ok(Event::Tag, None, Some("1.0")).is_err());
        let e = ok(Event::Push, Some("feature"), None).unwrap_err();
        assert!(
            e.contains("branch `feature` may not deploy to `production`"),
            "{e}"
        );
        assert!(ok(Event::PullRequest, Some("main"), None).is_err());
        assert!(ref_allowed_for(&[], Event::PullRequest, None, None, "x").is_ok());
    }
}
