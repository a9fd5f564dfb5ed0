//! `metav1.LabelSelector` (a workload's `spec.selector`: `matchLabels` and
//! `matchExpressions` with In, NotIn, Exists, DoesNotExist), as
//! `LabelSelectorAsSelector` in apimachinery evaluates it: its requirements
//! ANDed, the empty selector matching everything. Also its string form (the
//! `status.selector` of a Scale) and its validation.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

pub fn is_empty(s: &LabelSelector) -> bool {
    s.match_labels.as_ref().is_none_or(BTreeMap::is_empty)
        && s.match_expressions.as_ref().is_none_or(Vec::is_empty)
}

pub fn matches(s: &LabelSelector, labels: Option<&BTreeMap<String, String>>) -> bool {
    let get = |k: &str| labels.and_then(|l| l.get(k));
    let labels_ok = s
        .match_labels
        .iter()
        .flatten()
        .all(|(k, v)| get(k) == Some(v));
    let expressions_ok = s.match_expressions.iter().flatten().all(|e| {
        let values = e.values.as_deref().unwrap_or_default();
        match e.operator.as_str() {
            "In" => get(&e.key).is_some_and(|v| values.contains(v)),
            "NotIn" => get(&e.key).is_none_or(|v| !values.contains(v)),
            "Exists" => get(&e.key).is_some(),
            "DoesNotExist" => get(&e.key).is_none(),
            // Refused by validation; matches nothing, as a selector that fails to parse.
            _ => false,
        }
    });
    labels_ok && expressions_ok
}

/// The selector as a `labelSelector` query string (`app=web,tier in (a,b)`).
pub fn to_query(s: &LabelSelector) -> String {
    let mut parts: Vec<String> = s
        .match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    for e in s.match_expressions.iter().flatten() {
        let mut values = e.values.clone().unwrap_or_default();
        values.sort();
        parts.push(match e.operator.as_str() {
            "In" => format!("{} in ({})", e.key, values.join(",")),
            "NotIn" => format!("{} notin ({})", e.key, values.join(",")),
            "Exists" => e.key.clone(),
            _ => format!("!{}", e.key),
        });
    }
    parts.sort();
    parts.join(",")
}

/// Problems with a selector at `at` (`spec.selector`).
pub fn validate(s: &LabelSelector, at: &str) -> Vec<String> {
    let mut p = Vec::new();
    for (i, e) in s.match_expressions.iter().flatten().enumerate() {
        let at = format!("{at}.matchExpressions[{i}]");
        let has_values = e.values.as_ref().is_some_and(|v| !v.is_empty());
        match e.operator.as_str() {
            "In" | "NotIn" if !has_values => p.push(format!(
                "{at}.values: Required value: must be specified when `operator` is 'In' or 'NotIn'"
            )),
            "Exists" | "DoesNotExist" if has_values => p.push(format!(
                "{at}.values: Forbidden: may not be specified when `operator` is 'Exists' or 'DoesNotExist'"
            )),
            "In" | "NotIn" | "Exists" | "DoesNotExist" => {}
            other => p.push(format!(
                "{at}.operator: Invalid value: {other:?}: not a valid selector operator"
            )),
        }
        if e.key.is_empty() {
            p.push(format!(
                "{at}.key: Invalid value: \"\": name part must be non-empty"
            ));
        }
    }
    p
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn selectors_match_and_print() {
        let s: LabelSelector = serde_json::from_value(json!({
            "matchLabels": {"app": "web"},
            "matchExpressions": [{"key": "tier", "operator": "In", "values": ["b", "a"]},
                                 {"key": "canary", "operator": "DoesNotExist"}]
        }))
        .unwrap();
        let labels =
            |v: serde_json::Value| serde_json::from_value::<BTreeMap<String, String>>(v).unwrap();
        assert!(matches(
            &s,
            Some(&labels(json!({"app": "web", "tier": "a"})))
        ));
        assert!(!matches(
            &s,
            Some(&labels(json!({"app": "web", "tier": "c"})))
        ));
        assert!(!matches(
            &s,
            Some(&labels(json!({"app": "web", "tier": "a", "canary": "1"})))
        ));
        assert!(!matches(&s, None));
        assert_eq!(to_query(&s), "!canary,app=web,tier in (a,b)");
        assert!(matches(&LabelSelector::default(), None));
        assert!(is_empty(&LabelSelector::default()));
        let bad: LabelSelector = serde_json::from_value(
            json!({"matchExpressions": [{"key": "k", "operator": "In"}, {"key": "k", "operator": "Is"}]}),
        )
        .unwrap();
        assert_eq!(validate(&bad, "spec.selector").len(), 2);
    }
}
