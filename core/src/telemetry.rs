//! Logs and traces.
//!
//! **Logs**: `tracing`, human-readable on stderr, filtered by `RUST_LOG` (default `info`);
//! stdout stays free for the ready line and reports.
//!
//! **Traces**: OpenTelemetry spans exported over OTLP/gRPC when `OTEL_EXPORTER_OTLP_ENDPOINT`
//! (or `--otlp-endpoint`) is set. Honours `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`,
//! `OTEL_TRACES_SAMPLER` and `OTEL_TRACES_SAMPLER_ARG` (default: parent-based, ratio 1).
//!
//! A tracing backend that is down or slow must never slow or break the mesh, so spans go
//! through [`BoundedExport`]: a bounded queue (`--otlp-queue`) drained by one thread. A full
//! queue drops the span (counted in `otlp_spans_dropped_total`, reason `queue_full`); a
//! failed export drops its batch (reason `export_failed`); the first failure is logged once,
//! clearly, and again only after exports recover and fail anew. The SDK's own
//! `BatchSpanProcessor` is bounded too but keeps its drop count private, hence this
//! processor.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TrySendError, sync_channel};
use std::time::{Duration, Instant};

use clap::Args;
use opentelemetry::Context;
use opentelemetry_otlp::WithExportConfig;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::error::{OTelSdkError, OTelSdkResult};
use opentelemetry_sdk::trace::{
    Sampler, SdkTracerProvider, Span, SpanData, SpanExporter, SpanProcessor,
};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use tracing_subscriber::EnvFilter;

use crate::log_format::{LogFormat, WithTraceIds};

/// Default capacity of the span export queue.
pub const DEFAULT_OTLP_QUEUE: usize = 4096;
/// Most spans per export call.
pub const MAX_EXPORT_BATCH: usize = 512;
/// Default longest time a span waits in the queue before its batch is exported.
pub const DEFAULT_OTLP_FLUSH: Duration = Duration::from_millis(500);
/// Capacity of a flush's acknowledgement channel: the export thread answers exactly once.
const FLUSH_ACK: usize = 1;
/// Longest one export may take before it counts as failed.
pub const EXPORT_TIMEOUT: Duration = Duration::from_secs(5);

/// Trace export flags every binary shares.
#[derive(Debug, Clone, Args, Default)]
pub struct TelemetryArgs {
    /// OTLP/gRPC endpoint to export spans to, e.g. http://127.0.0.1:4317. Unset: no export.
    #[arg(long, env = "OTEL_EXPORTER_OTLP_ENDPOINT")]
    pub otlp_endpoint: Option<String>,
    /// Spans waiting for export; when full, new spans are dropped (and counted).
    #[arg(long, env = "SLUICE_OTLP_QUEUE", default_value_t = DEFAULT_OTLP_QUEUE)]
    pub otlp_queue: usize,
    /// Longest a finished span waits before it is exported, e.g. 500ms.
    #[arg(long, env = "SLUICE_OTLP_FLUSH", default_value = "500ms", value_parser = crate::parse_duration)]
    pub otlp_flush: Duration,
    /// How log lines are written on stderr: `text` (one readable line each) or `json` (one
    /// object per line, for containers). Lines written inside a traced span carry its
    /// `trace_id` and `span_id` either way.
    #[arg(long, env = "SLUICE_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct DropLabels {
    reason: &'static str,
}

/// Spans dropped instead of exported, process-wide (registered by [`crate::metrics::Metrics`]).
pub(crate) fn dropped_spans() -> &'static Family<DropLabels, Counter> {
    static DROPPED: OnceLock<Family<DropLabels, Counter>> = OnceLock::new();
    DROPPED.get_or_init(Family::default)
}

fn count_dropped(reason: &'static str, n: usize) {
    dropped_spans()
        .get_or_create(&DropLabels { reason })
        .inc_by(n as u64);
}

