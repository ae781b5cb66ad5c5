//! The TLS 1.3 client connection, Sans-IO (docs/design.md §8): TLS bytes in
//! ([`ClientConnection::read_tls`]), TLS bytes out ([`ClientConnection::take_tls`]), and calls to
//! the Crypto Service as actions ([`ClientConnection::take_cs_call`] then
//! [`ClientConnection::cs_response`]). No socket and no gRPC. It still reads the clock
//! itself: `SystemTime` for ticket ages, ticket receipt and certificate validity, `Instant`
//! for the handshake's duration.
//!
//! The handshake is an enum of boxed states, one struct per expected message (rustls `main`):
//! [`ExpectServerHello`], [`ExpectEncryptedExtensions`], [`ExpectCertificateOrCertReq`],
//! [`ExpectCertificate`] (after a CertificateRequest), [`ExpectCertificateVerify`],
//! [`ExpectFinished`], [`ExpectTraffic`], plus `AwaitCs` while a LURK exchange is out. Each
//! holds only what is valid there (rustls' one-type-per-stage data, docs/design.md §8):
//!
//! - before the ServerHello, what the ClientHello offered: shares, PSKs, randoms, transcript,
//!   the early data sent, the CS session if one was opened;
//! - from the ServerHello to the server Finished, a `Handshake`: the suite and its hash, the
//!   transcript, server_handshake_traffic_secret and a `Schedule` saying who runs the key
//!   schedule: the engine (sequences C/D: lurk_proto's `KeyScheduleHandshake`, our handshake
//!   secret, the log for c_init_client_finished) or the CS (sequences A/B: the session id and
//!   the server flight for c_client_finished). The selected PSK lives in
//!   [`ExpectEncryptedExtensions`] (the early data checks), what the EncryptedExtensions settled
//!   (ALPN, early data accepted) from there on, and the CertificateRequest, when the server
//!   sent one, until the Finished;
//! - after the server Finished, the client's second flight (`ClientFlight`), with the
//!   `KeyScheduleMaster` stage when the engine runs the schedule, then [`ExpectTraffic`]:
//!   application secrets, the resumption and exporter secrets the engine keeps, the CS session.
//!
//! `Option`s remain only for what the protocol makes optional (a CertificateRequest, early
//! data, a CS session, the exporter secret).
//!
//! The module is split by concern: this file has [`ClientConnection`], the record layer and
//! buffers it shares with every state (`Core`) and the CS call plumbing (`AwaitCs`);
//! `hello.rs` the ClientHello, HelloRetryRequest and ServerHello; `server_flight.rs`
//! EncryptedExtensions through the server Finished and the client's second flight;
//! `traffic.rs` [`ExpectTraffic`] (tickets, post-handshake authentication, KeyUpdate, the
//! exporter) and the CS work left at the end ([`CsEpilogue`]).
//!
//! When the engine calls the CS (pytls13's policy, docs/design.md §2): `c_init_client_hello` when the
//! ephemeral method is cs or a CS-held PSK is offered; `c_server_hello`, `c_client_finished` and
//! `c_register_tickets` when the server picked a CS share or a CS-held PSK. Otherwise the engine
//! runs the key schedule itself (sequence D) and, when it must sign, uses
//! `c_init_client_finished` (+ `c_post_hand_auth`), sequence C.

mod hello;
mod server_flight;
mod traffic;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

use crate::config::RandomSource;
use lurk_proto::key_schedule::{export_keying_material, traffic_key_iv, Secret};
use lurk_proto::pb;
use lurk_proto::wire::{
    AlertDescription, CipherSuite, ContentType, ExtensionType, HandshakeType, HashAlg,
    KeyUpdateRequest,
};
use zeroize::Zeroizing;

pub use self::hello::ExpectServerHello;
pub use self::server_flight::{
    ExpectCertificate, ExpectCertificateOrCertReq, ExpectCertificateVerify,
    ExpectEncryptedExtensions, ExpectFinished,
};
pub use self::traffic::{CsEpilogue, ExpectTraffic};

use self::hello::{start, AwaitServerHelloSecrets};
use self::server_flight::{ClientFlight, EngineFinish};
use self::traffic::{CsSession, TrafficWait};
use crate::alert::{encode_alert, AlertOutcome, AlertReceiver};
use crate::config::{ClientConfig, HandshakeSummary};
use crate::cs_client::{CsCall, CsError, CsReply};
use crate::deframer::{Deframer, OpaqueRecord};
use crate::error::{Error, PeerMisbehaved};
use crate::joiner::{HandshakeJoiner, HandshakeMessage};
use crate::record::{
    encode_plaintext, PlainMessage, RecordDecrypter, RecordEncrypter, RecordKeys,
    MAX_INNER_PLAINTEXT_LEN,
};

/// legacy_record_version of the first ClientHello record (RFC 8446 §5.1 allows 0x0301 there, and
/// some middleboxes expect it).
const FIRST_RECORD_VERSION: u16 = 0x0301;
const RECORD_VERSION: u16 = 0x0303;
/// The largest record_size_limit a TLS 1.3 endpoint may send: 2^14 + 1 (RFC 8449 §4).
const MAX_RECORD_SIZE_LIMIT: u16 = MAX_INNER_PLAINTEXT_LEN as u16;
/// RFC 8446 §5.5: the write key is updated before this many records, under the AES-GCM limit
/// of 2^24.5 full-size records (ChaCha20-Poly1305's is far higher; one rule for all suites).
const KEY_UPDATE_AFTER_RECORDS: u64 = 1 << 24;

