//! `c_register_tickets` (docs/design.md §2): NewSessionTicket messages received after the
//! handshake. For each, the CS derives the PSK from the resumption master secret it kept
//! (RFC 8446 §4.6.1: HKDF-Expand-Label(r, "resumption", ticket_nonce)) and stores it sealed,
//! bound to this engine. Neither r nor the PSK is ever returned.
//!
//! A NewSessionTicket is registered once per session: a ticket_nonce or a ticket identity
//! already registered in this session (or twice in one request) is refused with
//! `invalid_handshake` (RFC 8446 §4.6.1: the nonce is unique across the tickets of a
//! connection), so that a ticket resumed once cannot be stored again with the same PSK. A
//! ticket expires no later than its lifetime counted from the client Finished, and r serves
//! for `established_ttl_secs` after it, whatever the exchanges in between.
//!
//! The store takes a request's tickets all together or refuses them all (too many tickets
//! for the engine, an identity already used): a refused request stores nothing and records
//! no nonce. It leaves the session as it was, except that a refused request with
//! last_exchange still ends it: the engine's connection is over, and r goes with it; and
//! that the session counts it: after `MAX_STORE_FAILURES_PER_SESSION` refused or failed
//! writes it registers no more. A write that failed with its outcome unknown (the
//! database's answer lost: it may have been stored) binds each of its nonces to its ticket
//! identity for the rest of the session: the same pair may be sent again, the nonce with
//! another identity may not (it would store the same PSK twice).
//!
//! Under `[server_auth]` the session's server was authenticated (c_client_finished) and each
//! ticket is stored bound to its name: it can only be offered again for that SNI.
//!
//! A request with no ticket and last_exchange set closes the session in any stage: the
//! engine's way to say it no longer needs it (connection closed, or the server declined
//! what the session was opened for), instead of leaving it to expire.

use lurk_proto::key_schedule::resumption_psk;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use zeroize::Zeroizing;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common::{
    self, MAX_STORE_FAILURES_PER_SESSION, MAX_TICKETS_PER_REQUEST, MAX_TICKETS_PER_SESSION,
};
use crate::ops::msgs;
use crate::ops::state::{EstablishedState, Stage};
use crate::ops::Where;
use crate::session::{lock_session, release, SessionId};
use crate::store::NewTicket;

/// Tickets go to the store (sealed by the token). Closing a session touches neither, but
/// may drop token key pairs (a session closed in its hello stage): with the token backend
/// that runs on the blocking pool too.
pub fn place(cs: &Cs, req: &pb::CRegisterTicketsRequest) -> Where {
    Where::inline_if(
        req.new_session_tickets.is_empty() && (!req.last_exchange || common::memory_ephemerals(cs)),
    )
}

/// Stores, sealed and bound to `engine`, the PSK of each NewSessionTicket of its established
/// session.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CRegisterTicketsRequest,
) -> Result<pb::CRegisterTicketsResponse, ServiceError> {
    if req.new_session_tickets.is_empty() && req.last_exchange {
        // The engine closes a session it no longer needs (the connection ended, or the
        // server declined what the session was opened for), whatever its stage.
        close(cs, engine, &req.session_id)?;
        return Ok(pb::CRegisterTicketsResponse {
            registered: 0,
            last_exchange: true,
        });
    }
    let result = register(cs, engine, &req);
    if let Err(ServiceError::Refused { status, .. }) = &result {
        // Refused, but the engine is done with the session (its connection ended): it ends
        // all the same, and r with it, instead of waiting out established_ttl_secs. Unknown
        // or busy: nothing to close. A failure the engine may retry (token or store
        // unavailable) keeps it.
        if req.last_exchange && *status != LurkStatus::TokenUnavailable {
            let _ = close(cs, engine, &req.session_id);
        }
    }
    result
}

/// Forgets `engine`'s session `session_id`, whatever its stage.
fn close(cs: &Cs, engine: &str, session_id: &[u8]) -> Result<(), ServiceError> {
    let id = SessionId::parse(session_id)?;
    let handle = cs.sessions.get(engine, &id)?;
    let locked = lock_session(&handle).map(|_session| cs.sessions.close(&id));
    release(handle);
    locked
}

fn register(
    cs: &Cs,
    engine: &str,
    req: &pb::CRegisterTicketsRequest,
) -> Result<pb::CRegisterTicketsResponse, ServiceError> {
    let registered = common::exchange_or_refuse(
        cs,
        engine,
        &req.session_id,
        req.last_exchange,
        |stage| match stage {
            Stage::Established(state) => {
                let tickets = prepare(cs, state, req)?;
                let bytes = state.held_bytes() + 64 * tickets.len();
                Ok((tickets, bytes))
            }
            other => Err(other.out_of_order("c_register_tickets")),
        },
        // The store write, all the tickets or none, happens here, under the session's lock:
        // the session records the tickets only once they are stored. A refusal (too many
        // tickets, one already used) stores none and leaves the session as it was.
        |stage, tickets| -> Result<u32, ServiceError> {
            let Stage::Established(state) = stage else {
                return Ok(0);
            };
            let (marks, stored): (Vec<_>, Vec<_>) = tickets
                .into_iter()
                .map(|t| ((t.nonce_hash, t.identity_hash), t.ticket))
                .unzip();
            let stored: Vec<NewTicket> = stored.into_iter().flatten().collect();
            let registered = u32::try_from(stored.len()).unwrap_or(u32::MAX);
            if !stored.is_empty() {
                let put = crate::telemetry::store_op("put_ticket", || {
                    cs.store.put_tickets(engine, stored)
                });
                if let Err(e) = put {
                    state.store_failures = state.store_failures.saturating_add(1);
                    if e.outcome_unknown() {
                        for pair in &marks {
                            if !state.unsettled_tickets.contains(pair) {
                                state.unsettled_tickets.push(*pair);
                            }
                        }
                    }
                    return Err(e.into());
                }
            }
            state.unsettled_tickets.retain(|pair| !marks.contains(pair));
            for (nonce, identity) in marks {
                state.registered_nonces.push(nonce);
                state.registered_identities.push(identity);
            }
            Ok(registered)
        },
    )?;
    Ok(pb::CRegisterTicketsResponse {
        registered,
        last_exchange: req.last_exchange,
    })
}

