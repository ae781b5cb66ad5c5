//! `c_client_hello` (LURK.md §4.8): after a HelloRetryRequest, the engine sends the HRR and
//! its second ClientHello. The CS keeps the first random (both ClientHellos carry the same
//! one, LURK.md §3), makes a key share for the group the server asked for, replaces the
//! first ClientHello in the transcript by message_hash (RFC 8446 §4.4.1) and recomputes
//! the binders.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;

use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{CsShare, Stage};
use crate::service::Cs;
use crate::session::{lock_session, SessionId};

pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CClientHelloRequest,
) -> Result<pb::CClientHelloResponse, ServiceError> {
    let id = SessionId::parse(&req.session_id)?;
    let session = cs.sessions.get(engine, &id)?;
    let mut session = lock_session(&session)?;
    let Stage::Hello(state) = &mut session.stage else {
        return Err(session.stage.out_of_order("c_client_hello"));
    };
    if state.retried {
        // RFC 8446 §4.1.4: a second HelloRetryRequest in one connection is an error.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "only one HelloRetryRequest per handshake",
        ));
    }
    let hrr = msgs::server_hello(&req.hello_retry_request)?;
    let Some(selected) = hrr.hrr_group.filter(|_| hrr.is_hrr) else {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "hello_retry_request is not a HelloRetryRequest selecting a group",
        ));
    };
    if !state.offered_suites.contains(&hrr.suite) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the HRR selects a cipher suite not offered",
        ));
    }
    let hash = hrr.suite.hash().ok_or_else(|| {
        ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the HRR selects an unsupported cipher suite",
        )
    })?;
    // RFC 8446 §4.1.4: the selected group must be offered and must not already have a share.
    if !state.offered_groups.contains(&selected) || state.shared_groups.contains(&selected) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            format!(
                "the HRR selects {} which was not offered or already had a key share",
                selected.name()
            ),
        ));
    }

    let ch2 = msgs::client_hello(&req.client_hello)?;
    if ch2.shares.len() != 1 || ch2.shares[0].0 != selected {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the second ClientHello must carry exactly one key share, for the HRR's group",
        ));
    }
    if ch2.early_data {
        // RFC 8446 §4.2.10: no early data after a HelloRetryRequest.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "early_data in the second ClientHello",
        ));
    }
    if hrr.cookie.is_some() && ch2.cookie != hrr.cookie {
        // RFC 8446 §4.2.2: the client echoes the cookie.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the second ClientHello does not echo the cookie",
        ));
    }
    // The identities may shrink to those whose hash fits the suite, never grow.
    let mut kept = Vec::new();
    for identity in &ch2.psk_identities {
        let pos = state
            .psks
            .iter()
            .position(|p| &p.identity == identity)
            .ok_or_else(|| {
                ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    "the second ClientHello offers a new PSK identity",
                )
            })?;
        if state.psks[pos].hash != hash {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidPsk,
                "a PSK whose hash does not match the HRR's suite",
            ));
        }
        kept.push(pos);
    }

    let (public, pending) = cs.ephemeral.generate(selected)?;
    let mut client_hello = msgs::complete_client_hello(
        &req.client_hello,
        Some(&state.random),
        &[(selected, public.clone())],
    )?;

    let mut transcript = state.transcript.clone();
    transcript
        .restart_for_hello_retry(hash)
        .map_err(|e| ServiceError::refuse(LurkStatus::InvalidHandshake, e.to_string()))?;
    transcript.add(&req.hello_retry_request);
    // Binders follow the second ClientHello's order of identities.
    let mut old: Vec<Option<_>> = std::mem::take(&mut state.psks)
        .into_iter()
        .map(Some)
        .collect();
    let mut psks = Vec::with_capacity(kept.len());
    for i in kept {
        psks.push(old[i].take().ok_or_else(|| {
            ServiceError::refuse(LurkStatus::InvalidPsk, "a PSK identity offered twice")
        })?);
    }
    let binders = if psks.is_empty() {
        Vec::new()
    } else {
        let b = common::binders(&transcript, &client_hello, &psks)?;
        msgs::set_binders(&mut client_hello, &b)?;
        b
    };
    transcript.add(&client_hello);

    // Commit: the old key pairs are dropped (destroyed), the new one kept.
    state.psks = psks;
    state.transcript = transcript;
    state.client_hello = client_hello.clone();
    state.cs_shares = vec![CsShare {
        group: selected,
        pending,
    }];
    state.shared_groups = vec![selected];
    state.offered_suites = vec![hrr.suite];
    state.early_data = false;
    state.retried = true;
    cs.sessions.touch(&id, &mut session);
    Ok(pb::CClientHelloResponse {
        client_hello,
        key_shares: vec![pb::KeyShareEntry {
            group: u32::from(selected.get()),
            key_exchange: public,
        }],
        binders,
    })
}
