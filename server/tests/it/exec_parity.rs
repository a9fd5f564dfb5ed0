//! `slipway exec` behaves like the server: artifacts reach the stages that need them
//! (same paths, same digests, on the local and the Docker backend), a stage this
//! backend cannot run fails the exit code unless `--allow-skip` (and is decided before
//! its secrets are asked for), local steps find the host's toolchains, and
//! pull-request runs see their number and branches.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use serde_json::Value;
use server::store::RunStatus;
use sha2::{Digest, Sha256};

use crate::support::docker::require_images;
use crate::support::process;
use crate::support::test_server::TestServer;

/// Runs on the local backend (`image:` ignored there) and in busybox containers alike.
const PIPELINE: &str = r#"stages:
  build:
    image: slipway-test/busybox:latest
    artifacts: [out/]
    steps:
      - run: |
          mkdir -p out/bin
          printf 'built from %s\n' "$(cat README.md)" > out/result.txt
          printf '#!/bin/sh\necho tool ran\n' > out/bin/tool
          chmod +x out/bin/tool
  check:
    needs: [build]
    image: slipway-test/busybox:latest
    artifacts: [checked.txt]
    steps:
      - run: |
          ./out/bin/tool
          wc -c < out/result.txt | tr -d ' ' > checked.txt
          cat out/result.txt >> checked.txt
"#;

const README: &str = "hello from the repository\n";

fn sha_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

fn exec(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = process::slipway();
    cmd.arg("exec").arg(".").args(args).current_dir(dir);
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("spawn slipway")
}

fn text(out: &Output) -> String {
    format!(
        "{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// `stage/path` → sha256 of every file `exec` kept under `--artifacts-dir`.
fn kept_digests(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for entry in std::fs::read_dir(&dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                let rel = path
                    .strip_prefix(root)
                    .unwrap()
                    .to_string_lossy()
                    .into_owned();
                out.insert(rel, sha_hex(&std::fs::read(&path).unwrap()));
            }
        }
    }
    out
}

#[tokio::test(flavor = "multi_thread")]
async fn exec_passes_artifacts_between_stages_like_the_server() {
    require_images(&["slipway-test/busybox:latest"]);

    // The server runs it…
    let server = TestServer::builder().heartbeat_secs(3).start().await;
    let (repo, sha) = server
        .repo(&[("README.md", README), (".slipway.yml", PIPELINE)])
        .await;
    let run = server.run(&repo, &sha, PIPELINE, false).await;
    let run = server.wait_run(run.id, Duration::from_secs(90)).await;
    assert_eq!(
        run.status,
        RunStatus::Success,
        "{}",
        server.dump(run.id).await
    );
    let admin = server.admin_token().await;
    let listed: Vec<Value> = reqwest::Client::new()
        .get(format!("{}/api/runs/{}/artifacts", server.url(), run.id))
        .bearer_auth(&admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let on_server: BTreeMap<String, String> = listed
        .iter()
        .map(|a| {
            (
                format!(
                    "{}/{}",
                    a["stage_key"].as_str().unwrap(),
                    a["name"].as_str().unwrap()
                ),
                a["sha256"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    server.stop().await;
    let checked = format!("{}\nbuilt from hello from the repository\n", "37");
    assert_eq!(
        on_server.get("check/checked.txt"),
        Some(&sha_hex(checked.as_bytes())),
        "the server's `check` read `build`'s artifacts: {on_server:?}"
    );

    // …and so does `exec`, on both backends, with the same digests.
    for backend in ["local", "docker"] {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("README.md"), README).unwrap();
        std::fs::write(dir.path().join(".slipway.yml"), PIPELINE).unwrap();
        let kept = tempfile::tempdir().unwrap();
        let out = exec(
            dir.path(),
            &[
                "--branch",
                "main",
                "--backend",
                backend,
                "--artifacts-dir",
                kept.path().to_str().unwrap(),
            ],
            &[],
        );
        assert!(out.status.success(), "{backend}: {}", text(&out));
        assert_eq!(
            kept_digests(kept.path()),
            on_server,
            "{backend}: {}",
            text(&out)
        );
        assert!(
            !dir.path().join("out").exists(),
            "{backend}: the working tree is never written to"
        );
        if backend == "local" {
            assert!(
                text(&out).contains("stage `build`: the local backend ignores `image:`"),
                "{}",
                text(&out)
            );
        }
    }
}

#[test]
fn a_stage_this_backend_cannot_run_fails_the_exit_unless_allowed() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".slipway.yml"),
        "stages:\n  build:\n    steps: [ { run: echo built } ]\n  isolated:\n    runs_on: [backend:docker]\n    image: slipway-test/busybox:latest\n    \
         env: { TOKEN: '${{ secrets.DOCKER_ONLY }}' }\n    steps: [ { run: echo isolated } ]\n  production:\n    \
         needs: [build]\n    kind: deploy\n    environment: production\n    env: { KEY: '${{ secrets.DEPLOY_KEY }}' }\n    \
         steps: [ { run: touch deployed } ]\n",
    )
    .unwrap();
    // Neither secret is asked for: their stages do not run here.
    let out = exec(dir.path(), &["--branch", "main"], &[]);
    let all = text(&out);
    assert!(!out.status.success(), "{all}");
    assert!(!all.contains("needs secret"), "{all}");
    assert!(
        all.contains("needs the docker backend (is bound to it by `runs_on`); this is the local backend: pass --backend docker"),
        "{all}"
    );
    assert!(
        all.contains("2 stage(s) could not run on this backend"),
        "{all}"
    );
    assert!(all.contains("pass --allow-skip"), "{all}");

    let out = exec(dir.path(), &["--branch", "main", "--allow-skip"], &[]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(!dir.path().join("deployed").exists());
}

#[test]
fn local_steps_find_the_host_toolchains_and_the_allow_list() {
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".rustup")).unwrap();
    std::fs::create_dir(home.path().join(".cargo")).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".slipway.yml"),
        "stages:\n  env:\n    steps:\n      - run: |\n          echo \"rustup=$RUSTUP_HOME\"\n          \
         echo \"cargo=$CARGO_HOME\"\n          echo \"nvm=${NVM_DIR-unset} java=${JAVA_HOME-unset} db=${DATABASE_URL-unset}\"\n          \
         test \"$HOME\" != \"$RUSTUP_HOME\" && echo home isolated\n",
    )
    .unwrap();
    let home_s = home.path().to_str().unwrap();
    let mut cmd = process::slipway();
    cmd.args(["exec", ".", "--branch", "main", "--pass-env", "NVM_DIR"])
        .current_dir(dir.path())
        .env("HOME", home_s)
        .env_remove("RUSTUP_HOME")
        .env_remove("CARGO_HOME")
        .env("NVM_DIR", "/opt/nvm")
        .env("JAVA_HOME", "/opt/java")
        .env("SLIPWAY_LOCAL_PASS_ENV", "JAVA_HOME")
        .env("DATABASE_URL", "postgres://not-for-steps");
    let out = cmd.output().unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(all.contains(&format!("rustup={home_s}/.rustup")), "{all}");
    assert!(all.contains(&format!("cargo={home_s}/.cargo")), "{all}");
    assert!(
        all.contains("nvm=/opt/nvm java=/opt/java db=unset"),
        "{all}"
    );
    assert!(all.contains("home isolated"), "{all}");
}

