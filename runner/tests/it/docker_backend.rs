//! Docker-specific behaviour beyond the conformance suite, checked through the
//! engine: nothing left behind after a cancel, services by name with readiness,
//! OOM kills, user and workdir, missing images, the start-up sweep, workspace
//! archives. Needs a Docker engine and `bash .ci/images.sh`.

use std::collections::HashMap;
use std::time::Duration;

use bollard::query_parameters::{
    ListContainersOptionsBuilder, ListNetworksOptionsBuilder, ListVolumesOptionsBuilder,
};
use runner::conformance::{run, stage};
use runner::{
    Backend, DockerBackend, DockerOptions, RunOptions, ServiceSpec, Source, StageEvent, StageSpec,
    Status, StepSpec,
};
use tokio_util::sync::CancellationToken;

use crate::support::{HTTPD_IMAGE, IMAGE, backend_named, unique_runner};

fn image() -> Option<String> {
    Some(IMAGE.to_owned())
}

/// Containers, networks and volumes the engine holds with `io.slipway.runner=<runner>`.
async fn objects(backend: &DockerBackend, runner: &str) -> (usize, usize, usize) {
    let docker = backend.docker();
    let filter = HashMap::from([(
        "label".to_owned(),
        vec![format!("io.slipway.runner={runner}")],
    )]);
    let containers = docker
        .list_containers(Some(
            ListContainersOptionsBuilder::new()
                .all(true)
                .filters(&filter)
                .build(),
        ))
        .await
        .unwrap();
    let networks = docker
        .list_networks(Some(
            ListNetworksOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .unwrap();
    let volumes = docker
        .list_volumes(Some(
            ListVolumesOptionsBuilder::new().filters(&filter).build(),
        ))
        .await
        .unwrap()
        .volumes
        .unwrap_or_default();
    (containers.len(), networks.len(), volumes.len())
}

fn service(name: &str, image: &str, command: Option<&[&str]>) -> ServiceSpec {
    ServiceSpec {
        name: name.into(),
        image: image.into(),
        env: Default::default(),
        command: command.map(|c| c.iter().map(|s| s.to_string()).collect()),
        ready: None,
    }
}

fn error_message(status: &Status) -> &str {
    match status {
        Status::Error(m) => m,
        other => panic!("expected an error, got {other:?}"),
    }
}

/// Cancelling a running stage (a step and a service running) leaves no container,
/// network or volume behind — checked through the engine, after first checking
/// that they existed while the stage ran.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_leaves_nothing_behind() {
    let runner = unique_runner("cancel");
    let backend = backend_named(&runner).await;
    let mut spec = stage(
        "cancel me",
        &image(),
        &["echo ready\nsleep 300", "echo never"],
    );
    spec.services = vec![service("web", HTTPD_IMAGE, None)];
    let cancel = CancellationToken::new();
    let (tx, mut rx) = runner::event_channel(runner::DEFAULT_EVENT_BUDGET);
    let run = {
        let backend = backend.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            runner::run_stage(&backend, &spec, RunOptions::default(), tx, cancel).await
        })
    };
    let mut during = None;
    while let Some(event) = rx.recv().await {
        if let StageEvent::Line(l) = &event
            && l.bytes == b"ready"
            && during.is_none()
        {
            during = Some(objects(&backend, &runner).await);
            cancel.cancel();
        }
    }
    let outcome = run.await.unwrap();
    assert_eq!(outcome.status, Status::Cancelled, "{outcome:?}");
    // Step + service containers, the network, the volume.
    assert_eq!(during, Some((2, 1, 1)), "objects while the stage ran");
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}

/// Steps reach a service by its name; the steps only start once the service is
/// healthy (this one starts listening 3 s after it starts, so a step that ran
/// right away would get "connection refused").
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_are_reachable_by_name_once_ready() {
    let runner = unique_runner("services");
    let backend = backend_named(&runner).await;
    let mut spec = stage(
        "services",
        &image(),
        &["wget -q -O - http://web:8080/\nwget -q -O - http://web:8080/ | grep -q \"$GREETING\""],
    );
    let mut web = service(
        "web",
        HTTPD_IMAGE,
        Some(&["sh", "-c", "sleep 3; exec httpd -f -p 8080 -h /www"]),
    );
    web.env.insert("UNUSED".into(), "x".into());
    spec.services = vec![web];
    spec.env.insert("GREETING".into(), "hello from".into());
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(0), vec!["hello from the service"]);
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}

