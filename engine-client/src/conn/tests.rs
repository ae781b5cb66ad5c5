//! State machine tests without a network: the ClientHello the engine builds, the CS call it
//! asks for, and the ServerHello / HelloRetryRequest rules (RFC 8446 §4.1.3, §4.1.4).

use std::time::SystemTime;

use lurk_proto::freshness::{client_random, FreshnessMode};
use lurk_proto::key_schedule::{finished_verify_data, Secret};
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_finished, ClientHello, EncryptedExtensions, NamedGroup, PskKeyExchangeMode,
    SignatureScheme,
};
use lurk_test_support::rfc8448::{self, TrafficKeys};

use super::server_flight::{Handshake, Schedule, SelectedPsk};
use super::*;
use crate::config::{Ephemeral, TlsMode};
use crate::deframer::Deframer;
use crate::tickets::{StoredTicket, TicketStore};

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
    assert_eq!(
        ch2.cipher_suites, ch1.cipher_suites,
        "RFC 8446 §4.1.2: cipher_suites unchanged"
    );

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

// ---------------------------------------------------------------------------------------------
// The second ClientHello (RFC 8446 §4.1.2), byte for byte

const EXT_KEY_SHARE: u16 = 51;
const EXT_EARLY_DATA: u16 = 42;
const EXT_COOKIE: u16 = 44;
const EXT_PSK: u16 = 41;

/// A HelloRetryRequest for `suite` echoing `session_id`, naming `group` and carrying
/// `cookie` when given.
fn hello_retry_request(
    session_id: &[u8],
    suite: CipherSuite,
    group: Option<NamedGroup>,
    cookie: Option<&[u8]>,
) -> Vec<u8> {
    let mut exts = vec![(SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec())];
    if let Some(g) = group {
        exts.push((51, g.get().to_be_bytes().to_vec()));
    }
    if let Some(c) = cookie {
        let mut b = (c.len() as u16).to_be_bytes().to_vec();
        b.extend_from_slice(c);
        exts.push((44, b));
    }
    server_hello(
        lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM,
        session_id,
        suite.get(),
        &exts,
    )
}

/// Asserts the bytes before the extensions are the same, and that the extensions in both
/// keep their bytes and order; returns the types added, removed or changed, sorted.
fn changed_extensions(ch1: &[u8], ch2: &[u8]) -> Vec<u16> {
    let (a, b) = (
        ClientHello::parse(ch1).unwrap(),
        ClientHello::parse(ch2).unwrap(),
    );
    assert_eq!(
        ch1[4..a.extensions_len_offset],
        ch2[4..b.extensions_len_offset],
        "version, random, legacy_session_id, cipher_suites, compression"
    );
    let list = |c: &ClientHello<'_>| -> Vec<(u16, Vec<u8>)> {
        c.extensions
            .iter()
            .map(|e| (e.typ.get(), e.body.to_vec()))
            .collect()
    };
    let (a, b) = (list(&a), list(&b));
    let mut out: Vec<u16> = a
        .iter()
        .filter(|x| !b.contains(x))
        .chain(b.iter().filter(|y| !a.contains(y)))
        .map(|e| e.0)
        .collect();
    out.sort_unstable();
    out.dedup();
    let common = |x: &[(u16, Vec<u8>)], y: &[(u16, Vec<u8>)]| -> Vec<u16> {
        x.iter()
            .map(|e| e.0)
            .filter(|t| y.iter().any(|f| f.0 == *t))
            .collect()
    };
    assert_eq!(common(&a, &b), common(&b, &a), "order of the extensions");
    out
}

/// A sequence D connection (engine shares, engine-held PSKs) answered with an HRR: the two
/// ClientHellos as sent on the wire, and the HRR.
fn retry_on_the_wire(
    cfg: ClientConfig,
    suite: CipherSuite,
    group: Option<NamedGroup>,
    cookie: Option<&[u8]>,
) -> (ClientConnection, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut conn = ClientConnection::new(Arc::new(cfg), "localhost", 443, false).unwrap();
    let out = conn.take_tls();
    let ch1 = plaintext_messages(&out).remove(0);
    let sid = ClientHello::parse(&ch1).unwrap().legacy_session_id.to_vec();
    let hrr = hello_retry_request(&sid, suite, group, cookie);
    feed(&mut conn, &hrr).unwrap();
    let ch2 = plaintext_messages(&conn.take_tls()).remove(0);
    lurk_proto::wire::check_second_client_hello(&ch1, &hrr, &ch2).unwrap();
    (conn, ch1, hrr, ch2)
}

fn engine_config() -> ClientConfig {
    ClientConfig {
        ephemeral: Ephemeral::Engine,
        alpn: vec![b"h2".to_vec(), b"http/1.1".to_vec()],
        post_handshake_auth: true,
        record_size_limit: Some(16385),
        ..ClientConfig::default()
    }
}

/// A config resuming `ticket` (engine-held PSK), with `early` data.
fn resuming(ticket: StoredTicket, early: Option<&[u8]>) -> ClientConfig {
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    store.insert("localhost:443", ticket);
    ClientConfig {
        ticket_store: Some(store),
        early_data: early.map(<[u8]>::to_vec),
        alpn: Vec::new(),
        ..engine_config()
    }
}

#[test]
fn second_client_hello_after_a_group_hrr_changes_the_key_share_only() {
    let (_, ch1, _, ch2) = retry_on_the_wire(
        engine_config(),
        CipherSuite::TlsAes256GcmSha384,
        Some(NamedGroup::Secp384r1),
        None,
    );
    assert_eq!(changed_extensions(&ch1, &ch2), [EXT_KEY_SHARE]);
    let shares = ClientHello::parse(&ch2).unwrap().key_shares.unwrap();
    assert_eq!(shares.len(), 1);
    assert_eq!(shares[0].group, NamedGroup::Secp384r1);
    assert_eq!(shares[0].key_exchange.len(), 97);
}

#[test]
fn second_client_hello_after_a_cookie_only_hrr_adds_the_cookie_and_keeps_the_shares() {
    let (_, ch1, _, ch2) = retry_on_the_wire(
        ClientConfig {
            key_shares: 2,
            ..engine_config()
        },
        CipherSuite::TlsChacha20Poly1305Sha256,
        None,
        Some(&[0xc0; 200]),
    );
    // Same key shares, same public keys (the key pairs are kept).
    assert_eq!(changed_extensions(&ch1, &ch2), [EXT_COOKIE]);
    let ch2 = ClientHello::parse(&ch2).unwrap();
    assert_eq!(ch2.cookie, Some(&[0xc0; 200][..]));
}

#[test]
fn second_client_hello_after_a_cookie_and_group_hrr() {
    let (_, ch1, _, ch2) = retry_on_the_wire(
        engine_config(),
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        Some(b"cookie"),
    );
    assert_eq!(changed_extensions(&ch1, &ch2), [EXT_COOKIE, EXT_KEY_SHARE]);
}

