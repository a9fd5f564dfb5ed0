//! `analysis:` — the measurements that decide whether a new version is healthy: HTTP
//! checks (status, latency, a JSON field by RFC 9535 JSONPath) and Prometheus queries
//! compared to thresholds, every `interval`, `count` times, with the failures and
//! inconclusive results tolerated.
//!
//! JSONPaths are parsed with `serde_json_path` (RFC 9535) so a typo shows at
//! `slipway validate`; the model keeps the text, and the controller parses it again.

use marked_yaml::Node;

use super::super::{Ctx, Field, is_null, keys};
use crate::diagnostic::codes;
use crate::duration::{DURATION_MS_HINT, parse_duration_ms};
use crate::model::{Analysis, Check, CompareOp, HttpCheck, JsonCheck, PromCheck, Threshold};
use crate::yaml::node_pos;

const THRESHOLD_HINT: &str = "write a comparison and a number, e.g. \"< 0.05\" or \">= 99\" \
     (quoted: YAML reads a leading `>` as a folded block)";

/// `background`: a canary's analysis through all steps, whose `count` is optional.
pub(super) fn read_analysis(
    ctx: &mut Ctx<'_>,
    f: Field<'_>,
    what: &str,
    background: bool,
) -> Option<Analysis> {
    let fields = ctx.object(f, what, keys::ANALYSIS)?;
    let awhat = format!("`{}` of {what}", f.key);
    let mut ok = true;
    let mut checks = Vec::new();
    for (key, read) in [
        ("http", read_http as CheckReader),
        ("prometheus", read_prometheus),
    ] {
        let Some(cf) = fields.get(key) else { continue };
        for item in each(ctx, cf, &awhat) {
            match item.and_then(|item| read(ctx, item, &awhat)) {
                Some(c) => checks.push(c),
                None => ok = false,
            }
        }
    }
    if checks.is_empty() && ok {
        ctx.error(
            codes::MISSING_KEY,
            f.pos,
            format!("{awhat} has no check: it needs `http` or `prometheus`"),
            Some(
                "add `http: { url: http://app-canary/healthz }` or `prometheus: { address: \
                 http://prometheus:9090, query: …, pass: \"< 0.01\" }`"
                    .into(),
            ),
        );
        ok = false;
    }
    let interval_secs = match fields.get("interval") {
        Some(i) => ctx.duration(i, &awhat),
        None => Some(10),
    };
    let count = match fields.get("count") {
        Some(c) => match ctx.uint(c, &awhat) {
            Some(n @ 1..=1000) => Some(Some(n as u32)),
            Some(_) => {
                ctx.error(
                    codes::INVALID_VALUE,
                    c.value_pos(),
                    format!("`count` in {awhat} must be from 1 to 1000"),
                    None,
                );
                None
            }
            None => None,
        },
        None if background => Some(None),
        None => Some(Some(1)),
    };
    let failure_limit = match (fields.get("failure_limit"), fields.get("max_failures")) {
        (Some(_), Some(old)) => {
            ctx.error(
                codes::INVALID_VALUE,
                old.pos,
                format!("{awhat} has both `failure_limit` and `max_failures`"),
                Some("`max_failures` is the older name of `failure_limit`: keep one".into()),
            );
            None
        }
        (Some(l), None) | (None, Some(l)) => limit(ctx, l, &awhat),
        (None, None) => Some(0),
    };
    if let (Some(Some(count)), Some(limit)) = (count, failure_limit)
        && limit >= count
    {
        let at = fields
            .get("failure_limit")
            .or(fields.get("max_failures"))
            .map_or(f.pos, |l| l.value_pos());
        ctx.error(
            codes::INVALID_VALUE,
            at,
            format!(
                "{awhat} tolerates {limit} failed measurements of {count}, so it can never fail"
            ),
            Some(format!(
                "lower the failure limit below `count` ({count}), or raise `count`"
            )),
        );
        ok = false;
    }
    let inconclusive_limit = match fields.get("inconclusive_limit") {
        Some(l) => limit(ctx, l, &awhat),
        None => Some(0),
    };
    if !ok {
        return None;
    }
    Some(Analysis {
        checks,
        interval_secs: interval_secs?,
        count: count?,
        failure_limit: failure_limit?,
        inconclusive_limit: inconclusive_limit?,
    })
}

