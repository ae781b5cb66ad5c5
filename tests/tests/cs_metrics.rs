//! Operating the CS: Prometheus metrics scraped over plain HTTP from a real `lurk-cs` after
//! real exchanges (exact counts), the access log (one line per exchange, JSON, no secret and
//! no session id), and gRPC server reflection listed by a real reflection client.

use std::collections::BTreeMap;

use lurk_e2e::rfc8448::{ks, msg, resumption_request, section3_handshake};
use lurk_e2e::{CsProcess, DevSetup};
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
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
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    assert_eq!(
        failures,
        expect(&[("{reason=\"no_client_certificate\"}", 1.0)]),
        "{}",
        cs.log()
    );
    assert!(series(&cs.scrape("/metrics").1, "lurk_cs_requests_total").is_empty());
}
