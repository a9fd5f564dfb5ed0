//! Slipway's stage executor.
//!
//! [`run_stage`] drives a [`Backend`] through one stage of a pipeline: prepare the
//! workspace, run the steps in order, stream masked log lines, enforce timeouts and
//! cancellation, collect artifacts, and clean up. The backend only knows how to run
//! things (local processes, Docker containers, Kubernetes pods, behind one trait).
//!
//! Every backend must pass the conformance suite (module `conformance`, behind the
//! `conformance` feature): `runner::conformance_tests!(make_backend, image);` in an
//! integration test expands to one test per case. `failing::FailingBackend` (same
//! feature) wraps a backend and fails at named points, for error-path tests.
//!
//! This crate does not depend on `pipelines`: the server maps a planned stage onto
//! [`StageSpec`], which keeps a remote runner's dependencies small.

mod archive;
pub mod artifact_secrets;
pub mod artifacts;
mod backend;
mod docker;
mod error;
mod finding;
pub mod image_build;
pub mod interleave;
pub mod kubernetes;
mod local;
mod lock;
pub mod log;
pub mod mask;
pub mod owned_dir;
mod registry;
pub mod safe_path;
pub mod scan;
mod spec;
mod stage;
pub mod workspace;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;
#[cfg(any(test, feature = "conformance"))]
pub mod failing;

pub use artifacts::Artifact;
pub use backend::{
    Backend, BuiltImage, LogChunk, LogStream, LogStreamKind, StageHandle, StepExit, StepHandle,
};
pub use docker::{DockerBackend, DockerOptions, DockerSweepReport};
pub use error::{Error, Result};
pub use finding::Finding;
pub use kubernetes::{KubernetesBackend, KubernetesOptions};
pub use local::LocalBackend;
pub use local::{SweepReport, TOOLCHAIN_VARS, host_env};
pub use mask::Masker;
pub use spec::{
    ContainerSettings, IMAGE_STEP, ImageSpec, PodSettings, RegistryAuth, SCAN_STEP, ScanSpec,
    ServiceSpec, Severity, Source, StageKind, StageSpec, StepSpec, Toleration,
};
pub use stage::{
    Closed, DEFAULT_EVENT_BUDGET, EventReceiver, EventSender, LINE_OVERHEAD, LogLine, RunOptions,
    StageEvent, StageOutcome, Status, StepOutcome, event_channel, run_stage,
};

#[cfg(any(test, feature = "conformance"))]
pub use failing::{FailPoint, FailingBackend};
