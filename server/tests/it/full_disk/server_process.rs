//! The real `slipway server` with its data dir on a tmpfs that fills (and on
//! PostgreSQL, its database's tablespace on another), a real `slipway runner` whose
//! step logs all the while, and a runner driven by hand over the runner protocol:
//!
//! - while full: `/readyz` says 503 and why; a log batch, an artifact and a cache
//!   upload, and a webhook are each answered 507 with `Retry-After` and a message
//!   that says what was not stored — and nothing of them is (the log keeps its line
//!   count); reads still work; the metrics and the server's log say the disk is full;
//!   the real runner's step, whose log could not be stored, is stopped with that
//!   reason;
//! - once the space is back: ready again by itself (the time it took is printed), the
//!   hand-driven stage's lease survived the outage, the refused writes go through when
//!   sent again, the stopped stage is retried, every run ends, run numbers are dense,
//!   every log line is whole and (SQLite) the database passes `integrity_check`.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use server::store::Dialect;

use super::manual_runner::{Answer, ManualRunner};
use super::{FullTablespace, Mounted};
use crate::support::both_databases;
use crate::support::db::PgDatabase;
use crate::support::served::{REPO, Served};

both_databases!(a_full_disk_is_refused_cleanly_and_survived);

const MIB: u64 = 1024 * 1024;
const RESERVE: u64 = 2 * MIB;

/// What the server's storage lives on.
struct Disks {
    data: Mounted,
    /// PostgreSQL: the test database, in a tablespace on a tmpfs of its own (the
    /// database drops first, then the tablespace).
    pg: Option<(PgDatabase, FullTablespace)>,
}

impl Disks {
    async fn new(db: Dialect) -> Disks {
        let pg = match db {
            Dialect::Sqlite => None,
            Dialect::Postgres => {
                let space = FullTablespace::create(32 * MIB);
                let database = PgDatabase::create_in(Some(&space.name)).await;
                Some((database, space))
            }
        };
        Disks {
            data: Mounted::new(24 * MIB),
            pg,
        }
    }

    fn fill(&self) {
        self.data.fill();
        if let Some((_, space)) = &self.pg {
            space.fs.fill();
        }
    }

    fn empty(&self) {
        self.data.empty();
        if let Some((_, space)) = &self.pg {
            space.fs.empty();
        }
    }
}

async fn a_full_disk_is_refused_cleanly_and_survived(db: Dialect) {
    let disks = Disks::new(db).await;
    tokio::task::spawn_blocking(move || scenario(db, &disks))
        .await
        .unwrap();
}

fn pipeline(markers: &Path, with_manual: bool) -> String {
    let manual = if with_manual {
        "  upload:\n    runs_on: [manual]\n    steps:\n      - run: echo by hand\n"
    } else {
        ""
    };
    format!(
        "env:\n  MARKERS: {markers}\nstages:\n  talk:\n    runs_on: [ext]\n    steps:\n\
         \x20     - run: |\n\
         \x20         i=0\n\
         \x20         while [ ! -f \"$MARKERS/stop\" ] && [ $i -lt 2400 ]; do echo \"line $i\"; i=$((i+1)); sleep 0.05; done\n\
         {manual}",
        markers = markers.display()
    )
}

fn readyz(s: &Served) -> (u16, String) {
    match reqwest::blocking::get(s.p.url("/readyz")) {
        Ok(r) => (r.status().as_u16(), r.text().unwrap_or_default()),
        Err(e) => (0, e.to_string()),
    }
}

fn metrics(s: &Served) -> String {
    reqwest::blocking::get(s.p.url("/metrics"))
        .and_then(|r| r.text())
        .unwrap_or_default()
}

/// The value of the series `name{part="…"}` in a scrape.
fn series(scrape: &str, name: &str, part: &str) -> Option<f64> {
    let head = format!("{name}{{part=\"{part}\"}} ");
    scrape
        .lines()
        .find_map(|l| l.strip_prefix(&head))
        .and_then(|v| v.trim().parse().ok())
}

fn stage<'a>(run: &'a Value, key: &str) -> &'a Value {
    run["stages"]
        .as_array()
        .and_then(|s| s.iter().find(|s| s["key"] == key))
        .unwrap_or_else(|| panic!("no stage {key} in {run:#}"))
}

/// A git hook body for `sha` on `branch` with a commit message of `kib` KiB that does
/// not compress (so it takes that much space in the database).
fn fat_hook(sha: &str, branch: &str, kib: usize) -> Value {
    let message: String = (0..kib * 1024 / 16)
        .map(|_| format!("{:016x}", rand::random::<u64>()))
        .collect();
    json!({ "updates": [{
        "old": "0".repeat(40), "new": sha, "ref": format!("refs/heads/{branch}"),
        "message": message,
    }]})
}

