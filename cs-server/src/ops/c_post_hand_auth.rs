//! `c_post_hand_auth` (docs/design.md §2, RFC 8446 §4.6.2): a CertificateRequest after the
//! handshake. The CS signs the CertificateVerify over the handshake transcript (through the
//! client Finished) + CertificateRequest + Certificate (RFC 8446 §4.4.1). The engine makes
//! the Finished with its current application traffic secret.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::HandshakeType;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{EstablishedState, Stage, ENTRY_BYTES};
use crate::ops::Where;

/// Always signs with the token.
pub fn place(_cs: &Cs, _req: &pb::CPostHandAuthRequest) -> Where {
    Where::Blocking
}

/// Signs the CertificateVerify answering a post-handshake CertificateRequest in `engine`'s
/// established session.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CPostHandAuthRequest,
) -> Result<pb::CPostHandAuthResponse, ServiceError> {
    common::exchange(
        cs,
        engine,
        &req.session_id,
        req.last_exchange,
        |stage| match stage {
            Stage::Established(state) => {
                let (base, context, cv) = prepare(cs, engine, state, &req)?;
                let bytes = state.held_bytes() + context.len() + ENTRY_BYTES;
                Ok(((base, context, cv), bytes))
            }
            other => Err(other.out_of_order("c_post_hand_auth")),
        },
        |stage, (base, context, cv)| {
            if let Stage::Established(state) = stage {
                state.transcript = base;
                state.awaiting_client_finished = false;
                state.pha_contexts.push(context);
            }
            pb::CPostHandAuthResponse {
                certificate_verify: cv,
                last_exchange: req.last_exchange,
            }
        },
    )
}

/// Everything that can fail, on the session's stage read-only: the completed base
/// transcript, the request's context and the CertificateVerify.
fn prepare(
    cs: &Cs,
    engine: &str,
    state: &EstablishedState,
    req: &pb::CPostHandAuthRequest,
) -> Result<(Transcript, Vec<u8>, Vec<u8>), ServiceError> {
    if !state.post_handshake_auth {
        // RFC 8446 §4.6.2: only when the client offered post_handshake_auth.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the ClientHello did not offer post_handshake_auth",
        ));
    }
    if state.pha_contexts.len() >= cs.max_post_handshake_auths {
        // Each one is a token signature and refreshes the session: bounded per session.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            format!(
                "at most {} post-handshake authentications per session",
                cs.max_post_handshake_auths
            ),
        ));
    }
    let hash = state.hash;
    let mut base = state.transcript.clone();
    let messages = msgs::split(&req.handshake_messages)?;
    if state.awaiting_client_finished {
        // Sequence C: the engine made the client Finished; it completes the transcript.
        match messages.as_slice() {
            [m] if m.typ == HandshakeType::Finished && m.body.len() == hash.output_len() => {
                base.add(m.raw)
            }
            _ => {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidHandshake,
                    "handshake_messages must be the client Finished",
                ))
            }
        }
    } else if !messages.is_empty() {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "unexpected handshake_messages",
        ));
    }

    let cr = msgs::certificate_request(&req.certificate_request)?;
    // RFC 8446 §4.3.2: a post-handshake request has a non-empty, unique context.
    if cr.context.is_empty() || state.pha_contexts.contains(&cr.context) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "certificate_request_context must be non-empty and unique in the connection",
        ));
    }
    let mut transcript = base.clone();
    transcript.add(&req.certificate_request);
    transcript.add(&req.client_certificate);
    let cv = common::certificate_verify(
        cs,
        engine,
        &req.key_id,
        &req.client_certificate,
        &cr.context,
        &cr.signature_schemes,
        &transcript.hash(hash),
    )?
    .unwrap_or_default();
    Ok((base, cr.context, cv))
}
