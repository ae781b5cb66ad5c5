//! `lurk-bench parse-cost`: the CPU time of the Crypto Service's largest requests, the ones
//! the caps of `lurk_proto::wire::limits` allow, beside ordinary ones. Each operation runs
//! in-process on one thread (memory ephemerals, so no token call) and is timed inside
//! `handle`: the time an async worker would be held if the request ran inline.

use std::time::Instant;

use lurk_cs::config::EphemeralBackendKind;
use lurk_cs::cs::Cs;
use lurk_proto::pb;
use lurk_proto::wire::limits::{
    MAX_CERTIFICATE_ENTRIES, MAX_CERTIFICATE_ENTRY_EXTENSIONS, MAX_CERTIFICATE_LEN,
    MAX_CLIENT_HELLO_LEN, MAX_EXTENSIONS, MAX_HANDSHAKE_LEN,
};
use lurk_proto::wire::{
    encode_handshake, encode_server_hello, CipherSuite, ClientHello, ClientHelloBuilder,
    HandshakeType, NamedGroup, SignatureScheme,
};

use crate::cs_inproc::{engine_client_hello, Fixture, ServerSim, ENGINE};
use crate::sys::{cpu_self, us, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Encoded extensions: type, u16 length, body.
fn ext_bytes(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, b) in exts {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

fn unknown(n: usize) -> Vec<(u16, Vec<u8>)> {
    (0..n).map(|i| (0x7000 + i as u16, Vec::new())).collect()
}

/// `raw` with `extra` appended to the extension block at `at`, which ends the message.
fn append_extensions(raw: &[u8], at: usize, extra: &[u8]) -> Vec<u8> {
    let mut list = raw[at + 2..].to_vec();
    list.extend_from_slice(extra);
    let mut body = raw[4..at].to_vec();
    body.extend_from_slice(&(list.len() as u16).to_be_bytes());
    body.extend_from_slice(&list);
    encode_handshake(HandshakeType::from(raw[0]), &body).expect("fits")
}

/// A ClientHello at every cap at once: 128 suites, 64 groups and schemes, 8 key shares
/// (one for the CS to fill), 32 ALPN names, 64 extensions, a 32 KiB body.
fn largest_client_hello() -> Vec<u8> {
    let suites: Vec<CipherSuite> = [CipherSuite::TlsAes128GcmSha256]
        .into_iter()
        .chain((1..128u16).map(|i| CipherSuite::from(0x2000 + i)))
        .collect();
    let groups: Vec<NamedGroup> = [NamedGroup::X25519]
        .into_iter()
        .chain((1..64u16).map(|i| NamedGroup::from(0x3000 + i)))
        .collect();
    let schemes: Vec<SignatureScheme> = [SignatureScheme::Ed25519]
        .into_iter()
        .chain((1..64u16).map(|i| SignatureScheme::from(0x0900 + i)))
        .collect();
    let alpn: Vec<Vec<u8>> = (0..32)
        .map(|i| format!("proto-{i:02}").into_bytes())
        .collect();
    let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&suites)
        .server_name("localhost")
        .supported_groups(&groups)
        .signature_algorithms(&schemes)
        .signature_algorithms_cert(&schemes)
        .key_share(NamedGroup::X25519, &[])
        .alpn_protocols(&alpn);
    for g in &groups[1..8] {
        b = b.key_share(*g, &[0x42; 32]);
    }
    let base = b.build().expect("a valid ClientHello");
    let ch = ClientHello::parse(&base).expect("parses");
    let have = ch.extensions.len();
    let at = ch.extensions_len_offset;
    let mut extra = unknown(MAX_EXTENSIONS - have - 1);
    let body_len = base.len() - 4 + ext_bytes(&extra).len() + 4;
    extra.push((21, vec![0; MAX_CLIENT_HELLO_LEN - body_len]));
    append_extensions(&base, at, &ext_bytes(&extra))
}

/// A message of type `typ` whose body is `prefix` then an extension block filled to a
/// 0xffff-byte body with `MAX_EXTENSIONS` extensions (the last one carrying the filler).
fn full_extensions_message(typ: HandshakeType, prefix: &[u8], first: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut exts = first.to_vec();
    exts.extend(unknown(MAX_EXTENSIONS - first.len() - 1));
    let used = prefix.len() + 2 + ext_bytes(&exts).len() + 4;
    exts.push((0x7fff, vec![0; MAX_HANDSHAKE_LEN - used]));
    let mut body = prefix.to_vec();
    let block = ext_bytes(&exts);
    body.extend_from_slice(&(block.len() as u16).to_be_bytes());
    body.extend_from_slice(&block);
    encode_handshake(typ, &body).expect("fits")
}

/// The largest server flight c_client_finished reads: EncryptedExtensions, CertificateRequest
/// and CertificateVerify at 64 KiB, a Certificate at 256 KiB (16 entries x 8 extensions),
/// and a Finished that does not verify (the refusal comes after every byte is parsed and
/// hashed, and leaves the session as it was, so that one session serves every iteration).
fn largest_flight() -> Vec<u8> {
    let ee = full_extensions_message(HandshakeType::EncryptedExtensions, &[], &[]);
    let sigalgs = (13u16, [vec![0, 2], vec![8, 7]].concat());
    let cr = full_extensions_message(HandshakeType::CertificateRequest, &[0], &[sigalgs]);
    let entry_exts = ext_bytes(&unknown(MAX_CERTIFICATE_ENTRY_EXTENSIONS));
    let per_entry = (MAX_CERTIFICATE_LEN - 4) / MAX_CERTIFICATE_ENTRIES;
    let der_len = per_entry - 3 - 2 - entry_exts.len();
    let mut list = Vec::new();
    for _ in 0..MAX_CERTIFICATE_ENTRIES {
        list.extend_from_slice(&(der_len as u32).to_be_bytes()[1..]);
        list.extend(std::iter::repeat_n(0x30, der_len));
        list.extend_from_slice(&(entry_exts.len() as u16).to_be_bytes());
        list.extend_from_slice(&entry_exts);
    }
    let mut body = vec![0];
    body.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
    body.extend_from_slice(&list);
    let cert = encode_handshake(HandshakeType::Certificate, &body).expect("fits");
    let mut cv = vec![8, 7];
    cv.extend_from_slice(&((MAX_HANDSHAKE_LEN - 4) as u16).to_be_bytes());
    cv.resize(MAX_HANDSHAKE_LEN, 1);
    let cv = encode_handshake(HandshakeType::CertificateVerify, &cv).expect("fits");
    let fin = encode_handshake(HandshakeType::Finished, &[0; 32]).expect("fits");
    [ee, cr, cert, cv, fin].concat()
}

/// A flight of about 64 KiB (the size above which a request leaves the async workers): a
/// full EncryptedExtensions and the real Certificate, CertificateVerify and (bad) Finished.
fn threshold_flight(real: &[u8]) -> Vec<u8> {
    let ee_len = 4 + usize::from(u16::from_be_bytes([real[2], real[3]]));
    let ee = full_extensions_message(HandshakeType::EncryptedExtensions, &[], &[]);
    [&ee[..], &real[ee_len..]].concat()
}

/// A session of `cs` in the handshake stage, and the server flight that answers it.
fn handshake_session(cs: &Cs, sim: &ServerSim) -> Result<(Vec<u8>, Vec<u8>), BoxError> {
    let r = lurk_cs::ops::c_init_client_hello::handle(
        cs,
        ENGINE,
        pb::CInitClientHelloRequest {
            client_hello: engine_client_hello(NamedGroup::X25519),
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![],
            secret_request: None,
        },
    )?;
    let (sh, flight) = sim.respond(&r.client_hello, &r.key_shares[0].key_exchange)?;
    lurk_cs::ops::c_server_hello::handle(
        cs,
        ENGINE,
        pb::CServerHelloRequest {
            session_id: r.session_id.clone(),
            server_hello: sh,
            ephemeral: None,
            secret_request: None,
        },
    )?;
    Ok((r.session_id, flight))
}

/// One measured row: what, request bytes, accepted or refused, wall time of `handle`, and
/// the process CPU time per call (None where untimed set-up runs between the calls).
struct Row {
    what: String,
    bytes: usize,
    outcome: String,
    lat: Lat,
    cpu: Option<f64>,
}

/// "accepted", or "refused" with the LURK status.
fn answer_of<T>(r: &Result<T, lurk_cs::error::ServiceError>) -> String {
    match r {
        Ok(_) => "accepted".into(),
        Err(e) => format!("refused ({})", e.lurk_status().name()),
    }
}

/// Times `n` calls of `f` (each returns the CS's answer), after 10 unmeasured ones.
/// The CPU figure is the process's CPU time over the `n` calls, divided by `n`: unlike the
/// wall time, it does not grow when other processes take the cores.
fn time<F: FnMut() -> String>(n: usize, mut f: F) -> (Lat, String, Option<f64>) {
    for _ in 0..10 {
        f();
    }
    let mut v = Vec::with_capacity(n);
    let mut answer = String::new();
    let cpu0 = cpu_self();
    for _ in 0..n {
        let t = Instant::now();
        answer = f();
        v.push(t.elapsed());
    }
    let cpu = us(cpu_self().saturating_sub(cpu0)) / n as f64;
    (Lat::of(v), answer, Some(cpu))
}

pub(crate) fn run(n: usize) -> Result<(), BoxError> {
    let fx = Fixture::new()?;
    let cs = fx.cs(EphemeralBackendKind::Memory, 100_000)?;
    let sim = ServerSim::new()?;
    let mut rows = Vec::new();

    for (what, ch) in [
        (
            "c_init_client_hello, engine ClientHello",
            engine_client_hello(NamedGroup::X25519),
        ),
        (
            "c_init_client_hello, ClientHello at every cap",
            largest_client_hello(),
        ),
    ] {
        let req = pb::CInitClientHelloRequest {
            client_hello: ch,
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![],
            secret_request: None,
        };
        let bytes = req.client_hello.len();
        let (lat, outcome, cpu) = time(n, || {
            answer_of(&lurk_cs::ops::c_init_client_hello::handle(
                &cs,
                ENGINE,
                req.clone(),
            ))
        });
        rows.push(Row {
            what: what.into(),
            bytes,
            outcome,
            lat,
            cpu,
        });
    }

    let (sid, normal_flight) = handshake_session(&cs, &sim)?;
    let mut bad_fin = normal_flight.clone();
    let last = bad_fin.len() - 1;
    bad_fin[last] ^= 1;
    for (what, flight) in [
        ("c_client_finished, real server flight", bad_fin.clone()),
        (
            "c_client_finished, 64 KiB flight",
            threshold_flight(&bad_fin),
        ),
        ("c_client_finished, flight at every cap", largest_flight()),
    ] {
        let req = pb::CClientFinishedRequest {
            session_id: sid.clone(),
            handshake_messages: flight,
            last_exchange: true,
            ..Default::default()
        };
        let bytes = req.handshake_messages.len();
        let (lat, outcome, cpu) = time(n, || {
            answer_of(&lurk_cs::ops::c_client_finished::handle(
                &cs,
                ENGINE,
                req.clone(),
            ))
        });
        rows.push(Row {
            what: format!("{what} (bad Finished)"),
            bytes,
            outcome,
            lat,
            cpu,
        });
    }

    // c_server_hello with a 64 KiB ServerHello: a fresh session each time (not timed).
    let sh = encode_server_hello(
        &[0x42; 32],
        &[1u8; 32],
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        &[9u8; 32],
    )?;
    let at = 4 + 2 + 32 + 1 + 32 + 2 + 1;
    let filler = MAX_HANDSHAKE_LEN - (sh.len() - 4) - 4 - 4 * (MAX_EXTENSIONS - 3);
    let mut extra = unknown(MAX_EXTENSIONS - 3);
    extra.push((0x7fff, vec![0; filler]));
    let big_sh = append_extensions(&sh, at, &ext_bytes(&extra));
    let mut v = Vec::with_capacity(n);
    let mut answer = String::new();
    let mut bytes = 0;
    for _ in 0..n {
        let r = lurk_cs::ops::c_init_client_hello::handle(
            &cs,
            ENGINE,
            pb::CInitClientHelloRequest {
                client_hello: engine_client_hello(NamedGroup::X25519),
                freshness: pb::Freshness::Sha256 as i32,
                psks: vec![],
                secret_request: None,
            },
        )?;
        let req = pb::CServerHelloRequest {
            session_id: r.session_id,
            server_hello: big_sh.clone(),
            ephemeral: None,
            secret_request: None,
        };
        bytes = req.server_hello.len();
        let t = Instant::now();
        answer = answer_of(&lurk_cs::ops::c_server_hello::handle(&cs, ENGINE, req));
        v.push(t.elapsed());
    }
    rows.push(Row {
        what: "c_server_hello, ServerHello at the 64 KiB cap".into(),
        bytes,
        outcome: answer,
        lat: Lat::of(v),
        cpu: None,
    });

    println!("| request | handshake bytes | CS answer | p50 µs | p99 µs | CPU µs/call |");
    println!("|---|---:|---|---:|---:|---:|");
    for r in rows {
        let cpu = r.cpu.map_or_else(|| "–".to_owned(), |c| format!("{c:.0}"));
        println!(
            "| {} | {} | {} | {:.0} | {:.0} | {cpu} |",
            r.what,
            r.bytes,
            r.outcome,
            us(r.lat.p50),
            us(r.lat.p99)
        );
    }
    Ok(())
}
