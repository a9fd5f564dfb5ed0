//! The double's networking: core/v1 Services that route TCP to ready pods,
//! networking.k8s.io/v1 Ingresses (stored, not routed), gateway.networking.k8s.io/v1
//! HTTPRoutes and one gateway that routes real HTTP by them, and owner garbage
//! collection for these kinds. What is implemented and what is not is listed in the
//! double's module doc (`kube_double`); the upstream sources each part was checked
//! against are named in its own module doc.
//!
//! `services` (API, validation, defaults, cluster IPs) and `service_proxy` (a
//! loopback listener per Service port, each connection spliced to one ready pod);
//! `endpoints`: which pods serve a Service port, shared by the proxy and the
//! gateway; `ingress`; `httproute/` (the stored object, schema and CEL checks,
//! defaults, API); `gateway/` (matching, weights, mirror, forwarding); `crud`: PUT
//! and merge PATCH for any of these kinds; `gc`: ownerReferences; `routes`: the
//! HTTP paths, merged into the double's router.

/// PUT and merge PATCH for any stored kind (implement `crud::Updatable`).
pub(super) mod crud;
mod endpoints;
mod gateway;
/// Owner garbage collection: `gc::orphan` before removing an owner deleted with
/// `propagationPolicy: Orphan`; `gc::sweep_kind` for other kinds.
pub(super) mod gc;
mod httproute;
mod ingress;
mod names;
mod routes;
mod service_proxy;
mod service_spec;
mod services;

use std::net::SocketAddr;
use std::sync::Arc;

pub use httproute::HttpRouteObject;
pub use routes::routes;

use super::KubeDouble;
use super::pod_runtime::Ctx;

/// The network state of one double (a field of `Ctx`).
pub struct Network {
    proxies: service_proxy::Proxies,
    gateway: gateway::Gateway,
    balance: endpoints::RoundRobin,
}

impl Network {
    /// Binds the gateway's listener (served from [`spawn`] on).
    pub fn new() -> std::io::Result<Network> {
        Ok(Network {
            proxies: service_proxy::Proxies::default(),
            gateway: gateway::Gateway::bind()?,
            balance: endpoints::RoundRobin::default(),
        })
    }
}

/// Starts the gateway and the background reconciler (Service listeners and owner
/// garbage collection, from the store's change events). Both end with the double.
pub fn spawn(ctx: &Arc<Ctx>) {
    gateway::serve(ctx.clone());
    gc::watch(ctx.clone());
}

impl KubeDouble {
    /// The gateway: `127.0.0.1:<port>`, one HTTP/1.1 listener routing every request
    /// by every HTTPRoute in the double (parentRefs are not consulted).
    pub fn gateway_addr(&self) -> SocketAddr {
        self.ctx.net.gateway.addr()
    }

    /// Where a Service port listens: `127.0.0.1:<ephemeral>`, each connection
    /// proxied to one ready pod of the Service (round robin over them). `port` is the
    /// Service port (`spec.ports[].port`), not the target port. `None` when the
    /// Service does not exist, is headless, or has no such port.
    pub fn service_addr(&self, namespace: &str, name: &str, port: i32) -> Option<SocketAddr> {
        service_proxy::reconcile(&self.ctx, namespace, name);
        self.ctx.net.proxies.addr(namespace, name, port)
    }
}
