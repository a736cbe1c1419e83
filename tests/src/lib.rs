//! Test support: the real binaries as a [`Mesh`] of processes on ephemeral ports, and helpers
//! that wait on signals (ready lines, the gateway's health stream), never on sleeps.
//!
//! Binaries are built once per test run (`cargo build --bins`) into the same target
//! directory as the tests, so `cargo test --workspace` alone is enough.

use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

pub use sluice_lab::procs::{MeshOptions, Proc, ProcMesh};
use sluice_proto::pb::gateway_client::GatewayClient;
use sluice_proto::pb::logging_client::LoggingClient;
use sluice_proto::pb::{AuditEntry, Faults, ReadRequest, Transaction};
use tonic::transport::Channel;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

/// The faults that stall a service: it reads nothing until [`CLEAR`].
pub const STALL: Faults = Faults {
    stall: true,
    delay_ms: 0,
    jitter_ms: 0,
    error_rate: 0.0,
    workers: 0,
};
/// No faults: the service as configured.
pub const CLEAR: Faults = Faults {
    stall: false,
    delay_ms: 0,
    jitter_ms: 0,
    error_rate: 0.0,
    workers: 0,
};

/// The directory holding the workspace's binaries, built on first use.
pub fn bin_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--quiet", "--workspace", "--bins"])
            .current_dir(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
            .status()
            .expect("run cargo build --bins");
        assert!(status.success(), "cargo build --workspace --bins failed");
        // The test executable lives in <target>/<profile>/deps/.
        let exe = std::env::current_exe().expect("current exe");
        exe.parent()
            .and_then(Path::parent)
            .expect("target profile dir")
            .to_path_buf()
    })
}

/// A [`ProcMesh`] with test helpers; derefs to it.
pub struct Mesh(ProcMesh);

impl Deref for Mesh {
    type Target = ProcMesh;
    fn deref(&self) -> &ProcMesh {
        &self.0
    }
}

impl DerefMut for Mesh {
    fn deref_mut(&mut self) -> &mut ProcMesh {
        &mut self.0
    }
}

impl Mesh {
    /// Starts the mesh with default settings and waits until the gateway is ready.
    pub async fn start() -> Mesh {
        Self::start_with(MeshOptions::default()).await
    }

    /// Starts the mesh with extra flags (reconnects capped at 200 ms) and waits until ready.
    pub async fn start_with(mut options: MeshOptions) -> Mesh {
        options
            .gateway
            .extend(["--reconnect-max".to_string(), "200ms".to_string()]);
        let mesh = Mesh(ProcMesh::start(bin_dir(), options).expect("start the mesh"));
        mesh.wait_gateway(ServingStatus::Serving).await;
        mesh
    }

    pub async fn gateway_channel(&self) -> Channel {
        Channel::from_shared(self.gateway.url())
            .expect("url")
            .connect()
            .await
            .expect("connect to gateway")
    }

    pub async fn gateway(&self) -> GatewayClient<Channel> {
        GatewayClient::new(self.gateway_channel().await)
    }

    /// Waits (on the gateway's health stream) until `mesh.v1.Gateway` reports `status`.
    pub async fn wait_gateway(&self, status: ServingStatus) {
        wait_gateway_at(&self.gateway.url(), status).await;
    }

    /// Restarts logging on its previous address and data directory.
    pub fn restart_logging(&mut self) {
        self.0.restart_logging().expect("restart logging");
    }

    /// Replaces the faults in force on `service` (one of this mesh's), with the mesh's token.
    pub async fn set_faults(
        &self,
        service: &Proc,
        faults: sluice_proto::pb::Faults,
    ) -> sluice_proto::pb::Faults {
        self.control(service)
            .await
            .expect("connect to Control")
            .set(faults)
            .await
            .expect("SetFaults")
    }

    /// Every record in the audit log, through `Logging/Read`.
    pub async fn audit_entries(&self) -> Vec<AuditEntry> {
        let mut client = LoggingClient::connect(self.logging.url())
            .await
            .expect("connect to logging");
        let mut stream = client
            .read(ReadRequest {
                from_offset: 1,
                limit: 0,
            })
            .await
            .expect("read")
            .into_inner();
        let mut out = Vec::new();
        while let Some(e) = stream.message().await.expect("read entry") {
            out.push(e);
        }
        out
    }
}

/// Waits (on its health stream) until the gateway at `url` reports `mesh.v1.Gateway`
/// `status`.
pub async fn wait_gateway_at(url: &str, status: ServingStatus) {
    let channel = Channel::from_shared(url.to_string())
        .expect("url")
        .connect()
        .await
        .expect("connect to gateway");
    let mut health = HealthClient::new(channel);
    let watch = async {
        let mut updates = health
            .watch(HealthCheckRequest {
                service: "mesh.v1.Gateway".into(),
            })
            .await
            .expect("health watch")
            .into_inner();
        while let Some(update) = updates.message().await.expect("health update") {
            if update.status == status as i32 {
                return;
            }
        }
        panic!("health stream ended");
    };
    tokio::time::timeout(Duration::from_secs(30), watch)
        .await
        .unwrap_or_else(|_| panic!("gateway {url} never reported {status:?}"));
}

