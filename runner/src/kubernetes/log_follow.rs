//! Following a step container's log to its end, across streams that end early.
//!
//! A `follow=true` log stream can end before the container does: the API server or
//! the kubelet restarts, a load balancer closes a connection it thinks idle, the log
//! file rotates. The stream then simply ends, like a finished one. So the log is read
//! with `timestamps=true`, and when a stream ends while the container has not yet
//! exited — or had not when that stream was opened — it is opened again with
//! `sinceTime` at the last line's second (the API takes whole seconds and serves
//! lines at or after it), and the lines already delivered are skipped by their
//! timestamps ([`Resume`]). The timestamp prefixes are removed: the step's log is
//! what the container wrote.

use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncBufReadExt, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::watch;

use super::status::{self, Progress};
use super::watch::PodView;
use crate::{Error, LogChunk, LogStream, LogStreamKind};

/// Streams opened again in a row without a line between them, before giving up: a
/// log endpoint that keeps ending at once is broken, not interrupted.
const MAX_EMPTY_REOPENS: u32 = 20;

/// Where a re-opened stream goes on from: the last delivered line's timestamp and how
/// many lines carried exactly that timestamp (several lines can share one).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Resume {
    last: Option<Timestamp>,
    at_last: usize,
    /// Lines of the current stream seen at `last` so far (to skip `at_last` of them).
    skipping: usize,
}

impl Resume {
    /// The `sinceTime` of the next stream: the last line's second, floored (kube
    /// rounds to the nearest second, which could skip lines of the last half second).
    pub fn since(&self) -> Option<Timestamp> {
        self.last
            .and_then(|t| Timestamp::from_second(t.as_second()).ok())
    }

    /// A new stream starts: lines up to the last delivered are seen again.
    pub fn reopened(&mut self) {
        self.skipping = 0;
    }

    /// Whether a line stamped `at` is new (and if so, it counts as delivered).
    pub fn accept(&mut self, at: Timestamp) -> bool {
        match self.last {
            Some(last) if at < last => false,
            Some(last) if at == last => {
                self.skipping += 1;
                if self.skipping <= self.at_last {
                    false
                } else {
                    self.at_last += 1;
                    true
                }
            }
            _ => {
                self.last = Some(at);
                self.at_last = 1;
                self.skipping = 1;
                true
            }
        }
    }
}

/// A log line `<RFC 3339 timestamp> <text>` as `(timestamp, text)`; `None` when the
/// line has no timestamp the API would have put there.
pub fn split_stamp(line: &[u8]) -> Option<(Timestamp, &[u8])> {
    let space = line.iter().position(|b| *b == b' ')?;
    let at = std::str::from_utf8(&line[..space]).ok()?.parse().ok()?;
    Some((at, &line[space + 1..]))
}

/// Whether the step container `container` of the pod has exited (or the pod is gone:
/// nothing more will be written).
fn exited(view: &watch::Receiver<PodView>, container: &str) -> bool {
    match &*view.borrow() {
        PodView::Present(p) => matches!(status::progress(p, container), Progress::Exited(_)),
        PodView::Gone => true,
    }
}

