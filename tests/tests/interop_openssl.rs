//! `lurk-engine` + a real `lurk-cs` (SoftHSM token, token ephemerals by default) against
//! `openssl s_server` (OpenSSL 3.0): one test per row of the mode matrix of
//! /work/shared/interop/openssl-recipes.md, each checking both sides: the server's own
//! output (-trace / -msg / verify lines, printed by the server about what it received) and
//! the engine's (response body on stdout, one `--json` summary per connection on stderr,
//! with the LURK exchanges made).
//!
//! Sequences (docs/design.md §2): with CS-generated (EC)DHE or a CS-held PSK every connection runs
//! `c_init_client_hello → [c_client_hello] → c_server_hello → c_client_finished →
//! (c_register_tickets | c_post_hand_auth)*`; with `--ephemeral engine` and no PSK the engine
//! runs the key schedule itself and calls the CS only to sign (`c_init_client_finished`), or
//! not at all.
#![forbid(unsafe_code)]

use std::time::Duration;

use lurk_e2e::engine::{exchanges, field_bool, field_str, group, EngineRun, Output};
use lurk_e2e::lurk::Lurk;
use lurk_e2e::openssl::{certs, path_str, SServer, TIMEOUT};
use serde_json::Value;

const INIT: &str = "c_init_client_hello";
const HRR: &str = "c_client_hello";
const SH: &str = "c_server_hello";
const CF: &str = "c_client_finished";
const FLIGHT: &str = "c_server_flight";
const TICKETS: &str = "c_register_tickets";
const INIT_CF: &str = "c_init_client_finished";
const PHA: &str = "c_post_hand_auth";

// ---------------------------------------------------------------------------------------
// helpers

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// `openssl s_server -naccept N -cert NAME.pem -key NAME.key EXTRA…`.
fn server(naccept: u32, cert: &str, extra: &[&str]) -> SServer {
    let mut a = strs(&["-naccept", &naccept.to_string()]);
    a.extend(certs().cert_args(cert));
    a.extend(strs(extra));
    SServer::start(&a)
}

fn pki(file: &str) -> String {
    path_str(&certs().path(file))
}

/// Checks common to every summary: TLS 1.3, a TLS 1.3 suite, a handshake time.
#[track_caller]
fn check_common(out: &Output, s: &Value) {
    let v = field_str(s, "tls_version").unwrap_or_default();
    assert!(v.contains("1.3"), "tls_version {v:?}:\n{}", out.describe());
    let c = field_str(s, "cipher_suite").unwrap_or_default();
    assert!(
        c.starts_with("TLS_"),
        "cipher_suite {c:?}:\n{}",
        out.describe()
    );
    assert!(
        s.get("handshake_ms")
            .and_then(Value::as_f64)
            .is_some_and(|ms| ms >= 0.0),
        "handshake_ms missing:\n{}",
        out.describe()
    );
}

/// `exchanges` is `prefix` followed only by `c_register_tickets` (at least one if
/// `tickets`) and the `also` names.
#[track_caller]
fn assert_sequence(out: &Output, i: usize, prefix: &[&str], tickets: bool, also: &[&str]) {
    let ex = out.exchanges(i);
    assert!(
        ex.len() >= prefix.len() && ex[..prefix.len()] == *prefix,
        "connection {i}: LURK exchanges {ex:?} do not start with {prefix:?}:\n{}",
        out.describe()
    );
    let rest = &ex[prefix.len()..];
    assert!(
        rest.iter()
            .all(|e| e == TICKETS || also.contains(&e.as_str())),
        "connection {i}: unexpected exchanges after {prefix:?}: {ex:?}"
    );
    if tickets {
        assert!(
            rest.iter().any(|e| e == TICKETS),
            "connection {i}: no {TICKETS} in {ex:?}"
        );
    }
}

/// Full handshake with CS ephemerals: init, server hello, client finished, tickets.
#[track_caller]
fn assert_full_cs(out: &Output, i: usize) {
    assert_sequence(out, i, &[INIT, SH, CF], true, &[]);
}