#[test]
fn pull_request_runs_as_written_in_yaml_and_see_their_branches() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join(".slipway.yml"),
        "on:\n  pull_request: { branches: [main] }\nstages:\n  pr:\n    steps:\n      - run: echo \"pr=$SLIPWAY_PR_NUMBER $SLIPWAY_SOURCE_BRANCH into $SLIPWAY_TARGET_BRANCH on $SLIPWAY_EVENT\"\n",
    )
    .unwrap();
    let out = exec(
        dir.path(),
        &[
            "--event",
            "pull_request",
            "--branch",
            "main",
            "--source-branch",
            "feature/login",
            "--pr-number",
            "42",
        ],
        &[],
    );
    let all = text(&out);
    assert!(out.status.success(), "{all}");
    assert!(
        all.contains("pr=42 feature/login into main on pull_request"),
        "{all}"
    );
}

/// The `examples/README.md` line for `docker-app`, run as written from the repository
/// root with `slipway` on `PATH`: every stage succeeds, the image is pushed and the
/// next stage gets its digest.
#[test]
fn the_docker_app_example_runs_as_its_readme_says() {
    require_images(&["slipway-test/busybox:latest"]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let readme = std::fs::read_to_string(root.join("examples/README.md")).unwrap();
    let line = readme
        .lines()
        .find(|l| l.contains("slipway exec examples/docker-app"))
        .expect("examples/README.md says how to run docker-app");
    let bin = process::slipway_bin();
    let path = format!(
        "{}:{}",
        bin.parent().unwrap().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = std::process::Command::new("sh")
        .args(["-c", line])
        .current_dir(&root)
        .env("PATH", path)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let all = text(&out);
    assert!(out.status.success(), "{line}\n{all}");
    for stage in ["build", "test", "scan", "image", "release-notes"] {
        assert!(
            all.lines()
                .any(|l| l.starts_with(stage) && l.contains("success")),
            "{stage} succeeded: {all}"
        );
    }
    assert!(
        all.contains("deploy 127.0.0.1:5000/examples/docker-app@sha256:"),
        "{all}"
    );
}
