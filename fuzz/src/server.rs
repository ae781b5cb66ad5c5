//! The TLS 1.3 server the connection and CS targets talk to, in memory: ECDHE (x25519 or
//! P-256 after a HelloRetryRequest), an ECDSA P-256 certificate under a CA the engine trusts,
//! an optional CertificateRequest, tickets, KeyUpdate and post-handshake CertificateRequest.
//! It checks the client's Finished and knows every secret (the resumption master secret
//! included), so that a target can check none of them leaks.

use std::sync::Arc;

use lurk_engine::internals::deframer::Deframer;
use lurk_engine::internals::joiner::HandshakeJoiner;
use lurk_engine::internals::record::{
    encode_plaintext, RecordDecrypter, RecordEncrypter, RecordKeys,
};
use lurk_proto::key_schedule::{
    finished_verify_data, next_application_traffic_secret, traffic_key_iv, verify_finished,
    KeyScheduleEarly, KeyScheduleHandshake, KeyScheduleMaster, Secret,
};
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_certificate, encode_certificate_verify, encode_finished, encode_handshake,
    encode_key_update, encode_server_hello, CipherSuite, ClientHello, ContentType, HandshakeType,
    HashAlg, KeyUpdateRequest, NamedGroup, SignatureScheme, HELLO_RETRY_REQUEST_RANDOM,
};
use ring::agreement;
use ring::rand::SystemRandom;
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_ASN1_SIGNING};
use zeroize::Zeroizing;

pub type Res<T> = Result<T, String>;

/// The server's certificate (a P-256 leaf for `localhost`) and the CA the engine trusts.
pub struct Identity {
    pub ca: Vec<u8>,
    pub leaf: Vec<u8>,
    key: EcdsaKeyPair,
}

impl Identity {
    pub fn new() -> Arc<Self> {
        let ca_key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("key");
        let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("params");
        ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "lurk-fuzz CA");
        let ca = ca_params.self_signed(&ca_key).expect("CA");
        let leaf_key =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("leaf key");
        let leaf_params = rcgen::CertificateParams::new(vec!["localhost".to_owned()]).expect("p");
        let leaf = leaf_params
            .signed_by(&leaf_key, &ca, &ca_key)
            .expect("leaf");
        let key = EcdsaKeyPair::from_pkcs8(
            &ECDSA_P256_SHA256_ASN1_SIGNING,
            &leaf_key.serialize_der(),
            &SystemRandom::new(),
        )
        .expect("ring key");
        Arc::new(Self {
            ca: ca.der().to_vec(),
            leaf: leaf.der().to_vec(),
            key,
        })
    }
}

/// What the server does in a handshake.
#[derive(Clone, Copy, Debug, Default)]
pub struct Opts {
    /// Answer the first ClientHello with a HelloRetryRequest for P-256.
    pub hrr: bool,
    /// Send a CertificateRequest in the server flight.
    pub cert_request: bool,
    /// TLS_AES_256_GCM_SHA384 instead of TLS_AES_128_GCM_SHA256.
    pub sha384: bool,
}

#[derive(Debug, PartialEq, Eq, Clone, Copy)]
pub enum Stage {
    ClientHello,
    /// The ServerHello went out; the flight is next (`send_flight` or the fuzzer's records).
    Flight,
    /// The server Finished went out; the client's second flight is next.
    ClientFinished,
    Established,
}

pub struct Server {
    id: Arc<Identity>,
    pub opts: Opts,
    pub stage: Stage,
    rng: SystemRandom,
    suite: CipherSuite,
    hash: HashAlg,
    transcript: Transcript,
    /// The transcript through the ServerHello.
    hello_transcript: Option<Transcript>,
    hrr_sent: bool,
    hs: Option<KeyScheduleHandshake>,
    master: Option<KeyScheduleMaster>,
    shts: Option<Secret>,
    chts: Option<Secret>,
    server_app: Option<Secret>,
    client_app: Option<Secret>,
    /// The resumption master secret: known once the client's Finished checked.
    pub r: Option<Secret>,
    enc: Option<RecordEncrypter>,
    dec: Option<RecordDecrypter>,
    deframer: Deframer,
    joiner: HandshakeJoiner,
    /// Bytes for the engine.
    pub out: Vec<u8>,
    /// Application data the client sent.
    pub app_in: Vec<u8>,
    /// Handshake messages the client sent after the handshake (Certificate, Finished...).
    pub post_handshake_in: Vec<Vec<u8>>,
}

fn keys(suite: CipherSuite, secret: &Secret) -> RecordKeys {
    let (key, iv) = traffic_key_iv(suite, secret.as_bytes()).expect("a supported suite");
    RecordKeys::new(suite, Zeroizing::new(key.as_bytes().to_vec()), iv)
}

