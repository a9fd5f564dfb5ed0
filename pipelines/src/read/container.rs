//! Where a stage runs and how its containers are set up: `runs_on`, `user`, `workdir`
//! and `resources`.

use marked_yaml::Node;

use super::{Allow, Ctx, Field, Fields, Scope, is_null, keys};
use crate::diagnostic::{codes, did_you_mean};
use crate::expr::Template;
use crate::label::{BACKEND_LABEL_PREFIX, BACKENDS, LABEL_HINT, backend_label, check_label};
use crate::model::Container;
use crate::quantity::{CPU_HINT, MEMORY_HINT, parse_cpu, parse_memory};
use crate::yaml::node_pos;

/// `runs_on: label` or `runs_on: [label, …]`. Labels without expressions are checked
/// here; ones with plan-time expressions (`${{ matrix.arch }}`) are rendered by `plan`.
pub(crate) fn read_runs_on(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    scope: &Scope<'_>,
    kind: Option<&str>,
) -> Vec<Template> {
    let items: Vec<&Node> = match f.value {
        _ if is_null(f.value) => return Vec::new(),
        Node::Scalar(_) => vec![f.value],
        Node::Sequence(items) => items.iter().collect(),
        Node::Mapping(_) => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`runs_on` in {what}"),
                "a label or a list of labels",
                f.value,
            );
            return Vec::new();
        }
    };
    let mut out = Vec::new();
    for item in items {
        let pos = if is_null(item) { f.pos } else { node_pos(item) };
        if !matches!(item, Node::Scalar(_)) || is_null(item) {
            ctx.wrong_type(
                pos,
                &format!("each item of `runs_on` in {what}"),
                "a label",
                item,
            );
            continue;
        }
        let Some(t) = ctx.template(
            item,
            pos,
            &format!("`runs_on` in {what}"),
            scope,
            Allow::Text,
        ) else {
            continue;
        };
        if t.exprs().next().is_none() {
            let label = t.source.trim();
            if let Err(e) = check_label(label) {
                ctx.error(
                    codes::INVALID_LABEL,
                    pos,
                    format!("invalid label in `runs_on` of {what}: {e}"),
                    Some(LABEL_HINT.into()),
                );
                continue;
            }
            if let Some(backend) = label.strip_prefix(BACKEND_LABEL_PREFIX) {
                if !BACKENDS.contains(&backend) {
                    let names: Vec<String> = BACKENDS.iter().map(|b| backend_label(b)).collect();
                    ctx.error(
                        codes::INVALID_LABEL,
                        pos,
                        format!("unknown backend `{backend}` in `runs_on` of {what}"),
                        did_you_mean(label, names.iter().map(String::as_str))
                            .or_else(|| Some(format!("backends are: {}", names.join(", ")))),
                    );
                    continue;
                }
                if backend == "local" && kind == Some("image") {
                    ctx.error(
                        codes::INVALID_LABEL,
                        pos,
                        format!(
                            "{what} builds an image, which the local backend cannot do (`backend:local`)"
                        ),
                        Some(
                            "remove `backend:local`: image stages go to `backend:docker` runners"
                                .into(),
                        ),
                    );
                    continue;
                }
                if backend != "kubernetes" && kind == Some("deploy") {
                    ctx.error(
                        codes::INVALID_LABEL,
                        pos,
                        format!(
                            "{what} deploys, which only the kubernetes backend can do (`{label}`)"
                        ),
                        Some(format!(
                            "remove `{label}`: deploy stages go to `backend:kubernetes` runners"
                        )),
                    );
                    continue;
                }
            }
            out.push(Template::literal(label));
        } else {
            out.push(t);
        }
    }
    out
}

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
