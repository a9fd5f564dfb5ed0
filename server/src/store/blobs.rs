//! The content-addressed blob store for artifacts and caches:
//! `<data dir>/blobs/sha256/<first two hex digits>/<the other 62>`.
//!
//! A write streams the body into a temp file in the blob's own directory while hashing
//! it, checks the size and the sha256 the uploader announced, fsyncs, and renames the
//! file into place — so a blob path only ever holds complete, verified content, and
//! identical content is stored once (an existing blob is left alone, never rewritten).
//! Memory stays flat whatever the size: one chunk at a time. A write that fails, is
//! refused or is abandoned half-way (the client went away and the future was dropped)
//! removes its temp file. One that a killed process left behind is removed by the next
//! server's start-up sweep: every temp file is `flock`ed by its writer for as long as
//! it is written, so a file whose lock can be taken has no live writer (and a replica
//! sharing the directory keeps its own uploads).

use std::path::{Path, PathBuf};

use bytes::Bytes;
use futures::{Stream, StreamExt};
use sha2::{Digest, Sha256};

/// Why a blob was not stored.
#[derive(Debug, thiserror::Error)]
pub enum BlobError {
    #[error("`{0}` is not a sha256 (64 lower-case hex digits)")]
    BadDigest(String),
    #[error("{what} of {size} bytes is over the limit of {limit} bytes")]
    TooLarge {
        what: &'static str,
        size: u64,
        limit: u64,
    },
    #[error("the body has {got} bytes but {expected} were announced")]
    SizeMismatch { expected: u64, got: u64 },
    #[error("the body's sha256 is {got} but {expected} was announced")]
    HashMismatch { expected: String, got: String },
    #[error("reading the upload failed: {0}")]
    Body(String),
    #[error("blob store I/O: {0}")]
    Io(#[from] std::io::Error),
}

impl BlobError {
    /// A retry of the same request could succeed (the connection broke, the disk hiccuped).
    pub fn is_retryable(&self) -> bool {
        matches!(self, BlobError::Body(_) | BlobError::Io(_))
    }
}

/// A stored blob.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stored {
    pub sha256: String,
    pub size: u64,
    /// `false` when identical content was already there.
    pub new: bool,
}

#[derive(Debug, Clone)]
pub struct BlobStore {
    /// `<data dir>/blobs/sha256`.
    root: PathBuf,
}

