//! The open connections and what each is doing, for the timeouts and for making room
//! at the connection limit.
//!
//! A connection is in one of three phases, told apart by three numbers it keeps:
//! - **busy**: a request is under way (`in_flight > 0`), from its head being parsed to
//!   its response's last byte. The listener never closes it; the body's own timeout
//!   ([`super::bodies::StallTimeout`]) and the handler decide.
//! - **reading a head**: the first request of a connection (counted from its opening),
//!   or a later one whose first byte has arrived (`head_since`): closed once that has
//!   taken longer than the header timeout, complete or not.
//! - **idle**: between requests with no byte of the next one: closed after the idle
//!   timeout.
//!
//! Only a connection that is not busy is ever closed by the listener (`try_close`
//! swaps `in_flight` from 0 to [`CLOSED`] atomically, so a request cannot start on a
//! connection being closed: it sees `CLOSED` and is answered 503).

use std::collections::HashMap;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_util::sync::CancellationToken;

use crate::daemon::config::HttpLimits;

/// `in_flight` of a connection the listener closed.
const CLOSED: u64 = u64::MAX;
/// `head_since` when no byte of a next request has arrived.
const NONE: u64 = u64::MAX;

/// Why the listener closed a connection (a label of
/// `slipway_http_connections_closed_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Reason {
    HeaderTimeout,
    IdleTimeout,
    /// Closed to make room for a new connection at the limit.
    Evicted,
    /// The server is shutting down.
    Shutdown,
}

impl Reason {
    pub(super) fn as_str(self) -> &'static str {
        match self {
            Reason::HeaderTimeout => "header_timeout",
            Reason::IdleTimeout => "idle_timeout",
            Reason::Evicted => "evicted",
            Reason::Shutdown => "shutdown",
        }
    }
}

/// One connection's state, shared by its task, its I/O, its requests and the reaper.
pub(super) struct Conn {
    id: u64,
    epoch: Instant,
    in_flight: AtomicU64,
    /// Milliseconds since `epoch`: when the connection was opened or its last
    /// response ended.
    idle_since: AtomicU64,
    /// Milliseconds since `epoch` of the first byte of the next request's head.
    head_since: AtomicU64,
    served: AtomicU64,
    /// Cancelled when the listener closes the connection: its task drops it.
    pub(super) close: CancellationToken,
}

impl Conn {
    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1)
    }

    /// A request's head was parsed: the connection is busy until the guard is dropped
    /// (with the response's body). `None` if the listener closed it meanwhile.
    pub(super) fn begin(self: &Arc<Self>) -> Option<RequestGuard> {
        let mut current = self.in_flight.load(Ordering::Acquire);
        loop {
            if current == CLOSED {
                return None;
            }
            match self.in_flight.compare_exchange(
                current,
                current + 1,
                Ordering::AcqRel,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => current = now,
            }
        }
        self.head_since.store(NONE, Ordering::Release);
        Some(RequestGuard(self.clone()))
    }

    /// Bytes arrived: if no request is under way, they start the next one's head.
    fn saw_bytes(&self) {
        if self.in_flight.load(Ordering::Acquire) == 0
            && self.head_since.load(Ordering::Acquire) == NONE
        {
            self.head_since.store(self.now(), Ordering::Release);
        }
    }

    /// What the connection is waiting for and since when (ms), unless busy.
    fn waiting(&self) -> Option<(Reason, u64)> {
        if self.in_flight.load(Ordering::Acquire) != 0 {
            return None;
        }
        let head = self.head_since.load(Ordering::Acquire);
        if head != NONE {
            return Some((Reason::HeaderTimeout, head));
        }
        let since = self.idle_since.load(Ordering::Acquire);
        if self.served.load(Ordering::Acquire) == 0 {
            // The first head is awaited from the moment the connection opened.
            Some((Reason::HeaderTimeout, since))
        } else {
            Some((Reason::IdleTimeout, since))
        }
    }

    /// Closes the connection if no request is under way on it.
    fn try_close(&self) -> bool {
        let closed = self
            .in_flight
            .compare_exchange(0, CLOSED, Ordering::AcqRel, Ordering::Acquire)
            .is_ok();
        if closed {
            self.close.cancel();
        }
        closed
    }
}

/// Held for one request, from its head to its response's end.
pub(super) struct RequestGuard(Arc<Conn>);

