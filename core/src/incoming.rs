//! The accept loop in front of every gRPC server: what a connection must do to keep its file
//! descriptor, and what the server does when it cannot accept.
//!
//! tonic's own incoming stream (and `TcpListenerStream`) hand every accepted socket to hyper
//! and retry a failed `accept` at once. Two failures follow:
//!
//! - **Connections that never speak hold a descriptor forever.** hyper waits for the
//!   24-byte HTTP/2 client preface without a deadline, so 2,000 sockets that send nothing
//!   (or half the preface) are 2,000 descriptors and 2,000 tasks for as long as the peer
//!   likes. [`Connection`] wraps each accepted socket and fails its reads once the
//!   handshake timeout passes without the full preface; hyper then drops the connection.
//!   The wrapper, rather than a read-ahead before handing the socket over, keeps the accept
//!   loop free of per-connection waiting and lets hyper consume the preface itself.
//! - **A failing `accept` spins.** Out of descriptors (EMFILE/ENFILE) the listener stays
//!   readable and `accept` fails again immediately: 100 % CPU and, at trace level, nothing in
//!   the log. [`Incoming`] backs off instead (10 ms doubling to 1 s, reset by the next
//!   success) and logs through a [`RateLimitedLog`]: the first error at once, then one line
//!   per interval with the count. Errors about one connection (the peer reset or aborted it
//!   before we took it) cannot spin — that connection is gone — so they are counted and the
//!   loop goes on without waiting, which would only delay the next client.
//!
//! It is also where the connection cap lives: every connection holds a permit of a
//! semaphore of `--max-connections`; one over the cap is accepted and closed at once (its
//! descriptor is freed, the peer sees the close instead of a silent backlog) and counted.
//!
//! The admin port (HTTP/1) uses the same loop with its own cap (`--admin-max-connections`)
//! and no preface check: [`crate::admin`] bounds its connections with hyper's header-read
//! timeout and an idle timeout instead.

use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use futures::Stream;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Sleep;
use tonic::transport::server::{Connected, TcpConnectInfo};

use crate::log_limit::RateLimitedLog;

/// Default time an accepted connection has to send the whole HTTP/2 client preface.
///
/// A real client sends it with its first write, in well under a second even across
/// continents; 10 s leaves room for a congested link while bounding how long a silent
/// socket holds a descriptor.
pub const DEFAULT_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Default cap on open connections per server (each holds a descriptor and a task).
pub const DEFAULT_MAX_CONNECTIONS: usize = 10_000;
/// First pause after a failed `accept`; doubles per consecutive failure.
pub const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
/// Longest pause after a failed `accept`.
pub const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);
/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const H2_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Limits the accept loop enforces.
#[derive(Debug, Clone, Copy)]
pub struct IncomingConfig {
    /// Time a connection has to deliver the full HTTP/2 preface before it is closed;
    /// `None`: no preface is expected (the admin port speaks HTTP/1).
    pub handshake_timeout: Option<Duration>,
    /// Connections open at once; one more is accepted and closed at once.
    pub max_connections: usize,
    /// The flag that sets `max_connections`, for the log line when it is reached.
    pub max_connections_flag: &'static str,
}

