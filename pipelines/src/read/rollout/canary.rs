//! A canary: its traffic mode and its steps (`weight`, `pause`, `analysis`, `match`,
//! `mirror`), and which steps a traffic mode cannot do.
//!
//! What each mode can do, as upstream documents it:
//! - `replicas`: the share of pods behind the stable Service; there is no router, so
//!   neither `match` nor `mirror`.
//! - `nginx`: ingress-nginx's canary annotations on a second Ingress
//!   (user-guide/nginx-configuration/annotations.md, "Canary"): `canary-weight`;
//!   `canary-by-header` with `canary-by-header-value` matches a header's exact value;
//!   `canary-by-cookie` routes to the canary only when the cookie's value is `always`
//!   (`never`: never; anything else falls through to the weight), so a cookie match
//!   must ask for `always`. No mirroring among the canary annotations.
//! - `gateway`: a Gateway API HTTPRoute: `backendRefs` weights, `matches` (headers,
//!   exact), and the `RequestMirror` filter (with a percentage) — everything.
//!
//! Header values are compared exactly in both routers (`canary-by-header-value`, the
//! Gateway API's default `Exact` match); one that looks like a pattern gets a warning.

use marked_yaml::Node;

use super::super::{Ctx, Field, keys};
use super::analysis::read_analysis;
use super::fields::NameKind;
use crate::diagnostic::{Pos, Severity, codes, did_you_mean};
use crate::model::{CanaryStep, CanaryStrategy, RequestMatch, Traffic};
use crate::yaml::node_pos;

/// `canary:` under `strategy:`. `deployment`: the target's name, which a `gateway` or
/// `nginx` without a name routes by.
pub(super) fn read_canary_strategy(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    deployment: &str,
) -> Option<CanaryStrategy> {
    let fields = ctx.object(f, what, keys::CANARY_STRATEGY)?;
    let cwhat = format!("`canary` of {what}");
    let traffic = read_traffic(ctx, fields.get("traffic"), &cwhat, deployment);
    let background = match fields.get("analysis") {
        Some(a) => read_analysis(ctx, a, &cwhat, true).map(Some),
        None => Some(None),
    };
    let steps = read_steps(ctx, fields.get("steps"), f.pos, &cwhat, traffic.as_ref());
    Some(CanaryStrategy {
        traffic: traffic?,
        steps: steps?,
        background: background?,
    })
}

/// `traffic:` (`None`: not written, so `replicas`).
pub(super) fn read_traffic(
    ctx: &mut Ctx<'_>,
    f: Option<Field<'_>>,
    what: &str,
    deployment: &str,
) -> Option<Traffic> {
    let Some(f) = f else {
        return Some(Traffic::Replicas);
    };
    let named = |mode: &str, name: Option<String>| {
        let name = name.unwrap_or_else(|| deployment.to_string());
        match mode {
            "gateway" => Traffic::Gateway { route: name },
            _ => Traffic::Nginx { ingress: name },
        }
    };
    if let Node::Mapping(_) = f.value {
        let router = ctx.one_of(f, what, keys::TRAFFIC_ROUTER)?;
        let (key, name_key) = match router.key {
            "gateway" => (keys::GATEWAY, "route"),
            _ => (keys::NGINX, "ingress"),
        };
        let rwhat = format!("`traffic` of {what}");
        let fields = ctx.object(router, &rwhat, key)?;
        let name = match fields.get(name_key) {
            Some(n) => Some(ctx.k8s_name(
                n,
                &format!("`{}` of {rwhat}", router.key),
                NameKind::Subdomain,
            )?),
            None => None,
        };
        return Some(named(router.key, name));
    }
    let s = ctx.string(f, what)?;
    match s.as_str() {
        "replicas" => Some(Traffic::Replicas),
        "gateway" | "nginx" => Some(named(&s, None)),
        _ => {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("invalid `traffic` `{s}` in {what}"),
                did_you_mean(&s, keys::TRAFFIC.iter().copied()).or_else(|| {
                    Some(
                        "use `replicas`, `{ gateway: { route: NAME } }` or `{ nginx: { \
                         ingress: NAME } }`"
                            .into(),
                    )
                }),
            );
            None
        }
    }
}

