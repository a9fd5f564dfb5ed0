//! Slow and idle clients against the real `slipway server` process: slowloris
//! connections are closed within the header timeout, a stalled body within the body
//! timeout, an idle keep-alive connection within the idle timeout, and 1,100 idle
//! connections on a server allowed 1,024 open files neither stop `/healthz` from
//! answering nor a run from being leased and finished.
//!
//! Everything is on loopback, and every loop is bounded in time or count.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::git::commit;
use crate::support::process::Processes;

/// Reads until the server closes the connection; `Some(after)` when it did within
/// `within` (what the server said first is ignored: a 408 or an error answer counts).
async fn closed_within(stream: &mut TcpStream, within: Duration) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        let left = within.checked_sub(start.elapsed())?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => continue,
            Err(_) => return None,
        }
    }
}

/// `GET /healthz` on a fresh connection answers 200 within `within`.
async fn healthz(addr: SocketAddr, within: Duration) -> Result<(), String> {
    let client = reqwest::Client::builder()
        .timeout(within)
        .build()
        .map_err(|e| e.to_string())?;
    let r = client
        .get(format!("http://{addr}/healthz"))
        .send()
        .await
        .map_err(|e| format!("/healthz: {e}"))?;
    if r.status() == 200 {
        Ok(())
    } else {
        Err(format!("/healthz answered {}", r.status()))
    }
}

/// One value of a metric family without labels from `/metrics`.
async fn metric(addr: SocketAddr, name: &str) -> Option<f64> {
    let text = reqwest::get(format!("http://{addr}/metrics"))
        .await
        .ok()?
        .text()
        .await
        .ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.trim().parse().ok())
}

const HEADER_TIMEOUT: Duration = Duration::from_secs(2);
/// What the server may take beyond a timeout to notice it (its check runs a few times a
/// second) and close, on a loaded machine.
const SLACK: Duration = Duration::from_secs(3);
/// How much earlier than its timeout the client may see a close: the server starts
/// counting a moment before the client does (at accept, at a response's last byte).
const EARLY: Duration = Duration::from_millis(200);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slowloris_connections_are_closed_within_the_header_timeout() {
    let mut env = Processes::new()
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("SLIPWAY_HEADER_READ_TIMEOUT", "2");
    env.start_server("server");
    let addr = env.addr();
    // Never-ending headers, a byte every 250 ms: each connection always has a request
    // under way, so nothing but a deadline on the whole head ends it.
    let give_up = HEADER_TIMEOUT + SLACK + Duration::from_secs(5);
    let mut clients = JoinSet::new();
    for i in 0..100 {
        clients.spawn(async move {
            let mut stream = TcpStream::connect(addr).await.unwrap();
            let opened = Instant::now();
            let head = format!("GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\nx-slow-{i}: ");
            let mut bytes = head.into_bytes().into_iter().chain(std::iter::repeat(b'a'));
            while opened.elapsed() < give_up {
                let byte = bytes.next().unwrap_or(b'a');
                if stream.write_all(&[byte]).await.is_err() {
                    return Some(opened.elapsed());
                }
                if let Some(_after) = closed_within(&mut stream, Duration::from_millis(250)).await {
                    return Some(opened.elapsed());
                }
            }
            None
        });
    }
    // The listener still serves others meanwhile.
    tokio::time::sleep(Duration::from_millis(500)).await;
    healthz(addr, Duration::from_secs(5)).await.unwrap();

    let mut closed = Vec::new();
    let mut open = 0;
    while let Some(r) = clients.join_next().await {
        match r.unwrap() {
            Some(after) => closed.push(after),
            None => open += 1,
        }
    }
    closed.sort();
    println!(
        "100 slowloris connections, header timeout {HEADER_TIMEOUT:?}: {} closed by the server \
         (first after {:.1?}, last after {:.1?}), {open} still open after {give_up:?}",
        closed.len(),
        closed.first().copied().unwrap_or_default(),
        closed.last().copied().unwrap_or_default(),
    );
    assert_eq!(
        open, 0,
        "slowloris connections still open after {give_up:?}"
    );
    let last = *closed.last().unwrap();
    assert!(
        last <= HEADER_TIMEOUT + SLACK,
        "the last slowloris connection was closed after {last:?}\n{}",
        env.logs()
    );
    // Not before its time either: a head that is still arriving gets the whole timeout
    // (less what the two ends' clocks start apart).
    let first = closed[0];
    assert!(
        first >= HEADER_TIMEOUT - EARLY,
        "closed after only {first:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_body_and_an_idle_connection_are_closed_in_time() {
    let mut env = Processes::new()
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("SLIPWAY_BODY_READ_TIMEOUT", "2")
        .env("SLIPWAY_IDLE_TIMEOUT", "2");
    env.start_server("server");
    env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "github",
        "--clone-url",
        "https://example.com/team/app.git",
    ]);
    let addr = env.addr();
    let timeout = Duration::from_secs(2);

    // A webhook that announces 1,000 bytes, sends 10 and stops.
    let mut stalled = TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(
            b"POST /hooks/github/team/app HTTP/1.1\r\nhost: 127.0.0.1\r\n\
              content-type: application/json\r\ncontent-length: 1000\r\n\r\n{\"ref\": 1,",
        )
        .await
        .unwrap();
    let after = closed_within(&mut stalled, timeout + SLACK + Duration::from_secs(5)).await;
    println!("a body stalled after 10 of 1,000 bytes: closed after {after:?}");
    let after =
        after.unwrap_or_else(|| panic!("a stalled body kept its connection\n{}", env.logs()));
    assert!(
        after >= timeout - EARLY && after <= timeout + SLACK,
        "{after:?}"
    );

    // A keep-alive connection after one answered request, then silence.
    let mut idle = TcpStream::connect(addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nhost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut answer = vec![0u8; 1024];
    let n = idle.read(&mut answer).await.unwrap();
    assert!(answer[..n].starts_with(b"HTTP/1.1 200"), "{answer:?}");
    let after = closed_within(&mut idle, timeout + SLACK + Duration::from_secs(5)).await;
    println!("an idle keep-alive connection: closed after {after:?}");
    let after = after.unwrap_or_else(|| panic!("an idle connection stayed open\n{}", env.logs()));
    assert!(
        after >= timeout - EARLY && after <= timeout + SLACK,
        "{after:?}"
    );
}

