//! The engine connection in each state, fed a server's bytes from the fuzzer. The first
//! byte of an input is the set-up ([`Setup::from_byte`]); the CS calls the connection makes
//! are answered by the in-process CS.
//!
//! - `conn_server_hello`: the ClientHello is out; the rest of the input is the server's raw
//!   bytes (records, plaintext).
//! - `conn_server_flight`: the ServerHello is in, the connection waits for the encrypted
//!   flight; the rest of the input is [`Chunk`]s the server protects under its handshake key.
//! - `conn_established`: a valid handshake is done; the rest is [`Chunk`]s under the server's
//!   application key.
//!
//! Checked, besides no panic: an engine error is sticky; no engine output nor CS answer holds
//! r, a ticket's PSK or the external PSK; the connection completes a handshake only if the
//! server signed a CertificateVerify and its Finished, and then the server checked the
//! client's Finished; the application data the connection delivers is a prefix of what the
//! server sent before a close_notify (all of it when no error).

use lurk_proto::wire::ContentType;

use crate::fixture::{self, Fixture};
use crate::scenario::{Scenario, Setup};
use crate::server::Stage;

/// One server action of a chunked input: a tag byte, a 2-byte length, that many bytes.
pub struct Chunk<'a> {
    pub tag: u8,
    pub body: &'a [u8],
}

pub fn chunks(mut data: &[u8]) -> Vec<Chunk<'_>> {
    let mut out = Vec::new();
    while let Some((&tag, rest)) = data.split_first() {
        let (len, rest) = match rest {
            [a, b, rest @ ..] => (usize::from(u16::from_be_bytes([*a, *b])), rest),
            _ => (0, &[][..]),
        };
        let (body, rest) = rest.split_at(len.min(rest.len()));
        out.push(Chunk { tag, body });
        data = rest;
    }
    out
}