impl Server {
    pub fn new(id: Arc<Identity>, opts: Opts) -> Self {
        let suite = if opts.sha384 {
            CipherSuite::TlsAes256GcmSha384
        } else {
            CipherSuite::TlsAes128GcmSha256
        };
        Self {
            id,
            opts,
            stage: Stage::ClientHello,
            rng: SystemRandom::new(),
            suite,
            hash: suite.hash().expect("hash"),
            transcript: Transcript::new(),
            hello_transcript: None,
            hrr_sent: false,
            hs: None,
            master: None,
            shts: None,
            chts: None,
            server_app: None,
            client_app: None,
            r: None,
            enc: None,
            dec: None,
            deframer: Deframer::new(),
            joiner: HandshakeJoiner::new(),
            out: Vec::new(),
            app_in: Vec::new(),
            post_handshake_in: Vec::new(),
        }
    }

    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    /// The transcript hash so far.
    pub fn transcript_hash(&self) -> Vec<u8> {
        self.transcript.hash(self.hash)
    }

    /// If `flight` (handshake messages after the ServerHello) ends with a Finished, makes
    /// that Finished valid over the messages before it: what lets a mutated flight get past
    /// the Finished check.
    pub fn fix_flight_finished(&self, flight: &mut [u8]) {
        let (Some(hello), Some(shts)) = (&self.hello_transcript, &self.shts) else {
            return;
        };
        let Ok(messages) = lurk_proto::wire::split_handshake_messages(flight) else {
            return;
        };
        let Some(last) = messages.last() else { return };
        let len = last.raw.len();
        if last.typ != HandshakeType::Finished || len != 4 + self.hash.output_len() {
            return;
        }
        let start = flight.len() - len;
        let mut t = hello.clone();
        t.add(&flight[..start]);
        let vd = finished_verify_data(self.hash, shts.as_bytes(), &t.hash(self.hash));
        flight[start + 4..].copy_from_slice(&vd);
    }

    pub fn take_out(&mut self) -> Vec<u8> {
        std::mem::take(&mut self.out)
    }

    /// Feeds what the engine sent; answers the ClientHello (ServerHello only, or a
    /// HelloRetryRequest), checks the client's Finished.
    pub fn read(&mut self, bytes: &[u8]) -> Res<()> {
        self.deframer.push(bytes);
        while let Some(rec) = self.deframer.next_record().map_err(|e| e.to_string())? {
            let msg = match (&mut self.dec, rec.typ) {
                (_, ContentType::ChangeCipherSpec) => continue,
                (Some(dec), _) => dec.decrypt(rec).map_err(|e| e.to_string())?,
                (None, typ) => lurk_engine::internals::record::PlainMessage {
                    typ,
                    payload: rec.payload,
                },
            };
            match msg.typ {
                ContentType::Handshake => {
                    self.joiner.push(&msg.payload).map_err(|e| e.to_string())?;
                    while let Some(m) = self.joiner.next_message() {
                        self.on_message(m.encoded)?;
                    }
                }
                ContentType::ApplicationData if self.stage == Stage::Established => {
                    self.app_in.extend_from_slice(&msg.payload);
                }
                other => return Err(format!("client sent {other:?}")),
            }
        }
        Ok(())
    }

    fn on_message(&mut self, m: Vec<u8>) -> Res<()> {
        match self.stage {
            Stage::ClientHello => self.on_client_hello(&m),
            Stage::Flight => Err("client message before the server flight".into()),
            Stage::ClientFinished => {
                if m[0] == HandshakeType::Finished.get() {
                    let chts = self.chts.as_ref().expect("chts");
                    if !verify_finished(
                        self.hash,
                        chts.as_bytes(),
                        &self.transcript_hash(),
                        &m[4..],
                    ) {
                        return Err("client Finished does not verify".into());
                    }
                    self.transcript.add(&m);
                    let master = self.master.as_ref().expect("master");
                    self.r = Some(master.resumption_master_secret(&self.transcript_hash()));
                    let client_app = self.client_app.as_ref().expect("cats");
                    self.dec = Some(
                        RecordDecrypter::new(&keys(self.suite, client_app))
                            .map_err(|e| e.to_string())?,
                    );
                    self.stage = Stage::Established;
                } else {
                    self.transcript.add(&m);
                }
                Ok(())
            }
            Stage::Established => {
                if m[0] == HandshakeType::KeyUpdate.get() {
                    let next = next_application_traffic_secret(
                        self.hash,
                        self.client_app.as_ref().expect("cats").as_bytes(),
                    );
                    self.dec
                        .as_mut()
                        .expect("dec")
                        .rekey(&keys(self.suite, &next))
                        .map_err(|e| e.to_string())?;
                    self.client_app = Some(next);
                }
                self.post_handshake_in.push(m);
                Ok(())
            }
        }
    }

