//! Chaos: the real `slipway server` (with its in-process runner) is killed with
//! SIGKILL twenty times at random moments — while webhooks arrive, runs are planned,
//! steps stream their logs and stages finish — and restarted on the same data
//! directory each time. Afterwards every run ends (none stuck `queued` or `running`),
//! a run that did not succeed says why, no step ever ran twice at once (each step holds
//! an `flock` for as long as it runs: a second copy of it would find the lock taken),
//! no step process outlives its stage, and neither the work directory nor the blob
//! store holds anything a killed server left half-done.
//!
//! The kill times come from a seed printed at the start; `CHAOS_SEED=<n>` replays one.

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

use crate::support::git::{commit, git};
use crate::support::process::Processes;

const KILLS: usize = 20;

/// xorshift64*: a reproducible stream of kill delays, no dependency needed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) % n
    }
}

fn lines(path: &Path) -> Vec<String> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .map(str::to_string)
        .collect()
}

/// Temp files of blob uploads under `dir` (a killed upload's are swept at start-up).
fn half_uploads(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        if entry.path().is_dir() {
            found.extend(half_uploads(&entry.path()));
        } else if name.starts_with(".upload-") {
            found.push(entry.path().display().to_string());
        }
    }
    found
}

/// Whether `pid` is a live process (not a zombie).
fn alive(pid: i32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => !stat[stat.rfind(')').unwrap() + 1..]
            .trim_start()
            .starts_with('Z'),
        Err(_) => false,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_random_kills_leave_no_run_stuck_no_step_doubled_and_nothing_behind() {
    let seed = std::env::var("CHAOS_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("chaos seed {seed} (CHAOS_SEED={seed} replays these kill times)");
    let mut rng = Rng(seed);

    let mut env = Processes::new()
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
        .env("SLIPWAY_RUNNER_CAPACITY", "4")
        .env("SLIPWAY_MAX_RUNNING", "32")
        .env("SLIPWAY_MAX_RUNNING_PER_REPO", "32");
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    // Each step takes its own lock for as long as it runs (the lock goes with the last
    // process holding fd 9), records its pid, and streams 30 lines over ~1.5 s.
    let step = "\
        exec 9>\"$MARKER_DIR/lock-$SLIPWAY_BRANCH-$SLIPWAY_STAGE\"\n\
        flock -n 9 || echo \"$SLIPWAY_BRANCH $SLIPWAY_STAGE\" >> \"$MARKER_DIR/doubled\"\n\
        echo $$ >> \"$MARKER_DIR/pids\"\n\
        mkdir -p dist && head -c 4000000 /dev/urandom > dist/$SLIPWAY_STAGE.bin\n\
        i=0\n\
        while [ $i -lt 30 ]; do echo \"line $i\"; sleep 0.05; i=$((i+1)); done\n";
    let indent = |s: &str| {
        s.lines()
            .map(|l| format!("          {l}\n"))
            .collect::<String>()
    };
    let yaml = format!(
        "env:\n  MARKER_DIR: {markers}\nstages:\n\
         \x20 first:\n    artifacts: [dist/]\n    steps:\n      - run: |\n{step}\
         \x20 second:\n    needs: [first]\n    artifacts: [dist/]\n    steps:\n      - run: |\n{step}",
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
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();

    let mut delays = Vec::new();
    for kill in 0..KILLS {
        // A push per round, accepted before the kill (a delivery cut off by a kill is
        // sent again, as git's hook would be re-run by the pusher).
        let branch = format!("c{kill}");
        git(&source, &["branch", &branch, "main"]);
        env.hook_push_until_accepted(&hook, "team/app", &sha, &format!("refs/heads/{branch}"))
            .await;
        // Then a random moment: planning, leasing, mid-step, mid-log, finishing.
        let delay = rng.below(2_000);
        delays.push(delay);
        tokio::time::sleep(Duration::from_millis(delay)).await;
        env.kill("server");
        env.start_server("server");
    }
    println!("killed after {delays:?} ms");

    // Every run ends.
    let runs: Vec<Value> = env
        .wait("every run to end", Duration::from_secs(240), || async {
            let runs: Value = client
                .get(env.url("/api/repos/team/app/runs?limit=100"))
                .bearer_auth(&admin)
                .send()
                .await
                .map_err(|e| e.to_string())?
                .json()
                .await
                .map_err(|e| e.to_string())?;
            let runs = runs.as_array().ok_or("not a list")?.clone();
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
            if runs.len() >= KILLS && open.is_empty() {
                Ok(runs)
            } else {
                Err(format!("{} runs, not ended: {open:?}", runs.len()))
            }
        })
        .await;
    for kill in 0..KILLS {
        let branch = format!("c{kill}");
        assert!(
            runs.iter().any(|r| r["branch"] == branch.as_str()),
            "the push to {branch} has a run: {runs:?}"
        );
    }
    let succeeded = runs.iter().filter(|r| r["status"] == "success").count();
    for r in runs.iter().filter(|r| r["status"] != "success") {
        let detail: Value = client
            .get(env.url(&format!("/api/repos/team/app/runs/{}", r["number"])))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let reasons: Vec<&str> = std::iter::once(&detail["run"]["error"])
            .chain(
                detail["stages"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|s| &s["reason"]),
            )
            .filter_map(Value::as_str)
            .filter(|e| !e.is_empty())
            .collect();
        assert!(
            !reasons.is_empty(),
            "run #{} ended {} without a reason: {detail}",
            r["number"],
            r["status"]
        );
    }

    // Never twice at once, and no step outlives its stage.
    let doubled = lines(&markers.join("doubled"));
    assert!(doubled.is_empty(), "steps ran twice at once: {doubled:?}");
    let pids: Vec<i32> = lines(&markers.join("pids"))
        .iter()
        .map(|p| p.parse().unwrap())
        .collect();
    let work = env.data().join("work");
    let left = env
        .wait(
            "steps and work directories to be gone",
            Duration::from_secs(30),
            || async {
                let running: Vec<i32> = pids.iter().copied().filter(|p| alive(*p)).collect();
                let dirs: Vec<String> = std::fs::read_dir(&work)
                    .map(|rd| {
                        rd.flatten()
                            .map(|e| e.file_name().to_string_lossy().into_owned())
                            .collect()
                    })
                    .unwrap_or_default();
                let uploads = half_uploads(&env.data().join("blobs"));
                if running.is_empty() && dirs.is_empty() && uploads.is_empty() {
                    Ok(dirs.len())
                } else {
                    Err(format!(
                        "steps alive {running:?}, left in {}: {dirs:?}, half uploads: {uploads:?}",
                        work.display()
                    ))
                }
            },
        )
        .await;
    println!(
        "after {KILLS} random kill -9s: {} runs, {succeeded} succeeded, the others with a reason; \
         {} step starts, none doubled; {left} directories left",
        runs.len(),
        pids.len()
    );
}
