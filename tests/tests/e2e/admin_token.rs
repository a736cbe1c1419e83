//! The Control API is never open by default: without a configured token a service generates
//! one, writes it (0600) where its ready line says, and removes it on exit;
//! `--insecure-no-auth` is the only way to turn authentication off.

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use sluice_proto::pb::GetFaultsRequest;
use sluice_proto::pb::control_client::ControlClient;
use sluice_tests::{Proc, bin_dir};
use tonic::Code;

fn spawn(bin: &str, extra: &[&str]) -> Proc {
    let mut args = vec!["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"];
    args.extend_from_slice(extra);
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    Proc::spawn(bin_dir(), bin, &args).expect("start the service")
}

/// Runs `sluice-loadgen fault --target <url>` with `args` and `env`; (success, stdout+stderr).
fn fault_cli(url: &str, args: &[&str], env: &[(&str, &str)]) -> (bool, String) {
    let out = std::process::Command::new(bin_dir().join("sluice-loadgen"))
        .args(["fault", "--target", url])
        .args(args)
        .env_remove("SLUICE_ADMIN_TOKEN")
        .env_remove("SLUICE_ADMIN_TOKEN_FILE")
        .envs(env.iter().copied())
        .output()
        .expect("run sluice-loadgen fault");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_a_token_a_service_generates_one_and_names_its_file() {
    let mut risk = spawn("sluice-risk", &[]);
    let file = risk
        .admin_token_file
        .clone()
        .expect("the ready line names the token file");
    let token = std::fs::read_to_string(&file).expect("token file readable");
    let token = token.trim();
    assert!(
        token.len() >= 32 && token.bytes().all(|b| b.is_ascii_hexdigit()),
        "{token:?}"
    );
    assert_eq!(
        std::fs::metadata(&file).unwrap().permissions().mode() & 0o777,
        0o600
    );

    // No token, no Control.
    let mut control = ControlClient::connect(risk.url()).await.unwrap();
    let refused = control.get_faults(GetFaultsRequest {}).await.unwrap_err();
    assert_eq!(refused.code(), Code::Unauthenticated);

    // The CLI reads the file, by flag or environment.
    let url = risk.url();
    let path = file.to_str().unwrap();
    let (ok, out) = tokio::task::block_in_place(|| fault_cli(&url, &["--stall"], &[]));
    assert!(!ok && out.contains("Unauthenticated"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| {
        fault_cli(&url, &["--admin-token-file", path, "--stall"], &[])
    });
    assert!(ok && out.contains("stall=true"), "{out}");
    let (ok, out) = tokio::task::block_in_place(|| {
        fault_cli(&url, &["--unstall"], &[("SLUICE_ADMIN_TOKEN_FILE", path)])
    });
    assert!(ok && out.contains("stall=false"), "{out}");

    // A clean exit removes the generated token.
    risk.sigterm().unwrap();
    let status = tokio::task::block_in_place(|| risk.wait_exit(Duration::from_secs(15)));
    assert!(status.expect("exited").success());
    assert!(!file.exists(), "{} left behind", file.display());
    assert!(!file.parent().unwrap().exists(), "its directory too");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logging_keeps_a_generated_token_beside_its_audit_log() {
    let data = tempfile::tempdir().unwrap();
    let logging = spawn(
        "sluice-logging",
        &["--data-dir", data.path().to_str().unwrap()],
    );
    assert_eq!(
        logging.admin_token_file.as_deref(),
        Some(data.path().join("admin-token").as_path())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_token_file_is_read_and_insecure_no_auth_is_explicit() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("token");
    std::fs::write(&file, "from-a-file\n").unwrap();
    let risk = spawn(
        "sluice-risk",
        &["--admin-token-file", file.to_str().unwrap()],
    );
    assert_eq!(risk.admin_token_file.as_deref(), Some(file.as_path()));
    let url = risk.url();
    let (ok, out) =
        tokio::task::block_in_place(|| fault_cli(&url, &["--token", "from-a-file"], &[]));
    assert!(ok, "{out}");

    let open = spawn("sluice-notification", &["--insecure-no-auth"]);
    assert_eq!(open.admin_token_file, None);
    let mut control = ControlClient::connect(open.url()).await.unwrap();
    control
        .get_faults(GetFaultsRequest {})
        .await
        .expect("no token needed when auth is explicitly off");

    // A bad configuration is a configuration error (exit 64), not a silently open API.
    let out = std::process::Command::new(bin_dir().join("sluice-risk"))
        .args(["--listen", "127.0.0.1:0", "--admin-listen", "127.0.0.1:0"])
        .args(["--admin-token-file", "/nonexistent/sluice-token"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(64),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
