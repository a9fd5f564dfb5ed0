//! Things that should happen at once, through the real server process: a cancel stops
//! a step that prints nothing (the runner hears it through its held heartbeat, not at
//! its next beat), and a cron schedule fires at its instant (the worker sleeps until
//! the next one instead of looking every 15 s). Waits are bounded; the bounds are the
//! behaviour under test, measured on the server's own timestamps where it has them.

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::process::Processes;
use crate::support::served::{REPO, Served};

const SILENT: &str = "stages:
  slow:
    steps: [\"sleep 30\"]
";

fn stage_status(run: &Value) -> &str {
    run["stages"][0]["status"].as_str().unwrap_or_default()
}

#[test]
fn a_cancel_stops_a_silent_step_within_a_second_or_two() {
    // The default heartbeat: a beat every 10 s, which a cancel used to wait for.
    let mut s = Served::start(Processes::new(), "git");
    s.push("main", &[(".slipway.yml", SILENT)]);
    s.wait_run(1, "to run its step", |r| {
        r["stages"][0]["steps"][0]["status"] == "running"
    });

    let asked = Instant::now();
    let (status, body) = s.api("POST", &format!("/api/repos/{REPO}/runs/1/cancel"), None);
    assert_eq!(status, 200, "{body}");
    let run =
        s.p.wait_blocking("the stage to be cancelled", Duration::from_secs(20), || {
            let (_, run) = s.api("GET", &format!("/api/repos/{REPO}/runs/1"), None);
            if stage_status(&run) == "cancelled" {
                Ok(run)
            } else {
                Err(format!("{run:#}"))
            }
        });
    let took = asked.elapsed();
    assert!(
        took < Duration::from_secs(3),
        "the stage was cancelled {took:?} after the request: {run:#}"
    );
    assert_eq!(run["run"]["status"], "cancelled", "{run:#}");
    assert_eq!(
        run["stages"][0]["steps"][0]["status"], "cancelled",
        "{run:#}"
    );
}

const EVERY_20_S: &str = "on:
  cron: { fast: \"*/20 * * * * *\" }
stages:
  tick:
    steps: [\"true\"]
";

#[test]
fn a_seconds_cron_schedule_fires_within_a_second_of_its_instants() {
    let mut p = Processes::new();
    // Registered before the server starts, so its first look sees the schedule.
    let source = p.dir.path().join("source");
    std::fs::create_dir_all(&source).unwrap();
    crate::support::git::GitRepo::init(&source).commit(
        "refs/heads/main",
        &[],
        &[(".slipway.yml", EVERY_20_S)],
        "every 20 s",
    );
    p.cli(&[
        "repo",
        "add",
        REPO,
        "--forge",
        "git",
        "--clone-url",
        source.to_str().unwrap(),
    ]);
    let admin = p.cli(&["token", "create", "admin", "--scope", "admin"]);
    p.start_server("server");
    let http = reqwest::blocking::Client::new();

    // Two instants in a row: 15 s polling could be lucky once, not twice (its delays
    // differ by 5 s or more from one instant to the next).
    let runs: Vec<Value> = p.wait_blocking("two cron runs", Duration::from_secs(75), || {
        let runs: Value = http
            .get(p.url(&format!("/api/repos/{REPO}/runs")))
            .bearer_auth(&admin)
            .send()
            .unwrap()
            .json()
            .unwrap();
        let runs = runs.as_array().cloned().unwrap_or_default();
        if runs.len() >= 2 {
            Ok(runs)
        } else {
            Err(format!("{runs:#?}"))
        }
    });
    for run in &runs[..2] {
        assert_eq!(run["trigger"], "cron", "{run:#}");
        // Created (by the server's clock) this long after the instant it is for.
        let created = run["created_at"].as_i64().unwrap();
        let late = created.rem_euclid(20_000);
        assert!(
            late < 1_000,
            "run #{} was created {late} ms after its instant: {run:#}",
            run["number"]
        );
    }
}
