//! Names and labels of the objects a stage creates on Kubernetes.
//!
//! Stage ids and runner names may contain any characters, but pod names must be
//! DNS-1123 labels (`[a-z0-9]([-a-z0-9]*[a-z0-9])?`, at most 63 characters, so the
//! name also works as the pod's hostname) and label values at most 63 characters
//! of `[A-Za-z0-9_.-]`, alphanumeric at both ends. A readable part is kept for
//! `kubectl get pods`, a random suffix makes names unique, and a label value that
//! had to be shortened or changed gets a hash so two runners never share one.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

/// Set on everything Slipway creates (the conventional label, for operators).
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
pub const MANAGED_BY: &str = "slipway";
/// The runner that created the pod: the orphan sweep and adoption select by it.
pub const RUNNER_LABEL: &str = "slipway.io/runner";
/// The stage's id, as a label value (see [`label_value`]); the exact id is in
/// [`STAGE_ANNOTATION`].
pub const STAGE_LABEL: &str = "slipway.io/stage";
/// Prefix of the labels copied from [`crate::StageSpec::labels`] (repo, run, …).
pub const LABEL_PREFIX: &str = "slipway.io/";
/// The exact stage id (label values are limited).
pub const STAGE_ANNOTATION: &str = "slipway.io/stage-id";
/// A JSON list of the step names, so an adopted pod's steps can be told apart.
pub const STEPS_ANNOTATION: &str = "slipway.io/steps";

/// Init container that receives the source (and the step scripts) by exec.
pub const SOURCE_CONTAINER: &str = "source";
/// Main container that keeps the workspace after the steps, for artifacts.
pub const WORKSPACE_CONTAINER: &str = "workspace";

const PREFIX: &str = "slipway-";
/// Readable part of a pod name: 63 minus the prefix, a dash and the suffix.
const READABLE_LEN: usize = 63 - PREFIX.len() - 1 - SUFFIX_LEN;
const SUFFIX_LEN: usize = 10;

/// A fresh pod name for a stage, e.g. `slipway-test-features-full-3f9c0a1b2c`.
pub fn pod_name(stage_id: &str) -> String {
    let readable = dns_label(stage_id, READABLE_LEN);
    let suffix: String = hex::encode(rand_bytes()).chars().take(SUFFIX_LEN).collect();
    if readable.is_empty() {
        format!("{PREFIX}stage-{suffix}")
    } else {
        format!("{PREFIX}{readable}-{suffix}")
    }
}

/// Container name of step `index`.
pub fn step_container(index: usize) -> String {
    format!("step-{index}")
}

/// Container name of service `index`: its name sanitized, prefixed so it cannot
/// collide with a step or a helper container.
pub fn service_container(index: usize, service: &str) -> String {
    let readable = dns_label(service, 40);
    if readable.is_empty() {
        format!("svc-{index}")
    } else {
        format!("svc-{index}-{readable}")
    }
}

/// The key of env var `var` of `container` in the stage's Secret (keys allow
/// `[-._a-zA-Z0-9]`; the index keeps names that sanitize alike apart).
pub fn secret_key(container: &str, index: usize, var: &str) -> String {
    let var: String = var
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-._".contains(c) {
                c
            } else {
                '_'
            }
        })
        .take(100)
        .collect();
    format!("{container}.{index}.{var}")
}

/// Lowercase alphanumerics and single dashes, at most `max` characters, no dash at
/// either end (may be empty).
fn dns_label(s: &str, max: usize) -> String {
    let mut out = String::new();
    for c in s.chars() {
        let c = c.to_ascii_lowercase();
        if c.is_ascii_alphanumeric() {
            out.push(c);
        } else if !out.is_empty() && !out.ends_with('-') {
            out.push('-');
        }
        if out.len() >= max {
            break;
        }
    }
    out.trim_end_matches('-').to_owned()
}

/// A valid label value for `s`: `s` itself when it already is one, else its
/// readable part and a hash of the whole (so distinct inputs stay distinct).
pub fn label_value(s: &str) -> String {
    let valid = s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        && s.chars().next().is_none_or(|c| c.is_ascii_alphanumeric())
        && s.chars().last().is_none_or(|c| c.is_ascii_alphanumeric());
    if valid {
        return s.to_owned();
    }
    let hash = hex::encode(&Sha256::digest(s.as_bytes())[..6]);
    let readable = dns_label(s, 63 - 1 - hash.len());
    if readable.is_empty() {
        hash
    } else {
        format!("{readable}-{hash}")
    }
}

/// The labels of a stage's pod and Secret.
pub fn labels(
    runner: &str,
    stage_id: &str,
    extra: &BTreeMap<String, String>,
) -> BTreeMap<String, String> {
    let mut labels: BTreeMap<String, String> = extra
        .iter()
        .filter_map(|(k, v)| {
            let key = dns_label(k, 63);
            (!key.is_empty()).then(|| (format!("{LABEL_PREFIX}{key}"), label_value(v)))
        })
        .collect();
    labels.insert(MANAGED_BY_LABEL.into(), MANAGED_BY.into());
    labels.insert(RUNNER_LABEL.into(), label_value(runner));
    labels.insert(STAGE_LABEL.into(), label_value(stage_id));
    labels
}

fn rand_bytes() -> [u8; 8] {
    use std::sync::atomic::{AtomicU64, Ordering};
    use std::time::{SystemTime, UNIX_EPOCH};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = Sha256::new();
    h.update(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default()
            .to_le_bytes(),
    );
    h.update(std::process::id().to_le_bytes());
    h.update(COUNTER.fetch_add(1, Ordering::Relaxed).to_le_bytes());
    let mut out = [0u8; 8];
    out.copy_from_slice(&h.finalize()[..8]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dns1123_label(s: &str) -> bool {
        s.len() <= 63
            && !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && !s.starts_with('-')
            && !s.ends_with('-')
    }

    #[test]
    fn pod_and_container_names_are_dns_labels_and_unique() {
        for id in [
            "test (features=full)",
            "",
            "ü/../x",
            "-",
            &"x".repeat(300),
            "A_B",
        ] {
            let (a, b) = (pod_name(id), pod_name(id));
            assert_ne!(a, b);
            assert!(dns1123_label(&a), "{a:?} from {id:?}");
            let svc = service_container(0, id);
            assert!(dns1123_label(&svc), "{svc:?}");
        }
        assert!(pod_name("test (x)").starts_with("slipway-test-x-"));
    }

    #[test]
    fn label_values_are_valid_and_keep_distinct_inputs_apart() {
        assert_eq!(label_value("runner-1"), "runner-1");
        let (a, b) = (label_value("my runner/1"), label_value("my runner/2"));
        assert_ne!(a, b);
        for v in [a, b, label_value(&"y".repeat(100)), label_value("ü")] {
            assert!(v.len() <= 63, "{v}");
            assert!(
                v.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            );
        }
        let l = labels(
            "r",
            "build",
            &BTreeMap::from([("repo".into(), "acme/app".into())]),
        );
        assert_eq!(l["slipway.io/repo"], label_value("acme/app"));
        assert_eq!(l[RUNNER_LABEL], "r");
    }
}
