//! Checks across stages: `needs` must name declared stages and must not form cycles.

use std::collections::BTreeSet;

use crate::diagnostic::{Pos, codes, did_you_mean};
use crate::read::Ctx;

/// `refs`: for each stage read, its needs with their positions.
pub(crate) fn check_needs(
    ctx: &mut Ctx<'_>,
    declared: &[&str],
    refs: &[(String, Vec<(String, Pos)>)],
) {
    for (stage, needs) in refs {
        for (need, pos) in needs {
            if !declared.contains(&need.as_str()) {
                ctx.error(
                    codes::UNKNOWN_NEED,
                    *pos,
                    format!("stage `{stage}` needs `{need}`, which is not a stage"),
                    did_you_mean(need, declared.iter().copied())
                        .or_else(|| Some(format!("stages are: {}", declared.join(", ")))),
                );
            }
        }
    }
    report_cycles(ctx, refs);
}

/// Iterative DFS (a long chain of stages must not overflow the stack); each cycle is
/// reported once, at the `needs` entry that closes it.
fn report_cycles(ctx: &mut Ctx<'_>, refs: &[(String, Vec<(String, Pos)>)]) {
    let index = |name: &str| refs.iter().position(|(s, _)| s == name);
    let adj: Vec<Vec<(usize, Pos)>> = refs
        .iter()
        .map(|(_, needs)| {
            needs
                .iter()
                .filter_map(|(n, pos)| index(n).map(|i| (i, *pos)))
                .collect()
        })
        .collect();
    #[derive(Clone, Copy, PartialEq)]
    enum Color {
        White,
        Gray,
        Black,
    }
    let mut color = vec![Color::White; refs.len()];
    let mut seen: BTreeSet<Vec<usize>> = BTreeSet::new();
    for root in 0..refs.len() {
        if color.get(root) != Some(&Color::White) {
            continue;
        }
        let mut stack: Vec<(usize, usize)> = vec![(root, 0)];
        if let Some(c) = color.get_mut(root) {
            *c = Color::Gray;
        }
        while let Some(top) = stack.last_mut() {
            let (u, next) = *top;
            let Some(&(v, pos)) = adj.get(u).and_then(|a| a.get(next)) else {
                if let Some(c) = color.get_mut(u) {
                    *c = Color::Black;
                }
                stack.pop();
                continue;
            };
            top.1 += 1;
            match color.get(v).copied() {
                Some(Color::Gray) => {
                    let path: Vec<usize> = stack
                        .iter()
                        .map(|(n, _)| *n)
                        .skip_while(|n| *n != v)
                        .collect();
                    let mut key = path.clone();
                    key.sort_unstable();
                    if seen.insert(key) {
                        let mut names: Vec<&str> = path
                            .iter()
                            .filter_map(|i| refs.get(*i).map(|(s, _)| s.as_str()))
                            .collect();
                        let first = names.first().copied().unwrap_or_default();
                        names.push(first);
                        ctx.error(
                            codes::NEEDS_CYCLE,
                            pos,
                            format!("`needs` form a cycle: {}", names.join(" -> ")),
                            Some(
                                "remove one of these `needs` so the stages can run in order".into(),
                            ),
                        );
                    }
                }
                Some(Color::White) => {
                    if let Some(c) = color.get_mut(v) {
                        *c = Color::Gray;
                    }
                    stack.push((v, 0));
                }
                _ => {}
            }
        }
    }
}
