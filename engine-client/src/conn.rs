//! The TLS 1.3 client connection, Sans-IO (STYLE §1 and §4.9): TLS bytes in
//! ([`ClientConnection::read_tls`]), TLS bytes out ([`ClientConnection::take_tls`]), and calls to
//! the Crypto Service as actions ([`ClientConnection::take_cs_call`] then
//! [`ClientConnection::cs_response`]). No socket, no gRPC, no clock other than the one
//! read for ticket ages and certificate validity.
//!
//! The handshake is an enum of states, one struct per expected message (rustls `main`):
//! [`ExpectServerHello`], [`ExpectEncryptedExtensions`], [`ExpectCertificateOrCertReq`],
//! [`ExpectCertificate`] (after a CertificateRequest), [`ExpectCertificateVerify`],
//! [`ExpectFinished`], [`ExpectTraffic`], plus [`AwaitCs`] while a LURK exchange is out.
//! The states carry a boxed [`Hs`] with what the handshake has learnt so far; fields that
//! only exist after the ServerHello are `Option`s filled there (a pragmatic departure from
//! rustls' one-type-per-stage data, which would multiply the types by the LURK sequences).
//!
//! When the engine calls the CS (pytls13's policy, LURK.md §2): `c_init_client_hello` when the
//! ephemeral method is cs or a CS-held PSK is offered; `c_server_hello`, `c_client_finished` and
//! `c_register_tickets` when the server picked a CS share or a CS-held PSK. Otherwise the engine
//! runs the key schedule itself (sequence D) and, when it must sign, uses
//! `c_init_client_finished` (+ `c_post_hand_auth`), sequence C.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use lurk_proto::freshness::client_random;
use lurk_proto::key_schedule::{
    binder, export_keying_material, finished_verify_data, next_application_traffic_secret,
    resumption_psk, traffic_key_iv, verify_finished, KeyScheduleEarly, KeyScheduleHandshake,
    KeyScheduleMaster, PskKind, Secret,
};
use lurk_proto::pb;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::hello::RANDOM_OFFSET;
use lurk_proto::wire::{
    encode_certificate, encode_end_of_early_data, encode_finished, encode_key_update, set_binders,
    truncated_for_binders, AlertDescription, Certificate, CertificateRequest, CertificateVerify,
    CipherSuite, ClientHello, ClientHelloBuilder, ContentType, EncryptedExtensions, Finished,
    HandshakeType, HashAlg, KeyUpdate, KeyUpdateRequest, NamedGroup, NewSessionTicket,
    PskKeyExchangeMode, ServerHello,
};
use ring::rand::{SecureRandom, SystemRandom};
use rustls_pki_types::UnixTime;
use zeroize::Zeroizing;

use crate::alert::{encode_alert, AlertOutcome, AlertReceiver};
use crate::config::{ClientConfig, Ephemeral, HandshakeSummary, TlsMode};
use crate::cs_client::{CsCall, CsError, CsReply};
use crate::deframer::{Deframer, OpaqueRecord};
use crate::error::{CertificateError, Error, PeerMisbehaved};
use crate::joiner::{HandshakeJoiner, HandshakeMessage};
use crate::keyshare::EngineShare;
use crate::record::{
    encode_plaintext, PlainMessage, RecordDecrypter, RecordEncrypter, RecordKeys,
    MAX_INNER_PLAINTEXT_LEN, MIN_RECORD_SIZE_LIMIT,
};
use crate::tickets::StoredTicket;
use crate::verify::verify_server_signature;

/// legacy_record_version of the first ClientHello record (RFC 8446 §5.1 allows 0x0301 there, and
/// some middleboxes expect it).
const FIRST_RECORD_VERSION: u16 = 0x0301;
const RECORD_VERSION: u16 = 0x0303;
/// The largest record_size_limit a TLS 1.3 endpoint may send: 2^14 + 1 (RFC 8449 §4).
const MAX_RECORD_SIZE_LIMIT: u16 = MAX_INNER_PLAINTEXT_LEN as u16;

/// The record layer, the buffers and what the driver sees; shared by every state.
pub(crate) struct Core {
    config: Arc<ClientConfig>,
    server_name: String,
    store_key: String,
    has_cs: bool,
    deframer: Deframer,
    joiner: HandshakeJoiner,
    alerts: AlertReceiver,
    decrypter: Option<RecordDecrypter>,
    encrypter: Option<RecordEncrypter>,
    out: Vec<u8>,
    plaintext: VecDeque<u8>,
    pending_cs: Option<CsCall>,
    cs_in_flight: Option<&'static str>,
    peer_closed: bool,
    close_sent: bool,
    first_record_sent: bool,
    ccs_sent: bool,
    error: Option<Error>,
    summary: HandshakeSummary,
    started: Instant,
    /// RFC 8449, once the server echoed record_size_limit: ours bounds what we receive, the
    /// server's bounds what we send. Reapplied at every key change.
    receive_limit: Option<u16>,
    send_limit: Option<u16>,
    /// RFC 8448's server certificate has expired and an RSA-1024 key ring refuses: trace
    /// replays skip the chain and CertificateVerify checks (and only those).
    #[cfg(test)]
    skip_server_auth: bool,
}

impl Core {
    fn send_plain_handshake(&mut self, msg: &[u8]) {
        let version = if self.first_record_sent {
            RECORD_VERSION
        } else {
            FIRST_RECORD_VERSION
        };
        self.first_record_sent = true;
        self.out
            .extend(encode_plaintext(ContentType::Handshake, msg, version));
    }

    /// Middlebox compatibility (RFC 8446 D.4): one change_cipher_spec before our second flight
    /// (or before the second ClientHello, or right after the first when sending early data).
    fn send_ccs_once(&mut self) {
        if self.config.middlebox_compat && !self.ccs_sent {
            self.ccs_sent = true;
            self.out.extend(encode_plaintext(
                ContentType::ChangeCipherSpec,
                &[1],
                RECORD_VERSION,
            ));
        }
    }

    /// Installs the read key with the negotiated record_size_limit (RFC 8449 §4).
    fn install_decrypter(&mut self, keys: &RecordKeys) -> Result<(), Error> {
        let mut dec = RecordDecrypter::new(keys)?;
        if let Some(limit) = self.receive_limit {
            dec.set_record_size_limit(limit)?;
        }
        self.decrypter = Some(dec);
        Ok(())
    }

    /// Installs the write key with the server's record_size_limit (RFC 8449 §4).
    fn install_encrypter(&mut self, keys: &RecordKeys) -> Result<(), Error> {
        let mut enc = RecordEncrypter::new(keys)?;
        if let Some(limit) = self.send_limit {
            enc.set_record_size_limit(limit)?;
        }
        self.encrypter = Some(enc);
        Ok(())
    }

    /// EncryptedExtensions' record_size_limit (RFC 8449 §4). The limits apply only when both
    /// sides sent the extension; in TLS 1.3 the value counts the content type byte and padding
    /// (the record layer converts). Our limit also covers the protected records already opened
    /// under the handshake key (the server knew our limit when it sealed them).
    fn negotiate_record_size_limit(&mut self, server: Option<u16>) -> Result<(), Error> {
        let Some(server) = server else {
            return Ok(());
        };
        // RFC 8446 §4.2: no extension response without the request.
        let ours = self
            .config
            .record_size_limit
            .ok_or(PeerMisbehaved::UnsolicitedRecordSizeLimit)?;
        self.receive_limit = Some(ours);
        self.send_limit = Some(server);
        if let Some(dec) = self.decrypter.as_mut() {
            dec.set_record_size_limit(ours)?;
        }
        if let Some(enc) = self.encrypter.as_mut() {
            enc.set_record_size_limit(server)?;
        }
        Ok(())
    }

    fn send_encrypted(&mut self, typ: ContentType, parts: &[&[u8]]) -> Result<(), Error> {
        let enc = self.encrypter.as_mut().ok_or(Error::HandshakeNotComplete)?;
        enc.encrypt_parts(typ, parts, &mut self.out)?;
        Ok(())
    }

    fn request_cs(&mut self, call: CsCall) -> Result<(), Error> {
        if !self.has_cs {
            return Err(Error::NoCryptoService(call.exchange()));
        }
        self.summary.lurk_exchanges.push(call.exchange());
        self.pending_cs = Some(call);
        Ok(())
    }

    fn cs_busy(&self) -> bool {
        self.pending_cs.is_some() || self.cs_in_flight.is_some()
    }

    fn queue_alert(&mut self, desc: AlertDescription) {
        let payload = encode_alert(desc);
        match self.encrypter.as_mut() {
            Some(enc) => {
                // Best effort: an alert that cannot be protected is not sent.
                let _ = enc.encrypt_parts(ContentType::Alert, &[&payload], &mut self.out);
            }
            None => self.out.extend(encode_plaintext(
                ContentType::Alert,
                &payload,
                RECORD_VERSION,
            )),
        }
    }
}

fn record_keys(suite: CipherSuite, secret: &Secret) -> Result<RecordKeys, Error> {
    let (key, iv) = traffic_key_iv(suite, secret.as_bytes())
        .ok_or_else(|| Error::general(format!("suite {} not implemented", suite.name())))?;
    Ok(RecordKeys::new(
        suite,
        Zeroizing::new(key.as_bytes().to_vec()),
        iv,
    ))
}

fn require(m: &HandshakeMessage, expected: &[HandshakeType]) -> Result<(), Error> {
    if expected.contains(&m.typ) {
        Ok(())
    } else {
        Err(Error::InappropriateHandshakeMessage {
            expected: expected.to_vec(),
            got: m.typ,
        })
    }
}

fn tls_hash(hash: HashAlg) -> pb::TlsHash {
    match hash {
        HashAlg::Sha256 => pb::TlsHash::Sha256,
        HashAlg::Sha384 => pb::TlsHash::Sha384,
    }
}

fn find_secret(
    secrets: &[pb::Secret],
    kind: pb::SecretType,
    exchange: &'static str,
) -> Result<Secret, Error> {
    secrets
        .iter()
        .find(|s| s.secret_type == kind as i32)
        .map(|s| Secret::from_bytes(&s.value))
        .ok_or_else(|| Error::CryptoService {
            exchange,
            status: None,
            message: format!("the response lacks the {kind:?} secret"),
        })
}

fn random_bytes<const N: usize>() -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    SystemRandom::new()
        .fill(&mut out)
        .map_err(|_| Error::general("no system randomness"))?;
    Ok(out)
}