    fn on_client_hello(&mut self, m: &[u8]) -> Res<()> {
        let ch = ClientHello::parse(m).map_err(|e| e.to_string())?;
        let session_id = ch.legacy_session_id.to_vec();
        if !self.hrr_sent {
            // The suite the options prefer if offered (a client offering a PSK offers only
            // the suites of its hash), else the first offered.
            let preferred = if self.opts.sha384 {
                CipherSuite::TlsAes256GcmSha384
            } else {
                CipherSuite::TlsAes128GcmSha256
            };
            self.suite = if ch.cipher_suites.contains(&preferred) {
                preferred
            } else {
                *ch.cipher_suites
                    .iter()
                    .find(|s| s.hash().is_some())
                    .ok_or("no suite in common")?
            };
            self.hash = self.suite.hash().expect("hash");
        }
        self.transcript.add(m);
        if self.opts.hrr && !self.hrr_sent {
            self.hrr_sent = true;
            self.transcript
                .restart_for_hello_retry(self.hash)
                .map_err(|e| e.to_string())?;
            let hrr = hello_retry_request(&session_id, self.suite, NamedGroup::Secp256r1);
            self.transcript.add(&hrr);
            self.out
                .extend(encode_plaintext(ContentType::Handshake, &hrr, 0x0303));
            return Ok(());
        }
        let group = if self.hrr_sent {
            NamedGroup::Secp256r1
        } else {
            NamedGroup::X25519
        };
        let shares = ch.key_shares.as_ref().ok_or("no key_share")?;
        let peer = shares
            .iter()
            .find(|s| s.group == group)
            .ok_or("no share for the server's group")?
            .key_exchange
            .to_vec();
        let alg = match group {
            NamedGroup::X25519 => &agreement::X25519,
            _ => &agreement::ECDH_P256,
        };
        let private = agreement::EphemeralPrivateKey::generate(alg, &self.rng).expect("keygen");
        let public = private.compute_public_key().expect("public");
        let shared = agreement::agree_ephemeral(
            private,
            &agreement::UnparsedPublicKey::new(alg, &peer),
            |s| Zeroizing::new(s.to_vec()),
        )
        .map_err(|_| "key agreement")?;
        let sh = encode_server_hello(&[0x5a; 32], &session_id, self.suite, group, public.as_ref())
            .expect("ServerHello");
        self.transcript.add(&sh);
        self.hello_transcript = Some(self.transcript.clone());
        self.out
            .extend(encode_plaintext(ContentType::Handshake, &sh, 0x0303));
        let hs = KeyScheduleEarly::new(self.hash, None).into_handshake(Some(&shared));
        let th = self.transcript_hash();
        let shts = hs.server_handshake_traffic_secret(&th);
        self.chts = Some(hs.client_handshake_traffic_secret(&th));
        self.enc = Some(RecordEncrypter::new(&keys(self.suite, &shts)).expect("enc"));
        self.dec = Some(
            RecordDecrypter::new(&keys(self.suite, self.chts.as_ref().expect("chts")))
                .expect("dec"),
        );
        self.shts = Some(shts);
        self.hs = Some(hs);
        self.stage = Stage::Flight;
        Ok(())
    }

    /// Sends handshake bytes under the current key, adding them to the transcript.
    pub fn send_handshake(&mut self, msgs: &[u8]) {
        self.transcript.add(msgs);
        self.send_record(ContentType::Handshake, msgs);
    }

    /// Sends one protected record of any type (not added to the transcript).
    pub fn send_record(&mut self, typ: ContentType, payload: &[u8]) {
        let enc = self.enc.as_mut().expect("keys after the ServerHello");
        match enc.encrypt(typ, payload) {
            Ok(rec) => self.out.extend(rec),
            // Over the record size: cut (the fuzzer's chunk is at most 64 KiB).
            Err(_) => {
                for part in payload.chunks(16_384) {
                    if let Ok(rec) = enc.encrypt(typ, part) {
                        self.out.extend(rec);
                    }
                }
            }
        }
    }

    pub fn encrypted_extensions() -> Vec<u8> {
        encode_handshake(HandshakeType::EncryptedExtensions, &[0, 0]).expect("EE")
    }

    /// A CertificateRequest with `context` asking for ECDSA P-256 or Ed25519.
    pub fn certificate_request(context: &[u8]) -> Vec<u8> {
        let mut body = vec![context.len() as u8];
        body.extend_from_slice(context);
        // signature_algorithms (13): ecdsa_secp256r1_sha256, ed25519.
        body.extend_from_slice(&[0, 10, 0, 13, 0, 6, 0, 4, 4, 3, 8, 7]);
        encode_handshake(HandshakeType::CertificateRequest, &body).expect("CR")
    }

