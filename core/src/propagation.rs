//! Trace-context propagation: W3C tracecontext (`traceparent`, `tracestate`) and B3, both
//! the single `b3` header and the multi `x-b3-*` headers, through the OpenTelemetry
//! propagators.
//!
//! Injection writes every format, so any peer can continue the trace. Extraction accepts any
//! of them; with both present W3C wins and `tracestate` is kept — in a composite propagator
//! the last valid extractor wins, so TraceContext comes after B3.
//!
//! Two carriers: gRPC metadata (when a call or stream opens) and a message's own
//! `trace_context` map (every message on a long-lived stream belongs to its own trace).

use std::collections::HashMap;

use opentelemetry::Context;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapCompositePropagator};
use opentelemetry_propagator_b3::{B3Encoding, Propagator as B3Propagator};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tonic::metadata::{KeyRef, MetadataKey, MetadataMap, MetadataValue};

/// The composite propagator Sluice uses everywhere.
pub fn propagator() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(B3Propagator::with_encoding(
            B3Encoding::SingleAndMultiHeader,
        )),
        Box::new(TraceContextPropagator::new()),
    ])
}

/// Installs [`propagator`] as the global text-map propagator.
pub fn install() {
    global::set_text_map_propagator(propagator());
}

/// Writes `cx` into a message's `trace_context` map.
pub fn inject_map(cx: &Context, map: &mut HashMap<String, String>) {
    global::get_text_map_propagator(|p| p.inject_context(cx, map));
}

/// Reads a context from a message's `trace_context` map (empty context when none).
pub fn extract_map(map: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract_with_context(&Context::new(), map))
}

/// Writes `cx` into gRPC metadata.
pub fn inject_metadata(cx: &Context, metadata: &mut MetadataMap) {
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut MetadataInjector(metadata)));
}

/// Reads a context from gRPC metadata (empty context when none).
pub fn extract_metadata(metadata: &MetadataMap) -> Context {
    global::get_text_map_propagator(|p| {
        p.extract_with_context(&Context::new(), &MetadataExtractor(metadata))
    })
}

/// True when `cx` carries a valid remote or local span context.
pub fn has_span(cx: &Context) -> bool {
    use opentelemetry::trace::TraceContextExt;
    cx.span().span_context().is_valid()
}

struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(k), Ok(v)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(k, v);
        }
    }
}

struct MetadataExtractor<'a>(&'a MetadataMap);

impl Extractor for MetadataExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0
            .keys()
            .filter_map(|k| match k {
                KeyRef::Ascii(k) => Some(k.as_str()),
                KeyRef::Binary(_) => None,
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::trace::{
        SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState,
    };

    fn cx() -> Context {
        let sc = SpanContext::new(
            TraceId::from_hex("4bf92f3577b34da6a3ce929d0e0e4736").unwrap(),
            SpanId::from_hex("00f067aa0ba902b7").unwrap(),
            TraceFlags::SAMPLED,
            true,
            TraceState::from_key_value([("vendor", "x")]).unwrap(),
        );
        Context::new().with_remote_span_context(sc)
    }

    #[test]
    fn injects_every_format_and_round_trips() {
        install();
        let mut map = HashMap::new();
        inject_map(&cx(), &mut map);
        for key in [
            "traceparent",
            "tracestate",
            "b3",
            "x-b3-traceid",
            "x-b3-spanid",
            "x-b3-sampled",
        ] {
            assert!(map.contains_key(key), "{key} missing: {map:?}");
        }
        let back = extract_map(&map);
        assert_eq!(
            back.span().span_context().trace_id(),
            cx().span().span_context().trace_id()
        );
        assert_eq!(
            back.span().span_context().trace_state().header(),
            "vendor=x"
        );

        let mut md = MetadataMap::new();
        inject_metadata(&cx(), &mut md);
        let back = extract_metadata(&md);
        assert_eq!(
            back.span().span_context().span_id(),
            cx().span().span_context().span_id()
        );
    }

    #[test]
    fn w3c_wins_over_b3_and_keeps_tracestate() {
        install();
        let mut map = HashMap::new();
        map.insert(
            "b3".into(),
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".into(),
        );
        map.insert(
            "traceparent".into(),
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01".into(),
        );
        map.insert("tracestate".into(), "vendor=x".into());
        let sc = extract_map(&map).span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(sc.trace_state().header(), "vendor=x");
    }

    #[test]
    fn accepts_b3_single_and_multi() {
        install();
        let single = HashMap::from([(
            "b3".to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1".to_string(),
        )]);
        assert_eq!(
            extract_map(&single)
                .span()
                .span_context()
                .trace_id()
                .to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        let multi = HashMap::from([
            (
                "x-b3-traceid".to_string(),
                "80f198ee56343ba864fe8b2a57d3eff7".to_string(),
            ),
            ("x-b3-spanid".to_string(), "e457b5a2e4d86bd1".to_string()),
            ("x-b3-sampled".to_string(), "1".to_string()),
        ]);
        let sc = extract_map(&multi).span().span_context().clone();
        assert!(sc.is_valid() && sc.is_sampled());
        assert!(!has_span(&extract_map(&HashMap::new())));
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            /// Whatever a client puts in its carrier, extraction never panics, and a context
            /// it accepts is a valid one.
            #[test]
            fn arbitrary_carriers_never_panic(
                entries in prop::collection::vec(
                    (prop::sample::select(vec!["traceparent", "tracestate", "b3", "x-b3-traceid", "x-b3-spanid", "x-b3-sampled", "x-b3-flags", "other"]), ".{0,80}"),
                    0..8,
                )
            ) {
                install();
                let map: HashMap<String, String> =
                    entries.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
                let cx = extract_map(&map);
                if has_span(&cx) {
                    prop_assert!(cx.span().span_context().is_valid());
                }
            }

            /// Any valid context survives inject → extract in every format, trace id, span
            /// id and sampling intact.
            #[test]
            fn valid_contexts_round_trip(trace in 1u128.., span in 1u64.., sampled in any::<bool>()) {
                install();
                let flags = if sampled { TraceFlags::SAMPLED } else { TraceFlags::default() };
                let sc = SpanContext::new(
                    TraceId::from(trace),
                    SpanId::from(span),
                    flags,
                    true,
                    TraceState::default(),
                );
                let original = Context::new().with_remote_span_context(sc);
                let mut map = HashMap::new();
                inject_map(&original, &mut map);
                let back = extract_map(&map);
                let got = back.span().span_context().clone();
                prop_assert_eq!(got.trace_id(), TraceId::from(trace));
                prop_assert_eq!(got.span_id(), SpanId::from(span));
                prop_assert_eq!(got.is_sampled(), sampled);
            }
        }
    }
}