/// The engine made c_server_flight (the CS offers it by default) instead of the standard pair:
/// s_server writes its ServerHello and flight together.
#[track_caller]
fn assert_server_flight(out: &Output, i: usize) {
    let made = out.exchanges_made(i);
    assert!(
        made.iter().any(|e| e == FLIGHT) && !made.iter().any(|e| e == SH),
        "connection {i}: {made:?}:\n{}",
        out.describe()
    );
}

#[track_caller]
fn assert_group(out: &Output, i: usize, want: &str) {
    assert_eq!(
        group(out.summary(i)).as_deref(),
        Some(want),
        "connection {i}: group:\n{}",
        out.describe()
    );
}

#[track_caller]
fn assert_mode(out: &Output, i: usize, want: &str) {
    assert_eq!(
        field_str(out.summary(i), "mode"),
        Some(want),
        "connection {i}: mode:\n{}",
        out.describe()
    );
}

#[track_caller]
fn assert_resumed(out: &Output, want: &[bool]) {
    out.assert_connections(want.len());
    let got: Vec<bool> = out
        .summaries
        .iter()
        .map(|s| field_bool(s, "resumed"))
        .collect();
    assert_eq!(got, want, "resumed per connection:\n{}", out.describe());
}

/// The s_server -www status page came through the engine.
#[track_caller]
fn assert_page(out: &Output, what: &str) {
    assert!(
        out.stdout.contains(what),
        "the page has no {what:?}:\n{}",
        out.describe()
    );
}

/// The server completed `n` handshakes and exited (`-naccept n`).
#[track_caller]
fn assert_server_done(srv: &mut SServer, n: u32) {
    srv.finish();
    srv.expect(&format!("{n} server accepts that finished"));
}

/// s_server -trace: the ServerHello key_share (the entry alone: 2 + 2 + key bytes).
fn sh_key_share(group: &str) -> &'static str {
    match group {
        "x25519" => "extension_type=key_share(51), length=36 NamedGroup: ecdh_x25519 (29)",
        "secp256r1" => "extension_type=key_share(51), length=69 NamedGroup: secp256r1 (P-256) (23)",
        "secp384r1" => {
            "extension_type=key_share(51), length=101 NamedGroup: secp384r1 (P-384) (24)"
        }
        _ => unreachable!(),
    }
}

/// s_server -trace: the ServerHello's pre_shared_key (selected identity 0).
const SH_PSK: &str = "extension_type=psk(41), length=2 0000 - 00 00";

/// An s_server line received from the peer (`<<<` of `-msg`) ending with `what`.
fn received_msg(srv: &SServer, what: &str) -> bool {
    srv.output()
        .lines()
        .any(|l| l.starts_with("<<<") && l.trim_end().ends_with(what))
}

// ---------------------------------------------------------------------------------------
// ECDHE groups

fn group_row(server_group: &str, engine_group: &str) {
    let lurk = Lurk::start();
    let mut srv = server(
        1,
        "server-ecdsa-p256",
        &["-groups", server_group, "-www", "-trace"],
    );
    let out = lurk.get(&srv, &["--groups", engine_group]);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_group(&out, 0, engine_group);
    assert_mode(&out, 0, "ecdhe");
    assert!(!field_bool(out.summary(0), "resumed"));
    assert_full_cs(&out, 0);
    assert_server_flight(&out, 0);
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    srv.expect(sh_key_share(engine_group));
}

#[test]
fn group_x25519() {
    group_row("X25519", "x25519");
}

#[test]
fn group_p256() {
    group_row("P-256", "secp256r1");
}

#[test]
fn group_p384() {
    group_row("P-384", "secp384r1");
}

// ---------------------------------------------------------------------------------------
// HelloRetryRequest

