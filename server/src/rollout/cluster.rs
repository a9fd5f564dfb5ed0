//! The environment's cluster as the rollout controller uses it: a client from the
//! environment's kubeconfig (or the server's own credentials), and "make it so" writes —
//! create or update to a desired object, delete if present — each safe to repeat.
//!
//! Updates of objects the controller does not own (the stable Deployment, Service,
//! HTTPRoute) read, change and replace them with their resourceVersion, so a concurrent
//! change by someone else is a 409 that is read again and retried, never overwritten.

use std::fmt::Debug;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::networking::v1::Ingress;
use kube::api::{Api, DeleteParams, DynamicObject, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, GroupVersionKind};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// A cluster error as people read it: the object, and what the API server said.
pub type ClusterResult<T> = Result<T, String>;

pub struct Cluster {
    client: kube::Client,
    pub namespace: String,
}

/// Conflicting writes retried before giving up for this tick.
const CONFLICT_RETRIES: usize = 5;

fn describe(e: kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

fn is_status(e: &kube::Error, code: u16) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == code)
}

impl Cluster {
    /// Connects with `kubeconfig` (YAML text), or the server's own credentials
    /// (in-cluster, `KUBECONFIG`, `~/.kube/config`) when `None`.
    pub async fn connect(kubeconfig: Option<&str>, namespace: &str) -> ClusterResult<Cluster> {
        let config = match kubeconfig {
            Some(text) => {
                let kc = kube::config::Kubeconfig::from_yaml(text)
                    .map_err(|e| format!("the environment's kubeconfig: {e}"))?;
                kube::Config::from_custom_kubeconfig(kc, &Default::default())
                    .await
                    .map_err(|e| format!("the environment's kubeconfig: {e}"))?
            }
            None => kube::Config::infer().await.map_err(|e| {
                format!("no kubeconfig for the environment and none on the server: {e}")
            })?,
        };
        let client = kube::Client::try_from(config).map_err(|e| format!("cluster client: {e}"))?;
        Ok(Cluster {
            client,
            namespace: namespace.to_string(),
        })
    }

    fn api<K>(&self) -> Api<K>
    where
        K: kube::Resource<Scope = kube::core::NamespaceResourceScope>,
        <K as kube::Resource>::DynamicType: Default,
    {
        Api::namespaced(self.client.clone(), &self.namespace)
    }

    pub fn deployments(&self) -> Api<Deployment> {
        self.api()
    }

    pub fn services(&self) -> Api<Service> {
        self.api()
    }

    pub fn ingresses(&self) -> Api<Ingress> {
        self.api()
    }

