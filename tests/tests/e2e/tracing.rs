//! Every transaction one trace: spans from all five binaries, collected by an OTLP receiver
//! inside the test, W3C and B3 on every hop, sampling respected, a dead backend harmless.

use std::collections::{HashMap, HashSet};

use sluice_proto::pb::Transaction;
use sluice_tests::{CollectedSpan, Mesh, MeshOptions, OtlpReceiver, bin_dir, metric, txn};
use tonic::metadata::MetadataValue;

const SERVICES: [&str; 5] = [
    "sluice-loadgen",
    "sluice-gateway",
    "sluice-risk",
    "sluice-notification",
    "sluice-logging",
];
const SERVER: i32 = 2;
const CLIENT: i32 = 3;
const PRODUCER: i32 = 4;
const CONSUMER: i32 = 5;

async fn traced_mesh(receiver: &OtlpReceiver) -> Mesh {
    Mesh::start_with(MeshOptions {
        env: receiver.env(),
        ..Default::default()
    })
    .await
}

fn by_trace(spans: &[CollectedSpan], trace: &str) -> Vec<CollectedSpan> {
    spans
        .iter()
        .filter(|s| s.trace_id == trace)
        .cloned()
        .collect()
}

fn one<'a>(spans: &'a [CollectedSpan], service: &str, name: &str) -> &'a CollectedSpan {
    let found: Vec<_> = spans
        .iter()
        .filter(|s| s.service == service && s.name == name)
        .collect();
    assert_eq!(found.len(), 1, "{service} {name}: {found:#?}");
    found[0]
}