fn hrr_row(server_group: &str, engine_groups: &str, want: &str) {
    let lurk = Lurk::start();
    let mut srv = server(
        1,
        "server-ecdsa-p256",
        &["-groups", server_group, "-www", "-trace"],
    );
    let out = lurk.get(&srv, &["--groups", engine_groups]);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_group(&out, 0, want);
    assert_sequence(&out, 0, &[INIT, HRR, SH, CF], true, &[]);
    assert_server_flight(&out, 0);
    if let Some(h) = out.summary(0).get("hello_retry") {
        assert_eq!(h, &Value::Bool(true), "{}", out.describe());
    }
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    // The HRR names the group (key_share of length 2), the second ClientHello carries it.
    let hrr = match want {
        "secp256r1" => "extension_type=key_share(51), length=2 NamedGroup: secp256r1 (P-256) (23)",
        _ => "extension_type=key_share(51), length=2 NamedGroup: secp384r1 (P-384) (24)",
    };
    srv.expect(hrr);
    assert_eq!(srv.count("ClientHello, Length="), 2, "{}", srv.output());
    assert_eq!(srv.count("ServerHello, Length="), 2, "{}", srv.output());
    srv.expect(sh_key_share(want));
}

#[test]
fn hrr_p256() {
    hrr_row("P-256", "x25519,secp256r1", "secp256r1");
}

#[test]
fn hrr_p384() {
    hrr_row("P-384", "x25519,secp256r1,secp384r1", "secp384r1");
}

// ---------------------------------------------------------------------------------------
// Server certificate types

fn cert_row(cert: &str, extra: &[&str], sig_alg: &str) {
    let lurk = Lurk::start();
    let mut a = extra.to_vec();
    a.extend(["-www", "-trace"]);
    let mut srv = server(1, cert, &a);
    let out = lurk.get(&srv, &[]);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_full_cs(&out, 0);
    assert_server_flight(&out, 0);
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    srv.expect(&format!("Signature Algorithm: {sig_alg}"));
}

#[test]
fn cert_ecdsa_p256() {
    cert_row("server-ecdsa-p256", &[], "ecdsa_secp256r1_sha256 (0x0403)");
}

#[test]
fn cert_ecdsa_p384() {
    cert_row("server-ecdsa-p384", &[], "ecdsa_secp384r1_sha384 (0x0503)");
}

#[test]
fn cert_ed25519() {
    cert_row("server-ed25519", &[], "ed25519 (0x0807)");
}

#[test]
fn cert_rsa_pss_rsae() {
    cert_row("server-rsa", &[], "rsa_pss_rsae_sha256 (0x0804)");
}

#[test]
fn cert_rsa_pss_pss() {
    cert_row("server-rsapss", &[], "rsa_pss_pss_sha256 (0x0809)");
}

#[test]
fn cert_chain_with_intermediate() {
    let inter = pki("inter-ecdsa.pem");
    let lurk = Lurk::start();
    let mut a = strs(&["-naccept", "1"]);
    a.extend(certs().cert_args("server-chain"));
    a.extend(strs(&["-cert_chain", &inter, "-www", "-trace"]));
    let mut srv = SServer::start(&a);
    let out = lurk.get(&srv, &[]);
    out.assert_success().assert_connections(1);
    assert_full_cs(&out, 0);
    assert_server_flight(&out, 0);
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    // Leaf + intermediate in the server's Certificate (the engine trusts the root only).
    assert_eq!(srv.count("ASN.1Cert, length="), 2, "{}", srv.output());
}

// ---------------------------------------------------------------------------------------
// Client authentication in the handshake (keys in the CS token)

fn client_auth_row(key: &str, cn: &str, ephemeral_engine: bool) {
    let lurk = Lurk::start();
    let ca = pki("ca-ecdsa.pem");
    let mut srv = server(
        1,
        "server-ecdsa-p256",
        &[
            "-Verify",
            "1",
            "-CAfile",
            &ca,
            "-verify_return_error",
            "-www",
        ],
    );
    let mut args = vec!["--client-key", key];
    if ephemeral_engine {
        args.extend(["--ephemeral", "engine"]);
    }
    let out = lurk.get(&srv, &args);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert!(
        field_bool(out.summary(0), "client_authenticated"),
        "{}",
        out.describe()
    );
    if ephemeral_engine {
        // Only the signing key is protected (sequence C).
        assert_eq!(
            out.exchanges(0),
            vec![INIT_CF.to_string()],
            "{}",
            out.describe()
        );
    } else {
        assert_full_cs(&out, 0);
        assert_server_flight(&out, 0);
    }
    // The status page shows the certificate the server received.
    assert_page(&out, &format!("Subject: CN={cn}"));
    assert_server_done(&mut srv, 1);
    srv.expect(&format!("depth=0 CN = {cn}"));
}

