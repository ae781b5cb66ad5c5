//! The server's flight (EncryptedExtensions, CertificateRequest, Certificate,
//! CertificateVerify, Finished) and the client's second flight, which moves to the application
//! traffic keys.

use lurk_proto::key_schedule::{
    finished_verify_data, verify_finished, KeyScheduleHandshake, KeyScheduleMaster, Secret,
};
use lurk_proto::pb;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_certificate, encode_end_of_early_data, encode_finished, AlertDescription, Certificate,
    CertificateRequest, CertificateVerify, CipherSuite, ContentType, EncryptedExtensions, Finished,
    HandshakeType, HashAlg,
};
use rustls_pki_types::UnixTime;

use super::hello::Early;
use super::traffic::{CsSession, ExpectTraffic};
use super::{find_secret, record_keys, require, AwaitCs, Core, State};
use crate::cs_client::CsCall;
use crate::error::{CertificateError, Error, PeerMisbehaved};
use crate::joiner::HandshakeMessage;
use crate::tickets::StoredTicket;
use crate::verify::verify_server_signature;

/// What every handshake state from the ServerHello to the server Finished holds: the
/// negotiated suite, the transcript and the handshake stage of the key schedule, wherever it
/// runs.
pub(crate) struct Handshake {
    pub(super) suite: CipherSuite,
    /// The suite's hash (checked at the ServerHello).
    pub(super) hash: HashAlg,
    pub(super) transcript: Transcript,
    /// The early data sent with the first ClientHello, if any (the EndOfEarlyData goes under
    /// its key; what the server did not take may be sent again).
    pub(super) early: Option<Early>,
    /// server_handshake_traffic_secret, for the server Finished.
    pub(super) server_hs: Secret,
    pub(super) schedule: Schedule,
}

/// Who runs the key schedule from the ServerHello on (see the module documentation).
pub(crate) enum Schedule {
    /// Sequences C/D: the engine, at the handshake stage.
    Engine {
        key_schedule: KeyScheduleHandshake,
        /// client_handshake_traffic_secret, for our Finished.
        client_hs: Secret,
        /// ClientHello(s) with the engine's random .. what the server sent, for a
        /// c_init_client_finished (in the handshake, or later for post-handshake auth).
        cs_log: Vec<u8>,
    },
    /// Sequences A/B: the CS session, which gets the server's flight (EncryptedExtensions ..
    /// Finished) in c_client_finished.
    Cs {
        session_id: Vec<u8>,
        server_flight: Vec<u8>,
        /// c_server_flight's answer for after the server Finished, when it had the whole
        /// flight: no c_client_finished then.
        prefinished: Option<Box<Prefinished>>,
    },
}

/// What c_server_flight did after the server Finished: its answer, and the client
/// Certificate (and key) it was given before the engine saw the flight.
pub(crate) struct Prefinished {
    pub(super) key_id: String,
    pub(super) certificate: Vec<u8>,
    pub(super) response: pb::CClientFinishedResponse,
}

impl Handshake {
    fn add_received(&mut self, m: &HandshakeMessage) {
        self.transcript.add(&m.encoded);
        match &mut self.schedule {
            Schedule::Engine { cs_log, .. } => cs_log.extend_from_slice(&m.encoded),
            Schedule::Cs { server_flight, .. } => server_flight.extend_from_slice(&m.encoded),
        }
    }
}

/// The PSK the server selected.
pub(crate) struct SelectedPsk {
    /// Its position in the ClientHello (early data goes only with the first).
    pub(super) index: usize,
    /// The ticket it came from (for resumption).
    pub(super) ticket: Option<StoredTicket>,
}

/// What the EncryptedExtensions settled.
pub(crate) struct ServerParams {
    alpn: Option<Vec<u8>>,
    early_accepted: bool,
}

