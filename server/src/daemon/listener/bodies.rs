//! Body wrappers of the listener: a request body that fails once no byte has come for
//! the body timeout, and a response body that keeps its connection busy until it ends.

use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::Sleep;

use super::conns::RequestGuard;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The error of a request body that stalled.
#[derive(Debug, thiserror::Error)]
#[error("no byte of the request body arrived for {0:?}")]
pub(super) struct Stalled(Duration);

/// A request body whose next frame must come within `timeout` of being asked for
/// (nginx's `client_body_timeout`: between two reads, not for the whole body).
pub(super) struct StallTimeout<B> {
    inner: B,
    timeout: Duration,
    sleep: Option<Pin<Box<Sleep>>>,
}

impl<B> StallTimeout<B> {
    pub(super) fn new(inner: B, timeout: Duration) -> Self {
        StallTimeout {
            inner,
            timeout,
            sleep: None,
        }
    }
}

impl<B> Body for StallTimeout<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => {
                this.sleep = None;
                Poll::Ready(frame.map(|f| f.map_err(Into::into)))
            }
            Poll::Pending => {
                let timeout = this.timeout;
                let sleep = this
                    .sleep
                    .get_or_insert_with(|| Box::pin(tokio::time::sleep(timeout)));
                if sleep.as_mut().poll(cx).is_ready() {
                    this.sleep = None;
                    return Poll::Ready(Some(Err(Box::new(Stalled(timeout)))));
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body holding its request's [`RequestGuard`]: the connection counts as
/// busy until the body is done (or dropped, when the client goes away).
pub(super) struct Guarded {
    inner: axum::body::Body,
    _guard: RequestGuard,
}

impl Guarded {
    pub(super) fn new(inner: axum::body::Body, guard: RequestGuard) -> Self {
        Guarded {
            inner,
            _guard: guard,
        }
    }
}

impl Body for Guarded {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, axum::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn next(body: &mut StallTimeout<axum::body::Body>) -> Option<Result<Bytes, String>> {
        std::future::poll_fn(|cx| Pin::new(&mut *body).poll_frame(cx))
            .await
            .map(|f| {
                f.map(|f| f.into_data().unwrap_or_default())
                    .map_err(|e| e.to_string())
            })
    }

    #[tokio::test]
    async fn a_body_that_stops_arriving_fails_and_one_that_trickles_does_not() {
        let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = futures::stream::poll_fn(move |cx| rx.poll_recv(cx));
        let timeout = Duration::from_secs(2);
        let mut body = StallTimeout::new(axum::body::Body::from_stream(stream), timeout);
        // Chunks well within the timeout of each other, then silence with the sender
        // kept open: the chunks come through, then the stall is an error.
        let sender = tokio::spawn(async move {
            for _ in 0..3 {
                tokio::time::sleep(Duration::from_millis(20)).await;
                tx.send(Ok(Bytes::from_static(b"x"))).await.unwrap();
            }
            std::future::pending::<()>().await;
            drop(tx);
        });
        for _ in 0..3 {
            assert_eq!(next(&mut body).await.unwrap().unwrap(), "x");
        }
        let err = next(&mut body).await.unwrap().unwrap_err();
        assert!(
            err.contains("no byte of the request body arrived for 2s"),
            "{err}"
        );
        sender.abort();
    }
}