/// The record layer, the buffers and what the driver sees; shared by every state.
pub(crate) struct Core {
    config: Arc<ClientConfig>,
    server_name: String,
    store_key: String,
    has_cs: bool,
    /// The CS offers c_server_flight (Capabilities); set by the driver.
    server_flight: bool,
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
    /// The extension types of the first ClientHello: the server may answer no other
    /// (RFC 8446 §4.2), besides the HelloRetryRequest's cookie.
    offered_extensions: Vec<ExtensionType>,
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

fn random_bytes<const N: usize>(rng: &dyn RandomSource) -> Result<[u8; N], Error> {
    let mut out = [0u8; N];
    rng.fill(&mut out)
        .map_err(|_| Error::general("no randomness"))?;
    Ok(out)
}

/// What a LURK exchange in flight will resume.
pub(crate) enum AwaitCs {
    /// c_init_client_hello.
    InitClientHello(Box<ExpectServerHello>),
    /// c_client_hello after a HelloRetryRequest.
    ClientHello(Box<ExpectServerHello>),
    /// c_server_hello.
    ServerHello(Box<AwaitServerHelloSecrets>),
    /// c_server_flight: `fallback` is the c_server_hello to make instead if the CS refuses it
    /// (the session is then unchanged); `key_id` and `certificate` what it was given.
    ServerFlight {
        wait: Box<AwaitServerHelloSecrets>,
        fallback: pb::CServerHelloRequest,
        key_id: String,
        certificate: Vec<u8>,
    },
    /// c_client_finished.
    ClientFinished {
        flight: Box<ClientFlight>,
        session_id: Vec<u8>,
    },
    /// c_init_client_finished in the handshake.
    InitClientFinished(Box<ClientFlight>, Box<EngineFinish>),
}

enum State {
    AwaitCs(AwaitCs),
    ServerHello(Box<ExpectServerHello>),
    EncryptedExtensions(Box<ExpectEncryptedExtensions>),
    CertificateOrCertReq(Box<ExpectCertificateOrCertReq>),
    Certificate(Box<ExpectCertificate>),
    CertificateVerify(Box<ExpectCertificateVerify>),
    Finished(Box<ExpectFinished>),
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
            server_flight: false,
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
            started: config.time.instant(),
            receive_limit: None,
            send_limit: None,
            offered_extensions: Vec::new(),
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

    /// Says whether the CS offers `c_server_flight` (its Capabilities list it): the
    /// connection then makes one exchange instead of c_server_hello + c_client_finished when
    /// the server's flight came with its ServerHello. Off until set.
    pub fn set_cs_server_flight(&mut self, offered: bool) {
        self.core.server_flight = offered;
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
        // §5.5: a KeyUpdate before the key reaches its usage limit.
        let worn = self
            .core
            .encrypter
            .as_ref()
            .is_some_and(|e| e.seq() >= KEY_UPDATE_AFTER_RECORDS);
        if worn {
            self.key_update(false)?;
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
            // A refused c_server_flight changed nothing at the CS: the standard pair follows.
            State::AwaitCs(AwaitCs::ServerFlight { wait, fallback, .. })
                if reply.as_ref().is_err_and(falls_back) =>
            {
                if let Err(e) = &reply {
                    tracing::debug!("c_server_flight refused, using c_server_hello: {e}");
                }
                core.request_cs(CsCall::ServerHello(fallback))?;
                State::AwaitCs(AwaitCs::ServerHello(wait))
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

/// Whether a c_server_flight error leaves the standard pair to try: a LURK refusal (the
/// session is unchanged) or a CS without the RPC.
fn falls_back(e: &CsError) -> bool {
    matches!(
        e,
        CsError::Refused { .. }
            | CsError::Other {
                code: tonic::Code::Unimplemented,
                ..
            }
    )
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

impl AwaitCs {
    fn resume(self, core: &mut Core, reply: CsReply) -> Result<State, Error> {
        match (self, reply) {
            (AwaitCs::InitClientHello(hs), CsReply::InitClientHello(r)) => {
                hello::init_client_hello_done(core, hs, r)
            }
            (AwaitCs::ClientHello(hs), CsReply::ClientHello(r)) => {
                hello::client_hello_done(core, hs, r)
            }
            (AwaitCs::ServerHello(w), CsReply::ServerHello(r)) => {
                hello::server_hello_done(core, *w, r)
            }
            (
                AwaitCs::ServerFlight {
                    wait,
                    key_id,
                    certificate,
                    ..
                },
                CsReply::ServerFlight(r),
            ) => hello::server_flight_done(core, *wait, key_id, certificate, r),
            (AwaitCs::ClientFinished { flight, session_id }, CsReply::ClientFinished(r)) => {
                server_flight::client_finished_done(core, *flight, session_id, r)
            }
            (AwaitCs::InitClientFinished(flight, fin), CsReply::InitClientFinished(r)) => {
                server_flight::init_client_finished_done(core, *flight, *fin, r)
            }
            (w, _) => Err(unexpected_reply(w.exchange())),
        }
    }

    fn exchange(&self) -> &'static str {
        match self {
            Self::InitClientHello(_) => "c_init_client_hello",
            Self::ClientHello(_) => "c_client_hello",
            Self::ServerHello(_) => "c_server_hello",
            Self::ServerFlight { .. } => "c_server_flight",
            Self::ClientFinished { .. } => "c_client_finished",
            Self::InitClientFinished(..) => "c_init_client_finished",
        }
    }
}

#[cfg(test)]
mod tests;