/// A valid transaction with the given id, for an account of its own.
pub fn txn(id: &str) -> Transaction {
    Transaction {
        id: id.into(),
        account: format!("acct-{id}"),
        amount_minor: 1_500,
        currency: "EUR".into(),
        merchant: "coffee-corner".into(),
        trace_context: Default::default(),
        priority: 0,
        after_hlc: 0,
    }
}

/// Scrapes one sample from `/metrics`, read by the one exposition reader
/// ([`sluice_core::exposition`]): the series `series` exactly (`name{labels}` as the binary
/// writes it; surrounding spaces ignored), or else the first series, in name order, that
/// starts with it.
pub async fn metric(admin: SocketAddr, series: &str) -> Option<f64> {
    let samples = sluice_core::exposition::Samples::parse(&http_get(admin, "/metrics").await?);
    let series = series.trim();
    samples.get(series).or_else(|| {
        samples
            .0
            .range(series.to_string()..)
            .find(|(k, _)| k.starts_with(series))
            .map(|(_, v)| *v)
    })
}

/// A headless Chromium on this machine (Debian's `chromium`), if any: the rendering checks
/// are SKIPPED without one.
pub fn chromium() -> Option<&'static str> {
    ["chromium", "chromium-browser", "google-chrome"]
        .into_iter()
        .find(|c| {
            std::process::Command::new(c)
                .arg("--version")
                .output()
                .is_ok_and(|o| o.status.success())
        })
}

/// A minimal HTTP/1.1 GET, enough for the admin endpoints.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<String> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.ok()?;
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).await.ok()?;
    Some(buf)
}

