//! PostgreSQL connections killed mid-transaction (`pg_terminate_backend`, as an
//! operator or a failover would) while webhooks create runs and the in-process runner
//! runs them: every delivery is either refused (and made whole when sent again) or
//! makes exactly one run; no run is half-created — each has its delivery row, ends,
//! and has stages (or says why not); the server keeps serving without a restart.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use serde_json::json;
use sqlx::{Connection, Executor, Row};

use crate::support::db::PgDatabase;
use crate::support::served::{REPO, Served};

const DELIVERIES: usize = 30;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_connections_killed_mid_transaction_leave_no_half_run() {
    let database = PgDatabase::create().await;
    let url = database.url.clone();
    tokio::task::spawn_blocking(move || scenario(&url))
        .await
        .unwrap();
    drop(database);
}

/// Terminates every connection of the database `url` names but its own, as fast as
/// it can, until `stop`; how many it terminated.
fn killer(url: String, stop: Arc<AtomicBool>, killed: Arc<AtomicUsize>) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(&url).await.unwrap();
        while !stop.load(Ordering::SeqCst) {
            // Those inside a transaction first: that is where a half-done change lives.
            let rows = conn
                .fetch_all(
                    "SELECT pg_terminate_backend(pid) AS t FROM pg_stat_activity \
                     WHERE datname = current_database() AND pid <> pg_backend_pid() \
                     AND (state LIKE 'idle in transaction%' OR state = 'active')",
                )
                .await
                .unwrap();
            killed.fetch_add(rows.len(), Ordering::SeqCst);
            tokio::time::sleep(Duration::from_millis(15)).await;
        }
    });
}

fn scenario(url: &str) {
    let env = crate::support::process::Processes::new()
        .env("SLIPWAY_DATABASE_URL", url)
        .env("SLIPWAY_RUNNER_CAPACITY", "4");
    let mut s = Served::start(env, "git");
    let yaml = "stages:\n  build:\n    steps:\n      - run: echo built\n  test:\n    needs: [build]\n    steps:\n      - run: echo tested\n";
    let shas: Vec<(String, String)> = (0..DELIVERIES)
        .map(|i| {
            let branch = format!("b{i}");
            (branch.clone(), s.commit(&branch, &[(".slipway.yml", yaml)]))
        })
        .collect();
    let stop = Arc::new(AtomicBool::new(false));
    let killed = Arc::new(AtomicUsize::new(0));
    let storm = std::thread::spawn({
        let (url, stop, killed) = (url.to_string(), stop.clone(), killed.clone());
        move || killer(url, stop, killed)
    });
    let body = |branch: &str, sha: &str| {
        json!({ "updates": [{
            "old": "0".repeat(40), "new": sha, "ref": format!("refs/heads/{branch}"),
        }]})
    };
    // Each delivery once, under the storm: made, or refused as retryable.
    let mut refused = Vec::new();
    for (branch, sha) in &shas {
        let (status, answer) = s.call(
            "POST",
            "/hooks/git/team/app",
            &s.hook,
            Some(body(branch, sha)),
        );
        match status {
            202 => {}
            // A lost connection is a retryable failure: 503, and nothing kept.
            503 => refused.push((branch.clone(), sha.clone())),
            other => panic!("delivery of {branch}: {other} {answer}"),
        }
    }
    // Let the planner and the runner meet the storm for a while too.
    std::thread::sleep(Duration::from_secs(3));
    stop.store(true, Ordering::SeqCst);
    storm.join().unwrap();
    // What was refused is sent again, as a forge or `slipway hook` would.
    for (branch, sha) in &refused {
        let (status, answer) = s.call(
            "POST",
            "/hooks/git/team/app",
            &s.hook,
            Some(body(branch, sha)),
        );
        assert!(
            status == 202 || status == 200,
            "{branch} again: {status} {answer}"
        );
    }
    let list =
        s.p.wait_blocking("every run to end", Duration::from_secs(180), || {
            let (_, list) = s.api("GET", &format!("/api/repos/{REPO}/runs?limit=100"), None);
            let all = list.as_array().cloned().unwrap_or_default();
            let open: Vec<String> = all
                .iter()
                .filter(|r| {
                    !matches!(
                        r["status"].as_str(),
                        Some("success" | "failure" | "error" | "cancelled")
                    )
                })
                .map(|r| format!("#{} {}", r["number"], r["status"]))
                .collect();
            if all.len() == DELIVERIES && open.is_empty() {
                Ok(all)
            } else {
                Err(format!(
                    "{} runs of {DELIVERIES}, open: {open:?}",
                    all.len()
                ))
            }
        });
    let mut numbers: Vec<i64> = list.iter().filter_map(|r| r["number"].as_i64()).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=DELIVERIES as i64).collect::<Vec<_>>(),
        "one run per delivery, dense"
    );
    for r in &list {
        let n = r["number"].as_i64().unwrap();
        let run = s.finished_run(n);
        assert_eq!(run["run"]["status"], "success", "run #{n}: {run:#}");
        assert_eq!(
            run["stages"].as_array().map(Vec::len),
            Some(2),
            "run #{n}: {run:#}"
        );
    }
    let orphans = orphan_rows(url);
    assert_eq!(
        orphans, 0,
        "runs without their delivery, or stages without their run"
    );
    println!(
        "{} connections terminated mid-work; {} of {DELIVERIES} deliveries refused and sent again; \
         every run whole",
        killed.load(Ordering::SeqCst),
        refused.len()
    );
}

/// Rows a half-done change would leave: a webhook run without its delivery row.
fn orphan_rows(url: &str) -> i64 {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut conn = sqlx::PgConnection::connect(url).await.unwrap();
        let row = conn
            .fetch_one(
                "SELECT (SELECT COUNT(*) FROM runs r WHERE NOT EXISTS \
                   (SELECT 1 FROM deliveries d WHERE d.run_id = r.id)) AS n",
            )
            .await
            .unwrap();
        row.get::<i64, _>("n")
    })
}
