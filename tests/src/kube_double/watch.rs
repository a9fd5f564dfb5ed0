//! Watch streams: newline-delimited `{"type": …, "object": …}` events from a
//! resourceVersion on, filtered by namespace and selectors, ended after
//! `timeoutSeconds` (clients re-watch from the last version they saw).

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::response::Response;
use bytes::Bytes;
use serde_json::{Value, json};
use tokio::sync::broadcast;
use tokio_util::sync::CancellationToken;

use super::selector::{FieldSelector, LabelSelector};
use super::status::ApiError;
use super::store::{Event, EventType, Object, Store};

/// The API server picks a random 30–60 minute timeout when none is given.
const DEFAULT_TIMEOUT: Duration = Duration::from_secs(1800);

struct Filter {
    resource: &'static str,
    namespace: Option<String>,
    labels: LabelSelector,
    fields: FieldSelector,
}

impl Filter {
    fn matches(&self, object: &Value) -> bool {
        self.labels.matches(object) && self.fields.matches(object)
    }

    /// The event a watcher with this filter sees, if any: an object entering the
    /// selection is ADDED, one leaving it is DELETED.
    fn render(&self, ev: &Event) -> Option<Bytes> {
        if ev.resource != self.resource
            || self
                .namespace
                .as_ref()
                .is_some_and(|ns| *ns != ev.namespace)
        {
            return None;
        }
        let now = self.matches(&ev.object);
        let kind = match ev.kind {
            EventType::Added | EventType::Deleted => now.then_some(ev.kind),
            EventType::Modified => {
                let before = ev.previous.as_ref().is_none_or(|p| self.matches(p));
                match (before, now) {
                    (true, true) => Some(EventType::Modified),
                    (false, true) => Some(EventType::Added),
                    (true, false) => Some(EventType::Deleted),
                    (false, false) => None,
                }
            }
        }?;
        Some(line(&json!({"type": kind.as_str(), "object": ev.object})))
    }
}

fn line(v: &Value) -> Bytes {
    let mut s = serde_json::to_vec(v).expect("JSON values serialize");
    s.push(b'\n');
    Bytes::from(s)
}

fn error_line(e: &ApiError) -> Bytes {
    line(&json!({"type": "ERROR", "object": e.to_status()}))
}

pub fn watch<K: Object>(
    store: &Store,
    shutdown: CancellationToken,
    namespace: Option<String>,
    q: &HashMap<String, String>,
) -> Result<Response, ApiError> {
    let filter = Filter {
        resource: K::URL_PATH_SEGMENT,
        namespace,
        labels: LabelSelector::parse(q.get("labelSelector").map_or("", String::as_str))?,
        fields: FieldSelector::parse(q.get("fieldSelector").map_or("", String::as_str), K::FIELDS)?,
    };
    let since = match q.get("resourceVersion").map(String::as_str) {
        None | Some("") | Some("0") => None,
        Some(rv) => Some(
            rv.parse::<u64>()
                .map_err(|_| ApiError::bad_request(format!("invalid resourceVersion {rv:?}")))?,
        ),
    };
    let initial_events = q.get("sendInitialEvents").is_some_and(|v| v == "true");
    let since = if initial_events { None } else { since };
    let timeout = q
        .get("timeoutSeconds")
        .and_then(|t| t.parse::<u64>().ok())
        // 0 means "the server's default", as on the API server.
        .filter(|t| *t > 0)
        .map_or(DEFAULT_TIMEOUT, Duration::from_secs);

    let mut first: VecDeque<Bytes> = VecDeque::new();
    let live = match store.watch::<K>(since) {
        Ok(start) => {
            first.extend(start.replay.iter().filter_map(|ev| filter.render(ev)));
            if initial_events {
                first.push_back(line(&json!({
                    "type": "BOOKMARK",
                    "object": {
                        "kind": K::KIND,
                        "apiVersion": K::API_VERSION,
                        "metadata": {
                            "resourceVersion": start.rv.to_string(),
                            "annotations": {"k8s.io/initial-events-end": "true"},
                        },
                    },
                })));
            }
            Some(start.live)
        }
        // As the API server's watch cache does: a 200 stream with one ERROR event.
        Err(e) => {
            first.push_back(error_line(&e));
            None
        }
    };

    struct St {
        first: VecDeque<Bytes>,
        live: Option<broadcast::Receiver<Arc<Event>>>,
        filter: Filter,
        deadline: tokio::time::Instant,
        shutdown: CancellationToken,
    }
    let st = St {
        first,
        live,
        filter,
        deadline: tokio::time::Instant::now() + timeout,
        shutdown,
    };
    let stream = futures::stream::unfold(st, |mut st| async move {
        if let Some(b) = st.first.pop_front() {
            return Some((Ok::<_, std::convert::Infallible>(b), st));
        }
        loop {
            let live = st.live.as_mut()?;
            let received = tokio::select! {
                r = live.recv() => r,
                _ = tokio::time::sleep_until(st.deadline) => return None,
                _ = st.shutdown.cancelled() => return None,
            };
            match received {
                Ok(ev) => {
                    if let Some(b) = st.filter.render(&ev) {
                        return Some((Ok(b), st));
                    }
                }
                Err(broadcast::error::RecvError::Lagged(_)) => {
                    st.live = None;
                    let e = ApiError {
                        code: 410,
                        reason: "Expired",
                        message: "the watcher fell behind; re-list and watch again".into(),
                        name: None,
                        kind: None,
                    };
                    return Some((Ok(error_line(&e)), st));
                }
                Err(broadcast::error::RecvError::Closed) => return None,
            }
        }
    });
    Ok(Response::builder()
        .header("content-type", "application/json")
        .body(Body::from_stream(stream))
        .expect("static headers are valid"))
}
