//! Runners on the Docker backend sweep at start: containers, networks and volumes
//! labelled with their runner name (what a crashed predecessor left) are removed
//! before anything is leased; other runners' objects are not touched. Both the
//! standalone `slipway runner --backend docker` and the server's in-process runner
//! (`SLIPWAY_RUNNER_BACKEND=docker`). Needs a Docker engine and `bash .ci/images.sh`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The binary under test; see `crash.rs` for why `SLIPWAY_TEST_BIN` exists.
fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_slipway").into())
}

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker").args(args).output().unwrap();
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn unique(prefix: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{prefix}-{}-{nanos}", std::process::id())
}

/// A crashed runner's leftovers: a running container on a network with a volume.
fn leave_objects(runner: &str) {
    let label = format!("io.slipway.runner={runner}");
    let name = unique("slipway-leftover");
    docker(&["network", "create", "--label", &label, &name]);
    docker(&["volume", "create", "--label", &label, &name]);
    docker(&[
        "run",
        "-d",
        "--name",
        &name,
        "--label",
        &label,
        "--network",
        &name,
        "-v",
        &format!("{name}:/workspace"),
        "slipway-test/busybox:latest",
        "sleep",
        "300",
    ]);
}

fn objects(runner: &str) -> Vec<String> {
    let filter = format!("label=io.slipway.runner={runner}");
    let mut all = Vec::new();
    for args in [
        &["ps", "-a", "-q", "--filter", &filter][..],
        &["network", "ls", "-q", "--filter", &filter][..],
        &["volume", "ls", "-q", "--filter", &filter][..],
    ] {
        all.extend(docker(args).lines().map(str::to_owned));
    }
    all
}

/// The test's own cleanup, also when it fails: kills the process under test and
/// removes whatever the named runners still have on the engine.
struct Guard {
    runners: Vec<String>,
    child: Option<Child>,
}

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
        for runner in &self.runners {
            let filter = format!("label=io.slipway.runner={runner}");
            for (list, rm) in [
                (&["ps", "-a", "-q"][..], &["rm", "-f"][..]),
                (&["network", "ls", "-q"][..], &["network", "rm"][..]),
                (&["volume", "ls", "-q"][..], &["volume", "rm"][..]),
            ] {
                let Ok(out) = Command::new("docker")
                    .args(list)
                    .args(["--filter", &filter])
                    .output()
                else {
                    continue;
                };
                for id in String::from_utf8_lossy(&out.stdout).lines() {
                    let _ = Command::new("docker").args(rm).arg(id).output();
                }
            }
        }
    }
}

/// Waits (bounded) until `runner` has nothing on the engine; kills `child` after.
fn wait_swept(runner: &str, child: &mut Child, log: &std::path::Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !objects(runner).is_empty() {
        if let Ok(Some(status)) = child.try_wait() {
            panic!(
                "exited before sweeping: {status}\n{}",
                std::fs::read_to_string(log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "leftovers of {runner} not swept: {:?}\n{}",
            objects(runner),
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn require_image() {
    let ok = Command::new("docker")
        .args(["image", "inspect", "slipway-test/busybox:latest"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "test image missing: run `bash .ci/images.sh` first");
}

#[test]
fn standalone_runner_sweeps_its_leftovers_at_start() {
    require_image();
    let name = unique("test-runner-sweep");
    let bystander = unique("test-runner-bystander");
    let mut guard = Guard {
        runners: vec![name.clone(), bystander.clone()],
        child: None,
    };
    leave_objects(&name);
    leave_objects(&bystander);
    assert_eq!(objects(&name).len(), 3);

    let dir = tempfile::tempdir().unwrap();
    let log_path = dir.path().join("runner.log");
    let log = std::fs::File::create(&log_path).unwrap();
    // No server listens there: the sweep must happen before the first lease anyway.
    let child = Command::new(slipway_bin())
        .args([
            "runner",
            "--server",
            "http://127.0.0.1:9",
            "--backend",
            "docker",
            "--name",
            &name,
        ])
        .env("SLIPWAY_RUNNER_TOKEN", "slp_not-a-real-token")
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = guard.child.insert(child);
    wait_swept(&name, child, &log_path);
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("swept what a crashed runner left on the Docker engine"),
        "{text}"
    );
    assert_eq!(
        objects(&bystander).len(),
        3,
        "another runner's objects were touched"
    );
}

#[test]
fn in_process_runner_on_docker_sweeps_at_server_start() {
    require_image();
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let name = server::runner_agent::in_process_name(format!("127.0.0.1:{port}").parse().unwrap());
    let mut guard = Guard {
        runners: vec![name.clone()],
        child: None,
    };
    leave_objects(&name);

    let log_path = dir.path().join("server.log");
    let log = std::fs::File::create(&log_path).unwrap();
    let child = Command::new(slipway_bin())
        .arg("server")
        .env("SLIPWAY_DATA_DIR", dir.path().join("data"))
        .env("SLIPWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLIPWAY_RUNNER_BACKEND", "docker")
        .env("RUST_LOG", "info")
        .env_remove("SLIPWAY_DATABASE_URL")
        .stdin(Stdio::null())
        .stdout(log.try_clone().unwrap())
        .stderr(log)
        .spawn()
        .unwrap();
    let child = guard.child.insert(child);
    wait_swept(&name, child, &log_path);
    let text = std::fs::read_to_string(&log_path).unwrap();
    assert!(
        text.contains("swept what a crashed runner left on the Docker engine"),
        "{text}"
    );
}
