//! Quick end-to-end checks of the engine against a real `openssl s_server` on 127.0.0.1 (LURK
//! sequence D: ephemeral=engine, no Crypto Service). The full mode matrix lives in `tests/`.
//! `openssl` must be installed (`scripts/install-deps.sh` does it): the tests fail without it.

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use lurk_engine::config::{ClientConfig, ClientConfigBuilder, Ephemeral};
use lurk_engine::tickets::MemoryTicketStore;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{Connector, Error, ServerName, TlsMode};

fn localhost() -> ServerName {
    ServerName::try_from("localhost").unwrap()
}
use lurk_proto::wire::{NamedGroup, PskKeyExchangeMode};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn require_openssl() {
    let ok = Command::new("openssl")
        .arg("version")
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "openssl is needed (scripts/install-deps.sh installs it)"
    );
}

fn make_certs(dir: &Path) -> PathBuf {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/make-certs.sh");
    let out = dir.join("certs");
    let st = Command::new("bash")
        .arg(&script)
        .arg(&out)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .expect("run make-certs.sh");
    assert!(st.success(), "make-certs.sh failed");
    out
}

/// A free port below 32768 (the Linux ephemeral range gives spurious EADDRINUSE).
fn free_port(offset: u16) -> u16 {
    let base = 20000 + (std::process::id() % 5000) as u16 * 2 + offset * 10_000 % 7;
    (base..32000)
        .find(|p| std::net::TcpListener::bind(("127.0.0.1", *p)).is_ok())
        .expect("a free port")
}

/// `openssl s_server`, killed by PID on drop.
struct Server(Child);

impl Server {
    fn start(port: u16, args: &[&str]) -> Self {
        let mut child = Command::new("openssl")
            .arg("s_server")
            .arg("-accept")
            .arg(format!("127.0.0.1:{port}"))
            .arg("-tls1_3")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start openssl s_server");
        // Wait for "ACCEPT" (never probe -naccept servers with a TCP connect).
        let stdout = child.stdout.take().expect("stdout");
        let mut lines = BufReader::new(stdout).lines();
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("ACCEPT") => break,
                Some(Ok(_)) => {}
                _ => panic!("s_server did not start"),
            }
        }
        // Keep draining its output so that it never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Self(child)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn config(certs: &Path) -> ClientConfigBuilder {
    ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_pem_file(&certs.join("ca-all.pem")).unwrap())
        .ephemeral(Ephemeral::Engine)
        .ticket_store(Arc::new(MemoryTicketStore::default()))
}

async fn get(
    connector: &Connector,
    port: u16,
) -> Result<(String, lurk_engine::HandshakeSummary), Error> {
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let mut s = connector.connect(tcp, &localhost(), port).await?;
    s.write_all(b"GET / HTTP/1.0\r\n\r\n").await.unwrap();
    let mut body = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read_to_end(&mut body)).await;
    let _ = s.shutdown().await;
    Ok((
        String::from_utf8_lossy(&body).into_owned(),
        s.summary().clone(),
    ))
}

#[tokio::test]
async fn ecdhe_x25519_engine_ephemeral_then_resumption() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port(0);
    let cert = certs.join("server-ecdsa-p256.pem");
    let key = certs.join("server-ecdsa-p256.key");
    let _srv = Server::start(
        port,
        &[
            "-naccept",
            "3",
            "-groups",
            "X25519",
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-www",
        ],
    );
    let cfg = config(&certs).groups([NamedGroup::X25519]).build().unwrap();
    let connector = Connector::new(Arc::new(cfg), None);

    let (body, s) = get(&connector, port).await.unwrap();
    assert!(
        body.contains("s_server"),
        "status page expected: {body:.200}"
    );
    assert_eq!(s.group, Some(NamedGroup::X25519));
    assert_eq!(s.mode, Some(TlsMode::Ecdhe));
    assert!(!s.resumed);
    assert!(s.lurk_exchanges.is_empty(), "sequence D: no CS call");
    assert_eq!(s.tickets_received, 2);

    // Resumption with a ticket of the first connection (psk_dhe_ke).
    let (body, s) = get(&connector, port).await.unwrap();
    assert!(body.contains("s_server"));
    assert!(s.resumed);
    assert_eq!(s.mode, Some(TlsMode::PskEcdhe));

    // A name the certificate does not cover is refused, naming the cause.
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let err = connector
        .connect(tcp, &ServerName::try_from("example.com").unwrap(), port)
        .await
        .err()
        .expect("wrong name must fail");
    assert!(matches!(err, Error::InvalidCertificate(_)), "{err}");
    assert!(err.to_string().contains("not valid for this name"), "{err}");
}

#[tokio::test]
async fn hello_retry_and_psk_ke_resumption() {
    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port(1);
    let cert = certs.join("server-rsapss.pem");
    let key = certs.join("server-rsapss.key");
    let _srv = Server::start(
        port,
        &[
            "-naccept",
            "2",
            "-groups",
            "P-256",
            "-allow_no_dhe_kex",
            "-cert",
            cert.to_str().unwrap(),
            "-key",
            key.to_str().unwrap(),
            "-www",
        ],
    );
    let cfg = config(&certs)
        .groups([NamedGroup::X25519, NamedGroup::Secp256r1])
        .psk_modes([PskKeyExchangeMode::PskKe])
        .build()
        .unwrap();
    let connector = Connector::new(Arc::new(cfg), None);

    // X25519 share only: the server asks for P-256; its certificate is RSASSA-PSS (0x0809).
    let (body, s) = get(&connector, port).await.unwrap();
    assert!(body.contains("s_server"));
    assert!(s.hello_retry);
    assert_eq!(s.group, Some(NamedGroup::Secp256r1));

    // psk_ke only: no key share in the ServerHello.
    let (_, s) = get(&connector, port).await.unwrap();
    assert!(s.resumed);
    assert_eq!(s.mode, Some(TlsMode::Psk));
    assert_eq!(s.group, None);
}

/// The engine's stream under hyper (HTTP/1.1 client): what edge proxies do with it.
#[tokio::test]
async fn hyper_sends_a_request_over_the_engine_stream() {
    use http_body_util::BodyExt;

    require_openssl();
    let dir = tempfile::tempdir().unwrap();
    let certs = make_certs(dir.path());
    let port = free_port(2);
    let _srv = Server::start(
        port,
        &[
            "-naccept",
            "1",
            "-www",
            "-cert",
            certs.join("server-ecdsa-p256.pem").to_str().unwrap(),
            "-key",
            certs.join("server-ecdsa-p256.key").to_str().unwrap(),
        ],
    );
    let connector = Connector::new(Arc::new(config(&certs).build().unwrap()), None);
    let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    tcp.set_nodelay(true).unwrap();
    let tls = connector.connect(tcp, &localhost(), port).await.unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake::<
        _,
        http_body_util::Empty<bytes::Bytes>,
    >(hyper_util::rt::TokioIo::new(tls))
    .await
    .unwrap();
    tokio::spawn(conn);
    let req = hyper::Request::get("/")
        .header("host", "localhost")
        .body(http_body_util::Empty::new())
        .unwrap();
    let resp = sender.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let body = resp.into_body().collect().await.unwrap().to_bytes();
    let page = String::from_utf8_lossy(&body);
    assert!(page.contains("New, TLSv1.3"), "{page}");
}
