//! What the API server refuses (422 Invalid) in an apps/v1 Deployment or
//! ReplicaSet, worded as `ValidateDeployment`, `ValidateReplicaSet` and their
//! update variants in pkg/apis/apps/validation/validation.go: the selector
//! (required, not empty, matching the template's labels, immutable), replicas,
//! the strategy (types; maxSurge/maxUnavailable as ints or `N%`, not both 0,
//! maxUnavailable at most 100%; no rollingUpdate with Recreate), minReadySeconds,
//! progressDeadlineSeconds above minReadySeconds, and a pod template as
//! `ValidatePodTemplateSpecForReplicaSet` wants it (restartPolicy Always, no
//! activeDeadlineSeconds) — plus what the double refuses in any pod (`validate::pod`).

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{Pod, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, ObjectMeta};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::label_selector;
use crate::kube_double::validate;

fn name(meta: &ObjectMeta, p: &mut Vec<String>) {
    match (meta.name.as_deref().filter(|n| !n.is_empty()), meta.generate_name.as_deref()) {
        (Some(n), _) if !validate::is_dns_subdomain(n) => p.push(format!(
            "metadata.name: Invalid value: {n:?}: a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.'"
        )),
        (Some(_), _) => {}
        (None, Some(g)) if !g.is_empty() => {}
        (None, _) => p.push("metadata.name: Required value: name or generateName is required".into()),
    }
}

fn non_negative(field: &str, v: Option<i32>, p: &mut Vec<String>) {
    if let Some(n) = v.filter(|n| *n < 0) {
        p.push(format!(
            "{field}: Invalid value: {n}: must be greater than or equal to 0"
        ));
    }
}

/// The selector and the template it must select, as a ReplicaSet's pod template.
fn selector_and_template(
    kind: &str,
    selector: &LabelSelector,
    template: &PodTemplateSpec,
    p: &mut Vec<String>,
) {
    p.extend(label_selector::validate(selector, "spec.selector"));
    if label_selector::is_empty(selector) {
        p.push(format!(
            "spec.selector: Invalid value: {{}}: empty selector is invalid for {kind}"
        ));
    } else {
        let labels = template.metadata.as_ref().and_then(|m| m.labels.as_ref());
        if !label_selector::matches(selector, labels) {
            p.push(format!(
                "spec.template.metadata.labels: Invalid value: {}: `selector` does not match template `labels`",
                serde_json::to_string(&labels).unwrap_or_default()
            ));
        }
    }
    let Some(spec) = &template.spec else {
        p.push("spec.template.spec.containers: Required value".into());
        return;
    };
    match spec.restart_policy.as_deref() {
        Some("Always") => {}
        other => p.push(format!(
            "spec.template.spec.restartPolicy: Unsupported value: {:?}: supported values: \"Always\"",
            other.unwrap_or_default()
        )),
    }
    if spec.active_deadline_seconds.is_some() {
        p.push("spec.template.spec.activeDeadlineSeconds: Forbidden: activeDeadlineSeconds in ReplicaSet is not Supported".into());
    }
    // The pod checks (the double's included), with paths under the template.
    let pod = Pod {
        metadata: ObjectMeta {
            name: Some("template".into()),
            ..template.metadata.clone().unwrap_or_default()
        },
        spec: Some(spec.clone()),
        status: None,
    };
    for problem in validate::pod(&pod) {
        if problem.starts_with("spec.restartPolicy") {
            continue;
        }
        match problem.strip_prefix("spec.") {
            Some(rest) => p.push(format!("spec.template.spec.{rest}")),
            None => p.push(format!("spec.template.{problem}")),
        }
    }
}

/// An int or `N%` (digits then `%`), and the value it gives on a base of 100.
fn int_or_percent(v: &IntOrString, field: &str, p: &mut Vec<String>) -> Option<i64> {
    match v {
        IntOrString::Int(n) if *n < 0 => {
            p.push(format!(
                "{field}: Invalid value: {n}: must be greater than or equal to 0"
            ));
            None
        }
        IntOrString::Int(n) => Some(i64::from(*n)),
        IntOrString::String(s) => {
            let n = s
                .strip_suffix('%')
                .filter(|d| !d.is_empty() && d.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|d| d.parse::<i64>().ok());
            if n.is_none() {
                p.push(format!(
                    "{field}: Invalid value: {s:?}: a valid percent string must be a numeric string followed by an ending '%' (e.g. '1%',  or '93%', regex used for validation is '[0-9]+%')"
                ));
            }
            n
        }
    }
}