type CheckReader = fn(&mut Ctx<'_>, Field<'_>, &str) -> Option<Check>;

fn limit(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<u32> {
    ctx.uint(f, what).map(|n| n.min(u64::from(u32::MAX)) as u32)
}

/// One check or a list of them, each as a field named like the list (for messages).
fn each<'n>(ctx: &mut Ctx<'_>, f: Field<'n>, what: &str) -> Vec<Option<Field<'n>>> {
    match f.value {
        Node::Sequence(items) if !items.is_empty() => items
            .iter()
            .map(|item| {
                Some(Field {
                    key: f.key,
                    pos: if is_null(item) { f.pos } else { node_pos(item) },
                    value: item,
                })
            })
            .collect(),
        Node::Mapping(_) => vec![Some(f)],
        Node::Sequence(_) => {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("`{}` in {what} is an empty list", f.key),
                Some(format!(
                    "write one `{}` check, or remove `{}`",
                    f.key, f.key
                )),
            );
            vec![None]
        }
        _ => {
            ctx.wrong_type(
                f.value_pos(),
                &format!("`{}` in {what}", f.key),
                "a mapping or a list of mappings",
                f.value,
            );
            vec![None]
        }
    }
}

fn read_http(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Check> {
    let fields = ctx.object(f, what, keys::HTTP)?;
    let hwhat = format!("`http` check of {what}");
    let url = match fields.get("url") {
        Some(u) => http_url(ctx, u, &hwhat),
        None => {
            ctx.missing(
                f.pos,
                &hwhat,
                "url",
                Some("e.g. `url: http://app-canary.shop/healthz`".into()),
            );
            None
        }
    };
    let expect_status = match fields.get("expect_status") {
        None => Some(200),
        Some(s) => match ctx.uint(s, &hwhat) {
            Some(n @ 100..=599) => Some(n as u16),
            Some(n) => {
                ctx.error(
                    codes::INVALID_VALUE,
                    s.value_pos(),
                    format!("`expect_status` {n} in {hwhat} is not an HTTP status"),
                    Some("HTTP statuses are 100 to 599".into()),
                );
                None
            }
            None => None,
        },
    };
    let max_latency_ms = match fields.get("max_latency") {
        None => Some(None),
        Some(l) => latency(ctx, l, &hwhat).map(Some),
    };
    let json = match fields.get("json") {
        None => Some(None),
        Some(j) => read_json(ctx, j, &hwhat).map(Some),
    };
    Some(Check::Http(HttpCheck {
        url: url?,
        expect_status: expect_status?,
        max_latency_ms: max_latency_ms?,
        json: json?,
    }))
}

fn latency(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<u64> {
    let text = ctx.string(f, what)?;
    match parse_duration_ms(&text) {
        Ok(ms) => Some(ms),
        Err(e) => {
            ctx.error(
                codes::INVALID_DURATION,
                f.value_pos(),
                format!("invalid duration `{text}` for `max_latency` in {what}: {e}"),
                Some(DURATION_MS_HINT.into()),
            );
            None
        }
    }
}

fn read_json(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<JsonCheck> {
    let fields = ctx.object(f, what, keys::JSON_CHECK)?;
    let jwhat = format!("`json` of {what}");
    let path = match fields.get("path") {
        Some(p) => ctx.plain(p, &jwhat).and_then(|path| {
            let parsed = if path.starts_with('$') {
                serde_json_path::JsonPath::parse(&path).map_err(|e| e.to_string())
            } else {
                Err("it does not start at the root, `$`".into())
            };
            match parsed {
                Ok(_) => Some(path),
                Err(e) => {
                    ctx.error(
                        codes::INVALID_VALUE,
                        p.value_pos(),
                        format!("invalid JSONPath `{path}` in {jwhat}: {e}"),
                        Some(
                            "JSONPath (RFC 9535) starts at `$`, e.g. `$.status` or \
                             `$.checks[0].ok`"
                                .into(),
                        ),
                    );
                    None
                }
            }
        }),
        None => {
            ctx.missing(f.pos, &jwhat, "path", Some("e.g. `path: $.status`".into()));
            None
        }
    };
    let equals = match fields.get("equals") {
        Some(e) => Some(to_json(e.value)),
        None => {
            ctx.missing(
                f.pos,
                &jwhat,
                "equals",
                Some("the value the field must have, e.g. `equals: ok`".into()),
            );
            None
        }
    };
    Some(JsonCheck {
        path: path?,
        equals: equals?,
    })
}

fn read_prometheus(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Check> {
    let fields = ctx.object(f, what, keys::PROMETHEUS)?;
    let pwhat = format!("`prometheus` check of {what}");
    let required = |ctx: &mut Ctx<'_>, key: &str, hint: &str| {
        let field = fields.get(key);
        if field.is_none() {
            ctx.missing(f.pos, &pwhat, key, Some(hint.into()));
        }
        field
    };
    let address = required(ctx, "address", "e.g. `address: http://prometheus:9090`")
        .and_then(|a| http_url(ctx, a, &pwhat));
    let query = required(
        ctx,
        "query",
        "a PromQL expression whose first sample is measured",
    )
    .and_then(|q| ctx.plain(q, &pwhat));
    let pass =
        required(ctx, "pass", "e.g. `pass: \"< 0.01\"`").and_then(|p| threshold(ctx, p, &pwhat));
    let fail = match fields.get("fail") {
        Some(p) => threshold(ctx, p, &pwhat).map(Some),
        None => Some(None),
    };
    let (Some(pass), Some(fail)) = (pass, fail) else {
        return None;
    };
    if let Some(fail) = fail
        && let Some(v) = overlap(&pass, &fail)
    {
        let at = fields.get("fail").map_or(f.pos, |x| x.value_pos());
        ctx.error(
            codes::INVALID_VALUE,
            at,
            format!("`pass` and `fail` in {pwhat} overlap: the value {v} would both pass and fail"),
            Some(
                "make the ranges disjoint, e.g. `pass: \"< 0.01\"` and `fail: \">= 0.05\"`".into(),
            ),
        );
        return None;
    }
    Some(Check::Prometheus(PromCheck {
        address: address?,
        query: query?,
        pass,
        fail,
    }))
}

fn threshold(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<Threshold> {
    let text = ctx.scalar_text(f.value, f.value_pos(), &format!("`{}` in {what}", f.key))?;
    match parse_threshold(&text) {
        Ok(t) => Some(t),
        Err(e) => {
            ctx.error(
                codes::INVALID_VALUE,
                f.value_pos(),
                format!("invalid threshold `{text}` for `{}` in {what}: {e}", f.key),
                Some(THRESHOLD_HINT.into()),
            );
            None
        }
    }
}

const OPS: &[(&str, CompareOp)] = &[
    ("<=", CompareOp::Le),
    (">=", CompareOp::Ge),
    ("==", CompareOp::Eq),
    ("!=", CompareOp::Ne),
    ("<", CompareOp::Lt),
    (">", CompareOp::Gt),
];

/// `< 0.05`, `>=99`, `== 1`: an operator, then a finite number.
pub(crate) fn parse_threshold(text: &str) -> Result<Threshold, String> {
    let t = text.trim();
    let Some((op_text, op)) = OPS.iter().find(|(o, _)| t.starts_with(o)) else {
        let word: String = t
            .chars()
            .take_while(|c| !c.is_ascii_digit() && !c.is_whitespace() && !matches!(c, '-' | '.'))
            .collect();
        return Err(match word.as_str() {
            "" => "it does not start with a comparison (<, <=, >, >=, ==, !=)".into(),
            "=" => "`=` is not a comparison; write `==`".into(),
            _ => format!("`{word}` is not one of <, <=, >, >=, ==, !="),
        });
    };
    let number = t[op_text.len()..].trim();
    match number.parse::<f64>() {
        Ok(value) if value.is_finite() => Ok(Threshold { op: *op, value }),
        _ if number.is_empty() => Err(format!("no number after `{op_text}`")),
        _ => Err(format!("`{number}` is not a number")),
    }
}

/// A value that satisfies both thresholds, if there is one. Each threshold is a
/// half-line, a point or all but a point, so a shared value, if any, is among the
/// bounds, their midpoint, or beyond both.
fn overlap(a: &Threshold, b: &Threshold) -> Option<f64> {
    let (lo, hi) = (a.value.min(b.value), a.value.max(b.value));
    [a.value, b.value, (lo + hi) / 2.0, lo - 1.0, hi + 1.0]
        .into_iter()
        .find(|v| a.holds(*v) && b.holds(*v))
}

/// An `http://` or `https://` URL with a host.
fn http_url(ctx: &mut Ctx<'_>, f: Field<'_>, what: &str) -> Option<String> {
    let text = ctx.plain(f, what)?;
    let problem = match url::Url::parse(&text) {
        Ok(u) if !matches!(u.scheme(), "http" | "https") => {
            Some(format!("its scheme is `{}`, not http or https", u.scheme()))
        }
        Ok(u) if u.host_str().is_none_or(str::is_empty) => Some("it has no host".into()),
        Ok(_) => None,
        Err(url::ParseError::RelativeUrlWithoutBase) => {
            Some("it has no scheme (`http://` or `https://`)".into())
        }
        Err(e) => Some(e.to_string()),
    };
    let Some(problem) = problem else {
        return Some(text);
    };
    ctx.error(
        codes::INVALID_VALUE,
        f.value_pos(),
        format!("invalid URL `{text}` for `{}` in {what}: {problem}", f.key),
        Some("write an http(s) URL, e.g. `http://app-canary.shop:8080/healthz`".into()),
    );
    None
}

/// A YAML value as JSON, plain scalars typed by the YAML 1.2 core schema (`ok` is a
/// string, `200` a number, `true` a boolean; quoted scalars stay strings).
fn to_json(node: &Node) -> serde_json::Value {
    use serde_json::Value;
    match node {
        Node::Scalar(s) if !s.may_coerce() => Value::String(s.as_str().to_string()),
        Node::Scalar(s) => match s.as_str() {
            "" | "~" | "null" | "Null" | "NULL" => Value::Null,
            "true" | "True" | "TRUE" => Value::Bool(true),
            "false" | "False" | "FALSE" => Value::Bool(false),
            v => v
                .parse::<i64>()
                .map(Value::from)
                .ok()
                .or_else(|| {
                    v.parse::<f64>()
                        .ok()
                        .filter(|f| f.is_finite())
                        .map(Value::from)
                })
                .unwrap_or_else(|| Value::String(v.to_string())),
        },
        Node::Sequence(items) => Value::Array(items.iter().map(to_json).collect()),
        Node::Mapping(m) => Value::Object(
            m.iter()
                .map(|(k, v)| (k.as_str().to_string(), to_json(v)))
                .collect(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn thresholds() {
        let t = |s: &str| parse_threshold(s).map(|t| (t.op, t.value));
        assert_eq!(t("< 0.01"), Ok((CompareOp::Lt, 0.01)));
        assert_eq!(t("<=5"), Ok((CompareOp::Le, 5.0)));
        assert_eq!(t(" >= 99 "), Ok((CompareOp::Ge, 99.0)));
        assert_eq!(t("== 1"), Ok((CompareOp::Eq, 1.0)));
        assert_eq!(t("!= -2.5e3"), Ok((CompareOp::Ne, -2500.0)));
        assert_eq!(t("> 0"), Ok((CompareOp::Gt, 0.0)));
        for bad in [
            "", "0.5", "= 1", "=> 1", "<", "< abc", "< inf", "< NaN", "~ 1",
        ] {
            assert!(parse_threshold(bad).is_err(), "{bad:?}");
        }
        assert_eq!(
            parse_threshold("= 1").unwrap_err(),
            "`=` is not a comparison; write `==`"
        );
    }

    #[test]
    fn overlaps() {
        let t = |s: &str| parse_threshold(s).unwrap();
        assert_eq!(overlap(&t("< 0.01"), &t(">= 0.05")), None);
        assert_eq!(overlap(&t("< 0.05"), &t(">= 0.05")), None);
        assert_eq!(overlap(&t("<= 0.05"), &t(">= 0.05")), Some(0.05));
        assert!(overlap(&t("< 0.05"), &t("> 0.01")).is_some());
        assert!(overlap(&t("< 0.05"), &t("< 0.01")).is_some());
        assert_eq!(overlap(&t("== 1"), &t("!= 1")), None);
        assert!(overlap(&t("!= 1"), &t("!= 2")).is_some());
        assert_eq!(overlap(&t("== 1"), &t("== 2")), None);
    }
}
