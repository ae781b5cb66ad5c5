//! The TLS 1.3 key schedule (RFC 8446 §7.1), Finished and binder values (§4.4.4, §4.2.11.2),
//! traffic keys (§7.3), key updates (§7.2) and resumption PSKs (§4.6.1).
//!
//! Both the Crypto Service and the engine use this module: the CS for the secrets it keeps, the
//! engine when it runs the schedule itself (LURK.md §2, sequence D). The schedule is a typestate,
//! as in rustls: [`KeyScheduleEarly`] → [`KeyScheduleHandshake`] → [`KeyScheduleMaster`]; each
//! stage consumes the one before, so a secret of a stage that is over can no longer be derived,
//! and every intermediate secret is zeroized when its stage is dropped. All labels sit in one
//! enum, [`SecretKind`].

use std::fmt;

use ring::{hkdf, hmac};
use subtle::ConstantTimeEq;
use zeroize::Zeroizing;

use crate::pb;
use crate::wire::enums::{CipherSuite, HashAlg};

/// Length of the per-record nonce base (RFC 8446 §5.3: iv_length = 12 for every TLS 1.3 AEAD).
pub const TRAFFIC_IV_LEN: usize = 12;

/// Prefix of every HkdfLabel label (RFC 8446 §7.1).
const LABEL_PREFIX: &[u8] = b"tls13 ";

/// A secret byte string, zeroized when dropped and never printed. It has no `PartialEq`: compare
/// with [`Secret::ct_eq`], which takes the same time wherever the bytes differ.
#[derive(Clone)]
pub struct Secret(Zeroizing<Vec<u8>>);

impl Secret {
    /// Copies `bytes` into a new secret.
    pub fn from_bytes(bytes: &[u8]) -> Self {
        Self(Zeroizing::new(bytes.to_vec()))
    }

    /// Takes ownership of `bytes` (which are zeroized when the secret is dropped).
    pub fn from_vec(bytes: Vec<u8>) -> Self {
        Self(Zeroizing::new(bytes))
    }

    /// The secret's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    pub fn len(&self) -> usize {
        self.0.len()
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// Compares in constant time (for equal lengths; lengths are not secret).
    pub fn ct_eq(&self, other: &[u8]) -> bool {
        self.0.as_slice().ct_eq(other).into()
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Secret({} bytes)", self.0.len())
    }
}

/// Every label of the TLS 1.3 key schedule (RFC 8446 §7.1, §7.2, §7.3, §4.4.4, §4.6.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// binder_key for an external PSK ("ext binder").
    ExternalPskBinderKey,
    /// binder_key for a resumption PSK ("res binder").
    ResumptionPskBinderKey,
    /// client_early_traffic_secret ("c e traffic").
    ClientEarlyTrafficSecret,
    /// early_exporter_master_secret ("e exp master").
    EarlyExporterMasterSecret,
    /// client_handshake_traffic_secret ("c hs traffic").
    ClientHandshakeTrafficSecret,
    /// server_handshake_traffic_secret ("s hs traffic").
    ServerHandshakeTrafficSecret,
    /// client_application_traffic_secret_0 ("c ap traffic").
    ClientApplicationTrafficSecret,
    /// server_application_traffic_secret_0 ("s ap traffic").
    ServerApplicationTrafficSecret,
    /// exporter_master_secret ("exp master").
    ExporterMasterSecret,
    /// resumption_master_secret ("res master").
    ResumptionMasterSecret,
    /// The salt of the next Extract ("derived").
    Derived,
    /// finished_key (§4.4.4, "finished").
    FinishedKey,
    /// The AEAD key of a traffic secret (§7.3, "key").
    TrafficKey,
    /// The AEAD nonce base of a traffic secret (§7.3, "iv").
    TrafficIv,
    /// application_traffic_secret_N+1 (§7.2, "traffic upd").
    TrafficUpdate,
    /// A ticket's PSK (§4.6.1, "resumption").
    ResumptionPsk,
}

