//! A cache restore writes only what lies under the stage's declared `cache:` paths.
//! A runner that does not play by the rules (here: this test, speaking the runner
//! protocol to the real `slipway server` process) saves a cache under the key the stage
//! computes, with entries beside `deps/` as well; the next run's stage, on a real
//! `slipway runner`, gets `deps/` and nothing else.

use std::time::Duration;

use serde_json::json;
use server::protocol::*;
use sha2::{Digest, Sha256};

use crate::support::git::commit;
use crate::support::process::Processes;

const PIPELINE: &str = r#"stages:
  deps:
    cache: [deps]
    steps:
      - run: |
          for f in evil.txt deps-not/x .slipway.yml.bak; do
            if [ -e "$f" ]; then echo "restored outside the cache paths: $f"; exit 1; fi
          done
          grep -q '^# a lock file' Cargo.lock
          echo "restored: $(cat deps/ok.txt)"
"#;

/// A tar of `(name, content)` regular files, as an attacker would write it.
fn tar_of(files: &[(&str, &str)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, name, content.as_bytes()).unwrap();
    }
    b.into_inner().unwrap()
}

async fn push(env: &Processes, client: &reqwest::Client, token: &str, sha: &str, branch: &str) {
    let r = client
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(token)
        .json(&json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": format!("refs/heads/{branch}")
        }] }))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restored_cache_writes_only_under_the_declared_paths() {
    let mut env = Processes::new()
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "600");
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let files = [
        (".slipway.yml", PIPELINE),
        ("Cargo.lock", "# a lock file: part of the cache key\n"),
    ];
    let sha = commit(&source, &files);
    env.start_server("server");
    env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    let hook = env.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let admin = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let rogue = env.cli(&["token", "create", "rogue", "--scope", "runner"]);
    let honest = env.cli(&["token", "create", "honest", "--scope", "runner"]);
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(60))
        .build()
        .unwrap();

    // The rogue runner leases run 1's stage and saves a cache under its key.
    push(&env, &client, &hook, &sha, "main").await;
    let reg: RegisterResponse = client
        .post(env.url(REGISTER))
        .bearer_auth(&rogue)
        .json(&json!({ "name": "rogue", "capacity": 1 }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let lease: LeaseResponse = env
        .wait(
            "run 1's stage to be leased",
            Duration::from_secs(60),
            || async {
                let r = client
                    .post(env.url(LEASE))
                    .bearer_auth(&rogue)
                    .json(&LeaseRequest {
                        runner_id: reg.runner_id,
                    })
                    .send()
                    .await
                    .map_err(|e| e.to_string())?;
                if r.status() != 200 {
                    return Err(format!("lease: {}", r.status()));
                }
                r.json::<LeaseResponse>().await.map_err(|e| e.to_string())
            },
        )
        .await;
    let checkout = tempfile::tempdir().unwrap();
    for (name, content) in files {
        std::fs::write(checkout.path().join(name), content).unwrap();
    }
    let key = server::agent::cache::cache_key(&lease.stage_key, &lease.spec.cache, checkout.path())
        .unwrap();
    let poisoned = tar_of(&[
        ("deps/ok.txt", "from the cache"),
        ("evil.txt", "outside every cache path"),
        ("deps-not/x", "a sibling sharing the prefix"),
        (".slipway.yml.bak", "beside the pipeline"),
    ]);
    let size = poisoned.len().to_string();
    let sha256 = hex::encode(Sha256::digest(&poisoned));
    let r = client
        .put(env.url(&cache_path(lease.stage_id)))
        .query(&[
            ("lease_token", lease.lease_token.as_str()),
            ("key", key.as_str()),
            ("sha256", sha256.as_str()),
            ("size", size.as_str()),
        ])
        .bearer_auth(&rogue)
        .body(poisoned)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    // Run 2 of the same commit, on an honest runner: a cache hit, restored in part.
    env.start_runner("honest", &honest, &[]);
    push(&env, &client, &hook, &sha, "other").await;
    let run = env
        .wait_run_end(&admin, "team/app", 2, Duration::from_secs(90))
        .await;
    let log = env.step_log(&admin, "team/app", 2, "deps", 0).await;
    assert_eq!(
        run["run"]["status"],
        "success",
        "{run}\n{log}\n{}",
        env.logs()
    );
    assert!(log.contains("restored: from the cache"), "{log}");
    let runner_log = std::fs::read_to_string(env.log_path("honest")).unwrap();
    assert!(
        runner_log.contains("skipped 3 cache entries outside the stage's cache paths"),
        "{runner_log}"
    );
}
