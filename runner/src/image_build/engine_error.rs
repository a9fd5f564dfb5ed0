//! Engine failures that are not about the build's inputs.

use bollard::errors::Error as EngineError;

use crate::error::Error;

/// Engine trouble that is not about the build's inputs: retryable.
pub(super) fn engine_error(op: &'static str, e: EngineError) -> Error {
    // bollard's transport errors say little at the top ("client error (SendRequest)");
    // the cause chain says what broke.
    let mut message = e.to_string();
    let mut source = std::error::Error::source(&e);
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    Error::Backend { op, message }
}
