//! The logging service's configuration: the serving flags of [`crate::Flags`] checked. A
//! value that cannot work is refused here, by flag name, before anything starts.

use std::net::SocketAddr;
use std::path::PathBuf;

use clap::Parser as _;
use sluice_core::flags::{BadFlag, in_range};
use sluice_core::server::ServerSettings;
use sluice_runtime::ServiceConfig;

use crate::flags::Flags;

/// Largest `--append-queue`: far past any useful depth, low enough that a typo cannot ask
/// for gigabytes.
pub const MAX_APPEND_QUEUE: usize = 1 << 20;
/// Largest `--max-batch`: one write of this many records (each up to 64 KiB) is buffered
/// before its fsync.
pub const MAX_BATCH: usize = 1 << 14;
/// Largest `--partitions`.
pub const MAX_PARTITIONS: u32 = 1024;

/// One partition of the audit log: `index` of `count`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Partition {
    pub index: u32,
    pub count: u32,
}

impl Partition {
    /// Whether transaction `id` belongs here.
    pub fn owns(&self, id: &str) -> bool {
        sluice_proto::partition::of(id, self.count) == self.index
    }

    /// From `--partition` (a number or `auto`) and `--partitions`; `hostname` is asked
    /// only for `auto`.
    fn parse(
        partition: &str,
        count: u32,
        hostname: impl FnOnce() -> Option<String>,
    ) -> Result<Self, BadFlag> {
        let count = in_range("partitions", count, 1, MAX_PARTITIONS)?;
        let index = if partition == "auto" {
            let name = hostname().unwrap_or_default();
            ordinal(&name).ok_or_else(|| {
                BadFlag::new(
                    "partition",
                    "auto",
                    format!("needs a host name ending in -<number> (a StatefulSet pod such as logging-1); this host is {name:?}"),
                )
            })?
        } else {
            partition
                .parse()
                .map_err(|_| BadFlag::new("partition", partition, "must be a number or `auto`"))?
        };
        if index >= count {
            return Err(BadFlag::new(
                "partition",
                index,
                format!("must be below --partitions ({count})"),
            ));
        }
        Ok(Self { index, count })
    }
}

/// The ordinal of a StatefulSet pod's host name: `logging-1` → 1.
fn ordinal(hostname: &str) -> Option<u32> {
    hostname.trim().rsplit_once('-')?.1.parse().ok()
}

/// This machine's host name (the pod name under Kubernetes).
fn hostname() -> Option<String> {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|h| h.trim().to_string())
}

/// What the logging service runs with.
#[derive(Debug, Clone)]
pub struct Config {
    pub listen: SocketAddr,
    pub admin_listen: SocketAddr,
    /// Holds `audit.log` (and a generated Control token).
    pub data_dir: PathBuf,
    /// Appends waiting for the writer thread.
    pub append_queue: usize,
    /// Most records written and fsync'ed together.
    pub max_batch: usize,
    /// Bytes of zeros kept written ahead of the log's end, a chunk at a time (0: none).
    pub preallocate: u64,
    /// The partition this process owns.
    pub partition: Partition,
    /// The token Append and Read require; `None`: no check.
    pub mesh_token: Option<String>,
    pub service: ServiceConfig,
    pub server: ServerSettings,
}

impl Config {
    /// Defaults, as if no flag were given.
    pub fn defaults() -> Self {
        Self::try_from(Flags::parse_from(["sluice-logging"]))
            .expect("the default flags are valid (tested)")
    }
}

impl TryFrom<Flags> for Config {
    type Error = BadFlag;

    /// The serving flags; a subcommand (`check`, `repair`) is not looked at.
    fn try_from(flags: Flags) -> Result<Self, BadFlag> {
        Ok(Self {
            listen: flags.listen,
            admin_listen: flags.admin_listen,
            data_dir: flags.data_dir,
            append_queue: in_range("append-queue", flags.append_queue, 1, MAX_APPEND_QUEUE)?,
            max_batch: in_range("max-batch", flags.max_batch, 1, MAX_BATCH)?,
            preallocate: in_range(
                "preallocate",
                flags.preallocate,
                0,
                crate::log::MAX_PREALLOCATE,
            )?,
            partition: Partition::parse(&flags.partition, flags.partitions, hostname)?,
            mesh_token: open_only_on_loopback(
                flags.listen,
                flags
                    .mesh
                    .resolve()
                    .map_err(|e| BadFlag::new("mesh-token-file", "", e.to_string()))?,
                flags.allow_open_audit_log,
            )?,
            service: flags.service.try_into()?,
            server: flags.server.into(),
        })
    }
}