/// The installed tracer provider; flush it before exit with [`Telemetry::shutdown`].
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes queued spans and stops exporting. Blocking: call from `spawn_blocking` or
    /// after the runtime's work is done, while the runtime still exists.
    pub fn shutdown(self) {
        if let Some(p) = self.provider
            && let Err(e) = p.shutdown()
        {
            tracing::debug!(error = %e, "span export shutdown");
        }
    }
}

/// The sampler from `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (default:
/// `parentbased_traceidratio` with ratio 1, i.e. sample roots, follow parents).
pub fn sampler_from_env(name: Option<&str>, arg: Option<&str>) -> Result<Sampler, String> {
    let ratio = match arg {
        None => 1.0,
        Some(a) => a
            .parse::<f64>()
            .ok()
            .filter(|r| (0.0..=1.0).contains(r))
            .ok_or_else(|| {
                format!("OTEL_TRACES_SAMPLER_ARG={a:?}: expected a ratio between 0 and 1")
            })?,
    };
    Ok(match name.unwrap_or("parentbased_traceidratio") {
        "always_on" => Sampler::AlwaysOn,
        "always_off" => Sampler::AlwaysOff,
        "traceidratio" => Sampler::TraceIdRatioBased(ratio),
        "parentbased_always_on" => Sampler::ParentBased(Box::new(Sampler::AlwaysOn)),
        "parentbased_always_off" => Sampler::ParentBased(Box::new(Sampler::AlwaysOff)),
        "parentbased_traceidratio" => {
            Sampler::ParentBased(Box::new(Sampler::TraceIdRatioBased(ratio)))
        }
        other => {
            return Err(format!(
                "OTEL_TRACES_SAMPLER={other:?}: expected always_on, always_off, traceidratio, parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
            ));
        }
    })
}

/// Installs logging and tracing for the process (call inside the tokio runtime): the W3C +
/// B3 propagator; the OTLP exporter when an endpoint is configured; and one `tracing`
/// subscriber with two layers, each with its own filter:
///
/// - **spans → OpenTelemetry** (`tracing-opentelemetry`), when spans are exported: Sluice's
///   own spans (targets `sluice*`), whatever `RUST_LOG` says, so quieting logs never breaks
///   traces. With no endpoint there is no such layer and the spans are disabled where they
///   are made (nearly free); a trace context a client sent is still passed on (see the
///   gateway's fan-out), but log lines carry no trace ids.
/// - **events → stderr**, filtered by `RUST_LOG` (default `default_filter`), as text or JSON
///   with the current span's trace ids ([`crate::log_format`]).
///
/// `default_service` names the service unless `OTEL_SERVICE_NAME` does.
pub fn init(
    default_service: &str,
    args: &TelemetryArgs,
    default_filter: &str,
) -> Result<Telemetry, String> {
    let telemetry = init_export(default_service, args)?;
    install_subscriber(
        args.log_format,
        default_filter,
        telemetry.provider.is_some(),
    );
    if let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) {
        tracing::info!(%endpoint, queue = args.otlp_queue, "exporting spans over OTLP/gRPC");
    }
    Ok(telemetry)
}

