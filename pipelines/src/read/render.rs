//! A template's text as a plan will render it, where the YAML alone decides it: matrix
//! values are known when the file is read, so a value checked at plan time elsewhere
//! (a label, an image reference) can be checked for each combination here.

use crate::expr::{Expr, Template};
use crate::matrix::Combination;

/// What an expression other than a matrix value becomes.
#[derive(Clone, Copy)]
pub(crate) enum Unknown {
    /// Nothing can be said: no renderings.
    Skip,
    /// This stand-in, for checks a plan-time value cannot fix (e.g. a malformed literal
    /// part of an image reference).
    StandIn(&'static str),
}

/// The text of `t` for each of `combos` (one empty combination for a stage without a
/// matrix); `None` when `unknown` is `Skip` and `t` holds another expression.
pub(crate) fn renderings<'c>(
    t: &Template,
    combos: &'c [Combination],
    unknown: Unknown,
) -> Option<Vec<(String, &'c Combination)>> {
    let other = t.exprs().any(|(e, _)| !matches!(e, Expr::Matrix(_)));
    let stand_in = match (other, unknown) {
        (true, Unknown::Skip) => return None,
        (_, Unknown::StandIn(s)) => s,
        (false, Unknown::Skip) => "",
    };
    Some(
        combos
            .iter()
            .map(|combo| {
                let text = t.render(|e| match e {
                    Expr::Matrix(k) => combo.get(k).cloned().unwrap_or_default(),
                    _ => stand_in.to_string(),
                });
                (text, combo)
            })
            .collect(),
    )
}

/// `arch=arm64, os=linux`: which combination a rendering is for, in a message.
pub(crate) fn matrix_values(combo: &Combination) -> String {
    combo
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::expr::parse_template;

    fn combos() -> Vec<Combination> {
        ["amd64", "arm64"]
            .iter()
            .map(|a| Combination::from([("arch".to_string(), a.to_string())]))
            .collect()
    }

    #[test]
    fn matrix_values_render_and_others_stand_in_or_skip() {
        let t = parse_template("arch=${{ matrix.arch }}").unwrap();
        let texts: Vec<String> = renderings(&t, &combos(), Unknown::Skip)
            .unwrap()
            .into_iter()
            .map(|(s, _)| s)
            .collect();
        assert_eq!(texts, ["arch=amd64", "arch=arm64"]);
        let t = parse_template("reg/app-${{ matrix.arch }}:${{ git.sha }}").unwrap();
        assert!(renderings(&t, &combos(), Unknown::Skip).is_none());
        let (text, _) = renderings(&t, &combos(), Unknown::StandIn("x")).unwrap()[1].clone();
        assert_eq!(text, "reg/app-arm64:x");
    }
}