/// A ClientHello with the engine's random in its random field (what c_init_client_finished
/// wants: the CS applies the freshness function itself).
fn with_engine_random(ch: &[u8], engine_random: &[u8; 32]) -> Vec<u8> {
    let mut v = ch.to_vec();
    if v.len() >= RANDOM_OFFSET + 32 {
        v[RANDOM_OFFSET..RANDOM_OFFSET + 32].copy_from_slice(engine_random);
    }
    v
}

/// One key_share entry of the current ClientHello.
#[derive(Debug)]
struct OfferedShare {
    group: NamedGroup,
    /// The engine's key pair; `None` when the CS made it.
    engine: Option<EngineShare>,
    /// Tests replaying a recorded trace inject the (EC)DHE secret.
    #[cfg(test)]
    injected: Option<Zeroizing<Vec<u8>>>,
}

impl OfferedShare {
    fn new(group: NamedGroup, engine: Option<EngineShare>) -> Self {
        Self {
            group,
            engine,
            #[cfg(test)]
            injected: None,
        }
    }

    /// Made by the CS (cs_generated).
    fn cs_made(&self) -> bool {
        #[cfg(test)]
        if self.injected.is_some() {
            return false;
        }
        self.engine.is_none()
    }

    /// The shared secret with the server's key_exchange, for a share the engine made.
    fn agree(self, peer: &[u8]) -> Result<Option<Zeroizing<Vec<u8>>>, Error> {
        #[cfg(test)]
        if let Some(s) = self.injected {
            return Ok(Some(s));
        }
        self.engine.map(|e| e.agree(peer)).transpose()
    }
}

/// One PSK identity of the current ClientHello.
#[derive(Debug)]
struct OfferedPsk {
    identity: Vec<u8>,
    hash: HashAlg,
    kind: PskKind,
    /// The PSK when the engine knows it; `None` when the CS holds it.
    local: Option<Secret>,
    ticket: Option<StoredTicket>,
}

/// 0-RTT data in flight.
struct Early {
    encrypter: RecordEncrypter,
    /// All of the configured early data.
    data: Vec<u8>,
    /// How much of it went as 0-RTT (at most the ticket's max_early_data_size); the rest goes
    /// as ordinary data after the handshake when the server accepts the early data.
    sent: usize,
}

/// What the handshake has learnt so far (see the module documentation).
pub(crate) struct Hs {
    engine_random: [u8; 32],
    /// The random field of the ClientHellos we build: the engine's random when the CS completes
    /// them, else the fresh random we put on the wire ourselves.
    random_field: [u8; 32],
    session_id: Vec<u8>,
    offered_suites: Vec<CipherSuite>,
    shares: Vec<OfferedShare>,
    psks: Vec<OfferedPsk>,
    early_data_offered: bool,
    early: Option<Early>,
    early_suite: Option<CipherSuite>,
    transcript: Transcript,
    /// ClientHello(s) with the engine's random .. what the server sent, for
    /// c_init_client_finished.
    cs_log: Vec<u8>,
    cs_session: Option<Vec<u8>>,
    hrr_suite: Option<CipherSuite>,
    // Set by the ServerHello:
    suite: Option<CipherSuite>,
    psk_selected: Option<usize>,
    cs_key_schedule: bool,
    key_schedule: Option<KeyScheduleHandshake>,
    client_hs: Option<Secret>,
    server_hs: Option<Secret>,
    // Set by the server flight:
    server_flight: Vec<u8>,
    early_accepted: bool,
    cert_request: Option<Vec<u8>>,
    alpn: Option<Vec<u8>>,
}

impl Hs {
    fn suite(&self) -> Result<CipherSuite, Error> {
        self.suite
            .ok_or_else(|| Error::general("no cipher suite yet"))
    }

    fn hash(&self) -> Result<HashAlg, Error> {
        self.suite()?
            .hash()
            .ok_or_else(|| Error::general("suite without hash"))
    }

    fn add_received(&mut self, m: &HandshakeMessage) {
        self.transcript.add(&m.encoded);
        self.cs_log.extend_from_slice(&m.encoded);
        self.server_flight.extend_from_slice(&m.encoded);
    }
}

/// Waiting for the ServerHello (or a HelloRetryRequest).
pub struct ExpectServerHello {
    hs: Box<Hs>,
}
/// Waiting for EncryptedExtensions.
pub struct ExpectEncryptedExtensions {
    hs: Box<Hs>,
}
/// Waiting for CertificateRequest or Certificate.
pub struct ExpectCertificateOrCertReq {
    hs: Box<Hs>,
}
/// Waiting for the Certificate after a CertificateRequest.
pub struct ExpectCertificate {
    hs: Box<Hs>,
}
/// Waiting for CertificateVerify.
pub struct ExpectCertificateVerify {
    hs: Box<Hs>,
    leaf: Vec<u8>,
}
/// Waiting for the server Finished.
pub struct ExpectFinished {
    hs: Box<Hs>,
}

/// The engine's key schedule after the server Finished (sequence C/D).
pub(crate) struct EngineFinish {
    master: KeyScheduleMaster,
    client_ap: Secret,
    server_ap: Secret,
    /// exporter_master_secret, when `ClientConfig::exporter` asks for it.
    exporter_master: Option<Secret>,
}

/// The client's second flight being prepared.
pub(crate) struct Flight {
    eoed: Option<Vec<u8>>,
    certificate: Option<Vec<u8>>,
    certificate_verify: Option<Vec<u8>>,
}

/// What a LURK exchange in flight will resume.
pub(crate) enum AwaitCs {
    /// c_init_client_hello.
    InitClientHello(Box<Hs>),
    /// c_client_hello after a HelloRetryRequest.
    ClientHello(Box<Hs>),
    /// c_server_hello.
    ServerHello(Box<Hs>),
    /// c_client_finished.
    ClientFinished(Box<Hs>, Box<Flight>),
    /// c_init_client_finished in the handshake.
    InitClientFinished(Box<Hs>, Box<Flight>, Box<EngineFinish>),
}

/// How the connection's CS session may still be used after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
enum CsSession {
    None,
    /// Sequence A/B: the CS ran the key schedule and keeps the resumption secret.
    Full(Vec<u8>),
    /// Sequence C: opened by c_init_client_finished; the first c_post_hand_auth carries our
    /// Finished when `awaiting_client_finished`.
    SigningOnly {
        id: Vec<u8>,
        awaiting_client_finished: bool,
    },
    Closed,
}

/// A post-handshake CertificateRequest being answered.
struct PendingPha {
    certificate_request: Vec<u8>,
    certificate: Vec<u8>,
    key_id: String,
}

enum TrafficWait {
    Tickets(Vec<StoredTicket>),
    PhaInit(PendingPha),
    Pha(PendingPha),
}

/// The handshake is done: application data, tickets, KeyUpdate, post-handshake auth.
pub struct ExpectTraffic {
    suite: CipherSuite,
    hash: HashAlg,
    client_secret: Secret,
    server_secret: Secret,
    /// Handshake transcript through the client Finished (the base of post-handshake auth).
    transcript: Transcript,
    resumption_master: Option<Secret>,
    /// exporter_master_secret (RFC 8446 §7.5), kept only when `ClientConfig::exporter` is set.
    exporter_master: Option<Secret>,
    cs: CsSession,
    pha_offered: bool,
    /// ClientHello .. server Finished (+EndOfEarlyData) for a late c_init_client_finished.
    cs_log: Vec<u8>,
    client_finished: Vec<u8>,
    alpn: Option<Vec<u8>>,
    pending_tickets: Vec<(Vec<u8>, StoredTicket)>,
    waiting: Option<TrafficWait>,
}

enum State {
    AwaitCs(AwaitCs),
    ServerHello(ExpectServerHello),
    EncryptedExtensions(ExpectEncryptedExtensions),
    CertificateOrCertReq(ExpectCertificateOrCertReq),
    Certificate(ExpectCertificate),
    CertificateVerify(ExpectCertificateVerify),
    Finished(ExpectFinished),
    Traffic(Box<ExpectTraffic>),
}

/// A TLS 1.3 client connection. See the module documentation.
pub struct ClientConnection {
    core: Core,
    state: Option<State>,
}

impl ClientConnection {
    /// Starts a handshake with `server_name` (DNS name or IP address; `port` keys the ticket
    /// store). `has_cs` says whether the driver can make CS calls. The ClientHello is ready in
    /// [`Self::take_tls`], or a CS call in [`Self::take_cs_call`].
    pub fn new(
        config: Arc<ClientConfig>,
        server_name: &str,
        port: u16,
        has_cs: bool,
    ) -> Result<Self, Error> {
        let mut core = Core {
            store_key: format!("{server_name}:{port}"),
            server_name: server_name.to_owned(),
            has_cs,
            deframer: Deframer::new(),
            joiner: HandshakeJoiner::new(),
            alerts: AlertReceiver::new(),
            decrypter: None,
            encrypter: None,
            out: Vec::new(),
            plaintext: VecDeque::new(),
            pending_cs: None,
            cs_in_flight: None,
            peer_closed: false,
            close_sent: false,
            first_record_sent: false,
            ccs_sent: false,
            error: None,
            summary: HandshakeSummary::new(server_name),
            started: Instant::now(),
            receive_limit: None,
            send_limit: None,
            #[cfg(test)]
            skip_server_auth: false,
            config,
        };
        let state = start(&mut core)?;
        Ok(Self {
            core,
            state: Some(state),
        })
    }

    /// Bytes received from the server.
    pub fn read_tls(&mut self, data: &[u8]) {
        self.core.deframer.push(data);
    }

