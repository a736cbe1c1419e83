//! Admission: how many transactions ingress takes on at once.
//!
//! - **Unary** ([`InflightLimitLayer`]): at most `--max-inflight` Submit calls between
//!   admission and outcome; beyond it the call is refused at once RESOURCE_EXHAUSTED with
//!   `grpc-retry-pushback-ms`. tower's `ConcurrencyLimit` does not fit: it parks callers in
//!   `poll_ready` (a `LoadShed` in front would refuse, but as a bare `Overloaded` without the
//!   reason or the pushback trailer). This layer refuses in `call`, holding its permit in the
//!   response future, so the permit is given back when the outcome is (or the call dropped).
//! - **SubmitStream** ([`StreamRoom`]): the permit must come *before the read* — a message
//!   read is a message held — so it cannot be a layer under the read: the reader takes a
//!   permit from `--streams-inflight` (shared by all streams, first come first served) while
//!   it holds fewer than its fair share, and only then reads.
//! - **Stream slots** ([`StreamRoom::open_stream`]): `--max-streams` open SubmitStreams over
//!   every connection, and at most `--max-streams-per-connection` on any one, so a client
//!   that opens streams and sends nothing holds its own connection's slots, not everyone's.
//!   (A stream that holds a slot and sends nothing for `--stream-idle-timeout` is ended by
//!   its reader, `stream.rs`.)

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use futures::future::{BoxFuture, FutureExt as _};
use sluice_proto::pb::Outcome;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tower::{Layer, Service};

use super::refusal::{Reason, Refusal};
use super::request::TxnRequest;

/// The unary in-flight limit. See the module docs.
#[derive(Clone)]
pub(crate) struct InflightLimitLayer {
    permits: Arc<Semaphore>,
    limit: usize,
    pushback: Duration,
}

impl InflightLimitLayer {
    pub(crate) fn new(limit: usize, pushback: Duration) -> Self {
        Self {
            permits: Arc::new(Semaphore::new(limit.clamp(1, Semaphore::MAX_PERMITS))),
            limit,
            pushback,
        }
    }
}

