//! Finding and reading pipeline files, from a working tree or from a commit.
//!
//! Which paths count as pipeline files is decided by `pipelines::is_pipeline_path`, so
//! the CLI and the server can never disagree about it; this module only does the I/O.

use std::path::{Path, PathBuf};

/// One pipeline file: its repository-relative path (`/`-separated) and its text.
pub type PipelineFile = (String, String);

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid UTF-8")]
    NotUtf8 { path: String },
    #[error("no pipeline file in {0} (looked for .slipway.yml and .slipway/*.yml)")]
    NoneFound(PathBuf),
    #[error("git: {0}")]
    Git(#[from] git2::Error),
    #[error(transparent)]
    Commit(#[from] crate::git::GitError),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Reads the pipeline files of `target`: a single file (validated as-is, whatever its
/// name) or a repository directory (`.slipway.yml` and `.slipway/*.yml|yaml`).
pub fn from_path(target: &Path) -> Result<Vec<PipelineFile>> {
    if target.is_file() {
        let name = target.to_string_lossy().into_owned();
        return Ok(vec![(name, read(target)?)]);
    }
    let mut candidates = Vec::new();
    for name in [".slipway.yml", ".slipway.yaml"] {
        candidates.push(name.to_string());
    }
    let dir = target.join(".slipway");
    if dir.is_dir() {
        let entries = std::fs::read_dir(&dir).map_err(|source| Error::Io {
            path: dir.clone(),
            source,
        })?;
        for entry in entries.flatten() {
            candidates.push(format!(".slipway/{}", entry.file_name().to_string_lossy()));
        }
    }
    candidates.sort();
    let mut files = Vec::new();
    for rel in candidates {
        let full = target.join(&rel);
        if pipelines::is_pipeline_path(&rel) && full.is_file() {
            let text = read(&full)?;
            files.push((rel, text));
        }
    }
    if files.is_empty() {
        return Err(Error::NoneFound(target.to_path_buf()));
    }
    Ok(files)
}

/// Reads the pipeline files from the tree of `rev` in the repository at `repo_path` —
/// never from the working tree, so what runs is exactly what was committed. Returns the
/// commit's full sha with the files.
pub fn from_commit(repo_path: &Path, rev: &str) -> Result<(String, Vec<PipelineFile>)> {
    let repo = git2::Repository::discover(repo_path)?;
    let commit = repo.revparse_single(rev)?.peel_to_commit()?;
    let files = crate::git::pipeline_files_of(&repo, &commit)?;
    if files.is_empty() {
        return Err(Error::NoneFound(repo_path.to_path_buf()));
    }
    Ok((commit.id().to_string(), files))
}

fn read(path: &Path) -> Result<String> {
    let bytes = std::fs::read(path).map_err(|source| Error::Io {
        path: path.to_path_buf(),
        source,
    })?;
    String::from_utf8(bytes).map_err(|_| Error::NotUtf8 {
        path: path.to_string_lossy().into_owned(),
    })
}

/// What git knows about the working tree at `dir`, used to fill in the event context of
/// a local run: (commit sha, branch name). Both are `None` outside a repository.
pub fn git_head(dir: &Path) -> (Option<String>, Option<String>) {
    let Ok(repo) = git2::Repository::discover(dir) else {
        return (None, None);
    };
    let Ok(head) = repo.head() else {
        return (None, None);
    };
    let sha = head.peel_to_commit().ok().map(|c| c.id().to_string());
    let branch = head
        .is_branch()
        .then(|| head.shorthand().ok().map(str::to_string))
        .flatten();
    (sha, branch)
}

/// The message (trimmed) and author name of commit `rev` in the repository at `dir`,
/// as `slipway hook` reports a pushed commit to the server (`${{ git.message }}`,
/// `${{ git.author }}`). `None`s outside a repository or for an unknown `rev`.
pub fn commit_message_author(dir: &Path, rev: &str) -> (Option<String>, Option<String>) {
    let Ok(repo) = git2::Repository::discover(dir) else {
        return (None, None);
    };
    let Ok(commit) = repo
        .revparse_single(rev)
        .and_then(|object| object.peel_to_commit())
    else {
        return (None, None);
    };
    let message = String::from_utf8_lossy(commit.message_bytes())
        .trim()
        .to_string();
    let author = String::from_utf8_lossy(commit.author().name_bytes())
        .trim()
        .to_string();
    (Some(message), Some(author))
}
