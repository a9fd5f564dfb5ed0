//! What the HTTPRoute CRD's OpenAPI schema and CEL rules refuse (Gateway API
//! v1.5.1, the version the `gateway-api` 0.22 crate binds:
//! config/crd/standard/gateway.networking.k8s.io_httproutes.yaml and the
//! `+kubebuilder` markers of apis/v1/httproute_types.go and shared_types.go),
//! checked on the defaulted JSON with the API server's messages:
//!
//! - types, `required`, `maxItems`/`minItems` (rules 1..=16, matches 64 per rule
//!   and 128 in all, headers and queryParams 16, filters 16, backendRefs 16,
//!   hostnames 16, parentRefs 32), `minimum`/`maximum` (weight 0..=1000000, ports
//!   1..=65535, mirror percent 0..=100, fraction numerator at least 0 and
//!   denominator at least 1), `minLength`/`maxLength`, `pattern` (hostnames, header and query param
//!   names, rule names, groups, kinds, namespaces), `enum` (path, header and query
//!   param match types, methods, filter types), `listType=map` duplicates (header
//!   and query param names);
//! - CEL: path values for Exact/PathPrefix, each filter type with its own field,
//!   filters that cannot repeat or combine, RequestRedirect with backendRefs,
//!   `Must have port for Service reference`, mirror percent vs fraction and
//!   numerator <= denominator, the total of matches.
//!
//! Not checked: CORS, timeouts and redirect/rewrite details, parentRef
//! sectionName uniqueness. The double's gateway answers 500 for the filters it
//! does not implement, so such a route fails loudly when used.

use std::collections::HashSet;

use serde_json::{Map, Value};

use super::openapi::{
    Check, GROUP, HEADER_NAME, HOSTNAME, KIND, NAMESPACE, PATH_CHARS, SUBDOMAIN, matches,
};

const FILTER_TYPES: &[&str] = &[
    "RequestHeaderModifier",
    "ResponseHeaderModifier",
    "RequestMirror",
    "RequestRedirect",
    "URLRewrite",
    "ExtensionRef",
    "CORS",
];
/// Each filter type and the field it must (alone) carry.
const FILTER_FIELDS: &[(&str, &str)] = &[
    ("cors", "CORS"),
    ("requestHeaderModifier", "RequestHeaderModifier"),
    ("responseHeaderModifier", "ResponseHeaderModifier"),
    ("requestMirror", "RequestMirror"),
    ("requestRedirect", "RequestRedirect"),
    ("urlRewrite", "URLRewrite"),
    ("extensionRef", "ExtensionRef"),
];
const METHODS: &[&str] = &[
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];
const MATCH_TYPES: &[&str] = &["Exact", "RegularExpression"];
const PATH_TYPES: &[&str] = &["Exact", "PathPrefix", "RegularExpression"];

impl Check {
    /// BackendObjectReference (backendRefs, mirror backendRef).
    fn backend_ref(&mut self, r: &Map<String, Value>, at: &str) {
        let group = self.string(r, at, "group", false, (0, 253));
        self.pattern(&format!("{at}.group"), group, GROUP);
        let kind = self.string(r, at, "kind", false, (1, 63));
        self.pattern(&format!("{at}.kind"), kind, KIND);
        self.string(r, at, "name", true, (1, 253));
        let ns = self.string(r, at, "namespace", false, (1, 63));
        self.pattern(&format!("{at}.namespace"), ns, NAMESPACE);
        let port = self.int(r, at, "port", false, (1, 65535));
        if group.unwrap_or("").is_empty()
            && kind.unwrap_or("Service") == "Service"
            && port.is_none()
        {
            self.cel(at, "object", "Must have port for Service reference");
        }
    }

    fn header_list(&mut self, obj: &Map<String, Value>, at: &str, key: &str, value_max: usize) {
        let list_at = format!("{at}.{key}");
        let mut names = HashSet::new();
        for (i, h) in self.list(obj, at, key, 16).iter().enumerate() {
            let at = format!("{list_at}[{i}]");
            let h = self.object(h, &at);
            let name = self.string(h, &at, "name", true, (1, 256));
            self.pattern(&format!("{at}.name"), name, HEADER_NAME);
            self.string(h, &at, "value", true, (1, value_max));
            self.one_of(h, &at, "type", false, MATCH_TYPES);
            if let Some(n) = name
                && !names.insert(n)
            {
                self.0.push(format!(
                    "{at}: Duplicate value: map[string]interface {{}}{{\"name\":{n:?}}}"
                ));
            }
        }
    }

