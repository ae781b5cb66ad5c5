//! `lurk-engine` + a real `lurk-cs` (SoftHSM token) against a third, strict TLS 1.3 server:
//! tlslite-ng (`tests/tlslite_server.py`). tlslite-ng checks message order and extension rules,
//! and after its HelloRetryRequest (always with a cookie) that the second ClientHello is the
//! first one with only the changes RFC 8446 §4.1.2 allows: an engine that narrowed
//! cipher_suites got "illegal_parameter: Old Client Hello does not match the updated Client
//! Hello". Each test checks both sides: what the server saw (its `key=value` lines) and the
//! engine's `--json` summary with the LURK exchanges made.
#![forbid(unsafe_code)]

use lurk_e2e::engine::{field_bool, field_str, group, EngineRun, Output};
use lurk_e2e::fact_server::FactServer;
use lurk_e2e::lurk::Lurk;
use lurk_e2e::openssl::{certs, path_str};
use lurk_e2e::tlslite;

const INIT: &str = "c_init_client_hello";
const HRR: &str = "c_client_hello";
const SH: &str = "c_server_hello";
const CF: &str = "c_client_finished";
const PHA: &str = "c_post_hand_auth";

/// `--cert NAME.pem --key NAME.key --naccept N EXTRA…`.
fn server(cert: &str, naccept: usize, extra: &[&str]) -> FactServer {
    let c = certs();
    let mut a = vec![
        "--cert".to_owned(),
        path_str(&c.pem(cert)),
        "--key".to_owned(),
        path_str(&c.key(cert)),
        "--naccept".to_owned(),
        naccept.to_string(),
    ];
    a.extend(extra.iter().map(|s| s.to_string()));
    tlslite::start(&a)
}

/// `lurk-engine get URL --json` with the CS and trust options and `extra`.
fn get(lurk: &Lurk, srv: &FactServer, extra: &[&str]) -> Output {
    let mut a = lurk.engine_args();
    a.extend(extra.iter().map(|s| s.to_string()));
    EngineRun::get(&srv.url(), &a)
}

/// The engine succeeded with `n` connections and the server answered them all.
#[track_caller]
fn assert_ok(out: &Output, srv: &FactServer, n: usize) {
    out.assert_success().assert_connections(n);
    for i in 0..n {
        assert_eq!(srv.fact(i, n, "version"), "TLS 1.3");
        assert!(
            out.stdout.contains("request=GET / HTTP/1.0"),
            "the server's answer came through:\n{}",
            out.describe()
        );
    }
}

#[track_caller]
fn assert_exchanges_start(out: &Output, i: usize, prefix: &[&str]) {
    let ex = out.exchanges(i);
    assert!(
        ex.len() >= prefix.len() && ex[..prefix.len()] == *prefix,
        "connection {i}: LURK exchanges {ex:?} do not start with {prefix:?}:\n{}",
        out.describe()
    );
}

/// The DER of a test PKI certificate, hex.
fn cert_der_hex(name: &str) -> String {
    let pem = std::fs::read(certs().pem(name)).unwrap();
    let der = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .expect("a certificate")
        .unwrap();
    hex::encode(der.as_ref())
}

// ---------------------------------------------------------------------------------------
// HelloRetryRequest

/// The server takes only `server_group`: the engine's x25519 share gets an HRR (group +
/// cookie); the second ClientHello passes tlslite-ng's comparison with the first.
fn hrr_row(server_group: &str, engine_extra: &[&str], cs_exchanges: bool) {
    let lurk = Lurk::start();
    let srv = server("server-ecdsa-p256", 1, &["--groups", server_group]);
    let out = get(&lurk, &srv, engine_extra);
    assert_ok(&out, &srv, 1);
    assert_eq!(srv.fact(0, 1, "hrr"), "yes");
    assert_eq!(srv.fact(0, 1, "group"), server_group);
    assert!(
        field_bool(out.summary(0), "hello_retry"),
        "{}",
        out.describe()
    );
    assert_eq!(
        group(out.summary(0)).as_deref(),
        Some(server_group),
        "{}",
        out.describe()
    );
    if cs_exchanges {
        assert_exchanges_start(&out, 0, &[INIT, HRR, SH, CF]);
    } else {
        assert!(out.exchanges(0).is_empty(), "{}", out.describe());
    }
}

#[test]
fn tlslite_hrr_p256() {
    hrr_row("secp256r1", &[], true);
}

#[test]
fn tlslite_hrr_p384_all_suites_offered() {
    // The HRR's suite is one of three offered: the second ClientHello keeps all three.
    hrr_row(
        "secp384r1",
        &[
            "--ciphersuites",
            "TLS_AES_128_GCM_SHA256,TLS_CHACHA20_POLY1305_SHA256,TLS_AES_256_GCM_SHA384",
        ],
        true,
    );
}

