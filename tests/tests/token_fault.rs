//! A token that comes back: a real `lurk-cs` process whose PKCS#11 module is the fault
//! shim (tests/p11-fault-shim) in front of SoftHSM. The test makes the module really fail
//! (CKR_* returned by the calls the CS makes, then the real SoftHSM finalised under the CS's
//! feet) and checks that the CS stays up, answers `token_unavailable` meanwhile, serves
//! again without a restart once the token answers, and never answers with a wrong result:
//! every signature it returns verifies, and a key pair of the lost module is never used.
//! Its `grpc.health.v1` status follows: NOT_SERVING while the token is down, SERVING again
//! once it answers.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use lurk_e2e::{p11_fault_shim, token_calls, CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use tonic_health::ServingStatus;

const SERVICE: &str = "lurk.tls13.v1.CryptoService";

struct Faulty {
    dev: DevSetup,
    cs: CsProcess,
    control: PathBuf,
}

impl Faulty {
    fn start() -> Self {
        let dev = DevSetup::new();
        dev.edit_config(
            "module = \"/usr/lib/softhsm/libsofthsm2.so\"",
            &format!("module = {:?}", p11_fault_shim().display().to_string()),
        );
        // The health probe runs often, so that the test sees it follow the token.
        dev.append_config("[health]\nprobe_interval_ms = 100\n");
        let control = dev.path().join("p11-faults");
        std::fs::write(&control, "").unwrap();
        let cs = dev.start_with_env(&[
            ("LURK_P11_FAULT_FILE", control.to_str().unwrap()),
            ("RUST_LOG", "info"),
        ]);
        Self { dev, cs, control }
    }

    fn inject(&self, faults: &str) {
        std::fs::write(&self.control, faults).unwrap();
    }

    fn client(&self) -> CsClient {
        self.cs.client("engine")
    }

    /// [`unavailable`], with the CS's own account of the failure when it is not.
    fn unavailable(&self, e: tonic::Status) {
        if LurkStatus::from_grpc(&e) != Some(LurkStatus::TokenUnavailable) {
            std::thread::sleep(Duration::from_millis(200));
            let log = self.cs.log();
            let failed: Vec<&str> = log.lines().filter(|l| l.contains("failed")).collect();
            panic!("{e:?}; the CS's log says:\n{}", failed.join("\n"));
        }
        unavailable(e)
    }
}

/// The status of a failed exchange; a token failure must be `token_unavailable` with gRPC
/// UNAVAILABLE, nothing else.
fn unavailable(e: tonic::Status) {
    assert_eq!(
        LurkStatus::from_grpc(&e),
        Some(LurkStatus::TokenUnavailable),
        "{e:?}"
    );
    assert_eq!(e.code(), tonic::Code::Unavailable, "{e:?}");
}

/// c_init_client_finished with the ed25519 key (one C_Sign): Ok only with a signature that
/// verifies over the fresh random, as in cs_service.rs.
async fn sign(dev: &DevSetup, c: &mut CsClient) -> Result<(), tonic::Status> {
    token_calls::ed25519_sign(dev, c).await
}

/// c_init_client_hello with a CS-generated x25519 share (one C_GenerateKeyPair): returns
/// the session id and the share, which must be a usable x25519 public key.
async fn hello(c: &mut CsClient) -> Result<(Vec<u8>, Vec<u8>), tonic::Status> {
    token_calls::x25519_hello(c).await
}

/// c_server_hello for a session made by [`hello`]: the CS derives with its token key pair.
async fn server_hello(c: &mut CsClient, session_id: &[u8]) -> Result<(), tonic::Status> {
    token_calls::x25519_server_hello(c, session_id).await
}

