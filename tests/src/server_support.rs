//! The server's test harness (`server/tests/it/support`), the parts the rollout rig and
//! its benchmark drive a real `slipway server` process with: bounded waits, processes,
//! git repositories.

#[path = "../../server/tests/it/support/git.rs"]
#[allow(dead_code, clippy::new_without_default)]
pub mod git;
#[path = "../../server/tests/it/support/poll.rs"]
#[allow(dead_code)]
pub mod poll;
#[path = "../../server/tests/it/support/process.rs"]
#[allow(dead_code, clippy::new_without_default)]
pub mod process;
