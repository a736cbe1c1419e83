//! The JSON report (`--json`): what `verify`, CI checks and other tools read, so its shape is
//! a contract, written down in `docs/report-schema.md` and versioned by
//! [`REPORT_SCHEMA_VERSION`]. The fields are those of [`Report`]; this module writes the file
//! and reads back the part `verify` needs.

use std::path::Path;

use anyhow::Context as _;

use super::{Acked, Report};

/// The JSON report's schema version: fields are only ever added within a version; a removed
/// or changed field bumps it (docs/report-schema.md).
pub const REPORT_SCHEMA_VERSION: u32 = 2;

/// Writes `report` to `path` as pretty JSON.
pub fn write(path: &Path, report: &Report) -> anyhow::Result<()> {
    let json = serde_json::to_vec_pretty(report)?;
    std::fs::write(path, json).with_context(|| format!("cannot write {}", path.display()))
}

/// The acknowledged transactions of a report written by `run --json` (or `demo --json`).
pub fn read_acked(path: &Path) -> anyhow::Result<Vec<Acked>> {
    #[derive(serde::Deserialize)]
    struct Partial {
        acked: Vec<Acked>,
    }
    let text =
        std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
    let partial: Partial = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a report written by `run --json`", path.display()))?;
    Ok(partial.acked)
}