impl Drop for RequestGuard {
    fn drop(&mut self) {
        let conn = &self.0;
        conn.idle_since.store(conn.now(), Ordering::Release);
        conn.head_since.store(NONE, Ordering::Release);
        conn.served.fetch_add(1, Ordering::AcqRel);
        conn.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Every open connection, by id.
pub(super) struct Conns {
    limits: HttpLimits,
    epoch: Instant,
    next: AtomicU64,
    open: Mutex<HashMap<u64, Arc<Conn>>>,
}

impl Conns {
    pub(super) fn new(limits: HttpLimits) -> Conns {
        Conns {
            limits,
            epoch: Instant::now(),
            next: AtomicU64::new(0),
            open: Mutex::new(HashMap::new()),
        }
    }

    fn open(&self) -> MutexGuard<'_, HashMap<u64, Arc<Conn>>> {
        self.open.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(super) fn len(&self) -> usize {
        self.open().len()
    }

    /// A new connection, counted from now.
    pub(super) fn add(&self) -> Arc<Conn> {
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(Conn {
            id,
            epoch: self.epoch,
            in_flight: AtomicU64::new(0),
            idle_since: AtomicU64::new(0),
            head_since: AtomicU64::new(NONE),
            served: AtomicU64::new(0),
            close: CancellationToken::new(),
        });
        conn.idle_since.store(conn.now(), Ordering::Release);
        self.open().insert(id, conn.clone());
        conn
    }

    /// The connection ended (its task is done).
    pub(super) fn remove(&self, conn: &Conn) {
        self.open().remove(&conn.id);
    }

    /// Closes the connection that has waited longest without a request under way, to
    /// make room; `false` if every connection is busy.
    pub(super) fn evict_one(&self) -> bool {
        let mut open = self.open();
        loop {
            let oldest = open
                .values()
                .filter_map(|c| c.waiting().map(|(_, since)| (since, c.id)))
                .min();
            let Some((_, id)) = oldest else {
                return false;
            };
            let Some(conn) = open.remove(&id) else {
                return false;
            };
            // A request may have begun since `waiting` looked: then it stays open (and
            // out of the count for a moment); try the next.
            if conn.try_close() {
                return true;
            }
            open.insert(id, conn);
        }
    }

    /// Closes every connection past its header or idle timeout; what was closed, by
    /// reason.
    pub(super) fn reap(&self) -> Vec<Reason> {
        let now = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let (header, idle) = (
            ms(self.limits.header_read_timeout),
            ms(self.limits.idle_timeout),
        );
        let mut open = self.open();
        let mut closed = Vec::new();
        open.retain(|_, conn| {
            let Some((reason, since)) = conn.waiting() else {
                return true;
            };
            let limit = match reason {
                Reason::HeaderTimeout => header,
                _ => idle,
            };
            if now.saturating_sub(since) >= limit && conn.try_close() {
                closed.push(reason);
                false
            } else {
                true
            }
        });
        closed
    }

    /// At shutdown: closes every connection without a request under way.
    pub(super) fn close_waiting(&self) -> usize {
        let mut open = self.open();
        let before = open.len();
        open.retain(|_, conn| !conn.try_close());
        before - open.len()
    }

    /// How often [`Conns::reap`] should run: often enough to close within a fraction of
    /// the shorter timeout.
    pub(super) fn reap_every(&self) -> Duration {
        (self
            .limits
            .header_read_timeout
            .min(self.limits.idle_timeout)
            / 8)
        .clamp(Duration::from_millis(50), Duration::from_secs(1))
    }
}

/// A connection's socket, telling its [`Conn`] when bytes arrive.
pub(super) struct Watched<S> {
    pub(super) inner: S,
    pub(super) conn: Arc<Conn>,
}

impl<S: AsyncRead + Unpin> AsyncRead for Watched<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.inner).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.conn.saw_bytes();
        }
        polled
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Watched<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits(header_ms: u64, idle_ms: u64) -> HttpLimits {
        HttpLimits {
            header_read_timeout: Duration::from_millis(header_ms),
            body_read_timeout: Duration::from_secs(30),
            idle_timeout: Duration::from_millis(idle_ms),
            max_connections: 10,
        }
    }

    #[test]
    fn phases_follow_requests_and_bytes() {
        let conns = Conns::new(limits(1000, 5000));
        let c = conns.add();
        assert_eq!(c.waiting().unwrap().0, Reason::HeaderTimeout);
        let guard = c.begin().unwrap();
        assert!(c.waiting().is_none(), "busy");
        c.saw_bytes(); // body bytes: still busy, no head started
        assert_eq!(c.head_since.load(Ordering::Acquire), NONE);
        drop(guard);
        assert_eq!(c.waiting().unwrap().0, Reason::IdleTimeout);
        c.saw_bytes();
        assert_eq!(c.waiting().unwrap().0, Reason::HeaderTimeout);
        let _guard = c.begin().unwrap();
        assert!(c.waiting().is_none());
    }

    #[test]
    fn only_a_connection_without_a_request_is_closed() {
        let conns = Conns::new(limits(1000, 5000));
        let busy = conns.add();
        let _guard = busy.begin().unwrap();
        let waiting = conns.add();
        assert!(conns.evict_one());
        assert!(waiting.close.is_cancelled());
        assert!(!busy.close.is_cancelled());
        assert!(
            waiting.begin().is_none(),
            "a closed connection takes no request"
        );
        assert!(!conns.evict_one(), "the busy one stays");
        assert_eq!(conns.len(), 1);
    }

    #[test]
    fn the_longest_waiting_connection_is_evicted_first() {
        let conns = Conns::new(limits(60_000, 60_000));
        let first = conns.add();
        let second = conns.add();
        // The second has been waiting since earlier than the first.
        second.idle_since.store(0, Ordering::Release);
        first.idle_since.store(10, Ordering::Release);
        assert!(conns.evict_one());
        assert!(second.close.is_cancelled() && !first.close.is_cancelled());
    }

    #[test]
    fn reaping_closes_by_phase() {
        let conns = Conns::new(limits(50, 10_000));
        let head = conns.add(); // first head awaited
        let idle = conns.add();
        drop(idle.begin().unwrap()); // served one, now idle
        let busy = conns.add();
        let _guard = busy.begin().unwrap();
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(conns.reap(), vec![Reason::HeaderTimeout]);
        assert!(head.close.is_cancelled());
        assert!(!idle.close.is_cancelled() && !busy.close.is_cancelled());
        assert_eq!(conns.close_waiting(), 1);
        assert!(idle.close.is_cancelled() && !busy.close.is_cancelled());
    }
}
