//! The run's timeline: every tick, the interval closes into a point (with the gateway's
//! pressure from `--metrics`), shown in the live view.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::admin::metrics::GatewayPressure;
use crate::drive::schedule::Arrivals;
use crate::report::TimelinePoint;
use crate::report::live::{LiveView, Narrator};

use super::pending::Shared;

/// Every `every`: closes the current interval into a timeline point, printing it when asked.
pub(super) async fn timeline(
    shared: Arc<Shared>,
    start: Instant,
    every: Duration,
    offered: Option<Arc<Arrivals>>,
    print: bool,
    metrics: Option<String>,
    narrator: Option<Narrator>,
) {
    let mut live = LiveView::new(narrator);
    let mut tick = tokio::time::interval_at((start + every).into(), every);
    let mut last = start;
    if print && !live.tty {
        eprintln!("{}", TimelinePoint::HEADER);
    }
    loop {
        tick.tick().await;
        let now = Instant::now();
        let span = now.duration_since(last).as_secs_f64().max(1e-9);
        last = now;
        let i = {
            let mut current = shared.interval.lock().expect("interval lock");
            let mut closed = std::mem::take(&mut *current);
            // A block still going on: this second's share closes here, the rest carries on.
            if let Some(from) = closed.blocked_since.take() {
                closed.blocked += now.duration_since(from);
                current.blocked_since = Some(now);
            }
            closed
        };
        let gateway = match &metrics {
            Some(url) => crate::admin::metrics::samples(url)
                .await
                .map(|m| GatewayPressure::from_samples(&m)),
            None => None,
        };
        let point = TimelinePoint {
            t: now.duration_since(start).as_secs_f64(),
            offered: offered.as_ref().map_or(i.sent as f64 / span, |a| {
                (a.expected(now.duration_since(start).as_secs_f64())
                    - a.expected(now.duration_since(start).as_secs_f64() - span))
                    / span
            }),
            sent: i.sent as f64 / span,
            done: i.done as f64 / span,
            ok: i.ok as f64 / span,
            rejected: i.rejected as f64 / span,
            throttled: i.throttled as f64 / span,
            errors: i.errors as f64 / span,
            blocked_pct: 100.0 * i.blocked.as_secs_f64() / span,
            p50_ms: if i.latency.is_empty() {
                0.0
            } else {
                i.latency.value_at_quantile(0.5) as f64 / 1000.0
            },
            p99_ms: if i.latency.is_empty() {
                0.0
            } else {
                i.latency.value_at_quantile(0.99) as f64 / 1000.0
            },
            ok_p99_ms: if i.ok_latency.is_empty() {
                0.0
            } else {
                i.ok_latency.value_at_quantile(0.99) as f64 / 1000.0
            },
            queues: gateway.as_ref().map(|g| g.queues),
            held: gateway.as_ref().map(|g| g.held),
            held_bounds: gateway.as_ref().map(|g| g.bounds),
            // Only when nothing finished (a stall): then the pending map is what the
            // backpressure bounds, and the scan is cheap.
            oldest_outstanding_ms: (i.done == 0)
                .then(|| {
                    shared
                        .pending_map()
                        .values()
                        .map(|p| p.intended)
                        .min()
                        .map(|oldest| 1000.0 * now.duration_since(oldest).as_secs_f64())
                })
                .flatten(),
            degradation_level: gateway.as_ref().and_then(|g| g.degradation_level),
            bottleneck: gateway.and_then(|g| g.bottleneck),
        };
        if print {
            live.show(&point);
        }
        shared.timeline_points().push(point);
    }
}
