//! Following a step container's log to its end, across streams that end early.
//!
//! A `follow=true` log stream can end before the container does: the API server or
//! the kubelet restarts, a load balancer closes a connection it thinks idle, the log
//! file rotates. The stream then ends like a finished one (or with a transport
//! error). So a stream that ends while the container had not exited when it was
//! opened is opened again, until one opened after the exit ends cleanly.
//!
//! Content is always read from the plain stream (`timestamps=false`): with
//! timestamps the runtime's 16 KiB partial entries of a long line each get a prefix
//! mid-line, and stdout and stderr entries do not come in timestamp order, so
//! timestamps can neither be stripped nor used as a position reliably (an earlier
//! attempt lost lines that way). Nor is `sinceTime` used to re-open: it is whole
//! seconds of the node's clock, not the runner's, and which of the lines in that
//! second were delivered cannot be told from content alone when a step repeats a line.
//!
//! Instead a reopened stream is joined by position ([`Joiner`]): the kubelet serves
//! the container's current log file from its start
//! (`pkg/kubelet/kuberuntime/logs/logs.go`, `ReadLogs` on the one file), so the
//! reopened stream repeats exactly the bytes already delivered, checked against the
//! delivered head, and what follows them is new. The price of re-reading is bounded by
//! the kubelet's rotation size (`containerLogMaxSize`, 10 MiB by default,
//! `pkg/kubelet/logs/container_log_manager.go`). When the file was rotated meanwhile
//! (the head differs), the new file is joined where its start overlaps the delivered
//! tail; with no overlap, a notice line says that output may be missing there.

use std::time::Duration;

use bytes::Bytes;
use futures::{AsyncReadExt as _, StreamExt};
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::LogParams;
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::status::{self, Progress};
use super::watch::PodView;
use crate::backend::{LogChunk, LogStream, LogStreamKind};
use crate::error::Error;

/// Delivered bytes kept from the start of the log, to recognise the same file.
const HEAD: usize = 4 * 1024;
/// Delivered bytes kept from the end, to join a rotated file onto.
const TAIL: usize = 256 * 1024;
/// How long the log may fail to open in a row before the stream fails.
const OPEN_FAILURES_MAX: Duration = Duration::from_secs(120);
/// Longest pause between two attempts (opening, or reopening a stream that ended
/// at once without anything new).
const BACKOFF_MAX: Duration = Duration::from_secs(5);
/// How long a stream's end may wait for the pod status to show the container's
/// exit (the watch event can trail the log's end by a little), so that usually the
/// stream reopened after a normal end is the last one. Short: after a cut, output
/// waits this long.
const EXIT_WAIT: Duration = Duration::from_millis(250);

/// The line written where a rotated log could not be joined onto what was delivered.
pub const ROTATED_NOTICE: &[u8] =
    b"[slipway: the container log was rotated while its stream was cut; output may be missing here]\n";

/// Where a (re)opened stream of one container's log stands against what was
/// delivered from earlier streams. Feed it each stream's bytes; it returns what is new.
#[derive(Debug, Default)]
pub struct Joiner {
    delivered: u64,
    /// Bytes of the current stream consumed while it repeats the delivered ones.
    read: u64,
    head: Vec<u8>,
    tail: Vec<u8>,
    phase: Phase,
}

#[derive(Debug, Default)]
enum Phase {
    /// Reading the same file again: `read` bytes of this stream consumed; those
    /// within the head are compared with it, those up to `delivered` skipped.
    #[default]
    Same,
    /// The stream did not start like the delivered log: its first bytes, until it
    /// is clear where they join the delivered tail.
    Rotated(Vec<u8>),
    /// Everything from here on is new.
    Live,
}

impl Joiner {
    /// Bytes delivered so far.
    pub fn delivered(&self) -> u64 {
        self.delivered
    }

    /// A new stream starts from the beginning of the current log file.
    pub fn reopened(&mut self) {
        self.phase = Phase::Same;
        self.read = 0;
    }

    /// The new part of `chunk`, the next bytes of the current stream.
    pub fn feed(&mut self, chunk: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        self.consume(chunk, &mut out);
        self.record(&out);
        out
    }