/// The global subscriber: spans to OpenTelemetry, events to stderr (see [`init`]).
fn install_subscriber(format: LogFormat, default_filter: &str, exporting: bool) {
    use tracing_subscriber::filter::{FilterExt as _, LevelFilter, filter_fn};
    use tracing_subscriber::prelude::*;

    // Both filters look at metadata only, so each call site is decided once and cached,
    // and both give a level hint: without one, every `trace!` in h2 and hyper would be
    // evaluated at run time. Sluice's spans are INFO.
    let sluice_spans = filter_fn(|meta| meta.is_span() && meta.target().starts_with("sluice"))
        .with_max_level_hint(LevelFilter::INFO);
    // Only when spans go somewhere: with no layer interested in them, Sluice's spans are
    // disabled at their call sites and cost next to nothing on the data path.
    let spans = exporting.then(|| {
        tracing_opentelemetry::layer()
            .with_tracer(crate::spans::tracer())
            // Lean spans: the attributes Sluice sets, not code locations, threads or timings.
            .with_location(false)
            .with_threads(false)
            .with_tracked_inactivity(false)
            // Sluice passes contexts explicitly (`span.context()`), never through
            // `Context::current()`: attaching one on every poll of an instrumented future
            // would be work for nothing.
            .with_context_activation(false)
            .with_filter(sluice_spans)
    });
    let env = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_filter));
    // Events only: formatting span fields for every span would cost on the data path; a
    // line's trace ids come from the OpenTelemetry layer instead.
    let events_only =
        env.and(filter_fn(|meta| meta.is_event()).with_max_level_hint(LevelFilter::TRACE));
    let logs = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format(),
                format,
            })
            .with_filter(events_only)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .with_writer(std::io::stderr)
            .map_event_format(|json| WithTraceIds {
                inner: json,
                format,
            })
            .with_filter(events_only)
            .boxed(),
    };
    // Not `.with(Option<layer>)`: an absent layer (`None`) claims interest in every call
    // site, which would make the registry create every span after all.
    let subscriber = tracing_subscriber::registry().with(logs);
    let dispatch: tracing::Dispatch = match spans {
        Some(spans) => subscriber.with(spans).into(),
        None => subscriber.into(),
    };
    if tracing::dispatcher::set_global_default(dispatch.clone()).is_ok() {
        crate::log_format::remember(&dispatch);
    }
}

/// The propagator, and the OTLP exporter and tracer provider when an endpoint is set.
fn init_export(default_service: &str, args: &TelemetryArgs) -> Result<Telemetry, String> {
    crate::propagation::install();
    let Some(endpoint) = args.otlp_endpoint.as_deref().filter(|e| !e.is_empty()) else {
        return Ok(Telemetry { provider: None });
    };
    // A schemeless endpoint would be taken as https.
    let endpoint = if endpoint.contains("://") {
        endpoint.to_string()
    } else {
        format!("http://{endpoint}")
    };
    let sampler = sampler_from_env(
        std::env::var("OTEL_TRACES_SAMPLER").ok().as_deref(),
        std::env::var("OTEL_TRACES_SAMPLER_ARG").ok().as_deref(),
    )?;
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_tonic()
        .with_endpoint(endpoint.clone())
        .with_timeout(EXPORT_TIMEOUT)
        .build()
        .map_err(|e| format!("OTLP exporter for {endpoint}: {e}"))?;
    let mut resource = Resource::builder();
    if std::env::var("OTEL_SERVICE_NAME").map_or(true, |s| s.is_empty()) {
        resource = resource.with_service_name(default_service.to_string());
    }
    let provider = SdkTracerProvider::builder()
        .with_span_processor(BoundedExport::new(
            exporter,
            args.otlp_queue,
            args.otlp_flush,
            endpoint.clone(),
        ))
        .with_sampler(sampler)
        .with_resource(resource.build())
        .build();
    opentelemetry::global::set_tracer_provider(provider.clone());
    Ok(Telemetry {
        provider: Some(provider),
    })
}

enum Msg {
    Span(Box<SpanData>),
    Flush(SyncSender<()>),
}

/// A span processor with a bounded, counted queue and one export thread.
#[derive(Debug)]
pub struct BoundedExport {
    queue: SyncSender<Msg>,
    resource: std::sync::Arc<std::sync::Mutex<Option<Resource>>>,
    shut: AtomicBool,
}

impl BoundedExport {
    /// Spans queue up to `capacity`; a batch is exported when it reaches
    /// [`MAX_EXPORT_BATCH`] or its oldest span has waited `flush`.
    pub fn new<E: SpanExporter + 'static>(
        exporter: E,
        capacity: usize,
        flush: Duration,
        endpoint: String,
    ) -> Self {
        let (queue, rx) = sync_channel(capacity.max(1));
        let resource = std::sync::Arc::new(std::sync::Mutex::new(None));
        let runtime = tokio::runtime::Handle::try_current().ok();
        let res = resource.clone();
        std::thread::Builder::new()
            .name("otlp-export".into())
            .spawn(move || export_loop(exporter, rx, flush, endpoint, runtime, res))
            .expect("spawn the export thread");
        Self {
            queue,
            resource,
            shut: AtomicBool::new(false),
        }
    }
}

