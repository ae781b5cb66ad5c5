//! `grpc.health.v1` of a real `lurk-cs` process, read with tonic-health's client: SERVING
//! once the probe found the token and the store answering, NOT_SERVING as soon as SIGTERM
//! arrives while RPCs are still served, then a clean exit.

use std::time::{Duration, Instant};

use lurk_e2e::DevSetup;
use tonic_health::ServingStatus;

const SERVICE: &str = "lurk.tls13.v1.CryptoService";

#[tokio::test]
async fn serving_then_not_serving_on_sigterm_before_the_listener_closes() {
    let dev = DevSetup::new();
    dev.append_config("[health]\nprobe_interval_ms = 100\nshutdown_delay_ms = 1500\n");
    let mut cs = dev.start();
    let serving = ServingStatus::Serving as i32;
    let not_serving = ServingStatus::NotServing as i32;
    for svc in ["", SERVICE] {
        assert!(
            cs.wait_health(svc, serving, Duration::from_secs(10)).await,
            "{svc:?} never SERVING: {}",
            cs.log()
        );
    }
    // An unknown service name is NOT_FOUND, not SERVING.
    let unknown = cs.health("no.such.Service").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &cs.pid().to_string()])
        .status();
    let t0 = Instant::now();
    assert!(
        cs.wait_health(SERVICE, not_serving, Duration::from_secs(1))
            .await,
        "NOT_SERVING not reported after SIGTERM: {}",
        cs.log()
    );
    // The listener still answered (the status came over a new RPC) during the delay.
    assert!(t0.elapsed() < Duration::from_millis(1500));
    let status = cs
        .terminate(Duration::from_secs(15))
        .expect("lurk-cs exits after the shutdown delay");
    assert!(status.success(), "{status:?}");
    assert!(
        cs.log().contains("NOT_SERVING (shutting down)"),
        "{}",
        cs.log()
    );
}

/// `lurk-cs health` (the Kubernetes exec probe, deploy/kubernetes/): exit 0 and SERVING from
/// a serving CS over mTLS; a failure once it turns NOT_SERVING on SIGTERM, with a client
/// certificate the CS does not trust, and with nothing listening.
#[tokio::test]
async fn the_health_subcommand_is_an_exec_probe() {
    let dev = DevSetup::new();
    dev.append_config("[health]\nprobe_interval_ms = 100\nshutdown_delay_ms = 3000\n");
    let mut cs = dev.start();
    assert!(
        cs.wait_health(
            SERVICE,
            ServingStatus::Serving as i32,
            Duration::from_secs(10)
        )
        .await,
        "never SERVING: {}",
        cs.log()
    );
    let tls = cs.tls_dir();
    let probe_with = |url: &str, cert: &str, extra: &[&str]| {
        std::process::Command::new(lurk_e2e::workspace_bin("lurk-cs"))
            .arg("health")
            .args(extra)
            .args(["--url", url, "--server-name", "localhost", "--ca"])
            .arg(tls.join("ca.pem"))
            .arg("--cert")
            .arg(tls.join(format!("{cert}.pem")))
            .arg("--key")
            .arg(tls.join(format!("{cert}.key")))
            .output()
            .expect("run lurk-cs health")
    };
    let probe = |url: &str, cert: &str| probe_with(url, cert, &[]);
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let ok = probe(&cs.url(), "engine");
    assert!(ok.status.success(), "{}", text(&ok));
    assert!(text(&ok).contains("SERVING"), "{}", text(&ok));

    // A client certificate not issued by the CS's client CA: the mTLS handshake fails.
    let other = tempfile::tempdir().unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let cert = rcgen::CertificateParams::new(vec!["intruder".into()])
        .unwrap()
        .self_signed(&key)
        .unwrap();
    std::fs::write(other.path().join("x.pem"), cert.pem()).unwrap();
    std::fs::write(other.path().join("x.key"), key.serialize_pem()).unwrap();
    let refused = std::process::Command::new(lurk_e2e::workspace_bin("lurk-cs"))
        .arg("health")
        .args(["--url", &cs.url(), "--server-name", "localhost", "--ca"])
        .arg(tls.join("ca.pem"))
        .arg("--cert")
        .arg(other.path().join("x.pem"))
        .arg("--key")
        .arg(other.path().join("x.key"))
        .output()
        .unwrap();
    assert!(!refused.status.success(), "{}", text(&refused));

    let _ = std::process::Command::new("kill")
        .args(["-TERM", &cs.pid().to_string()])
        .status();
    assert!(
        cs.wait_health(
            SERVICE,
            ServingStatus::NotServing as i32,
            Duration::from_secs(2)
        )
        .await,
        "{}",
        cs.log()
    );
    let draining = probe(&cs.url(), "engine");
    assert!(!draining.status.success(), "{}", text(&draining));
    assert!(
        text(&draining).contains("NOT_SERVING"),
        "{}",
        text(&draining)
    );
    // The liveness form: the CS answers, so it is alive.
    let alive = probe_with(&cs.url(), "engine", &["--any-status"]);
    assert!(alive.status.success(), "{}", text(&alive));
    let url = cs.url();
    cs.terminate(Duration::from_secs(15)).expect("exits");
    let gone = probe_with(&url, "engine", &["--any-status"]);
    assert!(!gone.status.success(), "{}", text(&gone));
}
