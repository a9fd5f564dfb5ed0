//! `stages:` — each stage and its kind-specific keys; its steps (`steps`), services
//! (`services`) and matrix (`matrix`) are read in modules of their own.

use std::collections::BTreeSet;

use marked_yaml::Node;

use super::backend::check_backend;
use super::image::read_image;
use super::matrix::read_matrix;
use super::paths::workspace_globs;
use super::runs_on::read_runs_on;
use super::services::read_services;
use super::steps::read_steps;
use super::{Allow, Ctx, Field, Scope, check_name, is_null, keys};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::event::Event;
use crate::matrix::Combination;
use crate::model::{ScanLevel, Stage, StageKind, When};
use crate::validate::check_needs;

pub(crate) fn read_stages(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    params: &BTreeSet<String>,
) -> Vec<Stage> {
    let Some(list) = ctx.mapping(f.value, f.value_pos(), "`stages`") else {
        return Vec::new();
    };
    if list.is_empty() {
        ctx.error(
            codes::INVALID_VALUE,
            f.pos,
            "`stages` is empty",
            Some("add at least one stage".into()),
        );
    }
    let declared: Vec<&str> = list.iter().map(|e| e.key).collect();
    let mut stages = Vec::new();
    let mut need_refs = Vec::new();
    for e in list {
        if !check_name(ctx, e.key, e.pos, "stage name", false) {
            continue;
        }
        if let Some((stage, needs)) = read_stage(ctx, e, params) {
            need_refs.push((stage.name.clone(), needs));
            stages.push(stage);
        }
    }
    check_needs(ctx, &declared, &need_refs);
    stages
}