impl SecretKind {
    /// The HkdfLabel label without its "tls13 " prefix.
    pub fn label(self) -> &'static [u8] {
        match self {
            Self::ExternalPskBinderKey => b"ext binder",
            Self::ResumptionPskBinderKey => b"res binder",
            Self::ClientEarlyTrafficSecret => b"c e traffic",
            Self::EarlyExporterMasterSecret => b"e exp master",
            Self::ClientHandshakeTrafficSecret => b"c hs traffic",
            Self::ServerHandshakeTrafficSecret => b"s hs traffic",
            Self::ClientApplicationTrafficSecret => b"c ap traffic",
            Self::ServerApplicationTrafficSecret => b"s ap traffic",
            Self::ExporterMasterSecret => b"exp master",
            Self::ResumptionMasterSecret => b"res master",
            Self::Derived => b"derived",
            Self::FinishedKey => b"finished",
            Self::TrafficKey => b"key",
            Self::TrafficIv => b"iv",
            Self::TrafficUpdate => b"traffic upd",
            Self::ResumptionPsk => b"resumption",
        }
    }
}

/// Where a PSK comes from; it selects the binder key's label (RFC 8446 §7.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum PskKind {
    /// Provisioned out of band ("ext binder").
    External,
    /// Derived from a NewSessionTicket ("res binder").
    Resumption,
}

impl From<pb::PskType> for PskKind {
    fn from(psk_type: pb::PskType) -> Self {
        match psk_type {
            pb::PskType::External => Self::External,
            pb::PskType::Resumption => Self::Resumption,
        }
    }
}

impl From<PskKind> for pb::PskType {
    fn from(kind: PskKind) -> Self {
        match kind {
            PskKind::External => Self::External,
            PskKind::Resumption => Self::Resumption,
        }
    }
}

/// HKDF-Extract(salt, IKM) (RFC 5869 §2.2): HMAC-Hash(salt, IKM). An empty salt stands for a
/// string of Hash.length zeros, as RFC 8446 §7.1 writes "0".
pub fn hkdf_extract(hash: HashAlg, salt: &[u8], ikm: &[u8]) -> Secret {
    let zero_salt;
    let salt = if salt.is_empty() {
        zero_salt = vec![0u8; hash.output_len()];
        zero_salt.as_slice()
    } else {
        salt
    };
    let key = hmac::Key::new(hash.hmac_algorithm(), salt);
    Secret::from_bytes(hmac::sign(&key, ikm).as_ref())
}

/// An output length for ring's HKDF-Expand.
struct OutputLength(usize);

impl hkdf::KeyType for OutputLength {
    fn len(&self) -> usize {
        self.0
    }
}

