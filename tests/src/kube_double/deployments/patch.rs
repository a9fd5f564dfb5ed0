//! PATCH bodies applied to an object's JSON, by content type as the API server
//! takes them: `application/merge-patch+json` (RFC 7386: objects merged, `null`
//! deletes, anything else replaces), `application/json-patch+json` (RFC 6902:
//! add, remove, replace, move, copy, test), and
//! `application/strategic-merge-patch+json` for the lists the double's kinds have
//! (k8s.io/apimachinery/pkg/util/strategicpatch): lists with a `patchMergeKey` are
//! merged by that key (containers, initContainers, volumes, env, imagePullSecrets,
//! resourceClaims by `name`; container ports by `containerPort`; volumeMounts by
//! `mountPath`; volumeDevices by `devicePath`; hostAliases by `ip`; conditions by
//! `type`; ownerReferences by `uid`; topologySpreadConstraints by `topologyKey`),
//! `finalizers` merged as a set, every other list replaced; the directives
//! `$patch: replace|delete|merge`, `$retainKeys` and
//! `$deleteFromPrimitiveList/<field>` are honoured, `$setElementOrder/<field>` is
//! accepted and ignored (merged elements keep their order, new ones are appended).
//! Server-side apply (`application/apply-patch+yaml`) is refused with 415.

use serde_json::{Map, Value};

use crate::kube_double::status::ApiError;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PatchKind {
    Merge,
    Strategic,
    Json,
}

impl PatchKind {
    pub fn from_content_type(content_type: Option<&str>) -> Result<PatchKind, ApiError> {
        let ct = content_type
            .unwrap_or_default()
            .split(';')
            .next()
            .unwrap_or_default()
            .trim();
        match ct {
            "application/merge-patch+json" => Ok(PatchKind::Merge),
            "application/strategic-merge-patch+json" => Ok(PatchKind::Strategic),
            "application/json-patch+json" => Ok(PatchKind::Json),
            "application/apply-patch+yaml" => Err(unsupported(
                "server-side apply (application/apply-patch+yaml) is not supported by the Kubernetes test double; use a merge, strategic merge or JSON patch",
            )),
            other => Err(unsupported(&format!(
                "the body of the request was in an unknown format ({other:?}) - accepted media types include: application/json-patch+json, application/merge-patch+json, application/strategic-merge-patch+json"
            ))),
        }
    }
}

fn unsupported(message: &str) -> ApiError {
    ApiError {
        code: 415,
        reason: "UnsupportedMediaType",
        message: message.to_owned(),
        name: None,
        kind: None,
    }
}

fn bad(message: String) -> ApiError {
    ApiError::bad_request(message)
}

/// `target` patched by `patch` of `kind`.
pub fn apply(kind: PatchKind, target: Value, patch: &Value) -> Result<Value, ApiError> {
    match kind {
        PatchKind::Merge => Ok(merge(target, patch)),
        PatchKind::Strategic => {
            if !patch.is_object() {
                return Err(bad("a strategic merge patch must be a JSON object".into()));
            }
            strategic(target, patch, &[])
        }
        PatchKind::Json => json_patch(target, patch),
    }
}

/// RFC 7386.
pub fn merge(target: Value, patch: &Value) -> Value {
    let Value::Object(p) = patch else {
        return patch.clone();
    };
    let mut t = match target {
        Value::Object(t) => t,
        _ => Map::new(),
    };
    for (k, v) in p {
        if v.is_null() {
            t.remove(k);
        } else {
            let old = t.remove(k).unwrap_or(Value::Null);
            t.insert(k.clone(), merge(old, v));
        }
    }
    Value::Object(t)
}

/// The merge key of the list at `path` (object keys from the root), if the API
/// merges it by key.
fn merge_key(path: &[&str]) -> Option<&'static str> {
    let last = *path.last()?;
    let parent = path.len().checked_sub(2).map(|i| path[i]);
    Some(match last {
        "containers"
        | "initContainers"
        | "ephemeralContainers"
        | "volumes"
        | "env"
        | "imagePullSecrets"
        | "resourceClaims" => "name",
        "ports"
            if matches!(
                parent,
                Some("containers" | "initContainers" | "ephemeralContainers")
            ) =>
        {
            "containerPort"
        }
        "volumeMounts" => "mountPath",
        "volumeDevices" => "devicePath",
        "hostAliases" => "ip",
        "conditions" => "type",
        "ownerReferences" => "uid",
        "topologySpreadConstraints" => "topologyKey",
        _ => return None,
    })
}

