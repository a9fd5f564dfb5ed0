//! API errors for the apps group, worded as the API server words them: the
//! resource named with its group (`deployments.apps "web" not found`), the kind
//! with it (`Deployment.apps "web" is invalid: …`), and the optimistic-concurrency
//! conflict of a write from a stale resourceVersion.

use crate::kube_double::status::ApiError;
use crate::kube_double::store::Object;

pub fn not_found<K: Object>(name: &str) -> ApiError {
    ApiError {
        code: 404,
        reason: "NotFound",
        message: format!("{}.apps \"{name}\" not found", K::URL_PATH_SEGMENT),
        name: Some(name.to_owned()),
        kind: Some(K::URL_PATH_SEGMENT.to_owned()),
    }
}

pub fn conflict<K: Object>(name: &str) -> ApiError {
    ApiError {
        code: 409,
        reason: "Conflict",
        message: format!(
            "Operation cannot be fulfilled on {}.apps \"{name}\": the object has been modified; please apply your changes to the latest version and try again",
            K::URL_PATH_SEGMENT
        ),
        name: Some(name.to_owned()),
        kind: Some(K::URL_PATH_SEGMENT.to_owned()),
    }
}

pub fn invalid<K: Object>(name: &str, problems: &[String]) -> ApiError {
    ApiError {
        code: 422,
        reason: "Invalid",
        message: format!(
            "{}.apps \"{name}\" is invalid: {}",
            K::KIND,
            problems.join(", ")
        ),
        name: Some(name.to_owned()),
        kind: Some(K::KIND.to_owned()),
    }
}

/// The store's errors (AlreadyExists) with the group in the resource's name.
pub fn with_group<K: Object>(mut e: ApiError) -> ApiError {
    if e.reason == "AlreadyExists"
        && let Some(name) = e.name.clone()
    {
        e.message = format!("{}.apps \"{name}\" already exists", K::URL_PATH_SEGMENT);
    }
    e
}