    /// TLS bytes to send to the server (a whole flight at a time: one write).
    pub fn take_tls(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.core.out)
    }

    /// Whether TLS bytes wait to be sent.
    pub fn wants_write(&self) -> bool {
        !self.core.out.is_empty()
    }

    /// The CS call the driver must make now, if any; then call [`Self::cs_response`].
    pub fn take_cs_call(&mut self) -> Option<CsCall> {
        let call = self.core.pending_cs.take()?;
        self.core.cs_in_flight = Some(call.exchange());
        Some(call)
    }

    /// Whether a CS call is pending or in flight (records wait until it is answered).
    pub fn cs_busy(&self) -> bool {
        self.core.cs_busy()
    }

    /// The answer to the call from [`Self::take_cs_call`]; processing resumes.
    pub fn cs_response(&mut self, reply: Result<CsReply, CsError>) -> Result<(), Error> {
        self.check_failed()?;
        let r = self.cs_response_inner(reply);
        self.fail_on(r)
    }

    /// Processes the records received so far.
    pub fn process_new_packets(&mut self) -> Result<(), Error> {
        self.check_failed()?;
        let r = self.process();
        self.fail_on(r)
    }

    /// True until the client Finished is sent.
    pub fn is_handshaking(&self) -> bool {
        !matches!(self.state, Some(State::Traffic(_)))
    }

    /// The server sent close_notify.
    pub fn peer_closed(&self) -> bool {
        self.core.peer_closed
    }

    /// The connection failed (the error is sticky).
    pub fn error(&self) -> Option<&Error> {
        self.core.error.as_ref()
    }

    /// What the handshake negotiated.
    pub fn summary(&self) -> &HandshakeSummary {
        &self.core.summary
    }

    /// Plaintext received and not yet read.
    pub fn plaintext_len(&self) -> usize {
        self.core.plaintext.len()
    }

    /// Moves received plaintext into `buf`; returns the byte count.
    pub fn read_plaintext(&mut self, buf: &mut [u8]) -> usize {
        let n = buf.len().min(self.core.plaintext.len());
        for (dst, src) in buf.iter_mut().zip(self.core.plaintext.drain(..n)) {
            *dst = src;
        }
        n
    }

    /// Protects `data` as application data (after the handshake).
    pub fn write_plaintext(&mut self, data: &[u8]) -> Result<(), Error> {
        self.check_failed()?;
        if self.is_handshaking() {
            return Err(Error::HandshakeNotComplete);
        }
        if self.core.close_sent {
            return Err(Error::general("write after close_notify"));
        }
        self.core
            .send_encrypted(ContentType::ApplicationData, &[data])
    }

    /// Sends a KeyUpdate and switches our write key (RFC 8446 §4.6.3); `request_peer` asks the
    /// server to update its key too.
    pub fn key_update(&mut self, request_peer: bool) -> Result<(), Error> {
        self.check_failed()?;
        let Some(State::Traffic(t)) = self.state.as_mut() else {
            return Err(Error::HandshakeNotComplete);
        };
        let req = if request_peer {
            KeyUpdateRequest::UpdateRequested
        } else {
            KeyUpdateRequest::UpdateNotRequested
        };
        t.send_key_update(&mut self.core, req)
    }

    /// Keying material from the TLS 1.3 exporter (RFC 8446 §7.5) for `label` and `context`
    /// (an empty context is the same as none in TLS 1.3), `len` bytes. Needs a completed
    /// handshake and `ClientConfig::exporter`.
    pub fn export_keying_material(
        &self,
        label: &[u8],
        context: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        let Some(State::Traffic(t)) = self.state.as_ref() else {
            return Err(Error::HandshakeNotComplete);
        };
        let ems = t
            .exporter_master
            .as_ref()
            .ok_or(Error::ExporterNotEnabled)?;
        let out = export_keying_material(t.hash, ems.as_bytes(), label, context, len).ok_or_else(
            || {
                Error::general(format!(
                    "exporter label of {} bytes or length {len} out of range (RFC 8446 §7.1)",
                    label.len()
                ))
            },
        )?;
        Ok(out.as_bytes().to_vec())
    }

    /// Queues close_notify (once).
    pub fn send_close_notify(&mut self) {
        if !self.core.close_sent {
            self.core.close_sent = true;
            self.core.queue_alert(AlertDescription::CloseNotify);
        }
    }

    /// The exchange that ends the CS session when the connection ends (tickets still pending
    /// included), if the session is one that can be closed that way. Sequence C sessions cannot
    /// (c_register_tickets needs a resumption secret at the CS): they expire at the CS.
    pub fn close_cs_session(&mut self) -> Option<CsCall> {
        if self.core.cs_busy() || !self.core.has_cs {
            return None;
        }
        let Some(State::Traffic(t)) = self.state.as_mut() else {
            return None;
        };
        let CsSession::Full(id) = &t.cs else {
            return None;
        };
        let (raws, metas): (Vec<_>, Vec<_>) =
            std::mem::take(&mut t.pending_tickets).into_iter().unzip();
        let call = CsCall::RegisterTickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: raws,
            last_exchange: true,
        });
        t.cs = CsSession::Closed;
        t.waiting = Some(TrafficWait::Tickets(metas));
        self.core.summary.lurk_exchanges.push(call.exchange());
        self.core.cs_in_flight = Some(call.exchange());
        Some(call)
    }

    /// Hands the CS work left at the end of the connection to the driver, to be finished
    /// after it (the connection itself no longer needs the CS): the ticket registration in
    /// flight, if any, and one last `c_register_tickets` carrying the tickets not registered
    /// yet with last_exchange set, which also closes the session. Tickets still go to the
    /// store only once the CS accepted them ([`CsEpilogue`]). `None` when there is nothing
    /// to do, or when the call in flight is not a registration (the driver then waits for it).
    pub fn detach_cs(&mut self) -> Option<CsEpilogue> {
        if !self.core.has_cs || self.core.error.is_some() {
            return None;
        }
        let registration_out = self.registration_out();
        if self.core.cs_busy() && !registration_out {
            return None;
        }
        let Some(State::Traffic(t)) = self.state.as_mut() else {
            return None;
        };
        let mut in_flight = None;
        let mut raws = Vec::new();
        let mut metas = Vec::new();
        if registration_out {
            let Some(TrafficWait::Tickets(m)) = t.waiting.take() else {
                return None;
            };
            match self.core.pending_cs.take() {
                // Asked for, not yet sent: it goes with the last call.
                Some(CsCall::RegisterTickets(r)) => {
                    raws.extend(r.new_session_tickets);
                    metas.extend(m);
                    // Undo its count: the last call is counted below.
                    self.core.summary.lurk_exchanges.pop();
                }
                Some(other) => {
                    self.core.pending_cs = Some(other);
                    return None;
                }
                None => in_flight = Some(m),
            }
        }
        self.core.cs_in_flight = None;
        let (r, m): (Vec<_>, Vec<_>) = std::mem::take(&mut t.pending_tickets).into_iter().unzip();
        raws.extend(r);
        metas.extend(m);
        let last = match std::mem::replace(&mut t.cs, CsSession::Closed) {
            CsSession::Full(id) => {
                let call = CsCall::RegisterTickets(pb::CRegisterTicketsRequest {
                    session_id: id,
                    new_session_tickets: raws,
                    last_exchange: true,
                });
                self.core.summary.lurk_exchanges.push(call.exchange());
                Some((call, metas))
            }
            other => {
                t.cs = other;
                None
            }
        };
        if in_flight.is_none() && last.is_none() {
            return None;
        }
        Some(CsEpilogue {
            store: self.core.config.ticket_store.clone(),
            store_key: self.core.store_key.clone(),
            in_flight,
            last,
        })
    }

    /// TLS bytes received and not yet processed into records.
    pub fn held_tls_len(&self) -> usize {
        self.core.deframer.buffered()
    }

    /// Whether received records wait for the CS call out.
    pub fn records_held(&self) -> bool {
        self.core.cs_busy() && (self.core.deframer.buffered() > 0 || !self.core.joiner.is_empty())
    }

    /// The ticket store key of this connection (`host:port`).
    pub fn store_key(&self) -> &str {
        &self.core.store_key
    }

    fn check_failed(&self) -> Result<(), Error> {
        match &self.core.error {
            Some(e) => Err(e.clone()),
            None => Ok(()),
        }
    }

    fn fail_on(&mut self, r: Result<(), Error>) -> Result<(), Error> {
        if let Err(e) = &r {
            if let Some(desc) = e.alert() {
                if !self.core.close_sent {
                    self.core.close_sent = true;
                    self.core.queue_alert(desc);
                }
            }
            self.core.error = Some(e.clone());
            self.state = None;
        }
        r
    }

    /// While a ticket registration is out, records keep flowing: application data, alerts,
    /// more tickets (registered with the next call) and KeyUpdates need no CS. Only a message
    /// that needs the CS (a post-handshake CertificateRequest) waits, and everything after it.
    /// Any other CS call (handshake, post-handshake authentication) holds every record.
    fn registration_out(&self) -> bool {
        matches!(&self.state, Some(State::Traffic(t)) if matches!(t.waiting, Some(TrafficWait::Tickets(_))))
    }

    fn process(&mut self) -> Result<(), Error> {
        loop {
            let busy = self.core.cs_busy();
            if busy && !self.registration_out() {
                return Ok(());
            }
            if let Some(typ) = self.core.joiner.peek_type() {
                if busy && typ == HandshakeType::CertificateRequest {
                    return Ok(());
                }
                if let Some(m) = self.core.joiner.next_message() {
                    self.handle_message(m)?;
                }
                continue;
            }
            if self.core.peer_closed {
                break;
            }
            let Some(rec) = self.core.deframer.next_record()? else {
                break;
            };
            self.handle_record(rec)?;
        }
        if let Some(State::Traffic(t)) = self.state.as_mut() {
            t.flush_tickets(&mut self.core)?;
        }
        Ok(())
    }

    fn handle_record(&mut self, rec: OpaqueRecord) -> Result<(), Error> {
        let msg = match (self.core.decrypter.as_mut(), rec.typ) {
            (Some(d), ContentType::ApplicationData) => d.decrypt(rec)?,
            (None, ContentType::ApplicationData) => {
                return Err(Error::InappropriateMessage {
                    expected: vec![ContentType::Handshake, ContentType::Alert],
                    got: ContentType::ApplicationData,
                })
            }
            // RFC 8446 §5: after the ServerHello every record is protected.
            (Some(_), ContentType::Handshake) => {
                return Err(Error::InappropriateMessage {
                    expected: vec![ContentType::ApplicationData],
                    got: ContentType::Handshake,
                })
            }
            (_, typ) => PlainMessage {
                typ,
                payload: rec.payload,
            },
        };
        match msg.typ {
            ContentType::Handshake => self.core.joiner.push(&msg.payload),
            ContentType::Alert => {
                self.core
                    .joiner
                    .check_non_handshake(msg.typ, msg.payload.len())?;
                if self.core.alerts.receive(&msg.payload)? == AlertOutcome::CloseNotify {
                    self.core.peer_closed = true;
                }
                Ok(())
            }
            ContentType::ApplicationData => {
                self.core
                    .joiner
                    .check_non_handshake(msg.typ, msg.payload.len())?;
                if self.is_handshaking() {
                    return Err(Error::InappropriateMessage {
                        expected: vec![ContentType::Handshake],
                        got: ContentType::ApplicationData,
                    });
                }
                self.core.plaintext.extend(msg.payload);
                Ok(())
            }
            got => Err(Error::InappropriateMessage {
                expected: vec![ContentType::Handshake, ContentType::ApplicationData],
                got,
            }),
        }
    }

    fn handle_message(&mut self, m: HandshakeMessage) -> Result<(), Error> {
        let state = self
            .state
            .take()
            .ok_or_else(|| Error::general("connection has failed"))?;
        let core = &mut self.core;
        let next = match state {
            State::AwaitCs(_) => return Err(Error::general("message while a CS call is out")),
            State::ServerHello(s) => s.handle(core, &m)?,
            State::EncryptedExtensions(s) => s.handle(core, &m)?,
            State::CertificateOrCertReq(s) => s.handle(core, &m)?,
            State::Certificate(s) => s.handle(core, &m)?,
            State::CertificateVerify(s) => s.handle(core, &m)?,
            State::Finished(s) => s.handle(core, &m)?,
            State::Traffic(mut t) => {
                t.handle(core, &m)?;
                State::Traffic(t)
            }
        };
        self.state = Some(next);
        Ok(())
    }

    fn cs_response_inner(&mut self, reply: Result<CsReply, CsError>) -> Result<(), Error> {
        let exchange = self
            .core
            .cs_in_flight
            .take()
            .ok_or_else(|| Error::general("CS response without a call"))?;
        let state = self
            .state
            .take()
            .ok_or_else(|| Error::general("connection has failed"))?;
        let core = &mut self.core;
        let next = match state {
            State::Traffic(mut t) => {
                t.cs_response(core, exchange, reply)?;
                State::Traffic(t)
            }
            State::AwaitCs(w) => {
                let reply = reply.map_err(|e| cs_error(exchange, e))?;
                w.resume(core, reply)?
            }
            _ => return Err(Error::general("CS response in a state that made no call")),
        };
        self.state = Some(next);
        self.process()
    }
}