/// Waiting for EncryptedExtensions.
pub struct ExpectEncryptedExtensions {
    pub(super) hs: Handshake,
    pub(super) psk: Option<SelectedPsk>,
    pub(super) early_data_offered: bool,
}
/// Waiting for CertificateRequest or Certificate.
pub struct ExpectCertificateOrCertReq {
    hs: Handshake,
    params: ServerParams,
}
/// Waiting for the Certificate after a CertificateRequest.
pub struct ExpectCertificate {
    hs: Handshake,
    params: ServerParams,
    cert_request: Vec<u8>,
}
/// Waiting for CertificateVerify.
pub struct ExpectCertificateVerify {
    hs: Handshake,
    params: ServerParams,
    cert_request: Option<Vec<u8>>,
    leaf: Vec<u8>,
}
/// Waiting for the server Finished.
pub struct ExpectFinished {
    hs: Handshake,
    params: ServerParams,
    /// The server's CertificateRequest, if it sent one.
    cert_request: Option<Vec<u8>>,
}

/// After the server Finished: the client's second flight being prepared, and what the
/// connection keeps for after the handshake.
pub(crate) struct ClientFlight {
    suite: CipherSuite,
    hash: HashAlg,
    transcript: Transcript,
    early: Option<Early>,
    params: ServerParams,
    eoed: Option<Vec<u8>>,
    certificate: Option<Vec<u8>>,
    certificate_verify: Option<Vec<u8>>,
}

/// The engine's key schedule after the server Finished (sequence C/D).
pub(crate) struct EngineFinish {
    master: KeyScheduleMaster,
    client_hs: Secret,
    client_ap: Secret,
    server_ap: Secret,
    /// exporter_master_secret, when `ClientConfig::exporter` asks for it.
    exporter_master: Option<Secret>,
    /// The log for c_init_client_finished, through the EndOfEarlyData.
    cs_log: Vec<u8>,
}

impl ExpectEncryptedExtensions {
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(m, &[HandshakeType::EncryptedExtensions])?;
        let Self {
            mut hs,
            psk,
            early_data_offered,
        } = *self;
        let ee = EncryptedExtensions::parse(&m.encoded)?;
        if ee.early_data && !early_data_offered {
            return Err(PeerMisbehaved::UnsolicitedEarlyDataExtension.into());
        }
        // §4.2.11: early data can only be accepted with the first PSK (illegal_parameter).
        if ee.early_data && psk.as_ref().map(|p| p.index) != Some(0) {
            return Err(PeerMisbehaved::EarlyDataAcceptedWithOtherPsk.into());
        }
        let mut alpn = None;
        if let Some(p) = ee.alpn_protocol {
            if !core.config.alpn.iter().any(|a| a == p) {
                return Err(PeerMisbehaved::UnofferedAlpnProtocol.into());
            }
            alpn = Some(p.to_vec());
        }
        // §4.2.10: a server accepting early data keeps the ticket's cipher suite and ALPN
        // protocol (none if the ticket's connection had none).
        if ee.early_data {
            let ticket = psk.as_ref().and_then(|p| p.ticket.as_ref());
            let same = ticket.is_some_and(|t| t.alpn == alpn && t.suite == hs.suite);
            if !same {
                return Err(PeerMisbehaved::EarlyDataParametersChanged.into());
            }
        }
        core.negotiate_record_size_limit(ee.record_size_limit)?;
        // §4.2: no extension the ClientHello did not offer (unsupported_extension).
        if ee
            .extensions
            .iter()
            .any(|e| !core.offered_extensions.contains(&e.typ))
        {
            return Err(PeerMisbehaved::UnsolicitedExtension.into());
        }
        core.summary.early_data_accepted = ee.early_data;
        core.summary.alpn = alpn.clone();
        hs.add_received(m);
        let params = ServerParams {
            alpn,
            early_accepted: ee.early_data,
        };
        if psk.is_some() {
            Ok(State::Finished(Box::new(ExpectFinished {
                hs,
                params,
                cert_request: None,
            })))
        } else {
            Ok(State::CertificateOrCertReq(Box::new(
                ExpectCertificateOrCertReq { hs, params },
            )))
        }
    }
}

