//! c_register_tickets' refusals: nothing is stored, the session keeps r and registers the
//! right tickets afterwards.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use super::*;
use crate::error::StoreError;
use crate::ops::c_register_tickets::handle;
use crate::store::{
    ExternalPsk, ExternalPskInfo, ExternalPsks, NewTicket, StoredTicket, TicketBinding, Tickets,
};

fn req(hs: &Hs, tickets: Vec<Vec<u8>>) -> pb::CRegisterTicketsRequest {
    pb::CRegisterTicketsRequest {
        session_id: hs.id.clone(),
        new_session_tickets: tickets,
        last_exchange: false,
    }
}

/// `tickets` are refused with `want`: no ticket stored, no session closed; then a fresh
/// ticket registers on the same session.
fn refused(f: &Fx, hs: &Hs, tickets: Vec<Vec<u8>>, want: LurkStatus) {
    let (sessions, stored) = (f.sessions(), f.tickets(ENGINE));
    assert_eq!(status(handle(&f.cs, ENGINE, req(hs, tickets))), want);
    assert_eq!(f.sessions(), sessions);
    assert_eq!(
        f.tickets(ENGINE),
        stored,
        "a refused request stored a ticket"
    );
    let fresh = format!("fresh {stored}");
    let ok = handle(
        &f.cs,
        ENGINE,
        req(hs, vec![nst(60, fresh.as_bytes(), fresh.as_bytes())]),
    )
    .unwrap();
    assert_eq!(ok.registered, 1);
    assert_eq!(f.tickets(ENGINE), stored + 1);
}

#[test]
fn an_unknown_or_another_engines_session_is_invalid_session_id() {
    let f = fx();
    let hs = f.established();
    let sessions = f.sessions();
    for last_exchange in [false, true] {
        let tickets = if last_exchange {
            Vec::new()
        } else {
            vec![nst(60, b"n", b"t")]
        };
        let r = pb::CRegisterTicketsRequest {
            last_exchange,
            ..req(&hs, tickets)
        };
        // Another engine can neither register on nor close this session.
        assert_eq!(
            status(handle(&f.cs, OTHER, r.clone())),
            LurkStatus::InvalidSessionId
        );
        let mut unknown = r;
        unknown.session_id[15] ^= 1;
        assert_eq!(
            status(handle(&f.cs, ENGINE, unknown)),
            LurkStatus::InvalidSessionId
        );
    }
    assert_eq!(f.sessions(), sessions);
    assert_eq!(f.tickets(OTHER), 0);
    refused(&f, &hs, vec![Vec::new()], LurkStatus::InvalidFormat);
}

#[test]
fn before_the_client_finished_is_invalid_status() {
    let f = fx();
    let hs = f.handshake();
    let sessions = f.sessions();
    let r = req(&hs, vec![nst(60, b"n", b"t")]);
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::InvalidStatus);
    assert_eq!((f.sessions(), f.tickets(ENGINE)), (sessions, 0));
    // The session goes on.
    ops::c_client_finished::handle(
        &f.cs,
        ENGINE,
        Fx::client_finished_req(&hs, hs.full_flight()),
    )
    .unwrap();
    handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n", b"t")])).unwrap();
}

#[test]
fn a_ticket_that_does_not_parse_stores_none_of_the_request() {
    let f = fx();
    let hs = f.established();
    let mut bad = nst(60, b"n2", b"t2");
    bad.push(0);
    refused(
        &f,
        &hs,
        vec![nst(60, b"n1", b"t1"), bad],
        LurkStatus::InvalidFormat,
    );
}

#[test]
fn more_than_sixteen_tickets_in_a_request_is_too_many_tickets() {
    let f = fx();
    let hs = f.established();
    let tickets = (0..17u8).map(|i| nst(60, &[i], &[i])).collect();
    refused(&f, &hs, tickets, LurkStatus::TooManyTickets);
}

