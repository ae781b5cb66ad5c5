//! `c_init_client_finished` (docs/design.md §2, sequence C): only the signing key is protected.
//! The engine ran the key schedule itself and sends the whole handshake, ClientHello (with
//! the engine's random: the CS applies the freshness function, so the engine cannot choose
//! the transcript it gets signed) through the server Finished. The CS signs the client
//! CertificateVerify when the server asked for a certificate and, when post-handshake
//! authentication was offered, keeps the transcript for c_post_hand_auth. Under
//! `[server_auth]` the server's Certificate and CertificateVerify are checked first
//! (server_auth.rs); a PSK-only handshake is then refused, the CS not knowing the PSK.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::HandshakeType;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{EstablishedState, Stage};
use crate::ops::Where;

/// Always signs with the token.
pub fn place(_cs: &Cs, _req: &pb::CInitClientFinishedRequest) -> Where {
    Where::Blocking
}

/// Signs the client CertificateVerify over the handshake `engine` ran itself (sequence C)
/// and, with post-handshake authentication offered, opens a session for c_post_hand_auth.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CInitClientFinishedRequest,
) -> Result<pb::CInitClientFinishedResponse, ServiceError> {
    let messages = msgs::split(&req.handshake_messages)?;
    let mut it = messages.iter().peekable();
    let invalid = |why: &str| ServiceError::refuse(LurkStatus::InvalidHandshake, why.to_owned());

    let ch_msg = it
        .next()
        .filter(|m| m.typ == HandshakeType::ClientHello)
        .ok_or_else(|| invalid("the handshake must start with the ClientHello"))?;
    let ch = msgs::client_hello(ch_msg.raw)?;
    if ch.shares.iter().any(|(_, empty)| *empty) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidFormat,
            "an empty key share in a handshake that took place",
        ));
    }
    let random = common::fresh_random(cs, req.freshness, &ch.random)?;
    let client_hello = msgs::complete_client_hello(ch_msg.raw, Some(&random), &[])?;

    let mut sh_msg = it
        .next()
        .filter(|m| m.typ == HandshakeType::ServerHello)
        .ok_or_else(|| invalid("expected the ServerHello"))?;
    let mut sh = msgs::server_hello(sh_msg.raw)?;
    let mut transcript = Transcript::new();
    transcript.add(&client_hello);
    if sh.is_hrr {
        let hash = sh
            .suite
            .hash()
            .ok_or_else(|| invalid("unsupported cipher suite"))?;
        transcript
            .restart_for_hello_retry(hash)
            .map_err(|e| ServiceError::refuse(LurkStatus::InvalidHandshake, e.to_string()))?;
        transcript.add(sh_msg.raw);
        let ch2 = it
            .next()
            .filter(|m| m.typ == HandshakeType::ClientHello)
            .ok_or_else(|| invalid("expected the second ClientHello"))?;
        let ch2 = msgs::complete_client_hello(ch2.raw, Some(&random), &[])?;
        msgs::check_second_client_hello(&client_hello, sh_msg.raw, &ch2)?;
        transcript.add(&ch2);
        sh_msg = it
            .next()
            .filter(|m| m.typ == HandshakeType::ServerHello)
            .ok_or_else(|| invalid("expected the ServerHello"))?;
        let hrr_suite = sh.suite;
        sh = msgs::server_hello(sh_msg.raw)?;
        if sh.is_hrr {
            return Err(invalid("a second HelloRetryRequest"));
        }
        // RFC 8446 §4.1.4: the ServerHello selects the HelloRetryRequest's cipher suite.
        if sh.suite != hrr_suite {
            return Err(invalid(
                "the ServerHello selects another cipher suite than the HelloRetryRequest",
            ));
        }
    }
    if !ch.suites.contains(&sh.suite) {
        return Err(invalid("the server selected a cipher suite not offered"));
    }
    let hash = sh
        .suite
        .hash()
        .ok_or_else(|| invalid("unsupported cipher suite"))?;
    transcript.add(sh_msg.raw);

    let ee = it
        .next()
        .filter(|m| m.typ == HandshakeType::EncryptedExtensions)
        .ok_or_else(|| invalid("expected EncryptedExtensions"))?;
    transcript.add(ee.raw);
    let mut cert_request = None;
    if let Some(m) = it
        .peek()
        .filter(|m| m.typ == HandshakeType::CertificateRequest)
    {
        let cr = msgs::certificate_request(m.raw)?;
        if !cr.context.is_empty() {
            return Err(invalid(
                "certificate_request_context must be empty in the handshake (RFC 8446 §4.3.2)",
            ));
        }
        transcript.add(m.raw);
        cert_request = Some(cr);
        it.next();
    }
    // The server authenticated with a certificate, or with a PSK (then neither message).
    let mut server_name = None;
    if it
        .peek()
        .is_some_and(|m| m.typ == HandshakeType::Certificate)
    {
        server_name = common::server_certificate(
            cs,
            &mut it,
            &mut transcript,
            hash,
            ch.server_name.as_deref(),
            &ch.signature_schemes,
        )?;
    } else if sh.selected_psk.is_none() {
        return Err(invalid(
            "a certificate handshake without the server's Certificate",
        ));
    } else if cs.server_auth.is_some() {
        // The engine ran the key schedule: the CS cannot tell a PSK the server holds from
        // one the engine chose, so only a certificate authenticates the server here.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            "[server_auth]: in c_init_client_finished the server must authenticate with a certificate",
        ));
    }
    let fin = it
        .next()
        .filter(|m| m.typ == HandshakeType::Finished)
        .ok_or_else(|| invalid("expected the server Finished"))?;
    transcript.add(fin.raw);
    if let Some(m) = it.next() {
        if m.typ != HandshakeType::EndOfEarlyData || it.next().is_some() {
            return Err(invalid("unexpected messages after the server Finished"));
        }
        transcript.add(m.raw);
    }

    let certificate_verify = common::answer_certificate_request(
        cs,
        engine,
        cert_request.as_ref(),
        &req.key_id,
        &req.client_certificate,
        &mut transcript,
        hash,
    )?;

    if req.last_exchange || !ch.post_handshake_auth {
        return Ok(pb::CInitClientFinishedResponse {
            session_id: Vec::new(),
            certificate_verify,
            last_exchange: true,
        });
    }
    let state = EstablishedState {
        suite: sh.suite,
        hash,
        transcript,
        resumption_master: None,
        established_at: std::time::Instant::now(),
        registered_nonces: Vec::new(),
        registered_identities: Vec::new(),
        unsettled_tickets: Vec::new(),
        store_failures: 0,
        post_handshake_auth: true,
        awaiting_client_finished: true,
        pha_contexts: Vec::new(),
        engine_keyed: true,
        server_name,
    };
    let id = cs
        .sessions
        .open(engine, Stage::Established(Box::new(state)))?;
    Ok(pb::CInitClientFinishedResponse {
        session_id: id.as_bytes().to_vec(),
        certificate_verify,
        last_exchange: false,
    })
}