#[test]
fn client_auth_ed25519() {
    client_auth_row("pki-ed25519", "test-client-ed25519", false);
}

#[test]
fn client_auth_ecdsa_p256() {
    client_auth_row("pki-ecdsa-p256", "test-client-ecdsa", false);
}

#[test]
fn client_auth_rsa() {
    client_auth_row("pki-rsa", "test-client-rsa", false);
}

#[test]
fn client_auth_ecdsa_p256_ephemeral_engine() {
    client_auth_row("pki-ecdsa-p256", "test-client-ecdsa", true);
}

// ---------------------------------------------------------------------------------------
// Post-handshake client authentication

fn pha_row(key: &str, cn: &str) {
    let lurk = Lurk::start();
    let ca = pki("ca-ecdsa.pem");
    let mut srv = server(1, "server-ecdsa-p256", &["-CAfile", &ca, "-msg"]);
    let mut eng = lurk.connect(&srv, &["--post-handshake-auth", "--client-key", key]);
    eng.send_line("hello-before-pha");
    srv.expect("hello-before-pha");
    assert!(
        !received_msg(&srv, "Certificate"),
        "no client certificate before the request"
    );
    srv.send_command("c");
    srv.expect("SSL_do_handshake -> 1");
    // The engine answers the CertificateRequest on its own: Certificate, CertificateVerify,
    // Finished under the application traffic key; the server verifies the chain…
    srv.expect(&format!("depth=0 CN = {cn}"));
    // …and the connection goes on both ways.
    eng.send_line("hello-after-pha");
    srv.expect("hello-after-pha");
    assert!(received_msg(&srv, "], Certificate"), "{}", srv.output());
    assert!(
        received_msg(&srv, "], CertificateVerify"),
        "{}",
        srv.output()
    );
    srv.send_command("server-after-pha");
    eng.expect_stdout("server-after-pha");
    let out = eng.finish();
    out.assert_success();
    // `connect` need not print summaries; if it does, the signature came from the CS.
    if let Some(sum) = out.summaries.first() {
        assert!(
            exchanges(sum).iter().any(|e| e == PHA),
            "{}",
            out.describe()
        );
        assert!(
            field_bool(sum, "client_authenticated"),
            "{}",
            out.describe()
        );
    }
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{}", srv.output());
    assert!(
        !srv.output().contains("alert"),
        "the server saw an alert:\n{}",
        srv.output()
    );
}

#[test]
fn post_handshake_auth_ecdsa_p256() {
    pha_row("pki-ecdsa-p256", "test-client-ecdsa");
}

#[test]
fn post_handshake_auth_rsa() {
    pha_row("pki-rsa", "test-client-rsa");
}

// ---------------------------------------------------------------------------------------
// Tickets and resumption

#[test]
fn resume_psk_dhe_ke() {
    let lurk = Lurk::start();
    let mut srv = server(2, "server-ecdsa-p256", &["-www", "-trace"]);
    let out = lurk.get(&srv, &["--resume", "1"]);
    out.assert_success();
    assert_resumed(&out, &[false, true]);
    for i in 0..2 {
        check_common(&out, out.summary(i));
        assert_full_cs(&out, i);
    }
    assert_mode(&out, 0, "ecdhe");
    assert_mode(&out, 1, "psk_ecdhe");
    assert!(
        group(out.summary(1)).is_some(),
        "psk_dhe_ke has a group:\n{}",
        out.describe()
    );
    assert_page(&out, "New, TLSv1.3");
    assert_page(&out, "Reused, TLSv1.3");
    assert_server_done(&mut srv, 2);
    // The second ServerHello selected the PSK and carries a key share.
    assert_eq!(srv.count(SH_PSK), 1, "{}", srv.output());
    assert_eq!(srv.count("ServerHello, Length="), 2);
}

