//! The planned recycle of a PKCS#11 module that keeps destroyed session objects (SoftHSM
//! 2.6, `[token] recycle_after_objects`), through a real `lurk-cs serve` and gRPC clients:
//! concurrent handshakes with token ephemerals all succeed across several recycles, the CS
//! logs each one with its figures and counts them in its metrics, and its signing key works
//! afterwards.

use std::time::{Duration, Instant};

use lurk_e2e::{token_calls, CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;

const RECYCLED: &str = "PKCS#11 module recycled";

/// c_init_client_hello (the CS makes an x25519 key pair in the token), then c_server_hello
/// (the CS derives with it): both must succeed.
async fn exchange(c: &mut CsClient) {
    let (session, _) = token_calls::x25519_hello(c)
        .await
        .expect("c_init_client_hello");
    token_calls::x25519_server_hello(c, &session)
        .await
        .expect("c_server_hello");
}

/// c_init_client_finished with the ed25519 key: the signature verifies.
async fn sign(dev: &DevSetup, c: &mut CsClient) {
    token_calls::ed25519_sign(dev, c)
        .await
        .expect("c_init_client_finished");
}

/// The value of the unlabelled series `name` in a scrape.
fn value(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{text}"))
}

/// `line` without its ANSI colour codes.
fn plain(line: &str) -> String {
    let mut out = String::new();
    let mut rest = line;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = rest[i..].split_once('m').map_or("", |(_, r)| r);
    }
    out.push_str(rest);
    out
}

fn wait_log(cs: &CsProcess, needle: &str, n: usize) -> String {
    let start = Instant::now();
    loop {
        let log = cs.log();
        if log.matches(needle).count() >= n {
            return log;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "fewer than {n} {needle:?} in the CS log:\n{log}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[tokio::test]
async fn handshakes_go_on_across_planned_module_recycles() {
    let dev = DevSetup::new();
    // 30 session objects: a recycle every 10 handshakes.
    dev.edit_config(
        "[token]\n",
        "[token]\nrecycle_after_objects = 30\nrecycle_drain_ms = 3000\n",
    );
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n");
    let cs = dev.start_with_env(&[("RUST_LOG", "info")]);
    let mut c = cs.client("engine");
    sign(&dev, &mut c).await;
    // Four engines' connections, 15 handshakes each, at once.
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = cs.client("engine");
        tasks.push(tokio::spawn(async move {
            for _ in 0..15 {
                exchange(&mut c).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("every handshake succeeds");
    }
    let log = wait_log(&cs, RECYCLED, 2);
    // One line per recycle, with its figures; nothing given up, no fault.
    for line in log.lines().filter(|l| l.contains(RECYCLED)).map(plain) {
        let line = line.as_str();
        let objects: u64 = line
            .split("objects=")
            .nth(1)
            .and_then(|v| v.split(|c: char| !c.is_ascii_digit()).next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no objects= in {line}"));
        assert!(objects >= 30, "{line}");
        assert!(line.contains("given_up=0"), "{line}");
        assert!(line.contains("drain_ms="), "{line}");
    }
    assert!(!log.contains("token unavailable"), "{log}");
    let (_, text) = cs.scrape("/metrics");
    assert!(
        value(&text, "lurk_cs_token_recycles_total") >= 2.0,
        "{text}"
    );
    assert_eq!(value(&text, "lurk_cs_token_recycle_given_up_total"), 0.0);
    assert!(value(&text, "lurk_cs_token_session_objects_made") < 30.0 + 3.0 * 4.0);
    // The token's keys survive: signing still works, and so do handshakes.
    sign(&dev, &mut c).await;
    exchange(&mut c).await;
}

/// A recycle's drain waits for the key pairs of the handshakes in flight, whose next
/// exchange needs one of the engine's exchange slots (`[limits] max_exchanges_per_engine`):
/// the new handshakes that wait for the recycle must not hold those slots meanwhile, nor
/// the recycle itself. With 2 slots and 12 engines' connections at once, every handshake
/// succeeds and no key pair is given up.
#[tokio::test]
async fn handshakes_in_flight_finish_while_new_ones_wait_for_a_recycle() {
    let dev = DevSetup::new();
    dev.edit_config(
        "[token]\n",
        "[token]\nrecycle_after_objects = 30\nrecycle_drain_ms = 2000\n",
    );
    dev.append_config(
        "[metrics]\naddr = \"127.0.0.1:0\"\n\
         [limits]\nmax_exchanges_per_engine = 2\nmax_queued_exchanges_per_engine = 64\n",
    );
    let cs = dev.start_with_env(&[("RUST_LOG", "info")]);
    let mut tasks = Vec::new();
    for _ in 0..12 {
        let mut c = cs.client("engine");
        tasks.push(tokio::spawn(async move {
            for _ in 0..10 {
                exchange(&mut c).await;
            }
        }));
    }
    for t in tasks {
        t.await.expect("every handshake succeeds");
    }
    let (_, text) = cs.scrape("/metrics");
    assert!(
        value(&text, "lurk_cs_token_recycles_total") >= 2.0,
        "{text}"
    );
    assert_eq!(value(&text, "lurk_cs_token_recycle_given_up_total"), 0.0);
    assert!(!cs.log().contains("token unavailable"), "{}", cs.log());
}

/// With `[token] recycle_after_objects = 0` the module is never recycled, however many
/// objects the CS makes.
#[tokio::test]
async fn the_threshold_zero_turns_the_recycle_off() {
    let dev = DevSetup::new();
    dev.edit_config("[token]\n", "[token]\nrecycle_after_objects = 0\n");
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n");
    let cs = dev.start_with_env(&[("RUST_LOG", "info")]);
    let mut c = cs.client("engine");
    for _ in 0..12 {
        exchange(&mut c).await;
    }
    let (_, text) = cs.scrape("/metrics");
    assert_eq!(value(&text, "lurk_cs_token_session_objects_made"), 36.0);
    assert_eq!(value(&text, "lurk_cs_token_recycles_total"), 0.0);
    assert!(!cs.log().contains(RECYCLED));
    // The CS warns at start that the module keeps destroyed objects and nothing frees them.
    assert!(
        cs.log().contains("set [token] recycle_after_objects"),
        "{}",
        cs.log()
    );
}
