//! Image pulls that fail for a while (a registry's rate limit or 5xx) are retried for
//! a bounded time, on the Kubernetes backend against the API-server test double (its
//! `flaky_pulls` refuses an image's first pulls with containerd's message). A missing
//! image still fails at once: kube_backend.rs,
//! `an_image_that_cannot_be_pulled_fails_the_stage_with_the_reason`.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use runner::conformance::{run, stage};
use runner::{KubernetesBackend, Status};
use tests::kube_double::{self, FlakyPull, KubeDouble, KubeDoubleOptions};

use crate::kube_support::{IMAGE, options, unique_runner};

async fn double_refusing(pull: FlakyPull) -> KubeDouble {
    kube_double::start(KubeDoubleOptions {
        retry_interval: Duration::from_millis(300),
        flaky_pulls: BTreeMap::from([(IMAGE.to_owned(), pull)]),
        ..Default::default()
    })
    .await
    .expect("starting the kube double (needs Docker and `bash .ci/images.sh`)")
}

/// Two pulls refused with 429 in every container, then the image comes: the stage
/// runs as if nothing happened.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rate_limited_pull_is_retried_until_it_passes() {
    let d = double_refusing(FlakyPull::rate_limited(2)).await;
    let mut o = options(&unique_runner("pull429"));
    o.transient_error_limit = Duration::from_secs(60);
    let backend = KubernetesBackend::new(d.client(), o).unwrap();
    let r = run(
        &backend,
        &stage("flaky", &Some(IMAGE.into()), &["echo pulled"]),
    )
    .await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["pulled"]);
    d.shutdown().await;
}

/// A registry that keeps answering 503: the stage fails once the retry limit is
/// over, with the registry's answer, as a failure worth retrying later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pull_that_keeps_failing_fails_after_the_limit() {
    let d = double_refusing(FlakyPull::unavailable(10_000)).await;
    let mut o = options(&unique_runner("pull503"));
    o.transient_error_limit = Duration::from_secs(3);
    let backend = KubernetesBackend::new(d.client(), o).unwrap();
    let mut spec = stage("unavailable", &Some(IMAGE.into()), &["echo never"]);
    spec.timeout = Some(Duration::from_secs(3600));
    let started = Instant::now();
    let r = run(&backend, &spec).await;
    let Status::Error(message) = &r.outcome.status else {
        panic!("expected an error, got {:?}", r.outcome.status);
    };
    assert!(
        message.contains("still cannot be pulled") && message.contains("503 Service Unavailable"),
        "{message}"
    );
    assert!(
        r.outcome.retryable,
        "a registry outage is worth a later retry"
    );
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reported after {:?}",
        started.elapsed()
    );
    d.shutdown().await;
}
