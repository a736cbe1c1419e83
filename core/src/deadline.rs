//! Deadlines that cross hops.
//!
//! `grpc-timeout` covers one call; on a long-lived stream every message needs its own. The
//! gateway turns each transaction's remaining time into an absolute Unix-millisecond
//! deadline carried in the message; every hop compares it with its own clock (all hops of
//! one mesh share a host or NTP) and drops work whose deadline has passed.

use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Now as Unix epoch milliseconds.
pub fn now_unix_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// The absolute Unix-millisecond form of a monotonic deadline.
pub fn to_unix_ms(deadline: Instant) -> i64 {
    let remaining = deadline.saturating_duration_since(Instant::now());
    now_unix_ms() + remaining.as_millis() as i64
}

/// Time left until a Unix-millisecond deadline; `None` for 0 (no deadline).
pub fn remaining(deadline_unix_ms: i64) -> Option<Duration> {
    if deadline_unix_ms == 0 {
        return None;
    }
    Some(Duration::from_millis(
        (deadline_unix_ms - now_unix_ms()).max(0) as u64,
    ))
}

/// True when a Unix-millisecond deadline is set and has passed.
pub fn expired(deadline_unix_ms: i64) -> bool {
    deadline_unix_ms != 0 && now_unix_ms() >= deadline_unix_ms
}

/// Parses a `grpc-timeout` header value (`<digits><unit>`, unit one of H M S m u n).
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    if value.len() < 2 || value.len() > 9 {
        return None;
    }
    let (digits, unit) = value.split_at(value.len() - 1);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n.checked_mul(3600)?),
        "M" => Duration::from_secs(n.checked_mul(60)?),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_units() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("2M"), Some(Duration::from_secs(120)));
        assert_eq!(parse_grpc_timeout("1H"), Some(Duration::from_secs(3600)));
        assert_eq!(parse_grpc_timeout("10u"), Some(Duration::from_micros(10)));
        assert_eq!(parse_grpc_timeout("S"), None);
        assert_eq!(parse_grpc_timeout("5x"), None);
        assert_eq!(parse_grpc_timeout("1234567890S"), None);
    }

    #[test]
    fn unix_deadlines() {
        assert!(!expired(0));
        assert_eq!(remaining(0), None);
        assert!(expired(now_unix_ms() - 1));
        let d = to_unix_ms(Instant::now() + Duration::from_secs(10));
        assert!(remaining(d).unwrap() > Duration::from_secs(9));
    }
}
