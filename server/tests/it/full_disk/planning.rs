//! Only the data dir full, the database (PostgreSQL, elsewhere) fine: a webhook still
//! makes its run, which waits `pending` — never an error run for a disk that will
//! have room again — and is planned, run and finished once the space is back.

use std::time::{Duration, Instant};

use super::Mounted;
use crate::support::db::PgDatabase;
use crate::support::served::{REPO, Served};

const MIB: u64 = 1024 * 1024;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_run_made_while_the_data_dir_is_full_waits_and_then_runs() {
    let database = PgDatabase::create().await;
    let url = database.url.clone();
    let data = Mounted::new(24 * MIB);
    tokio::task::spawn_blocking(move || scenario(&url, &data))
        .await
        .unwrap();
    drop(database);
}

fn readyz(s: &Served) -> u16 {
    reqwest::blocking::get(s.p.url("/readyz")).map_or(0, |r| r.status().as_u16())
}

fn scenario(url: &str, data: &Mounted) {
    let env = crate::support::process::Processes::new()
        .env("SLIPWAY_DATABASE_URL", url)
        .env("SLIPWAY_DATA_DIR", data.path().to_str().unwrap())
        .env("SLIPWAY_IN_PROCESS_RUNNER", "false")
        .env("SLIPWAY_MIN_FREE_DISK_BYTES", &(2 * MIB).to_string());
    let mut s = Served::start(env, "git");
    let token = s.p.cli(&["token", "create", "ext", "--scope", "runner"]);
    s.p.start_runner("ext", &token, &[]);
    let yaml = |n: u32| format!("stages:\n  build:\n    steps:\n      - run: echo build {n}\n");
    s.push("main", &[(".slipway.yml", &yaml(1))]);
    assert_eq!(s.finished_run(1)["run"]["status"], "success");

    data.fill();
    s.p.wait_blocking(
        "/readyz to say 503",
        Duration::from_secs(30),
        || match readyz(&s) {
            503 => Ok(()),
            other => Err(other),
        },
    );
    // The database takes the run; the data dir cannot take its commit.
    s.push("main", &[(".slipway.yml", &yaml(2))]);
    let held = Instant::now();
    while held.elapsed() < Duration::from_secs(4) {
        let (_, run) = s.api("GET", &format!("/api/repos/{REPO}/runs/2"), None);
        assert_eq!(run["run"]["status"], "pending", "{run:#}");
        std::thread::sleep(Duration::from_millis(250));
    }

    data.empty();
    let run = s.finished_run(2);
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(s.log(2, &run, "build", 0), "build 2\n");
}
