//! Ingress metrics, and the layer that keeps them (just under the trace layer, so its
//! latency histogram carries trace-id exemplars): every transaction is counted
//! by result (`transactions_total`) and timed (`latency_seconds`) through a guard, so one
//! whose caller goes away (client cancelled, stream broke) is counted `cancelled`. The
//! `inflight` gauge (admitted, awaiting the outcome) is held by a guard too, from admission
//! ([`IngressMetrics::admitted`]).

use std::task::{Context, Poll};
use std::time::Instant;

use super::refusal::Refusal;
use futures::future::BoxFuture;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::exemplar::HistogramWithExemplars;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;
use sluice_core::metrics::GaugeGuard;
use sluice_proto::pb::Outcome;
use tower::{Layer, Service};

use super::request::{Api, TxnRequest};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ResultLabels {
    api: &'static str,
    /// `ok` or the gRPC code, e.g. `resource_exhausted`.
    result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ApiLabels {
    api: &'static str,
}

/// A transaction's stages at the gateway, each on the gateway's monotonic clock.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct StageLabels {
    api: &'static str,
    /// `accept` (unary: accepted by hyper → its handler starts: the runtime's run queue),
    /// `admission` (read → admitted to every required queue: the concurrency limit's and
    /// the queues' wait), `mesh` (admitted → outcome ready: what the limit and the levels
    /// read), `delivery` (SubmitStream: outcome ready → taken by the transport, i.e. the
    /// wait for the client's HTTP/2 window).
    stage: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RejectLabels {
    api: &'static str,
    /// `inflight_limit`, `stream_limit`, `queue_full`, `unavailable`, `invalid_argument`,
    /// `deadline`, `already_exists`.
    reason: &'static str,
}

/// An exemplar's labels: the trace of the transaction observed.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct TraceExemplar {
    trace_id: String,
}

impl TraceExemplar {
    /// The sampled trace `span` belongs to, if any (an unsampled one leads nowhere).
    fn of(span: &tracing::Span) -> Option<Self> {
        use opentelemetry::trace::TraceContextExt as _;
        use tracing_opentelemetry::OpenTelemetrySpanExt as _;
        let cx = span.context();
        let sc = cx.span().span_context().clone();
        (sc.is_valid() && sc.is_sampled()).then(|| Self {
            trace_id: sc.trace_id().to_string(),
        })
    }
}

#[derive(Clone)]
pub(crate) struct IngressMetrics {
    transactions: Family<ResultLabels, Counter>,
    inflight: Family<ApiLabels, Gauge>,
    /// With the trace id of a recent transaction per bucket (an OpenMetrics exemplar), so
    /// a latency spike on a dashboard leads to a trace.
    latency: Family<ApiLabels, HistogramWithExemplars<TraceExemplar>>,
    pub(crate) admission_wait: Histogram,
    pub(crate) blocked_seconds: Counter<f64, std::sync::atomic::AtomicU64>,
    rejected: Family<RejectLabels, Counter>,
    pub(crate) streams: Gauge,
    stages: Family<StageLabels, Histogram>,
    /// `stages`' series looked up once, by [API][`Stage`], so observing one takes no lock
    /// and no hashing; None where an API has no such stage.
    stage_series: std::sync::Arc<[[Option<Histogram>; 4]; 2]>,
}

/// A transaction's stage at the gateway (see `StageLabels`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Stage {
    Accept,
    Admission,
    Mesh,
    Delivery,
}

impl Stage {
    const ALL: [Stage; 4] = [
        Stage::Accept,
        Stage::Admission,
        Stage::Mesh,
        Stage::Delivery,
    ];

    fn label(self) -> &'static str {
        match self {
            Stage::Accept => "accept",
            Stage::Admission => "admission",
            Stage::Mesh => "mesh",
            Stage::Delivery => "delivery",
        }
    }

    /// Unary calls have no delivery stage (the transport takes the outcome at once), stream
    /// messages no accept stage (the stream was accepted once).
    fn of(self, api: Api) -> bool {
        !matches!(
            (api, self),
            (Api::Unary, Stage::Delivery) | (Api::Stream, Stage::Accept)
        )
    }
}