/// A service that exits before it is ready fails the stage with its name and its
/// last output; nothing is left behind and the error is not retried.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_service_is_a_clear_error() {
    let runner = unique_runner("badservice");
    let backend = backend_named(&runner).await;
    let mut spec = stage("bad service", &image(), &["echo never"]);
    spec.services = vec![service(
        "db",
        HTTPD_IMAGE,
        Some(&["sh", "-c", "echo db-cannot-start-marker >&2; exit 3"]),
    )];
    let err = backend.setup_stage(&spec).await.unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains("service `db` failed"), "{msg}");
    assert!(msg.contains("exited with code 3"), "{msg}");
    assert!(msg.contains("db-cannot-start-marker"), "{msg}");
    assert!(!err.is_retryable());
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));

    let r = run(&backend, &spec).await;
    assert!(error_message(&r.outcome.status).contains("service `db` failed"));
    assert_eq!(r.outcome.steps[0].status, Status::Skipped);
}

/// A step over its memory limit is OOM-killed and reported as such.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oom_kill_is_reported() {
    let runner = unique_runner("oom");
    let backend = backend_named(&runner).await;
    let mut spec = stage(
        "oom",
        &image(),
        &["echo start\nhead -c 200m /dev/zero | tail\necho survived"],
    );
    spec.container.memory_bytes = Some(32 << 20);
    spec.container.cpu_millis = Some(500);
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Failure, "{:?}", r.events);
    let step = &r.outcome.steps[0];
    assert!(step.oom_killed, "{step:?}");
    assert_eq!(step.exit_code, Some(137), "{step:?}");
    assert_eq!(r.stdout(0), vec!["start"]);

    // Under the limit nothing is flagged.
    let mut spec = stage(
        "no-oom",
        &image(),
        &["head -c 1m /dev/zero | tail >/dev/null"],
    );
    spec.container.memory_bytes = Some(32 << 20);
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert!(!r.outcome.steps[0].oom_killed);
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}

/// Steps run as `user` in `/workspace/<workdir>`, and can write the workspace
/// (which belongs to that user); a workdir escaping the workspace is refused. The
/// stage id has characters no Docker name may contain.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn user_and_workdir_are_honoured() {
    let runner = unique_runner("user");
    let backend = backend_named(&runner).await;
    let src = tempfile::tempdir().unwrap();
    std::fs::write(src.path().join("top.txt"), "from the source\n").unwrap();
    let mut spec = stage(
        "user & workdir: ü/x (1)",
        &image(),
        &[
            "id -u\nid -g\npwd\ncat ../../top.txt\necho made > made.txt\ntouch ../../root-owned-check",
            "test -f made.txt && test -f ../../root-owned-check && echo ok",
        ],
    );
    spec.source = Source::Directory(src.path().to_path_buf());
    spec.container.user = Some("nobody".into());
    spec.container.workdir = Some("sub/dir".into());
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(
        r.stdout(0),
        vec!["65534", "65534", "/workspace/sub/dir", "from the source"]
    );
    assert_eq!(r.stdout(1), vec!["ok"]);

    // Numeric uid:gid without a passwd entry.
    let mut spec = stage("numeric user", &image(), &["id -u\nid -g\necho x > f"]);
    spec.container.user = Some("4242:4343".into());
    let r = run(&backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.events);
    assert_eq!(r.stdout(0), vec!["4242", "4343"]);

    for bad in ["../outside", "/etc"] {
        let mut spec = stage("bad workdir", &image(), &["true"]);
        spec.container.workdir = Some(bad.into());
        let r = run(&backend, &spec).await;
        let msg = error_message(&r.outcome.status);
        assert!(msg.contains("inside the workspace"), "{bad}: {msg}");
    }
    let mut spec = stage("unknown user", &image(), &["true"]);
    spec.container.user = Some("no-such-user".into());
    let r = run(&backend, &spec).await;
    assert!(error_message(&r.outcome.status).contains("no-such-user"));
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}

/// An image that is not on the engine and cannot be pulled fails the stage at
/// set-up with a clear, non-retryable message, leaving nothing behind.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_fails_with_a_clear_message() {
    let runner = unique_runner("noimage");
    let mut options = DockerOptions::new(&runner);
    options.pull_timeout = Duration::from_secs(20);
    let backend = DockerBackend::connect(options).await.unwrap();
    let missing = "slipway-test/does-not-exist:never";
    let spec = stage("missing image", &Some(missing.into()), &["true"]);
    let err = backend.setup_stage(&spec).await.unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.starts_with(&format!(
            "image `{missing}` is not present on the Docker engine and could not be pulled: "
        )),
        "{msg}"
    );
    assert!(!err.is_retryable());
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));

    // A missing service image names the service.
    let mut spec = stage("missing service image", &image(), &["true"]);
    spec.services = vec![service("cache", missing, None)];
    let err = backend.setup_stage(&spec).await.unwrap_err().to_string();
    assert!(
        err.contains("service `cache`") && err.contains(missing),
        "{err}"
    );

    // No image at all.
    let spec = stage("no image", &None, &["true"]);
    let err = backend.setup_stage(&spec).await.unwrap_err().to_string();
    assert!(err.contains("has no image"), "{err}");
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}

