//! Bad input gets a clear refusal and loses nothing: thousands of mutated requests (bit
//! flips, truncations, insertions, length-field corruption) against a real CS. Every answer
//! is a success or a refusal with a LURK status that names the input's fault (never
//! `undefined_error`, which would mean the CS itself failed), the CS keeps serving, and a
//! stored ticket is still there afterwards.
//!
//! The mutations come from a fixed-seed generator: the run is the same every time.

use lurk_e2e::DevSetup;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{
    CipherSuite, ClientHelloBuilder, NamedGroup, PskKeyExchangeMode, SignatureScheme,
};
use lurk_test_support::rfc8448::rfc8448;

/// xorshift64*: small, deterministic, good enough to pick mutations.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

fn mutate(rng: &mut Rng, input: &[u8]) -> Vec<u8> {
    let mut out = input.to_vec();
    for _ in 0..=rng.below(3) {
        if out.is_empty() {
            out.push(rng.next() as u8);
            continue;
        }
        let at = rng.below(out.len());
        match rng.below(6) {
            0 => out[at] ^= 1 << rng.below(8),
            1 => out[at] = rng.next() as u8,
            2 => out.truncate(at),
            3 => out.insert(at, rng.next() as u8),
            4 => {
                // Corrupt what is likely a length field: the handshake header or a u16.
                let i = [1, 2, 3, at][rng.below(4)].min(out.len() - 1);
                out[i] = out[i].wrapping_add(1 + rng.below(3) as u8);
            }
            _ => {
                let end = (at + 1 + rng.below(16)).min(out.len());
                out.drain(at..end);
            }
        }
    }
    out
}

