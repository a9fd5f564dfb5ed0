//! What runners leave on the Docker engine, through the `docker` CLI. Everything the
//! Docker backend creates carries `io.slipway.runner=<runner name>`.

use std::process::{Command, Stdio};

/// Fails the test unless the images `.ci/images.sh` builds are there.
pub fn require_images(images: &[&str]) {
    for image in images {
        let ok = Command::new("docker")
            .args(["image", "inspect", image])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap()
            .success();
        assert!(
            ok,
            "test image {image} is missing: run `bash .ci/images.sh` first"
        );
    }
}

/// `docker <args>`, which must succeed; its stdout, trimmed.
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .output()
        .expect("running the docker CLI");
    assert!(out.status.success(), "docker {args:?}: {out:?}");
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

/// The kinds of objects a runner leaves: how to list them and how to remove one.
const KINDS: [(&[&str], &[&str]); 3] = [
    (&["ps", "-a", "-q"], &["rm", "-f"]),
    (&["network", "ls", "-q"], &["network", "rm"]),
    (&["volume", "ls", "-q"], &["volume", "rm", "-f"]),
];

fn list(kind: &[&str], label: &str) -> Vec<String> {
    let filter = format!("label={label}");
    let mut args = kind.to_vec();
    args.extend(["--filter", &filter]);
    docker(&args).lines().map(str::to_owned).collect()
}

/// Containers, networks and volumes carrying `label` (`key=value`).
pub fn labelled(label: &str) -> Vec<String> {
    KINDS
        .iter()
        .flat_map(|(kind, _)| list(kind, label))
        .collect()
}

/// Containers, networks and volumes of runner `runner`.
pub fn objects(runner: &str) -> Vec<String> {
    labelled(&runner_label(runner))
}

/// The containers of runner `runner`.
pub fn containers(runner: &str) -> Vec<String> {
    list(KINDS[0].0, &runner_label(runner))
}

fn runner_label(runner: &str) -> String {
    format!("io.slipway.runner={runner}")
}

/// Removes whatever the named runners still have on the engine when dropped, so a test
/// that fails half-way leaves nothing (on success there is nothing left to remove).
pub struct Leftovers(pub Vec<String>);

impl Drop for Leftovers {
    fn drop(&mut self) {
        for runner in &self.0 {
            let filter = format!("label={}", runner_label(runner));
            for (list, remove) in KINDS {
                let Ok(out) = Command::new("docker")
                    .args(list)
                    .args(["--filter", &filter])
                    .output()
                else {
                    continue;
                };
                let ids: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .split_whitespace()
                    .map(str::to_string)
                    .collect();
                if !ids.is_empty() {
                    let _ = Command::new("docker")
                        .args(remove)
                        .args(&ids)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}
