//! The CS round trips a connection waits for (issue 10), counted by a relay between the engine
//! and a real `lurk-cs` (tests/src/cs_relay.rs), with a real `openssl s_server`.
#![forbid(unsafe_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use lurk_e2e::cs_relay::{CsRelay, Event};
use lurk_e2e::openssl::{certs, SServer};
use lurk_e2e::DevSetup;
use lurk_engine::config::ClientConfig;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{Connector, MemoryTicketStore};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

/// Resumption asked for, tickets kept in memory: the CLI's configuration.
fn resuming_config() -> Arc<ClientConfig> {
    Arc::new(
        ClientConfig::builder()
            .trust_anchors(TrustAnchors::from_pem_file(&certs().ca_all()).unwrap())
            .resume(true)
            .ticket_store(Arc::new(MemoryTicketStore::default()))
            .build()
            .unwrap(),
    )
}

/// One handshake, then close_notify; the LURK exchanges of the handshake.
async fn handshake(c: &Connector, port: u16) -> Vec<&'static str> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let name = lurk_engine::ServerName::try_from("localhost").unwrap();
    let mut s = c.connect(tcp, &name, port).await.expect("handshake");
    let exchanges = s.summary().lurk_exchanges.clone();
    let _ = s.shutdown().await;
    exchanges
}

/// The calls whose answer the engine received between `from` and the first
/// `c_init_client_hello` after it: what a new connection waited for before its first exchange.
fn waited_for(events: &[(Instant, Event)], from: Instant) -> Vec<Event> {
    let first_hello = events
        .iter()
        .find(|(t, e)| *t >= from && matches!(e, Event::Start("c_init_client_hello", _)))
        .map(|(t, _)| *t)
        .expect("the connection's c_init_client_hello");
    events
        .iter()
        .filter(|(t, e)| *t >= from && *t < first_hello && matches!(e, Event::End(..)))
        .map(|(_, e)| e.clone())
        .collect()
}

/// A server that sends no tickets: each connection ends with a c_register_tickets that only
/// closes its session. The relay holds that close until the next connection's first exchange
/// arrives (1 s at most): a connection that waited for it would see it answered first (the old
/// engine waited up to 2 s for any CS work of earlier connections while its ticket store was
/// empty). No connection waits for another's close, and each makes its own exchanges only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_connection_waits_for_a_session_close() {
    let setup = DevSetup::new();
    let cs = setup.start();
    let relay = CsRelay::start(cs.client("engine"), Some(Duration::from_secs(1))).await;
    let mut args: Vec<String> = vec!["-www".into(), "-num_tickets".into(), "0".into()];
    args.extend(certs().cert_args("server-ecdsa-p256"));
    let srv = SServer::start(&args);
    let connector = Connector::new(resuming_config(), Some(relay.client()));

    // The first connection (its close is held until the second starts).
    handshake(&connector, srv.port()).await;
    for i in 1..4 {
        let from = Instant::now();
        let exchanges = handshake(&connector, srv.port()).await;
        assert!(
            !exchanges.contains(&"c_register_tickets"),
            "connection {i}: {exchanges:?}"
        );
        let events = relay.events();
        let waited = waited_for(&events, from);
        assert!(
            waited.is_empty(),
            "connection {i} waited for {waited:?} before its first exchange; events: {events:?}"
        );
    }
    connector.wait_for_cs(Duration::from_secs(5)).await;
    // Every session was closed: 4 closes went through, none carrying a ticket.
    let closes = relay
        .events()
        .iter()
        .filter(|(_, e)| *e == Event::End("c_register_tickets", true))
        .count();
    assert_eq!(closes, 4, "{:?}", relay.events());
}

/// The full handshake's CS round trips with `openssl s_server`: two exchanges (c_init_client_hello,
/// c_server_flight) where the CS offers c_server_flight, the standard three where it does not
/// (`[exchanges] server_flight = false`: Capabilities does not list it, the engine never
/// makes it), the same handshake either way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_flight_when_offered_standard_pair_otherwise() {
    let mut args: Vec<String> = vec!["-www".into()];
    args.extend(certs().cert_args("server-ecdsa-p256"));
    let srv = SServer::start(&args);
    let config = Arc::new(
        ClientConfig::builder()
            .trust_anchors(TrustAnchors::from_pem_file(&certs().ca_all()).unwrap())
            .resume(false)
            .build()
            .unwrap(),
    );
    for (offered, want) in [
        (true, vec!["c_init_client_hello", "c_server_flight"]),
        (
            false,
            vec!["c_init_client_hello", "c_server_hello", "c_client_finished"],
        ),
    ] {
        let setup = DevSetup::new();
        if !offered {
            setup.append_config("[exchanges]\nserver_flight = false");
        }
        let cs = setup.start();
        let relay = CsRelay::start(cs.client("engine"), None).await;
        let connector = Connector::new(config.clone(), Some(relay.client()));
        for _ in 0..2 {
            assert_eq!(handshake(&connector, srv.port()).await, want);
        }
        let made: Vec<&str> = relay
            .events()
            .iter()
            .filter_map(|(_, e)| match e {
                Event::Start(n, _) => Some(*n),
                Event::End(..) => None,
            })
            .collect();
        // One Capabilities for the connector, beside the first exchange.
        assert_eq!(
            made.iter().filter(|n| **n == "capabilities").count(),
            1,
            "{made:?}"
        );
        assert!(
            made.contains(&"c_server_flight") == offered
                && made.contains(&"c_server_hello") != offered,
            "{made:?}"
        );
    }
}
