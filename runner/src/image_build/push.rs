//! Tag, push, the manifest digest from the push (checked against the engine's repo
//! digests), and the local tag removed after.

use bollard::Docker;
use bollard::errors::Error as EngineError;
use bollard::query_parameters::{PushImageOptions, RemoveImageOptions, TagImageOptions};
use futures::stream::StreamExt;

use super::engine_error::engine_error;
use super::output::Output;
use super::reference::{Reference, credentials};
use crate::backend::LogStreamKind;
use crate::error::{Error, Result};
use crate::spec::ImageSpec;

/// Tags image `id` as `reference`, pushes it, and returns the manifest digest the
/// engine reports (`<tag>: digest: sha256:… size: …`).
pub(super) async fn push(
    docker: &Docker,
    id: &str,
    reference: &Reference,
    spec: &ImageSpec,
    out: &Output,
) -> Result<String> {
    // Tagged only now, right before the push, so that two builds of the same reference
    // on one host have the smallest window to swap tags; the repo-digest check below
    // catches the rest.
    docker
        .tag_image(
            id,
            Some(TagImageOptions {
                repo: Some(reference.repository.clone()),
                tag: Some(reference.tag.clone()),
            }),
        )
        .await
        .map_err(|e| match e {
            // The engine's reference grammar is the authority on what a name may be.
            EngineError::DockerResponseServerError {
                status_code: 400..=499,
                message,
            } => Error::InvalidSpec(format!("image push `{}`: {message}", reference.full())),
            e => engine_error("tag image", e),
        })?;
    out.send(
        LogStreamKind::Stdout,
        &format!("Pushing {}", reference.full()),
    );

    let failed = |message: &str, retryable: bool| Error::ImagePush {
        registry: reference.registry.clone(),
        message: out.redact(message.trim()),
        retryable,
    };
    let mut stream = docker.push_image(
        &reference.repository,
        Some(PushImageOptions {
            tag: Some(reference.tag.clone()),
            ..Default::default()
        }),
        credentials(reference, spec),
    );
    let mut digest = None;
    let mut last_status = String::new();
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                let Some(status) = info.status else { continue };
                if let Some(d) = digest_in_status(&status) {
                    digest = Some(d.to_owned());
                }
                // Per-layer byte progress repeats the same status many times; one line
                // per change is enough for a CI log.
                if status != last_status {
                    out.send(LogStreamKind::Stdout, &status);
                    last_status = status;
                }
            }
            Err(EngineError::DockerStreamError { error }) => {
                out.send(LogStreamKind::Stderr, &error);
                return Err(failed(&error, push_error_is_retryable(&error)));
            }
            Err(EngineError::DockerResponseServerError { message, .. }) => {
                out.send(LogStreamKind::Stderr, &message);
                return Err(failed(&message, push_error_is_retryable(&message)));
            }
            Err(e) => return Err(engine_error("push image", e)),
        }
    }
    let digest = digest.ok_or_else(|| {
        failed(
            "the engine finished the push without reporting a manifest digest",
            true,
        )
    })?;

    // The engine records the pushed manifest's digest on the image it pushed; if it is
    // not on ours, another build moved the tag between our tag and push.
    let inspect = docker
        .inspect_image(id)
        .await
        .map_err(|e| engine_error("inspect image", e))?;
    let ours = inspect
        .repo_digests
        .unwrap_or_default()
        .iter()
        .any(|rd| rd.ends_with(&format!("@{digest}")));
    if !ours {
        return Err(failed(
            &format!(
                "the pushed manifest {digest} is not image {id}: another build retagged {} \
                 during the push",
                reference.full()
            ),
            true,
        ));
    }
    Ok(digest)
}

/// `latest: digest: sha256:<64 hex> size: 528` → `sha256:<64 hex>`.
fn digest_in_status(status: &str) -> Option<&str> {
    let start = status.find("digest: sha256:")? + "digest: ".len();
    let candidate = status[start..].split_whitespace().next()?;
    let hex = candidate.strip_prefix("sha256:")?;
    (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit())).then_some(candidate)
}

/// Refusals (credentials, permissions, a bad name or manifest) fail again on retry;
/// everything else (connection refused, DNS, timeouts, 5xx) may not.
pub(crate) fn push_error_is_retryable(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    ![
        "unauthorized",
        "authentication required",
        "no basic auth credentials",
        "incorrect username or password",
        "denied",
        "forbidden",
        "invalid reference format",
        "repository name must",
        "name invalid",
        "name_invalid",
        "tag invalid",
        "manifest invalid",
    ]
    .iter()
    .any(|needle| m.contains(needle))
}

/// Removes the local tag after a push, if it still names our image (another build may
/// have taken it). Best effort: the push already succeeded.
pub(super) async fn untag(docker: &Docker, id: &str, reference: &Reference) {
    let full = reference.full();
    match docker.inspect_image(&full).await {
        Ok(image) if image.id.as_deref() == Some(id) => {
            let options = RemoveImageOptions {
                force: false,
                noprune: false,
                ..Default::default()
            };
            if let Err(e) = docker.remove_image(&full, Some(options), None).await {
                tracing::warn!(reference = %full, error = %e, "could not remove the local tag after the push");
            }
        }
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_from_push_status() {
        let hex = "a".repeat(64);
        assert_eq!(
            digest_in_status(&format!("v1: digest: sha256:{hex} size: 528")),
            Some(format!("sha256:{hex}").as_str())
        );
        assert_eq!(digest_in_status("Pushed"), None);
        assert_eq!(digest_in_status("v1: digest: sha256:abc size: 1"), None);
    }

    #[test]
    fn push_error_classification() {
        assert!(!push_error_is_retryable(
            "unauthorized: authentication required"
        ));
        assert!(!push_error_is_retryable(
            "denied: requested access to the resource is denied"
        ));
        assert!(push_error_is_retryable(
            "Get \"http://127.0.0.1:1/v2/\": dial tcp 127.0.0.1:1: connect: connection refused"
        ));
        assert!(push_error_is_retryable(
            "received unexpected HTTP status: 503 Service Unavailable"
        ));
    }
}
