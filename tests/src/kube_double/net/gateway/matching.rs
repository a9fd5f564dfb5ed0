//! Which rule of which HTTPRoute a request goes to, by the Gateway API's matching
//! rules (apis/v1/httproute_types.go, v1.5.1):
//!
//! - `hostnames` against the Host header without its port: exact, or a `*.`
//!   wildcard matching one or more labels in front of its suffix; a route without
//!   hostnames matches every host. Routes with the more specific matching hostname
//!   (non-wildcard before wildcard, then more characters) take precedence.
//! - A rule matches when any of its `matches` does; within a match every condition
//!   must hold: `path` Exact (whole path, case-sensitive), PathPrefix (element by
//!   element: `/abc` matches `/abc`, `/abc/`, `/abc/def`, not `/abcd`; a trailing
//!   `/` of the prefix is ignored) or RegularExpression; `headers` (name
//!   case-insensitive; repeated headers joined with `,`, `Cookie` with `; `);
//!   `queryParams` (the first value of the name, percent-decoded); `method`.
//! - Among matching rules: Exact path, then the longest PathPrefix, then a method
//!   match, then the most header matches, then the most query param matches; ties
//!   go to the oldest route, then the first by `namespace/name`, then the first
//!   rule in the list. RegularExpression paths (implementation-specific) rank
//!   after Exact and before PathPrefix, the longer expression first.
//!
//! Regular expressions (headers, query params, paths) are RE2 syntax and must
//! match the whole value, as Envoy's `safe_regex` does: a cookie test is
//! `.*group=beta.*` or `(^|.*; )group=beta(;.*|$)`. An invalid one matches nothing.

use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::Mutex;

use axum::http::HeaderMap;
use gateway_api::httproutes::{
    HttpRouteRulesMatches, HttpRouteRulesMatchesHeadersType as HeaderType,
    HttpRouteRulesMatchesMethod as Method, HttpRouteRulesMatchesPathType as PathType,
    HttpRouteRulesMatchesQueryParamsType as QueryType, HttpRouteSpec,
};
use regex::Regex;

/// One stored route, typed.
pub struct RouteView {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    /// RFC 3339 creation time (sorts as time).
    pub created: String,
    pub spec: HttpRouteSpec,
}

/// What matching reads of a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    pub path: &'a str,
    pub query: Option<&'a str>,
    pub host: String,
    pub headers: &'a HeaderMap,
}

/// Compiled expressions, anchored to match whole values.
#[derive(Default)]
pub struct Regexes(Mutex<HashMap<String, Option<Regex>>>);

impl Regexes {
    pub fn full_match(&self, pattern: &str, value: &str) -> bool {
        let mut cache = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if cache.len() > 1024 {
            cache.clear();
        }
        cache
            .entry(pattern.to_owned())
            .or_insert_with(|| Regex::new(&format!("^(?:{pattern})$")).ok())
            .as_ref()
            .is_some_and(|r| r.is_match(value))
    }
}

/// The Host header's name, lowercase, without the port.
pub fn host_of(headers: &HeaderMap, uri_host: Option<&str>) -> String {
    let raw = headers
        .get("host")
        .and_then(|h| h.to_str().ok())
        .or(uri_host)
        .unwrap_or("");
    let name = if raw.starts_with('[') {
        raw.split(']').next().map_or(raw, |h| &raw[..h.len() + 1])
    } else {
        raw.split(':').next().unwrap_or(raw)
    };
    name.to_ascii_lowercase()
}

/// How specifically a route's hostnames match `host`: `None` when they do not.
fn host_rank(hostnames: &[String], host: &str) -> Option<(u8, usize)> {
    if hostnames.is_empty() {
        return Some((0, 0));
    }
    hostnames
        .iter()
        .filter_map(|h| {
            let h = h.to_ascii_lowercase();
            if let Some(suffix) = h.strip_prefix("*.") {
                let label_before = host
                    .strip_suffix(suffix)
                    .and_then(|front| front.strip_suffix('.'))
                    .is_some_and(|front| !front.is_empty());
                label_before.then_some((1, h.len()))
            } else {
                (h == host).then_some((2, h.len()))
            }
        })
        .max()
}

fn prefix_matches(prefix: &str, path: &str) -> bool {
    let prefix = prefix.trim_end_matches('/');
    prefix.is_empty()
        || path == prefix
        || path
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('/'))
}

