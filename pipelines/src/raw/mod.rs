//! Serde mirror of the YAML format. It documents the format (these doc comments become
//! the JSON schema's descriptions) and lets other tools read pipeline files as plain
//! data; `parse` reads the spanned YAML tree itself so it can report every problem
//! with a position (see `read`).

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

mod rollout;

pub use rollout::*;

/// A Slipway pipeline file: `.slipway.yml` at the repository root, or `.slipway/<name>.yml`.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
#[schemars(title = "Slipway pipeline")]
pub struct PipelineFile {
    /// Pipeline name. Defaults to the file name (`.slipway.yml` → `default`,
    /// `.slipway/deploy.yml` → `deploy`). Must be unique across a repository's files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Events that start the pipeline. Without `on`: push, pull_request, tag and manual.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub on: Option<On>,
    /// Environment variables for every stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    /// The stages, by name (letters, digits, `-`, `_`, `.`). Declaration order is kept;
    /// `needs` decides the execution order.
    pub stages: BTreeMap<String, Stage>,
}

/// Environment variables: names are shell identifiers; values may contain `${{ expr }}`,
/// and a value of exactly `${{ secrets.NAME }}` injects a secret.
pub type Env = BTreeMap<String, Scalar>;

/// A string, number or boolean (numbers and booleans are used as text).
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Scalar {
    String(String),
    Integer(i64),
    Number(f64),
    Bool(bool),
}

/// One value or a list of them.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum OneOrMany<T> {
    One(T),
    Many(Vec<T>),
}

/// `on:` as a list of event names, or with per-event settings.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum On {
    Events(OneOrMany<ShorthandEvent>),
    Triggers(Box<Triggers>),
}

/// Events that can be listed without settings (`cron` needs schedules).
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ShorthandEvent {
    Push,
    PullRequest,
    Tag,
    Manual,
}

/// An event name.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum EventName {
    Push,
    PullRequest,
    Tag,
    Cron,
    Manual,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Triggers {
    /// Pushes to branches (and, with `tags`, tag pushes). `push: {}` means every branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<PushTrigger>,
    /// Pull requests. `pull_request: {}` means every target branch.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pull_request: Option<PullRequestTrigger>,
    /// Tags: a glob (`"v*"`), a list of globs, or `{ pattern }` / `{ patterns }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<TagTrigger>,
    /// Named schedules: `{ nightly: "0 3 * * *" }`. Standard 5-field crontab (minute hour
    /// day month weekday) or 6/7 fields with seconds (and year).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cron: Option<BTreeMap<String, String>>,
    /// Runs started by hand, with optional parameters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manual: Option<ManualTrigger>,
}

/// Glob filter: one glob, a list, or `{ include, exclude }`. `*` stays within one path
/// segment, `**` crosses segments.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Filter {
    Globs(OneOrMany<String>),
    Split(FilterSplit),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct FilterSplit {
    /// Values must match one of these (default: everything).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<OneOrMany<String>>,
    /// …and none of these.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<OneOrMany<String>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PushTrigger {
    /// Branch globs (default: all branches).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Filter>,
    /// Tag globs: pushing a matching tag also triggers.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tags: Option<Filter>,
    /// Only when a changed file matches (unknown changes always match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Filter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct PullRequestTrigger {
    /// Target-branch globs (default: all).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branches: Option<Filter>,
    /// Only when a changed file matches (unknown changes always match).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Filter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum TagTrigger {
    Globs(OneOrMany<String>),
    Patterns(TagPatterns),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct TagPatterns {
    /// A tag glob, e.g. `v*`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pattern: Option<Filter>,
    /// Several tag globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub patterns: Option<Filter>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ManualTrigger {
    /// Parameters, readable as `${{ params.<name> }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub params: Option<BTreeMap<String, Param>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Param {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// Used when the run does not set the parameter.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub default: Option<Scalar>,
    /// A run without this parameter (and without a default) is refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub required: Option<bool>,
    /// The only values allowed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<Vec<Scalar>>,
}

/// What a stage does. `run` (default): steps in a container; `scan`: built-in secret scan
/// plus SARIF reports; `image`: build (and push) a container image; `deploy`: change an
/// environment, optionally behind approval: with its own `steps`, or as a rollout
/// (`strategy:`) that the server drives.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum StageKind {
    Run,
    Scan,
    Image,
    Deploy,
}

