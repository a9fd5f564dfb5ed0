//! The on-disk log store: ranges, tails, binary lines, idempotent batches, crash
//! recovery and following.

use std::borrow::Cow;

use server::logs::{Appended, Error, Joined, LogStore, NewLine, Progress, StepKey, Stream};

const KEY: StepKey = StepKey {
    run: 7,
    stage: 3,
    step: 1,
};

fn line(text: &[u8], stream: Stream, time_ms: i64) -> NewLine {
    NewLine {
        time_ms,
        stream,
        bytes: text.to_vec(),
    }
}

fn numbered(from: u64, n: u64) -> Vec<NewLine> {
    (from..from + n)
        .map(|i| {
            let stream = if i % 3 == 0 {
                Stream::Stderr
            } else {
                Stream::Stdout
            };
            line(format!("line {i}").as_bytes(), stream, i as i64 * 10)
        })
        .collect()
}

#[test]
fn ranges_and_tails_come_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    assert_eq!(store.count(KEY).unwrap(), 0);
    assert!(store.read(KEY, 1, 10).unwrap().is_empty());
    assert!(store.text_path(KEY).is_none());

    assert_eq!(store.append(KEY, 1, &numbered(1, 100)).unwrap(), 100);
    assert_eq!(store.append(KEY, 101, &numbered(101, 50)).unwrap(), 150);
    assert_eq!(store.count(KEY).unwrap(), 150);

    let first = store.read(KEY, 1, 3).unwrap();
    assert_eq!(first.len(), 3);
    assert_eq!(first[0].number, 1);
    assert_eq!(first[0].bytes, b"line 1");
    assert_eq!(first[2].stream, Stream::Stderr);
    assert_eq!(first[2].time_ms, 30);

    let middle = store.read(KEY, 99, 4).unwrap();
    let texts: Vec<_> = middle
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
        .collect();
    assert_eq!(texts, ["line 99", "line 100", "line 101", "line 102"]);

    let tail = store.tail(KEY, 2).unwrap();
    assert_eq!(
        tail.iter().map(|l| l.number).collect::<Vec<_>>(),
        [149, 150]
    );
    assert_eq!(store.tail(KEY, 1000).unwrap().len(), 150);
    assert!(store.read(KEY, 151, 10).unwrap().is_empty());

    // The .log is also the plain-text download.
    let text = std::fs::read_to_string(store.text_path(KEY).unwrap()).unwrap();
    assert!(text.starts_with("line 1\nline 2\n"));
    assert!(text.ends_with("line 150\n"));
}

#[test]
fn binary_and_empty_lines_are_kept_byte_for_byte() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    let weird: Vec<u8> = (0u8..=255).filter(|b| *b != b'\n').collect();
    store
        .append(
            KEY,
            1,
            &[
                line(b"", Stream::Stdout, 1),
                line(&weird, Stream::Stderr, 2),
                line(b"\r\x1b[31mred\x1b[0m", Stream::Stdout, 3),
            ],
        )
        .unwrap();
    let lines = store.read(KEY, 1, 10).unwrap();
    assert_eq!(lines[0].bytes, b"");
    assert_eq!(lines[1].bytes, weird);
    assert_eq!(lines[1].stream, Stream::Stderr);
    assert_eq!(lines[2].bytes, b"\r\x1b[31mred\x1b[0m");
    assert!(matches!(
        store.append(KEY, 4, &[line(b"a\nb", Stream::Stdout, 4)]),
        Err(Error::Newline)
    ));
}

#[test]
fn resent_batches_are_skipped_and_gaps_refused() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    store.append(KEY, 1, &numbered(1, 10)).unwrap();
    // A runner that timed out resends lines 6..15: only 11..15 are new.
    assert_eq!(store.append(KEY, 6, &numbered(6, 10)).unwrap(), 15);
    assert_eq!(store.append(KEY, 1, &numbered(1, 10)).unwrap(), 15);
    let all = store.read(KEY, 1, 100).unwrap();
    let numbers: Vec<_> = all.iter().map(|l| l.number).collect();
    assert_eq!(numbers, (1..=15).collect::<Vec<_>>());
    assert_eq!(all[10].bytes, b"line 11");
    match store.append(KEY, 20, &numbered(20, 1)) {
        Err(Error::Gap {
            first: 20,
            have: 15,
        }) => {}
        other => panic!("expected a gap error, got {other:?}"),
    }
}

