//! A stage's `matrix:`: axes, `include`, `exclude`, expanded within the limit.

use std::collections::BTreeSet;

use marked_yaml::Node;

use super::{Ctx, Field};
use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::matrix::{Combination, MATRIX_LIMIT, MatrixSpec, expand};
use crate::yaml::node_pos;

pub(super) fn read_matrix(
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
