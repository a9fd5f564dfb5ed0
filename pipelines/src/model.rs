//! The validated pipeline: what `parse` returns and `plan` consumes.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::diagnostic::Diagnostic;
use crate::event::Event;
use crate::expr::Template;
use crate::matrix::Combination;

#[derive(Debug, Clone, Serialize)]
pub struct Pipeline {
    /// From `name:`, else the file name (`.slipway.yml` → `default`, `.slipway/deploy.yml` → `deploy`).
    pub name: String,
    pub file: String,
    /// Hex sha256 of the file's text, stored with each run.
    pub yaml_sha256: String,
    pub triggers: Triggers,
    pub env: BTreeMap<String, Template>,
    /// In declaration order.
    pub stages: Vec<Stage>,
    pub warnings: Vec<Diagnostic>,
}

impl Pipeline {
    pub fn stage(&self, name: &str) -> Option<&Stage> {
        self.stages.iter().find(|s| s.name == name)
    }
}

/// Include/exclude glob lists. An empty `include` means "everything".
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Filter {
    pub include: Vec<String>,
    pub exclude: Vec<String>,
}

/// `on:`. A missing `on` means push, pull_request, tag and manual (not cron).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Triggers {
    pub push: Option<PushTrigger>,
    pub pull_request: Option<PullRequestTrigger>,
    pub tag: Option<TagTrigger>,
    pub cron: BTreeMap<String, CronTrigger>,
    pub manual: Option<ManualTrigger>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PushTrigger {
    pub branches: Option<Filter>,
    /// Tag pushes matching these also trigger (like `on.tag`).
    pub tags: Option<Filter>,
    pub paths: Option<Filter>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct PullRequestTrigger {
    /// Target-branch globs.
    pub branches: Option<Filter>,
    pub paths: Option<Filter>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct TagTrigger {
    pub patterns: Filter,
}

#[derive(Debug, Clone, Serialize)]
pub struct CronTrigger {
    /// As written.
    pub expr: String,
    /// In the `cron` crate's 6/7-field syntax, ready for `cron::Schedule::from_str`.
    pub schedule: String,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct ManualTrigger {
    pub params: BTreeMap<String, Param>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Param {
    pub description: Option<String>,
    pub default: Option<String>,
    pub required: bool,
    /// If not empty, the only values allowed.
    pub options: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stage {
    pub name: String,
    pub kind: StageKind,
    pub image: Option<Template>,
    pub needs: Vec<String>,
    /// Expanded combinations; `None` for a stage without `matrix`.
    pub matrix: Option<Vec<Combination>>,
    pub when: When,
    pub steps: Vec<Step>,
    pub services: BTreeMap<String, Service>,
    pub artifacts: Vec<String>,
    pub cache: Vec<String>,
    pub retry: u32,
    pub timeout_secs: Option<u64>,
    pub env: BTreeMap<String, Template>,
    /// Labels a runner must have (all of them) to run the stage; empty: any runner.
    pub runs_on: Vec<Template>,
    pub container: Container,
    /// `kubernetes:`: node selector, tolerations, service account.
    pub kubernetes: KubernetesSettings,
}

/// How a stage's steps run inside their containers (`user`, `workdir`, `resources`).
/// Every field unset means the image's and the backend's defaults.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// `uid`, `uid:gid` or a user name known to the image.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Working directory, relative to the workspace (normalised: no `.`, `..` or `/`
    /// at either end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Memory limit in bytes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_bytes: Option<u64>,
    /// CPU limit in thousandths of a CPU.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu_millis: Option<u64>,
}

impl Container {
    pub fn is_default(&self) -> bool {
        *self == Container::default()
    }
}

/// The pod settings a stage chose from the allow-list (`kubernetes:`); only the
/// Kubernetes backend reads them. Everything else about a pod is Slipway's to set.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct KubernetesSettings {
    /// Label key → value the node must have. Keys and values are valid Kubernetes
    /// label keys and values.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub node_selector: BTreeMap<String, String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tolerations: Vec<Toleration>,
    /// Only for trusted runs: the server refuses to plan a run that is not trusted with
    /// a stage that has one (see [`crate::plan::untrusted_service_accounts`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<ServiceAccount>,
}

impl KubernetesSettings {
    pub fn is_default(&self) -> bool {
        *self == KubernetesSettings::default()
    }
}

/// `kubernetes.service_account`, with the position of its key in the pipeline file:
/// the trust check happens after parsing (when the server plans a run, or re-runs a
/// stored plan) and must still point at the line that asked for it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceAccount {
    /// A DNS-1123 subdomain.
    pub name: String,
    /// 1-based line of the `service_account` key.
    pub line: usize,
    /// 1-based column of the `service_account` key.
    pub column: usize,
}

/// A toleration, checked: `Exists` has no value, a toleration without a key is
/// `Exists`, and `toleration_seconds` comes only with `NoExecute`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Toleration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    pub operator: TolerationOperator,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// `None`: every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub toleration_seconds: Option<u64>,
}

/// Spelled as in the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub enum TolerationOperator {
    Exists,
    #[default]
    Equal,
}

