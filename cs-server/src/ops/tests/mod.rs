//! Unit tests of each exchange's refusals against a real `Cs` without a token: memory
//! ephemerals, a SQLite store in a temp dir sealed by the store suite's software sealer.
//! The test plays the engine and the server: the handshakes are the RFC 8448 §3/§4 traces
//! where they fit (the server's messages, §3's NewSessionTicket, §4's ClientHello), with
//! the server Finished computed from the handshake secret the CS returns (the CS makes the
//! ClientHello.random and its key shares, so the RFC's own Finished cannot match).
//!
//! Each refusal is checked for its exact LURK status and for changing nothing: the session
//! table and the store are as before, and the same session then succeeds with the right
//! request. What only a token signature reaches is left to the e2e suites (tests/tests/).

mod c_client_finished;
mod c_client_hello;
mod c_init_client_finished;
mod c_init_client_hello;
mod c_post_hand_auth;
mod c_register_tickets;
mod c_server_flight;
mod c_server_hello;
mod capabilities;
mod server_auth;

use std::sync::Arc;

use lurk_proto::key_schedule::finished_verify_data;
use lurk_proto::pb;
use lurk_proto::record::{protected_header, RecordKey};
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    CipherSuite, ClientHelloBuilder, ContentType, HandshakeType, HashAlg, NamedGroup,
    PskKeyExchangeMode, SignatureScheme, HELLO_RETRY_REQUEST_RANDOM,
};
use lurk_test_support::rfc8448::{rfc8448, Section};

use crate::config::Config;
use crate::cs::Cs;
use crate::error::ServiceError;
use crate::keyring::KeyRing;
use crate::ops::{self, msgs};
use crate::store::suite::TestSealer;
use crate::store::{SqliteStore, TicketStore};

/// The engine every request comes from.
pub(super) const ENGINE: &str = "engine-a";
/// Another engine, whose sessions and tickets `ENGINE` must not reach (and the reverse).
pub(super) const OTHER: &str = "engine-b";
/// The server name the ClientHellos carry.
pub(super) const SNI: &str = "server.example";

/// §3 (full handshake) and §4 (resumption) of RFC 8448.
pub(super) fn s3() -> &'static Section {
    &rfc8448().simple_1rtt
}
pub(super) fn s4() -> &'static Section {
    &rfc8448().resumed_0rtt
}

/// The status of a refusal; panics on success.
pub(super) fn status<T: std::fmt::Debug>(r: Result<T, ServiceError>) -> LurkStatus {
    match r {
        Ok(v) => panic!("expected a refusal, got {v:?}"),
        Err(e) => e.lurk_status(),
    }
}

/// A CS on memory ephemerals and a temp SQLite store, no token, no signing key.
pub(crate) struct Fx {
    pub(crate) cs: Cs,
    _dir: tempfile::TempDir,
}

pub(crate) fn fx() -> Fx {
    fx_with(|_| {})
}

/// [`fx`] with the configuration edited first (limits, `[exchanges]`).
pub(super) fn fx_with(edit: impl FnOnce(&mut Config)) -> Fx {
    fx_with_store(edit, |store| store)
}

/// [`fx_with`], the CS's store wrapped by `wrap` (a fault around the real store).
pub(super) fn fx_with_store(
    edit: impl FnOnce(&mut Config),
    wrap: impl FnOnce(Arc<dyn TicketStore>) -> Arc<dyn TicketStore>,
) -> Fx {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = Config::from_toml(&format!(
        r#"
[listen]
addr = "127.0.0.1:0"
plaintext = true
[token]
label = "none"
pin_env = "LURK_OPS_TESTS_NO_PIN"
[ephemeral]
backend = "memory"
[store]
path = {:?}
"#,
        dir.path().join("tickets.sqlite").display().to_string()
    ))
    .unwrap();
    edit(&mut cfg);
    let store = SqliteStore::open(&cfg.store.path, TestSealer::new(), &cfg.store).unwrap();
    let cs = Cs::new(&cfg, None, KeyRing::empty(), wrap(Arc::new(store)));
    assert!(ops::common::memory_ephemerals(&cs));
    Fx { cs, _dir: dir }
}

