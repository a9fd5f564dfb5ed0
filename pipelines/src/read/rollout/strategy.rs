//! `strategy:` — `recreate`, `rolling` in batches, `blue_green` and `canary` (in
//! `canary`). Defaults follow Argo Rollouts where it has the same setting:
//! `auto_promote` true (`autoPromotionEnabled`), `scale_down_delay` 30s
//! (`scaleDownDelaySeconds`).

use marked_yaml::Node;

use super::super::{Ctx, Field, keys};
use super::analysis::read_analysis;
use super::canary::read_canary_strategy;
use super::fields::{NameKind, check_k8s_name};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::model::{BlueGreen, RolloutTarget, Strategy};

const SCALE_DOWN_DELAY_SECS: u64 = 30;

/// `target`: the stage's, if it was read (defaults and name checks need it).
pub(super) fn read_strategy(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    target: Option<&RolloutTarget>,
) -> Option<Strategy> {
    let (name, body) = match f.value {
        Node::Mapping(_) => {
            let one = ctx.one_of(f, what, keys::STRATEGY)?;
            (one.key.to_string(), Some(one))
        }
        _ => (ctx.string(f, what)?, None),
    };
    let swhat = format!("`strategy` of {what}");
    let deployment = target.map_or("", |t| t.deployment.as_str());
    if matches!(name.as_str(), "blue_green" | "canary") {
        check_default_service(ctx, f, what, target);
    }
    match (name.as_str(), body) {
        ("recreate", None) => Some(Strategy::Recreate),
        ("recreate", Some(b)) => {
            let list = ctx.mapping(b.value, b.value_pos(), &format!("`recreate` in {swhat}"))?;
            for k in &list {
                ctx.error(
                    codes::UNKNOWN_KEY,
                    k.pos,
                    format!("unknown key `{}` in `recreate` of {swhat}", k.key),
                    Some("`recreate` has no settings: write `strategy: recreate`".into()),
                );
            }
            list.is_empty().then_some(Strategy::Recreate)
        }
        ("rolling", None) => Some(Strategy::Rolling {
            batches: vec![100],
            pause: None,
            analysis: None,
        }),
        ("rolling", Some(b)) => read_rolling(ctx, b, &swhat),
        ("blue_green", b) => {
            read_blue_green(ctx, b, f.pos, &swhat, target).map(Strategy::BlueGreen)
        }
        ("canary", Some(b)) => {
            read_canary_strategy(ctx, b, &swhat, deployment).map(Strategy::Canary)
        }
        ("canary", None) => {
            ctx.error(
                codes::MISSING_KEY,
                f.value_pos(),
                format!("`strategy: canary` in {what} needs its steps"),
                Some(
                    "write `strategy: { canary: { steps: [ {weight: 20}, {pause: 2m}, \
                     {weight: 100} ] } }`"
                        .into(),
                ),
            );
            None
        }
        (other, _) => {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("unknown `strategy` `{other}` in {what}"),
                did_you_mean(other, keys::STRATEGY.iter().copied()).or_else(|| {
                    let names: Vec<String> = keys::STRATEGY_NAMES
                        .iter()
                        .map(|n| format!("`{n}`"))
                        .collect();
                    Some(format!(
                        "use {}, or `{{ canary: {{ steps }} }}`",
                        names.join(", ")
                    ))
                }),
            );
            None
        }
    }
}

/// Blue-green and canary put a Service in front of the stable pods, named like the
/// Deployment unless `target.service` says otherwise; a Deployment's name may not be
/// a Service's.
pub(super) fn check_default_service(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    target: Option<&RolloutTarget>,
) {
    let Some(t) = target.filter(|t| t.service.is_none()) else {
        return;
    };
    if let Err(e) = check_k8s_name(&t.deployment, NameKind::Service) {
        ctx.error(
            codes::INVALID_NAME,
            f.pos,
            format!(
                "{what} routes through a Service named like the Deployment, `{}`, which is \
                 not a valid Service name: {e}",
                t.deployment
            ),
            Some("name the stable Service in the target: `service: NAME`".into()),
        );
    }
}

