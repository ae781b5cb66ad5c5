//! Tickets survive a restart of the CS process, stay bound to the engine that registered
//! them and are used once. Driven through gRPC with the RFC 8448 §3/§4 traces: the CS runs
//! in test-vector mode (null freshness) and the engine makes its own key share
//! (e_generated), so the transcript is the RFC's and §4's binder proves the PSK that the
//! CS re-read after the restart.

use lurk_e2e::rfc8448::{ks, msg, resumption_request, section3_handshake};
use lurk_e2e::DevSetup;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;

#[tokio::test]
async fn a_ticket_survives_a_cs_restart_is_bound_to_its_engine_and_used_once() {
    let dev = DevSetup::new();
    dev.append_config("[freshness]\ntest_vectors = true\n");
    let s = "simple_1rtt";

    let cs = dev.start_with_env(&[("RUST_LOG", "trace")]);
    let mut c = cs.client("engine");
    let id = section3_handshake(&mut c).await.unwrap();
    let reg = c
        .c_register_tickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![msg(s, "new_session_ticket")],
            last_exchange: true,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.registered, 1);

    // Restart: same token, same SQLite file, new process.
    let first_pid = cs.pid();
    let first_log = cs.log();
    cs.kill();
    let cs = dev.start_with_env(&[("RUST_LOG", "trace")]);
    assert_ne!(cs.pid(), first_pid);

    // Another engine offering the same ticket gets nothing, and does not consume it.
    let mut other = cs.client("engine2");
    let e = other
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));

    // The engine that registered it resumes: §4's binder proves the PSK the CS re-read.
    let mut c = cs.client("engine");
    let resumed = c
        .c_init_client_hello(resumption_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.binders, vec![ks("resumed_0rtt", "binder")]);
    assert_eq!(resumed.client_hello, msg("resumed_0rtt", "client_hello"));

    // Used once.
    let e = c
        .c_init_client_hello(resumption_request())
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::InvalidPsk));

    // Nothing secret reached either process's log, even at trace level.
    let log = first_log + &cs.log();
    assert!(
        log.contains("lurk-cs serving"),
        "the log is captured: {log}"
    );
    for secret in [
        ks(s, "client_handshake_traffic_secret"),
        ks(s, "client_application_traffic_secret_0"),
        ks(s, "resumption_master_secret"),
        ks(s, "resumption_psk"),
        ks(s, "ecdhe_shared_secret"),
        ks("resumed_0rtt", "client_early_traffic_secret"),
    ] {
        assert!(!log.contains(&hex::encode(&secret)), "a secret in the log");
    }
    // The access log (on by default) has a line per exchange, naming the session by a
    // hash: neither the session id nor any secret is in the log.
    let access: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("lurk_cs::access"))
        .collect();
    assert_eq!(access.len(), 7, "{log}");
    let hash = hex::encode(&ring::digest::digest(&ring::digest::SHA256, &id).as_ref()[..8]);
    assert_eq!(access.iter().filter(|l| l.contains(&hash)).count(), 4);
    assert!(!log.contains(&hex::encode(&id)), "a session id in the log");
}

#[tokio::test]
async fn too_many_tickets_are_refused_and_the_stored_ones_kept() {
    let dev = DevSetup::new();
    dev.append_config("[freshness]\ntest_vectors = true\n");
    dev.edit_config("[store]\n", "[store]\nmax_tickets_per_engine = 1\n");
    let s = "simple_1rtt";
    let cs = dev.start();
    let mut c = cs.client("engine");
    let id = section3_handshake(&mut c).await.unwrap();
    let nst = msg(s, "new_session_ticket");
    c.c_register_tickets(pb::CRegisterTicketsRequest {
        session_id: id.clone(),
        new_session_tickets: vec![nst.clone()],
        last_exchange: false,
    })
    .await
    .unwrap();
    // A second, different ticket (another nonce and identity) goes over the cap of 1.
    let mut second = nst.clone();
    // The nonce's first byte (header 4, lifetime 4, age_add 4, nonce length 1: RFC 8446 §4.6.1).
    second[13] ^= 0xff;
    // The ticket's last byte (the 10 bytes after it are the early_data extension block).
    let i = second.len() - 11;
    second[i] ^= 0xff;
    let e = c
        .c_register_tickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![second],
            last_exchange: false,
        })
        .await
        .unwrap_err();
    assert_eq!(LurkStatus::from_grpc(&e), Some(LurkStatus::TooManyTickets));
    // The first ticket is intact.
    let resumed = c
        .c_init_client_hello(resumption_request())
        .await
        .unwrap()
        .into_inner();
    assert_eq!(resumed.binders, vec![ks("resumed_0rtt", "binder")]);
}