/// Where a handshake is, as the engine and the server see it.
pub(super) struct Hs {
    pub(super) id: Vec<u8>,
    /// The transcript so far (the completed ClientHello, then what the test added).
    pub(super) transcript: Transcript,
    pub(super) hash: HashAlg,
    pub(super) suite: CipherSuite,
    pub(super) server_hs: Vec<u8>,
}

impl Hs {
    /// The server Finished over the transcript plus `before` (RFC 8446 §4.4.4).
    pub(super) fn server_finished(&self, before: &[u8]) -> Vec<u8> {
        let mut t = self.transcript.clone();
        t.add(before);
        let vd = finished_verify_data(self.hash, &self.server_hs, &t.hash(self.hash));
        msgs::encode(HandshakeType::Finished, &vd)
    }

    /// The server's flight: EncryptedExtensions, `middle`, then a Finished that verifies.
    pub(super) fn flight(&self, ee: &[u8], middle: &[&[u8]]) -> Vec<u8> {
        let mut out = ee.to_vec();
        for m in middle {
            out.extend_from_slice(m);
        }
        let fin = self.server_finished(&out);
        out.extend_from_slice(&fin);
        out
    }

    /// §3's flight: EncryptedExtensions, Certificate, CertificateVerify, Finished.
    pub(super) fn full_flight(&self) -> Vec<u8> {
        self.flight(&s3().messages.encrypted_extensions, &s3_certificate())
    }

    /// `flight` in one protected record under server_handshake_traffic_secret (seq `seq`).
    pub(super) fn record(&self, seq: u64, content: &[u8], inner_type: ContentType) -> Vec<u8> {
        seal(self.suite, &self.server_hs, seq, content, inner_type)
    }
}

/// A protected record (RFC 8446 §5.2) of `content` and `inner_type`, sequence `seq`.
pub(super) fn seal(
    suite: CipherSuite,
    secret: &[u8],
    seq: u64,
    content: &[u8],
    inner_type: ContentType,
) -> Vec<u8> {
    let key = RecordKey::from_traffic_secret(suite, secret).unwrap();
    let mut buf = protected_header(content.len() + 1 + 16).to_vec();
    buf.extend_from_slice(content);
    buf.push(inner_type.get());
    key.seal(seq, &mut buf, 0).unwrap();
    buf
}

/// §3's server Certificate and CertificateVerify.
pub(super) fn s3_certificate() -> [&'static [u8]; 2] {
    let m = &s3().messages;
    [
        m.server_certificate.as_deref().unwrap(),
        m.server_certificate_verify.as_deref().unwrap(),
    ]
}

/// The engine's ClientHello: TLS 1.3, x25519 and P-256 offered, an x25519 share for the
/// CS to make, the SNI, ECDSA and RSA-PSS signatures.
pub(super) fn hello() -> ClientHelloBuilder {
    ClientHelloBuilder::new([0x11; 32])
        .server_name(SNI)
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::RsaPssRsaeSha256,
        ])
        .key_share(NamedGroup::X25519, &[])
}

/// [`hello`] offering `identity` (a SHA-256 resumption ticket) with psk_dhe_ke.
pub(super) fn resumption_hello(identity: &[u8]) -> ClientHelloBuilder {
    hello()
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(identity, 0, 32)
}

pub(super) fn resumption_info() -> pb::PskInfo {
    pb::PskInfo {
        identity_index: 0,
        psk_type: pb::PskType::Resumption as i32,
        tls_hash: pb::TlsHash::Sha256 as i32,
    }
}

pub(super) fn init_req(client_hello: Vec<u8>) -> pb::CInitClientHelloRequest {
    pb::CInitClientHelloRequest {
        client_hello,
        freshness: pb::Freshness::Sha256 as i32,
        psks: Vec::new(),
        secret_request: None,
    }
}

