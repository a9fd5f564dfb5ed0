//! Step logs on disk: one append-only text file per step plus a fixed-width index, so
//! any line range — the first thousand lines of a 1 GB log, or its last — is read with
//! two seeks and no scan, and nothing is ever loaded whole into memory.
//!
//! Layout under the store's root: `<run>/<stage>/<step>.log` holds each line's bytes
//! followed by `\n` (so the file is also the plain-text download), and `<step>.idx`
//! holds one 16-byte record per line: the little-endian end offset of the line in the
//! `.log` (top bit: stderr) and its timestamp in unix milliseconds.
//!
//! The index is the source of truth. A crash between the two writes leaves bytes in the
//! `.log` past the last indexed line, or half a record in the `.idx`; both are cut off
//! when the step is next opened, so a reader never sees a line that was not committed.
//! An append that fails (a full disk: [`Error::is_disk_full`]) cuts both files back to
//! where they were before it returns, so a failed batch leaves no line of itself — the
//! runner may resend it whole.
//!
//! All I/O here is blocking std::fs: async callers wrap calls in `spawn_blocking`.
//! Appends are idempotent by line number, so a runner may resend a batch after a
//! timeout without duplicating lines.

pub mod failure_cache;

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use tokio::sync::watch;

const RECORD: u64 = 16;
const STDERR_BIT: u64 = 1 << 63;

/// Serialises "count, append, count" per step, so the log counters in the database
/// only grow by lines that were really new even when a resent batch races the
/// original (or the rollout controller writes a stage's log). Striped: bounded memory,
/// and two steps rarely share a stripe.
static LOG_LOCKS: [std::sync::Mutex<()>; 32] = [const { std::sync::Mutex::new(()) }; 32];

/// The lock to hold around appending to `key`'s log from more than one place.
pub fn append_lock(key: StepKey) -> &'static std::sync::Mutex<()> {
    let h = (key.run as u64)
        .wrapping_mul(31)
        .wrapping_add(key.stage as u64)
        .wrapping_mul(31)
        .wrapping_add(u64::from(key.step));
    &LOG_LOCKS[(h % LOG_LOCKS.len() as u64) as usize]
}

/// Identifies one step's log.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct StepKey {
    pub run: i64,
    pub stage: i64,
    pub step: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Stream {
    Stdout,
    Stderr,
}

/// A line as stored and served. `number` is 1-based within the step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    pub number: u64,
    pub time_ms: i64,
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// A line to append; its number is implied by its position in the batch.
#[derive(Debug, Clone)]
pub struct NewLine {
    pub time_ms: i64,
    pub stream: Stream,
    pub bytes: Vec<u8>,
}

/// A batch of lines side by side: each line's bytes followed by `\n` in one buffer,
/// and each line's stream and time. The runner's batch is read into it as it comes,
/// masked in one pass (no secret pattern holds a newline, so masking the whole text
/// masks each line) and written to the `.log` as it is.
#[derive(Debug, Clone, Default)]
pub struct Joined {
    text: Vec<u8>,
    meta: Vec<(Stream, i64)>,
}

impl Joined {
    /// Room for about `bytes` of text.
    pub fn with_capacity(bytes: usize) -> Joined {
        Joined {
            text: Vec::with_capacity(bytes),
            meta: Vec::new(),
        }
    }

    /// Number of lines.
    pub fn len(&self) -> usize {
        self.meta.len()
    }

    pub fn is_empty(&self) -> bool {
        self.meta.is_empty()
    }

    /// Adds a line; one holding a newline is refused.
    pub fn push(&mut self, stream: Stream, time_ms: i64, bytes: &[u8]) -> Result<()> {
        if memchr::memchr(b'\n', bytes).is_some() {
            return Err(Error::Newline);
        }
        self.text.extend_from_slice(bytes);
        self.text.push(b'\n');
        self.meta.push((stream, time_ms));
        Ok(())
    }

