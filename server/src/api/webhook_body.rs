//! Reading a webhook's body before anything is known about its sender: capped while it
//! streams, and held against one budget for all connections.
//!
//! A forge's delivery can be checked only once all of it is read (the signature covers
//! the whole body), so until then anyone can make the server hold up to
//! `max_webhook_bytes` per connection. The budget (`max_unverified_webhook_bytes`)
//! bounds the sum: a body with a `Content-Length` reserves all of it before a byte is
//! read (so deliveries never hold part of the budget each and starve one another), a
//! chunked one reserves as its buffer grows. A delivery that cannot get its share
//! within [`BUDGET_WAIT`] is refused with 503 and `Retry-After` — before its body is
//! read, so a client that sent `Expect: 100-continue` never sends it. The share is
//! given back once the signature is checked (or the request fails). The whole body
//! must arrive within [`UNVERIFIED_DEADLINE`], so a trickle cannot keep its share.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{Body, Bytes};
use axum::http::{HeaderMap, StatusCode, header::CONTENT_LENGTH};
use futures::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::{ApiError, ApiResult};

/// How long a delivery waits for its share of the budget before it is refused.
pub const BUDGET_WAIT: Duration = Duration::from_secs(2);
/// How long an unverified body may take to arrive, in all.
pub const UNVERIFIED_DEADLINE: Duration = Duration::from_secs(60);
/// What a refused sender is told to wait, in seconds.
const RETRY_AFTER_SECS: u64 = 5;
/// The budget is kept in units of this many bytes.
const UNIT: usize = 1024;

/// The bytes unverified bodies may hold at once, shared by every connection.
#[derive(Clone)]
pub struct BodyBudget {
    units: Arc<Semaphore>,
}

impl std::fmt::Debug for BodyBudget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BodyBudget")
            .field("free_bytes", &self.free_bytes())
            .finish()
    }
}

/// A share of the budget, given back when dropped.
#[derive(Default)]
pub struct Held {
    permit: Option<OwnedSemaphorePermit>,
}

impl Held {
    fn units(&self) -> usize {
        self.permit.as_ref().map_or(0, |p| p.num_permits())
    }
}

impl BodyBudget {
    pub fn new(bytes: usize) -> BodyBudget {
        let units = bytes.div_ceil(UNIT).min(Semaphore::MAX_PERMITS);
        BodyBudget {
            units: Arc::new(Semaphore::new(units)),
        }
    }

    /// Bytes not held by anyone now.
    pub fn free_bytes(&self) -> usize {
        self.units.available_permits().saturating_mul(UNIT)
    }

    /// Grows `held` to cover `bytes`, waiting up to [`BUDGET_WAIT`]; 503 if it cannot.
    async fn hold(&self, held: &mut Held, bytes: usize) -> ApiResult<()> {
        let more = bytes.div_ceil(UNIT).saturating_sub(held.units());
        if more == 0 {
            return Ok(());
        }
        let busy = || {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "busy",
                "too many webhook bodies are being read; retry later",
            )
            .retry_after(RETRY_AFTER_SECS)
        };
        let more = u32::try_from(more).map_err(|_| busy())?;
        let permit =
            match tokio::time::timeout(BUDGET_WAIT, self.units.clone().acquire_many_owned(more))
                .await
            {
                Ok(Ok(permit)) => permit,
                _ => {
                    tracing::warn!(
                        bytes,
                        free = self.free_bytes(),
                        "webhook refused: the budget for unverified bodies is taken"
                    );
                    return Err(busy());
                }
            };
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        Ok(())
    }
}

/// Reads the body, refusing it (413) as soon as it is known to exceed `limit`: from
/// `Content-Length` before reading anything, else while streaming. At most `limit`
/// bytes are ever held.
pub async fn read_capped(headers: &HeaderMap, body: Body, limit: usize) -> ApiResult<Bytes> {
    read(headers, body, limit, None)
        .await
        .map(|(bytes, _)| bytes)
}

/// [`read_capped`] for a body nobody has vouched for yet: held against `budget` (see
/// the module comment) until the returned [`Held`] is dropped.
pub async fn read_unverified(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: &BodyBudget,
) -> ApiResult<(Bytes, Held)> {
    match tokio::time::timeout(
        UNVERIFIED_DEADLINE,
        read(headers, body, limit, Some(budget)),
    )
    .await
    {
        Ok(read) => read,
        Err(_) => Err(ApiError::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {UNVERIFIED_DEADLINE:?}"),
        )),
    }
}

