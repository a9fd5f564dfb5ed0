//! Bare git mirrors: one per Slipway repository, fetched incrementally, read by commit.
//!
//! Everything the planner needs from git goes through [`Mirror`]: fetching the pushed refs
//! ([`Mirror::fetch`], [`Mirror::ensure_commit`]), reading pipeline files from a commit's
//! tree ([`Mirror::pipeline_files`]), the paths a push or pull request changed
//! ([`Mirror::changed_paths`], [`Mirror::changed_paths_merge_base`]) and a tarball of a
//! commit for backends that cannot reach the forge ([`Mirror::archive`]).
//!
//! # Blocking
//! git2 (libgit2) is synchronous and a fetch can take seconds to minutes. Every method here
//! blocks the calling thread: async code must call it inside `tokio::task::spawn_blocking`
//! (re-open the mirror there with [`Mirror::open`], which only reads a few files), never
//! directly on a runtime worker.
//!
//! # Concurrency
//! `Mirror` is `Send` but not `Sync` (libgit2 handles are not thread-safe). Two *fetches* of
//! the same mirror at once would race on ref lock files (`GitError::is_retryable` is true for
//! that), so callers serialise fetches per repository (a per-repo mutex or the scheduler's
//! per-repo work item). Reading (pipeline files, diffs, archives) from several handles at once
//! is fine.
//!
//! # Trust
//! Ref names and commit ids come from webhook payloads, i.e. from whoever can reach the
//! webhook endpoint with a valid signature — or from a forge that relays user-chosen branch
//! names. They are validated before they reach a refspec ([`GitError::InvalidRef`],
//! [`GitError::InvalidSha`]), so a branch called `x:refs/heads/main` cannot overwrite
//! another ref of the mirror.

mod archive;
mod diff;
mod pipeline;

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, LazyLock};

use git2::{AutotagOption, ErrorClass, ErrorCode, FetchOptions, Oid, RemoteCallbacks, Repository};

pub use pipeline::{MAX_PIPELINE_FILE_BYTES, pipeline_files_of};

/// Name of the single remote of every mirror.
const REMOTE: &str = "origin";

/// How many times libgit2 may ask the credentials callback during one fetch. libgit2 calls it
/// again after every rejected credential, so a callback that keeps returning the same bad
/// token would otherwise loop forever against the forge.
const MAX_CREDENTIAL_ATTEMPTS: u32 = 3;

#[derive(Debug, thiserror::Error)]
pub enum GitError {
    #[error("git mirror {}: {source}", dir.display())]
    Open { dir: PathBuf, source: git2::Error },

    #[error("invalid ref name {0:?} (expected a full ref name such as refs/heads/main)")]
    InvalidRef(String),

    #[error("invalid commit id {0:?} (expected 40 hexadecimal characters)")]
    InvalidSha(String),

    /// The URL is shown with any user:password part replaced by `***`.
    #[error("fetching {refs} from {url}: {source}")]
    Fetch {
        url: String,
        refs: String,
        source: git2::Error,
    },

    #[error("commit {sha} not found after fetching {tried} from {url}")]
    CommitNotFound {
        sha: String,
        tried: String,
        url: String,
    },

    #[error("commit {0} is not in the mirror (fetch it first)")]
    UnknownCommit(String),

    /// A pipeline file exists but cannot be used (not UTF-8, a symlink, too large). The
    /// planner turns this into a run in state `error`, like a YAML syntax error.
    #[error("pipeline file {path} at commit {sha}: {reason}")]
    PipelineFile {
        sha: String,
        path: String,
        reason: String,
    },

    #[error("writing archive of {sha}: {source}")]
    Archive { sha: String, source: std::io::Error },

    #[error("git: {0}")]
    Git(#[from] git2::Error),
}

pub type Result<T, E = GitError> = std::result::Result<T, E>;

impl GitError {
    /// Whether trying again later may succeed: network trouble while fetching, or a ref lock
    /// held by a concurrent fetch of the same mirror.
    pub fn is_retryable(&self) -> bool {
        let source = match self {
            GitError::Fetch { source, .. }
            | GitError::Open { source, .. }
            | GitError::Git(source) => source,
            _ => return false,
        };
        source.code() == ErrorCode::Locked
            || matches!(self, GitError::Fetch { .. })
                && matches!(
                    source.class(),
                    ErrorClass::Net
                        | ErrorClass::Http
                        | ErrorClass::Ssl
                        | ErrorClass::Ssh
                        | ErrorClass::Os
                )
    }
}

/// Supplies credentials for fetching from a private remote: called with the URL, the user
/// name found in the URL (if any) and the kinds of credential the transport accepts; return
/// e.g. `git2::Cred::userpass_plaintext("x-access-token", token)` for an HTTPS forge token or
/// `git2::Cred::ssh_key_from_memory(..)` for a deploy key. Called at most
/// `MAX_CREDENTIAL_ATTEMPTS` (3) times per fetch.
///
/// Note: git2 is built without its `https`/`ssh` features in this workspace (no OpenSSL or
/// libssh2 needed), so only local paths and `file://` URLs can be fetched until one is enabled.
pub type CredentialsFn = dyn Fn(&str, Option<&str>, git2::CredentialType) -> Result<git2::Cred, git2::Error>
    + Send
    + Sync;

/// A bare mirror of one forge repository.
pub struct Mirror {
    repo: Repository,
    dir: PathBuf,
    credentials: Option<Arc<CredentialsFn>>,
}

impl fmt::Debug for Mirror {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Mirror")
            .field("dir", &self.dir)
            .field(
                "credentials",
                &self.credentials.as_ref().map(|_| "<callback>"),
            )
            .finish()
    }
}