/// Checks the whole parent chain of one transaction's trace, from `root` down.
fn assert_chain(trace: &[CollectedSpan], root: &CollectedSpan, ingress_name: &str) {
    let ingress = one(trace, "sluice-gateway", ingress_name);
    assert_eq!(
        ingress.parent_span_id, root.span_id,
        "gateway ingress under the client span"
    );
    for (service, method) in [
        ("risk", "mesh.v1.Risk/Assess"),
        ("logging", "mesh.v1.Logging/Append"),
        ("notification", "mesh.v1.Notification/Deliver"),
    ] {
        let hop = one(trace, "sluice-gateway", &format!("{method} send"));
        assert_eq!(hop.kind, PRODUCER);
        assert_eq!(
            hop.parent_span_id, ingress.span_id,
            "{service} hop under ingress"
        );
        assert!(
            hop.attributes.contains_key("sluice.queue_wait_ms"),
            "{hop:?}"
        );
        let process = one(
            trace,
            &format!("sluice-{service}"),
            &format!("{method} process"),
        );
        assert_eq!(process.kind, CONSUMER);
        assert_eq!(
            process.parent_span_id, hop.span_id,
            "{service} process under its hop"
        );
        assert_eq!(
            process.links.len(),
            1,
            "linked to its stream's span, not under it"
        );
        let received = &process.attributes["sluice.propagation.received"];
        for key in [
            "traceparent",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
        ] {
            assert!(
                received.split(',').any(|k| k == key),
                "{service} received {received}, missing {key}"
            );
        }
        for child in ["queue wait", "work"] {
            let c = one(trace, &format!("sluice-{service}"), child);
            assert_eq!(c.parent_span_id, process.span_id, "{service} {child}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_transaction_is_one_trace_across_all_five_binaries() {
    let receiver = OtlpReceiver::start().await;
    let mesh = traced_mesh(&receiver).await;
    for mode in ["unary", "stream"] {
        let dir = tempfile::tempdir().unwrap();
        let json = dir.path().join("r.json");
        let out = tokio::process::Command::new(bin_dir().join("sluice-loadgen"))
            .args([
                "run",
                "--target",
                &mesh.gateway.url(),
                "--mode",
                mode,
                "--rate",
                "20",
                "--duration",
                "1s",
                "-q",
            ])
            .args(["--json", json.to_str().unwrap()])
            .envs(receiver.env())
            .output()
            .await
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&json).unwrap()).unwrap();
        let ids: Vec<String> = report["acked"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a["id"].as_str().unwrap().to_string())
            .collect();
        assert!(ids.len() >= 15, "{report}");
        let (client_name, ingress_name) = match mode {
            "unary" => ("mesh.v1.Gateway/Submit", "mesh.v1.Gateway/Submit"),
            _ => (
                "mesh.v1.Gateway/SubmitStream",
                "mesh.v1.Gateway/SubmitStream process",
            ),
        };
        // Every transaction: a root CLIENT span in the loadgen and spans from all five.
        let spans = receiver
            .wait_until(
                "every transaction's spans from all five binaries",
                |spans| {
                    ids.iter().all(|id| {
                        let Some(root) = spans.iter().find(|s| {
                            s.service == "sluice-loadgen"
                                && s.name == client_name
                                && s.attributes.get("sluice.transaction.id") == Some(id)
                        }) else {
                            return false;
                        };
                        let services: HashSet<_> = spans
                            .iter()
                            .filter(|s| s.trace_id == root.trace_id)
                            .map(|s| s.service.as_str())
                            .collect();
                        SERVICES.iter().all(|s| services.contains(s))
                            && spans.iter().filter(|s| s.trace_id == root.trace_id).count() >= 14
                    })
                },
            )
            .await;
        // Stream spans end with their streams: wait for both connections' to arrive too.
        let spans = if mode == "stream" {
            receiver
                .wait_until("both SubmitStream spans", |s| {
                    s.iter()
                        .filter(|x| {
                            x.service == "sluice-gateway"
                                && x.name == "mesh.v1.Gateway/SubmitStream"
                        })
                        .count()
                        >= 2
                })
                .await
        } else {
            spans
        };
        let audit: HashMap<String, String> = mesh
            .audit_entries()
            .await
            .into_iter()
            .map(|e| (e.id, e.trace_id))
            .collect();
        let mut traces = HashSet::new();
        for id in &ids {
            let root = spans
                .iter()
                .find(|s| {
                    s.service == "sluice-loadgen"
                        && s.name == client_name
                        && s.attributes.get("sluice.transaction.id") == Some(id)
                })
                .unwrap();
            assert_eq!(root.kind, CLIENT);
            assert!(
                root.parent_span_id.is_empty(),
                "the client span is the root"
            );
            assert!(
                traces.insert(root.trace_id.clone()),
                "one trace per transaction"
            );
            let trace = by_trace(&spans, &root.trace_id);
            assert_chain(&trace, root, ingress_name);
            assert_eq!(
                audit.get(id),
                Some(&root.trace_id),
                "the audit record names the trace"
            );
            if mode == "stream" {
                let msg = one(&trace, "sluice-gateway", ingress_name);
                assert_eq!(msg.kind, CONSUMER);
                assert_eq!(
                    msg.links.len(),
                    1,
                    "stream message linked to the stream span"
                );
                // The stream's own context travelled in its metadata, once, at open.
                let stream = spans
                    .iter()
                    .find(|s| s.span_id == msg.links[0].1)
                    .expect("the linked stream span");
                assert_eq!(stream.name, "mesh.v1.Gateway/SubmitStream");
                let opener = spans
                    .iter()
                    .find(|s| s.span_id == stream.parent_span_id)
                    .expect("the client's stream span");
                assert_eq!(
                    (opener.service.as_str(), opener.kind),
                    ("sluice-loadgen", CLIENT)
                );
            } else {
                assert_eq!(one(&trace, "sluice-gateway", ingress_name).kind, SERVER);
            }
        }
    }
}

const W3C_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const W3C_SPAN: &str = "00f067aa0ba902b7";
const B3_TRACE: &str = "80f198ee56343ba864fe8b2a57d3eff7";
const B3_SPAN: &str = "e457b5a2e4d86bd1";

fn carrier(format: &str, trace: &str) -> HashMap<String, String> {
    let (w3c_trace, b3_trace) = match format {
        "both" => (W3C_TRACE.to_string(), B3_TRACE.to_string()),
        _ => (trace.to_string(), trace.to_string()),
    };
    let mut m = HashMap::new();
    if matches!(format, "w3c" | "both") {
        m.insert(
            "traceparent".to_string(),
            format!("00-{w3c_trace}-{W3C_SPAN}-01"),
        );
        m.insert("tracestate".to_string(), "vendor=x".to_string());
    }
    if matches!(format, "b3-single" | "both") {
        m.insert("b3".to_string(), format!("{b3_trace}-{B3_SPAN}-1"));
    }
    if format == "b3-multi" {
        m.insert("x-b3-traceid".to_string(), b3_trace.clone());
        m.insert("x-b3-spanid".to_string(), B3_SPAN.to_string());
        m.insert("x-b3-sampled".to_string(), "1".to_string());
    }
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_sending_b3_single_b3_multi_w3c_or_both_continue_their_trace() {
    let receiver = OtlpReceiver::start().await;
    let mesh = traced_mesh(&receiver).await;
    let mut gw = mesh.gateway().await;
    // (format, trace id the client uses, trace id the mesh must continue, parent span id)
    let cases = [
        (
            "w3c",
            "11111111111111111111111111111111",
            "11111111111111111111111111111111",
            W3C_SPAN,
        ),
        (
            "b3-single",
            "22222222222222222222222222222222",
            "22222222222222222222222222222222",
            B3_SPAN,
        ),
        (
            "b3-multi",
            "33333333333333333333333333333333",
            "33333333333333333333333333333333",
            B3_SPAN,
        ),
        ("both", "", W3C_TRACE, W3C_SPAN),
    ];
    for (format, trace, _, _) in cases {
        // Unary: context in metadata only.
        let mut request = tonic::Request::new(txn(&format!("fmt-unary-{format}")));
        for (k, v) in carrier(format, trace) {
            request.metadata_mut().insert(
                tonic::metadata::MetadataKey::from_bytes(k.as_bytes()).unwrap(),
                MetadataValue::try_from(v.as_str()).unwrap(),
            );
        }
        gw.submit(request).await.expect("unary");
        // Stream: context in the message's own carrier only.
        let message = Transaction {
            trace_context: carrier(format, trace),
            ..txn(&format!("fmt-stream-{format}"))
        };
        let mut outcomes = gw
            .submit_stream(tokio_stream::iter([message]))
            .await
            .unwrap()
            .into_inner();
        assert!(outcomes.message().await.unwrap().unwrap().error.is_none());
    }
    for (format, _, expect_trace, expect_parent) in cases {
        for (api, name) in [
            ("unary", "mesh.v1.Gateway/Submit"),
            ("stream", "mesh.v1.Gateway/SubmitStream process"),
        ] {
            let id = format!("fmt-{api}-{format}");
            let spans = receiver
                .wait_until(&format!("{id}: spans in the client's trace"), |spans| {
                    let t = by_trace(spans, expect_trace);
                    t.iter().any(|s| {
                        s.name == name && s.attributes.get("sluice.transaction.id") == Some(&id)
                    }) && t
                        .iter()
                        .filter(|s| s.service == "sluice-logging" && s.name.ends_with("process"))
                        .count()
                        >= 2
                        // Each binary exports on its own schedule: risk's spans may
                        // arrive after logging's, and the tracestate check reads them.
                        && t
                            .iter()
                            .any(|s| s.service == "sluice-risk" && s.name.ends_with("process"))
                })
                .await;
            let trace = by_trace(&spans, expect_trace);
            let ingress = trace
                .iter()
                .find(|s| s.name == name && s.attributes.get("sluice.transaction.id") == Some(&id))
                .unwrap();
            assert_eq!(
                ingress.parent_span_id, expect_parent,
                "{id} continues the client's span"
            );
            if format == "both" || format == "w3c" {
                assert_eq!(ingress.trace_state, "vendor=x", "{id}: tracestate kept");
                let risk = trace
                    .iter()
                    .find(|s| s.service == "sluice-risk" && s.name.ends_with("process"))
                    .unwrap();
                assert_eq!(
                    risk.trace_state, "vendor=x",
                    "{id}: tracestate carried downstream"
                );
            }
        }
    }
    assert!(
        by_trace(&receiver.spans(), B3_TRACE).is_empty(),
        "with both present, W3C wins"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsampled_context_yields_no_spans_downstream() {
    let receiver = OtlpReceiver::start().await;
    let mesh = traced_mesh(&receiver).await;
    let mut gw = mesh.gateway().await;
    let unsampled = "55555555555555555555555555555555";
    let marker = "66666666666666666666666666666666";
    let with = |id: &str, trace: &str, flags: &str| Transaction {
        trace_context: HashMap::from([(
            "traceparent".to_string(),
            format!("00-{trace}-{W3C_SPAN}-{flags}"),
        )]),
        ..txn(id)
    };
    gw.submit(with("unsampled", unsampled, "00")).await.unwrap();
    // Spans leave each process in order: once a later, sampled transaction's spans have
    // arrived from every service, the unsampled one's would have too.
    gw.submit(with("marker", marker, "01")).await.unwrap();
    receiver
        .wait_until("the marker's spans from every server binary", |spans| {
            let services: HashSet<_> = by_trace(spans, marker)
                .into_iter()
                .map(|s| s.service)
                .collect();
            SERVICES[1..].iter().all(|s| services.contains(*s))
        })
        .await;
    assert!(
        by_trace(&receiver.spans(), unsampled).is_empty(),
        "spans exported for an unsampled trace"
    );
    let audit: HashMap<String, String> = mesh
        .audit_entries()
        .await
        .into_iter()
        .map(|e| (e.id, e.trace_id))
        .collect();
    assert_eq!(
        audit["unsampled"], unsampled,
        "the context still propagated"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_trace_backend_does_not_slow_the_mesh() {
    // An address nobody listens on.
    let dead = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let env = vec![
        (
            "OTEL_EXPORTER_OTLP_ENDPOINT".to_string(),
            format!("http://{dead}"),
        ),
        ("SLUICE_OTLP_FLUSH".to_string(), "100ms".to_string()),
    ];
    let mesh = Mesh::start_with(MeshOptions {
        env: env.clone(),
        ..Default::default()
    })
    .await;
    let out = tokio::process::Command::new(bin_dir().join("sluice-loadgen"))
        .args([
            "run",
            "--target",
            &mesh.gateway.url(),
            "--mode",
            "stream",
            "--rate",
            "1000",
            "--duration",
            "3s",
            "-q",
        ])
        .args(["--json", "/dev/stdout"])
        .envs(env)
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let report: serde_json::Value = serde_json::from_str(&text[text.find('{').unwrap()..]).unwrap();
    assert!(
        report["errors"].as_object().unwrap().is_empty(),
        "{}",
        report["errors"]
    );
    // Behaviour, not a rate (a rate is a benchmark's figure and moves with the machine's
    // load): every transaction sent was answered OK, and none waited anywhere near the
    // exporter's own timeouts, as it would if export sat on the request path.
    assert_eq!(
        report["ok"], report["sent"],
        "every transaction answered OK"
    );
    assert!(report["sent"].as_u64().unwrap() > 0);
    let p99 = report["latency_ms"]["p99"].as_f64().unwrap();
    assert!(p99 < 1000.0, "p99 {p99} ms: export is on the request path");
    let dropped = metric(
        mesh.gateway.admin.unwrap(),
        "sluice_gateway_otlp_spans_dropped_total{reason=\"export_failed\"}",
    )
    .await;
    assert!(dropped.unwrap_or(0.0) > 0.0, "drops are counted");
    let log = mesh.gateway.log();
    assert_eq!(
        log.matches("span export failing").count(),
        1,
        "one clear log line:\n{log}"
    );
}

/// From a number to a trace: the gateway's latency buckets carry the trace id of a recent
/// transaction (OpenMetrics exemplars), and that trace is one Jaeger would show.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latency_buckets_carry_trace_ids_as_exemplars() {
    let receiver = OtlpReceiver::start().await;
    let mesh = traced_mesh(&receiver).await;
    let out = tokio::process::Command::new(bin_dir().join("sluice-loadgen"))
        .args([
            "run",
            "--target",
            &mesh.gateway.url(),
            "--mode",
            "unary",
            "--rate",
            "20",
            "--duration",
            "1s",
            "-q",
        ])
        .envs(receiver.env())
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let body = sluice_tests::http_get(mesh.gateway.admin.unwrap(), "/metrics")
        .await
        .unwrap();
    let exemplars: Vec<&str> = body
        .lines()
        .filter(|l| {
            l.starts_with("sluice_gateway_latency_seconds_bucket{") && l.contains("api=\"unary\"")
        })
        .filter_map(|l| l.split_once("# {trace_id=\"").map(|(_, rest)| &rest[..32]))
        .collect();
    assert!(!exemplars.is_empty(), "no exemplar:\n{body}");
    let trace = exemplars[0].to_string();
    assert!(trace.bytes().all(|b| b.is_ascii_hexdigit()), "{trace}");
    receiver
        .wait_until("the exemplar's trace", |spans| {
            spans
                .iter()
                .any(|s| s.trace_id == trace && s.service == "sluice-gateway")
        })
        .await;
}

/// With span export off, the gateway makes no spans of its own, yet a client's trace
/// context still reaches every hop: the audit record names the client's trace.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_export_off_a_clients_trace_still_reaches_the_audit_log() {
    let mesh = Mesh::start().await;
    let mut gw = mesh.gateway().await;
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(txn("export-off-1"));
    request.metadata_mut().insert(
        "traceparent",
        MetadataValue::try_from(format!("00-{trace}-00f067aa0ba902b7-01")).unwrap(),
    );
    let outcome = gw.submit(request).await.expect("submitted").into_inner();
    assert!(outcome.error.is_none(), "{:?}", outcome.error);
    let entry = mesh
        .audit_entries()
        .await
        .into_iter()
        .find(|e| e.id == "export-off-1")
        .expect("audited");
    assert_eq!(entry.trace_id, trace);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn at_debug_each_transaction_writes_one_json_line_in_its_trace() {
    let receiver = OtlpReceiver::start().await;
    let mut env = receiver.env();
    env.push(("RUST_LOG".into(), "debug".into()));
    let mesh = Mesh::start_with(MeshOptions {
        env,
        gateway: vec!["--log-format".into(), "json".into()],
        ..Default::default()
    })
    .await;
    let mut gw = mesh.gateway().await;
    let mut traces = HashMap::new();
    for i in 0..5 {
        let (id, trace) = (
            format!("debug-line-{i}"),
            format!("{:032x}", 0xa11ce_u128 + i),
        );
        let mut request = tonic::Request::new(txn(&id));
        request.metadata_mut().insert(
            "traceparent",
            MetadataValue::try_from(format!("00-{trace}-00f067aa0ba902b7-01")).unwrap(),
        );
        let outcome = gw.submit(request).await.expect("submitted").into_inner();
        assert!(outcome.error.is_none(), "{:?}", outcome.error);
        traces.insert(id, trace);
    }
    // The line is written before the response leaves; read until all five are there.
    let lines = sluice_tests::eventually(
        "a line for each of the five transactions",
        std::time::Duration::from_secs(10),
        || async {
            let lines: Vec<serde_json::Value> = mesh
                .gateway
                .log()
                .lines()
                .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .filter(|l| l["fields"]["message"] == "transaction finished")
                .collect();
            (lines.len() >= 5).then_some(lines)
        },
    )
    .await;
    let log = mesh.gateway.log();
    assert!(
        !log.lines()
            .any(|l| l.contains("\"level\":\"INFO\"") && l.contains("debug-line-")),
        "nothing per transaction at info"
    );
    for (id, trace) in &traces {
        let mine: Vec<_> = lines
            .iter()
            .filter(|l| l["fields"]["id"] == id.as_str())
            .collect();
        assert_eq!(mine.len(), 1, "one line for {id}: {lines:#?}");
        let line = mine[0];
        assert_eq!(line["trace_id"], trace.as_str(), "{line}");
        assert_eq!(line["level"], "DEBUG", "{line}");
        assert_eq!(line["fields"]["status"], "Ok", "{line}");
        assert_eq!(
            line["fields"]["decision"].as_str().map(str::is_empty),
            Some(false),
            "{line}"
        );
        for hop in ["risk_ms", "logging_ms"] {
            assert!(
                line["fields"][hop].as_f64().is_some_and(|ms| ms > 0.0),
                "{hop}: {line}"
            );
        }
    }
}
