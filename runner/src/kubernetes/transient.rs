//! Which of the kubelet's container errors may pass on their own. Told apart by the
//! message text, as the kubelet and the runtimes write it (pod status carries no
//! error code):
//!
//! - `ErrImagePull`: the kubelet puts the runtime's pull error in the message as is
//!   (pkg/kubelet/images/image_manager.go, `evalCRIPullErr`). containerd wraps it as
//!   `failed to pull and unpack image "<ref>": …` (internal/cri/server/images/
//!   image_pull.go) around the registry client's `unexpected status code <url>: 429
//!   Too Many Requests - Server message: toomanyrequests: …` or `… 503 Service
//!   Unavailable` (core/remotes/docker/fetcher.go, resolver.go: `unexpected status
//!   from HEAD request to <url>: 502 Bad Gateway`); a missing image is `…: not
//!   found` (rpc code NotFound), a refused one `pull access denied, repository does
//!   not exist or may require authorization` or `401 Unauthorized`. CRI-O reports
//!   the same statuses through containers/image (`received unexpected HTTP status:
//!   503 Service Unavailable`, `toomanyrequests`, `manifest unknown`,
//!   `unauthorized: authentication required`).
//! - `RegistryUnavailable` is the kubelet's own reason for a registry it cannot
//!   reach; `ImagePullBackOff`'s message is only `Back-off pulling image "<ref>"`,
//!   the cause being in the `ErrImagePull` before it.
//! - `CreateContainerError`: the runtime's create error (pkg/kubelet/kuberuntime/
//!   kuberuntime_container.go, `startContainer`), transient when the runtime was
//!   slow or busy: `context deadline exceeded` (the kubelet's runtime request
//!   timeout) or containerd's `failed to reserve container name "…": name "…" is
//!   reserved for "…"` (internal/cri/server/container_create.go) while an earlier
//!   create is still finishing. Anything else there (a missing executable, a bad
//!   mount) stays a configuration error.
//!
//! A message that matches nothing known to pass is permanent: failing at once is
//! what the backend did before, and a wrong guess the other way only costs time.

/// Status texts and error phrases of failures a retry can get past.
const TRANSIENT_PULL: &[&str] = &[
    "too many requests",
    "toomanyrequests",
    "internal server error",
    "bad gateway",
    "service unavailable",
    "gateway timeout",
    "registry is unavailable",
    "i/o timeout",
    "tls handshake timeout",
    "connection reset by peer",
    "connection refused",
    "unexpected eof",
    "context deadline exceeded",
];

/// Phrases that make a pull failure permanent even beside a transient-looking one.
const PERMANENT_PULL: &[&str] = &[
    ": not found",
    "code = notfound",
    "manifest unknown",
    "name unknown",
    "pull access denied",
    "unauthorized",
    "authentication required",
    "authorization failed",
    "403 forbidden",
    "requested access to the resource is denied",
];

const TRANSIENT_CREATE: &[&str] = &[
    "context deadline exceeded",
    "failed to reserve container name",
    "is reserved for",
    "resource temporarily unavailable",
];

/// Whether a container waiting with `reason` and `message` (its image cannot be
/// pulled) may get past it on a later attempt.
pub fn pull_may_pass(reason: &str, message: &str) -> bool {
    match reason {
        "RegistryUnavailable" | "ImagePullBackOff" => true,
        "ErrImagePull" => {
            let m = message.to_ascii_lowercase();
            TRANSIENT_PULL.iter().any(|t| m.contains(t))
                && !PERMANENT_PULL.iter().any(|p| m.contains(p))
        }
        // InvalidImageName, ErrImageNeverPull, and anything new.
        _ => false,
    }
}

/// Whether a `CreateContainerError` with `message` may pass on a later attempt.
pub fn create_may_pass(message: &str) -> bool {
    let m = message.to_ascii_lowercase();
    TRANSIENT_CREATE.iter().any(|t| m.contains(t))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate_limits_and_server_errors_pass_missing_and_refused_images_do_not() {
        let transient = [
            "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/library/nginx:1.27\": failed to copy: httpReadSeeker: failed open: unexpected status code https://registry-1.docker.io/v2/library/nginx/manifests/sha256:0a1b: 429 Too Many Requests - Server message: toomanyrequests: You have reached your pull rate limit.",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"ghcr.io/o/app:1\": failed to resolve reference \"ghcr.io/o/app:1\": unexpected status from HEAD request to https://ghcr.io/v2/o/app/manifests/1: 503 Service Unavailable",
            "initializing source docker://quay.io/o/app:1: reading manifest 1 in quay.io/o/app: received unexpected HTTP status: 502 Bad Gateway",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"r.example/app:1\": failed to resolve reference \"r.example/app:1\": failed to do request: Head \"https://r.example/v2/app/manifests/1\": dial tcp 10.0.0.1:443: i/o timeout",
        ];
        for m in transient {
            assert!(pull_may_pass("ErrImagePull", m), "{m}");
        }
        let permanent = [
            "rpc error: code = NotFound desc = failed to pull and unpack image \"docker.io/library/nginx:nope\": failed to resolve reference \"docker.io/library/nginx:nope\": docker.io/library/nginx:nope: not found",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"docker.io/o/private:1\": failed to resolve reference \"docker.io/o/private:1\": pull access denied, repository does not exist or may require authorization: server message: insufficient_scope: authorization failed",
            "rpc error: code = Unknown desc = failed to pull and unpack image \"r.example/app:1\": failed to resolve reference \"r.example/app:1\": failed to authorize: failed to fetch oauth token: unexpected status: 401 Unauthorized",
            "reading manifest 1 in quay.io/o/app: manifest unknown",
            "something nobody has seen before",
        ];
        for m in permanent {
            assert!(!pull_may_pass("ErrImagePull", m), "{m}");
        }
        assert!(pull_may_pass(
            "ImagePullBackOff",
            "Back-off pulling image \"x\""
        ));
        assert!(pull_may_pass("RegistryUnavailable", ""));
        assert!(!pull_may_pass(
            "InvalidImageName",
            "couldn't parse image reference"
        ));
        assert!(!pull_may_pass("ErrImageNeverPull", ""));
    }

    #[test]
    fn only_a_slow_or_busy_runtime_is_a_transient_create_error() {
        assert!(create_may_pass("context deadline exceeded"));
        assert!(create_may_pass(
            "failed to reserve container name \"step-0_p_builds_1_0\": name \"step-0_p_builds_1_0\" is reserved for \"4b1d\""
        ));
        assert!(!create_may_pass(
            "failed to create containerd task: exec: \"nope\": executable file not found in $PATH"
        ));
    }
}
