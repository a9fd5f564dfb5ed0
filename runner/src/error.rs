//! The runner's error type.
//!
//! A step that exits non-zero is *not* an error: it is a result
//! ([`crate::StepExit`]). `Error` is only for things that stopped the runner from
//! getting a result at all, and `is_retryable()` tells the scheduler whether running
//! the same stage again could plausibly succeed.

use std::io;

/// `Result` with the runner's [`Error`] as the default error type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The stage spec itself is unusable (bad env name, NUL byte, …). Running it again
    /// fails the same way.
    #[error("invalid stage spec: {0}")]
    InvalidSpec(String),

    /// The requested commit is not in the repository. Not retryable: the commit will
    /// not appear by retrying (the server fetches before it plans).
    #[error("commit `{commit}` not found in {url}")]
    CommitNotFound { url: String, commit: String },

    /// A git operation failed (clone, fetch, checkout). Usually transport or disk
    /// trouble, hence retryable.
    #[error("git {context}: {source}")]
    Git {
        context: String,
        #[source]
        source: git2::Error,
    },

    /// A filesystem or process operation failed on the runner host.
    #[error("{context}: {source}")]
    Io {
        context: String,
        #[source]
        source: io::Error,
    },

    /// An artifact glob or path was refused (escapes the workspace, bad glob). A
    /// pipeline-author mistake, so not retryable.
    #[error("artifact `{path}`: {reason}")]
    Artifact { path: String, reason: String },

    /// A scan stage's input was refused: a malformed SARIF report or allow-list entry
    /// (`path` names the file, and the line where known). The pipeline's mistake, so
    /// not retryable.
    #[error("scan `{path}`: {reason}")]
    Scan { path: String, reason: String },

    /// The handle does not name anything this backend knows (e.g. the stage was
    /// already destroyed, or the runner restarted and lost it).
    #[error("unknown {kind} `{id}`")]
    NotFound { kind: &'static str, id: String },

    /// The backend was asked to do something its current state does not allow (e.g.
    /// tailing a step twice). A caller bug, so not retryable.
    #[error("invalid state: {0}")]
    InvalidState(String),

    /// A container image is not on the engine and pulling it failed (no registry
    /// access, unknown name, no credentials). Not retryable: the stage would fail
    /// the same way until someone makes the image available.
    #[error(
        "image `{image}` is not present on the Docker engine and could not be pulled: {reason}"
    )]
    ImageUnavailable { image: String, reason: String },

    /// A pod's container image cannot be pulled (Kubernetes: `ErrImagePull`,
    /// `ImagePullBackOff`, …, read from the pod's status). Not retryable, like
    /// [`Error::ImageUnavailable`].
    #[error("image `{image}` cannot be pulled: {reason}")]
    ImagePull { image: String, reason: String },

    /// No node can take the stage's pod (node selector, tolerations, resources).
    /// Not retryable: the pipeline asks for something the cluster does not have.
    #[error("the stage's pod cannot be scheduled: {0}")]
    Unschedulable(String),

    /// A service container exited or reported itself unhealthy before the steps
    /// ran. Not retryable: the service's image, command or environment is wrong.
    #[error("service `{service}` failed: {message}")]
    ServiceFailed { service: String, message: String },

    /// Generic infrastructure failure of a backend operation (container engine or
    /// API server unreachable, injected failure, …).
    #[error("backend operation `{op}` failed: {message}")]
    Backend { op: &'static str, message: String },

    /// Building an image failed: a Dockerfile instruction failed, or the Dockerfile or
    /// its context is unusable. Not retryable: the same inputs fail the same way.
    #[error("image build failed: {0}")]
    ImageBuild(String),

    /// Pushing an image failed. Retryable when the registry could not be reached;
    /// not when it refused the credentials or the image. Never carries credentials.
    #[error("push to {registry} failed: {message}")]
    ImagePush {
        registry: String,
        message: String,
        retryable: bool,
    },
}

impl Error {
    pub(crate) fn io(context: impl Into<String>, source: io::Error) -> Self {
        Error::Io {
            context: context.into(),
            source,
        }
    }

    /// [`Error::io`] as a `map_err` adapter: `.map_err(Error::io_with("reading x"))`.
    pub(crate) fn io_with(context: impl Into<String>) -> impl FnOnce(io::Error) -> Self {
        let context = context.into();
        move |source| Error::io(context, source)
    }

    pub(crate) fn git(context: impl Into<String>, source: git2::Error) -> Self {
        Error::Git {
            context: context.into(),
            source,
        }
    }

    /// Whether running the same stage again could succeed: infrastructure failures
    /// are retryable, mistakes in the spec or the pipeline are not.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Git { .. }
            | Error::Io { .. }
            | Error::NotFound { .. }
            | Error::Backend { .. } => true,
            Error::ImagePush { retryable, .. } => *retryable,
            Error::InvalidSpec(_)
            | Error::CommitNotFound { .. }
            | Error::Artifact { .. }
            | Error::Scan { .. }
            | Error::InvalidState(_)
            | Error::ImageBuild(_)
            | Error::ImageUnavailable { .. }
            | Error::ImagePull { .. }
            | Error::Unschedulable(_)
            | Error::ServiceFailed { .. } => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retryable_classification() {
        assert!(
            Error::Backend {
                op: "x",
                message: "y".into()
            }
            .is_retryable()
        );
        assert!(Error::io("ctx", io::Error::other("boom")).is_retryable());
        assert!(!Error::InvalidSpec("bad".into()).is_retryable());
        assert!(
            !Error::CommitNotFound {
                url: "u".into(),
                commit: "c".into()
            }
            .is_retryable()
        );
        assert!(
            !Error::Artifact {
                path: "../x".into(),
                reason: "escapes".into()
            }
            .is_retryable()
        );
    }
}
