//! A step that prints a 50 MiB log as fast as it can, through the real `slipway server`
//! and its in-process runner: the server's memory stays bounded (its peak RSS, VmHWM
//! from `/proc`, grows by far less than the log) because every queue between the
//! step's pipe and the log store is bounded — a writer faster than the store is slowed
//! down, not buffered — and yet every line is stored, in order.

use std::time::Duration;

use serde_json::Value;

use crate::support::process::{Processes, memory};
use crate::support::served::{REPO, Served};

const MIB: u64 = 1024 * 1024;
/// 524,288 lines of 99 digits and a newline: 50 MiB.
const LINES: u64 = 524_288;
const LINE_LEN: u64 = 100;
/// How much the server's peak RSS may grow while the log streams. Unbounded queues
/// held most of the log (over 100 MiB of growth); bounded ones hold a few batches.
const GROWTH_LIMIT: u64 = 40 * MIB;

fn step(run: &Value) -> &Value {
    &run["stages"][0]["steps"][0]
}

#[test]
fn a_fast_50_mib_log_is_stored_whole_without_growing_the_server_by_it() {
    let mut s = Served::start(Processes::new(), "git");
    // A small run first, so what any run allocates once (the runner's client, the
    // database's connections, the mirror) is in the idle figure.
    s.push(
        "main",
        &[(
            ".slipway.yml",
            "stages:\n  warm:\n    steps: [\"echo warm\"]\n",
        )],
    );
    let warm = s.finished_run(1);
    assert_eq!(warm["run"]["status"], "success", "{warm:#}");
    let pid = s.p.pid("server");
    let (idle_hwm, idle_rss) = memory(pid);

    // `seq` writes far faster than any log store keeps up with.
    let big = format!("stages:\n  big:\n    steps: [\"seq -f '%099.0f' 1 {LINES}\"]\n");
    s.push("main", &[(".slipway.yml", &big)]);
    let run =
        s.p.wait_blocking("run #2 to finish", Duration::from_secs(600), || {
            let (status, run) = s.api("GET", &format!("/api/repos/{REPO}/runs/2"), None);
            match run["run"]["status"].as_str() {
                Some("pending" | "running") => Err(format!("{status} {run:#}")),
                _ if status == 200 => Ok(run),
                _ => Err(format!("{status} {run:#}")),
            }
        });
    let (hwm, rss) = memory(pid);
    let growth = hwm.saturating_sub(idle_hwm);
    println!(
        "a 50 MiB log: server VmHWM {} MiB (idle {} MiB, VmRSS {} MiB before, {} MiB after): \
         grew {} MiB",
        hwm / MIB,
        idle_hwm / MIB,
        idle_rss / MIB,
        rss / MIB,
        growth / MIB
    );
    assert_eq!(run["run"]["status"], "success", "{run:#}");
    assert_eq!(step(&run)["log_lines"], LINES, "{run:#}");
    assert_eq!(step(&run)["log_bytes"], LINES * LINE_LEN, "{run:#}");
    assert!(
        growth < GROWTH_LIMIT,
        "the server's peak RSS grew by {} MiB (from {} to {} MiB) while the log streamed",
        growth / MIB,
        idle_hwm / MIB,
        hwm / MIB
    );

    // Every line, in order, as the step printed it.
    let text = s.log(2, &run, "big", 0);
    assert_eq!(text.len() as u64, LINES * LINE_LEN);
    for (i, line) in text.lines().enumerate() {
        let want = format!("{:099}", i + 1);
        assert!(line == want, "line {}: {line:?}, not {want:?}", i + 1);
    }
}
