//! The HTTP surface: core/v1 pods (create, get, list, watch, delete, log) and
//! secrets (create, get, list, watch, delete), namespaced and across namespaces,
//! plus `/version`. Anything else is a 404 or 405 `Status`, never a silent success.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{MatchedPath, Path, Query, Request, State};
use axum::http::{HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus, Secret};
use serde_json::{Value, json};

use super::pod_runtime::Ctx;
use super::status::{self, ApiError};
use super::store::{Object, now};
use super::{admission, exec, logs, scheduling, validate, versions, watch};

pub(super) type Q = Query<HashMap<String, String>>;

/// Requests served, by `METHOD route` (`WATCH` for watches): what a backend costs
/// the API server per stage.
#[derive(Default)]
pub struct RequestCounts(std::sync::Mutex<BTreeMap<String, u64>>);

impl RequestCounts {
    pub fn snapshot(&self) -> BTreeMap<String, u64> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// `more`: routes of other modules (the network kinds), served and counted alike.
pub fn router(ctx: Arc<Ctx>, counts: Arc<RequestCounts>, more: Router<Arc<Ctx>>) -> Router {
    let pods = "/api/v1/namespaces/{ns}/pods";
    let secrets = "/api/v1/namespaces/{ns}/secrets";
    Router::new()
        .route(
            pods,
            get(list_ns::<Pod>)
                .post(create_pod)
                .delete(delete_pods),
        )
        .route(&format!("{pods}/{{name}}"), get(get_one::<Pod>).delete(delete_pod))
        .route(&format!("{pods}/{{name}}/status"), get(get_one::<Pod>))
        .route(
            &format!("{pods}/{{name}}/exec"),
            get(exec::pod_exec).post(exec::pod_exec),
        )
        .route(&format!("{pods}/{{name}}/log"), get(logs::pod_log))
        .route("/api/v1/pods", get(list_all::<Pod>))
        .route(
            secrets,
            get(list_ns::<Secret>)
                .post(create_secret)
                .delete(delete_secrets),
        )
        .route(&format!("{secrets}/{{name}}"), get(get_one::<Secret>).delete(delete_secret))
        .route("/api/v1/secrets", get(list_all::<Secret>))
        .route("/version", get(version))
        .merge(more)
        .route_layer(middleware::from_fn_with_state(counts, count))
        .fallback(|| async {
            ApiError {
                code: 404,
                reason: "NotFound",
                message: "the server could not find the requested resource (not implemented by the Kubernetes test double)".into(),
                name: None,
                kind: None,
            }
        })
        .method_not_allowed_fallback(|method: Method, uri: axum::http::Uri| async move {
            ApiError::method_not_allowed(&format!("{method} {}", uri.path()))
        })
        .with_state(ctx)
}

pub(super) async fn count(
    State(counts): State<Arc<RequestCounts>>,
    path: Option<MatchedPath>,
    req: Request,
    next: Next,
) -> Response {
    let watching = req
        .uri()
        .query()
        .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1"));
    let method = if watching {
        "WATCH"
    } else {
        req.method().as_str()
    };
    let key = format!("{method} {}", path.as_ref().map_or("?", |p| p.as_str()));
    *counts
        .0
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .entry(key)
        .or_default() += 1;
    next.run(req).await
}

async fn version(State(ctx): State<Arc<Ctx>>) -> axum::Json<Value> {
    axum::Json(versions::info(ctx.options.version))
}

fn is_watch(q: &HashMap<String, String>) -> bool {
    q.get("watch").is_some_and(|v| v == "true" || v == "1")
}

pub(super) async fn list_ns<K: Object>(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list::<K>(&ctx, Some(ns), &q)
}

pub(super) async fn list_all<K: Object>(
    State(ctx): State<Arc<Ctx>>,
    Query(q): Q,
) -> Result<Response, ApiError> {
    list::<K>(&ctx, None, &q)
}

pub(super) fn list<K: Object>(
    ctx: &Ctx,
    ns: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    if is_watch(q) {
        return watch::watch::<K>(&ctx.store, ctx.shutdown.clone(), ns, q);
    }
    let labels =
        super::selector::LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
    let fields = super::selector::FieldSelector::parse(
        q.get("fieldSelector").map_or("", String::as_str),
        K::FIELDS,
    )?;
    let (items, rv) = ctx.store.list::<K>(ns.as_deref());
    let items: Vec<Value> = items
        .iter()
        .map(|o| serde_json::to_value(o).expect("objects serialize"))
        .filter(|v| labels.matches(v) && fields.matches(v))
        .collect();
    // `limit`/`continue` are not implemented: the whole list is one page, which
    // is a valid answer to any limit (no `continue` token is returned).
    Ok(axum::Json(json!({
        "kind": format!("{}List", K::KIND),
        "apiVersion": K::API_VERSION,
        "metadata": {"resourceVersion": rv.to_string()},
        "items": items,
    }))
    .into_response())
}

pub(super) async fn get_one<K: Object>(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
) -> Result<axum::Json<K>, ApiError> {
    ctx.store
        .get::<K>(&ns, &name)
        .map(axum::Json)
        .ok_or_else(|| ApiError::not_found(K::URL_PATH_SEGMENT, &name))
}

/// Paths present in `sent` but lost by the typed round trip: fields the API does
/// not know (`spec.containers[0].imagePulPolicy`).
pub(super) fn unknown_fields(sent: &Value, typed: &Value, at: &str, out: &mut Vec<String>) {
    match (sent, typed) {
        (Value::Object(s), Value::Object(t)) => {
            for (k, v) in s {
                let path = if at.is_empty() {
                    k.clone()
                } else {
                    format!("{at}.{k}")
                };
                match t.get(k) {
                    Some(tv) => unknown_fields(v, tv, &path, out),
                    None if v.is_null() => {}
                    None => out.push(path),
                }
            }
        }
        (Value::Array(s), Value::Array(t)) => {
            for (i, (sv, tv)) in s.iter().zip(t).enumerate() {
                unknown_fields(sv, tv, &format!("{at}[{i}]"), out);
            }
        }
        _ => {}
    }
}

/// Decodes a create body as the API server does: the right kind, the path's
/// namespace, unknown fields per `fieldValidation` (Strict: 400; Ignore; default
/// Warn: a `Warning` header).
pub(super) fn decode<K: Object>(
    body: &Bytes,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<(K, Vec<String>), ApiError> {
    if q.get("dryRun").is_some_and(|d| !d.is_empty()) {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the Kubernetes test double",
        ));
    }
    let sent: Value = serde_json::from_slice(body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    for (field, want) in [("kind", K::KIND), ("apiVersion", K::API_VERSION)] {
        if let Some(got) = sent.get(field).and_then(Value::as_str)
            && got != want
        {
            return Err(ApiError::bad_request(format!(
                "the API version/kind of the body ({got}) does not match the path ({want})"
            )));
        }
    }
    let obj: K = serde_json::from_value(sent.clone()).map_err(|e| {
        ApiError::bad_request(format!(
            "{} in version \"v1\" cannot be handled as a {}: {e}",
            K::KIND,
            K::KIND
        ))
    })?;
    if obj.metadata().namespace.as_deref().is_some_and(|n| n != ns) {
        return Err(ApiError::bad_request(
            "the namespace of the provided object does not match the namespace sent on the request",
        ));
    }
    let mut unknown = Vec::new();
    let typed = serde_json::to_value(&obj).expect("objects serialize");
    unknown_fields(&sent, &typed, "", &mut unknown);
    match q.get("fieldValidation").map(String::as_str) {
        Some("Strict") if !unknown.is_empty() => {
            let list: Vec<String> = unknown
                .iter()
                .map(|u| format!("unknown field \"{u}\""))
                .collect();
            Err(ApiError::bad_request(format!(
                "strict decoding error: {}",
                list.join(", ")
            )))
        }
        Some("Ignore") => Ok((obj, Vec::new())),
        _ => Ok((obj, unknown)),
    }
}

pub(super) fn created<K: Object>(obj: &K, unknown: &[String]) -> Response {
    let mut resp = (StatusCode::CREATED, axum::Json(obj)).into_response();
    for u in unknown {
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"unknown field \\\"{u}\\\"\"")) {
            resp.headers_mut().append("warning", v);
        }
    }
    resp
}

