//! Artifacts out of a stage's pod, selected inside it: the workspace is listed in
//! the `workspace` container ([`listing`]), the globs are matched against the
//! listing here by [`crate::artifacts::select`] (the rules every backend uses), and
//! only the selected files come back, as one tar streamed straight into the
//! destination. No copy of the workspace ever lands on the runner's disk.
//!
//! The names go to the pod on stdin, NUL-separated (any byte but NUL may be in a
//! name), read size-terminated as every input is (see [`copy`]); `xargs -0` hands
//! them to `tar -h`, which stores a selected symlink as the file it points to, as
//! the host walk copies a link's target. `xargs` may run `tar` more than once:
//! the archives come one after the other, read through their end blocks.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
use std::path::{Component, Path};

use tokio::io::AsyncReadExt;

use super::copy::{self, Input};
use super::listing::{self, Listing};
use super::{KubeStage, KubernetesBackend, names, pod};
use crate::artifacts::{self, Artifact};
use crate::error::{Error, Result};

impl KubernetesBackend {
    /// [`crate::Backend::collect_artifacts`] of `stage` once its `workspace`
    /// container runs.
    pub(super) async fn collect_from_pod(
        &self,
        stage: &KubeStage,
        globs: &[String],
        dest: &Path,
    ) -> Result<Vec<Artifact>> {
        let set = artifacts::glob_set(globs)?;
        if globs.is_empty() {
            return Ok(Vec::new());
        }
        let raw = copy::exec(
            &self.inner.pods,
            &stage.pod,
            names::WORKSPACE_CONTAINER,
            &["sh", "-c", &listing::script(pod::WORKSPACE)],
            None,
            |stdout| async move {
                let mut raw = Vec::new();
                let read = stdout
                    .take(listing::MAX_LISTING_BYTES + 1)
                    .read_to_end(&mut raw)
                    .await;
                read.map_err(|e| Error::io("reading the workspace listing", e))?;
                if raw.len() as u64 > listing::MAX_LISTING_BYTES {
                    return Err(Error::Backend {
                        op: "collect_artifacts",
                        message: format!(
                            "the workspace has more names than fit in {} MiB; \
                             collect fewer files (a directory's archive instead)",
                            listing::MAX_LISTING_BYTES >> 20
                        ),
                    });
                }
                Ok(raw)
            },
        )
        .await?;
        let globs_owned = globs.to_vec();
        let selected = tokio::task::spawn_blocking(move || {
            let listing = Listing::parse(&raw)?;
            artifacts::select(&listing, &globs_owned, &set)
        })
        .await
        .map_err(join_err)??;
        if selected.is_empty() {
            tracing::warn!(globs = ?globs, "artifact globs matched no files");
            return Ok(Vec::new());
        }
        let wanted: BTreeSet<String> = selected.into_keys().collect();
        let mut names = Vec::new();
        for rel in &wanted {
            names.extend_from_slice(b"./");
            names.extend_from_slice(rel.as_bytes());
            names.push(0);
        }
        let input = Input::bytes(names);
        let script = format!(
            "cd '{}' && {} | xargs -0 -r tar -c -h -f -",
            pod::WORKSPACE,
            input.reader()
        );
        let dest = dest.to_path_buf();
        copy::exec(
            &self.inner.pods,
            &stage.pod,
            names::WORKSPACE_CONTAINER,
            &["sh", "-c", &script],
            Some(input),
            |stdout| async move {
                let bridge = tokio_util::io::SyncIoBridge::new(stdout);
                tokio::task::spawn_blocking(move || receive(bridge, &wanted, &dest))
                    .await
                    .map_err(join_err)?
            },
        )
        .await
    }
}

fn join_err(e: tokio::task::JoinError) -> Error {
    Error::Backend {
        op: "collect_artifacts",
        message: e.to_string(),
    }
}

fn refused(path: &str, reason: &str) -> Error {
    Error::Artifact {
        path: path.to_owned(),
        reason: format!("refused in the archive from the pod: {reason}"),
    }
}