fn read_rolling(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Strategy> {
    let fields = ctx.object(f, what, keys::ROLLING)?;
    let rwhat = format!("`rolling` of {what}");
    let batches = match fields.get("batches") {
        Some(b) => read_batches(ctx, b, &rwhat),
        None => Some(vec![100]),
    };
    let pause = match fields.get("pause") {
        Some(p) => ctx.pause(p, &rwhat).map(Some),
        None => Some(None),
    };
    let analysis = match fields.get("analysis") {
        Some(a) => read_analysis(ctx, a, &rwhat, false).map(Some),
        None => Some(None),
    };
    if let Some([_]) = batches.as_deref() {
        for key in ["pause", "analysis"] {
            if let Some(k) = fields.get(key) {
                ctx.error(
                    codes::INVALID_VALUE,
                    k.pos,
                    format!("`{key}` in {rwhat} never happens: it comes between batches, and there is one"),
                    Some("add batches, e.g. `batches: [25%, 50%, 100%]`, or remove it".into()),
                );
                return None;
            }
        }
    }
    Some(Strategy::Rolling {
        batches: batches?,
        pause: pause?,
        analysis: analysis?,
    })
}

/// Increasing shares from 1 to 100, the last one 100.
fn read_batches(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Vec<u8>> {
    let Node::Sequence(items) = f.value else {
        ctx.wrong_type(
            f.value_pos(),
            &format!("`batches` in {what}"),
            "a list of percentages, e.g. `[25%, 50%, 100%]`",
            f.value,
        );
        return None;
    };
    let mut out = Vec::new();
    let mut ok = true;
    let mut last: Option<(u8, Pos)> = None;
    for (i, item) in items.iter().enumerate() {
        let field = Field {
            key: "batches",
            pos: f.pos,
            value: item,
        };
        let pos = field.value_pos();
        let subject = format!("batch {} of {what}", i + 1);
        let Some(p) = ctx.percent(field, &subject, 1, codes::INVALID_VALUE) else {
            ok = false;
            last = None;
            continue;
        };
        if let Some(&prev) = out.last()
            && p <= prev
        {
            ctx.error(
                codes::INVALID_VALUE,
                pos,
                format!("{subject} is {p}%, not more than the batch before it ({prev}%)"),
                Some(
                    "each batch puts more of the replicas on the new version: list them \
                     increasing"
                        .into(),
                ),
            );
            ok = false;
        }
        out.push(p);
        last = Some((p, pos));
    }
    match last {
        _ if items.is_empty() => {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("`batches` in {what} is empty"),
                Some("write e.g. `batches: [25%, 50%, 100%]`".into()),
            );
            ok = false;
        }
        Some((p, pos)) if p != 100 => {
            ctx.error(
                codes::INVALID_VALUE,
                pos,
                format!("the last batch in {what} is {p}%, not 100%"),
                Some("end with `100%` so every replica runs the new version".into()),
            );
            ok = false;
        }
        _ => {}
    }
    ok.then_some(out)
}

/// `owner`: the `strategy` key, for a default preview name that does not fit.
fn read_blue_green(
    ctx: &mut Ctx<'_>,
    f: Option<Field<'_>>,
    owner: Pos,
    what: &str,
    target: Option<&RolloutTarget>,
) -> Option<BlueGreen> {
    let defaults = BlueGreen {
        preview_service: None,
        pre_promotion: None,
        auto_promote: true,
        post_promotion: None,
        scale_down_delay_secs: SCALE_DOWN_DELAY_SECS,
    };
    let active = target.map(|t| t.service.clone().unwrap_or_else(|| t.deployment.clone()));
    let Some(f) = f else {
        check_preview(ctx, None, owner, active.as_deref(), what);
        return Some(defaults);
    };
    let fields = ctx.object(f, what, keys::BLUE_GREEN)?;
    let bwhat = format!("`blue_green` of {what}");
    let preview_service = match fields.get("preview_service") {
        Some(p) => ctx.k8s_name(p, &bwhat, NameKind::Service).map(Some),
        None => Some(None),
    };
    if let Some(preview) = &preview_service {
        let at = fields
            .get("preview_service")
            .map_or(f.pos, |p| p.value_pos());
        check_preview(ctx, preview.as_deref(), at, active.as_deref(), &bwhat);
    }
    let auto_promote = match fields.get("auto_promote") {
        Some(a) => ctx.boolean(a, &bwhat),
        None => Some(true),
    };
    let mut analysis = |key: &str| match fields.get(key) {
        Some(a) => read_analysis(ctx, a, &bwhat, false).map(Some),
        None => Some(None),
    };
    let pre_promotion = analysis("pre_promotion_analysis");
    let post_promotion = analysis("post_promotion_analysis");
    let scale_down_delay_secs = match fields.get("scale_down_delay") {
        Some(d) => ctx.duration(d, &bwhat),
        None => Some(SCALE_DOWN_DELAY_SECS),
    };
    Some(BlueGreen {
        preview_service: preview_service?,
        pre_promotion: pre_promotion?,
        auto_promote: auto_promote?,
        post_promotion: post_promotion?,
        scale_down_delay_secs: scale_down_delay_secs?,
    })
}

/// The preview Service is another Service than the active one, and its default name
/// (`<active>-preview`) fits in 63 characters.
fn check_preview(
    ctx: &mut Ctx<'_>,
    preview: Option<&str>,
    at: Pos,
    active: Option<&str>,
    what: &str,
) {
    let Some(active) = active else { return };
    match preview {
        Some(p) if p == active => ctx.error(
            codes::INVALID_VALUE,
            at,
            format!("`preview_service` in {what} is `{p}`, the active Service itself"),
            Some("name another Service: the new version answers there before the switch".into()),
        ),
        None if active.len() + "-preview".len() > 63 => ctx.error(
            codes::INVALID_NAME,
            at,
            format!(
                "the preview Service of {what} would be `{active}-preview`, longer than 63 \
                 characters"
            ),
            Some("name it: `blue_green: { preview_service: NAME }`".into()),
        ),
        _ => {}
    }
}
