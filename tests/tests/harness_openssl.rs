//! Self-tests of the interop harness, with `openssl s_client` in the engine's place: they
//! prove that `SServer` starts, is ready when it says so, takes stdin commands, and that the
//! evidence the engine tests look for (recipes: /work/shared/interop/openssl-recipes.md)
//! really shows up.
#![forbid(unsafe_code)]

use std::net::TcpListener;
use std::time::Duration;

use lurk_e2e::openssl::{
    certs, contains_norm, path_str, s_client, s_client_args, SClient, SServer, StartError, TIMEOUT,
};

const GET: &[u8] = b"GET / HTTP/1.0\r\n\r\n";

fn args(parts: &[&[String]]) -> Vec<String> {
    parts.iter().flat_map(|p| p.iter().cloned()).collect()
}

fn strs(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

#[track_caller]
fn assert_has(out: &str, what: &str) {
    assert!(contains_norm(out, what), "no {what:?} in:\n{out}");
}

#[test]
fn certs_fixture_is_complete_and_shared() {
    let c = certs();
    assert!(std::ptr::eq(c, certs()), "one PKI per process");
    for f in [
        "ca-all.pem",
        "ca-ecdsa.pem",
        "ca-rsa.pem",
        "inter-ecdsa.pem",
        "server-chain-full.pem",
        "psk.txt",
    ] {
        c.path(f);
    }
    for n in [
        "server-ecdsa-p256",
        "server-ecdsa-p384",
        "server-ed25519",
        "server-rsa",
        "server-rsapss",
        "server-chain",
        "server-otherhost",
        "client-ecdsa-p256",
        "client-rsa",
        "client-ed25519",
    ] {
        c.pem(n);
        let key = std::fs::read_to_string(c.key(n)).unwrap();
        assert!(
            key.starts_with("-----BEGIN PRIVATE KEY-----"),
            "{n}.key is not PKCS#8 PEM"
        );
    }
    assert!(!c.psk_identity.is_empty());
    assert_eq!(c.psk_key.len(), 64, "32-byte PSK in hex");
    assert!(hex::decode(&c.psk_key).is_ok());
    let f = std::fs::read_to_string(c.psk_key_file()).unwrap();
    assert_eq!(f.trim(), c.psk_key);
}

#[test]
fn make_certs_works_from_any_cwd() {
    // Relative output dir, run from another directory.
    let tmp = tempfile::tempdir().unwrap();
    let out = std::process::Command::new("bash")
        .arg(lurk_e2e::openssl::make_certs_script())
        .arg("rel/certs")
        .current_dir(tmp.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(tmp.path().join("rel/certs/server-otherhost.pem").exists());
    assert!(tmp.path().join("rel/certs/ca-all.pem").exists());
}

#[test]
fn sserver_reports_a_taken_port() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let c = certs();
    let a = args(&[
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-naccept", "1", "-www"]),
    ]);
    match SServer::try_start_on(port, &a) {
        Err(StartError::AddrInUse(out)) => assert!(out.contains("Address already in use")),
        Err(StartError::Failed(out)) => panic!("expected AddrInUse, got:\n{out}"),
        Ok(_) => panic!("s_server started on a taken port"),
    }
    // Bad arguments are a failure, not a port problem.
    match SServer::try_start_on(port + 1, &["-no-such-option"]) {
        Err(StartError::Failed(_)) => {}
        Err(StartError::AddrInUse(out)) => panic!("not a port problem:\n{out}"),
        Ok(_) => panic!("s_server started with a bad option"),
    }
}

#[test]
fn plain_x25519_www() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1", "-groups", "X25519"]),
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-www"]),
    ]));
    assert!(srv.port() >= 20000 && srv.port() < 32000);
    let (st, out) = s_client(
        &args(&[
            &s_client_args(&srv),
            &strs(&["-groups", "X25519", "-ign_eof"]),
        ]),
        GET,
    );
    assert!(st.success(), "{out}");
    assert_has(&out, "Server Temp Key: X25519");
    assert_has(&out, "Verify return code: 0 (ok)");
    assert_has(&out, "New, TLSv1.3");
    // The -www page (what the engine's `get` prints).
    assert_has(&out, "HTTP/1.0 200 ok");
    srv.finish();
    srv.expect("1 server accepts that finished");
}

