//! Bearer-token checks for gRPC services inside the mesh: one interceptor for both tokens.
//!
//! - The admin token guards `mesh.v1.Control` (fault injection; see [`crate::admin_token`]).
//! - The mesh token (`--mesh-token`, `SLUICE_MESH_TOKEN`) guards data-path RPCs that only the
//!   gateway and operator tools should call (the audit log's `Append` and `Read`): without
//!   it, anyone who reaches a service port could write records the gateway would later point
//!   clients at.
//!
//! Tokens are compared in constant time.

use std::sync::Arc;

use tonic::metadata::{AsciiMetadataValue, MetadataMap};
use tonic::service::Interceptor;
use tonic::{Request, Status};

/// Requires `authorization: Bearer <token>` on every call when a token is set; lets every
/// call through when none is.
#[derive(Clone)]
pub struct RequireBearer {
    token: Option<Arc<str>>,
    /// Where a caller finds the token (a flag, a file), for the error message.
    hint: &'static str,
}

impl RequireBearer {
    /// Requires `token` when it is `Some` and not empty; `hint` tells a refused caller where
    /// the token comes from.
    pub fn new(token: Option<String>, hint: &'static str) -> Self {
        Self {
            token: token.filter(|t| !t.is_empty()).map(Into::into),
            hint,
        }
    }
}

impl Interceptor for RequireBearer {
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
            Some(p) if tokens_match(p, token) => Ok(request),
            Some(_) => Err(Status::unauthenticated(format!(
                "wrong token ({})",
                self.hint
            ))),
            None => Err(Status::unauthenticated(format!(
                "this call needs `authorization: Bearer <token>` ({})",
                self.hint
            ))),
        }
    }
}

/// Constant-time comparison (`subtle`): the time taken does not depend on where the first
/// difference is, so response timing does not reveal how much of a guess was right.
pub fn tokens_match(presented: &str, expected: &str) -> bool {
    use subtle::ConstantTimeEq;
    presented.as_bytes().ct_eq(expected.as_bytes()).into()
}

/// The `authorization` value that presents `token`, or `None` for no token. Fails when the
/// token is not valid header text.
pub fn bearer(token: Option<&str>) -> Result<Option<AsciiMetadataValue>, String> {
    match token.filter(|t| !t.is_empty()) {
        None => Ok(None),
        Some(t) => format!("Bearer {t}")
            .parse()
            .map(Some)
            .map_err(|_| "the token must be printable ASCII".to_string()),
    }
}

/// Adds `authorization` to `metadata` when a value is given.
pub fn insert(metadata: &mut MetadataMap, value: Option<&AsciiMetadataValue>) {
    if let Some(v) = value {
        metadata.insert("authorization", v.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(auth: &mut RequireBearer, header: Option<&str>) -> Result<(), tonic::Code> {
        let mut r = Request::new(());
        if let Some(h) = header {
            r.metadata_mut().insert("authorization", h.parse().unwrap());
        }
        auth.call(r).map(|_| ()).map_err(|s| s.code())
    }

    #[test]
    fn checks_only_when_configured() {
        let mut open = RequireBearer::new(None, "--mesh-token");
        assert_eq!(call(&mut open, None), Ok(()));
        let mut guarded = RequireBearer::new(Some("s3cret".into()), "--mesh-token");
        assert_eq!(call(&mut guarded, None), Err(tonic::Code::Unauthenticated));
        assert_eq!(
            call(&mut guarded, Some("Bearer nope")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(
            call(&mut guarded, Some("s3cret")),
            Err(tonic::Code::Unauthenticated)
        );
        assert_eq!(call(&mut guarded, Some("Bearer s3cret")), Ok(()));
        let value = bearer(Some("s3cret")).unwrap();
        assert_eq!(value.unwrap().to_str().unwrap(), "Bearer s3cret");
        assert!(bearer(Some("bad\ntoken")).is_err());
    }
}
