//! Operating the CS: Prometheus metrics scraped over plain HTTP from a real `lurk-cs` after
//! real exchanges (exact counts), the access log (one line per exchange, JSON, no secret and
//! no session id), and gRPC server reflection listed by a real reflection client. The token
//! is real SoftHSM, slowed down or failed on command by the fault shim where a test needs
//! it; transport refusals come from real sockets holding real HTTP/2 streams open.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use lurk_e2e::raw_h2::{raw_h2, tls, unfinished_request};
use lurk_e2e::rfc8448::{ks, msg, resumption_request, section3_handshake};
use lurk_e2e::sequence_c::{ed25519_leaf, Handshake};
use lurk_e2e::{p11_fault_shim, CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{encode_certificate, CipherSuite, ClientHelloBuilder, NamedGroup};
use serde_json::Value;

/// The series of `name` (`name{labels} value` lines), keyed by their label set.
fn series(text: &str, name: &str) -> BTreeMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (key, value) = l.rsplit_once(' ')?;
            let labels = match key.strip_prefix(name)? {
                "" => "",
                rest if rest.starts_with('{') => rest,
                _ => return None,
            };
            Some((labels.to_owned(), value.parse().ok()?))
        })
        .collect()
}

fn expect(pairs: &[(&str, f64)]) -> BTreeMap<String, f64> {
    pairs.iter().map(|(k, v)| ((*k).to_owned(), *v)).collect()
}

/// What moved from `before` to `after` (series absent before count from 0), without the
/// series that did not move.
fn moved(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0.0)))
        .filter(|(_, d)| *d != 0.0)
        .collect()
}

/// The series of `name`, without the health probe's token calls (their number depends on
/// time).
fn token_ops(text: &str, name: &str) -> BTreeMap<String, f64> {
    let mut s = series(text, name);
    s.retain(|k, _| !k.contains("operation=\"probe\""));
    s
}

