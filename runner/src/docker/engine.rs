//! Small helpers over bollard: error mapping and "already gone is fine".

use bollard::errors::Error as DockerError;

use crate::error::Error;

/// Maps an engine error onto the runner's (retryable) backend error.
pub fn err(op: &'static str) -> impl Fn(DockerError) -> Error + Copy {
    move |e| Error::Backend {
        op,
        message: message(&e),
    }
}

/// The engine's own message when it sent one, bollard's description otherwise.
pub fn message(e: &DockerError) -> String {
    match e {
        DockerError::DockerResponseServerError {
            status_code,
            message,
        } => format!("{message} (HTTP {status_code})"),
        other => other.to_string(),
    }
}

/// HTTP 404 from the engine: the object does not exist.
pub fn is_not_found(e: &DockerError) -> bool {
    matches!(
        e,
        DockerError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// Treats "no such object" as success: removal is idempotent.
pub fn gone_ok(r: Result<(), DockerError>) -> Result<(), DockerError> {
    match r {
        Err(e) if is_not_found(&e) => Ok(()),
        // 409 "removal already in progress" also ends with the object gone.
        Err(DockerError::DockerResponseServerError {
            status_code: 409,
            message,
        }) if message.contains("already in progress") => Ok(()),
        other => other,
    }
}
