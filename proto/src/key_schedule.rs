//! The TLS 1.3 key schedule (RFC 8446 §7.1), Finished and binder values (§4.4.4, §4.2.11.2),
//! traffic keys (§7.3), key updates (§7.2) and resumption PSKs (§4.6.1).
//!
//! Both the Crypto Service and the engine use this module: the CS for the secrets it keeps, the
//! engine when it runs the schedule itself (docs/design.md §2, sequence D). The schedule is a typestate,
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

    /// Length in bytes (not secret).
    pub fn len(&self) -> usize {
        self.0.len()
    }

    /// True for a secret of no bytes.
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

/// The TLS 1.3 exporter (RFC 8446 §7.5):
/// `TLS-Exporter(label, context_value, key_length) =
///  HKDF-Expand-Label(Derive-Secret(exporter_master_secret, label, ""), "exporter",
///                    Hash(context_value), key_length)`.
/// TLS 1.3 makes no difference between an empty and an absent context.
///
/// `None` when the arguments break the HkdfLabel limits (§7.1): `label` empty or longer than
/// 249 bytes ("tls13 " ‖ label ≤ 255), `len` above 255 × Hash.length (RFC 5869 §2.3).
pub fn export_keying_material(
    hash: HashAlg,
    exporter_master_secret: &[u8],
    label: &[u8],
    context: &[u8],
    len: usize,
) -> Option<Secret> {
    if label.is_empty() || LABEL_PREFIX.len() + label.len() > 255 {
        return None;
    }
    if len > 255 * hash.output_len() {
        return None;
    }
    let secret = hkdf_expand_label(
        hash,
        exporter_master_secret,
        label,
        &hash.hash(&[]),
        hash.output_len(),
    );
    Some(hkdf_expand_label(
        hash,
        secret.as_bytes(),
        b"exporter",
        &hash.hash(context),
        len,
    ))
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

    /// The hash of the negotiated cipher suite, which every derivation here uses (RFC 8446 §7.1).
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
    /// The hash of the negotiated cipher suite, which every derivation here uses (RFC 8446 §7.1).
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
    /// The hash of the negotiated cipher suite, which every derivation here uses (RFC 8446 §7.1).
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

#[cfg(test)]
pub(crate) mod rfc8448_tests;

#[cfg(test)]
mod tests {
    use super::*;

    fn unhex(text: &str) -> Vec<u8> {
        hex::decode(text).expect("test constant is hex")
    }

    #[test]
    fn secret_debug_shows_only_its_length() {
        let secret = Secret::from_bytes(&[0xab; 32]);
        assert_eq!(format!("{secret:?}"), "Secret(32 bytes)");
        let schedule = KeyScheduleEarly::new(HashAlg::Sha256, Some(&[0xab; 32]));
        assert!(!format!("{schedule:?}").contains("ab, ab"));
        assert!(!format!("{schedule:?}").to_lowercase().contains("abab"));
    }

    #[test]
    fn secret_ct_eq_compares_contents_and_length() {
        let secret = Secret::from_vec(vec![1, 2, 3]);
        assert!(secret.ct_eq(&[1, 2, 3]));
        assert!(!secret.ct_eq(&[1, 2, 4]));
        assert!(!secret.ct_eq(&[1, 2]));
        assert_eq!(secret.len(), 3);
        assert!(!secret.is_empty());
        assert_eq!(secret.as_bytes(), &[1, 2, 3]);
    }

    #[test]
    fn every_label_is_the_rfc_one() {
        let all = [
            (SecretKind::ExternalPskBinderKey, "ext binder"),
            (SecretKind::ResumptionPskBinderKey, "res binder"),
            (SecretKind::ClientEarlyTrafficSecret, "c e traffic"),
            (SecretKind::EarlyExporterMasterSecret, "e exp master"),
            (SecretKind::ClientHandshakeTrafficSecret, "c hs traffic"),
            (SecretKind::ServerHandshakeTrafficSecret, "s hs traffic"),
            (SecretKind::ClientApplicationTrafficSecret, "c ap traffic"),
            (SecretKind::ServerApplicationTrafficSecret, "s ap traffic"),
            (SecretKind::ExporterMasterSecret, "exp master"),
            (SecretKind::ResumptionMasterSecret, "res master"),
            (SecretKind::Derived, "derived"),
            (SecretKind::FinishedKey, "finished"),
            (SecretKind::TrafficKey, "key"),
            (SecretKind::TrafficIv, "iv"),
            (SecretKind::TrafficUpdate, "traffic upd"),
            (SecretKind::ResumptionPsk, "resumption"),
        ];
        for (kind, label) in all {
            assert_eq!(kind.label(), label.as_bytes());
        }
    }

    #[test]
    fn empty_salt_is_hash_length_zeros() {
        for hash in [HashAlg::Sha256, HashAlg::Sha384] {
            let zeros = vec![0u8; hash.output_len()];
            let implicit = hkdf_extract(hash, &[], b"ikm");
            let explicit = hkdf_extract(hash, &zeros, b"ikm");
            assert!(implicit.ct_eq(explicit.as_bytes()));
            assert_eq!(implicit.len(), hash.output_len());
        }
    }

    /// psk_ke (RFC 8446 §4.2.9): no (EC)DHE, the Handshake Secret's IKM is Hash.length zeros.
    #[test]
    fn psk_only_handshake_uses_zero_ikm() {
        for hash in [HashAlg::Sha256, HashAlg::Sha384] {
            let psk = [7u8; 32];
            let zeros = vec![0u8; hash.output_len()];
            let psk_ke = KeyScheduleEarly::new(hash, Some(&psk)).into_handshake(None);
            let explicit_zeros =
                KeyScheduleEarly::new(hash, Some(&psk)).into_handshake(Some(&zeros));
            let with_ecdhe =
                KeyScheduleEarly::new(hash, Some(&psk)).into_handshake(Some(&[9u8; 32]));
            assert!(psk_ke
                .handshake_secret
                .ct_eq(explicit_zeros.handshake_secret.as_bytes()));
            assert!(!psk_ke
                .handshake_secret
                .ct_eq(with_ecdhe.handshake_secret.as_bytes()));
            let th = hash.hash(b"ClientHello..ServerHello");
            assert!(psk_ke.client_handshake_traffic_secret(&th).ct_eq(
                explicit_zeros
                    .client_handshake_traffic_secret(&th)
                    .as_bytes()
            ));
        }
        // Without a PSK the early secret is the one of RFC 8448 §3 (IKM zeros as well).
        let no_psk = KeyScheduleEarly::new(HashAlg::Sha256, None);
        assert!(no_psk.early_secret.ct_eq(&unhex(
            "33ad0a1c607ec03b09e6cd9893680ce210adf300aa1f2660e1b22e10f170f92a"
        )));
    }

    /// SHA-384 has no RFC 8448 trace: these values come from an independent Python
    /// implementation (hmac/hashlib) of RFC 8446 §7.1, with ECDHE = 01..20 and the transcript
    /// hash SHA-384("transcript").
    #[test]
    fn sha384_schedule_matches_an_independent_implementation() {
        let hash = HashAlg::Sha384;
        let early = KeyScheduleEarly::new(hash, None);
        assert!(early.early_secret.ct_eq(&unhex(
            "7ee8206f5570023e6dc7519eb1073bc4e791ad37b5c382aa10ba18e2357e716971f9362f2c2fe2a76bfd78dfec4ea9b5"
        )));
        assert!(derived_salt(hash, early.early_secret.as_bytes()).ct_eq(&unhex(
            "1591dac5cbbf0330a4a84de9c753330e92d01f0a88214b4464972fd668049e93e52f2b16fad922fdc0584478428f282b"
        )));
        let ecdhe: Vec<u8> = (1..=32).collect();
        let handshake = early.into_handshake(Some(&ecdhe));
        assert!(handshake.handshake_secret.ct_eq(&unhex(
            "20a354fb9049f8995b72aa0f1ab1407014e4f8ee3d5a7cf96050ae1ae81c50444ad026c9897ab0ebab5802bfcc57f2a4"
        )));
        let th = hash.hash(b"transcript");
        let chts = handshake.client_handshake_traffic_secret(&th);
        assert!(chts.ct_eq(&unhex(
            "68e11174d7df6fb5ec4927f2fde40a75ee4a7e35e6f95187ca9a087d65dbfdf5d03c1090c627c4f5713304dff21aada3"
        )));
        let (key, iv) =
            traffic_key_iv(CipherSuite::TlsAes256GcmSha384, chts.as_bytes()).expect("supported");
        assert!(key.ct_eq(&unhex(
            "e4c48798fa9e60ef3ce858e489ee6b2a6a6bdfb3219d0a44d3256a00b2fc66b8"
        )));
        assert_eq!(iv.to_vec(), unhex("76b430222f7dcaa15dddd50d"));
        assert_eq!(
            finished_verify_data(hash, chts.as_bytes(), &th),
            unhex("77d06c7204189d0dd0e7755a4f006c4668357d1610e331297f49eee66d77c6a27e82d3dca192ea0172b54b0552b25d64")
        );
        let master = handshake.into_master();
        assert!(master.master_secret.ct_eq(&unhex(
            "c01176af5b1206edfb9dda9369796bc341484a9873d08b8120e7aba9fd05ac0a9830d3d9bb8e6dd2ce7b693d0103730d"
        )));
    }

    #[test]
    fn traffic_key_lengths_follow_the_suite() {
        let secret = [5u8; 32];
        for (suite, key_len) in [
            (CipherSuite::TlsAes128GcmSha256, 16),
            (CipherSuite::TlsChacha20Poly1305Sha256, 32),
        ] {
            let (key, iv) = traffic_key_iv(suite, &secret).expect("supported");
            assert_eq!(key.len(), key_len);
            assert_eq!(iv.len(), TRAFFIC_IV_LEN);
        }
        let (key, _) = traffic_key_iv(CipherSuite::TlsAes256GcmSha384, &[5u8; 48]).expect("ok");
        assert_eq!(key.len(), 32);
        assert!(traffic_key_iv(CipherSuite::TlsAes128CcmSha256, &secret).is_none());
        assert!(traffic_key_iv(CipherSuite::Unknown(0x1399), &secret).is_none());
    }

    #[test]
    fn verify_finished_rejects_wrong_length_and_wrong_transcript() {
        let hash = HashAlg::Sha256;
        let base = [3u8; 32];
        let th = hash.hash(b"messages");
        let verify_data = finished_verify_data(hash, &base, &th);
        assert!(verify_finished(hash, &base, &th, &verify_data));
        assert!(!verify_finished(hash, &base, &th, &verify_data[..16]));
        assert!(!verify_finished(
            hash,
            &base,
            &hash.hash(b"other"),
            &verify_data
        ));
        assert!(!verify_finished(hash, &[4u8; 32], &th, &verify_data));
    }

    #[test]
    fn psk_kind_maps_to_the_contract() {
        for kind in [PskKind::External, PskKind::Resumption] {
            assert_eq!(PskKind::from(pb::PskType::from(kind)), kind);
        }
        assert_eq!(PskKind::from(pb::PskType::Resumption), PskKind::Resumption);
    }

    #[test]
    #[should_panic(expected = "HkdfLabel.context")]
    fn oversized_context_is_refused() {
        hkdf_expand_label(HashAlg::Sha256, &[0u8; 32], b"key", &[0u8; 256], 16);
    }
}
