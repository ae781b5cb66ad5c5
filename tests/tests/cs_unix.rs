//! The Unix-domain-socket listener (`[listen.unix]`) of a real `lurk-cs` process on SoftHSM:
//! the engine CLI makes its handshakes through it (`--cs unix:PATH`) against `openssl
//! s_server`; the peer uid names the engine (SO_PEERCRED), an unmapped uid is refused at
//! accept, the socket's connections count against the same per-engine cap as mTLS ones, and
//! the socket file has mode 0660 and is removed at shutdown.
#![forbid(unsafe_code)]

use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lurk_e2e::engine::EngineRun;
use lurk_e2e::openssl::{certs, path_str, SServer};
use lurk_e2e::{CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_engine::cs_client::CsEndpoint;
use lurk_proto::pb;

/// This process's effective uid (the owner of `/proc/self`).
fn my_uid() -> u32 {
    std::fs::metadata("/proc/self").unwrap().uid()
}

/// A CS whose `[listen.unix]` socket maps `uid` to the engine `engine`, with `limits`.
fn start(uid: u32, engine: &str, limits: &str) -> (DevSetup, CsProcess, PathBuf) {
    let dev = DevSetup::new();
    let sock = dev.path().join("cs.sock");
    dev.append_config(&format!(
        "[listen.unix]\npath = {:?}\n[[listen.unix.engines]]\nuid = {uid}\nengine = {engine:?}\n\n[limits]\n{limits}",
        path_str(&sock)
    ));
    let cs = dev.start();
    (dev, cs, sock)
}

/// A gRPC client over the Unix socket (the engine library's own channel).
fn unix_client(sock: &Path) -> CsClient {
    let ep = CsEndpoint {
        url: format!("unix:{}", path_str(sock)),
        ca_pem: None,
        identity_pem: None,
        domain: None,
    };
    ep.connect_lazy().unwrap()
}

async fn ping(mut c: CsClient) -> Result<(), String> {
    tokio::time::timeout(Duration::from_secs(5), c.ping(pb::PingRequest::default()))
        .await
        .map_err(|_| "timed out".to_owned())?
        .map(|_| ())
        .map_err(|e| format!("{e:?}"))
}

/// `text` without terminal colour codes.
fn plain(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find('\x1b') {
        out.push_str(&rest[..i]);
        rest = rest[i..].find('m').map_or("", |j| &rest[i + j + 1..]);
    }
    out.push_str(rest);
    out
}

fn tls_server() -> SServer {
    let mut a: Vec<String> = vec!["-www".into()];
    a.extend(certs().cert_args("server-ecdsa-p256"));
    SServer::start(&a)
}

#[test]
fn the_engine_cli_handshakes_and_resumes_over_the_unix_socket() {
    let (_dev, mut cs, sock) = start(my_uid(), "engine-dev", "");
    let meta = std::fs::symlink_metadata(&sock).expect("socket file");
    assert!(meta.file_type().is_socket());
    assert_eq!(meta.permissions().mode() & 0o777, 0o660);
    let server = tls_server();
    // No CS credentials: the socket needs none.
    let out = EngineRun::get(
        &server.url(),
        &[
            "--cs".to_owned(),
            format!("unix:{}", path_str(&sock)),
            "--ca".into(),
            path_str(&certs().ca_all()),
            "--resume".into(),
            "2".into(),
        ],
    );
    out.assert_success().assert_connections(3);
    // Tickets registered through the socket are taken back by the same engine identity.
    assert_eq!(out.summary(2)["resumed"], true, "{}", out.describe());
    assert!(out.summary(0)["lurk_exchanges"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e == "c_init_client_hello")));
    // SIGTERM: the CS stops and removes its socket file.
    assert!(cs.terminate(Duration::from_secs(20)).is_some());
    assert!(!sock.exists(), "socket file left behind");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unmapped_uid_is_refused_at_accept() {
    // The map names another uid, not ours.
    let (_dev, cs, sock) = start(my_uid().wrapping_add(4242), "engine-dev", "");
    let r = ping(unix_client(&sock)).await;
    assert!(r.is_err(), "unmapped peer was served");
    let deadline = Instant::now() + Duration::from_secs(5);
    while !cs.log().contains("maps to no engine") && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let log = plain(&cs.log());
    assert!(
        log.contains("maps to no engine") && log.contains(&format!("uid={}", my_uid())),
        "{log}"
    );
    // The mTLS listener still serves.
    ping(cs.client("engine")).await.unwrap();
}

/// The socket's peer is the engine its uid maps to: with one connection per engine, an mTLS
/// connection of engine-dev keeps engine-dev's socket connection out, not engine-other's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn socket_connections_count_against_the_engine_cap_of_mtls_ones() {
    let (_dev, cs, sock) = start(my_uid(), "engine-dev", "max_connections_per_engine = 1");
    // engine-dev over mTLS (certificate CN engine-dev), kept open.
    let held = cs.client("engine");
    ping(held.clone()).await.unwrap();
    let r = ping(unix_client(&sock)).await;
    assert!(
        r.is_err(),
        "second engine-dev connection served past the cap"
    );
    // engine-other over mTLS is not affected.
    ping(cs.client("engine2")).await.unwrap();
    // Once engine-dev's mTLS connection is gone, its socket connection is served.
    drop(held);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match ping(unix_client(&sock)).await {
            Ok(()) => break,
            Err(e) if Instant::now() > deadline => panic!("socket never served: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    }
}
