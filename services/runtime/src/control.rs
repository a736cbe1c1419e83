//! `mesh.v1.Control`: fault injection over gRPC, guarded by a bearer token (see
//! [`sluice_core::admin_token`] for where it comes from; only `--insecure-no-auth` turns it
//! off).
//!
//! Every service serves it over the same [`WorkerPool`] that does its work, so the faults
//! act exactly where real slowness would: `stall` and `workers` in the pool (they are about
//! reading), `delay_ms`, `jitter_ms` and `error_rate` in the [fault layer](crate::faults)
//! around the work.

use sluice_core::admin_token::AdminAuth;
use sluice_core::auth::RequireBearer;
use sluice_proto::pb::control_server::{Control, ControlServer};
use sluice_proto::pb::{Faults, GetFaultsRequest};
use tonic::service::interceptor::InterceptedService;
use tonic::{Request, Response, Status};

use crate::pool::{MAX_WORKERS, WorkerPool};

/// Largest `delay_ms` / `jitter_ms` accepted: a minute per message is already far past any
/// deadline the gateway sets.
pub const MAX_DELAY_MS: u32 = 60_000;

/// Checks a `Faults` message; the error names the field.
pub fn validate(f: &Faults) -> Result<(), Status> {
    let bad = |field: &str, rule: String| Err(Status::invalid_argument(format!("{field}: {rule}")));
    if f.delay_ms > MAX_DELAY_MS {
        return bad("delay_ms", format!("must be 0-{MAX_DELAY_MS}"));
    }
    if f.jitter_ms > MAX_DELAY_MS {
        return bad("jitter_ms", format!("must be 0-{MAX_DELAY_MS}"));
    }
    if !(0.0..=1.0).contains(&f.error_rate) {
        return bad("error_rate", "must be between 0 and 1".into());
    }
    if f.workers as usize > MAX_WORKERS {
        return bad(
            "workers",
            format!("must be 0 (the configured size) to {MAX_WORKERS}"),
        );
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

/// The Control server for `pool`, guarded as `auth` says.
pub fn server(
    pool: WorkerPool,
    auth: &AdminAuth,
) -> InterceptedService<ControlServer<ControlService>, RequireBearer> {
    let guard = RequireBearer::new(
        auth.token().map(str::to_string),
        "the service's --admin-token, or the file named admin_token_file in its ready line",
    );
    ControlServer::with_interceptor(ControlService { pool }, guard)
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
        use tonic::service::Interceptor;
        let mut open = RequireBearer::new(None, "--admin-token");
        assert!(open.call(Request::new(())).is_ok());
        let mut guarded = RequireBearer::new(Some("s3cret".into()), "--admin-token");
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