/// A stage. Keys under "scan", "image" and "deploy" are only valid with that `kind`.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Stage {
    /// run (default) | scan | image | deploy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kind: Option<StageKind>,
    /// Container image the steps run in (ignored by the local backend). In a `kind:
    /// deploy` stage with a rollout (`strategy:` or `canary:`) it is instead the new
    /// version rolled out, by digest (`registry/app:tag@sha256:…`), e.g.
    /// `${{ stages.image.outputs.image }}@${{ stages.image.outputs.digest }}`: there,
    /// outputs of stages in `needs` are allowed (the server fills them in), secrets
    /// are not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// Stages that must finish first. A need on a matrix stage waits for all its combinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub needs: Option<OneOrMany<String>>,
    /// Run the stage once per combination (at most 256).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub matrix: Option<Matrix>,
    /// Conditions (all must hold) for the stage to run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub when: Option<When>,
    /// Commands, run in order in one workspace. Required for `run` stages; refused in a
    /// rollout stage (`strategy:` or `canary:`), which no runner runs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps: Option<Vec<Step>>,
    /// Side containers reachable by name (e.g. a database).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub services: Option<BTreeMap<String, Service>>,
    /// Globs of files to keep after the stage (relative to the workspace, no `..`; a
    /// directory keeps everything below it). They are stored with the run, and stages that
    /// `needs` this one find them at the same paths in their workspace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifacts: Option<OneOrMany<String>>,
    /// Let the artifacts hold secret values. By default the runner scans the
    /// artifacts for the stage's secrets (and their base64, hex and URL-encoded forms)
    /// before uploading them, and the stage fails naming the artifact and the file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub allow_secrets_in_artifacts: Option<bool>,
    /// Paths (globs) restored before and saved after the stage, per repository:
    /// relative to the workspace, no `..`. The cache key
    /// is the stage (with its matrix values), these paths, and the content of the lock
    /// files in the workspace (Cargo.lock, package-lock.json, yarn.lock, go.sum,
    /// poetry.lock, Gemfile.lock, requirements*.txt): changing a dependency starts a
    /// fresh cache. A saved key is never overwritten; pull requests from forks read
    /// caches but do not save them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache: Option<OneOrMany<String>>,
    /// Automatic retries on failure, 0 to 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 5))]
    pub retry: Option<u8>,
    /// Time limit for the whole stage.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
    /// Environment variables for this stage's steps.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    /// Labels a runner must have (all of them) to run this stage, e.g. `[linux, gpu]`.
    /// Every runner also has `backend:<name>` (`backend:local`, `backend:docker`,
    /// `backend:kubernetes`); `kind: image` stages need `backend:docker` unless
    /// `runs_on` names a backend (at most one: a runner has exactly one). Refused in a
    /// rollout stage: the server drives rollouts, no runner takes them.
    /// Plan-time expressions are allowed (`${{ matrix.arch }}`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runs_on: Option<OneOrMany<String>>,
    /// User the steps run as in their containers: `uid`, `"uid:gid"` or a user name
    /// known to the image (ignored by the local backend; the kubernetes backend takes
    /// only a non-root `uid` or `"uid:gid"`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<User>,
    /// Working directory of the steps, relative to the workspace (no `..`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// Resource limits of each step's container (ignored by the local backend).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resources: Option<Resources>,
    /// Pod settings for the Kubernetes backend (ignored by the others). Only these keys
    /// exist: pods run under the `restricted` Pod Security Standard, so `privileged`,
    /// `hostPath`, `hostNetwork`, `securityContext`, `volumes` and the like are refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes: Option<Kubernetes>,

    /// scan: SARIF report globs produced by the steps (relative to the workspace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sarif: Option<OneOrMany<String>>,
    /// scan: lowest finding severity that fails the stage (default `high`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub fail_on: Option<ScanLevel>,

    /// image: Dockerfile path, relative to the workspace (default `Dockerfile`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dockerfile: Option<String>,
    /// image: build context directory, relative to the workspace (default `.`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub context: Option<String>,
    /// image: reference to push to, `[registry/]name[:tag]` (no digest), e.g.
    /// `registry.example.com/app:${{ git.sha }}`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub push: Option<String>,
    /// image: name of the secret holding registry credentials.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry_secret: Option<String>,
    /// image: `--build-arg`s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub build_args: Option<Env>,
    /// image: Dockerfile target stage (a string). deploy with `strategy:`: the
    /// Deployment rolled out, `{ deployment, namespace, container, service }`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<StageTarget>,

    /// deploy: the environment changed (required).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<String>,
    /// deploy: people who must approve before the stage starts.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub approval: Option<Approval>,
    /// deploy: how the new version (`image`) replaces the old one in the Deployment
    /// named by `target`, driven by the server's rollout controller: `recreate`,
    /// `{ rolling: … }`, `{ blue_green: … }` or `{ canary: … }`. Needs `target` and
    /// `image`; a rollout stage has no `steps`, `runs_on`, `services`, `env`,
    /// `matrix`, `retry`, `artifacts`, `cache`, `user`, `workdir`, `resources` or
    /// `kubernetes` (no runner runs it: put scripts in a stage before it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub strategy: Option<Strategy>,
    /// deploy: the short form of `strategy: { canary: … }` with the target inside it
    /// (`image` optional: without it the server takes a promotion's image, or refuses
    /// the rollout). Not together with `strategy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<Canary>,
}

