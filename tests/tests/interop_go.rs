//! `lurk-engine` + a real `lurk-cs` (SoftHSM token) against Go's crypto/tls server
//! (`tests/go_tls_server/main.go`) in the HelloRetryRequest cases. Go's server compares the
//! second ClientHello with the first: an engine that narrowed cipher_suites after the HRR got
//! "tls: client illegally modified second ClientHello" (illegal_parameter).
#![forbid(unsafe_code)]

use lurk_e2e::engine::{field_bool, group, EngineRun, Output};
use lurk_e2e::fact_server::FactServer;
use lurk_e2e::go_tls;
use lurk_e2e::lurk::Lurk;
use lurk_e2e::openssl::{certs, path_str};

/// The Go server taking only `curve` (Go's name), `naccept` connections.
fn server(curve: &str, naccept: usize) -> FactServer {
    let c = certs();
    let n = naccept.to_string();
    go_tls::start(&[
        "-cert",
        &path_str(&c.pem("server-ecdsa-p256")),
        "-key",
        &path_str(&c.key("server-ecdsa-p256")),
        "-curves",
        curve,
        "-naccept",
        &n,
    ])
}

fn get(lurk: &Lurk, srv: &FactServer, extra: &[&str]) -> Output {
    let mut a = lurk.engine_args();
    a.extend(extra.iter().map(|s| s.to_string()));
    EngineRun::get(&srv.url(), &a)
}

/// Every connection went through an HRR to `want` and the server answered it.
#[track_caller]
fn assert_hrr(out: &Output, srv: &FactServer, n: usize, want: &str) {
    out.assert_success().assert_connections(n);
    for i in 0..n {
        assert_eq!(srv.fact(i, n, "version"), "304", "{}", srv.output());
        assert!(
            field_bool(out.summary(i), "hello_retry"),
            "{}",
            out.describe()
        );
        assert_eq!(group(out.summary(i)).as_deref(), Some(want));
    }
}

#[test]
fn go_hrr_p256() {
    let lurk = Lurk::start();
    let srv = server("P256", 1);
    let out = get(&lurk, &srv, &[]);
    assert_hrr(&out, &srv, 1, "secp256r1");
}

#[test]
fn go_hrr_p384_ephemeral_engine() {
    let lurk = Lurk::start();
    let srv = server("P384", 1);
    let out = get(&lurk, &srv, &["--ephemeral", "engine"]);
    assert_hrr(&out, &srv, 1, "secp384r1");
}

#[test]
fn go_resumption_with_hrr() {
    let lurk = Lurk::start();
    let srv = server("P256", 2);
    let out = get(&lurk, &srv, &["--resume", "1"]);
    assert_hrr(&out, &srv, 2, "secp256r1");
    assert_eq!(srv.fact(1, 2, "resumed"), "true", "{}", srv.output());
    assert!(field_bool(out.summary(1), "resumed"), "{}", out.describe());
}