    /// Replaces the text with what `mask` makes of it, which must keep every newline
    /// where the line count can see it (a masker replaces matches of patterns that
    /// hold none). A mask that changed the number of lines is refused.
    pub fn mask_with(
        &mut self,
        mask: impl for<'a> FnOnce(&'a [u8]) -> std::borrow::Cow<'a, [u8]>,
    ) -> Result<()> {
        let masked = match mask(&self.text) {
            std::borrow::Cow::Borrowed(_) => return Ok(()),
            std::borrow::Cow::Owned(masked) => masked,
        };
        if memchr::memchr_iter(b'\n', &masked).count() != self.meta.len()
            || masked.last().is_some_and(|b| *b != b'\n')
        {
            return Err(Error::Newline);
        }
        self.text = masked;
        Ok(())
    }

    /// The text and the streams and times of lines `skip..` (0-based).
    fn lines_after(&self, skip: usize) -> (&[u8], &[(Stream, i64)]) {
        let Some(meta) = self.meta.get(skip..).filter(|m| !m.is_empty()) else {
            return (&[], &[]);
        };
        let start = match skip {
            0 => 0,
            n => memchr::memchr_iter(b'\n', &self.text)
                .nth(n - 1)
                .map_or(self.text.len(), |i| i + 1),
        };
        (&self.text[start..], meta)
    }
}

/// What an append stored.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Appended {
    /// Lines in the log afterwards.
    pub lines: u64,
    /// Lines of the batch the log did not have before, and their bytes (newlines
    /// included).
    pub fresh_lines: u64,
    pub fresh_bytes: u64,
}

/// What followers of a step's log are told: how many lines exist, and whether the
/// step is finished (no more will come).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Progress {
    pub lines: u64,
    pub done: bool,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("log I/O on {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("log batch starts at line {first} but the log has {have} lines")]
    Gap { first: u64, have: u64 },
    #[error("a log line may not contain a newline")]
    Newline,
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// The write failed for want of space (`ENOSPC`, `EDQUOT`).
    pub fn is_disk_full(&self) -> bool {
        matches!(self, Error::Io { source, .. } if crate::disk_space::is_disk_full(source))
    }
}

struct StepState {
    /// Serialises appends to one step; readers need no lock (they only read indexed
    /// bytes, which are written before the index record that covers them).
    write: Mutex<()>,
    progress: watch::Sender<Progress>,
}

pub struct LogStore {
    root: PathBuf,
    steps: Mutex<HashMap<StepKey, Arc<StepState>>>,
}

