//! The server's flight (EncryptedExtensions, CertificateRequest, Certificate,
//! CertificateVerify, Finished) and the client's second flight, which moves to the application
//! traffic keys.

use lurk_proto::key_schedule::{finished_verify_data, verify_finished, KeyScheduleMaster, Secret};
use lurk_proto::pb;
use lurk_proto::wire::{
    encode_certificate, encode_end_of_early_data, encode_finished, AlertDescription, Certificate,
    CertificateRequest, CertificateVerify, ContentType, EncryptedExtensions, Finished,
    HandshakeType,
};
use rustls_pki_types::UnixTime;

use super::traffic::{CsSession, ExpectTraffic};
use super::{find_secret, record_keys, require, AwaitCs, Core, Hs, State};
use crate::cs_client::CsCall;
use crate::error::{CertificateError, Error, PeerMisbehaved};
use crate::joiner::HandshakeMessage;
use crate::verify::verify_server_signature;

/// Waiting for EncryptedExtensions.
pub struct ExpectEncryptedExtensions {
    pub(super) hs: Box<Hs>,
}
/// Waiting for CertificateRequest or Certificate.
pub struct ExpectCertificateOrCertReq {
    pub(super) hs: Box<Hs>,
}
/// Waiting for the Certificate after a CertificateRequest.
pub struct ExpectCertificate {
    pub(super) hs: Box<Hs>,
}
/// Waiting for CertificateVerify.
pub struct ExpectCertificateVerify {
    pub(super) hs: Box<Hs>,
    pub(super) leaf: Vec<u8>,
}
/// Waiting for the server Finished.
pub struct ExpectFinished {
    pub(super) hs: Box<Hs>,
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

impl ExpectEncryptedExtensions {
    pub(super) fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
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
    pub(super) fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
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
    pub(super) fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
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
    pub(super) fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
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
    pub(super) fn handle(self, core: &mut Core, m: &HandshakeMessage) -> Result<State, Error> {
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

/// c_client_finished answered (sequence A/B): the CS's Finished (and CertificateVerify) and
/// application traffic secrets.
pub(super) fn client_finished_done(
    core: &mut Core,
    mut hs: Box<Hs>,
    mut flight: Flight,
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
        flight,
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

/// c_init_client_finished answered (sequence C): the CertificateVerify, then the engine's
/// Finished.
pub(super) fn init_client_finished_done(
    core: &mut Core,
    mut hs: Box<Hs>,
    mut flight: Flight,
    fin: EngineFinish,
    r: pb::CInitClientFinishedResponse,
) -> Result<State, Error> {
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
    finish_engine(core, hs, flight, fin, cs)
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
