//! What a configuration needs from the token, checked once at start-up against
//! `C_GetMechanismList` / `C_GetMechanismInfo` (docs/design.md §8), so that a token lacking a
//! mechanism fails the start with a list of what is missing instead of failing handshakes.

use cryptoki::mechanism::{MechanismInfo, MechanismType};
use lurk_proto::wire::NamedGroup;

use super::sign::SigningKeyType;
use super::Token;
use crate::error::TokenError;

/// One use of the token.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Need {
    /// Signing CertificateVerify with a key of this type.
    Sign(SigningKeyType),
    /// Generating (EC)DHE key pairs for this group in the token and deriving with them.
    TokenEphemeral(NamedGroup),
    /// Sealing and unsealing stored PSKs (AES-GCM).
    Sealing,
    /// Creating the sealing key (AES key generation).
    SealingKeyGen,
    /// Generating a signing key of this type in the token.
    GenerateSigningKey(SigningKeyType),
    /// Any other mechanism, with what it is for.
    Mechanism {
        /// The PKCS#11 mechanism.
        mechanism: MechanismType,
        /// What the CS uses it for, in the start-up error.
        purpose: &'static str,
    },
}

impl Need {
    /// What the service needs: a signature mechanism per configured key type, sealing, and
    /// with the token ephemeral backend, key generation and ECDH for every supported group.
    pub fn for_service(
        key_types: impl IntoIterator<Item = SigningKeyType>,
        token_ephemerals: bool,
    ) -> Vec<Need> {
        let mut needs: Vec<Need> = key_types.into_iter().map(Need::Sign).collect();
        needs.push(Need::Sealing);
        if token_ephemerals {
            needs.extend(NamedGroup::SUPPORTED.map(Need::TokenEphemeral));
        }
        needs
    }
}

/// The operation a mechanism must allow.
#[derive(Clone, Copy)]
enum Op {
    Sign,
    Derive,
    GenerateKeyPair,
    Generate,
    EncryptDecrypt,
    Any,
}

impl Op {
    fn allowed(self, info: &MechanismInfo) -> bool {
        match self {
            Op::Sign => info.sign(),
            Op::Derive => info.derive(),
            Op::GenerateKeyPair => info.generate_key_pair(),
            Op::Generate => info.generate(),
            Op::EncryptDecrypt => info.encrypt() && info.decrypt(),
            Op::Any => true,
        }
    }

    fn flag(self) -> &'static str {
        match self {
            Op::Sign => "CKF_SIGN",
            Op::Derive => "CKF_DERIVE",
            Op::GenerateKeyPair => "CKF_GENERATE_KEY_PAIR",
            Op::Generate => "CKF_GENERATE",
            Op::EncryptDecrypt => "CKF_ENCRYPT|CKF_DECRYPT",
            Op::Any => "",
        }
    }
}

impl Token {
    /// Checks that the token can do everything in `needs`; the error lists each missing
    /// mechanism once, with what it is for, e.g. `CKM_ECDH1_DERIVE (token ephemerals)`.
    pub fn check_mechanisms(&self, needs: &[Need]) -> Result<(), TokenError> {
        let mut missing: Vec<String> = Vec::new();
        let mut add = |m: String| {
            if !missing.contains(&m) {
                missing.push(m);
            }
        };
        for need in needs {
            match *need {
                Need::Sign(kind) => {
                    let (mech, purpose) = match kind {
                        SigningKeyType::Ed25519 => (MechanismType::EDDSA, "ed25519 signatures"),
                        SigningKeyType::EcdsaP256 | SigningKeyType::EcdsaP384 => {
                            (MechanismType::ECDSA, "ecdsa signatures")
                        }
                        SigningKeyType::Rsa { .. } => {
                            (MechanismType::RSA_PKCS_PSS, "rsa_pss_rsae signatures")
                        }
                    };
                    if let Some(m) = self.lacks(mech, Op::Sign, purpose) {
                        add(m);
                    } else if let SigningKeyType::Rsa { bits } = kind {
                        if let Some(m) = self.lacks_rsa_size(mech, bits, purpose) {
                            add(m);
                        }
                    }
                }
                Need::TokenEphemeral(group) => {
                    let purpose = "token ephemerals";
                    match group {
                        NamedGroup::Secp256r1 | NamedGroup::Secp384r1 => {
                            if let Some(m) = self.lacks(
                                MechanismType::ECC_KEY_PAIR_GEN,
                                Op::GenerateKeyPair,
                                purpose,
                            ) {
                                add(m);
                            }
                        }
                        NamedGroup::X25519 => {
                            let montgomery = self.lacks(
                                MechanismType::ECC_MONTGOMERY_KEY_PAIR_GEN,
                                Op::GenerateKeyPair,
                                purpose,
                            );
                            let edwards = self.lacks(
                                MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                                Op::GenerateKeyPair,
                                purpose,
                            );
                            if montgomery.is_some() && edwards.is_some() {
                                add(format!(
                                    "{} or {} (x25519 token ephemerals)",
                                    MechanismType::ECC_MONTGOMERY_KEY_PAIR_GEN,
                                    MechanismType::ECC_EDWARDS_KEY_PAIR_GEN
                                ));
                            }
                        }
                        other => add(format!(
                            "{} token ephemerals (group not implemented)",
                            other.name()
                        )),
                    }
                    if let Some(m) = self.lacks(MechanismType::ECDH1_DERIVE, Op::Derive, purpose) {
                        add(m);
                    }
                }
                Need::Sealing => {
                    if let Some(m) =
                        self.lacks(MechanismType::AES_GCM, Op::EncryptDecrypt, "ticket sealing")
                    {
                        add(m);
                    }
                }
                Need::SealingKeyGen => {
                    if let Some(m) = self.lacks(
                        MechanismType::AES_KEY_GEN,
                        Op::Generate,
                        "creating the sealing key",
                    ) {
                        add(m);
                    }
                }
                Need::GenerateSigningKey(kind) => {
                    let mech = match kind {
                        SigningKeyType::Ed25519 => MechanismType::ECC_EDWARDS_KEY_PAIR_GEN,
                        SigningKeyType::EcdsaP256 | SigningKeyType::EcdsaP384 => {
                            MechanismType::ECC_KEY_PAIR_GEN
                        }
                        SigningKeyType::Rsa { .. } => MechanismType::RSA_PKCS_KEY_PAIR_GEN,
                    };
                    if let Some(m) = self.lacks(mech, Op::GenerateKeyPair, "key generation") {
                        add(m);
                    }
                }
                Need::Mechanism { mechanism, purpose } => {
                    if let Some(m) = self.lacks(mechanism, Op::Any, purpose) {
                        add(m);
                    }
                }
            }
        }
        if missing.is_empty() {
            Ok(())
        } else {
            Err(TokenError::MissingMechanisms(missing))
        }
    }