impl LogStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        LogStore {
            root: root.into(),
            steps: Mutex::new(HashMap::new()),
        }
    }

    fn paths(&self, key: StepKey) -> (PathBuf, PathBuf) {
        let dir = self
            .root
            .join(key.run.to_string())
            .join(key.stage.to_string());
        (
            dir.join(format!("{}.log", key.step)),
            dir.join(format!("{}.idx", key.step)),
        )
    }

    fn state(&self, key: StepKey) -> Result<Arc<StepState>> {
        let mut steps = self.steps.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(state) = steps.get(&key) {
            return Ok(state.clone());
        }
        let lines = self.count(key)?;
        let (progress, _) = watch::channel(Progress { lines, done: false });
        let state = Arc::new(StepState {
            write: Mutex::new(()),
            progress,
        });
        steps.insert(key, state.clone());
        Ok(state)
    }

    /// Appends `lines` as lines `first..` (1-based): [`LogStore::append_joined`] for a
    /// handful of lines. Returns the line count afterwards.
    pub fn append(&self, key: StepKey, first: u64, lines: &[NewLine]) -> Result<u64> {
        let mut joined = Joined::default();
        for line in lines {
            joined.push(line.stream, line.time_ms, &line.bytes)?;
        }
        Ok(self.append_joined(key, first, &joined)?.lines)
    }

    /// Appends the batch's lines as lines `first..` (1-based). Lines the log already
    /// has are skipped, so a resent batch is harmless; a batch that would leave a gap
    /// is refused. The batch's text is written as it is: one write to the `.log`, one
    /// to the `.idx`.
    pub fn append_joined(&self, key: StepKey, first: u64, batch: &Joined) -> Result<Appended> {
        let state = self.state(key)?;
        let _guard = state.write.lock().unwrap_or_else(|e| e.into_inner());
        let (log_path, idx_path) = self.paths(key);
        if let Some(dir) = log_path.parent() {
            std::fs::create_dir_all(dir).map_err(io(dir))?;
        }
        let (mut log, mut idx, have, end_before) = open_for_append(&log_path, &idx_path)?;
        let first = first.max(1);
        if first > have + 1 {
            return Err(Error::Gap { first, have });
        }
        let skip = (have + 1 - first) as usize;
        let (data, meta) = batch.lines_after(skip);
        let unchanged = Appended {
            lines: have,
            fresh_lines: 0,
            fresh_bytes: 0,
        };
        if meta.is_empty() {
            return Ok(unchanged);
        }
        // Bytes first, index second: see the module comment.
        let mut records = Vec::with_capacity(meta.len() * RECORD as usize);
        let mut line_start = 0;
        for ((stream, time_ms), newline) in meta.iter().zip(memchr::memchr_iter(b'\n', data)) {
            let end = end_before + newline as u64 + 1;
            let tagged = match stream {
                Stream::Stdout => end,
                Stream::Stderr => end | STDERR_BIT,
            };
            records.extend_from_slice(&tagged.to_le_bytes());
            records.extend_from_slice(&time_ms.to_le_bytes());
            line_start = newline + 1;
        }
        debug_assert_eq!(line_start, data.len());
        let written = log
            .write_all(data)
            .map_err(io(&log_path))
            .and_then(|()| idx.write_all(&records).map_err(io(&idx_path)));
        if let Err(e) = written {
            // Shrinking needs no space: put both files back as they were.
            let _ = idx.set_len(have * RECORD);
            let _ = log.set_len(end_before);
            return Err(e);
        }
        let total = have + meta.len() as u64;
        state.progress.send_modify(|p| p.lines = total);
        Ok(Appended {
            lines: total,
            fresh_lines: meta.len() as u64,
            fresh_bytes: data.len() as u64,
        })
    }

    /// Cuts the log back to its first `lines` lines if it has exactly `had` now: takes
    /// back a batch whose bookkeeping could not be stored, unless more came since.
    /// Whether it did.
    pub fn take_back(&self, key: StepKey, had: u64, lines: u64) -> Result<bool> {
        let state = self.state(key)?;
        let _guard = state.write.lock().unwrap_or_else(|e| e.into_inner());
        let (log_path, idx_path) = self.paths(key);
        let (log, idx, have, _) = open_for_append(&log_path, &idx_path)?;
        if have != had || lines >= have {
            return Ok(false);
        }
        let end = if lines == 0 {
            0
        } else {
            let mut record = [0; RECORD as usize];
            let mut idx_read = &idx;
            idx_read
                .seek(SeekFrom::Start((lines - 1) * RECORD))
                .map_err(io(&idx_path))?;
            idx_read.read_exact(&mut record).map_err(io(&idx_path))?;
            decode(&record).0
        };
        // Index first: a crash in between leaves bytes past the index, cut at the
        // next open.
        idx.set_len(lines * RECORD).map_err(io(&idx_path))?;
        log.set_len(end).map_err(io(&log_path))?;
        state.progress.send_modify(|p| p.lines = lines);
        Ok(true)
    }

    /// Marks the step's log complete, waking followers so they can stop.
    pub fn finish(&self, key: StepKey) -> Result<()> {
        let state = self.state(key)?;
        state.progress.send_modify(|p| p.done = true);
        Ok(())
    }

    /// Follow a step's log: the receiver changes whenever lines are appended or the
    /// step finishes.
    pub fn subscribe(&self, key: StepKey) -> Result<watch::Receiver<Progress>> {
        Ok(self.state(key)?.progress.subscribe())
    }

    /// Number of committed lines (0 for a step that has logged nothing).
    pub fn count(&self, key: StepKey) -> Result<u64> {
        let (_, idx_path) = self.paths(key);
        match std::fs::metadata(&idx_path) {
            Ok(m) => Ok(m.len() / RECORD),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(io(&idx_path)(e)),
        }
    }

    /// Up to `max` lines starting at line `from` (1-based).
    pub fn read(&self, key: StepKey, from: u64, max: usize) -> Result<Vec<Line>> {
        let (log_path, idx_path) = self.paths(key);
        let count = self.count(key)?;
        let from = from.max(1);
        if from > count || max == 0 {
            return Ok(Vec::new());
        }
        let last = (from + max as u64 - 1).min(count);
        // The record before `from` gives the start offset of line `from`.
        let first_record = from - 1;
        let (start, records) = {
            let mut idx = File::open(&idx_path).map_err(io(&idx_path))?;
            let skip_back = u64::from(first_record > 0);
            idx.seek(SeekFrom::Start((first_record - skip_back) * RECORD))
                .map_err(io(&idx_path))?;
            let mut buf = vec![0; ((last - first_record + skip_back) * RECORD) as usize];
            idx.read_exact(&mut buf).map_err(io(&idx_path))?;
            let mut records: Vec<(u64, Stream, i64)> =
                buf.chunks_exact(RECORD as usize).map(decode).collect();
            let start = if skip_back == 1 {
                records.remove(0).0
            } else {
                0
            };
            (start, records)
        };
        let end = records.last().map_or(start, |r| r.0);
        let mut bytes = vec![0; (end - start) as usize];
        let mut log = File::open(&log_path).map_err(io(&log_path))?;
        log.seek(SeekFrom::Start(start)).map_err(io(&log_path))?;
        log.read_exact(&mut bytes).map_err(io(&log_path))?;
        let mut lines = Vec::with_capacity(records.len());
        let mut offset = start;
        for (i, (line_end, stream, time_ms)) in records.into_iter().enumerate() {
            let lo = (offset - start) as usize;
            let hi = (line_end - start) as usize - 1; // drop the '\n'
            lines.push(Line {
                number: from + i as u64,
                time_ms,
                stream,
                bytes: bytes.get(lo..hi).unwrap_or_default().to_vec(),
            });
            offset = line_end;
        }
        Ok(lines)
    }

    /// The last `n` lines.
    pub fn tail(&self, key: StepKey, n: usize) -> Result<Vec<Line>> {
        let count = self.count(key)?;
        let from = count.saturating_sub(n as u64) + 1;
        self.read(key, from, n)
    }

    /// Length in bytes of the committed part of the plain-text log: bytes past it belong
    /// to a batch still being written, so a download should stop here.
    pub fn text_len(&self, key: StepKey) -> Result<u64> {
        let count = self.count(key)?;
        if count == 0 {
            return Ok(0);
        }
        let (_, idx_path) = self.paths(key);
        let mut idx = File::open(&idx_path).map_err(io(&idx_path))?;
        idx.seek(SeekFrom::Start((count - 1) * RECORD))
            .map_err(io(&idx_path))?;
        let mut record = [0; RECORD as usize];
        idx.read_exact(&mut record).map_err(io(&idx_path))?;
        Ok(decode(&record).0)
    }

    /// Path of the plain-text log, for streaming downloads (`None` if nothing logged).
    pub fn text_path(&self, key: StepKey) -> Option<PathBuf> {
        let (log_path, _) = self.paths(key);
        log_path.exists().then_some(log_path)
    }
}