/// The test process's own open-file limit, raised (within its hard limit) to hold
/// `needed` sockets.
fn raise_own_fd_limit(needed: u64) {
    use nix::sys::resource::{Resource, getrlimit, setrlimit};
    let (soft, hard) = getrlimit(Resource::RLIMIT_NOFILE).unwrap();
    if soft < needed {
        assert!(
            hard >= needed,
            "this test needs {needed} open files; the hard limit is {hard}"
        );
        setrlimit(Resource::RLIMIT_NOFILE, needed, hard).unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_beyond_the_fd_limit_do_not_stop_health_checks_or_runners() {
    const IDLE: usize = 1_100;
    const SERVER_FILES: u64 = 1_024;
    raise_own_fd_limit(IDLE as u64 + 512);
    // Timeouts far beyond the test: only the connection limit can save the server.
    let mut env = Processes::new()
        .env("SLIPWAY_HEADER_READ_TIMEOUT", "600")
        .env("SLIPWAY_IDLE_TIMEOUT", "600")
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "5");
    let source = env.dir.path().join("repo");
    std::fs::create_dir_all(&source).unwrap();
    let sha = commit(
        &source,
        &[(
            ".slipway.yml",
            "stages:\n  hello:\n    steps:\n      - run: echo hello\n",
        )],
    );
    env.start_server_with_fd_limit("server", SERVER_FILES);
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
    let addr = env.addr();

    // Connections that never send a byte, opened as fast as the server takes them.
    let mut idle = Vec::with_capacity(IDLE);
    let mut refused = 0;
    for _ in 0..IDLE {
        match tokio::time::timeout(Duration::from_secs(2), TcpStream::connect(addr)).await {
            Ok(Ok(s)) => idle.push(s),
            _ => refused += 1,
        }
    }
    let started = Instant::now();
    env.wait("/healthz to answer", Duration::from_secs(30), || {
        healthz(addr, Duration::from_secs(5))
    })
    .await;
    let health_after = started.elapsed();

    // A runner's requests get through too: a pushed commit is planned, leased to the
    // in-process runner (which talks HTTP to this listener) and finished.
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let body = json!({
        "updates": [{ "old": "0".repeat(40), "new": sha, "ref": "refs/heads/main" }]
    });
    let r = client
        .post(env.url("/hooks/git/team/app"))
        .bearer_auth(&hook_token)
        .json(&body)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 202, "{}", r.text().await.unwrap());
    let run = env
        .wait_run_end(&admin_token, "team/app", 1, Duration::from_secs(90))
        .await;
    assert_eq!(run["run"]["status"], "success", "{run}");

    let held = metric(addr, "slipway_http_connections").await;
    // Closed (by the server, to make room) or still open and silent.
    let mut buf = [0u8; 16];
    let closed_by_server = idle
        .iter()
        .filter(|s| !matches!(s.try_read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::WouldBlock))
        .count();
    println!(
        "{IDLE} idle connections to a server allowed {SERVER_FILES} open files: {} connected \
         ({refused} not), /healthz answered after {health_after:.1?}, the server held {} \
         connections, {closed_by_server} idle ones were closed to make room",
        idle.len(),
        held.map_or("?".into(), |h| h.to_string()),
    );
}
