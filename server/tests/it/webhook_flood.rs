//! Unauthenticated webhook bodies against the real `slipway server` process: 40 at
//! once, 25 MiB each, keep the server's memory under 200 MB (its VmHWM, read from
//! `/proc`); with the budget for unverified bodies taken, a delivery is refused with
//! 503 and `Retry-After` before it sends its body, and the budget comes back once the
//! bodies holding it are gone.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::task::JoinSet;

use crate::support::forge::hmac_hex;
use crate::support::process::{Processes, memory};

const MIB: usize = 1024 * 1024;
const BODY: usize = 25 * MIB;

/// The head of a GitHub push delivery of `len` bytes with a wrong signature.
fn head(i: usize, len: usize, expect_continue: bool) -> Vec<u8> {
    let mut h = format!(
        "POST /hooks/github/team/app HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/json\r\ncontent-length: {len}\r\n\
         x-github-event: push\r\nx-github-delivery: flood-{i}\r\n\
         x-hub-signature-256: sha256={}\r\n",
        "0".repeat(64)
    );
    if expect_continue {
        h.push_str("expect: 100-continue\r\n");
    }
    h.push_str("\r\n");
    h.into_bytes()
}

/// Reads one response head (up to the blank line), bounded in time.
async fn read_head(stream: &mut TcpStream, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") {
        let left = deadline
            .checked_duration_since(Instant::now())
            .ok_or("no answer in time")?;
        match tokio::time::timeout(left, stream.read(&mut buf)).await {
            Ok(Ok(0)) => return Err("closed".into()),
            Ok(Ok(n)) => got.extend_from_slice(&buf[..n]),
            Ok(Err(e)) => return Err(e.to_string()),
            Err(_) => return Err("no answer in time".into()),
        }
    }
    Ok(String::from_utf8_lossy(&got).to_ascii_lowercase())
}

/// What one unauthenticated 25 MiB delivery got: its status line, or how it failed.
async fn deliver_unsigned(addr: SocketAddr, i: usize, expect_continue: bool) -> String {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(&head(i, BODY, expect_continue))
        .await
        .unwrap();
    if expect_continue {
        // The server either asks for the body or answers without it (503).
        match read_head(&mut stream, Duration::from_secs(60)).await {
            Ok(h) if h.starts_with("http/1.1 100") => {}
            Ok(h) => return h.lines().next().unwrap_or_default().to_string(),
            Err(e) => return format!("error: {e}"),
        }
    }
    let chunk = vec![b' '; 64 * 1024];
    for _ in 0..BODY / chunk.len() {
        if let Err(e) = stream.write_all(&chunk).await {
            // Refused while sending (the answer may still be readable).
            return match read_head(&mut stream, Duration::from_secs(5)).await {
                Ok(h) => h.lines().next().unwrap_or_default().to_string(),
                Err(_) => format!("error: {e}"),
            };
        }
    }
    match read_head(&mut stream, Duration::from_secs(60)).await {
        Ok(h) => h.lines().next().unwrap_or_default().to_string(),
        Err(e) => format!("error: {e}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forty_unauthenticated_25_mib_bodies_keep_the_server_under_200_mb() {
    let mut env = Processes::new().env("SLIPWAY_BODY_READ_TIMEOUT", "3");
    env.start_server("server");
    let out = env.cli(&[
        "repo",
        "add",
        "team/app",
        "--forge",
        "github",
        "--clone-url",
        "https://example.com/team/app.git",
    ]);
    let secret = out
        .lines()
        .find_map(|l| l.strip_prefix("webhook secret: "))
        .unwrap_or_else(|| panic!("no webhook secret in {out}"))
        .trim()
        .to_string();
    let addr = env.addr();
    let pid = env.pid("server");
    let (hwm_idle, _) = memory(pid);

    let started = Instant::now();
    let mut clients = JoinSet::new();
    for i in 0..40 {
        // Half announce their body and wait to be asked for it, as `curl` does.
        clients.spawn(deliver_unsigned(addr, i, i % 2 == 0));
    }
    let mut outcomes = std::collections::BTreeMap::<String, usize>::new();
    while let Some(r) = clients.join_next().await {
        *outcomes.entry(r.unwrap()).or_default() += 1;
    }
    let took = started.elapsed();
    let (hwm, rss) = memory(pid);
    println!(
        "40 concurrent unauthenticated 25 MiB webhooks in {took:.1?}: server VmHWM {} MiB \
         (idle {} MiB), VmRSS afterwards {} MiB; answers {outcomes:?}",
        hwm / MIB as u64,
        hwm_idle / MIB as u64,
        rss / MIB as u64,
    );
    assert!(
        hwm < 200 * 1000 * 1000,
        "the server's peak RSS reached {hwm} bytes\n{}",
        env.logs()
    );
    // Nothing was let through: every answer is a refusal of the signature or of the
    // budget (or the connection cut while it still sent a refused body).
    for answer in outcomes.keys() {
        assert!(
            answer.starts_with("http/1.1 401")
                || answer.starts_with("http/1.1 503")
                || answer.starts_with("error: "),
            "{answer}"
        );
    }
    assert!(
        outcomes.iter().any(|(a, _)| a.starts_with("http/1.1 401")),
        "no delivery was read to its end and checked: {outcomes:?}"
    );

    // Two deliveries announce 25 MiB each and stall halfway: their reservations take
    // 50 of the 64 MiB budget until the body timeout ends them.
    let mut stalled = Vec::new();
    for i in 0..2 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(&head(100 + i, BODY, false)).await.unwrap();
        s.write_all(&vec![b' '; MIB]).await.unwrap();
        stalled.push(s);
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut third = TcpStream::connect(addr).await.unwrap();
    third.write_all(&head(102, BODY, true)).await.unwrap();
    let answer = read_head(&mut third, Duration::from_secs(30))
        .await
        .unwrap();
    println!(
        "with the budget taken: {}",
        answer.lines().next().unwrap_or_default()
    );
    assert!(answer.starts_with("http/1.1 503"), "{answer}");
    assert!(answer.contains("\r\nretry-after: "), "{answer}");

    // Once the stalled bodies time out, a signed delivery is read and accepted.
    let ping = br#"{"zen": "Keep it logically awesome.", "hook_id": 1}"#;
    let signed = format!(
        "POST /hooks/github/team/app HTTP/1.1\r\nhost: 127.0.0.1\r\n\
         content-type: application/json\r\ncontent-length: {}\r\n\
         x-github-event: ping\r\nx-github-delivery: ping-1\r\n\
         x-hub-signature-256: sha256={}\r\nconnection: close\r\n\r\n",
        ping.len(),
        hmac_hex(secret.as_bytes(), ping)
    );
    env.wait(
        "a signed ping to be accepted",
        Duration::from_secs(30),
        || async {
            let mut s = TcpStream::connect(addr).await.map_err(|e| e.to_string())?;
            s.write_all(signed.as_bytes())
                .await
                .map_err(|e| e.to_string())?;
            s.write_all(ping).await.map_err(|e| e.to_string())?;
            let h = read_head(&mut s, Duration::from_secs(10)).await?;
            if h.starts_with("http/1.1 200") {
                Ok(())
            } else {
                Err(h)
            }
        },
    )
    .await;
    drop(stalled);
}
