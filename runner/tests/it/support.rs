//! Shared set-up of the Docker tests, and polling with a bound.

use std::time::{Duration, Instant};

use runner::{DockerBackend, DockerOptions};

/// The step image of the tests; `bash .ci/images.sh` builds it.
pub const IMAGE: &str = "slipway-test/busybox:latest";
/// A busybox httpd service with a HEALTHCHECK, also from `.ci/images.sh`.
pub const HTTPD_IMAGE: &str = "slipway-test/httpd:latest";

pub fn image() -> String {
    IMAGE.to_owned()
}

/// A runner name unique to this test process and call, so parallel tests (and
/// their sweeps) never touch each other's objects.
pub fn unique_runner(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "test-{prefix}-{}-{nanos}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn backend_named(runner: &str) -> DockerBackend {
    let backend = DockerBackend::connect(DockerOptions::new(runner))
        .await
        .expect("connecting to the Docker engine");
    for image in [IMAGE, HTTPD_IMAGE] {
        if backend.docker().inspect_image(image).await.is_err() {
            panic!("test image {image} is missing: run `bash .ci/images.sh` first");
        }
    }
    backend
}

pub async fn backend() -> DockerBackend {
    backend_named(&unique_runner("conformance")).await
}

/// Polls `check` every 200 ms until it gives a value; fails the test after 60 s.
/// A bound on waiting for something the engine does in the background, not a
/// timing assertion.
pub async fn eventually<T>(what: &str, mut check: impl AsyncFnMut() -> Option<T>) -> T {
    let until = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            Instant::now() < until,
            "timed out after 60 s waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
