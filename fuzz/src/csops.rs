//! Each CS operation fed an arbitrary request (prost-decoded from the input after its first
//! byte) against the in-process `Cs`. A valid connection (engine, in-memory server, the same
//! CS) is driven to the state the operation needs; when the engine makes that exchange, the
//! fuzzed request goes first:
//!
//! - an empty session_id stands for the live session's (else the fuzzer never names it);
//! - in c_client_finished, a flight that ends with a Finished gets a valid one over the
//!   messages before it (else the fuzzer never passes that check).
//!
//! Checked, besides no panic: no answer nor refusal message holds r, a ticket's PSK or the
//! external PSK; at most one answer carries a valid binder for a ticket (used once); a
//! refused request changes nothing: the engine's own request still succeeds and the
//! connection completes (tickets, post-handshake authentication included).

use std::cell::Cell;

use lurk_engine::cs_client::{CsCall, CsReply};
use lurk_cs::error::ServiceError;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use prost::Message;

use crate::fixture::{self, Fixture};
use crate::scenario::{Flow, Scenario, Setup};
use crate::server::Stage;

/// The exchange a target fuzzes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Op {
    InitClientHello,
    ClientHello,
    ServerHello,
    ClientFinished,
    InitClientFinished,
    PostHandAuth,
    RegisterTickets,
}

impl Op {
    pub fn exchange(self) -> &'static str {
        match self {
            Self::InitClientHello => "c_init_client_hello",
            Self::ClientHello => "c_client_hello",
            Self::ServerHello => "c_server_hello",
            Self::ClientFinished => "c_client_finished",
            Self::InitClientFinished => "c_init_client_finished",
            Self::PostHandAuth => "c_post_hand_auth",
            Self::RegisterTickets => "c_register_tickets",
        }
    }

    /// The set-up in which the engine makes this exchange, from the input's first byte.
    pub fn setup(self, b: u8) -> Setup {
        let mut s = Setup::from_byte(b);
        match self {
            Self::InitClientHello | Self::ServerHello | Self::ClientFinished => {
                s.cs_ephemeral = true
            }
            Self::ClientHello => {
                s.cs_ephemeral = true;
                s.server.hrr = true;
            }
            Self::InitClientFinished => {
                // Sequence C: the engine's own shares, no CS-held PSK.
                s.cs_ephemeral = false;
                s.external_psk = false;
                s.resume = false;
                s.client_key = true;
                s.server.cert_request = true;
            }
            Self::PostHandAuth => s.client_key = true,
            Self::RegisterTickets => s.cs_ephemeral = true,
        }
        s
    }

    /// The fuzzed request, decoded, with the fix-ups of the module documentation, in the
    /// place of the engine's `valid` one.
    fn fuzzed(self, bytes: &[u8], valid: &CsCall, s: &Scenario) -> Option<CsCall> {
        fn sid(fuzzed: &mut Vec<u8>, valid: &[u8]) {
            if fuzzed.is_empty() {
                *fuzzed = valid.to_vec();
            }
        }
        Some(match (self, valid) {
            (Self::InitClientHello, _) => {
                CsCall::InitClientHello(pb::CInitClientHelloRequest::decode(bytes).ok()?)
            }
            (Self::ClientHello, CsCall::ClientHello(v)) => {
                let mut r = pb::CClientHelloRequest::decode(bytes).ok()?;
                sid(&mut r.session_id, &v.session_id);
                CsCall::ClientHello(r)
            }
            (Self::ServerHello, CsCall::ServerHello(v)) => {
                let mut r = pb::CServerHelloRequest::decode(bytes).ok()?;
                sid(&mut r.session_id, &v.session_id);
                CsCall::ServerHello(r)
            }
            (Self::ClientFinished, CsCall::ClientFinished(v)) => {
                let mut r = pb::CClientFinishedRequest::decode(bytes).ok()?;
                sid(&mut r.session_id, &v.session_id);
                s.srv.fix_flight_finished(&mut r.handshake_messages);
                CsCall::ClientFinished(r)
            }
            (Self::InitClientFinished, _) => {
                CsCall::InitClientFinished(pb::CInitClientFinishedRequest::decode(bytes).ok()?)
            }
            (Self::PostHandAuth, CsCall::PostHandAuth(v)) => {
                let mut r = pb::CPostHandAuthRequest::decode(bytes).ok()?;
                sid(&mut r.session_id, &v.session_id);
                CsCall::PostHandAuth(r)
            }
            (Self::RegisterTickets, CsCall::RegisterTickets(v)) => {
                let mut r = pb::CRegisterTicketsRequest::decode(bytes).ok()?;
                sid(&mut r.session_id, &v.session_id);
                CsCall::RegisterTickets(r)
            }
            _ => return None,
        })
    }
}

