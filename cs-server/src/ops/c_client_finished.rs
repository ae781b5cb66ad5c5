//! `c_client_finished` (docs/design.md §2): the server's flight, EncryptedExtensions through the
//! server Finished (and EndOfEarlyData when early data was accepted). The CS checks the
//! order of the messages and the server Finished, derives the application secrets, signs
//! the client CertificateVerify when the server asked for a certificate, makes the client
//! Finished, and keeps the resumption master secret inside for c_register_tickets.
//!
//! Under `[server_auth]` (server_auth.rs) the server's Certificate must validate for the
//! ClientHello's server_name and its CertificateVerify verify over the transcript through the
//! Certificate (RFC 8446 §4.4.2-§4.4.3) before anything is signed or released.

use std::time::Instant;

use lurk_proto::key_schedule::finished_verify_data;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::HandshakeType;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{EstablishedState, HandshakeState, Stage};
use crate::ops::Where;

/// A client CertificateVerify needs the token (a key to sign with); under `[server_auth]`
/// the server's chain and signature checks are milliseconds of CPU, not for the async workers.
pub fn place(cs: &Cs, req: &pb::CClientFinishedRequest) -> Where {
    Where::inline_if(req.key_id.is_empty() && cs.server_auth.is_none())
}

/// Checks the server's flight of `engine`'s session and returns the client Finished (and
/// CertificateVerify) with the application secrets the request asks for.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CClientFinishedRequest,
) -> Result<pb::CClientFinishedResponse, ServiceError> {
    common::check_secret_request(req.secret_request.as_ref())?;
    common::exchange(
        cs,
        engine,
        &req.session_id,
        req.last_exchange,
        |stage| match stage {
            Stage::Handshake(state) => {
                let (next, resp) = run(cs, engine, state, &req)?;
                let bytes = next.held_bytes();
                Ok(((next, resp), bytes))
            }
            other => Err(other.out_of_order("c_client_finished")),
        },
        |stage, (next, resp)| {
            *stage = Stage::Established(Box::new(next));
            pb::CClientFinishedResponse {
                last_exchange: req.last_exchange,
                ..resp
            }
        },
    )
}

/// Everything that can fail, on the handshake stage read-only (`c_server_flight` runs it on
/// the stage it has just prepared).
pub(crate) fn run(
    cs: &Cs,
    engine: &str,
    state: &HandshakeState,
    req: &pb::CClientFinishedRequest,
) -> Result<(EstablishedState, pb::CClientFinishedResponse), ServiceError> {
    let hash = state.hash;
    let messages = msgs::split(&req.handshake_messages)?;
    let mut transcript = state.transcript.clone();
    let mut it = messages.iter().peekable();

    // RFC 8446 §4.3.1: EncryptedExtensions first.
    let ee = it
        .next()
        .filter(|m| m.typ == HandshakeType::EncryptedExtensions)
        .ok_or_else(|| {
            ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "the server flight must start with EncryptedExtensions",
            )
        })?;
    let ee_info = msgs::encrypted_extensions(ee.raw)?;
    if ee_info.early_data && !state.early_data_offered {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "early data accepted but not offered",
        ));
    }
    transcript.add(ee.raw);

    let mut cert_request = None;
    if let Some(m) = it
        .peek()
        .filter(|m| m.typ == HandshakeType::CertificateRequest)
    {
        // RFC 8446 §4.3.2: no CertificateRequest in the main handshake of a PSK connection.
        if state.psk_mode {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "CertificateRequest in a PSK handshake",
            ));
        }
        let cr = msgs::certificate_request(m.raw)?;
        if !cr.context.is_empty() {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "certificate_request_context must be empty in the handshake (RFC 8446 §4.3.2)",
            ));
        }
        cert_request = Some(cr);
        transcript.add(m.raw);
        it.next();
    }
    // The server name `[server_auth]` verified (None with the policy off). A PSK handshake
    // is authenticated by the PSK (common::load_psks bound a ticket to the SNI).
    let mut server_name = match cs.server_auth {
        Some(_) if state.psk_mode => state.psk_server_name.clone(),
        _ => None,
    };
    if !state.psk_mode {
        server_name = common::server_certificate(
            cs,
            &mut it,
            &mut transcript,
            hash,
            state.server_name.as_deref(),
            &state.signature_schemes,
        )?;
    }
    let fin = it
        .next()
        .filter(|m| m.typ == HandshakeType::Finished)
        .ok_or_else(|| {
            ServiceError::refuse(LurkStatus::InvalidHandshake, "expected the server Finished")
        })?;
    // RFC 8446 §4.4.4: the server Finished is checked before anything is signed.
    let expected = finished_verify_data(hash, state.server_hs.as_bytes(), &transcript.hash(hash));
    if !msgs::finished_matches(fin.raw, hash, &expected) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the server Finished does not verify",
        ));
    }
    transcript.add(fin.raw);
    let th_server_finished = transcript.hash(hash);

    // RFC 8446 §4.5: EndOfEarlyData follows the server Finished iff early data was accepted.
    match it.next() {
        Some(m) if m.typ == HandshakeType::EndOfEarlyData && ee_info.early_data => {
            transcript.add(m.raw)
        }
        None if !ee_info.early_data => {}
        None => {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "early data was accepted: EndOfEarlyData must follow the server Finished",
            ))
        }
        Some(m) => {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                format!("unexpected {:?} after the server Finished", m.typ),
            ))
        }
    }
    if it.next().is_some() {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "messages after EndOfEarlyData",
        ));
    }

    let master = state.key_schedule.clone().into_master();
    let client_ap = master.client_application_traffic_secret_0(&th_server_finished);
    let server_ap = master.server_application_traffic_secret_0(&th_server_finished);

    let certificate_verify = common::answer_certificate_request(
        cs,
        engine,
        cert_request.as_ref(),
        &req.key_id,
        &req.client_certificate,
        &mut transcript,
        hash,
    )?;
    let verify_data =
        finished_verify_data(hash, state.client_hs.as_bytes(), &transcript.hash(hash));
    let client_finished = msgs::encode(HandshakeType::Finished, &verify_data);
    transcript.add(&client_finished);
    let resumption_master = master.resumption_master_secret(&transcript.hash(hash));

    let (want_c, want_s, want_x) = match req.secret_request.as_ref() {
        Some(r) => (r.a_c, r.a_s, r.x),
        None => (true, true, false),
    };
    let mut secrets = Vec::new();
    if want_c {
        secrets.push(common::secret(
            pb::SecretType::ClientApplicationTraffic,
            &client_ap,
        ));
    }
    if want_s {
        secrets.push(common::secret(
            pb::SecretType::ServerApplicationTraffic,
            &server_ap,
        ));
    }
    if want_x {
        secrets.push(common::secret(
            pb::SecretType::ExporterMaster,
            &master.exporter_master_secret(&th_server_finished),
        ));
    }
    let next = EstablishedState {
        suite: state.suite,
        hash,
        transcript,
        resumption_master: Some(resumption_master),
        established_at: Instant::now(),
        registered_nonces: Vec::new(),
        registered_identities: Vec::new(),
        unsettled_tickets: Vec::new(),
        store_failures: 0,
        post_handshake_auth: state.post_handshake_auth,
        awaiting_client_finished: false,
        pha_contexts: Vec::new(),
        engine_keyed: false,
        server_name,
    };
    Ok((
        next,
        pb::CClientFinishedResponse {
            certificate_verify,
            client_finished,
            secrets,
            last_exchange: false,
        },
    ))
}
