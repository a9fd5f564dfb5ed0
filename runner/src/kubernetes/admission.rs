//! Creating a stage pod past the API server's admission. A ResourceQuota the
//! namespace has used up (403 `exceeded quota: …`, or `status unknown for quota`
//! while the quota controller catches up) is a wait, not a failure: quota frees up as
//! other pods end, so the create is retried — every
//! [`KubernetesOptions::quota_retry_interval`](super::KubernetesOptions::quota_retry_interval),
//! until the stage's deadline or until the driver abandons the set-up (cancel,
//! timeout: [`crate::Backend::abandon_setup`]) — while the stage stays waiting, with
//! the quota's message as its waiting reason ([`KubernetesBackend::waiting_reason`],
//! and once in the runner's log). Any other refusal (Pod Security, `failed quota:
//! must specify`, an admission webhook, RBAC) fails the stage at once with the API
//! server's message: it would fail the same way every time.
//!
//! The messages are the quota admission plugin's
//! (`k8s.io/apiserver/pkg/admission/plugin/resourcequota/controller.go`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use tokio_util::sync::CancellationToken;

use super::{KubernetesBackend, api_err, strict};
use crate::error::{Error, Result};
use crate::lock::lock;
use crate::spec::StageSpec;

/// Set-ups in progress, by [`setup_key`]: whether the driver abandoned one, and why
/// one waits.
#[derive(Default)]
pub(super) struct Setups(Mutex<HashMap<String, Arc<Setup>>>);

#[derive(Default)]
pub(super) struct Setup {
    stage: String,
    abandoned: CancellationToken,
    waiting: Mutex<Option<String>>,
}

/// One run of a stage: its id and its labels (the agent labels each stage run with
/// its lease's unique `stage-id`), so two runs of a stage of the same name at once
/// do not share a set-up.
fn setup_key(spec: &StageSpec) -> String {
    let labels: Vec<String> = spec
        .labels
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    format!("{}\n{}", spec.id, labels.join(","))
}

/// A set-up's registration; dropping it (the set-up ended) forgets it.
pub(super) struct SetupGuard<'a> {
    setups: &'a Setups,
    key: String,
    pub(super) setup: Arc<Setup>,
}

impl Drop for SetupGuard<'_> {
    fn drop(&mut self) {
        lock(&self.setups.0).remove(&self.key);
    }
}

impl Setups {
    /// The set-up of `spec`; an abandon that came before it started counts.
    fn entry(&self, spec: &StageSpec) -> (String, Arc<Setup>) {
        let key = setup_key(spec);
        let setup = lock(&self.0)
            .entry(key.clone())
            .or_insert_with(|| {
                Arc::new(Setup {
                    stage: spec.id.clone(),
                    ..Default::default()
                })
            })
            .clone();
        (key, setup)
    }

    pub(super) fn begin(&self, spec: &StageSpec) -> SetupGuard<'_> {
        let (key, setup) = self.entry(spec);
        SetupGuard {
            setups: self,
            key,
            setup,
        }
    }

    /// Called only while the set-up of `spec` is unfinished (the driver awaits it
    /// after), so the entry is always removed by that set-up's guard.
    pub(super) fn abandon(&self, spec: &StageSpec) {
        self.entry(spec).1.abandoned.cancel();
    }

    fn waiting(&self, stage: &str) -> Option<String> {
        let setups: Vec<Arc<Setup>> = lock(&self.0)
            .values()
            .filter(|s| s.stage == stage)
            .cloned()
            .collect();
        setups.iter().find_map(|s| lock(&s.waiting).clone())
    }
}

/// How the API server refused a pod create.
#[derive(Debug, PartialEq, Eq)]
enum Refusal {
    /// The namespace's quota is used up for now.
    QuotaExhausted(String),
    /// Admission (or authorization) refused this pod for good.
    Forbidden(String),
    /// The pod itself is invalid (400, 422).
    Invalid(String),
}

fn refusal(e: &kube::Error) -> Option<Refusal> {
    let kube::Error::Api(s) = e else {
        return None;
    };
    match s.code {
        403 if s.message.contains("exceeded quota: ")
            || s.message.contains("status unknown for quota: ") =>
        {
            Some(Refusal::QuotaExhausted(s.message.clone()))
        }
        403 => Some(Refusal::Forbidden(s.message.clone())),
        400 | 422 => Some(Refusal::Invalid(s.message.clone())),
        _ => None,
    }
}