async fn create_pod(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    // What this API server's version does not know is unknown, like a typo.
    let mut sent: Value = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("the request body is not valid JSON: {e}")))?;
    let too_new = versions::strip_unknown_pod_fields(&mut sent, ctx.options.version);
    if !too_new.is_empty() && q.get("fieldValidation").is_some_and(|v| v == "Strict") {
        let list: Vec<String> = too_new
            .iter()
            .map(|u| format!("unknown field \"{u}\""))
            .collect();
        return Err(ApiError::bad_request(format!(
            "Pod in version \"v1\" cannot be handled as a Pod: strict decoding error: {}",
            list.join(", ")
        )));
    }
    let body = Bytes::from(serde_json::to_vec(&sent).expect("JSON serializes"));
    let (pod, mut unknown): (Pod, _) = decode(&body, &ns, &q)?;
    unknown.extend(too_new);
    let pod = admit_pod(&ctx, &ns, pod)?;
    Ok(created(&pod, &unknown))
}

/// What a pod create does after decoding (shared with the ReplicaSet controller):
/// validation, admission (Pod Security, ResourceQuota: 403), scheduling onto the one
/// node, storing, and running it.
pub(super) fn admit_pod(ctx: &Arc<Ctx>, ns: &str, mut pod: Pod) -> Result<Pod, ApiError> {
    let problems = validate::pod(&pod);
    if !problems.is_empty() {
        let name = pod.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid("Pod", &name, &problems));
    }
    // Admission and storing are one step for quota (see `admission::admit`).
    let _admitting = ctx.admission_lock.lock().unwrap_or_else(|p| p.into_inner());
    admission::admit(ctx, ns, &pod)?;
    if let Some(message) = scheduling::unschedulable(&ctx.node, &pod) {
        // Never bound, never run: Pending until deleted, as the scheduler leaves it.
        pod.status = Some(PodStatus {
            phase: Some("Pending".into()),
            conditions: Some(vec![PodCondition {
                type_: "PodScheduled".into(),
                status: "False".into(),
                reason: Some("Unschedulable".into()),
                message: Some(message),
                last_transition_time: Some(now()),
                ..Default::default()
            }]),
            ..Default::default()
        });
        return ctx.store.create(ns, pod);
    }
    // What the scheduler's binding would set: the one node is the Docker engine.
    if let Some(spec) = pod.spec.as_mut() {
        spec.node_name.get_or_insert_with(|| ctx.node.name.clone());
    }
    pod.status = Some(PodStatus {
        phase: Some("Pending".into()),
        ..Default::default()
    });
    let pod = ctx.store.create(ns, pod)?;
    ctx.spawn_pod(pod.clone());
    Ok(pod)
}

