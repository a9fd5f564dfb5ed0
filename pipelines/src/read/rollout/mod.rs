//! A deploy stage's rollout: `target` (the Deployment), `image` (the new version, by
//! digest) and `strategy`, or the older short form `canary: { target, traffic,
//! steps }`. Both become a [`Rollout`], which the server's rollout controller drives;
//! no runner ever runs the stage (the stage reader refuses runner keys for it).
//!
//! `strategy` reads the strategies, `canary` a canary's traffic and steps,
//! `analysis` the measurements, `fields` the values they are made of.

mod analysis;
mod canary;
mod fields;
mod strategy;

use super::{Allow, Ctx, Field, Fields, Scope, keys};
use crate::diagnostic::codes;
use crate::expr::Template;
use crate::image_ref::check_digest_ref;
use crate::model::{CanaryStrategy, Rollout, RolloutTarget, Strategy};
use fields::NameKind;

const IMAGE_HINT: &str = "the new version by digest, e.g. `image: ${{ stages.image.outputs.image \
     }}@${{ stages.image.outputs.digest }}` (with `image` in `needs`)";

/// `strategy:` (`s`), with the stage's `target` and `image`, both required.
pub(crate) fn read_strategy_rollout(
    ctx: &mut Ctx<'_>,
    fields: &Fields<'_>,
    s: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
) -> Option<Rollout> {
    let target = match fields.get("target") {
        Some(t) => read_target(ctx, t, what),
        None => {
            ctx.missing(
                fields.owner,
                what,
                "target",
                Some(
                    "name the Deployment the strategy rolls out, e.g. `target: { deployment: \
                     web, namespace: shop }`"
                        .into(),
                ),
            );
            None
        }
    };
    let image = match fields.get("image") {
        Some(i) => read_image(ctx, i, what, scope),
        None => {
            ctx.missing(fields.owner, what, "image", Some(IMAGE_HINT.into()));
            None
        }
    };
    let strategy = strategy::read_strategy(ctx, s, what, target.as_ref());
    Some(Rollout {
        target: target?,
        image: Some(image?),
        strategy: strategy?,
    })
}

/// `canary:` (`c`), the short form: the target inside it, the stage's `image`
/// optional (without it the server takes a promotion's image, or refuses to start).
/// `gateway` and `nginx` traffic route by the HTTPRoute or Ingress named like the
/// Deployment.
pub(crate) fn read_canary_rollout(
    ctx: &mut Ctx<'_>,
    fields: &Fields<'_>,
    c: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
) -> Option<Rollout> {
    let cf = ctx.object(c, what, keys::CANARY)?;
    let cwhat = format!("`canary` of {what}");
    let target = match cf.get("target") {
        Some(t) => read_target(ctx, t, &cwhat),
        None => {
            ctx.missing(
                c.pos,
                &cwhat,
                "target",
                Some("write `target: { deployment: app, namespace: prod }`".into()),
            );
            None
        }
    };
    let image = match fields.get("image") {
        Some(i) => read_image(ctx, i, what, scope).map(Some),
        None => Some(None),
    };
    strategy::check_default_service(ctx, c, what, target.as_ref());
    let deployment = target.as_ref().map_or("", |t| t.deployment.as_str());
    let traffic = canary::read_traffic(ctx, cf.get("traffic"), &cwhat, deployment);
    let steps = canary::read_steps(ctx, cf.get("steps"), c.pos, &cwhat, traffic.as_ref());
    Some(Rollout {
        target: target?,
        image: image?,
        strategy: Strategy::Canary(CanaryStrategy {
            traffic: traffic?,
            steps: steps?,
            background: None,
        }),
    })
}

fn read_target(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<RolloutTarget> {
    let fields = ctx.object(f, what, keys::ROLLOUT_TARGET)?;
    let twhat = format!("`target` of {what}");
    let deployment = match fields.get("deployment") {
        Some(d) => ctx.k8s_name(d, &twhat, NameKind::Subdomain),
        None => {
            ctx.missing(
                f.pos,
                &twhat,
                "deployment",
                Some("name the Deployment whose image changes".into()),
            );
            None
        }
    };
    let mut name = |key: &str, kind: NameKind| match fields.get(key) {
        Some(n) => ctx.k8s_name(n, &twhat, kind).map(Some),
        None => Some(None),
    };
    let namespace = name("namespace", NameKind::Label);
    let container = name("container", NameKind::Label);
    let service = name("service", NameKind::Service);
    Some(RolloutTarget {
        deployment: deployment?,
        namespace: namespace?,
        container: container?,
        service: service?,
    })
}

/// The rollout's `image`: plan-time values and outputs of stages in `needs`; written
/// out in full, it must name a digest.
fn read_image(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str, scope: &Scope<'_>) -> Option<Template> {
    let iwhat = format!("`image` in {what}");
    let t = ctx.template(f.value, f.value_pos(), &iwhat, scope, Allow::Rollout)?;
    if t.exprs().next().is_some() {
        return Some(t);
    }
    let text = t.source.trim();
    if let Err(e) = check_digest_ref(text) {
        ctx.error(
            codes::INVALID_IMAGE_REF,
            f.value_pos(),
            format!("invalid image `{text}` for the rollout in {what}: {e}"),
            Some(IMAGE_HINT.into()),
        );
        return None;
    }
    Some(t)
}