/// What became of the fuzzed request.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Outcome {
    NotMade,
    Undecodable,
    /// A c_init_client_hello offering PSKs was accepted, or offering the ticket was refused
    /// (the ticket is used up either way): no follow-up check.
    TookPsks,
    /// A c_register_tickets with last_exchange on the engine's session was refused: the
    /// session ends all the same (the engine is done with it, docs/protocol.md).
    Ended,
    Refused,
    Accepted,
}

/// Sends the server's part that makes the engine call `op` after the handshake.
fn after_handshake(op: Op, s: &mut Scenario) {
    match op {
        Op::RegisterTickets => s.send_ticket(&[1, 2, 3, 4], b"lurk-fuzz ticket"),
        Op::PostHandAuth => {
            let cr = crate::server::Server::certificate_request(&[7; 8]);
            s.srv
                .send_record(lurk_proto::wire::ContentType::Handshake, &cr);
        }
        _ => {}
    }
}

pub fn run(op: Op, data: &[u8]) {
    let Some((&b, bytes)) = data.split_first() else {
        return;
    };
    let fix = fixture::get();
    let setup = op.setup(b);
    let mut s = Scenario::new(&fix, setup);
    let outcome = Cell::new(Outcome::NotMade);
    let ended_session = std::cell::RefCell::new(Vec::new());
    let mut hook = |fix: &Fixture, s: &mut Scenario, call: &CsCall| -> Flow {
        if outcome.get() != Outcome::NotMade || call.exchange() != op.exchange() {
            return Flow::Continue;
        }
        let Some(fuzzed) = op.fuzzed(bytes, call, s) else {
            // Not a request of this type: nothing to test beyond the decoder.
            outcome.set(Outcome::Undecodable);
            return Flow::Stop;
        };
        let secrets = s.all_secrets();
        // A c_init_client_hello offering the first connection's ticket uses it up even when
        // it is then refused (a ticket offered is consumed: `load_psks` in the CS).
        let offers_ticket = match (&fuzzed, &s.ticket) {
            (CsCall::InitClientHello(r), Some((identity, _, _))) => {
                lurk_proto::wire::ClientHello::parse(&r.client_hello).is_ok_and(|ch| {
                    ch.pre_shared_key
                        .as_ref()
                        .is_some_and(|p| p.identities.iter().any(|id| id.identity == &identity[..]))
                })
            }
            _ => false,
        };
        let ends_session = match (&fuzzed, call) {
            (CsCall::RegisterTickets(f), CsCall::RegisterTickets(own)) => {
                f.last_exchange && f.session_id == own.session_id
            }
            _ => false,
        };
        let own_session = match call {
            CsCall::RegisterTickets(own) => own.session_id.clone(),
            _ => Vec::new(),
        };
        ended_session.replace(own_session);
        match fixture::call(&fix.cs, fixture::ENGINE, fuzzed) {
            Ok((reply, encoded)) => {
                fixture::assert_no_secret(&encoded, &secrets, op.exchange());
                s.check_reply(&reply);
                outcome.set(Outcome::Accepted);
                // A standalone exchange opened another session: the engine's goes on, unless
                // this one offered PSKs (it may have taken the engine's ticket: used once).
                let took_psks = matches!(&reply, CsReply::InitClientHello(r)
                    if lurk_proto::wire::ClientHello::parse(&r.client_hello)
                        .is_ok_and(|ch| ch.pre_shared_key.is_some()));
                match op {
                    Op::InitClientHello if took_psks => {
                        outcome.set(Outcome::TookPsks);
                        Flow::Stop
                    }
                    Op::InitClientHello | Op::InitClientFinished => Flow::Continue,
                    _ => Flow::Stop,
                }
            }
            Err(e) => {
                fixture::assert_no_secret(e.to_string().as_bytes(), &secrets, op.exchange());
                if offers_ticket {
                    outcome.set(Outcome::TookPsks);
                    return Flow::Stop;
                }
                if ends_session
                    && matches!(&e, ServiceError::Refused { status, .. }
                        if *status != LurkStatus::TokenUnavailable)
                {
                    outcome.set(Outcome::Ended);
                    return Flow::Stop;
                }
                outcome.set(Outcome::Refused);
                Flow::Continue
            }
        }
    };
    s.pump(&fix, &mut hook).expect("the valid handshake");
    if matches!(op, Op::RegisterTickets | Op::PostHandAuth) && outcome.get() == Outcome::NotMade {
        assert!(!s.conn.is_handshaking(), "the valid handshake completes");
        after_handshake(op, &mut s);
        let out = s.srv.take_out();
        s.conn.read_tls(&out);
        s.conn.process_new_packets().expect("the server's message");
        s.pump(&fix, &mut hook).expect("the valid exchange");
    }
    match outcome.get() {
        Outcome::NotMade => panic!("the engine did not make {} ({setup:?})", op.exchange()),
        Outcome::Undecodable | Outcome::TookPsks => return,
        Outcome::Ended => {
            // The session is gone: the engine's own last registration finds no session.
            let close = CsCall::RegisterTickets(pb::CRegisterTicketsRequest {
                session_id: ended_session.take(),
                new_session_tickets: Vec::new(),
                last_exchange: true,
            });
            match fixture::call(&fix.cs, fixture::ENGINE, close) {
                Err(e) => assert_eq!(e.lurk_status(), LurkStatus::InvalidSessionId, "{e}"),
                Ok(_) => panic!("a refused last c_register_tickets left its session open"),
            }
            return;
        }
        Outcome::Accepted if !matches!(op, Op::InitClientHello | Op::InitClientFinished) => return,
        _ => {}
    }
    // Refused (or a standalone exchange): the engine's own exchange went through and the
    // connection completed.
    assert!(
        s.refused.is_empty(),
        "after a refused {}, the CS refused the valid {:?}",
        op.exchange(),
        s.refused
    );
    assert!(
        !s.conn.is_handshaking() && s.srv.stage == Stage::Established,
        "the connection did not complete after a refused {}",
        op.exchange()
    );
    match op {
        Op::RegisterTickets => {
            let n = s
                .conn
                .summary()
                .lurk_exchanges
                .iter()
                .filter(|e| **e == "c_register_tickets")
                .count();
            assert!(n >= 1, "the ticket was registered");
        }
        Op::PostHandAuth => {
            let last = s.srv.post_handshake_in.last().map(|m| m[0]);
            assert_eq!(last, Some(20), "the client answered the CertificateRequest");
        }
        _ => {}
    }
}

/// Capabilities and Ping: their requests decoded, Capabilities answered for the engine the
/// input names: only the external PSKs that engine may use, never a PSK.
pub fn capabilities(data: &[u8]) {
    let _ = pb::CapabilitiesRequest::decode(data);
    let _ = pb::PingRequest::decode(data);
    let engine = match data.split_first() {
        Some((&0, _)) | None => fixture::ENGINE.to_owned(),
        Some((_, rest)) => String::from_utf8_lossy(&rest[..rest.len().min(64)]).into_owned(),
    };
    let fix = fixture::get();
    if let Ok(resp) = lurk_cs::ops::capabilities::handle(&fix.cs, &engine) {
        fixture::assert_no_secret(
            &resp.encode_to_vec(),
            &fixture::fixed_secrets(),
            "Capabilities",
        );
        let listed = resp
            .external_psks
            .iter()
            .any(|p| p.identity == fixture::EXTERNAL_IDENTITY);
        assert_eq!(
            listed,
            engine == fixture::ENGINE,
            "an external PSK listed to an engine that may not use it (or not to the one that may)"
        );
    }
}