    /// The current stream ended: what it still held back.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = Vec::new();
        if let Phase::Rotated(buf) = std::mem::take(&mut self.phase) {
            self.join_rotated(&buf, &mut out);
        }
        self.phase = Phase::Live;
        self.record(&out);
        out
    }

    fn consume(&mut self, mut chunk: &[u8], out: &mut Vec<u8>) {
        while !chunk.is_empty() {
            match &mut self.phase {
                Phase::Live => {
                    out.extend_from_slice(chunk);
                    return;
                }
                Phase::Rotated(buf) => {
                    buf.extend_from_slice(chunk);
                    // Undecided while the buffered start may still be a later part
                    // of the delivered tail.
                    if buf.len() <= self.tail.len() && contains(&self.tail, buf) {
                        return;
                    }
                    let buf = std::mem::take(buf);
                    self.phase = Phase::Live;
                    self.join_rotated(&buf, out);
                    return;
                }
                Phase::Same => {
                    let read = self.read;
                    if read >= self.delivered {
                        self.phase = Phase::Live;
                        continue;
                    }
                    let head_left = (self.head.len() as u64).saturating_sub(read) as usize;
                    if head_left > 0 {
                        let n = head_left.min(chunk.len());
                        let at = read as usize;
                        if chunk[..n] != self.head[at..at + n] {
                            // Not the file the delivered log came from.
                            let mut seen = self.head[..at].to_vec();
                            seen.extend_from_slice(chunk);
                            self.phase = Phase::Rotated(Vec::new());
                            chunk = &[];
                            self.consume(&seen, out);
                            continue;
                        }
                        self.read += n as u64;
                        chunk = &chunk[n..];
                        continue;
                    }
                    let skip = (self.delivered - read).min(chunk.len() as u64) as usize;
                    self.read += skip as u64;
                    chunk = &chunk[skip..];
                }
            }
        }
    }

    /// Appends the part of `buf` (the start of a rotated file) that follows the
    /// delivered tail: after the longest overlap that starts a line of the tail.
    fn join_rotated(&self, buf: &[u8], out: &mut Vec<u8>) {
        let t = self.tail.len();
        let overlap = (1..=buf.len().min(t)).rev().find(|&k| {
            let start = t - k;
            let at_line_start = if start == 0 {
                self.delivered == t as u64 || self.delivered == 0
            } else {
                self.tail[start - 1] == b'\n'
            };
            at_line_start && self.tail[start..] == buf[..k]
        });
        match overlap {
            Some(k) => out.extend_from_slice(&buf[k..]),
            None => {
                if self.tail.last().is_some_and(|b| *b != b'\n') {
                    out.push(b'\n');
                }
                out.extend_from_slice(ROTATED_NOTICE);
                out.extend_from_slice(buf);
            }
        }
    }

    fn record(&mut self, new: &[u8]) {
        if new.is_empty() {
            return;
        }
        self.delivered += new.len() as u64;
        if self.head.len() < HEAD {
            let n = (HEAD - self.head.len()).min(new.len());
            self.head.extend_from_slice(&new[..n]);
        }
        self.tail.extend_from_slice(new);
        if self.tail.len() > 2 * TAIL {
            self.tail.drain(..self.tail.len() - TAIL);
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    needle.is_empty() || hay.windows(needle.len()).any(|w| w == needle)
}

/// Whether the step container has exited (or the pod is gone: nothing more will
/// be written).
fn exited(view: &watch::Receiver<PodView>, container: &str) -> bool {
    match &*view.borrow() {
        PodView::Present(p) => matches!(status::progress(p, container), Progress::Exited(_)),
        PodView::Gone => true,
    }
}

/// The step's whole log as the container wrote it, however often the stream is cut.
pub fn follow(
    pods: Api<Pod>,
    pod: String,
    container: String,
    view: watch::Receiver<PodView>,
) -> LogStream {
    let (tx, rx) = mpsc::channel::<crate::Result<LogChunk>>(16);
    tokio::spawn(async move {
        if let Err(e) = run(&pods, &pod, &container, view, &tx).await {
            let _ = tx.send(Err(e)).await;
        }
    });
    futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|c| (c, rx)) }).boxed()
}

/// Sends `bytes` as stdout (the API merges the streams); false once nobody listens.
async fn send(tx: &mpsc::Sender<crate::Result<LogChunk>>, bytes: Vec<u8>) -> bool {
    if bytes.is_empty() {
        return true;
    }
    let chunk = LogChunk {
        stream: LogStreamKind::Stdout,
        bytes: Bytes::from(bytes),
    };
    tx.send(Ok(chunk)).await.is_ok()
}

