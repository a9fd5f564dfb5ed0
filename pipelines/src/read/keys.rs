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
    "allow_secrets_in_artifacts",
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
pub const STAGE_DEPLOY: &[&str] = &["environment", "approval", "target", "strategy", "canary"];
/// Stage keys that configure a runner; refused in a rollout stage, which none runs.
pub const RUNNER_ONLY: &[&str] = &[
    "steps",
    "runs_on",
    "services",
    "env",
    "matrix",
    "retry",
    "artifacts",
    "allow_secrets_in_artifacts",
    "cache",
    "user",
    "workdir",
    "resources",
    "kubernetes",
];
pub const STAGE_KINDS: &[&str] = &["run", "scan", "image", "deploy"];

pub const WHEN: &[&str] = &["branch", "tag", "event", "paths"];
pub const STEP: &[&str] = &["name", "run", "env", "timeout"];
pub const SERVICE: &[&str] = &["image", "env", "command", "ready"];
pub const RESOURCES: &[&str] = &["memory", "cpu", "disk"];
pub const KUBERNETES: &[&str] = &["node_selector", "tolerations", "service_account"];
pub const TOLERATION: &[&str] = &["key", "operator", "value", "effect", "toleration_seconds"];
pub const TOLERATION_OPERATORS: &[&str] = &["Exists", "Equal"];
pub const TAINT_EFFECTS: &[&str] = &["NoSchedule", "PreferNoSchedule", "NoExecute"];
pub const APPROVAL: &[&str] = &["role", "count"];
pub const CANARY: &[&str] = &["target", "traffic", "steps"];
pub const ROLLOUT_TARGET: &[&str] = &["deployment", "namespace", "container", "service"];
pub const STRATEGY: &[&str] = &["recreate", "rolling", "blue_green", "canary"];
/// `strategy: <name>`: the strategies that need no settings.
pub const STRATEGY_NAMES: &[&str] = &["recreate", "rolling", "blue_green"];
pub const ROLLING: &[&str] = &["batches", "pause", "analysis"];
pub const BLUE_GREEN: &[&str] = &[
    "preview_service",
    "auto_promote",
    "pre_promotion_analysis",
    "post_promotion_analysis",
    "scale_down_delay",
];
pub const CANARY_STRATEGY: &[&str] = &["traffic", "analysis", "steps"];
pub const TRAFFIC: &[&str] = &["replicas", "gateway", "nginx"];
pub const TRAFFIC_ROUTER: &[&str] = &["gateway", "nginx"];
pub const GATEWAY: &[&str] = &["route"];
pub const NGINX: &[&str] = &["ingress"];
pub const CANARY_STEP: &[&str] = &["weight", "pause", "analysis", "match", "mirror"];
pub const PAUSE: &[&str] = &["duration"];
pub const MATCH: &[&str] = &["header", "cookie"];
pub const ANALYSIS: &[&str] = &[
    "http",
    "prometheus",
    "interval",
    "count",
    "failure_limit",
    "max_failures",
    "inconclusive_limit",
];
pub const HTTP: &[&str] = &["url", "expect_status", "max_latency", "json"];
pub const JSON_CHECK: &[&str] = &["path", "equals"];
pub const PROMETHEUS: &[&str] = &["address", "query", "pass", "fail"];

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
            ("RolloutTarget", super::ROLLOUT_TARGET.to_vec()),
            ("StrategySpec", super::STRATEGY.to_vec()),
            ("Rolling", super::ROLLING.to_vec()),
            ("BlueGreen", super::BLUE_GREEN.to_vec()),
            ("CanaryStrategy", super::CANARY_STRATEGY.to_vec()),
            ("TrafficRouter", super::TRAFFIC_ROUTER.to_vec()),
            ("GatewayTraffic", super::GATEWAY.to_vec()),
            ("NginxTraffic", super::NGINX.to_vec()),
            ("PauseSpec", super::PAUSE.to_vec()),
            ("RequestMatch", super::MATCH.to_vec()),
            ("Analysis", super::ANALYSIS.to_vec()),
            ("HttpCheck", super::HTTP.to_vec()),
            ("JsonCheck", super::JSON_CHECK.to_vec()),
            ("PromCheck", super::PROMETHEUS.to_vec()),
        ];
        for (def, keys) in cases {
            assert_eq!(
                props(&schema, def),
                set(keys),
                "schema vs reader keys for {def:?}"
            );
        }
        let step_keys: BTreeSet<String> = [
            "WeightStep",
            "PauseStep",
            "AnalysisStep",
            "MatchStep",
            "MirrorStep",
        ]
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
        assert_eq!(names("StrategyName"), super::STRATEGY_NAMES);
        assert_eq!(names("TrafficName"), super::TRAFFIC);
        // Every stage key a rollout stage refuses is a stage key.
        let stage = props(&schema, "Stage");
        assert!(super::RUNNER_ONLY.iter().all(|k| stage.contains(*k)));
    }
}