impl Default for IncomingConfig {
    fn default() -> Self {
        Self {
            handshake_timeout: Some(DEFAULT_HANDSHAKE_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
            max_connections_flag: "--max-connections",
        }
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    reason: &'static str,
}

/// Connection metrics of one server (registered once per binary).
#[derive(Clone, Default)]
pub struct ConnectionMetrics {
    open: Gauge,
    accepted: Counter,
    rejected: Family<RejectLabels, Counter>,
    accept_errors: Counter,
}

impl ConnectionMetrics {
    /// Registers `connections_open`, `connections_accepted_total`,
    /// `connections_rejected_total{reason}` and `accept_errors_total` in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        Self::register_for(registry, "gRPC")
    }

    /// The same metrics for the listener named `what` (e.g. "admin", under a registry
    /// prefixed `admin`).
    pub fn register_for(registry: &mut Registry, what: &str) -> Self {
        let m = Self::default();
        registry.register(
            "connections_open",
            format!("{what} connections open (accepted, not yet closed)"),
            m.open.clone(),
        );
        registry.register(
            "connections_accepted",
            format!("{what} connections accepted"),
            m.accepted.clone(),
        );
        registry.register(
            "connections_rejected",
            format!("{what} connections closed by the server: reason=handshake_timeout (no full HTTP/2 preface in time), header_timeout (no full HTTP/1 request head in time), idle_timeout (nothing read or written for too long), max_connections (over the cap)"),
            m.rejected.clone(),
        );
        registry.register(
            "accept_errors",
            format!(
                "Failed accept calls on the {what} listener (EMFILE, ENFILE, ECONNABORTED, ...)"
            ),
            m.accept_errors.clone(),
        );
        m
    }

    /// Counts a connection closed for `reason` (a `connections_rejected_total` label).
    pub fn count_rejected(&self, reason: &'static str) {
        self.reject(reason).inc();
    }

    /// Connections closed for `reason` so far.
    pub fn rejected(&self, reason: &'static str) -> u64 {
        self.reject(reason).get()
    }

    /// Connections open now.
    pub fn open(&self) -> i64 {
        self.open.get()
    }

    /// Connections closed for not sending the HTTP/2 preface in time, so far.
    pub fn handshake_timeouts(&self) -> u64 {
        self.reject("handshake_timeout").get()
    }

    /// Connections closed for being over `max_connections`, so far.
    pub fn over_limit(&self) -> u64 {
        self.reject("max_connections").get()
    }

    fn reject(&self, reason: &'static str) -> Counter {
        self.rejected
            .get_or_create(&RejectLabels { reason })
            .clone()
    }
}

/// The stream of connections a tonic server serves (`serve_with_incoming_shutdown`).
///
/// It never yields an error: accept errors are handled here (backoff, count, log), so the
/// error type is [`std::convert::Infallible`]. Dropping it closes the listening socket.
pub struct Incoming {
    listener: TcpListener,
    config: IncomingConfig,
    permits: Arc<Semaphore>,
    metrics: ConnectionMetrics,
    /// Set while backing off after a failed accept.
    pause: Option<Pin<Box<Sleep>>>,
    next_pause: Duration,
    /// Accept errors were held back from the log: report them once a line is due.
    recovering: bool,
    errors: RateLimitedLog,
    over_limit: RateLimitedLog,
}

impl Incoming {
    pub fn new(listener: TcpListener, config: IncomingConfig, metrics: ConnectionMetrics) -> Self {
        Self {
            listener,
            permits: Arc::new(Semaphore::new(
                config.max_connections.min(Semaphore::MAX_PERMITS),
            )),
            config,
            metrics,
            pause: None,
            next_pause: ACCEPT_BACKOFF_MIN,
            recovering: false,
            errors: RateLimitedLog::default(),
            over_limit: RateLimitedLog::default(),
        }
    }

    fn accepted(&mut self, stream: TcpStream) -> Option<Connection> {
        self.metrics.accepted.inc();
        let Ok(permit) = self.permits.clone().try_acquire_owned() else {
            // Dropping the socket closes it: the peer learns now, not after a backlog wait.
            self.metrics.reject("max_connections").inc();
            let (max, flag) = (
                self.config.max_connections,
                self.config.max_connections_flag,
            );
            self.over_limit.log(|suppressed| {
                tracing::warn!(
                    max_connections = max,
                    suppressed,
                    "connection refused: at {flag}"
                )
            });
            return None;
        };
        // tonic's own incoming sets TCP_NODELAY; do the same: gRPC frames are small writes.
        if let Err(e) = stream.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        Some(Connection::new(
            stream,
            self.config.handshake_timeout,
            Tracked::new(permit, self.metrics.clone()),
        ))
    }

    fn failed(&mut self, e: io::Error) {
        self.metrics.accept_errors.inc();
        if is_per_connection(&e) {
            self.errors.log(|suppressed| {
                tracing::debug!(error = %e, suppressed, "accept failed for one connection")
            });
            return;
        }
        let pause = self.next_pause;
        self.errors.log(|suppressed| {
            tracing::error!(
                error = %e,
                suppressed,
                backoff = ?pause,
                "cannot accept connections (out of file descriptors?); backing off"
            )
        });
        self.pause = Some(Box::pin(tokio::time::sleep(pause)));
        self.next_pause = (pause * 2).min(ACCEPT_BACKOFF_MAX);
    }
}

/// Errors that concern only the connection being accepted: retrying at once is right.
fn is_per_connection(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::ConnectionRefused
            | io::ErrorKind::Interrupted
    )
}

impl Stream for Incoming {
    type Item = Result<Connection, std::convert::Infallible>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            if let Some(pause) = self.pause.as_mut() {
                ready!(pause.as_mut().poll(cx));
                self.pause = None;
            }
            match ready!(self.listener.poll_accept(cx)) {
                Ok((stream, _peer)) => {
                    if self.next_pause != ACCEPT_BACKOFF_MIN {
                        self.next_pause = ACCEPT_BACKOFF_MIN;
                        self.recovering = true;
                    }
                    // Rate-limited too: at the descriptor limit, accept flaps between
                    // success and EMFILE.
                    if self.recovering {
                        self.recovering = self.errors.suppressed() > 0
                            && !self.errors.flush(|suppressed| {
                                tracing::info!(
                                    suppressed,
                                    "accepting connections again after accept errors"
                                )
                            });
                    }
                    if let Some(conn) = self.accepted(stream) {
                        return Poll::Ready(Some(Ok(conn)));
                    }
                }
                Err(e) => self.failed(e),
            }
        }
    }
}

