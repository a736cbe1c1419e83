//! How many connections a process may hold: every open connection is a file descriptor, and
//! the process has `RLIMIT_NOFILE` of them for everything — its listeners, the audit log's
//! files, downstream connections, the runtime's own. A cap above that is no cap: the flood
//! takes the last descriptor and the next real client (or the next audit segment) gets
//! EMFILE instead of a polite close.
//!
//! So at start the process raises its soft limit to the hard one (as Go's runtime does; the
//! soft default of 1,024 is a relic of `select`), then fits the caps: the gRPC
//! `--max-connections` and the admin `--admin-max-connections` together stay at or below
//! `RLIMIT_NOFILE - --fd-reserve`. When they would not, they are lowered — the admin cap to at
//! most a quarter of what is left, the gRPC cap to the rest — and the start says so, once.

/// Default descriptors kept out of the connection caps (`--fd-reserve`): the listeners, the
/// audit log and its recovery point, downstream connections (a few per replica), the
/// runtime's and the telemetry exporter's own, with room to spare.
pub const DEFAULT_FD_RESERVE: u64 = 128;

/// The caps a process runs with, and the limit that shaped them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ConnectionCaps {
    /// gRPC connections open at once.
    pub grpc: usize,
    /// Admin (HTTP/1) connections open at once.
    pub admin: usize,
    /// The descriptor limit (soft, after raising it), if there is one.
    pub nofile: Option<u64>,
    /// The caps asked for were lowered to fit `nofile`.
    pub lowered: bool,
}

/// The limit leaves no room for connections.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "RLIMIT_NOFILE is {nofile}: after the {reserve} descriptors --fd-reserve keeps back, no room is left for connections (raise it with `ulimit -n`, LimitNOFILE= or the container's nofile ulimit, or lower --fd-reserve)"
)]
pub struct NoRoom {
    pub nofile: u64,
    pub reserve: u64,
}

/// Fits the caps asked for (`grpc`, `admin`) into `nofile` less `reserve`.
pub fn fit(
    grpc: usize,
    admin: usize,
    reserve: u64,
    nofile: Option<u64>,
) -> Result<ConnectionCaps, NoRoom> {
    let Some(limit) = nofile else {
        return Ok(ConnectionCaps {
            grpc,
            admin,
            nofile,
            lowered: false,
        });
    };
    let room = limit.saturating_sub(reserve);
    if room < 2 {
        return Err(NoRoom {
            nofile: limit,
            reserve,
        });
    }
    let room = usize::try_from(room).unwrap_or(usize::MAX);
    if grpc.saturating_add(admin) <= room {
        return Ok(ConnectionCaps {
            grpc,
            admin,
            nofile,
            lowered: false,
        });
    }
    let admin_fit = admin.min(room / 4).max(1);
    Ok(ConnectionCaps {
        grpc: grpc.min(room - admin_fit),
        admin: admin_fit,
        nofile,
        lowered: true,
    })
}

/// Raises the soft descriptor limit to the hard one and returns it (`None`: unlimited or
/// unknown, e.g. not Unix).
pub fn raise_nofile_limit() -> Option<u64> {
    // rlimit: a small, safe wrapper over getrlimit/setrlimit (this workspace forbids
    // `unsafe`); `increase_nofile_limit` also handles macOS's OPEN_MAX quirk.
    match rlimit::increase_nofile_limit(u64::MAX) {
        Ok(n) if n < rlimit::INFINITY => Some(n),
        Ok(_) => None,
        Err(e) => {
            tracing::debug!(error = %e, "cannot read or raise RLIMIT_NOFILE");
            rlimit::getrlimit(rlimit::Resource::NOFILE)
                .ok()
                .map(|(soft, _)| soft)
                .filter(|&n| n < rlimit::INFINITY)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caps_that_fit_are_kept() {
        let caps = fit(10_000, 256, 128, Some(1 << 20)).unwrap();
        assert_eq!((caps.grpc, caps.admin, caps.lowered), (10_000, 256, false));
        let unlimited = fit(10_000, 256, 128, None).unwrap();
        assert_eq!((unlimited.grpc, unlimited.admin), (10_000, 256));
    }

    #[test]
    fn caps_that_do_not_fit_are_lowered_to_the_limit_less_the_reserve() {
        let caps = fit(10_000, 256, 128, Some(1024)).unwrap();
        assert!(caps.lowered);
        assert_eq!(caps.grpc + caps.admin, 1024 - 128);
        assert_eq!(caps.admin, 224, "at most a quarter of the room");
        // A small admin cap is kept as asked.
        let caps = fit(10_000, 16, 128, Some(1024)).unwrap();
        assert_eq!((caps.grpc, caps.admin), (1024 - 128 - 16, 16));
        // A small gRPC cap stays small.
        let caps = fit(100, 5_000, 128, Some(1024)).unwrap();
        assert_eq!((caps.grpc, caps.admin), (100, 224));
    }

    #[test]
    fn no_room_is_an_error_that_says_what_to_do() {
        let e = fit(10, 10, 128, Some(129)).unwrap_err();
        assert!(e.to_string().contains("ulimit -n"), "{e}");
        assert!(fit(10, 10, 128, Some(130)).is_ok());
    }

    #[test]
    fn any_input_gives_caps_within_the_room() {
        for limit in [130u64, 200, 1024, 4096, 65_536] {
            for (grpc, admin) in [(1, 1), (10_000, 256), (50, 5_000), (usize::MAX, usize::MAX)] {
                let c = fit(grpc, admin, 128, Some(limit)).unwrap();
                assert!((c.grpc + c.admin) as u64 <= limit - 128, "{limit} {c:?}");
                assert!(c.grpc >= 1 && c.admin >= 1 && c.grpc <= grpc && c.admin <= admin);
            }
        }
    }
}