async fn run(
    pods: &Api<Pod>,
    pod: &str,
    container: &str,
    mut view: watch::Receiver<PodView>,
    tx: &mpsc::Sender<crate::Result<LogChunk>>,
) -> crate::Result<()> {
    let mut joiner = Joiner::default();
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<Instant> = None;
    let lp = LogParams {
        container: Some(container.to_owned()),
        follow: true,
        ..Default::default()
    };
    loop {
        if tx.is_closed() {
            return Ok(());
        }
        // Known before the stream opens: one opened after the exit has it all.
        let complete_when_ended = exited(&view, container);
        let reader = match pods.log_stream(pod, &lp).await {
            Ok(r) => {
                failing_since = None;
                r
            }
            // The pod went (deleted, evicted): its log goes with it.
            Err(kube::Error::Api(e)) if e.code == 404 => return Ok(()),
            Err(e) => {
                let since = *failing_since.get_or_insert_with(Instant::now);
                if since.elapsed() >= OPEN_FAILURES_MAX {
                    return Err(Error::Backend {
                        op: "pod log",
                        message: format!(
                            "the log of {container} in pod {pod} cannot be read again after its stream ended: {e}"
                        ),
                    });
                }
                tracing::debug!(%pod, %container, error = %e, "reopening the step log");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(BACKOFF_MAX);
                continue;
            }
        };
        joiner.reopened();
        let before = joiner.delivered();
        let mut reader = Box::pin(reader);
        let mut buf = vec![0u8; 32 * 1024];
        let mut broken = false;
        loop {
            match reader.read(&mut buf).await {
                Ok(0) => break,
                Ok(n) => {
                    if !send(tx, joiner.feed(&buf[..n])).await {
                        return Ok(());
                    }
                }
                // A connection reset mid-body: read on from where it was.
                Err(e) => {
                    tracing::debug!(%pod, %container, error = %e, "step log stream broke");
                    broken = true;
                    break;
                }
            }
        }
        if !send(tx, joiner.finish()).await {
            return Ok(());
        }
        if complete_when_ended && !broken {
            return Ok(());
        }
        // Most streams end because the container exited: once its status says so,
        // the next stream is the last, and is opened at once.
        let _ = tokio::time::timeout(EXIT_WAIT, async {
            while !exited(&view, container) {
                if view.changed().await.is_err() {
                    return;
                }
            }
        })
        .await;
        if joiner.delivered() > before || exited(&view, container) {
            backoff = Duration::from_millis(100);
        } else {
            // Nothing new and still running: let the container get on before asking
            // again. (Not after an exit: a silent step's end would wait for nothing.)
            tokio::time::sleep(backoff).await;
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
        tracing::debug!(%pod, %container, delivered = joiner.delivered(), "step log stream ended; reading on");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Feeds `streams` (each a list of chunks) through one joiner.
    fn join(streams: &[&[&[u8]]]) -> Vec<u8> {
        let mut j = Joiner::default();
        let mut out = Vec::new();
        for chunks in streams {
            j.reopened();
            for c in *chunks {
                out.extend(j.feed(c));
            }
            out.extend(j.finish());
        }
        out
    }

    #[test]
    fn a_reopened_stream_adds_only_what_follows_the_delivered_bytes() {
        // Cut mid-line, reopened with other chunk boundaries.
        let out = join(&[
            &[b"one\ntw"],
            &[b"on", b"e\ntwo\nthr"],
            &[b"one\ntwo\nthree\n", b"four\n"],
        ]);
        assert_eq!(out, b"one\ntwo\nthree\nfour\n");
    }

    #[test]
    fn repeated_lines_are_neither_lost_nor_repeated() {
        let out = join(&[&[b"x\nx\n"], &[b"x\nx\nx\n"], &[b"x\nx\nx\nx\n"]]);
        assert_eq!(out, b"x\nx\nx\nx\n");
    }

    #[test]
    fn a_stream_with_nothing_new_adds_nothing() {
        let out = join(&[&[b"a\nb\n"], &[b"a\n"], &[], &[b"a\nb\n"]]);
        assert_eq!(out, b"a\nb\n");
    }

    #[test]
    fn a_log_longer_than_the_kept_head_is_skipped_by_position() {
        let first: Vec<u8> = (0..20_000)
            .flat_map(|i| format!("{i}\n").into_bytes())
            .collect();
        let mut again = first.clone();
        again.extend_from_slice(b"new\n");
        let out = join(&[&[&first[..]], &[&again[..7000], &again[7000..]]]);
        assert_eq!(out.len(), first.len() + 4);
        assert!(out.ends_with(b"19999\nnew\n"));
    }

    #[test]
    fn a_rotated_file_is_joined_where_it_overlaps_the_delivered_tail() {
        // The new file starts with the last two delivered lines.
        let out = join(&[&[b"a\nb\nc\nd\n"], &[b"c\nd\n", b"e\n"]]);
        assert_eq!(out, b"a\nb\nc\nd\ne\n");
        // Its start arrives in pieces that are still inside the tail.
        let out = join(&[&[b"a\nb\nc\nd\n"], &[b"c", b"\nd", b"\ne\n"]]);
        assert_eq!(out, b"a\nb\nc\nd\ne\n");
    }

    #[test]
    fn a_rotated_file_without_overlap_is_marked() {
        let out = join(&[&[b"a\nb\n"], &[b"y\nz\n"]]);
        let mut want = b"a\nb\n".to_vec();
        want.extend_from_slice(ROTATED_NOTICE);
        want.extend_from_slice(b"y\nz\n");
        assert_eq!(out, want);
        // An overlap must start a delivered line: "b\n" is not "ab\n".
        let out = join(&[&[b"xab\n"], &[b"b\nq\n"]]);
        assert!(
            out.windows(ROTATED_NOTICE.len())
                .any(|w| w == ROTATED_NOTICE)
        );
    }
}