fn api_index(api: Api) -> usize {
    match api {
        Api::Unary => 0,
        Api::Stream => 1,
    }
}

impl IngressMetrics {
    pub(crate) fn new(registry: &mut Registry) -> Self {
        let stages = Family::<StageLabels, Histogram>::new_with_constructor(|| {
            Histogram::new(sluice_core::metrics::latency_buckets())
        });
        let stage_series = [Api::Unary, Api::Stream].map(|api| {
            Stage::ALL.map(|stage| {
                stage.of(api).then(|| {
                    stages
                        .get_or_create(&StageLabels {
                            api: api.label(),
                            stage: stage.label(),
                        })
                        .clone()
                })
            })
        });
        let m = Self {
            transactions: Family::default(),
            inflight: Family::default(),
            latency: Family::new_with_constructor(|| {
                HistogramWithExemplars::new(sluice_core::metrics::latency_buckets())
            }),
            admission_wait: Histogram::new(sluice_core::metrics::latency_buckets()),
            blocked_seconds: Counter::default(),
            rejected: Family::default(),
            streams: Gauge::default(),
            stages,
            stage_series: std::sync::Arc::new(stage_series),
        };
        registry.register(
            "stage_seconds",
            "Where a transaction's time at the gateway goes, by API and stage: accept (unary: accepted by HTTP/2 to its handler starting), admission (read to admitted to every queue), mesh (admitted to outcome ready), delivery (SubmitStream: outcome ready to taken by the transport)",
            m.stages.clone(),
        );
        registry.register(
            "admission_blocked_seconds",
            "Seconds SubmitStream readers spent blocked waiting for downstream queue room, all streams",
            m.blocked_seconds.clone(),
        );
        registry.register(
            "rejected",
            "Transactions refused at admission, by API and reason",
            m.rejected.clone(),
        );
        registry.register(
            "transactions",
            "Transactions finished, by API and result",
            m.transactions.clone(),
        );
        registry.register(
            "inflight",
            "Transactions admitted and awaiting their outcome",
            m.inflight.clone(),
        );
        registry.register(
            "latency_seconds",
            "Time from admission to outcome",
            m.latency.clone(),
        );
        registry.register(
            "admission_wait_seconds",
            "Time SubmitStream readers waited for downstream queue room (backpressure)",
            m.admission_wait.clone(),
        );
        registry.register(
            "submit_streams",
            "Open SubmitStream calls",
            m.streams.clone(),
        );
        m
    }

    /// Counts one transaction in `inflight` (admitted, awaiting its outcome) until the
    /// guard drops.
    pub(crate) fn admitted(&self, api: Api) -> GaugeGuard {
        GaugeGuard::hold(&self.inflight.get_or_create(&ApiLabels { api: api.label() }))
    }

    /// Observes `took` in `stage` for `api` (see `StageLabels`).
    pub(crate) fn stage(&self, api: Api, stage: Stage, took: std::time::Duration) {
        if let Some(h) = &self.stage_series[api_index(api)][stage as usize] {
            h.observe(took.as_secs_f64());
        }
    }

    /// The `delivery` stage's histogram for SubmitStream, to observe without a lookup.
    pub(crate) fn delivery(&self) -> Histogram {
        self.stage_series[api_index(Api::Stream)][Stage::Delivery as usize]
            .clone()
            .expect("streams have a delivery stage")
    }

    /// Counts a call refused before it reached the stack (`early.rs`): its result and its
    /// reason, as the stack's metrics layer would have.
    pub(crate) fn refused_early(&self, api: Api, refusal: &Refusal) {
        self.reject(api, refusal.reason.label());
        self.count(api, code_label(refusal.code()));
    }

    fn count(&self, api: Api, result: String) {
        self.transactions
            .get_or_create(&ResultLabels {
                api: api.label(),
                result,
            })
            .inc();
    }

