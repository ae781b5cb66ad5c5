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

/// How long the test's TCP connect waits for the CS to receive the connection's first
/// exchange (a bound, never reached on the new path).
const GATE: Duration = Duration::from_secs(5);

/// `Connector::connect_with` makes the exchange that precedes the ClientHello while the TCP
/// connection is being made (issue 10, item 1): c_init_client_hello, for a full handshake and
/// for a resumed one (the CS makes the binders). The test's TCP connect completes only once the relay in
/// front of the real CS received that exchange (at most `GATE`), and the relay delays every
/// call by 200 ms; the handshake with `openssl s_server` then goes on as usual. Overlap is
/// checked on recorded instants only: the CS received the exchange before the TCP connection
/// existed, and the connect began before the CS's answer came back. The old way (connect,
/// then the handshake) is checked to show the other order, which this test refuses.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn first_exchange_runs_while_the_tcp_connection_is_made() {
    let setup = DevSetup::new();
    let cs = setup.start();
    let relay = CsRelay::start(cs.client("engine"), None).await;
    relay.set_delay(Some(Duration::from_millis(200)));
    let mut args: Vec<String> = vec!["-www".into()];
    args.extend(certs().cert_args("server-ecdsa-p256"));
    let srv = SServer::start(&args);
    let port = srv.port();
    let connector = Connector::new(resuming_config(), Some(relay.client()));
    let name = lurk_engine::ServerName::try_from("localhost").unwrap();

    // A TCP connect that completes once the CS received `first` (at most `gate`); when it
    // began and when it ended.
    let gated = |first: &'static str, from: Instant, gate: Duration| {
        let times = Arc::new(std::sync::Mutex::new((None, None)));
        let t = times.clone();
        let relay = &relay;
        let fut = async move {
            t.lock().unwrap().0 = Some(Instant::now());
            relay.wait_for_start(first, from, gate).await;
            let tcp = TcpStream::connect(("127.0.0.1", port)).await?;
            tcp.set_nodelay(true)?;
            t.lock().unwrap().1 = Some(Instant::now());
            Ok::<_, std::io::Error>(tcp)
        };
        (fut, times)
    };
    let event_at = |want: Event, from: Instant| {
        relay
            .events()
            .into_iter()
            .find(|(t, e)| *t >= from && *e == want)
            .map(|(t, _)| t)
            .unwrap_or_else(|| panic!("no {want:?} in {:?}", relay.events()))
    };

    let first = "c_init_client_hello";
    for resumed in [false, true] {
        let from = Instant::now();
        let (tcp, times) = gated(first, from, GATE);
        let mut s = connector
            .connect_with(&name, port, tcp)
            .await
            .expect("handshake");
        let summary = s.summary().clone();
        assert_eq!(summary.resumed, resumed, "{summary:?}");
        assert_eq!(summary.lurk_exchanges.first(), Some(&first), "{summary:?}");
        if !resumed {
            assert!(s.wait_for_tickets(Duration::from_secs(5)).await.unwrap() > 0);
        }
        let _ = s.shutdown().await;
        let (connect_began, connected) = *times.lock().unwrap();
        let (connect_began, connected) = (connect_began.unwrap(), connected.unwrap());
        let cs_received = event_at(Event::Start(first, false), from);
        let cs_answered = event_at(Event::End(first, false), from);
        assert!(
            cs_received < connected && connect_began < cs_answered,
            "{first}: the CS exchange and the TCP connect did not overlap: connect \
             {connect_began:?}..{connected:?}, CS {cs_received:?}..{cs_answered:?}"
        );
        connector.wait_for_cs(Duration::from_secs(5)).await;
    }

    // The old way, connect then handshake: the CS receives nothing until the connection
    // exists (the gate runs out), which the check above refuses.
    let from = Instant::now();
    let (tcp, times) = gated("c_init_client_hello", from, Duration::from_millis(300));
    let tcp = tcp.await.unwrap();
    let fresh = Connector::new(resuming_config(), Some(relay.client()));
    let mut s = fresh.connect(tcp, &name, port).await.expect("handshake");
    let _ = s.shutdown().await;
    let connected = times.lock().unwrap().1.unwrap();
    assert!(event_at(Event::Start("c_init_client_hello", false), from) > connected);
}
