//! State machine tests without a network: the ClientHello the engine builds, the CS call it
//! asks for, and the ServerHello / HelloRetryRequest rules (RFC 8446 §4.1.3, §4.1.4).

use super::*;
use crate::deframer::Deframer;
use lurk_proto::freshness::FreshnessMode;
use lurk_proto::wire::SignatureScheme;

use crate::tickets::TicketStore;

fn config(ephemeral: Ephemeral) -> Arc<ClientConfig> {
    Arc::new(ClientConfig {
        ephemeral,
        groups: vec![NamedGroup::X25519, NamedGroup::Secp256r1],
        ..ClientConfig::default()
    })
}

/// The handshake messages of the plaintext records in `bytes`.
fn plaintext_messages(bytes: &[u8]) -> Vec<Vec<u8>> {
    let mut d = Deframer::new();
    d.push(bytes);
    let mut j = HandshakeJoiner::new();
    let mut out = Vec::new();
    while let Some(r) = d.next_record().unwrap() {
        if r.typ == ContentType::Handshake {
            j.push(&r.payload).unwrap();
            while let Some(m) = j.next_message() {
                out.push(m.encoded);
            }
        }
    }
    out
}

fn first_client_hello(conn: &mut ClientConnection) -> Vec<u8> {
    let out = conn.take_tls();
    // The first record may say 0x0301 (RFC 8446 §5.1).
    assert_eq!(&out[..3], &[22, 3, 1]);
    plaintext_messages(&out).remove(0)
}

/// A ServerHello (or HRR) message with the given extensions.
fn server_hello(
    random: [u8; 32],
    session_id: &[u8],
    suite: u16,
    exts: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&random);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&suite.to_be_bytes());
    body.push(0);
    let mut e = Vec::new();
    for (t, b) in exts {
        e.extend_from_slice(&t.to_be_bytes());
        e.extend_from_slice(&(b.len() as u16).to_be_bytes());
        e.extend_from_slice(b);
    }
    body.extend_from_slice(&(e.len() as u16).to_be_bytes());
    body.extend_from_slice(&e);
    let mut m = vec![2, 0, (body.len() >> 8) as u8, body.len() as u8];
    m.extend_from_slice(&body);
    m
}

const SUPPORTED_VERSIONS_13: (u16, [u8; 2]) = (43, [3, 4]);

fn key_share(group: NamedGroup, key: &[u8]) -> (u16, Vec<u8>) {
    let mut b = group.get().to_be_bytes().to_vec();
    b.extend_from_slice(&(key.len() as u16).to_be_bytes());
    b.extend_from_slice(key);
    (51, b)
}

fn feed(conn: &mut ClientConnection, msg: &[u8]) -> Result<(), Error> {
    conn.read_tls(&encode_plaintext(ContentType::Handshake, msg, 0x0303));
    conn.process_new_packets()
}

#[test]
fn client_hello_offers_what_is_configured() {
    let mut conn =
        ClientConnection::new(config(Ephemeral::Engine), "localhost", 443, false).unwrap();
    assert!(conn.take_cs_call().is_none(), "sequence D: no CS call");
    let raw = first_client_hello(&mut conn);
    let ch = ClientHello::parse(&raw).unwrap();
    assert_eq!(ch.supported_versions, vec![0x0304]);
    assert_eq!(ch.legacy_session_id.len(), 32, "middlebox compatibility");
    assert_eq!(
        ch.supported_groups.as_deref(),
        Some(&[NamedGroup::X25519, NamedGroup::Secp256r1][..])
    );
    let shares = ch.key_shares.as_ref().unwrap();
    assert_eq!(shares.len(), 1, "a share for the first group only");
    assert_eq!(shares[0].group, NamedGroup::X25519);
    assert_eq!(shares[0].key_exchange.len(), 32);
    assert_eq!(ch.server_names.as_ref().unwrap()[0], b"localhost");
    assert!(ch
        .signature_algorithms
        .as_ref()
        .unwrap()
        .contains(&SignatureScheme::RsaPssPssSha256));
    assert_eq!(
        ch.psk_modes.as_deref(),
        Some(&[PskKeyExchangeMode::PskDheKe][..])
    );
    assert!(ch.pre_shared_key.is_none());
    assert!(!ch.early_data && !ch.post_handshake_auth);
    assert!(conn.is_handshaking());
}

