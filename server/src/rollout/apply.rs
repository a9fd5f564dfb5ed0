//! The cluster half of a rollout tick: what the stable version looks like, bringing the
//! rollout's objects and the traffic to what a step wants (each object written once per
//! change), and finishing or cleaning up. Every function is safe to repeat.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use pipelines::Traffic;
use serde_json::json;

use super::actions::{Desired, canary_replicas};
use super::cluster::{rolled_out, stuck};
use super::driver::{DRAIN_MS, R, Tick};
use super::objects::{
    CanaryPods, canary_deployment, canary_name, canary_service, container_image, replicas,
    switched_selector,
};
use super::traffic::{canary_ingress, canary_ingress_name, route_for};
use crate::store::rollouts::RolloutRecord;

impl Tick<'_> {
    pub(super) async fn remember_stable(&self, r: &mut RolloutRecord) -> R<()> {
        let c = self.cluster;
        let d = c
            .get(&c.deployments(), "Deployment", &r.deployment)
            .await?
            .ok_or_else(|| {
                format!(
                    "Deployment {} does not exist in namespace {}",
                    r.deployment, c.namespace
                )
            })?;
        r.stable_image = container_image(&d, r.spec.target.container.as_deref());
        if r.stable_image.is_none() {
            return Err(match &r.spec.target.container {
                Some(n) => format!("Deployment {} has no container `{n}`", r.deployment),
                None => format!("Deployment {} has no containers", r.deployment),
            });
        }
        r.memo["stable_replicas"] = json!(replicas(&d));
        let svc = self.service_name(r);
        if let Some(s) = c.get(&c.services(), "Service", &svc).await? {
            let sel = s.spec.and_then(|s| s.selector).unwrap_or_default();
            r.memo["stable_selector"] = json!(sel);
        }
        (self.log)(
            r,
            format!(
                "{} in {} runs {} ({} replicas); rolling out {}",
                r.deployment,
                c.namespace,
                r.stable_image.as_deref().unwrap_or("?"),
                replicas(&d),
                r.image
            ),
        );
        Ok(())
    }

    pub(super) fn service_name(&self, r: &RolloutRecord) -> String {
        r.spec
            .target
            .service
            .clone()
            .unwrap_or_else(|| r.deployment.clone())
    }

    pub(super) fn preview_name(&self, r: &RolloutRecord) -> String {
        match &r.spec.strategy {
            pipelines::Strategy::BlueGreen(bg) => bg
                .preview_service
                .clone()
                .unwrap_or_else(|| format!("{}-preview", self.service_name(r))),
            _ => format!("{}-preview", self.service_name(r)),
        }
    }

    pub(super) fn stable_replicas(r: &RolloutRecord) -> i32 {
        r.memo["stable_replicas"].as_i64().unwrap_or(1) as i32
    }

    pub(super) fn stable_selector(r: &RolloutRecord) -> BTreeMap<String, String> {
        serde_json::from_value(r.memo["stable_selector"].clone()).unwrap_or_default()
    }

    pub(super) async fn stable(&self, r: &RolloutRecord) -> R<Deployment> {
        let c = self.cluster;
        c.get(&c.deployments(), "Deployment", &r.deployment)
            .await?
            .ok_or_else(|| format!("Deployment {} was deleted during the rollout", r.deployment))
    }

    pub(super) async fn stable_service(&self, r: &RolloutRecord) -> R<Service> {
        let c = self.cluster;
        let name = self.service_name(r);
        c.get(&c.services(), "Service", &name)
            .await?
            .ok_or_else(|| format!("Service {name} does not exist in namespace {}", c.namespace))
    }

    /// Brings the cluster to `d`; `true` once the new version's pods are ready for it.
    pub(super) async fn apply(&self, r: &mut RolloutRecord, d: &Desired) -> R<bool> {
        let c = self.cluster;
        let traffic = super::actions::traffic(&r.spec.strategy);
        let blue_green = matches!(r.spec.strategy, pipelines::Strategy::BlueGreen(_));
        let total = Self::stable_replicas(r);
        let stable = self.stable(r).await?;
        let keep = traffic == Traffic::Replicas && !blue_green;
        let want = if blue_green {
            total
        } else {
            canary_replicas(total, d.weight).max(i32::from(d.canary_up()))
        };
        let selector = Self::stable_selector(r);
        let canary = canary_deployment(
            &stable,
            &CanaryPods {
                image: &r.image,
                container: r.spec.target.container.as_deref(),
                replicas: want,
                keep_stable_labels: keep,
                service_selector: &selector,
                rollout: r.id,
            },
        )?;
        let now = self
            .ensure(r, &c.deployments(), "Deployment", &canary)
            .await?;
        if let Some(why) = stuck(&now) {
            return Err(format!("the new version does not come up: {why}"));
        }
        let canary_ready = rolled_out(&now);
        if !keep {
            let svc = self.stable_service(r).await?;
            let name = if blue_green {
                self.preview_name(r)
            } else {
                canary_name(&self.service_name(r))
            };
            let cs = canary_service(&name, &stable, &svc, r.id)?;
            self.ensure(r, &c.services(), "Service", &cs).await?;
        }
        if !canary_ready {
            return Ok(false);
        }
        match &traffic {
            Traffic::Replicas if !blue_green => {
                // The new pods are ready: the old make room for them.
                let rest = (total - want).max(0);
                self.set_stable(r, None, rest).await?;
            }
            Traffic::Gateway { route } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                c.update_route(route, |cur| route_for(cur, &stable_svc, &canary_svc, d))
                    .await?;
            }
            Traffic::Nginx { ingress } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                let base = c
                    .get(&c.ingresses(), "Ingress", ingress)
                    .await?
                    .ok_or_else(|| {
                        format!(
                            "Ingress {ingress} does not exist in namespace {}",
                            c.namespace
                        )
                    })?;
                let meta = canary.metadata.clone();
                let ing = canary_ingress(&base, &stable_svc, &canary_svc, d, meta)?;
                self.ensure(r, &c.ingresses(), "Ingress", &ing).await?;
            }
            Traffic::Replicas => {}
        }
        if blue_green {
            let target = if d.switched {
                switched_selector(&r.deployment)
            } else {
                selector
            };
            self.set_selector(r, target).await?;
        }
        Ok(true)
    }

    /// [`Cluster::ensure`], skipped when this rollout already applied exactly `want`
    /// and the object is still there (its digest is in the memo): each object is
    /// written once per change, not once per tick, and never again after a restart.
    pub(super) async fn ensure<K>(
        &self,
        r: &mut RolloutRecord,
        api: &kube::Api<K>,
        what: &str,
        want: &K,
    ) -> R<K>
    where
        K: kube::Resource
            + Clone
            + serde::de::DeserializeOwned
            + serde::Serialize
            + std::fmt::Debug,
    {
        use sha2::{Digest, Sha256};
        let name = want.meta().name.clone().unwrap_or_default();
        let key = format!("{what}/{name}");
        let digest = hex::encode(Sha256::digest(
            serde_json::to_vec(want).map_err(|e| e.to_string())?,
        ));
        if r.memo["applied"][&key] == json!(digest)
            && let Some(current) = self.cluster.get(api, what, &name).await?
        {
            return Ok(current);
        }
        let got = self.cluster.ensure(api, what, want).await?;
        if !r.memo["applied"].is_object() {
            r.memo["applied"] = json!({});
        }
        r.memo["applied"][&key] = json!(digest);
        Ok(got)
    }

    /// Whether traffic left the new version at least [`DRAIN_MS`] ago, so its pods may
    /// go without cutting a request in flight; the first call starts the clock.
    pub(super) fn drained(&self, r: &mut RolloutRecord) -> bool {
        let now = self.store.now_ms();
        match r.memo["drain_since"].as_i64() {
            Some(since) => now - since >= DRAIN_MS,
            None => {
                r.memo["drain_since"] = json!(now);
                false
            }
        }
    }

    pub(super) async fn set_selector(
        &self,
        r: &RolloutRecord,
        sel: BTreeMap<String, String>,
    ) -> R<()> {
        let c = self.cluster;
        let name = self.service_name(r);
        c.update(&c.services(), "Service", &name, |cur| {
            let mut s = cur.clone();
            s.spec.get_or_insert_with(Default::default).selector = Some(sel.clone());
            Ok(s)
        })
        .await?;
        Ok(())
    }

    /// Sets the stable Deployment's replicas, and its image when `image` is given.
    pub(super) async fn set_stable(
        &self,
        r: &RolloutRecord,
        image: Option<&str>,
        n: i32,
    ) -> R<Deployment> {
        let c = self.cluster;
        let container = r.spec.target.container.clone();
        let got = c
            .update(&c.deployments(), "Deployment", &r.deployment, |cur| {
                let mut d = cur.clone();
                let spec = d.spec.get_or_insert_with(Default::default);
                spec.replicas = Some(n);
                if let Some(image) = image {
                    let pod = spec.template.spec.get_or_insert_with(Default::default);
                    let ctr = match &container {
                        Some(name) => pod.containers.iter_mut().find(|c| &c.name == name),
                        None => pod.containers.first_mut(),
                    };
                    ctr.ok_or_else(|| format!("Deployment {} lost its container", r.deployment))?
                        .image = Some(image.to_string());
                }
                Ok(d)
            })
            .await?;
        got.ok_or_else(|| format!("Deployment {} was deleted during the rollout", r.deployment))
    }

    /// Recreate's first half: every old pod gone. `true` once none is left.
    pub(super) async fn recreate(&self, r: &mut RolloutRecord) -> R<bool> {
        let d = self.set_stable(r, None, 0).await?;
        let left = d.status.as_ref().and_then(|s| s.replicas).unwrap_or(0);
        Ok(left == 0 && rolled_out(&d))
    }

    /// The last step: the stable Deployment takes the new image; once it has rolled
    /// out, traffic goes back to it alone and the rollout's objects go.
    pub(super) async fn finish(&self, r: &mut RolloutRecord) -> R<bool> {
        let n = Self::stable_replicas(r);
        let image = r.image.clone();
        let d = self.set_stable(r, Some(&image), n).await?;
        if let Some(why) = stuck(&d) {
            return Err(format!("the stable Deployment does not roll out: {why}"));
        }
        if !rolled_out(&d) {
            return Ok(false);
        }
        self.restore_traffic(r).await?;
        if !self.drained(r) {
            return Ok(false);
        }
        self.remove_objects(r).await?;
        Ok(true)
    }

    pub(super) async fn restore_traffic(&self, r: &RolloutRecord) -> R<()> {
        let c = self.cluster;
        match super::actions::traffic(&r.spec.strategy) {
            Traffic::Gateway { route } => {
                let stable_svc = self.service_name(r);
                let canary_svc = canary_name(&stable_svc);
                c.update_route(&route, |cur| {
                    route_for(cur, &stable_svc, &canary_svc, &Desired::default())
                })
                .await
            }
            Traffic::Nginx { ingress } => {
                c.delete(&c.ingresses(), "Ingress", &canary_ingress_name(&ingress))
                    .await
            }
            Traffic::Replicas => {
                if matches!(r.spec.strategy, pipelines::Strategy::BlueGreen(_)) {
                    let sel = Self::stable_selector(r);
                    if !sel.is_empty() {
                        self.set_selector(r, sel).await?;
                    }
                }
                Ok(())
            }
        }
    }

    pub(super) async fn remove_objects(&self, r: &RolloutRecord) -> R<()> {
        let c = self.cluster;
        let svc = self.service_name(r);
        c.delete(&c.services(), "Service", &canary_name(&svc))
            .await?;
        c.delete(&c.services(), "Service", &self.preview_name(r))
            .await?;
        c.delete(&c.deployments(), "Deployment", &canary_name(&r.deployment))
            .await
    }
}