#[test]
fn resume_psk_ke() {
    let lurk = Lurk::start();
    let mut srv = server(
        2,
        "server-ecdsa-p256",
        &["-allow_no_dhe_kex", "-groups", "X25519", "-www", "-trace"],
    );
    let out = lurk.get(
        &srv,
        &["--groups", "x25519", "--resume", "1", "--psk-ke", "ke"],
    );
    out.assert_success();
    assert_resumed(&out, &[false, true]);
    assert_mode(&out, 1, "psk");
    assert_eq!(
        group(out.summary(1)),
        None,
        "psk_ke has no group:\n{}",
        out.describe()
    );
    assert_sequence(&out, 1, &[INIT, SH, CF], false, &[]);
    assert_page(&out, "Reused, TLSv1.3");
    assert_server_done(&mut srv, 2);
    // The client offered psk_ke only; the resumed ServerHello has no key_share.
    srv.expect("psk_ke (0)");
    assert_eq!(srv.count("ServerHello, Length="), 2, "{}", srv.output());
    assert_eq!(srv.count(sh_key_share("x25519")), 1, "{}", srv.output());
    assert_eq!(srv.count(SH_PSK), 1, "{}", srv.output());
}

#[test]
fn resume_psk_ke_refused_by_default_server() {
    let lurk = Lurk::start();
    let mut srv = server(2, "server-ecdsa-p256", &["-www"]);
    let out = lurk.get(&srv, &["--resume", "1", "--psk-ke", "ke"]);
    out.assert_success();
    // OpenSSL without -allow_no_dhe_kex does not take psk_ke: a full handshake.
    assert_resumed(&out, &[false, false]);
    assert_mode(&out, 1, "ecdhe");
    assert_eq!(
        out.stdout.matches("New, TLSv1.3").count(),
        2,
        "{}",
        out.describe()
    );
    assert_server_done(&mut srv, 2);
}

#[test]
fn multiple_tickets_three_resumptions_in_a_row() {
    // The reference implementation crashed on the third resumption (consumed ticket).
    let lurk = Lurk::start();
    let mut srv = server(
        4,
        "server-ecdsa-p256",
        &["-num_tickets", "5", "-www", "-msg"],
    );
    let out = lurk.get(&srv, &["--resume", "3"]);
    out.assert_success();
    assert_resumed(&out, &[false, true, true, true]);
    for i in 0..4 {
        check_common(&out, out.summary(i));
        assert_full_cs(&out, i);
    }
    assert_eq!(
        out.stdout.matches("Reused, TLSv1.3").count(),
        3,
        "{}",
        out.describe()
    );
    assert_server_done(&mut srv, 4);
    // OpenSSL sends -num_tickets on a full handshake, one ticket on a resumption.
    assert_eq!(srv.count("], NewSessionTicket"), 5 + 3, "{}", srv.output());
    if let Some(n) = out
        .summary(0)
        .get("tickets_received")
        .and_then(Value::as_u64)
    {
        assert_eq!(n, 5, "{}", out.describe());
    }
}

#[test]
fn no_tickets() {
    let lurk = Lurk::start();
    let mut srv = server(1, "server-ecdsa-p256", &["-num_tickets", "0", "-www"]);
    let out = lurk.get(&srv, &[]);
    out.assert_success().assert_connections(1);
    // No ticket to register; at most the c_register_tickets that closes the CS session
    // (last_exchange, empty).
    let ex = out.exchanges(0);
    assert!(
        ex == strs(&[INIT, SH, CF]) || ex == strs(&[INIT, SH, CF, TICKETS]),
        "{}",
        out.describe()
    );
    if let Some(n) = out
        .summary(0)
        .get("tickets_received")
        .and_then(Value::as_u64)
    {
        assert_eq!(n, 0, "{}", out.describe());
    }
    assert_server_done(&mut srv, 1);
}

