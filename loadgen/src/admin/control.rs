//! The one `mesh.v1.Control` client. Every fault the load generator reads or switches — the
//! `fault` command, scenario fault switches, the pressure benchmark's stall, the test
//! meshes — goes through [`Control`], so every call presents the admin token the same way
//! (`authorization: Bearer <token>`, added by one interceptor) and fails with the same
//! message naming the service and the method.
//!
//! A change to the faults is a [`FaultChange`] applied on top of what is in force (read
//! first), so a scenario that only stalls a service keeps the delay it set before.

use anyhow::Context as _;
use sluice_proto::pb::control_client::ControlClient;
use sluice_proto::pb::{Faults, GetFaultsRequest};
use tonic::metadata::AsciiMetadataValue;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

/// Adds the admin token to every Control call.
#[derive(Clone)]
struct Bearer(Option<AsciiMetadataValue>);

impl Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        sluice_core::auth::insert(request.metadata_mut(), self.0.as_ref());
        Ok(request)
    }
}

/// A connection to one service's Control API that presents the admin token on every call.
pub struct Control {
    target: String,
    client: ControlClient<InterceptedService<Channel, Bearer>>,
}

impl Control {
    /// Connects to the Control API at `target` (a service's gRPC URL), presenting `token`
    /// (the service's admin token) when given.
    pub async fn connect(target: &str, token: Option<&str>) -> anyhow::Result<Control> {
        let bearer =
            sluice_core::auth::bearer(token).map_err(|e| anyhow::anyhow!("admin token: {e}"))?;
        let channel = Channel::from_shared(target.to_string())
            .with_context(|| format!("{target:?} is not a valid URL"))?
            .connect()
            .await
            .with_context(|| format!("cannot connect to {target}: is the service running?"))?;
        Ok(Control {
            target: target.to_string(),
            client: ControlClient::with_interceptor(channel, Bearer(bearer)),
        })
    }

    /// The faults in force.
    pub async fn get(&mut self) -> anyhow::Result<Faults> {
        let reply = self.client.get_faults(GetFaultsRequest {}).await;
        reply
            .map(tonic::Response::into_inner)
            .map_err(|s| self.failed("GetFaults", &s))
    }

    /// Replaces the faults in force with `faults`; returns what is now in force.
    pub async fn set(&mut self, faults: Faults) -> anyhow::Result<Faults> {
        let reply = self.client.set_faults(faults).await;
        reply
            .map(tonic::Response::into_inner)
            .map_err(|s| self.failed("SetFaults", &s))
    }

    /// Applies `change` on top of the faults in force; returns what is now in force (only
    /// reads them when `change` changes nothing).
    pub async fn change(&mut self, change: &FaultChange) -> anyhow::Result<Faults> {
        let current = self.get().await?;
        if change.is_empty() {
            return Ok(current);
        }
        // `workers` reads back as the resolved pool size; 0 keeps it unless asked.
        let base = Faults {
            workers: 0,
            ..current
        };
        self.set(change.apply(base)).await
    }

    fn failed(&self, method: &str, status: &tonic::Status) -> anyhow::Error {
        anyhow::anyhow!(
            "{method} on {}: {} ({:?})",
            self.target,
            status.message(),
            status.code()
        )
    }
}

/// A change to a service's faults: the `fault` command's flags, or a scenario's fault switch.
/// `None` leaves a fault as it is.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultChange {
    /// Clear every fault first; the other fields then apply on top.
    pub clear: bool,
    /// Stop (true) or resume (false) reading inbound streams.
    pub stall: Option<bool>,
    pub delay_ms: Option<u32>,
    pub jitter_ms: Option<u32>,
    pub error_rate: Option<f64>,
    /// Worker pool size (0: the size the service started with).
    pub workers: Option<u32>,
}

impl FaultChange {
    /// Whether it changes nothing.
    pub fn is_empty(&self) -> bool {
        *self == FaultChange::default()
    }

    /// `current` with this change applied.
    pub fn apply(&self, current: Faults) -> Faults {
        let mut f = if self.clear {
            Faults::default()
        } else {
            current
        };
        if let Some(v) = self.stall {
            f.stall = v;
        }
        if let Some(v) = self.delay_ms {
            f.delay_ms = v;
        }
        if let Some(v) = self.jitter_ms {
            f.jitter_ms = v;
        }
        if let Some(v) = self.error_rate {
            f.error_rate = v;
        }
        if let Some(v) = self.workers {
            f.workers = v;
        }
        f
    }
}

/// One line describing `f`.
pub fn describe(f: &Faults) -> String {
    format!(
        "delay_ms={} jitter_ms={} error_rate={} stall={} workers={}",
        f.delay_ms, f.jitter_ms, f.error_rate, f.stall, f.workers
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use sluice_proto::pb::control_server::{self, ControlServer};
    use std::sync::Mutex;
    use tonic::{Request, Response, Status};

    /// A Control service holding faults in memory, refusing calls without `Bearer secret`.
    #[derive(Default)]
    struct Faulty(Mutex<Faults>);

    fn authorized<T>(request: &Request<T>) -> Result<(), Status> {
        match request.metadata().get("authorization") {
            Some(v) if v == "Bearer secret" => Ok(()),
            _ => Err(Status::unauthenticated("no token")),
        }
    }

    #[tonic::async_trait]
    impl control_server::Control for Faulty {
        async fn set_faults(&self, request: Request<Faults>) -> Result<Response<Faults>, Status> {
            authorized(&request)?;
            let mut f = self.0.lock().unwrap();
            *f = request.into_inner();
            Ok(Response::new(*f))
        }

        async fn get_faults(
            &self,
            request: Request<GetFaultsRequest>,
        ) -> Result<Response<Faults>, Status> {
            authorized(&request)?;
            Ok(Response::new(*self.0.lock().unwrap()))
        }
    }

    #[tokio::test]
    async fn presents_the_token_and_changes_on_top_of_what_is_in_force() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(ControlServer::new(Faulty::default()))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let mut anonymous = Control::connect(&url, None).await.unwrap();
        let refused = anonymous.get().await.unwrap_err().to_string();
        assert!(
            refused.contains("GetFaults on http://") && refused.contains("Unauthenticated"),
            "{refused}"
        );
        let mut control = Control::connect(&url, Some("secret")).await.unwrap();
        let slow = FaultChange {
            delay_ms: Some(20),
            ..Default::default()
        };
        assert_eq!(control.change(&slow).await.unwrap().delay_ms, 20);
        let stall = FaultChange {
            stall: Some(true),
            ..Default::default()
        };
        let now = control.change(&stall).await.unwrap();
        assert!(now.stall && now.delay_ms == 20, "{}", describe(&now));
        assert_eq!(control.get().await.unwrap(), now);
    }

    #[test]
    fn applies_changes_on_top_of_current() {
        let current = Faults {
            delay_ms: 5,
            stall: true,
            ..Default::default()
        };
        let resume = FaultChange {
            stall: Some(false),
            workers: Some(3),
            ..Default::default()
        };
        assert_eq!(
            resume.apply(current),
            Faults {
                delay_ms: 5,
                stall: false,
                workers: 3,
                ..Default::default()
            }
        );
        let clear = FaultChange {
            clear: true,
            error_rate: Some(0.5),
            ..Default::default()
        };
        assert_eq!(
            clear.apply(current),
            Faults {
                error_rate: 0.5,
                ..Default::default()
            }
        );
        assert!(FaultChange::default().is_empty());
        assert!(!clear.is_empty());
    }
}
