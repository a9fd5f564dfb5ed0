//! Image pulls as a kubelet with containerd reports them. The double never pulls:
//! an image is on the engine or it is not. What it can show is how a pull fails —
//! the `ErrImagePull` message the kubelet copies from the runtime
//! (pkg/kubelet/images/image_manager.go, `evalCRIPullErr`), then `ImagePullBackOff`
//! with `Back-off pulling image "<ref>"` until the next attempt — for a missing image,
//! and for an image behind a registry that refuses the first pulls with a rate limit
//! or a server error ([`FlakyPull`]), as containerd words them: `failed to pull and
//! unpack image "<ref>": …` (internal/cri/server/images/image_pull.go) around the
//! registry client's `unexpected status code <url>: <status>` (core/remotes/docker/
//! fetcher.go) or `<ref>: not found` (resolver.go, rpc code NotFound).

/// An image whose first `failures` pulls in each container fail with `status`
/// before the engine's copy is used (see [`crate::kube_double::KubeDoubleOptions::flaky_pulls`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlakyPull {
    pub failures: u32,
    /// The registry's HTTP status line, e.g. `429 Too Many Requests`.
    pub status: String,
}

impl FlakyPull {
    /// Docker Hub's pull rate limit.
    pub fn rate_limited(failures: u32) -> FlakyPull {
        FlakyPull {
            failures,
            status: "429 Too Many Requests".into(),
        }
    }

    /// A registry answering 503.
    pub fn unavailable(failures: u32) -> FlakyPull {
        FlakyPull {
            failures,
            status: "503 Service Unavailable".into(),
        }
    }

    /// The `ErrImagePull` message of one failed attempt.
    pub fn message(&self, image: &str) -> String {
        let server = if self.status.starts_with("429") {
            " - Server message: toomanyrequests: You have reached your pull rate limit. You may increase the limit by authenticating and upgrading: https://www.docker.com/increase-rate-limit"
        } else {
            ""
        };
        format!(
            "rpc error: code = Unknown desc = failed to pull and unpack image {image:?}: failed to copy: httpReadSeeker: failed open: unexpected status code {}: {}{server}",
            manifest_url(image),
            self.status
        )
    }
}

/// The `ErrImagePull` message for an image that is not on the engine.
pub fn not_found(image: &str) -> String {
    format!(
        "rpc error: code = NotFound desc = failed to pull and unpack image {image:?}: failed to resolve reference {image:?}: {image}: not found (the Kubernetes test double never pulls: the image is not on the Docker engine)"
    )
}

/// `ImagePullBackOff`'s message.
pub fn back_off(image: &str) -> String {
    format!("Back-off pulling image {image:?}")
}

/// Where a registry client would have fetched the image's manifest.
fn manifest_url(image: &str) -> String {
    let (name, tag) = match image.rsplit_once(':') {
        Some((n, t)) if !t.contains('/') => (n, t),
        _ => (image, "latest"),
    };
    let (host, path) = match name.split_once('/') {
        Some((h, p)) if h.contains('.') || h.contains(':') || h == "localhost" => (h, p.to_owned()),
        _ if name.contains('/') => ("registry-1.docker.io", name.to_owned()),
        _ => ("registry-1.docker.io", format!("library/{name}")),
    };
    format!("https://{host}/v2/{path}/manifests/{tag}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_read_as_containerds() {
        let m = FlakyPull::rate_limited(2).message("slipway-test/busybox:latest");
        assert!(m.contains("https://registry-1.docker.io/v2/slipway-test/busybox/manifests/latest: 429 Too Many Requests - Server message: toomanyrequests"), "{m}");
        let m = FlakyPull::unavailable(1).message("registry.example:5000/app:1");
        assert!(
            m.ends_with(
                "https://registry.example:5000/v2/app/manifests/1: 503 Service Unavailable"
            ),
            "{m}"
        );
        assert!(not_found("x:1").contains("x:1: not found"));
    }
}