impl TolerationOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            TolerationOperator::Exists => "Exists",
            TolerationOperator::Equal => "Equal",
        }
    }
}

/// Spelled as in the Kubernetes API.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

impl TaintEffect {
    pub fn as_str(self) -> &'static str {
        match self {
            TaintEffect::NoSchedule => "NoSchedule",
            TaintEffect::PreferNoSchedule => "PreferNoSchedule",
            TaintEffect::NoExecute => "NoExecute",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StageKind {
    Run,
    Scan {
        sarif: Vec<String>,
        fail_on: ScanLevel,
    },
    Image {
        dockerfile: String,
        context: String,
        push: Option<Template>,
        registry_secret: Option<String>,
        build_args: BTreeMap<String, Template>,
        target: Option<String>,
    },
    Deploy {
        environment: String,
        approval: Option<Approval>,
        canary: Option<Canary>,
    },
}

/// The lowest finding severity that fails a scan stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ScanLevel {
    /// Never fail on findings.
    None,
    Note,
    Low,
    Medium,
    #[default]
    High,
    Critical,
}

impl ScanLevel {
    pub const NAMES: [(&str, ScanLevel); 6] = [
        ("none", ScanLevel::None),
        ("note", ScanLevel::Note),
        ("low", ScanLevel::Low),
        ("medium", ScanLevel::Medium),
        ("high", ScanLevel::High),
        ("critical", ScanLevel::Critical),
    ];
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Approval {
    pub role: String,
    /// At least 1.
    pub count: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Canary {
    pub target: CanaryTarget,
    pub traffic: Traffic,
    /// Weights are within 0..=100, non-decreasing, and the last one is 100.
    pub steps: Vec<CanaryStep>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CanaryTarget {
    pub deployment: String,
    /// `None`: the backend's default namespace.
    pub namespace: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Traffic {
    #[default]
    Replicas,
    Nginx,
    Gateway,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CanaryStep {
    Weight { weight: u8 },
    Pause { pause_secs: u64 },
    Analysis(Analysis),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Analysis {
    pub http: HttpCheck,
    pub interval_secs: u64,
    pub count: u32,
    pub max_failures: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: u16,
}

/// Conditions that must all hold for a stage to run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct When {
    pub branch: Option<Filter>,
    pub tag: Option<Filter>,
    pub event: Option<Vec<Event>>,
    pub paths: Option<Filter>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Step {
    /// From `name:`, else `step N` (1-based).
    pub name: String,
    pub run: Template,
    pub env: BTreeMap<String, Template>,
    pub timeout_secs: Option<u64>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Service {
    pub image: Template,
    pub env: BTreeMap<String, Template>,
    pub command: Option<Vec<String>>,
}
