//! Log lines that name their trace: every line written inside a span carries the span's
//! `trace_id` and `span_id`, so a log line leads to its trace in Jaeger and back.
//!
//! `tracing-subscriber` formats events without knowing OpenTelemetry's ids, and its span
//! fields are formatted for every span created (a cost on the data path). Instead this
//! formatter asks the OpenTelemetry layer for the current span's context only when a line
//! is actually written, and adds the ids: as ` trace_id=… span_id=…` at the end of a text
//! line, or as two leading keys of a JSON object (`--log-format json`, for containers).

use std::fmt;
use std::sync::OnceLock;

use clap::ValueEnum;
use opentelemetry::trace::TraceContextExt;
use tracing::{Event, Subscriber};
use tracing_subscriber::fmt::format::Writer;
use tracing_subscriber::fmt::{FmtContext, FormatEvent, FormatFields};
use tracing_subscriber::registry::LookupSpan;

/// How log lines are written on stderr.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// One human-readable line per event.
    #[default]
    Text,
    /// One JSON object per line (for log collectors in containers).
    Json,
}

/// The installed subscriber, which the formatter asks for span contexts. Weak: the
/// subscriber owns the formatter.
static DISPATCH: OnceLock<tracing::dispatcher::WeakDispatch> = OnceLock::new();

/// Remembers the global subscriber so lines can look up their span's trace context.
pub(crate) fn remember(dispatch: &tracing::Dispatch) {
    let _ = DISPATCH.set(dispatch.downgrade());
}

/// The current span's trace and span ids (lowercase hex), if it belongs to a trace.
fn current_ids<S, N>(ctx: &FmtContext<'_, S, N>) -> Option<(String, String)>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    let id = ctx.current_span().id()?.clone();
    let dispatch = DISPATCH.get()?.upgrade()?;
    let cx = tracing_opentelemetry::get_otel_context(&id, &dispatch)?;
    let span = cx.span();
    let sc = span.span_context();
    sc.is_valid()
        .then(|| (sc.trace_id().to_string(), sc.span_id().to_string()))
}

/// Wraps a formatter (text or JSON) and adds the current span's trace ids to each line.
pub(crate) struct WithTraceIds<F> {
    pub(crate) inner: F,
    pub(crate) format: LogFormat,
}

impl<S, N, F> FormatEvent<S, N> for WithTraceIds<F>
where
    S: Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
    F: FormatEvent<S, N>,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut writer: Writer<'_>,
        event: &Event<'_>,
    ) -> fmt::Result {
        let Some((trace_id, span_id)) = current_ids(ctx) else {
            return self.inner.format_event(ctx, writer, event);
        };
        let mut line = String::new();
        self.inner
            .format_event(ctx, Writer::new(&mut line), event)?;
        let body = line.trim_end_matches('\n');
        match self.format {
            LogFormat::Text => writeln!(writer, "{body} trace_id={trace_id} span_id={span_id}"),
            LogFormat::Json => match body.strip_prefix('{') {
                Some(rest) => writeln!(
                    writer,
                    "{{\"trace_id\":\"{trace_id}\",\"span_id\":\"{span_id}\",{rest}"
                ),
                None => writeln!(writer, "{body}"),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use opentelemetry::trace::TracerProvider as _;
    use tracing_subscriber::fmt::MakeWriter;
    use tracing_subscriber::prelude::*;

    use super::*;

    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl<'a> MakeWriter<'a> for Captured {
        type Writer = Captured;
        fn make_writer(&'a self) -> Captured {
            self.clone()
        }
    }

    #[test]
    fn lines_inside_a_span_carry_its_trace_ids_as_text_and_as_json() {
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder().build();
        let out = Captured::default();
        let text = tracing_subscriber::fmt::layer()
            .with_writer(out.clone())
            .event_format(WithTraceIds {
                inner: tracing_subscriber::fmt::format(),
                format: LogFormat::Text,
            });
        let json = tracing_subscriber::fmt::layer()
            .json()
            .with_writer(out.clone())
            .map_event_format(|inner| WithTraceIds {
                inner,
                format: LogFormat::Json,
            });
        let dispatch: tracing::Dispatch = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")))
            .with(text)
            .with(json)
            .into();
        remember(&dispatch);
        let trace_id = tracing::dispatcher::with_default(&dispatch, || {
            use tracing_opentelemetry::OpenTelemetrySpanExt as _;
            tracing::info!("outside");
            let span = tracing::info_span!("work");
            let _in = span.enter();
            tracing::info!("inside");
            let cx = span.context();
            opentelemetry::trace::TraceContextExt::span(&cx)
                .span_context()
                .trace_id()
                .to_string()
        });
        let lines = String::from_utf8(out.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = lines.lines().collect();
        assert_eq!(lines.len(), 4, "{lines:#?}");
        assert!(!lines[0].contains("trace_id") && !lines[1].contains("trace_id"));
        let ids = format!(" trace_id={trace_id} span_id=");
        assert!(lines[2].contains(&ids), "{}", lines[2]);
        let object: serde_json::Value = serde_json::from_str(lines[3]).expect("valid JSON");
        assert_eq!(object["trace_id"], trace_id.as_str());
        assert_eq!(object["span_id"].as_str().unwrap().len(), 16);
        assert_eq!(object["fields"]["message"], "inside");
    }
}
