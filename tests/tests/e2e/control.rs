//! The Control (fault injection) API: token, validation, the CLI.

use sluice_proto::pb::control_client::ControlClient;
use sluice_proto::pb::{Faults, GetFaultsRequest};
use sluice_tests::{Proc, bin_dir};
use tonic::Code;

fn with_token<T>(message: T, token: Option<&str>) -> tonic::Request<T> {
    let mut r = tonic::Request::new(message);
    if let Some(t) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {t}").parse().unwrap());
    }
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn control_requires_the_token_and_rejects_bad_values() {
    let args: Vec<String> = [
        "--listen",
        "127.0.0.1:0",
        "--admin-listen",
        "127.0.0.1:0",
        "--admin-token",
        "s3cret",
        "--workers",
        "8",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    let risk = Proc::spawn(bin_dir(), "sluice-risk", &args).unwrap();
    let mut control = ControlClient::connect(risk.url()).await.unwrap();

    for token in [None, Some("wrong")] {
        let status = control
            .get_faults(with_token(GetFaultsRequest {}, token))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated, "{token:?}");
        let status = control
            .set_faults(with_token(
                Faults {
                    stall: true,
                    ..Default::default()
                },
                token,
            ))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::Unauthenticated);
    }
    let now = control
        .get_faults(with_token(GetFaultsRequest {}, Some("s3cret")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        now,
        Faults {
            workers: 8,
            ..Default::default()
        }
    );

    let bad = [
        (
            "delay_ms",
            Faults {
                delay_ms: 60_001,
                ..Default::default()
            },
        ),
        (
            "jitter_ms",
            Faults {
                jitter_ms: 100_000,
                ..Default::default()
            },
        ),
        (
            "error_rate",
            Faults {
                error_rate: 1.5,
                ..Default::default()
            },
        ),
        (
            "error_rate",
            Faults {
                error_rate: -0.1,
                ..Default::default()
            },
        ),
        (
            "workers",
            Faults {
                workers: 10_001,
                ..Default::default()
            },
        ),
    ];
    for (field, faults) in bad {
        let status = control
            .set_faults(with_token(faults, Some("s3cret")))
            .await
            .unwrap_err();
        assert_eq!(status.code(), Code::InvalidArgument, "{field}");
        assert!(
            status.message().starts_with(field),
            "{field}: {}",
            status.message()
        );
    }

    let set = Faults {
        delay_ms: 5,
        jitter_ms: 2,
        error_rate: 0.25,
        stall: true,
        workers: 3,
    };
    let now = control
        .set_faults(with_token(set, Some("s3cret")))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(now, set);

    // The CLI reads, changes and prints the faults in force.
    let url = risk.url();
    let cli = |extra: &[&str]| {
        let mut a = vec!["fault", "--target", url.as_str()];
        a.extend_from_slice(extra);
        let out = std::process::Command::new(bin_dir().join("sluice-loadgen"))
            .args(&a)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    let (ok, _, err) = tokio::task::block_in_place(|| cli(&["--unstall"]));
    assert!(!ok && err.contains("Unauthenticated"), "{err}");
    let (ok, out, err) =
        tokio::task::block_in_place(|| cli(&["--token", "s3cret", "--unstall", "--workers", "0"]));
    assert!(ok, "{err}");
    assert!(
        out.contains("delay_ms=5 jitter_ms=2 error_rate=0.25 stall=false workers=8"),
        "{out}"
    );
    let (ok, out, _) = tokio::task::block_in_place(|| cli(&["--token", "s3cret", "--clear"]));
    assert!(ok);
    assert!(
        out.contains("delay_ms=0 jitter_ms=0 error_rate=0 stall=false workers=8"),
        "{out}"
    );
}
