//! The plan's shape: what is stored with a run and handed to runners.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::EventContext;
use crate::model::{Approval, Container, KubernetesSettings, Rollout, ScanLevel};

/// A run's blueprint. Stored with the run so it can be re-run exactly.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Plan {
    pub pipeline: String,
    pub file: String,
    pub yaml_sha256: String,
    /// The event, with manual parameter defaults applied.
    pub event: EventContext,
    /// Topological order; ties keep declaration order.
    pub stages: Vec<PlannedStage>,
    pub skipped: Vec<SkippedStage>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SkippedStage {
    pub id: String,
    pub stage: String,
    pub reason: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PlannedStage {
    /// The stage name, or for a matrix expansion `test (features=full, os=linux)`. Unique.
    pub id: String,
    pub stage: String,
    pub matrix: BTreeMap<String, String>,
    /// Ids of planned stages this one waits for (all expansions of a matrix stage).
    pub needs: Vec<String>,
    pub kind: PlannedKind,
    pub image: Option<String>,
    /// Built-in variables, pipeline env, matrix values and stage env, resolved.
    pub env: BTreeMap<String, String>,
    pub steps: Vec<PlannedStep>,
    pub services: BTreeMap<String, PlannedService>,
    pub artifacts: Vec<String>,
    /// The artifacts may hold secret values: the runner does not scan them. Plans
    /// stored before it existed read back as false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub allow_secrets_in_artifacts: bool,
    pub cache: Vec<String>,
    pub retry: u32,
    pub timeout_secs: Option<u64>,
    /// Env var → secret name for every secret used anywhere in the stage. Values are
    /// never in a plan: the runner injects them when the stage starts.
    pub secrets: BTreeMap<String, String>,
    /// Labels a runner must have (all of them) to run the stage; empty: any runner.
    /// Plans stored before `runs_on` existed read back as empty.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub runs_on: Vec<String>,
    /// User, working directory and resource limits of the steps' containers.
    #[serde(default, skip_serializing_if = "Container::is_default")]
    pub container: Container,
    /// Pod settings from `kubernetes:` (node selector, tolerations, service account
    /// with the position of its key). Plans stored before it existed read back as empty.
    #[serde(default, skip_serializing_if = "KubernetesSettings::is_default")]
    pub kubernetes: KubernetesSettings,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum PlannedKind {
    Run,
    Scan {
        sarif: Vec<String>,
        fail_on: ScanLevel,
    },
    Image {
        dockerfile: String,
        context: String,
        push: Option<String>,
        registry_secret: Option<String>,
        build_args: BTreeMap<String, String>,
        target: Option<String>,
    },
    Deploy {
        environment: String,
        approval: Option<Approval>,
        /// The image is rendered like a step's script: plan-time values in place,
        /// stage outputs as `${SLIPWAY_…}` references the server fills in.
        #[serde(default)]
        rollout: Option<Rollout<String>>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedStep {
    pub name: String,
    /// The step's shell text; every `${{ }}` became a `${SLIPWAY_…}` variable reference.
    pub script: String,
    /// Values for those variables (plan-time ones) plus the step's own env.
    pub env: BTreeMap<String, String>,
    pub timeout_secs: Option<u64>,
    pub secrets: BTreeMap<String, String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PlannedService {
    pub image: String,
    pub env: BTreeMap<String, String>,
    pub command: Option<Vec<String>>,
    /// The readiness command (`ready:`); plans stored before it existed have none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    #[error("pipeline not triggered: {reason}")]
    NotTriggered { reason: String },
    #[error("missing required parameter `{name}`")]
    MissingParam { name: String },
    #[error("unknown parameter `{name}`")]
    UnknownParam { name: String },
    #[error("invalid value `{value}` for parameter `{name}` (allowed: {})", options.join(", "))]
    BadParam {
        name: String,
        value: String,
        options: Vec<String>,
    },
}

pub type Result<T, E = PlanError> = std::result::Result<T, E>;