// ---------------------------------------------------------------------------------------
// External PSK (held by the CS)

fn external_psk_row(psk_ke: bool) {
    let c = certs();
    let lurk = Lurk::start();
    let mut a = strs(&["-naccept", "1", "-nocert"]);
    if psk_ke {
        a.push("-allow_no_dhe_kex".into());
    }
    a.extend(strs(&[
        "-psk_identity",
        &c.psk_identity,
        "-psk",
        &c.psk_key,
        "-ciphersuites",
        "TLS_AES_128_GCM_SHA256",
        "-www",
        "-trace",
    ]));
    let mut srv = SServer::start(&a);
    let mut args = vec!["--external-psk", c.psk_identity.as_str()];
    if psk_ke {
        args.extend(["--psk-ke", "ke"]);
    }
    let out = lurk.get(&srv, &args);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_eq!(
        field_str(out.summary(0), "cipher_suite"),
        Some("TLS_AES_128_GCM_SHA256")
    );
    assert_sequence(&out, 0, &[INIT, SH, CF], false, &[]);
    if psk_ke {
        assert_mode(&out, 0, "psk");
        assert_eq!(group(out.summary(0)), None, "{}", out.describe());
    } else {
        assert_mode(&out, 0, "psk_ecdhe");
    }
    assert_page(&out, "Reused, TLSv1.3, Cipher is TLS_AES_128_GCM_SHA256");
    assert_server_done(&mut srv, 1);
    assert_eq!(srv.count(SH_PSK), 1, "{}", srv.output());
    // No certificate from the server.
    assert_eq!(srv.count("ASN.1Cert"), 0);
}

#[test]
fn external_psk_psk_dhe_ke() {
    external_psk_row(false);
}

#[test]
fn external_psk_psk_ke() {
    external_psk_row(true);
}

// ---------------------------------------------------------------------------------------
// 0-RTT early data (plain mode: the test answers the GETs through the server's stdin)

/// Answers the `n`-th GET with a short HTTP/1.0 response, then lets the engine close; if it
/// does not (it reads until EOF), closes the connection from the server (`q`).
fn answer_get(srv: &mut SServer, n: usize, body: &str) {
    assert!(
        srv.wait_count("GET /", n, TIMEOUT),
        "no GET #{n}:\n{}",
        srv.output()
    );
    for l in [
        "HTTP/1.0 200 OK\r".to_string(),
        "Content-Type: text/plain\r".into(),
        format!("Content-Length: {}\r", body.len() + 1),
        "Connection: close\r".into(),
        "\r".into(),
        body.to_string(),
    ] {
        srv.send_command(&l);
    }
    if !srv.wait_count("CONNECTION CLOSED", n, Duration::from_secs(5)) {
        srv.send_command("q");
        assert!(
            srv.wait_count("CONNECTION CLOSED", n, TIMEOUT),
            "{}",
            srv.output()
        );
    }
}

#[test]
fn early_data_0rtt() {
    let lurk = Lurk::start();
    let dir = tempfile::tempdir().unwrap();
    let early = dir.path().join("early.txt");
    std::fs::write(&early, "EARLY-DATA-0RTT\n").unwrap();
    let mut srv = server(2, "server-ecdsa-p256", &["-early_data"]);
    let eng = lurk.spawn_get(&srv, &["--resume", "1", "--early-data", &path_str(&early)]);
    answer_get(&mut srv, 1, "first-body");
    srv.expect("Early data received:");
    srv.expect("EARLY-DATA-0RTT");
    answer_get(&mut srv, 2, "second-body");
    let out = eng.finish();
    out.assert_success();
    assert_resumed(&out, &[false, true]);
    assert!(!field_bool(out.summary(0), "early_data_accepted"));
    assert!(
        field_bool(out.summary(1), "early_data_accepted"),
        "{}",
        out.describe()
    );
    assert_sequence(&out, 1, &[INIT, SH, CF], false, &[]);
    assert_page(&out, "first-body");
    assert_page(&out, "second-body");
    // The early data came before the request on the resumed connection.
    let o = srv.output();
    let (ed, get2) = (
        o.find("EARLY-DATA-0RTT").unwrap(),
        o.rfind("GET /").unwrap(),
    );
    assert!(ed < get2, "{o}");
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{o}");
}