/// A ServerHello or HelloRetryRequest (RFC 8446 §4.1.3-§4.1.4) as a server makes it.
#[derive(Clone)]
pub(super) struct Sh {
    pub(super) session_id: Vec<u8>,
    pub(super) suite: CipherSuite,
    /// ServerHello: the server's share.
    pub(super) share: Option<(NamedGroup, Vec<u8>)>,
    pub(super) psk: Option<u16>,
    /// HelloRetryRequest: the selected group (key_share) and the cookie.
    pub(super) hrr: bool,
    pub(super) hrr_group: Option<NamedGroup>,
    pub(super) cookie: Option<Vec<u8>>,
}

impl Sh {
    /// A ServerHello for [`hello`]: AES-128-GCM-SHA256 and §3's server x25519 share.
    pub(super) fn new() -> Self {
        let server = &s3().ephemeral_keys.server[0];
        assert_eq!(server.group, "x25519");
        Self {
            session_id: Vec::new(),
            suite: CipherSuite::TlsAes128GcmSha256,
            share: Some((NamedGroup::X25519, server.public_key.clone())),
            psk: None,
            hrr: false,
            hrr_group: None,
            cookie: None,
        }
    }

    /// A HelloRetryRequest selecting `group`, with `cookie`.
    pub(super) fn hrr(group: Option<NamedGroup>, cookie: Option<&[u8]>) -> Self {
        Self {
            share: None,
            hrr: true,
            hrr_group: group,
            cookie: cookie.map(<[u8]>::to_vec),
            ..Self::new()
        }
    }

    pub(super) fn encode(&self) -> Vec<u8> {
        let mut ext = Vec::new();
        let mut put_ext = |typ: u16, body: &[u8]| {
            ext.extend_from_slice(&typ.to_be_bytes());
            ext.extend_from_slice(&(body.len() as u16).to_be_bytes());
            ext.extend_from_slice(body);
        };
        put_ext(43, &0x0304u16.to_be_bytes());
        if let Some(g) = self.hrr_group {
            put_ext(51, &g.get().to_be_bytes());
        }
        if let Some((g, key)) = &self.share {
            let mut b = g.get().to_be_bytes().to_vec();
            b.extend_from_slice(&(key.len() as u16).to_be_bytes());
            b.extend_from_slice(key);
            put_ext(51, &b);
        }
        if let Some(c) = &self.cookie {
            let mut b = (c.len() as u16).to_be_bytes().to_vec();
            b.extend_from_slice(c);
            put_ext(44, &b);
        }
        if let Some(i) = self.psk {
            put_ext(41, &i.to_be_bytes());
        }
        let mut body = 0x0303u16.to_be_bytes().to_vec();
        body.extend_from_slice(if self.hrr {
            &HELLO_RETRY_REQUEST_RANDOM
        } else {
            &[0x5a; 32]
        });
        body.push(self.session_id.len() as u8);
        body.extend_from_slice(&self.session_id);
        body.extend_from_slice(&self.suite.get().to_be_bytes());
        body.push(0);
        body.extend_from_slice(&(ext.len() as u16).to_be_bytes());
        body.extend_from_slice(&ext);
        msgs::encode(HandshakeType::ServerHello, &body)
    }
}

/// A CertificateRequest (RFC 8446 §4.3.2) with `context`, asking for ECDSA or RSA-PSS.
pub(super) fn certificate_request(context: &[u8]) -> Vec<u8> {
    let mut body = vec![context.len() as u8];
    body.extend_from_slice(context);
    // extensions: signature_algorithms (13) = [0x0403, 0x0804]
    body.extend_from_slice(&[0, 10, 0, 13, 0, 6, 0, 4, 0x04, 0x03, 0x08, 0x04]);
    msgs::encode(HandshakeType::CertificateRequest, &body)
}

/// A client Certificate (RFC 8446 §4.4.2) with `context` and these certificates.
pub(super) fn certificate(context: &[u8], chain: &[&[u8]]) -> Vec<u8> {
    let mut list = Vec::new();
    for c in chain {
        list.extend_from_slice(&(c.len() as u32).to_be_bytes()[1..]);
        list.extend_from_slice(c);
        list.extend_from_slice(&[0, 0]);
    }
    let mut body = vec![context.len() as u8];
    body.extend_from_slice(context);
    body.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
    body.extend_from_slice(&list);
    msgs::encode(HandshakeType::Certificate, &body)
}