/// The CS work of a finished connection ([`ClientConnection::detach_cs`]): the driver awaits
/// the registration in flight (if any) and gives its reply to [`Self::in_flight_done`], then
/// makes [`Self::take_last_call`] and gives its reply to [`Self::last_done`]. Tickets are stored
/// when, and only when, the CS accepted them.
pub struct CsEpilogue {
    store: Option<Arc<dyn crate::tickets::TicketStore>>,
    store_key: String,
    in_flight: Option<Vec<StoredTicket>>,
    last: Option<(CsCall, Vec<StoredTicket>)>,
}

impl std::fmt::Debug for CsEpilogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsEpilogue")
            .field("in_flight", &self.in_flight.is_some())
            .field("last", &self.last.as_ref().map(|(c, _)| c.exchange()))
            .finish()
    }
}

impl CsEpilogue {
    /// Whether a registration was in flight when the connection ended.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// The reply to the registration that was in flight.
    pub fn in_flight_done(&mut self, reply: Result<CsReply, CsError>) {
        if let Some(metas) = self.in_flight.take() {
            self.accept("c_register_tickets", metas, reply);
        }
    }

    /// The last call: the remaining tickets, closing the session.
    pub fn take_last_call(&mut self) -> Option<CsCall> {
        self.last.as_mut().map(|(c, _)| c.clone())
    }

    /// The reply to the last call.
    pub fn last_done(&mut self, reply: Result<CsReply, CsError>) {
        if let Some((call, metas)) = self.last.take() {
            self.accept(call.exchange(), metas, reply);
        }
    }

    fn accept(
        &self,
        exchange: &'static str,
        metas: Vec<StoredTicket>,
        reply: Result<CsReply, CsError>,
    ) {
        match reply {
            Ok(CsReply::RegisterTickets(_)) => {
                if let Some(store) = &self.store {
                    for t in metas {
                        store.insert(&self.store_key, t);
                    }
                }
            }
            // Losing tickets does not matter to a connection that is over.
            Ok(_) => tracing::warn!("{}", unexpected_reply(exchange)),
            Err(e) => tracing::warn!("{}", cs_error(exchange, e)),
        }
    }
}

fn cs_error(exchange: &'static str, e: CsError) -> Error {
    Error::CryptoService {
        exchange,
        status: e.lurk_status(),
        message: match e {
            CsError::Refused { message, .. } => message,
            other => other.to_string(),
        },
    }
}

fn unexpected_reply(exchange: &'static str) -> Error {
    Error::CryptoService {
        exchange,
        status: None,
        message: "answer of another exchange".into(),
    }
}

// ---------------------------------------------------------------------------------------------
// ClientHello

/// What goes into a ClientHello besides its shares and PSKs.
fn client_hello_builder(core: &Core, hs: &Hs, random_field: [u8; 32]) -> ClientHelloBuilder {
    let c = &core.config;
    let mut b = ClientHelloBuilder::new(random_field)
        .legacy_session_id(&hs.session_id)
        .cipher_suites(&hs.offered_suites)
        .supported_groups(&c.groups)
        .signature_algorithms(&c.signature_schemes)
        .post_handshake_auth(c.post_handshake_auth);
    // RFC 6066 §3: no IP literal in server_name.
    if core.server_name.parse::<std::net::IpAddr>().is_err() {
        b = b.server_name(&core.server_name);
    }
    if !c.alpn.is_empty() {
        let alpn: Vec<&[u8]> = c.alpn.iter().map(Vec::as_slice).collect();
        b = b.alpn_protocols(&alpn);
    }
    // Sent even without a PSK: servers send tickets only to clients that send it (§4.2.9).
    if !c.psk_modes.is_empty() {
        b = b.psk_modes(&c.psk_modes);
    }
    if let Some(limit) = c.record_size_limit {
        b = b.record_size_limit(limit);
    }
    b
}

fn add_psks(mut b: ClientHelloBuilder, psks: &[OfferedPsk], now: SystemTime) -> ClientHelloBuilder {
    for p in psks {
        let age = p.ticket.as_ref().map_or(0, |t| t.obfuscated_age(now));
        b = b.psk(&p.identity, age, p.hash.output_len());
    }
    b
}

/// Binders the engine computes itself (every offered PSK is local): RFC 8446 §4.2.11.2, over
/// `prefix` (empty, or message_hash + HelloRetryRequest) and the truncated ClientHello.
fn local_binders(prefix: &Transcript, ch: &mut [u8], psks: &[OfferedPsk]) -> Result<(), Error> {
    if psks.is_empty() {
        return Ok(());
    }
    let truncated = truncated_for_binders(ch)?;
    let mut binders = Vec::with_capacity(psks.len());
    for p in psks {
        let psk = p
            .local
            .as_ref()
            .ok_or_else(|| Error::general("binder for a CS-held PSK"))?;
        let early = KeyScheduleEarly::new(p.hash, Some(psk.as_bytes()));
        let key = early.binder_key(p.kind);
        binders.push(binder(
            p.hash,
            key.as_bytes(),
            &prefix.hash_with(p.hash, truncated),
        ));
    }
    set_binders(ch, &binders)?;
    Ok(())
}

fn start(core: &mut Core) -> Result<State, Error> {
    let config = core.config.clone();
    let engine_random = random_bytes::<32>()?;
    let session_id = if config.middlebox_compat {
        random_bytes::<32>()?.to_vec()
    } else {
        Vec::new()
    };
    let now = SystemTime::now();
    if config.groups.is_empty() {
        return Err(Error::general("no group configured"));
    }
    // RFC 8449 §4: at least 64; in TLS 1.3 at most 2^14 + 1 (content type included).
    if let Some(l) = config.record_size_limit {
        if !(MIN_RECORD_SIZE_LIMIT..=MAX_RECORD_SIZE_LIMIT).contains(&l) {
            return Err(Error::general(format!(
                "record_size_limit {l} is outside {MIN_RECORD_SIZE_LIMIT}..={MAX_RECORD_SIZE_LIMIT}"
            )));
        }
    }

    // The PSK: an external one held by the CS, or a stored ticket usable in this mode.
    let mut psks = Vec::new();
    let mut offered_suites = config.cipher_suites.clone();
    if let Some(ext) = &config.external_psk {
        offered_suites.retain(|s| s.hash() == Some(ext.hash));
        if offered_suites.is_empty() {
            return Err(Error::general(format!(
                "no configured cipher suite has the external PSK's hash {:?}",
                ext.hash
            )));
        }
        psks.push(OfferedPsk {
            identity: ext.identity.clone(),
            hash: ext.hash,
            kind: PskKind::External,
            local: None,
            ticket: None,
        });
    } else if let (true, Some(store)) = (config.resume, config.ticket_store.as_ref()) {
        let has_cs = core.has_cs;
        let eph_cs = config.ephemeral == Ephemeral::Cs;
        let suites = offered_suites.clone();
        // A CS-held ticket needs the CS; an engine-held one cannot be combined with CS shares
        // (the CS computes the binders of every identity and does not know its PSK).
        let accept = move |t: &StoredTicket| {
            let usable = if t.cs_held() { has_cs } else { !eph_cs };
            usable && suites.iter().any(|s| s.hash() == Some(t.hash()))
        };
        if let Some(t) = store.take(&core.store_key, now, &accept) {
            let hash = t.hash();
            // Suites of the ticket's hash first.
            offered_suites.sort_by_key(|s| s.hash() != Some(hash));
            psks.push(OfferedPsk {
                identity: t.identity.clone(),
                hash,
                kind: PskKind::Resumption,
                local: t.psk.as_ref().map(|p| Secret::from_bytes(p)),
                ticket: Some(t),
            });
        }
    }

    // Early data: with the first PSK when its ticket allows it (§4.2.10).
    let early_suite = match (&config.early_data, psks.first()) {
        (Some(data), Some(p)) if !data.is_empty() => p
            .ticket
            .as_ref()
            .filter(|t| ticket_allows_early_data(t, &config, &offered_suites))
            .map(|t| t.suite),
        _ => None,
    };

    // Key shares for the first N groups; the others are listed only.
    let n = config.key_shares.clamp(1, config.groups.len());
    let mut shares = Vec::with_capacity(n);
    for g in &config.groups[..n] {
        shares.push(OfferedShare::new(
            *g,
            match config.ephemeral {
                Ephemeral::Engine => Some(EngineShare::generate(*g)?),
                Ephemeral::Cs => None,
            },
        ));
    }
    let need_cs = config.ephemeral == Ephemeral::Cs || psks.iter().any(|p| p.local.is_none());
    let random_field = if need_cs {
        engine_random
    } else {
        client_random(config.freshness, config.freshness_mode, &engine_random)
    };
    let mut hs = Box::new(Hs {
        engine_random,
        random_field,
        session_id,
        offered_suites,
        shares,
        psks,
        early_data_offered: early_suite.is_some(),
        early: None,
        early_suite,
        transcript: Transcript::new(),
        cs_log: Vec::new(),
        cs_session: None,
        hrr_suite: None,
        suite: None,
        psk_selected: None,
        cs_key_schedule: false,
        key_schedule: None,
        client_hs: None,
        server_hs: None,
        server_flight: Vec::new(),
        early_accepted: false,
        cert_request: None,
        alpn: None,
    });
    core.summary.early_data_offered = hs.early_data_offered;

    let mut b = client_hello_builder(core, &hs, random_field);
    for s in &hs.shares {
        b = b.key_share(s.group, s.engine.as_ref().map_or(&[][..], |e| e.public()));
    }
    b = add_psks(b, &hs.psks, now).early_data(hs.early_data_offered);
    let mut ch = b.build()?;

    if need_cs {
        let call = pb::CInitClientHelloRequest {
            client_hello: ch,
            freshness: config.freshness as i32,
            psks: hs
                .psks
                .iter()
                .enumerate()
                .map(|(i, p)| pb::PskInfo {
                    identity_index: i as u32,
                    psk_type: pb::PskType::from(p.kind) as i32,
                    tls_hash: tls_hash(p.hash) as i32,
                })
                .collect(),
            secret_request: Some(pb::SecretRequest {
                e_s: hs.early_data_offered,
                ..Default::default()
            }),
        };
        core.request_cs(CsCall::InitClientHello(call))?;
        return Ok(State::AwaitCs(AwaitCs::InitClientHello(hs)));
    }
    local_binders(&Transcript::new(), &mut ch, &hs.psks)?;
    let early_secret = match (&hs.early_suite, hs.psks.first()) {
        (Some(suite), Some(p)) => {
            let hash = suite.hash().unwrap_or(HashAlg::Sha256);
            let psk = p.local.as_ref().map(Secret::as_bytes);
            let mut t = Transcript::new();
            t.add(&ch);
            Some(KeyScheduleEarly::new(hash, psk).client_early_traffic_secret(&t.hash(hash)))
        }
        _ => None,
    };
    send_first_client_hello(core, &mut hs, &ch, early_secret)?;
    Ok(State::ServerHello(ExpectServerHello { hs }))
}