#[test]
fn no_sni_for_ip_addresses_and_several_shares() {
    let cfg = Arc::new(ClientConfig {
        ephemeral: Ephemeral::Engine,
        key_shares: 3,
        post_handshake_auth: true,
        alpn: vec![b"http/1.1".to_vec()],
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::new(cfg, "127.0.0.1", 443, false).unwrap();
    let raw = first_client_hello(&mut conn);
    let ch = ClientHello::parse(&raw).unwrap();
    assert!(ch.server_names.is_none());
    let groups: Vec<_> = ch.key_shares.unwrap().iter().map(|s| s.group).collect();
    assert_eq!(groups, NamedGroup::SUPPORTED.to_vec());
    assert!(ch.post_handshake_auth);
    assert_eq!(ch.alpn_protocols.unwrap(), vec![&b"http/1.1"[..]]);
}

#[test]
fn cs_ephemeral_asks_c_init_client_hello_with_empty_shares_and_the_engine_random() {
    let mut conn = ClientConnection::new(config(Ephemeral::Cs), "localhost", 443, true).unwrap();
    assert!(
        conn.take_tls().is_empty(),
        "nothing on the wire before the CS answers"
    );
    let Some(CsCall::InitClientHello(req)) = conn.take_cs_call() else {
        panic!("expected c_init_client_hello");
    };
    assert!(conn.cs_busy());
    let ch = ClientHello::parse(&req.client_hello).unwrap();
    assert_eq!(ch.placeholder_key_shares().len(), 1);
    assert_eq!(req.freshness, pb::Freshness::Sha256 as i32);
    assert!(req.psks.is_empty());
    assert_eq!(conn.summary().lurk_exchanges, vec!["c_init_client_hello"]);

    // The CS must return the freshness of the engine random: a CS (or a man in the middle of
    // the CS channel) that chose another random is caught.
    let mut completed = lurk_proto::wire::complete_client_hello(
        &req.client_hello,
        Some(&[9u8; 32]),
        &[(NamedGroup::X25519, vec![7u8; 32])],
    )
    .unwrap();
    let reply = pb::CInitClientHelloResponse {
        session_id: vec![1; 16],
        client_hello: completed.clone(),
        ..Default::default()
    };
    let e = conn
        .cs_response(Ok(CsReply::InitClientHello(reply)))
        .unwrap_err();
    assert_eq!(e, PeerMisbehaved::WrongFreshRandom.into());

    // With the right random the ClientHello goes out as completed.
    let mut conn = ClientConnection::new(config(Ephemeral::Cs), "localhost", 443, true).unwrap();
    let Some(CsCall::InitClientHello(req)) = conn.take_cs_call() else {
        panic!()
    };
    let engine_random: [u8; 32] = req.client_hello[6..38].try_into().unwrap();
    let fresh = client_random(pb::Freshness::Sha256, FreshnessMode::Draft, &engine_random);
    completed = lurk_proto::wire::complete_client_hello(
        &req.client_hello,
        Some(&fresh),
        &[(NamedGroup::X25519, vec![7u8; 32])],
    )
    .unwrap();
    conn.cs_response(Ok(CsReply::InitClientHello(pb::CInitClientHelloResponse {
        session_id: vec![1; 16],
        client_hello: completed.clone(),
        ..Default::default()
    })))
    .unwrap();
    assert_eq!(first_client_hello(&mut conn), completed);
}

#[test]
fn cs_ephemeral_without_cs_names_the_problem() {
    let e = ClientConnection::new(config(Ephemeral::Cs), "localhost", 443, false)
        .err()
        .unwrap();
    assert_eq!(e, Error::NoCryptoService("c_init_client_hello"));
    assert!(e.to_string().contains("--cs"));
}

fn started() -> (ClientConnection, ClientHello<'static>) {
    let mut conn =
        ClientConnection::new(config(Ephemeral::Engine), "localhost", 443, false).unwrap();
    let raw: &'static [u8] = Box::leak(first_client_hello(&mut conn).into_boxed_slice());
    (conn, ClientHello::parse(raw).unwrap())
}

fn expect_alert(conn: &mut ClientConnection, desc: AlertDescription) {
    let out = conn.take_tls();
    assert_eq!(
        out,
        encode_plaintext(ContentType::Alert, &[2, desc.get()], 0x0303)
    );
}

#[test]
fn server_hello_must_echo_the_session_id() {
    let (mut conn, _ch) = started();
    let sh = server_hello(
        [1; 32],
        &[0; 32],
        0x1301,
        &[
            (SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec()),
            key_share(NamedGroup::X25519, &[9; 32]),
        ],
    );
    let e = feed(&mut conn, &sh).unwrap_err();
    assert_eq!(e, PeerMisbehaved::WrongSessionIdEcho.into());
    expect_alert(&mut conn, AlertDescription::IllegalParameter);
    // Sticky.
    assert_eq!(conn.process_new_packets().unwrap_err(), e);
}

#[test]
fn server_hello_rules() {
    type Case = (u16, Vec<(u16, Vec<u8>)>, Error);
    let sv = (SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec());
    let cases: Vec<Case> = vec![
        (
            0x1304,
            vec![sv.clone(), key_share(NamedGroup::X25519, &[9; 32])],
            PeerMisbehaved::SelectedUnofferedCipherSuite.into(),
        ),
        (
            0x1301,
            vec![sv.clone(), key_share(NamedGroup::Secp256r1, &[4; 65])],
            PeerMisbehaved::WrongGroupForKeyShare.into(),
        ),
        (
            0x1301,
            vec![sv.clone()],
            PeerMisbehaved::MissingKeyShare.into(),
        ),
        (
            0x1301,
            vec![sv.clone(), key_share(NamedGroup::X25519, &[0; 32])],
            PeerMisbehaved::InvalidKeyShare.into(),
        ),
        (
            0x1301,
            vec![
                sv.clone(),
                key_share(NamedGroup::X25519, &[9; 32]),
                (41, vec![0, 0]),
            ],
            PeerMisbehaved::SelectedUnofferedPsk.into(),
        ),
    ];
    for (suite, exts, want) in cases {
        let (mut conn, ch) = started();
        let sh = server_hello([1; 32], ch.legacy_session_id, suite, &exts);
        assert_eq!(feed(&mut conn, &sh).unwrap_err(), want);
        expect_alert(&mut conn, want.alert().unwrap());
    }
    // A TLS 1.2 ServerHello (no supported_versions) does not parse as TLS 1.3.
    let (mut conn, ch) = started();
    let sh = server_hello([1; 32], ch.legacy_session_id, 0x1301, &[]);
    assert!(matches!(feed(&mut conn, &sh).unwrap_err(), Error::Wire(_)));
}

#[test]
fn hello_retry_request_gets_a_second_client_hello() {
    let (mut conn, ch1) = started();
    let cookie = (44u16, vec![0, 3, 0xc0, 0x0c, 0x1e]);
    let hrr = server_hello(
        lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM,
        ch1.legacy_session_id,
        0x1301,
        &[
            (SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec()),
            (51, NamedGroup::Secp256r1.get().to_be_bytes().to_vec()),
            cookie,
        ],
    );
    feed(&mut conn, &hrr).unwrap();
    assert!(conn.summary().hello_retry);
    let out = conn.take_tls();
    // Middlebox compatibility: a change_cipher_spec before the second ClientHello.
    assert_eq!(&out[..6], &[20, 3, 3, 0, 1, 1]);
    let raw2 = plaintext_messages(&out[6..]).remove(0);
    let ch2 = ClientHello::parse(&raw2).unwrap();
    assert_eq!(ch2.random, ch1.random, "same random in both ClientHellos");
    assert_eq!(ch2.legacy_session_id, ch1.legacy_session_id);
    assert_eq!(ch2.cookie, Some(&[0xc0, 0x0c, 0x1e][..]));
    let shares = ch2.key_shares.unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].group, NamedGroup::Secp256r1);
    assert_eq!(shares[0].key_exchange.len(), 65);
    assert_eq!(ch2.cipher_suites, vec![CipherSuite::TlsAes128GcmSha256]);

    // A second HelloRetryRequest is an error.
    assert_eq!(
        feed(&mut conn, &hrr).unwrap_err(),
        PeerMisbehaved::TwoHelloRetryRequests.into()
    );
}