impl ExpectCertificateOrCertReq {
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(
            m,
            &[
                HandshakeType::CertificateRequest,
                HandshakeType::Certificate,
            ],
        )?;
        let Self { mut hs, params } = *self;
        if m.typ == HandshakeType::Certificate {
            return handle_certificate(core, hs, params, None, m);
        }
        let cr = CertificateRequest::parse(&m.encoded)?;
        // §4.3.2: the context is empty in the handshake.
        if !cr.context.is_empty() {
            return Err(PeerMisbehaved::IllegalCertificateRequestContext.into());
        }
        hs.add_received(m);
        Ok(State::Certificate(Box::new(ExpectCertificate {
            hs,
            params,
            cert_request: m.encoded.clone(),
        })))
    }
}

impl ExpectCertificate {
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(m, &[HandshakeType::Certificate])?;
        let Self {
            hs,
            params,
            cert_request,
        } = *self;
        handle_certificate(core, hs, params, Some(cert_request), m)
    }
}

fn handle_certificate(
    core: &mut Core,
    mut hs: Handshake,
    params: ServerParams,
    cert_request: Option<Vec<u8>>,
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
    // §4.4.2: "Extensions in the Certificate message from the server MUST correspond to ones
    // from the ClientHello message" (§4.2: unsupported_extension).
    if cert
        .entries
        .iter()
        .flat_map(|e| &e.extensions)
        .any(|x| !core.offered_extensions.contains(&x.typ))
    {
        return Err(PeerMisbehaved::UnsolicitedExtension.into());
    }
    #[cfg(test)]
    let skip = core.skip_server_auth;
    #[cfg(not(test))]
    let skip = false;
    if !skip {
        if core.config.trust_anchors.is_empty() {
            return Err(CertificateError::new(
                AlertDescription::UnknownCa,
                "no trust anchors configured (--ca): cannot validate the server's certificate",
            )
            .into());
        }
        core.config.trust_anchors.verify_server_chain(
            &chain,
            &core.server_name,
            UnixTime::now(),
        )?;
    }
    let leaf = chain[0].to_vec();
    hs.add_received(m);
    Ok(State::CertificateVerify(Box::new(
        ExpectCertificateVerify {
            hs,
            params,
            cert_request,
            leaf,
        },
    )))
}

impl ExpectCertificateVerify {
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(m, &[HandshakeType::CertificateVerify])?;
        let Self {
            mut hs,
            params,
            cert_request,
            leaf,
        } = *self;
        let cv = CertificateVerify::parse(&m.encoded)?;
        let th = hs.transcript.hash(hs.hash);
        #[cfg(test)]
        let skip = core.skip_server_auth;
        #[cfg(not(test))]
        let skip = false;
        if !skip {
            verify_server_signature(
                &leaf,
                &core.config.signature_schemes,
                cv.scheme,
                &th,
                cv.signature,
            )?;
        }
        hs.add_received(m);
        Ok(State::Finished(Box::new(ExpectFinished {
            hs,
            params,
            cert_request,
        })))
    }
}