/// A connection's share of the server's accounting, given back on drop (whoever drops the
/// connection, however it ends).
struct Tracked {
    _permit: OwnedSemaphorePermit,
    metrics: ConnectionMetrics,
}

impl Tracked {
    fn new(permit: OwnedSemaphorePermit, metrics: ConnectionMetrics) -> Self {
        metrics.open.inc();
        Self {
            _permit: permit,
            metrics,
        }
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.metrics.open.dec();
    }
}

/// An accepted TCP connection that must deliver the HTTP/2 preface within the handshake
/// timeout (when one is set): until it has sent 24 bytes, a read that would wait past the
/// deadline fails with `TimedOut` instead, and hyper closes the connection. After that it is
/// a plain `TcpStream`.
///
/// Closing lingers: after its FIN, it reads (and drops) what the peer still sends, until the
/// peer closes too or [`LINGER`] passes. Closing a socket with unread bytes in its receive
/// buffer makes the kernel send RST instead of FIN, and a peer that receives RST may discard
/// data it had already received but not read — here, the trailers that told a client still
/// sending on a SubmitStream why the stream ended (`UNAVAILABLE: shutting down`).
pub struct Connection {
    stream: TcpStream,
    handshake: Option<Handshake>,
    tracked: Tracked,
    /// Set once the write side is shut: the linger deadline.
    linger: Option<Pin<Box<Sleep>>>,
}

/// How long a closing connection keeps reading what its peer still sends before the socket
/// is closed anyway.
pub const LINGER: Duration = Duration::from_millis(500);

struct Handshake {
    deadline: Pin<Box<Sleep>>,
    timeout: Duration,
    received: usize,
}

impl Connection {
    fn new(stream: TcpStream, timeout: Option<Duration>, tracked: Tracked) -> Self {
        Self {
            stream,
            handshake: timeout.map(|timeout| Handshake {
                deadline: Box::pin(tokio::time::sleep(timeout)),
                timeout,
                received: 0,
            }),
            tracked,
            linger: None,
        }
    }

    fn timed_out(&mut self) -> io::Error {
        let timeout = self.handshake.take().map(|h| h.timeout).unwrap_or_default();
        self.tracked.metrics.reject("handshake_timeout").inc();
        tracing::debug!(peer = ?self.stream.peer_addr().ok(), ?timeout, "no HTTP/2 preface in time; closing");
        io::Error::new(
            io::ErrorKind::TimedOut,
            format!("no HTTP/2 client preface within {timeout:?}"),
        )
    }
}

impl Connected for Connection {
    type ConnectInfo = TcpConnectInfo;

    /// The same info as a bare `TcpStream`, so `Request::remote_addr` keeps working.
    fn connect_info(&self) -> TcpConnectInfo {
        self.stream.connect_info()
    }
}

impl AsyncRead for Connection {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let polled = Pin::new(&mut this.stream).poll_read(cx, buf);
        let Some(handshake) = this.handshake.as_mut() else {
            return polled;
        };
        match polled {
            Poll::Ready(Ok(())) => {
                handshake.received += buf.filled().len() - before;
                if handshake.received >= H2_PREFACE.len() {
                    this.handshake = None;
                } else if handshake.deadline.is_elapsed() && buf.filled().len() > before {
                    // Dripping the preface byte by byte does not buy more time.
                    return Poll::Ready(Err(this.timed_out()));
                }
                Poll::Ready(Ok(()))
            }
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            Poll::Pending => match handshake.deadline.as_mut().poll(cx) {
                Poll::Ready(()) => Poll::Ready(Err(this.timed_out())),
                Poll::Pending => Poll::Pending,
            },
        }
    }
}

impl AsyncWrite for Connection {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.linger.is_none() {
            if let Err(e) = std::task::ready!(Pin::new(&mut this.stream).poll_shutdown(cx)) {
                return Poll::Ready(Err(e));
            }
            this.linger = Some(Box::pin(tokio::time::sleep(LINGER)));
        }
        // Drain until the peer closes, the read fails, or the linger time is up.
        let mut scratch = [0u8; 4096];
        loop {
            let mut buf = ReadBuf::new(&mut scratch);
            match Pin::new(&mut this.stream).poll_read(cx, &mut buf) {
                Poll::Ready(Ok(())) if buf.filled().is_empty() => return Poll::Ready(Ok(())),
                Poll::Ready(Ok(())) if this.linger.as_ref().is_some_and(|l| l.is_elapsed()) => {
                    return Poll::Ready(Ok(()));
                }
                Poll::Ready(Ok(())) => continue,
                Poll::Ready(Err(_)) => return Poll::Ready(Ok(())),
                Poll::Pending => {
                    let linger = this.linger.as_mut().expect("set above");
                    return linger.as_mut().poll(cx).map(Ok);
                }
            }
        }
    }
}
