//! Types that go in and out of the [`Store`](super::Store).

use serde::{Deserialize, Serialize};
use serde_json::Value;

/// The event a run is for: the pipelines' own type, so the planner, the forge
/// adapters and the store speak one vocabulary.
pub use pipelines::Event;

/// The kind of forge a repository lives on (stored by its lowercase name).
pub use crate::forge::ForgeKind;

/// [`Event`]'s OpenAPI schema: a string, one of its names (`pipelines` stays free of
/// the OpenAPI crate).
fn event_schema() -> utoipa::openapi::Object {
    utoipa::openapi::ObjectBuilder::new()
        .schema_type(utoipa::openapi::schema::Type::String)
        .enum_values(Some(Event::ALL.iter().map(|e| e.as_str())))
        .build()
}

pub type RepoId = i64;
pub type RunId = i64;
pub type StageId = i64;
pub type StepId = i64;
pub type RunnerId = i64;
pub type TokenId = i64;
pub type UserId = i64;

/// A string enum stored as its snake_case name (the same spelling as in JSON).
macro_rules! str_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
        #[serde(rename_all = "snake_case")]
        pub enum $name { $($variant),+ }

        impl $name {
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = super::Error;
            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($name::$variant),)+
                    _ => Err(super::Error::Invalid(
                        format!(concat!("unknown ", stringify!($name), " {:?}"), s),
                    )),
                }
            }
        }
    };
}

str_enum!(
    /// A run's state; the last four are final.
    RunStatus {
        Pending = "pending",
        Running = "running",
        Success = "success",
        Failure = "failure",
        Error = "error",
        Cancelled = "cancelled",
    }
);
str_enum!(
    /// What created a run.
    Trigger { Webhook = "webhook", Hook = "hook", Cron = "cron", Manual = "manual", Rerun = "rerun" }
);
str_enum!(
    /// A stage's state. `waiting` → `queued` → `running` → one of the final states.
    StageStatus {
        Waiting = "waiting",
        Queued = "queued",
        Running = "running",
        Success = "success",
        Failure = "failure",
        Error = "error",
        Cancelled = "cancelled",
        Skipped = "skipped",
        TimedOut = "timed_out",
    }
);
str_enum!(
    /// A step's state.
    StepStatus {
        Pending = "pending",
        Running = "running",
        Success = "success",
        Failure = "failure",
        Error = "error",
        Cancelled = "cancelled",
        Skipped = "skipped",
        TimedOut = "timed_out",
    }
);
str_enum!(
    /// What an API token may do.
    TokenScope { Admin = "admin", Runner = "runner", Hook = "hook" }
);

impl RunStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, RunStatus::Pending | RunStatus::Running)
    }
}

impl StageStatus {
    pub fn is_final(self) -> bool {
        !matches!(
            self,
            StageStatus::Waiting | StageStatus::Queued | StageStatus::Running
        )
    }
}

impl StepStatus {
    pub fn is_final(self) -> bool {
        !matches!(self, StepStatus::Pending | StepStatus::Running)
    }
}

/// A repository to register.
#[derive(Debug, Clone)]
pub struct NewRepo {
    pub name: String,
    pub forge: ForgeKind,
    pub clone_url: String,
    pub default_branch: String,
    /// Encrypted by the caller.
    pub webhook_secret_enc: Vec<u8>,
    /// Encrypted by the caller.
    pub forge_token_enc: Option<Vec<u8>>,
    pub trusted: bool,
    /// The forge's API base URL, where it cannot be derived from the clone URL.
    pub api_url: Option<String>,
}

/// A registered repository. The encrypted fields are never serialised.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Repo {
    pub id: RepoId,
    pub name: String,
    pub forge: ForgeKind,
    pub clone_url: String,
    pub default_branch: String,
    #[serde(skip)]
    pub webhook_secret_enc: Vec<u8>,
    #[serde(skip)]
    pub forge_token_enc: Option<Vec<u8>>,
    /// The forge's API base URL when it cannot be derived from `clone_url`
    /// (set with [`Store::set_repo_api_url`](super::Store::set_repo_api_url)).
    pub api_url: Option<String>,
    pub trusted: bool,
    pub next_run_number: i64,
    pub created_at: i64,
}

