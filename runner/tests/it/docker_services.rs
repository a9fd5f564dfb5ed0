//! A service's `ready:` command on the Docker backend: the container's health check,
//! so the steps start only once it exits 0 — the same meaning as on Kubernetes (the
//! sidecar's startup probe, tests/tests/it/kube_stage_services.rs). Needs a Docker
//! engine and `bash .ci/images.sh`.

use std::time::Duration;

use runner::conformance::{run, stage};
use runner::{DockerBackend, DockerOptions, ServiceSpec, Status};

use crate::support::{IMAGE, backend_named, unique_runner};

/// A busybox httpd that starts listening only after `delay` seconds. The image
/// declares no HEALTHCHECK: without `ready:` the service counts as ready once it
/// runs, and a step started then gets "connection refused".
fn late_web(delay: u32, ready: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        name: "web".into(),
        image: IMAGE.into(),
        env: Default::default(),
        command: Some(vec![
            "sh".into(),
            "-c".into(),
            format!(
                "sleep {delay}; mkdir -p /tmp/www; echo late hello > /tmp/www/index.html; \
                 exec httpd -f -p 8080 -h /tmp/www"
            ),
        ]),
        ready: ready.map(str::to_owned),
    }
}

const READY: &str = "wget -q -O /dev/null http://127.0.0.1:8080/";

/// The step runs once the `ready:` command passes, and finds the service answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_command_holds_the_steps_until_the_service_answers() {
    let backend = backend_named(&unique_runner("ready")).await;
    let mut spec = stage(
        "ready",
        &Some(IMAGE.into()),
        &["wget -q -O - http://web:8080/"],
    );
    spec.services = vec![late_web(3, Some(READY))];
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(0), vec!["late hello"]);
}

/// A `ready:` command that never passes fails the stage after the service timeout,
/// naming the service and the command; the step never runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_command_that_never_passes_fails_the_stage() {
    let runner = unique_runner("notready");
    let mut options = DockerOptions::new(&runner);
    options.service_timeout = Duration::from_secs(4);
    let backend = DockerBackend::connect(options).await.unwrap();
    let mut spec = stage("not ready", &Some(IMAGE.into()), &["echo never"]);
    spec.services = vec![late_web(3, Some("echo still-starting-marker; exit 1"))];
    let r = run(&backend, &spec).await;
    let Status::Error(message) = &r.outcome.status else {
        panic!("expected an error, got {:?}", r.outcome.status);
    };
    assert!(message.contains("service `web` failed"), "{message}");
    assert!(
        message.contains("`ready` command `echo still-starting-marker; exit 1` did not exit 0"),
        "{message}"
    );
    assert!(message.contains("still-starting-marker"), "{message}");
    assert_eq!(r.outcome.steps[0].status, Status::Skipped);
}