/// Scrapes until `cond` holds for the text, for up to `limit`; returns the last text.
async fn scrape_until(cs: &CsProcess, limit: Duration, cond: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (code, text) = cs.scrape("/metrics");
        assert_eq!(code, 200);
        if cond(&text) || start.elapsed() > limit {
            return text;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
}

/// The value of one series (`name` + `labels`), 0 if absent.
fn value(text: &str, name: &str, labels: &str) -> f64 {
    series(text, name).get(labels).copied().unwrap_or(0.0)
}

/// c_init_client_hello with CS-generated (token) shares for `shares`: the session id.
async fn hello(c: &mut CsClient, shares: &[NamedGroup]) -> Vec<u8> {
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(shares)
        .signature_algorithms(&[lurk_proto::wire::SignatureScheme::Ed25519]);
    for g in shares {
        b = b.key_share(*g, &[]);
    }
    c.c_init_client_hello(pb::CInitClientHelloRequest {
        client_hello: b.build().unwrap(),
        freshness: pb::Freshness::Sha256 as i32,
        psks: vec![],
        secret_request: None,
    })
    .await
    .unwrap()
    .into_inner()
    .session_id
}

/// c_init_client_finished (sequence C) signing with the ed25519 key: one C_Sign.
async fn sign(
    dev: &DevSetup,
    c: &mut CsClient,
) -> Result<pb::CInitClientFinishedResponse, tonic::Status> {
    let leaf = ed25519_leaf(&dev.path());
    c.c_init_client_finished(pb::CInitClientFinishedRequest {
        handshake_messages: Handshake::new().messages(),
        freshness: pb::Freshness::Sha256 as i32,
        key_id: "ed25519".into(),
        client_certificate: encode_certificate(&[], &[leaf]).unwrap(),
        last_exchange: true,
    })
    .await
    .map(|r| r.into_inner())
}

/// `promtool check metrics` (Debian's prometheus package, scripts/install-deps.sh --test)
/// on a scrape: the exposition parses and follows Prometheus' naming rules.
fn promtool_accepts(text: &str) {
    use std::io::Write;
    let mut child = std::process::Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("promtool (scripts/install-deps.sh --test installs it)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

async fn identity(cs: &CsProcess, who: &str) -> String {
    cs.client(who)
        .ping(pb::PingRequest {})
        .await
        .unwrap()
        .into_inner()
        .engine_identity
}

fn session_hash(id: &[u8]) -> String {
    hex::encode(&ring::digest::digest(&ring::digest::SHA256, id).as_ref()[..8])
}

#[tokio::test]
async fn metrics_and_access_log_follow_real_exchanges_exactly() {
    let dev = DevSetup::new();
    dev.append_config(
        "[freshness]\ntest_vectors = true\n\
         [metrics]\naddr = \"127.0.0.1:0\"\nmax_engine_labels = 1\n\
         [log]\nformat = \"json\"\n",
    );
    let cs = dev.start();
    let (code, before) = cs.scrape("/metrics");
    assert_eq!(code, 200);
    assert!(
        series(&before, "lurk_cs_requests_total").is_empty(),
        "{before}"
    );
    assert_eq!(
        series(&before, "lurk_cs_build_info"),
        expect(&[(
            &format!("{{version=\"{}\"}}", env!("CARGO_PKG_VERSION")),
            1.0
        )])
    );

    // Two pings; a §3 handshake and a ticket stored by engine A; engine B offers A's ticket
    // (refused); A resumes with it (taken), then offers it again (refused, used once); A
    // names an unknown session (refused).
    let a = identity(&cs, "engine").await;
    let b = identity(&cs, "engine2").await;
    let mut ca = cs.client("engine");
    let id = section3_handshake(&mut ca).await.unwrap();
    let reg = ca
        .c_register_tickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![msg("simple_1rtt", "new_session_ticket")],
            last_exchange: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.registered, 1);
    let e = cs
        .client("engine2")
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));
    let resumed = ca
        .c_init_client_hello(resumption_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.binders, vec![ks("resumed_0rtt", "binder")]);
    let e = ca
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));
    let e = ca
        .c_server_hello(pb::CServerHelloRequest {
            session_id: vec![7; 16],
            server_hello: msg("simple_1rtt", "server_hello"),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(
        LurkStatus::from_grpc(&e),
        Some(LurkStatus::InvalidSessionId)
    );

    let (code, text) = cs.scrape("/metrics");
    assert_eq!(code, 200);
    assert_eq!(
        series(&text, "lurk_cs_requests_total"),
        expect(&[
            ("{exchange=\"c_client_finished\",status=\"success\"}", 1.0),
            (
                "{exchange=\"c_init_client_hello\",status=\"invalid_psk\"}",
                2.0
            ),
            ("{exchange=\"c_init_client_hello\",status=\"success\"}", 2.0),
            ("{exchange=\"c_register_tickets\",status=\"success\"}", 1.0),
            (
                "{exchange=\"c_server_hello\",status=\"invalid_session_id\"}",
                1.0
            ),
            ("{exchange=\"c_server_hello\",status=\"success\"}", 1.0),
            ("{exchange=\"ping\",status=\"success\"}", 2.0),
        ]),
        "{text}"
    );
    // One engine label (max_engine_labels = 1): B refused first; A counts as "other".
    assert_eq!(
        series(&text, "lurk_cs_refusals_total"),
        expect(&[
            (&format!("{{engine=\"{b}\",reason=\"invalid_psk\"}}"), 1.0),
            ("{engine=\"other\",reason=\"invalid_psk\"}", 1.0),
            ("{engine=\"other\",reason=\"invalid_session_id\"}", 1.0),
        ]),
        "{text}"
    );
    assert_eq!(series(&text, "lurk_cs_tickets_stored_total")[""], 1.0);
    assert_eq!(series(&text, "lurk_cs_tickets_taken_total")[""], 1.0);
    // The resumed session is open; §3's was closed by last_exchange.
    assert_eq!(series(&text, "lurk_cs_sessions_open")[""], 1.0);
    let counts = series(&text, "lurk_cs_request_duration_seconds_count");
    assert_eq!(counts["{exchange=\"c_init_client_hello\"}"], 4.0);
    assert_eq!(counts["{exchange=\"ping\"}"], 2.0);
    // Sealing and unsealing the ticket held token sessions.
    assert!(series(&text, "lurk_cs_token_session_held_seconds_count")[""] >= 2.0);
    // Store calls: one ticket stored, three takes tried (B's finds nothing, A's takes it,
    // A's second finds nothing).
    let store = series(&text, "lurk_cs_store_operation_seconds_count");
    assert_eq!(store["{operation=\"put_ticket\"}"], 1.0, "{text}");
    assert_eq!(store["{operation=\"take_ticket\"}"], 3.0, "{text}");
    // The token: the ticket sealed once and unsealed once (A's resumption); nothing else
    // (the handshake's ephemeral is the RFC's, injected).
    let count = "lurk_cs_token_operation_seconds_count";
    assert_eq!(
        moved(&token_ops(&before, count), &token_ops(&text, count)),
        expect(&[
            ("{mechanism=\"aes_gcm\",operation=\"seal\"}", 1.0),
            ("{mechanism=\"aes_gcm\",operation=\"unseal\"}", 1.0),
        ]),
        "{text}"
    );
    // Token time per exchange: every exchange here ran its operation; a Ping never calls
    // the token, the ticket's registration and resumption did.
    assert_eq!(
        series(&text, "lurk_cs_request_token_seconds_count"),
        counts,
        "{text}"
    );
    let token_time = series(&text, "lurk_cs_request_token_seconds_sum");
    assert_eq!(token_time["{exchange=\"ping\"}"], 0.0);
    assert!(token_time["{exchange=\"c_register_tickets\"}"] > 0.0);
    assert!(token_time["{exchange=\"c_init_client_hello\"}"] > 0.0);
    let total = series(&text, "lurk_cs_request_duration_seconds_sum");
    for (exchange, t) in &token_time {
        assert!(
            *t <= total[exchange],
            "{exchange}: token {t} s of {} s",
            total[exchange]
        );
    }
    // Sessions of the top engines (10 by default): A's one; none elsewhere.
    assert_eq!(
        series(&text, "lurk_cs_sessions_open_by_engine"),
        expect(&[
            (&format!("{{engine=\"{a}\"}}"), 1.0),
            ("{engine=\"other\"}", 0.0)
        ]),
        "{text}"
    );
    assert_eq!(
        series(&text, "lurk_cs_token_up"),
        expect(&[("{token=\"lurk-dev\"}", 1.0)]),
        "{text}"
    );
    assert_eq!(series(&text, "lurk_cs_token_pool_waiting")[""], 0.0);
    assert_eq!(
        series(&text, "lurk_cs_token_pool_in_use")[""]
            + series(&text, "lurk_cs_token_pool_idle")[""],
        series(&text, "lurk_cs_token_pool_size")[""],
    );
    // Nothing was refused by the transport.
    assert!(
        series(&text, "lurk_cs_transport_refusals_total").is_empty(),
        "{text}"
    );
    promtool_accepts(&text);
    assert!(
        !text.contains(&hex::encode(&id)),
        "no session id in the metrics"
    );
    assert_eq!(cs.scrape("/other").0, 404);

    // The access log: one JSON line per exchange, in order, with a hash of the session id.
    let log = cs.log();
    let access: Vec<Value> = log
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|v| v["target"] == "lurk_cs::access")
        .map(|v| v["fields"].clone())
        .collect();
    let got: Vec<(String, String, String)> = access
        .iter()
        .map(|f| {
            assert!(f["duration_us"].is_u64(), "{f}");
            (
                f["engine"].as_str().unwrap().to_owned(),
                f["exchange"].as_str().unwrap().to_owned(),
                f["status"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    let line = |e: &str, x: &str, s: &str| (e.to_owned(), x.to_owned(), s.to_owned());
    assert_eq!(
        got,
        vec![
            line(&a, "ping", "success"),
            line(&b, "ping", "success"),
            line(&a, "c_init_client_hello", "success"),
            line(&a, "c_server_hello", "success"),
            line(&a, "c_client_finished", "success"),
            line(&a, "c_register_tickets", "success"),
            line(&b, "c_init_client_hello", "invalid_psk"),
            line(&a, "c_init_client_hello", "success"),
            line(&a, "c_init_client_hello", "invalid_psk"),
            line(&a, "c_server_hello", "invalid_session_id"),
        ],
        "{log}"
    );
    // The session of §3 is named by its hash, from the answer that opened it onwards.
    for f in &access[2..6] {
        assert_eq!(f["session"], session_hash(&id), "{f}");
    }
    assert_eq!(access[0]["session"], "-");
    assert_eq!(access[9]["session"], session_hash(&[7; 16]));
    assert!(!log.contains(&hex::encode(&id)), "a session id in the log");
    for secret in [
        ks("simple_1rtt", "client_handshake_traffic_secret"),
        ks("simple_1rtt", "resumption_master_secret"),
        ks("simple_1rtt", "resumption_psk"),
        ks("simple_1rtt", "ecdhe_shared_secret"),
        ks("resumed_0rtt", "client_early_traffic_secret"),
    ] {
        assert!(!log.contains(&hex::encode(&secret)), "a secret in the log");
    }
    // The rate-limited refusal lines are still written beside the access lines.
    assert!(log.contains("exchange refused"), "{log}");
}

#[tokio::test]
async fn the_access_log_can_be_turned_off_and_metrics_are_off_by_default() {
    let dev = DevSetup::new();
    let cs = dev.start();
    assert!(
        cs.metrics_addr.is_none(),
        "no metrics listener unless configured"
    );
    drop(cs);
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n[log]\naccess = false\n");
    let cs = dev.start();
    identity(&cs, "engine").await;
    identity(&cs, "engine").await;
    let (_, text) = cs.scrape("/metrics");
    assert_eq!(
        series(&text, "lurk_cs_requests_total"),
        expect(&[("{exchange=\"ping\",status=\"success\"}", 2.0)])
    );
    let log = cs.log();
    assert!(log.contains("lurk-cs serving"), "{log}");
    assert!(!log.contains("lurk_cs::access"), "{log}");
}

#[tokio::test]
async fn reflection_lists_and_describes_the_crypto_service() {
    use tonic_reflection::pb::v1::server_reflection_client::ServerReflectionClient;
    use tonic_reflection::pb::v1::server_reflection_request::MessageRequest;
    use tonic_reflection::pb::v1::server_reflection_response::MessageResponse;
    use tonic_reflection::pb::v1::ServerReflectionRequest;

    let dev = DevSetup::new();
    let cs = dev.start();
    let mut client = ServerReflectionClient::new(cs.channel("engine"));
    let ask = |m: MessageRequest| ServerReflectionRequest {
        host: String::new(),
        message_request: Some(m),
    };
    let mut answers = client
        .server_reflection_info(tokio_stream::iter(vec![
            ask(MessageRequest::ListServices(String::new())),
            ask(MessageRequest::FileContainingSymbol(
                "lurk.tls13.v1.CryptoService".into(),
            )),
        ]))
        .await
        .unwrap()
        .into_inner();
    let Some(MessageResponse::ListServicesResponse(list)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a service list");
    };
    let names: Vec<_> = list.service.iter().map(|s| s.name.as_str()).collect();
    assert!(names.contains(&"lurk.tls13.v1.CryptoService"), "{names:?}");
    let Some(MessageResponse::FileDescriptorResponse(files)) =
        answers.message().await.unwrap().unwrap().message_response
    else {
        panic!("not a file descriptor");
    };
    let file = files.file_descriptor_proto.concat();
    for name in [
        &b"CInitClientHello"[..],
        b"lurk/tls13/v1/crypto_service.proto",
    ] {
        assert!(file.windows(name.len()).any(|w| w == name));
    }
}

/// A connection that fails its mTLS handshake (no client certificate, from a real
/// `openssl s_client`) is counted by reason, and never reaches the exchange counters.
#[tokio::test]
async fn failed_mtls_handshakes_are_counted_by_reason() {
    let dev = DevSetup::new();
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n");
    let cs = dev.start();
    let addr = cs.url().trim_start_matches("https://").to_owned();
    let out = std::process::Command::new("timeout")
        .args(["10", "openssl", "s_client", "-tls1_3", "-connect", &addr])
        .args(["-servername", "localhost"])
        .stdin(std::process::Stdio::null())
        .output()
        .expect("openssl s_client");
    assert!(!out.status.success() || !out.stdout.is_empty());
    let mut failures = BTreeMap::new();
    for _ in 0..50 {
        failures = series(
            &cs.scrape("/metrics").1,
            "lurk_cs_tls_handshake_failures_total",
        );
        if !failures.is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        failures,
        expect(&[("{reason=\"no_client_certificate\"}", 1.0)]),
        "{}",
        cs.log()
    );
    assert!(series(&cs.scrape("/metrics").1, "lurk_cs_requests_total").is_empty());
}

/// Token operations by operation and mechanism, the token time of each exchange, and the
/// open sessions of the top engines, after real exchanges on token ephemerals: exact counts.
#[tokio::test]
async fn token_operations_token_time_and_top_engines_follow_real_exchanges() {
    let dev = DevSetup::new();
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\ntop_engines = 1\n");
    let cs = dev.start();
    let count = "lurk_cs_token_operation_seconds_count";
    let before = cs.scrape("/metrics").1;

    // A: a hello with two token shares, then the agreement for x25519; a second hello
    // (x25519); B: one hello; A: a sequence C signature with ed25519; a Ping.
    let mut a = cs.client("engine");
    let mut b = cs.client("engine2");
    let id = hello(&mut a, &[NamedGroup::X25519, NamedGroup::Secp256r1]).await;
    let peer = ring::agreement::EphemeralPrivateKey::generate(
        &ring::agreement::X25519,
        &ring::rand::SystemRandom::new(),
    )
    .unwrap();
    a.c_server_hello(pb::CServerHelloRequest {
        session_id: id,
        server_hello: lurk_e2e::server_hello(
            CipherSuite::TlsAes128GcmSha256,
            NamedGroup::X25519,
            peer.compute_public_key().unwrap().as_ref(),
            &[1u8; 32],
        ),
        ..Default::default()
    })
    .await
    .unwrap();
    hello(&mut a, &[NamedGroup::X25519]).await;
    hello(&mut b, &[NamedGroup::X25519]).await;
    sign(&dev, &mut a).await.unwrap();
    let engine_a = identity(&cs, "engine").await;

    let text = cs.scrape("/metrics").1;
    // Three x25519 pairs and one P-256 pair generated; one agreement; the agreed pair and
    // the unused P-256 pair destroyed (the other two are held by open sessions); one
    // signature.
    assert_eq!(
        moved(&token_ops(&before, count), &token_ops(&text, count)),
        expect(&[
            ("{mechanism=\"ed25519\",operation=\"sign\"}", 1.0),
            ("{mechanism=\"none\",operation=\"destroy\"}", 2.0),
            (
                "{mechanism=\"secp256r1\",operation=\"generate_key_pair\"}",
                1.0
            ),
            ("{mechanism=\"x25519\",operation=\"derive\"}", 1.0),
            (
                "{mechanism=\"x25519\",operation=\"generate_key_pair\"}",
                3.0
            ),
        ]),
        "{text}"
    );
    // Each held its session for some time (figures only: SoftHSM, a debug CS).
    let held = token_ops(&text, "lurk_cs_token_operation_seconds_sum");
    assert!(held["{mechanism=\"ed25519\",operation=\"sign\"}"] > 0.0);
    let calls = token_ops(&text, count);
    for (op, s) in &held {
        eprintln!("token {op}: {:.0} µs per call", s / calls[op] * 1e6);
    }
    // One observation per exchange that ran; time in the token only where the token was
    // called, never more than the exchange's whole time.
    assert_eq!(
        series(&text, "lurk_cs_request_token_seconds_count"),
        expect(&[
            ("{exchange=\"c_init_client_finished\"}", 1.0),
            ("{exchange=\"c_init_client_hello\"}", 3.0),
            ("{exchange=\"c_server_hello\"}", 1.0),
            ("{exchange=\"ping\"}", 1.0),
        ]),
        "{text}"
    );
    let token_time = series(&text, "lurk_cs_request_token_seconds_sum");
    let total = series(&text, "lurk_cs_request_duration_seconds_sum");
    for (exchange, t) in &token_time {
        if exchange.contains("ping") {
            assert_eq!(*t, 0.0);
        } else {
            assert!(
                *t > 0.0 && *t <= total[exchange],
                "{exchange}: {t} of {}",
                total[exchange]
            );
        }
    }
    // top_engines = 1: A (two sessions) by name, B's one under "other"; the total.
    assert_eq!(
        series(&text, "lurk_cs_sessions_open_by_engine"),
        expect(&[
            (&format!("{{engine=\"{engine_a}\"}}"), 2.0),
            ("{engine=\"other\"}", 1.0)
        ]),
        "{text}"
    );
    assert_eq!(series(&text, "lurk_cs_sessions_open")[""], 3.0);
    promtool_accepts(&text);
}

/// A slow token (the fault shim delays C_Sign) shows in the pool gauges while exchanges wait
/// for it, in the sign latency and in each exchange's token time, waits included; a failing
/// token shows as `lurk_cs_token_up` 0, and 1 again once it answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_or_failing_token_shows_in_the_pool_gauges_and_token_up() {
    const DELAY_MS: u64 = 1500;
    let dev = DevSetup::new();
    dev.edit_config(
        "module = \"/usr/lib/softhsm/libsofthsm2.so\"",
        &format!("module = {:?}", p11_fault_shim().display().to_string()),
    );
    dev.edit_config("[token]\n", "[token]\npool_size = 2\n");
    // One health probe at start, then none during the test: every other token call is
    // the test's.
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n[health]\nprobe_interval_ms = 600000\n");
    let control = dev.path().join("p11-faults");
    std::fs::write(&control, "").unwrap();
    let cs = dev.start_with_env(&[("LURK_P11_FAULT_FILE", control.to_str().unwrap())]);
    let probed = |t: &str| {
        value(
            t,
            "lurk_cs_token_operation_seconds_count",
            "{mechanism=\"none\",operation=\"probe\"}",
        ) >= 1.0
    };
    let before = scrape_until(&cs, Duration::from_secs(10), probed).await;
    assert!(probed(&before), "{before}");
    assert_eq!(value(&before, "lurk_cs_token_pool_size", ""), 2.0);

    // Four signatures at once on a pool of two sessions, each C_Sign 1.5 s long: two hold
    // the sessions, two wait.
    std::fs::write(&control, format!("delay {DELAY_MS} C_Sign\n")).unwrap();
    let mut tasks = Vec::new();
    for _ in 0..4 {
        let mut c = cs.client("engine");
        let dir = dev.path();
        tasks.push(tokio::spawn(async move {
            let leaf = ed25519_leaf(&dir);
            c.c_init_client_finished(pb::CInitClientFinishedRequest {
                handshake_messages: Handshake::new().messages(),
                freshness: pb::Freshness::Sha256 as i32,
                key_id: "ed25519".into(),
                client_certificate: encode_certificate(&[], &[leaf]).unwrap(),
                last_exchange: true,
            })
            .await
            .map(|_| ())
        }));
    }
    let busy = scrape_until(&cs, Duration::from_secs(10), |t| {
        value(t, "lurk_cs_token_pool_waiting", "") == 2.0
    })
    .await;
    assert_eq!(
        value(&busy, "lurk_cs_token_pool_waiting", ""),
        2.0,
        "{busy}"
    );
    assert_eq!(value(&busy, "lurk_cs_token_pool_in_use", ""), 2.0, "{busy}");
    assert_eq!(value(&busy, "lurk_cs_token_pool_idle", ""), 0.0, "{busy}");
    for t in tasks {
        t.await.unwrap().expect("a slow token still signs");
    }
    std::fs::write(&control, "").unwrap();
    let after = cs.scrape("/metrics").1;
    assert_eq!(value(&after, "lurk_cs_token_pool_waiting", ""), 0.0);
    assert_eq!(value(&after, "lurk_cs_token_pool_in_use", ""), 0.0);
    assert_eq!(value(&after, "lurk_cs_token_pool_idle", ""), 2.0);

    let d = |name: &str, labels: &str| value(&after, name, labels) - value(&before, name, labels);
    let signs = "{mechanism=\"ed25519\",operation=\"sign\"}";
    let exchange = "{exchange=\"c_init_client_finished\"}";
    assert_eq!(d("lurk_cs_token_operation_seconds_count", signs), 4.0);
    assert_eq!(d("lurk_cs_request_token_seconds_count", exchange), 4.0);
    // Each signature held its session for the whole slow C_Sign.
    let held = d("lurk_cs_token_operation_seconds_sum", signs);
    assert!(held >= 4.0 * DELAY_MS as f64 / 1000.0, "held {held} s");
    // The exchanges' token time covers the signatures and the waits for a session (the
    // only token calls meanwhile), and the waits were real.
    let waited = d("lurk_cs_token_session_wait_seconds_sum", "");
    assert_eq!(d("lurk_cs_token_session_wait_seconds_count", ""), 4.0);
    assert!(waited > 0.5, "waited {waited} s");
    let in_token = d("lurk_cs_request_token_seconds_sum", exchange);
    assert!(
        in_token >= held + waited - 1e-3,
        "token time {in_token} s < held {held} + waited {waited}"
    );
    assert!(in_token <= d("lurk_cs_request_duration_seconds_sum", exchange));

    // The device fails: the exchange fails, the token is down; it answers again: up.
    std::fs::write(&control, "CKR_DEVICE_ERROR C_Sign\n").unwrap();
    let e = sign(&dev, &mut cs.client("engine")).await.unwrap_err();
    assert_eq!(
        LurkStatus::from_grpc(&e),
        Some(LurkStatus::TokenUnavailable)
    );
    let down = cs.scrape("/metrics").1;
    assert_eq!(
        series(&down, "lurk_cs_token_up"),
        expect(&[("{token=\"lurk-dev\"}", 0.0)]),
        "{down}"
    );
    std::fs::write(&control, "").unwrap();
    // The first exchange after the backoff (200 ms) re-initialises the module.
    let start = Instant::now();
    while sign(&dev, &mut cs.client("engine")).await.is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the token never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert_eq!(
        series(&cs.scrape("/metrics").1, "lurk_cs_token_up"),
        expect(&[("{token=\"lurk-dev\"}", 1.0)])
    );
}

/// The transport's request caps and request timeout, counted by reason and engine: engine
/// A holds requests in flight past its own cap, engine B past the global cap, and the
/// admitted ones never finish their bodies (answered DEADLINE_EXCEEDED at the timeout).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_request_refusals_are_counted_by_reason_and_engine() {
    let dev = DevSetup::new();
    dev.append_config(
        "[metrics]\naddr = \"127.0.0.1:0\"\n\
         [limits]\nmax_requests = 3\nmax_requests_per_engine = 2\nrequest_timeout_ms = 1000\n",
    );
    let cs = dev.start();
    let a = identity(&cs, "engine").await;
    let b = identity(&cs, "engine2").await;
    let status = |h: &http::HeaderMap| {
        h.get("grpc-status")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("none")
            .to_owned()
    };
    // A: two admitted, the third refused by A's cap (answered at once).
    let mut h2a = raw_h2(&cs, "engine").await;
    let mut pending = Vec::new();
    let mut bodies = Vec::new();
    for i in 0..3 {
        let (next, answer, body) = unfinished_request(h2a, 1 << 20, 1024).await;
        h2a = next;
        bodies.push(body);
        if i < 2 {
            pending.push(answer);
        } else {
            let r = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status(r.headers()), "8", "RESOURCE_EXHAUSTED");
        }
    }
    // B: one admitted (3 in flight in all), the second refused by the global cap.
    let mut h2b = raw_h2(&cs, "engine2").await;
    for i in 0..2 {
        let (next, answer, body) = unfinished_request(h2b, 1 << 20, 1024).await;
        h2b = next;
        bodies.push(body);
        if i < 1 {
            pending.push(answer);
        } else {
            let r = tokio::time::timeout(Duration::from_secs(5), answer)
                .await
                .unwrap()
                .unwrap();
            assert_eq!(status(r.headers()), "8", "RESOURCE_EXHAUSTED");
        }
    }
    // The three admitted are answered at the request timeout.
    for answer in pending {
        let r = tokio::time::timeout(Duration::from_secs(10), answer)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(status(r.headers()), "4", "DEADLINE_EXCEEDED");
    }
    let text = cs.scrape("/metrics").1;
    assert_eq!(
        series(&text, "lurk_cs_transport_refusals_total"),
        expect(&[
            (
                &format!("{{engine=\"{a}\",reason=\"max_requests_per_engine\"}}"),
                1.0
            ),
            (
                &format!("{{engine=\"{a}\",reason=\"request_timeout\"}}"),
                2.0
            ),
            (&format!("{{engine=\"{b}\",reason=\"max_requests\"}}"), 1.0),
            (
                &format!("{{engine=\"{b}\",reason=\"request_timeout\"}}"),
                1.0
            ),
        ]),
        "{text}"
    );
    // None reached the service: only the two Pings are exchanges.
    assert_eq!(
        series(&text, "lurk_cs_requests_total"),
        expect(&[("{exchange=\"ping\",status=\"success\"}", 2.0)])
    );
    drop(bodies);
}

/// The transport's connection caps and first-request timeout, counted by reason and engine:
/// with room for two connections and one per engine, A's second connection is closed, the
/// accept loop meets its cap once, and A's first connection, which never sends a request,
/// is closed at the first-request timeout.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transport_connection_refusals_are_counted_by_reason_and_engine() {
    let dev = DevSetup::new();
    dev.append_config(
        "[metrics]\naddr = \"127.0.0.1:0\"\n\
         [limits]\nmax_connections = 2\nmax_connections_per_engine = 1\n\
         first_request_timeout_ms = 500\n",
    );
    let cs = dev.start();
    let quiet = tls(&cs, "engine").await;
    let refused = tls(&cs, "engine").await;
    let text = scrape_until(&cs, Duration::from_secs(10), |t| {
        value(
            t,
            "lurk_cs_transport_refusals_total",
            "{engine=\"engine-dev\",reason=\"first_request_timeout\"}",
        ) == 1.0
    })
    .await;
    assert_eq!(
        series(&text, "lurk_cs_transport_refusals_total"),
        expect(&[
            (
                "{engine=\"engine-dev\",reason=\"first_request_timeout\"}",
                1.0
            ),
            (
                "{engine=\"engine-dev\",reason=\"max_connections_per_engine\"}",
                1.0
            ),
            ("{engine=\"none\",reason=\"max_connections\"}", 1.0),
        ]),
        "{text}"
    );
    drop((quiet, refused));
    // The CS serves again.
    assert_eq!(identity(&cs, "engine2").await, "engine-other");
}