#[test]
fn hello_retry_request_rules() {
    let sv = (SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec());
    // A group we already sent a share for, a group we did not offer, and no change at all.
    for ext in [
        vec![
            sv.clone(),
            (51, NamedGroup::X25519.get().to_be_bytes().to_vec()),
        ],
        vec![
            sv.clone(),
            (51, NamedGroup::Secp384r1.get().to_be_bytes().to_vec()),
        ],
        vec![sv.clone()],
    ] {
        let (mut conn, ch) = started();
        let hrr = server_hello(
            lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM,
            ch.legacy_session_id,
            0x1301,
            &ext,
        );
        assert_eq!(
            feed(&mut conn, &hrr).unwrap_err(),
            PeerMisbehaved::IllegalHelloRetryRequest.into()
        );
    }
}

#[test]
fn records_out_of_place_are_refused() {
    // Application data before any key.
    let (mut conn, _) = started();
    conn.read_tls(&[23, 3, 3, 0, 1, 0]);
    assert!(matches!(
        conn.process_new_packets().unwrap_err(),
        Error::InappropriateMessage { .. }
    ));
    // A handshake message other than ServerHello.
    let (mut conn, _) = started();
    let e = feed(&mut conn, &[8, 0, 0, 2, 0, 0]).unwrap_err();
    assert!(matches!(e, Error::InappropriateHandshakeMessage { .. }));
    expect_alert(&mut conn, AlertDescription::UnexpectedMessage);
    // A fatal alert from the server is reported, not answered.
    let (mut conn, _) = started();
    conn.read_tls(&[21, 3, 3, 0, 2, 2, 40]);
    assert_eq!(
        conn.process_new_packets().unwrap_err(),
        Error::AlertReceived(AlertDescription::HandshakeFailure)
    );
    assert!(conn.take_tls().is_empty());
}