#[test]
fn more_than_sixty_four_tickets_in_a_session_is_too_many_tickets() {
    let f = fx_with(|c| c.store.max_tickets_per_engine = 1000);
    let hs = f.established();
    for r in 0..4u8 {
        let tickets = (0..16u8).map(|i| nst(60, &[r, i], &[r, i])).collect();
        assert_eq!(
            handle(&f.cs, ENGINE, req(&hs, tickets)).unwrap().registered,
            16
        );
    }
    let sessions = f.sessions();
    let r = req(&hs, vec![nst(60, b"65", b"65")]);
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::TooManyTickets);
    assert_eq!((f.sessions(), f.tickets(ENGINE)), (sessions, 64));
    // Another session of the engine still registers.
    let hs2 = f.established();
    handle(&f.cs, ENGINE, req(&hs2, vec![nst(60, b"65", b"65")])).unwrap();
}

#[test]
fn a_nonce_or_ticket_registered_twice_is_invalid_handshake() {
    let f = fx();
    let hs = f.established();
    handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n1", b"t1")])).unwrap();
    // The same nonce, the same ticket identity, again or twice in one request.
    refused(
        &f,
        &hs,
        vec![nst(60, b"n1", b"t2")],
        LurkStatus::InvalidHandshake,
    );
    refused(
        &f,
        &hs,
        vec![nst(60, b"n3", b"t1")],
        LurkStatus::InvalidHandshake,
    );
    refused(
        &f,
        &hs,
        vec![nst(60, b"n4", b"t4"), nst(60, b"n4", b"t5")],
        LurkStatus::InvalidHandshake,
    );
}

#[test]
fn a_session_the_engine_keyed_has_no_r_and_is_invalid_status() {
    let f = fx();
    let id = c_init_client_finished::engine_keyed_session(&f);
    let sessions = f.sessions();
    let r = pb::CRegisterTicketsRequest {
        session_id: id.clone(),
        new_session_tickets: vec![nst(60, b"n", b"t")],
        last_exchange: false,
    };
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::InvalidStatus);
    assert_eq!((f.sessions(), f.tickets(ENGINE)), (sessions, 0));
    // The engine may still close it.
    let close = pb::CRegisterTicketsRequest {
        session_id: id,
        new_session_tickets: Vec::new(),
        last_exchange: true,
    };
    handle(&f.cs, ENGINE, close).unwrap();
    assert_eq!(f.sessions(), sessions - 1);
}

/// The store refuses a request's tickets all together: a request that would pass the cap
/// midway stores none of them and records none of their nonces, so they register later.
#[test]
fn past_the_engines_ticket_cap_is_too_many_tickets_and_keeps_the_stored_ones() {
    let f = fx_with(|c| c.store.max_tickets_per_engine = 2);
    let hs = f.established();
    handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n1", b"t1")])).unwrap();
    let r = req(&hs, vec![nst(60, b"n2", b"t2"), nst(60, b"n3", b"t3")]);
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::TooManyTickets);
    assert_eq!(
        f.tickets(ENGINE),
        1,
        "none of the refused request is stored"
    );
    let ok = handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n2", b"t2")])).unwrap();
    assert_eq!(ok.registered, 1);
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n3", b"t3")]))),
        LurkStatus::TooManyTickets
    );
    assert_eq!(f.tickets(ENGINE), 2);
    // The tickets stored are intact: one resumes.
    let ch = resumption_hello(b"t1").build().unwrap();
    f.init_as(
        ENGINE,
        pb::CInitClientHelloRequest {
            psks: vec![resumption_info()],
            ..init_req(ch)
        },
    );
    assert_eq!(f.tickets(ENGINE), 1);
}

