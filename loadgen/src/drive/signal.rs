//! What a run tells its caller as it goes: the arrival times of the latest outcomes, for
//! callers that wait on "the first OK since T" (the demo, chaos, scenarios).

use std::time::Instant;

use sluice_proto::pb::{NotificationStatus, Outcome};
use tokio::sync::watch;

/// The arrival times of the latest outcomes, published as they come: a caller waits for
/// "the first OK since T" on these without polling.
#[derive(Debug)]
pub struct OutcomeSignal {
    /// The latest OK outcome.
    pub ok: watch::Sender<Option<Instant>>,
    /// The latest OK outcome whose notification was QUEUED (notification was reachable).
    pub notified: watch::Sender<Option<Instant>>,
    /// When the latest blocked send started waiting (the gateway's backpressure reaching
    /// this client).
    pub blocked: watch::Sender<Option<Instant>>,
}

impl Default for OutcomeSignal {
    fn default() -> Self {
        Self {
            ok: watch::Sender::new(None),
            notified: watch::Sender::new(None),
            blocked: watch::Sender::new(None),
        }
    }
}

impl OutcomeSignal {
    pub(crate) fn observe(&self, outcome: &Outcome) {
        if outcome.error.is_some() {
            return;
        }
        let now = Some(Instant::now());
        self.ok.send_replace(now);
        if outcome.notification == NotificationStatus::Queued as i32 {
            self.notified.send_replace(now);
        }
    }
}
