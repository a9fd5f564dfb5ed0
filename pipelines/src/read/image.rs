//! `kind: image` stages: what to build (`context`, `dockerfile`, `target`,
//! `build_args`) and where to push it (`push`, `registry_secret`).

use super::paths::{ImagePath, check_image_paths};
use super::render::{Unknown, matrix_values, renderings};
use super::{Allow, Ctx, Fields, Scope};
use crate::diagnostic::{Pos, codes};
use crate::expr::{MAX_SECRET_NAME_LEN, Template, is_secret_name};
use crate::image_ref::check_push_ref;
use crate::matrix::Combination;
use crate::model::StageKind;

/// Stands in for plan-time values (`${{ git.sha }}`) when a push reference is checked:
/// valid in every part of a reference, so only the written text can fail.
const STAND_IN: &str = "x";

pub(crate) fn read_image(
    ctx: &mut Ctx<'_>,
    fields: &Fields<'_>,
    what: &str,
    scope: &Scope<'_>,
    combos: Option<&[Combination]>,
) -> StageKind {
    let mut text = |key: &str, default: &str| -> (String, Option<Pos>) {
        match fields.get(key) {
            Some(f) => match ctx.string(f, what) {
                Some(s) => (s, Some(f.value_pos())),
                None => (default.to_string(), None),
            },
            None => (default.to_string(), None),
        }
    };
    let (dockerfile, dockerfile_pos) = text("dockerfile", "Dockerfile");
    let (context, context_pos) = text("context", ".");
    check_image_paths(
        ctx,
        ImagePath {
            value: &context,
            pos: context_pos,
        },
        ImagePath {
            value: &dockerfile,
            pos: dockerfile_pos,
        },
        what,
        fields.owner,
    );
    let target = fields.get("target").and_then(|f| ctx.string(f, what));
    let registry_secret = fields.get("registry_secret").and_then(|f| {
        let s = ctx.string(f, what)?;
        if is_secret_name(&s) {
            Some(s)
        } else {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("invalid secret name `{s}` for `registry_secret` in {what}"),
                Some(format!(
                    "secret names look like `REGISTRY_AUTH` (letters, digits, `_`; at most {MAX_SECRET_NAME_LEN})"
                )),
            );
            None
        }
    });
    let push: Option<Template> = fields.get("push").and_then(|f| {
        let t = ctx.template(
            f.value,
            f.value_pos(),
            &format!("`push` in {what}"),
            scope,
            Allow::Text,
        )?;
        let checked = combos.map_or(Some(()), |combos| {
            check_push(ctx, &t, combos, f.value_pos(), what)
        });
        checked.map(|()| t)
    });
    let build_args = fields
        .get("build_args")
        .map(|f| ctx.env_map(f, what, scope, Allow::Text))
        .unwrap_or_default();
    StageKind::Image {
        dockerfile,
        context,
        push,
        registry_secret,
        build_args,
        target,
    }
}

/// Reports the first combination whose reference the runner would refuse.
fn check_push(
    ctx: &mut Ctx<'_>,
    t: &Template,
    combos: &[Combination],
    pos: Pos,
    what: &str,
) -> Option<()> {
    let rendered = renderings(t, combos, Unknown::StandIn(STAND_IN))?;
    for (text, combo) in rendered {
        if let Err(problem) = check_push_ref(&text) {
            let shown = if text == t.source || combo.is_empty() {
                format!("`{}`", t.source)
            } else {
                format!("`{}` (with {})", t.source, matrix_values(combo))
            };
            ctx.error(
                codes::INVALID_IMAGE_REF,
                pos,
                format!("invalid `push` reference {shown} in {what}: {problem}"),
                Some("write `[registry/]name[:tag]`, e.g. `registry.example.com/team/app:${{ git.sha }}`".into()),
            );
            return None;
        }
    }
    Some(())
}
