//! The Control API's bearer token: where it comes from, and a generated one when none is set.
//!
//! Control can stall a service, so it is never open by accident. In order:
//!
//! 1. `--admin-token` / `SLUICE_ADMIN_TOKEN`: the token itself (tests, scripts).
//! 2. `--admin-token-file` / `SLUICE_ADMIN_TOKEN_FILE`: a file holding it (compose: an init
//!    container writes a random token into a shared volume, every container reads it).
//! 3. Neither: the service generates a random token (128 bits, 32 hex characters) and writes
//!    it, mode 0600, to `<data-dir>/admin-token` when the service has a data directory
//!    (logging), else to `admin-token` in a fresh directory `sluice-<service>-<pid>-XXXXXX`
//!    (mode 0700, random suffix so nobody can create it first) under `$XDG_RUNTIME_DIR`, or
//!    the system temporary directory when that is unset. The path is in the ready line
//!    (`admin_token_file=<path>`); the file is removed when the service exits cleanly.
//! 4. `--insecure-no-auth` / `SLUICE_INSECURE_NO_AUTH`: no token; anyone who reaches the
//!    port may call Control. Only ever explicit, and it conflicts with 1 and 2.

use std::io::Write;
use std::path::{Path, PathBuf};

use rand::TryRngCore;

/// Name of the file a generated token is written to.
pub const TOKEN_FILE_NAME: &str = "admin-token";
/// Random bytes in a generated token (hex-encoded: twice as many characters).
pub const GENERATED_TOKEN_BYTES: usize = 16;

/// Flags that say how the Control API authenticates callers.
#[derive(Debug, Clone, Default, clap::Args)]
pub struct AdminTokenArgs {
    /// Bearer token the Control (fault injection) API requires. Without it (and without
    /// --admin-token-file or --insecure-no-auth) the service generates one and writes it to
    /// the file named in its ready line.
    #[arg(
        long,
        env = "SLUICE_ADMIN_TOKEN",
        hide_env_values = true,
        conflicts_with_all = ["admin_token_file", "insecure_no_auth"]
    )]
    pub admin_token: Option<String>,
    /// File holding the Control API's bearer token (surrounding whitespace ignored).
    #[arg(
        long,
        env = "SLUICE_ADMIN_TOKEN_FILE",
        conflicts_with = "insecure_no_auth"
    )]
    pub admin_token_file: Option<PathBuf>,
    /// Serve the Control API without authentication: anyone who reaches the port can stall
    /// the service. For local experiments only.
    #[arg(long, env = "SLUICE_INSECURE_NO_AUTH", default_value_t = false)]
    pub insecure_no_auth: bool,
    /// Directory a generated token goes to instead of a fresh runtime directory (the
    /// logging service points it at its data directory). Not a flag.
    #[arg(skip)]
    pub generated_dir: Option<PathBuf>,
}

/// Why no token could be settled on.
#[derive(Debug, thiserror::Error)]
pub enum AdminTokenError {
    // `error`, not `source`: the message says it already, so error chains do not repeat it.
    #[error("cannot read the token file {path}: {error}")]
    Read {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error(
        "cannot write the generated admin token to {path}: {error} (set --admin-token-file, or --insecure-no-auth)"
    )]
    Write {
        path: PathBuf,
        error: std::io::Error,
    },
    #[error("{what} is not a usable token: {reason}")]
    Invalid { what: String, reason: &'static str },
    #[error("cannot generate a random admin token: {0}")]
    Random(String),
}

/// How the Control API authenticates, once settled.
#[derive(Debug)]
pub enum AdminAuth {
    /// Calls need `authorization: Bearer <token>`.
    Token {
        token: String,
        /// Where a client can read the token, when it is in a file.
        file: Option<PathBuf>,
        /// Removes a generated token's file (and directory) on drop.
        _generated: Option<Generated>,
    },
    /// `--insecure-no-auth`.
    Disabled,
}

impl AdminAuth {
    /// The token required, if any.
    pub fn token(&self) -> Option<&str> {
        match self {
            AdminAuth::Token { token, .. } => Some(token),
            AdminAuth::Disabled => None,
        }
    }

