//! Raw mTLS and HTTP/2 connections to a CS, for tests that hold connections, streams and
//! request bodies open in ways a gRPC client never would (transport limits).

use std::sync::Arc;

use bytes::Bytes;
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;
use tokio_rustls::TlsConnector;

use crate::CsProcess;

/// An mTLS connection as `identity` (`engine`, `engine2`, ... of the dev PKI), offering
/// ALPN h2, its handshake done and nothing sent.
pub async fn tls(cs: &CsProcess, identity: &str) -> TlsStream<TcpStream> {
    let tls = cs.tls_dir();
    let read = |f: &str| std::fs::read(tls.join(f)).unwrap();
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls_pemfile::certs(&mut &read("ca.pem")[..]) {
        roots.add(c.unwrap()).unwrap();
    }
    let chain: Vec<_> = rustls_pemfile::certs(&mut &read(&format!("{identity}.pem"))[..])
        .collect::<Result<_, _>>()
        .unwrap();
    let key = rustls_pemfile::private_key(&mut &read(&format!("{identity}.key"))[..])
        .unwrap()
        .unwrap();
    let mut cfg = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_client_auth_cert(chain, key)
    .unwrap();
    cfg.alpn_protocols = vec![b"h2".to_vec()];
    let tcp = TcpStream::connect(&cs.addr).await.unwrap();
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    TlsConnector::from(Arc::new(cfg))
        .connect(name, tcp)
        .await
        .unwrap()
}

/// An mTLS connection as `identity` speaking raw HTTP/2 (h2).
pub async fn raw_h2(cs: &CsProcess, identity: &str) -> h2::client::SendRequest<Bytes> {
    let (send, conn) = h2::client::handshake(tls(cs, identity).await)
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

/// Opens a CInitClientHello stream whose body (a gRPC frame declaring `declared` bytes,
/// `sent` of them sent) never ends; returns the answer future and the open body.
pub async fn unfinished_request(
    h2c: h2::client::SendRequest<Bytes>,
    declared: u32,
    sent: usize,
) -> (
    h2::client::SendRequest<Bytes>,
    h2::client::ResponseFuture,
    h2::SendStream<Bytes>,
) {
    let mut h2c = h2c.ready().await.unwrap();
    let req = http::Request::post("https://localhost/lurk.tls13.v1.CryptoService/CInitClientHello")
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap();
    let (answer, mut body) = h2c.send_request(req, false).unwrap();
    let mut prefix = vec![0u8];
    prefix.extend_from_slice(&declared.to_be_bytes());
    // A request the CS refuses at once (admission) is answered and its stream reset without
    // its body being read: the reset may arrive while the body is being sent, and the rest
    // of the body then has nowhere to go (the answer future holds the refusal).
    if body.send_data(Bytes::from(prefix), false).is_ok() {
        const CHUNK: usize = 64 << 10;
        let mut left = sent;
        while left > 0 {
            let n = left.min(CHUNK);
            if body.send_data(Bytes::from(vec![0x16u8; n]), false).is_err() {
                break;
            }
            left -= n;
        }
    }
    (h2c, answer, body)
}
