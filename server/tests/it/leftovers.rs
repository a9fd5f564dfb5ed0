//! Twenty `kill -9`s in the middle of stages — ten of the real `slipway server` (its
//! in-process runner working in `<data>/work`) and ten of a `slipway runner` (working in
//! its `--work-dir`), alternating — then the runs finish, and neither work dir holds a
//! single directory: every stage directory and every downloaded source (`source-*`)
//! a killed process left is removed by the start-up sweep of its successor.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::git::{commit, git};
use crate::support::process::Processes;

const KILLS: usize = 20;

/// `(branch, working directory)` of every step start so far.
fn starts(markers: &Path) -> Vec<(String, String)> {
    std::fs::read_to_string(markers.join("starts"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(b, d)| (b.to_string(), d.to_string()))
        .collect()
}

fn entries(dir: &Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_kills_mid_stage_leave_no_directory_behind() {
    let mut env = Processes::new()
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
        .env("SLIPWAY_RUNNER_CAPACITY", "8")
        .env("SLIPWAY_MAX_RUNNING", "32")
        .env("SLIPWAY_MAX_RUNNING_PER_REPO", "32");
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    // Each run has one stage on each runner; a step records where it runs and waits
    // (bounded) for its branch's stop file.
    let step = "\
        echo \"$SLIPWAY_BRANCH $PWD\" >> \"$MARKER_DIR/starts\"\n\
        i=0\n\
        while [ ! -f \"$MARKER_DIR/stop-$SLIPWAY_BRANCH\" ] && [ $i -lt 600 ]; do sleep 0.1; i=$((i+1)); done\n";
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("          {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "env:\n  MARKER_DIR: {markers}\nstages:\n\
         \x20 inproc:\n    runs_on: [local]\n    steps:\n      - run: |\n{step}\
         \x20 ext:\n    runs_on: [ext]\n    steps:\n      - run: |\n{step}",
        markers = markers.display(),
        step = indent(step),
    );
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let sha = commit(&source, &[(".slipway.yml", &yaml)]);

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
    let runner_token = env.cli(&["token", "create", "ext", "--scope", "runner"]);
    let runner_args = ["--labels", "ext", "--capacity", "8"];
    env.start_runner("ext", &runner_token, &runner_args);
    let inproc_dir = env.data().join("work");
    let ext_dir = env.work_dir("ext");

    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    for kill in 0..KILLS {
        let branch = format!("k{kill}");
        git(&source, &["branch", &branch, "main"]);
        env.hook_push_until_accepted(&hook, "team/app", &sha, &format!("refs/heads/{branch}"))
            .await;
        // Both stages of this run are running: one on each runner.
        env.wait("both stages to start", Duration::from_secs(60), || async {
            let s = starts(&markers);
            let on = |dir: &Path| {
                s.iter()
                    .any(|(b, d)| *b == branch && Path::new(d).starts_with(dir))
            };
            if on(&inproc_dir) && on(&ext_dir) {
                Ok(())
            } else {
                Err(format!("starts so far: {s:?}"))
            }
        })
        .await;
        if kill % 2 == 0 {
            env.kill("server");
            env.start_server("server");
        } else {
            env.kill("ext");
            env.start_runner("ext", &runner_token, &runner_args);
        }
        std::fs::write(markers.join(format!("stop-{branch}")), "").unwrap();
    }

    // Every run ends (a killed stage is re-leased and stops at once, or has used up its
    // attempts), and with it every directory a live stage had.
    env.wait("every run to end", Duration::from_secs(180), || async {
        let runs: Value = client
            .get(env.url("/api/repos/team/app/runs"))
            .bearer_auth(&admin)
            .send()
            .await
            .map_err(|e| e.to_string())?
            .json()
            .await
            .map_err(|e| e.to_string())?;
        let runs = runs.as_array().ok_or("not a list")?;
        let open: Vec<String> = runs
            .iter()
            .filter(|r| {
                !matches!(
                    r["status"].as_str(),
                    Some("success" | "failure" | "error" | "cancelled")
                )
            })
            .map(|r| format!("#{} {}", r["number"], r["status"]))
            .collect();
        if runs.len() == KILLS && open.is_empty() {
            Ok(())
        } else {
            Err(format!("{} runs, not ended: {open:?}", runs.len()))
        }
    })
    .await;
    let left = env
        .wait(
            "the work dirs to be empty",
            Duration::from_secs(30),
            || async {
                let left: Vec<String> = entries(&inproc_dir)
                    .into_iter()
                    .chain(entries(&ext_dir))
                    .collect();
                if left.is_empty() {
                    Ok(left)
                } else {
                    Err(format!("{left:?}"))
                }
            },
        )
        .await;
    println!(
        "after {KILLS} kill -9s mid-stage ({} step starts): {} directories left in the work dirs",
        starts(&markers).len(),
        left.len()
    );
}
