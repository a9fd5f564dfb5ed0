//! `on:` — which events start the pipeline.

use std::collections::BTreeMap;

use marked_yaml::Node;

use super::{Ctx, Field, is_null, keys};
use crate::crontab::normalize_cron;
use crate::diagnostic::{codes, did_you_mean};
use crate::event::Event;
use crate::model::{
    CronTrigger, Filter, ManualTrigger, Param, PullRequestTrigger, PushTrigger, TagTrigger,
    Triggers,
};
use crate::yaml::node_pos;

/// Without `on`, a pipeline runs for pushes, pull requests, tags and manual runs; cron
/// needs a schedule so it cannot be a default.
pub(crate) fn default_triggers() -> Triggers {
    Triggers {
        push: Some(PushTrigger::default()),
        pull_request: Some(PullRequestTrigger::default()),
        tag: Some(TagTrigger::default()),
        cron: BTreeMap::new(),
        manual: Some(ManualTrigger::default()),
    }
}

pub(crate) fn read_triggers(ctx: &mut Ctx<'_>, on: Option<Field<'_>>) -> Triggers {
    let Some(on) = on else {
        return default_triggers();
    };
    let mut t = Triggers::default();
    match on.value {
        // `on: push` / `on: [push, pull_request]`: each event with no filters.
        Node::Scalar(_) | Node::Sequence(_) if !is_null(on.value) => {
            for (name, pos) in ctx.strings(on, "the pipeline").unwrap_or_default() {
                match Event::from_name(&name) {
                    Some(Event::Push) => t.push = Some(PushTrigger::default()),
                    Some(Event::PullRequest) => {
                        t.pull_request = Some(PullRequestTrigger::default())
                    }
                    Some(Event::Tag) => t.tag = Some(TagTrigger::default()),
                    Some(Event::Manual) => t.manual = Some(ManualTrigger::default()),
                    Some(Event::Cron) => ctx.error(
                        codes::INVALID_VALUE,
                        pos,
                        "`cron` needs schedules",
                        Some("write `on: { cron: { nightly: \"0 3 * * *\" } }`".into()),
                    ),
                    None => unknown_event(ctx, &name, pos, "`on`"),
                }
            }
            return t;
        }
        _ => {}
    }
    let Some(fields) = ctx.object(on, "the pipeline", keys::ON) else {
        return t;
    };
    if fields.list.is_empty() {
        ctx.error(
            codes::INVALID_VALUE,
            on.pos,
            "`on` lists no events, so the pipeline would never run",
            Some("remove `on` to run on push, pull_request, tag and manual".into()),
        );
    }
    for f in &fields.list {
        let f = *f;
        match f.key {
            "push" => t.push = Some(read_push(ctx, f)),
            "pull_request" => t.pull_request = Some(read_pull_request(ctx, f)),
            "tag" => t.tag = Some(read_tag(ctx, f)),
            "cron" => t.cron = read_cron(ctx, f),
            "manual" => t.manual = Some(read_manual(ctx, f)),
            _ => {}
        }
    }
    t
}

pub(crate) fn unknown_event(
    ctx: &mut Ctx<'_>,
    name: &str,
    pos: crate::diagnostic::Pos,
    what: &str,
) {
    ctx.error(
        codes::INVALID_VALUE,
        pos,
        format!("unknown event `{name}` in {what}"),
        did_you_mean(name, Event::ALL.iter().map(|e| e.as_str()))
            .or_else(|| Some("events are push, pull_request, tag, cron and manual".into())),
    );
}

fn read_push(ctx: &mut Ctx<'_>, f: Field<'_>) -> PushTrigger {
    let mut p = PushTrigger::default();
    let Some(fields) = ctx.object(f, "`on`", keys::PUSH) else {
        return p;
    };
    let what = "`on.push`";
    p.branches = fields.get("branches").and_then(|b| ctx.filter(b, what));
    p.tags = fields.get("tags").and_then(|b| ctx.filter(b, what));
    p.paths = fields.get("paths").and_then(|b| ctx.filter(b, what));
    p
}

fn read_pull_request(ctx: &mut Ctx<'_>, f: Field<'_>) -> PullRequestTrigger {
    let mut p = PullRequestTrigger::default();
    let Some(fields) = ctx.object(f, "`on`", keys::PULL_REQUEST) else {
        return p;
    };
    let what = "`on.pull_request`";
    p.branches = fields.get("branches").and_then(|b| ctx.filter(b, what));
    p.paths = fields.get("paths").and_then(|b| ctx.filter(b, what));
    p
}

