//! Runners on the Docker backend sweep at start: containers, networks and volumes
//! labelled with their runner name (what a crashed predecessor left) are removed
//! before anything is leased; other runners' objects are not touched. Both the
//! standalone `slipway runner --backend docker` and the server's in-process runner
//! (`SLIPWAY_RUNNER_BACKEND=docker`). Needs a Docker engine and `bash .ci/images.sh`.

use std::time::Duration;

use crate::support::docker::{Leftovers, docker, objects, require_images};
use crate::support::poll::poll_until_blocking;
use crate::support::process::{Processes, runner};

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

/// Waits (bounded) until `runner` has nothing on the engine, while process `name` runs.
fn wait_swept(env: &mut Processes, name: &str, runner: &str) {
    let swept = poll_until_blocking(Duration::from_secs(60), || {
        if let Some(status) = env.exited(name) {
            panic!("exited before sweeping: {status}\n{}", env.logs());
        }
        match objects(runner) {
            left if left.is_empty() => Ok(()),
            left => Err(format!("leftovers of {runner} not swept: {left:?}")),
        }
    });
    if let Err(t) = swept {
        panic!("{}\n{}", t.state, env.logs());
    }
}

const BUSYBOX: &str = "slipway-test/busybox:latest";

#[test]
fn standalone_runner_sweeps_its_leftovers_at_start() {
    require_images(&[BUSYBOX]);
    let name = unique("test-runner-sweep");
    let bystander = unique("test-runner-bystander");
    let _leftovers = Leftovers(vec![name.clone(), bystander.clone()]);
    leave_objects(&name);
    leave_objects(&bystander);
    assert_eq!(objects(&name).len(), 3);

    let mut env = Processes::new();
    // No server listens there: the sweep must happen before the first lease anyway.
    let mut cmd = runner(
        "http://127.0.0.1:9",
        &name,
        &env.work_dir("runner"),
        "slp_not-a-real-token",
    );
    cmd.args(["--backend", "docker"]);
    env.spawn("runner", cmd);
    wait_swept(&mut env, "runner", &name);
    let text = std::fs::read_to_string(env.log_path("runner")).unwrap();
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
    require_images(&[BUSYBOX]);
    let mut env = Processes::new().env("SLIPWAY_RUNNER_BACKEND", "docker");
    let name = server::workers::in_process_runner::in_process_name(env.addr());
    let _leftovers = Leftovers(vec![name.clone()]);
    leave_objects(&name);

    env.spawn_server("server");
    wait_swept(&mut env, "server", &name);
    let text = std::fs::read_to_string(env.log_path("server")).unwrap();
    assert!(
        text.contains("swept what a crashed runner left on the Docker engine"),
        "{text}"
    );
}