/// Writes the files of `archive` into `dest`, accepting exactly the `wanted`
/// paths as regular files (or hard links to one already written), each once.
/// Returns them sorted by path. Blocking.
fn receive(archive: impl Read, wanted: &BTreeSet<String>, dest: &Path) -> Result<Vec<Artifact>> {
    let mut ar = tar::Archive::new(archive);
    ar.set_ignore_zeros(true);
    let mut got: BTreeMap<String, Artifact> = BTreeMap::new();
    let read_err = |e| Error::io("reading the artifacts archive from the pod", e);
    for entry in ar.entries().map_err(read_err)? {
        let mut entry = entry.map_err(read_err)?;
        let raw = entry.path().map_err(read_err)?.into_owned();
        let rel = entry_name(&raw)?;
        if !wanted.contains(&rel) || got.contains_key(&rel) {
            return Err(refused(&rel, "not asked for, or sent twice"));
        }
        let target = dest.join(&rel);
        let mode = fs::Permissions::from_mode(entry.header().mode().unwrap_or(0o644) & 0o777);
        let artifact = match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                artifacts::write_hashed(&mut entry, &rel, &target, mode, rel.clone())?
            }
            tar::EntryType::Link => {
                let link = entry
                    .link_name()
                    .map_err(read_err)?
                    .ok_or_else(|| refused(&rel, "a hard link without a target"))?;
                let first = entry_name(&link)?;
                if !got.contains_key(&first) {
                    return Err(refused(&rel, "a hard link to a file not sent before"));
                }
                let src = dest.join(&first);
                let file = fs::File::open(&src)
                    .map_err(|e| Error::io(format!("opening {}", src.display()), e))?;
                artifacts::write_hashed(file, &first, &target, mode, rel.clone())?
            }
            _ => return Err(refused(&rel, "not a regular file")),
        };
        got.insert(rel, artifact);
    }
    if let Some(missing) = wanted.iter().find(|w| !got.contains_key(*w)) {
        return Err(Error::Artifact {
            path: missing.clone(),
            reason: "listed in the pod's workspace but missing from its archive".into(),
        });
    }
    Ok(got.into_values().collect())
}

/// An entry's name as a relative `/`-separated path (a leading `./` dropped);
/// anything else is refused.
fn entry_name(raw: &Path) -> Result<String> {
    let mut parts = Vec::new();
    for c in raw.components() {
        match c {
            Component::CurDir => {}
            Component::Normal(n) => parts.push(
                n.to_str()
                    .ok_or_else(|| refused(&raw.display().to_string(), "a non-UTF-8 name"))?,
            ),
            _ => {
                return Err(refused(
                    &raw.display().to_string(),
                    "not a plain relative name",
                ));
            }
        }
    }
    Ok(parts.join("/"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tar_of(entries: &[(&str, tar::EntryType, &[u8], Option<&str>)]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (name, kind, data, link) in entries {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(*kind);
            h.set_mode(0o640);
            h.set_size(data.len() as u64);
            if let Some(l) = link {
                h.set_link_name(l).unwrap();
            }
            h.set_path(name).unwrap();
            h.set_cksum();
            b.append(&h, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn wanted(names: &[&str]) -> BTreeSet<String> {
        names.iter().map(|n| n.to_string()).collect()
    }

    #[test]
    fn receives_concatenated_archives_and_hard_links() {
        use tar::EntryType::*;
        let mut archive = tar_of(&[("./out/a.txt", Regular, b"hello", None)]);
        archive.extend(tar_of(&[("./out/b.txt", Link, b"", Some("./out/a.txt"))]));
        let dest = tempfile::tempdir().unwrap();
        let got = receive(
            &archive[..],
            &wanted(&["out/a.txt", "out/b.txt"]),
            dest.path(),
        )
        .unwrap();
        let paths: Vec<_> = got.iter().map(|a| a.path.as_str()).collect();
        assert_eq!(paths, ["out/a.txt", "out/b.txt"]);
        assert_eq!(got[0].sha256, got[1].sha256);
        assert_eq!(fs::read(dest.path().join("out/b.txt")).unwrap(), b"hello");
        let mode = fs::metadata(dest.path().join("out/a.txt"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o640);
    }

    #[test]
    fn refuses_what_was_not_asked_for() {
        use tar::EntryType::*;
        let cases = [
            tar_of(&[("./other", Regular, b"x", None)]),
            tar_of(&[("./a", Symlink, b"", Some("/etc/passwd"))]),
            tar_of(&[("./a", Regular, b"x", None), ("./a", Regular, b"y", None)]),
            tar_of(&[("./a", Link, b"", Some("./elsewhere"))]),
            // Asked for, never sent.
            tar_of(&[]),
        ];
        for (i, archive) in cases.iter().enumerate() {
            let dest = tempfile::tempdir().unwrap();
            let err = receive(&archive[..], &wanted(&["a"]), dest.path()).unwrap_err();
            assert!(matches!(err, Error::Artifact { .. }), "case {i}: {err}");
        }
    }
}
