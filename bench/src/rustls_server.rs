//! The rustls TLS 1.3 server (`lurk-bench rustls-server`), run as a child process so that
//! its CPU time is accounted apart from the clients'. It answers like `openssl s_server
//! -WWW`: one `GET`, a short HTTP/1.0 response with the payload, close_notify, close. It sends
//! two tickets after a full handshake, as OpenSSL does. With `--client-certs FILE` it requires
//! a client certificate, one of the certificates in FILE, and checks its CertificateVerify.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

pub(crate) fn run(
    port: u16,
    cert: &Path,
    key: &Path,
    client_certs: Option<&Path>,
) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(serve(port, cert, key, client_certs))
}

async fn serve(
    port: u16,
    cert: &Path,
    key: &Path,
    client_certs: Option<&Path>,
) -> Result<(), BoxError> {
    let certs = rustls_pemfile::certs(&mut std::fs::read(cert)?.as_slice())
        .collect::<Result<Vec<_>, _>>()?;
    let key = rustls_pemfile::private_key(&mut std::fs::read(key)?.as_slice())?
        .ok_or("no private key")?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])?;
    let builder = match client_certs {
        None => builder.with_no_client_auth(),
        Some(path) => {
            let pinned = rustls_pemfile::certs(&mut std::fs::read(path)?.as_slice())
                .map(|c| c.map(|c| c.to_vec()))
                .collect::<Result<Vec<_>, _>>()?;
            builder.with_client_cert_verifier(Arc::new(crate::client_auth::PinnedClients::new(
                pinned, &provider,
            )))
        }
    };
    let mut cfg = builder.with_single_cert(certs, key)?;
    cfg.ticketer = rustls::crypto::ring::Ticketer::new()?;
    cfg.send_tls13_tickets = 2;
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(cfg));
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("READY 127.0.0.1:{port}");
    let mut response = b"HTTP/1.0 200 ok\r\nContent-type: text/plain\r\n\r\n".to_vec();
    response.extend_from_slice(&crate::handshake::payload());
    let response: Arc<[u8]> = response.into();
    loop {
        let (tcp, _) = listener.accept().await?;
        let _ = tcp.set_nodelay(true);
        let acceptor = acceptor.clone();
        let response = response.clone();
        tokio::spawn(async move {
            let work = async {
                let mut s = acceptor.accept(tcp).await?;
                let mut req = Vec::new();
                let mut buf = [0u8; 1024];
                while !req.windows(4).any(|w| w == b"\r\n\r\n") && req.len() < 16 * 1024 {
                    let n = s.read(&mut buf).await?;
                    if n == 0 {
                        return Ok::<(), std::io::Error>(());
                    }
                    req.extend_from_slice(&buf[..n]);
                }
                s.write_all(&response).await?;
                s.shutdown().await?;
                Ok(())
            };
            // Long enough for a thousand handshakes started at once in a debug build (soak.rs).
            let _ = tokio::time::timeout(Duration::from_secs(120), work).await;
        });
    }
}
