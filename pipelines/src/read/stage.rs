//! `stages:` — each stage, its steps, matrix, services and kind-specific keys.

use std::collections::{BTreeMap, BTreeSet};

use marked_yaml::Node;

use super::backend::check_backend;
use super::image::read_image;
use super::paths::workspace_globs;
use super::runs_on::read_runs_on;
use super::{Allow, Ctx, Field, Scope, check_name, is_null, keys};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::event::Event;
use crate::matrix::{Combination, MATRIX_LIMIT, MatrixSpec, expand};
use crate::model::{ScanLevel, Service, Stage, StageKind, Step, When};
use crate::validate::check_needs;
use crate::yaml::node_pos;

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
    let mut kept = Vec::new();
    for f in super::kubernetes::without_restricted(ctx, list, &what) {
        let other_kind = [
            ("scan", keys::STAGE_SCAN),
            ("image", keys::STAGE_IMAGE),
            ("deploy", keys::STAGE_DEPLOY),
        ]
        .into_iter()
        .find(|(_, ks)| ks.contains(&f.key) && !kind_keys.contains(&f.key));
        match other_kind {
            // With an unknown kind we cannot tell which keys are wrong; say nothing.
            Some(_) if kind_name.is_none() => {}
            Some((k, _)) => ctx.error(
                codes::UNKNOWN_KEY,
                f.pos,
                format!(
                    "`{}` is only valid in `kind: {k}` stages ({what} is `kind: {}`)",
                    f.key,
                    kind_name.as_deref().unwrap_or("run")
                ),
                Some(format!("set `kind: {k}` or remove `{}`", f.key)),
            ),
            None => kept.push(f),
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

    let image = fields.get("image").and_then(|f| {
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
        Some("deploy") => super::deploy::read_deploy(ctx, &fields, &what),
        _ => StageKind::Run,
    };
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

fn read_steps(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str, scope: &Scope<'_>) -> Vec<Step> {
    let items = match f.value {
        Node::Sequence(items) => items,
        _ if is_null(f.value) => return Vec::new(),
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`steps` in {what}"),
                "a list",
                f.value,
            );
            return Vec::new();
        }
    };
    let mut steps: Vec<Step> = Vec::new();
    let mut names: Vec<(String, Pos)> = Vec::new();
    for (i, item) in items.iter().enumerate() {
        let n = i + 1;
        let default_name = format!("step {n}");
        let swhat = format!("step {n} of {what}");
        let item_pos = if is_null(item) { f.pos } else { node_pos(item) };
        let step = match item {
            Node::Scalar(_) if !is_null(item) => ctx
                .template(item, item_pos, &swhat, scope, Allow::Script)
                .map(|run| Step {
                    name: default_name.clone(),
                    run,
                    env: BTreeMap::new(),
                    timeout_secs: None,
                }),
            Node::Mapping(m) => {
                let list = ctx.entries(m);
                let sf = ctx.known(list, item_pos, &swhat, keys::STEP);
                let name = sf.get("name").and_then(|nf| {
                    let s = ctx.string(nf, &swhat)?;
                    Some((s, nf.value_pos()))
                });
                let swhat = match &name {
                    Some((s, _)) => format!("step `{s}` of {what}"),
                    None => swhat.clone(),
                };
                let env = sf
                    .get("env")
                    .map(|ef| ctx.env_map(ef, &swhat, scope, Allow::Env))
                    .unwrap_or_default();
                let timeout_secs = sf.get("timeout").and_then(|tf| ctx.duration(tf, &swhat));
                let run = match sf.get("run") {
                    Some(rf) => match rf.value {
                        Node::Scalar(_) if !is_null(rf.value) => ctx.template(
                            rf.value,
                            rf.value_pos(),
                            &format!("`run` of {swhat}"),
                            scope,
                            Allow::Script,
                        ),
                        _ => {
                            ctx.wrong_type(
                                rf.value_pos(),
                                &format!("`run` in {swhat}"),
                                "a string (the commands to run)",
                                rf.value,
                            );
                            None
                        }
                    },
                    None => {
                        ctx.missing(
                            item_pos,
                            &swhat,
                            "run",
                            Some("`run` holds the shell commands of the step".into()),
                        );
                        None
                    }
                };
                if let Some((s, pos)) = &name {
                    if let Some((_, first)) = names.iter().find(|(m, _)| m == s) {
                        ctx.error(
                            codes::DUPLICATE_STEP,
                            *pos,
                            format!("duplicate step name `{s}` in {what}"),
                            Some(format!(
                                "the first step named `{s}` is at line {}",
                                first.line
                            )),
                        );
                    }
                    names.push((s.clone(), *pos));
                }
                run.map(|run| Step {
                    name: name.map_or(default_name, |(s, _)| s),
                    run,
                    env,
                    timeout_secs,
                })
            }
            _ => {
                ctx.wrong_type(item_pos, &swhat, "a command or a mapping with `run`", item);
                None
            }
        };
        if let Some(s) = step {
            if s.run.source.trim().is_empty() {
                ctx.error(
                    codes::INVALID_VALUE,
                    item_pos,
                    format!("{swhat} has an empty `run`"),
                    None,
                );
            }
            steps.push(s);
        }
    }
    steps
}

fn read_services(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
) -> BTreeMap<String, Service> {
    let mut out = BTreeMap::new();
    let Some(list) = ctx.mapping(f.value, f.value_pos(), &format!("`services` in {what}")) else {
        return out;
    };
    for e in list {
        if !check_name(ctx, e.key, e.pos, "service name", true) {
            continue;
        }
        let swhat = format!("service `{}` of {what}", e.key);
        let Some(list) = ctx.mapping(e.value, e.value_pos(), &format!("`{}` in {what}", e.key))
        else {
            continue;
        };
        let list = super::kubernetes::without_restricted(ctx, list, &swhat);
        let sf = ctx.known(list, e.pos, what, keys::SERVICE);
        let env = sf
            .get("env")
            .map(|ef| ctx.env_map(ef, &swhat, scope, Allow::Text))
            .unwrap_or_default();
        let command = sf.get("command").and_then(|cf| match cf.value {
            Node::Sequence(_) => ctx
                .strings(cf, &swhat)
                .map(|v| v.into_iter().map(|(s, _)| s).collect()),
            _ => {
                ctx.wrong_type(
                    cf.value_pos(),
                    &format!("`command` in {swhat}"),
                    "a list of arguments",
                    cf.value,
                );
                None
            }
        });
        let image = match sf.get("image") {
            Some(imf) => ctx.template(
                imf.value,
                imf.value_pos(),
                &format!("`image` in {swhat}"),
                scope,
                Allow::Text,
            ),
            None => {
                ctx.missing(e.pos, &swhat, "image", None);
                None
            }
        };
        if let Some(image) = image {
            out.insert(
                e.key.to_string(),
                Service {
                    image,
                    env,
                    command,
                },
            );
        }
    }
    out
}

fn read_matrix(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
) -> Option<(Vec<Combination>, BTreeSet<String>)> {
    let list = ctx.mapping(f.value, f.value_pos(), &format!("`matrix` in {what}"))?;
    let mut spec = MatrixSpec::default();
    let mut ok = true;
    let mut exclude_refs: Vec<(String, Pos)> = Vec::new();
    for e in &list {
        match e.key {
            "include" | "exclude" => {
                let Some(combos) = read_combinations(ctx, *e, what, &mut exclude_refs) else {
                    ok = false;
                    continue;
                };
                if e.key == "include" {
                    spec.include = combos;
                } else {
                    spec.exclude = combos;
                }
            }
            key => {
                if !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
                    || key.is_empty()
                {
                    ctx.error(
                        codes::INVALID_MATRIX,
                        e.pos,
                        format!("invalid matrix key `{key}` in {what}"),
                        Some("use letters, digits, `_` and `-`".into()),
                    );
                    ok = false;
                    continue;
                }
                let values = match e.value {
                    Node::Sequence(items) => {
                        let mut vs = Vec::new();
                        for item in items.iter() {
                            match item {
                                Node::Scalar(s) => vs.push(s.as_str().to_string()),
                                _ => {
                                    ctx.wrong_type(
                                        node_pos(item),
                                        &format!("each value of matrix key `{key}` in {what}"),
                                        "a string, number or boolean",
                                        item,
                                    );
                                    ok = false;
                                }
                            }
                        }
                        vs
                    }
                    _ => {
                        ctx.wrong_type(
                            e.value_pos(),
                            &format!("matrix key `{key}` in {what}"),
                            "a list of values",
                            e.value,
                        );
                        ok = false;
                        continue;
                    }
                };
                if values.is_empty() {
                    ctx.error(
                        codes::INVALID_MATRIX,
                        e.pos,
                        format!("matrix key `{key}` in {what} has no values"),
                        Some("give it at least one value, or remove it".into()),
                    );
                    ok = false;
                }
                spec.axes.push((key.to_string(), values));
            }
        }
    }
    // The remaining-`exclude` entries (collected above) must name real axes.
    let axis_names: Vec<&str> = spec.axes.iter().map(|(k, _)| k.as_str()).collect();
    for (k, pos) in &exclude_refs {
        if !axis_names.contains(&k.as_str()) {
            ctx.error(
                codes::INVALID_MATRIX,
                *pos,
                format!("`exclude` in {what} uses `{k}`, which is not a matrix key"),
                did_you_mean(k, axis_names.iter().copied()),
            );
            ok = false;
        }
    }
    if !ok {
        return None;
    }
    if spec.axes.is_empty() && spec.include.is_empty() {
        ctx.error(
            codes::INVALID_MATRIX,
            f.pos,
            format!("`matrix` in {what} has no keys"),
            Some("write e.g. `matrix: { os: [linux, mac] }`".into()),
        );
        return None;
    }
    match expand(&spec) {
        Ok(combos) if combos.is_empty() => {
            ctx.error(
                codes::INVALID_MATRIX,
                f.pos,
                format!("`matrix` in {what} has no combinations left after `exclude`"),
                None,
            );
            None
        }
        Ok(combos) => {
            let mut keys: BTreeSet<String> = spec.axes.iter().map(|(k, _)| k.clone()).collect();
            for inc in &spec.include {
                keys.extend(inc.keys().cloned());
            }
            Some((combos, keys))
        }
        Err(n) => {
            let count = if n == usize::MAX {
                format!("more than {}", usize::MAX)
            } else {
                n.to_string()
            };
            ctx.error(
                codes::MATRIX_TOO_LARGE,
                f.pos,
                format!("matrix in {what} expands to {count} combinations (limit {MATRIX_LIMIT})"),
                Some("use fewer values, or `exclude` combinations you do not need".into()),
            );
            None
        }
    }
}

fn read_combinations(
    ctx: &mut Ctx<'_>,
    e: Field<'_>,
    what: &str,
    exclude_refs: &mut Vec<(String, Pos)>,
) -> Option<Vec<Combination>> {
    let Node::Sequence(items) = e.value else {
        ctx.wrong_type(
            e.value_pos(),
            &format!("`matrix.{}` in {what}", e.key),
            "a list of mappings",
            e.value,
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    for item in items.iter() {
        let Node::Mapping(m) = item else {
            ctx.wrong_type(
                node_pos(item),
                &format!("each item of `matrix.{}` in {what}", e.key),
                "a mapping",
                item,
            );
            ok = false;
            continue;
        };
        let mut combo = Combination::new();
        for kv in ctx.entries(m) {
            match kv.value {
                Node::Scalar(s) => {
                    combo.insert(kv.key.to_string(), s.as_str().to_string());
                    if e.key == "exclude" {
                        exclude_refs.push((kv.key.to_string(), kv.pos));
                    }
                }
                _ => {
                    ctx.wrong_type(
                        kv.value_pos(),
                        &format!("`{}` in `matrix.{}` of {what}", kv.key, e.key),
                        "a string, number or boolean",
                        kv.value,
                    );
                    ok = false;
                }
            }
        }
        out.push(combo);
    }
    ok.then_some(out)
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