/// A run to create; see [`NewRun::new`] for the defaults.
#[derive(Debug, Clone)]
pub struct NewRun {
    pub trigger: Trigger,
    pub event: Event,
    /// The full ref, e.g. `refs/heads/main`, `refs/tags/v1`, `refs/pull/7/head`.
    pub git_ref: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    pub before_sha: Option<String>,
    pub pr_number: Option<i64>,
    pub source_branch: Option<String>,
    /// A pull request from a fork.
    pub fork: bool,
    /// Whether steps may see secrets and privileged settings (decided by the caller).
    pub trusted: bool,
    pub message: String,
    pub author: String,
    /// Manual-trigger parameters (a JSON object).
    pub params: Value,
    pub rerun_of: Option<RunId>,
    /// The user whose personal token triggered the run (API triggers and reruns).
    pub triggered_by: Option<UserId>,
    /// Who pushed, as the forge's verified payload says: `<forge>:<login>`.
    pub pusher: Option<String>,
    /// A promotion or rollback: the run whose results it deploys, and where.
    pub promotion: Option<Promotion>,
}

/// What a promotion or rollback run deploys, and where.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Promotion {
    pub kind: PromotionKind,
    /// The run whose artifacts and image digests are deployed again (nothing rebuilt).
    pub from: RunId,
    /// That run's number in the repository.
    pub from_number: i64,
    pub environment: String,
}

/// Why a run deploys an earlier run's results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum PromotionKind {
    /// `slipway promote`: a tested run goes on to the next environment.
    Promote,
    /// `slipway rollback`: the version live before the current one goes back.
    Rollback,
}

impl PromotionKind {
    pub fn as_str(self) -> &'static str {
        match self {
            PromotionKind::Promote => "promote",
            PromotionKind::Rollback => "rollback",
        }
    }
}

impl std::str::FromStr for PromotionKind {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "promote" => Ok(PromotionKind::Promote),
            "rollback" => Ok(PromotionKind::Rollback),
            other => Err(format!("unknown promotion kind `{other}`")),
        }
    }
}

impl NewRun {
    /// A run with empty message/author, no parameters, not a fork, untrusted.
    pub fn new(trigger: Trigger, event: Event, git_ref: &str, sha: &str) -> NewRun {
        NewRun {
            trigger,
            event,
            git_ref: git_ref.to_string(),
            branch: git_ref.strip_prefix("refs/heads/").map(str::to_string),
            tag: git_ref.strip_prefix("refs/tags/").map(str::to_string),
            sha: sha.to_string(),
            before_sha: None,
            pr_number: None,
            source_branch: None,
            fork: false,
            trusted: false,
            message: String::new(),
            author: String::new(),
            params: Value::Object(Default::default()),
            rerun_of: None,
            triggered_by: None,
            pusher: None,
            promotion: None,
        }
    }
}

/// A run: one trigger of one repository's pipelines.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Run {
    pub id: RunId,
    pub repo_id: RepoId,
    /// 1, 2, 3 … per repository, without gaps.
    pub number: i64,
    pub status: RunStatus,
    pub trigger: Trigger,
    #[schema(schema_with = event_schema)]
    pub event: Event,
    pub git_ref: String,
    pub branch: Option<String>,
    pub tag: Option<String>,
    pub sha: String,
    pub before_sha: Option<String>,
    pub pr_number: Option<i64>,
    pub source_branch: Option<String>,
    pub fork: bool,
    pub trusted: bool,
    pub message: String,
    pub author: String,
    pub params: Value,
    /// The expanded plan, stored so that the run can be re-run exactly.
    pub plan: Option<Value>,
    pub yaml_sha256: Option<String>,
    /// Validation diagnostics of a pipeline that failed to load.
    pub diagnostics: Option<Value>,
    /// Why the run ended badly (validation error, "superseded by run #7", …).
    pub error: Option<String>,
    pub rerun_of: Option<RunId>,
    /// The user whose personal token triggered the run (API triggers and reruns); never
    /// taken from a commit's author.
    pub triggered_by: Option<UserId>,
    /// Who pushed, `<forge>:<login>` from the forge's verified payload (the sender);
    /// never taken from a commit's author.
    pub pusher: Option<String>,
    /// Set on a promotion or rollback run.
    pub promotion: Option<Promotion>,
    /// A running run with a deploy stage waiting at its environment's gate
    /// (approvals, wait timer or another deployment): shown as `blocked`.
    pub blocked: bool,
    pub created_at: i64,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
}