    fn modifier(&mut self, m: &Map<String, Value>, at: &str) {
        for key in ["set", "add"] {
            let list_at = format!("{at}.{key}");
            for (i, h) in self.list(m, at, key, 16).iter().enumerate() {
                let at = format!("{list_at}[{i}]");
                let h = self.object(h, &at);
                let name = self.string(h, &at, "name", true, (1, 256));
                self.pattern(&format!("{at}.name"), name, HEADER_NAME);
                self.string(h, &at, "value", true, (1, 4096));
            }
        }
        self.list(m, at, "remove", 16);
    }

    fn mirror(&mut self, m: &Map<String, Value>, at: &str) {
        match m.get("backendRef") {
            None | Some(Value::Null) => self.0.push(format!("{at}.backendRef: Required value")),
            Some(r) => {
                let r_at = format!("{at}.backendRef");
                let r = self.object(r, &r_at);
                self.backend_ref(r, &r_at);
            }
        }
        self.int(m, at, "percent", false, (0, 100));
        if let Some(f) = m.get("fraction").filter(|f| !f.is_null()) {
            let f_at = format!("{at}.fraction");
            let f = self.object(f, &f_at);
            let num = self.int(f, &f_at, "numerator", true, (0, i64::from(i32::MAX)));
            let den = self.int(f, &f_at, "denominator", false, (1, i64::from(i32::MAX)));
            if let (Some(n), Some(d)) = (num, den.or(Some(100)))
                && n > d
            {
                self.cel(
                    &f_at,
                    "object",
                    "numerator must be less than or equal to denominator",
                );
            }
            if m.get("percent").is_some_and(|p| !p.is_null()) {
                self.cel(
                    at,
                    "object",
                    "Only one of percent or fraction may be specified in HTTPRequestMirrorFilter",
                );
            }
        }
    }

    fn filters(&mut self, obj: &Map<String, Value>, at: &str) {
        let list_at = format!("{at}.filters");
        let list = self.list(obj, at, "filters", 16);
        let mut types = Vec::new();
        for (i, f) in list.iter().enumerate() {
            let at = format!("{list_at}[{i}]");
            let f = self.object(f, &at);
            let kind = self.one_of(f, &at, "type", true, FILTER_TYPES);
            types.extend(kind);
            for (field, for_type) in FILTER_FIELDS {
                let has = f.get(*field).is_some_and(|v| !v.is_null());
                if has && kind != Some(for_type) {
                    self.cel(
                        &at,
                        "object",
                        &format!("filter.{field} must be nil if the filter.type is not {for_type}"),
                    );
                }
                if !has && kind == Some(for_type) {
                    self.cel(
                        &at,
                        "object",
                        &format!("filter.{field} must be specified for {for_type} filter.type"),
                    );
                }
            }
            if let Some(m) = f.get("requestMirror").filter(|m| !m.is_null()) {
                let m_at = format!("{at}.requestMirror");
                let m = self.object(m, &m_at);
                self.mirror(m, &m_at);
            }
            for key in ["requestHeaderModifier", "responseHeaderModifier"] {
                if let Some(m) = f.get(key).filter(|m| !m.is_null()) {
                    let m_at = format!("{at}.{key}");
                    let m = self.object(m, &m_at);
                    self.modifier(m, &m_at);
                }
            }
        }
        if types.contains(&"RequestRedirect") && types.contains(&"URLRewrite") {
            self.cel(&list_at, "array", "May specify either httpRouteFilterRequestRedirect or httpRouteFilterRequestRewrite, but not both");
        }
        for once in [
            "CORS",
            "RequestHeaderModifier",
            "ResponseHeaderModifier",
            "RequestRedirect",
            "URLRewrite",
        ] {
            if types.iter().filter(|t| **t == once).count() > 1 {
                self.cel(
                    &list_at,
                    "array",
                    &format!("{once} filter cannot be repeated"),
                );
            }
        }
    }

