//! Several `slipway runner` processes sharing one real `slipway server` (no in-process
//! runner): stages go to a runner with their `runs_on` labels, a runner runs up to its
//! `--capacity` stages at once, a stage no registered runner can take says so, and a
//! runner killed with SIGKILL mid-step loses only its own stage — it is re-queued when
//! the lease expires and finishes on the restarted runner (whose start-up sweep killed
//! the orphaned step), while the other runner's stages finish untouched.
//!
//! The steps meet through marker files rather than timing: the two `alpha` stages each
//! wait (bounded) for the other to have started, which only happens if the runner
//! really runs two at once; `a1` also waits for the test to say `beta` was killed, so
//! it is provably running across the kill, and `a2` waits for the test to have seen
//! both running in the runners API.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;

use crate::support::docker::{Leftovers, containers};
use crate::support::git::commit;
use crate::support::process::Processes;

/// A server without an in-process runner, and runners whose lost stages come back
/// within 3 s.
fn processes() -> Processes {
    Processes::new()
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
}

/// Kills the step process groups recorded in `b.starts` when dropped, so a failing test
/// leaves no step behind (the step runs as its own process group; the pid leads it).
struct StepGroups(PathBuf);

impl Drop for StepGroups {
    fn drop(&mut self) {
        for pid in lines(&self.0.join("b.starts")) {
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// `slipway runner` as `name` on `backend` with these labels and capacity.
fn start_runner(
    env: &mut Processes,
    name: &str,
    token: &str,
    labels: &str,
    capacity: u32,
    backend: &str,
) {
    let capacity = capacity.to_string();
    env.start_runner(
        name,
        token,
        &[
            "--backend",
            backend,
            "--labels",
            labels,
            "--capacity",
            &capacity,
            "--shutdown-grace",
            "1",
        ],
    );
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Running (not gone, not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

/// A step that waits (at most 60 s, in 0.1 s naps) for a marker file, else fails.
fn wait_for(file: &str, what: &str) -> String {
    format!(
        "i=0; while [ ! -f \"$M/{file}\" ]; do i=$((i+1)); \
         if [ $i -gt 600 ]; then echo \"{what}\"; exit 1; fi; sleep 0.1; done\n"
    )
}

fn pipeline(markers: &Path) -> String {
    let indent = |s: String| s.replace('\n', "\n          ");
    format!(
        "\
env:
  M: {markers}
stages:
  a1:
    runs_on: [alpha]
    steps:
      - name: meet
        run: |
          pwd > \"$M/a1.pwd\"
          touch \"$M/a1.started\"
          {wait_a2}
          {wait_kill}
          echo a1 done
  a2:
    runs_on: alpha
    steps:
      - name: meet
        run: |
          pwd > \"$M/a2.pwd\"
          touch \"$M/a2.started\"
          {wait_a1}
          {wait_checked}
          echo a2 done
  b:
    runs_on: [beta]
    steps:
      - name: work
        run: |
          echo $$ >> \"$M/b.starts\"
          pwd >> \"$M/b.pwd\"
          if [ \"$(wc -l < \"$M/b.starts\")\" -ge 2 ]; then echo attempt two; exit 0; fi
          sleep 120
          echo $$ >> \"$M/b.dones\"
",
        markers = markers.display(),
        wait_a2 = indent(wait_for("a2.started", "a2 never ran beside a1")),
        wait_a1 = indent(wait_for("a1.started", "a1 never ran beside a2")),
        wait_kill = indent(wait_for("beta.killed", "beta was never killed")),
        wait_checked = indent(wait_for("runners.checked", "the test never saw a2 run")),
    )
}

/// The run detail if the run is final, else what it says.
fn finished(detail: Value) -> Result<Value, String> {
    match detail["run"]["status"].as_str().unwrap_or_default() {
        "pending" | "running" => Err(format!("{detail:#}")),
        _ => Ok(detail),
    }
}

fn stage<'a>(detail: &'a Value, key: &str) -> &'a Value {
    detail["stages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["key"] == key)
        .unwrap_or_else(|| panic!("no stage {key}: {detail:#}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_labelled_runners_share_the_queue_and_a_killed_one_loses_only_its_stage() {
    let mut env = processes();
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let _steps = StepGroups(markers.clone());
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let sha = commit(&source, &[(".slipway.yml", &pipeline(&markers))]);

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
    let hook_token = env.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let admin_token = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let runner_token = env.cli(&["token", "create", "runners", "--scope", "runner"]);
    start_runner(&mut env, "alpha", &runner_token, "alpha,linux", 2, "local");

    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }]
    });
    let r = client
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(&hook_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "hook: {}", r.status());

    let detail_url = env.url("/api/repos/team/app/runs/1");
    let run_detail = || {
        let client = client.clone();
        let url = detail_url.clone();
        let token = admin_token.clone();
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            if r.status() == reqwest::StatusCode::NOT_FOUND {
                return Value::Null;
            }
            assert!(r.status().is_success(), "run detail: {}", r.status());
            r.json::<Value>().await.unwrap()
        }
    };

    // `b` needs `beta`, which no runner has yet: it says so, in the API and the log.
    let detail = env
        .wait(
            "`b` to report unroutable",
            Duration::from_secs(60),
            || async {
                let detail = run_detail().await;
                let server_log =
                    std::fs::read_to_string(env.log_path("server")).unwrap_or_default();
                let warned = server_log.contains(
                    "queued stage cannot start: no registered runner has all of the labels beta",
                );
                let planned = detail["stages"].as_array().is_some_and(|s| !s.is_empty());
                if planned && stage(&detail, "b")["status"] == "queued" && warned {
                    Ok(detail)
                } else {
                    Err(format!("{detail:#}"))
                }
            },
        )
        .await;
    assert_eq!(
        stage(&detail, "b")["unroutable"],
        "no registered runner has all of the labels beta",
        "{detail:#}"
    );
    assert!(stage(&detail, "b")["labels"] == serde_json::json!(["beta"]));

    // Both alpha stages run at once on alpha (capacity 2), meeting through markers.
    env.wait(
        "alpha to run a1 and a2",
        Duration::from_secs(60),
        || async {
            let started = ["a1.started", "a2.started"].map(|m| markers.join(m).exists());
            if started == [true, true] {
                Ok(())
            } else {
                Err(format!("a1, a2 started: {started:?}"))
            }
        },
    )
    .await;

    // The runners API shows alpha full: its labels (with its backend), 2 of 2 running.
    let runners: Value = client
        .get(env.url("/api/runners"))
        .bearer_auth(&admin_token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let alpha = &runners[0];
    assert_eq!(runners.as_array().map(Vec::len), Some(1), "{runners:#}");
    assert_eq!(alpha["name"], "alpha", "{runners:#}");
    assert_eq!(
        alpha["labels"],
        serde_json::json!(["alpha", "linux", "backend:local"]),
        "{runners:#}"
    );
    assert_eq!(alpha["capacity"], 2, "{runners:#}");
    assert_eq!(alpha["running"], 2, "{runners:#}");
    std::fs::write(markers.join("runners.checked"), "").unwrap();

    start_runner(&mut env, "beta", &runner_token, "beta", 1, "local");
    env.wait("beta to start b", Duration::from_secs(60), || async {
        if lines(&markers.join("b.starts")).is_empty() {
            Err("no start of b yet")
        } else {
            Ok(())
        }
    })
    .await;
    let detail = run_detail().await;
    assert!(stage(&detail, "b")["unroutable"].is_null(), "{detail:#}");
    assert_eq!(stage(&detail, "a1")["status"], "running", "{detail:#}");

    // Kill beta the hard way mid-step; its step is left running as an orphan.
    env.kill("beta");
    std::fs::write(markers.join("beta.killed"), "").unwrap();
    let orphan: i32 = lines(&markers.join("b.starts"))[0].parse().unwrap();
    assert!(
        alive(orphan),
        "the killed runner's step should be an orphan now"
    );

    // The lease expires (heartbeat timeout 3 s): `b` is queued again for attempt 2,
    // as an infrastructure failure ("runner lost"); alpha's work is not disturbed.
    let detail = env
        .wait(
            "b to be taken back from the killed runner",
            Duration::from_secs(30),
            || async {
                let detail = run_detail().await;
                let b = stage(&detail, "b");
                if b["status"] == "queued" && b["attempt"] == 2 {
                    return Ok(detail);
                }
                assert!(
                    b["status"] == "running" && b["attempt"] == 1,
                    "b should stay running until its lease expires, then be queued: {detail:#}\n{}",
                    env.logs()
                );
                Err(format!("{detail:#}"))
            },
        )
        .await;
    let b = stage(&detail, "b");
    assert!(
        b["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("runner lost"),
        "{detail:#}"
    );

    // Beta comes back: its start-up sweep kills the orphan, then it runs attempt 2.
    start_runner(&mut env, "beta", &runner_token, "beta", 1, "local");
    let detail = env
        .wait("the run to finish", Duration::from_secs(90), || async {
            finished(run_detail().await)
        })
        .await;
    let dump = format!("{detail:#}\n{}", env.logs());
    assert_eq!(detail["run"]["status"], "success", "{dump}");

    let (a1, a2, b) = (
        stage(&detail, "a1"),
        stage(&detail, "a2"),
        stage(&detail, "b"),
    );
    // Alpha's stages: one attempt each, both on alpha, in alpha's work dir.
    for s in [a1, a2] {
        assert_eq!(s["status"], "success", "{dump}");
        assert_eq!(s["attempt"], 1, "{dump}");
    }
    assert_eq!(a1["runner_id"], a2["runner_id"], "{dump}");
    assert_ne!(a1["runner_id"], b["runner_id"], "{dump}");
    let alpha_dir = env.work_dir("alpha");
    for f in ["a1.pwd", "a2.pwd"] {
        let pwd = lines(&markers.join(f)).concat();
        assert!(
            Path::new(&pwd).starts_with(&alpha_dir),
            "{f}: {pwd}\n{dump}"
        );
    }
    // Beta's stage: attempt 2 on the restarted beta; the orphan of attempt 1 was
    // killed by the sweep and never finished.
    assert_eq!(b["status"], "success", "{dump}");
    assert_eq!(b["attempt"], 2, "{dump}");
    let beta_dir = env.work_dir("beta");
    let pwds = lines(&markers.join("b.pwd"));
    assert_eq!(pwds.len(), 2, "{dump}");
    assert!(
        pwds.iter().all(|p| Path::new(p).starts_with(&beta_dir)),
        "{pwds:?}\n{dump}"
    );
    assert!(
        !alive(orphan),
        "the orphaned step outlived beta's restart\n{dump}"
    );
    assert!(lines(&markers.join("b.dones")).is_empty(), "{dump}");
}

/// The same on the Docker backend: two `slipway runner --backend docker` processes; one
/// is SIGKILLed mid-step, leaving its step container running as an orphan. Its stage is
/// taken back within the heartbeat timeout while the other runner's stage finishes on
/// its first attempt; the restarted runner's start-up sweep removes the orphan
/// container before it runs attempt 2, and nothing of either runner is left after.
#[tokio::test(flavor = "multi_thread")]
async fn docker_runners_a_killed_one_leaves_no_orphan_containers_after_restart() {
    let mut env = processes();
    let (alpha, beta) = (format!("alpha-{}", env.port), format!("beta-{}", env.port));
    let _leftovers = Leftovers(vec![alpha.clone(), beta.clone()]);
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let pipeline = "\
stages:
  a:
    runs_on: [alpha]
    image: slipway-test/busybox:latest
    steps:
      - run: sleep 6 && echo a done
  b:
    runs_on: [beta]
    image: slipway-test/busybox:latest
    steps:
      - run: sleep 5 && echo b done
";
    let sha = commit(&source, &[(".slipway.yml", pipeline)]);
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
    let hook_token = env.cli(&[
        "token", "create", "hook", "--scope", "hook", "--repo", "team/app",
    ]);
    let admin_token = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let runner_token = env.cli(&["token", "create", "runners", "--scope", "runner"]);
    start_runner(&mut env, &alpha, &runner_token, "alpha", 1, "docker");
    start_runner(&mut env, &beta, &runner_token, "beta", 1, "docker");

    let client = reqwest::Client::new();
    let body = serde_json::json!({
        "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }]
    });
    let r = client
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(&hook_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert!(r.status().is_success(), "hook: {}", r.status());
    let detail_url = env.url("/api/repos/team/app/runs/1");
    let detail = || {
        let (client, url, token) = (client.clone(), detail_url.clone(), admin_token.clone());
        async move {
            let r = client.get(url).bearer_auth(token).send().await.unwrap();
            if !r.status().is_success() {
                return Value::Null;
            }
            r.json::<Value>().await.unwrap()
        }
    };

    // Both run; beta's step container is up.
    let orphans = env
        .wait("a and b to run both", Duration::from_secs(60), || async {
            let d = detail().await;
            let running = |k: &str| {
                d["stages"].as_array().is_some_and(|stages| {
                    stages
                        .iter()
                        .any(|s| s["key"] == k && s["steps"][0]["status"] == "running")
                })
            };
            let containers = containers(&beta);
            if running("a") && running("b") && !containers.is_empty() {
                Ok(containers)
            } else {
                Err(format!("{d:#}"))
            }
        })
        .await;
    env.kill(&beta);

    // Taken back within the heartbeat timeout (3 s), as "runner lost"; the orphan
    // container is still there, since nobody removed it.
    let d = env
        .wait("b to be taken back", Duration::from_secs(20), || async {
            let d = detail().await;
            let b = stage(&d, "b");
            if b["status"] == "queued" && b["attempt"] == 2 {
                Ok(d)
            } else {
                Err(format!("{d:#}"))
            }
        })
        .await;
    assert!(
        stage(&d, "b")["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("runner lost"),
        "{d:#}"
    );
    assert!(
        orphans.iter().any(|c| containers(&beta).contains(c)),
        "the killed runner's step container should be an orphan now"
    );

    // Beta restarts: the sweep removes the orphan, then attempt 2 runs to the end.
    start_runner(&mut env, &beta, &runner_token, "beta", 1, "docker");
    let d = env
        .wait("the run to finish", Duration::from_secs(90), || async {
            finished(detail().await)
        })
        .await;
    let dump = format!("{d:#}\n{}", env.logs());
    assert_eq!(d["run"]["status"], "success", "{dump}");
    assert_eq!(stage(&d, "a")["attempt"], 1, "{dump}");
    assert_eq!(stage(&d, "b")["attempt"], 2, "{dump}");
    let left = containers(&beta);
    assert!(
        orphans.iter().all(|c| !left.contains(c)),
        "the orphan outlived beta's restart: {left:?}\n{dump}"
    );
    assert!(left.is_empty(), "{left:?}\n{dump}");
    assert!(containers(&alpha).is_empty(), "{dump}");
}
