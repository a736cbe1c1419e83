//! `sluice-logging check` and `sluice-logging repair`: operator commands on a data
//! directory, run instead of the server. The scan and the repair are
//! [`crate::recovery`]'s; this module reports them and picks the exit code.

use crate::flags::Command;
use crate::{log, recovery};

/// Runs `check` or `repair`, printing a report on stdout; returns the exit code.
pub fn run(command: &Command) -> std::process::ExitCode {
    use std::process::ExitCode;
    let (dir, repairing) = match command {
        Command::Check { data_dir } => (data_dir, false),
        Command::Repair { data_dir } => (data_dir, true),
    };
    let path = dir.join(log::LOG_FILE);
    let scanned = if repairing {
        recovery::repair(dir).map(|r| (r.before, Some((r.quarantined, r.new_recovery_point))))
    } else {
        recovery::check(dir).map(|s| (s, None))
    };
    let (scan, quarantined) = match scanned {
        Ok(s) => s,
        Err(e @ recovery::ScanError::PointUnreadable(_)) => {
            println!("verdict: DAMAGED — {e}");
            return ExitCode::from(sluice_core::server::EXIT_DATA_DAMAGED);
        }
        // The error names the file that failed.
        Err(e) => {
            eprintln!("sluice-logging: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("{}: {} bytes", path.display(), scan.len);
    println!(
        "records: {} (offsets 1-{}{})",
        scan.records,
        scan.next_offset - 1,
        if scan.gap_offsets > 0 {
            format!(", {} quarantined earlier", scan.gap_offsets)
        } else {
            String::new()
        }
    );
    match scan.recovery_point {
        Some(p) => println!(
            "recovery point: offset {} durable (byte {}); nothing at or below it is cut as torn",
            p.durable_through(),
            p.end
        ),
        None => println!(
            "recovery point: none (a log from an earlier version): a bad last record cannot be told from a torn write"
        ),
    }
    for d in &scan.damage {
        let lost = if d.lost_through >= d.lost_from {
            format!("offsets {}-{}", d.lost_from, d.lost_through)
        } else {
            "no offset".to_string()
        };
        let after = if d.records_follow {
            "valid records follow"
        } else {
            "at or below the recovery point, so acknowledged records are damaged or missing, not torn"
        };
        println!(
            "DAMAGED bytes {}-{} ({} bytes, {}; first frame: {}); {after}",
            d.start,
            d.end,
            d.end - d.start,
            lost,
            d.reason
        );
    }
    if scan.preallocated > 0 {
        println!(
            "set aside: bytes {}-{} ({} bytes of zeros written ahead of the appends)",
            scan.len - scan.preallocated,
            scan.len,
            scan.preallocated
        );
    }
    if let Some(t) = &scan.torn_tail {
        let acknowledged = if scan.recovery_point.is_some() {
            "past the recovery point: never acknowledged"
        } else {
            "no recovery point, so it cannot be proven never acknowledged"
        };
        println!(
            "torn tail: bytes {}-{} ({} bytes: {}), the last write (offset {} on), {acknowledged}",
            t.start, scan.len, t.len, t.reason, t.offset
        );
    }
    match quarantined {
        Some((files, new_point)) if files.is_empty() => {
            if new_point {
                println!("repaired: a new recovery point was written");
            } else {
                println!("nothing to repair");
            }
        }
        Some((files, _)) => {
            for f in &files {
                println!("quarantined: {}", f.display());
            }
            println!(
                "repaired: the log now holds {} records; the next record gets offset {}",
                scan.records, scan.next_offset
            );
        }
        None if !scan.damage.is_empty() => {
            println!(
                "verdict: DAMAGED — the service will not start; run `sluice-logging repair --data-dir {}`",
                dir.display()
            );
            return ExitCode::from(sluice_core::server::EXIT_DATA_DAMAGED);
        }
        None if scan.torn_tail.is_some() => {
            println!("verdict: OK — the torn tail is cut on the next start")
        }
        None => println!("verdict: OK"),
    }
    ExitCode::SUCCESS
}