#[test]
fn resumption_www_and_trace_evidence() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "2"]),
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-www", "-trace"]),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let sess = path_str(&dir.path().join("s.sess"));
    let (st, out1) = s_client(
        &args(&[
            &s_client_args(&srv),
            &strs(&["-sess_out", &sess, "-ign_eof"]),
        ]),
        GET,
    );
    assert!(st.success(), "{out1}");
    assert_has(&out1, "New, TLSv1.3");
    let (st, out2) = s_client(
        &args(&[
            &s_client_args(&srv),
            &strs(&["-sess_in", &sess, "-ign_eof"]),
        ]),
        GET,
    );
    assert!(st.success(), "{out2}");
    assert_has(&out2, "Reused, TLSv1.3");
    let server_out = srv.finish();
    // Two ClientHellos (with key shares), two ServerHellos (both with a key share: psk_dhe_ke).
    assert_eq!(srv.count("ServerHello, Length="), 2, "{server_out}");
    assert_eq!(srv.count("extension_type=key_share(51)"), 4, "{server_out}");
    // The second ServerHello selects the PSK (identity index: length 2).
    assert_eq!(
        srv.count("extension_type=psk(41), length=2 0000 - 00 00"),
        1,
        "{server_out}"
    );
}

#[test]
fn hello_retry_request_seen_by_the_server() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1", "-groups", "P-256"]),
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-www", "-msg"]),
    ]));
    let (st, out) = s_client(
        &args(&[
            &s_client_args(&srv),
            &strs(&["-groups", "X25519:P-256", "-ign_eof"]),
        ]),
        GET,
    );
    assert!(st.success(), "{out}");
    assert_has(&out, "Server Temp Key: ECDH, prime256v1");
    let server_out = srv.finish();
    assert_eq!(srv.count("], ClientHello"), 2, "{server_out}");
    assert_eq!(srv.count("], ServerHello"), 2, "{server_out}");
}

#[test]
fn client_auth_www_evidence() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1", "-Verify", "1", "-CAfile"]),
        &[path_str(&c.pem("ca-ecdsa"))],
        &strs(&["-verify_return_error"]),
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-www"]),
    ]));
    let (st, out) = s_client(
        &args(&[
            &s_client_args(&srv),
            &c.cert_args("client-rsa"),
            &strs(&["-ign_eof"]),
        ]),
        GET,
    );
    assert!(st.success(), "{out}");
    assert_has(&out, "Acceptable client certificate CA names");
    // The -www page shows the client certificate.
    assert_has(&out, "Subject: CN=test-client-rsa");
    srv.finish();
    srv.expect("depth=0 CN = test-client-rsa");
}

#[test]
fn small_records_evidence() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1", "-max_send_frag", "512"]),
        &c.cert_args("server-rsa"),
        &strs(&["-www", "-msg"]),
    ]));
    let (st, out) = s_client(&args(&[&s_client_args(&srv), &strs(&["-ign_eof"])]), GET);
    assert!(st.success(), "{out}");
    let server_out = srv.finish();
    // Full-size (512 + type + tag) encrypted records sent by the server.
    let full = srv.count(">>> TLS 1.2, RecordHeader [length 0005] 17 03 03 02 11");
    assert!(full >= 4, "{full} full 512-byte records:\n{server_out}");
}

