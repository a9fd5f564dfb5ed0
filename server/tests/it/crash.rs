//! `kill -9` of the real `slipway server` in the middle of a step, then a restart on the
//! same data directory: the run finishes (or fails with a reason), nothing stays
//! `running`, and the step never runs twice at once — the orphaned step of the killed
//! server is swept (killed) by the restarted in-process runner before its stage is
//! leased again.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::git::commit;
use crate::support::process::Processes;

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Running (not gone, not a zombie waiting to be reaped).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// Live processes in process group `pgid`.
fn group_members(pgid: i32) -> Vec<i32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| {
            let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
                return false;
            };
            let fields: Vec<&str> = stat[stat.rfind(')').unwrap() + 1..]
                .split_whitespace()
                .collect();
            fields[0] != "Z" && fields[2].parse::<i32>() == Ok(pgid)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_step_then_restart_finishes_the_run_without_running_a_step_twice() {
    let mut env = Processes::new().env("SLIPWAY_HEARTBEAT_TIMEOUT", "3");
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let starts = markers.join("starts");
    let dones = markers.join("dones");
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let yaml = format!(
        "\
env:
  MARKER_DIR: {markers}
stages:
  slow:
    steps:
      - name: slow
        run: |
          echo $$ >> \"$MARKER_DIR/starts\"
          sleep 6
          echo $$ >> \"$MARKER_DIR/dones\"
  after:
    needs: [slow]
    steps:
      - name: after
        run: echo after >> \"$MARKER_DIR/after\"
",
        markers = markers.display()
    );
    let sha = commit(&source, &[(".slipway.yml", &yaml)]);

    env.start_server("server-1");
    env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    let hook_token = env.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let admin_token = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let (hook_token, admin_token) = (hook_token.as_str(), admin_token.as_str());

    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }]
    });
    let r = client
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(hook_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "hook: {}", r.status());

    // The step has started (and is sleeping): kill the server the hard way.
    env.wait("the step to start", Duration::from_secs(60), || async {
        if lines(&starts).is_empty() {
            Err("no start recorded")
        } else {
            Ok(())
        }
    })
    .await;
    env.kill("server-1"); // SIGKILL
    let first: i32 = lines(&starts)[0].parse().unwrap();
    // Without a sweep this orphan would finish its sleep while attempt 2 runs.
    assert!(
        alive(first),
        "the killed server's step should still be running as an orphan"
    );

    env.start_server("server-2");
    let api = |path: String| {
        let client = client.clone();
        let url = env.url(&path);
        async move {
            let r = client
                .get(url)
                .bearer_auth(admin_token)
                .send()
                .await
                .unwrap();
            assert!(r.status().is_success(), "GET {path}: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };
    let detail = env
        .wait("the run to finish", Duration::from_secs(90), || async {
            let detail = api("/api/repos/team/app/runs/1".into()).await;
            match detail["run"]["status"].as_str().unwrap_or_default() {
                "pending" | "running" => Err(format!("{detail:#}")),
                _ => Ok(detail),
            }
        })
        .await;
    let dump = format!("{detail:#}\n{}", env.logs());

    // Nothing stays running.
    let stages = detail["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 2, "{dump}");
    for stage in stages {
        assert_ne!(stage["status"], "running", "{dump}");
        for step in stage["steps"].as_array().unwrap() {
            assert_ne!(step["status"], "running", "{dump}");
        }
    }
    let slow = stages.iter().find(|s| s["key"] == "slow").unwrap();
    match detail["run"]["status"].as_str().unwrap() {
        "success" => {
            // Attempt 2 re-ran the step after the lease expired…
            assert_eq!(slow["attempt"], 2, "{dump}");
            let started = lines(&starts);
            assert_eq!(started.len(), 2, "{dump}");
            // …and the orphan of attempt 1 never finished: only attempt 2 did.
            assert_eq!(lines(&dones), [started[1].clone()], "{dump}");
            assert_eq!(lines(&markers.join("after")), ["after"], "{dump}");
        }
        other => {
            // Failing is acceptable only with a reason, and still nothing ran twice.
            assert!(
                stages.iter().any(|s| s["reason"].is_string()),
                "run {other} without a reason: {dump}"
            );
            assert!(lines(&dones).len() <= 1, "{dump}");
        }
    }
    // The first attempt's step and its `sleep` are gone.
    assert!(!alive(first), "{dump}");
    assert!(group_members(first).is_empty(), "{dump}");
    // It was the sweep that killed them.
    let log2 = std::fs::read_to_string(env.log_path("server-2")).unwrap();
    assert!(
        log2.contains("swept what a crashed runner left behind"),
        "{dump}"
    );
    // No stage directory is left behind in the work dir.
    let leftovers: Vec<_> = std::fs::read_dir(env.data().join("work"))
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .filter(|n| n.to_string_lossy().starts_with("slipway-"))
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}\n{dump}");

    env.kill("server-2");
}