/// One NewSessionTicket ready to store (`None`: its lifetime is over, RFC 8446 §4.6.1).
struct Prepared {
    nonce_hash: [u8; 32],
    identity_hash: [u8; 32],
    ticket: Option<NewTicket>,
}

fn sha256(bytes: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    out.copy_from_slice(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref());
    out
}

/// Everything that can fail, on the session's stage read-only.
fn prepare(
    cs: &Cs,
    state: &EstablishedState,
    req: &pb::CRegisterTicketsRequest,
) -> Result<Vec<Prepared>, ServiceError> {
    let Some(r) = state.resumption_master.as_ref() else {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "this session has no resumption secret at the CS (the engine ran the key schedule)",
        ));
    };
    // [server_auth]: tickets only from a server authenticated in this handshake, bound to
    // its name (docs/protocol.md, "What never leaves the CS").
    if cs.server_auth.is_some() && state.server_name.is_none() {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            "[server_auth]: no server name was authenticated in this session",
        ));
    }
    let age = state.established_at.elapsed();
    if age >= cs.sessions.limits().established_ttl {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "tickets are registered within established_ttl_secs of the handshake",
        ));
    }
    if req.new_session_tickets.len() > MAX_TICKETS_PER_REQUEST {
        return Err(ServiceError::refuse(
            LurkStatus::TooManyTickets,
            format!("at most {MAX_TICKETS_PER_REQUEST} tickets per request"),
        ));
    }
    if state.store_failures >= MAX_STORE_FAILURES_PER_SESSION {
        return Err(ServiceError::refuse(
            LurkStatus::TooManyTickets,
            format!(
                "the store refused or failed {MAX_STORE_FAILURES_PER_SESSION} registrations \
                 of this session: it registers no more"
            ),
        ));
    }
    // Parse and check everything first: a refused request stores nothing.
    let tickets = req
        .new_session_tickets
        .iter()
        .map(|raw| msgs::new_session_ticket(raw))
        .collect::<Result<Vec<_>, _>>()?;
    let cap = u32::try_from(cs.ticket_lifetime_cap).unwrap_or(u32::MAX);
    let elapsed = u32::try_from(age.as_secs()).unwrap_or(u32::MAX);
    let mut out: Vec<Prepared> = Vec::with_capacity(tickets.len());
    for t in tickets {
        let nonce_hash = sha256(&t.nonce);
        let identity_hash = sha256(&t.ticket);
        if state.registered_nonces.contains(&nonce_hash)
            || state.registered_identities.contains(&identity_hash)
            || out
                .iter()
                .any(|p| p.nonce_hash == nonce_hash || p.identity_hash == identity_hash)
        {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "this NewSessionTicket's nonce or ticket was already registered in this session",
            ));
        }
        if state
            .unsettled_tickets
            .iter()
            .any(|&(n, i)| (n == nonce_hash) != (i == identity_hash))
        {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                "this NewSessionTicket's nonce or ticket was sent with another ticket or nonce \
                 in a registration of this session whose outcome is unknown",
            ));
        }
        // RFC 8446 §4.6.1: lifetime 0 means discard the ticket at once; the lifetime counts
        // from the handshake, not from the registration.
        let lifetime = t.lifetime.min(cap).saturating_sub(elapsed);
        let ticket = (lifetime > 0).then(|| {
            let psk = resumption_psk(state.hash, r.as_bytes(), &t.nonce);
            NewTicket {
                identity: t.ticket,
                psk: Zeroizing::new(psk.as_bytes().to_vec()),
                hash: state.hash,
                cipher_suite: state.suite.get(),
                lifetime_secs: lifetime,
                max_early_data: t.max_early_data,
                server_name: state.server_name.clone(),
            }
        });
        out.push(Prepared {
            nonce_hash,
            identity_hash,
            ticket,
        });
    }
    // Unsettled pairs count until they are registered; a retry of one counts once.
    let fresh = out
        .iter()
        .filter(|p| {
            !state
                .unsettled_tickets
                .contains(&(p.nonce_hash, p.identity_hash))
        })
        .count();
    if state.registered_nonces.len() + state.unsettled_tickets.len() + fresh
        > MAX_TICKETS_PER_SESSION
    {
        return Err(ServiceError::refuse(
            LurkStatus::TooManyTickets,
            format!("at most {MAX_TICKETS_PER_SESSION} tickets per session"),
        ));
    }
    Ok(out)
}
