//! The HTTP listener: accepts connections and serves each with hyper's HTTP/1 on the
//! axum router, with what `axum::serve` leaves out — so that slow and idle clients
//! cannot hold the server:
//!
//! - **Timeouts** (`header_read_timeout_secs`, `body_read_timeout_secs`,
//!   `idle_timeout_secs`): a request head must arrive whole within the header timeout
//!   (for a connection's first request counted from its opening, so a connection that
//!   sends nothing is closed too); a request body must not go longer than the body
//!   timeout without a byte (the handler sees an error); a kept-alive connection is
//!   closed after the idle timeout between requests. `conns` keeps each connection's
//!   phase, and a reaper closes those past their time a few times a second.
//! - **A connection limit** (`max_connections`, lowered to fit the open-file limit, see
//!   `open_files`): at the limit a new connection closes the connection that has waited
//!   longest without a request under way, so health checks and runners are answered
//!   however many idle or slow connections are open. Only when every connection has a
//!   request under way is the new one answered 503 with `Retry-After` and closed. A
//!   connection with a request under way (a runner's long-poll, a log stream) is never
//!   closed by the listener.
//!
//! On shutdown it stops accepting, closes the connections without a request, lets the
//! others finish (bounded) and returns.

mod bodies;
mod conns;
mod open_files;

use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response, StatusCode, header};
use axum::response::IntoResponse;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use crate::api::error::ApiError;
use crate::daemon::state::AppState;
use bodies::{Guarded, StallTimeout};
use conns::{Conn, Conns, Reason, Watched};

/// Over-limit connections answered 503 at once; beyond, they are closed unanswered.
const MAX_REFUSALS: usize = 64;
/// What a refused client is told to wait before trying again, in seconds.
const RETRY_AFTER_SECS: u64 = 1;
/// How long connections with a request under way get to finish at shutdown.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Serves `state`'s API on `listener` until `shutdown` is cancelled.
pub async fn serve(listener: TcpListener, state: AppState, shutdown: CancellationToken) {
    let limits = state.config.http;
    let open_files = open_files::raise();
    let max = open_files::fit(limits.max_connections, open_files);
    if max < limits.max_connections {
        tracing::warn!(
            configured = limits.max_connections,
            max_connections = max,
            open_files = open_files.unwrap_or_default(),
            "max_connections lowered to fit the open-file limit"
        );
    }
    let conns = Arc::new(Conns::new(limits));
    let router = crate::api::app(state.clone());
    let reaper = tokio::spawn(reap(conns.clone(), state.clone()));
    let refusing = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            r = listener.accept() => r,
            _ = shutdown.cancelled() => break,
        };
        while tasks.try_join_next().is_some() {}
        let stream = match accepted {
            Ok((stream, _)) => {
                // Responses go out in several writes (head, then body chunks, SSE
                // events): with Nagle on, a write after an unacknowledged one waits for
                // the peer's delayed ACK (~40 ms on Linux).
                let _ = stream.set_nodelay(true);
                stream
            }
            Err(e) => {
                // Out of descriptors: close an idle connection to get one back.
                if e.raw_os_error().is_some_and(is_out_of_files) && conns.evict_one() {
                    closed(&state, Reason::Evicted);
                } else {
                    tracing::warn!(error = %e, "accepting a connection failed");
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        if conns.len() >= max {
            if conns.evict_one() {
                closed(&state, Reason::Evicted);
            } else {
                refuse(stream, &refusing, &state);
                continue;
            }
        }
        let conn = conns.add();
        state.metrics.set_http_connections(conns.len());
        tasks.spawn(serve_conn(
            stream,
            conn,
            conns.clone(),
            router.clone(),
            state.clone(),
            shutdown.clone(),
        ));
    }
    drop(listener);
    for _ in 0..conns.close_waiting() {
        closed(&state, Reason::Shutdown);
    }
    let drain = async { while tasks.join_next().await.is_some() {} };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        tracing::warn!(
            open = conns.len(),
            "connections still busy after {SHUTDOWN_GRACE:?}; closing them"
        );
    }
    reaper.abort();
}

