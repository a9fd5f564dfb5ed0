//! Where the Dockerfile is relative to the context, and the tar entry that carries
//! one from outside it.

use bytes::{Bytes, BytesMut};
use sha2::{Digest as _, Sha256};

use crate::error::{Error, Result};
use crate::spec::ImageSpec;

/// Where the Dockerfile is relative to the build context.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DockerfileLocation {
    /// Inside the context, at this `/`-separated path relative to it: the context tar
    /// already holds it.
    InContext(String),
    /// Outside the context: the caller must read `spec.dockerfile` from the workspace
    /// and pass it with [`BuildContext::with_dockerfile`].
    OutsideContext,
}

/// Says where `spec.dockerfile` is relative to `spec.context`, refusing paths that are
/// absolute or climb out of the workspace (a pipeline-author mistake, not retryable).
pub fn locate_dockerfile(spec: &ImageSpec) -> Result<DockerfileLocation> {
    let context = workspace_path(&spec.context, "context")?;
    let dockerfile = workspace_path(&spec.dockerfile, "dockerfile")?;
    if dockerfile.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "image dockerfile `{}` names the workspace, not a file",
            spec.dockerfile
        )));
    }
    match dockerfile.strip_prefix(context.as_slice()) {
        Some([]) => Err(Error::InvalidSpec(format!(
            "image dockerfile `{}` names the context directory, not a file",
            spec.dockerfile
        ))),
        Some(rest) => Ok(DockerfileLocation::InContext(rest.join("/"))),
        None => Ok(DockerfileLocation::OutsideContext),
    }
}

/// The components of a workspace-relative path with `.` and `..` resolved; refuses
/// absolute paths and paths escaping the workspace.
fn workspace_path<'a>(path: &'a str, what: &str) -> Result<Vec<&'a str>> {
    let bad = |why: &str| Error::InvalidSpec(format!("image {what} `{path}`: {why}"));
    if path.starts_with('/') {
        return Err(bad("must be relative to the workspace"));
    }
    if path.contains('\0') {
        return Err(bad("contains a NUL byte"));
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or_else(|| bad("escapes the workspace"))?;
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// A tar entry holding `dockerfile` under a name of its own (the Docker CLI does the
/// same for `-f` outside the context), to put before the context's entries: a tar is
/// a sequence of entries, so prepending one needs no rewriting of the rest. Returns
/// the name and the entry (header, content, padding to 512 bytes).
pub(super) fn dockerfile_entry(dockerfile: &[u8]) -> (String, Bytes) {
    let hash = hex::encode(Sha256::digest(dockerfile));
    let name = format!(".slipway-dockerfile-{}", &hash[..16]);
    let mut header = tar::Header::new_ustar();
    header
        .set_path(&name)
        .expect("a short ASCII name fits a ustar header");
    header.set_size(dockerfile.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(0);
    header.set_entry_type(tar::EntryType::Regular);
    header.set_cksum();
    let padding = (512 - dockerfile.len() % 512) % 512;
    let mut out = BytesMut::with_capacity(512 + dockerfile.len() + padding);
    out.extend_from_slice(header.as_bytes());
    out.extend_from_slice(dockerfile);
    out.extend_from_slice(&[0; 512][..padding]);
    (name, out.freeze())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn spec(dockerfile: &str, context: &str) -> ImageSpec {
        ImageSpec {
            dockerfile: dockerfile.into(),
            context: context.into(),
            target: None,
            build_args: BTreeMap::new(),
            labels: BTreeMap::new(),
            push: None,
            registry_auth: None,
        }
    }

    #[test]
    fn dockerfile_inside_or_outside_the_context() {
        use DockerfileLocation::*;
        let at = |d, c| locate_dockerfile(&spec(d, c)).unwrap();
        assert_eq!(at("Dockerfile", "."), InContext("Dockerfile".into()));
        assert_eq!(at("Dockerfile", ""), InContext("Dockerfile".into()));
        assert_eq!(
            at("./app/Dockerfile", "app"),
            InContext("Dockerfile".into())
        );
        assert_eq!(
            at("app/docker/../build/Dockerfile", "app/"),
            InContext("build/Dockerfile".into())
        );
        assert_eq!(at("docker/Dockerfile", "app"), OutsideContext);
        // `application` is not inside `app`: components, not string prefixes.
        assert_eq!(at("application/Dockerfile", "app"), OutsideContext);
    }

    #[test]
    fn dockerfile_paths_that_are_refused() {
        for (d, c) in [
            ("/etc/Dockerfile", "."),
            ("Dockerfile", "/"),
            ("../Dockerfile", "."),
            ("Dockerfile", "a/../../b"),
            ("app", "app"),
            (".", "."),
        ] {
            let err = locate_dockerfile(&spec(d, c)).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{d} {c}: {err}");
            assert!(!err.is_retryable());
        }
    }

    #[test]
    fn extra_dockerfile_is_a_valid_first_entry() {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_ustar();
        header.set_size(2);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, "hello.txt", &b"hi"[..])
            .unwrap();
        let tar = builder.into_inner().unwrap();

        let (name, entry) = dockerfile_entry(b"FROM scratch\n");
        let combined = [&entry[..], &tar[..]].concat();
        assert!(name.starts_with(".slipway-dockerfile-"));
        let mut archive = tar::Archive::new(&combined[..]);
        let entries: Vec<(String, Vec<u8>)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let mut e = e.unwrap();
                let path = e.path().unwrap().to_string_lossy().into_owned();
                let mut body = Vec::new();
                std::io::Read::read_to_end(&mut e, &mut body).unwrap();
                (path, body)
            })
            .collect();
        assert_eq!(
            entries,
            vec![
                (name, b"FROM scratch\n".to_vec()),
                ("hello.txt".into(), b"hi".to_vec())
            ]
        );
    }
}
