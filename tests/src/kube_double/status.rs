//! API errors as the API server sends them: a `metav1.Status` object with the HTTP
//! code, a machine-readable `reason` and a message in the API server's wording, so
//! the client maps them onto `kube::Error::Api` exactly as it would for a cluster.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use serde_json::json;

/// A failed API call. `kind` is the resource's plural (`pods`), as in `details.kind`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiError {
    pub code: u16,
    pub reason: &'static str,
    pub message: String,
    pub name: Option<String>,
    pub kind: Option<String>,
}

impl ApiError {
    /// What the API server answers for a log or exec request when it cannot reach the
    /// pod's kubelet (a lost node, see `node_loss`): it proxies the dial error.
    pub fn kubelet_unreachable(what: &str) -> ApiError {
        let node = super::NODE_NAME;
        ApiError {
            code: 500,
            reason: "InternalError",
            message: format!(
                "Get \"https://{node}:10250/{what}\": dial tcp {node}:10250: connect: no route to host"
            ),
            name: None,
            kind: None,
        }
    }

    pub fn not_found(kind: &str, name: &str) -> ApiError {
        ApiError {
            code: 404,
            reason: "NotFound",
            message: format!("{kind} \"{name}\" not found"),
            name: Some(name.to_owned()),
            kind: Some(kind.to_owned()),
        }
    }

    pub fn already_exists(kind: &str, name: &str) -> ApiError {
        ApiError {
            code: 409,
            reason: "AlreadyExists",
            message: format!("{kind} \"{name}\" already exists"),
            name: Some(name.to_owned()),
            kind: Some(kind.to_owned()),
        }
    }

    /// 422: the object is well-formed JSON but not a valid (or, for the double, not
    /// a supported) object. `kind` is the singular Kind (`Pod`), as the API server
    /// words it: `Pod "x" is invalid: spec.containers: Required value`.
    pub fn invalid(kind: &str, name: &str, problems: &[String]) -> ApiError {
        ApiError {
            code: 422,
            reason: "Invalid",
            message: format!("{kind} \"{name}\" is invalid: {}", problems.join(", ")),
            name: Some(name.to_owned()),
            kind: Some(kind.to_owned()),
        }
    }

    pub fn bad_request(message: impl Into<String>) -> ApiError {
        ApiError {
            code: 400,
            reason: "BadRequest",
            message: message.into(),
            name: None,
            kind: None,
        }
    }

    /// 410 for a watch from a resourceVersion older than the retained history.
    pub fn expired(requested: u64, oldest: u64) -> ApiError {
        ApiError {
            code: 410,
            reason: "Expired",
            message: format!("too old resource version: {requested} ({oldest})"),
            name: None,
            kind: None,
        }
    }

    pub fn method_not_allowed(what: &str) -> ApiError {
        ApiError {
            code: 405,
            reason: "MethodNotAllowed",
            message: format!("{what} is not supported by the Kubernetes test double"),
            name: None,
            kind: None,
        }
    }

    /// The `Status` object (also the `object` of a watch `ERROR` event).
    pub fn to_status(&self) -> serde_json::Value {
        let mut status = json!({
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": self.message,
            "reason": self.reason,
            "code": self.code,
        });
        if self.name.is_some() || self.kind.is_some() {
            status["details"] = json!({ "name": self.name, "kind": self.kind });
        }
        status
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let code = StatusCode::from_u16(self.code).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        (code, axum::Json(self.to_status())).into_response()
    }
}

/// The `Status` a DELETE returns for an object removed at once (secrets).
pub fn success_deleted(kind: &str, name: &str, uid: Option<&str>) -> serde_json::Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Success",
        "details": { "name": name, "kind": kind, "uid": uid },
    })
}