async fn create_secret(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let (mut secret, unknown): (Secret, _) = decode(&body, &ns, &q)?;
    let problems = validate::secret(&secret);
    if !problems.is_empty() {
        let name = secret.metadata.name.clone().unwrap_or_default();
        return Err(ApiError::invalid("Secret", &name, &problems));
    }
    // `stringData` is write-only: merged into `data`, winning over it.
    if let Some(strings) = secret.string_data.take() {
        let mut data = secret.data.take().unwrap_or_default();
        for (k, v) in strings {
            data.insert(k, ByteString(v.into_bytes()));
        }
        secret.data = Some(data);
    }
    secret.type_.get_or_insert_with(|| "Opaque".into());
    let secret = ctx.store.create(&ns, secret)?;
    // A secret owned by a pod that does not exist (any more) is garbage at once.
    for owner in secret.metadata.owner_references.iter().flatten() {
        let (pods, _) = ctx.store.list::<Pod>(Some(&ns));
        let alive = pods
            .iter()
            .any(|p| p.metadata.uid.as_deref() == Some(owner.uid.as_str()));
        if owner.kind == "Pod" && !alive {
            let (ctx, ns, uid) = (ctx.clone(), ns.clone(), owner.uid.clone());
            tokio::spawn(async move { ctx.collect_secrets(&ns, &uid, false) });
        }
    }
    Ok(created(&secret, &unknown))
}

/// DeleteOptions from the body (what kube sends) or the query.
#[derive(Debug, Default)]
pub(super) struct DeleteOpts {
    pub(super) grace: Option<i64>,
    pub(super) orphan: bool,
}

pub(super) fn delete_opts(
    body: &Bytes,
    q: &HashMap<String, String>,
) -> Result<DeleteOpts, ApiError> {
    let body: Value = if body.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(body)
            .map_err(|e| ApiError::bad_request(format!("DeleteOptions: {e}")))?
    };
    if body
        .get("dryRun")
        .is_some_and(|d| d.as_array().is_some_and(|a| !a.is_empty()))
        || q.get("dryRun").is_some_and(|d| !d.is_empty())
    {
        return Err(ApiError::bad_request(
            "dryRun is not supported by the Kubernetes test double",
        ));
    }
    if body.get("preconditions").is_some_and(|p| !p.is_null()) {
        return Err(ApiError::bad_request(
            "preconditions are not supported by the Kubernetes test double",
        ));
    }
    let grace = body
        .get("gracePeriodSeconds")
        .and_then(Value::as_i64)
        .or_else(|| q.get("gracePeriodSeconds").and_then(|g| g.parse().ok()));
    let policy = body
        .get("propagationPolicy")
        .and_then(Value::as_str)
        .map(str::to_owned)
        .or_else(|| q.get("propagationPolicy").cloned());
    let orphan = match policy.as_deref() {
        None | Some("Background") | Some("Foreground") => false,
        Some("Orphan") => true,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "unsupported propagationPolicy {other:?}"
            )));
        }
    };
    Ok(DeleteOpts { grace, orphan })
}

/// Graceful pod deletion: the pod gets `deletionTimestamp` and is returned (200);
/// it disappears (DELETED) once its containers are stopped and removed.
async fn delete_pod(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let opts = delete_opts(&body, &q)?;
    let pod = begin_pod_deletion(&ctx, &ns, &name, &opts)?;
    Ok(axum::Json(pod).into_response())
}

