//! Sending a request on to a pod and its answer back, as a proxy does (RFC 9110
//! section 7.6: hop-by-hop headers are not forwarded; the Host header is
//! forwarded unmodified, as the HTTPRoute spec requires; `X-Forwarded-For` and
//! `X-Forwarded-Proto` added as Envoy adds them), and the header filters:
//! RequestHeaderModifier on the way in, ResponseHeaderModifier on the way out
//! (`set` replaces, `add` appends, `remove` drops; names case-insensitive).
//! Mirrored copies go out on their own task and their answers are dropped.

use std::net::SocketAddr;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Deserialize;

/// Headers that belong to one connection, never forwarded.
const HOP_BY_HOP: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "transfer-encoding",
    "upgrade",
];

/// How long a mirrored copy may take before it is dropped.
const MIRROR_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct NameValue {
    pub name: String,
    pub value: String,
}

/// RequestHeaderModifier / ResponseHeaderModifier (the same shape in both).
#[derive(Debug, Clone, Default, Deserialize, PartialEq)]
pub struct HeaderModifier {
    #[serde(default)]
    pub set: Vec<NameValue>,
    #[serde(default)]
    pub add: Vec<NameValue>,
    #[serde(default)]
    pub remove: Vec<String>,
}

impl HeaderModifier {
    pub fn apply(&self, headers: &mut HeaderMap) {
        let pair = |nv: &NameValue| {
            Some((
                HeaderName::from_bytes(nv.name.as_bytes()).ok()?,
                HeaderValue::from_str(&nv.value).ok()?,
            ))
        };
        for (name, value) in self.set.iter().filter_map(pair) {
            headers.insert(name, value);
        }
        for (name, value) in self.add.iter().filter_map(pair) {
            headers.append(name, value);
        }
        for name in &self.remove {
            if let Ok(n) = HeaderName::from_bytes(name.as_bytes()) {
                headers.remove(n);
            }
        }
    }
}

/// The request as it goes to a backend.
#[derive(Clone)]
pub struct Outgoing {
    pub method: Method,
    pub path_and_query: String,
    pub headers: HeaderMap,
    pub body: Bytes,
}

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let listed: Vec<String> = headers
        .get_all("connection")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_ascii_lowercase())
        .collect();
    for name in HOP_BY_HOP
        .iter()
        .copied()
        .chain(listed.iter().map(String::as_str))
    {
        headers.remove(name);
    }
}

impl Outgoing {
    pub fn new(
        method: Method,
        path_and_query: String,
        mut headers: HeaderMap,
        body: Bytes,
        client: SocketAddr,
    ) -> Outgoing {
        strip_hop_by_hop(&mut headers);
        headers.remove("content-length");
        let forwarded_for = match headers.get("x-forwarded-for").and_then(|v| v.to_str().ok()) {
            Some(before) => format!("{before}, {}", client.ip()),
            None => client.ip().to_string(),
        };
        if let Ok(v) = HeaderValue::from_str(&forwarded_for) {
            headers.insert("x-forwarded-for", v);
        }
        headers.insert("x-forwarded-proto", HeaderValue::from_static("http"));
        Outgoing {
            method,
            path_and_query,
            headers,
            body,
        }
    }
}

pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .expect("a plain-HTTP client always builds")
}

/// An answer of the gateway itself (no backend), as text.
pub fn gateway_error(status: StatusCode, message: &str) -> Response {
    (
        status,
        [("content-type", "text/plain; charset=utf-8")],
        format!("{message}\n"),
    )
        .into_response()
}

fn request(client: &reqwest::Client, to: SocketAddr, req: &Outgoing) -> reqwest::RequestBuilder {
    client
        .request(
            req.method.clone(),
            format!("http://{to}{}", req.path_and_query),
        )
        .headers(req.headers.clone())
        .body(req.body.clone())
}

/// Sends `req` to `to` and streams the answer back (503 when the pod cannot be
/// reached, 502 when it answers badly).
pub async fn send(
    client: &reqwest::Client,
    to: SocketAddr,
    req: &Outgoing,
    response_filter: Option<&HeaderModifier>,
) -> Response {
    let upstream = match request(client, to, req).send().await {
        Ok(r) => r,
        Err(e) if e.is_connect() || e.is_timeout() => {
            return gateway_error(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("upstream connect error: {to}: {e}"),
            );
        }
        Err(e) => {
            return gateway_error(
                StatusCode::BAD_GATEWAY,
                &format!("upstream error: {to}: {e}"),
            );
        }
    };
    let status = upstream.status();
    let mut headers = upstream.headers().clone();
    strip_hop_by_hop(&mut headers);
    if let Some(f) = response_filter {
        f.apply(&mut headers);
    }
    let mut resp = Response::new(Body::from_stream(upstream.bytes_stream()));
    *resp.status_mut() = status;
    *resp.headers_mut() = headers;
    resp
}

/// Sends a copy of `req` to `to` on its own task; the answer is dropped.
pub fn mirror(client: &reqwest::Client, to: SocketAddr, req: &Outgoing) {
    let send = request(client, to, req).timeout(MIRROR_TIMEOUT).send();
    tokio::spawn(async move {
        if let Ok(resp) = send.await {
            // Read to the end so the connection can be reused.
            let _ = resp.bytes().await;
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modifiers_set_add_and_remove() {
        let mut h = HeaderMap::new();
        h.insert("x-a", "1".parse().unwrap());
        h.insert("x-gone", "1".parse().unwrap());
        let m: HeaderModifier = serde_json::from_value(serde_json::json!({
            "set": [{"name": "X-A", "value": "2"}],
            "add": [{"name": "x-b", "value": "3"}],
            "remove": ["X-Gone"]
        }))
        .unwrap();
        m.apply(&mut h);
        assert_eq!(h.get("x-a").unwrap(), "2");
        assert_eq!(h.get("x-b").unwrap(), "3");
        assert!(h.get("x-gone").is_none());
    }

    #[test]
    fn hop_by_hop_headers_stay_behind() {
        let mut h = HeaderMap::new();
        h.insert("connection", "close, x-private".parse().unwrap());
        h.insert("x-private", "1".parse().unwrap());
        h.insert("host", "app.example.com".parse().unwrap());
        let out = Outgoing::new(
            Method::GET,
            "/".into(),
            h,
            Bytes::new(),
            "127.0.0.1:9".parse().unwrap(),
        );
        assert!(out.headers.get("connection").is_none());
        assert!(out.headers.get("x-private").is_none());
        assert_eq!(out.headers.get("host").unwrap(), "app.example.com");
        assert_eq!(out.headers.get("x-forwarded-for").unwrap(), "127.0.0.1");
    }
}
