//! `c_server_hello` (docs/design.md §2): the ServerHello fixes the cipher suite, the key exchange
//! and the PSK. The CS computes the (EC)DHE shared secret with the key pair it made (or
//! takes the engine's, e_generated), runs the key schedule to the handshake secret and
//! returns the handshake traffic secrets. Unused key pairs are destroyed.

use lurk_proto::key_schedule::KeyScheduleEarly;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use zeroize::Zeroizing;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{HandshakeState, HelloState, Stage};
use crate::ops::Where;

/// The agreement with the session's ephemeral (token-made with token ephemerals).
pub fn place(cs: &Cs, _req: &pb::CServerHelloRequest) -> Where {
    Where::inline_if(common::memory_ephemerals(cs))
}

/// Takes the ServerHello of `engine`'s session and returns the handshake traffic secrets.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CServerHelloRequest,
) -> Result<pb::CServerHelloResponse, ServiceError> {
    common::check_secret_request(req.secret_request.as_ref())?;
    common::exchange(
        cs,
        engine,
        &req.session_id,
        false,
        |stage| match stage {
            Stage::Hello(state) => {
                let (next, resp) = prepare(cs, state, &req)?;
                let bytes = next.held_bytes();
                Ok(((next, resp), bytes))
            }
            other => Err(other.out_of_order("c_server_hello")),
        },
        |stage, (next, resp)| {
            // The remaining key pairs and PSKs go with the old stage (destroyed / zeroized).
            *stage = Stage::Handshake(Box::new(next));
            resp
        },
    )
}

/// Everything that can fail, on the session's stage read-only (`c_server_flight` runs it too).
pub(crate) fn prepare(
    cs: &Cs,
    state: &HelloState,
    req: &pb::CServerHelloRequest,
) -> Result<(HandshakeState, pb::CServerHelloResponse), ServiceError> {
    let sh = msgs::server_hello(&req.server_hello)?;
    if sh.is_hrr {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "a HelloRetryRequest goes through c_client_hello",
        ));
    }
    // RFC 8446 §4.1.3: legacy_session_id_echo echoes the ClientHello's legacy_session_id.
    if sh.legacy_session_id_echo != state.legacy_session_id {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the ServerHello does not echo the ClientHello's legacy_session_id",
        ));
    }
    // RFC 8446 §4.1.3: the suite is one the client offered.
    if !state.offered_suites.contains(&sh.suite) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the server selected a cipher suite not offered",
        ));
    }
    let hash = sh.suite.hash().ok_or_else(|| {
        ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the server selected an unsupported cipher suite",
        )
    })?;

    let psk = match sh.selected_psk {
        None => None,
        Some(i) => {
            let p = state.psks.get(i as usize).ok_or_else(|| {
                ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    "the server selected a PSK identity not offered",
                )
            })?;
            // RFC 8446 §4.2.11: the PSK's hash must be the suite's.
            if p.hash != hash {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    "the selected PSK's hash is not the suite's",
                ));
            }
            Some(i as usize)
        }
    };

    let ecdhe: Option<Zeroizing<Vec<u8>>> = match &sh.key_share {
        Some((group, server_share)) => {
            // RFC 8446 §4.2.8: the server's share is for a group the client sent a share for.
            if !state.shared_groups.contains(group) {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidEphemeral,
                    format!(
                        "the server's key share is for {}, for which no share was offered",
                        group.name()
                    ),
                ));
            }
            if psk.is_some() && !state.psk_dhe_ke {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidHandshake,
                    "psk_dhe_ke was not offered",
                ));
            }
            match state.cs_shares.iter().position(|s| s.group == *group) {
                Some(pos) => Some(state.cs_shares[pos].pending.agree(
                    cs.token.as_ref(),
                    *group,
                    server_share,
                )?),
                None => {
                    // The engine made this share (e_generated): it sends the shared secret.
                    let e = req.ephemeral.as_ref().filter(|e| {
                        e.method == pb::EphemeralMethod::EGenerated as i32
                            && e.shared_secret.len() == expected_secret_len(*group)
                    });
                    let e = e.ok_or_else(|| {
                        ServiceError::refuse(
                            LurkStatus::InvalidEphemeral,
                            "the engine made this key share: send its shared secret (e_generated)",
                        )
                    })?;
                    Some(Zeroizing::new(e.shared_secret.clone()))
                }
            }
        }
        None => {
            // psk_ke (RFC 8446 §4.2.9): no (EC)DHE, only with a PSK and when offered.
            if psk.is_none() {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidHandshake,
                    "the ServerHello has neither a key share nor a PSK",
                ));
            }
            if !state.psk_ke {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidHandshake,
                    "psk_ke was not offered",
                ));
            }
            None
        }
    };

    let early = KeyScheduleEarly::new(hash, psk.map(|i| state.psks[i].psk.as_bytes()));
    let key_schedule = early.into_handshake(ecdhe.as_ref().map(|s| s.as_slice()));
    let mut transcript = state.transcript.clone();
    transcript.add(&req.server_hello);
    let th = transcript.hash(hash);
    let client_hs = key_schedule.client_handshake_traffic_secret(&th);
    let server_hs = key_schedule.server_handshake_traffic_secret(&th);

    let (want_c, want_s) = match req.secret_request.as_ref() {
        Some(r) => (r.h_c, r.h_s),
        None => (true, true),
    };
    let mut secrets = Vec::new();
    if want_c {
        secrets.push(common::secret(
            pb::SecretType::ClientHandshakeTraffic,
            &client_hs,
        ));
    }
    if want_s {
        secrets.push(common::secret(
            pb::SecretType::ServerHandshakeTraffic,
            &server_hs,
        ));
    }
    let next = HandshakeState {
        suite: sh.suite,
        hash,
        transcript,
        key_schedule,
        client_hs,
        server_hs,
        psk_mode: psk.is_some(),
        early_data_offered: state.early_data,
        post_handshake_auth: state.post_handshake_auth,
        server_name: state.server_name.clone(),
        signature_schemes: state.signature_schemes.clone(),
        // A ticket offered was checked against the SNI (common::load_psks); an external PSK
        // authenticates the server it was provisioned for, named by the SNI.
        psk_server_name: psk.and_then(|i| {
            let p = &state.psks[i];
            p.server_name.clone().or_else(|| state.server_name.clone())
        }),
    };
    Ok((next, pb::CServerHelloResponse { secrets }))
}

fn expected_secret_len(group: lurk_proto::wire::NamedGroup) -> usize {
    use lurk_proto::wire::NamedGroup;
    match group {
        NamedGroup::X25519 => 32,
        NamedGroup::Secp256r1 => 32,
        NamedGroup::Secp384r1 => 48,
        _ => usize::MAX,
    }
}