fn scenario(db: Dialect, disks: &Disks) {
    let mut env = crate::support::process::Processes::new()
        .env("SLIPWAY_DATA_DIR", disks.data.path().to_str().unwrap())
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("SLIPWAY_MIN_FREE_DISK_BYTES", &RESERVE.to_string())
        .env("SLIPWAY_HEARTBEAT_TIMEOUT", "6");
    if let Some((database, _)) = &disks.pg {
        env = env.env("SLIPWAY_DATABASE_URL", &database.url);
    }
    let markers = env.dir.path().join("markers");
    std::fs::create_dir_all(&markers).unwrap();
    let mut s = Served::start(env, "git");
    let ext = s.p.cli(&["token", "create", "ext", "--scope", "runner"]);
    let by_hand = s.p.cli(&["token", "create", "manual", "--scope", "runner"]);
    s.p.start_runner("ext", &ext, &["--labels", "ext"]);
    s.push("main", &[(".slipway.yml", &pipeline(&markers, true))]);
    let base = s.p.url("");
    let manual = ManualRunner::register(&base, &by_hand, "manual", &["manual"]);
    let up = manual.lease(Duration::from_secs(60));
    let mut beating = Some(manual.keep_alive(&up));
    assert_eq!(manual.step_start(&up, 0).status, 204);
    let first: Vec<String> = (1..=3).map(|i| format!("by hand {i}")).collect();
    assert_eq!(manual.log_batch(&up, 0, 1, &first).status, 200);
    let talking = s.wait_run(1, "to be talking", |r| {
        stage(r, "talk")["steps"][0]["log_lines"].as_i64() >= Some(5)
    });
    let talk_id = stage(&talking, "talk")["id"].clone();

    // ---------------------------------------------------------------- full
    disks.fill();
    let full_at = Instant::now();
    assert!(disks.data.free() < RESERVE, "the data disk is full");
    let why = s.p.wait_blocking(
        "/readyz to say 503",
        Duration::from_secs(30),
        || match readyz(&s) {
            (503, text) => Ok(text),
            other => Err(format!("{other:?}")),
        },
    );
    let noticed = full_at.elapsed();
    assert!(
        why.contains("cannot be written") && why.contains("disk is full"),
        "{why}"
    );
    // Uploads: refused before a byte is stored, the stage's lease kept.
    let blob = vec![7u8; 256 * 1024];
    manual
        .artifact(&up, "out.bin", blob.clone())
        .assert_disk_full("the artifact");
    let key = "c".repeat(64);
    manual
        .cache(&up, &key, blob.clone())
        .assert_disk_full("the cache");
    // A log batch too big for any page left: nothing of it is kept.
    let many: Vec<String> = (4..3004)
        .map(|i| format!("{i:04} {}", "x".repeat(95)))
        .collect();
    manual
        .log_batch(&up, 0, 4, &many)
        .assert_disk_full("the log batch");
    let run = s.api("GET", &format!("/api/repos/{REPO}/runs/1"), None).1;
    assert_eq!(stage(&run, "upload")["steps"][0]["log_lines"], 3, "{run:#}");
    // What the refused batch had written was cut back: fill that space too.
    disks.fill();
    // The real runner's step logs on: once a batch of it cannot be stored, the runner
    // stops the stage.
    let runner_log = s.p.log_path("ext");
    s.p.wait_blocking(
        "the runner to stop `talk` for its log",
        Duration::from_secs(30),
        || {
            let text = std::fs::read_to_string(&runner_log).unwrap_or_default();
            match text.contains("could not store the stage's progress") {
                true => Ok(()),
                false => Err("still talking"),
            }
        },
    );
    disks.fill();
    // A webhook: refused whole (a few may still fit in the database's free pages).
    let mut accepted = 0;
    let refused = (0..40)
        .find_map(|i| {
            let branch = format!("full-{i}");
            let sha = s.commit(&branch, &[(".slipway.yml", &pipeline(&markers, false))]);
            let body = fat_hook(&sha, &branch, 400);
            let (status, answer) =
                s.call("POST", "/hooks/git/team/app", &s.hook, Some(body.clone()));
            match status {
                507 => Some((body, answer)),
                202 => {
                    accepted += 1;
                    None
                }
                other => panic!("webhook on a full disk: {other} {answer}"),
            }
        })
        .expect("a webhook refused within 40 deliveries of 400 KiB");
    assert_eq!(
        refused.1["error"]["code"], "insufficient_storage",
        "{}",
        refused.1
    );
    // Reads still work, and the metrics say what is going on.
    assert_eq!(
        s.api("GET", &format!("/api/repos/{REPO}/runs/1"), None).0,
        200
    );
    let scrape = metrics(&s);
    assert_eq!(
        series(&scrape, "slipway_storage_writable", "data_dir"),
        Some(0.0),
        "{scrape}"
    );
    assert!(
        series(&scrape, "slipway_disk_full_refusals_total", "data_dir") >= Some(3.0),
        "{scrape}"
    );
    assert_eq!(readyz(&s).0, 503, "still not ready while full");
    if db == Dialect::Sqlite {
        // The database cannot be written (the webhook said so) and stays so while its
        // disk is under the reserve: the hand-driven stage's heartbeats stop, as if
        // refused, for longer than the heartbeat timeout (6 s). Only the grace after
        // the outage keeps its lease. (PostgreSQL's small writes still pass, so its
        // fault clears and leases expire as usual: a real runner keeps beating.)
        beating = None;
        std::thread::sleep(Duration::from_secs(9));
    }

    // ---------------------------------------------------------------- space back
    disks.empty();
    let freed_at = Instant::now();
    s.p.wait_blocking(
        "/readyz to say ready again",
        Duration::from_secs(60),
        || match readyz(&s) {
            (200, _) => Ok(()),
            other => Err(format!("{other:?}")),
        },
    );
    let recovered = freed_at.elapsed();
    println!(
        "{db:?}: full disk noticed by /readyz after {noticed:.1?}; ready again {recovered:.1?} \
         after the space came back ({accepted} webhooks fitted before one was refused)"
    );
    // The hand-driven stage kept its lease through the outage (its heartbeats were
    // refused while the database could not write) and can finish.
    // Past a round of lease expiry (every heartbeat timeout / 3 = 2 s) first.
    std::thread::sleep(Duration::from_secs(3));
    let beat = manual.heartbeat(&up);
    assert_eq!(beat.status, 200, "the lease survived the outage: {beat:?}");
    drop(beating.take());
    let ack = manual.log_batch(&up, 0, 4, &many);
    assert_eq!(
        (ack.status, ack.body["lines"].as_u64()),
        (200, Some(3003)),
        "{ack:?}"
    );
    assert_eq!(manual.artifact(&up, "out.bin", blob.clone()).status, 200);
    assert_eq!(manual.cache(&up, &key, blob).status, 200);
    assert_eq!(manual.step_finish(&up, 0).status, 204);
    let done: Answer = manual.stage_finish(&up);
    assert_eq!(done.status, 200, "{done:?}");
    // The refused webhook, sent again, makes its run.
    let (status, answer) = s.call("POST", "/hooks/git/team/app", &s.hook, Some(refused.0));
    assert_eq!(status, 202, "{answer}");
    // The talking stage was stopped by its log's 507, with that reason, and retried.
    let stopped = s.wait_run(1, "to have stopped `talk` for its log", |r| {
        let t = stage(r, "talk");
        t["reason"]
            .as_str()
            .is_some_and(|why| why.contains("could not store the log of step"))
    });
    assert_eq!(stage(&stopped, "talk")["id"], talk_id);
    std::fs::write(markers.join("stop"), "").unwrap();

    // ---------------------------------------------------------------- nothing lost
    let runs = 1 + accepted + 1;
    let list =
        s.p.wait_blocking("every run to end", Duration::from_secs(120), || {
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
            if all.len() == runs && open.is_empty() {
                Ok(all)
            } else {
                Err(format!("{} runs of {runs}, open: {open:?}", all.len()))
            }
        });
    let mut numbers: Vec<i64> = list.iter().filter_map(|r| r["number"].as_i64()).collect();
    numbers.sort_unstable();
    assert_eq!(
        numbers,
        (1..=runs as i64).collect::<Vec<_>>(),
        "dense run numbers"
    );
    let run1 = s.finished_run(1);
    assert_eq!(stage(&run1, "upload")["status"], "success", "{run1:#}");
    let talk = stage(&run1, "talk");
    assert!(
        talk["status"] == "success"
            || talk["reason"]
                .as_str()
                .is_some_and(|w| w.contains("could not store the log")),
        "{run1:#}"
    );
    // Every stored line is whole: the talking step's, and the hand-driven one's.
    let text = s.log(1, &run1, "talk", 0);
    assert!(text.ends_with('\n') && text.lines().count() >= 5, "{text}");
    for line in text.lines() {
        let n = line
            .strip_prefix("line ")
            .unwrap_or_else(|| panic!("a torn line: {line:?}"));
        assert!(n.parse::<u32>().is_ok(), "a torn line: {line:?}");
    }
    let hand = s.log(1, &run1, "upload", 0);
    assert_eq!(hand.lines().count(), 3003);
    assert!(hand.lines().skip(3).all(|l| l.len() == 100), "whole lines");
    for n in 2..=runs as i64 {
        assert_eq!(s.finished_run(n)["run"]["status"], "success");
    }
    let scrape = metrics(&s);
    for part in ["data_dir", "database"] {
        assert_eq!(
            series(&scrape, "slipway_storage_writable", part),
            Some(1.0),
            "{scrape}"
        );
    }
    let logs = s.p.logs();
    assert!(logs.contains("cannot be written"), "the server said so");
    assert!(
        logs.contains("can be written again"),
        "and said when it was over"
    );
    assert!(
        logs.contains("could not store"),
        "the runner said why it stopped"
    );
    if db == Dialect::Sqlite {
        assert_eq!(integrity_check(&disks.data.path().join("slipway.db")), "ok");
    }
}

/// `PRAGMA integrity_check` of a SQLite file, read-only beside the running server.
fn integrity_check(db: &Path) -> String {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        use sqlx::{Connection, Row};
        let url = format!("sqlite://{}?mode=ro", db.display());
        let mut conn = sqlx::SqliteConnection::connect(&url).await.unwrap();
        let row = sqlx::query("PRAGMA integrity_check")
            .fetch_one(&mut conn)
            .await
            .unwrap();
        row.get::<String, _>(0)
    })
}
