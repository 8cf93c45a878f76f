//! `ingest.max_inflight_body_bytes`: the request bodies of `POST /v1/events`
//! being read or handled hold their bytes in one budget. A body with a
//! `Content-Length` takes all of it before a byte is read; a chunked body
//! takes each chunk as it arrives. A body that does not fit is refused with
//! 503 + `Retry-After` (nothing written) instead of read; its bytes come
//! back when the request is done with them (parsed and written, refused,
//! or dropped when the client goes away).
//!
//! Without it, `max_connections` slow clients each streaming up to
//! `ingest.max_body_bytes` held that product (300 × 1 MiB bodies: 358 MB).

use std::sync::Arc;

use axum::body::Body;
use bytes::Bytes;
use http_body::Body as _;
use http_body_util::BodyExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::telemetry::metrics;

/// The byte budget of one process's ingest bodies.
#[derive(Clone)]
pub struct BodyBudget {
    bytes: Arc<Semaphore>,
    max: usize,
}

/// Body bytes taken from a [`BodyBudget`], given back on drop.
#[derive(Debug)]
pub struct HeldBytes {
    permit: Option<OwnedSemaphorePermit>,
    n: usize,
}

impl Drop for HeldBytes {
    fn drop(&mut self) {
        metrics::INGEST_BODY_BYTES_IN_FLIGHT.sub(self.n as u64);
    }
}

/// Why a body was not read.
#[derive(Debug, thiserror::Error)]
pub enum ReadError {
    /// Larger than `ingest.max_body_bytes` (declared or sent): 413.
    #[error("request body is larger than {limit} bytes")]
    TooLarge { limit: usize },
    /// The bodies in flight hold the budget: 503, retry later.
    #[error("request bodies in flight hold {held} of {max} bytes")]
    Budget { held: usize, max: usize },
    /// The client broke off, or paused past `server.body_idle_timeout_ms`.
    #[error("could not read the request body: {0}")]
    Broken(String),
}

impl BodyBudget {
    /// A budget of `max` bytes (capped at what a semaphore can count).
    pub fn new(max: usize) -> Self {
        let max = max.clamp(1, Semaphore::MAX_PERMITS);
        Self {
            bytes: Arc::new(Semaphore::new(max)),
            max,
        }
    }

    /// Bytes held now by the bodies of this budget.
    pub fn held(&self) -> usize {
        self.max.saturating_sub(self.bytes.available_permits())
    }

    /// Nothing held yet.
    fn hold(&self) -> HeldBytes {
        HeldBytes { permit: None, n: 0 }
    }

    /// Adds `n` bytes to `held`, or refuses without waiting.
    fn take(&self, held: &mut HeldBytes, n: usize) -> Result<(), ReadError> {
        if n == 0 {
            return Ok(());
        }
        let refused = || ReadError::Budget {
            held: self.held(),
            max: self.max,
        };
        let count = u32::try_from(n).map_err(|_| refused())?;
        let permit = self
            .bytes
            .clone()
            .try_acquire_many_owned(count)
            .map_err(|_| refused())?;
        match &mut held.permit {
            Some(p) => p.merge(permit),
            None => held.permit = Some(permit),
        }
        held.n += n;
        metrics::INGEST_BODY_BYTES_IN_FLIGHT.add(n as u64);
        Ok(())
    }

    /// Reads `body` (at most `max_body` bytes), holding its bytes here: the
    /// declared length before reading, else each chunk as it comes.
    pub async fn read(
        &self,
        mut body: Body,
        max_body: usize,
    ) -> Result<(Bytes, HeldBytes), ReadError> {
        let too_large = ReadError::TooLarge { limit: max_body };
        let mut held = self.hold();
        let declared = body.size_hint().exact();
        if let Some(n) = declared {
            let n = usize::try_from(n).unwrap_or(usize::MAX);
            if n > max_body {
                return Err(too_large);
            }
            self.take(&mut held, n)?;
        }
        let mut buf = Vec::with_capacity(held.n);
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(|e| ReadError::Broken(e.to_string()))?;
            let Ok(data) = frame.into_data() else {
                continue; // trailers
            };
            let len = buf.len().saturating_add(data.len());
            if len > max_body {
                return Err(too_large);
            }
            if len > held.n {
                let more = len - held.n;
                self.take(&mut held, more)?;
            }
            buf.extend_from_slice(&data);
        }
        Ok((Bytes::from(buf), held))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::stream;
    use http_body::Frame;

    fn chunked(chunks: Vec<&'static [u8]>) -> Body {
        let frames = chunks
            .into_iter()
            .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c))));
        Body::new(http_body_util::StreamBody::new(stream::iter(frames)))
    }

    #[tokio::test]
    async fn a_declared_length_is_held_before_reading_and_given_back_on_drop() {
        let budget = BodyBudget::new(10);
        let (bytes, held) = budget.read(Body::from("0123456"), 100).await.expect("fits");
        assert_eq!((&bytes[..], budget.held()), (&b"0123456"[..], 7));
        // 7 of 10 held: a 4-byte body is refused before it is read
        let e = budget
            .read(Body::from("abcd"), 100)
            .await
            .expect_err("past the budget");
        assert!(matches!(e, ReadError::Budget { held: 7, max: 10 }), "{e}");
        drop(held);
        assert_eq!(budget.held(), 0);
        assert!(budget.read(Body::from("abcd"), 100).await.is_ok());
        assert_eq!(budget.held(), 0, "the refused read held nothing");
    }

    #[tokio::test]
    async fn a_chunked_body_is_held_chunk_by_chunk() {
        let budget = BodyBudget::new(10);
        let (_, held) = budget
            .read(chunked(vec![b"abc", b"def"]), 100)
            .await
            .expect("fits");
        assert_eq!(budget.held(), 6);
        // 4 more fit, the fifth byte does not: the first chunk's bytes come back
        let e = budget
            .read(chunked(vec![b"12", b"34", b"5"]), 100)
            .await
            .expect_err("past the budget");
        assert!(matches!(e, ReadError::Budget { held: 10, max: 10 }), "{e}");
        assert_eq!(budget.held(), 6);
        drop(held);
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn the_body_limit_comes_first() {
        let budget = BodyBudget::new(1_000);
        let e = budget.read(Body::from("x".repeat(11)), 10).await;
        assert!(matches!(e, Err(ReadError::TooLarge { limit: 10 })));
        let e = budget.read(chunked(vec![b"123456", b"78901"]), 10).await;
        assert!(matches!(e, Err(ReadError::TooLarge { limit: 10 })));
        assert_eq!(budget.held(), 0);
    }
}
