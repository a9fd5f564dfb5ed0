//! How a stage's containers are set up: `user`, `workdir` and `resources`.

use marked_yaml::Node;

use super::{Ctx, Field, Fields, is_null, keys};
use crate::diagnostic::codes;
use crate::model::Container;
use crate::quantity::{CPU_HINT, MEMORY_HINT, parse_cpu, parse_disk, parse_memory};

/// `user`, `workdir` and `resources`.
pub(crate) fn read_container(ctx: &mut Ctx<'_>, fields: &Fields<'_>, what: &str) -> Container {
    let mut c = Container::default();
    if let Some(f) = fields.get("user") {
        c.user = read_user(ctx, f, what);
    }
    if let Some(f) = fields.get("workdir") {
        c.workdir = read_workdir(ctx, f, what);
    }
    if let Some(f) = fields.get("resources")
        && let Some(list) = ctx.mapping(f.value, f.value_pos(), &format!("`resources` in {what}"))
    {
        let rwhat = format!("`resources` of {what}");
        let res = ctx.known(list, f.pos, &rwhat, keys::RESOURCES);
        if let Some(m) = res.get("memory") {
            c.memory_bytes = quantity(ctx, m, &rwhat, parse_memory, MEMORY_HINT);
        }
        if let Some(cpu) = res.get("cpu") {
            c.cpu_millis = quantity(ctx, cpu, &rwhat, parse_cpu, CPU_HINT);
        }
        if let Some(disk) = res.get("disk") {
            c.disk_bytes = quantity(ctx, disk, &rwhat, parse_disk, MEMORY_HINT);
        }
    }
    c
}

fn quantity(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    parse: fn(&str) -> Result<u64, String>,
    hint: &str,
) -> Option<u64> {
    let text = match f.value {
        Node::Scalar(s) if !is_null(f.value) => s.as_str().to_string(),
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`{}` in {what}", f.key),
                "a quantity",
                f.value,
            );
            return None;
        }
    };
    match parse(&text) {
        Ok(v) => Some(v),
        Err(e) => {
            ctx.error(
                codes::INVALID_QUANTITY,
                f.value_pos(),
                format!("invalid `{}` in {what}: {e}", f.key),
                Some(hint.into()),
            );
            None
        }
    }
}

/// `1000`, `"1000:1000"` or a user name: no spaces, at most one `:`, plain characters.
fn read_user(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<String> {
    let user = match f.value {
        Node::Scalar(s) if !is_null(f.value) => s.as_str().trim().to_string(),
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`user` in {what}"),
                "a uid, `\"uid:gid\"` or a user name",
                f.value,
            );
            return None;
        }
    };
    let parts: Vec<&str> = user.split(':').collect();
    let plain = |p: &str| {
        !p.is_empty()
            && p.len() <= 64
            && p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'))
    };
    if parts.len() > 2 || !parts.iter().all(|p| plain(p)) {
        ctx.error(
            codes::INVALID_VALUE,
            f.value_pos(),
            format!("invalid `user` `{user}` in {what}"),
            Some(
                "write a uid (`1000`), `\"uid:gid\"` (`\"1000:1000\"`) or a user name known to the image"
                    .into(),
            ),
        );
        return None;
    }
    Some(user)
}

/// A relative directory inside the workspace, normalised (`./src/` → `src`); `.` is
/// the workspace itself (`None`).
fn read_workdir(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<String> {
    let dir = ctx.string(f, what)?;
    let problem = if dir.starts_with('/') {
        Some("is absolute")
    } else if dir.contains('\\') {
        Some("contains `\\` (use `/`)")
    } else if dir.contains('\0') || dir.chars().any(char::is_control) {
        Some("contains a control character")
    } else if dir.contains("${{") {
        Some("cannot contain expressions")
    } else if dir.split('/').any(|seg| seg == "..") {
        Some("leaves the workspace with `..`")
    } else {
        None
    };
    if let Some(problem) = problem {
        ctx.error(
            codes::INVALID_PATH,
            f.value_pos(),
            format!("`workdir` `{dir}` in {what} {problem}"),
            Some("write a directory relative to the workspace, e.g. `services/api`".into()),
        );
        return None;
    }
    let normal: Vec<&str> = dir
        .split('/')
        .filter(|seg| !seg.is_empty() && *seg != ".")
        .collect();
    (!normal.is_empty()).then(|| normal.join("/"))
}
