//! The web UI's server time per page, against the real `slipway server` process, each
//! printed beside a floor measured in the same run: `GET /healthz` (the same socket,
//! the same HTTP stack, no work). The pages are signed in (session cookie) and show a
//! repository with 32 runs, failed runs with a 100,000-line and a 1,000,000-line log
//! (the failure up front reads the log once, then keeps its lines: the first view is
//! timed on its own), a gate waiting for approval, environments, the audit log and
//! people.
//!
//! Run: `cargo build --release -p server -p tests && target/release/bench_web`
//! (`--quick` for fewer requests).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_web",
        "The web UI's server time per page (built beside this binary: cargo build --release -p server -p tests), against GET /healthz on the same socket.",
    )
    .quick;
    let bin = std::env::current_exe()?
        .parent()
        .context("binary dir")?
        .join("slipway");
    ensure!(
        bin.exists(),
        "build the server first: cargo build --release -p server"
    );
    tokio::runtime::Runtime::new()?.block_on(run(&bin, if quick { 20 } else { 100 }))
}

struct Server {
    child: Child,
    base: String,
    data: std::path::PathBuf,
    bin: std::path::PathBuf,
    http: reqwest::Client,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn cli(&self, args: &[&str], stdin: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = Command::new(&self.bin)
            .args(args)
            .env("SLIPWAY_DATA_DIR", &self.data)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()?;
        child
            .stdin
            .take()
            .context("stdin")?
            .write_all(stdin.as_bytes())?;
        let out = child.wait_with_output()?;
        ensure!(
            out.status.success(),
            "slipway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    async fn json(
        &self,
        method: &str,
        path: &str,
        token: &str,
        body: Value,
    ) -> anyhow::Result<Value> {
        let r = self
            .http
            .request(method.parse()?, format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await?;
        ensure!(r.status().is_success(), "{method} {path}: {}", r.status());
        Ok(r.json().await.unwrap_or(Value::Null))
    }

    async fn wait_runs(&self, token: &str, count: i64) -> anyhow::Result<()> {
        for _ in 0..3000 {
            let runs = self
                .json(
                    "GET",
                    "/api/repos/bench/app/runs?limit=100",
                    token,
                    Value::Null,
                )
                .await?;
            let done = runs
                .as_array()
                .map(|r| {
                    r.iter()
                        .filter(|r| {
                            !matches!(r["status"].as_str(), Some("pending" | "running"))
                                || r["blocked"] == true
                        })
                        .count() as i64
                })
                .unwrap_or(0);
            if done >= count {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        bail!("runs did not finish")
    }
}

fn commit(dir: &Path, yaml: &str, n: usize) -> anyhow::Result<String> {
    let git = git2::Repository::init(dir)?;
    let blob = git.blob(yaml.as_bytes())?;
    let marker = git.blob(n.to_string().as_bytes())?;
    let mut tb = git.treebuilder(None)?;
    tb.insert(".slipway.yml", blob, 0o100644)?;
    tb.insert("N", marker, 0o100644)?;
    let tree = git.find_tree(tb.write()?)?;
    let sig = git2::Signature::now("bench", "bench@example.com")?;
    let id = git.commit(None, &sig, &sig, &format!("change {n}"), &tree, &[])?;
    git.reference("refs/heads/main", id, true, "bench")?;
    Ok(id.to_string())
}

/// p50 and p95 of `n` sequential GETs of `path` with `cookie`, in ms.
async fn time_get(
    http: &reqwest::Client,
    base: &str,
    path: &str,
    cookie: &str,
    n: usize,
) -> anyhow::Result<(f64, f64)> {
    let mut ms = Vec::with_capacity(n);
    for _ in 0..n {
        let t = Instant::now();
        let r = http
            .get(format!("{base}{path}"))
            .header("cookie", cookie)
            .send()
            .await?;
        ensure!(r.status().is_success(), "GET {path}: {}", r.status());
        r.bytes().await?;
        ms.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    ms.sort_by(f64::total_cmp);
    Ok((ms[n / 2], ms[(n * 95 / 100).min(n - 1)]))
}

async fn run(bin: &Path, n: usize) -> anyhow::Result<()> {
    let dir = tempfile::tempdir()?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = dir.path().join("data");
    let child = Command::new(bin)
        .arg("server")
        .env("SLIPWAY_DATA_DIR", &data)
        .env("SLIPWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLIPWAY_AUTO_CANCEL", "false")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        data,
        bin: bin.to_path_buf(),
        http: reqwest::Client::builder().tcp_nodelay(true).build()?,
    };
    for _ in 0..500 {
        if server
            .http
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            .is_ok_and(|r| r.status().is_success())
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let source = dir.path().join("repo");
    std::fs::create_dir_all(&source)?;
    server.cli(
        &[
            "repo",
            "add",
            "bench/app",
            "--forge",
            "git",
            "--clone-url",
            source.to_str().context("path")?,
        ],
        "",
    )?;
    server.cli(
        &["user", "add", "ada", "--role", "admin"],
        "a long bench password",
    )?;
    let hook = server.cli(
        &[
            "token",
            "create",
            "hook",
            "--scope",
            "hook",
            "--repo",
            "bench/app",
        ],
        "",
    )?;
    let admin = server.cli(&["token", "create", "admin", "--scope", "admin"], "")?;
    server
        .json(
            "PUT",
            "/api/repos/bench/app/environments/production",
            &admin,
            json!({ "protected": true }),
        )
        .await?;
    // 29 quick runs, then one whose step logs 100,000 lines and fails, then one that
    // waits at the production gate.
    let quick = "stages:\n  build:\n    steps: [echo ok]\n";
    let failing = "stages:\n  test:\n    steps:\n      - run: |\n          seq 1 100000 | sed 's/^/line /'\n          echo 'error: boom'\n          exit 1\n";
    let gated = "stages:\n  build:\n    steps: [echo ok]\n  production:\n    needs: [build]\n    kind: deploy\n    environment: production\n    steps: [echo deployed]\n";
    // Run 32: a million lines before the error, so the first view reads 200,000 of
    // them (the bound) and the last lines from the end.
    let failing_big = "stages:\n  test:\n    steps:\n      - run: |\n          seq 1 1000000 | sed 's/^/line /'\n          echo 'error: boom'\n          exit 1\n";
    let mut yamls: Vec<&str> = vec![quick; 29];
    yamls.push(failing);
    yamls.push(gated);
    yamls.push(failing_big);
    for (i, yaml) in yamls.iter().enumerate() {
        let sha = commit(&source, yaml, i)?;
        server
            .json(
                "POST",
                "/hooks/git/bench/app",
                &hook,
                json!({ "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }] }),
            )
            .await?;
        server.wait_runs(&admin, i as i64 + 1).await?;
    }
    let failed = server
        .json("GET", "/api/repos/bench/app/runs/30", &admin, Value::Null)
        .await?;
    let stage = failed["stages"][0]["id"].as_i64().context("stage id")?;
    // Sign in as a browser does.
    let signin = reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .build()?
        .post(format!("{}/login", server.base))
        .form(&[
            ("name", "ada"),
            ("password", "a long bench password"),
            ("next", "/"),
        ])
        .send()
        .await?;
    let cookie = signin
        .headers()
        .get("set-cookie")
        .context("no session cookie")?
        .to_str()?
        .split(';')
        .next()
        .context("cookie")?
        .to_string();

    let (floor50, floor95) = time_get(&server.http, &server.base, "/healthz", &cookie, n).await?;
    // The big failed run's first view, before anything is kept: one request.
    let (first_view, _) = time_get(
        &server.http,
        &server.base,
        "/repos/bench/app/runs/32",
        &cookie,
        1,
    )
    .await?;
    println!("floor: GET /healthz p50 {floor50:.2} ms, p95 {floor95:.2} ms ({n} requests each)");
    println!(
        "{:<52} {:>9} {:>9} {:>8}",
        "page", "p50 ms", "p95 ms", "p50/floor"
    );
    let log = format!("/repos/bench/app/runs/30/logs/{stage}/0");
    let pages = [
        ("dashboard", "/".to_string()),
        (
            "repository (32 runs, environments, secrets)",
            "/repos/bench/app".into(),
        ),
        (
            "run that failed (failure up front, 100k-line log)",
            "/repos/bench/app/runs/30".into(),
        ),
        (
            "run that failed (1M-line log; after its first view)",
            "/repos/bench/app/runs/32".into(),
        ),
        ("run at a gate", "/repos/bench/app/runs/31".into()),
        (
            "run, live part only",
            "/repos/bench/app/runs/31?partial=1".into(),
        ),
        ("log page (100k lines)", log.clone()),
        ("log search over 100k lines", format!("{log}?q=boom")),
        ("approvals inbox", "/inbox".into()),
        (
            "environment history",
            "/repos/bench/app/environments/production".into(),
        ),
        ("audit log", "/audit".into()),
        ("people", "/people".into()),
        ("sign-in page", "/login".into()),
    ];
    println!(
        "{:<52} {first_view:>9.2} {:>9} {:>8.1}x",
        "run that failed (1M-line log), its first view",
        "-",
        first_view / floor50
    );
    for (name, path) in pages {
        let (p50, p95) = time_get(&server.http, &server.base, &path, &cookie, n).await?;
        println!("{name:<52} {p50:>9.2} {p95:>9.2} {:>8.1}x", p50 / floor50);
    }
    Ok(())
}
