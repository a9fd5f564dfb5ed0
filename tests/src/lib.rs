//! End-to-end tests and benchmarks live in `tests/` and `src/bin/`; this library is
//! empty on purpose (shared test helpers go here when several suites need them).
