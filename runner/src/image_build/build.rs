//! The engine's classic builder: the build request, its streamed output, the image id
//! or the instruction that failed.

use std::collections::HashMap;

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{BuildImageOptionsBuilder, BuilderVersion};
use bytes::{Bytes, BytesMut};
use futures::stream::{self, StreamExt};

use super::context::ContextTar;
use super::engine_error::engine_error;
use super::output::Output;
use super::reference::{Reference, credentials};
use crate::backend::LogStreamKind;
use crate::error::{Error, Result};
use crate::spec::ImageSpec;

/// Runs the engine's build and returns the image id.
pub(super) async fn build(
    docker: &Docker,
    dockerfile: &str,
    tar: ContextTar,
    // A tar entry to put before the context's entries (a Dockerfile from outside).
    first: Option<Bytes>,
    spec: &ImageSpec,
    reference: Option<&Reference>,
    out: &Output,
) -> Result<String> {
    let mut options = BuildImageOptionsBuilder::default()
        .dockerfile(dockerfile)
        // Remove intermediate containers, also after a failed step.
        .rm(true)
        .forcerm(true)
        .version(BuilderVersion::BuilderV1);
    if let Some(target) = &spec.target {
        options = options.target(target);
    }
    if !spec.build_args.is_empty() {
        options = options.buildargs(&spec.build_args.iter().collect::<HashMap<_, _>>());
    }
    if !spec.labels.is_empty() {
        options = options.labels(&spec.labels.iter().collect::<HashMap<_, _>>());
    }
    // The same credentials let `FROM` pull private base images from the push registry.
    let credentials = reference
        .and_then(|r| credentials(r, spec).map(|c| HashMap::from([(r.server_address(), c)])));

    // bollard's body type is private, hence the match in place.
    let body = match (tar, first) {
        (ContextTar::Bytes(tar), None) => bollard::body_full(tar),
        (ContextTar::Bytes(tar), Some(first)) => {
            let mut body = BytesMut::with_capacity(first.len() + tar.len());
            body.extend_from_slice(&first);
            body.extend_from_slice(&tar);
            bollard::body_full(body.freeze())
        }
        (ContextTar::Stream(tar), None) => bollard::body_try_stream(tar),
        (ContextTar::Stream(tar), Some(first)) => {
            bollard::body_try_stream(stream::once(async { Ok(first) }).chain(tar))
        }
    };
    let mut stream = docker.build_image(options.build(), credentials, Some(body));
    let mut id = None;
    // The last `Step n/m : INSTRUCTION` line, to say which instruction failed.
    let mut step: Option<String> = None;
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(text) = info.stream.as_deref().filter(|t| !t.is_empty()) {
                    for line in text.lines() {
                        if line.starts_with("Step ") && line.contains(" : ") {
                            step = Some(line.trim().to_owned());
                        }
                    }
                    out.send_raw(LogStreamKind::Stdout, text);
                }
                if let Some(status) = info.status.as_deref().filter(|s| !s.is_empty()) {
                    out.send(LogStreamKind::Stdout, status);
                }
                if let Some(image) = info.aux.and_then(|aux| aux.id) {
                    id = Some(image);
                }
            }
            Err(EngineError::DockerStreamError { error }) => {
                out.send(LogStreamKind::Stderr, &error);
                return Err(build_failure(step.as_deref(), &error, out));
            }
            // The engine refused the request itself (bad Dockerfile path, bad option):
            // the same request fails again.
            Err(EngineError::DockerResponseServerError {
                status_code,
                message,
            }) if status_code < 500 || is_build_input_error(&message) => {
                out.send(LogStreamKind::Stderr, &message);
                return Err(build_failure(step.as_deref(), &message, out));
            }
            Err(e) => return Err(engine_error("build image", e)),
        }
    }
    id.ok_or_else(|| Error::Backend {
        op: "build image",
        message: "the engine finished the build without reporting an image id".into(),
    })
}

/// Engine messages (HTTP 500 on older engines) that mean the build's inputs are
/// unusable rather than the engine broken.
fn is_build_input_error(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    [
        "dockerfile",
        "unknown instruction",
        "failed to reach build target",
        "parse error",
        "no build stage",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

fn build_failure(step: Option<&str>, message: &str, out: &Output) -> Error {
    let message = out.redact(message.trim());
    Error::ImageBuild(match step {
        Some(step) => format!("{step}: {message}"),
        None => message,
    })
}
