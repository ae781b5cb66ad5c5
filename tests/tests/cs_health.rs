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