#[test]
fn early_data_plain_mode_with_stdin_kept_open() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "2", "-early_data"]),
        &c.cert_args("server-ecdsa-p256"),
    ]));
    let dir = tempfile::tempdir().unwrap();
    let sess = path_str(&dir.path().join("e.sess"));
    let early = dir.path().join("early.txt");
    std::fs::write(&early, "EARLY-DATA-0RTT\n").unwrap();

    let mut c1 = SClient::spawn(&args(&[&s_client_args(&srv), &strs(&["-sess_out", &sess])]));
    // Two tickets (the session file holds the last one), both allowing early data.
    assert!(
        c1.stdout.wait_count("Max Early Data: 16384", 2, TIMEOUT),
        "{}",
        c1.output()
    );
    c1.write_line("first");
    srv.expect("first");
    c1.close_stdin();
    assert!(c1.wait_exit(TIMEOUT).is_some());

    let mut c2 = SClient::spawn(&args(&[
        &s_client_args(&srv),
        &strs(&["-sess_in", &sess, "-early_data", &path_str(&early)]),
    ]));
    assert!(
        c2.stdout.wait_for("Early data was accepted", TIMEOUT),
        "{}",
        c2.output()
    );
    srv.expect("Early data received:");
    srv.expect("EARLY-DATA-0RTT");
    c2.write_line("after-0rtt");
    srv.expect("after-0rtt");
    // The server writes its stdin lines to the client.
    srv.send_command("from-server");
    assert!(
        c2.stdout.wait_for("from-server", TIMEOUT),
        "{}",
        c2.output()
    );
    assert_has(&c2.output(), "Reused, TLSv1.3");
    c2.close_stdin();
    assert!(c2.wait_exit(TIMEOUT).is_some());
    assert!(
        srv.wait_exit(TIMEOUT).is_some(),
        "-naccept 2 server should exit:\n{}",
        srv.output()
    );
}

#[test]
fn key_update_commands_both_ways() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1"]),
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-msg"]),
    ]));
    let mut cl = SClient::spawn(&args(&[&s_client_args(&srv), &strs(&["-msg"])]));
    srv.expect("CIPHER is");
    let t = TIMEOUT;
    let client_has = |cl: &lurk_e2e::process::Proc, what: &str| {
        let needle = lurk_e2e::openssl::normalize_ws(what);
        assert!(
            cl.wait_output(t, |o| contains_norm(o, &needle)),
            "s_client output has no {what:?}:\n{}",
            cl.output()
        );
    };
    srv.send_command("k");
    client_has(
        &cl,
        "<<< TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00",
    );
    srv.send_command("K");
    client_has(
        &cl,
        "<<< TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 01",
    );
    cl.write_line("data-after-keyupdate");
    srv.expect("data-after-keyupdate");
    // The client answered the request before writing.
    client_has(
        &cl,
        ">>> TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00",
    );
    cl.write_line("K");
    srv.expect("<<< TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 01");
    srv.send_command("server-after-ku");
    client_has(&cl, "server-after-ku");
    srv.expect(">>> TLS 1.3, Handshake [length 0005], KeyUpdate 18 00 00 01 00");
    cl.close_stdin();
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{}", srv.output());
}

#[test]
fn post_handshake_auth_command() {
    let c = certs();
    let mut srv = SServer::start(&args(&[
        &strs(&["-naccept", "1", "-CAfile"]),
        &[path_str(&c.pem("ca-ecdsa"))],
        &c.cert_args("server-ecdsa-p256"),
        &strs(&["-msg"]),
    ]));
    let mut cl = SClient::spawn(&args(&[
        &s_client_args(&srv),
        &strs(&["-enable_pha", "-msg"]),
        &c.cert_args("client-ecdsa-p256"),
    ]));
    srv.expect("CIPHER is");
    srv.send_command("c");
    srv.expect("SSL_do_handshake -> 1");
    srv.expect("depth=0 CN = test-client-ecdsa");
    cl.write_line("hello-after-pha");
    srv.expect("hello-after-pha");
    assert!(
        cl.wait_output(Duration::from_secs(5), |o| o
            .contains("], CertificateVerify")),
        "{}",
        cl.output()
    );
    cl.close_stdin();
    assert!(srv.wait_exit(TIMEOUT).is_some(), "{}", srv.output());
}
