//! `c_init_client_hello` (docs/design.md §2): opens a LURK session on the engine's ClientHello.
//!
//! The CS derives ClientHello.random from the engine's random (freshness, docs/design.md §3),
//! generates a key pair for every key_share entry the engine left empty (cs_generated),
//! loads the PSK of every offered identity and computes the binders, splicing all of it
//! into the received bytes (docs/design.md §4.2). Early secrets are returned when early data is
//! offered and asked for. The PSKs stay in the session, never in a response.

use lurk_proto::key_schedule::KeyScheduleEarly;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::PskKeyExchangeMode;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common::{self, MAX_PSK_IDENTITIES};
use crate::ops::msgs;
use crate::ops::state::{CsShare, HelloState, Stage};
use crate::ops::Where;
use crate::session::lock_session;

/// A PSK is taken from the store (and unsealed by the token); the key shares are made by
/// the ephemeral backend.
pub fn place(cs: &Cs, req: &pb::CInitClientHelloRequest) -> Where {
    if common::memory_ephemerals(cs) {
        Where::inline_if(req.psks.is_empty())
    } else {
        Where::KeyPairs
    }
}

/// Opens a session for `engine` and returns its ClientHello completed: fresh random, the
/// CS's key shares, the binders.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CInitClientHelloRequest,
) -> Result<pb::CInitClientHelloResponse, ServiceError> {
    common::check_secret_request(req.secret_request.as_ref())?;
    let ch = msgs::client_hello(&req.client_hello)?;
    let random = common::fresh_random(cs, req.freshness, &ch.random)?;

    if ch.psk_identities.len() > MAX_PSK_IDENTITIES {
        return Err(ServiceError::refuse(
            LurkStatus::TooManyIdentities,
            format!(
                "{} PSK identities offered; at most {MAX_PSK_IDENTITIES}",
                ch.psk_identities.len()
            ),
        ));
    }
    if ch.psk_identities.len() != req.psks.len() {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidPsk,
            "one PskInfo is needed per pre_shared_key identity",
        ));
    }
    if ch.early_data && ch.psk_identities.is_empty() {
        // RFC 8446 §4.2.10: early data needs a PSK.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "early_data offered without pre_shared_key",
        ));
    }
    if !ch.psk_identities.is_empty() && ch.psk_modes.is_empty() {
        // RFC 8446 §4.2.9: a client offering pre_shared_key must send psk_key_exchange_modes.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "pre_shared_key without psk_key_exchange_modes",
        ));
    }
    for (group, _) in &ch.shares {
        // RFC 8446 §4.2.8: every key share's group is in supported_groups.
        if !ch.groups.contains(group) {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidEphemeral,
                format!(
                    "key share for {} which supported_groups does not list",
                    group.name()
                ),
            ));
        }
    }

    // Reserve the session, and the bytes it will hold (the completed ClientHello, the key
    // pairs, the PSKs), before any key is made or any ticket consumed.
    let reserve = HelloState::reserve_bound(req.client_hello.len(), &ch);
    let id = cs.sessions.open_reserving(engine, Stage::Taken, reserve)?;
    let result = build(cs, engine, &req, ch, random);
    match result {
        Ok((state, resp)) => {
            // The settle below is not checked against the caps: the reservation must hold.
            debug_assert!(
                state.held_bytes() <= reserve,
                "{} > {reserve}",
                state.held_bytes()
            );
            let handle = cs.sessions.get(engine, &id)?;
            let locked = lock_session(&handle).map(|mut session| {
                session.stage = Stage::Hello(Box::new(state));
                cs.sessions.settle(&id, session.stage.held_bytes());
                cs.sessions.touch(&id, &mut session);
            });
            crate::session::release(handle);
            locked?;
            Ok(pb::CInitClientHelloResponse {
                session_id: id.as_bytes().to_vec(),
                ..resp
            })
        }
        Err(e) => {
            cs.sessions.close(&id);
            Err(e)
        }
    }
}

fn build(
    cs: &Cs,
    engine: &str,
    req: &pb::CInitClientHelloRequest,
    ch: msgs::ClientHelloInfo,
    random: [u8; 32],
) -> Result<(HelloState, pb::CInitClientHelloResponse), ServiceError> {
    let mut cs_shares = Vec::new();
    let mut fills = Vec::new();
    let mut key_shares = Vec::new();
    // One admission for all the shares the CS makes (a planned module recycle waits for
    // it; token/pool/recycle.rs).
    let admitted = match ch.shares.iter().any(|(_, empty)| *empty) {
        true => cs.ephemeral.admit()?,
        false => None,
    };
    for (group, empty) in &ch.shares {
        if *empty {
            let (public, pending) = cs.ephemeral.generate(*group)?;
            key_shares.push(pb::KeyShareEntry {
                group: u32::from(group.get()),
                key_exchange: public.clone(),
            });
            fills.push((*group, public.clone()));
            cs_shares.push(CsShare {
                group: *group,
                public,
                pending,
            });
        }
    }
    drop(admitted);
    let psks = common::load_psks(
        cs,
        engine,
        &ch.psk_identities,
        &req.psks,
        ch.server_name.as_deref(),
    )?;
    let mut client_hello = msgs::complete_client_hello(&req.client_hello, Some(&random), &fills)?;
    let transcript = Transcript::new();
    let binders = if psks.is_empty() {
        Vec::new()
    } else {
        let b = common::binders(&transcript, &client_hello, &psks)?;
        msgs::set_binders(&mut client_hello, &b)?;
        b
    };
    let mut transcript = transcript;
    transcript.add(&client_hello);

    // Early secrets: derived from the first PSK (RFC 8446 §4.2.10) over the ClientHello.
    let mut secrets = Vec::new();
    if ch.early_data {
        if let (Some(psk), Some(sr)) = (psks.first(), req.secret_request.as_ref()) {
            let early = KeyScheduleEarly::new(psk.hash, Some(psk.psk.as_bytes()));
            let th = transcript.hash(psk.hash);
            if sr.e_s {
                secrets.push(common::secret(
                    pb::SecretType::ClientEarlyTraffic,
                    &early.client_early_traffic_secret(&th),
                ));
            }
            if sr.e_x {
                secrets.push(common::secret(
                    pb::SecretType::EarlyExporterMaster,
                    &early.early_exporter_master_secret(&th),
                ));
            }
        }
    }

    let state = HelloState {
        transcript,
        client_hello: client_hello.clone(),
        random,
        legacy_session_id: ch.legacy_session_id,
        offered_suites: ch.suites,
        offered_groups: ch.groups,
        shared_groups: ch.shares.iter().map(|(g, _)| *g).collect(),
        cs_shares,
        psks,
        psk_ke: ch.psk_modes.contains(&PskKeyExchangeMode::PskKe),
        psk_dhe_ke: ch.psk_modes.contains(&PskKeyExchangeMode::PskDheKe),
        early_data: ch.early_data,
        post_handshake_auth: ch.post_handshake_auth,
        retried: false,
        server_name: ch.server_name,
        signature_schemes: ch.signature_schemes,
    };
    let resp = pb::CInitClientHelloResponse {
        session_id: Vec::new(),
        client_hello,
        key_shares,
        binders,
        secrets,
    };
    Ok((state, resp))
}