/// Encodes chunks (for the seeds).
pub fn encode_chunks(chunks: &[(u8, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (tag, body) in chunks {
        out.push(*tag);
        out.extend_from_slice(&(body.len() as u16).to_be_bytes());
        out.extend_from_slice(body);
    }
    out
}

/// Chunk tags with a meaning of their own (any other tag is a content type: the body goes
/// out as one protected record of that type; handshake bodies join the transcript).
pub mod tag {
    /// Flight: a valid CertificateVerify over the transcript. Established: KeyUpdate.
    pub const SIGN_OR_KEY_UPDATE: u8 = 0xf0;
    /// Flight: a valid server Finished (then the application keys). Established: KeyUpdate
    /// with update_requested.
    pub const FINISH_OR_KEY_UPDATE_REQUESTED: u8 = 0xf1;
    /// Flight: the valid Certificate. Established: a NewSessionTicket (the body is its nonce).
    pub const CERT_OR_TICKET: u8 = 0xf2;
    /// Established: a post-handshake CertificateRequest (the body is its context).
    pub const CERT_REQUEST: u8 = 0xf3;
    /// The body as raw bytes, unprotected.
    pub const RAW: u8 = 0xf4;
}

/// The connection's error is sticky and what it sends is whole records.
fn check_failed_connection(s: &mut Scenario) {
    if s.conn.error().is_some() {
        assert!(s.conn.process_new_packets().is_err(), "an error is sticky");
        let out = s.conn.take_tls();
        let mut d = lurk_engine::internals::deframer::Deframer::new();
        d.push(&out);
        while let Some(_r) = d.next_record().expect("the engine sends whole records") {}
    }
}

fn deliver(s: &mut Scenario, fix: &Fixture) -> bool {
    let bytes = s.srv.take_out();
    s.conn.read_tls(&bytes);
    let ok = s.conn.process_new_packets().is_ok() && s.run(fix).is_ok();
    if !ok {
        check_failed_connection(s);
    }
    ok
}

pub fn server_hello(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    // The server's legacy_session_id_echo must echo the client's: no random one here.
    let setup = Setup {
        middlebox: false,
        ..Setup::from_byte(b)
    };
    let fix = fixture::get();
    let mut s = Scenario::new(&fix, setup);
    // The ClientHello out (after c_init_client_hello when the CS makes the shares); the
    // server does not answer: the fuzzer does.
    s.auto_flight = false;
    while let Some(call) = s.conn.take_cs_call() {
        let reply = fixture::call(&fix.cs, fixture::ENGINE, call)
            .map(|(r, _)| r)
            .map_err(fixture::as_engine_error);
        s.conn
            .cs_response(reply)
            .expect("the CS answers c_init_client_hello");
    }
    assert!(!s.conn.take_tls().is_empty(), "a ClientHello");
    s.conn.read_tls(rest);
    let ok = s.conn.process_new_packets().is_ok() && {
        // CS calls the server's bytes caused (c_server_hello, c_client_hello); the engine's
        // answers go to a server that never speaks.
        let mut ok = true;
        while let Some(call) = s.conn.take_cs_call() {
            let reply = match fixture::call(&fix.cs, fixture::ENGINE, call) {
                Ok((r, enc)) => {
                    fixture::assert_no_secret(&enc, &fixture::fixed_secrets(), "CS answer");
                    Ok(r)
                }
                Err(e) => Err(fixture::as_engine_error(e)),
            };
            if s.conn.cs_response(reply).is_err() {
                ok = false;
                break;
            }
        }
        ok
    };
    if !ok {
        check_failed_connection(&mut s);
    }
    assert!(
        s.conn.is_handshaking(),
        "no handshake ends on a ServerHello"
    );
}

pub fn server_flight(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let fix = fixture::get();
    let mut s = Scenario::new(&fix, Setup::from_byte(b));
    s.auto_flight = false;
    s.run(&fix).expect("to the ServerHello");
    assert_eq!(s.srv.stage, Stage::Flight);
    let mut signed = false;
    for c in chunks(rest) {
        if s.srv.stage != Stage::Flight {
            break;
        }
        match c.tag {
            tag::SIGN_OR_KEY_UPDATE => {
                let cv = s.srv.certificate_verify();
                s.srv.send_handshake(&cv);
                signed = true;
            }
            tag::FINISH_OR_KEY_UPDATE_REQUESTED => s.srv.send_finished(),
            tag::CERT_OR_TICKET => {
                let cert = s.srv.certificate();
                s.srv.send_handshake(&cert);
            }
            tag::RAW => s.srv.out.extend_from_slice(c.body),
            0 => continue,
            22 => s.srv.send_handshake(c.body),
            t => s.srv.send_record(ContentType::from(t), c.body),
        }
        if !deliver(&mut s, &fix) {
            return;
        }
    }
    if !s.conn.is_handshaking() {
        assert!(
            signed,
            "the connection completed without a server CertificateVerify"
        );
        assert_eq!(
            s.srv.stage,
            Stage::Established,
            "the connection completed but the server did not accept its Finished"
        );
    }
}

pub fn established(data: &[u8]) {
    let Some((&b, rest)) = data.split_first() else {
        return;
    };
    let fix = fixture::get();
    let mut s = Scenario::established(&fix, Setup::from_byte(b));
    let mut sent = Vec::new();
    let mut failed = false;
    let mut closed = false;
    // Raw bytes put the record framing where the fuzzer chose: a record cut short waits for
    // the rest (RFC 8446 §5.1: the header's length rules), so what follows may never arrive.
    let mut raw = false;
    for c in chunks(rest) {
        match c.tag {
            tag::SIGN_OR_KEY_UPDATE => s.srv.key_update(false),
            tag::FINISH_OR_KEY_UPDATE_REQUESTED => s.srv.key_update(true),
            tag::CERT_OR_TICKET => s.send_ticket(c.body, b"lurk-fuzz ticket"),
            tag::CERT_REQUEST => {
                let cr = crate::server::Server::certificate_request(c.body);
                s.srv.send_record(ContentType::Handshake, &cr);
            }
            tag::RAW => {
                raw = true;
                s.srv.out.extend_from_slice(c.body)
            }
            // An inner content type of 0 is padding: the receiver takes the payload's last
            // non-zero byte as the type (RFC 8446 §5.4), so the chunk means nothing else.
            0 => continue,
            23 => {
                if !closed {
                    sent.extend_from_slice(c.body);
                }
                s.srv.send_record(ContentType::ApplicationData, c.body);
            }
            t => {
                // After close_notify, data is ignored (RFC 8446 §6.1).
                closed |= t == 21 && c.body.len() == 2 && c.body[1] == 0;
                s.srv.send_record(ContentType::from(t), c.body)
            }
        }
        if !deliver(&mut s, &fix) {
            failed = true;
            break;
        }
    }
    let mut got = vec![0u8; s.conn.plaintext_len()];
    let n = s.conn.read_plaintext(&mut got);
    got.truncate(n);
    assert!(
        sent.starts_with(&got),
        "delivered data the server did not send"
    );
    if !failed && !raw {
        assert_eq!(got.len(), sent.len(), "application data lost");
    }
}
