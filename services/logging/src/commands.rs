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
        recovery::repair(dir).map(|r| (r.before, Some(r.quarantined)))
    } else {
        recovery::check(dir).map(|s| (s, None))
    };
    let (scan, quarantined) = match scanned {
        Ok(s) => s,
        Err(e) => {
            eprintln!("sluice-logging: cannot read {}: {e}", path.display());
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
    for d in &scan.damage {
        let lost = if d.lost_through >= d.lost_from {
            format!("offsets {}-{}", d.lost_from, d.lost_through)
        } else {
            "no offset".to_string()
        };
        println!(
            "DAMAGED bytes {}-{} ({} bytes, {}; first frame: {}); valid records follow",
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
        println!(
            "torn tail: bytes {}-{} ({} bytes: {}), the last write, never acknowledged",
            t.start, scan.len, t.len, t.reason
        );
    }
    match quarantined {
        Some(files) if files.is_empty() => println!("nothing to repair"),
        Some(files) => {
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