/// The step's whole log, as it was written, however often the stream is cut.
pub fn follow(
    pods: Api<Pod>,
    pod: String,
    container: String,
    view: watch::Receiver<PodView>,
) -> LogStream {
    let (tx, rx) = tokio::sync::mpsc::channel::<crate::Result<LogChunk>>(16);
    tokio::spawn(async move {
        let mut resume = Resume::default();
        let mut empty_reopens = 0u32;
        loop {
            // Known before the stream opens: a stream opened after the exit has it all.
            let complete_when_ended = exited(&view, &container);
            let lp = LogParams {
                container: Some(container.clone()),
                follow: true,
                timestamps: true,
                since_time: resume.since(),
                ..Default::default()
            };
            let reader = match pods.log_stream(&pod, &lp).await {
                Ok(r) => r,
                // The pod went (deleted, evicted): its log goes with it.
                Err(kube::Error::Api(e)) if e.code == 404 => return,
                Err(e) => {
                    let _ = tx
                        .send(Err(Error::Backend {
                            op: "pod log",
                            message: e.to_string(),
                        }))
                        .await;
                    return;
                }
            };
            resume.reopened();
            let mut reader = Box::pin(reader);
            let mut delivered = 0usize;
            let mut cut = false;
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line).await {
                    Ok(0) => break,
                    Ok(_) => {}
                    // A connection reset mid-body: read on from where it was.
                    Err(_) => {
                        cut = true;
                        break;
                    }
                }
                if line.last() != Some(&b'\n') && !complete_when_ended {
                    // A line cut off with its stream: the next stream has it whole.
                    break;
                }
                let raw = line.strip_suffix(b"\n").unwrap_or(&line);
                let text = match split_stamp(raw) {
                    Some((at, text)) if resume.accept(at) => text,
                    Some(_) => continue,
                    None => raw,
                };
                let mut bytes = Vec::with_capacity(text.len() + 1);
                bytes.extend_from_slice(text);
                bytes.push(b'\n');
                delivered += 1;
                let chunk = LogChunk {
                    stream: LogStreamKind::Stdout,
                    bytes: Bytes::from(bytes),
                };
                if tx.send(Ok(chunk)).await.is_err() {
                    return;
                }
            }
            if complete_when_ended && !cut {
                return;
            }
            if delivered == 0 {
                empty_reopens += 1;
                if empty_reopens > MAX_EMPTY_REOPENS {
                    let _ = tx
                        .send(Err(Error::Backend {
                            op: "pod log",
                            message: format!(
                                "the log of {container} keeps ending without a line while the container runs"
                            ),
                        }))
                        .await;
                    return;
                }
                // Nothing new: let the container get on before asking again.
                tokio::time::sleep(Duration::from_millis(100 * u64::from(empty_reopens))).await;
            } else {
                empty_reopens = 0;
            }
            tracing::debug!(%pod, %container, since = ?resume.since(), "log stream ended before the container; reading on");
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn a_reopened_stream_delivers_each_line_once() {
        let mut r = Resume::default();
        // First stream: three lines, two sharing a timestamp; then it is cut.
        for t in [
            "2026-01-01T00:00:01.5Z",
            "2026-01-01T00:00:02.25Z",
            "2026-01-01T00:00:02.25Z",
        ] {
            assert!(r.accept(at(t)));
        }
        assert_eq!(r.since(), Some(at("2026-01-01T00:00:02Z")));
        // The next stream starts at second 2: the shared-stamp lines again, then a new
        // line with the same stamp, then later ones.
        r.reopened();
        let second = [
            ("2026-01-01T00:00:02.25Z", false),
            ("2026-01-01T00:00:02.25Z", false),
            ("2026-01-01T00:00:02.25Z", true),
            ("2026-01-01T00:00:02.5Z", true),
            ("2026-01-01T00:00:03Z", true),
        ];
        for (t, new) in second {
            assert_eq!(r.accept(at(t)), new, "{t}");
        }
        r.reopened();
        assert!(!r.accept(at("2026-01-01T00:00:02.9Z")));
        assert!(!r.accept(at("2026-01-01T00:00:03Z")));
        assert!(r.accept(at("2026-01-01T00:00:03.1Z")));
    }

    #[test]
    fn since_is_floored_to_the_second() {
        let mut r = Resume::default();
        assert_eq!(r.since(), None);
        r.accept(at("2026-01-01T00:00:07.999999999Z"));
        assert_eq!(r.since(), Some(at("2026-01-01T00:00:07Z")));
    }

    #[test]
    fn stamps_are_split_from_the_text() {
        let (t, text) = split_stamp(b"2026-12-07T15:34:57.057474123Z hello world").unwrap();
        assert_eq!(t, at("2026-12-07T15:34:57.057474123Z"));
        assert_eq!(text, b"hello world");
        // Trailing zeros trimmed (RFC3339Nano, as the kubelet writes it).
        assert!(split_stamp(b"2026-12-07T15:34:57.05Z x").is_some());
        assert!(split_stamp(b"no stamp here").is_none());
        assert_eq!(split_stamp(b"2026-12-07T15:34:57Z ").unwrap().1, b"");
    }
}