#[test]
fn second_client_hello_with_a_psk_updates_its_age_and_binder_and_keeps_it_last() {
    let ticket = StoredTicket {
        received_at: SystemTime::now() - std::time::Duration::from_secs(5),
        ..early_ticket(0, None)
    };
    let psk = ticket.psk.clone().unwrap();
    let (_, ch1, hrr, ch2) = retry_on_the_wire(
        resuming(ticket, None),
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        Some(b"cookie"),
    );
    assert_eq!(
        changed_extensions(&ch1, &ch2),
        [EXT_PSK, EXT_COOKIE, EXT_KEY_SHARE]
    );
    let (p1, p2) = (
        ClientHello::parse(&ch1).unwrap().pre_shared_key.unwrap(),
        ClientHello::parse(&ch2).unwrap().pre_shared_key.unwrap(),
    );
    assert_eq!(p1.identities[0].identity, p2.identities[0].identity);
    // The binder of the second ClientHello: over message_hash(ClientHello1) + HRR + the
    // truncated ClientHello2 (RFC 8446 §4.2.11.2).
    let hash = HashAlg::Sha256;
    let mut t = Transcript::new();
    t.add(&ch1);
    t.restart_for_hello_retry(hash).unwrap();
    t.add(&hrr);
    let truncated = lurk_proto::wire::truncated_for_binders(&ch2).unwrap();
    let key = lurk_proto::key_schedule::KeyScheduleEarly::new(hash, Some(&psk))
        .binder_key(lurk_proto::key_schedule::PskKind::Resumption);
    let want =
        lurk_proto::key_schedule::binder(hash, key.as_bytes(), &t.hash_with(hash, truncated));
    assert_eq!(p2.binders[0].binder, want.as_slice());
    assert_ne!(p1.binders[0].binder, p2.binders[0].binder);
}

#[test]
fn second_client_hello_drops_a_psk_of_another_hash_than_the_hrr_suite() {
    let ticket = StoredTicket {
        suite: CipherSuite::TlsAes256GcmSha384,
        psk: Some(Zeroizing::new(vec![0x5a; 48])),
        ..early_ticket(0, None)
    };
    let (_, ch1, _, ch2) = retry_on_the_wire(
        resuming(ticket, None),
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        None,
    );
    // The suites keep their order (the ticket's hash first), the PSK goes.
    assert_eq!(
        ClientHello::parse(&ch1).unwrap().cipher_suites[0],
        CipherSuite::TlsAes256GcmSha384
    );
    assert_eq!(changed_extensions(&ch1, &ch2), [EXT_PSK, EXT_KEY_SHARE]);
    assert!(ClientHello::parse(&ch2).unwrap().pre_shared_key.is_none());
}

#[test]
fn second_client_hello_removes_early_data() {
    let (conn, ch1, _, ch2) = retry_on_the_wire(
        resuming(early_ticket(1000, None), Some(b"GET / HTTP/1.0\r\n\r\n")),
        CipherSuite::TlsAes128GcmSha256,
        None,
        Some(b"cookie"),
    );
    assert!(ClientHello::parse(&ch1).unwrap().early_data);
    assert_eq!(
        changed_extensions(&ch1, &ch2),
        [EXT_PSK, EXT_EARLY_DATA, EXT_COOKIE]
    );
    // The early data went (it is lost: the server cannot read it after an HRR) and the
    // ServerHello may no longer accept it.
    let Some(State::ServerHello(s)) = conn.state.as_ref() else {
        panic!("waiting for the ServerHello");
    };
    assert!(!s.early_data_offered);
}

/// A CS-ephemeral connection answered with a group HRR: the ClientHellos the engine gave
/// c_init_client_hello and c_client_hello, and the second completed as the CS would.
fn cs_retry() -> (ClientConnection, Vec<u8>, Vec<u8>, Vec<u8>) {
    let mut conn = ClientConnection::new(config(Ephemeral::Cs), "localhost", 443, true).unwrap();
    let Some(CsCall::InitClientHello(req)) = conn.take_cs_call() else {
        panic!("expected c_init_client_hello");
    };
    let engine_random: [u8; 32] = req.client_hello[6..38].try_into().unwrap();
    let fresh = client_random(pb::Freshness::Sha256, FreshnessMode::Draft, &engine_random);
    let ch1 = lurk_proto::wire::complete_client_hello(
        &req.client_hello,
        Some(&fresh),
        &[(NamedGroup::X25519, vec![7u8; 32])],
    )
    .unwrap();
    conn.cs_response(Ok(CsReply::InitClientHello(pb::CInitClientHelloResponse {
        session_id: vec![1; 16],
        client_hello: ch1.clone(),
        ..Default::default()
    })))
    .unwrap();
    assert_eq!(first_client_hello(&mut conn), ch1);
    let sid = ClientHello::parse(&ch1).unwrap().legacy_session_id.to_vec();
    let hrr = hello_retry_request(
        &sid,
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        None,
    );
    feed(&mut conn, &hrr).unwrap();
    let Some(CsCall::ClientHello(req2)) = conn.take_cs_call() else {
        panic!("expected c_client_hello");
    };
    let done = lurk_proto::wire::complete_client_hello(
        &req2.client_hello,
        Some(&fresh),
        &[(NamedGroup::Secp256r1, vec![4u8; 65])],
    )
    .unwrap();
    (conn, req.client_hello, req2.client_hello, done)
}

/// `ch` with only its first cipher suite left.
fn narrowed_suites(ch: &[u8]) -> Vec<u8> {
    let p = ClientHello::parse(ch).unwrap();
    let at = 4 + 2 + 32 + 1 + p.legacy_session_id.len();
    let n = usize::from(u16::from_be_bytes([ch[at], ch[at + 1]]));
    let mut v = ch.to_vec();
    v.drain(at + 4..at + 2 + n);
    v[at..at + 2].copy_from_slice(&2u16.to_be_bytes());
    let len = v.len() - 4;
    v[1..4].copy_from_slice(&(len as u32).to_be_bytes()[1..]);
    assert_eq!(ClientHello::parse(&v).unwrap().cipher_suites.len(), 1);
    v
}

