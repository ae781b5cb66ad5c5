//! Parsing work per request is bounded (issue: quadratic parsing). Handshake bytes with
//! thousands of extensions, key shares or certificate entries, messages over their size cap
//! and requests over the request cap are refused by a real `lurk-cs` with `invalid_format`
//! (or by tonic, past its decoding limit), before any per-entry work, and the refusal changes
//! nothing: the same session then goes on, and the CS keeps serving.

use lurk_e2e::{server_hello, CsProcess, DevSetup};
use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{
    encode_certificate, encode_certificate_verify, encode_finished, encode_handshake, CipherSuite,
    ClientHello, ClientHelloBuilder, HandshakeType, NamedGroup, SignatureScheme,
};

fn status_of(e: &tonic::Status) -> LurkStatus {
    LurkStatus::from_grpc(e).unwrap_or_else(|| panic!("no lurk-status in {e:?}"))
}

async fn ping_ok(client: &mut CsClient) {
    client
        .ping(pb::PingRequest {})
        .await
        .expect("the CS still serves");
}

fn start() -> (DevSetup, CsProcess) {
    let dev = DevSetup::new();
    let cs = dev.start();
    (dev, cs)
}

/// Encoded extensions: type, u16 length, body.
fn ext_bytes(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    for (t, b) in exts {
        out.extend_from_slice(&t.to_be_bytes());
        out.extend_from_slice(&(b.len() as u16).to_be_bytes());
        out.extend_from_slice(b);
    }
    out
}

/// `n` extensions of distinct unregistered types, allowed in every message.
fn unknown_exts(n: usize) -> Vec<(u16, Vec<u8>)> {
    (0..n).map(|i| (0x7000 + i as u16, Vec::new())).collect()
}

/// `raw` (one handshake message) with `extra` appended to the extension block whose u16
/// length is at `at`, which must end the message.
fn append_extensions(raw: &[u8], at: usize, extra: &[u8]) -> Vec<u8> {
    let mut list = raw[at + 2..].to_vec();
    list.extend_from_slice(extra);
    let mut body = raw[4..at].to_vec();
    body.extend_from_slice(&(list.len() as u16).to_be_bytes());
    body.extend_from_slice(&list);
    encode_handshake(HandshakeType::from(raw[0]), &body).unwrap()
}

/// The ClientHello an engine sends: an empty x25519 share for the CS to fill.
fn client_hello() -> Vec<u8> {
    lurk_e2e::token_calls::x25519_client_hello()
}

fn client_hello_with(extra: &[(u16, Vec<u8>)]) -> Vec<u8> {
    let ch = client_hello();
    let at = ClientHello::parse(&ch).unwrap().extensions_len_offset;
    append_extensions(&ch, at, &ext_bytes(extra))
}

fn init_request(ch: Vec<u8>) -> pb::CInitClientHelloRequest {
    pb::CInitClientHelloRequest {
        client_hello: ch,
        freshness: pb::Freshness::Sha256 as i32,
        psks: vec![],
        secret_request: None,
    }
}