/// A runner that crashed (its backend gone without destroying anything) leaves a
/// running step, a service, a network and a volume; the next start's sweep with the
/// same runner name removes them all, and leaves other runners' objects alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_a_crashed_runners_leftovers() {
    let runner = unique_runner("crashed");
    let other_runner = unique_runner("bystander");
    let crashed = backend_named(&runner).await;
    let bystander = backend_named(&other_runner).await;

    let mut spec = stage("leftover", &image(), &[]);
    spec.services = vec![service("web", HTTPD_IMAGE, None)];
    let handle = crashed.setup_stage(&spec).await.unwrap();
    let step = StepSpec::new("forever", "sleep 300");
    crashed.start_step(&handle, 0, &step).await.unwrap();
    let other = bystander
        .setup_stage(&stage("other", &image(), &[]))
        .await
        .unwrap();
    assert_eq!(objects(&crashed, &runner).await, (2, 1, 1));
    assert_eq!(objects(&bystander, &other_runner).await, (0, 1, 1));
    drop(crashed);

    let restarted = backend_named(&runner).await;
    let report = restarted.sweep().await.unwrap();
    assert_eq!(
        (
            report.containers.len(),
            report.networks.len(),
            report.volumes.len()
        ),
        (2, 1, 1),
        "{report:?}"
    );
    assert!(report.errors.is_empty(), "{report:?}");
    assert_eq!(report.networks, vec![handle.id.clone()]);
    assert_eq!(objects(&restarted, &runner).await, (0, 0, 0));
    assert!(restarted.sweep().await.unwrap().is_empty());

    // The other runner's stage is untouched.
    assert_eq!(objects(&bystander, &other_runner).await, (0, 1, 1));
    bystander.destroy_stage(&other).await.unwrap();
    bystander.destroy_stage(&other).await.unwrap(); // idempotent
    assert_eq!(objects(&bystander, &other_runner).await, (0, 0, 0));
}

/// `workspace_archive` returns a sub-directory's files as a tar rooted at it (a
/// build context), written by steps; paths escaping the workspace are refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn workspace_archive_of_a_subdirectory() {
    let runner = unique_runner("archive");
    let backend = backend_named(&runner).await;
    let handle = backend
        .setup_stage(&StageSpec {
            image: image(),
            ..StageSpec::new("archive")
        })
        .await
        .unwrap();
    let step = StepSpec::new(
        "write",
        "mkdir -p app/src\necho FROM scratch > app/Dockerfile\necho code > app/src/main.rs\nln -s /etc/passwd app/link\necho no > other.txt",
    );
    let s = backend.start_step(&handle, 0, &step).await.unwrap();
    let logs = backend.tail_step(&handle, &s).await.unwrap();
    let exit = backend.wait_step(&handle, &s).await.unwrap();
    drop(logs);
    assert_eq!(exit.exit_code, 0);
    backend.destroy_step(&handle, &s).await.unwrap();
    backend.destroy_step(&handle, &s).await.unwrap(); // idempotent

    let tar = backend.workspace_archive(&handle, "app").await.unwrap();
    let mut names = Vec::new();
    let mut ar = tar::Archive::new(&tar[..]);
    for entry in ar.entries().unwrap() {
        let entry = entry.unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        if entry.header().entry_type().is_symlink() {
            assert_eq!(
                entry.link_name().unwrap().unwrap().to_string_lossy(),
                "/etc/passwd"
            );
        }
        names.push(
            path.trim_start_matches("./")
                .trim_end_matches('/')
                .to_owned(),
        );
    }
    names.retain(|n| !n.is_empty() && n != ".");
    names.sort();
    assert_eq!(names, vec!["Dockerfile", "link", "src", "src/main.rs"]);

    for bad in ["../x", "/etc"] {
        let err = backend.workspace_archive(&handle, bad).await.unwrap_err();
        assert!(!err.is_retryable(), "{bad}: {err}");
    }
    let err = backend
        .workspace_archive(&handle, "missing")
        .await
        .unwrap_err();
    assert!(err.to_string().contains("does not exist"), "{err}");
    backend.destroy_stage(&handle).await.unwrap();
    assert_eq!(objects(&backend, &runner).await, (0, 0, 0));
}