/// RFC 8446 §4.2.10: 0-RTT only with a ticket whose max_early_data_size is not 0 (§4.6.1),
/// whose cipher suite we offer, and when the ALPN protocol we offer first is the one of the
/// connection that issued the ticket (the server must select the same one to accept the early
/// data; with no ALPN on either side they match).
fn ticket_allows_early_data(
    t: &StoredTicket,
    config: &ClientConfig,
    suites: &[CipherSuite],
) -> bool {
    t.max_early_data > 0
        && suites.contains(&t.suite)
        && t.alpn.as_deref() == config.alpn.first().map(Vec::as_slice)
}

/// Sends the first ClientHello and, when offered, the early data under
/// client_early_traffic_secret: at most the ticket's max_early_data_size bytes of it (§4.6.1:
/// application data bytes, not counting the content type and padding).
fn send_first_client_hello(
    core: &mut Core,
    hs: &mut Hs,
    ch: &[u8],
    early_secret: Option<Secret>,
) -> Result<(), Error> {
    core.send_plain_handshake(ch);
    hs.transcript.add(ch);
    hs.cs_log
        .extend_from_slice(&with_engine_random(ch, &hs.engine_random));
    if let (Some(suite), Some(secret), Some(data)) =
        (hs.early_suite, early_secret, core.config.early_data.clone())
    {
        let max = hs.psks[0]
            .ticket
            .as_ref()
            .map_or(0, |t| t.max_early_data as usize);
        let sent = data.len().min(max);
        let mut encrypter = RecordEncrypter::new(&record_keys(suite, &secret)?)?;
        core.send_ccs_once();
        encrypter.encrypt_all(ContentType::ApplicationData, &data[..sent], &mut core.out)?;
        hs.early = Some(Early {
            encrypter,
            data,
            sent,
        });
    }
    Ok(())
}

impl AwaitCs {
    fn resume(self, core: &mut Core, reply: CsReply) -> Result<State, Error> {
        match (self, reply) {
            (AwaitCs::InitClientHello(mut hs), CsReply::InitClientHello(r)) => {
                let ch = r.client_hello;
                check_completed_client_hello(core, &hs, &ch, "c_init_client_hello")?;
                if r.session_id.is_empty() {
                    return Err(Error::CryptoService {
                        exchange: "c_init_client_hello",
                        status: None,
                        message: "no session id".into(),
                    });
                }
                hs.cs_session = Some(r.session_id);
                let early_secret = if hs.early_data_offered {
                    Some(find_secret(
                        &r.secrets,
                        pb::SecretType::ClientEarlyTraffic,
                        "c_init_client_hello",
                    )?)
                } else {
                    None
                };
                send_first_client_hello(core, &mut hs, &ch, early_secret)?;
                Ok(State::ServerHello(ExpectServerHello { hs }))
            }
            (AwaitCs::ClientHello(mut hs), CsReply::ClientHello(r)) => {
                check_completed_client_hello(core, &hs, &r.client_hello, "c_client_hello")?;
                send_second_client_hello(core, &mut hs, &r.client_hello);
                Ok(State::ServerHello(ExpectServerHello { hs }))
            }
            (AwaitCs::ServerHello(mut hs), CsReply::ServerHello(r)) => {
                let client = find_secret(
                    &r.secrets,
                    pb::SecretType::ClientHandshakeTraffic,
                    "c_server_hello",
                )?;
                let server = find_secret(
                    &r.secrets,
                    pb::SecretType::ServerHandshakeTraffic,
                    "c_server_hello",
                )?;
                install_handshake_keys(core, &mut hs, client, server)?;
                Ok(State::EncryptedExtensions(ExpectEncryptedExtensions { hs }))
            }
            (AwaitCs::ClientFinished(mut hs, mut flight), CsReply::ClientFinished(r)) => {
                let ex = "c_client_finished";
                let client_ap =
                    find_secret(&r.secrets, pb::SecretType::ClientApplicationTraffic, ex)?;
                let server_ap =
                    find_secret(&r.secrets, pb::SecretType::ServerApplicationTraffic, ex)?;
                let exporter_master = if core.config.exporter {
                    Some(find_secret(&r.secrets, pb::SecretType::ExporterMaster, ex)?)
                } else {
                    None
                };
                if r.client_finished.first() != Some(&HandshakeType::Finished.get()) {
                    return Err(Error::CryptoService {
                        exchange: ex,
                        status: None,
                        message: "no client Finished".into(),
                    });
                }
                if !r.certificate_verify.is_empty() {
                    flight.certificate_verify = Some(r.certificate_verify);
                }
                for m in [
                    &flight.eoed,
                    &flight.certificate,
                    &flight.certificate_verify,
                ]
                .into_iter()
                .flatten()
                {
                    hs.transcript.add(m);
                }
                hs.transcript.add(&r.client_finished);
                let cs = match (r.last_exchange, hs.cs_session.clone()) {
                    (false, Some(id)) => CsSession::Full(id),
                    _ => CsSession::Closed,
                };
                send_flight(
                    core,
                    hs,
                    *flight,
                    r.client_finished,
                    AppSecrets {
                        client: client_ap,
                        server: server_ap,
                        resumption_master: None,
                        exporter_master,
                    },
                    cs,
                )
            }
            (
                AwaitCs::InitClientFinished(mut hs, mut flight, fin),
                CsReply::InitClientFinished(r),
            ) => {
                if !r.certificate_verify.is_empty() {
                    hs.transcript.add(&r.certificate_verify);
                    flight.certificate_verify = Some(r.certificate_verify);
                }
                let cs = if r.session_id.is_empty() {
                    CsSession::Closed
                } else {
                    CsSession::SigningOnly {
                        id: r.session_id,
                        awaiting_client_finished: true,
                    }
                };
                finish_engine(core, hs, *flight, *fin, cs)
            }
            (w, _) => Err(unexpected_reply(w.exchange())),
        }
    }

    fn exchange(&self) -> &'static str {
        match self {
            Self::InitClientHello(_) => "c_init_client_hello",
            Self::ClientHello(_) => "c_client_hello",
            Self::ServerHello(_) => "c_server_hello",
            Self::ClientFinished(..) => "c_client_finished",
            Self::InitClientFinished(..) => "c_init_client_finished",
        }
    }
}

/// The ClientHello the CS completed must parse, carry no empty share, and carry the fresh
/// random of our random (LURK.md §3: the engine checks what it sends).
fn check_completed_client_hello(
    core: &Core,
    hs: &Hs,
    ch: &[u8],
    exchange: &'static str,
) -> Result<(), Error> {
    let parsed = ClientHello::parse(ch).map_err(|e| Error::CryptoService {
        exchange,
        status: None,
        message: format!("the completed ClientHello does not parse: {e}"),
    })?;
    parsed.ensure_complete().map_err(|e| Error::CryptoService {
        exchange,
        status: None,
        message: e.to_string(),
    })?;
    let expected = client_random(
        core.config.freshness,
        core.config.freshness_mode,
        &hs.engine_random,
    );
    if parsed.random != &expected {
        return Err(PeerMisbehaved::WrongFreshRandom.into());
    }
    Ok(())
}

fn send_second_client_hello(core: &mut Core, hs: &mut Hs, ch: &[u8]) {
    core.send_ccs_once();
    core.send_plain_handshake(ch);
    hs.transcript.add(ch);
    hs.cs_log
        .extend_from_slice(&with_engine_random(ch, &hs.engine_random));
}

