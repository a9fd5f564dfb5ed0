//! `kind: deploy` — environment, approval gate, and either the stage's own steps or a
//! rollout (`strategy:`, or the short form `canary:`; read in `rollout`).

use super::rollout::{read_canary_rollout, read_strategy_rollout};
use super::{Ctx, Field, Fields, Scope, keys};
use crate::diagnostic::codes;
use crate::diagnostic::did_you_mean;
use crate::model::{Approval, StageKind};

/// The roles of the server's people, lowest first: who an `approval:` may ask for.
pub(crate) const APPROVAL_ROLES: &[&str] = &["viewer", "developer", "release-manager", "admin"];

/// Whether a deploy stage's keys ask for a rollout (then `image` is the new version and
/// no runner runs the stage).
pub(crate) fn is_rollout(keys: &[&str]) -> bool {
    keys.iter().any(|k| matches!(*k, "strategy" | "canary"))
}

pub(crate) fn read_deploy(
    ctx: &mut Ctx<'_>,
    fields: &Fields<'_>,
    what: &str,
    scope: &Scope<'_>,
) -> StageKind {
    let environment = match fields.get("environment") {
        Some(f) => ctx.string(f, what).unwrap_or_default(),
        None => {
            ctx.missing(
                fields.owner,
                what,
                "environment",
                Some(
                    "deploy stages name the environment they change, e.g. `environment: staging`"
                        .into(),
                ),
            );
            String::new()
        }
    };
    let approval = fields
        .get("approval")
        .and_then(|f| read_approval(ctx, f, what));
    let rollout = match (fields.get("strategy"), fields.get("canary")) {
        (Some(s), Some(c)) => {
            ctx.error(
                codes::INVALID_VALUE,
                c.pos,
                format!("{what} has both `strategy:` and `canary:`"),
                Some(
                    "`canary: { target, traffic, steps }` is the short form of `strategy: { \
                     canary: { traffic, steps } }` with `target` at the stage: keep one"
                        .into(),
                ),
            );
            read_strategy_rollout(ctx, fields, s, what, scope);
            None
        }
        (Some(s), None) => read_strategy_rollout(ctx, fields, s, what, scope),
        (None, Some(c)) => {
            if let Some(t) = fields.get("target") {
                ctx.error(
                    codes::UNKNOWN_KEY,
                    t.pos,
                    format!("`target` in {what} goes inside `canary:` in the short form"),
                    Some(
                        "move it into `canary:`, or write `strategy: { canary: … }`, which \
                         takes `target` at the stage"
                            .into(),
                    ),
                );
            }
            read_canary_rollout(ctx, fields, c, what, scope)
        }
        (None, None) => {
            if let Some(t) = fields.get("target") {
                ctx.error(
                    codes::MISSING_KEY,
                    t.pos,
                    format!(
                        "`target` in {what} names what a rollout changes, but it has no `strategy:`"
                    ),
                    Some(
                        "add e.g. `strategy: recreate` for the server to roll out `image` \
                         there, or remove `target` and deploy with `steps`"
                            .into(),
                    ),
                );
            }
            None
        }
    };
    StageKind::Deploy {
        environment,
        approval,
        rollout,
    }
}

fn read_approval(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Approval> {
    let fields = ctx.object(f, what, keys::APPROVAL)?;
    let awhat = format!("`approval` of {what}");
    let role = match fields.get("role") {
        Some(r) => ctx.string(r, &awhat)?,
        None => {
            ctx.missing(
                f.pos,
                &awhat,
                "role",
                Some("name the role whose members may approve".into()),
            );
            return None;
        }
    };
    if !APPROVAL_ROLES.contains(&role.as_str()) {
        let at = fields.get("role").map_or(f.pos, |r| r.value_pos());
        ctx.error(
            codes::INVALID_VALUE,
            at,
            format!(
                "`role` in {awhat} must be one of {}, not `{role}`",
                APPROVAL_ROLES.join(", ")
            ),
            did_you_mean(&role, APPROVAL_ROLES.iter().copied()),
        );
        return None;
    }
    let count = match fields.get("count") {
        None => 1,
        Some(c) => match ctx.uint(c, &awhat) {
            Some(n @ 1..=100) => n as u32,
            Some(_) => {
                ctx.error(
                    codes::INVALID_VALUE,
                    c.value_pos(),
                    format!("`count` in {awhat} must be from 1 to 100"),
                    None,
                );
                return None;
            }
            None => return None,
        },
    };
    Some(Approval { role, count })
}