fn read_stage(
    ctx: &mut Ctx<'_>,
    e: Field<'_>,
    params: &BTreeSet<String>,
) -> Option<(Stage, Vec<(String, Pos)>)> {
    let name = e.key;
    let what = format!("stage `{name}`");
    let list = ctx.mapping(e.value, e.value_pos(), &what)?;

    // The kind decides which other keys are valid, so read it first.
    let kind_name: Option<String> = match list.iter().find(|f| f.key == "kind") {
        None => Some("run".into()),
        Some(kf) => {
            let k = ctx.string(*kf, &what);
            match k {
                Some(k) if keys::STAGE_KINDS.contains(&k.as_str()) => Some(k),
                Some(k) => {
                    ctx.error(
                        codes::UNKNOWN_STAGE_KIND,
                        kf.value_pos(),
                        format!("unknown stage kind `{k}` in {what}"),
                        did_you_mean(&k, keys::STAGE_KINDS.iter().copied())
                            .or_else(|| Some("kinds are run, scan, image and deploy".into())),
                    );
                    None
                }
                None => None,
            }
        }
    };
    let kind_keys: &[&str] = match kind_name.as_deref() {
        Some("scan") => keys::STAGE_SCAN,
        Some("image") => keys::STAGE_IMAGE,
        Some("deploy") => keys::STAGE_DEPLOY,
        _ => &[],
    };
    let mut allowed: Vec<&str> = keys::STAGE_COMMON.to_vec();
    allowed.extend_from_slice(kind_keys);
    // A deploy stage with a rollout is driven by the server: no runner, so no runner keys.
    let rollout = kind_name.as_deref() == Some("deploy")
        && super::deploy::is_rollout(&list.iter().map(|f| f.key).collect::<Vec<_>>());
    let mut kept = Vec::new();
    for f in super::kubernetes::without_restricted(ctx, list, &what) {
        let other_kinds: Vec<&str> = [
            ("scan", keys::STAGE_SCAN),
            ("image", keys::STAGE_IMAGE),
            ("deploy", keys::STAGE_DEPLOY),
        ]
        .into_iter()
        .filter(|(_, ks)| ks.contains(&f.key) && !kind_keys.contains(&f.key))
        .map(|(k, _)| k)
        .collect();
        match other_kinds.as_slice() {
            // With an unknown kind we cannot tell which keys are wrong; say nothing.
            [_, ..] if kind_name.is_none() => {}
            [_, ..] => {
                let kinds = other_kinds
                    .iter()
                    .map(|k| format!("`kind: {k}`"))
                    .collect::<Vec<_>>()
                    .join(" or ");
                ctx.error(
                    codes::UNKNOWN_KEY,
                    f.pos,
                    format!(
                        "`{}` is only valid in {kinds} stages ({what} is `kind: {}`)",
                        f.key,
                        kind_name.as_deref().unwrap_or("run")
                    ),
                    Some(format!("set {kinds} or remove `{}`", f.key)),
                );
            }
            [] if rollout && keys::RUNNER_ONLY.contains(&f.key) => {
                refuse_in_rollout(ctx, &f, &what);
            }
            [] => kept.push(f),
        }
    }
    let fields = ctx.known(kept, e.pos, &what, &allowed);

    let mut needs: Vec<(String, Pos)> = Vec::new();
    if let Some(f) = fields.get("needs") {
        for (n, pos) in ctx.strings(f, &what).unwrap_or_default() {
            if !needs.iter().any(|(m, _)| *m == n) {
                needs.push((n, pos));
            }
        }
    }
    let need_names: Vec<String> = needs.iter().map(|(n, _)| n.clone()).collect();

    let (matrix, matrix_keys) = match fields.get("matrix") {
        Some(f) => match read_matrix(ctx, f, &what) {
            Some((combos, keys)) => (Some(combos), Some(keys)),
            None => (None, None),
        },
        None => (None, None),
    };
    // A broken matrix was reported already; accept any key so expressions do not pile on.
    let broken_matrix = fields.get("matrix").is_some() && matrix.is_none();
    let scope = Scope {
        matrix: matrix_keys.as_ref(),
        any_matrix_key: broken_matrix,
        params,
        needs: Some(&need_names),
        stage: Some(name),
    };

    // In a rollout stage `image` is the new version, read with the rollout.
    let image = fields.get("image").filter(|_| !rollout).and_then(|f| {
        ctx.template(
            f.value,
            f.value_pos(),
            &format!("`image` in {what}"),
            &scope,
            Allow::Text,
        )
    });
    let env = fields
        .get("env")
        .map(|f| ctx.env_map(f, &what, &scope, Allow::Env))
        .unwrap_or_default();
    let when = fields
        .get("when")
        .map(|f| read_when(ctx, f, &what))
        .unwrap_or_default();
    let steps = fields
        .get("steps")
        .map(|f| read_steps(ctx, f, &what, &scope))
        .unwrap_or_default();
    let services = fields
        .get("services")
        .map(|f| read_services(ctx, f, &what, &scope))
        .unwrap_or_default();
    let artifacts = fields
        .get("artifacts")
        .map(|f| workspace_globs(ctx, f, &what))
        .unwrap_or_default();
    let allow_secrets_in_artifacts = fields
        .get("allow_secrets_in_artifacts")
        .and_then(|f| ctx.boolean(f, &what))
        .unwrap_or(false);
    let cache = fields
        .get("cache")
        .map(|f| workspace_globs(ctx, f, &what))
        .unwrap_or_default();
    let retry = fields.get("retry").map_or(0, |f| read_retry(ctx, f, &what));
    let timeout_secs = fields.get("timeout").and_then(|f| ctx.duration(f, &what));
    // One empty combination for a stage without a matrix; none for a broken one.
    let no_matrix = [Combination::new()];
    let combos: Option<&[Combination]> = match (&matrix, broken_matrix) {
        (Some(m), _) => Some(m),
        (None, false) => Some(&no_matrix),
        (None, true) => None,
    };
    let runs_on = fields
        .get("runs_on")
        .map(|f| read_runs_on(ctx, f, &what, &scope, kind_name.as_deref(), combos))
        .unwrap_or_default();
    let container = super::container::read_container(ctx, &fields, &what);
    let kubernetes = fields
        .get("kubernetes")
        .map(|f| super::kubernetes::read_kubernetes(ctx, f, &what))
        .unwrap_or_default();

    let kind = match kind_name.as_deref() {
        Some("scan") => read_scan(ctx, &fields, &what),
        Some("image") => read_image(ctx, &fields, &what, &scope, combos),
        Some("deploy") => super::deploy::read_deploy(ctx, &fields, &what, &scope),
        _ => StageKind::Run,
    };
    if kind_name.as_deref() == Some("deploy")
        && !rollout
        && steps.is_empty()
        && fields.get("steps").is_none_or(|f| {
            is_null(f.value) || matches!(f.value, Node::Sequence(s) if s.is_empty())
        })
    {
        ctx.error(
            codes::NO_STEPS,
            e.pos,
            format!("{what} deploys nothing: it has neither `steps` nor a `strategy`"),
            Some(
                "add `steps:` with the commands that deploy (they get the environment's \
                 credentials), or `target`, `image` and a `strategy:` for the server to \
                 roll out"
                    .into(),
            ),
        );
    }
    if kind_name.as_deref() == Some("run")
        && steps.is_empty()
        && fields.get("steps").is_none_or(|f| {
            is_null(f.value) || matches!(f.value, Node::Sequence(s) if s.is_empty())
        })
    {
        ctx.error(
            codes::NO_STEPS,
            e.pos,
            format!("{what} has no steps"),
            Some(
                "add `steps:` with at least one command, or set `kind:` to scan, image or deploy"
                    .into(),
            ),
        );
    }

    let stage = Stage {
        name: name.to_string(),
        kind,
        image,
        needs: need_names,
        matrix,
        when,
        steps,
        services,
        artifacts,
        allow_secrets_in_artifacts,
        cache,
        retry,
        timeout_secs,
        env,
        runs_on,
        container,
        kubernetes,
    };
    check_backend(ctx, &stage, &fields, e.pos, &what);
    Some((stage, needs))
}

