//! Artifacts are scanned for the stage's secret values before they leave the runner:
//! a secret written into a file (a rendered config, a debug dump, a `.env`) would
//! otherwise be stored with the run and served to anyone who may read it, unmasked.
//! The masker's patterns are what is looked for, so the encoded forms it knows
//! (base64, hex, URL encoding) are found too. What is reported names the artifact
//! (its glob) and the file inside it, never the value.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use crate::artifacts::{Artifact, Matcher};
use crate::error::{Error, Result};
use crate::mask::Masker;

/// Bytes read per step of the scan.
const CHUNK: usize = 256 * 1024;

/// Where a secret was found: the declared artifact glob and the file path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretInArtifact {
    pub artifact: String,
    pub path: String,
}

impl std::fmt::Display for SecretInArtifact {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "artifact `{}` holds a secret value (in {}), so it is not uploaded; remove the \
             secret from the file, or set `allow_secrets_in_artifacts: true` on the stage",
            self.artifact, self.path
        )
    }
}

/// The first collected file (under `dir`, one of `collected`) selected by one of the
/// artifact `globs` that holds a secret `masker` knows. Files selected by no glob
/// (cache paths collected in the same pass) are not looked at. Blocking.
pub fn find(
    masker: &Masker,
    dir: &Path,
    collected: &[Artifact],
    globs: &[String],
) -> Result<Option<SecretInArtifact>> {
    if masker.is_empty() || globs.is_empty() {
        return Ok(None);
    }
    let matchers = globs
        .iter()
        .map(|g| Ok((g, Matcher::new(std::slice::from_ref(g))?)))
        .collect::<Result<Vec<_>>>()?;
    for artifact in collected {
        let Some((glob, _)) = matchers.iter().find(|(_, m)| m.is_match(&artifact.path)) else {
            continue;
        };
        if holds_secret(masker, &dir.join(&artifact.path))? {
            return Ok(Some(SecretInArtifact {
                artifact: (*glob).clone(),
                path: artifact.path.clone(),
            }));
        }
    }
    Ok(None)
}

/// Whether the file holds any of the masker's patterns, read in chunks that overlap
/// by the longest pattern less one byte, so a match across two reads is found.
fn holds_secret(masker: &Masker, file: &Path) -> Result<bool> {
    let io = |e| {
        Error::io(
            format!("scanning artifact {} for secrets", file.display()),
            e,
        )
    };
    let mut f = File::open(file).map_err(io)?;
    let keep = masker.max_pattern_len().saturating_sub(1);
    let mut buf = vec![0u8; keep + CHUNK];
    let mut have = 0;
    loop {
        let n = f.read(&mut buf[have..]).map_err(io)?;
        if n == 0 {
            return Ok(false);
        }
        have += n;
        if !masker.ranges(&buf[..have]).is_empty() {
            return Ok(true);
        }
        let tail = have.saturating_sub(keep);
        buf.copy_within(tail..have, 0);
        have -= tail;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(path: &str) -> Artifact {
        Artifact {
            path: path.into(),
            size: 0,
            sha256: String::new(),
        }
    }

    #[test]
    fn finds_plain_and_encoded_secrets_and_names_the_artifact() {
        let dir = tempfile::tempdir().unwrap();
        let secret = "s3cr3t-artifact-value";
        std::fs::create_dir_all(dir.path().join("dist")).unwrap();
        std::fs::write(dir.path().join("dist/app.bin"), vec![7u8; 3 * CHUNK]).unwrap();
        let masker = Masker::new(&[secret.into()]);
        let collected = [artifact("dist/app.bin"), artifact("dist/config.json")];
        let globs = ["dist/".to_string()];
        for content in [
            secret.to_string(),
            hex::encode(secret),
            hex::encode(secret).to_uppercase(),
        ] {
            // Across a chunk boundary.
            let mut bytes = vec![b'x'; CHUNK - 5];
            bytes.extend_from_slice(content.as_bytes());
            std::fs::write(dir.path().join("dist/config.json"), &bytes).unwrap();
            let found = find(&masker, dir.path(), &collected, &globs).unwrap();
            assert_eq!(
                found,
                Some(SecretInArtifact {
                    artifact: "dist/".into(),
                    path: "dist/config.json".into()
                })
            );
            assert!(!found.unwrap().to_string().contains(secret));
        }
        std::fs::write(dir.path().join("dist/config.json"), b"clean").unwrap();
        assert_eq!(find(&masker, dir.path(), &collected, &globs).unwrap(), None);
    }

    #[test]
    fn files_of_other_globs_are_not_scanned() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("target")).unwrap();
        std::fs::write(dir.path().join("target/cache"), b"s3cr3t-artifact-value").unwrap();
        let masker = Masker::new(&["s3cr3t-artifact-value".into()]);
        let found = find(
            &masker,
            dir.path(),
            &[artifact("target/cache")],
            &["dist/".to_string()],
        )
        .unwrap();
        assert_eq!(found, None);
    }
}
