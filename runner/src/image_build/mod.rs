//! Builds a container image through the Docker engine and pushes it to a registry:
//! the work behind `kind: image` stages ([`crate::Backend::build_image`]).
//!
//! The engine does the building (its classic builder: API 1.41 engines need a gRPC
//! session for BuildKit, and the classic builder is what every engine has), so the
//! runner only ships it a tar of the build context. Build and push output is streamed
//! to the stage log as it arrives. The result is the engine's image id and, when
//! pushed, the registry's manifest digest, which is what later stages deploy by: tags
//! move, digests do not.
//!
//! Where the Dockerfile is: [`ImageSpec::dockerfile`] and [`ImageSpec::context`] are
//! both relative to the workspace, but the engine reads the Dockerfile from the
//! context tar. [`locate_dockerfile`] says which case applies: inside the context the
//! engine is given its path within the context; outside it (`docker/Dockerfile` with
//! context `app`, as `docker build -f` allows) the caller reads the file from the
//! workspace and passes its bytes with [`BuildContext::with_dockerfile`], and it is
//! added to the tar under a name of its own, as the Docker CLI does.
//!
//! The context tar is sent as given: the engine's classic builder does not apply
//! `.dockerignore` to it (the Docker CLI filters on the client side), so a caller that
//! wants that must leave the excluded files out of the tar.
//!
//! Cancelling: drop the future. The engine stops the build when the connection
//! closes and removes the `RUN` container (tested); a push in flight stops the same
//! way, possibly leaving the local tag behind.
//!
//! Errors: a failing instruction or an unusable Dockerfile is [`Error::ImageBuild`]
//! (not retryable) naming the failing step; a registry that cannot be reached is a
//! retryable [`Error::ImagePush`], one that refuses the credentials or the image a
//! non-retryable one; an unreachable engine is a retryable [`Error::Backend`].
//! Registry passwords never appear in logs or errors.
//!
//! Here: [`build_and_push`]. `context` is what the engine builds from, `dockerfile`
//! where the Dockerfile is, `reference` the push reference and its credentials,
//! `build` and `push` the engine calls, `output` the redacting log.

mod build;
mod context;
mod dockerfile;
mod engine_error;
mod output;
mod push;
mod reference;

use bollard::Docker;
use tokio::sync::mpsc::UnboundedSender;

use crate::backend::{BuiltImage, LogChunk};
use crate::error::{Error, Result};
use crate::spec::ImageSpec;
use build::build;
use dockerfile::dockerfile_entry;
use engine_error::engine_error;
use output::Output;
use push::{push, untag};

pub use context::BuildContext;
pub use dockerfile::{DockerfileLocation, locate_dockerfile};
pub(crate) use push::push_error_is_retryable;
pub(crate) use reference::Reference;

/// Builds `spec` from `context` through the engine and, when `spec.push` is set, tags
/// and pushes it with `spec.registry_auth`, returning the image id and the pushed
/// manifest digest. Output lines (build steps, `RUN` output, push progress) go to
/// `log` as they arrive; a dropped receiver is ignored.
///
/// After a successful push the local tag is removed (and with it the image, unless
/// something else references it), so a runner host does not collect one image per
/// build; the digest lives in the registry. A build-only image (no `push`) is kept,
/// untagged, under its id.
///
/// The engine's API version is negotiated on `docker` first (it is shared by clones),
/// so a client made with bollard's defaults works with older engines.
pub async fn build_and_push(
    docker: &Docker,
    context: BuildContext,
    spec: &ImageSpec,
    log: UnboundedSender<LogChunk>,
) -> Result<BuiltImage> {
    let reference = spec.push.as_deref().map(Reference::parse).transpose()?;
    let location = locate_dockerfile(spec)?;
    let out = Output {
        log,
        password: spec
            .registry_auth
            .as_ref()
            .map(|a| a.password.clone())
            .filter(|p| !p.is_empty()),
    };
    docker
        .clone()
        .negotiate_version()
        .await
        .map_err(|e| engine_error("negotiate API version", e))?;

    let (dockerfile, first) = match location {
        DockerfileLocation::InContext(path) => (path, None),
        DockerfileLocation::OutsideContext => {
            let content = context.outside_dockerfile.ok_or_else(|| {
                Error::InvalidState(format!(
                    "dockerfile `{}` is outside context `{}`: its content must be passed \
                     with BuildContext::with_dockerfile",
                    spec.dockerfile, spec.context
                ))
            })?;
            let (name, entry) = dockerfile_entry(&content);
            (name, Some(entry))
        }
    };

    let id = build(
        docker,
        &dockerfile,
        context.tar,
        first,
        spec,
        reference.as_ref(),
        &out,
    )
    .await?;
    let Some(reference) = reference else {
        return Ok(BuiltImage {
            id,
            reference: None,
            digest: None,
        });
    };
    let pushed = push(docker, &id, &reference, spec, &out).await;
    // Whether or not the push worked, the tag has done its job.
    untag(docker, &id, &reference).await;
    let digest = pushed?;
    Ok(BuiltImage {
        id,
        reference: Some(reference.full()),
        digest: Some(digest),
    })
}