/// A runner key in a stage that no runner runs.
fn refuse_in_rollout(ctx: &mut Ctx<'_>, f: &Field<'_>, what: &str) {
    let hint = match f.key {
        "steps" => "put scripts in a stage before it (and add that stage to `needs`), or \
                    remove `strategy:`/`canary:` to deploy with your own steps"
            .to_string(),
        "runs_on" => "remove `runs_on`: no runner takes a rollout stage".into(),
        "matrix" => "remove `matrix`: every combination would roll out the same Deployment; \
                     write one deploy stage per target"
            .into(),
        "retry" => "remove `retry`: a failed rollout has rolled back; start it again once \
                    the cause is fixed"
            .into(),
        key => format!(
            "remove `{key}`: it configures the container a runner runs steps in; put \
             scripts in a stage before it"
        ),
    };
    ctx.error(
        codes::UNKNOWN_KEY,
        f.pos,
        format!(
            "`{}` cannot be used in {what}: a rollout is driven by the server's rollout \
             controller, not by a runner",
            f.key
        ),
        Some(hint),
    );
}

fn read_retry(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> u32 {
    let n = match f.value {
        Node::Scalar(s) => s.as_str().trim().parse::<u32>().ok(),
        _ => None,
    };
    match n {
        Some(n) if n <= 5 => n,
        _ => {
            ctx.error(
                codes::INVALID_RETRY,
                f.value_pos(),
                format!("invalid `retry` in {what}: must be a whole number from 0 to 5"),
                Some("retries hide flaky failures; more than 5 is almost always a mistake".into()),
            );
            0
        }
    }
}

fn read_when(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> When {
    let mut w = When::default();
    let Some(fields) = ctx.object(f, what, keys::WHEN) else {
        return w;
    };
    let wwhat = format!("`when` of {what}");
    w.branch = fields.get("branch").and_then(|b| ctx.filter(b, &wwhat));
    w.tag = fields.get("tag").and_then(|b| ctx.filter(b, &wwhat));
    w.paths = fields.get("paths").and_then(|b| ctx.filter(b, &wwhat));
    if let Some(ev) = fields.get("event") {
        let mut events = Vec::new();
        for (name, pos) in ctx.strings(ev, &wwhat).unwrap_or_default() {
            match Event::from_name(&name) {
                Some(e) => events.push(e),
                None => super::triggers::unknown_event(ctx, &name, pos, &wwhat),
            }
        }
        w.event = Some(events);
    }
    w
}

fn read_scan(ctx: &mut Ctx<'_>, fields: &super::Fields<'_>, what: &str) -> StageKind {
    let sarif = fields
        .get("sarif")
        .map(|f| workspace_globs(ctx, f, what))
        .unwrap_or_default();
    let fail_on = match fields.get("fail_on") {
        None => ScanLevel::default(),
        Some(f) => {
            let s = ctx.string(f, what).unwrap_or_default();
            match ScanLevel::NAMES.iter().find(|(n, _)| *n == s) {
                Some((_, level)) => *level,
                None => {
                    if !s.is_empty() {
                        ctx.error(
                            codes::INVALID_VALUE,
                            f.value_pos(),
                            format!("invalid `fail_on` `{s}` in {what}"),
                            did_you_mean(&s, ScanLevel::NAMES.iter().map(|(n, _)| *n)).or_else(
                                || {
                                    Some(
                                        "use one of none, note, low, medium, high, critical".into(),
                                    )
                                },
                            ),
                        );
                    }
                    ScanLevel::default()
                }
            }
        }
    };
    StageKind::Scan { sarif, fail_on }
}