impl<S> Layer<S> for InflightLimitLayer {
    type Service = InflightLimit<S>;
    fn layer(&self, inner: S) -> InflightLimit<S> {
        InflightLimit {
            inner,
            limit: self.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct InflightLimit<S> {
    inner: S,
    limit: InflightLimitLayer,
}

impl<S> Service<TxnRequest> for InflightLimit<S>
where
    S: Service<TxnRequest, Response = Outcome, Error = Refusal>,
    S::Future: Send + 'static,
{
    type Response = Outcome;
    type Error = Refusal;
    type Future = BoxFuture<'static, Result<Outcome, Refusal>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Refusal>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: TxnRequest) -> Self::Future {
        let Ok(permit) = self.limit.permits.clone().try_acquire_owned() else {
            let refusal = Refusal::new(
                Reason::InflightLimit,
                format!("gateway at its in-flight limit ({})", self.limit.limit),
            )
            .pushback(self.limit.pushback);
            return futures::future::ready(Err(refusal)).boxed();
        };
        let outcome = self.inner.call(request);
        async move {
            let result = outcome.await;
            drop(permit);
            result
        }
        .boxed()
    }
}

/// The fewest transactions a stream may always have admitted, however many streams share
/// `streams_inflight`.
pub(crate) const MIN_STREAM_SHARE: usize = 16;

/// SubmitStream admission, shared by every stream: `--streams-inflight` permits and the
/// open-stream count that sets each stream's fair share.
#[derive(Clone)]
pub(crate) struct StreamRoom {
    /// One per admitted, unanswered SubmitStream transaction (`streams_inflight`).
    permits: Arc<Semaphore>,
    /// One per open SubmitStream (`max_streams`).
    open: Arc<Semaphore>,
    /// Open SubmitStreams per connection (its peer address names it): an entry per
    /// connection with a stream open, so at most `max_streams` entries.
    per_connection: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    max_per_connection: usize,
    max_streams: usize,
    streams_inflight: usize,
    stream_inflight: usize,
}

impl StreamRoom {
    pub(crate) fn new(
        max_streams: usize,
        max_per_connection: usize,
        streams_inflight: usize,
        stream_inflight: usize,
    ) -> Self {
        Self {
            per_connection: Arc::default(),
            max_per_connection: max_per_connection.max(1),
            permits: Arc::new(Semaphore::new(
                streams_inflight.clamp(1, Semaphore::MAX_PERMITS),
            )),
            open: Arc::new(Semaphore::new(max_streams.clamp(1, Semaphore::MAX_PERMITS))),
            max_streams,
            streams_inflight,
            stream_inflight,
        }
    }

    /// A place for one more open stream on `connection`, or which bound is full.
    pub(crate) fn open_stream(
        &self,
        connection: Option<SocketAddr>,
    ) -> Result<StreamSlot, SlotRefused> {
        let mut held = None;
        if let Some(peer) = connection {
            let mut counts = self.per_connection.lock().expect("stream slots");
            let n = counts.entry(peer).or_insert(0);
            if *n >= self.max_per_connection {
                return Err(SlotRefused::Connection(self.max_per_connection));
            }
            *n += 1;
            held = Some(peer);
        }
        let connection = ConnectionSlot {
            counts: self.per_connection.clone(),
            peer: held,
        };
        match self.open.clone().try_acquire_owned() {
            Ok(open) => Ok(StreamSlot {
                _open: open,
                _connection: connection,
            }),
            Err(_) => Err(SlotRefused::Gateway(self.max_streams)),
        }
    }

    /// Most transactions one stream may have admitted now: its own limit, and its fair
    /// share of `streams_inflight` among the streams open now — so a few streams whose
    /// clients stop reading outcomes cannot hold all the room.
    pub(crate) fn share(&self) -> usize {
        let open = self
            .max_streams
            .saturating_sub(self.open.available_permits())
            .max(1);
        (self.streams_inflight / open)
            .max(MIN_STREAM_SHARE)
            .min(self.stream_inflight)
    }

    /// Waits for a permit for one more transaction (FIFO among streams).
    pub(crate) async fn permit(&self) -> Option<OwnedSemaphorePermit> {
        self.permits.clone().acquire_owned().await.ok()
    }
}

/// Which stream-slot bound refused a new SubmitStream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SlotRefused {
    /// `--max-streams`, over every connection.
    Gateway(usize),
    /// `--max-streams-per-connection`.
    Connection(usize),
}

/// One open SubmitStream's place under both slot bounds, given back on drop.
pub(crate) struct StreamSlot {
    _open: OwnedSemaphorePermit,
    _connection: ConnectionSlot,
}

/// One stream counted against its connection; the count drops (and an empty entry goes)
/// when it is dropped.
struct ConnectionSlot {
    counts: Arc<Mutex<HashMap<SocketAddr, usize>>>,
    peer: Option<SocketAddr>,
}

impl Drop for ConnectionSlot {
    fn drop(&mut self) {
        let Some(peer) = self.peer else { return };
        let mut counts = self.counts.lock().expect("stream slots");
        if let Some(n) = counts.get_mut(&peer) {
            *n -= 1;
            if *n == 0 {
                counts.remove(&peer);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_connection_holds_at_most_its_own_slots() {
        let room = StreamRoom::new(8, 3, 64, 16);
        let a: SocketAddr = "10.0.0.1:1000".parse().unwrap();
        let b: SocketAddr = "10.0.0.1:1001".parse().unwrap();
        let held: Vec<_> = (0..3).map(|_| room.open_stream(Some(a)).unwrap()).collect();
        assert_eq!(
            room.open_stream(Some(a)).err(),
            Some(SlotRefused::Connection(3))
        );
        // Another connection (same host, another port) still opens.
        let other: Vec<_> = (0..3).map(|_| room.open_stream(Some(b)).unwrap()).collect();
        drop(held);
        assert!(room.open_stream(Some(a)).is_ok(), "slots come back on drop");
        assert!(room.per_connection.lock().unwrap().len() <= 2);
        drop(other);
        assert!(
            room.per_connection.lock().unwrap().is_empty(),
            "no entry left behind"
        );
    }

    #[test]
    fn the_gateway_bound_holds_over_every_connection() {
        let room = StreamRoom::new(4, 3, 64, 16);
        let peers: Vec<SocketAddr> = (0..5)
            .map(|i| format!("10.0.0.1:{}", 2000 + i).parse().unwrap())
            .collect();
        let held: Vec<_> = peers[..4]
            .iter()
            .map(|p| room.open_stream(Some(*p)).unwrap())
            .collect();
        assert_eq!(
            room.open_stream(Some(peers[4])).err(),
            Some(SlotRefused::Gateway(4))
        );
        assert_eq!(
            room.per_connection.lock().unwrap().len(),
            4,
            "the refused stream's count is given back"
        );
        drop(held);
    }
}