    fn path(&mut self, p: &Map<String, Value>, at: &str) {
        let kind = self.one_of(p, at, "type", false, PATH_TYPES);
        let value = self.string(p, at, "value", false, (0, 1024));
        if !matches!(kind, Some("Exact" | "PathPrefix")) {
            return;
        }
        let Some(v) = value else { return };
        const WHEN: &str = "when type one of ['Exact', 'PathPrefix']";
        if !v.starts_with('/') {
            self.cel(
                at,
                "object",
                &format!("value must be an absolute path and start with '/' {WHEN}"),
            );
        }
        for seq in ["//", "/./", "/../", "%2f", "%2F", "#"] {
            if v.contains(seq) {
                self.cel(at, "object", &format!("must not contain '{seq}' {WHEN}"));
            }
        }
        for end in ["/..", "/."] {
            if v.ends_with(end) {
                self.cel(at, "object", &format!("must not end with '{end}' {WHEN}"));
            }
        }
        if !matches(PATH_CHARS, v) {
            self.cel(at, "object", &format!("must only contain valid characters (matching {PATH_CHARS}) for types ['Exact', 'PathPrefix']"));
        }
    }

    fn rule(&mut self, rule: &Map<String, Value>, at: &str) -> usize {
        let name = self.string(rule, at, "name", false, (1, 253));
        self.pattern(&format!("{at}.name"), name, SUBDOMAIN);
        let matches_at = format!("{at}.matches");
        let matches = self.list(rule, at, "matches", 64);
        for (i, m) in matches.iter().enumerate() {
            let at = format!("{matches_at}[{i}]");
            let m = self.object(m, &at);
            if let Some(p) = m.get("path").filter(|p| !p.is_null()) {
                let p_at = format!("{at}.path");
                let p = self.object(p, &p_at);
                self.path(p, &p_at);
            }
            self.header_list(m, &at, "headers", 4096);
            self.header_list(m, &at, "queryParams", 1024);
            self.one_of(m, &at, "method", false, METHODS);
        }
        self.filters(rule, at);
        let refs_at = format!("{at}.backendRefs");
        let refs = self.list(rule, at, "backendRefs", 16);
        for (i, r) in refs.iter().enumerate() {
            let at = format!("{refs_at}[{i}]");
            let r = self.object(r, &at);
            self.backend_ref(r, &at);
            self.int(r, &at, "weight", false, (0, 1_000_000));
            self.filters(r, &at);
        }
        let redirects = rule
            .get("filters")
            .and_then(Value::as_array)
            .is_some_and(|fs| {
                fs.iter()
                    .any(|f| f.get("requestRedirect").is_some_and(|r| !r.is_null()))
            });
        if !refs.is_empty() && redirects {
            self.cel(
                at,
                "object",
                "RequestRedirect filter must not be used together with backendRefs",
            );
        }
        matches.len()
    }
}