// ---------------------------------------------------------------------------------------
// Small records

#[test]
fn small_records_512() {
    let lurk = Lurk::start();
    let mut srv = server(1, "server-rsa", &["-max_send_frag", "512", "-www", "-msg"]);
    let out = lurk.get(&srv, &[]);
    out.assert_success().assert_connections(1);
    assert_full_cs(&out, 0);
    assert_server_flight(&out, 0);
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    // The server sent full 512-byte records (the RSA Certificate spans two of them).
    let full = srv.count(">>> TLS 1.2, RecordHeader [length 0005] 17 03 03 02 11");
    assert!(full >= 4, "{full} full records:\n{}", srv.output());
}

/// RFC 8449: the engine offers record_size_limit; OpenSSL 3.0 does not implement it, so it
/// ignores the extension and does not echo it, and the limit is not negotiated: the handshake
/// and full-size records go through unchanged.
#[test]
fn record_size_limit_offered() {
    let lurk = Lurk::start();
    let mut srv = server(1, "server-rsa", &["-www", "-trace"]);
    let out = lurk.get(&srv, &["--record-size-limit", "512"]);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_full_cs(&out, 0);
    assert_server_flight(&out, 0);
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    // The server saw the extension in the ClientHello (2-byte body: 0x0200).
    srv.expect("extension_type=UNKNOWN(28), length=2");
}

// ---------------------------------------------------------------------------------------
// KeyUpdate

#[test]
fn key_update_both_directions() {
    let lurk = Lurk::start();
    let mut srv = server(1, "server-ecdsa-p256", &["-msg"]);
    let mut eng = lurk.connect(&srv, &[]);
    eng.send_line("hello-from-engine");
    srv.expect("hello-from-engine");

    // Server: update_not_requested, then data.
    srv.send_command("k");
    srv.expect(">>> TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00");
    srv.send_command("server-after-k");
    eng.expect_stdout("server-after-k");

    // Server: update_requested; the engine answers with update_not_requested before its
    // next write.
    srv.send_command("K");
    srv.expect(">>> TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 01");
    srv.send_command("server-after-K");
    eng.expect_stdout("server-after-K");
    eng.send_line("data-after-keyupdate");
    srv.expect("data-after-keyupdate");
    srv.expect("<<< TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00");

    // Engine: update_requested; the server answers before its next write.
    eng.key_update(true);
    srv.expect("<<< TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 01");
    eng.send_line("engine-after-K");
    srv.expect("engine-after-K");
    srv.send_command("server-after-ku");
    eng.expect_stdout("server-after-ku");
    assert_eq!(
        srv.count(">>> TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00"),
        2,
        "the server's own k and its answer to the engine's K:\n{}",
        srv.output()
    );
    let out = eng.finish();
    out.assert_success();
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{}", srv.output());
    assert!(!srv.output().contains("alert"), "{}", srv.output());
}

// ---------------------------------------------------------------------------------------
// Engine-generated ephemerals

#[test]
fn ephemeral_engine_x25519_never_calls_the_cs() {
    let lurk = Lurk::start();
    let mut srv = server(
        1,
        "server-ecdsa-p256",
        &["-groups", "X25519", "-www", "-trace"],
    );
    let out = lurk.get(&srv, &["--ephemeral", "engine", "--groups", "x25519"]);
    out.assert_success().assert_connections(1);
    check_common(&out, out.summary(0));
    assert_group(&out, 0, "x25519");
    // Nothing to protect: the engine runs the key schedule (sequence D).
    assert!(out.exchanges(0).is_empty(), "{}", out.describe());
    assert_page(&out, "New, TLSv1.3");
    assert_server_done(&mut srv, 1);
    srv.expect(sh_key_share("x25519"));
}

