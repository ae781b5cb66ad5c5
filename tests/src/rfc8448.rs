//! RFC 8448 §3 (full handshake, a NewSessionTicket) and §4 (resumption with that ticket)
//! driven through the CS's gRPC API: the CS in test-vector mode (null freshness) and the
//! engine making its own key share, so that the transcript is the RFC's and §4's binder
//! proves which PSK the CS read back from its store.

use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_test_support::rfc8448::rfc8448;

/// A handshake message of a section (`simple_1rtt`, `resumed_0rtt`), by its name in
/// `lurk_test_support::rfc8448::Messages`.
pub fn msg(sec: &str, name: &str) -> Vec<u8> {
    rfc8448().section(sec).messages.by_name(name).to_vec()
}

/// A key-schedule value of a section, by its name in `lurk_test_support::rfc8448::KeySchedule`.
pub fn ks(sec: &str, name: &str) -> Vec<u8> {
    rfc8448().section(sec).key_schedule.by_name(name).to_vec()
}

/// §4's ClientHello offering §3's ticket (binders zeroed: the CS computes them).
pub fn resumption_request() -> pb::CInitClientHelloRequest {
    let mut ch = rfc8448().resumed_0rtt.messages.client_hello.clone();
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

/// RFC 8448 §3 through the CS, the engine making its own share (e_generated) and the CS in
/// test-vector mode (null freshness), up to c_client_finished; returns the session id.
pub async fn section3_handshake(c: &mut CsClient) -> Result<Vec<u8>, tonic::Status> {
    let s = &rfc8448().simple_1rtt;
    let m = &s.messages;
    let init = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: m.client_hello.clone(),
            freshness: pb::Freshness::Null as i32,
            psks: vec![],
            secret_request: None,
        })
        .await?
        .into_inner();
    assert_eq!(
        init.client_hello,
        m.client_hello.clone(),
        "an engine-made share is kept as is"
    );
    assert!(init.key_shares.is_empty());
    let id = init.session_id;
    c.c_server_hello(pb::CServerHelloRequest {
        session_id: id.clone(),
        server_hello: m.server_hello.clone(),
        ephemeral: Some(pb::Ephemeral {
            method: pb::EphemeralMethod::EGenerated as i32,
            shared_secret: s.key_schedule.ecdhe_shared_secret.clone(),
        }),
        secret_request: None,
    })
    .await?;
    let fin = c
        .c_client_finished(pb::CClientFinishedRequest {
            session_id: id.clone(),
            handshake_messages: [
                m.encrypted_extensions.clone(),
                m.server_certificate.clone().expect("server_certificate"),
                m.server_certificate_verify
                    .clone()
                    .expect("server_certificate_verify"),
                m.server_finished.clone(),
            ]
            .concat(),
            ..Default::default()
        })
        .await?
        .into_inner();
    assert_eq!(fin.client_finished, m.client_finished.clone());
    Ok(id)
}

/// §3's handshake then its NewSessionTicket registered; returns how many were registered.
pub async fn register_section3_ticket(c: &mut CsClient) -> Result<u32, tonic::Status> {
    let id = section3_handshake(c).await?;
    Ok(c.c_register_tickets(pb::CRegisterTicketsRequest {
        session_id: id,
        new_session_tickets: vec![rfc8448()
            .simple_1rtt
            .messages
            .new_session_ticket
            .clone()
            .expect("§3 ticket")],
        last_exchange: true,
    })
    .await?
    .into_inner()
    .registered)
}