/// `raw` with the one occurrence of `from` replaced by `to` (as long): a message the
/// builder would refuse to make, for the rules the CS checks.
pub(super) fn patched(mut raw: Vec<u8>, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let at: Vec<usize> = (0..=raw.len() - from.len())
        .filter(|&i| raw[i..i + from.len()] == *from)
        .collect();
    assert_eq!(at.len(), 1, "{from:02x?} must occur once");
    raw[at[0]..at[0] + to.len()].copy_from_slice(to);
    raw
}

/// A NewSessionTicket (RFC 8446 §4.6.1).
pub(super) fn nst(lifetime: u32, nonce: &[u8], ticket: &[u8]) -> Vec<u8> {
    let mut body = lifetime.to_be_bytes().to_vec();
    body.extend_from_slice(&[1, 2, 3, 4]);
    body.push(nonce.len() as u8);
    body.extend_from_slice(nonce);
    body.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
    body.extend_from_slice(ticket);
    body.extend_from_slice(&[0, 0]);
    msgs::encode(HandshakeType::NewSessionTicket, &body)
}

impl Fx {
    /// The same CS (sessions, store) with `[server_auth]` on, trusting only RFC 8448's
    /// server certificate: the RFC's server is refused by it (expired since 2026-07-30, and
    /// not valid for [`SNI`]).
    pub(super) fn with_rfc_anchor(self) -> Self {
        let cert = lurk_proto::wire::Certificate::parse(s3_certificate()[0])
            .unwrap()
            .entries[0]
            .cert_data
            .to_vec();
        let anchors = lurk_proto::server_auth::TrustAnchors::from_der(&[cert]).unwrap();
        let policy = crate::server_auth::ServerAuth::from_anchors(anchors);
        Self {
            cs: self.cs.with_server_auth(Some(policy)),
            _dir: self._dir,
        }
    }

    /// Open sessions (all engines).
    pub(super) fn sessions(&self) -> usize {
        self.cs.sessions.len()
    }

    /// `engine`'s live tickets.
    pub(super) fn tickets(&self, engine: &str) -> u64 {
        self.cs.store.count_tickets(engine).unwrap()
    }

    /// c_init_client_hello as `engine` with `req`; the completed ClientHello starts the
    /// transcript.
    pub(super) fn init_as(&self, engine: &str, req: pb::CInitClientHelloRequest) -> Hs {
        let resp = ops::c_init_client_hello::handle(&self.cs, engine, req).unwrap();
        let mut transcript = Transcript::new();
        transcript.add(&resp.client_hello);
        Hs {
            id: resp.session_id,
            transcript,
            hash: HashAlg::Sha256,
            suite: CipherSuite::TlsAes128GcmSha256,
            server_hs: Vec::new(),
        }
    }

    /// A session after c_init_client_hello on [`hello`].
    pub(super) fn hello(&self) -> Hs {
        self.init_as(ENGINE, init_req(hello().build().unwrap()))
    }

    pub(super) fn server_hello_req(hs: &Hs, sh: &[u8]) -> pb::CServerHelloRequest {
        pb::CServerHelloRequest {
            session_id: hs.id.clone(),
            server_hello: sh.to_vec(),
            ephemeral: None,
            secret_request: None,
        }
    }

    /// c_server_hello with `req` (it must succeed): the handshake secret is kept.
    pub(super) fn server_hello_with(&self, hs: &mut Hs, req: pb::CServerHelloRequest) {
        let resp = ops::c_server_hello::handle(&self.cs, ENGINE, req.clone()).unwrap();
        hs.transcript.add(&req.server_hello);
        hs.server_hs = server_hs_of(&resp.secrets);
    }

    /// c_server_hello with [`Sh::new`].
    pub(super) fn server_hello(&self, hs: &mut Hs) {
        self.server_hello_with(hs, Self::server_hello_req(hs, &Sh::new().encode()));
    }

    /// A session after c_server_hello (certificate handshake).
    pub(super) fn handshake(&self) -> Hs {
        let mut hs = self.hello();
        self.server_hello(&mut hs);
        hs
    }