/// Problems with a defaulted HTTPRoute's `spec`, as `field: reason` lines.
pub fn validate(route: &Value) -> Vec<String> {
    let mut c = Check::default();
    let Some(spec) = route.get("spec").filter(|s| !s.is_null()) else {
        return vec!["spec: Required value".into()];
    };
    let spec = c.object(spec, "spec");
    for (i, h) in c.list(spec, "spec", "hostnames", 16).iter().enumerate() {
        let at = format!("spec.hostnames[{i}]");
        match h.as_str() {
            Some(s) => {
                if s.is_empty() {
                    c.0.push(format!(
                        "{at}: Invalid value: \"\": {at} in body should be at least 1 chars long"
                    ));
                }
                if s.len() > 253 {
                    c.0.push(format!("{at}: Too long: may not be more than 253 bytes"));
                }
                c.pattern(&at, Some(s), HOSTNAME);
            }
            None => c.wrong_type(&at, h, "string"),
        }
    }
    for (i, p) in c.list(spec, "spec", "parentRefs", 32).iter().enumerate() {
        let at = format!("spec.parentRefs[{i}]");
        let p = c.object(p, &at);
        c.string(p, &at, "name", true, (1, 253));
        c.int(p, &at, "port", false, (1, 65535));
        let section = c.string(p, &at, "sectionName", false, (1, 253));
        c.pattern(&format!("{at}.sectionName"), section, SUBDOMAIN);
    }
    let rules = c.list(spec, "spec", "rules", 16);
    if rules.is_empty() && spec.contains_key("rules") {
        c.0.push(
            "spec.rules: Invalid value: 0: spec.rules in body should have at least 1 items".into(),
        );
    }
    let mut total = 0;
    for (i, r) in rules.iter().enumerate() {
        let at = format!("spec.rules[{i}]");
        let r = c.object(r, &at);
        total += c.rule(r, &at);
    }
    if total > 128 {
        c.cel("spec.rules", "array", "While 16 rules and 64 matches per rule are allowed, the total number of matches across all rules in a route must be less than 128");
    }
    c.0
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kube_double::net::httproute::defaults;
    use serde_json::json;

    fn check(spec: Value) -> String {
        let mut route = json!({ "spec": spec });
        defaults::apply(&mut route);
        validate(&route).join("\n")
    }

    #[test]
    fn a_canary_route_is_valid() {
        let text = check(json!({
            "parentRefs": [{"name": "gw"}],
            "hostnames": ["app.example.com", "*.example.org"],
            "rules": [
                {"matches": [{"headers": [{"name": "Cookie", "type": "RegularExpression", "value": ".*group=beta.*"}]}],
                 "backendRefs": [{"name": "web-canary", "port": 80}]},
                {"backendRefs": [{"name": "web", "port": 80, "weight": 80}, {"name": "web-canary", "port": 80, "weight": 20}],
                 "filters": [{"type": "RequestMirror", "requestMirror": {"backendRef": {"name": "web-canary", "port": 80}, "percent": 10}}]}
            ]
        }));
        assert_eq!(text, "");
    }

    #[test]
    fn schema_and_cel_violations_are_named() {
        let rules: Vec<Value> = (0..17).map(|_| json!({})).collect();
        assert!(
            check(json!({"rules": rules}))
                .contains("spec.rules: Too many: 17: must have at most 16 items")
        );
        let text = check(json!({"hostnames": ["Bad_Host"], "rules": [{
            "matches": [{"path": {"type": "PathPrefix", "value": "no-slash"},
                         "headers": [{"name": "x", "value": "1", "type": "Prefix"}, {"name": "x", "value": "2"}],
                         "method": "FETCH"}],
            "filters": [{"type": "RequestMirror"},
                        {"type": "RequestHeaderModifier", "requestMirror": {"backendRef": {"name": "m", "port": 80}}}],
            "backendRefs": [{"name": "", "port": 80, "weight": 1000001}, {"name": "b"}, {"port": 80}]
        }]}));
        for want in [
            "spec.hostnames[0]: Invalid value: \"Bad_Host\": spec.hostnames[0] in body should match",
            "spec.rules[0].matches[0].path: Invalid value: \"object\": value must be an absolute path",
            "spec.rules[0].matches[0].headers[0].type: Unsupported value: \"Prefix\": supported values: \"Exact\", \"RegularExpression\"",
            "spec.rules[0].matches[0].headers[1]: Duplicate value",
            "spec.rules[0].matches[0].method: Unsupported value: \"FETCH\"",
            "spec.rules[0].filters[0]: Invalid value: \"object\": filter.requestMirror must be specified for RequestMirror filter.type",
            "spec.rules[0].filters[1]: Invalid value: \"object\": filter.requestMirror must be nil if the filter.type is not RequestMirror",
            "spec.rules[0].backendRefs[0].name: Invalid value: \"\": spec.rules[0].backendRefs[0].name in body should be at least 1 chars long",
            "spec.rules[0].backendRefs[0].weight: Invalid value: 1000001: spec.rules[0].backendRefs[0].weight in body should be less than or equal to 1000000",
            "spec.rules[0].backendRefs[1]: Invalid value: \"object\": Must have port for Service reference",
            "spec.rules[0].backendRefs[2].name: Required value",
        ] {
            assert!(text.contains(want), "{want}\n  missing from:\n{text}");
        }
        let text = check(
            json!({"rules": [{"filters": [{"type": "RequestMirror", "requestMirror": {
            "backendRef": {"name": "m", "port": 80}, "percent": 10, "fraction": {"numerator": 200}}}]}]}),
        );
        assert!(
            text.contains("Only one of percent or fraction may be specified"),
            "{text}"
        );
        assert!(
            text.contains("numerator must be less than or equal to denominator"),
            "{text}"
        );
        assert!(
            check(json!({"rules": [{"backendRefs": [{"name": "w", "port": 80, "weight": "x"}]}]}))
                .contains("weight in body must be of type integer")
        );
    }
}
