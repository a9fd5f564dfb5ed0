//! The integration tests of `pipelines`, one binary: one link instead of one per file.

mod data_driven;
mod docs;
mod injection;
mod no_panic;
