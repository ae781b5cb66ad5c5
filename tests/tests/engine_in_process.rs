//! The engine on the CS in its own process (`lurk_engine::in_process::InProcessCs`, feature
//! `in-process`): a real token (init-dev's SoftHSM), a real SQLite ticket store, a real
//! `openssl s_server`, and no gRPC. A full handshake registers the server's tickets at the
//! CS; the next connection resumes with one of them.

use std::sync::Arc;
use std::time::Duration;

use lurk_e2e::openssl::{certs, SServer};
use lurk_e2e::DevSetup;
use lurk_engine::in_process::InProcessCs;
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{ClientConfig, Connector, MemoryTicketStore, ServerName};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[test]
fn full_handshake_then_resumption_with_the_cs_in_process() {
    let setup = DevSetup::new();
    let cfg = lurk_cs::config::Config::load(&setup.config_path()).expect("CS config");
    let cs = Arc::new(lurk_cs::cs::Cs::from_config(&cfg).expect("CS"));
    let server = SServer::start(&certs().cert_args("server-ecdsa-p256"));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let in_process = InProcessCs::new(cs, "engine");
        assert!(!in_process.capabilities().unwrap().keys.is_empty());
        let config = ClientConfig::builder()
            .trust_anchors(TrustAnchors::from_pem_file(&certs().ca_all()).unwrap())
            .ticket_store(Arc::new(MemoryTicketStore::default()))
            .build()
            .unwrap();
        let c = Connector::with_cs(Arc::new(config), Arc::new(in_process));
        let name = ServerName::try_from("localhost").unwrap();
        for i in 0..2 {
            let tcp = TcpStream::connect(("127.0.0.1", server.port()))
                .await
                .unwrap();
            let mut s = c
                .connect(tcp, &name, server.port())
                .await
                .expect("handshake");
            let tickets = s.wait_for_tickets(Duration::from_secs(5)).await.unwrap();
            let summary = s.summary().clone();
            let _ = s.shutdown().await;
            drop(s);
            c.wait_for_cs(Duration::from_secs(5)).await;
            println!("{}", summary.to_json());
            assert!(tickets > 0, "connection {i}: no ticket");
            assert_eq!(summary.resumed, i == 1, "connection {i}");
            assert!(
                summary.lurk_exchanges.contains(&"c_init_client_hello"),
                "{:?}",
                summary.lurk_exchanges
            );
            assert!(summary.lurk_exchanges.contains(&"c_register_tickets"));
        }
    });
}
