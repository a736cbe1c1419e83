//! `mesh.v1.Control`: fault injection over gRPC, guarded by an optional bearer token.
//!
//! Every service serves it over the same [`WorkerPool`] that does its work, so `stall`,
//! `workers`, `delay_ms`, `jitter_ms` and `error_rate` act exactly where real slowness would.

use std::sync::Arc;

use sluice_proto::pb::control_server::{Control, ControlServer};
use sluice_proto::pb::{Faults, GetFaultsRequest};
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::worker_pool::{MAX_WORKERS, WorkerPool};

/// Largest `delay_ms` / `jitter_ms` accepted.
pub const MAX_DELAY_MS: u32 = 60_000;

/// Checks a `Faults` message; the error names the field.
pub fn validate(f: &Faults) -> Result<(), Status> {
    let bad = |field: &str, rule: &str| Err(Status::invalid_argument(format!("{field}: {rule}")));
    if f.delay_ms > MAX_DELAY_MS {
        return bad("delay_ms", "must be 0-60000");
    }
    if f.jitter_ms > MAX_DELAY_MS {
        return bad("jitter_ms", "must be 0-60000");
    }
    if !(0.0..=1.0).contains(&f.error_rate) {
        return bad("error_rate", "must be between 0 and 1");
    }
    if f.workers as usize > MAX_WORKERS {
        return bad("workers", "must be 0 (the configured size) to 10000");
    }
    Ok(())
}

/// The Control service over one pool.
pub struct ControlService {
    pool: WorkerPool,
}

#[tonic::async_trait]
impl Control for ControlService {
    async fn set_faults(&self, request: Request<Faults>) -> Result<Response<Faults>, Status> {
        let faults = request.into_inner();
        validate(&faults)?;
        Ok(Response::new(self.pool.set_faults(faults)))
    }

    async fn get_faults(&self, _: Request<GetFaultsRequest>) -> Result<Response<Faults>, Status> {
        Ok(Response::new(self.pool.faults()))
    }
}

/// Requires `authorization: Bearer <token>` when a token is configured.
#[derive(Clone)]
pub struct BearerAuth {
    token: Option<Arc<str>>,
}

impl Interceptor for BearerAuth {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else {
            return Ok(request);
        };
        let presented = request
            .metadata()
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "));
        match presented {
            Some(p) if constant_time_eq(p.as_bytes(), token.as_bytes()) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong admin token")),
            None => Err(Status::unauthenticated(
                "Control needs `authorization: Bearer <token>` (the service's --admin-token)",
            )),
        }
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Control server for `pool`, guarded by `token` when set.
pub fn server(
    pool: WorkerPool,
    token: Option<String>,
) -> InterceptedService<ControlServer<ControlService>, BearerAuth> {
    let token = token.filter(|t| !t.is_empty()).map(Arc::from);
    ControlServer::with_interceptor(ControlService { pool }, BearerAuth { token })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_field() {
        assert!(validate(&Faults::default()).is_ok());
        let field = |f: Faults| {
            validate(&f)
                .unwrap_err()
                .message()
                .split(':')
                .next()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            field(Faults {
                delay_ms: 60_001,
                ..Default::default()
            }),
            "delay_ms"
        );
        assert_eq!(
            field(Faults {
                jitter_ms: 70_000,
                ..Default::default()
            }),
            "jitter_ms"
        );
        assert_eq!(
            field(Faults {
                error_rate: 1.5,
                ..Default::default()
            }),
            "error_rate"
        );
        assert_eq!(
            field(Faults {
                error_rate: f64::NAN,
                ..Default::default()
            }),
            "error_rate"
        );
        assert_eq!(
            field(Faults {
                workers: 10_001,
                ..Default::default()
            }),
            "workers"
        );
    }

    #[test]
    fn bearer_token() {
        let mut open = BearerAuth { token: None };
        assert!(open.call(Request::new(())).is_ok());
        let mut guarded = BearerAuth {
            token: Some(Arc::from("s3cret")),
        };
        assert_eq!(
            guarded.call(Request::new(())).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer nope".parse().unwrap());
        assert_eq!(
            guarded.call(r).unwrap_err().code(),
            tonic::Code::Unauthenticated
        );
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(guarded.call(r).is_ok());
    }
}
