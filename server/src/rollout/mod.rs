//! The rollout controller: progressive delivery of a deploy stage's new image to a
//! Kubernetes Deployment in the environment's cluster, driven by the server (never by a
//! runner), like Argo Rollouts or Flagger but from the pipeline.
//!
//! `start` turns a queued rollout stage into a rollout row; the worker
//! ([`crate::workers::rollouts`]) leases rows and runs one [`driver::Tick`] per rollout
//! per round (`apply`: its cluster half). The strategy becomes a flat list of `actions`; `objects` builds the
//! rollout's Deployment and Services from the stable ones; `traffic` edits the
//! HTTPRoute or builds the ingress-nginx canary Ingress; `analysis` measures HTTP and
//! Prometheus checks and judges them; `cluster` is the "make it so" client.

pub mod actions;
pub mod analysis;
mod apply;
pub mod cluster;
pub mod driver;
pub mod objects;
pub mod start;
pub mod traffic;

use crate::crypto::SecretBox;
use crate::store::environments::Environment;

/// The environment's kubeconfig, opened (`None`: none stored — the server's own
/// credentials apply). `Err` says why it cannot be opened.
pub fn kubeconfig(secret_box: &SecretBox, env: &Environment) -> Result<Option<String>, String> {
    let Some(sealed) = env.kubeconfig_enc.as_deref() else {
        return Ok(None);
    };
    let aad = crate::crypto::kubeconfig_aad(env.repo_id, &env.name);
    let plain = secret_box.open(sealed, &aad).map_err(|_| {
        format!(
            "the kubeconfig of environment `{}` cannot be decrypted with the server's key (was the key changed?)",
            env.name
        )
    })?;
    String::from_utf8(plain.to_vec())
        .map(Some)
        .map_err(|_| format!("the kubeconfig of environment `{}` is not UTF-8", env.name))
}