#[test]
fn writing_before_the_handshake_is_refused() {
    let (mut conn, _) = started();
    assert_eq!(
        conn.write_plaintext(b"x").unwrap_err(),
        Error::HandshakeNotComplete
    );
    assert_eq!(
        conn.key_update(false).unwrap_err(),
        Error::HandshakeNotComplete
    );
}

/// RFC 8448 §3 (simple 1-RTT) through the real states: the recorded ClientHello is replayed
/// with its X25519 secret injected, the server's records go in, and what the client sends
/// must be the RFC's records byte for byte (Finished, application data, close_notify); the
/// ticket's PSK must be the RFC's resumption PSK. Server authentication is skipped (the RFC's
/// certificate has expired and its RSA-1024 key is below ring's minimum).
#[test]
fn rfc8448_simple_1rtt_through_the_states() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../testdata/rfc8448.json")).unwrap();
    let s = &doc["sections"]["simple_1rtt"]["summary"];
    let hexv = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let recs = s["records"].as_array().unwrap();
    let rec = |i: usize| hexv(&recs[i]["record"]);
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    let cfg = Arc::new(ClientConfig {
        ticket_store: Some(store.clone()),
        middlebox_compat: false,
        ephemeral: Ephemeral::Engine,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::replay(
        cfg,
        &hexv(&s["messages"]["client_hello"]),
        &hexv(&s["key_schedule"]["ecdhe_shared_secret"]),
    )
    .unwrap();

    // ServerHello, then EncryptedExtensions .. Finished in one protected record.
    conn.read_tls(&rec(1));
    conn.read_tls(&rec(2));
    conn.process_new_packets().unwrap();
    assert!(!conn.is_handshaking());
    assert_eq!(conn.take_tls(), rec(3), "client Finished record");
    let sum = conn.summary();
    assert_eq!(sum.mode, Some(TlsMode::Ecdhe));
    assert_eq!(sum.cipher_suite, Some(CipherSuite::TlsAes128GcmSha256));
    assert!(sum.lurk_exchanges.is_empty());

    // NewSessionTicket: stored with the RFC's resumption PSK.
    conn.read_tls(&rec(4));
    conn.process_new_packets().unwrap();
    let t = store
        .take("server:443", SystemTime::now(), &|_| true)
        .expect("ticket stored");
    assert_eq!(
        t.psk.as_deref().map(Vec::as_slice),
        Some(&hexv(&s["key_schedule"]["resumption_psk"])[..])
    );

    // Application data both ways, then close_notify both ways.
    conn.write_plaintext(&hexv(&recs[5]["payload"])).unwrap();
    assert_eq!(conn.take_tls(), rec(5), "client application data record");
    conn.read_tls(&rec(6));
    conn.process_new_packets().unwrap();
    let mut buf = vec![0u8; 100];
    let n = conn.read_plaintext(&mut buf);
    assert_eq!(&buf[..n], &hexv(&recs[6]["payload"])[..]);
    conn.send_close_notify();
    assert_eq!(conn.take_tls(), rec(7), "client close_notify record");
    conn.read_tls(&rec(8));
    conn.process_new_packets().unwrap();
    assert!(conn.peer_closed());
}

/// RFC 8448 §3 with the server Finished tampered with (the flight re-sealed under the
/// RFC's server handshake key): decrypt_error (RFC 8446 §4.4.4), and no client Finished.
#[test]
fn rfc8448_bad_server_finished_is_decrypt_error() {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../testdata/rfc8448.json")).unwrap();
    let s = &doc["sections"]["simple_1rtt"]["summary"];
    let hexv = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let recs = s["records"].as_array().unwrap();
    let keys = &s["traffic_keys"]["server_handshake"];
    let iv: [u8; 12] = hexv(&keys["iv"]).try_into().unwrap();
    let keys = RecordKeys::new(
        CipherSuite::TlsAes128GcmSha256,
        Zeroizing::new(hexv(&keys["key"])),
        iv,
    );
    let mut flight = hexv(&recs[2]["payload"]);
    let last = flight.len() - 1;
    flight[last] ^= 1; // the last byte of the Finished verify_data
    let mut sealed = Vec::new();
    RecordEncrypter::new(&keys)
        .unwrap()
        .encrypt_all(ContentType::Handshake, &flight, &mut sealed)
        .unwrap();
    let cfg = Arc::new(ClientConfig {
        middlebox_compat: false,
        ephemeral: Ephemeral::Engine,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::replay(
        cfg,
        &hexv(&s["messages"]["client_hello"]),
        &hexv(&s["key_schedule"]["ecdhe_shared_secret"]),
    )
    .unwrap();
    conn.read_tls(&hexv(&recs[1]["record"]));
    conn.read_tls(&sealed);
    assert_eq!(
        conn.process_new_packets().unwrap_err(),
        PeerMisbehaved::IncorrectFinished.into()
    );
    // Only the (encrypted) decrypt_error alert goes out: one short record.
    let out = conn.take_tls();
    assert_eq!(out.len(), 5 + 2 + 1 + 16);
    assert!(conn.is_handshaking());
}

/// RFC 8448 §3 up to the server's NewSessionTicket, with the session turned into a CS-held
/// one (sequence A): the ticket is for the CS to register.
fn rfc8448_with_cs_session() -> (
    ClientConnection,
    Arc<crate::tickets::MemoryTicketStore>,
    impl Fn(usize) -> Vec<u8>,
    serde_json::Value,
) {
    let doc: serde_json::Value =
        serde_json::from_str(include_str!("../../../testdata/rfc8448.json")).unwrap();
    let s = doc["sections"]["simple_1rtt"]["summary"].clone();
    let hexv = |v: &serde_json::Value| hex::decode(v.as_str().unwrap()).unwrap();
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    let cfg = Arc::new(ClientConfig {
        ticket_store: Some(store.clone()),
        middlebox_compat: false,
        ephemeral: Ephemeral::Engine,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::replay(
        cfg,
        &hexv(&s["messages"]["client_hello"]),
        &hexv(&s["key_schedule"]["ecdhe_shared_secret"]),
    )
    .unwrap();
    let recs = s["records"].as_array().unwrap().clone();
    let rec = move |i: usize| hex::decode(recs[i]["record"].as_str().unwrap()).unwrap();
    conn.read_tls(&rec(1));
    conn.read_tls(&rec(2));
    conn.process_new_packets().unwrap();
    assert!(!conn.is_handshaking());
    conn.take_tls();
    conn.core.has_cs = true;
    let Some(State::Traffic(t)) = conn.state.as_mut() else {
        panic!("not in traffic")
    };
    t.resumption_master = None;
    t.cs = CsSession::Full(vec![7; 16]);
    (conn, store, rec, s)
}

#[test]
fn application_data_flows_while_tickets_are_registered() {
    let (mut conn, store, rec, s) = rfc8448_with_cs_session();
    conn.read_tls(&rec(4));
    conn.process_new_packets().unwrap();
    let Some(CsCall::RegisterTickets(r)) = conn.take_cs_call() else {
        panic!("no c_register_tickets")
    };
    assert_eq!(r.new_session_tickets.len(), 1);
    assert!(!r.last_exchange);
    // The registration is out: application data is still delivered.
    conn.read_tls(&rec(6));
    conn.process_new_packets().unwrap();
    let want = hex::decode(s["records"][6]["payload"].as_str().unwrap()).unwrap();
    let mut buf = vec![0u8; 100];
    let n = conn.read_plaintext(&mut buf);
    assert_eq!(&buf[..n], &want[..]);
    // The ticket is stored once the CS accepted it, not before.
    assert_eq!(store.count("server:443"), 0);
    conn.cs_response(Ok(CsReply::RegisterTickets(pb::CRegisterTicketsResponse {
        registered: 1,
        last_exchange: false,
    })))
    .unwrap();
    assert_eq!(store.count("server:443"), 1);
    // close_notify ends it; the session close is one call with no ticket.
    conn.read_tls(&rec(8));
    conn.process_new_packets().unwrap();
    assert!(conn.peer_closed());
    let mut epi = conn.detach_cs().expect("session to close");
    assert!(!epi.has_in_flight());
    let Some(CsCall::RegisterTickets(r)) = epi.take_last_call() else {
        panic!("no closing call")
    };
    assert!(r.last_exchange && r.new_session_tickets.is_empty());
    assert!(conn.detach_cs().is_none(), "closed once");
}

#[test]
fn a_registration_in_flight_at_the_end_is_detached_and_stores_on_acceptance() {
    let (mut conn, store, rec, _) = rfc8448_with_cs_session();
    conn.read_tls(&rec(4));
    conn.process_new_packets().unwrap();
    assert!(conn.take_cs_call().is_some());
    let mut epi = conn.detach_cs().expect("work left");
    assert!(epi.has_in_flight());
    assert!(!conn.cs_busy());
    epi.in_flight_done(Ok(CsReply::RegisterTickets(pb::CRegisterTicketsResponse {
        registered: 1,
        last_exchange: false,
    })));
    assert_eq!(store.count("server:443"), 1);
    let Some(CsCall::RegisterTickets(r)) = epi.take_last_call() else {
        panic!("no closing call")
    };
    assert!(r.last_exchange);
    // A refused close stores nothing more and breaks nothing.
    epi.last_done(Err(CsError::Unreachable("gone".into())));
    assert_eq!(store.count("server:443"), 1);
}

#[test]
fn a_ticket_refused_by_the_cs_is_not_stored() {
    let (mut conn, store, rec, _) = rfc8448_with_cs_session();
    conn.read_tls(&rec(4));
    conn.process_new_packets().unwrap();
    assert!(conn.take_cs_call().is_some());
    let mut epi = conn.detach_cs().expect("work left");
    epi.in_flight_done(Err(CsError::Unreachable("gone".into())));
    assert_eq!(store.count("server:443"), 0);
}
