//! The spans of one served stream and its message, collected in-process with the
//! `tracing-opentelemetry` layer the binaries install: names, kinds, parents, the one link
//! and the attributes the end-to-end trace test checks across processes.
//!
//! A test binary of its own: it installs a tracer provider and a subscriber, which are
//! process-wide, and `tracing` caches per call site whether anyone listens — a test on
//! another thread hitting the same call sites without a subscriber can race that cache.

use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt as _;
use opentelemetry::trace::{SpanKind, Status as SpanStatus};
use opentelemetry::{Context, Value};
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanProcessor};
use prometheus_client::registry::Registry;
use prost::Message as _;
use sluice_core::CancellationToken;
use sluice_proto::pb::{RiskRequest, RiskVerdict, Transaction};
use sluice_runtime::WorkerPool;
use sluice_runtime::pool::PoolConfig;
use tonic::codec::Codec as _;
use tonic::codegen::Bytes;
use tonic::{Request, Streaming};
use tracing_subscriber::prelude::*;

const STREAM_TRACE: &str = "0af7651916cd43dd8448eb211c80319c";
const STREAM_PARENT: &str = "b7ad6b7169203331";
const MESSAGE_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const MESSAGE_PARENT: &str = "00f067aa0ba902b7";

/// Keeps every span that ends.
#[derive(Debug, Clone, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanProcessor for Collected {
    fn on_start(&self, _: &mut opentelemetry_sdk::trace::Span, _: &Context) {}
    fn on_end(&self, span: SpanData) {
        self.0.lock().unwrap().push(span);
    }
    fn force_flush(&self) -> OTelSdkResult {
        Ok(())
    }
    fn shutdown_with_timeout(&self, _: Duration) -> OTelSdkResult {
        Ok(())
    }
}

impl Collected {
    fn one(&self, name: &str) -> SpanData {
        let spans = self.0.lock().unwrap();
        let found: Vec<_> = spans
            .iter()
            .filter(|s| {
                s.name == name
                    && [STREAM_TRACE, MESSAGE_TRACE]
                        .contains(&s.span_context.trace_id().to_string().as_str())
            })
            .collect();
        assert_eq!(
            found.len(),
            1,
            "{name}: {:#?}",
            spans
                .iter()
                .map(|s| (&s.name, s.span_context.trace_id(), s.parent_span_id))
                .collect::<Vec<_>>()
        );
        found[0].clone()
    }
}

fn attribute(span: &SpanData, key: &str) -> Option<Value> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.clone())
}

/// One message, carrying its own trace context in W3C and B3, sent `queued` ago.
fn message(queued: Duration) -> Vec<u8> {
    let sent = SystemTime::now() - queued;
    let transaction = Transaction {
        trace_context: [
            (
                "traceparent".to_string(),
                format!("00-{MESSAGE_TRACE}-{MESSAGE_PARENT}-01"),
            ),
            (
                "b3".to_string(),
                format!("{MESSAGE_TRACE}-{MESSAGE_PARENT}-1"),
            ),
        ]
        .into(),
        ..Default::default()
    };
    let payload = RiskRequest {
        correlation_id: 1,
        transaction: Some(transaction),
        sent_unix_micros: sent.duration_since(UNIX_EPOCH).unwrap().as_micros() as i64,
        ..Default::default()
    }
    .encode_to_vec();
    let mut frame = vec![0];
    frame.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    frame.extend_from_slice(&payload);
    frame
}

#[tokio::test(start_paused = true)]
async fn a_message_is_a_consumer_span_in_its_own_trace_linked_to_its_stream() {
    let collected = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_span_processor(collected.clone())
        .build();
    opentelemetry::global::set_tracer_provider(provider);
    sluice_core::propagation::install();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(sluice_core::spans::tracer()));
    let _default = tracing::subscriber::set_default(subscriber);

    let queued = Duration::from_millis(3);
    let decoder = tonic_prost::ProstCodec::<RiskVerdict, RiskRequest>::default().decoder();
    let body = http_body_util::Full::new(Bytes::from(message(queued)));
    let mut request = Request::new(Streaming::new_request(decoder, body, None, None));
    request.metadata_mut().insert(
        "traceparent",
        format!("00-{STREAM_TRACE}-{STREAM_PARENT}-01")
            .parse()
            .unwrap(),
    );
    let pool = WorkerPool::new(
        PoolConfig::default(),
        &mut Registry::default(),
        CancellationToken::new(),
    );
    let replies: Vec<_> = pool
        .serve(request, |r: RiskRequest| async move {
            RiskVerdict {
                correlation_id: r.correlation_id,
                ..Default::default()
            }
        })
        .collect()
        .await;
    assert_eq!(replies.len(), 1);
    // The stream's task ends (and drops its span) once nothing else can run.
    tokio::time::sleep(Duration::from_secs(3600)).await;

    let stream = collected.one("mesh.v1.Risk/Assess stream");
    assert_eq!(stream.span_kind, SpanKind::Server);
    assert_eq!(stream.span_context.trace_id().to_string(), STREAM_TRACE);
    assert_eq!(
        stream.parent_span_id.to_string(),
        STREAM_PARENT,
        "under the context in the stream's metadata"
    );
    assert_eq!(attribute(&stream, "sluice.stream"), Some(Value::Bool(true)));
    assert_eq!(
        attribute(&stream, "rpc.service"),
        Some(Value::from("mesh.v1.Risk"))
    );

    let process = collected.one("mesh.v1.Risk/Assess process");
    assert_eq!(process.span_kind, SpanKind::Consumer);
    assert_eq!(process.span_context.trace_id().to_string(), MESSAGE_TRACE);
    assert_eq!(
        process.parent_span_id.to_string(),
        MESSAGE_PARENT,
        "under the message's own context"
    );
    let links: Vec<_> = process.links.iter().collect();
    assert_eq!(links.len(), 1, "one link: to the stream, not under it");
    assert_eq!(
        links[0].span_context.span_id(),
        stream.span_context.span_id()
    );
    assert_eq!(
        attribute(&process, "sluice.propagation.received"),
        Some(Value::from("b3,traceparent"))
    );
    assert_eq!(
        attribute(&process, "rpc.grpc.status_code"),
        Some(Value::I64(0))
    );
    assert_eq!(process.status, SpanStatus::Unset);

    let wait = collected.one("queue wait");
    assert_eq!(wait.parent_span_id, process.span_context.span_id());
    assert!(
        wait.end_time.duration_since(wait.start_time).unwrap() >= queued,
        "the wait starts at the sender's hand-off"
    );
    let work = collected.one("work");
    assert_eq!(work.parent_span_id, process.span_context.span_id());
}