/// The audit log's "protected mode" (Redis's name for it): without a mesh token, Append and
/// Read are open to anyone who reaches the port, so the port must be a loopback one — unless
/// the operator said otherwise, explicitly. Returns the token.
fn open_only_on_loopback(
    listen: SocketAddr,
    token: Option<String>,
    allow_open: bool,
) -> Result<Option<String>, BadFlag> {
    if token.is_none() && !listen.ip().is_loopback() && !allow_open {
        return Err(BadFlag::new(
            "listen",
            listen,
            "an audit log without a mesh token serves only on a loopback address (anyone who reaches it could append records and read every account): give it --mesh-token-file FILE (`sluice-loadgen gen-token --out FILE` makes one) or SLUICE_MESH_TOKEN, listen on 127.0.0.1, or pass --allow-open-audit-log",
        ));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;
    use crate::log;

    fn config(args: &[&str]) -> Result<Config, BadFlag> {
        let mut argv = vec!["sluice-logging"];
        argv.extend_from_slice(args);
        Config::try_from(Flags::parse_from(argv))
    }

    #[test]
    fn cli_is_well_formed() {
        Flags::command().debug_assert();
    }

    #[test]
    fn defaults_are_valid_and_are_the_named_constants() {
        let c = Config::defaults();
        assert_eq!(c.append_queue, log::DEFAULT_APPEND_QUEUE);
        assert_eq!(c.max_batch, log::DEFAULT_MAX_BATCH);
        assert_eq!(c.preallocate, log::DEFAULT_PREALLOCATE);
        assert_eq!(c.data_dir, PathBuf::from(crate::flags::DEFAULT_DATA_DIR));
        assert_eq!(c.mesh_token, None);
    }

    #[test]
    fn values_that_cannot_work_are_refused_by_flag() {
        for (args, flag) in [
            (&["--append-queue", "0"][..], "append-queue"),
            (&["--max-batch", "0"], "max-batch"),
            (&["--max-batch", "16385"], "max-batch"),
            (&["--preallocate", "67108865"], "preallocate"),
            (&["--reply-queue", "0"], "reply-queue"),
            (&["--partition", "2", "--partitions", "2"], "partition"),
            (&["--partition", "x"], "partition"),
            (&["--partitions", "0"], "partitions"),
        ] {
            assert_eq!(config(args).unwrap_err().flag, flag, "{args:?}");
        }
        assert_eq!(config(&["--mesh-token", ""]).unwrap().mesh_token, None);
    }

    #[test]
    fn without_a_token_the_audit_log_serves_only_on_loopback() {
        let open = ["--listen", "0.0.0.0:50054"];
        let refused = config(&open).unwrap_err();
        assert_eq!(refused.flag, "listen");
        assert!(refused.rule.contains("--allow-open-audit-log"), "{refused}");
        assert!(config(&["--listen", "[::]:50054"]).is_err());
        let with_token = config(&[&open[..], &["--mesh-token", "t0k"]].concat()).unwrap();
        assert_eq!(with_token.mesh_token.as_deref(), Some("t0k"));
        let opted_out = config(&[&open[..], &["--allow-open-audit-log"]].concat()).unwrap();
        assert_eq!(opted_out.mesh_token, None);
        for loopback in ["127.0.0.1:50054", "127.0.0.9:1", "[::1]:50054"] {
            assert_eq!(config(&["--listen", loopback]).unwrap().mesh_token, None);
        }
        // A token file that cannot be read stops the start, by flag.
        let missing = config(&["--mesh-token-file", "/nonexistent/mesh-token"]).unwrap_err();
        assert_eq!(missing.flag, "mesh-token-file");
    }

    #[test]
    fn partition_auto_is_the_pod_ordinal() {
        let host = |h: &str| {
            let h = h.to_string();
            move || Some(h)
        };
        let p = Partition::parse("auto", 3, host("logging-2")).unwrap();
        assert_eq!(p, Partition { index: 2, count: 3 });
        let e = Partition::parse("auto", 3, host("laptop")).unwrap_err();
        assert!(e.rule.contains("-<number>"), "{e}");
        assert_eq!(
            Partition::parse("auto", 2, host("logging-5"))
                .unwrap_err()
                .flag,
            "partition"
        );
        assert_eq!(
            config(&[]).unwrap().partition,
            Partition { index: 0, count: 1 }
        );
    }

    #[test]
    fn a_partition_owns_exactly_its_share_of_ids() {
        let parts: Vec<_> = (0..3).map(|index| Partition { index, count: 3 }).collect();
        for i in 0..300 {
            let id = format!("t-{i}");
            assert_eq!(parts.iter().filter(|p| p.owns(&id)).count(), 1, "{id}");
        }
    }
}
