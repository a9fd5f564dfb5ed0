//! The defaults of the HTTPRoute CRD's schema (Gateway API v1.5.1, the version the
//! `gateway-api` 0.22 crate binds: config/crd/standard/
//! gateway.networking.k8s.io_httproutes.yaml), applied to the JSON before
//! validation as the API server's structural defaulting does: absent `rules` → one
//! rule matching `PathPrefix /`; absent `matches` and `path` likewise; header and
//! query param match `type: Exact`; backendRefs `group: ""`, `kind: Service`,
//! `weight: 1`; mirror backendRefs `group: ""`, `kind: Service`; fraction
//! `denominator: 100`; redirect `statusCode: 302`; parentRefs
//! `group: gateway.networking.k8s.io`, `kind: Gateway`. A field of the wrong JSON
//! type is left for validation to report.

use serde_json::{Map, Value, json};

fn set_default(obj: &mut Map<String, Value>, key: &str, value: Value) {
    obj.entry(key.to_owned()).or_insert(value);
}

fn objects(v: Option<&mut Value>) -> impl Iterator<Item = &mut Map<String, Value>> {
    v.and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
        .filter_map(Value::as_object_mut)
}

fn backend_object_ref(r: &mut Map<String, Value>) {
    set_default(r, "group", json!(""));
    set_default(r, "kind", json!("Service"));
}

fn filters(list: Option<&mut Value>) {
    for f in objects(list) {
        if let Some(m) = f.get_mut("requestMirror").and_then(Value::as_object_mut) {
            if let Some(r) = m.get_mut("backendRef").and_then(Value::as_object_mut) {
                backend_object_ref(r);
            }
            if let Some(fr) = m.get_mut("fraction").and_then(Value::as_object_mut) {
                set_default(fr, "denominator", json!(100));
            }
        }
        if let Some(r) = f.get_mut("requestRedirect").and_then(Value::as_object_mut) {
            set_default(r, "statusCode", json!(302));
        }
    }
}

fn default_match() -> Value {
    json!({"path": {"type": "PathPrefix", "value": "/"}})
}

/// Applies the schema's defaults to a whole HTTPRoute object.
pub fn apply(route: &mut Value) {
    let Some(spec) = route.get_mut("spec").and_then(Value::as_object_mut) else {
        return;
    };
    for p in objects(spec.get_mut("parentRefs")) {
        set_default(p, "group", json!("gateway.networking.k8s.io"));
        set_default(p, "kind", json!("Gateway"));
    }
    set_default(spec, "rules", json!([{"matches": [default_match()]}]));
    for rule in objects(spec.get_mut("rules")) {
        set_default(rule, "matches", json!([default_match()]));
        for m in objects(rule.get_mut("matches")) {
            set_default(m, "path", json!({}));
            if let Some(path) = m.get_mut("path").and_then(Value::as_object_mut) {
                set_default(path, "type", json!("PathPrefix"));
                set_default(path, "value", json!("/"));
            }
            for h in objects(m.get_mut("headers")) {
                set_default(h, "type", json!("Exact"));
            }
            for q in objects(m.get_mut("queryParams")) {
                set_default(q, "type", json!("Exact"));
            }
        }
        filters(rule.get_mut("filters"));
        for b in objects(rule.get_mut("backendRefs")) {
            backend_object_ref(b);
            set_default(b, "weight", json!(1));
            filters(b.get_mut("filters"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_fill_an_empty_route() {
        let mut r = json!({"spec": {"parentRefs": [{"name": "gw"}], "rules": [
            {"backendRefs": [{"name": "web", "port": 80}]},
            {"matches": [{"headers": [{"name": "x-group", "value": "beta"}]}],
             "filters": [{"type": "RequestMirror", "requestMirror": {
                 "backendRef": {"name": "shadow", "port": 80}, "fraction": {"numerator": 1}}}]}
        ]}});
        apply(&mut r);
        assert_eq!(r["spec"]["parentRefs"][0]["kind"], "Gateway");
        assert_eq!(
            r["spec"]["rules"][0]["matches"][0]["path"]["type"],
            "PathPrefix"
        );
        assert_eq!(r["spec"]["rules"][0]["backendRefs"][0]["weight"], 1);
        assert_eq!(r["spec"]["rules"][0]["backendRefs"][0]["kind"], "Service");
        assert_eq!(r["spec"]["rules"][1]["matches"][0]["path"]["value"], "/");
        assert_eq!(
            r["spec"]["rules"][1]["matches"][0]["headers"][0]["type"],
            "Exact"
        );
        let mirror = &r["spec"]["rules"][1]["filters"][0]["requestMirror"];
        assert_eq!(mirror["fraction"]["denominator"], 100);
        assert_eq!(mirror["backendRef"]["group"], "");
        let mut bare = json!({"spec": {}});
        apply(&mut bare);
        assert_eq!(bare["spec"]["rules"][0]["matches"][0]["path"]["value"], "/");
    }
}
