//! Matrix expansion with GitHub Actions semantics: cartesian product, then `exclude`,
//! then `include`.

use std::collections::BTreeMap;

/// More combinations than this is almost always a mistake, and each one is a pod.
pub const MATRIX_LIMIT: usize = 256;

pub type Combination = BTreeMap<String, String>;

/// A matrix as written: axes in declaration order, plus include/exclude entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MatrixSpec {
    pub axes: Vec<(String, Vec<String>)>,
    pub include: Vec<Combination>,
    pub exclude: Vec<Combination>,
}

/// Expands a matrix. `Err(n)` means it would produce `n` (> [`MATRIX_LIMIT`]) combinations;
/// the product is counted before it is built so a huge matrix costs nothing.
pub fn expand(spec: &MatrixSpec) -> Result<Vec<Combination>, usize> {
    let product = spec
        .axes
        .iter()
        .try_fold(1usize, |acc, (_, values)| acc.checked_mul(values.len()))
        .unwrap_or(usize::MAX);
    if product > MATRIX_LIMIT {
        return Err(product);
    }
    let mut combos: Vec<Combination> = if spec.axes.is_empty() {
        Vec::new()
    } else {
        let mut acc = vec![Combination::new()];
        for (key, values) in &spec.axes {
            acc = acc
                .iter()
                .flat_map(|c| {
                    values.iter().map(move |v| {
                        let mut c = c.clone();
                        c.insert(key.clone(), v.clone());
                        c
                    })
                })
                .collect();
        }
        acc
    };
    combos.retain(|c| !spec.exclude.iter().any(|ex| is_subset(ex, c)));

    // An include entry extends every base combination it agrees with on the original
    // axes; if it agrees with none it becomes a combination of its own.
    let base_len = combos.len();
    let is_axis = |k: &str| spec.axes.iter().any(|(a, _)| a == k);
    for inc in &spec.include {
        let mut matched = false;
        for combo in combos.iter_mut().take(base_len) {
            let agrees = inc
                .iter()
                .filter(|(k, _)| is_axis(k))
                .all(|(k, v)| combo.get(k) == Some(v));
            if agrees {
                matched = true;
                for (k, v) in inc {
                    combo.insert(k.clone(), v.clone());
                }
            }
        }
        if !matched {
            combos.push(inc.clone());
        }
    }
    let mut unique: Vec<Combination> = Vec::with_capacity(combos.len());
    for c in combos {
        if !unique.contains(&c) {
            unique.push(c);
        }
    }
    if unique.len() > MATRIX_LIMIT {
        return Err(unique.len());
    }
    Ok(unique)
}

fn is_subset(part: &Combination, whole: &Combination) -> bool {
    part.iter().all(|(k, v)| whole.get(k) == Some(v))
}

/// The planned-stage id of one combination: `test (features=full, os=linux)`.
pub fn combination_id(stage: &str, combo: &Combination) -> String {
    if combo.is_empty() {
        return stage.to_string();
    }
    let inner: Vec<String> = combo.iter().map(|(k, v)| format!("{k}={v}")).collect();
    format!("{stage} ({})", inner.join(", "))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn combo(pairs: &[(&str, &str)]) -> Combination {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn axes(a: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        a.iter()
            .map(|(k, vs)| (k.to_string(), vs.iter().map(|v| v.to_string()).collect()))
            .collect()
    }

    #[test]
    fn product_exclude_include() {
        let spec = MatrixSpec {
            axes: axes(&[("os", &["linux", "mac"]), ("rust", &["stable", "nightly"])]),
            exclude: vec![combo(&[("os", "mac"), ("rust", "nightly")])],
            include: vec![
                combo(&[("os", "linux"), ("extra", "yes")]),
                combo(&[("os", "windows"), ("rust", "stable")]),
            ],
        };
        let got = expand(&spec).unwrap();
        assert_eq!(
            got,
            vec![
                combo(&[("os", "linux"), ("rust", "stable"), ("extra", "yes")]),
                combo(&[("os", "linux"), ("rust", "nightly"), ("extra", "yes")]),
                combo(&[("os", "mac"), ("rust", "stable")]),
                combo(&[("os", "windows"), ("rust", "stable")]),
            ]
        );
    }

    #[test]
    fn include_only() {
        let spec = MatrixSpec {
            include: vec![combo(&[("a", "1")]), combo(&[("a", "2")])],
            ..Default::default()
        };
        assert_eq!(expand(&spec).unwrap().len(), 2);
    }

    #[test]
    fn limit_is_checked_before_expanding() {
        let many: Vec<String> = (0..100).map(|i| i.to_string()).collect();
        let spec = MatrixSpec {
            axes: (0..20).map(|i| (format!("k{i}"), many.clone())).collect(),
            ..Default::default()
        };
        assert_eq!(expand(&spec), Err(usize::MAX));
        let spec = MatrixSpec {
            axes: axes(&[("a", &["1", "2", "3"])])
                .into_iter()
                .cycle()
                .take(1)
                .chain((0..2).map(|i| (format!("b{i}"), many.iter().take(10).cloned().collect())))
                .collect(),
            ..Default::default()
        };
        assert_eq!(expand(&spec), Err(300));
    }

    #[test]
    fn ids_sort_keys() {
        assert_eq!(
            combination_id("test", &combo(&[("os", "linux"), ("features", "full")])),
            "test (features=full, os=linux)"
        );
        assert_eq!(combination_id("build", &Combination::new()), "build");
    }
}