    pub fn certificate(&self) -> Vec<u8> {
        encode_certificate::<&[u8]>(&[], &[&self.id.leaf]).expect("Certificate")
    }

    /// A CertificateVerify over the transcript so far.
    pub fn certificate_verify(&self) -> Vec<u8> {
        let mut content = vec![0x20u8; 64];
        content.extend_from_slice(b"TLS 1.3, server CertificateVerify\0");
        content.extend_from_slice(&self.transcript_hash());
        let sig = self.id.key.sign(&self.rng, &content).expect("sign");
        encode_certificate_verify(SignatureScheme::EcdsaSecp256r1Sha256, sig.as_ref()).expect("CV")
    }

    /// The server Finished over the transcript so far.
    pub fn finished(&self) -> Vec<u8> {
        let shts = self.shts.as_ref().expect("shts");
        encode_finished(&finished_verify_data(
            self.hash,
            shts.as_bytes(),
            &self.transcript_hash(),
        ))
        .expect("Finished")
    }

    /// Sends the server Finished, then switches to the application keys.
    pub fn send_finished(&mut self) {
        let fin = self.finished();
        self.send_handshake(&fin);
        let master = self.hs.take().expect("handshake schedule").into_master();
        let th = self.transcript_hash();
        let sats = master.server_application_traffic_secret_0(&th);
        self.client_app = Some(master.client_application_traffic_secret_0(&th));
        self.enc
            .as_mut()
            .expect("enc")
            .rekey(&keys(self.suite, &sats))
            .expect("rekey");
        self.server_app = Some(sats);
        self.master = Some(master);
        self.stage = Stage::ClientFinished;
    }

    /// The whole valid flight: EncryptedExtensions, [CertificateRequest], Certificate,
    /// CertificateVerify, Finished.
    pub fn send_flight(&mut self) {
        self.send_handshake(&Self::encrypted_extensions());
        if self.opts.cert_request {
            self.send_handshake(&Self::certificate_request(&[]));
        }
        let cert = self.certificate();
        self.send_handshake(&cert);
        let cv = self.certificate_verify();
        self.send_handshake(&cv);
        self.send_finished();
    }

    /// A KeyUpdate, then the next server application key.
    pub fn key_update(&mut self, request: bool) {
        let req = if request {
            KeyUpdateRequest::UpdateRequested
        } else {
            KeyUpdateRequest::UpdateNotRequested
        };
        self.send_record(ContentType::Handshake, &encode_key_update(req));
        let next = next_application_traffic_secret(
            self.hash,
            self.server_app.as_ref().expect("sats").as_bytes(),
        );
        self.enc
            .as_mut()
            .expect("enc")
            .rekey(&keys(self.suite, &next))
            .expect("rekey");
        self.server_app = Some(next);
    }
}

/// A NewSessionTicket (RFC 8446 §4.6.1).
pub fn new_session_ticket(
    lifetime: u32,
    nonce: &[u8],
    ticket: &[u8],
    max_early: Option<u32>,
) -> Vec<u8> {
    let mut body = Vec::new();
    body.extend_from_slice(&lifetime.to_be_bytes());
    body.extend_from_slice(&0x0102_0304u32.to_be_bytes());
    body.push(nonce.len() as u8);
    body.extend_from_slice(nonce);
    body.extend_from_slice(&(ticket.len() as u16).to_be_bytes());
    body.extend_from_slice(ticket);
    match max_early {
        Some(m) => {
            body.extend_from_slice(&[0, 8, 0, 42, 0, 4]);
            body.extend_from_slice(&m.to_be_bytes());
        }
        None => body.extend_from_slice(&[0, 0]),
    }
    encode_handshake(HandshakeType::NewSessionTicket, &body).expect("NST")
}

/// A HelloRetryRequest asking for `group` (RFC 8446 §4.1.4).
fn hello_retry_request(session_id: &[u8], suite: CipherSuite, group: NamedGroup) -> Vec<u8> {
    let mut body = vec![3, 3];
    body.extend_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
    body.push(session_id.len() as u8);
    body.extend_from_slice(session_id);
    body.extend_from_slice(&suite.get().to_be_bytes());
    body.push(0);
    let g = group.get().to_be_bytes();
    let exts = [0, 43, 0, 2, 3, 4, 0, 51, 0, 2, g[0], g[1]];
    body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
    body.extend_from_slice(&exts);
    encode_handshake(HandshakeType::ServerHello, &body).expect("HRR")
}
