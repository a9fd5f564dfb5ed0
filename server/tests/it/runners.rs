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
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use git2::{Repository, Signature};
use serde_json::Value;

/// The `slipway` binary under test (`SLIPWAY_TEST_BIN` overrides Cargo's path, for
/// target directories shared between branches).
fn slipway_bin() -> PathBuf {
    std::env::var_os("SLIPWAY_TEST_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| env!("CARGO_BIN_EXE_slipway").into())
}

/// The test's temp dir, its server port, and every process it started (killed on drop,
/// with the step groups recorded in `b.starts`, so a failing test leaves nothing).
struct Env {
    dir: tempfile::TempDir,
    port: u16,
    children: Vec<(String, Child)>,
}

impl Drop for Env {
    fn drop(&mut self) {
        for (_, child) in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
        for pid in lines(&self.markers().join("b.starts")) {
            // The step ran as its own process group; the pid leads it.
            let _ = Command::new("kill")
                .args(["-KILL", "--", &format!("-{pid}")])
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Env {
    fn new() -> Env {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let env = Env {
            dir: tempfile::tempdir().unwrap(),
            port,
            children: Vec::new(),
        };
        std::fs::create_dir_all(env.markers()).unwrap();
        env
    }

    fn markers(&self) -> PathBuf {
        self.dir.path().join("markers")
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(slipway_bin());
        cmd.env("SLIPWAY_DATA_DIR", self.dir.path().join("data"))
            .env("SLIPWAY_LISTEN", format!("127.0.0.1:{}", self.port))
            .env("SLIPWAY_HEARTBEAT_TIMEOUT", "3")
            .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
            .env("RUST_LOG", "info")
            .env_remove("SLIPWAY_DATABASE_URL")
            .env_remove("SLIPWAY_SERVER")
            .env_remove("SLIPWAY_RUNNER_NAME")
            .env_remove("SLIPWAY_RUNNER_TOKEN")
            .stdin(Stdio::null());
        cmd
    }

    fn cli(&self, args: &[&str]) -> String {
        let out = self.command().args(args).output().unwrap();
        assert!(
            out.status.success(),
            "slipway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn log_path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.log"))
    }

    /// Starts a process whose output goes to `<name>.log` (appended, so a restart
    /// keeps the first run's log).
    fn spawn(&mut self, name: &str, mut cmd: Command) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log_path(name))
            .unwrap();
        let child = cmd
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap();
        self.children.push((name.to_string(), child));
    }

    /// SIGKILLs the process started as `name`.
    fn kill(&mut self, name: &str) {
        let i = self
            .children
            .iter()
            .position(|(n, _)| n == name)
            .unwrap_or_else(|| panic!("no process {name}"));
        let (_, mut child) = self.children.remove(i);
        child.kill().unwrap();
        child.wait().unwrap();
    }

    async fn start_server(&mut self) {
        let mut cmd = self.command();
        cmd.arg("server");
        self.spawn("server", cmd);
        let client = reqwest::Client::new();
        let deadline = Instant::now() + Duration::from_secs(60);
        while !client
            .get(self.url("/readyz"))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            assert!(
                Instant::now() < deadline,
                "server never ready\n{}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn work_dir(&self, runner: &str) -> PathBuf {
        self.dir.path().join(format!("work-{runner}"))
    }

    fn start_runner(&mut self, name: &str, token: &str, labels: &str, capacity: u32) {
        self.start_runner_on(name, token, labels, capacity, "local");
    }

    fn start_runner_on(
        &mut self,
        name: &str,
        token: &str,
        labels: &str,
        capacity: u32,
        backend: &str,
    ) {
        let mut cmd = self.command();
        cmd.args(["runner", "--backend", backend]);
        cmd.args(["--server", &self.url("/"), "--name", name])
            .args(["--labels", labels, "--capacity", &capacity.to_string()])
            .arg("--work-dir")
            .arg(self.work_dir(name))
            .args(["--shutdown-grace", "1"])
            .env("SLIPWAY_RUNNER_TOKEN", token);
        self.spawn(name, cmd);
    }

    fn logs(&self) -> String {
        let port = self.port;
        [
            "server".to_string(),
            "alpha".into(),
            "beta".into(),
            format!("alpha-{port}"),
            format!("beta-{port}"),
        ]
        .iter()
        .map(|n| {
            let text = std::fs::read_to_string(self.log_path(n)).unwrap_or_default();
            format!("--- {n} log:\n{text}")
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
    let mut env = Env::new();
    let markers = env.markers();
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let sha = commit(&source, &[(".slipway.yml", &pipeline(&markers))]);

    env.start_server().await;
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
    let runner_token = env.cli(&["token", "create", "runners", "--scope", "runner"]);
    env.start_runner("alpha", &runner_token, "alpha,linux", 2);

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
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let detail = run_detail().await;
        let server_log = std::fs::read_to_string(env.log_path("server")).unwrap_or_default();
        let warned = server_log
            .contains("queued stage cannot start: no registered runner has all of the labels beta");
        let planned = detail["stages"].as_array().is_some_and(|s| !s.is_empty());
        if planned && stage(&detail, "b")["status"] == "queued" && warned {
            assert_eq!(
                stage(&detail, "b")["unroutable"],
                "no registered runner has all of the labels beta",
                "{detail:#}"
            );
            assert!(stage(&detail, "b")["labels"] == serde_json::json!(["beta"]));
            break;
        }
        assert!(
            Instant::now() < deadline,
            "`b` never reported unroutable: {detail:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Both alpha stages run at once on alpha (capacity 2), meeting through markers.
    let deadline = Instant::now() + Duration::from_secs(60);
    while !(markers.join("a1.started").exists() && markers.join("a2.started").exists()) {
        assert!(
            Instant::now() < deadline,
            "alpha never ran a1 and a2\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

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

    env.start_runner("beta", &runner_token, "beta", 1);
    let deadline = Instant::now() + Duration::from_secs(60);
    while lines(&markers.join("b.starts")).is_empty() {
        assert!(
            Instant::now() < deadline,
            "beta never started b\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
    let deadline = Instant::now() + Duration::from_secs(30);
    let detail = loop {
        let detail = run_detail().await;
        let b = stage(&detail, "b");
        if b["status"] == "queued" && b["attempt"] == 2 {
            break detail;
        }
        assert!(
            b["status"] == "running" && b["attempt"] == 1,
            "b should stay running until its lease expires, then be queued: {detail:#}\n{}",
            env.logs()
        );
        assert!(
            Instant::now() < deadline,
            "b was not taken back from the killed runner: {detail:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let b = stage(&detail, "b");
    assert!(
        b["reason"]
            .as_str()
            .unwrap_or_default()
            .contains("runner lost"),
        "{detail:#}"
    );

    // Beta comes back: its start-up sweep kills the orphan, then it runs attempt 2.
    env.start_runner("beta", &runner_token, "beta", 1);
    let deadline = Instant::now() + Duration::from_secs(90);
    let detail = loop {
        let detail = run_detail().await;
        let status = detail["run"]["status"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        if !matches!(status.as_str(), "pending" | "running") {
            break detail;
        }
        assert!(
            Instant::now() < deadline,
            "run still {status}: {detail:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
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

/// Removes whatever the named runners left on the Docker engine when a test fails
/// half-way (on success there is nothing left to remove; the test checks that).
struct DockerLeftovers(Vec<String>);

impl Drop for DockerLeftovers {
    fn drop(&mut self) {
        for name in &self.0 {
            let filter = format!("label=io.slipway.runner={name}");
            for (list, remove) in [
                (vec!["ps", "-aq"], vec!["rm", "-f"]),
                (vec!["network", "ls", "-q"], vec!["network", "rm"]),
                (vec!["volume", "ls", "-q"], vec!["volume", "rm", "-f"]),
            ] {
                let Ok(out) = Command::new("docker")
                    .args(&list)
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
                        .args(&remove)
                        .args(&ids)
                        .stdout(Stdio::null())
                        .stderr(Stdio::null())
                        .status();
                }
            }
        }
    }
}

/// Containers of the Docker engine labelled as belonging to runner `name`.
fn runner_containers(name: &str) -> Vec<String> {
    let out = Command::new("docker")
        .args([
            "ps",
            "-aq",
            "--filter",
            &format!("label=io.slipway.runner={name}"),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker ps failed; is the engine running?"
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .collect()
}

/// The same on the Docker backend: two `slipway runner --backend docker` processes; one
/// is SIGKILLed mid-step, leaving its step container running as an orphan. Its stage is
/// taken back within the heartbeat timeout while the other runner's stage finishes on
/// its first attempt; the restarted runner's start-up sweep removes the orphan
/// container before it runs attempt 2, and nothing of either runner is left after.
#[tokio::test(flavor = "multi_thread")]
async fn docker_runners_a_killed_one_leaves_no_orphan_containers_after_restart() {
    let mut env = Env::new();
    let (alpha, beta) = (format!("alpha-{}", env.port), format!("beta-{}", env.port));
    let _leftovers = DockerLeftovers(vec![alpha.clone(), beta.clone()]);
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
    env.start_server().await;
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
    let runner_token = env.cli(&["token", "create", "runners", "--scope", "runner"]);
    env.start_runner_on(&alpha, &runner_token, "alpha", 1, "docker");
    env.start_runner_on(&beta, &runner_token, "beta", 1, "docker");

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
    let deadline = Instant::now() + Duration::from_secs(60);
    let orphans = loop {
        let d = detail().await;
        let running = |k: &str| {
            d["stages"].as_array().is_some_and(|stages| {
                stages
                    .iter()
                    .any(|s| s["key"] == k && s["steps"][0]["status"] == "running")
            })
        };
        let containers = runner_containers(&beta);
        if running("a") && running("b") && !containers.is_empty() {
            break containers;
        }
        assert!(
            Instant::now() < deadline,
            "a and b never both ran: {d:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    env.kill(&beta);

    // Taken back within the heartbeat timeout (3 s), as "runner lost"; the orphan
    // container is still there, since nobody removed it.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let d = detail().await;
        let b = stage(&d, "b");
        if b["status"] == "queued" && b["attempt"] == 2 {
            assert!(
                b["reason"]
                    .as_str()
                    .unwrap_or_default()
                    .contains("runner lost"),
                "{d:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "b was not taken back: {d:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        orphans.iter().any(|c| runner_containers(&beta).contains(c)),
        "the killed runner's step container should be an orphan now"
    );

    // Beta restarts: the sweep removes the orphan, then attempt 2 runs to the end.
    env.start_runner_on(&beta, &runner_token, "beta", 1, "docker");
    let deadline = Instant::now() + Duration::from_secs(90);
    let d = loop {
        let d = detail().await;
        let status = d["run"]["status"].as_str().unwrap_or_default().to_string();
        if !matches!(status.as_str(), "pending" | "running") {
            break d;
        }
        assert!(
            Instant::now() < deadline,
            "run still {status}: {d:#}\n{}",
            env.logs()
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let dump = format!("{d:#}\n{}", env.logs());
    assert_eq!(d["run"]["status"], "success", "{dump}");
    assert_eq!(stage(&d, "a")["attempt"], 1, "{dump}");
    assert_eq!(stage(&d, "b")["attempt"], 2, "{dump}");
    let left = runner_containers(&beta);
    assert!(
        orphans.iter().all(|c| !left.contains(c)),
        "the orphan outlived beta's restart: {left:?}\n{dump}"
    );
    assert!(left.is_empty(), "{left:?}\n{dump}");
    assert!(runner_containers(&alpha).is_empty(), "{dump}");
}
