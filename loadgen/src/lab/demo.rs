//! `sluice-loadgen demo`: the whole mesh in this process ([`super::mesh`]), driven briefly,
//! then every acknowledgement checked against the audit log — the shortest way to see that
//! Sluice works, with nothing but this binary.

use std::path::PathBuf;
use std::time::Duration;

use crate::drive::driver;
use crate::drive::spec::LoadSpec;
use crate::lab::mesh::LocalMesh;
use crate::report::Report;
use crate::report::audit::{self, AuditCheck};

/// The demo's open-loop rate unless told otherwise: enough to show the mesh working, little
/// enough for one machine running both the mesh and the generator.
pub const DEFAULT_DEMO_RATE: f64 = 2000.0;
/// How long the in-process servers may take to drain when the demo stops them.
const GRACE: Duration = Duration::from_secs(5);

/// Starts the mesh (audit log under `data_dir`, or a temporary directory), drives it as
/// `spec` says — against the mesh's gateway, whatever its target, and showing the gateway's
/// queue depths unless it names other metrics — checks the audit log, and stops the mesh.
pub async fn run(
    data_dir: Option<PathBuf>,
    mut spec: LoadSpec,
) -> anyhow::Result<(Report, AuditCheck)> {
    eprintln!("starting risk, notification, logging and the gateway on loopback ...");
    let mesh = LocalMesh::start(data_dir, GRACE).await?;
    eprintln!(
        "mesh up: gateway {} (metrics http://{}/metrics), audit log in {}",
        mesh.gateway_url,
        mesh.gateway_admin,
        mesh.data_dir.display()
    );
    spec.target = mesh.gateway_url.clone();
    spec.metrics = spec
        .metrics
        .or_else(|| Some(crate::admin::metrics::url(mesh.gateway_admin)));
    eprintln!(
        "driving {} ingress for {:?} ({}) ...",
        format!("{:?}", spec.mode).to_lowercase(),
        spec.duration,
        spec.pacing.describe()
    );
    let result = async {
        let report = driver::run(spec).await?;
        let check = audit::check(&mesh.logging_url, &report.acked).await?;
        anyhow::Ok((report, check))
    }
    .await;
    eprintln!("shutting down ...");
    mesh.stop().await?;
    result
}
