//! Making sure an image is on the engine before anything is created from it.
//!
//! The engine may have no registry access at all (air-gapped runners, CI). A pull
//! is tried once, bounded in time, and its failure is a clear, non-retryable error
//! naming the image — not a container-create 404 minutes later.

use std::time::Duration;

use bollard::Docker;
use bollard::query_parameters::CreateImageOptionsBuilder;
use futures::StreamExt;

use super::engine;
use crate::error::{Error, Result};

/// Returns once `image` is present, pulling it if needed within `timeout`.
pub async fn ensure(docker: &Docker, image: &str, timeout: Duration) -> Result<()> {
    match docker.inspect_image(image).await {
        Ok(_) => return Ok(()),
        Err(e) if engine::is_not_found(&e) => {}
        Err(e) => return Err(engine::err("inspect_image")(e)),
    }
    let unavailable = |reason: String| Error::ImageUnavailable {
        image: image.to_owned(),
        reason,
    };
    let (name, tag) = split_reference(image);
    let mut opts = CreateImageOptionsBuilder::new().from_image(name);
    if let Some(tag) = tag {
        opts = opts.tag(tag);
    }
    let pull = async {
        let mut progress = docker.create_image(Some(opts.build()), None, None);
        while let Some(item) = progress.next().await {
            match item {
                Ok(info) => {
                    if let Some(detail) = info.error_detail.and_then(|d| d.message) {
                        return Err(detail);
                    }
                }
                Err(e) => return Err(engine::message(&e)),
            }
        }
        Ok(())
    };
    match tokio::time::timeout(timeout, pull).await {
        Ok(Ok(())) => {}
        Ok(Err(reason)) => return Err(unavailable(reason)),
        Err(_) => {
            return Err(unavailable(format!(
                "pull did not finish within {timeout:?}"
            )));
        }
    }
    // The pull stream can end "successfully" without an image (some registries).
    docker.inspect_image(image).await.map(|_| ()).map_err(|e| {
        unavailable(format!(
            "not present after the pull: {}",
            engine::message(&e)
        ))
    })
}

/// `registry:5000/team/app:tag` → (`registry:5000/team/app`, `tag`); digests
/// (`app@sha256:…`) stay in the name. A colon before the last `/` is a port.
fn split_reference(image: &str) -> (&str, Option<&str>) {
    if image.contains('@') {
        return (image, None);
    }
    let last = image.rfind('/').map_or(0, |i| i + 1);
    match image[last..].rfind(':') {
        Some(i) => (&image[..last + i], Some(&image[last + i + 1..])),
        None => (image, None),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(split_reference("busybox"), ("busybox", None));
        assert_eq!(split_reference("a/b:1.2"), ("a/b", Some("1.2")));
        assert_eq!(
            split_reference("reg:5000/team/app:v1"),
            ("reg:5000/team/app", Some("v1"))
        );
        assert_eq!(split_reference("reg:5000/app"), ("reg:5000/app", None));
        assert_eq!(split_reference("app@sha256:00"), ("app@sha256:00", None));
    }
}
