//! One shutdown mechanism for every binary.
//!
//! A binary waits for [`signal`] (SIGINT or SIGTERM), cancels a [`CancellationToken`] that
//! every listener and stream loop `select!`s on, and gives in-flight work a bounded grace
//! period ([`drain`]) before it gives up and exits anyway. Bounded, because a peer that never
//! closes its stream must not be able to keep a process alive forever.

use std::future::Future;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Default time in-flight work gets to finish after a shutdown signal.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(10);

/// Resolves on the first SIGINT or SIGTERM.
pub async fn signal() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        let mut term = match signal(SignalKind::terminate()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM; only Ctrl-C will stop");
                let _ = tokio::signal::ctrl_c().await;
                return;
            }
        };
        tokio::select! {
            _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received, shutting down"),
            _ = term.recv() => tracing::info!("SIGTERM received, shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Returns a token cancelled when `trigger` resolves.
pub fn token_from(trigger: impl Future<Output = ()> + Send + 'static) -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = trigger => cancel.cancel(),
            _ = cancel.cancelled() => {}
        }
    });
    token
}

/// Waits for `work` to finish, but no longer than `grace`. Returns `true` when it finished.
pub async fn drain(what: &str, grace: Duration, work: impl Future<Output = ()>) -> bool {
    match tokio::time::timeout(grace, work).await {
        Ok(()) => true,
        Err(_) => {
            tracing::warn!(%what, ?grace, "grace period over; abandoning in-flight work");
            false
        }
    }
}
