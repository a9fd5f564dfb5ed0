//! The backend conformance suite: written once, run by every backend.
//!
//! Each case is a public async fn taking the backend under test and the image to
//! run steps in (`None` for the local backend). Scripts only use POSIX `sh` and
//! busybox-level tools (`printf`, `head`, `tr`, `yes`, `base64`, `sleep`, `ln`,
//! `env`), so a busybox image is enough for container backends.
//!
//! Use it through the macro, which generates one test per case:
//!
//! ```ignore
//! runner::conformance_tests!(std::sync::Arc::new(runner::LocalBackend::new(None)), None);
//! ```
//!
//! The backend expression is evaluated inside the test's async runtime, so it may
//! `.await` (e.g. `Arc::new(DockerBackend::connect().await.unwrap())`).
//!
//! Cases by topic: `steps` (exit codes, environment, shared workspace), `sources`,
//! `stopping` (timeouts, cancel, leftover processes), `output` (volume, bytes,
//! streams, order), `masking`, `artifacts`, `kinds` (scan and image stages). The
//! helpers (`harness`, `process`, `with_guard`) are public for backend-specific tests.

mod artifacts;
mod harness;
mod kinds;
mod masking;
mod output;
mod process;
mod sources;
mod steps;
mod stopping;
mod with_guard;

use std::future::Future;
use std::time::Duration;

pub use artifacts::artifacts;
pub use harness::{Run, drive, run, run_with, stage};
pub use kinds::{image_stage_missing_dockerfile, scan_stage};
pub use masking::masking;
pub use output::{binary_output, event_order, large_output, long_lines, stdout_stderr_separation};
pub use process::{PRINT_GRANDCHILD, ProcessRef};
pub use sources::{directory_source, git_source};
pub use steps::{env_isolation, exit_codes, workspace_shared_between_steps};
pub use stopping::{
    background_process_does_not_block, cancel_kills_process_tree,
    cancel_while_the_log_is_not_taken, stage_timeout, step_timeout, term_ignored_still_killed,
};
pub use with_guard::WithGuard;

/// Upper bound for one case, so a hanging backend fails the test instead of CI.
pub const CASE_TIMEOUT: Duration = Duration::from_secs(300);

/// Generates one `#[test]` per conformance case for a backend.
///
/// `$backend`: an expression of type `Arc<dyn Backend>` (or coercible to it),
/// evaluated once per test inside a Tokio runtime (it may use `.await`).
/// `$image`: an `Option<String>` with the image steps run in.
///
/// Each test builds its own multi-threaded runtime, so the calling crate needs no
/// tokio test macros.
#[macro_export]
macro_rules! conformance_tests {
    ($backend:expr, $image:expr $(,)?) => {
        $crate::conformance_tests!(@cases ($backend) ($image)
            exit_codes,
            env_isolation,
            workspace_shared_between_steps,
            git_source,
            directory_source,
            step_timeout,
            term_ignored_still_killed,
            stage_timeout,
            cancel_kills_process_tree,
            cancel_while_the_log_is_not_taken,
            background_process_does_not_block,
            large_output,
            binary_output,
            masking,
            artifacts,
            stdout_stderr_separation,
            long_lines,
            event_order,
            scan_stage,
            image_stage_missing_dockerfile,
        );
    };
    (@cases ($backend:expr) ($image:expr) $($case:ident),* $(,)?) => {
        $(
            #[test]
            fn $case() {
                $crate::conformance::run_case(stringify!($case), async {
                    let backend: ::std::sync::Arc<dyn $crate::Backend> = $backend;
                    let image: ::std::option::Option<::std::string::String> = $image;
                    $crate::conformance::$case(backend, image).await;
                });
            }
        )*
    };
}

/// Runs one case on a fresh multi-threaded runtime, bounded by [`CASE_TIMEOUT`].
pub fn run_case(name: &str, case: impl Future<Output = ()>) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("building a tokio runtime");
    rt.block_on(async {
        if tokio::time::timeout(CASE_TIMEOUT, case).await.is_err() {
            panic!("conformance case `{name}` did not finish within {CASE_TIMEOUT:?}");
        }
    });
}