/// Polls `check` every 50 ms until it returns `Some`, for at most `within`: waiting on a
/// condition someone else makes true (a metric, a count), not a fixed sleep.
pub async fn eventually<T, F, Fut>(what: &str, within: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let end = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < end,
            "timed out after {within:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits, as [`eventually`], until the gateway metric `series` (scraped from `admin`) reads
/// at least `min`.
pub async fn metric_reaches(
    admin: SocketAddr,
    what: &str,
    (series, min): (&str, f64),
    within: Duration,
) {
    eventually(what, within, || async {
        (metric(admin, series).await? >= min).then_some(())
    })
    .await
}

/// Runs `sluice-loadgen` with `args` and `--json`, returning its exit status and report.
pub async fn loadgen_json(args: &[&str]) -> (std::process::Output, serde_json::Value) {
    let dir = tempfile::tempdir().expect("temp dir");
    let json = dir.path().join("report.json");
    let out = tokio::process::Command::new(bin_dir().join("sluice-loadgen"))
        .args(args)
        .args(["--json", json.to_str().expect("utf-8 path"), "-q"])
        .env("NO_COLOR", "1")
        .output()
        .await
        .expect("run sluice-loadgen");
    assert!(
        out.status.success(),
        "loadgen failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = serde_json::from_slice(&std::fs::read(&json).expect("report written"))
        .expect("report is JSON");
    (out, report)
}

/// A span as the in-test OTLP receiver collected it.
#[derive(Debug, Clone)]
pub struct CollectedSpan {
    pub service: String,
    pub name: String,
    pub trace_id: String,
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub trace_state: String,
    /// OTLP span kind: 2 server, 3 client, 4 producer, 5 consumer.
    pub kind: i32,
    pub attributes: std::collections::HashMap<String, String>,
    /// (trace id, span id) of each link.
    pub links: Vec<(String, String)>,
    /// OTLP status code: 0 unset, 1 ok, 2 error.
    pub status: i32,
    pub events: Vec<String>,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn any_value(v: &opentelemetry_proto::tonic::common::v1::AnyValue) -> String {
    use opentelemetry_proto::tonic::common::v1::any_value::Value;
    match &v.value {
        Some(Value::StringValue(s)) => s.clone(),
        Some(Value::IntValue(i)) => i.to_string(),
        Some(Value::BoolValue(b)) => b.to_string(),
        Some(Value::DoubleValue(d)) => d.to_string(),
        other => format!("{other:?}"),
    }
}

type Collected = std::sync::Arc<std::sync::Mutex<Vec<CollectedSpan>>>;

struct Receiver(Collected);

#[tonic::async_trait]
impl opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceService
    for Receiver
{
    async fn export(
        &self,
        request: tonic::Request<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest,
        >,
    ) -> Result<
        tonic::Response<
            opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceResponse,
        >,
        tonic::Status,
    > {
        let mut out = Vec::new();
        for rs in request.into_inner().resource_spans {
            let service = rs
                .resource
                .iter()
                .flat_map(|r| r.attributes.iter())
                .find(|kv| kv.key == "service.name")
                .and_then(|kv| kv.value.as_ref().map(any_value))
                .unwrap_or_default();
            for ss in rs.scope_spans {
                for s in ss.spans {
                    out.push(CollectedSpan {
                        service: service.clone(),
                        name: s.name,
                        trace_id: hex(&s.trace_id),
                        span_id: hex(&s.span_id),
                        parent_span_id: hex(&s.parent_span_id),
                        trace_state: s.trace_state,
                        kind: s.kind,
                        attributes: s
                            .attributes
                            .iter()
                            .map(|kv| {
                                (
                                    kv.key.clone(),
                                    kv.value.as_ref().map(any_value).unwrap_or_default(),
                                )
                            })
                            .collect(),
                        links: s
                            .links
                            .iter()
                            .map(|l| (hex(&l.trace_id), hex(&l.span_id)))
                            .collect(),
                        status: s.status.map_or(0, |st| st.code),
                        events: s.events.into_iter().map(|e| e.name).collect(),
                    });
                }
            }
        }
        self.0.lock().unwrap().extend(out);
        Ok(tonic::Response::new(Default::default()))
    }
}

/// An OTLP/gRPC trace receiver on an ephemeral port, inside the test process.
pub struct OtlpReceiver {
    pub addr: SocketAddr,
    spans: Collected,
    _server: tokio::task::JoinHandle<()>,
}

impl OtlpReceiver {
    pub async fn start() -> OtlpReceiver {
        use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::TraceServiceServer;
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind receiver");
        let addr = listener.local_addr().unwrap();
        let spans: Collected = Default::default();
        let service = TraceServiceServer::new(Receiver(spans.clone()));
        let server = tokio::spawn(async move {
            let _ = tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
                .await;
        });
        OtlpReceiver {
            addr,
            spans,
            _server: server,
        }
    }

    /// Environment that points a binary at this receiver, flushing spans quickly.
    pub fn env(&self) -> Vec<(String, String)> {
        vec![
            (
                "OTEL_EXPORTER_OTLP_ENDPOINT".into(),
                format!("http://{}", self.addr),
            ),
            ("SLUICE_OTLP_FLUSH".into(), "100ms".into()),
        ]
    }

    pub fn spans(&self) -> Vec<CollectedSpan> {
        self.spans.lock().unwrap().clone()
    }

    /// Waits until the spans collected so far satisfy `done`.
    pub async fn wait_until(
        &self,
        what: &str,
        done: impl Fn(&[CollectedSpan]) -> bool,
    ) -> Vec<CollectedSpan> {
        eventually(what, Duration::from_secs(30), || {
            let spans = self.spans();
            let ready = done(&spans);
            async move { ready.then_some(spans) }
        })
        .await
    }
}

/// A SubmitStream whose messages are sent as raw bytes (malformed or oversized on purpose):
/// returns the outcomes received and the status the stream ended with (`None` for OK).
pub async fn submit_stream_raw(
    channel: Channel,
    messages: Vec<Vec<u8>>,
) -> (Vec<sluice_proto::pb::Outcome>, Option<tonic::Status>) {
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("gateway ready");
    let path =
        tonic::codegen::http::uri::PathAndQuery::from_static("/mesh.v1.Gateway/SubmitStream");
    let response = grpc
        .streaming(
            tonic::Request::new(tokio_stream::iter(messages)),
            path,
            RawCodec,
        )
        .await;
    let mut stream = match response {
        Ok(r) => r.into_inner(),
        Err(status) => return (Vec::new(), Some(status)),
    };
    let mut outcomes = Vec::new();
    loop {
        match stream.message().await {
            Ok(Some(o)) => outcomes.push(o),
            Ok(None) => return (outcomes, None),
            Err(status) => return (outcomes, Some(status)),
        }
    }
}

/// Encodes the bytes it is given as they are; decodes `Outcome`s.
struct RawCodec;

impl tonic::codec::Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = sluice_proto::pb::Outcome;
    type Encoder = RawCodec;
    type Decoder = RawCodec;
    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }
    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl tonic::codec::Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = tonic::Status;
    fn encode(
        &mut self,
        item: Vec<u8>,
        dst: &mut tonic::codec::EncodeBuf<'_>,
    ) -> Result<(), tonic::Status> {
        bytes::BufMut::put_slice(dst, &item);
        Ok(())
    }
}

impl tonic::codec::Decoder for RawCodec {
    type Item = sluice_proto::pb::Outcome;
    type Error = tonic::Status;
    fn decode(
        &mut self,
        src: &mut tonic::codec::DecodeBuf<'_>,
    ) -> Result<Option<sluice_proto::pb::Outcome>, tonic::Status> {
        prost::Message::decode(src)
            .map(Some)
            .map_err(|e| tonic::Status::internal(e.to_string()))
    }
}

/// Opens a SubmitStream fed from a channel of `buffer` transactions: send on the returned
/// sender (drop it to half-close), read outcomes from the returned stream.
pub async fn open_submit_stream(
    gw: &GatewayClient<Channel>,
    buffer: usize,
) -> (
    tokio::sync::mpsc::Sender<Transaction>,
    tonic::Streaming<sluice_proto::pb::Outcome>,
) {
    let (tx, rx) = tokio::sync::mpsc::channel(buffer);
    let outcomes = gw
        .clone()
        .submit_stream(tokio_stream::wrappers::ReceiverStream::new(rx))
        .await
        .expect("open SubmitStream")
        .into_inner();
    (tx, outcomes)
}