/// `steps:` of a canary (`owner`: where to report it missing). `traffic`: `None` if
/// it was wrong (and reported), so what it can do is not checked.
pub(super) fn read_steps(
    ctx: &mut Ctx<'_>,
    f: Option<Field<'_>>,
    owner: Pos,
    what: &str,
    traffic: Option<&Traffic>,
) -> Option<Vec<CanaryStep>> {
    let Some(f) = f else {
        ctx.missing(
            owner,
            what,
            "steps",
            Some(
                "list the rollout, e.g. `steps: [ {weight: 20}, {pause: 2m}, {weight: 100} ]`"
                    .into(),
            ),
        );
        return None;
    };
    let Node::Sequence(items) = f.value else {
        ctx.wrong_type(
            f.value_pos(),
            &format!("`steps` in {what}"),
            "a list",
            f.value,
        );
        return None;
    };
    let mut steps = Vec::new();
    let mut ok = true;
    let mut last_weight: Option<(u8, Pos)> = None;
    for (i, item) in items.iter().enumerate() {
        let swhat = format!("canary step {} of {what}", i + 1);
        let pos = if super::super::is_null(item) {
            f.pos
        } else {
            node_pos(item)
        };
        let Node::Mapping(m) = item else {
            ctx.wrong_type(
                pos,
                &swhat,
                "a mapping with `weight`, `pause`, `analysis`, `match` or `mirror`",
                item,
            );
            ok = false;
            continue;
        };
        let list = ctx.entries(m);
        let sf = ctx.known(list, pos, &swhat, keys::CANARY_STEP);
        let [field] = sf.list.as_slice() else {
            if !sf.list.is_empty() || m.is_empty() {
                ctx.error(
                    codes::INVALID_VALUE,
                    pos,
                    format!(
                        "{swhat} must have exactly one of `weight`, `pause`, `analysis`, \
                         `match` or `mirror`"
                    ),
                    Some("write each as its own list item".into()),
                );
            }
            ok = false;
            continue;
        };
        let field = *field;
        let step = match field.key {
            "weight" => read_weight(ctx, field, &swhat, &mut last_weight),
            "pause" => ctx.pause(field, &swhat).map(CanaryStep::Pause),
            "analysis" => read_analysis(ctx, field, &swhat, false).map(CanaryStep::Analysis),
            "match" => read_match(ctx, field, &swhat, traffic).map(CanaryStep::Match),
            _ => read_mirror(ctx, field, &swhat, traffic),
        };
        match step {
            Some(s) => steps.push(s),
            None => ok = false,
        }
    }
    match last_weight {
        None if ok => {
            ctx.error(
                codes::INVALID_WEIGHT,
                f.pos,
                format!("{what} has no `weight` step"),
                Some("end the rollout with `- weight: 100`".into()),
            );
            ok = false;
        }
        Some((w, pos)) if w != 100 => {
            ctx.error(
                codes::INVALID_WEIGHT,
                pos,
                format!("the last canary weight in {what} is {w}, not 100"),
                Some(
                    "end the rollout with `- weight: 100` so the new version is fully promoted"
                        .into(),
                ),
            );
            ok = false;
        }
        _ => {}
    }
    ok.then_some(steps)
}

fn read_weight(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    last: &mut Option<(u8, Pos)>,
) -> Option<CanaryStep> {
    let pos = f.value_pos();
    let w = ctx.percent(f, &format!("`weight` in {what}"), 0, codes::INVALID_WEIGHT)?;
    let prev = last.replace((w, pos));
    if let Some((prev, _)) = prev
        && w < prev
    {
        ctx.error(
            codes::INVALID_WEIGHT,
            pos,
            format!("canary weight {w} in {what} is lower than the previous weight {prev}"),
            Some("weights must not decrease; a rollback is automatic when analysis fails".into()),
        );
        return None;
    }
    Some(CanaryStep::Weight { weight: w })
}

fn read_mirror(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    traffic: Option<&Traffic>,
) -> Option<CanaryStep> {
    let percent = ctx.percent(f, &format!("`mirror` in {what}"), 1, codes::INVALID_VALUE);
    if let Some(t @ (Traffic::Replicas | Traffic::Nginx { .. })) = traffic {
        let why = match t {
            Traffic::Replicas => "there is no router to copy requests with `replicas`",
            _ => "ingress-nginx's canary annotations cannot mirror",
        };
        ctx.error(
            codes::TRAFFIC_NOT_SUPPORTED,
            f.pos,
            format!(
                "{what} mirrors traffic, which `{}` traffic cannot do: {why}",
                t.name()
            ),
            Some(
                "use `traffic: { gateway: { route: NAME } }` (a Gateway API HTTPRoute's \
                 RequestMirror filter), or remove the step"
                    .into(),
            ),
        );
        return None;
    }
    percent.map(|percent| CanaryStep::Mirror { percent })
}

