//! The hello phase: the first ClientHello (and its early data), the HelloRetryRequest and the
//! second ClientHello, the ServerHello and the handshake traffic keys.

use std::time::SystemTime;

use lurk_proto::freshness::client_random;
use lurk_proto::key_schedule::{binder, KeyScheduleEarly, PskKind, Secret};
use lurk_proto::pb;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::hello::{self, RANDOM_OFFSET};
use lurk_proto::wire::{
    check_second_client_hello, encode_certificate, set_binders, truncated_for_binders, CipherSuite,
    ClientHello, ClientHelloBuilder, ContentType, ExtensionType, HandshakeType, HashAlg,
    NamedGroup, PskKeyExchangeMode, ServerHello,
};
use zeroize::Zeroizing;

use super::server_flight::{
    ExpectEncryptedExtensions, Handshake, Prefinished, Schedule, SelectedPsk,
};
use super::{
    find_secret, random_bytes, record_keys, require, tls_hash, AwaitCs, Core, State,
    MAX_RECORD_SIZE_LIMIT,
};
use crate::config::{ClientConfig, Ephemeral, TlsMode};
use crate::cs_client::CsCall;
use crate::error::{Error, PeerMisbehaved};
use crate::joiner::HandshakeMessage;
use crate::keyshare::EngineShare;
use crate::record::{RecordEncrypter, MIN_RECORD_SIZE_LIMIT};
use crate::tickets::StoredTicket;

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
pub(super) struct OfferedShare {
    group: NamedGroup,
    /// The engine's key pair; `None` when the CS made it.
    engine: Option<EngineShare>,
    /// Tests replaying a recorded trace inject the (EC)DHE secret.
    #[cfg(test)]
    pub(super) injected: Option<Zeroizing<Vec<u8>>>,
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
pub(super) struct OfferedPsk {
    pub(super) identity: Vec<u8>,
    pub(super) hash: HashAlg,
    pub(super) kind: PskKind,
    /// The PSK when the engine knows it; `None` when the CS holds it.
    pub(super) local: Option<Secret>,
    pub(super) ticket: Option<StoredTicket>,
}

/// 0-RTT data in flight.
pub(super) struct Early {
    pub(super) encrypter: RecordEncrypter,
    /// All of the configured early data.
    pub(super) data: Vec<u8>,
    /// How much of it went as 0-RTT (at most the ticket's max_early_data_size); the rest goes
    /// as ordinary data after the handshake when the server accepts the early data.
    pub(super) sent: usize,
}

/// Waiting for the ServerHello (or a HelloRetryRequest): what the ClientHello offered.
pub struct ExpectServerHello {
    pub(super) engine_random: [u8; 32],
    pub(super) session_id: Vec<u8>,
    /// cipher_suites of both ClientHellos (RFC 8446 §4.1.2: the second changes nothing here).
    pub(super) offered_suites: Vec<CipherSuite>,
    /// The first ClientHello's encoder: the second is made from it (RFC 8446 §4.1.2).
    pub(super) hello: ClientHelloBuilder,
    /// The first ClientHello as sent on the wire.
    pub(super) first_client_hello: Vec<u8>,
    pub(super) shares: Vec<OfferedShare>,
    pub(super) psks: Vec<OfferedPsk>,
    pub(super) early_data_offered: bool,
    /// The early data sent, if any: kept after a HelloRetryRequest, which only stops the offer,
    /// so that rejected early data can be sent again after the handshake.
    pub(super) early: Option<Early>,
    pub(super) early_suite: Option<CipherSuite>,
    pub(super) transcript: Transcript,
    /// ClientHello(s) with the engine's random .. what the server sent, for
    /// c_init_client_finished.
    pub(super) cs_log: Vec<u8>,
    /// Opened by c_init_client_hello (when the CS makes the shares or holds a PSK).
    pub(super) cs_session: Option<Vec<u8>>,
    /// The HelloRetryRequest's suite, after one.
    pub(super) hrr_suite: Option<CipherSuite>,
    /// The HelloRetryRequest, after one.
    pub(super) hello_retry_request: Vec<u8>,
}

/// c_server_hello is out: the ServerHello's outcome, waiting for the handshake traffic secrets.
pub(crate) struct AwaitServerHelloSecrets {
    suite: CipherSuite,
    hash: HashAlg,
    transcript: Transcript,
    early: Option<Early>,
    session_id: Vec<u8>,
    psk: Option<SelectedPsk>,
    early_data_offered: bool,
}

/// What goes into the first ClientHello besides its shares, PSKs and early_data.
fn client_hello_builder(
    core: &Core,
    session_id: &[u8],
    suites: &[CipherSuite],
    random_field: [u8; 32],
) -> ClientHelloBuilder {
    let c = &core.config;
    let mut b = ClientHelloBuilder::new(random_field)
        .legacy_session_id(session_id)
        .cipher_suites(suites)
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

/// The pre_shared_key identities of `psks` with their ticket ages at `now` (RFC 8446
/// §4.2.11.1; 0 for an external PSK) and binder lengths.
fn wire_psks(psks: &[OfferedPsk], now: SystemTime) -> Vec<hello::OfferedPsk> {
    psks.iter()
        .map(|p| hello::OfferedPsk {
            identity: p.identity.clone(),
            obfuscated_ticket_age: p.ticket.as_ref().map_or(0, |t| t.obfuscated_age(now)),
            binder_len: p.hash.output_len(),
        })
        .collect()
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

pub(super) fn start(core: &mut Core) -> Result<State, Error> {
    let config = core.config.clone();
    let engine_random = random_bytes::<32>(&*config.random)?;
    let session_id = if config.middlebox_compat {
        random_bytes::<32>(&*config.random)?.to_vec()
    } else {
        Vec::new()
    };
    let now = config.time.system_time();
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
    let mut b = client_hello_builder(core, &session_id, &offered_suites, random_field);
    for s in &shares {
        b = b.key_share(s.group, s.engine.as_ref().map_or(&[][..], |e| e.public()));
    }
    for p in wire_psks(&psks, now) {
        b = b.psk(&p.identity, p.obfuscated_ticket_age, p.binder_len);
    }
    b = b.early_data(early_suite.is_some());
    let mut ch = b.build()?;
    let mut hs = Box::new(ExpectServerHello {
        engine_random,
        session_id,
        offered_suites,
        hello: b,
        first_client_hello: Vec::new(),
        shares,
        psks,
        early_data_offered: early_suite.is_some(),
        early: None,
        early_suite,
        transcript: Transcript::new(),
        cs_log: Vec::new(),
        cs_session: None,
        hrr_suite: None,
        hello_retry_request: Vec::new(),
    });
    core.summary.early_data_offered = hs.early_data_offered;

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
    Ok(State::ServerHello(hs))
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
    hs: &mut ExpectServerHello,
    ch: &[u8],
    early_secret: Option<Secret>,
) -> Result<(), Error> {
    core.send_plain_handshake(ch);
    hs.transcript.add(ch);
    hs.first_client_hello = ch.to_vec();
    core.offered_extensions = ClientHello::parse(ch)?
        .extensions
        .iter()
        .map(|e| e.typ)
        .collect();
    hs.cs_log
        .extend_from_slice(&with_engine_random(ch, &hs.engine_random));
    if let (Some(suite), Some(secret), Some(data)) =
        (hs.early_suite, early_secret, core.config.early_data.clone())
    {
        let max = hs
            .psks
            .first()
            .and_then(|p| p.ticket.as_ref())
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

/// c_init_client_hello answered: the completed ClientHello goes out (with the early data).
pub(super) fn init_client_hello_done(
    core: &mut Core,
    mut hs: Box<ExpectServerHello>,
    r: pb::CInitClientHelloResponse,
) -> Result<State, Error> {
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
    Ok(State::ServerHello(hs))
}

/// c_client_hello answered: the completed second ClientHello goes out.
pub(super) fn client_hello_done(
    core: &mut Core,
    mut hs: Box<ExpectServerHello>,
    r: pb::CClientHelloResponse,
) -> Result<State, Error> {
    check_completed_client_hello(core, &hs, &r.client_hello, "c_client_hello")?;
    // The CS changed nothing RFC 8446 §4.1.2 does not allow.
    check_second_client_hello(
        &hs.first_client_hello,
        &hs.hello_retry_request,
        &r.client_hello,
    )
    .map_err(|e| Error::CryptoService {
        exchange: "c_client_hello",
        status: None,
        message: e.to_string(),
    })?;
    send_second_client_hello(core, &mut hs, &r.client_hello);
    Ok(State::ServerHello(hs))
}

/// c_server_hello answered: the handshake traffic secrets.
pub(super) fn server_hello_done(
    core: &mut Core,
    w: AwaitServerHelloSecrets,
    r: pb::CServerHelloResponse,
) -> Result<State, Error> {
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
    expect_encrypted_extensions(core, w, &client, server, None)
}

/// c_server_flight answered: the handshake traffic secrets, and when the CS found the whole
/// flight, its answer for after the server Finished (used there once the engine has checked
/// the flight itself). An incomplete flight goes on as after c_server_hello.
pub(super) fn server_flight_done(
    core: &mut Core,
    w: AwaitServerHelloSecrets,
    key_id: String,
    certificate: Vec<u8>,
    r: pb::CServerFlightResponse,
) -> Result<State, Error> {
    let ex = "c_server_flight";
    let client = find_secret(&r.secrets, pb::SecretType::ClientHandshakeTraffic, ex)?;
    let server = find_secret(&r.secrets, pb::SecretType::ServerHandshakeTraffic, ex)?;
    let prefinished = r.flight_complete.then(|| {
        Box::new(Prefinished {
            key_id,
            certificate,
            response: pb::CClientFinishedResponse {
                certificate_verify: r.certificate_verify,
                client_finished: r.client_finished,
                secrets: r.secrets,
                last_exchange: r.last_exchange,
            },
        })
    });
    expect_encrypted_extensions(core, w, &client, server, prefinished)
}

/// After c_server_hello or c_server_flight: the handshake traffic keys installed
/// (RFC 8446 §7.3), then the server's EncryptedExtensions expected.
fn expect_encrypted_extensions(
    core: &mut Core,
    w: AwaitServerHelloSecrets,
    client: &Secret,
    server: Secret,
    prefinished: Option<Box<Prefinished>>,
) -> Result<State, Error> {
    install_handshake_keys(core, w.suite, client, &server)?;
    Ok(State::EncryptedExtensions(Box::new(
        ExpectEncryptedExtensions {
            hs: Handshake {
                suite: w.suite,
                hash: w.hash,
                transcript: w.transcript,
                early: w.early,
                server_hs: server,
                schedule: Schedule::Cs {
                    session_id: w.session_id,
                    server_flight: Vec::new(),
                    prefinished,
                },
            },
            psk: w.psk,
            early_data_offered: w.early_data_offered,
        },
    )))
}

/// The client Certificate sent with c_server_flight before the engine knows whether the
/// server asks for one (RFC 8446 §4.4.2: empty context in the handshake): the configured key's
/// chain, or an empty certificate_list. Used only if the flight holds a CertificateRequest
/// and [`super::server_flight::client_certificate`] gives the same answer to it.
fn speculative_client_certificate(core: &Core) -> Result<(String, Vec<u8>), Error> {
    Ok(
        match core
            .config
            .client_key
            .as_ref()
            .filter(|k| !k.certificate_chain.is_empty())
        {
            Some(k) => (
                k.key_id.clone(),
                encode_certificate(&[], &k.certificate_chain)?,
            ),
            None => (String::new(), encode_certificate::<Vec<u8>>(&[], &[])?),
        },
    )
}

/// The ClientHello the CS completed must parse, carry no empty share, and carry the fresh
/// random of our random (docs/design.md §3: the engine checks what it sends).
fn check_completed_client_hello(
    core: &Core,
    hs: &ExpectServerHello,
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

fn send_second_client_hello(core: &mut Core, hs: &mut ExpectServerHello, ch: &[u8]) {
    core.send_ccs_once();
    core.send_plain_handshake(ch);
    hs.transcript.add(ch);
    hs.cs_log
        .extend_from_slice(&with_engine_random(ch, &hs.engine_random));
}

fn install_handshake_keys(
    core: &mut Core,
    suite: CipherSuite,
    client: &Secret,
    server: &Secret,
) -> Result<(), Error> {
    core.install_decrypter(&record_keys(suite, server)?)?;
    core.install_encrypter(&record_keys(suite, client)?)?;
    Ok(())
}

impl ExpectServerHello {
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(m, &[HandshakeType::ServerHello])?;
        let mut hs = self;
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
        // §4.1.4, §4.2: no extension the ClientHello did not offer, but the HRR's cookie (an
        // unoffered pre_shared_key is refused below, with its own error).
        let unsolicited = |t: ExtensionType| match t {
            ExtensionType::Cookie => !sh.is_hello_retry_request(),
            ExtensionType::PreSharedKey => false,
            t => !core.offered_extensions.contains(&t),
        };
        if sh.extensions.iter().any(|e| unsolicited(e.typ)) {
            return Err(PeerMisbehaved::UnsolicitedExtension.into());
        }
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

        let ExpectServerHello {
            mut shares,
            mut psks,
            early_data_offered,
            early,
            transcript,
            cs_log,
            cs_session,
            ..
        } = *hs;
        let share = share_pos.map(|p| shares.swap_remove(p));
        // Key pairs of the other shares are dropped (destroyed) here.
        drop(shares);
        let cs_share = share.as_ref().is_some_and(OfferedShare::cs_made);
        let (psk, psk_secret) = match psk_selected.map(|i| (i, psks.swap_remove(i))) {
            Some((index, p)) => (
                Some(SelectedPsk {
                    index,
                    ticket: p.ticket,
                }),
                p.local,
            ),
            None => (None, None),
        };
        let cs_psk = psk.is_some() && psk_secret.is_none();
        let shared = match (share, &sh.key_share) {
            (Some(share), Some(ks)) if !cs_share => share.agree(ks.key_exchange)?,
            _ => None,
        };

        if cs_share || cs_psk {
            let session_id =
                cs_session.ok_or_else(|| Error::general("CS key schedule without a CS session"))?;
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
            let request = pb::CServerHelloRequest {
                session_id: session_id.clone(),
                server_hello: m.encoded.clone(),
                ephemeral: Some(ephemeral),
                secret_request: Some(pb::SecretRequest {
                    h_c: true,
                    h_s: true,
                    ..Default::default()
                }),
            };
            let wait = Box::new(AwaitServerHelloSecrets {
                suite,
                hash,
                transcript,
                early,
                session_id,
                psk,
                early_data_offered,
            });
            // The server's flight came with its ServerHello: one exchange for both
            // (c_server_flight), when the CS offers it. Not with early data (its
            // EndOfEarlyData goes under the early key first).
            let records = if core.server_flight && !early_data_offered {
                core.deframer.peek_protected_records()
            } else {
                Vec::new()
            };
            if !records.is_empty() {
                let (key_id, certificate) = speculative_client_certificate(core)?;
                core.request_cs(CsCall::ServerFlight(pb::CServerFlightRequest {
                    session_id: request.session_id.clone(),
                    server_hello: request.server_hello.clone(),
                    ephemeral: request.ephemeral.clone(),
                    records,
                    key_id: key_id.clone(),
                    client_certificate: certificate.clone(),
                    secret_request: Some(pb::SecretRequest {
                        a_c: true,
                        a_s: true,
                        x: core.config.exporter,
                        ..Default::default()
                    }),
                    last_exchange: !core.config.post_handshake_auth
                        && core.config.ticket_store.is_none(),
                }))?;
                return Ok(State::AwaitCs(AwaitCs::ServerFlight {
                    wait,
                    fallback: request,
                    key_id,
                    certificate,
                }));
            }
            core.request_cs(CsCall::ServerHello(request))?;
            return Ok(State::AwaitCs(AwaitCs::ServerHello(wait)));
        }
        let ks = KeyScheduleEarly::new(hash, psk_secret.as_ref().map(Secret::as_bytes))
            .into_handshake(shared.as_deref().map(|v| v.as_slice()));
        let th = transcript.hash(hash);
        let client = ks.client_handshake_traffic_secret(&th);
        let server = ks.server_handshake_traffic_secret(&th);
        install_handshake_keys(core, suite, &client, &server)?;
        Ok(State::EncryptedExtensions(Box::new(
            ExpectEncryptedExtensions {
                hs: Handshake {
                    suite,
                    hash,
                    transcript,
                    early,
                    server_hs: server,
                    schedule: Schedule::Engine {
                        key_schedule: ks,
                        client_hs: client,
                        cs_log,
                    },
                },
                psk,
                early_data_offered,
            },
        )))
    }
}

/// RFC 8446 §4.1.4: checks the HelloRetryRequest and sends the second ClientHello (through
/// c_client_hello when a CS session is open: the CS makes the new share and the binders).
fn hello_retry(
    core: &mut Core,
    mut hs: Box<ExpectServerHello>,
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

    hs.hello_retry_request = m.encoded.clone();

    // RFC 8446 §4.1.2: the same ClientHello, except for what follows. cipher_suites stay
    // (the ServerHello must then select the HRR's suite, §4.1.4).
    // No early data after a HelloRetryRequest (§4.2.10); what was sent is lost.
    hs.early_data_offered = false;
    hs.early_suite = None;
    // PSKs unusable with the HRR's suite (another hash) are left out.
    hs.psks.retain(|p| p.hash == hash);
    // A group named: one new share for it (made by the CS when a CS session is open); else
    // the same shares, key pairs kept.
    if let Some(g) = hrr.selected_group {
        let engine = match hs.cs_session {
            Some(_) => None,
            None => Some(EngineShare::generate(g)?),
        };
        hs.shares = vec![OfferedShare::new(g, engine)];
    }
    let share = match (hrr.selected_group, hs.shares.first()) {
        (Some(g), Some(s)) => Some((g, s.engine.as_ref().map_or(&[][..], |e| e.public()))),
        _ => None,
    };
    let b = hs.hello.retry(
        hrr.cookie,
        share,
        wire_psks(&hs.psks, core.config.time.system_time()),
    );
    let mut ch2 = b.build()?;
    if let Some(session_id) = hs.cs_session.clone() {
        core.request_cs(CsCall::ClientHello(pb::CClientHelloRequest {
            session_id,
            hello_retry_request: m.encoded.clone(),
            client_hello: ch2,
        }))?;
        return Ok(State::AwaitCs(AwaitCs::ClientHello(hs)));
    }
    local_binders(&hs.transcript, &mut ch2, &hs.psks)?;
    check_second_client_hello(&hs.first_client_hello, &m.encoded, &ch2)
        .map_err(|e| Error::general(format!("second ClientHello: {e}")))?;
    send_second_client_hello(core, &mut hs, &ch2);
    Ok(State::ServerHello(hs))
}

#[cfg(test)]
impl super::ClientConnection {
    /// A connection that has "sent" the recorded ClientHello `ch` (not re-encoded, nothing
    /// queued) with the (EC)DHE secret injected: the rest of a recorded trace then runs
    /// through the real states. Server authentication is skipped (see `Core`).
    pub(crate) fn replay(
        config: std::sync::Arc<ClientConfig>,
        ch: &[u8],
        shared: &[u8],
    ) -> Result<Self, Error> {
        let parsed = ClientHello::parse(ch)?;
        // The recorded ClientHello's record_size_limit counts as offered, unless the test
        // configures its own value.
        let config = std::sync::Arc::new(ClientConfig {
            record_size_limit: config.record_size_limit.or(parsed.record_size_limit),
            ..(*config).clone()
        });
        let mut conn = Self::new(config, "server", 443, false)?;
        conn.core.out.clear();
        conn.core.skip_server_auth = true;
        conn.core.first_record_sent = true;
        let Some(State::ServerHello(hs)) = conn.state.as_mut() else {
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
        hs.transcript = Transcript::new();
        hs.transcript.add(ch);
        hs.first_client_hello = ch.to_vec();
        conn.core.offered_extensions = parsed.extensions.iter().map(|e| e.typ).collect();
        hs.cs_log = ch.to_vec();
        Ok(conn)
    }
}