/// With a CS session the engine gives c_client_hello the first ClientHello's encoding with
/// the allowed changes, and refuses a completed ClientHello the CS changed otherwise.
#[test]
fn second_client_hello_through_the_cs_is_checked_against_the_first() {
    let (mut conn, sent1, sent2, done) = cs_retry();
    assert_eq!(changed_extensions(&sent1, &sent2), [EXT_KEY_SHARE]);
    conn.cs_response(Ok(CsReply::ClientHello(pb::CClientHelloResponse {
        client_hello: done.clone(),
        ..Default::default()
    })))
    .unwrap();
    let out = conn.take_tls();
    assert_eq!(plaintext_messages(&out[6..]).remove(0), done);

    // A CS that narrows the suites (what the engine used to do) is caught.
    let (mut conn, _, _, done) = cs_retry();
    let e = conn
        .cs_response(Ok(CsReply::ClientHello(pb::CClientHelloResponse {
            client_hello: narrowed_suites(&done),
            ..Default::default()
        })))
        .unwrap_err();
    assert!(
        matches!(&e, Error::CryptoService { exchange: "c_client_hello", message, .. }
            if message.contains("cipher_suites")),
        "{e}"
    );
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
    let s = rfc_1rtt();
    let recs = &s.records;
    let rec = |i: usize| recs[i].record.clone();
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    let cfg = Arc::new(ClientConfig {
        ticket_store: Some(store.clone()),
        middlebox_compat: false,
        ephemeral: Ephemeral::Engine,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::replay(
        cfg,
        &s.messages.client_hello.clone(),
        &s.key_schedule.ecdhe_shared_secret.clone(),
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
        Some(
            &s.key_schedule
                .resumption_psk
                .clone()
                .expect("resumption_psk")[..]
        )
    );

    // Application data both ways, then close_notify both ways.
    conn.write_plaintext(&recs[5].payload.clone()).unwrap();
    assert_eq!(conn.take_tls(), rec(5), "client application data record");
    conn.read_tls(&rec(6));
    conn.process_new_packets().unwrap();
    let mut buf = vec![0u8; 100];
    let n = conn.read_plaintext(&mut buf);
    assert_eq!(&buf[..n], &recs[6].payload.clone()[..]);
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
    let s = rfc_1rtt();
    let recs = &s.records;
    let keys = &s.traffic_keys.server_handshake;
    let iv: [u8; 12] = keys.iv.clone().try_into().unwrap();
    let keys = RecordKeys::new(
        CipherSuite::TlsAes128GcmSha256,
        Zeroizing::new(keys.key.clone()),
        iv,
    );
    let mut flight = recs[2].payload.clone();
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
        &s.messages.client_hello.clone(),
        &s.key_schedule.ecdhe_shared_secret.clone(),
    )
    .unwrap();
    conn.read_tls(&recs[1].record.clone());
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

// ---------------------------------------------------------------------------------------------
// RFC 8448 §3 with a changed EncryptedExtensions

fn rfc_1rtt() -> &'static rfc8448::Section {
    &lurk_test_support::rfc8448().simple_1rtt
}

/// The RFC 8448 §3 EncryptedExtensions without its record_size_limit, with `extra` appended.
fn rfc_ee_with(extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let ee = rfc_1rtt().messages.encrypted_extensions.clone();
    let mut exts = Vec::new();
    for e in &EncryptedExtensions::parse(&ee).unwrap().extensions {
        if e.typ.get() != RECORD_SIZE_LIMIT {
            exts.extend_from_slice(&e.typ.get().to_be_bytes());
            exts.extend_from_slice(&(e.body.len() as u16).to_be_bytes());
            exts.extend_from_slice(e.body);
        }
    }
    for (t, b) in extra {
        exts.extend_from_slice(&t.to_be_bytes());
        exts.extend_from_slice(&(b.len() as u16).to_be_bytes());
        exts.extend_from_slice(b);
    }
    let body_len = exts.len() + 2;
    let mut ee2 = vec![8, 0, (body_len >> 8) as u8, body_len as u8];
    ee2.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    ee2.extend_from_slice(&exts);
    ee2
}

/// The RFC 8448 §3 server flight made of `messages` (EncryptedExtensions onwards, without the
/// Finished), then a server Finished computed over the new transcript, all sealed under the
/// RFC's server handshake key: (ServerHello record, protected flight).
fn rfc_flight(messages: &[Vec<u8>]) -> (Vec<u8>, Vec<u8>) {
    let s = rfc_1rtt();
    let m = &s.messages;
    let mut t = Transcript::new();
    t.add(&m.client_hello.clone());
    t.add(&m.server_hello.clone());
    let mut flight = Vec::new();
    for part in messages {
        t.add(part);
        flight.extend_from_slice(part);
    }
    let server_hs = s.key_schedule.server_handshake_traffic_secret.clone();
    let vd = finished_verify_data(HashAlg::Sha256, &server_hs, &t.hash(HashAlg::Sha256));
    flight.extend(encode_finished(&vd).unwrap());
    (
        s.records[1].record.clone(),
        rfc_seal(&flight, &rfc_1rtt().traffic_keys.server_handshake),
    )
}

/// `payload` as handshake records sealed under the RFC 8448 §3 `keys` (from sequence 0).
fn rfc_seal(payload: &[u8], keys: &TrafficKeys) -> Vec<u8> {
    let keys = RecordKeys::new(
        CipherSuite::TlsAes128GcmSha256,
        Zeroizing::new(keys.key.clone()),
        keys.iv.clone().try_into().unwrap(),
    );
    let mut sealed = Vec::new();
    RecordEncrypter::new(&keys)
        .unwrap()
        .encrypt_all(ContentType::Handshake, payload, &mut sealed)
        .unwrap();
    sealed
}

/// The RFC 8448 §3 server flight with `extra` extensions appended to EncryptedExtensions.
fn rfc_flight_with_ee_extensions(extra: &[(u16, Vec<u8>)]) -> (Vec<u8>, Vec<u8>) {
    let m = &rfc_1rtt().messages;
    rfc_flight(&[
        rfc_ee_with(extra),
        m.server_certificate.clone().expect("server_certificate"),
        m.server_certificate_verify
            .clone()
            .expect("server_certificate_verify"),
    ])
}

fn rfc_replay(cfg: ClientConfig) -> ClientConnection {
    let s = rfc_1rtt();
    ClientConnection::replay(
        Arc::new(ClientConfig {
            middlebox_compat: false,
            ephemeral: Ephemeral::Engine,
            ..cfg
        }),
        &s.messages.client_hello.clone(),
        &s.key_schedule.ecdhe_shared_secret.clone(),
    )
    .unwrap()
}

/// Lengths of the records in `bytes`.
fn record_lengths(bytes: &[u8]) -> Vec<usize> {
    let mut d = Deframer::new();
    d.push(bytes);
    let mut out = Vec::new();
    while let Some(r) = d.next_record().unwrap() {
        out.push(r.payload.len());
    }
    out
}

const RECORD_SIZE_LIMIT: u16 = 28;

#[test]
fn record_size_limit_is_offered_when_configured() {
    let cfg = Arc::new(ClientConfig {
        ephemeral: Ephemeral::Engine,
        record_size_limit: Some(512),
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::new(cfg, "localhost", 443, false).unwrap();
    let raw = first_client_hello(&mut conn);
    assert_eq!(
        ClientHello::parse(&raw).unwrap().record_size_limit,
        Some(512)
    );
    // Not offered by default.
    let (_, ch) = started();
    assert_eq!(ch.record_size_limit, None);
    // RFC 8449 §4: 64 ..= 2^14 + 1 in TLS 1.3.
    for bad in [63, 16386] {
        let cfg = Arc::new(ClientConfig {
            ephemeral: Ephemeral::Engine,
            record_size_limit: Some(bad),
            ..ClientConfig::default()
        });
        assert!(ClientConnection::new(cfg, "localhost", 443, false).is_err());
    }
}

/// RFC 8449 §4: the server's limit (content type included in TLS 1.3) bounds every protected
/// record we send after EncryptedExtensions, application data under later keys too.
#[test]
fn server_record_size_limit_bounds_what_we_send() {
    let mut conn = rfc_replay(ClientConfig {
        record_size_limit: Some(16385),
        ..ClientConfig::default()
    });
    let (sh, flight) = rfc_flight_with_ee_extensions(&[(RECORD_SIZE_LIMIT, vec![0, 100])]);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    conn.process_new_packets().unwrap();
    assert!(!conn.is_handshaking());
    conn.take_tls();
    conn.write_plaintext(&[0x61; 500]).unwrap();
    let lens = record_lengths(&conn.take_tls());
    // 99 bytes of content + the type byte = 100 per record, + the 16-byte tag.
    assert_eq!(lens, vec![116, 116, 116, 116, 116, 5 + 1 + 16]);
    // KeyUpdate keeps the limit.
    conn.key_update(false).unwrap();
    conn.take_tls();
    conn.write_plaintext(&[0x62; 200]).unwrap();
    assert!(record_lengths(&conn.take_tls()).iter().all(|l| *l <= 116));

    // Without the extension in EncryptedExtensions the records are full size.
    let mut conn = rfc_replay(ClientConfig {
        record_size_limit: Some(16385),
        ..ClientConfig::default()
    });
    let (sh, flight) = rfc_flight_with_ee_extensions(&[]);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    conn.process_new_packets().unwrap();
    conn.take_tls();
    conn.write_plaintext(&[0x61; 500]).unwrap();
    assert_eq!(record_lengths(&conn.take_tls()), vec![500 + 1 + 16]);
}

/// RFC 8449 §4: once the server echoes the extension, a protected record longer than our limit
/// is a record_overflow, including the server flight's record that carried the
/// EncryptedExtensions. Without the echo the limit is not negotiated and nothing is enforced.
#[test]
fn our_record_size_limit_is_enforced_once_negotiated() {
    let mut conn = rfc_replay(ClientConfig {
        record_size_limit: Some(100),
        ..ClientConfig::default()
    });
    let (sh, flight) = rfc_flight_with_ee_extensions(&[(RECORD_SIZE_LIMIT, vec![0x40, 1])]);
    assert!(record_lengths(&flight)[0] > 100 + 16);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    assert_eq!(
        conn.process_new_packets().unwrap_err(),
        Error::RecordOverflow
    );
    assert!(conn.is_handshaking());

    let mut conn = rfc_replay(ClientConfig {
        record_size_limit: Some(100),
        ..ClientConfig::default()
    });
    let (sh, flight) = rfc_flight_with_ee_extensions(&[]);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    conn.process_new_packets().unwrap();
    assert!(!conn.is_handshaking());
}

/// RFC 8446 §4.2: an extension response we did not ask for is unsupported_extension; a value
/// below 64 does not parse (RFC 8449 §4).
#[test]
fn server_record_size_limit_rules() {
    // (The RFC's ClientHello offers the extension: the rule is checked on a fresh connection.)
    let (mut conn, _) = started();
    let e = conn
        .core
        .negotiate_record_size_limit(Some(100))
        .unwrap_err();
    assert_eq!(e, PeerMisbehaved::UnsolicitedRecordSizeLimit.into());
    assert_eq!(e.alert(), Some(AlertDescription::UnsupportedExtension));
    conn.core.negotiate_record_size_limit(None).unwrap();

    let mut conn = rfc_replay(ClientConfig {
        record_size_limit: Some(1000),
        ..ClientConfig::default()
    });
    let (sh, flight) = rfc_flight_with_ee_extensions(&[(RECORD_SIZE_LIMIT, vec![0, 63])]);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    let e = conn.process_new_packets().unwrap_err();
    assert!(matches!(e, Error::Wire(_)), "{e:?}");
}

// ---------------------------------------------------------------------------------------------
// 0-RTT rules (RFC 8446 §4.2.10)

fn early_ticket(max_early_data: u32, alpn: Option<&[u8]>) -> StoredTicket {
    StoredTicket {
        identity: vec![0x71; 16],
        age_add: 7,
        lifetime: 3600,
        max_early_data,
        suite: CipherSuite::TlsAes128GcmSha256,
        received_at: SystemTime::now(),
        psk: Some(Zeroizing::new(vec![0x5a; 32])),
        alpn: alpn.map(<[u8]>::to_vec),
    }
}

/// A sequence D connection resuming `ticket` with `early` as early data and `alpn` offered:
/// the ClientHello and the bytes of 0-RTT application data sent after it.
fn early_attempt(
    ticket: StoredTicket,
    alpn: &[&[u8]],
    early: &[u8],
) -> (ClientConnection, Vec<u8>, usize) {
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    store.insert("localhost:443", ticket);
    let cfg = Arc::new(ClientConfig {
        ephemeral: Ephemeral::Engine,
        ticket_store: Some(store),
        early_data: Some(early.to_vec()),
        alpn: alpn.iter().map(|a| a.to_vec()).collect(),
        middlebox_compat: false,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::new(cfg, "localhost", 443, false).unwrap();
    let out = conn.take_tls();
    let mut d = Deframer::new();
    d.push(&out);
    let first = d.next_record().unwrap().unwrap();
    assert_eq!(first.typ, ContentType::Handshake);
    let mut early_bytes = 0;
    while let Some(r) = d.next_record().unwrap() {
        assert_eq!(r.typ, ContentType::ApplicationData);
        // Content + the inner type byte + the 16-byte tag.
        early_bytes += r.payload.len() - 17;
    }
    (conn, first.payload, early_bytes)
}

#[test]
fn early_data_needs_a_ticket_that_allows_it_and_the_same_alpn() {
    let data = b"GET / HTTP/1.0\r\n\r\n";
    // Allowed: 0-RTT with all the data.
    let (_, ch, n) = early_attempt(early_ticket(1000, None), &[], data);
    let ch = ClientHello::parse(&ch).unwrap();
    assert!(ch.early_data && ch.pre_shared_key.is_some());
    assert_eq!(n, data.len());
    // Same ALPN as the ticket's connection, offered first.
    let (_, ch, n) = early_attempt(early_ticket(1000, Some(b"h2")), &[b"h2", b"http/1.1"], data);
    assert!(ClientHello::parse(&ch).unwrap().early_data);
    assert_eq!(n, data.len());

    // max_early_data_size 0; another ALPN first; an ALPN on one side only. The ticket is
    // still offered for resumption, without early data.
    for (ticket, alpn) in [
        (early_ticket(0, None), &[][..]),
        (
            early_ticket(1000, Some(b"h2")),
            &[&b"http/1.1"[..], b"h2"][..],
        ),
        (early_ticket(1000, Some(b"h2")), &[][..]),
        (early_ticket(1000, None), &[&b"h2"[..]][..]),
    ] {
        let (conn, ch, n) = early_attempt(ticket, alpn, data);
        let ch = ClientHello::parse(&ch).unwrap();
        assert!(!ch.early_data, "{alpn:?}");
        assert!(ch.pre_shared_key.is_some());
        assert_eq!(n, 0);
        assert!(!conn.summary().early_data_offered);
    }
}

#[test]
fn early_data_is_at_most_max_early_data_size() {
    let data = [0x65u8; 100];
    let (conn, ch, n) = early_attempt(early_ticket(10, None), &[], &data);
    assert!(ClientHello::parse(&ch).unwrap().early_data);
    assert_eq!(n, 10);
    let Some(State::ServerHello(s)) = conn.state.as_ref() else {
        panic!("waiting for the ServerHello");
    };
    let early = s.early.as_ref().unwrap();
    assert_eq!((early.sent, early.data.len()), (10, 100));
}

/// The EncryptedExtensions of a resumption that offered early data, handled in the state that
/// expects it (the ServerHello's effects set by hand: PSK `selected`, `suite`).
fn encrypted_extensions_after_early_offer(
    ticket: StoredTicket,
    alpn_offered: &[&[u8]],
    selected: usize,
    suite: CipherSuite,
    ee_alpn: Option<&[u8]>,
    ee_early_data: bool,
) -> Result<(), Error> {
    let (mut conn, _, _) = early_attempt(ticket, alpn_offered, b"early");
    let Some(State::ServerHello(sh)) = conn.state.take() else {
        panic!("waiting for the ServerHello");
    };
    assert!(sh.early_data_offered);
    let sh = *sh;
    // The first PSK's ticket (the one early data goes with).
    let ticket = sh.psks.into_iter().next().and_then(|p| p.ticket);
    let state = Box::new(ExpectEncryptedExtensions {
        hs: Handshake {
            suite,
            hash: suite.hash().unwrap(),
            transcript: sh.transcript,
            early: sh.early,
            server_hs: Secret::from_bytes(&[0; 32]),
            schedule: Schedule::Cs {
                session_id: Vec::new(),
                server_flight: Vec::new(),
                prefinished: None,
            },
        },
        psk: Some(SelectedPsk {
            index: selected,
            ticket,
        }),
        early_data_offered: sh.early_data_offered,
    });
    let mut exts = Vec::new();
    if let Some(p) = ee_alpn {
        exts.extend_from_slice(&16u16.to_be_bytes());
        exts.extend_from_slice(&((p.len() + 3) as u16).to_be_bytes());
        exts.extend_from_slice(&((p.len() + 1) as u16).to_be_bytes());
        exts.push(p.len() as u8);
        exts.extend_from_slice(p);
    }
    if ee_early_data {
        exts.extend_from_slice(&[0, 42, 0, 0]);
    }
    let len = exts.len() + 2;
    let mut encoded = vec![8, 0, (len >> 8) as u8, len as u8];
    encoded.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    encoded.extend_from_slice(&exts);
    let m = HandshakeMessage {
        typ: HandshakeType::EncryptedExtensions,
        encoded,
    };
    state.handle(&mut conn.core, &m).map(|_| ())
}

#[test]
fn accepted_early_data_keeps_the_tickets_alpn_suite_and_psk() {
    let aes128 = CipherSuite::TlsAes128GcmSha256;
    let h2 = Some(&b"h2"[..]);
    let t = || early_ticket(1000, Some(b"h2"));
    let offered: &[&[u8]] = &[b"h2", b"http/1.1"];
    encrypted_extensions_after_early_offer(t(), offered, 0, aes128, h2, true).unwrap();
    // Rejected early data may come with another ALPN.
    encrypted_extensions_after_early_offer(t(), offered, 0, aes128, Some(b"http/1.1"), false)
        .unwrap();

    let cases: [(Option<&[u8]>, CipherSuite, Error); 3] = [
        (
            Some(b"http/1.1"),
            aes128,
            PeerMisbehaved::EarlyDataParametersChanged.into(),
        ),
        (
            None,
            aes128,
            PeerMisbehaved::EarlyDataParametersChanged.into(),
        ),
        (
            h2,
            CipherSuite::TlsChacha20Poly1305Sha256,
            PeerMisbehaved::EarlyDataParametersChanged.into(),
        ),
    ];
    for (alpn, suite, want) in cases {
        let e =
            encrypted_extensions_after_early_offer(t(), offered, 0, suite, alpn, true).unwrap_err();
        assert_eq!(e, want);
        assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
    }
    // §4.2.11: early data accepted with another PSK than the first.
    let e = encrypted_extensions_after_early_offer(t(), offered, 1, aes128, h2, true).unwrap_err();
    assert_eq!(e, PeerMisbehaved::EarlyDataAcceptedWithOtherPsk.into());
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

// ---------------------------------------------------------------------------------------------
// Exporter (RFC 8446 §7.5)

/// HKDF-Expand-Label with SHA-256, written out with ring alone (RFC 8446 §7.1).
fn ring_expand_label(secret: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    struct Len(usize);
    impl ring::hkdf::KeyType for Len {
        fn len(&self) -> usize {
            self.0
        }
    }
    let full_label = [&b"tls13 "[..], label].concat();
    let mut info = (len as u16).to_be_bytes().to_vec();
    info.push(full_label.len() as u8);
    info.extend_from_slice(&full_label);
    info.push(context.len() as u8);
    info.extend_from_slice(context);
    let prk = ring::hkdf::Prk::new_less_safe(ring::hkdf::HKDF_SHA256, secret);
    let mut out = vec![0u8; len];
    prk.expand(&[&info], Len(len))
        .unwrap()
        .fill(&mut out)
        .unwrap();
    out
}

/// TLS-Exporter from exporter_master_secret, step by step with ring: Derive-Secret(ems,
/// label, "") then HKDF-Expand-Label(., "exporter", Hash(context), len).
fn ring_exporter(ems: &[u8], label: &[u8], context: &[u8], len: usize) -> Vec<u8> {
    let sha256 = |d: &[u8]| {
        ring::digest::digest(&ring::digest::SHA256, d)
            .as_ref()
            .to_vec()
    };
    let derived = ring_expand_label(ems, label, &sha256(b""), 32);
    ring_expand_label(&derived, b"exporter", &sha256(context), len)
}

const EXPORT_LABEL: &[u8] = b"EXPERIMENTAL-lurk-test";

/// Sequence D: the engine's own exporter_master_secret is RFC 8448's, and the exported keying
/// material is the independent computation's.
#[test]
fn exporter_known_answer_sequence_d() {
    let s = rfc_1rtt();
    let ems = s.key_schedule.exporter_master_secret.clone();
    let mut conn = rfc_replay(ClientConfig {
        exporter: true,
        ..ClientConfig::default()
    });
    assert_eq!(
        conn.export_keying_material(EXPORT_LABEL, b"", 32)
            .unwrap_err(),
        Error::HandshakeNotComplete
    );
    conn.read_tls(&s.records[1].record.clone());
    conn.read_tls(&s.records[2].record.clone());
    conn.process_new_packets().unwrap();
    let Some(State::Traffic(t)) = conn.state.as_ref() else {
        panic!("handshake not done");
    };
    assert_eq!(t.exporter_master.as_ref().unwrap().as_bytes(), &ems[..]);
    for (context, len) in [(&b""[..], 32), (&b"some context"[..], 77), (&b"x"[..], 1)] {
        assert_eq!(
            conn.export_keying_material(EXPORT_LABEL, context, len)
                .unwrap(),
            ring_exporter(&ems, EXPORT_LABEL, context, len),
            "{context:?} {len}"
        );
    }
    // Different labels, different keys.
    assert_ne!(
        conn.export_keying_material(b"EXPERIMENTAL-a", b"", 32)
            .unwrap(),
        conn.export_keying_material(b"EXPERIMENTAL-b", b"", 32)
            .unwrap()
    );
    // HkdfLabel limits: an error, not a panic.
    assert!(conn.export_keying_material(b"", b"", 32).is_err());
    assert!(conn.export_keying_material(&[b'a'; 250], b"", 32).is_err());
    assert!(conn
        .export_keying_material(EXPORT_LABEL, b"", 255 * 32 + 1)
        .is_err());
    conn.export_keying_material(&[b'a'; 249], &[7; 1000], 255 * 32)
        .unwrap();

    // Not enabled: the secret is not kept.
    let mut conn = rfc_replay(ClientConfig::default());
    conn.read_tls(&s.records[1].record.clone());
    conn.read_tls(&s.records[2].record.clone());
    conn.process_new_packets().unwrap();
    assert_eq!(
        conn.export_keying_material(EXPORT_LABEL, b"", 32)
            .unwrap_err(),
        Error::ExporterNotEnabled
    );
}

fn cs_secret(kind: pb::SecretType, v: &[u8]) -> pb::Secret {
    pb::Secret {
        secret_type: kind as i32,
        value: v.to_vec(),
    }
}

/// RFC 8448 §3 as sequence A: the share counts as CS-made, the CS answers with the RFC's
/// secrets. `x` is asked for in c_client_finished exactly when the exporter is enabled; the
/// client Finished record is the RFC's; the export uses the CS's exporter_master_secret.
fn rfc_sequence_a(exporter: bool) -> (ClientConnection, pb::CClientFinishedRequest) {
    let s = rfc_1rtt();
    let ks = &s.key_schedule;
    let mut conn = rfc_replay(ClientConfig {
        exporter,
        ..ClientConfig::default()
    });
    conn.core.has_cs = true;
    {
        let Some(State::ServerHello(hs)) = conn.state.as_mut() else {
            panic!("waiting for the ServerHello");
        };
        hs.shares[0].injected = None;
        hs.cs_session = Some(vec![1; 16]);
    }
    conn.read_tls(&s.records[1].record.clone());
    conn.read_tls(&s.records[2].record.clone());
    conn.process_new_packets().unwrap();
    let Some(CsCall::ServerHello(_)) = conn.take_cs_call() else {
        panic!("expected c_server_hello");
    };
    conn.cs_response(Ok(CsReply::ServerHello(pb::CServerHelloResponse {
        secrets: vec![
            cs_secret(
                pb::SecretType::ClientHandshakeTraffic,
                &ks.client_handshake_traffic_secret,
            ),
            cs_secret(
                pb::SecretType::ServerHandshakeTraffic,
                &ks.server_handshake_traffic_secret,
            ),
        ],
    })))
    .unwrap();
    let Some(CsCall::ClientFinished(req)) = conn.take_cs_call() else {
        panic!("expected c_client_finished");
    };
    let mut secrets = vec![
        cs_secret(
            pb::SecretType::ClientApplicationTraffic,
            &ks.client_application_traffic_secret_0,
        ),
        cs_secret(
            pb::SecretType::ServerApplicationTraffic,
            &ks.server_application_traffic_secret_0,
        ),
    ];
    if req.secret_request.as_ref().is_some_and(|r| r.x) {
        secrets.push(cs_secret(
            pb::SecretType::ExporterMaster,
            &ks.exporter_master_secret,
        ));
    }
    conn.cs_response(Ok(CsReply::ClientFinished(pb::CClientFinishedResponse {
        certificate_verify: Vec::new(),
        client_finished: s.messages.client_finished.clone(),
        secrets,
        last_exchange: false,
    })))
    .unwrap();
    assert_eq!(conn.take_tls(), s.records[3].record.clone());
    (conn, req)
}

#[test]
fn exporter_known_answer_sequence_a() {
    let s = rfc_1rtt();
    let ems = s.key_schedule.exporter_master_secret.clone();
    let (conn, req) = rfc_sequence_a(true);
    assert!(req.secret_request.unwrap().x, "x asked for");
    assert_eq!(
        conn.export_keying_material(EXPORT_LABEL, b"ctx", 48)
            .unwrap(),
        ring_exporter(&ems, EXPORT_LABEL, b"ctx", 48)
    );

    let (conn, req) = rfc_sequence_a(false);
    assert!(!req.secret_request.unwrap().x, "x not asked for");
    assert_eq!(
        conn.export_keying_material(EXPORT_LABEL, b"ctx", 48)
            .unwrap_err(),
        Error::ExporterNotEnabled
    );
}

/// RFC 8448 §3 up to the server's NewSessionTicket, with the session turned into a CS-held
/// one (sequence A): the ticket is for the CS to register.
fn rfc8448_with_cs_session() -> (
    ClientConnection,
    Arc<crate::tickets::MemoryTicketStore>,
    impl Fn(usize) -> Vec<u8>,
    &'static rfc8448::Section,
) {
    let s = rfc_1rtt();
    let store = Arc::new(crate::tickets::MemoryTicketStore::default());
    let cfg = Arc::new(ClientConfig {
        ticket_store: Some(store.clone()),
        middlebox_compat: false,
        ephemeral: Ephemeral::Engine,
        ..ClientConfig::default()
    });
    let mut conn = ClientConnection::replay(
        cfg,
        &s.messages.client_hello.clone(),
        &s.key_schedule.ecdhe_shared_secret.clone(),
    )
    .unwrap();
    let recs = &s.records;
    let rec = move |i: usize| recs[i].record.clone();
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
    let want = s.records[6].payload.clone();
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

// ---------------------------------------------------------------------------------------------
// RFC 8446 client MUSTs (docs/conformance.md): the ServerHello after an HRR, PSK selection

/// A sequence D connection with the configured PSK/share offer, answered with `sh`.
fn answer_with(cfg: ClientConfig, sh: impl FnOnce(&ClientHello<'_>) -> Vec<u8>) -> Error {
    let mut conn = ClientConnection::new(Arc::new(cfg), "localhost", 443, false).unwrap();
    let ch = plaintext_messages(&conn.take_tls()).remove(0);
    let ch = ClientHello::parse(&ch).unwrap();
    feed(&mut conn, &sh(&ch)).unwrap_err()
}

/// A ServerHello echoing `ch`'s session id, selecting `suite`, with `exts` and
/// supported_versions.
fn sh_for(ch: &ClientHello<'_>, suite: CipherSuite, exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut all = vec![(SUPPORTED_VERSIONS_13.0, SUPPORTED_VERSIONS_13.1.to_vec())];
    all.extend_from_slice(exts);
    server_hello([1; 32], ch.legacy_session_id, suite.get(), &all)
}

const SELECTED_PSK_0: (u16, [u8; 2]) = (41, [0, 0]);

#[test]
fn server_hello_after_a_hello_retry_request_keeps_its_suite() {
    // RFC 8446 §4.1.4: the ServerHello's cipher suite is the HRR's (illegal_parameter).
    let (mut conn, _, _, ch2) = retry_on_the_wire(
        engine_config(),
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        None,
    );
    let ch2 = ClientHello::parse(&ch2).unwrap();
    let sh = sh_for(
        &ch2,
        CipherSuite::TlsAes256GcmSha384,
        &[key_share(NamedGroup::Secp256r1, &[4; 65])],
    );
    let e = feed(&mut conn, &sh).unwrap_err();
    assert_eq!(
        e,
        PeerMisbehaved::SelectedDifferentCipherSuiteAfterRetry.into()
    );
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

#[test]
fn server_hello_after_a_hello_retry_request_keeps_its_group() {
    // RFC 8446 §4.2.8: after an HRR naming a group, the ServerHello's key share is for that
    // group (illegal_parameter).
    let (mut conn, _, _, ch2) = retry_on_the_wire(
        engine_config(),
        CipherSuite::TlsAes128GcmSha256,
        Some(NamedGroup::Secp256r1),
        None,
    );
    let ch2 = ClientHello::parse(&ch2).unwrap();
    let sh = sh_for(
        &ch2,
        CipherSuite::TlsAes128GcmSha256,
        &[key_share(NamedGroup::X25519, &[9; 32])],
    );
    let e = feed(&mut conn, &sh).unwrap_err();
    assert_eq!(e, PeerMisbehaved::WrongGroupForKeyShare.into());
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

#[test]
fn hello_retry_request_with_an_unoffered_suite_is_refused() {
    // RFC 8446 §4.1.4: the HRR's cipher suite was offered (illegal_parameter).
    let cfg = ClientConfig {
        cipher_suites: vec![CipherSuite::TlsAes128GcmSha256],
        ..engine_config()
    };
    let e = answer_with(cfg, |ch| {
        hello_retry_request(
            ch.legacy_session_id,
            CipherSuite::TlsAes256GcmSha384,
            Some(NamedGroup::Secp256r1),
            None,
        )
    });
    assert_eq!(e, PeerMisbehaved::SelectedUnofferedCipherSuite.into());
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

#[test]
fn selected_psk_must_have_the_hash_of_the_selected_suite() {
    // RFC 8446 §4.2.11: a SHA-256 ticket selected with a SHA-384 suite (illegal_parameter).
    let e = answer_with(resuming(early_ticket(0, None), None), |ch| {
        sh_for(
            ch,
            CipherSuite::TlsAes256GcmSha384,
            &[
                key_share(NamedGroup::X25519, &[9; 32]),
                (SELECTED_PSK_0.0, SELECTED_PSK_0.1.to_vec()),
            ],
        )
    });
    assert_eq!(e, PeerMisbehaved::SelectedPskWithWrongHash.into());
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

#[test]
fn psk_key_exchange_mode_must_be_one_offered() {
    // RFC 8446 §4.2.9: psk_dhe_ke only offered, the server answers psk_ke (no key_share)…
    let e = answer_with(resuming(early_ticket(0, None), None), |ch| {
        sh_for(
            ch,
            CipherSuite::TlsAes128GcmSha256,
            &[(SELECTED_PSK_0.0, SELECTED_PSK_0.1.to_vec())],
        )
    });
    assert_eq!(e, PeerMisbehaved::UnofferedPskKeyExchangeMode.into());
    // …and psk_ke only offered, the server answers psk_dhe_ke.
    let cfg = ClientConfig {
        psk_modes: vec![PskKeyExchangeMode::PskKe],
        ..resuming(early_ticket(0, None), None)
    };
    let e = answer_with(cfg, |ch| {
        sh_for(
            ch,
            CipherSuite::TlsAes128GcmSha256,
            &[
                key_share(NamedGroup::X25519, &[9; 32]),
                (SELECTED_PSK_0.0, SELECTED_PSK_0.1.to_vec()),
            ],
        )
    });
    assert_eq!(e, PeerMisbehaved::UnofferedPskKeyExchangeMode.into());
}

// ---------------------------------------------------------------------------------------------
// RFC 8446 client MUSTs: the server flight (RFC 8448 §3 flights, altered and re-sealed)

/// Feeds the RFC 8448 §3 ServerHello and the flight of `messages` to a replayed connection
/// configured with `cfg`.
fn rfc_flight_error(cfg: ClientConfig, messages: &[Vec<u8>]) -> Error {
    let mut conn = rfc_replay(cfg);
    let (sh, flight) = rfc_flight(messages);
    conn.read_tls(&sh);
    conn.read_tls(&flight);
    let e = conn.process_new_packets().unwrap_err();
    assert!(conn.is_handshaking(), "no handshake completes after {e:?}");
    e
}

const ALPN: u16 = 16;

#[test]
fn encrypted_extensions_may_not_accept_what_was_not_offered() {
    let cert = rfc_1rtt()
        .messages
        .server_certificate
        .clone()
        .expect("server_certificate");
    let cv = rfc_1rtt()
        .messages
        .server_certificate_verify
        .clone()
        .expect("server_certificate_verify");
    // RFC 8446 §4.2.10: early_data in EncryptedExtensions without an offer.
    let e = rfc_flight_error(
        ClientConfig::default(),
        &[rfc_ee_with(&[(42, vec![])]), cert.clone(), cv.clone()],
    );
    assert_eq!(e, PeerMisbehaved::UnsolicitedEarlyDataExtension.into());
    // RFC 7301 §3.2 (RFC 8446 §4.2: only extensions the client offered): an ALPN protocol
    // the client did not list, with or without an ALPN offer.
    let h2 = (ALPN, vec![0, 3, 2, b'h', b'2']);
    for alpn in [vec![b"http/1.1".to_vec()], vec![]] {
        let e = rfc_flight_error(
            ClientConfig {
                alpn,
                ..ClientConfig::default()
            },
            &[
                rfc_ee_with(std::slice::from_ref(&h2)),
                cert.clone(),
                cv.clone(),
            ],
        );
        assert_eq!(e, PeerMisbehaved::UnofferedAlpnProtocol.into());
    }
}

#[test]
fn certificate_request_context_must_be_empty_in_the_handshake() {
    // RFC 8446 §4.3.2: "certificate_request_context ... SHALL be zero length" in the handshake.
    let sig_algs = [0, 13, 0, 4, 0, 2, 8, 4];
    let mut body = vec![1, 0x77]; // context: one byte
    body.extend_from_slice(&(sig_algs.len() as u16).to_be_bytes());
    body.extend_from_slice(&sig_algs);
    let mut cr = vec![13, 0, 0, body.len() as u8];
    cr.extend_from_slice(&body);
    let e = rfc_flight_error(
        ClientConfig::default(),
        &[
            rfc_ee_with(&[]),
            cr,
            rfc_1rtt()
                .messages
                .server_certificate
                .clone()
                .expect("server_certificate"),
            rfc_1rtt()
                .messages
                .server_certificate_verify
                .clone()
                .expect("server_certificate_verify"),
        ],
    );
    assert_eq!(e, PeerMisbehaved::IllegalCertificateRequestContext.into());
    assert_eq!(e.alert(), Some(AlertDescription::IllegalParameter));
}

#[test]
fn server_certificate_needs_an_empty_context_and_a_certificate() {
    // RFC 8446 §4.4.2: the server's certificate_request_context is empty…
    let with_context = vec![11, 0, 0, 5, 1, 0x99, 0, 0, 0];
    let e = rfc_flight_error(ClientConfig::default(), &[rfc_ee_with(&[]), with_context]);
    assert_eq!(e, PeerMisbehaved::ServerCertificateWithContext.into());
    // …and §4.4.2.4: an empty certificate_list is decode_error.
    let empty = vec![11, 0, 0, 4, 0, 0, 0, 0];
    let e = rfc_flight_error(ClientConfig::default(), &[rfc_ee_with(&[]), empty]);
    assert_eq!(e, PeerMisbehaved::EmptyServerCertificate.into());
    assert_eq!(e.alert(), Some(AlertDescription::DecodeError));
}

#[test]
fn a_psk_handshake_has_no_certificate_request() {
    // RFC 8446 §4.3.2: a server authenticating with a PSK MUST NOT send a
    // CertificateRequest in the main handshake: after its EncryptedExtensions a PSK handshake
    // takes the server Finished only (unexpected_message).
    let (mut conn, _, _) = early_attempt(early_ticket(0, None), &[], b"");
    let Some(State::ServerHello(sh)) = conn.state.take() else {
        panic!("waiting for the ServerHello");
    };
    let sh = *sh;
    let suite = CipherSuite::TlsAes128GcmSha256;
    let state = Box::new(ExpectEncryptedExtensions {
        hs: Handshake {
            suite,
            hash: HashAlg::Sha256,
            transcript: sh.transcript,
            early: None,
            server_hs: Secret::from_bytes(&[0; 32]),
            schedule: Schedule::Cs {
                session_id: Vec::new(),
                server_flight: Vec::new(),
                prefinished: None,
            },
        },
        psk: Some(SelectedPsk {
            index: 0,
            ticket: sh.psks.into_iter().next().and_then(|p| p.ticket),
        }),
        early_data_offered: false,
    });
    let ee = HandshakeMessage {
        typ: HandshakeType::EncryptedExtensions,
        encoded: vec![8, 0, 0, 2, 0, 0],
    };
    let next = state.handle(&mut conn.core, &ee).unwrap();
    assert!(matches!(next, State::Finished(_)));
    conn.state = Some(next);
    let sig_algs = [0, 13, 0, 4, 0, 2, 8, 4];
    let mut cr = vec![13, 0, 0, 3 + sig_algs.len() as u8, 0];
    cr.extend_from_slice(&(sig_algs.len() as u16).to_be_bytes());
    cr.extend_from_slice(&sig_algs);
    let e = conn
        .handle_message(HandshakeMessage {
            typ: HandshakeType::CertificateRequest,
            encoded: cr,
        })
        .unwrap_err();
    assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
}

#[test]
fn post_handshake_certificate_request_needs_post_handshake_auth_offered() {
    // RFC 8446 §4.6.2: a client that did not send post_handshake_auth gets no
    // CertificateRequest after the handshake (unexpected_message).
    let s = rfc_1rtt();
    let recs = &s.records;
    let mut conn = rfc_replay(ClientConfig::default());
    conn.read_tls(&recs[1].record.clone());
    conn.read_tls(&recs[2].record.clone());
    conn.process_new_packets().unwrap();
    assert!(!conn.is_handshaking());
    let sig_algs = [0, 13, 0, 4, 0, 2, 8, 4];
    let mut cr = vec![13, 0, 0, 4 + sig_algs.len() as u8, 1, 0x42];
    cr.extend_from_slice(&(sig_algs.len() as u16).to_be_bytes());
    cr.extend_from_slice(&sig_algs);
    conn.read_tls(&rfc_seal(&cr, &rfc_1rtt().traffic_keys.server_application));
    let e = conn.process_new_packets().unwrap_err();
    assert_eq!(e, PeerMisbehaved::UnsolicitedPostHandshakeAuth.into());
    assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
}

#[test]
fn the_server_answers_no_extension_that_was_not_offered() {
    // RFC 8446 §4.2: "Implementations MUST NOT send extension responses if the remote
    // endpoint did not send the corresponding extension requests, with the exception of the
    // "cookie" extension in the HelloRetryRequest" (unsupported_extension).
    let unknown = (0x7a7a, vec![]);
    // ServerHello.
    let e = answer_with(engine_config(), |ch| {
        sh_for(
            ch,
            CipherSuite::TlsAes128GcmSha256,
            &[key_share(NamedGroup::X25519, &[9; 32]), unknown.clone()],
        )
    });
    assert_eq!(e, PeerMisbehaved::UnsolicitedExtension.into());
    assert_eq!(e.alert(), Some(AlertDescription::UnsupportedExtension));
    // HelloRetryRequest: an unknown extension is refused, the cookie is not.
    let e = answer_with(engine_config(), |ch| {
        let mut hrr = hello_retry_request(
            ch.legacy_session_id,
            CipherSuite::TlsAes128GcmSha256,
            Some(NamedGroup::Secp256r1),
            Some(b"cookie"),
        );
        // Append the unknown extension (type, zero length) and fix the lengths.
        hrr.extend_from_slice(&[0x7a, 0x7a, 0, 0]);
        let body = hrr.len() - 4;
        hrr[2..4].copy_from_slice(&(body as u16).to_be_bytes());
        let at = 4 + 2 + 32 + 1 + ch.legacy_session_id.len() + 3;
        let exts = u16::from_be_bytes([hrr[at], hrr[at + 1]]) + 4;
        hrr[at..at + 2].copy_from_slice(&exts.to_be_bytes());
        hrr
    });
    assert_eq!(e, PeerMisbehaved::UnsolicitedExtension.into());
    // EncryptedExtensions.
    let e = rfc_flight_error(
        ClientConfig::default(),
        &[
            rfc_ee_with(&[unknown]),
            rfc_1rtt()
                .messages
                .server_certificate
                .clone()
                .expect("server_certificate"),
            rfc_1rtt()
                .messages
                .server_certificate_verify
                .clone()
                .expect("server_certificate_verify"),
        ],
    );
    assert_eq!(e, PeerMisbehaved::UnsolicitedExtension.into());
}

#[test]
fn a_key_update_inside_the_handshake_is_unexpected() {
    // RFC 8446 §4.6.3: KeyUpdate only after the Finished messages; in the server's flight it
    // is a message out of order (unexpected_message).
    let ku = lurk_proto::wire::encode_key_update(KeyUpdateRequest::UpdateRequested);
    let e = rfc_flight_error(ClientConfig::default(), &[ku]);
    assert!(
        matches!(
            e,
            Error::InappropriateHandshakeMessage {
                got: HandshakeType::KeyUpdate,
                ..
            }
        ),
        "{e:?}"
    );
    assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
}

#[test]
fn without_a_suitable_key_the_client_certificate_is_empty() {
    // RFC 8446 §4.4.2: "If the server requests client authentication but no suitable
    // certificate is available, the client MUST send a Certificate message containing no
    // certificates".
    let cr = |scheme: SignatureScheme| {
        let mut body = vec![0u8];
        let s = scheme.get().to_be_bytes();
        body.extend_from_slice(&[0, 8, 0, 13, 0, 4, 0, 2, s[0], s[1]]);
        let mut m = vec![13, 0, 0, body.len() as u8];
        m.extend_from_slice(&body);
        m
    };
    let key = crate::config::ClientKey {
        key_id: "p256".into(),
        certificate_chain: vec![vec![0x30, 0x03, 0x02, 0x01, 0x01]],
        signature_schemes: vec![SignatureScheme::EcdsaSecp256r1Sha256],
    };
    let core_with = |client_key| {
        let (conn, _) = started();
        let mut core = conn.core;
        core.config = Arc::new(ClientConfig {
            client_key,
            ..(*core.config).clone()
        });
        core
    };
    let certs = |encoded: &[u8]| {
        lurk_proto::wire::Certificate::parse(encoded)
            .unwrap()
            .entries
            .len()
    };
    // No key configured; a key the server's schemes exclude.
    for (client_key, scheme) in [
        (None, SignatureScheme::EcdsaSecp256r1Sha256),
        (Some(key.clone()), SignatureScheme::Ed25519),
    ] {
        let (encoded, key_id) =
            server_flight::client_certificate(&core_with(client_key), &cr(scheme)).unwrap();
        assert_eq!(certs(&encoded), 0);
        assert!(key_id.is_empty());
    }
    // The key fits: its chain goes.
    let (encoded, key_id) = server_flight::client_certificate(
        &core_with(Some(key)),
        &cr(SignatureScheme::EcdsaSecp256r1Sha256),
    )
    .unwrap();
    assert_eq!(certs(&encoded), 1);
    assert_eq!(key_id, "p256");
}

#[test]
fn server_certificate_entries_carry_no_extension_that_was_not_offered() {
    // RFC 8446 §4.4.2: "Extensions in the Certificate message from the server MUST correspond
    // to ones from the ClientHello message": the engine offers no signed_certificate_timestamp.
    let rfc = rfc_1rtt()
        .messages
        .server_certificate
        .clone()
        .expect("server_certificate");
    let leaf = lurk_proto::wire::Certificate::parse(&rfc).unwrap().entries[0]
        .cert_data
        .to_vec();
    let certificate = |exts: &[u8]| {
        let mut entry = (leaf.len() as u32).to_be_bytes()[1..].to_vec();
        entry.extend_from_slice(&leaf);
        entry.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        entry.extend_from_slice(exts);
        let mut body = vec![0u8];
        body.extend_from_slice(&(entry.len() as u32).to_be_bytes()[1..]);
        body.extend_from_slice(&entry);
        let mut m = vec![11];
        m.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
        m.extend_from_slice(&body);
        m
    };
    // Without extensions the rebuilt message is the RFC's.
    assert_eq!(certificate(&[]), rfc);
    let sct = [0, 18, 0, 3, 1, 2, 3];
    let e = rfc_flight_error(
        ClientConfig::default(),
        &[
            rfc_ee_with(&[]),
            certificate(&sct),
            rfc_1rtt()
                .messages
                .server_certificate_verify
                .clone()
                .expect("server_certificate_verify"),
        ],
    );
    assert_eq!(e, PeerMisbehaved::UnsolicitedExtension.into());
    assert_eq!(e.alert(), Some(AlertDescription::UnsupportedExtension));
}

#[test]
fn the_write_key_is_updated_before_its_usage_limit() {
    // RFC 8446 §5.5: a KeyUpdate (update_not_requested) goes before the record that would
    // reach the limit; the data then goes under the next client application traffic key.
    let s = rfc_1rtt();
    let recs = &s.records;
    let mut conn = rfc_replay(ClientConfig::default());
    conn.read_tls(&recs[1].record.clone());
    conn.read_tls(&recs[2].record.clone());
    conn.process_new_packets().unwrap();
    conn.take_tls();
    let limit = KEY_UPDATE_AFTER_RECORDS;
    conn.core.encrypter.as_mut().unwrap().set_seq(limit);
    conn.write_plaintext(b"after the limit").unwrap();
    let out = conn.take_tls();

    let keys = &s.traffic_keys.client_application;
    let old = RecordKeys::new(
        CipherSuite::TlsAes128GcmSha256,
        Zeroizing::new(keys.key.clone()),
        keys.iv.clone().try_into().unwrap(),
    );
    let next = lurk_proto::key_schedule::next_application_traffic_secret(
        HashAlg::Sha256,
        &s.key_schedule.client_application_traffic_secret_0.clone(),
    );
    let new = record_keys(CipherSuite::TlsAes128GcmSha256, &next).unwrap();
    let mut d = Deframer::new();
    d.push(&out);
    let first = d.next_record().unwrap().unwrap();
    let second = d.next_record().unwrap().unwrap();
    assert!(d.next_record().unwrap().is_none());
    let mut dec = RecordDecrypter::new(&old).unwrap();
    dec.set_seq(limit);
    let ku = dec.decrypt(first).unwrap();
    assert_eq!(ku.typ, ContentType::Handshake);
    assert_eq!(
        ku.payload,
        [24, 0, 0, 1, 0],
        "KeyUpdate(update_not_requested)"
    );
    let data = RecordDecrypter::new(&new).unwrap().decrypt(second).unwrap();
    assert_eq!(data.typ, ContentType::ApplicationData);
    assert_eq!(data.payload, b"after the limit");
}
