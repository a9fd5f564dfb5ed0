//! Names and labels of the Docker objects a stage creates.
//!
//! Stage ids may contain any characters (`test (features=full)`, unicode, `/`), but
//! container, network and volume names must match `[a-zA-Z0-9][a-zA-Z0-9_.-]*`. A
//! readable part is kept for operators (`docker ps`), and a random suffix makes the
//! name unique: two stages with the same id (a retry, two runs of one pipeline, two
//! runners on one engine) never collide.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Label naming the runner that created an object; the start-up sweep removes
/// everything carrying its own runner's value.
pub const RUNNER_LABEL: &str = "io.slipway.runner";
/// Label naming the stage (its handle id) an object belongs to.
pub const STAGE_LABEL: &str = "io.slipway.stage";
/// What the object is for (`step`, `service`, `io`, `network`, `workspace`).
pub const ROLE_LABEL: &str = "io.slipway.role";

/// Prefix of every name; also what operators grep for.
const PREFIX: &str = "slipway-";
/// Readable part kept from the stage id.
const READABLE_LEN: usize = 40;

/// A fresh, unique, Docker-valid name for a stage's objects, e.g.
/// `slipway-test--features-full--3f9c0a1b2c4d`.
pub fn stage_name(stage_id: &str) -> String {
    format!("{PREFIX}{}-{}", readable(stage_id), unique_suffix(stage_id))
}

/// Container name of step `index` of a stage.
pub fn step_container(stage: &str, index: usize) -> String {
    format!("{stage}-step-{index}")
}

/// Container name of a service. The service name is user input: sanitized, and
/// the index keeps two names that sanitize alike apart.
pub fn service_container(stage: &str, index: usize, service: &str) -> String {
    format!("{stage}-svc-{index}-{}", readable(service))
}

/// Name of a short-lived helper container that moves files in or out of the
/// workspace volume.
pub fn io_container(stage: &str) -> String {
    format!("{stage}-io-{}", unique_suffix(stage))
}

pub fn labels(runner: &str, stage: &str, role: &str) -> HashMap<String, String> {
    HashMap::from([
        (RUNNER_LABEL.to_owned(), runner.to_owned()),
        (STAGE_LABEL.to_owned(), stage.to_owned()),
        (ROLE_LABEL.to_owned(), role.to_owned()),
    ])
}

/// A `label=key=value` filter for the list endpoints.
pub fn label_filter(key: &str, value: &str) -> HashMap<String, Vec<String>> {
    HashMap::from([("label".to_owned(), vec![format!("{key}={value}")])])
}

fn readable(id: &str) -> String {
    let s: String = id
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                c
            } else {
                '-'
            }
        })
        .take(READABLE_LEN)
        .collect();
    if s.is_empty() { "stage".into() } else { s }
}

/// 12 hex digits from the id, the time, the process and a counter: unique per
/// call on one host, and across hosts sharing an engine with overwhelming odds.
fn unique_suffix(seed: &str) -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut h = Sha256::new();
    h.update(seed.as_bytes());
    h.update(nanos.to_le_bytes());
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    hex::encode(&h.finalize()[..6])
}

#[cfg(test)]
mod tests {
    use super::*;

    fn valid(name: &str) -> bool {
        let mut chars = name.chars();
        chars.next().is_some_and(|c| c.is_ascii_alphanumeric())
            && chars.all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c))
    }

    #[test]
    fn names_are_valid_and_unique_whatever_the_id() {
        for id in [
            "test (features=full)",
            "",
            "ü/../x",
            "-",
            &"x".repeat(300),
            "a\nb",
        ] {
            let a = stage_name(id);
            let b = stage_name(id);
            assert_ne!(a, b, "{id:?}");
            for n in [
                &a,
                &step_container(&a, 3),
                &service_container(&a, 0, "my db!"),
                &io_container(&a),
            ] {
                assert!(valid(n), "{n:?} from {id:?}");
                assert!(n.len() < 128, "{n}");
            }
        }
        assert!(stage_name("test (x)").starts_with("slipway-test--x--"));
    }
}
