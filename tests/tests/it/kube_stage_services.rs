//! A stage's services on the Kubernetes backend, against the API-server test double:
//! a service that crashes fails the stage within seconds with its name and reason
//! (not at the stage's deadline), and a `ready:` command — the sidecar's startup
//! probe, which holds the steps back as the kubelet does (KEP-753) — makes the steps
//! find the service answering. The same `ready:` on Docker:
//! runner/tests/it/docker_services.rs.

use std::time::{Duration, Instant};

use runner::conformance::{run, stage};
use runner::{KubernetesBackend, ServiceSpec, Status};

use crate::kube_support::{self, IMAGE, options, unique_runner};

fn service(name: &str, script: &str, ready: Option<&str>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: IMAGE.into(),
        env: Default::default(),
        command: Some(vec!["sh".into(), "-c".into(), script.into()]),
        ready: ready.map(str::to_owned),
    }
}

fn error(status: &Status) -> &str {
    match status {
        Status::Error(m) => m,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// The service exits at once while the step would run for a minute (and succeed):
/// the stage fails within seconds, naming the service, its exit and its output.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_crashing_service_fails_the_stage_within_seconds() {
    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("svccrash"))).unwrap();
    let mut spec = stage("crash", &Some(IMAGE.into()), &["sleep 60"]);
    spec.timeout = Some(Duration::from_secs(3600));
    spec.services = vec![service(
        "db",
        "echo db-crash-marker > /dev/termination-log; exit 3",
        None,
    )];
    let started = Instant::now();
    let r = run(&backend, &spec).await;
    let message = error(&r.outcome.status);
    assert!(message.contains("service `db` failed"), "{message}");
    assert!(message.contains("exited with code 3 (Error)"), "{message}");
    assert!(message.contains("db-crash-marker"), "{message}");
    assert!(!r.outcome.retryable, "a crashing service is not retried");
    assert!(
        started.elapsed() < Duration::from_secs(45),
        "reported after {:?}",
        started.elapsed()
    );
    d.shutdown().await;
}

/// The service listens only 3 s after it starts, and the step tries it once: it
/// passes only because the step starts after the `ready:` command did.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_ready_command_holds_the_steps_until_the_service_answers() {
    let d = kube_support::double().await;
    let backend = KubernetesBackend::new(d.client(), options(&unique_runner("svcready"))).unwrap();
    let mut spec = stage(
        "ready",
        &Some(IMAGE.into()),
        &["wget -q -O - http://web:8080/"],
    );
    spec.services = vec![service(
        "web",
        "sleep 3; mkdir -p /tmp/www; echo late hello > /tmp/www/index.html; \
         exec httpd -f -p 8080 -h /tmp/www",
        Some("wget -q -O /dev/null http://127.0.0.1:8080/"),
    )];
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    assert_eq!(r.stdout(0), vec!["late hello"]);
    d.shutdown().await;
}

/// A `ready:` command that never passes: the kubelet kills the service after the
/// service timeout (its startup probe's failure threshold) and the stage fails,
/// naming the service; the step never runs (its start is what fails).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_service_that_never_gets_ready_fails_the_stage() {
    let d = kube_support::double().await;
    let mut o = options(&unique_runner("svcnotready"));
    o.service_timeout = Duration::from_secs(3);
    let backend = KubernetesBackend::new(d.client(), o).unwrap();
    let mut spec = stage("not ready", &Some(IMAGE.into()), &["echo never"]);
    spec.timeout = Some(Duration::from_secs(3600));
    spec.services = vec![service("web", "sleep 3600", Some("exit 1"))];
    let started = Instant::now();
    let r = run(&backend, &spec).await;
    let message = error(&r.outcome.status);
    assert!(message.contains("service `web` failed"), "{message}");
    assert!(message.contains("`ready` command"), "{message}");
    assert_ne!(r.outcome.steps[0].status, Status::Success);
    assert!(r.stdout(0).is_empty(), "the step ran: {:?}", r.stdout(0));
    assert!(
        started.elapsed() < Duration::from_secs(60),
        "reported after {:?}",
        started.elapsed()
    );
    d.shutdown().await;
}
