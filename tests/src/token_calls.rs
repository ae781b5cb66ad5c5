//! The token-bound exchanges the token e2e tests (token_fault.rs, token_recycle.rs) make
//! against a real `lurk-cs serve`: a CS-made x25519 key pair, its derive, an ed25519
//! signature. Each returns the CS's status as it came.

use lurk_engine::cs_channel::CsClient;
use lurk_proto::freshness::{client_random, FreshnessMode};
use lurk_proto::pb;
use lurk_proto::wire::{
    encode_certificate, CertificateVerify, CipherSuite, ClientHelloBuilder, NamedGroup,
    SignatureScheme,
};

use crate::sequence_c::{ed25519_leaf, ed25519_public_key, Handshake, ENGINE_RANDOM};
use crate::DevSetup;

/// The ClientHello an engine sends for an x25519 handshake: one empty x25519 share for the
/// CS to fill.
pub fn x25519_client_hello() -> Vec<u8> {
    ClientHelloBuilder::new([7u8; 32])
        .legacy_session_id(&[1u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .server_name("localhost")
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[])
        .build()
        .unwrap()
}

/// c_init_client_hello with one empty x25519 share (one C_GenerateKeyPair): the session id
/// and the CS's share, which must be a usable x25519 public key.
pub async fn x25519_hello(c: &mut CsClient) -> Result<(Vec<u8>, Vec<u8>), tonic::Status> {
    let ch = x25519_client_hello();
    let r = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: ch,
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![],
            secret_request: None,
        })
        .await?
        .into_inner();
    let share = r
        .key_shares
        .first()
        .expect("one share")
        .key_exchange
        .clone();
    assert_eq!(share.len(), 32);
    assert_ne!(share, vec![0u8; 32]);
    Ok((r.session_id, share))
}

/// c_server_hello selecting x25519 with a fresh server key, for a session made by
/// [`x25519_hello`]: the CS derives with its token key pair (one C_DeriveKey).
pub async fn x25519_server_hello(c: &mut CsClient, session_id: &[u8]) -> Result<(), tonic::Status> {
    let rng = ring::rand::SystemRandom::new();
    let peer = ring::agreement::EphemeralPrivateKey::generate(&ring::agreement::X25519, &rng)
        .unwrap()
        .compute_public_key()
        .unwrap();
    c.c_server_hello(pb::CServerHelloRequest {
        session_id: session_id.to_vec(),
        server_hello: crate::server_hello(
            CipherSuite::TlsAes128GcmSha256,
            NamedGroup::X25519,
            peer.as_ref(),
            &[1u8; 32],
        ),
        ephemeral: None,
        secret_request: None,
    })
    .await
    .map(|_| ())
}

/// c_init_client_finished with init-dev's ed25519 key (one C_Sign): Ok only with a
/// signature that verifies over the fresh random.
pub async fn ed25519_sign(dev: &DevSetup, c: &mut CsClient) -> Result<(), tonic::Status> {
    let hs = Handshake::new();
    let leaf = ed25519_leaf(&dev.path());
    let client_cert = encode_certificate(&[], std::slice::from_ref(&leaf)).unwrap();
    let resp = c
        .c_init_client_finished(pb::CInitClientFinishedRequest {
            handshake_messages: hs.messages(),
            freshness: pb::Freshness::Sha256 as i32,
            key_id: "ed25519".into(),
            client_certificate: client_cert.clone(),
            last_exchange: true,
        })
        .await?
        .into_inner();
    let cv = CertificateVerify::parse(&resp.certificate_verify).unwrap();
    let fresh = client_random(pb::Freshness::Sha256, FreshnessMode::Draft, &ENGINE_RANDOM);
    ring::signature::UnparsedPublicKey::new(&ring::signature::ED25519, ed25519_public_key(&leaf))
        .verify(&hs.signed_content(&fresh, &client_cert), cv.signature)
        .expect("every signature the CS returns verifies");
    Ok(())
}
