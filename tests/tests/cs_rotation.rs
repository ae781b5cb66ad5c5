//! Certificate rotation without a restart, on a real `lurk-cs` process: SIGHUP makes it read
//! its `[listen.tls]` files and `[[keys]]` certificate chains again. New engine connections
//! use the new certificate and client CA, established ones continue, and a broken file is
//! refused (logged) with the previous configuration kept in force.

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use lurk_e2e::engine::EngineRun;
use lurk_e2e::openssl::{certs, path_str, SServer};
use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose,
};
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

const DONE: &str = "certificate reload done";

fn sighup(cs: &CsProcess) {
    let st = Command::new("kill")
        .args(["-HUP", &cs.pid().to_string()])
        .status()
        .unwrap();
    assert!(st.success());
}

/// Sends SIGHUP and waits for the `n`th end-of-reload log line.
fn reload(cs: &CsProcess, n: usize) -> String {
    sighup(cs);
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline {
        let log = cs.log();
        if log.matches(DONE).count() >= n {
            return log;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    panic!("reload {n} not logged:\n{}", cs.log());
}

/// A second transport PKI, written as `ca.pem`, `cs.pem`/`cs.key` (CN lurk-cs) and
/// `engine.pem`/`engine.key` (the same engine identity as the first one's) in `dir`.
fn new_pki(dir: &Path) {
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.distinguished_name
        .push(DnType::CommonName, "lurk rotated transport CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    for (name, cn, sans, eku) in [
        (
            "cs",
            "lurk-cs rotated",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "engine",
            "engine-dev",
            vec!["engine-dev".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ] {
        let key = KeyPair::generate().unwrap();
        let mut p = CertificateParams::new(sans).unwrap();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key).unwrap();
        fs::write(dir.join(format!("{name}.pem")), cert.pem()).unwrap();
        fs::write(dir.join(format!("{name}.key")), key.serialize_pem()).unwrap();
    }
}

/// A new mTLS connection to the CS trusting `ca`, presenting `engine.pem`/`engine.key` of
/// `id_dir`; returns the first Capabilities answer (or the error).
async fn fresh_call(
    cs: &CsProcess,
    ca: &Path,
    id_dir: &Path,
) -> Result<pb::CapabilitiesResponse, String> {
    let read = |p: &Path| fs::read(p).unwrap();
    let tls = ClientTlsConfig::new()
        .ca_certificate(Certificate::from_pem(read(ca)))
        .identity(Identity::from_pem(
            read(&id_dir.join("engine.pem")),
            read(&id_dir.join("engine.key")),
        ))
        .domain_name("localhost");
    let channel = Endpoint::from_shared(cs.url())
        .unwrap()
        .connect_timeout(Duration::from_secs(5))
        .timeout(Duration::from_secs(10))
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .map_err(|e| format!("{e:?}"))?;
    CryptoServiceClient::new(channel)
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .map(|r| r.into_inner())
        .map_err(|e| format!("{e:?}"))
}

/// A LURK handshake by the real engine CLI, through the CS, against `openssl s_server`.
fn engine_handshake(cs: &CsProcess, server: &SServer) {
    let mut args = cs.engine_args("engine");
    args.extend(["--ca".into(), path_str(&certs().ca_all())]);
    EngineRun::get(&server.url(), &args)
        .assert_success()
        .assert_connections(1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_rotates_the_listener_certificate_and_client_ca() {
    let dev = DevSetup::new();
    let cs = dev.start();
    let tls = cs.tls_dir();
    let mut s_args: Vec<String> = vec!["-www".into(), "-num_tickets".into(), "0".into()];
    s_args.extend(certs().cert_args("server-ecdsa-p256"));
    let server = SServer::start(&s_args);
    engine_handshake(&cs, &server);

    // An engine connection established before the rotation.
    let mut established: CsClient = cs.client("engine");
    established
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap();

    // The old files, for the checks after the swap.
    let old = tempfile::tempdir().unwrap();
    for f in ["ca.pem", "engine.pem", "engine.key"] {
        fs::copy(tls.join(f), old.path().join(f)).unwrap();
    }
    // The operator swaps the CS's certificate and the engines' CA in place: the new CA
    // issues the CS's certificate and the engines', and the old CA is no longer trusted.
    let new = tempfile::tempdir().unwrap();
    new_pki(new.path());
    for f in ["ca.pem", "cs.pem", "cs.key", "engine.pem", "engine.key"] {
        fs::copy(new.path().join(f), tls.join(f)).unwrap();
    }
    let log = reload(&cs, 1);
    assert!(
        log.contains("listener certificate, key and client CA reloaded"),
        "{log}"
    );
    assert!(
        log.contains("lurk-cs rotated"),
        "the new subject is logged: {log}"
    );

    let check_rotated = || async {
        // A new connection with the new CA and engine certificate works...
        fresh_call(&cs, &tls.join("ca.pem"), &tls)
            .await
            .expect("new engine certificate after the rotation");
        // ...one with the old engine certificate (issued by the removed CA) is refused:
        // the same call, only the engine certificate differs (the client sees the CS's
        // unknown_ca alert, or its connection closed after its Finished, by timing)...
        let refused = fresh_call(&cs, &tls.join("ca.pem"), old.path()).await;
        assert!(refused.is_err(), "{refused:?}");
        // ...and the CS presents its new certificate (not trusted by the old CA).
        let err = fresh_call(&cs, &old.path().join("ca.pem"), old.path())
            .await
            .unwrap_err();
        assert!(err.contains("UnknownIssuer"), "{err}");
    };
    check_rotated().await;
    // The established connection continues (a reconnection with its old certificate would
    // now be refused).
    established
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .expect("the established connection continues");
    // The real engine, given the new files (same paths), keeps working.
    engine_handshake(&cs, &server);

    // A broken certificate file: refused, logged, the rotated configuration stays.
    let good = fs::read(tls.join("cs.pem")).unwrap();
    fs::write(tls.join("cs.pem"), "-----BEGIN CERTIFICATE-----\nAAAA\n").unwrap();
    let log = reload(&cs, 2);
    assert!(log.contains("listener certificate reload refused"), "{log}");
    check_rotated().await;
    engine_handshake(&cs, &server);
    // A key that is not the certificate's, and an empty CA file: refused too.
    fs::write(tls.join("cs.pem"), &good).unwrap();
    let good_key = fs::read(tls.join("cs.key")).unwrap();
    fs::write(
        tls.join("cs.key"),
        KeyPair::generate().unwrap().serialize_pem(),
    )
    .unwrap();
    let log = reload(&cs, 3);
    assert_eq!(
        log.matches("listener certificate reload refused").count(),
        2,
        "{log}"
    );
    fs::write(tls.join("cs.key"), &good_key).unwrap();
    fs::write(tls.join("ca.pem"), "").unwrap();
    let log = reload(&cs, 4);
    assert_eq!(
        log.matches("listener certificate reload refused").count(),
        3,
        "{log}"
    );
    fs::copy(new.path().join("ca.pem"), tls.join("ca.pem")).unwrap();
    check_rotated().await;
    established
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap();
}

/// `[[keys]]` chains: a chain whose leaf carries the key is put in force (Capabilities
/// serves it), one whose leaf carries another key is refused and the previous one stays.
#[tokio::test]
async fn sighup_reloads_signing_key_chains_refusing_a_foreign_leaf() {
    let dev = DevSetup::new();
    let cs = dev.start();
    let p256 = dev.path().join("client-p256.pem");
    let ed25519 = dev.path().join("client-ed25519.pem");
    let chain_of = |caps: &pb::CapabilitiesResponse, id: &str| {
        caps.keys
            .iter()
            .find(|k| k.key_id == id)
            .unwrap_or_else(|| panic!("no key {id}"))
            .certificate_chain
            .clone()
    };
    let mut client = cs.client("engine");
    let caps = client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let before = chain_of(&caps, "p256");
    assert_eq!(before.len(), 1);

    // The same leaf with an intermediate after it: the leaf carries the key, in force.
    let mut extended = fs::read(&p256).unwrap();
    extended.extend(fs::read(cs.tls_dir().join("ca.pem")).unwrap());
    fs::write(&p256, &extended).unwrap();
    let log = reload(&cs, 1);
    assert!(
        log.contains("signing key certificate chain reloaded"),
        "{log}"
    );
    let caps = client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    let after = chain_of(&caps, "p256");
    assert_eq!(after.len(), 2);
    assert_eq!(after[0], before[0]);

    // The Ed25519 key's certificate as the P-256 key's chain: refused, the 2-certificate
    // chain stays.
    fs::copy(&ed25519, &p256).unwrap();
    let log = reload(&cs, 2);
    assert!(
        log.contains("signing key certificate chain refused"),
        "{log}"
    );
    let caps = client
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(chain_of(&caps, "p256"), after);
}