/// A peer that sends a request and never takes its answer (its HTTP/2 receive window is
/// zero): the connection is closed once the answer is overdue, counted by reason and engine.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_never_taken_is_counted_when_its_connection_is_closed() {
    let dev = DevSetup::new();
    dev.append_config("[metrics]\naddr = \"127.0.0.1:0\"\n[limits]\nrequest_timeout_ms = 300\n");
    let cs = dev.start();
    let (h2c, conn) = h2::client::Builder::new()
        .initial_window_size(0)
        .initial_connection_window_size(0)
        .handshake::<_, bytes::Bytes>(tls(&cs, "engine").await)
        .await
        .unwrap();
    tokio::spawn(conn);
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::post("https://localhost/lurk.tls13.v1.CryptoService/Ping")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (_answer, mut body) = h2c.send_request(req, false).unwrap();
    body.send_data(bytes::Bytes::from_static(&[0, 0, 0, 0, 0]), true)
        .unwrap();
    let text = scrape_until(&cs, Duration::from_secs(10), |t| {
        !series(t, "lurk_cs_transport_refusals_total").is_empty()
    })
    .await;
    assert_eq!(
        series(&text, "lurk_cs_transport_refusals_total"),
        expect(&[("{engine=\"engine-dev\",reason=\"answer_overdue\"}", 1.0)]),
        "{text}"
    );
}