/// The client Certificate answering `cr`: the configured key's chain when the CS can sign with
/// it in a scheme the server accepts, else an empty list (§4.4.2.4: the server decides).
pub(super) fn client_certificate(core: &Core, cr: &[u8]) -> Result<(Vec<u8>, String), Error> {
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
    pub(super) fn handle(
        self: Box<Self>,
        core: &mut Core,
        m: &HandshakeMessage,
    ) -> Result<State, Error> {
        require(m, &[HandshakeType::Finished])?;
        let Self {
            mut hs,
            params,
            cert_request,
        } = *self;
        let hash = hs.hash;
        let fin = Finished::parse(&m.encoded, hash)?;
        let th = hs.transcript.hash(hash);
        if !verify_finished(hash, hs.server_hs.as_bytes(), &th, fin.verify_data) {
            return Err(PeerMisbehaved::IncorrectFinished.into());
        }
        core.joiner.check_key_change()?;
        core.deframer.end_middlebox_ccs();
        hs.add_received(m);
        let th_server_finished = hs.transcript.hash(hash);

        let eoed = params.early_accepted.then(encode_end_of_early_data);
        let (certificate, key_id) = match &cert_request {
            Some(cr) => {
                let (c, k) = client_certificate(core, cr)?;
                (Some(c), k)
            }
            None => (None, String::new()),
        };
        let pha = core.config.post_handshake_auth;
        let Handshake {
            suite,
            transcript,
            early,
            schedule,
            ..
        } = hs;
        let mut flight = Box::new(ClientFlight {
            suite,
            hash,
            transcript,
            early,
            params,
            eoed,
            certificate,
            certificate_verify: None,
        });

        let (key_schedule, client_hs, mut cs_log) = match schedule {
            Schedule::Cs {
                session_id,
                prefinished: Some(pre),
                ..
            } => {
                // The CS answered for the client Certificate it was given: it must be the one
                // the engine sends now, and no CertificateVerify without a CertificateRequest.
                let same = match &flight.certificate {
                    Some(c) => *c == pre.certificate && key_id == pre.key_id,
                    None => pre.response.certificate_verify.is_empty(),
                };
                if !same {
                    return Err(Error::CryptoService {
                        exchange: "c_server_flight",
                        status: None,
                        message: "the CS answered for another client Certificate".into(),
                    });
                }
                return client_finished_done(core, *flight, session_id, pre.response);
            }
            Schedule::Cs {
                session_id,
                server_flight: mut handshake_messages,
                prefinished: None,
            } => {
                if let Some(e) = &flight.eoed {
                    handshake_messages.extend_from_slice(e);
                }
                core.request_cs(CsCall::ClientFinished(pb::CClientFinishedRequest {
                    session_id: session_id.clone(),
                    handshake_messages,
                    key_id,
                    client_certificate: flight.certificate.clone().unwrap_or_default(),
                    // x (exporter_master_secret) only when the exporter is enabled (RFC 8446
                    // §7.5).
                    secret_request: Some(pb::SecretRequest {
                        a_c: true,
                        a_s: true,
                        x: core.config.exporter,
                        ..Default::default()
                    }),
                    last_exchange: !pha && core.config.ticket_store.is_none(),
                }))?;
                return Ok(State::AwaitCs(AwaitCs::ClientFinished {
                    flight,
                    session_id,
                }));
            }
            Schedule::Engine {
                key_schedule,
                client_hs,
                cs_log,
            } => (key_schedule, client_hs, cs_log),
        };

        let master = key_schedule.into_master();
        let client_ap = master.client_application_traffic_secret_0(&th_server_finished);
        let server_ap = master.server_application_traffic_secret_0(&th_server_finished);
        let exporter_master = core
            .config
            .exporter
            .then(|| master.exporter_master_secret(&th_server_finished));
        if let Some(e) = &flight.eoed {
            flight.transcript.add(e);
            cs_log.extend_from_slice(e);
        }
        if let Some(c) = &flight.certificate {
            flight.transcript.add(c);
        }
        let needs_signature = flight
            .certificate
            .as_ref()
            .is_some_and(|_| !key_id.is_empty());
        let request = needs_signature.then(|| pb::CInitClientFinishedRequest {
            handshake_messages: cs_log.clone(),
            freshness: core.config.freshness as i32,
            key_id,
            client_certificate: flight.certificate.clone().unwrap_or_default(),
            last_exchange: !pha,
        });
        let fin = Box::new(EngineFinish {
            master,
            client_hs,
            client_ap,
            server_ap,
            exporter_master,
            cs_log,
        });
        if let Some(request) = request {
            // Sequence C: only the signing key is protected.
            core.request_cs(CsCall::InitClientFinished(request))?;
            return Ok(State::AwaitCs(AwaitCs::InitClientFinished(flight, fin)));
        }
        finish_engine(core, *flight, *fin, CsSession::None)
    }
}

/// c_client_finished answered (sequence A/B): the CS's Finished (and CertificateVerify) and
/// application traffic secrets.
pub(super) fn client_finished_done(
    core: &mut Core,
    mut flight: ClientFlight,
    session_id: Vec<u8>,
    r: pb::CClientFinishedResponse,
) -> Result<State, Error> {
    let ex = "c_client_finished";
    let client_ap = find_secret(&r.secrets, pb::SecretType::ClientApplicationTraffic, ex)?;
    let server_ap = find_secret(&r.secrets, pb::SecretType::ServerApplicationTraffic, ex)?;
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
        flight.transcript.add(m);
    }
    flight.transcript.add(&r.client_finished);
    let cs = if r.last_exchange {
        CsSession::Closed
    } else {
        CsSession::Full(session_id)
    };
    send_flight(
        core,
        flight,
        r.client_finished,
        AppSecrets {
            client: client_ap,
            server: server_ap,
            resumption_master: None,
            exporter_master,
        },
        cs,
        // The CS log is only needed for a later c_init_client_finished (sequence C).
        Vec::new(),
    )
}

