//! The image reference an image stage pushes to (`push:`), checked by the rules the
//! runner applies before it builds (`runner::image_build`): a mistake then shows at
//! `slipway validate`, not after a build. And the image a rollout deploys, which is
//! pinned by digest.

/// Why `reference` is not `[registry/]name[:tag]`, or `Ok`. A digest is refused: the
/// digest is what a push returns.
pub(crate) fn check_push_ref(reference: &str) -> Result<(), &'static str> {
    if reference.is_empty() {
        return Err("it is empty");
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Err("it contains whitespace");
    }
    if reference.contains('@') {
        return Err(
            "it names a digest; push to a tag (`registry/app:tag`): the digest is the result",
        );
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
        return Err("expected `[registry/]name[:tag]`");
    }
    // Docker's rule: the first component is a registry host when it looks like one.
    let path = match repository.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => rest,
        _ => repository,
    };
    let component_ok = |c: &str| {
        let b = c.as_bytes();
        b.first().is_some_and(u8::is_ascii_alphanumeric)
            && b.last().is_some_and(u8::is_ascii_alphanumeric)
            && b.iter()
                .all(|x| x.is_ascii_lowercase() || x.is_ascii_digit() || b"._-".contains(x))
    };
    if !path.split('/').all(component_ok) {
        return Err(
            "the repository name may only use lower-case letters, digits and `._-` between `/`, \
             each part starting and ending with a letter or digit",
        );
    }
    let tag_ok = tag.len() <= 128
        && !tag.starts_with(['.', '-'])
        && tag
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b));
    if !tag_ok {
        return Err(
            "the tag may only use letters, digits and `_.-` (not first: `.-`), at most 128 characters",
        );
    }
    Ok(())
}

/// Why `reference` is not `[registry/]name[:tag]@sha256:<64 hex>`, or `Ok`: a rollout
/// deploys exactly the bytes that were built and tested, never whatever a tag points
/// at by then.
pub(crate) fn check_digest_ref(reference: &str) -> Result<(), &'static str> {
    let Some((name, digest)) = reference.split_once('@') else {
        return Err("it has no digest; a rollout deploys an image by digest (`app:tag@sha256:…`)");
    };
    let hex = digest
        .strip_prefix("sha256:")
        .ok_or("the digest must be `sha256:` and 64 hexadecimal digits")?;
    if hex.len() != 64
        || !hex
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    {
        return Err("the digest must be `sha256:` and 64 lower-case hexadecimal digits");
    }
    check_push_ref(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_references() {
        let d = "0123456789abcdef".repeat(4);
        for ok in [
            format!("registry.example.com/app@sha256:{d}"),
            format!("app:1.2@sha256:{d}"),
            format!("127.0.0.1:5000/team/app:v1@sha256:{d}"),
        ] {
            assert_eq!(check_digest_ref(&ok), Ok(()), "{ok}");
        }
        for bad in [
            "app:1.2".to_string(),
            format!("app@sha512:{d}"),
            "app@sha256:abc".to_string(),
            format!("app@sha256:{}", d.to_uppercase()),
            format!("App@sha256:{d}"),
            format!("@sha256:{d}"),
        ] {
            assert!(check_digest_ref(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn references_the_runner_accepts() {
        for ok in [
            "127.0.0.1:5000/team/app:v1",
            "127.0.0.1:5000/app",
            "team/app:1.0",
            "localhost/app",
            "Registry.Example.com/app:V1_x",
        ] {
            assert_eq!(check_push_ref(ok), Ok(()), "{ok}");
        }
    }

    #[test]
    fn references_the_runner_refuses() {
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
            assert!(check_push_ref(bad).is_err(), "{bad:?}");
        }
        assert!(check_push_ref(&format!("app:{}", "t".repeat(129))).is_err());
    }
}