    fn routes(&self) -> Api<DynamicObject> {
        let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "HTTPRoute");
        let ar = ApiResource::from_gvk_with_plural(&gvk, "httproutes");
        Api::namespaced_with(self.client.clone(), &self.namespace, &ar)
    }

    /// The object, or `None` if there is none by that name.
    pub async fn get<K>(&self, api: &Api<K>, what: &str, name: &str) -> ClusterResult<Option<K>>
    where
        K: Clone + DeserializeOwned + Debug,
    {
        api.get_opt(name)
            .await
            .map_err(|e| format!("reading {what} {name}: {}", describe(e)))
    }

    /// Creates `want`, or brings the existing object's labels and spec to it (a JSON
    /// merge patch: the same patch twice is one change).
    pub async fn ensure<K>(&self, api: &Api<K>, what: &str, want: &K) -> ClusterResult<K>
    where
        K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug,
    {
        let name = want.meta().name.clone().unwrap_or_default();
        match api.create(&PostParams::default(), want).await {
            Ok(k) => return Ok(k),
            Err(e) if is_status(&e, 409) => {}
            Err(e) => return Err(format!("creating {what} {name}: {}", describe(e))),
        }
        let body = serde_json::to_value(want).map_err(|e| e.to_string())?;
        let patch = serde_json::json!({
            "metadata": { "labels": body["metadata"]["labels"], "annotations": body["metadata"]["annotations"] },
            "spec": body["spec"],
        });
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| format!("updating {what} {name}: {}", describe(e)))
    }

    /// Deletes the object (and, in the background, what it owns); gone already is fine.
    pub async fn delete<K>(&self, api: &Api<K>, what: &str, name: &str) -> ClusterResult<()>
    where
        K: Clone + DeserializeOwned + Debug,
    {
        match api.delete(name, &DeleteParams::background()).await {
            Ok(_) => Ok(()),
            Err(e) if is_status(&e, 404) => Ok(()),
            Err(e) => Err(format!("deleting {what} {name}: {}", describe(e))),
        }
    }

    /// Reads the object, lets `change` edit it, and replaces it if anything changed;
    /// a conflicting write in between is read again (a few times). `Ok(None)` if there
    /// is no such object.
    pub async fn update<K>(
        &self,
        api: &Api<K>,
        what: &str,
        name: &str,
        mut change: impl FnMut(&K) -> ClusterResult<K>,
    ) -> ClusterResult<Option<K>>
    where
        K: kube::Resource + Clone + DeserializeOwned + Serialize + Debug + PartialEq,
    {
        for _ in 0..CONFLICT_RETRIES {
            let Some(current) = self.get(api, what, name).await? else {
                return Ok(None);
            };
            let want = change(&current)?;
            if want == current {
                return Ok(Some(current));
            }
            match api.replace(name, &PostParams::default(), &want).await {
                Ok(k) => return Ok(Some(k)),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(format!("updating {what} {name}: {}", describe(e))),
            }
        }
        Err(format!(
            "updating {what} {name}: it kept changing under the controller ({CONFLICT_RETRIES} conflicts)"
        ))
    }

    /// [`Cluster::update`] for an HTTPRoute, typed with the `gateway-api` crate.
    pub async fn update_route(
        &self,
        name: &str,
        change: impl Fn(
            &gateway_api::httproutes::HttpRoute,
        ) -> ClusterResult<gateway_api::httproutes::HttpRoute>,
    ) -> ClusterResult<()> {
        let api = self.routes();
        for _ in 0..CONFLICT_RETRIES {
            let Some(obj) = self.get(&api, "HTTPRoute", name).await? else {
                return Err(format!(
                    "HTTPRoute {name} does not exist in namespace {}",
                    self.namespace
                ));
            };
            let current: gateway_api::httproutes::HttpRoute = serde_json::to_value(&obj)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("HTTPRoute {name}: {e}"))?;
            let want = change(&current)?;
            if want.spec == current.spec {
                return Ok(());
            }
            let mut body: DynamicObject = serde_json::to_value(&want)
                .and_then(serde_json::from_value)
                .map_err(|e| format!("HTTPRoute {name}: {e}"))?;
            body.metadata.resource_version = obj.metadata.resource_version.clone();
            match api.replace(name, &PostParams::default(), &body).await {
                Ok(_) => return Ok(()),
                Err(e) if is_status(&e, 409) => continue,
                Err(e) => return Err(format!("updating HTTPRoute {name}: {}", describe(e))),
            }
        }
        Err(format!(
            "updating HTTPRoute {name}: it kept changing under the controller ({CONFLICT_RETRIES} conflicts)"
        ))
    }
}

/// Whether a Deployment has rolled out its current spec: every replica updated, ready
/// and available, none left over (what `kubectl rollout status` waits for).
pub fn rolled_out(d: &Deployment) -> bool {
    let want = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let Some(st) = &d.status else {
        return false;
    };
    st.observed_generation.unwrap_or(0) >= d.metadata.generation.unwrap_or(0)
        && st.updated_replicas.unwrap_or(0) == want
        && st.ready_replicas.unwrap_or(0) == want
        && st.available_replicas.unwrap_or(0) == want
        && st.replicas.unwrap_or(0) == want
}

/// The reason a Deployment will not roll out, if its controller gave up
/// (`Progressing=False`, `ProgressDeadlineExceeded`).
pub fn stuck(d: &Deployment) -> Option<String> {
    d.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "Progressing" && c.status == "False")
        .map(|c| {
            format!(
                "{}: {}",
                c.reason.as_deref().unwrap_or("not progressing"),
                c.message.as_deref().unwrap_or_default()
            )
        })
}