/// c_init_client_finished answered (sequence C): the CertificateVerify, then the engine's
/// Finished.
pub(super) fn init_client_finished_done(
    core: &mut Core,
    mut flight: ClientFlight,
    fin: EngineFinish,
    r: pb::CInitClientFinishedResponse,
) -> Result<State, Error> {
    if !r.certificate_verify.is_empty() {
        flight.transcript.add(&r.certificate_verify);
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
    finish_engine(core, flight, fin, cs)
}

/// Sequence C/D: the engine makes its Finished and the resumption master secret.
fn finish_engine(
    core: &mut Core,
    mut flight: ClientFlight,
    fin: EngineFinish,
    cs: CsSession,
) -> Result<State, Error> {
    let hash = flight.hash;
    let verify_data = finished_verify_data(
        hash,
        fin.client_hs.as_bytes(),
        &flight.transcript.hash(hash),
    );
    let finished = encode_finished(&verify_data)?;
    flight.transcript.add(&finished);
    let rms = fin
        .master
        .resumption_master_secret(&flight.transcript.hash(hash));
    send_flight(
        core,
        flight,
        finished,
        AppSecrets {
            client: fin.client_ap,
            server: fin.server_ap,
            resumption_master: Some(rms),
            exporter_master: fin.exporter_master,
        },
        cs,
        fin.cs_log,
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

/// Sends the client's second flight in one write (\[CCS\], \[EndOfEarlyData under the early
/// key\], Certificate, CertificateVerify, Finished under the handshake key) and moves to the
/// application keys. `cs_log` is the log for a later c_init_client_finished (empty when the CS
/// ran the key schedule).
fn send_flight(
    core: &mut Core,
    flight: ClientFlight,
    finished: Vec<u8>,
    secrets: AppSecrets,
    cs: CsSession,
    cs_log: Vec<u8>,
) -> Result<State, Error> {
    let AppSecrets {
        client: client_ap,
        server: server_ap,
        resumption_master,
        exporter_master,
    } = secrets;
    let ClientFlight {
        suite,
        hash,
        transcript,
        early,
        params,
        eoed,
        certificate,
        certificate_verify,
    } = flight;
    let mut early = early;
    if let (Some(eoed), Some(early)) = (&eoed, early.as_mut()) {
        early
            .encrypter
            .encrypt_all(ContentType::Handshake, eoed, &mut core.out)?;
    }
    core.send_ccs_once();
    let parts: Vec<&[u8]> = [&certificate, &certificate_verify]
        .into_iter()
        .flatten()
        .map(Vec::as_slice)
        .chain(std::iter::once(finished.as_slice()))
        .collect();
    core.send_encrypted(ContentType::Handshake, &parts)?;
    core.install_encrypter(&record_keys(suite, &client_ap)?)?;
    core.install_decrypter(&record_keys(suite, &server_ap)?)?;
    let s = &mut core.summary;
    s.client_authenticated = certificate
        .as_ref()
        .is_some_and(|c| Certificate::parse(c).is_ok_and(|c| !c.entries.is_empty()));
    s.handshake_time = Some(
        core.config
            .time
            .instant()
            .saturating_duration_since(core.started),
    );

    let traffic = Box::new(ExpectTraffic {
        suite,
        hash,
        client_secret: client_ap,
        server_secret: server_ap,
        transcript,
        resumption_master,
        exporter_master,
        cs,
        pha_offered: core.config.post_handshake_auth,
        cs_log,
        client_finished: finished,
        alpn: params.alpn,
        pending_tickets: Vec::new(),
        waiting: None,
    });
    // Early data the server did not take goes again as ordinary data (when so configured);
    // when it took it, what did not fit in max_early_data_size follows.
    if let Some(early) = early {
        let rest = if params.early_accepted {
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
