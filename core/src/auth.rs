//! Bearer-token checks for gRPC services inside the mesh: one interceptor for both tokens.
//!
//! - The admin token guards `mesh.v1.Control` (fault injection; see [`crate::admin_token`]).
//! - The mesh token (`--mesh-token` / `SLUICE_MESH_TOKEN`, or `--mesh-token-file` /
//!   `SLUICE_MESH_TOKEN_FILE`: [`MeshTokenArgs`]) guards data-path RPCs that only the gateway
//!   and operator tools should call (the audit log's `Append` and `Read`): without it, anyone
//!   who reaches a service port could write records the gateway would later point clients
//!   at, and read every account. The shipped deployments generate one and share it as a file.
//!
//! Tokens are compared in constant time.

use std::path::PathBuf;
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

/// Where the mesh token comes from: the token itself, or a file holding it (compose and
/// Kubernetes mount a generated one). Shared by every binary that serves or calls the audit
/// log, so the flags read the same everywhere.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct MeshTokenArgs {
    /// The mesh token: the audit log requires it (`authorization: Bearer <token>`) on Append
    /// and Read; the gateway and `sluice-loadgen verify` present it. Empty = unset. Wins
    /// over --mesh-token-file.
    #[arg(long, env = "SLUICE_MESH_TOKEN", hide_env_values = true)]
    pub mesh_token: Option<String>,
    /// File holding the mesh token (surrounding whitespace ignored), e.g. the one
    /// `sluice-loadgen gen-token --out FILE` writes. Empty = unset.
    #[arg(long, env = "SLUICE_MESH_TOKEN_FILE", value_parser = any_path)]
    pub mesh_token_file: Option<PathBuf>,
}

/// A path, the empty one included (clap's own path parser refuses it; here it means unset).
fn any_path(s: &str) -> Result<PathBuf, std::convert::Infallible> {
    Ok(PathBuf::from(s))
}

impl MeshTokenArgs {
    /// The token (`None` when neither flag gives one); fails when the file cannot be read
    /// or holds no usable token.
    pub fn resolve(&self) -> Result<Option<String>, crate::admin_token::AdminTokenError> {
        if let Some(token) = self.mesh_token.as_ref().filter(|t| !t.is_empty()) {
            return Ok(Some(token.clone()));
        }
        match self
            .mesh_token_file
            .as_ref()
            .filter(|p| !p.as_os_str().is_empty())
        {
            Some(path) => crate::admin_token::read_token_file(path).map(Some),
            None => Ok(None),
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

    #[test]
    fn the_mesh_token_comes_from_the_flag_or_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("mesh-token");
        std::fs::write(&file, "  f1le-token\n").unwrap();
        let args = |token: Option<&str>, file: Option<&std::path::Path>| MeshTokenArgs {
            mesh_token: token.map(Into::into),
            mesh_token_file: file.map(Into::into),
        };
        assert_eq!(args(None, None).resolve().unwrap(), None);
        assert_eq!(args(Some(""), None).resolve().unwrap(), None);
        assert_eq!(
            args(Some("t"), None).resolve().unwrap().as_deref(),
            Some("t")
        );
        assert_eq!(
            args(None, Some(&file)).resolve().unwrap().as_deref(),
            Some("f1le-token")
        );
        assert_eq!(
            args(None, Some(std::path::Path::new("")))
                .resolve()
                .unwrap(),
            None
        );
        let missing = args(None, Some(&dir.path().join("absent"))).resolve();
        assert!(missing.unwrap_err().to_string().contains("absent"));
        assert_eq!(
            args(Some("flag"), Some(&file))
                .resolve()
                .unwrap()
                .as_deref(),
            Some("flag"),
            "the token itself wins over a file"
        );
        // Through clap: an empty file path is unset, not a usage error.
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            mesh: MeshTokenArgs,
        }
        use clap::Parser as _;
        let cli = Cli::try_parse_from(["t", "--mesh-token-file", ""]).unwrap();
        assert_eq!(cli.mesh.resolve().unwrap(), None);
    }
}
