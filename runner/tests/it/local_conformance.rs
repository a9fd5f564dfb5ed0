//! The backend conformance suite against the local backend, through the same
//! public macro other backends use.

runner::conformance_tests!(std::sync::Arc::new(runner::LocalBackend::new(None)), None);