impl KubernetesBackend {
    /// Why the set-up of stage `stage_id` waits, while it waits: the quota's message.
    pub fn waiting_reason(&self, stage_id: &str) -> Option<String> {
        self.inner.setups.waiting(stage_id)
    }

    /// Creates the stage's pod, waiting while its namespace is out of quota.
    pub(super) async fn create_admitted(
        &self,
        spec: &StageSpec,
        setup: &Setup,
        pod: &Pod,
    ) -> Result<Pod> {
        let options = &self.inner.options;
        let name = pod.metadata.name.clone().unwrap_or_default();
        let patience = spec.timeout.unwrap_or(options.max_stage_duration);
        let give_up = tokio::time::Instant::now() + patience;
        let interval = options.quota_retry_interval.max(Duration::from_millis(100));
        loop {
            let err = match strict::create(&self.inner.client, &self.inner.pods, pod).await {
                Ok(created) => {
                    *lock(&setup.waiting) = None;
                    return Ok(created);
                }
                Err(e) => e,
            };
            let why = match refusal(&err) {
                Some(Refusal::QuotaExhausted(why)) => why,
                Some(Refusal::Forbidden(why)) => {
                    return Err(Error::InvalidSpec(format!(
                        "the API server's admission refused the stage's pod: {why}"
                    )));
                }
                // The API server refused the pod itself: the spec's fault.
                Some(Refusal::Invalid(why)) => {
                    return Err(Error::InvalidSpec(format!(
                        "the API server refused the stage's pod: {why}"
                    )));
                }
                None => return Err(api_err("create pod")(err)),
            };
            let first = lock(&setup.waiting).replace(why.clone()).is_none();
            if first {
                tracing::warn!(stage = %spec.id, pod = %name, reason = %why,
                    "the stage waits for quota: its pod is over the namespace's ResourceQuota");
            }
            tokio::select! {
                _ = setup.abandoned.cancelled() => {
                    return Err(Error::Backend {
                        op: "setup_stage",
                        message: format!("stopped waiting for quota ({why})"),
                    });
                }
                _ = tokio::time::sleep_until(give_up) => {
                    return Err(Error::Backend {
                        op: "setup_stage",
                        message: format!("waited {patience:?} for quota in vain: {why}"),
                    });
                }
                _ = tokio::time::sleep(interval) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: u16, message: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(message, "Forbidden")
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn quota_waits_and_other_refusals_do_not() {
        let exceeded = "pods \"p\" is forbidden: exceeded quota: compute, requested: requests.cpu=1, used: requests.cpu=2, limited: requests.cpu=2";
        assert_eq!(
            refusal(&api(403, exceeded)),
            Some(Refusal::QuotaExhausted(exceeded.into()))
        );
        let psa = "pods \"p\" is forbidden: violates PodSecurity \"restricted:latest\": runAsNonRoot != true";
        assert_eq!(
            refusal(&api(403, psa)),
            Some(Refusal::Forbidden(psa.into()))
        );
        let must =
            "pods \"p\" is forbidden: failed quota: compute: must specify limits.cpu for: step-0";
        assert_eq!(
            refusal(&api(403, must)),
            Some(Refusal::Forbidden(must.into()))
        );
        assert!(matches!(refusal(&api(422, "x")), Some(Refusal::Invalid(_))));
        assert_eq!(refusal(&api(500, "x")), None);
    }

    #[test]
    fn an_abandon_before_the_set_up_starts_counts_and_is_forgotten_after() {
        let setups = Setups::default();
        let spec = StageSpec::new("s");
        setups.abandon(&spec);
        {
            let g = setups.begin(&spec);
            assert!(g.setup.abandoned.is_cancelled());
            // Another run of a stage of the same name is a set-up of its own.
            let mut other = StageSpec::new("s");
            other.labels.insert("stage-id".into(), "2".into());
            assert!(!setups.begin(&other).setup.abandoned.is_cancelled());
        }
        assert!(lock(&setups.0).is_empty());
        let g = setups.begin(&spec);
        assert!(!g.setup.abandoned.is_cancelled());
    }
}