pub fn deployment(d: &Deployment) -> Vec<String> {
    let mut p = Vec::new();
    name(&d.metadata, &mut p);
    let Some(spec) = &d.spec else {
        p.push("spec.selector: Required value".into());
        return p;
    };
    non_negative("spec.replicas", spec.replicas, &mut p);
    non_negative("spec.minReadySeconds", spec.min_ready_seconds, &mut p);
    non_negative(
        "spec.revisionHistoryLimit",
        spec.revision_history_limit,
        &mut p,
    );
    if let Some(deadline) = spec.progress_deadline_seconds {
        non_negative("spec.progressDeadlineSeconds", Some(deadline), &mut p);
        if deadline <= spec.min_ready_seconds.unwrap_or(0) {
            p.push(format!(
                "spec.progressDeadlineSeconds: Invalid value: {deadline}: must be greater than minReadySeconds"
            ));
        }
    }
    selector_and_template("deployment", &spec.selector, &spec.template, &mut p);
    let strategy = spec.strategy.clone().unwrap_or_default();
    match strategy.type_.as_deref() {
        Some("Recreate") => {
            if strategy.rolling_update.is_some() {
                p.push("spec.strategy.rollingUpdate: Forbidden: may not be specified when strategy `type` is 'Recreate'".into());
            }
        }
        Some("RollingUpdate") => {
            let r = strategy.rolling_update.unwrap_or_default();
            let at = "spec.strategy.rollingUpdate";
            let surge = r
                .max_surge
                .as_ref()
                .and_then(|v| int_or_percent(v, &format!("{at}.maxSurge"), &mut p));
            let field = format!("{at}.maxUnavailable");
            let unavailable = r
                .max_unavailable
                .as_ref()
                .and_then(|v| int_or_percent(v, &field, &mut p));
            if let (Some(IntOrString::String(s)), Some(n)) = (&r.max_unavailable, unavailable)
                && n > 100
            {
                p.push(format!(
                    "{field}: Invalid value: {s:?}: must not be greater than 100%"
                ));
            }
            if surge == Some(0) && unavailable == Some(0) {
                p.push(format!(
                    "{field}: Invalid value: 0: may not be 0 when `maxSurge` is 0"
                ));
            }
        }
        other => p.push(format!(
            "spec.strategy.type: Unsupported value: {:?}: supported values: \"Recreate\", \"RollingUpdate\"",
            other.unwrap_or_default()
        )),
    }
    p
}

pub fn replica_set(rs: &ReplicaSet) -> Vec<String> {
    let mut p = Vec::new();
    name(&rs.metadata, &mut p);
    let Some(spec) = &rs.spec else {
        p.push("spec.selector: Required value".into());
        return p;
    };
    non_negative("spec.replicas", spec.replicas, &mut p);
    non_negative("spec.minReadySeconds", spec.min_ready_seconds, &mut p);
    match &spec.template {
        Some(t) => selector_and_template("replicaset", &spec.selector, t, &mut p),
        None if spec.replicas.unwrap_or(1) > 0 => p.push("spec.template: Required value".into()),
        None => {}
    }
    p
}

/// `spec.selector` may not change in apps/v1.
pub fn immutable_selector(new: &LabelSelector, old: &LabelSelector) -> Option<String> {
    (new != old).then(|| {
        format!(
            "spec.selector: Invalid value: {}: field is immutable",
            serde_json::to_string(new).unwrap_or_default()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn d(spec: serde_json::Value) -> Deployment {
        serde_json::from_value(json!({"metadata": {"name": "web"}, "spec": spec})).unwrap()
    }

    #[test]
    fn problems_are_named_as_the_api_server_names_them() {
        let template = json!({"metadata": {"labels": {"app": "web"}},
                              "spec": {"restartPolicy": "Always", "containers": [{"name": "c", "image": "i"}]}});
        let ok = d(
            json!({"selector": {"matchLabels": {"app": "web"}}, "template": template,
                          "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": 1, "maxUnavailable": "25%"}}}),
        );
        assert!(deployment(&ok).is_empty(), "{:?}", deployment(&ok));
        let bad = d(
            json!({"selector": {"matchLabels": {"app": "other"}}, "template": template, "replicas": -1,
                           "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "0%", "maxUnavailable": 0}}}),
        );
        let problems = deployment(&bad).join("\n");
        for want in [
            "`selector` does not match template `labels`",
            "spec.replicas: Invalid value: -1",
            "may not be 0 when `maxSurge` is 0",
        ] {
            assert!(problems.contains(want), "{want} missing from\n{problems}");
        }
        let recreate = d(
            json!({"selector": {"matchLabels": {"app": "web"}}, "template": template,
                                "strategy": {"type": "Recreate", "rollingUpdate": {}}}),
        );
        assert!(
            deployment(&recreate)[0]
                .contains("may not be specified when strategy `type` is 'Recreate'")
        );
        let pct = d(
            json!({"selector": {"matchLabels": {"app": "web"}}, "template": template,
                           "strategy": {"type": "RollingUpdate", "rollingUpdate": {"maxSurge": "1", "maxUnavailable": "110%"}}}),
        );
        let problems = deployment(&pct).join("\n");
        assert!(problems.contains("a valid percent string"), "{problems}");
        assert!(
            problems.contains("must not be greater than 100%"),
            "{problems}"
        );
    }
}
