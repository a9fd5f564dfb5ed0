//! The keys each mapping accepts. A test checks these against the JSON schema so the
//! reader and `slipway schema` cannot drift apart.

pub const TOP: &[&str] = &["name", "on", "env", "stages"];
pub const ON: &[&str] = &["push", "pull_request", "tag", "cron", "manual"];
pub const PUSH: &[&str] = &["branches", "tags", "paths"];
pub const PULL_REQUEST: &[&str] = &["branches", "paths"];
pub const TAG: &[&str] = &["pattern", "patterns"];
pub const MANUAL: &[&str] = &["params"];
pub const PARAM: &[&str] = &["description", "default", "required", "options"];
pub const FILTER: &[&str] = &["include", "exclude"];

pub const STAGE_COMMON: &[&str] = &[
    "kind",
    "image",
    "needs",
    "matrix",
    "when",
    "steps",
    "services",
    "artifacts",
    "cache",
    "retry",
    "timeout",
    "env",
    "runs_on",
    "user",
    "workdir",
    "resources",
    "kubernetes",
];
pub const STAGE_SCAN: &[&str] = &["sarif", "fail_on"];
pub const STAGE_IMAGE: &[&str] = &[
    "dockerfile",
    "context",
    "push",
    "registry_secret",
    "build_args",
    "target",
];
pub const STAGE_DEPLOY: &[&str] = &["environment", "approval", "canary"];
pub const STAGE_KINDS: &[&str] = &["run", "scan", "image", "deploy"];

pub const WHEN: &[&str] = &["branch", "tag", "event", "paths"];
pub const STEP: &[&str] = &["name", "run", "env", "timeout"];
pub const SERVICE: &[&str] = &["image", "env", "command"];
pub const RESOURCES: &[&str] = &["memory", "cpu"];
pub const KUBERNETES: &[&str] = &["node_selector", "tolerations", "service_account"];
pub const TOLERATION: &[&str] = &["key", "operator", "value", "effect", "toleration_seconds"];
pub const TOLERATION_OPERATORS: &[&str] = &["Exists", "Equal"];
pub const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
pub const APPROVAL: &[&str] = &["role", "count"];
pub const CANARY: &[&str] = &["target", "traffic", "steps"];
pub const CANARY_TARGET: &[&str] = &["deployment", "namespace"];
pub const CANARY_STEP: &[&str] = &["weight", "pause", "analysis"];
pub const ANALYSIS: &[&str] = &["http", "interval", "count", "max_failures"];
pub const HTTP: &[&str] = &["url", "expect_status"];
pub const TRAFFIC: &[&str] = &["replicas", "nginx", "gateway"];

/// Every stage key, whatever the kind.
#[cfg(test)]
pub fn all_stage_keys() -> Vec<&'static str> {
    [STAGE_COMMON, STAGE_SCAN, STAGE_IMAGE, STAGE_DEPLOY].concat()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use serde_json::Value;

    fn props(schema: &Value, def: &str) -> BTreeSet<String> {
        let node = if def.is_empty() {
            schema
        } else {
            &schema["$defs"][def]
        };
        node["properties"]
            .as_object()
            .unwrap_or_else(|| panic!("no properties for {def}: {node:#}"))
            .keys()
            .cloned()
            .collect()
    }

    fn set(keys: &[&str]) -> BTreeSet<String> {
        keys.iter().map(|k| k.to_string()).collect()
    }

    /// The reader's key lists and the published schema must describe the same format.
    #[test]
    fn reader_keys_match_schema() {
        let schema = crate::json_schema();
        let cases: &[(&str, Vec<&str>)] = &[
            ("", super::TOP.to_vec()),
            ("Triggers", super::ON.to_vec()),
            ("PushTrigger", super::PUSH.to_vec()),
            ("PullRequestTrigger", super::PULL_REQUEST.to_vec()),
            ("TagPatterns", super::TAG.to_vec()),
            ("ManualTrigger", super::MANUAL.to_vec()),
            ("Param", super::PARAM.to_vec()),
            ("FilterSplit", super::FILTER.to_vec()),
            ("Stage", super::all_stage_keys()),
            ("When", super::WHEN.to_vec()),
            ("StepSpec", super::STEP.to_vec()),
            ("Service", super::SERVICE.to_vec()),
            ("Resources", super::RESOURCES.to_vec()),
            ("Kubernetes", super::KUBERNETES.to_vec()),
            ("Toleration", super::TOLERATION.to_vec()),
            ("Approval", super::APPROVAL.to_vec()),
            ("Canary", super::CANARY.to_vec()),
            ("CanaryTarget", super::CANARY_TARGET.to_vec()),
            ("Analysis", super::ANALYSIS.to_vec()),
            ("HttpCheck", super::HTTP.to_vec()),
        ];
        for (def, keys) in cases {
            assert_eq!(
                props(&schema, def),
                set(keys),
                "schema vs reader keys for {def:?}"
            );
        }
        let step_keys: BTreeSet<String> = ["WeightStep", "PauseStep", "AnalysisStep"]
            .iter()
            .flat_map(|d| props(&schema, d))
            .collect();
        assert_eq!(step_keys, set(super::CANARY_STEP));
        let names = |def: &str| -> Vec<String> {
            schema["$defs"][def]["enum"]
                .as_array()
                .unwrap_or_else(|| panic!("no enum for {def}"))
                .iter()
                .map(|v| v.as_str().unwrap_or_default().to_string())
                .collect()
        };
        assert_eq!(names("TolerationOperator"), super::TOLERATION_OPERATORS);
        assert_eq!(names("TaintEffect"), super::TAINT_EFFECTS);
    }
}