// Mirrors are handed to `spawn_blocking`; keep that possible.
const _: () = {
    const fn assert_send<T: Send>() {}
    assert_send::<Mirror>();
};

impl Mirror {
    /// Opens the bare mirror at `dir`, creating it (and missing parent directories) when `dir`
    /// does not exist or is empty, and points its `origin` remote at `clone_url` (updated if
    /// the repository's clone URL changed). An existing non-empty directory that is not a git
    /// repository is an error rather than being overwritten.
    pub fn open_or_init(dir: &Path, clone_url: &str) -> Result<Mirror> {
        let open_err = |source| GitError::Open {
            dir: dir.to_owned(),
            source,
        };
        let empty = match std::fs::read_dir(dir) {
            Ok(mut entries) => entries.next().is_none(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => true,
            Err(e) => return Err(open_err(git2::Error::from_str(&e.to_string()))),
        };
        let repo = if empty {
            Repository::init_bare(dir).map_err(open_err)?
        } else {
            Repository::open_bare(dir).map_err(open_err)?
        };
        match repo.find_remote(REMOTE) {
            Ok(remote) => {
                if remote.url_bytes() != clone_url.as_bytes() {
                    tracing::info!(
                        mirror = %dir.display(),
                        url = %redact_url(clone_url),
                        "clone URL changed; updating the mirror's remote"
                    );
                    repo.remote_set_url(REMOTE, clone_url).map_err(open_err)?;
                }
            }
            Err(e) if e.code() == ErrorCode::NotFound => {
                // The configured refspec is only for humans running `git fetch` in the mirror
                // while debugging: Slipway always passes explicit refspecs.
                repo.remote_with_fetch(REMOTE, clone_url, "+refs/heads/*:refs/heads/*")
                    .map_err(open_err)?;
            }
            Err(e) => return Err(open_err(e)),
        }
        Ok(Mirror {
            repo,
            dir: dir.to_owned(),
            credentials: None,
        })
    }

    /// Re-opens an existing mirror without touching its remote: cheap (a few small file
    /// reads), so blocking tasks can open their own handle instead of sharing one.
    pub fn open(dir: &Path) -> Result<Mirror> {
        let repo = Repository::open_bare(dir).map_err(|source| GitError::Open {
            dir: dir.to_owned(),
            source,
        })?;
        Ok(Mirror {
            repo,
            dir: dir.to_owned(),
            credentials: None,
        })
    }

    /// Uses `credentials` to authenticate fetches (see [`CredentialsFn`]).
    pub fn with_credentials(mut self, credentials: Arc<CredentialsFn>) -> Mirror {
        self.credentials = Some(credentials);
        self
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The underlying repository, for reads this module does not wrap.
    pub fn repository(&self) -> &Repository {
        &self.repo
    }

    /// Fetches each of `refs` (full names: `refs/heads/main`, `refs/tags/v1`,
    /// `refs/pull/7/head`, `refs/merge-requests/7/head`, …) from `origin` into the same name
    /// in the mirror, force-updating (branches get force-pushed; the mirror follows the
    /// forge). Only objects the mirror lacks are transferred. Tags are not auto-followed, so a
    /// push to one branch never downloads the rest of the repository. An empty `refs` fetches
    /// nothing.
    ///
    /// A ref that does not exist on the remote is not an error here (libgit2 fetches what
    /// matches); [`Mirror::ensure_commit`] is what tells the caller a commit is missing.
    pub fn fetch(&self, refs: &[String]) -> Result<()> {
        if refs.is_empty() {
            return Ok(());
        }
        let refspecs = refs
            .iter()
            .map(|r| validate_ref(r).map(|()| format!("+{r}:{r}")))
            .collect::<Result<Vec<_>>>()?;
        let mut remote = self.repo.find_remote(REMOTE)?;
        let url = redact_url(&String::from_utf8_lossy(remote.url_bytes()));
        let mut attempts = 0;
        let mut callbacks = RemoteCallbacks::new();
        if let Some(credentials) = &self.credentials {
            callbacks.credentials(move |url, username, allowed| {
                attempts += 1;
                if attempts > MAX_CREDENTIAL_ATTEMPTS {
                    return Err(git2::Error::from_str(
                        "authentication failed: credentials rejected by the remote",
                    ));
                }
                credentials(url, username, allowed)
            });
        }
        let mut options = FetchOptions::new();
        options
            .remote_callbacks(callbacks)
            .download_tags(AutotagOption::None)
            // FETCH_HEAD is for interactive merges; nothing reads it in a mirror.
            .update_fetchhead(false);
        let started = std::time::Instant::now();
        remote
            .fetch(&refspecs, Some(&mut options), Some("slipway: fetch"))
            .map_err(|source| GitError::Fetch {
                url: url.clone(),
                refs: refs.join(", "),
                source,
            })?;
        let stats = remote.stats();
        tracing::debug!(
            mirror = %self.dir.display(),
            url = %url,
            refs = ?refs,
            objects = stats.received_objects(),
            bytes = stats.received_bytes(),
            elapsed_ms = started.elapsed().as_millis() as u64,
            "fetched"
        );
        Ok(())
    }

    /// Makes sure commit `sha` is in the mirror: returns at once if it already is, otherwise
    /// fetches `refs_to_try` one at a time (most likely first, e.g. the pushed branch, then
    /// the pull request ref) until it appears. Errors with
    /// "commit <sha> not found after fetching <refs> from <url>" when none brings it — e.g.
    /// the branch was force-pushed again before we fetched.
    ///
    /// `sha` may name an annotated tag object; it counts as present when the commit it points
    /// to is ([`Mirror::peel_to_commit`] gives that commit's id).
    pub fn ensure_commit(&self, sha: &str, refs_to_try: &[String]) -> Result<()> {
        let oid = parse_sha(sha)?;
        if self.has_commit_oid(oid) {
            return Ok(());
        }
        for (i, r) in refs_to_try.iter().enumerate() {
            self.fetch(std::slice::from_ref(r))?;
            if self.has_commit_oid(oid) {
                tracing::debug!(sha, r#ref = %r, attempts = i + 1, "commit fetched");
                return Ok(());
            }
        }
        let url = self
            .repo
            .find_remote(REMOTE)
            .map(|r| redact_url(&String::from_utf8_lossy(r.url_bytes())))
            .unwrap_or_else(|_| "<no remote>".into());
        Err(GitError::CommitNotFound {
            sha: sha.to_owned(),
            tried: if refs_to_try.is_empty() {
                "no refs".into()
            } else {
                refs_to_try.join(", ")
            },
            url,
        })
    }

    /// The full id of the commit an abbreviated id names, as the tip of `git_ref` on the
    /// remote: fetches the ref and checks that its tip starts with `abbreviated`.
    /// Bitbucket Cloud names pull-request heads by 12-digit abbreviations; resolving
    /// them against the ref the run builds (never by searching the object database) means
    /// an ambiguous or stale abbreviation cannot pick an unrelated commit. When the ref
    /// has moved on, the error is [`GitError::CommitNotFound`]: the newer push brings its
    /// own webhook.
    pub fn resolve_abbreviated(&self, abbreviated: &str, git_ref: &str) -> Result<String> {
        let ok = (7..40).contains(&abbreviated.len())
            && abbreviated.bytes().all(|b| b.is_ascii_hexdigit());
        if !ok {
            return Err(GitError::InvalidSha(abbreviated.to_owned()));
        }
        self.fetch(&[git_ref.to_owned()])?;
        let abbreviated = abbreviated.to_ascii_lowercase();
        match self.resolve_ref(git_ref)? {
            Some(tip) if tip.starts_with(&abbreviated) => Ok(tip),
            _ => {
                let url = self
                    .repo
                    .find_remote(REMOTE)
                    .map(|r| redact_url(&String::from_utf8_lossy(r.url_bytes())))
                    .unwrap_or_else(|_| "<no remote>".into());
                Err(GitError::CommitNotFound {
                    sha: abbreviated,
                    tried: git_ref.to_owned(),
                    url,
                })
            }
        }
    }

    /// Whether the mirror holds commit `sha` (or an annotated tag pointing to a commit).
    pub fn has_commit(&self, sha: &str) -> Result<bool> {
        Ok(self.has_commit_oid(parse_sha(sha)?))
    }

    /// The commit id `sha` resolves to: itself for a commit, the target for an annotated tag
    /// (GitLab's tag push `after` is the tag object). Runs should record this id.
    pub fn peel_to_commit(&self, sha: &str) -> Result<String> {
        Ok(self.commit(sha)?.id().to_string())
    }

    /// The commit a local ref points at (`refs/heads/main`), if the ref exists in the mirror.
    /// Cron and manual triggers use this after fetching the default branch.
    pub fn resolve_ref(&self, name: &str) -> Result<Option<String>> {
        validate_ref(name)?;
        match self.repo.find_reference(name) {
            Ok(r) => Ok(Some(r.peel_to_commit()?.id().to_string())),
            Err(e) if e.code() == ErrorCode::NotFound => Ok(None),
            Err(e) => Err(e.into()),
        }
    }

    fn has_commit_oid(&self, oid: Oid) -> bool {
        self.repo
            .find_object(oid, None)
            .and_then(|o| o.peel_to_commit())
            .is_ok()
    }

    /// Finds a commit by full id, peeling annotated tags.
    fn commit(&self, sha: &str) -> Result<git2::Commit<'_>> {
        let oid = parse_sha(sha)?;
        let object = self
            .repo
            .find_object(oid, None)
            .map_err(|e| match e.code() {
                ErrorCode::NotFound => GitError::UnknownCommit(sha.to_owned()),
                _ => e.into(),
            })?;
        Ok(object.peel_to_commit()?)
    }
}

/// Accepts only full ref names under `refs/` that git itself would accept. This also rules
/// out `:`, `*`, `..`, leading `+`, spaces and control characters, so a ref can be pasted
/// into a refspec safely.
fn validate_ref(name: &str) -> Result<()> {
    if name.starts_with("refs/") && git2::Reference::is_valid_name(name) {
        Ok(())
    } else {
        Err(GitError::InvalidRef(name.to_owned()))
    }
}

/// Full 40-character hex ids only: `Oid::from_str` would zero-pad a short or empty string
/// into a different, valid-looking id.
fn parse_sha(sha: &str) -> Result<Oid> {
    if sha.len() == 40 && sha.bytes().all(|b| b.is_ascii_hexdigit()) {
        Oid::from_str(sha).map_err(|_| GitError::InvalidSha(sha.to_owned()))
    } else {
        Err(GitError::InvalidSha(sha.to_owned()))
    }
}

/// `https://user:token@host/x.git` → `https://***@host/x.git`, so credentials embedded in a
/// clone URL never reach a log line or an API error.
pub fn redact_url(url: &str) -> String {
    let Some(scheme_end) = url.find("://") else {
        return url.to_owned();
    };
    let authority_start = scheme_end + 3;
    let authority_end = url[authority_start..]
        .find('/')
        .map_or(url.len(), |i| authority_start + i);
    match url[authority_start..authority_end].rfind('@') {
        Some(at) => format!(
            "{}***{}",
            &url[..authority_start],
            &url[authority_start + at..]
        ),
        None => url.to_owned(),
    }
}

/// One async mutex per mirror directory: fetches of one mirror must not overlap (they
/// race on ref lock files), and the planner, the cron worker and manual triggers all
/// fetch. Hold the guard around the blocking fetch.
pub async fn lock_mirror(dir: &Path) -> tokio::sync::OwnedMutexGuard<()> {
    type Locks = HashMap<PathBuf, Arc<tokio::sync::Mutex<()>>>;
    static LOCKS: LazyLock<std::sync::Mutex<Locks>> = LazyLock::new(Default::default);
    let lock = {
        let mut map = LOCKS.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(dir.to_owned()).or_default().clone()
    };
    lock.lock_owned().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refs_are_validated_before_reaching_a_refspec() {
        for ok in [
            "refs/heads/main",
            "refs/tags/v1.0",
            "refs/pull/7/head",
            "refs/merge-requests/7/head",
            "refs/heads/feature/x",
        ] {
            assert!(validate_ref(ok).is_ok(), "{ok}");
        }
        for bad in [
            "main",
            "HEAD",
            "refs/heads/a:refs/heads/b",
            "+refs/heads/a",
            "refs/heads/*",
            "refs/heads/a..b",
            "refs/heads/a b",
            "",
            "refs/heads/x\n",
        ] {
            assert!(validate_ref(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn shas_must_be_full() {
        assert!(parse_sha("abc").is_err());
        assert!(parse_sha("").is_err());
        assert!(parse_sha(&"g".repeat(40)).is_err());
        assert!(parse_sha(&"a".repeat(40)).is_ok());
    }

    #[test]
    fn urls_are_redacted() {
        assert_eq!(
            redact_url("https://u:tok@example.com/a.git"),
            "https://***@example.com/a.git"
        );
        assert_eq!(
            redact_url("https://example.com/a@b.git"),
            "https://example.com/a@b.git"
        );
        assert_eq!(redact_url("ssh://git@host:22/x"), "ssh://***@host:22/x");
        assert_eq!(redact_url("/srv/git/x.git"), "/srv/git/x.git");
        assert_eq!(redact_url("file:///srv/x"), "file:///srv/x");
    }
}
