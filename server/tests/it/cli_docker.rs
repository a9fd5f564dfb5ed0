//! `slipway exec --backend docker` end to end: the binary plans a repository and
//! runs its stages as containers, with a service reachable by name, and leaves
//! nothing on the engine. Needs a Docker engine and `bash .ci/images.sh`.

use std::path::Path;
use std::process::Stdio;

use crate::support::docker::{labelled, require_images};
use crate::support::process::slipway;

fn write(dir: &Path, rel: &str, body: &str) {
    std::fs::write(dir.join(rel), body).unwrap();
}

#[test]
fn exec_on_the_docker_backend_runs_containers_with_a_service() {
    require_images(&["slipway-test/busybox:latest", "slipway-test/httpd:latest"]);
    let dir = tempfile::tempdir().unwrap();
    write(dir.path(), "input.txt", "from the working tree\n");
    write(
        dir.path(),
        ".slipway.yml",
        r#"stages:
  test:
    image: slipway-test/busybox:latest
    services:
      web:
        image: slipway-test/httpd:latest
    steps:
      - run: |
          echo "pwd=$(pwd)"
          cat input.txt
          wget -q -O - http://web:8080/
          echo built > out.txt
    artifacts: [out.txt]
  after:
    needs: [test]
    image: slipway-test/busybox:latest
    steps:
      - run: echo "second stage on $(hostname | wc -c) chars of container hostname"
"#,
    );
    let child = slipway()
        .args(["exec", ".", "--backend", "docker", "--branch", "main"])
        .current_dir(dir.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = child.wait_with_output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "stdout:\n{stdout}\nstderr:\n{stderr}");
    assert!(stdout.contains("| pwd=/workspace"), "{stdout}");
    assert!(stdout.contains("| from the working tree"), "{stdout}");
    assert!(stdout.contains("| hello from the service"), "{stdout}");
    assert!(stdout.contains("out.txt sha256:"), "{stdout}");
    assert!(stdout.contains("second stage on"), "{stdout}");
    let label = format!("io.slipway.runner=exec-{}-{pid}", server::agent::hostname());
    assert_eq!(labelled(&label), Vec::<String>::new());

    // A stage without an image cannot run in a container: a clear error.
    write(
        dir.path(),
        ".slipway.yml",
        "stages:\n  bare:\n    steps:\n      - run: echo hi\n",
    );
    let out = slipway()
        .args(["exec", ".", "--backend", "docker"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!out.status.success(), "{stdout}");
    assert!(stdout.contains("has no image"), "{stdout}");
}