fn read_tag(ctx: &mut Ctx<'_>, f: Field<'_>) -> TagTrigger {
    // `tag: "v*"` is shorthand for `tag: { pattern: "v*" }`.
    if matches!(f.value, Node::Scalar(_) | Node::Sequence(_)) && !is_null(f.value) {
        return TagTrigger {
            patterns: ctx.filter(f, "`on`").unwrap_or_default(),
        };
    }
    let Some(fields) = ctx.object(f, "`on`", keys::TAG) else {
        return TagTrigger::default();
    };
    let mut patterns = Filter::default();
    for key in ["pattern", "patterns"] {
        if let Some(p) = fields.get(key).and_then(|p| ctx.filter(p, "`on.tag`")) {
            patterns.include.extend(p.include);
            patterns.exclude.extend(p.exclude);
        }
    }
    TagTrigger { patterns }
}

fn read_cron(ctx: &mut Ctx<'_>, f: Field<'_>) -> BTreeMap<String, CronTrigger> {
    let mut out = BTreeMap::new();
    let Some(list) = ctx.mapping(f.value, f.value_pos(), "`cron` in `on`") else {
        return out;
    };
    if list.is_empty() {
        ctx.error(
            codes::INVALID_VALUE,
            f.pos,
            "`on.cron` has no schedules",
            Some("write `cron: { nightly: \"0 3 * * *\" }`".into()),
        );
    }
    for e in list {
        let what = format!("schedule `{}` in `on.cron`", e.key);
        let Some(expr) = ctx.string(
            Field {
                key: e.key,
                pos: e.pos,
                value: e.value,
            },
            "`on.cron`",
        ) else {
            continue;
        };
        match normalize_cron(&expr) {
            Ok(schedule) => {
                out.insert(e.key.to_string(), CronTrigger { expr, schedule });
            }
            Err(msg) => ctx.error(
                codes::INVALID_CRON,
                node_pos(e.value),
                format!("{msg} ({what})"),
                Some(
                    "use 5 fields: minute hour day-of-month month day-of-week, e.g. `0 3 * * *`"
                        .into(),
                ),
            ),
        }
    }
    out
}

fn read_manual(ctx: &mut Ctx<'_>, f: Field<'_>) -> ManualTrigger {
    let mut m = ManualTrigger::default();
    let Some(fields) = ctx.object(f, "`on`", keys::MANUAL) else {
        return m;
    };
    let Some(params) = fields.get("params") else {
        return m;
    };
    let Some(list) = ctx.mapping(params.value, params.value_pos(), "`params` in `on.manual`")
    else {
        return m;
    };
    for e in list {
        if !e
            .key
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
            || e.key.is_empty()
        {
            ctx.error(
                codes::INVALID_NAME,
                e.pos,
                format!("invalid parameter name `{}`", e.key),
                Some("use letters, digits, `_` and `-`".into()),
            );
            continue;
        }
        let what = format!("parameter `{}`", e.key);
        let Some(pf) = ctx.object(e, "`on.manual.params`", keys::PARAM) else {
            continue;
        };
        let mut p = Param::default();
        if let Some(d) = pf.get("description") {
            p.description =
                ctx.scalar_text(d.value, d.value_pos(), &format!("`description` in {what}"));
        }
        let default = pf.get("default").and_then(|d| {
            ctx.scalar_text(d.value, d.value_pos(), &format!("`default` in {what}"))
                .map(|v| (v, d.value_pos()))
        });
        if let Some(r) = pf.get("required") {
            p.required = ctx.boolean(r, &what).unwrap_or(false);
        }
        if let Some(o) = pf.get("options") {
            let opts = ctx.strings(o, &what).unwrap_or_default();
            p.options = opts.into_iter().map(|(s, _)| s).collect();
        }
        if let Some((d, pos)) = &default
            && !p.options.is_empty()
            && !p.options.contains(d)
        {
            ctx.error(
                codes::INVALID_VALUE,
                *pos,
                format!("default `{d}` of {what} is not one of its options"),
                Some(format!("options are: {}", p.options.join(", "))),
            );
        }
        p.default = default.map(|(d, _)| d);
        m.params.insert(e.key.to_string(), p);
    }
    m
}
