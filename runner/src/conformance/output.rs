//! Cases: step output arrives whole, byte-exact, on its stream, split at 64 KiB, and
//! in order with the step events.

use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use super::harness::{drive, run, stage};
use crate::{Backend, LogStreamKind, RunOptions, StageEvent, Status};

/// 20 MB on stdout and 5 MB on stderr at the same time arrive complete (no
/// deadlock from an undrained pipe, no lost lines), without the test holding them.
pub async fn large_output(backend: Arc<dyn Backend>, image: Option<String>) {
    const OUT_LINES: usize = 200_000;
    const ERR_LINES: usize = 50_000;
    let out_line = "o".repeat(100);
    let err_line = "e".repeat(100);
    let script = format!(
        "(yes {err_line} | head -n {ERR_LINES} >&2) &\nyes {out_line} | head -n {OUT_LINES}\nwait"
    );
    let spec = stage("large", &image, &[&script]);
    let err_stream = if backend.separates_streams() {
        LogStreamKind::Stderr
    } else {
        LogStreamKind::Stdout
    };
    let (mut out, mut err, mut bad, mut max_number, mut count) =
        (0usize, 0usize, 0usize, 0u64, 0u64);
    let outcome = drive(
        &*backend,
        &spec,
        RunOptions::default(),
        CancellationToken::new(),
        |e| {
            if let StageEvent::Line(l) = e {
                count += 1;
                max_number = max_number.max(l.number);
                if l.stream == LogStreamKind::Stdout && l.bytes == out_line.as_bytes() {
                    out += 1;
                } else if l.stream == err_stream && l.bytes == err_line.as_bytes() {
                    err += 1;
                } else {
                    bad += 1;
                }
            }
        },
    )
    .await;
    assert_eq!(outcome.status, Status::Success, "{outcome:?}");
    assert_eq!((out, err, bad), (OUT_LINES, ERR_LINES, 0));
    assert_eq!(count, (OUT_LINES + ERR_LINES) as u64);
    assert_eq!(max_number, count, "line numbers are 1-based and contiguous");
}

/// Non-UTF-8 bytes, NUL and `\r` pass through byte-exact; a last line without a
/// newline is still emitted.
pub async fn binary_output(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "binary",
        &image,
        &["printf '\\377\\376\\000abc\\r\\n\\200\\201'"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let lines: Vec<Vec<u8>> = r.lines(0).iter().map(|l| l.bytes.clone()).collect();
    assert_eq!(
        lines,
        vec![b"\xff\xfe\x00abc\r".to_vec(), b"\x80\x81".to_vec()]
    );
}

/// Stdout and stderr lines keep their stream (or, on a backend that merges them,
/// all arrive as stdout).
pub async fn stdout_stderr_separation(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "streams",
        &image,
        &["echo out1\necho err1 >&2\necho out2\necho err2 >&2"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success);
    if backend.separates_streams() {
        assert_eq!(r.stdout(0), vec!["out1", "out2"]);
        assert_eq!(r.text(0, LogStreamKind::Stderr), vec!["err1", "err2"]);
    } else {
        // Merged (the Kubernetes log API): all of it as stdout, each stream in
        // its own order (the two are written apart, so only that is promised).
        assert!(r.text(0, LogStreamKind::Stderr).is_empty());
        let out = r.stdout(0);
        let pos = |l: &str| out.iter().position(|o| o == l);
        assert_eq!(out.len(), 4, "{out:?}");
        assert!(
            pos("out1") < pos("out2") && pos("out1").is_some(),
            "{out:?}"
        );
        assert!(
            pos("err1") < pos("err2") && pos("err1").is_some(),
            "{out:?}"
        );
    }
}

/// Lines longer than 64 KiB arrive as several lines of at most 64 KiB that join
/// back to the original.
pub async fn long_lines(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "long-lines",
        &image,
        &["head -c 200000 /dev/zero | tr '\\0' a\necho\nprintf tail"],
    );
    let r = run(&*backend, &spec).await;
    assert_eq!(r.outcome.status, Status::Success, "{:?}", r.outcome);
    let lines = r.lines(0);
    let lens: Vec<usize> = lines.iter().map(|l| l.bytes.len()).collect();
    assert_eq!(lens, vec![65536, 65536, 65536, 200_000 - 3 * 65536, 4]);
    let joined: Vec<u8> = lines[..4].iter().flat_map(|l| l.bytes.clone()).collect();
    assert!(joined.iter().all(|&b| b == b'a'));
    assert_eq!(lines[4].bytes, b"tail");
}

/// Events come in order: started, lines numbered from 1 per step, finished; skipped
/// steps only get `StepFinished`.
pub async fn event_order(backend: Arc<dyn Backend>, image: Option<String>) {
    let spec = stage(
        "events",
        &image,
        &[
            "echo a\nprintf 'b\\nc'",
            "echo d >&2",
            "exit 5",
            "echo never",
        ],
    );
    let r = run(&*backend, &spec).await;
    let summary: Vec<String> = r
        .events
        .iter()
        .map(|e| match e {
            StageEvent::StepStarted { index, stage, .. } => {
                assert_eq!(stage, "events");
                format!("start {index}")
            }
            StageEvent::Line(l) => format!(
                "line {} {} {}",
                l.step,
                l.number,
                String::from_utf8_lossy(&l.bytes)
            ),
            StageEvent::StepFinished { index, outcome, .. } => {
                format!("finish {index} {:?}", outcome.status)
            }
            // A stage that never waits says nothing about waiting.
            StageEvent::Waiting { reason, .. } => format!("waiting {reason:?}"),
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            "start 0",
            "line 0 1 a",
            "line 0 2 b",
            "line 0 3 c",
            "finish 0 Success",
            "start 1",
            "line 1 1 d",
            "finish 1 Success",
            "start 2",
            "finish 2 Failure",
            "finish 3 Skipped",
        ]
    );
    assert_eq!(r.outcome.steps[2].exit_code, Some(5));
    assert_eq!(r.outcome.id, "events");
}
