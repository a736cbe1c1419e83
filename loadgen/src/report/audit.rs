//! Checks acknowledged transactions against the audit log, through `Logging/Read`.

use std::collections::HashMap;

use anyhow::Context;
use serde::Serialize;
use sluice_proto::pb::ReadRequest;
use sluice_proto::pb::logging_client::LoggingClient;

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
}

impl AuditCheck {
    pub fn passed(&self) -> bool {
        self.missing.is_empty() && self.wrong_offset.is_empty() && self.duplicated.is_empty()
    }
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
    let auth =
        sluice_core::auth::bearer(mesh_token).map_err(|e| anyhow::anyhow!("--mesh-token: {e}"))?;
    let urls: Vec<&str> = logging_urls
        .split(',')
        .map(str::trim)
        .filter(|u| !u.is_empty())
        .collect();
    let mut logged: HashMap<String, (u32, u64)> = HashMap::new();
    let mut duplicated = Vec::new();
    let mut records = 0;
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
            records += 1;
            let at = (partition as u32, entry.offset);
            if logged.insert(entry.id.clone(), at).is_some() {
                duplicated.push(entry.id);
            }
        }
    }
    let mut missing = Vec::new();
    let mut wrong_offset = Vec::new();
    for a in acked {
        match logged.get(&a.id) {
            None => missing.push(a.id.clone()),
            Some(&at) if at != (a.partition, a.offset) => wrong_offset.push(a.id.clone()),
            Some(_) => {}
        }
    }
    Ok(AuditCheck {
        acknowledged: acked.len(),
        records_in_log: records,
        missing,
        wrong_offset,
        duplicated,
    })
}