    /// `Some(message)` when the token does not list `mech`, or lists it without `op`.
    fn lacks(&self, mech: MechanismType, op: Op, purpose: &str) -> Option<String> {
        if !self.inner.mechanisms.contains(&mech) {
            return Some(format!("{mech} ({purpose})"));
        }
        match self.mechanism_info(mech) {
            Ok(info) if op.allowed(&info) => None,
            Ok(_) => Some(format!("{mech} ({purpose}; listed without {})", op.flag())),
            Err(e) => Some(format!(
                "{mech} ({purpose}; C_GetMechanismInfo failed: {e})"
            )),
        }
    }

    fn lacks_rsa_size(&self, mech: MechanismType, bits: usize, purpose: &str) -> Option<String> {
        let info = self.mechanism_info(mech).ok()?;
        let (min, max) = (info.min_key_size(), info.max_key_size());
        (bits < min || (max > 0 && bits > max))
            .then(|| format!("{mech} ({purpose} with {bits}-bit keys; token allows {min}..={max})"))
    }

    fn mechanism_info(&self, mech: MechanismType) -> Result<MechanismInfo, TokenError> {
        self.pkcs11()
            .get_mechanism_info(self.slot(), mech)
            .map_err(|e| TokenError::pkcs11("C_GetMechanismInfo", e))
    }
}

#[cfg(test)]
mod tests {
    use super::super::testutil;
    use super::*;

    #[test]
    fn softhsm_has_everything_the_cs_needs() {
        let (token, _) = testutil::new_token("mech-ok");
        token
            .check_mechanisms(&Need::for_service(
                [SigningKeyType::Ed25519, SigningKeyType::EcdsaP384],
                true,
            ))
            .unwrap();
        let mut needs = vec![
            Need::Sign(SigningKeyType::Ed25519),
            Need::Sign(SigningKeyType::EcdsaP256),
            Need::Sign(SigningKeyType::EcdsaP384),
            Need::Sign(SigningKeyType::Rsa { bits: 2048 }),
            Need::Sealing,
            Need::SealingKeyGen,
            Need::GenerateSigningKey(SigningKeyType::Ed25519),
            Need::GenerateSigningKey(SigningKeyType::EcdsaP256),
            Need::GenerateSigningKey(SigningKeyType::Rsa { bits: 2048 }),
        ];
        needs.extend(NamedGroup::SUPPORTED.map(Need::TokenEphemeral));
        token.check_mechanisms(&needs).unwrap();
    }

    #[test]
    fn a_missing_mechanism_is_named_with_its_purpose() {
        let (token, _) = testutil::new_token("mech-missing");
        let err = token
            .check_mechanisms(&[
                Need::Sealing,
                Need::Mechanism {
                    mechanism: MechanismType::HKDF_DERIVE,
                    purpose: "key schedule in the token",
                },
                Need::Mechanism {
                    mechanism: MechanismType::HKDF_DERIVE,
                    purpose: "key schedule in the token",
                },
                Need::TokenEphemeral(NamedGroup::X448),
            ])
            .unwrap_err();
        let TokenError::MissingMechanisms(missing) = &err else {
            panic!("{err}")
        };
        assert_eq!(
            missing,
            &[
                "CKM_HKDF_DERIVE (key schedule in the token)".to_owned(),
                "x448 token ephemerals (group not implemented)".to_owned(),
            ]
        );
        assert!(err.to_string().contains("CKM_HKDF_DERIVE"));
    }
}