    /// Counts a refusal made outside the stack (a stream slot, an idle stream); the stack's
    /// own are counted by [`MetricsLayer`] from their [`Refusal`].
    pub(crate) fn reject(&self, api: Api, reason: &'static str) {
        self.rejected
            .get_or_create(&RejectLabels {
                api: api.label(),
                reason,
            })
            .inc();
    }

    fn finish(
        &self,
        api: Api,
        result: Result<&Outcome, &Refusal>,
        started: Instant,
        exemplar: Option<TraceExemplar>,
    ) {
        let result = match result {
            Ok(o) => match &o.error {
                None => "ok".to_string(),
                Some(e) => code_label(tonic::Code::from_i32(e.code)),
            },
            Err(refusal) => {
                if refusal.refused() {
                    self.reject(api, refusal.reason.label());
                }
                code_label(refusal.code())
            }
        };
        self.record(api, result, started, exemplar);
    }

    /// One finished transaction: its latency and its result.
    fn record(&self, api: Api, result: String, started: Instant, exemplar: Option<TraceExemplar>) {
        self.latency
            .get_or_create(&ApiLabels { api: api.label() })
            .observe(started.elapsed().as_secs_f64(), exemplar, None);
        self.count(api, result);
    }
}

fn code_label(code: tonic::Code) -> String {
    let debug = format!("{code:?}");
    let mut out = String::with_capacity(debug.len() + 4);
    for (i, c) in debug.chars().enumerate() {
        if c.is_uppercase() && i > 0 {
            out.push('_');
        }
        out.push(c.to_ascii_lowercase());
    }
    out
}

/// The outermost ingress layer: see the module docs.
#[derive(Clone)]
pub(crate) struct MetricsLayer(pub(crate) IngressMetrics);

impl<S> Layer<S> for MetricsLayer {
    type Service = Metered<S>;
    fn layer(&self, inner: S) -> Metered<S> {
        Metered {
            inner,
            metrics: self.0.clone(),
        }
    }
}

#[derive(Clone)]
pub(crate) struct Metered<S> {
    inner: S,
    metrics: IngressMetrics,
}

impl<S> Service<TxnRequest> for Metered<S>
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
        let mut tracked = Tracked::new(&self.metrics, request.api(), request.arrived);
        tracked.span = request.span.clone();
        let outcome = self.inner.call(request);
        Box::pin(async move {
            let result = outcome.await;
            tracked.finish(result.as_ref());
            result
        })
    }
}

/// One transaction's accounting from arrival to outcome: the `transactions` and
/// `latency_seconds` metrics (the in-flight gauge is held by dispatch, from admission). [`Tracked::finish`] records the result;
/// dropped unfinished it records CANCELLED. No path leaks the gauge or misses the count.
struct Tracked {
    api: Api,
    /// The ingress span (set by the trace layer above): its trace is the exemplar.
    span: tracing::Span,
    started: Instant,
    metrics: IngressMetrics,
    finished: bool,
}

impl Tracked {
    fn new(metrics: &IngressMetrics, api: Api, started: Instant) -> Self {
        Self {
            api,
            span: tracing::Span::none(),
            started,
            metrics: metrics.clone(),
            finished: false,
        }
    }

    fn finish(mut self, result: Result<&Outcome, &Refusal>) {
        self.finished = true;
        let exemplar = TraceExemplar::of(&self.span);
        self.metrics
            .finish(self.api, result, self.started, exemplar);
    }
}

impl Drop for Tracked {
    fn drop(&mut self) {
        if !self.finished {
            let exemplar = TraceExemplar::of(&self.span);
            let cancelled = code_label(tonic::Code::Cancelled);
            self.metrics
                .record(self.api, cancelled, self.started, exemplar);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_labels_are_snake_case() {
        assert_eq!(
            code_label(tonic::Code::ResourceExhausted),
            "resource_exhausted"
        );
        assert_eq!(code_label(tonic::Code::Unavailable), "unavailable");
    }
}