    pub(super) fn client_finished_req(hs: &Hs, flight: Vec<u8>) -> pb::CClientFinishedRequest {
        pb::CClientFinishedRequest {
            session_id: hs.id.clone(),
            handshake_messages: flight,
            ..Default::default()
        }
    }

    /// A session after c_client_finished (established, r kept).
    pub(super) fn established(&self) -> Hs {
        let hs = self.handshake();
        let req = Self::client_finished_req(&hs, hs.full_flight());
        ops::c_client_finished::handle(&self.cs, ENGINE, req).unwrap();
        hs
    }

    /// Registers §3's NewSessionTicket in a new session of `engine` and closes it: the
    /// ticket §4's ClientHello offers.
    pub(super) fn s3_ticket(&self, engine: &str) -> Vec<u8> {
        let nst = s3().messages.new_session_ticket.clone().unwrap();
        self.ticket_as(engine, nst);
        s3().new_session_ticket_fields
            .as_ref()
            .unwrap()
            .ticket
            .clone()
    }

    /// Registers `nst` in a new established session of `engine` and closes the session.
    pub(super) fn ticket_as(&self, engine: &str, nst: Vec<u8>) {
        let mut hs = self.init_as(engine, init_req(hello().build().unwrap()));
        let resp = ops::c_server_hello::handle(
            &self.cs,
            engine,
            Self::server_hello_req(&hs, &Sh::new().encode()),
        )
        .unwrap();
        hs.transcript.add(&Sh::new().encode());
        hs.server_hs = server_hs_of(&resp.secrets);
        let req = Self::client_finished_req(&hs, hs.full_flight());
        ops::c_client_finished::handle(&self.cs, engine, req).unwrap();
        let reg = ops::c_register_tickets::handle(
            &self.cs,
            engine,
            pb::CRegisterTicketsRequest {
                session_id: hs.id,
                new_session_tickets: vec![nst],
                last_exchange: true,
            },
        )
        .unwrap();
        assert_eq!(reg.registered, 1);
    }

    /// §4: c_init_client_hello on RFC 8448 §4's ClientHello (its x25519 share made by the
    /// engine, early data, §3's ticket), then c_server_hello on §4's ServerHello with the
    /// RFC's (EC)DHE secret (e_generated). The flight is §4's EncryptedExtensions (early
    /// data accepted), the Finished, then EndOfEarlyData.
    pub(super) fn resumed(&self) -> Hs {
        let mut hs = self.resumed_hello();
        let r = s4_server_hello_req(&hs);
        self.server_hello_with(&mut hs, r);
        hs
    }

    /// §4's ClientHello offering §3's ticket (which must be registered).
    pub(super) fn resumed_hello(&self) -> Hs {
        self.init_as(ENGINE, s4_init_req())
    }
}

pub(super) fn s4_init_req() -> pb::CInitClientHelloRequest {
    pb::CInitClientHelloRequest {
        psks: vec![resumption_info()],
        ..init_req(s4().messages.client_hello.clone())
    }
}

/// §4's ServerHello (PSK 0, x25519), with §4's shared secret as the engine's.
pub(super) fn s4_server_hello_req(hs: &Hs) -> pb::CServerHelloRequest {
    pb::CServerHelloRequest {
        ephemeral: Some(pb::Ephemeral {
            method: pb::EphemeralMethod::EGenerated as i32,
            shared_secret: s4().key_schedule.ecdhe_shared_secret.clone(),
        }),
        ..Fx::server_hello_req(hs, &s4().messages.server_hello)
    }
}

/// §4's flight on `hs`: EncryptedExtensions, Finished, EndOfEarlyData.
pub(super) fn s4_flight(hs: &Hs) -> Vec<u8> {
    let mut f = hs.flight(&s4().messages.encrypted_extensions, &[]);
    f.extend_from_slice(s4().messages.end_of_early_data.as_deref().unwrap());
    f
}

pub(super) fn server_hs_of(secrets: &[pb::Secret]) -> Vec<u8> {
    secrets
        .iter()
        .find(|s| s.secret_type == pb::SecretType::ServerHandshakeTraffic as i32)
        .expect("server_handshake_traffic_secret")
        .value
        .clone()
}