fn export_loop<E: SpanExporter>(
    mut exporter: E,
    rx: Receiver<Msg>,
    flush: Duration,
    endpoint: String,
    runtime: Option<tokio::runtime::Handle>,
    resource: std::sync::Arc<std::sync::Mutex<Option<Resource>>>,
) {
    let mut batch: Vec<SpanData> = Vec::with_capacity(MAX_EXPORT_BATCH);
    let mut failing = false;
    let mut resource_set = false;
    let mut export = |batch: &mut Vec<SpanData>, exporter: &mut E| {
        if !resource_set && let Some(r) = resource.lock().expect("resource lock").as_ref() {
            exporter.set_resource(r);
            resource_set = true;
        }
        if batch.is_empty() {
            return;
        }
        let n = batch.len();
        let spans = std::mem::take(batch);
        let call = async { tokio::time::timeout(EXPORT_TIMEOUT, exporter.export(spans)).await };
        let result = match &runtime {
            Some(rt) => rt.block_on(call),
            None => return count_dropped("export_failed", n),
        };
        match result {
            Ok(Ok(())) => {
                if failing {
                    tracing::info!(%endpoint, "span export recovered");
                    failing = false;
                }
            }
            Ok(Err(e)) => {
                count_dropped("export_failed", n);
                if !failing {
                    tracing::warn!(%endpoint, error = %e, "span export failing; spans are dropped (see otlp_spans_dropped_total) until it recovers");
                    failing = true;
                }
            }
            Err(_) => {
                count_dropped("export_failed", n);
                if !failing {
                    tracing::warn!(%endpoint, "span export timed out; spans are dropped (see otlp_spans_dropped_total) until it recovers");
                    failing = true;
                }
            }
        }
    };
    let mut oldest: Option<Instant> = None;
    loop {
        let wait = oldest.map_or(flush, |t| flush.saturating_sub(t.elapsed()));
        match rx.recv_timeout(wait) {
            Ok(Msg::Span(span)) => {
                oldest.get_or_insert_with(Instant::now);
                batch.push(*span);
                if batch.len() >= MAX_EXPORT_BATCH {
                    export(&mut batch, &mut exporter);
                    oldest = None;
                }
            }
            Ok(Msg::Flush(done)) => {
                while let Ok(Msg::Span(span)) = rx.try_recv() {
                    batch.push(*span);
                }
                export(&mut batch, &mut exporter);
                oldest = None;
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => {
                export(&mut batch, &mut exporter);
                oldest = None;
            }
            Err(RecvTimeoutError::Disconnected) => {
                export(&mut batch, &mut exporter);
                let _ = exporter.shutdown();
                return;
            }
        }
    }
}

impl SpanProcessor for BoundedExport {
    fn on_start(&self, _span: &mut Span, _cx: &Context) {}

    fn on_end(&self, span: SpanData) {
        if !span.span_context.is_sampled() {
            return;
        }
        match self.queue.try_send(Msg::Span(Box::new(span))) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => count_dropped("queue_full", 1),
            Err(TrySendError::Disconnected(_)) => count_dropped("shut_down", 1),
        }
    }

    fn force_flush(&self) -> OTelSdkResult {
        let (done, wait) = sync_channel(FLUSH_ACK);
        self.queue
            .send(Msg::Flush(done))
            .map_err(|_| OTelSdkError::AlreadyShutdown)?;
        wait.recv_timeout(EXPORT_TIMEOUT + Duration::from_secs(1))
            .map_err(|_| OTelSdkError::Timeout(EXPORT_TIMEOUT))
    }

    fn shutdown_with_timeout(&self, _timeout: Duration) -> OTelSdkResult {
        if self.shut.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        // Exports everything queued; the thread ends once the provider drops this processor.
        self.force_flush()
    }

    fn set_resource(&mut self, resource: &Resource) {
        *self.resource.lock().expect("resource lock") = Some(resource.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Room for "an export started" signals: more exports than any test here makes (a
    /// signal that does not fit is dropped, and the test waiting for it fails).
    const EXPORT_STARTS: usize = 64;

    /// An exporter that says when an export starts, holds it until the test opens the
    /// gate, then succeeds or fails as told, counting the spans it was given.
    #[derive(Debug)]
    struct Gated {
        started: tokio::sync::mpsc::Sender<()>,
        gate: std::sync::Arc<tokio::sync::Semaphore>,
        fail: bool,
        exported: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    impl SpanExporter for Gated {
        async fn export(&self, batch: Vec<SpanData>) -> OTelSdkResult {
            let _ = self.started.try_send(());
            self.gate.acquire().await.expect("gate").forget();
            self.exported.fetch_add(batch.len(), Ordering::SeqCst);
            if self.fail {
                Err(OTelSdkError::InternalFailure("told to fail".into()))
            } else {
                Ok(())
            }
        }
    }

    struct Rig {
        provider: SdkTracerProvider,
        started: tokio::sync::mpsc::Receiver<()>,
        gate: std::sync::Arc<tokio::sync::Semaphore>,
        exported: std::sync::Arc<std::sync::atomic::AtomicUsize>,
    }

    fn rig(capacity: usize, fail: bool) -> Rig {
        let (started_tx, started) = tokio::sync::mpsc::channel(EXPORT_STARTS);
        let gate = std::sync::Arc::new(tokio::sync::Semaphore::new(0));
        let exported = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let exporter = Gated {
            started: started_tx,
            gate: gate.clone(),
            fail,
            exported: exported.clone(),
        };
        let processor =
            BoundedExport::new(exporter, capacity, Duration::from_millis(1), "test".into());
        Rig {
            provider: SdkTracerProvider::builder()
                .with_span_processor(processor)
                .build(),
            started,
            gate,
            exported,
        }
    }

    fn dropped(reason: &'static str) -> u64 {
        dropped_spans().get_or_create(&DropLabels { reason }).get()
    }

    /// Ends `n` sampled spans.
    fn end_spans(provider: &SdkTracerProvider, n: usize) {
        use opentelemetry::trace::{Span as _, Tracer as _, TracerProvider as _};
        let tracer = provider.tracer("test");
        for _ in 0..n {
            tracer.start("s").end();
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_full_export_queue_drops_and_counts_and_never_blocks() {
        let mut rig = rig(4, false);
        let before = dropped("queue_full");
        // One span goes out and its export hangs at the gate...
        end_spans(&rig.provider, 1);
        rig.started.recv().await.expect("export started");
        // ...so of the next 20 the queue holds 4 and drops 16, without blocking anyone.
        end_spans(&rig.provider, 20);
        assert_eq!(dropped("queue_full") - before, 16);
        rig.gate.add_permits(1000);
        rig.provider.force_flush().expect("flush");
        assert_eq!(rig.exported.load(Ordering::SeqCst), 1 + 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_failing_export_drops_its_batch_and_counts_it() {
        let rig = rig(64, true);
        rig.gate.add_permits(1000);
        let before = dropped("export_failed");
        end_spans(&rig.provider, 3);
        rig.provider.force_flush().expect("flush");
        assert_eq!(rig.exported.load(Ordering::SeqCst), 3);
        assert_eq!(dropped("export_failed") - before, 3);
    }

    #[test]
    fn sampler_from_env_vars() {
        assert!(matches!(
            sampler_from_env(None, None),
            Ok(Sampler::ParentBased(_))
        ));
        assert!(matches!(
            sampler_from_env(Some("always_off"), None),
            Ok(Sampler::AlwaysOff)
        ));
        assert!(
            matches!(sampler_from_env(Some("traceidratio"), Some("0.25")), Ok(Sampler::TraceIdRatioBased(r)) if r == 0.25)
        );
        assert!(
            sampler_from_env(Some("traceidratio"), Some("2"))
                .unwrap_err()
                .contains("OTEL_TRACES_SAMPLER_ARG")
        );
        assert!(
            sampler_from_env(Some("sometimes"), None)
                .unwrap_err()
                .contains("OTEL_TRACES_SAMPLER")
        );
    }
}
