//! A sequence C handshake (`c_init_client_finished`, docs/design.md §2) whose server asked for
//! a client certificate: the engine's ClientHello, a server flight of fixed bytes (the CS
//! checks no server signature in sequence C), and the content the CS must sign.

use std::path::Path;

use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_certificate, encode_certificate_verify, encode_finished, encode_server_hello,
    CipherSuite, ClientHelloBuilder, HashAlg, NamedGroup, SignatureScheme,
};

/// The random the engine puts in its ClientHello (the CS derives the real one from it).
pub const ENGINE_RANDOM: [u8; 32] = [0x61; 32];

/// The handshake messages, each with its 4-byte header.
pub struct Handshake {
    pub client_hello: Vec<u8>,
    pub server_hello: Vec<u8>,
    pub encrypted_extensions: Vec<u8>,
    /// Empty context, signature_algorithms: ed25519 only.
    pub certificate_request: Vec<u8>,
    pub server_certificate: Vec<u8>,
    pub server_certificate_verify: Vec<u8>,
    pub server_finished: Vec<u8>,
}

impl Handshake {
    /// TLS_AES_128_GCM_SHA256, x25519 shares of fixed bytes, a CertificateRequest for ed25519.
    pub fn new() -> Self {
        Self {
            client_hello: ClientHelloBuilder::new(ENGINE_RANDOM)
                .legacy_session_id(&[1u8; 32])
                .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
                .supported_versions(&[0x0304])
                .supported_groups(&[NamedGroup::X25519])
                .signature_algorithms(&[SignatureScheme::Ed25519])
                .key_share(NamedGroup::X25519, &[9u8; 32])
                .build()
                .unwrap(),
            server_hello: encode_server_hello(
                &[0x42; 32],
                &[1u8; 32],
                CipherSuite::TlsAes128GcmSha256,
                NamedGroup::X25519,
                &[8u8; 32],
            )
            .unwrap(),
            encrypted_extensions: vec![8, 0, 0, 2, 0, 0],
            certificate_request: vec![13, 0, 0, 11, 0, 0, 8, 0, 13, 0, 4, 0, 2, 8, 7],
            server_certificate: encode_certificate::<Vec<u8>>(&[], &[vec![0x30, 0x00]]).unwrap(),
            server_certificate_verify: encode_certificate_verify(
                SignatureScheme::EcdsaSecp256r1Sha256,
                &[1; 70],
            )
            .unwrap(),
            server_finished: encode_finished(&[5u8; 32]).unwrap(),
        }
    }

    /// ClientHello through the server Finished, as `c_init_client_finished` takes them.
    pub fn messages(&self) -> Vec<u8> {
        self.with_client_hello(&self.client_hello).concat()
    }

    /// What the client CertificateVerify signs (RFC 8446 §4.4.3) when the ClientHello carries
    /// `random`, and `client_certificate` follows the server Finished.
    pub fn signed_content(&self, random: &[u8; 32], client_certificate: &[u8]) -> Vec<u8> {
        let mut ch = self.client_hello.clone();
        ch[6..38].copy_from_slice(random);
        let mut t = Transcript::new();
        for m in self.with_client_hello(&ch) {
            t.add(m);
        }
        t.add(client_certificate);
        let mut content = vec![0x20u8; 64];
        content.extend_from_slice(b"TLS 1.3, client CertificateVerify\0");
        content.extend_from_slice(&t.hash(HashAlg::Sha256));
        content
    }

    fn with_client_hello<'a>(&'a self, client_hello: &'a [u8]) -> [&'a [u8]; 7] {
        [
            client_hello,
            &self.server_hello,
            &self.encrypted_extensions,
            &self.certificate_request,
            &self.server_certificate,
            &self.server_certificate_verify,
            &self.server_finished,
        ]
    }
}

impl Default for Handshake {
    fn default() -> Self {
        Self::new()
    }
}

/// The DER leaf of the `ed25519` key's certificate of an init-dev setup in `dir`.
pub fn ed25519_leaf(dir: &Path) -> Vec<u8> {
    let pem = std::fs::read(dir.join("client-ed25519.pem")).unwrap();
    let leaf = rustls_pemfile::certs(&mut pem.as_slice())
        .next()
        .unwrap()
        .unwrap()
        .to_vec();
    leaf
}

/// The Ed25519 public key in `leaf`: the 32 bytes after its SubjectPublicKeyInfo prefix.
pub fn ed25519_public_key(leaf: &[u8]) -> &[u8] {
    let prefix = [
        0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
    ];
    let at = leaf
        .windows(prefix.len())
        .position(|w| w == prefix)
        .unwrap()
        + prefix.len();
    &leaf[at..at + 32]
}