fn client_hello() -> Vec<u8> {
    ClientHelloBuilder::new([3u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[
            CipherSuite::TlsAes128GcmSha256,
            CipherSuite::TlsAes256GcmSha384,
        ])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
        .signature_algorithms(&[
            SignatureScheme::EcdsaSecp256r1Sha256,
            SignatureScheme::Ed25519,
        ])
        .key_share(NamedGroup::X25519, &[])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .post_handshake_auth(true)
        .build()
        .unwrap()
}

fn check(result: Result<(), tonic::Status>, what: &str) {
    if let Err(e) = result {
        let status = LurkStatus::from_grpc(&e)
            .unwrap_or_else(|| panic!("{what}: a refusal without a LURK status: {e:?}"));
        assert_ne!(
            status,
            LurkStatus::UndefinedError,
            "{what}: malformed input must be refused as such, not fail inside the CS: {e:?}"
        );
    }
}

#[tokio::test]
async fn mutated_requests_are_refused_with_a_status_and_harm_nothing() {
    let dev = DevSetup::new();
    dev.edit_config("backend = \"token\"", "backend = \"memory\"");
    dev.append_config("[freshness]\ntest_vectors = true\n");
    let cs = dev.start();
    let mut c = cs.client("engine");
    let mut rng = Rng(0x5eed_1a2b_3c4d_5e6f);

    // A ticket registered before the storm (RFC 8448 §3 with the engine's own share).
    let s = &rfc8448().simple_1rtt;
    let id = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: s.messages.client_hello.clone(),
            freshness: pb::Freshness::Null as i32,
            psks: vec![],
            secret_request: None,
        })
        .await
        .unwrap()
        .into_inner()
        .session_id;
    let ecdhe = s.key_schedule.ecdhe_shared_secret.clone();
    c.c_server_hello(pb::CServerHelloRequest {
        session_id: id.clone(),
        server_hello: s.messages.server_hello.clone(),
        ephemeral: Some(pb::Ephemeral {
            method: pb::EphemeralMethod::EGenerated as i32,
            shared_secret: ecdhe,
        }),
        secret_request: None,
    })
    .await
    .unwrap();
    let flight = [
        s.messages.encrypted_extensions.clone(),
        s.messages
            .server_certificate
            .clone()
            .expect("server_certificate"),
        s.messages
            .server_certificate_verify
            .clone()
            .expect("server_certificate_verify"),
        s.messages.server_finished.clone(),
    ]
    .concat();
    let nst = s
        .messages
        .new_session_ticket
        .clone()
        .expect("new_session_ticket");

    // Mutated ClientHellos.
    let ch = client_hello();
    for i in 0..600 {
        let r = c
            .c_init_client_hello(pb::CInitClientHelloRequest {
                client_hello: mutate(&mut rng, &ch),
                freshness: pb::Freshness::Sha256 as i32,
                psks: vec![],
                secret_request: None,
            })
            .await
            .map(|_| ());
        check(r, &format!("c_init_client_hello #{i}"));
    }

    // Mutated server flights and tickets on the live session: refused without advancing or
    // breaking it.
    for i in 0..300 {
        let r = c
            .c_client_finished(pb::CClientFinishedRequest {
                session_id: id.clone(),
                handshake_messages: mutate(&mut rng, &flight),
                ..Default::default()
            })
            .await
            .map(|_| ());
        // A mutation may leave the flight valid (e.g. a flipped bit in a certificate the CS
        // hashes but does not check would break the server Finished, but a truncation at a
        // message boundary may not): then the session has moved on; stop this loop there.
        let advanced = r.is_ok();
        check(r, &format!("c_client_finished #{i}"));
        assert!(
            !advanced,
            "a mutated flight must not verify against the server Finished"
        );
    }
    let fin = c
        .c_client_finished(pb::CClientFinishedRequest {
            session_id: id.clone(),
            handshake_messages: flight.clone(),
            ..Default::default()
        })
        .await
        .expect("the session survived every malformed request")
        .into_inner();
    assert_eq!(fin.client_finished, s.messages.client_finished.clone());
    // The ticket first: a mutation that keeps its nonce or identity is then a re-registration,
    // refused like any other malformed ticket.
    let reg = c
        .c_register_tickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![nst.clone()],
            last_exchange: false,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(reg.registered, 1);
    for i in 0..300 {
        let bad = mutate(&mut rng, &nst);
        if bad == nst {
            continue;
        }
        let r = c
            .c_register_tickets(pb::CRegisterTicketsRequest {
                session_id: id.clone(),
                new_session_tickets: vec![bad],
                last_exchange: false,
            })
            .await
            .map(|_| ());
        check(r, &format!("c_register_tickets #{i}"));
    }
    // The exact ticket again is refused; the session is still there to be closed.
    let again = c
        .c_register_tickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: vec![nst],
            last_exchange: false,
        })
        .await
        .expect_err("a ticket is registered once per session");
    assert_eq!(
        LurkStatus::from_grpc(&again),
        Some(LurkStatus::InvalidHandshake)
    );
    c.c_register_tickets(pb::CRegisterTicketsRequest {
        session_id: id,
        new_session_tickets: vec![],
        last_exchange: true,
    })
    .await
    .expect("closing the session");

    // Garbage session ids and post-handshake requests.
    for i in 0..100 {
        let len = rng.below(40);
        let sid: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        let r = c
            .c_post_hand_auth(pb::CPostHandAuthRequest {
                session_id: sid,
                certificate_request: mutate(&mut rng, &[13, 0, 0, 7, 1, 9, 0, 2, 0, 0, 0]),
                ..Default::default()
            })
            .await
            .map(|_| ());
        check(r, &format!("c_post_hand_auth #{i}"));
    }

    // Still serving, and the ticket registered among the storm is there: §4 resumes with it.
    let p = c.ping(pb::PingRequest {}).await.unwrap().into_inner();
    assert_eq!(p.engine_identity, "engine-dev");
    let mut ch4 = rfc8448().resumed_0rtt.messages.client_hello.clone();
    lurk_proto::wire::set_binders(&mut ch4, &[vec![0u8; 32]]).unwrap();
    let resumed = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: ch4,
            freshness: pb::Freshness::Null as i32,
            psks: vec![pb::PskInfo {
                identity_index: 0,
                psk_type: pb::PskType::Resumption as i32,
                tls_hash: pb::TlsHash::Sha256 as i32,
            }],
            secret_request: None,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        resumed.client_hello,
        rfc8448().resumed_0rtt.messages.client_hello.clone()
    );
}