fn is_out_of_files(errno: i32) -> bool {
    errno == nix::errno::Errno::EMFILE as i32 || errno == nix::errno::Errno::ENFILE as i32
}

fn closed(state: &AppState, reason: Reason) {
    state.metrics.http_connection_closed(reason.as_str());
}

/// Closes connections past their header or idle timeout, a few times a second.
async fn reap(conns: Arc<Conns>, state: AppState) {
    let mut tick = tokio::time::interval(conns.reap_every());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let reaped = conns.reap();
        for reason in &reaped {
            closed(&state, *reason);
        }
        if !reaped.is_empty() {
            tracing::debug!(closed = reaped.len(), "closed slow or idle connections");
        }
        state.metrics.set_http_connections(conns.len());
    }
}

/// One connection, until the client or the listener closes it.
async fn serve_conn(
    stream: TcpStream,
    conn: Arc<Conn>,
    conns: Arc<Conns>,
    router: axum::Router,
    state: AppState,
    shutdown: CancellationToken,
) {
    let body_timeout = state.config.http.body_read_timeout;
    let io = TokioIo::new(Watched {
        inner: stream,
        conn: conn.clone(),
    });
    let service = {
        let conn = conn.clone();
        service_fn(move |req: Request<Incoming>| {
            let router = router.clone();
            let guard = conn.begin();
            async move {
                // The listener closed this connection as the request arrived.
                let Some(guard) = guard else {
                    return Ok::<_, Infallible>(busy());
                };
                let req = req.map(|b| Body::new(StallTimeout::new(b, body_timeout)));
                let resp = match router.oneshot(req).await {
                    Ok(resp) => resp,
                    Err(never) => match never {},
                };
                Ok(resp.map(|b| Body::new(Guarded::new(b, guard))))
            }
        })
    };
    let mut builder = http1::Builder::new();
    // The listener keeps the head's time itself (see `conns`).
    builder.header_read_timeout(None);
    let served = builder.serve_connection(io, service);
    tokio::pin!(served);
    let mut graceful = false;
    loop {
        tokio::select! {
            r = served.as_mut() => {
                if let Err(e) = r {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
                break;
            }
            // Dropping the connection closes the socket.
            _ = conn.close.cancelled() => break,
            _ = shutdown.cancelled(), if !graceful => {
                served.as_mut().graceful_shutdown();
                graceful = true;
            }
        }
    }
    conns.remove(&conn);
    state.metrics.set_http_connections(conns.len());
}

/// Every connection is busy: answer 503 and close (at most [`MAX_REFUSALS`] at once,
/// each bounded in time; beyond, the connection is closed unanswered).
fn refuse(stream: TcpStream, refusing: &Arc<AtomicUsize>, state: &AppState) {
    state.metrics.http_connection_closed("over_limit");
    if refusing.fetch_add(1, Ordering::AcqRel) >= MAX_REFUSALS {
        refusing.fetch_sub(1, Ordering::AcqRel);
        return;
    }
    let refusing = refusing.clone();
    tokio::spawn(async move {
        let mut builder = http1::Builder::new();
        builder
            .keep_alive(false)
            .timer(TokioTimer::new())
            .header_read_timeout(Duration::from_secs(2));
        let service = service_fn(|_req: Request<Incoming>| async { Ok::<_, Infallible>(busy()) });
        let served = builder.serve_connection(TokioIo::new(stream), service);
        let _ = tokio::time::timeout(Duration::from_secs(5), served).await;
        refusing.fetch_sub(1, Ordering::AcqRel);
    });
}

/// 503 with `Retry-After`, closing the connection.
fn busy() -> Response<Body> {
    let mut resp = ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "busy",
        "the server has no free connection; retry later",
    )
    .retry_after(RETRY_AFTER_SECS)
    .into_response();
    resp.headers_mut().insert(
        header::CONNECTION,
        header::HeaderValue::from_static("close"),
    );
    resp
}
