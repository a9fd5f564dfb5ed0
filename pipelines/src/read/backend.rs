//! What the backend a stage is bound to would refuse, known from the YAML alone. The
//! backend is the one a written `backend:` label in `runs_on` names, else the one the
//! stage's kind sends it to (the server's routing: image → docker). A deploy stage
//! with a rollout is bound to none: the server drives it, no runner runs it. The
//! backends keep refusing these themselves; here the author sees them at
//! `slipway validate`.

use super::paths::resolve;
use super::{Ctx, Fields};
use crate::diagnostic::{Pos, codes};
use crate::label::{BACKEND_LABEL_PREFIX, IMAGE_BACKEND};
use crate::model::{Stage, StageKind};

/// The backend `stage` runs on whatever the event, if its YAML decides it.
fn bound_backend(stage: &Stage) -> Option<&str> {
    let written = stage.runs_on.iter().find_map(|t| {
        (t.exprs().next().is_none())
            .then(|| t.source.strip_prefix(BACKEND_LABEL_PREFIX))
            .flatten()
    });
    if written.is_some() {
        return written;
    }
    if stage.runs_on.iter().any(|t| t.exprs().next().is_some()) {
        // Rendered at plan time: it may name a backend.
        return None;
    }
    Some(match stage.kind {
        StageKind::Image { .. } => IMAGE_BACKEND,
        StageKind::Run | StageKind::Scan { .. } | StageKind::Deploy { .. } => return None,
    })
}

/// `owner`: the stage's key, for what is missing.
pub(crate) fn check_backend(
    ctx: &mut Ctx<'_>,
    stage: &Stage,
    fields: &Fields<'_>,
    owner: Pos,
    what: &str,
) {
    let Some(backend) = bound_backend(stage) else {
        return;
    };
    if matches!(backend, "docker" | "kubernetes")
        && stage.image.is_none()
        && !stage.steps.is_empty()
    {
        ctx.missing(
            owner,
            what,
            "image",
            Some(format!(
                "{what} runs on the {backend} backend, which runs steps in containers: \
                 add `image:` with the image to run them in"
            )),
        );
    }
    if backend != "kubernetes" {
        return;
    }
    if let (Some(user), Some(f)) = (&stage.container.user, fields.get("user"))
        && !kubernetes_user_ok(user)
    {
        ctx.error(
            codes::INVALID_VALUE,
            f.value_pos(),
            format!("`user` `{user}` in {what} cannot run on the kubernetes backend"),
            Some(
                "pods run as a numeric, non-root `uid` or `\"uid:gid\"` (names cannot be \
                 looked up before the pod runs, and root is refused)"
                    .into(),
            ),
        );
    }
    if let StageKind::Image {
        dockerfile,
        context,
        ..
    } = &stage.kind
    {
        for (key, path) in [("context", context), ("dockerfile", dockerfile)] {
            // One that leaves the workspace is reported as such.
            if path.split('/').any(|c| c == "..") && resolve(path).is_ok() {
                let pos = fields.get(key).map_or(owner, |f| f.value_pos());
                ctx.error(
                    codes::INVALID_PATH,
                    pos,
                    format!("`{key}` `{path}` in {what} uses `..`, which the kubernetes backend cannot copy"),
                    Some("write the path without `..`: the builder pod gets the context and Dockerfile copied by name".into()),
                );
            }
        }
    }
}

/// `uid` or `uid:gid`, numbers, `uid` above 0: what the pod's security context takes.
fn kubernetes_user_ok(user: &str) -> bool {
    let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
    matches!((uid.parse::<i64>(), gid.parse::<i64>()), (Ok(u), Ok(g)) if u > 0 && g >= 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubernetes_users() {
        for ok in ["1000", "1000:1000", "1:0"] {
            assert!(kubernetes_user_ok(ok), "{ok}");
        }
        for bad in [
            "0",
            "0:1000",
            "root",
            "1000:staff",
            "-1",
            "1000:-1",
            "1000:",
        ] {
            assert!(!kubernetes_user_ok(bad), "{bad}");
        }
    }
}
