//! A stage's `services:`: image, env, command and readiness command of each.

use std::collections::BTreeMap;

use marked_yaml::Node;

use super::{Allow, Ctx, Field, Scope, check_name, keys};
use crate::diagnostic::codes;
use crate::model::Service;

pub(super) fn read_services(
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
        let ready = sf.get("ready").and_then(|rf| read_ready(ctx, rf, &swhat));
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
                    ready,
                },
            );
        }
    }
    out
}

/// `ready:` — a shell command for the service's own container. It runs there, not
/// in a step's shell, so `${{ }}` would never be expanded: refused rather than
/// passed on literally.
fn read_ready(ctx: &mut Ctx<'_>, f: Field<'_>, swhat: &str) -> Option<String> {
    let command = ctx.string(f, swhat)?;
    if command.trim().is_empty() {
        ctx.error(
            codes::INVALID_VALUE,
            f.value_pos(),
            format!("`ready` in {swhat} is empty"),
            Some("a shell command that exits 0 once the service answers, e.g. `pg_isready -h localhost`".into()),
        );
        return None;
    }
    if command.contains("${{") {
        ctx.error(
            codes::EXPRESSION_NOT_ALLOWED,
            f.value_pos(),
            format!("`ready` in {swhat} cannot use `${{{{ }}}}` expressions"),
            Some("it runs as written inside the service's container; pass values through the service's `env`".into()),
        );
        return None;
    }
    Some(command)
}