/// HKDF-Expand-Label(Secret, Label, Context, Length) (RFC 8446 §7.1); `label` is given without
/// its "tls13 " prefix.
///
/// # Panics
/// If an argument breaks the HkdfLabel limits: `label` empty or longer than 249 bytes,
/// `context` longer than 255 bytes, `len` above 255 × Hash.length. Every caller in this crate
/// passes fixed labels, hashes, ticket nonces (at most 255 bytes on the wire, §4.6.1) and key
/// lengths, so these are programming errors.
pub fn hkdf_expand_label(
    hash: HashAlg,
    secret: &[u8],
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Secret {
    let full_label_len = LABEL_PREFIX.len() + label.len();
    assert!(
        (7..=255).contains(&full_label_len),
        "HkdfLabel.label must be 7..255 bytes (RFC 8446 §7.1)"
    );
    assert!(
        context.len() <= 255,
        "HkdfLabel.context must be at most 255 bytes (RFC 8446 §7.1)"
    );
    let output_len = u16::try_from(len).expect("HKDF-Expand-Label length fits in a uint16");

    let output_len_bytes = output_len.to_be_bytes();
    // Both lengths were checked against 255 above.
    let label_len = [full_label_len as u8];
    let context_len = [context.len() as u8];
    let info: [&[u8]; 6] = [
        &output_len_bytes,
        &label_len,
        LABEL_PREFIX,
        label,
        &context_len,
        context,
    ];

    let prk = hkdf::Prk::new_less_safe(hash.hkdf_algorithm(), secret);
    let mut output = Zeroizing::new(vec![0u8; len]);
    prk.expand(&info, OutputLength(len))
        .and_then(|okm| okm.fill(&mut output))
        .expect("HKDF-Expand output is at most 255 * Hash.length (RFC 5869 §2.3)");
    Secret(output)
}

/// Derive-Secret(Secret, Label, Messages) (RFC 8446 §7.1), given Transcript-Hash(Messages).
pub fn derive_secret(
    hash: HashAlg,
    secret: &[u8],
    kind: SecretKind,
    transcript_hash: &[u8],
) -> Secret {
    hkdf_expand_label(
        hash,
        secret,
        kind.label(),
        transcript_hash,
        hash.output_len(),
    )
}

/// Derive-Secret(secret, "derived", "") : the salt of the next stage's Extract.
fn derived_salt(hash: HashAlg, secret: &[u8]) -> Secret {
    derive_secret(hash, secret, SecretKind::Derived, &hash.hash(&[]))
}

/// The key schedule up to the Early Secret (RFC 8446 §7.1): binder key and 0-RTT secrets.
#[derive(Clone, Debug)]
pub struct KeyScheduleEarly {
    hash: HashAlg,
    early_secret: Secret,
}

impl KeyScheduleEarly {
    /// Early Secret = HKDF-Extract(0, PSK); without a PSK, the IKM is Hash.length zeros.
    pub fn new(hash: HashAlg, psk: Option<&[u8]>) -> Self {
        let early_secret = match psk {
            Some(psk) => hkdf_extract(hash, &[], psk),
            None => hkdf_extract(hash, &[], &vec![0u8; hash.output_len()]),
        };
        Self { hash, early_secret }
    }

    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    /// binder_key = Derive-Secret(Early Secret, "ext binder" | "res binder", "").
    pub fn binder_key(&self, psk_kind: PskKind) -> Secret {
        let kind = match psk_kind {
            PskKind::External => SecretKind::ExternalPskBinderKey,
            PskKind::Resumption => SecretKind::ResumptionPskBinderKey,
        };
        derive_secret(
            self.hash,
            self.early_secret.as_bytes(),
            kind,
            &self.hash.hash(&[]),
        )
    }

    /// client_early_traffic_secret, over the transcript hash of the ClientHello.
    pub fn client_early_traffic_secret(&self, client_hello_hash: &[u8]) -> Secret {
        self.derive(SecretKind::ClientEarlyTrafficSecret, client_hello_hash)
    }

    /// early_exporter_master_secret, over the transcript hash of the ClientHello.
    pub fn early_exporter_master_secret(&self, client_hello_hash: &[u8]) -> Secret {
        self.derive(SecretKind::EarlyExporterMasterSecret, client_hello_hash)
    }

    /// Handshake Secret = HKDF-Extract(Derive-Secret(Early Secret, "derived", ""), (EC)DHE).
    /// `None` is psk_ke mode (RFC 8446 §4.2.9): the IKM is Hash.length zeros (§7.1).
    pub fn into_handshake(self, ecdhe_shared_secret: Option<&[u8]>) -> KeyScheduleHandshake {
        let salt = derived_salt(self.hash, self.early_secret.as_bytes());
        let handshake_secret = match ecdhe_shared_secret {
            Some(shared) => hkdf_extract(self.hash, salt.as_bytes(), shared),
            None => hkdf_extract(
                self.hash,
                salt.as_bytes(),
                &vec![0u8; self.hash.output_len()],
            ),
        };
        KeyScheduleHandshake {
            hash: self.hash,
            handshake_secret,
        }
    }

    fn derive(&self, kind: SecretKind, transcript_hash: &[u8]) -> Secret {
        derive_secret(
            self.hash,
            self.early_secret.as_bytes(),
            kind,
            transcript_hash,
        )
    }
}

/// The key schedule at the Handshake Secret (RFC 8446 §7.1).
#[derive(Clone, Debug)]
pub struct KeyScheduleHandshake {
    hash: HashAlg,
    handshake_secret: Secret,
}

impl KeyScheduleHandshake {
    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    /// client_handshake_traffic_secret, over Transcript-Hash(ClientHello..ServerHello).
    pub fn client_handshake_traffic_secret(&self, hello_hash: &[u8]) -> Secret {
        self.derive(SecretKind::ClientHandshakeTrafficSecret, hello_hash)
    }

    /// server_handshake_traffic_secret, over Transcript-Hash(ClientHello..ServerHello).
    pub fn server_handshake_traffic_secret(&self, hello_hash: &[u8]) -> Secret {
        self.derive(SecretKind::ServerHandshakeTrafficSecret, hello_hash)
    }

    /// Master Secret = HKDF-Extract(Derive-Secret(Handshake Secret, "derived", ""), 0).
    pub fn into_master(self) -> KeyScheduleMaster {
        let salt = derived_salt(self.hash, self.handshake_secret.as_bytes());
        let master_secret = hkdf_extract(
            self.hash,
            salt.as_bytes(),
            &vec![0u8; self.hash.output_len()],
        );
        KeyScheduleMaster {
            hash: self.hash,
            master_secret,
        }
    }

    fn derive(&self, kind: SecretKind, transcript_hash: &[u8]) -> Secret {
        derive_secret(
            self.hash,
            self.handshake_secret.as_bytes(),
            kind,
            transcript_hash,
        )
    }
}

/// The key schedule at the Master Secret (RFC 8446 §7.1).
#[derive(Clone, Debug)]
pub struct KeyScheduleMaster {
    hash: HashAlg,
    master_secret: Secret,
}

impl KeyScheduleMaster {
    pub fn hash(&self) -> HashAlg {
        self.hash
    }

    /// client_application_traffic_secret_0, over Transcript-Hash(ClientHello..server Finished).
    pub fn client_application_traffic_secret_0(&self, server_finished_hash: &[u8]) -> Secret {
        self.derive(
            SecretKind::ClientApplicationTrafficSecret,
            server_finished_hash,
        )
    }

    /// server_application_traffic_secret_0, over Transcript-Hash(ClientHello..server Finished).
    pub fn server_application_traffic_secret_0(&self, server_finished_hash: &[u8]) -> Secret {
        self.derive(
            SecretKind::ServerApplicationTrafficSecret,
            server_finished_hash,
        )
    }

    /// exporter_master_secret, over Transcript-Hash(ClientHello..server Finished).
    pub fn exporter_master_secret(&self, server_finished_hash: &[u8]) -> Secret {
        self.derive(SecretKind::ExporterMasterSecret, server_finished_hash)
    }

    /// resumption_master_secret, over Transcript-Hash(ClientHello..client Finished).
    pub fn resumption_master_secret(&self, client_finished_hash: &[u8]) -> Secret {
        self.derive(SecretKind::ResumptionMasterSecret, client_finished_hash)
    }

    fn derive(&self, kind: SecretKind, transcript_hash: &[u8]) -> Secret {
        derive_secret(
            self.hash,
            self.master_secret.as_bytes(),
            kind,
            transcript_hash,
        )
    }
}

/// A ticket's PSK (RFC 8446 §4.6.1):
/// HKDF-Expand-Label(resumption_master_secret, "resumption", ticket_nonce, Hash.length).
pub fn resumption_psk(
    hash: HashAlg,
    resumption_master_secret: &[u8],
    ticket_nonce: &[u8],
) -> Secret {
    hkdf_expand_label(
        hash,
        resumption_master_secret,
        SecretKind::ResumptionPsk.label(),
        ticket_nonce,
        hash.output_len(),
    )
}

/// finished_key = HKDF-Expand-Label(BaseKey, "finished", "", Hash.length) (RFC 8446 §4.4.4).
pub fn finished_key(hash: HashAlg, base_secret: &[u8]) -> Secret {
    hkdf_expand_label(
        hash,
        base_secret,
        SecretKind::FinishedKey.label(),
        &[],
        hash.output_len(),
    )
}

/// verify_data = HMAC(finished_key, Transcript-Hash(...)) (RFC 8446 §4.4.4). The base secret is
/// the sender's handshake traffic secret (or its application traffic secret for post-handshake
/// authentication, or a binder key, §4.2.11.2).
pub fn finished_verify_data(hash: HashAlg, base_secret: &[u8], transcript_hash: &[u8]) -> Vec<u8> {
    let key = finished_hmac_key(hash, base_secret);
    hmac::sign(&key, transcript_hash).as_ref().to_vec()
}

/// Checks a received Finished.verify_data in constant time (RFC 8446 §4.4.4: the recipient
/// MUST verify it is correct).
pub fn verify_finished(
    hash: HashAlg,
    base_secret: &[u8],
    transcript_hash: &[u8],
    received_verify_data: &[u8],
) -> bool {
    let key = finished_hmac_key(hash, base_secret);
    hmac::verify(&key, transcript_hash, received_verify_data).is_ok()
}

fn finished_hmac_key(hash: HashAlg, base_secret: &[u8]) -> hmac::Key {
    let key_bytes = finished_key(hash, base_secret);
    hmac::Key::new(hash.hmac_algorithm(), key_bytes.as_bytes())
}

/// A PSK binder (RFC 8446 §4.2.11.2): computed as a Finished verify_data with the binder key as
/// base secret, over Transcript-Hash(ClientHello truncated before the binders list) — preceded
/// by the HelloRetryRequest exchange when there was one.
pub fn binder(hash: HashAlg, binder_key: &[u8], truncated_client_hello_hash: &[u8]) -> Vec<u8> {
    finished_verify_data(hash, binder_key, truncated_client_hello_hash)
}

/// Checks a PSK binder in constant time (RFC 8446 §4.2.11.2).
pub fn verify_binder(
    hash: HashAlg,
    binder_key: &[u8],
    truncated_client_hello_hash: &[u8],
    received_binder: &[u8],
) -> bool {
    verify_finished(
        hash,
        binder_key,
        truncated_client_hello_hash,
        received_binder,
    )
}

/// The AEAD key length of a cipher suite this project implements (RFC 8446 §B.4), else None.
pub fn aead_key_len(suite: CipherSuite) -> Option<usize> {
    match suite {
        CipherSuite::TlsAes128GcmSha256 => Some(16),
        CipherSuite::TlsAes256GcmSha384 | CipherSuite::TlsChacha20Poly1305Sha256 => Some(32),
        _ => None,
    }
}

/// The record protection key and nonce base of a traffic secret (RFC 8446 §7.3):
/// key = HKDF-Expand-Label(Secret, "key", "", key_length),
/// iv = HKDF-Expand-Label(Secret, "iv", "", iv_length). None for a suite this project does not
/// implement.
pub fn traffic_key_iv(
    suite: CipherSuite,
    traffic_secret: &[u8],
) -> Option<(Secret, [u8; TRAFFIC_IV_LEN])> {
    let hash = suite.hash()?;
    let key_len = aead_key_len(suite)?;
    let key = hkdf_expand_label(
        hash,
        traffic_secret,
        SecretKind::TrafficKey.label(),
        &[],
        key_len,
    );
    let iv_bytes = hkdf_expand_label(
        hash,
        traffic_secret,
        SecretKind::TrafficIv.label(),
        &[],
        TRAFFIC_IV_LEN,
    );
    let mut iv = [0u8; TRAFFIC_IV_LEN];
    iv.copy_from_slice(iv_bytes.as_bytes());
    Some((key, iv))
}

/// application_traffic_secret_N+1 = HKDF-Expand-Label(application_traffic_secret_N,
/// "traffic upd", "", Hash.length) (RFC 8446 §7.2, after a KeyUpdate).
pub fn next_application_traffic_secret(hash: HashAlg, traffic_secret: &[u8]) -> Secret {
    hkdf_expand_label(
        hash,
        traffic_secret,
        SecretKind::TrafficUpdate.label(),
        &[],
        hash.output_len(),
    )
}