#[tokio::test]
async fn overfull_and_oversized_hellos_are_refused_as_invalid_format_and_change_nothing() {
    let (_dev, cs) = start();
    let mut c = cs.client("engine");

    // 4,000 extensions (16 KB, under the ClientHello size cap): refused for the count.
    let ch = client_hello_with(&unknown_exts(4000));
    assert!(ch.len() < 20_000);
    let e = c.c_init_client_hello(init_request(ch)).await.unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // 2,000 key shares of distinct groups, every group in supported_groups.
    let groups: Vec<NamedGroup> = (0..2000u16).map(|i| NamedGroup::from(0x3000 + i)).collect();
    let mut b = ClientHelloBuilder::new([7u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_groups(&groups)
        .signature_algorithms(&[SignatureScheme::Ed25519]);
    for g in &groups {
        b = b.key_share(*g, &[1]);
    }
    let e = c
        .c_init_client_hello(init_request(b.build().unwrap()))
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // A ClientHello of 40 KB (a padding extension): over the size cap.
    let ch = client_hello_with(&[(21, vec![0; 40_000])]);
    let e = c.c_init_client_hello(init_request(ch)).await.unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // A session, then a ServerHello with a 64 KiB body (over the cap of any message but a
    // Certificate): refused, and the session goes on with the real ServerHello.
    let resp = c
        .c_init_client_hello(init_request(client_hello()))
        .await
        .unwrap()
        .into_inner();
    let sh = server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        &[9u8; 32],
        &[1u8; 32],
    );
    let at = 4 + 2 + 32 + 1 + 32 + 2 + 1;
    let big = append_extensions(&sh, at, &ext_bytes(&[(0x7000, vec![0; 65_450])]));
    assert!(big.len() - 4 > 0xffff);
    let req = |server_hello: Vec<u8>| pb::CServerHelloRequest {
        session_id: resp.session_id.clone(),
        server_hello,
        ephemeral: None,
        secret_request: Some(pb::SecretRequest {
            h_c: true,
            h_s: true,
            ..Default::default()
        }),
    };
    let e = c.c_server_hello(req(big)).await.unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");
    let ok = c.c_server_hello(req(sh)).await.unwrap().into_inner();
    assert_eq!(
        ok.secrets.len(),
        2,
        "the refused ServerHello changed nothing"
    );
    ping_ok(&mut c).await;
}

/// The handshake of a c_init_client_finished whose server asked for a client certificate,
/// with `server_cert` as the server's Certificate message.
fn handshake(server_cert: Vec<u8>) -> Vec<u8> {
    let ch = ClientHelloBuilder::new([0x61; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[9u8; 32])
        .build()
        .unwrap();
    let sh = server_hello(
        CipherSuite::TlsAes128GcmSha256,
        NamedGroup::X25519,
        &[8u8; 32],
        &[1u8; 32],
    );
    let ee = vec![8, 0, 0, 2, 0, 0];
    // CertificateRequest: empty context, signature_algorithms = [ed25519].
    let cr = vec![13, 0, 0, 11, 0, 0, 8, 0, 13, 0, 4, 0, 2, 8, 7];
    let cv = encode_certificate_verify(SignatureScheme::EcdsaSecp256r1Sha256, &[1; 70]).unwrap();
    let fin = encode_finished(&[5u8; 32]).unwrap();
    [ch, sh, ee, cr, server_cert, cv, fin].concat()
}

fn server_certificate() -> Vec<u8> {
    encode_certificate::<Vec<u8>>(&[], &[vec![0x30, 0x00]]).unwrap()
}

fn finished_request(handshake_messages: Vec<u8>, cert: Vec<u8>) -> pb::CInitClientFinishedRequest {
    pb::CInitClientFinishedRequest {
        handshake_messages,
        freshness: pb::Freshness::Sha256 as i32,
        key_id: "ed25519".into(),
        client_certificate: cert,
        last_exchange: true,
    }
}

#[tokio::test]
async fn a_client_certificate_of_many_entries_and_extensions_is_refused_before_signing() {
    let (dev, cs) = start();
    let mut c = cs.client("engine");
    let pem = std::fs::read(dev.path().join("client-ed25519.pem")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();

    // The review's request, scaled to stay well under the size caps: the engine's real leaf,
    // then 62 entries carrying 1,000 extensions each (about 250 KB).
    let entry_exts = ext_bytes(&unknown_exts(1000));
    let mut list = Vec::new();
    for i in 0..63 {
        let der: &[u8] = if i == 0 { &leaf } else { &[0x30, 0x00] };
        list.extend_from_slice(&(der.len() as u32).to_be_bytes()[1..]);
        list.extend_from_slice(der);
        let exts: &[u8] = if i == 0 { &[] } else { &entry_exts };
        list.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        list.extend_from_slice(exts);
    }
    let mut body = vec![0];
    body.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
    body.extend_from_slice(&list);
    let wide = encode_handshake(HandshakeType::Certificate, &body).unwrap();
    assert!(wide.len() < 256 * 1024);

    let e = c
        .c_init_client_finished(finished_request(handshake(server_certificate()), wide))
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // The same handshake with the plain client Certificate is signed.
    let plain = encode_certificate(&[], std::slice::from_ref(&leaf)).unwrap();
    let resp = c
        .c_init_client_finished(finished_request(handshake(server_certificate()), plain))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.certificate_verify.is_empty());
}

#[tokio::test]
async fn requests_over_the_request_cap_are_refused_and_the_cs_keeps_serving() {
    let (dev, cs) = start();
    let mut c = cs.client("engine");
    let pem = std::fs::read(dev.path().join("client-ed25519.pem")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    let plain = encode_certificate(&[], std::slice::from_ref(&leaf)).unwrap();

    // A server Certificate of 300 KB: over the Certificate cap (the CS does not otherwise
    // read the server's certificate in this exchange).
    let big = encode_certificate(&[], &[vec![0x30; 300_000]]).unwrap();
    let e = c
        .c_init_client_finished(finished_request(handshake(big), plain.clone()))
        .await
        .unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // Just over the 1 MiB request cap (a long key id): the LURK status still.
    let mut req = finished_request(handshake(server_certificate()), plain.clone());
    req.key_id = "k".repeat(1024 * 1024);
    let e = c.c_init_client_finished(req).await.unwrap_err();
    assert_eq!(status_of(&e), LurkStatus::InvalidFormat, "{e:?}");

    // 3 MB (under tonic's former 4 MiB default): refused by the decoding limit.
    let mut req = finished_request(handshake(server_certificate()), plain.clone());
    req.key_id = "k".repeat(3_000_000);
    let e = c.c_init_client_finished(req).await.unwrap_err();
    assert_eq!(e.code(), tonic::Code::OutOfRange, "{e:?}");

    ping_ok(&mut cs.client("engine2")).await;
    let resp = c
        .c_init_client_finished(finished_request(handshake(server_certificate()), plain))
        .await
        .unwrap()
        .into_inner();
    assert!(!resp.certificate_verify.is_empty());
}