fn header_value(headers: &HeaderMap, name: &str) -> Option<String> {
    let values: Vec<&str> = headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .collect();
    if values.is_empty() {
        return None;
    }
    let sep = if name.eq_ignore_ascii_case("cookie") {
        "; "
    } else {
        ","
    };
    Some(values.join(sep))
}

fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let (Some(h), Some(l)) = (hex(bytes[i + 1]), hex(bytes[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn query_value(query: Option<&str>, name: &str) -> Option<String> {
    query?
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| p.split_once('=').unwrap_or((p, "")))
        .find(|(k, _)| percent_decode(k) == name)
        .map(|(_, v)| percent_decode(v))
}

fn method_name(m: &Method) -> &'static str {
    match m {
        Method::Get => "GET",
        Method::Head => "HEAD",
        Method::Post => "POST",
        Method::Put => "PUT",
        Method::Delete => "DELETE",
        Method::Connect => "CONNECT",
        Method::Options => "OPTIONS",
        Method::Trace => "TRACE",
        Method::Patch => "PATCH",
    }
}

/// Precedence of one match: smaller sorts first.
type Rank = (
    u8,
    Reverse<usize>,
    Reverse<bool>,
    Reverse<usize>,
    Reverse<usize>,
);

/// Whether the request satisfies `m`, and its precedence if so.
fn match_rank(m: &HttpRouteRulesMatches, req: &RequestView<'_>, re: &Regexes) -> Option<Rank> {
    let path = m.path.as_ref();
    let value = path.and_then(|p| p.value.as_deref()).unwrap_or("/");
    let kind = path
        .and_then(|p| p.r#type.clone())
        .unwrap_or(PathType::PathPrefix);
    let (class, len) = match kind {
        PathType::Exact => (req.path == value).then_some((0, value.len()))?,
        PathType::RegularExpression => {
            re.full_match(value, req.path).then_some((1, value.len()))?
        }
        PathType::PathPrefix => prefix_matches(value, req.path).then_some((2, value.len()))?,
    };
    let mut seen = Vec::new();
    for h in m.headers.iter().flatten() {
        // Only the first entry for a name counts.
        if seen
            .iter()
            .any(|s: &String| s.eq_ignore_ascii_case(&h.name))
        {
            continue;
        }
        seen.push(h.name.clone());
        let actual = header_value(req.headers, &h.name)?;
        let ok = match h.r#type.clone().unwrap_or(HeaderType::Exact) {
            HeaderType::Exact => actual == h.value,
            HeaderType::RegularExpression => re.full_match(&h.value, &actual),
        };
        if !ok {
            return None;
        }
    }
    for q in m.query_params.iter().flatten() {
        let actual = query_value(req.query, &q.name)?;
        let ok = match q.r#type.clone().unwrap_or(QueryType::Exact) {
            QueryType::Exact => actual == q.value,
            QueryType::RegularExpression => re.full_match(&q.value, &actual),
        };
        if !ok {
            return None;
        }
    }
    if let Some(method) = &m.method
        && method_name(method) != req.method
    {
        return None;
    }
    Some((
        class,
        Reverse(len),
        Reverse(m.method.is_some()),
        Reverse(m.headers.as_ref().map_or(0, Vec::len)),
        Reverse(m.query_params.as_ref().map_or(0, Vec::len)),
    ))
}

