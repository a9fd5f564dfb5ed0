//! A push reference (`[registry/]name[:tag]`) checked and split for the engine, and
//! the registry credentials that go with it.

use bollard::auth::DockerCredentials;

use crate::error::{Error, Result};
use crate::spec::ImageSpec;

/// A push reference split the way the engine's push API wants it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reference {
    /// `registry/team/app` (everything before the tag).
    pub(crate) repository: String,
    pub(crate) tag: String,
    /// The registry host credentials are for (`docker.io` when none is named).
    pub(crate) registry: String,
}

impl Reference {
    pub(crate) fn parse(reference: &str) -> Result<Reference> {
        let bad = |why: &str| Error::InvalidSpec(format!("image push `{reference}`: {why}"));
        if reference.is_empty() {
            return Err(bad("is empty"));
        }
        if reference
            .chars()
            .any(|c| c.is_whitespace() || c.is_control())
        {
            return Err(bad("contains whitespace"));
        }
        if reference.contains('@') {
            return Err(bad(
                "must be a tag (`registry/app:tag`), not a digest: the digest is the result",
            ));
        }
        // A `:` after the last `/` starts the tag; one before it is a registry port.
        let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
        let (repository, tag) = match reference[last_slash..].rfind(':') {
            Some(i) => (
                &reference[..last_slash + i],
                &reference[last_slash + i + 1..],
            ),
            None => (reference, "latest"),
        };
        if repository.is_empty() || repository.ends_with('/') || tag.is_empty() {
            return Err(bad("expected `[registry/]name[:tag]`"));
        }
        // Docker's rule: the first component is a registry host when it looks like one.
        let (registry, path) = match repository.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first, rest)
            }
            _ => ("docker.io", repository),
        };
        // Checked before building, so a typo fails in a second, not after the build.
        let component_ok = |c: &str| {
            !c.is_empty()
                && c.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
                && c.as_bytes()[0].is_ascii_alphanumeric()
                && c.as_bytes()[c.len() - 1].is_ascii_alphanumeric()
        };
        if !path.split('/').all(component_ok) {
            return Err(bad(
                "the repository name may only use lower-case letters, digits and `._-` \
                 between `/`, each part starting and ending with a letter or digit",
            ));
        }
        let tag_ok = tag.len() <= 128
            && tag.as_bytes()[0] != b'.'
            && tag.as_bytes()[0] != b'-'
            && tag
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
        if !tag_ok {
            return Err(bad(
                "the tag may only use letters, digits and `_.-` (not first: `.-`), at most 128",
            ));
        }
        Ok(Reference {
            repository: repository.to_owned(),
            tag: tag.to_owned(),
            registry: registry.to_owned(),
        })
    }

    pub(crate) fn full(&self) -> String {
        format!("{}:{}", self.repository, self.tag)
    }

    /// The `serveraddress` the engine matches credentials against.
    pub(crate) fn server_address(&self) -> String {
        if self.registry == "docker.io" {
            "https://index.docker.io/v1/".to_owned()
        } else {
            self.registry.clone()
        }
    }
}

pub(super) fn credentials(reference: &Reference, spec: &ImageSpec) -> Option<DockerCredentials> {
    spec.registry_auth.as_ref().map(|auth| DockerCredentials {
        username: Some(auth.username.clone()),
        password: Some(auth.password.clone()),
        serveraddress: Some(reference.server_address()),
        ..Default::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = Reference::parse("127.0.0.1:5000/team/app:v1").unwrap();
        assert_eq!(
            (r.repository.as_str(), r.tag.as_str(), r.registry.as_str()),
            ("127.0.0.1:5000/team/app", "v1", "127.0.0.1:5000")
        );
        let r = Reference::parse("127.0.0.1:5000/app").unwrap();
        assert_eq!(
            (r.tag.as_str(), r.registry.as_str()),
            ("latest", "127.0.0.1:5000")
        );
        let r = Reference::parse("team/app:1.0").unwrap();
        assert_eq!(r.registry, "docker.io");
        assert_eq!(r.server_address(), "https://index.docker.io/v1/");
        let r = Reference::parse("localhost/app").unwrap();
        assert_eq!(r.registry, "localhost");
        for bad in [
            "",
            "reg/app@sha256:abc",
            "reg/app:",
            "reg/",
            "a b",
            ":tag",
            "127.0.0.1:5000/MyApp:v1",
            "reg.io/team//app",
            "reg.io/-app",
            "reg.io/app:-v1",
            "reg.io/app:v/1",
        ] {
            let err = Reference::parse(bad).unwrap_err();
            assert!(matches!(err, Error::InvalidSpec(_)), "{bad:?}: {err}");
        }
    }
}