fn install_handshake_keys(
    core: &mut Core,
    hs: &mut Hs,
    client: Secret,
    server: Secret,
) -> Result<(), Error> {
    let suite = hs.suite()?;
    core.install_decrypter(&record_keys(suite, &server)?)?;
    core.install_encrypter(&record_keys(suite, &client)?)?;
    hs.client_hs = Some(client);
    hs.server_hs = Some(server);
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ServerHello

impl ExpectServerHello {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(m, &[HandshakeType::ServerHello])?;
        let mut hs = self.hs;
        let sh = ServerHello::parse(&m.encoded)?;
        // §4.1.3 / §4.1.4 checks common to ServerHello and HelloRetryRequest.
        if sh.legacy_session_id_echo != hs.session_id.as_slice() {
            return Err(PeerMisbehaved::WrongSessionIdEcho.into());
        }
        let suite = sh.cipher_suite;
        if !hs.offered_suites.contains(&suite) {
            return Err(PeerMisbehaved::SelectedUnofferedCipherSuite.into());
        }
        let hash = suite
            .hash()
            .ok_or(PeerMisbehaved::SelectedUnofferedCipherSuite)?;
        if sh.is_hello_retry_request() {
            return hello_retry(core, hs, &sh, m);
        }
        if hs.hrr_suite.is_some_and(|s| s != suite) {
            return Err(PeerMisbehaved::SelectedDifferentCipherSuiteAfterRetry.into());
        }
        let modes = &core.config.psk_modes;
        let psk_selected = match sh.selected_identity {
            Some(i) => {
                let p = hs
                    .psks
                    .get(usize::from(i))
                    .ok_or(PeerMisbehaved::SelectedUnofferedPsk)?;
                if p.hash != hash {
                    return Err(PeerMisbehaved::SelectedPskWithWrongHash.into());
                }
                Some(usize::from(i))
            }
            None => None,
        };
        let share_pos = match (&sh.key_share, psk_selected) {
            (Some(ks), psk) => {
                if psk.is_some() && !modes.contains(&PskKeyExchangeMode::PskDheKe) {
                    return Err(PeerMisbehaved::UnofferedPskKeyExchangeMode.into());
                }
                Some(
                    hs.shares
                        .iter()
                        .position(|s| s.group == ks.group)
                        .ok_or(PeerMisbehaved::WrongGroupForKeyShare)?,
                )
            }
            (None, Some(_)) => {
                if !modes.contains(&PskKeyExchangeMode::PskKe) {
                    return Err(PeerMisbehaved::UnofferedPskKeyExchangeMode.into());
                }
                None
            }
            (None, None) => return Err(PeerMisbehaved::MissingKeyShare.into()),
        };
        // RFC 8446 §5.1: the ServerHello ends the plaintext epoch.
        core.joiner.check_key_change()?;
        hs.transcript.add(&m.encoded);
        hs.cs_log.extend_from_slice(&m.encoded);
        hs.suite = Some(suite);
        hs.psk_selected = psk_selected;

        let mode = match (psk_selected, share_pos) {
            (None, _) => TlsMode::Ecdhe,
            (Some(_), Some(_)) => TlsMode::PskEcdhe,
            (Some(_), None) => TlsMode::Psk,
        };
        let s = &mut core.summary;
        s.cipher_suite = Some(suite);
        s.mode = Some(mode);
        s.group = sh.key_share.as_ref().map(|k| k.group);
        if let Some(i) = psk_selected {
            s.resumed = hs.psks[i].kind == PskKind::Resumption;
            s.external_psk = hs.psks[i].kind == PskKind::External;
        }

        let share = share_pos.map(|p| hs.shares.swap_remove(p));
        let cs_share = share.as_ref().is_some_and(OfferedShare::cs_made);
        let cs_psk = psk_selected.is_some_and(|i| hs.psks[i].local.is_none());
        hs.cs_key_schedule = cs_share || cs_psk;
        let shared = match (share, &sh.key_share) {
            (Some(share), Some(ks)) if !cs_share => share.agree(ks.key_exchange)?,
            _ => None,
        };
        // Key pairs of the other shares are dropped (destroyed) here.
        hs.shares.clear();

        if hs.cs_key_schedule {
            let session_id = hs
                .cs_session
                .clone()
                .ok_or_else(|| Error::general("CS key schedule without a CS session"))?;
            let ephemeral = match &shared {
                Some(secret) => pb::Ephemeral {
                    method: pb::EphemeralMethod::EGenerated as i32,
                    shared_secret: secret.to_vec(),
                },
                None => pb::Ephemeral {
                    method: pb::EphemeralMethod::NoSecret as i32,
                    shared_secret: Vec::new(),
                },
            };
            core.request_cs(CsCall::ServerHello(pb::CServerHelloRequest {
                session_id,
                server_hello: m.encoded.clone(),
                ephemeral: Some(ephemeral),
                secret_request: Some(pb::SecretRequest {
                    h_c: true,
                    h_s: true,
                    ..Default::default()
                }),
            }))?;
            return Ok(State::AwaitCs(AwaitCs::ServerHello(hs)));
        }
        let psk = psk_selected.and_then(|i| hs.psks[i].local.as_ref().map(Secret::as_bytes));
        let ks = KeyScheduleEarly::new(hash, psk)
            .into_handshake(shared.as_deref().map(|v| v.as_slice()));
        let th = hs.transcript.hash(hash);
        let client = ks.client_handshake_traffic_secret(&th);
        let server = ks.server_handshake_traffic_secret(&th);
        hs.key_schedule = Some(ks);
        install_handshake_keys(core, &mut hs, client, server)?;
        Ok(State::EncryptedExtensions(ExpectEncryptedExtensions { hs }))
    }
}

/// RFC 8446 §4.1.4: checks the HelloRetryRequest and sends the second ClientHello (through
/// c_client_hello when a CS session is open: the CS makes the new share and the binders).
fn hello_retry(
    core: &mut Core,
    mut hs: Box<Hs>,
    hrr: &ServerHello<'_>,
    m: &HandshakeMessage,
) -> Result<State, Error> {
    if hs.hrr_suite.is_some() {
        return Err(PeerMisbehaved::TwoHelloRetryRequests.into());
    }
    let suite = hrr.cipher_suite;
    let hash = suite
        .hash()
        .ok_or(PeerMisbehaved::SelectedUnofferedCipherSuite)?;
    if hrr.selected_group.is_none() && hrr.cookie.is_none() {
        return Err(PeerMisbehaved::IllegalHelloRetryRequest.into());
    }
    if let Some(g) = hrr.selected_group {
        if !core.config.groups.contains(&g) || hs.shares.iter().any(|s| s.group == g) {
            return Err(PeerMisbehaved::IllegalHelloRetryRequest.into());
        }
    }
    core.joiner.check_key_change()?;
    core.summary.hello_retry = true;
    hs.hrr_suite = Some(suite);
    hs.transcript
        .restart_for_hello_retry(hash)
        .map_err(|e| Error::general(e.to_string()))?;
    hs.transcript.add(&m.encoded);
    hs.cs_log.extend_from_slice(&m.encoded);

    // No early data after a HelloRetryRequest (§4.2.10); what was sent is lost.
    hs.early_data_offered = false;
    hs.early_suite = None;
    // Only PSKs usable with the HRR's suite stay.
    hs.psks.retain(|p| p.hash == hash);
    hs.offered_suites = vec![suite];

    let cs = hs.cs_session.is_some();
    let groups: Vec<NamedGroup> = match hrr.selected_group {
        Some(g) => vec![g],
        None => hs.shares.iter().map(|s| s.group).collect(),
    };
    hs.shares = groups
        .into_iter()
        .map(|g| {
            Ok(OfferedShare::new(
                g,
                if cs {
                    None
                } else {
                    Some(EngineShare::generate(g)?)
                },
            ))
        })
        .collect::<Result<_, Error>>()?;

    let mut b = client_hello_builder(core, &hs, hs.random_field);
    for s in &hs.shares {
        b = b.key_share(s.group, s.engine.as_ref().map_or(&[][..], |e| e.public()));
    }
    if let Some(c) = hrr.cookie {
        b = b.cookie(c);
    }
    b = add_psks(b, &hs.psks, SystemTime::now());
    let mut ch2 = b.build()?;
    if cs {
        let session_id = hs.cs_session.clone().unwrap_or_default();
        core.request_cs(CsCall::ClientHello(pb::CClientHelloRequest {
            session_id,
            hello_retry_request: m.encoded.clone(),
            client_hello: ch2,
        }))?;
        return Ok(State::AwaitCs(AwaitCs::ClientHello(hs)));
    }
    local_binders(&hs.transcript, &mut ch2, &hs.psks)?;
    send_second_client_hello(core, &mut hs, &ch2);
    Ok(State::ServerHello(ExpectServerHello { hs }))
}

// ---------------------------------------------------------------------------------------------
// Server flight

impl ExpectEncryptedExtensions {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(m, &[HandshakeType::EncryptedExtensions])?;
        let mut hs = self.hs;
        let ee = EncryptedExtensions::parse(&m.encoded)?;
        if ee.early_data && !hs.early_data_offered {
            return Err(PeerMisbehaved::UnsolicitedEarlyDataExtension.into());
        }
        // §4.2.11: early data can only be accepted with the first PSK (illegal_parameter).
        if ee.early_data && hs.psk_selected != Some(0) {
            return Err(PeerMisbehaved::EarlyDataAcceptedWithOtherPsk.into());
        }
        if let Some(p) = ee.alpn_protocol {
            if !core.config.alpn.iter().any(|a| a == p) {
                return Err(PeerMisbehaved::UnofferedAlpnProtocol.into());
            }
            hs.alpn = Some(p.to_vec());
        }
        // §4.2.10: a server accepting early data keeps the ticket's cipher suite and ALPN
        // protocol (none if the ticket's connection had none).
        if ee.early_data {
            let ticket = hs.psks.first().and_then(|p| p.ticket.as_ref());
            let same = ticket.is_some_and(|t| t.alpn == hs.alpn && Some(t.suite) == hs.suite);
            if !same {
                return Err(PeerMisbehaved::EarlyDataParametersChanged.into());
            }
        }
        core.negotiate_record_size_limit(ee.record_size_limit)?;
        hs.early_accepted = ee.early_data;
        core.summary.early_data_accepted = ee.early_data;
        core.summary.alpn = hs.alpn.clone();
        hs.add_received(m);
        if hs.psk_selected.is_some() {
            Ok(State::Finished(ExpectFinished { hs }))
        } else {
            Ok(State::CertificateOrCertReq(ExpectCertificateOrCertReq {
                hs,
            }))
        }
    }
}

