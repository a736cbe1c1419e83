//! HTTP/2 settings, explicit on every server and client.
//!
//! hyper's defaults are not what tonic's docs say (server 1 MiB/1 MiB, client 2 MiB/5 MiB)
//! and tonic leaves `max_concurrent_streams` unlimited. Sluice sets every one of them, so the
//! bytes that can sit between two hops are a documented, computable number. The receiver's
//! windows bound what its peer may send: a service's server windows bound gateway→service
//! bytes; the gateway's endpoint windows bound service→gateway bytes.

use std::time::Duration;

use clap::Args;
use tonic::transport::{Endpoint, Server};

/// Default per-stream receive window: bytes a peer may send on one stream before we read.
///
/// 64 KiB keeps a stalled stream of tiny messages inside h2's small-frame budget: at worst
/// (a ~30-byte message per DATA frame) 64 KiB of unread frames charges ~490 KB, under the
/// 1 MiB budget that the default connection window gives.
pub const DEFAULT_STREAM_WINDOW: u32 = 64 * 1024;
/// Default per-connection receive window: bytes a peer may send across all streams.
///
/// Also sizes h2's small-DATA-frame budget (h2 >= 0.4.16): every unread DATA frame under
/// 256 bytes charges `256 - len` against `max(connection window / 2, 25,600)` bytes, and an
/// exhausted budget is answered with GOAWAY ENHANCE_YOUR_CALM. 2 MiB gives a 1 MiB budget:
/// room for about 4,000 unread tiny frames per connection (see ARCHITECTURE.md).
pub const DEFAULT_CONNECTION_WINDOW: u32 = 2 * 1024 * 1024;
/// Default cap on concurrent streams a peer may open on one connection.
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 256;
/// Default largest message we decode; ours are well under 4 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;
/// Default interval between HTTP/2 keepalive PINGs.
pub const DEFAULT_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(20);
/// Default time to wait for a PING ack before the connection is considered dead.
pub const DEFAULT_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

/// HTTP/2 settings of one server or client.
#[derive(Debug, Clone, Args)]
pub struct H2Settings {
    /// Per-stream HTTP/2 receive window in bytes (what a peer may send on one stream that we
    /// have not yet read). Below 65535 is unreliable.
    #[arg(long = "h2-stream-window", env = "SLUICE_H2_STREAM_WINDOW", default_value_t = DEFAULT_STREAM_WINDOW)]
    pub stream_window: u32,
    /// Per-connection HTTP/2 receive window in bytes (all streams together).
    #[arg(long = "h2-connection-window", env = "SLUICE_H2_CONNECTION_WINDOW", default_value_t = DEFAULT_CONNECTION_WINDOW)]
    pub connection_window: u32,
    /// BDP-based adaptive windows. Overrides the explicit windows and only ever grows them,
    /// so it weakens backpressure; off by default.
    #[arg(
        long = "h2-adaptive-window",
        env = "SLUICE_H2_ADAPTIVE_WINDOW",
        default_value_t = false
    )]
    pub adaptive_window: bool,
    /// Most concurrent streams a peer may open on one connection (servers only).
    #[arg(long = "h2-max-concurrent-streams", env = "SLUICE_H2_MAX_CONCURRENT_STREAMS", default_value_t = DEFAULT_MAX_CONCURRENT_STREAMS)]
    pub max_concurrent_streams: u32,
    /// Largest gRPC message accepted, in bytes. The decoder reserves a message's declared
    /// length up front, so this bounds per-stream decode memory.
    #[arg(long = "max-message-size", env = "SLUICE_MAX_MESSAGE_SIZE", default_value_t = DEFAULT_MAX_MESSAGE_SIZE)]
    pub max_message_size: usize,
    /// Interval between HTTP/2 keepalive PINGs, e.g. 20s.
    #[arg(long = "h2-keepalive-interval", env = "SLUICE_H2_KEEPALIVE_INTERVAL", default_value = "20s", value_parser = crate::parse_duration)]
    pub keepalive_interval: Duration,
    /// How long to wait for a keepalive PING ack before dropping the connection.
    #[arg(long = "h2-keepalive-timeout", env = "SLUICE_H2_KEEPALIVE_TIMEOUT", default_value = "10s", value_parser = crate::parse_duration)]
    pub keepalive_timeout: Duration,
}

impl Default for H2Settings {
    fn default() -> Self {
        Self {
            stream_window: DEFAULT_STREAM_WINDOW,
            connection_window: DEFAULT_CONNECTION_WINDOW,
            adaptive_window: false,
            max_concurrent_streams: DEFAULT_MAX_CONCURRENT_STREAMS,
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            keepalive_interval: DEFAULT_KEEPALIVE_INTERVAL,
            keepalive_timeout: DEFAULT_KEEPALIVE_TIMEOUT,
        }
    }
}

impl H2Settings {
    /// A tonic server builder with these settings.
    pub fn server(&self) -> Server {
        Server::builder()
            .initial_stream_window_size(self.stream_window)
            .initial_connection_window_size(self.connection_window)
            .http2_adaptive_window(Some(self.adaptive_window))
            .max_concurrent_streams(self.max_concurrent_streams)
            .http2_keepalive_interval(Some(self.keepalive_interval))
            .http2_keepalive_timeout(Some(self.keepalive_timeout))
            .tcp_nodelay(true)
    }

    /// `endpoint` with these settings applied (client side; `max_concurrent_streams` is a
    /// server setting and does not apply).
    pub fn endpoint(&self, endpoint: Endpoint) -> Endpoint {
        self.with_windows(
            self.stream_window,
            self.connection_window,
            self.adaptive_window,
            endpoint,
        )
    }

    /// `endpoint` with these keepalive settings but the given windows.
    pub fn with_windows(
        &self,
        stream: u32,
        connection: u32,
        adaptive: bool,
        endpoint: Endpoint,
    ) -> Endpoint {
        endpoint
            .initial_stream_window_size(stream)
            .initial_connection_window_size(connection)
            .http2_adaptive_window(adaptive)
            .http2_keep_alive_interval(self.keepalive_interval)
            .keep_alive_timeout(self.keepalive_timeout)
            .keep_alive_while_idle(true)
            .tcp_nodelay(true)
            .connect_timeout(Duration::from_secs(2))
    }
}

/// The gateway's receive windows on its connections to the downstream services (they bound
/// the bytes of replies a service may send before the gateway reads them).
#[derive(Debug, Clone, Args)]
pub struct DownstreamWindows {
    /// Per-stream receive window on downstream connections, bytes.
    #[arg(id = "downstream_stream_window", long = "downstream-h2-stream-window", env = "SLUICE_DOWNSTREAM_H2_STREAM_WINDOW", default_value_t = DEFAULT_STREAM_WINDOW)]
    pub stream_window: u32,
    /// Per-connection receive window on downstream connections, bytes.
    #[arg(id = "downstream_connection_window", long = "downstream-h2-connection-window", env = "SLUICE_DOWNSTREAM_H2_CONNECTION_WINDOW", default_value_t = DEFAULT_CONNECTION_WINDOW)]
    pub connection_window: u32,
    /// Adaptive (BDP) windows on downstream connections; off by default.
    #[arg(
        id = "downstream_adaptive_window",
        long = "downstream-h2-adaptive-window",
        env = "SLUICE_DOWNSTREAM_H2_ADAPTIVE_WINDOW",
        default_value_t = false
    )]
    pub adaptive_window: bool,
}
