//! Server benchmarks against the real `slipway server` process, each printed with a
//! floor measured in the same run on the same machine:
//!
//! - webhook → first step started, against a bare `sh -c` spawn reading the clock
//!   (median, p95 and the rounds over twice the median, of 30 rounds);
//! - a printed line → seen by an SSE client, against the same line through a pipe
//!   (median and p95);
//! - throughput of 500 trivial runs, against 500 bare `sh -c true` spawns;
//! - server RSS idle and at its peak;
//! - a 50 MB log's ingest rate, against writing the same bytes to a file with a shell;
//! - latency of the first and of the last 1,000 lines of that log over HTTP, against
//!   reading the same lines from the log file directly.
//!
//! Run: `cargo build --release -p server -p tests && target/release/bench_server`
//! (`--quick` for fewer rounds and runs).

use std::io::{BufRead, Read};

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{Context, bail, ensure};
use serde_json::{Value, json};

fn main() -> anyhow::Result<()> {
    let quick = tests::bench_support::args(
        "bench_server",
        "Server benchmarks against the real `slipway server` process (built beside this \
         binary: cargo build --release -p server -p tests), each with a floor measured in \
         the same run: webhook → first step, line → SSE client, 500 trivial runs, RSS, a \
         50 MiB log's ingest and reads.",
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
    let runtime = tokio::runtime::Runtime::new()?;
    runtime.block_on(run(&bin, quick))
}

fn now_ns() -> i128 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as i128)
}

fn median<T: Ord + Copy>(mut v: Vec<T>) -> T {
    v.sort();
    v[v.len() / 2]
}

fn ms(ns: i128) -> f64 {
    ns as f64 / 1e6
}

/// Nanosecond samples summarised in milliseconds.
fn summary_ms(ns: &[i128]) -> anyhow::Result<tests::bench_support::Summary> {
    let ms: Vec<f64> = ns.iter().map(|&n| ms(n)).collect();
    tests::bench_support::summary(&ms).context("no samples")
}