/// The engine's last registration (its connection is over) refused by the store: nothing
/// is stored, and the session ends all the same, r with it.
#[test]
fn a_refused_last_registration_stores_nothing_and_still_ends_the_session() {
    let f = fx_with(|c| c.store.max_tickets_per_engine = 1);
    let hs = f.established();
    handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n1", b"t1")])).unwrap();
    let sessions = f.sessions();
    let last = pb::CRegisterTicketsRequest {
        last_exchange: true,
        ..req(&hs, vec![nst(60, b"n2", b"t2")])
    };
    assert_eq!(
        status(handle(&f.cs, ENGINE, last)),
        LurkStatus::TooManyTickets
    );
    assert_eq!(f.tickets(ENGINE), 1);
    assert_eq!(f.sessions(), sessions - 1);
    assert_eq!(
        status(handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n3", b"t3")]))),
        LurkStatus::InvalidSessionId
    );
}

/// An exchange that makes the session grow past the engine's byte share is refused before
/// anything is stored (the table admits the new size before the commit, common::exchange).
#[test]
fn growing_past_the_engines_session_bytes_is_too_many_sessions_and_stores_nothing() {
    let f = fx_with(|c| {
        c.sessions.max_bytes_per_engine = 64 * 1024;
        c.sessions.max_per_engine = 10_000;
    });
    let hs = f.established();
    // Sessions until the engine's byte share is (nearly) full.
    let mut fillers = Vec::new();
    loop {
        let r = init_req(hello().build().unwrap());
        match ops::c_init_client_hello::handle(&f.cs, ENGINE, r) {
            Ok(resp) => fillers.push(resp.session_id),
            Err(e) => {
                assert_eq!(e.lurk_status(), LurkStatus::TooManySessions);
                break;
            }
        }
        assert!(fillers.len() < 1000, "the byte share is never reached");
    }
    // 16 tickets at a time make the session grow until the growth is refused.
    let mut round = 0u8;
    let refused_req = loop {
        assert!(round < 4, "the session's growth is never refused");
        let tickets = (0..16u8)
            .map(|i| nst(60, &[round, i], &[round, i]))
            .collect();
        let r = req(&hs, tickets);
        let before = (f.sessions(), f.tickets(ENGINE));
        match handle(&f.cs, ENGINE, r.clone()) {
            Ok(ok) => assert_eq!(ok.registered, 16),
            Err(e) => {
                assert_eq!(e.lurk_status(), LurkStatus::TooManySessions);
                assert_eq!(
                    (f.sessions(), f.tickets(ENGINE)),
                    before,
                    "the refusal stored"
                );
                break r;
            }
        }
        round += 1;
    };
    // Room made (the engine closes a session it no longer needs): the same request passes.
    let close = pb::CRegisterTicketsRequest {
        session_id: fillers.pop().unwrap(),
        new_session_tickets: Vec::new(),
        last_exchange: true,
    };
    handle(&f.cs, ENGINE, close).unwrap();
    assert_eq!(handle(&f.cs, ENGINE, refused_req).unwrap().registered, 16);
}

/// The real store, with a fault: while `lose` is set, a registration is stored and then
/// reported failed, as when the database's answer to `COMMIT` is lost. Counts the writes.
struct AnswerLost {
    inner: Arc<dyn TicketStore>,
    lose: AtomicBool,
    puts: AtomicUsize,
}

impl Tickets for AnswerLost {
    fn put_tickets(&self, engine: &str, tickets: Vec<NewTicket>) -> Result<(), StoreError> {
        self.puts.fetch_add(1, Ordering::SeqCst);
        self.inner.put_tickets(engine, tickets)?;
        if self.lose.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable(
                "the answer to COMMIT was lost".into(),
            ));
        }
        Ok(())
    }
    fn take_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<StoredTicket>, StoreError> {
        self.inner.take_ticket(engine, identity)
    }
    fn peek_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<TicketBinding>, StoreError> {
        self.inner.peek_ticket(engine, identity)
    }
    fn count_tickets(&self, engine: &str) -> Result<u64, StoreError> {
        self.inner.count_tickets(engine)
    }
    fn purge_expired(&self, now: std::time::SystemTime) -> Result<u64, StoreError> {
        self.inner.purge_expired(now)
    }
    fn ping(&self) -> Result<(), StoreError> {
        self.inner.ping()
    }
}

impl ExternalPsks for AnswerLost {
    fn put_external_psk(&self, psk: ExternalPsk) -> Result<(), StoreError> {
        self.inner.put_external_psk(psk)
    }
    fn get_external_psk(
        &self,
        engine: Option<&str>,
        identity: &[u8],
    ) -> Result<Option<ExternalPsk>, StoreError> {
        self.inner.get_external_psk(engine, identity)
    }
    fn delete_external_psk(&self, identity: &[u8]) -> Result<bool, StoreError> {
        self.inner.delete_external_psk(identity)
    }
    fn list_external_psks(&self) -> Result<Vec<ExternalPskInfo>, StoreError> {
        self.inner.list_external_psks()
    }
}

