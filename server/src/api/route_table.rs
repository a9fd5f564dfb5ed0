//! The route table: every HTTP route is registered once, through [`RouteTable::add`],
//! with the [`Access`] it needs. Method and path come from the handler's
//! `#[utoipa::path]`, so the axum router, the OpenAPI document and the table of
//! (method, path, access) that the auth test walks cannot disagree; and the router
//! puts the access check ([`super::auth::guard`]) in front of each handler, so the
//! declaration is what is enforced.

use axum::Router;
use axum::http::Method;
use axum::routing::MethodRouter;
use utoipa::openapi::OpenApi;
use utoipa::openapi::extensions::ExtensionsBuilder;
use utoipa::openapi::path::{Operation, PathItem};
use utoipa::openapi::security::SecurityRequirement;
use utoipa_axum::router::UtoipaMethodRouter;

pub use super::auth::{Access, RepoIn};
use crate::daemon::state::AppState;

/// The OpenAPI security requirement: the bearer scheme unless public.
fn security(access: Access) -> Option<Vec<SecurityRequirement>> {
    access
        .scope()
        .map(|_| vec![SecurityRequirement::new("bearer", Vec::<String>::new())])
}

/// Who may call the route, in words, as the document's `x-slipway-access`.
fn describe(access: Access, repo_in: RepoIn) -> String {
    let on = match repo_in {
        RepoIn::Nowhere => "",
        RepoIn::Path | RepoIn::Run | RepoIn::Artifact => " on the repository",
    };
    match access {
        Access::Public => "anyone".into(),
        Access::Role(role) => format!("{role}{on}, or an admin token"),
        Access::AnyRole(role) => {
            format!(
                "{role} globally or on a repository (the answer shows those), or an admin token"
            )
        }
        Access::SelfOrAdmin => "the user named in the path, or an admin".into(),
        Access::Runner => "a runner token (or an admin token)".into(),
        Access::Hook => "a hook token (or an admin token)".into(),
        Access::Signed => "any valid token or session".into(),
    }
}

/// One route: an HTTP method on an axum path template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Route {
    pub method: Method,
    /// As axum matches it: `{param}` for a segment, `{*rest}` for the rest of the path.
    pub path: String,
    pub access: Access,
    /// Where its repository is named, for a role check on that repository.
    pub repo_in: RepoIn,
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
    /// Each handler with its path and check; the router is built with the state.
    handlers: Vec<(String, MethodRouter<AppState>, Access, RepoIn)>,
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
            let repo_in = RepoIn::of(&path);
            for (method, operation) in operations(&mut item) {
                operation.security = security(access);
                qualify_operation_id(operation);
                operation
                    .extensions
                    .get_or_insert_with(Default::default)
                    .merge(
                        ExtensionsBuilder::new()
                            .add("x-slipway-access", describe(access, repo_in))
                            .build(),
                    );
                self.routes.push(Route {
                    method,
                    path: path.clone(),
                    access,
                    repo_in,
                });
            }
            self.handlers
                .push((path.clone(), method_router.clone(), access, repo_in));
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
        self.handlers.extend(other.handlers);
        self.openapi.merge(other.openapi);
        self.routes.extend(other.routes);
        self
    }

    pub fn routes(&self) -> &[Route] {
        &self.routes
    }

    /// The OpenAPI paths with their schemas.
    pub fn openapi(&self) -> &OpenApi {
        &self.openapi
    }

    /// The router, each handler behind the check of its access, and the OpenAPI paths
    /// with their schemas.
    pub fn into_parts(self, state: &AppState) -> (Router<AppState>, OpenApi) {
        let mut router = Router::new();
        for (path, handler, access, repo_in) in self.handlers {
            if access == Access::Public {
                router = router.route(&path, handler);
                continue;
            }
            let guarded = handler.route_layer(axum::middleware::from_fn_with_state(
                state.clone(),
                move |axum::extract::State(state): axum::extract::State<AppState>,
                      req: axum::extract::Request,
                      next: axum::middleware::Next| {
                    super::auth::guard(state, access, repo_in, req, next)
                },
            ));
            router = router.route(&path, guarded);
        }
        (router, self.openapi)
    }
}

/// Operation ids are the handler's name, which repeats across modules (`list`,
/// `show`): prefixed with the operation's tag (`runs_list`, `repos_list`) they are unique,
/// as OpenAPI requires and client generators rely on (`api::tests` checks).
fn qualify_operation_id(operation: &mut Operation) {
    let Some(tag) = operation.tags.as_ref().and_then(|t| t.first()).cloned() else {
        return;
    };
    if let Some(id) = operation.operation_id.as_mut()
        && !id.starts_with(&format!("{tag}_"))
    {
        *id = format!("{tag}_{id}");
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
    use crate::store::Role;

    #[utoipa::path(get, path = "/things/{id}")]
    async fn show() {}

    #[utoipa::path(delete, path = "/things/{id}")]
    async fn remove() {}

    #[utoipa::path(post, path = "/hooks/{*rest}")]
    async fn hook() {}

    #[test]
    fn each_route_keeps_its_own_access() {
        let table = RouteTable::new()
            .add(Access::Role(Role::Admin), utoipa_axum::routes!(show))
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
                ("GET", "/things/{id}", Access::Role(Role::Admin)),
                ("DELETE", "/things/{id}", Access::Runner),
                ("POST", "/hooks/{*rest}", Access::Public),
            ]
        );
        let doc = serde_json::to_value(table.openapi()).unwrap();
        let bearer = serde_json::json!([{"bearer": []}]);
        assert_eq!(doc["paths"]["/things/{id}"]["get"]["security"], bearer);
        assert_eq!(doc["paths"]["/things/{id}"]["delete"]["security"], bearer);
        assert_eq!(
            doc["paths"]["/things/{id}"]["get"]["x-slipway-access"],
            "admin, or an admin token"
        );
        let hook = &doc["paths"]["/hooks/{rest}"]["post"];
        assert!(hook.is_object() && hook.get("security").is_none(), "{hook}");
    }

    #[test]
    #[should_panic(expected = "one path per RouteTable::add")]
    fn handlers_of_two_paths_in_one_add_are_refused() {
        let _ = RouteTable::new().add(Access::Runner, utoipa_axum::routes!(show, hook));
    }
}