/// A planned stage for [`Store::set_run_planned`](super::Store::set_run_planned).
#[derive(Debug, Clone)]
pub struct NewStage {
    /// Unique within the run, e.g. `ci/test (features=full)`.
    pub key: String,
    pub pipeline: String,
    /// Keys of stages of the same run that must succeed first.
    pub needs: Vec<String>,
    /// What the runner needs to execute the stage (JSON).
    pub spec: Value,
    /// 1 + the YAML `retry` count.
    pub max_attempts: u32,
    /// `Some(reason)`: skipped by the plan (a `when` filter); counts as done, and stages
    /// that need it are skipped too.
    pub skip: Option<String>,
    /// `Some(reason)`: already succeeded in the run being re-run ("rerun failed stages
    /// only"); inserted as `success`, so stages that need it can start.
    pub succeeded: Option<String>,
    /// With `succeeded`: the stage of an earlier run whose results (artifacts, pushed
    /// images, outputs) this one carries, so that stages needing it get them.
    pub carried_from: Option<StageId>,
    /// Step names, in order.
    pub steps: Vec<String>,
    /// Labels a runner must have to lease the stage ([`crate::runs::routing`]).
    pub labels: Vec<String>,
}

impl NewStage {
    /// Whether the stage is a rollout, driven by the server's rollout controller and
    /// never leased to a runner: a deploy stage whose spec has a `rollout`.
    pub fn is_rollout(&self) -> bool {
        let kind = &self.spec["kind"];
        kind["type"] == "deploy" && !kind["rollout"].is_null()
    }

    pub fn new(key: &str, needs: &[&str], steps: &[&str]) -> NewStage {
        NewStage {
            key: key.to_string(),
            pipeline: String::new(),
            needs: needs.iter().map(|s| s.to_string()).collect(),
            spec: Value::Object(Default::default()),
            max_attempts: 1,
            skip: None,
            succeeded: None,
            carried_from: None,
            steps: steps.iter().map(|s| s.to_string()).collect(),
            labels: Vec::new(),
        }
    }
}

/// A stage: one unit the queue hands to a runner.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Stage {
    pub id: StageId,
    pub run_id: RunId,
    pub repo_id: RepoId,
    pub key: String,
    pub pipeline: String,
    pub status: StageStatus,
    pub needs: Vec<String>,
    pub spec: Value,
    /// 1 for the first attempt.
    pub attempt: i64,
    pub max_attempts: i64,
    /// The one extra attempt after an infrastructure error has been spent.
    pub infra_retry_used: bool,
    pub runner_id: Option<RunnerId>,
    #[serde(skip)]
    pub lease_token: Option<String>,
    pub lease_expires_at: Option<i64>,
    pub cancel_requested: bool,
    /// Why the stage is in its state (skipped because …, runner lost, retried after …).
    pub reason: Option<String>,
    pub queued_at: Option<i64>,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub created_at: i64,
    /// Labels a runner must have to lease the stage (empty: any runner).
    pub labels: Vec<String>,
    /// While the stage is leased but has not started its first step because its
    /// runner's backend waits (for a Kubernetes ResourceQuota): why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub waiting: Option<String>,
}

/// A step of a stage (the row describes the stage's latest attempt).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Step {
    pub id: StepId,
    pub stage_id: StageId,
    pub idx: i64,
    pub name: String,
    pub status: StepStatus,
    pub exit_code: Option<i64>,
    pub oom_killed: bool,
    pub started_at: Option<i64>,
    pub finished_at: Option<i64>,
    pub log_lines: i64,
    pub log_bytes: i64,
}

/// A stage with its steps, for the API.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StageWithSteps {
    #[serde(flatten)]
    pub stage: Stage,
    pub steps: Vec<Step>,
    /// What the stage's last attempt reported as outputs
    /// (`${{ stages.<name>.outputs.<key> }}`), e.g. an image stage's `image` and `digest`.
    pub outputs: std::collections::BTreeMap<String, String>,
    /// Set while the stage is queued and no registered runner has all its labels: why
    /// it cannot start (it waits until such a runner registers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub unroutable: Option<String>,
}

/// A queued stage's labels ([`Store::queued_stage_labels`](super::Store::queued_stage_labels)).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QueuedLabels {
    pub stage_id: StageId,
    pub run_id: RunId,
    pub key: String,
    pub labels: Vec<String>,
    /// Its repository's `owner/name`, for the runners' repository scopes.
    pub repo: String,
}