fn strategic(target: Value, patch: &Value, path: &[&str]) -> Result<Value, ApiError> {
    let Value::Object(p) = patch else {
        return Ok(patch.clone());
    };
    match p.get("$patch").and_then(Value::as_str) {
        Some("replace") => {
            let mut p = p.clone();
            p.remove("$patch");
            return Ok(Value::Object(p));
        }
        Some("delete") => return Ok(Value::Null),
        Some("merge") | None => {}
        Some(other) => return Err(bad(format!("unknown patch type: {other:?}"))),
    }
    let mut t = match target {
        Value::Object(t) => t,
        _ => Map::new(),
    };
    for (k, v) in p {
        if k == "$patch" || k.starts_with("$setElementOrder/") || k == "$retainKeys" {
            continue;
        }
        if let Some(field) = k.strip_prefix("$deleteFromPrimitiveList/") {
            let drop: Vec<&Value> = v.as_array().map(|a| a.iter().collect()).unwrap_or_default();
            if let Some(Value::Array(list)) = t.get_mut(field) {
                list.retain(|x| !drop.contains(&x));
            }
            continue;
        }
        if k.starts_with('$') {
            return Err(bad(format!(
                "unknown strategic merge patch directive {k:?}"
            )));
        }
        if v.is_null() {
            t.remove(k);
            continue;
        }
        let mut child: Vec<&str> = path.to_vec();
        child.push(k);
        let old = t.remove(k).unwrap_or(Value::Null);
        let next = match (old, v) {
            (old, Value::Array(new)) => {
                let old = match old {
                    Value::Array(a) => a,
                    _ => Vec::new(),
                };
                Value::Array(merge_list(old, new, &child)?)
            }
            (old, v @ Value::Object(_)) => strategic(old, v, &child)?,
            (_, v) => strip_directives(v.clone()),
        };
        if !next.is_null() {
            t.insert(k.clone(), next);
        }
    }
    if let Some(keep) = p.get("$retainKeys").and_then(Value::as_array) {
        let keep: Vec<&str> = keep.iter().filter_map(Value::as_str).collect();
        t.retain(|k, _| keep.contains(&k.as_str()));
    }
    Ok(Value::Object(t))
}

/// A value from a patch that has nothing to merge into: its directives removed.
fn strip_directives(v: Value) -> Value {
    match v {
        Value::Object(m) => Value::Object(
            m.into_iter()
                .filter(|(k, _)| !k.starts_with('$'))
                .map(|(k, v)| (k, strip_directives(v)))
                .collect(),
        ),
        Value::Array(a) => Value::Array(a.into_iter().map(strip_directives).collect()),
        other => other,
    }
}

fn merge_list(old: Vec<Value>, new: &[Value], path: &[&str]) -> Result<Vec<Value>, ApiError> {
    let field = path.last().copied().unwrap_or_default();
    if new
        .iter()
        .any(|e| e.get("$patch").and_then(Value::as_str) == Some("replace"))
    {
        return Ok(new
            .iter()
            .filter(|e| e.get("$patch").is_none())
            .cloned()
            .map(strip_directives)
            .collect());
    }
    if field == "finalizers" {
        let mut out = old;
        for v in new {
            if !out.contains(v) {
                out.push(v.clone());
            }
        }
        return Ok(out);
    }
    let Some(key) = merge_key(path) else {
        return Ok(new.iter().cloned().map(strip_directives).collect());
    };
    let mut out = old;
    for e in new {
        let Some(id) = e.get(key) else {
            return Err(bad(format!(
                "map: {e} does not contain declared merge key: {key}"
            )));
        };
        let at = out.iter().position(|o| o.get(key) == Some(id));
        if e.get("$patch").and_then(Value::as_str) == Some("delete") {
            if let Some(i) = at {
                out.remove(i);
            }
            continue;
        }
        match at {
            Some(i) => {
                let merged = strategic(out[i].take(), e, path)?;
                out[i] = merged;
            }
            None => out.push(strip_directives(e.clone())),
        }
    }
    Ok(out)
}

/// RFC 6901 pointer tokens.
fn tokens(pointer: &str) -> Result<Vec<String>, ApiError> {
    if pointer.is_empty() {
        return Ok(Vec::new());
    }
    let rest = pointer
        .strip_prefix('/')
        .ok_or_else(|| bad(format!("invalid JSON pointer {pointer:?}")))?;
    Ok(rest
        .split('/')
        .map(|t| t.replace("~1", "/").replace("~0", "~"))
        .collect())
}

fn parent<'a>(doc: &'a mut Value, toks: &[String], path: &str) -> Result<&'a mut Value, ApiError> {
    let mut cur = doc;
    for t in toks {
        cur = match cur {
            Value::Object(m) => m.get_mut(t),
            Value::Array(a) => t.parse::<usize>().ok().and_then(|i| a.get_mut(i)),
            _ => None,
        }
        .ok_or_else(|| bad(format!("the path {path:?} does not exist")))?;
    }
    Ok(cur)
}

fn remove_at(doc: &mut Value, path: &str) -> Result<Value, ApiError> {
    let toks = tokens(path)?;
    let (last, init) = toks
        .split_last()
        .ok_or_else(|| bad("cannot remove the whole document".into()))?;
    let missing = || bad(format!("the path {path:?} does not exist"));
    match parent(doc, init, path)? {
        Value::Object(m) => m.remove(last).ok_or_else(missing),
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i < a.len())
                .ok_or_else(missing)?;
            Ok(a.remove(i))
        }
        _ => Err(missing()),
    }
}