impl ExpectCertificateOrCertReq {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(
            m,
            &[
                HandshakeType::CertificateRequest,
                HandshakeType::Certificate,
            ],
        )?;
        let mut hs = self.hs;
        if m.typ == HandshakeType::Certificate {
            return handle_certificate(core, hs, m);
        }
        let cr = CertificateRequest::parse(&m.encoded)?;
        // §4.3.2: the context is empty in the handshake.
        if !cr.context.is_empty() {
            return Err(PeerMisbehaved::IllegalCertificateRequestContext.into());
        }
        hs.cert_request = Some(m.encoded.clone());
        hs.add_received(m);
        Ok(State::Certificate(ExpectCertificate { hs }))
    }
}

impl ExpectCertificate {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(m, &[HandshakeType::Certificate])?;
        handle_certificate(core, self.hs, m)
    }
}

fn handle_certificate(
    core: &mut Core,
    mut hs: Box<Hs>,
    m: &HandshakeMessage,
) -> Result<State, Error> {
    let cert = Certificate::parse(&m.encoded)?;
    if !cert.context.is_empty() {
        return Err(PeerMisbehaved::ServerCertificateWithContext.into());
    }
    let chain = cert.chain();
    if chain.is_empty() {
        return Err(PeerMisbehaved::EmptyServerCertificate.into());
    }
    #[cfg(test)]
    if core.skip_server_auth {
        let leaf = chain[0].to_vec();
        hs.add_received(m);
        return Ok(State::CertificateVerify(ExpectCertificateVerify {
            hs,
            leaf,
        }));
    }
    if core.config.trust_anchors.is_empty() {
        return Err(CertificateError::new(
            AlertDescription::UnknownCa,
            "no trust anchors configured (--ca): cannot validate the server's certificate",
        )
        .into());
    }
    core.config
        .trust_anchors
        .verify_server_chain(&chain, &core.server_name, UnixTime::now())?;
    let leaf = chain[0].to_vec();
    hs.add_received(m);
    Ok(State::CertificateVerify(ExpectCertificateVerify {
        hs,
        leaf,
    }))
}

impl ExpectCertificateVerify {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(m, &[HandshakeType::CertificateVerify])?;
        let mut hs = self.hs;
        let cv = CertificateVerify::parse(&m.encoded)?;
        let th = hs.transcript.hash(hs.hash()?);
        #[cfg(test)]
        let skip = core.skip_server_auth;
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            verify_server_signature(
                &self.leaf,
                &core.config.signature_schemes,
                cv.scheme,
                &th,
                cv.signature,
            )?;
        }
        hs.add_received(m);
        Ok(State::Finished(ExpectFinished { hs }))
    }
}

/// The client Certificate answering `cr`: the configured key's chain when the CS can sign with
/// it in a scheme the server accepts, else an empty list (§4.4.2.4: the server decides).
fn client_certificate(core: &Core, cr: &[u8]) -> Result<(Vec<u8>, String), Error> {
    let cr = CertificateRequest::parse(cr)?;
    let key = core.config.client_key.as_ref().filter(|k| {
        !k.certificate_chain.is_empty()
            && (k.signature_schemes.is_empty()
                || k.signature_schemes
                    .iter()
                    .any(|s| cr.signature_algorithms.contains(s)))
    });
    Ok(match key {
        Some(k) => (
            encode_certificate(cr.context, &k.certificate_chain)?,
            k.key_id.clone(),
        ),
        None => (
            encode_certificate::<Vec<u8>>(cr.context, &[])?,
            String::new(),
        ),
    })
}

impl ExpectFinished {
    fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
        require(m, &[HandshakeType::Finished])?;
        let mut hs = self.hs;
        let hash = hs.hash()?;
        let fin = Finished::parse(&m.encoded, hash)?;
        let server_hs = hs
            .server_hs
            .as_ref()
            .ok_or_else(|| Error::general("no server handshake secret"))?;
        let th = hs.transcript.hash(hash);
        if !verify_finished(hash, server_hs.as_bytes(), &th, fin.verify_data) {
            return Err(PeerMisbehaved::IncorrectFinished.into());
        }
        core.joiner.check_key_change()?;
        core.deframer.end_middlebox_ccs();
        hs.add_received(m);
        let th_server_finished = hs.transcript.hash(hash);

        let eoed = hs.early_accepted.then(encode_end_of_early_data);
        let (certificate, key_id) = match &hs.cert_request {
            Some(cr) => {
                let (c, k) = client_certificate(core, cr)?;
                (Some(c), k)
            }
            None => (None, String::new()),
        };
        let flight = Box::new(Flight {
            eoed,
            certificate,
            certificate_verify: None,
        });
        let pha = core.config.post_handshake_auth;

        if hs.cs_key_schedule {
            let mut handshake_messages = hs.server_flight.clone();
            if let Some(e) = &flight.eoed {
                handshake_messages.extend_from_slice(e);
            }
            let session_id = hs.cs_session.clone().unwrap_or_default();
            core.request_cs(CsCall::ClientFinished(pb::CClientFinishedRequest {
                session_id,
                handshake_messages,
                key_id,
                client_certificate: flight.certificate.clone().unwrap_or_default(),
                // x (exporter_master_secret) only when the exporter is enabled (RFC 8446 §7.5).
                secret_request: Some(pb::SecretRequest {
                    a_c: true,
                    a_s: true,
                    x: core.config.exporter,
                    ..Default::default()
                }),
                last_exchange: !pha && core.config.ticket_store.is_none(),
            }))?;
            return Ok(State::AwaitCs(AwaitCs::ClientFinished(hs, flight)));
        }

        let ks = hs
            .key_schedule
            .take()
            .ok_or_else(|| Error::general("no key schedule"))?;
        let master = ks.into_master();
        let fin = Box::new(EngineFinish {
            client_ap: master.client_application_traffic_secret_0(&th_server_finished),
            server_ap: master.server_application_traffic_secret_0(&th_server_finished),
            exporter_master: core
                .config
                .exporter
                .then(|| master.exporter_master_secret(&th_server_finished)),
            master,
        });
        if let Some(e) = &flight.eoed {
            hs.transcript.add(e);
            hs.cs_log.extend_from_slice(e);
        }
        if let Some(c) = &flight.certificate {
            hs.transcript.add(c);
        }
        let needs_signature = flight
            .certificate
            .as_ref()
            .is_some_and(|_| !key_id.is_empty());
        if needs_signature {
            // Sequence C: only the signing key is protected.
            core.request_cs(CsCall::InitClientFinished(pb::CInitClientFinishedRequest {
                handshake_messages: hs.cs_log.clone(),
                freshness: core.config.freshness as i32,
                key_id,
                client_certificate: flight.certificate.clone().unwrap_or_default(),
                last_exchange: !pha,
            }))?;
            return Ok(State::AwaitCs(AwaitCs::InitClientFinished(hs, flight, fin)));
        }
        finish_engine(core, hs, *flight, *fin, CsSession::None)
    }
}

/// Sequence C/D: the engine makes its Finished and the resumption master secret.
fn finish_engine(
    core: &mut Core,
    mut hs: Box<Hs>,
    flight: Flight,
    fin: EngineFinish,
    cs: CsSession,
) -> Result<State, Error> {
    let hash = hs.hash()?;
    let client_hs = hs
        .client_hs
        .as_ref()
        .ok_or_else(|| Error::general("no client handshake secret"))?;
    let verify_data = finished_verify_data(hash, client_hs.as_bytes(), &hs.transcript.hash(hash));
    let finished = encode_finished(&verify_data)?;
    hs.transcript.add(&finished);
    let rms = fin
        .master
        .resumption_master_secret(&hs.transcript.hash(hash));
    send_flight(
        core,
        hs,
        flight,
        finished,
        AppSecrets {
            client: fin.client_ap,
            server: fin.server_ap,
            resumption_master: Some(rms),
            exporter_master: fin.exporter_master,
        },
        cs,
    )
}

/// What the connection keeps from the key schedule for after the handshake.
struct AppSecrets {
    client: Secret,
    server: Secret,
    /// Only when the engine ran the key schedule (sequence C/D); the CS keeps its own.
    resumption_master: Option<Secret>,
    exporter_master: Option<Secret>,
}

/// Sends the client's second flight in one write ([CCS], [EndOfEarlyData under the early
/// key], Certificate, CertificateVerify, Finished under the handshake key) and moves to the
/// application keys.
fn send_flight(
    core: &mut Core,
    mut hs: Box<Hs>,
    flight: Flight,
    finished: Vec<u8>,
    secrets: AppSecrets,
    cs: CsSession,
) -> Result<State, Error> {
    let AppSecrets {
        client: client_ap,
        server: server_ap,
        resumption_master,
        exporter_master,
    } = secrets;
    let suite = hs.suite()?;
    let hash = hs.hash()?;
    if let (Some(eoed), Some(early)) = (&flight.eoed, hs.early.as_mut()) {
        early
            .encrypter
            .encrypt_all(ContentType::Handshake, eoed, &mut core.out)?;
    }
    core.send_ccs_once();
    let parts: Vec<&[u8]> = [&flight.certificate, &flight.certificate_verify]
        .into_iter()
        .flatten()
        .map(Vec::as_slice)
        .chain(std::iter::once(finished.as_slice()))
        .collect();
    core.send_encrypted(ContentType::Handshake, &parts)?;
    core.install_encrypter(&record_keys(suite, &client_ap)?)?;
    core.install_decrypter(&record_keys(suite, &server_ap)?)?;
    let s = &mut core.summary;
    s.client_authenticated = flight
        .certificate
        .as_ref()
        .is_some_and(|c| Certificate::parse(c).is_ok_and(|c| !c.entries.is_empty()));
    s.handshake_time = Some(core.started.elapsed());

    let mut cs_log = std::mem::take(&mut hs.cs_log);
    if hs.cs_key_schedule {
        // The CS log is only needed for a later c_init_client_finished (sequence C).
        cs_log.clear();
    }
    let early = hs.early.take();
    let traffic = Box::new(ExpectTraffic {
        suite,
        hash,
        client_secret: client_ap,
        server_secret: server_ap,
        transcript: hs.transcript.clone(),
        resumption_master,
        exporter_master,
        cs,
        pha_offered: core.config.post_handshake_auth,
        cs_log,
        client_finished: finished,
        alpn: hs.alpn.clone(),
        pending_tickets: Vec::new(),
        waiting: None,
    });
    // Early data the server did not take goes again as ordinary data (when so configured);
    // when it took it, what did not fit in max_early_data_size follows.
    if let Some(early) = early {
        let rest = if hs.early_accepted {
            &early.data[early.sent..]
        } else if core.config.resend_rejected_early_data {
            &early.data[..]
        } else {
            &[][..]
        };
        if !rest.is_empty() {
            core.send_encrypted(ContentType::ApplicationData, &[rest])?;
        }
    }
    Ok(State::Traffic(traffic))
}

