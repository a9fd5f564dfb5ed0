//! The artifacts of the stages a stage needs, placed into its workspace as the server's
//! runners place them (`agent::files`): same paths (relative to the workspace), same
//! name rules ([`runner::safe_path`]), each checked against the sha256 recorded when it
//! was collected. The stage then runs on a copy of the source with the artifacts in it,
//! so the source (a working tree) is never written to.

use std::io::{Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use runner::{Artifact, Source};
use sha2::{Digest, Sha256};

/// One artifact a needed stage collected: `dir` is where `exec` keeps that stage's
/// artifacts.
#[derive(Debug, Clone)]
pub struct Input {
    /// The id of the stage that made it, for messages.
    pub stage: String,
    pub dir: PathBuf,
    pub artifact: Artifact,
}

/// A source with the inputs placed in it; removed on drop.
pub struct Prepared {
    dir: tempfile::TempDir,
}

impl Prepared {
    pub fn source(&self) -> Source {
        Source::Directory(self.dir.path().join("src"))
    }
}

impl Drop for Prepared {
    fn drop(&mut self) {
        // A git checkout has read-only files; remove_tree copes with them.
        let _ = runner::workspace::remove_tree(&self.dir.path().join("src"));
    }
}

/// Copies `source` into a new directory and places `inputs` in it. Blocking. The error
/// is the stage's failure reason.
pub fn prepare(source: &Source, inputs: &[Input]) -> Result<Prepared, String> {
    let dir = tempfile::Builder::new()
        .prefix("slipway-exec-inputs-")
        .tempdir()
        .map_err(|e| format!("creating a directory for the stage's inputs: {e}"))?;
    let src = dir.path().join("src");
    std::fs::create_dir(&src).map_err(|e| format!("creating {}: {e}", src.display()))?;
    let prepared = Prepared { dir };
    runner::workspace::prepare(source, &src).map_err(|e| format!("copying the source: {e}"))?;
    for input in inputs {
        place(&src, input).map_err(|why| {
            format!(
                "artifact {:?} of stage `{}`: {why}",
                input.artifact.path, input.stage
            )
        })?;
    }
    Ok(prepared)
}

fn place(root: &Path, input: &Input) -> Result<(), String> {
    let a = &input.artifact;
    runner::safe_path::check_name(&a.path)?;
    let from = input.dir.join(&a.path);
    let mut reader = std::fs::File::open(&from).map_err(|e| format!("{}: {e}", from.display()))?;
    let mode = reader
        .metadata()
        .map_err(|e| format!("{}: {e}", from.display()))?
        .permissions()
        .mode()
        & 0o777;
    // A symlink in the checkout on the way to the name is refused, never followed.
    let mut writer =
        runner::safe_path::create_file_in(root, &a.path, mode).map_err(|e| e.to_string())?;
    let mut hasher = Sha256::new();
    let mut size = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = reader.read(&mut buf).map_err(|e| e.to_string())?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
        writer.write_all(&buf[..n]).map_err(|e| e.to_string())?;
        size += n as u64;
    }
    writer.flush().map_err(|e| e.to_string())?;
    let sha = hex::encode(hasher.finalize());
    if sha != a.sha256 || size != a.size {
        return Err(format!(
            "changed since it was collected: {size} bytes with sha256 {sha}, expected {} bytes with {}",
            a.size, a.sha256
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn collected(dir: &Path, path: &str, content: &[u8]) -> Artifact {
        let file = dir.join(path);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(&file, content).unwrap();
        Artifact {
            path: path.into(),
            size: content.len() as u64,
            sha256: hex::encode(Sha256::digest(content)),
        }
    }

    #[test]
    fn inputs_land_in_a_copy_of_the_source_at_their_paths() {
        let tmp = tempfile::tempdir().unwrap();
        let source = tmp.path().join("source");
        std::fs::create_dir(&source).unwrap();
        std::fs::write(source.join("README"), "hi").unwrap();
        let made = tmp.path().join("made");
        let input = Input {
            stage: "build".into(),
            dir: made.clone(),
            artifact: collected(&made, "dist/app.bin", b"\x7fELF"),
        };
        let prepared = prepare(&Source::Directory(source.clone()), &[input]).unwrap();
        let Source::Directory(dir) = prepared.source() else {
            panic!("a directory source")
        };
        assert_eq!(std::fs::read(dir.join("dist/app.bin")).unwrap(), b"\x7fELF");
        assert_eq!(std::fs::read(dir.join("README")).unwrap(), b"hi");
        assert!(
            !source.join("dist").exists(),
            "the source is never written to"
        );
        drop(prepared);
        assert!(!dir.exists(), "removed when dropped");
    }

    #[test]
    fn a_changed_or_escaping_artifact_is_refused_with_its_name() {
        let tmp = tempfile::tempdir().unwrap();
        let made = tmp.path().join("made");
        let mut artifact = collected(&made, "out.txt", b"one");
        artifact.sha256 = hex::encode(Sha256::digest(b"two"));
        let changed = Input {
            stage: "build".into(),
            dir: made.clone(),
            artifact,
        };
        let err = prepare(&Source::Empty, &[changed]).err().unwrap();
        assert!(err.contains("\"out.txt\" of stage `build`"), "{err}");
        assert!(err.contains("changed since it was collected"), "{err}");

        let escaping = Input {
            stage: "build".into(),
            dir: made.clone(),
            artifact: Artifact {
                path: "../out.txt".into(),
                size: 3,
                sha256: String::new(),
            },
        };
        let err = prepare(&Source::Empty, &[escaping]).err().unwrap();
        assert!(err.contains("\"../out.txt\""), "{err}");
    }
}
