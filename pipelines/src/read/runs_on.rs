//! `runs_on`: the labels a runner must have to take a stage. Written labels are
//! checked here, and so are labels made of matrix values, once per combination; labels
//! with other expressions (`${{ params.pool }}`) are rendered by `plan`. A runner has
//! exactly one `backend:` label, so a stage that names two could never be taken.

use marked_yaml::Node;

use super::render::{Unknown, matrix_values, renderings};
use super::{Allow, Ctx, Field, Scope, is_null};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::expr::Template;
use crate::label::{BACKEND_LABEL_PREFIX, BACKENDS, LABEL_HINT, backend_label, check_label};
use crate::matrix::Combination;
use crate::yaml::node_pos;

/// A label's text for each combination of the stage's matrix.
type Rendered<'c> = Vec<(String, &'c Combination)>;

/// `runs_on: label` or `runs_on: [label, …]`. `combos`: the stage's matrix
/// combinations (one empty one without a matrix; `None` if the matrix is broken).
pub(crate) fn read_runs_on(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
    kind: Option<&str>,
    combos: Option<&[Combination]>,
) -> Vec<Template> {
    let items: Vec<&Node> = match f.value {
        _ if is_null(f.value) => return Vec::new(),
        Node::Scalar(_) => vec![f.value],
        Node::Sequence(items) => items.iter().collect(),
        Node::Mapping(_) => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`runs_on` in {what}"),
                "a label or a list of labels",
                f.value,
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    let mut backends: Vec<(String, Pos)> = Vec::new();
    let mut rendered: Vec<(Rendered<'_>, Pos)> = Vec::new();
    for item in items {
        let pos = if is_null(item) { f.pos } else { node_pos(item) };
        if !matches!(item, Node::Scalar(_)) || is_null(item) {
            ctx.wrong_type(
                pos,
                &format!("each item of `runs_on` in {what}"),
                "a label",
                item,
            );
            continue;
        }
        let Some(t) = ctx.template(
            item,
            pos,
            &format!("`runs_on` in {what}"),
            scope,
            Allow::Text,
        ) else {
            continue;
        };
        if t.exprs().next().is_none() {
            let label = t.source.trim();
            if !check_runs_on_label(ctx, label, pos, what, kind) {
                continue;
            }
            if label.starts_with(BACKEND_LABEL_PREFIX) {
                backends.push((label.to_string(), pos));
            }
            out.push(Template::literal(label));
            continue;
        }
        if let Some(texts) = combos.and_then(|c| renderings(&t, c, Unknown::Skip)) {
            // A label that renders empty is dropped by `plan`.
            let bad = texts.iter().any(|(text, combo)| {
                let label = text.trim();
                let with = format!("{what} (with {})", matrix_values(combo));
                !label.is_empty() && !check_runs_on_label(ctx, label, pos, &with, kind)
            });
            if bad {
                continue;
            }
            rendered.push((texts, pos));
        }
        out.push(t);
    }
    check_one_backend(
        ctx,
        &backends,
        &rendered,
        combos.map_or(0, <[_]>::len),
        what,
    );
    out
}

/// Checks one label as a runner would be matched against it; `false` if reported.
fn check_runs_on_label(
    ctx: &mut Ctx<'_>,
    label: &str,
    pos: Pos,
    what: &str,
    kind: Option<&str>,
) -> bool {
    if let Err(e) = check_label(label) {
        ctx.error(
            codes::INVALID_LABEL,
            pos,
            format!("invalid label in `runs_on` of {what}: {e}"),
            Some(LABEL_HINT.into()),
        );
        return false;
    }
    let Some(backend) = label.strip_prefix(BACKEND_LABEL_PREFIX) else {
        return true;
    };
    if !BACKENDS.contains(&backend) {
        let names: Vec<String> = BACKENDS.iter().map(|b| backend_label(b)).collect();
        ctx.error(
            codes::INVALID_LABEL,
            pos,
            format!("unknown backend `{backend}` in `runs_on` of {what}"),
            did_you_mean(label, names.iter().map(String::as_str))
                .or_else(|| Some(format!("backends are: {}", names.join(", ")))),
        );
        return false;
    }
    if backend == "local" && kind == Some("image") {
        ctx.error(
            codes::INVALID_LABEL,
            pos,
            format!("{what} builds an image, which the local backend cannot do (`backend:local`)"),
            Some("remove `backend:local`: image stages go to `backend:docker` runners".into()),
        );
        return false;
    }
    true
}

/// Reports a stage whose labels name two backends, written or for one combination.
fn check_one_backend(
    ctx: &mut Ctx<'_>,
    written: &[(String, Pos)],
    rendered: &[(Rendered<'_>, Pos)],
    combos: usize,
    what: &str,
) {
    for i in 0..combos.max(1) {
        let mut named: Vec<(&str, Pos, Option<&Combination>)> = written
            .iter()
            .map(|(label, pos)| (label.as_str(), *pos, None))
            .collect();
        for (texts, pos) in rendered {
            if let Some((text, combo)) = texts.get(i)
                && text.trim().starts_with(BACKEND_LABEL_PREFIX)
            {
                named.push((text.trim(), *pos, Some(*combo)));
            }
        }
        let Some(&(first, _, _)) = named.first() else {
            continue;
        };
        if let Some(&(second, pos, combo)) = named.iter().find(|(l, _, _)| *l != first) {
            let with = combo.map_or(String::new(), |c| format!(" (with {})", matrix_values(c)));
            ctx.error(
                codes::INVALID_LABEL,
                pos,
                format!("{what} names two backends in `runs_on`{with}: `{first}` and `{second}`"),
                Some(
                    "a runner has exactly one backend, so no runner could take the stage; keep one"
                        .into(),
                ),
            );
            return;
        }
    }
}
