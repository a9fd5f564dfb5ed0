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
    /// The artifacts may hold secret values (not scanned for them).
    pub allow_secrets_in_artifacts: bool,
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
    /// Disk (workspace and container files) in bytes; Kubernetes only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
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
        rollout: Option<Rollout>,
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

/// A progressive rollout of a new image to a Kubernetes Deployment, driven by the
/// server's rollout controller (never by a runner). `canary:` in the YAML is the
/// short form of `strategy: { canary: … }` with the target written inside it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rollout<I = Template> {
    pub target: RolloutTarget,
    /// The new version, by digest once rendered (`repo@sha256:…`, a tag may stand
    /// before the digest). `None`: the image is a promotion's, or written in `target`
    /// — the controller refuses a rollout without one.
    pub image: Option<I>,
    pub strategy: Strategy,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutTarget {
    pub deployment: String,
    /// `None`: the environment's namespace.
    pub namespace: Option<String>,
    /// The container whose image changes; `None`: the pod's only (or first) container.
    pub container: Option<String>,
    /// The Service in front of the stable pods; `None`: named like the Deployment.
    pub service: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Strategy {
    /// All old pods go, then the new ones come.
    Recreate,
    /// Batches by share of the replicas, each optionally followed by a pause and an
    /// analysis. The last batch is 100.
    Rolling {
        batches: Vec<u8>,
        pause: Option<Pause>,
        analysis: Option<Analysis>,
    },
    BlueGreen(BlueGreen),
    Canary(CanaryStrategy),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BlueGreen {
    /// The Service the new version answers on before the switch; `None`:
    /// `<service>-preview`.
    pub preview_service: Option<String>,
    pub pre_promotion: Option<Analysis>,
    /// `false`: wait for a person's promote before the switch.
    pub auto_promote: bool,
    pub post_promotion: Option<Analysis>,
    /// How long the old version stays scaled after the switch (instant rollback).
    pub scale_down_delay_secs: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CanaryStrategy {
    pub traffic: Traffic,
    /// Weights are within 0..=100, non-decreasing, and the last one is 100.
    pub steps: Vec<CanaryStep>,
    /// Runs from the first step to the last; a failure rolls back at once.
    pub background: Option<Analysis>,
}

/// How a canary's share of the traffic is set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Traffic {
    /// The share of pods behind the stable Service; no router.
    Replicas,
    /// A Gateway API HTTPRoute's backendRefs weights, matches and mirror filter.
    Gateway { route: String },
    /// ingress-nginx canary annotations on a second Ingress beside `ingress`.
    Nginx { ingress: String },
}

impl Traffic {
    pub fn name(&self) -> &'static str {
        match self {
            Traffic::Replicas => "replicas",
            Traffic::Gateway { .. } => "gateway",
            Traffic::Nginx { .. } => "nginx",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum CanaryStep {
    Weight {
        weight: u8,
    },
    Pause(Pause),
    Analysis(Analysis),
    /// A/B: requests that match go to the new version, all others to the old.
    Match(RequestMatch),
    /// Shadow traffic: this share of requests is copied to the new version; the
    /// answers still come from the old.
    Mirror {
        percent: u8,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "until", rename_all = "snake_case")]
pub enum Pause {
    /// `pause: 2m`
    Elapsed { secs: u64 },
    /// `pause: {}`: until someone with the environment's release permission promotes.
    Promoted,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "on", rename_all = "snake_case")]
pub enum RequestMatch {
    Header { name: String, value: String },
    Cookie { name: String, value: String },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Analysis {
    /// At least one check; every check is measured each interval.
    pub checks: Vec<Check>,
    pub interval_secs: u64,
    /// Measurements to take (`None` in background analysis: until the last step).
    pub count: Option<u32>,
    /// Failed measurements tolerated; one more rolls back.
    pub failure_limit: u32,
    /// Inconclusive measurements tolerated; one more pauses for a person.
    pub inconclusive_limit: u32,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Check {
    Http(HttpCheck),
    Prometheus(PromCheck),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct HttpCheck {
    pub url: String,
    pub expect_status: u16,
    /// Slower answers fail.
    pub max_latency_ms: Option<u64>,
    /// A JSON field of the answer, by JSONPath (RFC 9535), compared to a value.
    pub json: Option<JsonCheck>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JsonCheck {
    pub path: String,
    pub equals: serde_json::Value,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PromCheck {
    /// The Prometheus server's base URL, e.g. `http://prometheus:9090`.
    pub address: String,
    /// PromQL; its first sample is the measured value.
    pub query: String,
    pub pass: Threshold,
    /// `None`: whatever does not pass fails. `Some`: a value that neither passes nor
    /// fails (or no sample at all) is inconclusive.
    pub fail: Option<Threshold>,
}

/// `< 0.05`, `>= 99`, …: a comparison with a number.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Threshold {
    pub op: CompareOp,
    pub value: f64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum CompareOp {
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "==")]
    Eq,
    #[serde(rename = "!=")]
    Ne,
}

impl Threshold {
    pub fn holds(&self, v: f64) -> bool {
        match self.op {
            CompareOp::Lt => v < self.value,
            CompareOp::Le => v <= self.value,
            CompareOp::Gt => v > self.value,
            CompareOp::Ge => v >= self.value,
            CompareOp::Eq => v == self.value,
            CompareOp::Ne => v != self.value,
        }
    }
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
    /// `ready:`: a shell command run in the service's container; ready when it exits 0.
    pub ready: Option<String>,
}
