//! Seed inputs of the connection and CS targets: valid traffic in each set-up, and the
//! requests the engine makes in a valid connection (session_id emptied: the fix-up names
//! the live session).

use std::cell::RefCell;
use std::path::Path;

use lurk_engine::cs_client::CsCall;
use lurk_engine::internals::record::encode_plaintext;
use lurk_proto::wire::{encode_server_hello, CipherSuite, ContentType, NamedGroup};
use prost::Message;

use crate::conn::{encode_chunks, tag};
use crate::csops::Op;
use crate::fixture;
use crate::scenario::{Flow, Scenario, Setup};
use crate::server::Server;

fn write(dir: &Path, target: &str, seeds: &[Vec<u8>]) -> std::io::Result<()> {
    let d = dir.join(target);
    std::fs::create_dir_all(&d)?;
    for (i, s) in seeds.iter().enumerate() {
        std::fs::write(d.join(format!("{i:03}")), s)?;
    }
    Ok(())
}

fn with_setup(b: u8, rest: &[u8]) -> Vec<u8> {
    [&[b][..], rest].concat()
}

/// The engine's request for `op` in a valid connection, encoded, session_id emptied.
fn captured(op: Op, b: u8) -> Option<Vec<u8>> {
    let fix = fixture::get();
    let mut s = Scenario::new(&fix, op.setup(b));
    let got = RefCell::new(None);
    let mut hook = |_: &fixture::Fixture, _: &mut Scenario, call: &CsCall| {
        if call.exchange() != op.exchange() || got.borrow().is_some() {
            return Flow::Continue;
        }
        let bytes = match call {
            CsCall::InitClientHello(r) => r.encode_to_vec(),
            CsCall::ClientHello(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
            CsCall::ServerHello(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
            CsCall::ClientFinished(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
            CsCall::ServerFlight(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
            CsCall::InitClientFinished(r) => r.encode_to_vec(),
            CsCall::PostHandAuth(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
            CsCall::RegisterTickets(r) => {
                let mut r = r.clone();
                r.session_id.clear();
                r.encode_to_vec()
            }
        };
        *got.borrow_mut() = Some(bytes);
        Flow::Continue
    };
    s.pump(&fix, &mut hook).ok()?;
    if got.borrow().is_none() {
        match op {
            Op::RegisterTickets => s.send_ticket(&[1, 2, 3, 4], b"lurk-fuzz ticket"),
            Op::PostHandAuth => {
                let cr = Server::certificate_request(&[7; 8]);
                s.srv.send_record(ContentType::Handshake, &cr);
            }
            _ => {}
        }
        let out = s.srv.take_out();
        s.conn.read_tls(&out);
        s.conn.process_new_packets().ok()?;
        s.pump(&fix, &mut hook).ok()?;
    }
    let seed = got.into_inner();
    seed.map(|r| with_setup(op.setup(b).to_byte(), &r))
}

/// Set-up bytes worth a seed each: sequence A, D, middlebox, client key with a
/// CertificateRequest, HelloRetryRequest, SHA-384, the external PSK offered, a ticket
/// offered (sequences A and D).
const SETUPS: [u8; 11] = [0, 1, 2, 4 | 16, 1 | 4 | 16, 8, 32, 64, 64 | 8, 128, 128 | 1];

pub fn write_seeds(dir: &Path) -> std::io::Result<()> {
    // conn_server_hello: a ServerHello (x25519), a HelloRetryRequest (P-256).
    let sh = encode_server_hello(
        &[0x5a; 32],
        &[],
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        &[9; 32],
    )
    .expect("ServerHello");
    let mut hrr = sh.clone();
    hrr[6..38].copy_from_slice(&lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM);
    let mut seeds = Vec::new();
    for b in [0u8, 1] {
        for m in [&sh, &hrr] {
            seeds.push(with_setup(
                b,
                &encode_plaintext(ContentType::Handshake, m, 0x0303),
            ));
        }
    }
    write(dir, "conn_server_hello", &seeds)?;

    // conn_server_flight: the valid flight, in chunks.
    let ee = Server::encrypted_extensions();
    let cr = Server::certificate_request(&[]);
    let mut seeds = Vec::new();
    for b in SETUPS {
        let mut c: Vec<(u8, &[u8])> = vec![(22, &ee)];
        if Setup::from_byte(b).server.cert_request {
            c.push((22, &cr));
        }
        c.extend([
            (tag::CERT_OR_TICKET, &[][..]),
            (tag::SIGN_OR_KEY_UPDATE, &[][..]),
            (tag::FINISH_OR_KEY_UPDATE_REQUESTED, &[][..]),
        ]);
        seeds.push(with_setup(b, &encode_chunks(&c)));
    }
    write(dir, "conn_server_flight", &seeds)?;

    // conn_established: data, tickets, key updates, a post-handshake CertificateRequest,
    // close_notify.
    let mut seeds = Vec::new();
    for b in SETUPS {
        seeds.push(with_setup(
            b,
            &encode_chunks(&[
                (23, b"hello"),
                (tag::CERT_OR_TICKET, &[1, 2, 3]),
                (tag::SIGN_OR_KEY_UPDATE, &[]),
                (23, b"after a key update"),
                (tag::FINISH_OR_KEY_UPDATE_REQUESTED, &[]),
                (tag::CERT_REQUEST, &[4; 8]),
                (21, &[1, 0]),
            ]),
        ));
    }
    write(dir, "conn_established", &seeds)?;

    for (target, op) in OPS {
        let seeds: Vec<Vec<u8>> = SETUPS.iter().filter_map(|b| captured(*op, *b)).collect();
        assert!(!seeds.is_empty(), "no seed for {target}");
        write(dir, target, &seeds)?;
    }
    write(
        dir,
        "cs_capabilities",
        &[vec![0], [&[1][..], b"engine-other"].concat()],
    )?;
    Ok(())
}

pub const OPS: &[(&str, Op)] = &[
    ("cs_init_client_hello", Op::InitClientHello),
    ("cs_client_hello", Op::ClientHello),
    ("cs_server_hello", Op::ServerHello),
    ("cs_client_finished", Op::ClientFinished),
    ("cs_init_client_finished", Op::InitClientFinished),
    ("cs_post_hand_auth", Op::PostHandAuth),
    ("cs_register_tickets", Op::RegisterTickets),
];