async fn read(
    headers: &HeaderMap,
    body: Body,
    limit: usize,
    budget: Option<&BodyBudget>,
) -> ApiResult<(Bytes, Held)> {
    let too_large = || ApiError::too_large(format!("the body exceeds the {limit}-byte limit"));
    let mut held = Held::default();
    let mut buf = Vec::new();
    if let Some(len) = headers.get(CONTENT_LENGTH) {
        let len: u64 = len
            .to_str()
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .ok_or_else(|| ApiError::bad_request("invalid Content-Length"))?;
        if len > limit as u64 {
            return Err(too_large());
        }
        // Within `limit`, so it fits a usize.
        let len = usize::try_from(len).map_err(|_| too_large())?;
        if let Some(budget) = budget {
            budget.hold(&mut held, len).await?;
        }
        // One allocation of the announced size: no growth, no copies held twice.
        buf.reserve_exact(len);
    }
    let mut stream = body.into_data_stream();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.map_err(|e| {
            tracing::debug!(error = %e, "webhook body read failed");
            ApiError::bad_request("could not read the request body")
        })?;
        let needed = buf.len() + chunk.len();
        if needed > limit {
            return Err(too_large());
        }
        if needed > buf.capacity() {
            // A body without a length (or longer than announced): grow by doubling,
            // the budget covering the whole new buffer.
            let grown = needed.max(buf.capacity() * 2).min(limit);
            if let Some(budget) = budget {
                budget.hold(&mut held, grown).await?;
            }
            buf.reserve_exact(grown - buf.len());
        }
        buf.extend_from_slice(&chunk);
    }
    Ok((Bytes::from(buf), held))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with_length(len: usize) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(CONTENT_LENGTH, HeaderValue::from(len));
        h
    }

    #[tokio::test]
    async fn bodies_hold_their_share_until_dropped() {
        let budget = BodyBudget::new(10 * UNIT);
        let (bytes, held) = read_unverified(
            &with_length(6 * UNIT),
            Body::from(vec![1u8; 6 * UNIT]),
            10 * UNIT,
            &budget,
        )
        .await
        .unwrap();
        assert_eq!(bytes.len(), 6 * UNIT);
        assert_eq!(budget.free_bytes(), 4 * UNIT);
        // A second 6 KiB body does not fit beside it: refused with Retry-After,
        // without its body being read.
        let err = read_unverified(
            &with_length(6 * UNIT),
            Body::from(vec![2u8; 6 * UNIT]),
            10 * UNIT,
            &budget,
        )
        .await
        .err()
        .unwrap();
        assert_eq!(err.status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(err.retry_after, Some(RETRY_AFTER_SECS));
        assert_eq!(budget.free_bytes(), 4 * UNIT);
        drop(held);
        assert_eq!(budget.free_bytes(), 10 * UNIT);
    }

    #[tokio::test]
    async fn a_chunked_body_holds_what_its_buffer_holds() {
        let budget = BodyBudget::new(64 * UNIT);
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..5)
            .map(|_| Ok(Bytes::from(vec![7u8; 3 * UNIT])))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let (bytes, held) = read_unverified(&HeaderMap::new(), body, 64 * UNIT, &budget)
            .await
            .unwrap();
        assert_eq!(bytes.len(), 15 * UNIT);
        // Grown by doubling: 3, 6, 12, then 24 KiB.
        assert_eq!(held.units(), 24);
        drop(held);
        assert_eq!(budget.free_bytes(), 64 * UNIT);
        // Past the cap: 413, whatever the budget.
        let chunks: Vec<Result<Bytes, std::io::Error>> = (0..5)
            .map(|_| Ok(Bytes::from(vec![7u8; 3 * UNIT])))
            .collect();
        let body = Body::from_stream(futures::stream::iter(chunks));
        let err = read_unverified(&HeaderMap::new(), body, 10 * UNIT, &budget)
            .await
            .err()
            .unwrap();
        assert_eq!(err.status, StatusCode::PAYLOAD_TOO_LARGE);
        assert_eq!(budget.free_bytes(), 64 * UNIT);
    }
}