fn add_at(doc: &mut Value, path: &str, value: Value) -> Result<(), ApiError> {
    let toks = tokens(path)?;
    let Some((last, init)) = toks.split_last() else {
        *doc = value;
        return Ok(());
    };
    match parent(doc, init, path)? {
        Value::Object(m) => {
            m.insert(last.clone(), value);
            Ok(())
        }
        Value::Array(a) if last == "-" => {
            a.push(value);
            Ok(())
        }
        Value::Array(a) => {
            let i = last
                .parse::<usize>()
                .ok()
                .filter(|i| *i <= a.len())
                .ok_or_else(|| bad(format!("the path {path:?} is out of bounds")))?;
            a.insert(i, value);
            Ok(())
        }
        _ => Err(bad(format!("the path {path:?} does not exist"))),
    }
}

/// RFC 6902.
fn json_patch(mut doc: Value, patch: &Value) -> Result<Value, ApiError> {
    let ops = patch
        .as_array()
        .ok_or_else(|| bad("a JSON patch must be a JSON array of operations".into()))?;
    for op in ops {
        let field = |name: &str| -> Result<&str, ApiError> {
            op.get(name)
                .and_then(Value::as_str)
                .ok_or_else(|| bad(format!("JSON patch operation {op} has no {name:?}")))
        };
        let value = || {
            op.get("value")
                .cloned()
                .ok_or_else(|| bad(format!("JSON patch operation {op} has no \"value\"")))
        };
        let path = field("path")?;
        match field("op")? {
            "add" => add_at(&mut doc, path, value()?)?,
            "remove" => {
                remove_at(&mut doc, path)?;
            }
            "replace" => {
                remove_at(&mut doc, path)?;
                add_at(&mut doc, path, value()?)?;
            }
            "move" => {
                let v = remove_at(&mut doc, field("from")?)?;
                add_at(&mut doc, path, v)?;
            }
            "copy" => {
                let from = field("from")?;
                let v = parent(&mut doc, &tokens(from)?, from)?.clone();
                add_at(&mut doc, path, v)?;
            }
            "test" => {
                let got = parent(&mut doc, &tokens(path)?, path)?;
                if *got != value()? {
                    return Err(ApiError {
                        code: 422,
                        reason: "Invalid",
                        message: format!(
                            "the test operation on {path:?} failed: the value differs"
                        ),
                        name: None,
                        kind: None,
                    });
                }
            }
            other => return Err(bad(format!("unknown JSON patch operation {other:?}"))),
        }
    }
    Ok(doc)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let t = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        let p = json!({"a": "z", "c": {"f": null}, "l": [3]});
        assert_eq!(merge(t, &p), json!({"a": "z", "c": {"d": "e"}, "l": [3]}));
    }

    #[test]
    fn strategic_patch_merges_containers_by_name() {
        let t = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "v1", "ports": [{"containerPort": 80}]},
            {"name": "side", "image": "s"}],
            "tolerations": [{"key": "a"}]}},
            "metadata": {"finalizers": ["x"]}}});
        let p = json!({"spec": {"template": {"spec": {"containers": [
            {"name": "app", "image": "v2"},
            {"name": "side", "$patch": "delete"},
            {"name": "new", "image": "n"}],
            "tolerations": [{"key": "b"}]}},
            "metadata": {"finalizers": ["y"]}}});
        let got = apply(PatchKind::Strategic, t, &p).unwrap();
        assert_eq!(
            got["spec"]["template"]["spec"]["containers"],
            json!([{"name": "app", "image": "v2", "ports": [{"containerPort": 80}]}, {"name": "new", "image": "n"}])
        );
        assert_eq!(
            got["spec"]["template"]["spec"]["tolerations"],
            json!([{"key": "b"}])
        );
        assert_eq!(got["spec"]["metadata"]["finalizers"], json!(["x", "y"]));
        let replaced = apply(
            PatchKind::Strategic,
            json!({"m": {"a": 1, "b": 2}}),
            &json!({"m": {"$patch": "replace", "c": 3}}),
        )
        .unwrap();
        assert_eq!(replaced, json!({"m": {"c": 3}}));
    }

    #[test]
    fn json_patch_follows_rfc_6902() {
        let t = json!({"spec": {"replicas": 1, "list": ["a"]}});
        let p = json!([
            {"op": "test", "path": "/spec/replicas", "value": 1},
            {"op": "replace", "path": "/spec/replicas", "value": 3},
            {"op": "add", "path": "/spec/list/-", "value": "b"},
            {"op": "copy", "from": "/spec/replicas", "path": "/spec/copy"},
            {"op": "remove", "path": "/spec/list/0"}
        ]);
        let got = apply(PatchKind::Json, t.clone(), &p).unwrap();
        assert_eq!(
            got,
            json!({"spec": {"replicas": 3, "list": ["b"], "copy": 3}})
        );
        let failing = json!([{"op": "test", "path": "/spec/replicas", "value": 2}]);
        assert_eq!(apply(PatchKind::Json, t, &failing).unwrap_err().code, 422);
        assert_eq!(
            PatchKind::from_content_type(Some("application/apply-patch+yaml"))
                .unwrap_err()
                .code,
            415
        );
    }
}
