//! The driver's pieces alone: the pacer, address discovery, lost calls, trace ids.

use super::connect::gateway_addresses;
use super::pending::trace_id_sent;
use super::unary::lost_in_transit;

#[tokio::test]
async fn the_pacer_hands_every_arrival_over_never_before_it_is_due() {
    use super::pacer::{Tick, pacer};
    use crate::drive::schedule::{ArrivalKind, Arrivals};
    use rand::SeedableRng as _;
    use std::time::{Duration, Instant};
    // 2,000/s for 200 ms: 400 arrivals, 0.5 ms apart.
    let run = Duration::from_millis(200);
    let arrivals = Arrivals::constant(ArrivalKind::Constant, 2000.0, run);
    let start = Instant::now();
    let mut ticks = pacer(
        (
            std::sync::Arc::new(arrivals),
            rand::rngs::SmallRng::seed_from_u64(1),
        ),
        (start, start + run),
    );
    let (mut dues, mut unsent) = (Vec::new(), 0);
    while let Some(tick) = ticks.recv().await {
        match tick {
            Tick::Due(due) => {
                assert!(Instant::now() >= due, "handed over before it was due");
                dues.push(due);
            }
            // A thread woken past the end (a loaded machine) counts the rest unsent.
            Tick::Unsent(n) => unsent += n,
        }
    }
    assert_eq!(
        dues.len() as u64 + unsent,
        400,
        "every arrival accounted for"
    );
    assert!(dues.windows(2).all(|w| w[0] < w[1]), "due times in order");
    assert_eq!(dues[0], start, "the first arrival is at the start");
}

#[tokio::test]
async fn several_gateways_and_names_become_every_address() {
    let urls = gateway_addresses("http://127.0.0.1:7, http://localhost:8")
        .await
        .unwrap();
    assert_eq!(urls[0], "http://127.0.0.1:7");
    assert!(urls.len() >= 2, "{urls:?}");
    assert!(urls[1..].iter().all(|u| u.ends_with(":8")), "{urls:?}");
    assert!(gateway_addresses("gateway:1").await.is_err());
    assert!(gateway_addresses(" , ").await.is_err());
}
use opentelemetry::trace::TraceId;
use sluice_proto::pb::Transaction;
use tonic::Status;

#[test]
fn the_trace_id_is_the_one_in_the_traceparent_sent() {
    let with = |traceparent: &str| Transaction {
        trace_context: [("traceparent".to_string(), traceparent.to_string())].into(),
        ..Default::default()
    };
    assert_eq!(
        trace_id_sent(&with(
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
        )),
        Some(TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736))
    );
    assert_eq!(trace_id_sent(&Transaction::default()), None, "tracing off");
    for bad in [
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
        "00-4bf92f3577b34da6a3ce929d0e0e473-00f067aa0ba902b7-01",
        "00-+bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
        "garbage",
    ] {
        assert_eq!(trace_id_sent(&with(bad)), None, "{bad}");
    }
}

#[test]
fn only_a_connection_broken_mid_call_is_lost_in_transit() {
    assert!(!lost_in_transit(&Status::unavailable("shutting down")));
    let deadline = Status::from_error(Box::new(tonic::TimeoutExpired(())));
    assert!(!lost_in_transit(&deadline), "{deadline:?}");
    let refused = Status::from_error(Box::new(tonic::ConnectError(Box::new(
        std::io::Error::from(std::io::ErrorKind::ConnectionRefused),
    ))));
    assert!(!lost_in_transit(&refused), "{refused:?}");
    let reset = Status::from_error(Box::new(std::io::Error::from(
        std::io::ErrorKind::ConnectionReset,
    )));
    assert!(lost_in_transit(&reset), "{reset:?}");
}