/// A numeric uid, or `"uid:gid"` / a user name.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum User {
    Id(u32),
    Name(String),
}

/// Kubernetes-style resource limits.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Resources {
    /// Memory: `512Mi`, `2Gi` (powers of 1024), `500M`, `1G` (powers of 1000), or bytes.
    /// At least `6Mi`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<Quantity>,
    /// CPUs: `1`, `1.5`, `0.25`, or millicpus as `500m`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<Quantity>,
    /// Disk for the workspace and the containers' own files, written like memory; at
    /// least `64Mi`. The Kubernetes backend requests it as `ephemeral-storage` and
    /// size-limits the workspace with it; other backends ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<Quantity>,
}

/// The pod settings a pipeline may choose on the Kubernetes backend: this is the whole
/// allow-list (with the stage's `resources`). Everything else about the pod is fixed by
/// Slipway: non-root, no privilege escalation, every capability dropped, no host
/// namespaces, paths or extra volumes (the `restricted` Pod Security Standard).
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Kubernetes {
    /// Node labels the pod's node must have (`spec.nodeSelector`), e.g.
    /// `{ kubernetes.io/arch: arm64 }`. Keys and values are Kubernetes label keys and
    /// values; no expressions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node_selector: Option<BTreeMap<String, String>>,
    /// Taints the pod tolerates (`spec.tolerations`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tolerations: Option<Vec<Toleration>>,
    /// Service account the pod runs as (`spec.serviceAccountName`): a DNS-1123 subdomain
    /// such as `deployer`. Only for repositories marked trusted; a run that is not trusted
    /// (every pull request from a fork) is refused when it is planned.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
}

/// A Kubernetes toleration.
#[derive(Debug, Clone, Default, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Toleration {
    /// Taint key (a label key). Without it, `operator: Exists` tolerates every taint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// `Equal` (default): the taint's value must be `value`; `Exists`: any value (then
    /// no `value`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operator: Option<TolerationOperator>,
    /// Taint value (a label value), with `operator: Equal`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    /// Taint effect tolerated; without it, every effect.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub effect: Option<TaintEffect>,
    /// With `effect: NoExecute` only: how long the pod stays on a node after the taint
    /// appears (default: forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub toleration_seconds: Option<u64>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum TolerationOperator {
    Exists,
    Equal,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

/// A number, or a number with a unit suffix.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Quantity {
    Number(f64),
    Text(String),
}

/// `90s`, `10m`, `1h30m`, `2d`, or a number of seconds.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Duration {
    Seconds(u64),
    Text(String),
}

/// Axes (`key: [values]`) plus optional `include` / `exclude` lists, with GitHub
/// Actions semantics.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
pub struct Matrix {
    /// Extra combinations, or extra keys for matching combinations.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub include: Option<Vec<BTreeMap<String, Scalar>>>,
    /// Combinations to remove (partial matches remove every matching combination).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exclude: Option<Vec<BTreeMap<String, Scalar>>>,
    /// Axes: each key lists its values.
    #[serde(flatten)]
    pub axes: BTreeMap<String, Vec<Scalar>>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct When {
    /// Branch globs (for pull requests: the target branch).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub branch: Option<Filter>,
    /// Tag globs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tag: Option<Filter>,
    /// Event name(s).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub event: Option<OneOrMany<EventName>>,
    /// Changed-path globs; the stage runs if any changed path matches (or changes are unknown).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub paths: Option<Filter>,
}

/// A command (shorthand for `{ run: … }`) or a full step.
#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(untagged)]
pub enum Step {
    Command(String),
    Full(StepSpec),
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct StepSpec {
    /// Unique within the stage (default `step N`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// Shell commands. `${{ expr }}` becomes a shell variable, never pasted code.
    pub run: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout: Option<Duration>,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Service {
    pub image: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<Env>,
    /// Arguments replacing the image's command.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// A shell command run inside the service's container (`sh -c`) until it exits
    /// 0: the steps start only then (a Docker health check, a Kubernetes startup
    /// probe). Without it a service is ready once it runs (or, on Docker, when its
    /// image's HEALTHCHECK passes).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum ScanLevel {
    None,
    Note,
    Low,
    Medium,
    High,
    Critical,
}

#[derive(Debug, Clone, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct Approval {
    /// Role whose members may approve (never the person who triggered the run).
    pub role: String,
    /// Approvals needed (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 100))]
    pub count: Option<u32>,
}