#[test]
fn tlslite_hrr_p256_ephemeral_engine() {
    // Sequence D: the engine makes the second ClientHello itself.
    hrr_row("secp256r1", &["--ephemeral", "engine"], false);
}

// ---------------------------------------------------------------------------------------
// Resumption

fn resumption_row(server_groups: &str, hrr: bool) {
    let lurk = Lurk::start();
    let srv = server("server-rsa", 2, &["--groups", server_groups]);
    let out = get(&lurk, &srv, &["--resume", "1"]);
    assert_ok(&out, &srv, 2);
    assert_eq!(srv.fact(0, 2, "psk"), "none");
    assert_eq!(srv.fact(1, 2, "psk"), "resumption", "{}", srv.output());
    let want_hrr = if hrr { "yes" } else { "no" };
    for i in 0..2 {
        assert_eq!(srv.fact(i, 2, "hrr"), want_hrr, "connection {i}");
        assert_eq!(
            field_bool(out.summary(i), "hello_retry"),
            hrr,
            "{}",
            out.describe()
        );
    }
    assert!(!field_bool(out.summary(0), "resumed"));
    assert!(field_bool(out.summary(1), "resumed"), "{}", out.describe());
    assert_eq!(field_str(out.summary(1), "mode"), Some("psk_ecdhe"));
    // The resumption PSK stays in the CS: binders (twice with an HRR) and key schedule there.
    let first = if hrr {
        vec![INIT, HRR, SH, CF]
    } else {
        vec![INIT, SH, CF]
    };
    assert_exchanges_start(&out, 1, &first);
}

#[test]
fn tlslite_resumption() {
    resumption_row("x25519,secp256r1", false);
}

#[test]
fn tlslite_resumption_with_hrr() {
    // The second connection offers the ticket with an x25519 share: HRR to P-256, and the
    // binder of the second ClientHello covers message_hash + HRR (RFC 8446 §4.2.11.2).
    resumption_row("secp256r1", true);
}

// ---------------------------------------------------------------------------------------
// External PSK

fn external_psk_row(server_groups: &str, hrr: bool) {
    let c = certs();
    let lurk = Lurk::start();
    let srv = server(
        "server-ecdsa-p256",
        1,
        &[
            "--groups",
            server_groups,
            "--psk-identity",
            &c.psk_identity,
            "--psk-hex",
            &c.psk_key,
        ],
    );
    let out = get(&lurk, &srv, &["--external-psk", &c.psk_identity]);
    assert_ok(&out, &srv, 1);
    assert_eq!(srv.fact(0, 1, "psk"), "external");
    assert_eq!(srv.fact(0, 1, "hrr"), if hrr { "yes" } else { "no" });
    assert!(
        field_bool(out.summary(0), "external_psk"),
        "{}",
        out.describe()
    );
    assert_eq!(field_bool(out.summary(0), "hello_retry"), hrr);
    assert_eq!(field_str(out.summary(0), "mode"), Some("psk_ecdhe"));
}

#[test]
fn tlslite_external_psk() {
    external_psk_row("x25519", false);
}

#[test]
fn tlslite_external_psk_with_hrr() {
    external_psk_row("secp256r1", true);
}

// ---------------------------------------------------------------------------------------
// Client authentication

#[test]
fn tlslite_client_auth() {
    let lurk = Lurk::start();
    let srv = server("server-ecdsa-p256", 1, &["--client-auth"]);
    let out = get(&lurk, &srv, &["--client-key", "pki-ecdsa-p256"]);
    assert_ok(&out, &srv, 1);
    // tlslite-ng verified the CertificateVerify the CS signed, over this certificate.
    assert_eq!(
        srv.fact(0, 1, "client_cert"),
        cert_der_hex("client-ecdsa-p256")
    );
    assert!(field_bool(out.summary(0), "client_authenticated"));
}

#[test]
fn tlslite_post_handshake_auth() {
    let lurk = Lurk::start();
    let srv = server("server-rsa", 1, &["--pha"]);
    let out = get(
        &lurk,
        &srv,
        &["--post-handshake-auth", "--client-key", "pki-rsa"],
    );
    assert_ok(&out, &srv, 1);
    assert_eq!(srv.fact(0, 1, "client_cert"), "none");
    assert_eq!(srv.fact(0, 1, "pha_cert"), cert_der_hex("client-rsa"));
    assert!(
        out.exchanges(0).iter().any(|e| e == PHA),
        "{}",
        out.describe()
    );
}
