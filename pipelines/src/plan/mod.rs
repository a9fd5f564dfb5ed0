//! Pipeline + event → plan: which stages run (and why others do not), in what order,
//! with every plan-time value resolved.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

use crate::diagnostic::{Diagnostic, Severity, codes};
use crate::event::{Event, EventContext};
use crate::expr::{Expr, GitField, Template};
use crate::matrix::{Combination, combination_id};
use crate::model::{
    Approval, Canary, Container, KubernetesSettings, Pipeline, ScanLevel, Stage, StageKind, When,
};
use crate::when::{describe, filter_rejects, paths_match};

/// A run's blueprint. Stored with the run so it can be re-run exactly.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Plan {
    pub pipeline: String,
    pub file: String,
    pub yaml_sha256: String,
    /// The event, with manual parameter defaults applied.
    pub event: EventContext,
    /// Topological order; ties keep declaration order.
    pub stages: Vec<PlannedStage>,
    pub skipped: Vec<SkippedStage>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SkippedStage {
    pub id: String,
    pub stage: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStage {
    /// The stage name, or for a matrix expansion `test (features=full, os=linux)`. Unique.
    pub id: String,
    pub stage: String,
    pub matrix: BTreeMap<String, String>,
    /// Ids of planned stages this one waits for (all expansions of a matrix stage).
    pub needs: Vec<String>,
    pub kind: PlannedKind,
    pub image: Option<String>,
    /// Built-in variables, pipeline env, matrix values and stage env, resolved.
    pub env: BTreeMap<String, String>,
    pub steps: Vec<PlannedStep>,
    pub services: BTreeMap<String, PlannedService>,
    pub artifacts: Vec<String>,
    pub cache: Vec<String>,
    pub retry: u32,
    pub timeout_secs: Option<u64>,
    /// Env var → secret name for every secret used anywhere in the stage. Values are
    /// never in a plan: the runner injects them when the stage starts.
    pub secrets: BTreeMap<String, String>,
    /// Labels a runner must have (all of them) to run the stage; empty: any runner.
    /// Plans stored before `runs_on` existed read back as empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs_on: Vec<String>,
    /// User, working directory and resource limits of the steps' containers.
    #[serde(default, skip_serializing_if = "Container::is_default")]
    pub container: Container,
    /// Pod settings from `kubernetes:` (node selector, tolerations, service account
    /// with the position of its key). Plans stored before it existed read back as empty.
    #[serde(default, skip_serializing_if = "KubernetesSettings::is_default")]
    pub kubernetes: KubernetesSettings,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlannedKind {
    Run,
    Scan {
        sarif: Vec<String>,
        fail_on: ScanLevel,
    },
    Image {
        dockerfile: String,
        context: String,
        push: Option<String>,
        registry_secret: Option<String>,
        build_args: BTreeMap<String, String>,
        target: Option<String>,
    },
    Deploy {
        environment: String,
        approval: Option<Approval>,
        canary: Option<Canary>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    /// The step's shell text; every `${{ }}` became a `${SLIPWAY_…}` variable reference.
    pub script: String,
    /// Values for those variables (plan-time ones) plus the step's own env.
    pub env: BTreeMap<String, String>,
    pub timeout_secs: Option<u64>,
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedService {
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("pipeline not triggered: {reason}")]
    NotTriggered { reason: String },
    #[error("missing required parameter `{name}`")]
    MissingParam { name: String },
    #[error("unknown parameter `{name}`")]
    UnknownParam { name: String },
    #[error("invalid value `{value}` for parameter `{name}` (allowed: {})", options.join(", "))]
    BadParam {
        name: String,
        value: String,
        options: Vec<String>,
    },
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;

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

fn check_trigger(p: &Pipeline, ev: &mut EventContext) -> Result<()> {
    let t = &p.triggers;
    let not = |reason: String| Err(PlanError::NotTriggered { reason });
    match ev.event {
        Event::Push => {
            let Some(push) = &t.push else {
                return not("the pipeline has no `on.push` trigger".into());
            };
            if let Some(f) = &push.branches {
                match &ev.branch {
                    None => return not("on.push.branches: the push has no branch".into()),
                    Some(b) => {
                        if let Some(r) = filter_rejects(f, b) {
                            return not(format!("on.push.branches: {r}"));
                        }
                    }
                }
            }
            if let Some(f) = &push.paths
                && !paths_match(f, ev.changed_paths.as_deref())
            {
                return not(format!(
                    "on.push.paths: no changed path matches {}",
                    describe(f)
                ));
            }
        }
        Event::PullRequest => {
            let Some(pr) = &t.pull_request else {
                return not("the pipeline has no `on.pull_request` trigger".into());
            };
            if let Some(f) = &pr.branches {
                match &ev.branch {
                    None => {
                        return not(
                            "on.pull_request.branches: the pull request has no target branch"
                                .into(),
                        );
                    }
                    Some(b) => {
                        if let Some(r) = filter_rejects(f, b) {
                            return not(format!("on.pull_request.branches: {r}"));
                        }
                    }
                }
            }
            if let Some(f) = &pr.paths
                && !paths_match(f, ev.changed_paths.as_deref())
            {
                return not(format!(
                    "on.pull_request.paths: no changed path matches {}",
                    describe(f)
                ));
            }
        }
        Event::Tag => {
            let Some(tag) = &ev.tag else {
                return not("tag event without a tag".into());
            };
            let via_tag = t.tag.as_ref().map(|tt| filter_rejects(&tt.patterns, tag));
            let via_push = t
                .push
                .as_ref()
                .and_then(|p| p.tags.as_ref())
                .map(|f| filter_rejects(f, tag));
            match (via_tag, via_push) {
                (Some(None), _) | (_, Some(None)) => {}
                (Some(Some(r)), _) => return not(format!("on.tag: {r}")),
                (None, Some(Some(r))) => return not(format!("on.push.tags: {r}")),
                (None, None) => return not("the pipeline has no `on.tag` trigger".into()),
            }
        }
        Event::Cron => {
            let Some(name) = &ev.cron else {
                return not("cron event without a schedule name".into());
            };
            if !t.cron.contains_key(name) {
                return not(format!("no schedule `{name}` in `on.cron`"));
            }
        }
        Event::Manual => {
            let Some(manual) = &t.manual else {
                return not("the pipeline has no `on.manual` trigger".into());
            };
            if let Some(name) = ev.params.keys().find(|k| !manual.params.contains_key(*k)) {
                return Err(PlanError::UnknownParam { name: name.clone() });
            }
            for (name, param) in &manual.params {
                match ev.params.get(name) {
                    Some(value) => {
                        if !param.options.is_empty() && !param.options.contains(value) {
                            return Err(PlanError::BadParam {
                                name: name.clone(),
                                value: value.clone(),
                                options: param.options.clone(),
                            });
                        }
                    }
                    None => match &param.default {
                        Some(d) => {
                            ev.params.insert(name.clone(), d.clone());
                        }
                        None if param.required => {
                            return Err(PlanError::MissingParam { name: name.clone() });
                        }
                        None => {}
                    },
                }
            }
        }
    }
    Ok(())
}

fn when_rejects(when: &When, ev: &EventContext) -> Option<String> {
    if let Some(events) = &when.event
        && !events.contains(&ev.event)
    {
        let names: Vec<&str> = events.iter().map(|e| e.as_str()).collect();
        return Some(format!(
            "when.event: `{}` is not one of {}",
            ev.event,
            names.join(", ")
        ));
    }
    if let Some(f) = &when.branch {
        match &ev.branch {
            None => return Some(format!("when.branch: a {} event has no branch", ev.event)),
            Some(b) => {
                if let Some(r) = filter_rejects(f, b) {
                    return Some(format!("when.branch: {r}"));
                }
            }
        }
    }
    if let Some(f) = &when.tag {
        match &ev.tag {
            None => return Some(format!("when.tag: a {} event has no tag", ev.event)),
            Some(t) => {
                if let Some(r) = filter_rejects(f, t) {
                    return Some(format!("when.tag: {r}"));
                }
            }
        }
    }
    if let Some(f) = &when.paths
        && !paths_match(f, ev.changed_paths.as_deref())
    {
        return Some(format!(
            "when.paths: no changed path matches {}",
            describe(f)
        ));
    }
    None
}

struct Values<'a> {
    ev: &'a EventContext,
    pipeline: &'a Pipeline,
}

impl Values<'_> {
    /// The value of an expression known when planning; `None` for secrets and run-time values.
    fn get(&self, e: &Expr, combo: &Combination) -> Option<String> {
        let ev = self.ev;
        let opt = |o: &Option<String>| o.clone().unwrap_or_default();
        Some(match e {
            Expr::Git(GitField::Sha) => ev.sha.clone(),
            Expr::Git(GitField::ShortSha) => short_sha(&ev.sha),
            Expr::Git(GitField::Branch) => opt(&ev.branch),
            Expr::Git(GitField::Tag) => opt(&ev.tag),
            Expr::Git(GitField::Ref) => git_ref(ev),
            Expr::Git(GitField::Message) => opt(&ev.message),
            Expr::Git(GitField::Author) => opt(&ev.author),
            Expr::Event => ev.event.as_str().to_string(),
            Expr::Repo => opt(&ev.repo),
            Expr::Matrix(k) => combo.get(k).cloned().unwrap_or_default(),
            Expr::Param(p) => ev
                .params
                .get(p)
                .cloned()
                .or_else(|| {
                    self.pipeline
                        .triggers
                        .manual
                        .as_ref()
                        .and_then(|m| m.params.get(p))
                        .and_then(|p| p.default.clone())
                })
                .unwrap_or_default(),
            Expr::Secret(_) | Expr::StageOutput { .. } | Expr::Run(_) => return None,
        })
    }

    fn text(&self, t: &Template, combo: &Combination) -> String {
        t.render(|e| self.get(e, combo).unwrap_or_default())
    }

    /// Renders env values into `env`; a value that is a secret goes into `secrets` instead.
    fn env_into(
        &self,
        src: &BTreeMap<String, Template>,
        combo: &Combination,
        env: &mut BTreeMap<String, String>,
        secrets: &mut BTreeMap<String, String>,
    ) {
        for (k, t) in src {
            if let Some(Expr::Secret(name)) = t.as_single_expr() {
                env.remove(k);
                secrets.insert(k.clone(), name.clone());
            } else {
                secrets.remove(k);
                env.insert(k.clone(), self.text(t, combo));
            }
        }
    }
}

fn short_sha(sha: &str) -> String {
    sha.chars().take(7).collect()
}

fn git_ref(ev: &EventContext) -> String {
    match (&ev.tag, &ev.branch) {
        (Some(t), _) if ev.event == Event::Tag => format!("refs/tags/{t}"),
        _ if ev.event == Event::PullRequest => ev
            .source_branch
            .as_ref()
            .or(ev.branch.as_ref())
            .map(|b| format!("refs/heads/{b}"))
            .unwrap_or_default(),
        (_, Some(b)) => format!("refs/heads/{b}"),
        (Some(t), None) => format!("refs/tags/{t}"),
        (None, None) => String::new(),
    }
}

fn plan_stage(
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
            canary,
        } => PlannedKind::Deploy {
            environment: environment.clone(),
            approval: approval.clone(),
            canary: canary.clone(),
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

#[cfg(test)]
mod tests {
    use super::*;

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