    /// The file a client can read the token from (given or generated), if any.
    pub fn token_file(&self) -> Option<&Path> {
        match self {
            AdminAuth::Token { file, .. } => file.as_deref(),
            AdminAuth::Disabled => None,
        }
    }
}

/// A generated token's file; removed on drop.
#[derive(Debug)]
pub enum Generated {
    /// In the service's own directory: only the file is ours.
    File(PathBuf),
    /// In a directory created for it.
    Dir(tempfile::TempDir),
}

impl Drop for Generated {
    fn drop(&mut self) {
        if let Generated::File(path) = self {
            let _ = std::fs::remove_file(path);
        }
    }
}

impl AdminTokenArgs {
    /// These flags, with a generated token written to `dir/admin-token` instead of a fresh
    /// runtime directory (a service with a data directory keeps it there).
    pub fn generate_in(mut self, dir: &Path) -> Self {
        self.generated_dir = Some(dir.to_path_buf());
        self
    }

    /// Settles on how Control authenticates; generates and writes a token when none is
    /// configured. `service` names the runtime directory (e.g. `risk`).
    pub fn resolve(&self, service: &str) -> Result<AdminAuth, AdminTokenError> {
        if self.insecure_no_auth {
            return Ok(AdminAuth::Disabled);
        }
        if let Some(token) = &self.admin_token {
            return Ok(AdminAuth::Token {
                token: checked(token, "--admin-token")?.to_string(),
                file: None,
                _generated: None,
            });
        }
        if let Some(path) = &self.admin_token_file {
            let token = read_token_file(path)?;
            return Ok(AdminAuth::Token {
                token,
                file: Some(path.clone()),
                _generated: None,
            });
        }
        let token = generate()?;
        let generated = match &self.generated_dir {
            Some(dir) => {
                let path = dir.join(TOKEN_FILE_NAME);
                write_token_file(&path, &token)?;
                Generated::File(path)
            }
            None => {
                let base = std::env::var_os("XDG_RUNTIME_DIR")
                    .map(PathBuf::from)
                    .filter(|d| d.is_dir())
                    .unwrap_or_else(std::env::temp_dir);
                let prefix = format!("sluice-{service}-{}-", std::process::id());
                let mut builder = tempfile::Builder::new();
                builder.prefix(&prefix);
                #[cfg(unix)]
                {
                    use std::os::unix::fs::PermissionsExt;
                    // Private to this user: the token is readable only through it.
                    builder.permissions(std::fs::Permissions::from_mode(0o700));
                }
                let dir = builder
                    .tempdir_in(&base)
                    .map_err(|error| AdminTokenError::Write {
                        path: base.clone(),
                        error,
                    })?;
                write_token_file(&dir.path().join(TOKEN_FILE_NAME), &token)?;
                Generated::Dir(dir)
            }
        };
        let file = match &generated {
            Generated::File(path) => path.clone(),
            Generated::Dir(dir) => dir.path().join(TOKEN_FILE_NAME),
        };
        Ok(AdminAuth::Token {
            token,
            file: Some(file),
            _generated: Some(generated),
        })
    }
}

/// Reads a token from `path` (surrounding whitespace ignored), for servers and clients alike.
pub fn read_token_file(path: &Path) -> Result<String, AdminTokenError> {
    let text = std::fs::read_to_string(path).map_err(|error| AdminTokenError::Read {
        path: path.to_path_buf(),
        error,
    })?;
    Ok(checked(text.trim(), &path.display().to_string())?.to_string())
}

/// A fresh random token: [`GENERATED_TOKEN_BYTES`] bytes from the OS, hex-encoded.
pub fn generate() -> Result<String, AdminTokenError> {
    let mut bytes = [0u8; GENERATED_TOKEN_BYTES];
    rand::rngs::OsRng
        .try_fill_bytes(&mut bytes)
        .map_err(|e| AdminTokenError::Random(e.to_string()))?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}

/// Writes `token` to `path` with mode 0600, replacing any previous file atomically (a reader
/// sees the old token or the new one, never half of one).
pub fn write_token_file(path: &Path, token: &str) -> Result<(), AdminTokenError> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    let write = || -> std::io::Result<()> {
        // NamedTempFile is created 0600 with a random name in the same directory.
        let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
        writeln!(tmp, "{token}")?;
        tmp.as_file().sync_all()?;
        tmp.persist(path).map_err(|e| e.error)?;
        Ok(())
    };
    write().map_err(|error| AdminTokenError::Write {
        path: path.to_path_buf(),
        error,
    })
}