// ---------------------------------------------------------------------------------------------
// After the handshake

impl ExpectTraffic {
    fn handle(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        require(
            m,
            &[
                HandshakeType::NewSessionTicket,
                HandshakeType::KeyUpdate,
                HandshakeType::CertificateRequest,
            ],
        )?;
        match m.typ {
            HandshakeType::NewSessionTicket => self.new_session_ticket(core, m),
            HandshakeType::KeyUpdate => {
                let ku = KeyUpdate::parse(&m.encoded)?;
                // §4.6.3: the KeyUpdate is the last message under the old key.
                core.joiner.check_key_change()?;
                self.server_secret =
                    next_application_traffic_secret(self.hash, self.server_secret.as_bytes());
                let keys = record_keys(self.suite, &self.server_secret)?;
                core.decrypter
                    .as_mut()
                    .ok_or_else(|| Error::general("no read key"))?
                    .rekey(&keys)?;
                if ku.request_update == KeyUpdateRequest::UpdateRequested && !core.close_sent {
                    // Answered before any other write (§4.6.3).
                    self.send_key_update(core, KeyUpdateRequest::UpdateNotRequested)?;
                }
                Ok(())
            }
            _ => self.post_handshake_auth(core, m),
        }
    }

    fn send_key_update(&mut self, core: &mut Core, req: KeyUpdateRequest) -> Result<(), Error> {
        core.send_encrypted(ContentType::Handshake, &[&encode_key_update(req)])?;
        self.client_secret =
            next_application_traffic_secret(self.hash, self.client_secret.as_bytes());
        let keys = record_keys(self.suite, &self.client_secret)?;
        core.encrypter
            .as_mut()
            .ok_or_else(|| Error::general("no write key"))?
            .rekey(&keys)
    }

    fn new_session_ticket(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        let nst = NewSessionTicket::parse(&m.encoded)?;
        core.summary.tickets_received += 1;
        let Some(store) = core.config.ticket_store.clone() else {
            return Ok(());
        };
        let mut ticket = StoredTicket {
            identity: nst.ticket.to_vec(),
            age_add: nst.ticket_age_add,
            lifetime: nst.ticket_lifetime,
            max_early_data: nst.max_early_data_size.unwrap_or(0),
            suite: self.suite,
            received_at: SystemTime::now(),
            psk: None,
            alpn: self.alpn.clone(),
        };
        if let Some(rms) = &self.resumption_master {
            let psk = resumption_psk(self.hash, rms.as_bytes(), nst.ticket_nonce);
            ticket.psk = Some(Zeroizing::new(psk.as_bytes().to_vec()));
            store.insert(&core.store_key, ticket);
        } else if matches!(self.cs, CsSession::Full(_)) {
            self.pending_tickets.push((m.encoded.clone(), ticket));
        }
        Ok(())
    }

    /// Registers the tickets received so far at the CS (one call for all of them).
    fn flush_tickets(&mut self, core: &mut Core) -> Result<(), Error> {
        if self.pending_tickets.is_empty() || core.cs_busy() {
            return Ok(());
        }
        let CsSession::Full(id) = &self.cs else {
            self.pending_tickets.clear();
            return Ok(());
        };
        let (raws, metas): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tickets)
            .into_iter()
            .unzip();
        core.request_cs(CsCall::RegisterTickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: raws,
            last_exchange: false,
        }))?;
        self.waiting = Some(TrafficWait::Tickets(metas));
        Ok(())
    }

    fn post_handshake_auth(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        if !self.pha_offered {
            return Err(PeerMisbehaved::UnsolicitedPostHandshakeAuth.into());
        }
        let cr = CertificateRequest::parse(&m.encoded)?;
        // §4.3.2: a post-handshake request has a non-empty context.
        if cr.context.is_empty() {
            return Err(PeerMisbehaved::IllegalCertificateRequestContext.into());
        }
        let (certificate, key_id) = client_certificate(core, &m.encoded)?;
        let pending = PendingPha {
            certificate_request: m.encoded.clone(),
            certificate,
            key_id,
        };
        if pending.key_id.is_empty() {
            // No key: an empty Certificate and our Finished, no CS call.
            return self.finish_pha(core, pending, Vec::new());
        }
        match self.cs.clone() {
            CsSession::Full(id) => self.request_pha(core, id, Vec::new(), pending),
            CsSession::SigningOnly {
                id,
                awaiting_client_finished,
            } => {
                let msgs = if awaiting_client_finished {
                    self.client_finished.clone()
                } else {
                    Vec::new()
                };
                self.request_pha(core, id, msgs, pending)
            }
            CsSession::None | CsSession::Closed => {
                // Sequence C opened late: the CS needs the handshake first.
                core.request_cs(CsCall::InitClientFinished(pb::CInitClientFinishedRequest {
                    handshake_messages: self.cs_log.clone(),
                    freshness: core.config.freshness as i32,
                    key_id: String::new(),
                    client_certificate: Vec::new(),
                    last_exchange: false,
                }))?;
                self.waiting = Some(TrafficWait::PhaInit(pending));
                Ok(())
            }
        }
    }

    fn request_pha(
        &mut self,
        core: &mut Core,
        id: Vec<u8>,
        handshake_messages: Vec<u8>,
        pending: PendingPha,
    ) -> Result<(), Error> {
        core.request_cs(CsCall::PostHandAuth(pb::CPostHandAuthRequest {
            session_id: id,
            handshake_messages,
            certificate_request: pending.certificate_request.clone(),
            key_id: pending.key_id.clone(),
            client_certificate: pending.certificate.clone(),
            last_exchange: false,
        }))?;
        self.waiting = Some(TrafficWait::Pha(pending));
        Ok(())
    }

    /// Certificate, CertificateVerify, Finished under the current application key; the Finished
    /// over the handshake transcript + CertificateRequest + Certificate + CertificateVerify with
    /// the current client application traffic secret (§4.4.1, §4.4.4).
    fn finish_pha(&mut self, core: &mut Core, p: PendingPha, cv: Vec<u8>) -> Result<(), Error> {
        let mut t = self.transcript.clone();
        t.add(&p.certificate_request);
        t.add(&p.certificate);
        if !cv.is_empty() {
            t.add(&cv);
        }
        let vd = finished_verify_data(self.hash, self.client_secret.as_bytes(), &t.hash(self.hash));
        let fin = encode_finished(&vd)?;
        let mut parts: Vec<&[u8]> = vec![&p.certificate];
        if !cv.is_empty() {
            parts.push(&cv);
            core.summary.client_authenticated = true;
        }
        parts.push(&fin);
        core.send_encrypted(ContentType::Handshake, &parts)
    }

    fn cs_response(
        &mut self,
        core: &mut Core,
        exchange: &'static str,
        reply: Result<CsReply, CsError>,
    ) -> Result<(), Error> {
        let waiting = self
            .waiting
            .take()
            .ok_or_else(|| Error::general("CS response nobody waits for"))?;
        match (waiting, reply) {
            (TrafficWait::Tickets(metas), Ok(CsReply::RegisterTickets(_))) => {
                if let Some(store) = &core.config.ticket_store {
                    for t in metas {
                        store.insert(&core.store_key, t);
                    }
                }
                Ok(())
            }
            (TrafficWait::Tickets(_), Err(e)) => {
                // Losing tickets does not break the connection.
                tracing::warn!("{}", cs_error(exchange, e));
                Ok(())
            }
            (TrafficWait::PhaInit(p), Ok(CsReply::InitClientFinished(r))) => {
                if r.session_id.is_empty() {
                    return Err(Error::CryptoService {
                        exchange,
                        status: None,
                        message: "no session for post-handshake authentication".into(),
                    });
                }
                self.cs = CsSession::SigningOnly {
                    id: r.session_id.clone(),
                    awaiting_client_finished: true,
                };
                let fin = self.client_finished.clone();
                self.request_pha(core, r.session_id, fin, p)
            }
            (TrafficWait::Pha(p), Ok(CsReply::PostHandAuth(r))) => {
                if let CsSession::SigningOnly {
                    awaiting_client_finished,
                    ..
                } = &mut self.cs
                {
                    *awaiting_client_finished = false;
                }
                self.finish_pha(core, p, r.certificate_verify)
            }
            (_, Err(e)) => Err(cs_error(exchange, e)),
            (_, Ok(_)) => Err(unexpected_reply(exchange)),
        }
    }
}

#[cfg(test)]
impl ClientConnection {
    /// A connection that has "sent" the recorded ClientHello `ch` (not re-encoded, nothing
    /// queued) with the (EC)DHE secret injected: the rest of a recorded trace then runs
    /// through the real states. Server authentication is skipped (see `Core`).
    pub(crate) fn replay(
        config: Arc<ClientConfig>,
        ch: &[u8],
        shared: &[u8],
    ) -> Result<Self, Error> {
        let parsed = ClientHello::parse(ch)?;
        // The recorded ClientHello's record_size_limit counts as offered, unless the test
        // configures its own value.
        let config = Arc::new(ClientConfig {
            record_size_limit: config.record_size_limit.or(parsed.record_size_limit),
            ..(*config).clone()
        });
        let mut conn = Self::new(config, "server", 443, false)?;
        conn.core.out.clear();
        conn.core.skip_server_auth = true;
        conn.core.first_record_sent = true;
        let Some(State::ServerHello(ExpectServerHello { hs })) = conn.state.as_mut() else {
            return Err(Error::general("not waiting for the ServerHello"));
        };
        let group = parsed
            .key_shares
            .as_ref()
            .map_or(NamedGroup::X25519, |k| k[0].group);
        let mut share = OfferedShare::new(group, None);
        share.injected = Some(Zeroizing::new(shared.to_vec()));
        hs.shares = vec![share];
        hs.session_id = parsed.legacy_session_id.to_vec();
        hs.offered_suites = parsed.cipher_suites.clone();
        hs.engine_random = *parsed.random;
        hs.random_field = *parsed.random;
        hs.transcript = Transcript::new();
        hs.transcript.add(ch);
        hs.cs_log = ch.to_vec();
        Ok(conn)
    }
}

#[cfg(test)]
mod tests;
