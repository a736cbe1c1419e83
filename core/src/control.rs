//! `mesh.v1.Control`: fault injection over gRPC, guarded by a bearer token (see
//! [`crate::admin_token`] for where it comes from; only `--insecure-no-auth` turns it off).
//!
//! Every service serves it over the same [`WorkerPool`] that does its work, so `stall`,
//! `workers`, `delay_ms`, `jitter_ms` and `error_rate` act exactly where real slowness would.

use std::sync::Arc;

use sluice_proto::pb::control_server::{Control, ControlServer};
use sluice_proto::pb::{Faults, GetFaultsRequest};
use subtle::ConstantTimeEq;
use tonic::service::Interceptor;
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::admin_token::AdminAuth;
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

/// Requires `authorization: Bearer <token>` unless authentication is explicitly off
/// (`token: None`, from `--insecure-no-auth`).
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
            // subtle: the comparison takes the same time wherever the first difference is,
            // so response timing does not reveal how much of a guess was right.
            Some(p) if bool::from(p.as_bytes().ct_eq(token.as_bytes())) => Ok(request),
            Some(_) => Err(Status::unauthenticated("wrong admin token")),
            None => Err(Status::unauthenticated(
                "Control needs `authorization: Bearer <token>` (the service's --admin-token, or the file named admin_token_file in its ready line)",
            )),
        }
    }
}

/// The Control server for `pool`, guarded as `auth` says.
pub fn server(
    pool: WorkerPool,
    auth: &AdminAuth,
) -> InterceptedService<ControlServer<ControlService>, BearerAuth> {
    let token = auth.token().map(Arc::from);
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
        for wrong in ["Bearer s3cre", "Bearer s3cret2", "Bearer S3cret", "s3cret"] {
            let mut r = Request::new(());
            r.metadata_mut()
                .insert("authorization", wrong.parse().unwrap());
            assert!(guarded.call(r).is_err(), "{wrong}");
        }
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", "Bearer s3cret".parse().unwrap());
        assert!(guarded.call(r).is_ok());
    }
}
