//! The API server's version, and what an older one does not know. `/version` answers
//! [`KubeDoubleOptions::version`](super::KubeDoubleOptions::version); a pod field that
//! came after it is unknown to the double as to a real API server of that version:
//! dropped with a `Warning` header, or under `fieldValidation=Strict` a 400 naming it
//! (upstream's "strict decoding error: unknown field").

use serde_json::{Value, json};

/// Pod fields by the minor version whose API server first knows them:
/// `securityContext.appArmorProfile`, pod- and container-level, is from 1.30.
const APPARMOR_FIELD_SINCE: u32 = 30;

const CONTAINER_LISTS: [&str; 3] = ["initContainers", "containers", "ephemeralContainers"];

/// The `/version` body of an API server `major.minor`.
pub(super) fn info((major, minor): (u32, u32)) -> Value {
    json!({
        "major": major.to_string(), "minor": minor.to_string(),
        "gitVersion": format!("v{major}.{minor}.0-slipway-kube-double"),
        "platform": "linux/amd64",
    })
}

/// Removes from a pod's JSON the fields an API server of `version` does not know,
/// and returns their paths.
pub(super) fn strip_unknown_pod_fields(pod: &mut Value, version: (u32, u32)) -> Vec<String> {
    let mut dropped = Vec::new();
    if version >= (1, APPARMOR_FIELD_SINCE) {
        return dropped;
    }
    let spec = &mut pod["spec"];
    if let Some(sc) = spec["securityContext"].as_object_mut()
        && sc.remove("appArmorProfile").is_some()
    {
        dropped.push("spec.securityContext.appArmorProfile".to_owned());
    }
    for list in CONTAINER_LISTS {
        for (i, c) in spec[list].as_array_mut().into_iter().flatten().enumerate() {
            if let Some(sc) = c["securityContext"].as_object_mut()
                && sc.remove("appArmorProfile").is_some()
            {
                dropped.push(format!("spec.{list}[{i}].securityContext.appArmorProfile"));
            }
        }
    }
    dropped
}
