//! `${{ }}` templates: parsed from a scalar, each expression checked against where it
//! is used ([`Scope`], [`Allow`]); env maps of them.

use std::collections::BTreeMap;

use marked_yaml::Node;

use super::{Allow, Ctx, Field, Scope};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::expr::{Expr, Template, is_env_name, parse_template_lenient};

impl Ctx<'_> {
    /// Parses `${{ }}` in a scalar and checks each expression against where it is used.
    pub fn template(
        &mut self,
        node: &Node,
        pos: Pos,
        what: &str,
        scope: &Scope<'_>,
        allow: Allow,
    ) -> Option<Template> {
        let text = self.scalar_text(node, pos, what)?;
        let start = node.span().start().map(|m| m.character());
        let at = |ctx: &Ctx<'_>, occurrence: usize| -> Pos {
            start
                .and_then(|s| ctx.src.find_expr(s, occurrence))
                .unwrap_or(pos)
        };
        let (template, errors) = parse_template_lenient(&text);
        let mut ok = errors.is_empty();
        for e in errors {
            let p = at(self, e.occurrence);
            self.error(e.code, p, format!("{} in {what}", e.message), e.hint);
        }
        for (expr, occurrence) in template.exprs() {
            if let Err((code, message, hint)) = check_expr(expr, scope, allow, &template) {
                let p = at(self, occurrence);
                self.error(code, p, format!("{message} in {what}"), hint);
                ok = false;
            }
        }
        ok.then_some(template)
    }

    /// `{ NAME: value }` with shell-identifier names and template values.
    pub fn env_map(
        &mut self,
        f: Field<'_>,
        what: &str,
        scope: &Scope<'_>,
        allow: Allow,
    ) -> BTreeMap<String, Template> {
        let mut out = BTreeMap::new();
        let Some(list) = self.mapping(f.value, f.value_pos(), &format!("`{}` in {what}", f.key))
        else {
            return out;
        };
        for e in list {
            if !is_env_name(e.key) {
                self.error(
                    codes::INVALID_ENV_NAME,
                    e.pos,
                    format!("invalid environment variable name `{}` in {what}", e.key),
                    Some("names use letters, digits and `_`, and do not start with a digit".into()),
                );
                continue;
            }
            let item = format!("`{}.{}` in {what}", f.key, e.key);
            if let Some(t) = self.template(e.value, e.value_pos(), &item, scope, allow) {
                out.insert(e.key.to_string(), t);
            }
        }
        out
    }
}

fn check_expr(
    expr: &Expr,
    scope: &Scope<'_>,
    allow: Allow,
    template: &Template,
) -> Result<(), (&'static str, String, Option<String>)> {
    let not_allowed =
        |msg: String, hint: &str| Err((codes::EXPRESSION_NOT_ALLOWED, msg, Some(hint.to_string())));
    match expr {
        Expr::Matrix(_) if scope.any_matrix_key => {}
        Expr::Matrix(k) => match scope.matrix {
            None if scope.stage.is_none() => {
                return not_allowed(
                    format!("`{expr}` is not available at the pipeline level"),
                    "use it in a stage that has a `matrix`",
                );
            }
            None => {
                return Err((
                    codes::UNKNOWN_EXPRESSION,
                    format!(
                        "unknown matrix key `{k}`: stage `{}` has no matrix",
                        scope.stage.unwrap_or_default()
                    ),
                    Some("add a `matrix` to the stage".into()),
                ));
            }
            Some(keys) if !keys.contains(k) => {
                return Err((
                    codes::UNKNOWN_EXPRESSION,
                    format!("unknown matrix key `{k}`"),
                    did_you_mean(k, keys.iter().map(String::as_str)).or_else(|| {
                        Some(format!(
                            "the matrix has: {}",
                            keys.iter().cloned().collect::<Vec<_>>().join(", ")
                        ))
                    }),
                ));
            }
            Some(_) => {}
        },
        Expr::Param(p) if !scope.params.contains(p) => {
            return Err((
                codes::UNKNOWN_EXPRESSION,
                format!("unknown parameter `{p}`"),
                did_you_mean(p, scope.params.iter().map(String::as_str))
                    .or_else(|| Some("declare it under `on.manual.params`".into())),
            ));
        }
        Expr::StageOutput { stage, .. } => {
            if !matches!(allow, Allow::Script | Allow::Rollout) {
                return not_allowed(
                    format!("`{expr}` is only known while the run executes"),
                    "use it in a step's `run` instead, where it becomes a shell variable",
                );
            }
            if !scope.needs.is_some_and(|n| n.contains(stage)) {
                return not_allowed(
                    format!("`{expr}` refers to stage `{stage}`, which is not in `needs`"),
                    &format!(
                        "add `{stage}` to `needs`: outputs exist only for stages that finished first"
                    ),
                );
            }
        }
        Expr::Run(_) if allow == Allow::Rollout => {
            return not_allowed(
                format!("`{expr}` is not available in a rollout's image"),
                "a rollout's image may use plan-time values (git, params, matrix) and outputs of stages in `needs`",
            );
        }
        Expr::Run(_) if allow != Allow::Script => {
            return not_allowed(
                format!("`{expr}` is only known while the run executes"),
                "use it in a step's `run` instead, where it becomes a shell variable",
            );
        }
        Expr::Secret(_) => match allow {
            Allow::Script => {}
            Allow::Env if template.as_single_expr().is_some() => {}
            Allow::Env => {
                return not_allowed(
                    format!("`{expr}` must be the whole value"),
                    "secrets are injected by the runner as the entire variable value; write `NAME: ${{ secrets.X }}`",
                );
            }
            Allow::Text | Allow::Rollout => {
                return not_allowed(
                    format!("secrets are not allowed here (`{expr}`)"),
                    "secrets can only be used as env values or in a step's `run`",
                );
            }
        },
        _ => {}
    }
    Ok(())
}