fn decode(record: &[u8]) -> (u64, Stream, i64) {
    let mut end = [0; 8];
    let mut time = [0; 8];
    end.copy_from_slice(&record[..8]);
    time.copy_from_slice(&record[8..16]);
    let tagged = u64::from_le_bytes(end);
    let stream = if tagged & STDERR_BIT != 0 {
        Stream::Stderr
    } else {
        Stream::Stdout
    };
    (tagged & !STDERR_BIT, stream, i64::from_le_bytes(time))
}

/// Opens both files for appending after cutting off anything a crash left uncommitted.
/// Returns the files, the committed line count and the committed length of the `.log`.
fn open_for_append(log_path: &Path, idx_path: &Path) -> Result<(File, File, u64, u64)> {
    let open = |p: &Path| {
        OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(p)
            .map_err(io(p))
    };
    let log = open(log_path)?;
    let mut idx = open(idx_path)?;
    let idx_len = idx.metadata().map_err(io(idx_path))?.len();
    let count = idx_len / RECORD;
    if idx_len % RECORD != 0 {
        idx.set_len(count * RECORD).map_err(io(idx_path))?;
    }
    let end = if count == 0 {
        0
    } else {
        let mut record = [0; RECORD as usize];
        idx.seek(SeekFrom::Start((count - 1) * RECORD))
            .map_err(io(idx_path))?;
        idx.read_exact(&mut record).map_err(io(idx_path))?;
        decode(&record).0
    };
    let log_len = log.metadata().map_err(io(log_path))?.len();
    if log_len != end {
        log.set_len(end).map_err(io(log_path))?;
    }
    Ok((log, idx, count, end))
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |source| Error::Io {
        path: path.to_path_buf(),
        source,
    }
}