/// `match: { header: { NAME: VALUE } }` or `match: { cookie: { NAME: VALUE } }`.
fn read_match(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    traffic: Option<&Traffic>,
) -> Option<RequestMatch> {
    let on = ctx.one_of(f, what, keys::MATCH)?;
    let mwhat = format!("`match` of {what}");
    let Node::Mapping(m) = on.value else {
        ctx.wrong_type(
            on.value_pos(),
            &format!("`{}` in {mwhat}", on.key),
            &format!("a mapping of one {} name to its value", on.key),
            on.value,
        );
        return None;
    };
    let list = ctx.entries(m);
    let [entry] = list.as_slice() else {
        ctx.error(
            codes::INVALID_VALUE,
            list.get(1).map_or(on.value_pos(), |e| e.pos),
            format!("`{}` in {mwhat} must name exactly one {}", on.key, on.key),
            Some(format!(
                "write e.g. `{}: {{ {}: beta }}`; each match step sends one group to the new \
                 version",
                on.key,
                if on.key == "header" {
                    "x-user-group"
                } else {
                    "group"
                }
            )),
        );
        return None;
    };
    let name = entry.key.to_string();
    let value = ctx.scalar_text(
        entry.value,
        entry.value_pos(),
        &format!("`{name}` in {mwhat}"),
    )?;
    let header = on.key == "header";
    let mut ok = ctx.no_template(&name, entry.pos, &mwhat)
        & ctx.no_template(&value, entry.value_pos(), &mwhat);
    if let Err(e) = check_token(&name) {
        ctx.error(
            codes::INVALID_VALUE,
            entry.pos,
            format!("invalid {} name `{name}` in {mwhat}: {e}", on.key),
            Some(
                "header and cookie names are HTTP tokens: letters, digits and \
                 !#$%&'*+-.^_`|~"
                    .into(),
            ),
        );
        ok = false;
    }
    let bad_value = if header {
        check_header_value(&value)
    } else {
        check_cookie_value(&value)
    };
    if let Err(e) = bad_value {
        ctx.error(
            codes::INVALID_VALUE,
            entry.value_pos(),
            format!("invalid {} value `{value}` in {mwhat}: {e}", on.key),
            None,
        );
        ok = false;
    }
    match traffic {
        Some(Traffic::Replicas) => {
            ctx.error(
                codes::TRAFFIC_NOT_SUPPORTED,
                f.pos,
                format!(
                    "{what} matches requests by {}, which `replicas` traffic cannot do: \
                     there is no router to look at requests",
                    on.key
                ),
                Some(
                    "use `traffic: { gateway: { route: NAME } }`, or `{ nginx: { ingress: \
                     NAME } }` for a header match"
                        .into(),
                ),
            );
            ok = false;
        }
        Some(Traffic::Nginx { .. }) if !header && value != "always" => {
            ctx.error(
                codes::TRAFFIC_NOT_SUPPORTED,
                entry.value_pos(),
                format!(
                    "{what} matches cookie `{name}` with value `{value}`, which `nginx` \
                     traffic cannot do: ingress-nginx sends a request to the canary by cookie \
                     only when its value is `always` (`canary-by-cookie`)"
                ),
                Some(format!(
                    "write `cookie: {{ {name}: always }}` and set that cookie for the group, \
                     match a header (exact value), or use `traffic: {{ gateway: … }}`"
                )),
            );
            ok = false;
        }
        Some(t) if header && value.contains(['*', '|', '^', '$', '(', '[', '?', '+', '\\']) => {
            ctx.push(
                Severity::Warning,
                codes::TRAFFIC_NOT_SUPPORTED,
                entry.value_pos(),
                format!(
                    "header value `{value}` in {mwhat} is compared exactly, not as a pattern: \
                     `{}` traffic matches a header's whole value",
                    t.name()
                ),
                Some("write the exact value the group's requests carry".into()),
            );
        }
        _ => {}
    }
    let matched = if header {
        RequestMatch::Header { name, value }
    } else {
        RequestMatch::Cookie { name, value }
    };
    ok.then_some(matched)
}

/// An HTTP token (RFC 9110 §5.6.2), as the Gateway API's `HTTPHeaderName` pattern
/// spells it.
fn check_token(s: &str) -> Result<(), String> {
    if s.len() > 256 {
        return Err("it is longer than 256 characters".into());
    }
    match s
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".contains(*c)))
    {
        Some(c) => Err(format!("it contains {c:?}")),
        None if s.is_empty() => Err("it is empty".into()),
        None => Ok(()),
    }
}

/// Non-empty, at most 4096 characters (the Gateway API's limit), no control characters.
fn check_header_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    if s.len() > 4096 {
        return Err("it is longer than 4096 characters".into());
    }
    match s.chars().find(|c| c.is_control()) {
        Some(c) => Err(format!("it contains {c:?}")),
        None => Ok(()),
    }
}

/// A cookie-value's characters (RFC 6265 §4.1.1): no whitespace, `"`, `,`, `;` or `\`.
fn check_cookie_value(s: &str) -> Result<(), String> {
    if s.is_empty() {
        return Err("it is empty".into());
    }
    match s
        .chars()
        .find(|c| !c.is_ascii() || c.is_ascii_control() || " \",;\\".contains(*c))
    {
        Some(c) => Err(format!("it contains {c:?}")),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_and_values() {
        assert!(check_token("x-user-group").is_ok());
        assert!(check_token("X_Beta.1").is_ok());
        for bad in ["", "a b", "a:b", "a/b", "grüße"] {
            assert!(check_token(bad).is_err(), "{bad:?}");
        }
        assert!(check_header_value("beta users").is_ok());
        assert!(check_header_value("a\tb").is_err());
        assert!(check_cookie_value("beta").is_ok());
        for bad in ["", "a b", "a;b", "a,b", "\"a\""] {
            assert!(check_cookie_value(bad).is_err(), "{bad:?}");
        }
    }
}
