//! The RFC 8448 §3 (simple 1-RTT) and §4 (resumed 0-RTT) traces, driven through a CS in
//! test-vector mode (null freshness, the engine making its own key share).

use lurk_proto::pb;
use lurk_proto::pb::crypto_service_client::CryptoServiceClient;
use serde_json::Value;
use tonic::transport::Channel;

fn trace(sec: &str, kind: &str, name: &str) -> Vec<u8> {
    let v: Value = serde_json::from_str(include_str!("../../testdata/rfc8448.json")).unwrap();
    hex::decode(v["sections"][sec]["summary"][kind][name].as_str().unwrap()).unwrap()
}

/// A handshake message of section `sec` (`simple_1rtt`, `resumed_0rtt`).
pub fn msg(sec: &str, name: &str) -> Vec<u8> {
    trace(sec, "messages", name)
}

/// A key-schedule value of section `sec`.
pub fn ks(sec: &str, name: &str) -> Vec<u8> {
    trace(sec, "key_schedule", name)
}

/// §4's ClientHello offering the §3 ticket (binder zeroed for the CS to fill).
pub fn resumption_request() -> pb::CInitClientHelloRequest {
    let mut ch = msg("resumed_0rtt", "client_hello");
    lurk_proto::wire::set_binders(&mut ch, &[vec![0u8; 32]]).unwrap();
    pb::CInitClientHelloRequest {
        client_hello: ch,
        freshness: pb::Freshness::Null as i32,
        psks: vec![pb::PskInfo {
            identity_index: 0,
            psk_type: pb::PskType::Resumption as i32,
            tls_hash: pb::TlsHash::Sha256 as i32,
        }],
        secret_request: None,
    }
}

/// §3 through the CS (c_init_client_hello, c_server_hello, c_client_finished): returns the
/// session id.
pub async fn section3_handshake(c: &mut CryptoServiceClient<Channel>) -> Vec<u8> {
    let s = "simple_1rtt";
    let id = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: msg(s, "client_hello"),
            freshness: pb::Freshness::Null as i32,
            psks: vec![],
            secret_request: None,
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    c.c_server_hello(pb::CServerHelloRequest {
        session_id: id.clone(),
        server_hello: msg(s, "server_hello"),
        ephemeral: Some(pb::Ephemeral {
            method: pb::EphemeralMethod::EGenerated as i32,
            shared_secret: ks(s, "ecdhe_shared_secret"),
        }),
        secret_request: None,
    })
    .await
    .unwrap();
    let fin = c
        .c_client_finished(pb::CClientFinishedRequest {
            session_id: id.clone(),
            handshake_messages: [
                msg(s, "encrypted_extensions"),
                msg(s, "server_certificate"),
                msg(s, "server_certificate_verify"),
                msg(s, "server_finished"),
            ]
            .concat(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(fin.client_finished, msg(s, "client_finished"));
    id
}
