//! A stage's `steps:`: each a command, or a mapping with `run`, `name`, `env`,
//! `timeout`.

use std::collections::BTreeMap;

use marked_yaml::Node;

use super::{Allow, Ctx, Field, Scope, is_null, keys};
use crate::diagnostic::{Pos, codes};
use crate::model::Step;
use crate::yaml::node_pos;

pub(super) fn read_steps(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
) -> Vec<Step> {
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
