//! Serde mirror of a deploy stage's rollout: `target`, `strategy` and the older
//! `canary:` short form. The reader is `read::rollout`; the model is
//! [`crate::model::Rollout`].

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{Duration, OneOrMany, Scalar};

/// A stage's `target`: a Dockerfile stage name (a string) in `kind: image`, the
/// Deployment rolled out (a mapping) in `kind: deploy` with `strategy:`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum StageTarget {
    Dockerfile(String),
    Rollout(RolloutTarget),
}

/// The Deployment whose image a rollout changes, in the environment's cluster.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RolloutTarget {
    /// The Deployment's name (a DNS-1123 subdomain).
    pub deployment: String,
    /// Its namespace (default: the environment's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The container whose image changes (default: the pod's only or first one).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The Service in front of the stable pods (default: named like the Deployment).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service: Option<String>,
}

/// `recreate`, `rolling` (one batch of 100 %), `blue_green` (every default), or a
/// mapping with exactly one of `recreate`, `rolling`, `blue_green`, `canary`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Strategy {
    Named(StrategyName),
    Spec(Box<StrategySpec>),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StrategyName {
    Recreate,
    Rolling,
    BlueGreen,
}

/// Exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StrategySpec {
    /// All old pods go, then the new ones come (`recreate: {}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recreate: Option<Empty>,
    /// Replace the pods in batches, each optionally followed by a pause and an analysis.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rolling: Option<Rolling>,
    /// The new version comes up beside the old behind a preview Service; the active
    /// Service switches to it; the old version stays scaled for a while.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub blue_green: Option<BlueGreen>,
    /// Traffic shifts to the new version step by step, with pauses and analyses.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryStrategy>,
}

/// An empty mapping.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Empty {}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Rolling {
    /// Shares of the replicas on the new version after each batch, increasing and
    /// ending at 100, e.g. `[25%, 50%, 100%]` (`%` optional; default `[100]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub batches: Option<Vec<Percent>>,
    /// After each batch but the last: a duration, or `{}` to wait for a person with
    /// the environment's release permission to promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pause: Option<Pause>,
    /// After each batch but the last (and after its pause): a failure rolls back.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct BlueGreen {
    /// The Service the new version answers on before the switch (default
    /// `<service>-preview`; a DNS-1035 label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preview_service: Option<String>,
    /// Switch as soon as the new version is ready and the pre-promotion analysis passed
    /// (default `true`, as Argo Rollouts' `autoPromotionEnabled`); `false` waits for a
    /// person's promote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub auto_promote: Option<bool>,
    /// Against the preview Service, before the switch: a failure removes the new version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pre_promotion_analysis: Option<Analysis>,
    /// After the switch: a failure switches back to the old version.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub post_promotion_analysis: Option<Analysis>,
    /// How long the old version stays scaled after the switch, so that switching back
    /// is instant (default 30s, as Argo Rollouts' `scaleDownDelaySeconds`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scale_down_delay: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct CanaryStrategy {
    /// How the canary's share of the traffic is set (default `replicas`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// Background analysis: measured from the first step to the last (`count`
    /// optional); a failure rolls back at once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub analysis: Option<Analysis>,
    /// Weights (0–100, never decreasing, the last one 100), pauses, analyses, A/B
    /// matches and mirrors, in order.
    pub steps: Vec<CanaryStep>,
}

/// The short form of `strategy: { canary: … }`, with the target inside.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Canary {
    pub target: RolloutTarget,
    /// How traffic is shifted (default `replicas`). Here `gateway` and `nginx` as a
    /// word use the HTTPRoute or Ingress named like the target Deployment.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub traffic: Option<Traffic>,
    /// As in `strategy: { canary: { steps } }`.
    pub steps: Vec<CanaryStep>,
}

/// `replicas` (the share of pods; no router: no `match`, no `mirror`), `{ gateway: {
/// route } }` (a Gateway API HTTPRoute: weights, header and cookie matches, mirrors) or
/// `{ nginx: { ingress } }` (ingress-nginx canary annotations on a second Ingress:
/// weights, exact header matches, cookie matches on the value `always`; no mirror).
/// `gateway` and `nginx` as a word, or without a name, use the HTTPRoute or Ingress
/// named like the target Deployment.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Traffic {
    Named(TrafficName),
    Router(TrafficRouter),
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum TrafficName {
    Replicas,
    Gateway,
    Nginx,
}

/// Exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TrafficRouter {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gateway: Option<GatewayTraffic>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub nginx: Option<NginxTraffic>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct GatewayTraffic {
    /// The HTTPRoute (in the target's namespace) whose backendRefs, matches and
    /// mirror filter the rollout sets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub route: Option<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct NginxTraffic {
    /// The Ingress (in the target's namespace) beside which the canary Ingress goes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<String>,
}

/// One step of a canary: exactly one key.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum CanaryStep {
    Weight(WeightStep),
    Pause(PauseStep),
    Analysis(AnalysisStep),
    Match(MatchStep),
    Mirror(MirrorStep),
}

/// A share from 0 to 100: `20`, `20%`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Percent {
    Number(#[schemars(range(min = 0, max = 100))] u8),
    Text(String),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct WeightStep {
    /// Share of the traffic on the new version.
    pub weight: Percent,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseStep {
    pub pause: Pause,
}

/// A duration (`2m`), or `{}`: until someone with the environment's release
/// permission promotes.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Pause {
    Elapsed(Duration),
    Until(PauseSpec),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PauseSpec {
    /// As Argo Rollouts writes it: `{ duration: 2m }` is `2m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct AnalysisStep {
    pub analysis: Analysis,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MatchStep {
    /// A/B: requests that match go to the new version, all others to the old.
    #[serde(rename = "match")]
    pub request: RequestMatch,
}

/// Exactly one of `header` and `cookie`, each with one name and its exact value:
/// `{ header: { x-user-group: beta } }`, `{ cookie: { group: beta } }`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct RequestMatch {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub header: Option<BTreeMap<String, Scalar>>,
    /// With `nginx` traffic only the value `always` (ingress-nginx `canary-by-cookie`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cookie: Option<BTreeMap<String, Scalar>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct MirrorStep {
    /// Shadow traffic: this share (1–100) of requests is copied to the new version;
    /// the answers still come from the old. Needs `gateway` traffic.
    pub mirror: Percent,
}

/// Measurements that decide whether the new version is healthy: every check is
/// measured each `interval`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Analysis {
    /// HTTP checks (at least one `http` or `prometheus` check).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub http: Option<OneOrMany<HttpCheck>>,
    /// Prometheus queries compared to thresholds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prometheus: Option<OneOrMany<PromCheck>>,
    /// Time between measurements (default 10s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub interval: Option<Duration>,
    /// Measurements to take, 1–1000 (default 1; in a canary's background analysis:
    /// until the last step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1000))]
    pub count: Option<u32>,
    /// Failed measurements tolerated; one more rolls back (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure_limit: Option<u32>,
    /// The older name of `failure_limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_failures: Option<u32>,
    /// Inconclusive measurements tolerated (a Prometheus value that neither passes nor
    /// fails, or no sample); one more pauses for a person (default 0).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inconclusive_limit: Option<u32>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct HttpCheck {
    /// An `http://` or `https://` URL, e.g. the canary Service's health endpoint.
    pub url: String,
    /// Expected HTTP status (default 200).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 100, max = 599))]
    pub expect_status: Option<u16>,
    /// Slower answers fail: `500ms`, `2s` (a unit is required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_latency: Option<String>,
    /// A field of the JSON answer that must equal a value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub json: Option<JsonCheck>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct JsonCheck {
    /// A JSONPath (RFC 9535) into the answer, e.g. `$.status`.
    pub path: String,
    /// The value it must equal (any JSON value).
    pub equals: serde_json::Value,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PromCheck {
    /// The Prometheus server's base URL, e.g. `http://prometheus:9090`.
    pub address: String,
    /// PromQL; its first sample is the measured value.
    pub query: String,
    /// A comparison the value must satisfy to pass: `<`, `<=`, `>`, `>=`, `==` or
    /// `!=` and a number, e.g. `"< 0.01"` (quote it: YAML reads a leading `>` as a
    /// folded block).
    pub pass: String,
    /// A comparison that fails the measurement. Without it, whatever does not pass
    /// fails; with it, a value that does neither (or no sample) is inconclusive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail: Option<String>,
}
