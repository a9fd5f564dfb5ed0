//! The route table: every HTTP route is registered once, through [`RouteTable::add`],
//! with the [`Access`] it needs. Method and path come from the handler's
//! `#[utoipa::path]`, so the axum router, the OpenAPI document and the table of
//! (method, path, access) that the auth test walks cannot disagree.

use axum::Router;
use axum::http::Method;
use utoipa::openapi::OpenApi;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa_axum::router::UtoipaMethodRouter;

use crate::daemon::state::AppState;
use crate::store::TokenScope;

/// What a caller must present to use a route. The handler enforces it with the
/// matching extractor (`api::auth`); the auth test holds every route to its
/// declaration, so the two cannot drift apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    /// No token. Every use says why in a comment.
    Public,
    /// An admin token.
    Admin,
    /// A runner token (an admin token too).
    Runner,
    /// A post-receive hook token (an admin token too).
    Hook,
}

impl Access {
    /// The token scope the route needs; `None` for a public route.
    pub fn scope(self) -> Option<TokenScope> {
        match self {
            Access::Public => None,
            Access::Admin => Some(TokenScope::Admin),
            Access::Runner => Some(TokenScope::Runner),
            Access::Hook => Some(TokenScope::Hook),
        }
    }

    /// The OpenAPI security requirement: the bearer scheme unless public.
    fn security(self) -> Option<Vec<SecurityRequirement>> {
        self.scope()
            .map(|_| vec![SecurityRequirement::new("bearer", Vec::<String>::new())])
    }
}

/// One route: an HTTP method on an axum path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// As axum matches it: `{param}` for a segment, `{*rest}` for the rest of the path.
    pub path: String,
    pub access: Access,
}

impl Route {
    /// The path as the OpenAPI document writes it.
    pub fn openapi_path(&self) -> String {
        openapi_path(&self.path)
    }
}

/// OpenAPI has no catch-all parameter: `{*rest}` is documented as `{rest}`.
fn openapi_path(axum_path: &str) -> String {
    axum_path.replace("{*", "{")
}

/// The routes of a resource module, or of the whole server once merged.
#[derive(Default)]
pub struct RouteTable {
    router: Router<AppState>,
    /// Paths and the schemas they refer to; `api::openapi` adds the rest.
    openapi: OpenApi,
    routes: Vec<Route>,
}

impl RouteTable {
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers one handler, `utoipa_axum::routes!(handler)`, with the access it needs.
    /// One handler per call, so every route states its own access.
    ///
    /// # Panics
    /// If the handlers given span more than one path (`routes!` would serve each
    /// handler on every path).
    pub fn add(
        mut self,
        access: Access,
        (schemas, paths, method_router): UtoipaMethodRouter<AppState>,
    ) -> Self {
        assert_eq!(paths.paths.len(), 1, "one path per RouteTable::add");
        for (path, mut item) in paths.paths {
            for (method, operation) in operations(&mut item) {
                operation.security = access.security();
                self.routes.push(Route {
                    method,
                    path: path.clone(),
                    access,
                });
            }
            self.router = self.router.route(&path, method_router.clone());
            let documented = openapi_path(&path);
            match self.openapi.paths.paths.get_mut(&documented) {
                Some(existing) => existing.merge_operations(item),
                None => {
                    self.openapi.paths.paths.insert(documented, item);
                }
            }
        }
        self.openapi
            .components
            .get_or_insert_with(Default::default)
            .schemas
            .extend(schemas);
        self
    }

    pub fn merge(mut self, other: RouteTable) -> Self {
        self.router = self.router.merge(other.router);
        self.openapi.merge(other.openapi);
        self.routes.extend(other.routes);
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The router and the OpenAPI paths with their schemas.
    pub fn into_parts(self) -> (Router<AppState>, OpenApi) {
        (self.router, self.openapi)
    }
}

/// The operations of a path item with their methods.
fn operations(item: &mut PathItem) -> impl Iterator<Item = (Method, &mut Operation)> {
    [
        (Method::GET, &mut item.get),
        (Method::PUT, &mut item.put),
        (Method::POST, &mut item.post),
        (Method::DELETE, &mut item.delete),
        (Method::OPTIONS, &mut item.options),
        (Method::HEAD, &mut item.head),
        (Method::PATCH, &mut item.patch),
        (Method::TRACE, &mut item.trace),
    ]
    .into_iter()
    .filter_map(|(method, operation)| operation.as_mut().map(|o| (method, o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[utoipa::path(get, path = "/things/{id}")]
    async fn show() {}

    #[utoipa::path(delete, path = "/things/{id}")]
    async fn remove() {}

    #[utoipa::path(post, path = "/hooks/{*rest}")]
    async fn hook() {}

    #[test]
    fn each_route_keeps_its_own_access() {
        let table = RouteTable::new()
            .add(Access::Admin, utoipa_axum::routes!(show))
            .add(Access::Runner, utoipa_axum::routes!(remove))
            .merge(RouteTable::new().add(Access::Public, utoipa_axum::routes!(hook)));
        let got: Vec<_> = table
            .routes()
            .iter()
            .map(|r| (r.method.as_str(), r.path.as_str(), r.access))
            .collect();
        assert_eq!(
            got,
            [
                ("GET", "/things/{id}", Access::Admin),
                ("DELETE", "/things/{id}", Access::Runner),
                ("POST", "/hooks/{*rest}", Access::Public),
            ]
        );
        let (_, doc) = table.into_parts();
        let doc = serde_json::to_value(doc).unwrap();
        let bearer = serde_json::json!([{"bearer": []}]);
        assert_eq!(doc["paths"]["/things/{id}"]["get"]["security"], bearer);
        assert_eq!(doc["paths"]["/things/{id}"]["delete"]["security"], bearer);
        let hook = &doc["paths"]["/hooks/{rest}"]["post"];
        assert!(hook.is_object() && hook.get("security").is_none(), "{hook}");
    }

    #[test]
    #[should_panic(expected = "one path per RouteTable::add")]
    fn handlers_of_two_paths_in_one_add_are_refused() {
        let _ = RouteTable::new().add(Access::Admin, utoipa_axum::routes!(show, hook));
    }
}