/// A token must fit in an `authorization` header: printable ASCII, no spaces.
fn checked<'a>(token: &'a str, what: &str) -> Result<&'a str, AdminTokenError> {
    let invalid = |reason| AdminTokenError::Invalid {
        what: what.to_string(),
        reason,
    };
    if token.is_empty() {
        return Err(invalid("it is empty"));
    }
    if !token.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(invalid("only printable ASCII without spaces is allowed"));
    }
    Ok(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct Cli {
        #[command(flatten)]
        auth: AdminTokenArgs,
    }

    fn parse(args: &[&str]) -> Result<AdminTokenArgs, clap::Error> {
        Cli::try_parse_from(std::iter::once("x").chain(args.iter().copied())).map(|c| c.auth)
    }

    #[cfg(unix)]
    fn mode(path: &Path) -> u32 {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn explicit_token_file_or_insecure() {
        let auth = parse(&["--admin-token", "s3cret"])
            .unwrap()
            .resolve("t")
            .unwrap();
        assert_eq!(auth.token(), Some("s3cret"));
        assert_eq!(auth.token_file(), None);

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "  from-file\n").unwrap();
        let auth = parse(&["--admin-token-file", file.to_str().unwrap()])
            .unwrap()
            .resolve("t")
            .unwrap();
        assert_eq!(auth.token(), Some("from-file"));
        assert_eq!(auth.token_file(), Some(file.as_path()));

        let auth = parse(&["--insecure-no-auth"])
            .unwrap()
            .resolve("t")
            .unwrap();
        assert!(matches!(auth, AdminAuth::Disabled));

        assert!(parse(&["--admin-token", "a", "--insecure-no-auth"]).is_err());
        assert!(parse(&["--admin-token", "a", "--admin-token-file", "f"]).is_err());
        assert!(parse(&["--admin-token-file", "f", "--insecure-no-auth"]).is_err());
    }

    #[test]
    fn unusable_tokens_are_refused() {
        for bad in ["", "two words", "tab\there", "é"] {
            let err = parse(&["--admin-token", bad])
                .unwrap()
                .resolve("t")
                .unwrap_err();
            assert!(matches!(err, AdminTokenError::Invalid { .. }), "{bad:?}");
        }
        let dir = tempfile::tempdir().unwrap();
        let empty = dir.path().join("empty");
        std::fs::write(&empty, "\n").unwrap();
        let args = AdminTokenArgs {
            admin_token_file: Some(empty),
            ..Default::default()
        };
        assert!(matches!(
            args.resolve("t"),
            Err(AdminTokenError::Invalid { .. })
        ));
        let args = AdminTokenArgs {
            admin_token_file: Some(dir.path().join("missing")),
            ..Default::default()
        };
        assert!(matches!(
            args.resolve("t"),
            Err(AdminTokenError::Read { .. })
        ));
    }

    #[test]
    fn generated_into_a_private_runtime_directory_and_removed_on_drop() {
        let auth = AdminTokenArgs::default().resolve("test").unwrap();
        let token = auth.token().unwrap().to_string();
        assert_eq!(token.len(), 2 * GENERATED_TOKEN_BYTES);
        assert!(token.bytes().all(|b| b.is_ascii_hexdigit()));
        let file = auth.token_file().unwrap().to_path_buf();
        assert_eq!(read_token_file(&file).unwrap(), token);
        let dir = file.parent().unwrap().to_path_buf();
        let name = dir.file_name().unwrap().to_str().unwrap().to_string();
        assert!(
            name.starts_with(&format!("sluice-test-{}-", std::process::id())),
            "{name}"
        );
        #[cfg(unix)]
        {
            assert_eq!(mode(&file), 0o600);
            assert_eq!(mode(&dir), 0o700);
        }
        let other = AdminTokenArgs::default().resolve("test").unwrap();
        assert_ne!(other.token(), Some(token.as_str()), "tokens are random");
        drop(auth);
        assert!(!dir.exists());
    }

    #[test]
    fn generated_into_the_data_directory() {
        let data = tempfile::tempdir().unwrap();
        std::fs::write(data.path().join(TOKEN_FILE_NAME), "stale\n").unwrap();
        let args = AdminTokenArgs {
            generated_dir: Some(data.path().to_path_buf()),
            ..Default::default()
        };
        let auth = args.resolve("logging").unwrap();
        let file = data.path().join(TOKEN_FILE_NAME);
        assert_eq!(auth.token_file(), Some(file.as_path()));
        assert_eq!(read_token_file(&file).unwrap(), auth.token().unwrap());
        #[cfg(unix)]
        assert_eq!(mode(&file), 0o600);
        drop(auth);
        assert!(!file.exists());
        assert!(data.path().exists());
    }
}