/// Lower-case hex sha256?
pub fn is_sha256(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

const CHUNK: usize = 64 * 1024;

impl BlobStore {
    pub fn new(data_dir: &Path) -> BlobStore {
        BlobStore {
            root: data_dir.join("blobs").join("sha256"),
        }
    }

    /// Removes the temp files of uploads whose writer is gone (a killed server), and
    /// returns how many. Uploads in progress, here or in a replica sharing the
    /// directory, hold their file's lock and are left alone.
    pub fn sweep_abandoned_uploads(&self) -> usize {
        let mut removed = 0;
        let Ok(prefixes) = std::fs::read_dir(&self.root) else {
            return 0;
        };
        for dir in prefixes.flatten() {
            let Ok(entries) = std::fs::read_dir(dir.path()) else {
                continue;
            };
            for entry in entries.flatten() {
                if !entry.file_name().to_string_lossy().starts_with(TEMP_PREFIX) {
                    continue;
                }
                let Ok(file) = std::fs::File::open(entry.path()) else {
                    continue;
                };
                let free =
                    nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusiveNonblock);
                if free.is_ok() && std::fs::remove_file(entry.path()).is_ok() {
                    removed += 1;
                }
            }
        }
        removed
    }

    /// Where the blob with this digest lives (whether or not it exists).
    pub fn path(&self, sha256: &str) -> Result<PathBuf, BlobError> {
        if !is_sha256(sha256) {
            return Err(BlobError::BadDigest(sha256.to_string()));
        }
        Ok(self.root.join(&sha256[..2]).join(&sha256[2..]))
    }

    /// The blob's file and its size, or `None` if it is not stored.
    pub async fn open(&self, sha256: &str) -> Result<Option<(tokio::fs::File, u64)>, BlobError> {
        let path = self.path(sha256)?;
        match tokio::fs::File::open(&path).await {
            Ok(f) => {
                let len = f.metadata().await?.len();
                Ok(Some((f, len)))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    /// Stores `body`, which must be exactly `size` bytes with digest `sha256`. `size`
    /// over `limit` is refused before a byte is read.
    pub async fn put<S, E>(
        &self,
        sha256: &str,
        size: u64,
        limit: u64,
        body: S,
    ) -> Result<Stored, BlobError>
    where
        S: Stream<Item = Result<Bytes, E>>,
        E: std::fmt::Display,
    {
        let dest = self.path(sha256)?;
        if size > limit {
            return Err(BlobError::TooLarge {
                what: "an upload",
                size,
                limit,
            });
        }
        let dir = dest
            .parent()
            .expect("blob paths have a parent")
            .to_path_buf();
        tokio::fs::create_dir_all(&dir).await?;
        let tmp = TempFile::new(&dir).await?;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        let mut writer = Writer::start(tmp.file().await?.into_std().await);
        let mut body = std::pin::pin!(body);
        while let Some(chunk) = body.next().await {
            let chunk = chunk.map_err(|e| BlobError::Body(e.to_string()))?;
            written += chunk.len() as u64;
            if written > size {
                // Announced one size, sent more: stop reading at once.
                return Err(BlobError::SizeMismatch {
                    expected: size,
                    got: written,
                });
            }
            // Hashing here while the writer thread writes the previous chunks: the
            // two overlap instead of taking turns.
            hasher.update(&chunk);
            writer.write(chunk).await?;
        }
        // Everything written, flushed and fsynced (or the first write error).
        writer.finish().await?;
        if written != size {
            return Err(BlobError::SizeMismatch {
                expected: size,
                got: written,
            });
        }
        let got = hex::encode(hasher.finalize());
        if got != sha256 {
            return Err(BlobError::HashMismatch {
                expected: sha256.to_string(),
                got,
            });
        }
        let new = tmp.persist(&dest).await?;
        Ok(Stored {
            sha256: sha256.to_string(),
            size,
            new,
        })
    }
}

const TEMP_PREFIX: &str = ".upload-";

/// Chunks queued for the writer thread: a few MiB at most in flight.
const QUEUED_CHUNKS: usize = 32;

/// Writes an upload's chunks to its temp file on a thread of its own, so that the
/// caller hashes (and reads the socket) while the disk writes; `finish` flushes and
/// fsyncs. The first write error (a full disk: see `ApiError::disk_full`) ends the
/// thread and is what `write` or `finish` returns. Dropped unfinished (a refused or
/// abandoned upload), it stops without writing the rest or syncing.
struct Writer {
    chunks: Option<tokio::sync::mpsc::Sender<Bytes>>,
    done: tokio::task::JoinHandle<std::io::Result<()>>,
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

impl Writer {
    fn start(file: std::fs::File) -> Writer {
        use std::sync::atomic::Ordering;
        let (chunks, mut rx) = tokio::sync::mpsc::channel::<Bytes>(QUEUED_CHUNKS);
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let stop = abandoned.clone();
        let done = tokio::task::spawn_blocking(move || {
            use std::io::Write;
            let mut out = std::io::BufWriter::with_capacity(CHUNK * 16, file);
            while let Some(chunk) = rx.blocking_recv() {
                if stop.load(Ordering::Relaxed) {
                    return Ok(());
                }
                out.write_all(&chunk)?;
            }
            if stop.load(Ordering::Relaxed) {
                return Ok(());
            }
            let file = out.into_inner().map_err(|e| e.into_error())?;
            file.sync_all()
        });
        Writer {
            chunks: Some(chunks),
            done,
            abandoned,
        }
    }

    async fn write(&mut self, chunk: Bytes) -> std::io::Result<()> {
        let sent = match &self.chunks {
            Some(chunks) => chunks.send(chunk).await.is_ok(),
            None => false,
        };
        if sent {
            return Ok(());
        }
        // The thread stopped on an error: that error, not a closed channel.
        self.chunks = None;
        match (&mut self.done).await {
            Ok(Err(e)) => Err(e),
            Ok(Ok(())) => Err(std::io::Error::other("the blob writer stopped early")),
            Err(e) => Err(std::io::Error::other(e)),
        }
    }

    async fn finish(mut self) -> std::io::Result<()> {
        self.chunks = None;
        let result = (&mut self.done).await.map_err(std::io::Error::other)?;
        // Finished: nothing to abandon on drop.
        self.abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        result
    }
}

impl Drop for Writer {
    fn drop(&mut self) {
        self.abandoned
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// A temp file next to its destination, removed on drop unless persisted, and locked
/// while it lives so that the start-up sweep can tell it from a dead writer's.
struct TempFile {
    path: Option<PathBuf>,
    _lock: nix::fcntl::Flock<std::fs::File>,
}

impl TempFile {
    async fn new(dir: &Path) -> std::io::Result<TempFile> {
        let name = format!("{TEMP_PREFIX}{:016x}", rand::random::<u64>());
        let path = dir.join(name);
        let file = tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&path)
            .await?
            .into_std()
            .await;
        let lock = match nix::fcntl::Flock::lock(file, nix::fcntl::FlockArg::LockExclusive) {
            Ok(lock) => lock,
            Err((_, errno)) => {
                let _ = std::fs::remove_file(&path);
                return Err(errno.into());
            }
        };
        Ok(TempFile {
            path: Some(path),
            _lock: lock,
        })
    }

    async fn file(&self) -> std::io::Result<tokio::fs::File> {
        let path = self.path.as_ref().expect("not persisted yet");
        tokio::fs::OpenOptions::new().write(true).open(path).await
    }

    /// Puts the file at `dest` unless a blob is already there; `true` if it did. A hard
    /// link never replaces an existing file, so two uploads of the same content racing
    /// each other leave exactly one of them in place, untouched afterwards.
    async fn persist(mut self, dest: &Path) -> std::io::Result<bool> {
        let path = self.path.take().expect("persisted once");
        let linked = tokio::fs::hard_link(&path, dest).await;
        let _ = tokio::fs::remove_file(&path).await;
        match linked {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => return Ok(false),
            Err(e) => return Err(e),
        }
        // Make the new directory entry itself durable.
        if let Some(dir) = dest.parent()
            && let Ok(d) = tokio::fs::File::open(dir).await
        {
            let _ = d.sync_all().await;
        }
        Ok(true)
    }
}

impl Drop for TempFile {
    fn drop(&mut self) {
        if let Some(path) = self.path.take() {
            let _ = std::fs::remove_file(path);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(data: &[u8]) -> impl Stream<Item = Result<Bytes, std::io::Error>> + use<> {
        let parts: Vec<Result<Bytes, std::io::Error>> = data
            .chunks(7)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        futures::stream::iter(parts)
    }

    fn sha(data: &[u8]) -> String {
        hex::encode(Sha256::digest(data))
    }

    fn files(dir: &Path) -> Vec<PathBuf> {
        let mut out = Vec::new();
        let Ok(entries) = std::fs::read_dir(dir) else {
            return out;
        };
        for e in entries.flatten() {
            if e.path().is_dir() {
                out.extend(files(&e.path()));
            } else {
                out.push(e.path());
            }
        }
        out
    }

    #[tokio::test]
    async fn stores_once_and_refuses_lies() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let data = b"hello, blob store".to_vec();
        let digest = sha(&data);
        let first = store
            .put(&digest, data.len() as u64, 1000, chunks(&data))
            .await
            .unwrap();
        assert!(first.new);
        let again = store
            .put(&digest, data.len() as u64, 1000, chunks(&data))
            .await
            .unwrap();
        assert!(!again.new);
        let path = store.path(&digest).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), data);
        assert!(path.starts_with(dir.path().join("blobs/sha256").join(&digest[..2])));

        let other = b"other bytes".to_vec();
        let err = store
            .put(&sha(&other), other.len() as u64, 5, chunks(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::TooLarge { .. }), "{err}");
        let err = store
            .put(&sha(&other), 3, 1000, chunks(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
        let err = store
            .put(&sha(&other), other.len() as u64 + 1, 1000, chunks(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::SizeMismatch { .. }), "{err}");
        let err = store
            .put(&digest, other.len() as u64, 1000, chunks(&other))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::HashMismatch { .. }), "{err}");
        let err = store
            .put("../../etc/passwd", 1, 1000, chunks(b"x"))
            .await
            .unwrap_err();
        assert!(matches!(err, BlobError::BadDigest(_)), "{err}");
        // Only the one good blob is left: no temp files, no refused content.
        assert_eq!(files(dir.path()), vec![path]);
    }

    #[tokio::test]
    async fn the_sweep_removes_only_uploads_nobody_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = BlobStore::new(dir.path());
        let shard = store.root.join("ab");
        std::fs::create_dir_all(&shard).unwrap();
        // A dead writer's file: nobody holds its lock.
        let dead = shard.join(format!("{TEMP_PREFIX}dead"));
        std::fs::write(&dead, b"half an upload").unwrap();
        // A live upload, locked by its writer.
        let live = TempFile::new(&shard).await.unwrap();
        let live_path = live.path.clone().unwrap();
        // A blob is never touched.
        let blob = shard.join("c".repeat(62));
        std::fs::write(&blob, b"content").unwrap();

        assert_eq!(store.sweep_abandoned_uploads(), 1);
        assert!(!dead.exists());
        assert!(live_path.exists() && blob.exists());
        drop(live);
        assert!(!live_path.exists());
        assert_eq!(store.sweep_abandoned_uploads(), 0);
    }
}