pub(super) fn begin_pod_deletion(
    ctx: &Arc<Ctx>,
    ns: &str,
    name: &str,
    opts: &DeleteOpts,
) -> Result<Pod, ApiError> {
    let pod = ctx
        .store
        .get::<Pod>(ns, name)
        .ok_or_else(|| ApiError::not_found("pods", name))?;
    // `gracePeriodSeconds=0` deletes at once, even a pod already terminating or on a
    // node that will never confirm the stop (the registry's immediate deletion, as
    // `kubectl delete --force --grace-period=0`); the containers are removed after.
    let force = opts.grace == Some(0);
    if pod.metadata.deletion_timestamp.is_some() && !force {
        return Ok(pod);
    }
    let grace = opts
        .grace
        .or(pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds))
        .unwrap_or(30)
        .max(0);
    let pod = if force {
        // With propagationPolicy Orphan the garbage collector releases the dependents
        // (the `orphan` finalizer) before the owner goes: never a moment where the pod
        // is gone and its Secret still names it.
        if opts.orphan
            && let Some(uid) = pod.metadata.uid.as_deref()
        {
            ctx.collect_secrets(ns, uid, true);
        }
        ctx.store.remove::<Pod>(ns, name);
        pod
    } else {
        ctx.store
            .update::<Pod>(ns, name, |p| {
                let mut at = now();
                at.0 += k8s_openapi::jiff::SignedDuration::from_secs(grace);
                p.metadata.deletion_timestamp = Some(at);
                p.metadata.deletion_grace_period_seconds = Some(grace);
            })
            .ok_or_else(|| ApiError::not_found("pods", name))?
    };
    // A lost node's kubelet never stops the containers nor confirms it: the pod
    // stays Terminating until it is force-deleted (see `node_loss`).
    if ctx.node_health.lost() && !force {
        return Ok(pod);
    }
    let uid = pod.metadata.uid.clone().unwrap_or_default();
    tokio::spawn(
        ctx.clone()
            .finalize_pod(ns.to_owned(), name.to_owned(), uid, grace, opts.orphan),
    );
    Ok(pod)
}

/// The objects of a collection matching the request's selectors.
pub(super) fn selected<K: Object>(
    ctx: &Ctx,
    ns: &str,
    q: &HashMap<String, String>,
) -> Result<Vec<K>, ApiError> {
    let labels =
        super::selector::LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?;
    let fields = super::selector::FieldSelector::parse(
        q.get("fieldSelector").map_or("", String::as_str),
        K::FIELDS,
    )?;
    let (items, _) = ctx.store.list::<K>(Some(ns));
    Ok(items
        .into_iter()
        .filter(|o| {
            let v = serde_json::to_value(o).expect("objects serialize");
            labels.matches(&v) && fields.matches(&v)
        })
        .collect())
}

pub(super) fn list_response<K: Object>(ctx: &Ctx, items: Vec<K>) -> Response {
    axum::Json(json!({
        "kind": format!("{}List", K::KIND),
        "apiVersion": K::API_VERSION,
        "metadata": {"resourceVersion": ctx.store.resource_version().to_string()},
        "items": items,
    }))
    .into_response()
}

/// `delete_collection`: every selected pod deleted as one DELETE would; the list
/// of them (now terminating) is the answer.
async fn delete_pods(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    let opts = delete_opts(&body, &q)?;
    let mut deleted = Vec::new();
    for pod in selected::<Pod>(&ctx, &ns, &q)? {
        let name = pod.metadata.name.clone().unwrap_or_default();
        match begin_pod_deletion(&ctx, &ns, &name, &opts) {
            Ok(p) => deleted.push(p),
            Err(e) if e.code == 404 => {}
            Err(e) => return Err(e),
        }
    }
    Ok(list_response(&ctx, deleted))
}

async fn delete_secrets(
    State(ctx): State<Arc<Ctx>>,
    Path(ns): Path<String>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    delete_opts(&body, &q)?;
    let mut deleted = Vec::new();
    for secret in selected::<Secret>(&ctx, &ns, &q)? {
        let name = secret.metadata.name.clone().unwrap_or_default();
        deleted.extend(ctx.store.remove::<Secret>(&ns, &name));
    }
    Ok(list_response(&ctx, deleted))
}

async fn delete_secret(
    State(ctx): State<Arc<Ctx>>,
    Path((ns, name)): Path<(String, String)>,
    Query(q): Q,
    body: Bytes,
) -> Result<Response, ApiError> {
    delete_opts(&body, &q)?;
    let secret = ctx
        .store
        .remove::<Secret>(&ns, &name)
        .ok_or_else(|| ApiError::not_found("secrets", &name))?;
    Ok(axum::Json(status::success_deleted(
        "secrets",
        &name,
        secret.metadata.uid.as_deref(),
    ))
    .into_response())
}
