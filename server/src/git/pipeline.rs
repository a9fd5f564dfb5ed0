//! Reading pipeline files from a commit's tree.

use git2::{ObjectType, TreeEntry};

use super::{GitError, Mirror, Result};

/// Largest pipeline file read from a commit: the limit `pipelines::parse` applies (so
/// `slipway validate` refuses what the server refuses), checked here before the blob is
/// copied into memory.
pub const MAX_PIPELINE_FILE_BYTES: usize = pipelines::MAX_FILE_BYTES;

/// Blob file modes git records in trees (normal and executable files).
const MODE_BLOB: i32 = 0o100644;
const MODE_BLOB_EXECUTABLE: i32 = 0o100755;
const MODE_LINK: i32 = 0o120000;

impl Mirror {
    /// The pipeline files of commit `sha` as `(path, text)`, sorted by path (so the run's
    /// YAML digest is stable): `.slipway.yml` / `.slipway.yaml` at the root and
    /// `.slipway/<name>.yml|yaml` one level deep. Read from the commit's tree — the mirror has
    /// no working tree, and what runs is exactly what was committed.
    ///
    /// No pipeline file is `Ok(vec![])`: whether that is an error is the caller's call.
    /// A pipeline file that is not UTF-8, is a symlink, or is larger than
    /// [`MAX_PIPELINE_FILE_BYTES`] is [`GitError::PipelineFile`] naming the path.
    pub fn pipeline_files(&self, sha: &str) -> Result<Vec<(String, String)>> {
        let commit = self.commit(sha)?;
        pipeline_files_of(&self.repo, &commit)
    }
}

/// [`Mirror::pipeline_files`] for any repository, bare or not (`slipway exec --commit`
/// reads a developer's clone the same way the server reads its mirror).
pub fn pipeline_files_of(
    repo: &git2::Repository,
    commit: &git2::Commit<'_>,
) -> Result<Vec<(String, String)>> {
    {
        let sha = commit.id().to_string();
        let tree = commit.tree()?;

        // Look only where pipeline files can be instead of walking the whole tree: a monorepo
        // can have hundreds of thousands of entries.
        let mut candidates: Vec<(String, TreeEntry<'static>)> = Vec::new();
        for name in [".slipway.yml", ".slipway.yaml"] {
            if let Some(entry) = tree.get_name(name) {
                candidates.push((name.to_owned(), entry.to_owned()));
            }
        }
        if let Some(dir) = tree.get_name(".slipway")
            && dir.kind() == Some(ObjectType::Tree)
        {
            let dir = repo.find_tree(dir.id())?;
            for entry in dir.iter() {
                let name = String::from_utf8_lossy(entry.name_bytes());
                candidates.push((format!(".slipway/{name}"), entry.to_owned()));
            }
        }

        let mut files = Vec::new();
        for (path, entry) in candidates {
            if !pipelines::is_pipeline_path(&path) {
                continue;
            }
            let bad = |reason: &str| GitError::PipelineFile {
                sha: sha.clone(),
                path: path.clone(),
                reason: reason.to_owned(),
            };
            match entry.filemode() {
                MODE_BLOB | MODE_BLOB_EXECUTABLE => {}
                // Following a link could read a file outside the pipeline directory (or
                // nothing); forges do not follow them either.
                MODE_LINK => {
                    return Err(bad(
                        "is a symbolic link; pipeline files must be regular files",
                    ));
                }
                // A directory or submodule that happens to be named `x.yml` is not a file.
                _ => continue,
            }
            if std::str::from_utf8(entry.name_bytes()).is_err() {
                return Err(bad("the file name is not valid UTF-8"));
            }
            let blob = repo.find_blob(entry.id())?;
            if blob.size() > MAX_PIPELINE_FILE_BYTES {
                return Err(bad(&format!(
                    "is {} bytes; pipeline files are limited to {MAX_PIPELINE_FILE_BYTES} bytes",
                    blob.size()
                )));
            }
            let text = std::str::from_utf8(blob.content()).map_err(|e| {
                bad(&format!(
                    "is not valid UTF-8 (first invalid byte at offset {})",
                    e.valid_up_to()
                ))
            })?;
            files.push((path, text.to_owned()));
        }
        files.sort_by(|a, b| a.0.cmp(&b.0));
        Ok(files)
    }
}