/// Retries the exchange until it succeeds; every failure on the way must be
/// `token_unavailable`. Gives how long it took and how many attempts failed.
macro_rules! until_served {
    ($exchange:expr) => {{
        let start = Instant::now();
        let mut failed = 0usize;
        loop {
            match $exchange {
                Ok(_) => break (start.elapsed(), failed),
                Err(e) => {
                    unavailable(e);
                    failed += 1;
                }
            }
            assert!(
                start.elapsed() < Duration::from_secs(40),
                "the CS did not serve again"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }};
}

/// Waits until the CS's log (read by a thread, so a little behind) holds `needle` `n` times.
fn wait_log(cs: &CsProcess, needle: &str, n: usize) {
    let start = Instant::now();
    while cs.log().matches(needle).count() < n {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no {needle:?} in the CS log:\n{}",
            cs.log()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

async fn ping(c: &mut CsClient) {
    c.ping(pb::PingRequest {}).await.expect("the CS stays up");
}

#[tokio::test]
async fn the_cs_survives_a_failing_token_and_serves_again_without_a_restart() {
    let f = Faulty::start();
    let mut c = f.client();
    sign(&f.dev, &mut c).await.unwrap();
    hello(&mut c).await.unwrap();

    // 1. C_Sign and C_GenerateKeyPair fail with CKR_DEVICE_ERROR: those exchanges fail
    // with token_unavailable (at once while the token is marked down, from the module when
    // a re-initialisation let them through); the CS stays up.
    f.inject("CKR_DEVICE_ERROR C_Sign C_GenerateKeyPair\n");
    let t = Instant::now();
    unavailable(sign(&f.dev, &mut c).await.unwrap_err());
    unavailable(hello(&mut c).await.unwrap_err());
    let fail_fast = t.elapsed();
    ping(&mut c).await;
    wait_log(&f.cs, "token unavailable", 1);
    f.inject("");
    let (back_sign, failed_sign) = until_served!(sign(&f.dev, &mut c).await);
    hello(&mut c).await.unwrap();
    wait_log(&f.cs, "token back", 1);

    // 2. The whole module fails (every call, C_Initialize included): re-initialisation
    // attempts fail, with backoff, until the faults stop.
    f.inject("CKR_DEVICE_ERROR *\n");
    for _ in 0..10 {
        unavailable(hello(&mut c).await.unwrap_err());
        unavailable(sign(&f.dev, &mut c).await.unwrap_err());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    ping(&mut c).await;
    wait_log(&f.cs, "token still unavailable", 1);
    // grpc.health.v1 says NOT_SERVING while the token is down (the probe asks the token)...
    let not_serving = ServingStatus::NotServing as i32;
    assert!(
        f.cs.wait_health(SERVICE, not_serving, Duration::from_secs(10))
            .await,
        "health stayed SERVING with a failed token: {}",
        f.cs.log()
    );
    f.inject("");
    let (back_all, failed_all) = until_served!(hello(&mut c).await);
    sign(&f.dev, &mut c).await.unwrap();
    // ... and SERVING again once it answers, with no restart.
    let serving = ServingStatus::Serving as i32;
    assert!(
        f.cs.wait_health(SERVICE, serving, Duration::from_secs(40))
            .await,
        "health did not come back with the token: {}",
        f.cs.log()
    );

    // 3. A session fault (CKR_SESSION_HANDLE_INVALID) drops that session only: the token
    // stays up and the next exchange is served on a fresh session at once.
    const DOWN: &str = "exchanges fail fast until the module is re-initialised";
    const DROPPED: &str = "dropped a failed token session";
    let downs = f.cs.log().matches(DOWN).count();
    let dropped = f.cs.log().matches(DROPPED).count();
    f.inject("CKR_SESSION_HANDLE_INVALID C_GenerateKeyPair\n");
    unavailable(hello(&mut c).await.unwrap_err());
    f.inject("");
    hello(&mut c).await.unwrap();
    sign(&f.dev, &mut c).await.unwrap();
    // A token marked down would log that before the session is dropped.
    wait_log(&f.cs, DROPPED, dropped + 1);
    assert_eq!(f.cs.log().matches(DOWN).count(), downs);

    // 4. The real SoftHSM is finalised under the CS (every session, login and key pair
    // gone; SoftHSM itself answers CKR_CRYPTOKI_NOT_INITIALIZED) between two exchanges of
    // one LURK session: the key pair of the lost module is never used, and the CS
    // re-initialises the module and serves again, signing with the same key.
    let (session, _share) = hello(&mut c).await.unwrap();
    let (older, _) = hello(&mut c).await.unwrap();
    f.inject("finalize 1\n");
    unavailable(server_hello(&mut c, &session).await.unwrap_err());
    let (back_module, failed_module) = until_served!(sign(&f.dev, &mut c).await);
    // The new module may hand out the old handle numbers for other objects: the key pair
    // of the lost module is refused, not looked up.
    unavailable(server_hello(&mut c, &older).await.unwrap_err());
    let (session, _) = hello(&mut c).await.unwrap();
    server_hello(&mut c, &session).await.unwrap();
    wait_log(&f.cs, "finalized the real module", 1);

    ping(&mut c).await;
    eprintln!(
        "two failed exchanges answered in {fail_fast:?}; served again after: \
         C_Sign faults {back_sign:?} ({failed_sign} refused), whole module {back_all:?} \
         ({failed_all} refused), SoftHSM finalised {back_module:?} ({failed_module} refused)"
    );
}

/// Faults that come and go while engines keep sending: many exchanges in flight when the
/// token fails and when the module is re-initialised (which must wait for the calls in
/// flight). Every answer is a verified signature, a usable key share, or
/// `token_unavailable`; the CS neither stops nor hangs, and serves once the faults stop.
#[tokio::test]
async fn exchanges_in_flight_when_the_token_fails_get_a_right_answer_or_token_unavailable() {
    let f = std::sync::Arc::new(Faulty::start());
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let (f, stop) = (f.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut c = f.client();
            let (mut ok, mut refused) = (0usize, 0usize);
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = if i % 2 == 0 {
                    sign(&f.dev, &mut c).await
                } else {
                    hello(&mut c).await.map(|_| ())
                };
                match r {
                    Ok(()) => ok += 1,
                    Err(e) => {
                        f.unavailable(e);
                        refused += 1;
                    }
                }
            }
            (ok, refused)
        }));
    }
    for faults in [
        "CKR_DEVICE_ERROR C_Sign\n",
        "",
        "CKR_DEVICE_ERROR *\n",
        "",
        "CKR_SESSION_CLOSED C_GenerateKeyPair C_Sign\n",
        "",
        "CKR_TOKEN_NOT_PRESENT C_GenerateKeyPair\n",
        "",
    ] {
        f.inject(faults);
        tokio::time::sleep(Duration::from_millis(400)).await;
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    let (mut ok, mut refused) = (0, 0);
    for t in tasks {
        let (o, r) = t.await.unwrap();
        ok += o;
        refused += r;
    }
    assert!(refused > 0, "the faults were seen");
    let mut c = f.client();
    let (back, _) = until_served!(sign(&f.dev, &mut c).await);
    hello(&mut c).await.unwrap();
    ping(&mut c).await;
    eprintln!(
        "{ok} exchanges served (all verified), {refused} refused; served again after {back:?}"
    );
}
