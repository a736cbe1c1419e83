//! Checks acknowledged transactions against the audit log, through `Logging/Read`, and
//! reads the log's one causal history: every partition merged by `(hlc, partition,
//! offset)` — the gateways' hybrid logical clocks first, ties (clocks of different gateways
//! may be equal) broken by where the record is.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;
use sluice_proto::pb::logging_client::LoggingClient;
use sluice_proto::pb::{AuditEntry, ReadRequest};

use crate::report::Acked;

/// The result of comparing acknowledgements with the log.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct AuditCheck {
    pub acknowledged: usize,
    pub records_in_log: usize,
    /// Acknowledged ids absent from the log.
    pub missing: Vec<String>,
    /// Acknowledged ids logged at another offset than the one acknowledged.
    pub wrong_offset: Vec<String>,
    /// Ids stored more than once (should never happen).
    pub duplicated: Vec<String>,
    /// Acknowledged ids whose record carries another clock than their outcome did.
    pub wrong_clock: Vec<String>,
    /// Ids sent after a clock (`after_hlc`, `--causal`) whose record's clock is not past it:
    /// their account's history would not read in the order the client established.
    pub out_of_order: Vec<String>,
}

impl AuditCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty()
            && self.wrong_offset.is_empty()
            && self.duplicated.is_empty()
            && self.wrong_clock.is_empty()
            && self.out_of_order.is_empty()
    }
}

/// One audit record and the partition it is in.
#[derive(Debug, Clone, PartialEq)]
pub struct Located {
    pub partition: u32,
    pub entry: AuditEntry,
}

impl Located {
    /// Its place in the merged history.
    pub fn order(&self) -> (u64, u32, u64) {
        (self.entry.hlc, self.partition, self.entry.offset)
    }
}

/// Every record of every partition (`logging_urls`, comma-separated in partition order),
/// merged into one history: ordered by `(hlc, partition, offset)`. Records written before
/// clocks (`hlc` 0) come first, in partition and offset order.
pub async fn history(logging_urls: &str, mesh_token: Option<&str>) -> anyhow::Result<Vec<Located>> {
    let mut all = read_all(logging_urls, mesh_token).await?;
    all.sort_by_key(Located::order);
    Ok(all)
}

/// Every record of every partition, partition by partition.
async fn read_all(logging_urls: &str, mesh_token: Option<&str>) -> anyhow::Result<Vec<Located>> {
    let auth =
        sluice_core::auth::bearer(mesh_token).map_err(|e| anyhow::anyhow!("--mesh-token: {e}"))?;
    let urls: Vec<&str> = logging_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut all = Vec::new();
    for (partition, url) in urls.iter().enumerate() {
        let mut client = LoggingClient::connect(url.to_string())
            .await
            .with_context(|| format!("cannot connect to the logging service at {url}"))?;
        let mut request = tonic::Request::new(ReadRequest {
            from_offset: 1,
            limit: 0,
        });
        sluice_core::auth::insert(request.metadata_mut(), auth.as_ref());
        let mut stream = client.read(request).await?.into_inner();
        while let Some(entry) = stream.message().await? {
            all.push(Located {
                partition: partition as u32,
                entry,
            });
        }
    }
    Ok(all)
}

/// Reads the whole audit log from `logging_urls` (every partition's, comma-separated in
/// partition order) and compares it with `acked`.
pub async fn check(logging_urls: &str, acked: &[Acked]) -> anyhow::Result<AuditCheck> {
    check_with_token(logging_urls, None, acked).await
}

/// [`check`], presenting `mesh_token` (the logging service's --mesh-token) when given.
///
/// An acknowledgement names its record by partition and offset, so a record found in
/// another partition than the one acknowledged, or at another offset, is `wrong_offset`;
/// an id stored twice anywhere (in one partition or across two) is `duplicated`.
pub async fn check_with_token(
    logging_urls: &str,
    mesh_token: Option<&str>,
    acked: &[Acked],
) -> anyhow::Result<AuditCheck> {
    let all = read_all(logging_urls, mesh_token).await?;
    let records = all.len();
    let mut logged: HashMap<String, (u32, u64, u64)> = HashMap::new();
    let mut duplicated = Vec::new();
    for Located { partition, entry } in all {
        let at = (partition, entry.offset, entry.hlc);
        if logged.insert(entry.id.clone(), at).is_some() {
            duplicated.push(entry.id);
        }
    }
    let mut missing = Vec::new();
    let mut wrong_offset = Vec::new();
    let mut wrong_clock = Vec::new();
    let mut out_of_order = Vec::new();
    for a in acked {
        let Some(&(partition, offset, hlc)) = logged.get(&a.id) else {
            missing.push(a.id.clone());
            continue;
        };
        if (partition, offset) != (a.partition, a.offset) {
            wrong_offset.push(a.id.clone());
        }
        if a.hlc != 0 && hlc != a.hlc {
            wrong_clock.push(a.id.clone());
        }
        if a.after_hlc != 0 && hlc <= a.after_hlc {
            out_of_order.push(a.id.clone());
        }
    }
    Ok(AuditCheck {
        acknowledged: acked.len(),
        records_in_log: records,
        missing,
        wrong_offset,
        duplicated,
        wrong_clock,
        out_of_order,
    })
}