struct Server {
    child: Child,
    base: String,
    data: PathBuf,
    bin: PathBuf,
    http: reqwest::Client,
    admin: String,
    hook: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Server {
    fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(&self.bin)
            .args(args)
            .env("SLIPWAY_DATA_DIR", &self.data)
            .output()?;
        ensure!(
            out.status.success(),
            "slipway {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(String::from_utf8(out.stdout)?.trim().to_string())
    }

    fn rss_kib(&self, field: &str) -> anyhow::Result<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.child.id()))?;
        let line = status
            .lines()
            .find(|l| l.starts_with(field))
            .context("no such field")?;
        Ok(line.split_whitespace().nth(1).context("value")?.parse()?)
    }

    async fn get(&self, path: &str) -> anyhow::Result<Value> {
        let resp = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await?;
        ensure!(resp.status().is_success(), "GET {path}: {}", resp.status());
        Ok(resp.json().await?)
    }

    /// Tells the server about a push of `sha` to `main`, as `slipway hook` would.
    async fn push(&self, repo: &str, sha: &str) -> anyhow::Result<()> {
        let resp = self
            .http
            .post(format!("{}/hooks/git/{repo}", self.base))
            .bearer_auth(&self.hook)
            .json(&json!({ "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }] }))
            .send()
            .await?;
        ensure!(
            resp.status().is_success(),
            "hook: {} {}",
            resp.status(),
            resp.text().await?
        );
        Ok(())
    }

    async fn wait_final(&self, repo: &str, number: i64) -> anyhow::Result<Value> {
        for _ in 0..6000 {
            let run = self.get(&format!("/api/repos/{repo}/runs/{number}")).await;
            if let Ok(run) = run
                && !matches!(run["run"]["status"].as_str(), Some("pending" | "running"))
            {
                return Ok(run);
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        bail!("run {repo}#{number} did not finish")
    }
}

async fn start(bin: &Path, dir: &Path) -> anyhow::Result<Server> {
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let data = dir.join("data");
    let child = Command::new(bin)
        .arg("server")
        .env("SLIPWAY_DATA_DIR", &data)
        .env("SLIPWAY_LISTEN", format!("127.0.0.1:{port}"))
        .env("SLIPWAY_AUTO_CANCEL", "false")
        .env("SLIPWAY_MAX_RUNNING_PER_REPO", "16")
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let mut server = Server {
        child,
        base: format!("http://127.0.0.1:{port}"),
        data,
        bin: bin.to_path_buf(),
        http: reqwest::Client::new(),
        admin: String::new(),
        hook: String::new(),
    };
    for _ in 0..300 {
        if let Ok(r) = server
            .http
            .get(format!("{}/readyz", server.base))
            .send()
            .await
            && r.status().is_success()
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    server.admin = server.cli(&["token", "create", "bench", "--scope", "admin"])?;
    // A hook token is bound to one repository; the benchmark pushes to many, so it
    // posts its hooks with the admin token (which may trigger any repository).
    server.hook = server.admin.clone();
    Ok(server)
}

/// A git repository with `.slipway.yml`; `commit` makes a new commit on main.
struct Repo {
    git: git2::Repository,
}

impl Repo {
    fn new(dir: &Path, yaml: &str) -> anyhow::Result<Repo> {
        let git = git2::Repository::init(dir)?;
        std::fs::write(dir.join(".slipway.yml"), yaml)?;
        let repo = Repo { git };
        repo.commit("init")?;
        Ok(repo)
    }

    fn commit(&self, message: &str) -> anyhow::Result<String> {
        let mut index = self.git.index()?;
        index.add_path(Path::new(".slipway.yml"))?;
        let tree = self.git.find_tree(index.write_tree()?)?;
        let sig = git2::Signature::now("bench", "bench@example.com")?;
        let parent = self
            .git
            .find_reference("refs/heads/main")
            .ok()
            .and_then(|r| r.peel_to_commit().ok());
        let parents: Vec<&git2::Commit> = parent.iter().collect();
        let oid = self.git.commit(
            Some("refs/heads/main"),
            &sig,
            &sig,
            message,
            &tree,
            &parents,
        )?;
        Ok(oid.to_string())
    }
}

async fn register(server: &Server, dir: &Path, name: &str, yaml: &str) -> anyhow::Result<Repo> {
    let path = dir.join(name);
    let repo = Repo::new(&path, yaml)?;
    server.cli(&[
        "repo",
        "add",
        &format!("bench/{name}"),
        "--forge",
        "git",
        "--clone-url",
        path.to_str().context("path")?,
    ])?;
    Ok(repo)
}

async fn run(bin: &Path, quick: bool) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let server = start(bin, dir).await?;
    let rss_idle = server.rss_kib("VmRSS")?;

    println!("| benchmark | result | floor | ratio |");
    println!("|---|---|---|---|");

    // Webhook → first step started.
    let marker = dir.join("started");
    let yaml = format!(
        "stages:\n  first:\n    steps:\n      - run: date +%s%N > {}\n",
        marker.display()
    );
    let repo = register(&server, dir, "latency", &yaml).await?;
    let rounds = if quick { 5 } else { 30 };
    let (mut ours, mut floor) = (Vec::new(), Vec::new());
    let mut number = 0;
    for round in 0..rounds {
        let sha = repo.commit(&format!("round {round}"))?;
        let t0 = now_ns();
        server.push("bench/latency", &sha).await?;
        number += 1;
        server.wait_final("bench/latency", number).await?;
        let started: i128 = std::fs::read_to_string(&marker)?.trim().parse()?;
        ours.push(started - t0);

        let t0 = now_ns();
        let out = Command::new("sh").args(["-c", "date +%s%N"]).output()?;
        floor.push(String::from_utf8(out.stdout)?.trim().parse::<i128>()? - t0);
    }
    let ours = summary_ms(&ours)?;
    let floor = summary_ms(&floor)?;
    println!(
        "| webhook → first step started ({rounds} rounds) | median {:.1} ms, p95 {:.1} ms, {} over 2× median | bare `sh -c` spawn median {:.2} ms, p95 {:.2} ms | {:.1}x (p95 {:.1}x) |",
        ours.median,
        ours.p95,
        ours.over_2x_median,
        floor.median,
        floor.p95,
        ours.median / floor.median,
        ours.p95 / floor.p95
    );

    // A printed line → seen by an SSE client.
    let script = "for i in $(seq 1 60); do date +%s%N; sleep 0.05; done";
    let yaml = format!(
        "stages:\n  talk:\n    steps:\n      - run: |\n          sleep 1\n          {script}\n"
    );
    let repo = register(&server, dir, "sse", &yaml).await?;
    let sha = repo.commit("sse")?;
    server.push("bench/sse", &sha).await?;
    let mut stage_id = None;
    for _ in 0..500 {
        if let Ok(run) = server.get("/api/repos/bench/sse/runs/1").await
            && let Some(id) = run["stages"][0]["id"].as_i64()
        {
            stage_id = Some(id);
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let stage_id = stage_id.context("sse stage")?;
    let mut resp = server
        .http
        .get(format!(
            "{}/api/repos/bench/sse/runs/1/stages/{stage_id}/steps/0/logs/follow",
            server.base
        ))
        .bearer_auth(&server.admin)
        .send()
        .await?;
    let mut latencies = Vec::new();
    let mut pending = String::new();
    while let Some(chunk) = resp.chunk().await? {
        let seen = now_ns();
        pending.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(at) = pending.find('\n') {
            let line: String = pending.drain(..=at).collect();
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(v) = serde_json::from_str::<Value>(data.trim())
                && let Some(printed) = v["text"].as_str().and_then(|t| t.parse::<i128>().ok())
            {
                latencies.push(seen - printed);
            }
        }
        if pending.contains("event: end") || latencies.len() >= 60 {
            break;
        }
    }
    // Lines printed before the client connected arrive as history: skip the first few.
    let live: Vec<i128> = latencies.iter().skip(10).copied().collect();
    ensure!(!live.is_empty(), "no live SSE lines");
    let mut child = Command::new("sh")
        .args(["-c", script])
        .stdout(Stdio::piped())
        .spawn()?;
    let mut pipe = Vec::new();
    for line in std::io::BufReader::new(child.stdout.take().context("stdout")?).lines() {
        let seen = now_ns();
        pipe.push(seen - line?.trim().parse::<i128>()?);
    }
    child.wait()?;
    let (ours, floor) = (summary_ms(&live)?, summary_ms(&pipe)?);
    println!(
        "| printed line → SSE client ({} lines) | median {:.2} ms, p95 {:.2} ms | through a pipe median {:.3} ms | {:.0}x |",
        live.len(),
        ours.median,
        ours.p95,
        floor.median,
        ours.median / floor.median
    );

    // Throughput of N trivial runs.
    let n = if quick { 100 } else { 500 };
    let repo = register(
        &server,
        dir,
        "trivial",
        "stages:\n  ok:\n    steps:\n      - run: \"true\"\n",
    )
    .await?;
    let shas: Vec<String> = (0..n)
        .map(|i| repo.commit(&format!("c{i}")))
        .collect::<Result<_, _>>()?;
    let start = Instant::now();
    for sha in &shas {
        server.push("bench/trivial", sha).await?;
    }
    let accepted = start.elapsed();
    loop {
        // The API pages runs 100 at a time, newest first.
        let mut runs = Vec::new();
        let mut before = String::new();
        loop {
            let page = server
                .get(&format!("/api/repos/bench/trivial/runs?limit=100{before}"))
                .await?;
            let page = page.as_array().cloned().unwrap_or_default();
            let Some(oldest) = page.last().and_then(|r| r["number"].as_i64()) else {
                break;
            };
            runs.extend(page);
            before = format!("&before={oldest}");
        }
        let done = runs
            .iter()
            .filter(|r| !matches!(r["status"].as_str(), Some("pending" | "running")))
            .count();
        if done >= n {
            let failed = runs.iter().filter(|r| r["status"] != "success").count();
            ensure!(failed == 0, "{failed} trivial runs did not succeed");
            break;
        }
        ensure!(
            start.elapsed() < Duration::from_secs(900),
            "{done}/{n} runs after 15 min"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let total = start.elapsed();
    let bare = Instant::now();
    for _ in 0..n {
        Command::new("sh").args(["-c", "true"]).status()?;
    }
    let bare = bare.elapsed();
    println!(
        "| {n} trivial runs, webhook to finished ({:.1} runs/s; webhooks accepted in {:.2} s) | {:.1} ms/run | bare `sh -c true` {:.2} ms | {:.0}x |",
        n as f64 / total.as_secs_f64(),
        accepted.as_secs_f64(),
        total.as_secs_f64() * 1e3 / n as f64,
        bare.as_secs_f64() * 1e3 / n as f64,
        total.as_secs_f64() / bare.as_secs_f64()
    );
    let rss_peak = server.rss_kib("VmHWM")?;

    // A 50 MB log: ingest rate, then the first and last 1,000 lines.
    let lines = 524_288; // × 100 bytes = 50 MiB
    let big = format!(
        "yes 0123456789012345678901234567890123456789012345678901234567890123456789012345678901234567890123456789 | cut -c1-99 | head -n {lines}"
    );
    let yaml = format!("stages:\n  big:\n    steps:\n      - run: {big}\n");
    let repo = register(&server, dir, "biglog", &yaml).await?;
    let sha = repo.commit("big")?;
    server.push("bench/biglog", &sha).await?;
    let run = server.wait_final("bench/biglog", 1).await?;
    ensure!(run["run"]["status"] == "success", "big log run: {run}");
    let step = &run["stages"][0]["steps"][0];
    ensure!(step["log_lines"] == lines, "log lines: {step}");
    let took_ms =
        step["finished_at"].as_i64().unwrap_or(0) - step["started_at"].as_i64().unwrap_or(0);
    let bytes = step["log_bytes"].as_i64().unwrap_or(0) as f64;
    let file = dir.join("plain.log");
    let t = Instant::now();
    let status = Command::new("sh")
        .args(["-c", &format!("{big} > {}", file.display())])
        .status()?;
    ensure!(status.success());
    let plain = t.elapsed();
    let ours_rate = bytes / 1e6 / (took_ms.max(1) as f64 / 1e3);
    let plain_rate = bytes / 1e6 / plain.as_secs_f64();
    println!(
        "| 50 MiB log ingest ({lines} lines) | {ours_rate:.1} MB/s | shell writing a file {plain_rate:.1} MB/s | {:.1}x slower |",
        plain_rate / ours_rate
    );
    let stage_id = run["stages"][0]["id"].as_i64().context("stage id")?;
    let logs = format!("/api/repos/bench/biglog/runs/1/stages/{stage_id}/steps/0/logs");
    for (label, query) in [("first", "?from=1&limit=1000"), ("last", "?tail=1000")] {
        let mut http = Vec::new();
        let mut direct = Vec::new();
        for _ in 0..(if quick { 3 } else { 15 }) {
            let t = Instant::now();
            let got = server.get(&format!("{logs}{query}")).await?;
            http.push(t.elapsed());
            ensure!(
                got["lines"].as_array().map(Vec::len) == Some(1000),
                "{label} page: {}",
                got["total"]
            );

            // The floor reads the same 1,000 lines (100 bytes each) straight from a file.
            let t = Instant::now();
            let mut f = std::fs::File::open(&file)?;
            let len = f.metadata()?.len();
            let at = if label == "first" { 0 } else { len - 100_000 };
            std::io::Seek::seek(&mut f, std::io::SeekFrom::Start(at))?;
            let mut buf = vec![0; 100_000];
            f.read_exact(&mut buf)?;
            ensure!(buf.split(|b| *b == b'\n').count() >= 1000);
            direct.push(t.elapsed());
        }
        let (ours, floor) = (median(http), median(direct));
        println!(
            "| {label} 1,000 lines of the 50 MiB log over HTTP | {:.2} ms | reading those bytes from a file {:.3} ms | {:.0}x |",
            ours.as_secs_f64() * 1e3,
            floor.as_secs_f64() * 1e3,
            ours.as_secs_f64() / floor.as_secs_f64()
        );
    }
    let rss_end = server.rss_kib("VmHWM")?;
    println!(
        "| server RSS: idle / peak after {n} runs / peak after the 50 MiB log | {} / {} / {} MiB | — | — |",
        rss_idle / 1024,
        rss_peak / 1024,
        rss_end / 1024
    );
    tests::bench_support::print_load("after");
    Ok(())
}
