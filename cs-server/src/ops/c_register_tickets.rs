//! `c_register_tickets` (docs/design.md §2): NewSessionTicket messages received after the
//! handshake. For each, the CS derives the PSK from the resumption master secret it kept
//! (RFC 8446 §4.6.1: HKDF-Expand-Label(r, "resumption", ticket_nonce)) and stores it sealed,
//! bound to this engine. Neither r nor the PSK is ever returned.
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
use crate::ops::common::{self, MAX_TICKETS_PER_REQUEST};
use crate::ops::msgs;
use crate::ops::state::Stage;
use crate::session::{lock_session, SessionId};
use crate::store::NewTicket;

pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CRegisterTicketsRequest,
) -> Result<pb::CRegisterTicketsResponse, ServiceError> {
    let id = SessionId::parse(&req.session_id)?;
    let session = cs.sessions.get(engine, &id)?;
    let mut session = lock_session(&session)?;
    if req.new_session_tickets.is_empty() && req.last_exchange {
        // The engine closes a session it no longer needs (the connection ended, or the
        // server declined what the session was opened for), whatever its stage.
        cs.sessions.close(&id);
        return Ok(pb::CRegisterTicketsResponse {
            registered: 0,
            last_exchange: true,
        });
    }
    let Stage::Established(state) = &session.stage else {
        return Err(session.stage.out_of_order("c_register_tickets"));
    };
    let Some(r) = state.resumption_master.as_ref() else {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "this session has no resumption secret at the CS (the engine ran the key schedule)",
        ));
    };
    if req.new_session_tickets.len() > MAX_TICKETS_PER_REQUEST {
        return Err(ServiceError::refuse(
            LurkStatus::TooManyTickets,
            format!("at most {MAX_TICKETS_PER_REQUEST} tickets per request"),
        ));
    }
    // Parse everything first: a malformed ticket stores nothing.
    let tickets = req
        .new_session_tickets
        .iter()
        .map(|raw| msgs::new_session_ticket(raw))
        .collect::<Result<Vec<_>, _>>()?;
    let mut registered = 0;
    for t in tickets {
        if t.lifetime == 0 {
            // RFC 8446 §4.6.1: lifetime 0 means discard the ticket at once.
            continue;
        }
        let psk = resumption_psk(state.hash, r.as_bytes(), &t.nonce);
        cs.store.put_ticket(
            engine,
            NewTicket {
                identity: t.ticket,
                psk: Zeroizing::new(psk.as_bytes().to_vec()),
                hash: state.hash,
                cipher_suite: state.suite.get(),
                lifetime_secs: t
                    .lifetime
                    .min(u32::try_from(cs.ticket_lifetime_cap).unwrap_or(u32::MAX)),
                max_early_data: t.max_early_data,
                server_name: None,
            },
        )?;
        registered += 1;
    }
    let last = common::finish(cs, &id, &mut session, req.last_exchange);
    Ok(pb::CRegisterTicketsResponse {
        registered,
        last_exchange: last,
    })
}