#[test]
fn a_joined_batch_is_masked_whole_and_appended_from_the_first_new_line() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    store.append(KEY, 1, &numbered(1, 2)).unwrap();
    let mut batch = Joined::default();
    for (i, text) in [&b"line 2"[..], b"token=hunter22", b"", b"\xffhunter22"]
        .iter()
        .enumerate()
    {
        let stream = if i == 1 {
            Stream::Stderr
        } else {
            Stream::Stdout
        };
        batch.push(stream, 100 + i as i64, text).unwrap();
    }
    assert!(matches!(
        batch.push(Stream::Stdout, 0, b"a\nb"),
        Err(Error::Newline)
    ));
    assert_eq!(batch.len(), 4);
    batch
        .mask_with(|text| {
            let masked = String::from_utf8_lossy(text).replace("hunter22", "********");
            Cow::Owned(masked.into_bytes())
        })
        .unwrap();
    // Lines 2.. of the batch: line 2 is stored already.
    let appended = store.append_joined(KEY, 2, &batch).unwrap();
    assert_eq!(
        appended,
        Appended {
            lines: 5,
            fresh_lines: 3,
            fresh_bytes: "token=********\n\n\u{fffd}********\n".len() as u64,
        }
    );
    let lines = store.read(KEY, 3, 10).unwrap();
    let got: Vec<(&[u8], Stream, i64)> = lines
        .iter()
        .map(|l| (&l.bytes[..], l.stream, l.time_ms))
        .collect();
    assert_eq!(
        got,
        [
            (&b"token=********"[..], Stream::Stderr, 101),
            (b"", Stream::Stdout, 102),
            ("\u{fffd}********".as_bytes(), Stream::Stdout, 103),
        ]
    );
    // Resent whole: nothing new.
    let again = store.append_joined(KEY, 2, &batch).unwrap();
    assert_eq!(
        (again.lines, again.fresh_lines, again.fresh_bytes),
        (5, 0, 0)
    );
    // A mask that would change the line count is refused, and the batch kept.
    let mut batch = Joined::default();
    batch.push(Stream::Stdout, 1, b"a").unwrap();
    let split = batch.mask_with(|_| Cow::Owned(b"a\nb\n".to_vec()));
    assert!(matches!(split, Err(Error::Newline)));
    assert_eq!(store.append_joined(KEY, 6, &batch).unwrap().lines, 6);
    assert_eq!(store.read(KEY, 6, 1).unwrap()[0].bytes, b"a");
}

#[test]
fn a_crash_between_the_two_writes_loses_only_uncommitted_lines() {
    let dir = tempfile::tempdir().unwrap();
    {
        let store = LogStore::new(dir.path());
        store.append(KEY, 1, &numbered(1, 5)).unwrap();
    }
    let base = dir.path().join("7/3");
    // Bytes written to the .log but never indexed, and half an index record.
    let mut log = std::fs::OpenOptions::new()
        .append(true)
        .open(base.join("1.log"))
        .unwrap();
    std::io::Write::write_all(&mut log, b"torn line without index\n").unwrap();
    let mut idx = std::fs::OpenOptions::new()
        .append(true)
        .open(base.join("1.idx"))
        .unwrap();
    std::io::Write::write_all(&mut idx, &[1, 2, 3, 4, 5, 6, 7]).unwrap();

    let store = LogStore::new(dir.path());
    assert_eq!(store.count(KEY).unwrap(), 5, "a torn record is not a line");
    assert_eq!(store.append(KEY, 6, &numbered(6, 2)).unwrap(), 7);
    let lines = store.read(KEY, 5, 10).unwrap();
    let texts: Vec<_> = lines
        .iter()
        .map(|l| String::from_utf8_lossy(&l.bytes).into_owned())
        .collect();
    assert_eq!(texts, ["line 5", "line 6", "line 7"]);
    let text = std::fs::read_to_string(store.text_path(KEY).unwrap()).unwrap();
    assert!(!text.contains("torn"), "{text}");
}

#[test]
fn a_large_log_is_read_at_both_ends() {
    let dir = tempfile::tempdir().unwrap();
    let store = LogStore::new(dir.path());
    let payload = "x".repeat(90);
    let total = 200_000u64;
    for batch in 0..(total / 1000) {
        let lines: Vec<_> = (0..1000)
            .map(|i| {
                let n = batch * 1000 + i + 1;
                line(
                    format!("{n:>8} {payload}").as_bytes(),
                    Stream::Stdout,
                    n as i64,
                )
            })
            .collect();
        store.append(KEY, batch * 1000 + 1, &lines).unwrap();
    }
    assert_eq!(store.count(KEY).unwrap(), total);
    let first = store.read(KEY, 1, 1000).unwrap();
    assert_eq!(first.len(), 1000);
    assert!(first[999].bytes.starts_with(b"    1000 "));
    let last = store.tail(KEY, 1000).unwrap();
    assert_eq!(last[0].number, total - 999);
    assert!(
        last[999]
            .bytes
            .starts_with(format!("{total:>8} ").as_bytes())
    );
}

#[tokio::test]
async fn followers_see_new_lines_and_the_end() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(LogStore::new(dir.path()));
    let mut follow = store.subscribe(KEY).unwrap();
    assert_eq!(
        *follow.borrow(),
        Progress {
            lines: 0,
            done: false
        }
    );
    let writer = store.clone();
    let task = tokio::task::spawn_blocking(move || {
        writer.append(KEY, 1, &numbered(1, 3)).unwrap();
        writer.finish(KEY).unwrap();
    });
    let seen = tokio::time::timeout(std::time::Duration::from_secs(30), async {
        loop {
            let now = *follow.borrow_and_update();
            if now.done {
                return now;
            }
            follow.changed().await.unwrap();
        }
    })
    .await
    .expect("follower woke up");
    task.await.unwrap();
    assert_eq!(
        seen,
        Progress {
            lines: 3,
            done: true
        }
    );
}