/// The (route index, rule index) a request goes to; `None`: no rule matches (404).
pub fn select(routes: &[RouteView], req: &RequestView<'_>, re: &Regexes) -> Option<(usize, usize)> {
    let mut best = None;
    for (ri, route) in routes.iter().enumerate() {
        let Some(host) = host_rank(
            route.spec.hostnames.as_deref().unwrap_or_default(),
            &req.host,
        ) else {
            continue;
        };
        for (rule_i, rule) in route.spec.rules.iter().flatten().enumerate() {
            let default = [HttpRouteRulesMatches::default()];
            let matches = match rule.matches.as_deref() {
                Some(m) if !m.is_empty() => m,
                _ => &default,
            };
            let Some(rank) = matches.iter().filter_map(|m| match_rank(m, req, re)).min() else {
                continue;
            };
            let key = (
                Reverse(host),
                rank,
                route.created.clone(),
                format!("{}/{}", route.namespace, route.name),
                rule_i,
            );
            if best.as_ref().is_none_or(|(k, _)| key < *k) {
                best = Some((key, (ri, rule_i)));
            }
        }
    }
    best.map(|(_, at)| at)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn route(name: &str, created: &str, spec: serde_json::Value) -> RouteView {
        RouteView {
            namespace: "ns".into(),
            name: name.into(),
            uid: name.into(),
            created: created.into(),
            spec: serde_json::from_value(spec).unwrap(),
        }
    }

    fn pick(
        routes: &[RouteView],
        method: &str,
        target: &str,
        headers: &[(&str, &str)],
    ) -> Option<(usize, usize)> {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                axum::http::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                v.parse().unwrap(),
            );
        }
        let (path, query) = match target.split_once('?') {
            Some((p, q)) => (p, Some(q)),
            None => (target, None),
        };
        let req = RequestView {
            method,
            path,
            query,
            host: host_of(&map, None),
            headers: &map,
        };
        select(routes, &req, &Regexes::default())
    }

    #[test]
    fn prefixes_match_by_element() {
        assert!(prefix_matches("/abc", "/abc"));
        assert!(prefix_matches("/abc/", "/abc"));
        assert!(prefix_matches("/abc", "/abc/def"));
        assert!(!prefix_matches("/abc", "/abcd"));
        assert!(prefix_matches("/", "/anything"));
    }

    #[test]
    fn precedence_follows_the_spec() {
        let routes = [
            route(
                "a",
                "2024-01-01T00:00:00Z",
                json!({"rules": [
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"}}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/api"}}]},
                    {"matches": [{"path": {"type": "Exact", "value": "/api/v1"}}]},
                    {"matches": [{"path": {"type": "PathPrefix", "value": "/"},
                                  "headers": [{"name": "X-Group", "value": "beta"}]}]},
                    {"matches": [{"headers": [{"name": "cookie", "type": "RegularExpression", "value": ".*group=beta.*"}]}]},
                    {"matches": [{"method": "POST", "queryParams": [{"name": "v", "value": "a b"}]}]},
                ]}),
            ),
            route(
                "b",
                "2023-01-01T00:00:00Z",
                json!({"hostnames": ["*.example.com"], "rules": [{}]}),
            ),
        ];
        assert_eq!(pick(&routes, "GET", "/x", &[]), Some((0, 0)));
        assert_eq!(pick(&routes, "GET", "/api/x", &[]), Some((0, 1)));
        assert_eq!(pick(&routes, "GET", "/api/v1", &[]), Some((0, 2)));
        assert_eq!(
            pick(&routes, "GET", "/x", &[("x-group", "beta")]),
            Some((0, 3))
        );
        assert_eq!(
            pick(&routes, "GET", "/x", &[("x-group", "alpha")]),
            Some((0, 0))
        );
        assert_eq!(
            pick(&routes, "GET", "/x", &[("cookie", "a=1; group=beta")]),
            Some((0, 4))
        );
        assert_eq!(
            pick(&routes, "GET", "/x", &[("cookie", "group=alpha")]),
            Some((0, 0))
        );
        assert_eq!(pick(&routes, "POST", "/x?v=a%20b", &[]), Some((0, 5)));
        assert_eq!(pick(&routes, "GET", "/x?v=a%20b", &[]), Some((0, 0)));
        // A matching hostname beats a route without hostnames; the bare suffix does not match.
        assert_eq!(
            pick(&routes, "GET", "/x", &[("host", "shop.example.com:8080")]),
            Some((1, 0))
        );
        assert_eq!(
            pick(&routes, "GET", "/x", &[("host", "example.com")]),
            Some((0, 0))
        );
    }

    #[test]
    fn ties_go_to_the_oldest_route() {
        let routes = [
            route("new", "2024-01-01T00:00:00Z", json!({"rules": [{}]})),
            route("old", "2020-01-01T00:00:00Z", json!({"rules": [{}]})),
        ];
        assert_eq!(pick(&routes, "GET", "/", &[]), Some((1, 0)));
        let none = [route(
            "x",
            "2024-01-01T00:00:00Z",
            json!({"hostnames": ["a.example"], "rules": [{}]}),
        )];
        assert_eq!(pick(&none, "GET", "/", &[("host", "b.example")]), None);
    }
}
