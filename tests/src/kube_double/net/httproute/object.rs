//! The stored HTTPRoute: metadata typed as every other object's, the spec as the
//! JSON the `gateway-api` crate's `HttpRouteSpec` serializes (admitted through it,
//! so unknown fields are pruned as the API server prunes them for a structural
//! schema), and the status the double's gateway reports.
//!
//! The `gateway-api` crate is built on kube 4 / k8s-openapi 0.28 and the double on
//! k8s-openapi 0.29, so the crate's `HTTPRoute` cannot be the stored type itself;
//! this wrapper implements the 0.29 traits the store needs.

use gateway_api::httproutes::HttpRouteSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use crate::kube_double::store::now;

pub const GROUP: &str = "gateway.networking.k8s.io";
pub const API_VERSION: &str = "gateway.networking.k8s.io/v1";
/// The `controllerName` the double's gateway writes into route status.
pub const CONTROLLER_NAME: &str = "slipway.dev/kube-double-gateway";

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HttpRouteObject {
    #[serde(rename = "apiVersion", default)]
    pub api_version: String,
    #[serde(default)]
    pub kind: String,
    #[serde(default)]
    pub metadata: ObjectMeta,
    #[serde(default)]
    pub spec: Value,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Value>,
}

impl k8s_openapi::Resource for HttpRouteObject {
    const API_VERSION: &'static str = API_VERSION;
    const GROUP: &'static str = GROUP;
    const KIND: &'static str = "HTTPRoute";
    const VERSION: &'static str = "v1";
    const URL_PATH_SEGMENT: &'static str = "httproutes";
    type Scope = k8s_openapi::NamespaceResourceScope;
}

impl k8s_openapi::Metadata for HttpRouteObject {
    type Ty = ObjectMeta;
    fn metadata(&self) -> &ObjectMeta {
        &self.metadata
    }
    fn metadata_mut(&mut self) -> &mut ObjectMeta {
        &mut self.metadata
    }
}

impl HttpRouteObject {
    /// The spec as the `gateway-api` crate types it (always decodes: it was
    /// admitted through that type).
    pub fn typed_spec(&self) -> Option<HttpRouteSpec> {
        serde_json::from_value(self.spec.clone()).ok()
    }
}

/// `status.parents` as a gateway reports it: one entry per parentRef, Accepted
/// (the double serves every route) and ResolvedRefs (whether every backend and
/// mirror Service existed when the route was written: `unresolved` names those
/// that did not).
pub fn status(spec: &Value, generation: i64, unresolved: &[String]) -> Value {
    let at = json!(now());
    let resolved = unresolved.is_empty();
    let parents: Vec<Value> = spec
        .get("parentRefs")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .map(|parent| {
            json!({
                "parentRef": parent,
                "controllerName": CONTROLLER_NAME,
                "conditions": [
                    {
                        "type": "Accepted", "status": "True", "reason": "Accepted",
                        "message": "Route is accepted (the kube double serves every route on its one gateway)",
                        "observedGeneration": generation, "lastTransitionTime": at,
                    },
                    {
                        "type": "ResolvedRefs",
                        "status": if resolved { "True" } else { "False" },
                        "reason": if resolved { "ResolvedRefs" } else { "BackendNotFound" },
                        "message": if resolved {
                            "All references resolved".to_owned()
                        } else {
                            format!("Services not found: {}", unresolved.join(", "))
                        },
                        "observedGeneration": generation, "lastTransitionTime": at,
                    },
                ],
            })
        })
        .collect();
    json!({ "parents": parents })
}

/// Keeps `lastTransitionTime` of conditions whose status did not change, so
/// writing the same route twice is no change.
pub fn keep_transition_times(old: Option<&Value>, next: &mut Value) {
    let Some(old) = old else { return };
    let find = |parent: usize, kind: &str| -> Option<&Value> {
        old.pointer(&format!("/parents/{parent}/conditions"))?
            .as_array()?
            .iter()
            .find(|c| c.get("type").and_then(Value::as_str) == Some(kind))
    };
    let Some(parents) = next.get_mut("parents").and_then(Value::as_array_mut) else {
        return;
    };
    for (i, parent) in parents.iter_mut().enumerate() {
        let Some(conditions) = parent.get_mut("conditions").and_then(Value::as_array_mut) else {
            continue;
        };
        for c in conditions {
            let kind = c
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or("")
                .to_owned();
            if let Some(before) = find(i, &kind)
                && before.get("status") == c.get("status")
            {
                c["lastTransitionTime"] = before["lastTransitionTime"].clone();
            }
        }
    }
}