fn fx_answer_lost(edit: impl FnOnce(&mut Config)) -> (Fx, Arc<AnswerLost>) {
    let mut wrapper = None;
    let f = fx_with_store(edit, |inner| {
        let w = Arc::new(AnswerLost {
            inner,
            lose: AtomicBool::new(false),
            puts: AtomicUsize::new(0),
        });
        wrapper = Some(w.clone());
        w
    });
    (f, wrapper.unwrap())
}

/// A registration whose store write failed with its outcome unknown (here it was stored,
/// the answer lost) binds its nonce to its ticket for the rest of the session: the nonce
/// under another identity, or the identity under another nonce, is refused (it would store
/// the same PSK twice, usable twice); the same pair again registers, the stored ticket
/// kept as it is, and is then refused like any registered ticket.
#[test]
fn a_registration_whose_outcome_is_unknown_binds_its_nonce_to_its_ticket() {
    let (f, store) = fx_answer_lost(|_| {});
    let hs = f.established();
    store.lose.store(true, Ordering::SeqCst);
    let one = |nonce: &[u8], ticket: &[u8]| req(&hs, vec![nst(60, nonce, ticket)]);
    assert_eq!(
        status(handle(&f.cs, ENGINE, one(b"n1", b"t1"))),
        LurkStatus::UndefinedError
    );
    assert_eq!(f.tickets(ENGINE), 1, "stored, the answer lost");
    store.lose.store(false, Ordering::SeqCst);
    for (nonce, ticket) in [(b"n1", b"t2"), (b"n2", b"t1")] {
        assert_eq!(
            status(handle(&f.cs, ENGINE, one(nonce, ticket))),
            LurkStatus::InvalidHandshake
        );
    }
    assert_eq!(f.tickets(ENGINE), 1);
    assert_eq!(
        handle(&f.cs, ENGINE, one(b"n1", b"t1")).unwrap().registered,
        1
    );
    assert_eq!(
        status(handle(&f.cs, ENGINE, one(b"n1", b"t1"))),
        LurkStatus::InvalidHandshake
    );
    assert_eq!(f.tickets(ENGINE), 1);
    // Other tickets of the session register as before.
    assert_eq!(
        handle(&f.cs, ENGINE, one(b"n2", b"t2")).unwrap().registered,
        1
    );
    assert_eq!(f.tickets(ENGINE), 2);
}

/// A session whose registrations the store refused `MAX_STORE_FAILURES_PER_SESSION` times
/// registers no more, without another store write; other sessions are not affected.
#[test]
fn a_session_whose_registrations_keep_failing_registers_no_more() {
    let (f, store) = fx_answer_lost(|c| c.store.max_tickets_per_engine = 1);
    let hs = f.established();
    handle(&f.cs, ENGINE, req(&hs, vec![nst(60, b"n0", b"t0")])).unwrap();
    let limit = usize::from(ops::common::MAX_STORE_FAILURES_PER_SESSION);
    for i in 1..=limit {
        let t = format!("t{i}");
        let r = req(&hs, vec![nst(60, t.as_bytes(), t.as_bytes())]);
        assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::TooManyTickets);
    }
    assert_eq!(store.puts.load(Ordering::SeqCst), 1 + limit);
    let r = req(&hs, vec![nst(60, b"late", b"late")]);
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::TooManyTickets);
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        1 + limit,
        "no store write"
    );
    assert_eq!(f.tickets(ENGINE), 1);
    let other = f.established();
    let r = req(&other, vec![nst(60, b"other", b"other")]);
    assert_eq!(status(handle(&f.cs, ENGINE, r)), LurkStatus::TooManyTickets);
    assert_eq!(
        store.puts.load(Ordering::SeqCst),
        2 + limit,
        "another session writes"
    );
}
