//! `kill -9` of the real `slipway server` in the middle of a step, then a restart on the
//! same data directory: the run finishes (or fails with a reason), nothing stays
//! `running`, and the step never runs twice at once — the orphaned step of the killed
//! server is swept (killed) by the restarted in-process runner before its stage is
//! leased again.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Repository, Signature};
use serde_json::Value;

/// The `slipway` binary under test. `SLIPWAY_TEST_BIN` overrides Cargo's path: with a
/// target directory shared between branches, another build can replace the binary
/// between this crate's build and the test run.
fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_slipway").into())
}

struct Env {
    dir: tempfile::TempDir,
    port: u16,
}

impl Env {
    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(slipway_bin());
        cmd.env("SLIPWAY_DATA_DIR", self.data())
            .env("SLIPWAY_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
            .env("RUST_LOG", "info")
            .env_remove("SLIPWAY_DATABASE_URL")
            .stdin(Stdio::null());
        cmd
    }

    /// `slipway <args>` on the data dir; its stdout.
    fn cli(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "slipway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    fn log_path(&self, n: u32) -> PathBuf {
        self.dir.path().join(format!("server-{n}.log"))
    }

    async fn start_server(&self, n: u32) -> Child {
        let log = std::fs::File::create(self.log_path(n)).unwrap();
        let mut child = self
            .command()
            .arg("server")
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(r) = client.get(self.url("/readyz")).send().await
                && r.status().is_success()
            {
                return child;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("server {n} exited: {status}\n{}", self.logs());
            }
            assert!(
                Instant::now() < deadline,
                "server {n} never ready\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn logs(&self) -> String {
        (1..=2)
            .map(|n| {
                let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
                format!("--- server {n} log:\n{text}")
            })
            .collect()
    }
}

fn commit(path: &Path, files: &[(&str, &str)]) -> String {
    let repo = Repository::init(path).unwrap();
    for (name, text) in files {
        std::fs::write(path.join(name), text).unwrap();
    }
    let mut index = repo.index().unwrap();
    index
        .add_all(["*"].iter(), git2::IndexAddOption::DEFAULT, None)
        .unwrap();
    index.write().unwrap();
    let tree = repo.find_tree(index.write_tree().unwrap()).unwrap();
    let sig = Signature::now("Dev", "dev@example.com").unwrap();
    repo.commit(Some("refs/heads/main"), &sig, &sig, "first", &tree, &[])
        .unwrap()
        .to_string()
}

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
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let env = Env { dir, port };
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

    let mut server = env.start_server(1).await;
    env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    let hook_token = env.cli(&["token", "create", "hook", "--scope", "hook"]);
    let admin_token = env.cli(&["token", "create", "admin", "--scope", "admin"]);
    let (hook_token, admin_token) = (hook_token.trim(), admin_token.trim());

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
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&starts).is_empty() {
        assert!(
            Instant::now() < deadline,
            "the step never started\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    server.kill().unwrap(); // SIGKILL
    server.wait().unwrap();
    let first: i32 = lines(&starts)[0].parse().unwrap();
    // Without a sweep this orphan would finish its sleep while attempt 2 runs.
    assert!(
        alive(first),
        "the killed server's step should still be running as an orphan"
    );

    let mut server = env.start_server(2).await;
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
    let deadline = Instant::now() + Duration::from_secs(90);
    let detail = loop {
        let detail = api("/api/repos/team/app/runs/1".into()).await;
        let status = detail["run"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !matches!(status.as_str(), "pending" | "running") {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "run still {status} after 90 s: {detail:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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
    let log2 = std::fs::read_to_string(env.log_path(2)).unwrap();
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

    server.kill().unwrap();
    server.wait().unwrap();
}