#[test]
fn ephemeral_engine_hrr_p256() {
    let lurk = Lurk::start();
    let mut srv = server(
        1,
        "server-ecdsa-p256",
        &["-groups", "P-256", "-www", "-trace"],
    );
    let out = lurk.get(
        &srv,
        &["--ephemeral", "engine", "--groups", "x25519,secp256r1"],
    );
    out.assert_success().assert_connections(1);
    assert_group(&out, 0, "secp256r1");
    assert!(out.exchanges(0).is_empty(), "{}", out.describe());
    assert_server_done(&mut srv, 1);
    assert_eq!(srv.count("ClientHello, Length="), 2, "{}", srv.output());
}

#[test]
fn ephemeral_engine_post_handshake_auth() {
    let lurk = Lurk::start();
    let ca = pki("ca-ecdsa.pem");
    let mut srv = server(1, "server-ecdsa-p256", &["-CAfile", &ca, "-msg"]);
    let mut eng = lurk.connect(
        &srv,
        &[
            "--ephemeral",
            "engine",
            "--post-handshake-auth",
            "--client-key",
            "pki-ed25519",
        ],
    );
    eng.send_line("hello-before-pha");
    srv.expect("hello-before-pha");
    srv.send_command("c");
    srv.expect("depth=0 CN = test-client-ed25519");
    eng.send_line("hello-after-pha");
    srv.expect("hello-after-pha");
    eng.finish().assert_success();
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{}", srv.output());
}

// ---------------------------------------------------------------------------------------
// Errors

#[test]
fn untrusted_server_certificate() {
    let lurk = Lurk::start();
    let srv = server(1, "server-ecdsa-p256", &["-www"]);
    // Trust only the RSA root: the ECDSA chain does not verify.
    let mut args = lurk.cs_args();
    args.extend(strs(&["--ca", &pki("ca-rsa.pem")]));
    let out = EngineRun::get(&srv.url(), &args);
    out.assert_failure_naming(&["certificate"]);
    assert!(
        out.stdout.is_empty() || !out.stdout.contains("HTTP/1.0 200"),
        "{}",
        out.describe()
    );
    // The engine told the server why (an alert, not a silent close).
    srv.expect("alert");
}

#[test]
fn wrong_server_hostname() {
    let lurk = Lurk::start();
    // A valid chain for DNS:other.example, reached as localhost.
    let srv = server(1, "server-otherhost", &["-www"]);
    let out = lurk.get(&srv, &[]);
    out.assert_failure_naming(&["name", "host"]);
    assert!(!out.stdout.contains("HTTP/1.0 200"), "{}", out.describe());
    srv.expect("alert");
}

#[test]
fn cs_down_is_reported() {
    let lurk = Lurk::start();
    let args = lurk.engine_args();
    lurk.cs.kill();
    let srv = server(1, "server-ecdsa-p256", &["-www"]);
    let out = EngineRun::get(&srv.url(), &args);
    out.assert_failure_naming(&["CS unreachable"]);
    assert!(!out.stdout.contains("HTTP/1.0 200"), "{}", out.describe());
}

#[test]
fn summaries_are_one_json_object_per_connection() {
    // The --json contract the other tests rely on: every field present on every line.
    let lurk = Lurk::start();
    let mut srv = server(2, "server-ecdsa-p256", &["-www"]);
    let out = lurk.get(&srv, &["--resume", "1"]);
    out.assert_success().assert_connections(2);
    for s in &out.summaries {
        for k in [
            "tls_version",
            "cipher_suite",
            "group",
            "mode",
            "resumed",
            "early_data_accepted",
            "client_authenticated",
            "lurk_exchanges",
            "handshake_ms",
        ] {
            assert!(s.get(k).is_some(), "summary lacks {k:?}: {s}");
        }
        let _ = exchanges(s);
    }
    assert_server_done(&mut srv, 2);
}