/// Concurrency limits for [`Store::lease_stage`](super::Store::lease_stage): the
/// number of stages running at once, in total and per repository.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub global: usize,
    pub per_repo: usize,
}

impl Limits {
    pub const UNLIMITED: Limits = Limits {
        global: usize::MAX,
        per_repo: usize::MAX,
    };
}

/// A leased stage: the runner proves it holds the lease with `token`.
#[derive(Debug, Clone, PartialEq)]
pub struct Lease {
    pub token: String,
    pub expires_at: i64,
    pub stage: Stage,
    pub steps: Vec<Step>,
    pub run: Run,
}

/// What a heartbeat tells the runner.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Heartbeat {
    /// Keep going; the lease was extended.
    Ok,
    /// Keep the lease but stop the stage: cancellation was requested.
    Cancel,
    /// The lease is gone (expired and re-queued, or finished): stop and drop the work.
    Lost,
}

/// How a runner says a stage ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOutcome {
    /// `success`, `failure` (a step failed), `timed_out`, `cancelled`, or `error` (an
    /// infrastructure error: the backend failed, not the user's code).
    pub status: StageStatus,
    pub reason: Option<String>,
}

impl StageOutcome {
    pub fn new(status: StageStatus) -> StageOutcome {
        StageOutcome {
            status,
            reason: None,
        }
    }

    pub fn with_reason(status: StageStatus, reason: &str) -> StageOutcome {
        StageOutcome {
            status,
            reason: Some(reason.to_string()),
        }
    }
}

/// What [`Store::finish_stage`](super::Store::finish_stage) did with the stage.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Settled {
    /// The stage reached this final status.
    Finished(StageStatus),
    /// The stage was queued again for this attempt.
    Retrying { attempt: i64 },
}

/// What [`Store::finish_stage_report`](super::Store::finish_stage_report) did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FinishReport {
    pub settled: Settled,
    /// The run's final status, when this call is the one that ended the run.
    pub run_finished: Option<RunStatus>,
}

/// A secret's metadata (never its value).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct SecretMeta {
    pub name: String,
    pub allow_pull_requests: bool,
    pub created_at: i64,
    pub updated_at: i64,
}

/// A secret's encrypted value, for injecting into a stage.
#[derive(Debug, Clone, PartialEq)]
pub struct SecretValue {
    pub name: String,
    pub value_enc: Vec<u8>,
    pub allow_pull_requests: bool,
}

/// An API token (the hash never leaves the store).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct ApiToken {
    pub id: TokenId,
    pub name: String,
    pub scope: TokenScope,
    /// The repositories it acts for (runner and hook tokens).
    pub repos: super::RepoScope,
    pub created_at: i64,
    pub last_used_at: Option<i64>,
}

/// A runner that registered with the server.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Runner {
    pub id: RunnerId,
    pub name: String,
    pub labels: Vec<String>,
    pub capacity: i64,
    /// The repositories whose stages it may lease (its token's scope).
    pub repos: super::RepoScope,
    pub created_at: i64,
    pub last_seen_at: i64,
}

/// A status change of a run (`stage_id` is `None`) or of a stage.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct StoredEvent {
    /// Increases with every event.
    pub id: i64,
    pub run_id: RunId,
    pub stage_id: Option<StageId>,
    pub status: String,
    pub created_at: i64,
}

str_enum!(
    /// What an artifact record stands for: a file in the blob store, or an image an
    /// image stage pushed (name = reference, sha256 = the manifest digest's hex).
    ArtifactKind { File = "file", Image = "image" }
);

/// An artifact to record for a stage (the blob is already stored).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewArtifact {
    /// Relative, `/`-separated path in the workspace (checked by the caller).
    pub name: String,
    pub kind: ArtifactKind,
    /// Lower-case hex.
    pub sha256: String,
    pub size: i64,
    /// Permission bits to restore on download.
    pub mode: i64,
}

/// A stored artifact, with the key of the stage that produced it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct ArtifactRecord {
    pub id: i64,
    pub run_id: RunId,
    pub stage_id: StageId,
    pub stage_key: String,
    pub name: String,
    pub kind: ArtifactKind,
    pub sha256: String,
    pub size: i64,
    pub mode: i64,
    pub created_at: i64,
}

/// A repository's cache entry: a tar blob saved under a key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct CacheEntry {
    pub repo_id: RepoId,
    pub key: String,
    pub sha256: String,
    pub size: i64,
    pub created_at: i64,
    pub last_used_at: i64,
}
