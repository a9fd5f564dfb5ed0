//! gateway.networking.k8s.io/v1 HTTPRoute: the stored object (`object`), the
//! CRD's defaults (`defaults`) and validation (`schema`), and the API (`api`).

pub mod api;
mod defaults;
pub mod object;
mod openapi;
mod schema;

pub use object::HttpRouteObject;
