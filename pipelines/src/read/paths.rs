//! Workspace paths written in YAML: artifact, cache and SARIF globs, and an image's
//! `context` and `dockerfile`. The runner refuses the same ones when it meets them
//! (`runner::artifacts`, `runner::image_build`) and keeps doing so; checked here, a
//! mistake shows at `slipway validate` instead of failing a stage.

use super::{Ctx, Field};
use crate::diagnostic::{Pos, codes};
use crate::when::check_glob;

const GLOB_HINT: &str =
    "write a glob relative to the workspace, e.g. `dist/**` or `target/release/app`";

/// Why the runner would refuse a glob: it could name something outside the workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    Empty,
    Absolute,
    Parent,
}

fn escapes(glob: &str) -> Option<Escape> {
    if glob.trim().is_empty() {
        Some(Escape::Empty)
    } else if glob.starts_with('/') {
        Some(Escape::Absolute)
    } else if glob.split('/').any(|seg| seg == "..") {
        Some(Escape::Parent)
    } else {
        None
    }
}

/// `artifacts`, `cache` or `sarif`: a glob or a list of globs inside the workspace.
pub(crate) fn workspace_globs(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (g, pos) in ctx.strings(f, what).unwrap_or_default() {
        if let Some(problem) = escapes(&g) {
            let message = match problem {
                Escape::Empty => format!("empty `{}` glob in {what}", f.key),
                Escape::Absolute => format!("`{}` glob `{g}` in {what} is absolute", f.key),
                Escape::Parent => format!(
                    "`{}` glob `{g}` in {what} leaves the workspace with `..`",
                    f.key
                ),
            };
            ctx.error(codes::INVALID_PATH, pos, message, Some(GLOB_HINT.into()));
            continue;
        }
        match check_glob(&g) {
            Ok(()) => out.push(g),
            Err(e) => ctx.error(
                codes::INVALID_GLOB,
                pos,
                format!("invalid glob `{g}` in `{}` of {what}: {e}", f.key),
                None,
            ),
        }
    }
    out
}

/// A path relative to the workspace as its components, `.` and `..` resolved; `Err`
/// if it is absolute or climbs out.
pub(crate) fn resolve(path: &str) -> Result<Vec<&str>, &'static str> {
    if path.starts_with('/') {
        return Err("is absolute");
    }
    let mut parts = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop().ok_or("leaves the workspace with `..`")?;
            }
            _ => parts.push(part),
        }
    }
    Ok(parts)
}

/// One of an image stage's paths: its value and where it was written (`None`: the
/// default was used).
pub(crate) struct ImagePath<'a> {
    pub value: &'a str,
    pub pos: Option<Pos>,
}

/// An image stage's `context` and `dockerfile`: inside the workspace, and the
/// Dockerfile a file (neither the workspace nor the context directory itself).
pub(crate) fn check_image_paths(
    ctx: &mut Ctx<'_>,
    context: ImagePath<'_>,
    dockerfile: ImagePath<'_>,
    what: &str,
    owner: Pos,
) {
    let hint = || Some("write a path relative to the workspace, e.g. `docker/Dockerfile`".into());
    let mut resolved = Vec::new();
    for (key, p) in [("context", &context), ("dockerfile", &dockerfile)] {
        match resolve(p.value) {
            Ok(parts) => resolved.push(parts),
            Err(problem) => ctx.error(
                codes::INVALID_PATH,
                p.pos.unwrap_or(owner),
                format!("`{key}` `{}` in {what} {problem}", p.value),
                hint(),
            ),
        }
    }
    let [context_parts, dockerfile_parts] = resolved.as_slice() else {
        return;
    };
    let names = if dockerfile_parts.is_empty() {
        Some("the workspace")
    } else if dockerfile_parts == context_parts {
        Some("the context directory")
    } else {
        None
    };
    if let Some(names) = names {
        ctx.error(
            codes::INVALID_PATH,
            dockerfile.pos.or(context.pos).unwrap_or(owner),
            format!(
                "`dockerfile` `{}` in {what} names {names}, not a file",
                dockerfile.value
            ),
            Some("name the Dockerfile itself, e.g. `dockerfile: docker/Dockerfile`".into()),
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_that_leave_the_workspace() {
        for bad in ["", "  ", "/etc/passwd", "../x", "out/../../x", "a/.."] {
            assert!(escapes(bad).is_some(), "{bad:?}");
        }
        for ok in ["dist/", "./out/*.txt", "**/*.sarif", "..a/b", "a/b.."] {
            assert_eq!(escapes(ok), None, "{ok:?}");
        }
    }

    #[test]
    fn resolving_paths() {
        assert_eq!(
            resolve("./app/../build/Dockerfile"),
            Ok(vec!["build", "Dockerfile"])
        );
        assert_eq!(resolve("."), Ok(vec![]));
        assert!(resolve("a/../../b").is_err());
        assert!(resolve("/").is_err());
    }
}
