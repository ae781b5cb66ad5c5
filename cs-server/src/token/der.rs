//! The DER the token needs, on the RustCrypto crates: curve names in `CKA_EC_PARAMS`
//! (`sec1`, `const-oid`), the OCTET STRING around `CKA_EC_POINT` (`der`), ECDSA signatures
//! (raw `r‖s` from PKCS#11 → `ECDSA-Sig-Value`, `ecdsa` through p256/p384), and
//! SubjectPublicKeyInfo / RSAPublicKey for the keys we hold (`spki`, `pkcs1`). PKCS#8 and
//! RSAPrivateKey are read with `pkcs8` / `pkcs1` where keys are imported (keys.rs).

use const_oid::db::{rfc5912, rfc8410};
use der::asn1::{AnyRef, BitStringRef, ObjectIdentifier, OctetStringRef, PrintableStringRef};
use der::{Decode, Encode};
use sec1::EcParameters;
use spki::{AlgorithmIdentifierRef, SubjectPublicKeyInfoRef};

use crate::error::TokenError;

/// The curves whose `CKA_EC_PARAMS` the CS writes and recognises.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum EcCurve {
    P256,
    P384,
    Ed25519,
    X25519,
}

impl EcCurve {
    /// The curve's OID (RFC 5480 §2.1.1.1, RFC 8410 §3).
    pub(crate) const fn oid(self) -> ObjectIdentifier {
        match self {
            Self::P256 => rfc5912::SECP_256_R_1,
            Self::P384 => rfc5912::SECP_384_R_1,
            Self::Ed25519 => rfc8410::ID_ED_25519,
            Self::X25519 => rfc8410::ID_X_25519,
        }
    }

    /// `CKA_EC_PARAMS` for the curve: the DER of its OID (PKCS#11 3.0 §2.3.3 `namedCurve`).
    pub(crate) fn ec_params(self) -> Vec<u8> {
        EcParameters::NamedCurve(self.oid())
            .to_der()
            // A fixed OID of a few bytes always has a DER length (tests below check each).
            .expect("a named curve encodes")
    }

    /// Reads `CKA_EC_PARAMS`: a named curve's OID, or for Ed25519 the PrintableString
    /// `edwards25519` that some tokens write instead (PKCS#11 3.0 allows both). `None` for
    /// anything else, malformed DER included.
    pub(crate) fn from_ec_params(params: &[u8]) -> Option<Self> {
        if let Ok(EcParameters::NamedCurve(oid)) = EcParameters::from_der(params) {
            return [Self::P256, Self::P384, Self::Ed25519, Self::X25519]
                .into_iter()
                .find(|c| c.oid() == oid);
        }
        // sec1's ECParameters only knows the namedCurve choice; the curve-name string is a
        // PKCS#11 addition.
        match PrintableStringRef::from_der(params) {
            Ok(name) if name.as_str() == "edwards25519" => Some(Self::Ed25519),
            _ => None,
        }
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 2.40 §2.3.3); some modules
/// return the raw point. `raw_len` is the length of the raw encoding for this curve.
pub(crate) fn unwrap_ec_point(attr: &[u8], raw_len: usize) -> Result<Vec<u8>, TokenError> {
    if attr.len() == raw_len {
        return Ok(attr.to_vec());
    }
    match OctetStringRef::from_der(attr) {
        Ok(p) if p.as_bytes().len() == raw_len => Ok(p.as_bytes().to_vec()),
        _ => Err(TokenError::Other(format!(
            "unexpected CKA_EC_POINT encoding ({} bytes, expected a {raw_len}-byte point)",
            attr.len()
        ))),
    }
}

/// Wraps a raw point as `CKA_EC_POINT` wants it.
pub(crate) fn wrap_ec_point(raw: &[u8]) -> Result<Vec<u8>, TokenError> {
    OctetStringRef::new(raw)
        .and_then(|o| o.to_der())
        .map_err(encoding("CKA_EC_POINT"))
}

/// PKCS#11 returns ECDSA signatures as `r‖s` (each the size of the group order, PKCS#11 3.0
/// §2.3.1); TLS and X.509 want `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`
/// (RFC 8446 §4.2.3, RFC 3279 §2.2.3). A value that is not two scalars of the curve is refused.
pub(crate) fn ecdsa_sig_value(curve: EcCurve, raw: &[u8]) -> Result<Vec<u8>, TokenError> {
    let der = match curve {
        EcCurve::P256 => {
            p256::ecdsa::Signature::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec())
        }
        EcCurve::P384 => {
            p384::ecdsa::Signature::from_slice(raw).map(|s| s.to_der().as_bytes().to_vec())
        }
        EcCurve::Ed25519 | EcCurve::X25519 => {
            return Err(TokenError::Other(format!("no ECDSA on {curve:?}")))
        }
    };
    der.map_err(|_| {
        TokenError::Other(format!(
            "the token's {curve:?} ECDSA signature is not r‖s of the curve ({} bytes)",
            raw.len()
        ))
    })
}

/// SubjectPublicKeyInfo for an EC key on a named curve (RFC 5480 §2).
pub(crate) fn spki_ec(curve: EcCurve, point: &[u8]) -> Result<Vec<u8>, TokenError> {
    let oid = curve.oid();
    spki(rfc5912::ID_EC_PUBLIC_KEY, Some(AnyRef::from(&oid)), point)
}

/// SubjectPublicKeyInfo for an Ed25519 key (RFC 8410 §4: no parameters).
pub(crate) fn spki_ed25519(public: &[u8]) -> Result<Vec<u8>, TokenError> {
    spki(rfc8410::ID_ED_25519, None, public)
}

/// `RSAPublicKey ::= SEQUENCE { modulus, publicExponent }` (RFC 8017 §A.1.1; what ring
/// verifies with). `modulus` and `exponent` are unsigned big-endian, as PKCS#11 gives them.
pub(crate) fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, TokenError> {
    let key = pkcs1::RsaPublicKey {
        modulus: der::asn1::UintRef::new(modulus).map_err(encoding("RSA modulus"))?,
        public_exponent: der::asn1::UintRef::new(exponent).map_err(encoding("RSA exponent"))?,
    };
    key.to_der().map_err(encoding("RSAPublicKey"))
}

/// SubjectPublicKeyInfo for an RSA key (rsaEncryption, NULL parameters: RFC 3279 §2.3.1).
pub(crate) fn spki_rsa(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>, TokenError> {
    let key = rsa_public_key(modulus, exponent)?;
    spki(rfc5912::RSA_ENCRYPTION, Some(AnyRef::NULL), &key)
}

fn spki(
    oid: ObjectIdentifier,
    parameters: Option<AnyRef<'_>>,
    key: &[u8],
) -> Result<Vec<u8>, TokenError> {
    let info = SubjectPublicKeyInfoRef {
        algorithm: AlgorithmIdentifierRef { oid, parameters },
        subject_public_key: BitStringRef::from_bytes(key).map_err(encoding("public key"))?,
    };
    info.to_der().map_err(encoding("SubjectPublicKeyInfo"))
}

/// The Ed25519 seed in a PKCS#8 `privateKey`: `CurvePrivateKey ::= OCTET STRING` (RFC 8410
/// §7), 32 bytes.
pub(crate) fn ed25519_seed(private_key: &[u8]) -> Result<&[u8], String> {
    let seed = OctetStringRef::from_der(private_key)
        .map_err(|e| format!("malformed Ed25519 private key: {e}"))?;
    match seed.as_bytes() {
        s if s.len() == 32 => Ok(s),
        s => Err(format!("Ed25519 seed of {} bytes, not 32", s.len())),
    }
}

/// The RSAPrivateKey in a PKCS#8 `privateKey` (RFC 8017 §A.1.2), borrowed from the
/// (zeroizing) document. Two-prime keys only: PKCS#11 has no attributes for more primes.
pub(crate) fn rsa_private_key(private_key: &[u8]) -> Result<pkcs1::RsaPrivateKey<'_>, String> {
    let key = pkcs1::RsaPrivateKey::from_der(private_key).map_err(|e| {
        format!("malformed RSAPrivateKey, or a multi-prime one (two-prime keys only): {e}")
    })?;
    // pkcs1 without its `alloc` feature already refuses version 1; this holds with it too.
    if key.other_prime_infos.is_some() {
        return Err("multi-prime RSA keys are not supported (two primes only)".to_owned());
    }
    Ok(key)
}

/// A value the `der` crate would not encode (its only limit is a length past 256 MiB).
fn encoding(what: &'static str) -> impl Fn(der::Error) -> TokenError {
    move |e| TokenError::UnsupportedKey(format!("cannot DER-encode the {what}: {e}"))
}

/// Number of significant bits of an unsigned big-endian integer (arithmetic on the
/// PKCS#11 `CKA_MODULUS`, not DER: no crate to ask).
pub(crate) fn bit_len(magnitude: &[u8]) -> usize {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    match magnitude.get(skip) {
        None => 0,
        Some(b) => (magnitude.len() - skip) * 8 - b.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    //! Against keys, SPKIs and signatures that OpenSSL made (testdata/keys/README.md).
    use super::*;
    use pkcs8::{PrivateKeyInfo, SecretDocument};
    use ring::signature::{self as rs, UnparsedPublicKey};

    macro_rules! fixture {
        ($name:literal) => {
            include_bytes!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/testdata/keys/",
                $name
            ))
        };
    }

    fn pkcs8(pem: &[u8]) -> SecretDocument {
        let (label, doc) = SecretDocument::from_pem(std::str::from_utf8(pem).unwrap()).unwrap();
        assert_eq!(label, "PRIVATE KEY");
        doc
    }

    const MSG: &[u8] = b"lurk der fixture";

    #[test]
    fn ec_params_are_openssls_named_curves() {
        assert_eq!(EcCurve::P256.ec_params(), fixture!("p256.params.der"));
        assert_eq!(EcCurve::P384.ec_params(), fixture!("p384.params.der"));
        for (curve, spki_der) in [
            (EcCurve::Ed25519, &fixture!("ed25519.spki.der")[..]),
            (EcCurve::X25519, &fixture!("x25519.spki.der")[..]),
        ] {
            let info = SubjectPublicKeyInfoRef::from_der(spki_der).unwrap();
            assert_eq!(curve.ec_params(), info.algorithm.oid.to_der().unwrap());
        }
        for curve in [
            EcCurve::P256,
            EcCurve::P384,
            EcCurve::Ed25519,
            EcCurve::X25519,
        ] {
            assert_eq!(EcCurve::from_ec_params(&curve.ec_params()), Some(curve));
        }
        assert_eq!(
            EcCurve::from_ec_params(b"\x13\x0cedwards25519"),
            Some(EcCurve::Ed25519)
        );
    }

    #[test]
    fn unknown_or_malformed_ec_params_are_none() {
        let p256 = EcCurve::P256.ec_params();
        for bad in [
            &b""[..],
            &p256[..p256.len() - 1],         // truncated
            &[&p256[..], &[0][..]].concat(), // trailing byte
            b"\x06\x05\x2b\x81\x04\x00\x23", // secp521r1: not ours
            b"\x13\x0aedwards448",
            b"\x0c\x0cedwards25519", // UTF8String, not PrintableString
            b"\x05\x00",             // implicitlyCA
            b"\x06\x81\x08\x2a\x86\x48\xce\x3d\x03\x01\x07", // non-minimal length
        ] {
            assert_eq!(EcCurve::from_ec_params(bad), None, "{bad:02x?}");
        }
    }

    #[test]
    fn spki_of_each_key_type_is_openssls() {
        // Ed25519: the public key from the PKCS#8 seed.
        let doc = pkcs8(fixture!("ed25519.pk8.pem"));
        let info = PrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
        let seed = OctetStringRef::from_der(info.private_key).unwrap();
        let kp = rs::Ed25519KeyPair::from_seed_unchecked(seed.as_bytes()).unwrap();
        let public = rs::KeyPair::public_key(&kp).as_ref();
        assert_eq!(spki_ed25519(public).unwrap(), fixture!("ed25519.spki.der"));

        // EC: the point OpenSSL keeps in the SEC1 ECPrivateKey.
        for (curve, pem, spki_der) in [
            (
                EcCurve::P256,
                &fixture!("p256.pk8.pem")[..],
                &fixture!("p256.spki.der")[..],
            ),
            (
                EcCurve::P384,
                fixture!("p384.pk8.pem"),
                fixture!("p384.spki.der"),
            ),
        ] {
            let doc = pkcs8(pem);
            let info = PrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
            let key = sec1::EcPrivateKey::try_from(info.private_key).unwrap();
            let point = key.public_key.unwrap();
            assert_eq!(spki_ec(curve, point).unwrap(), spki_der, "{curve:?}");
        }

        // RSA: modulus and exponent as PKCS#11 holds them (unsigned, no sign pad).
        let doc = pkcs8(fixture!("rsa2048.pk8.pem"));
        let info = PrivateKeyInfo::try_from(doc.as_bytes()).unwrap();
        let k = pkcs1::RsaPrivateKey::from_der(info.private_key).unwrap();
        let (n, e) = (k.modulus.as_bytes(), k.public_exponent.as_bytes());
        assert_eq!(n.len(), 256);
        assert_eq!(bit_len(n), 2048);
        assert_eq!(
            rsa_public_key(n, e).unwrap(),
            fixture!("rsa2048.pkcs1pub.der")
        );
        assert_eq!(spki_rsa(n, e).unwrap(), fixture!("rsa2048.spki.der"));
        // A leading zero byte in CKA_MODULUS changes nothing.
        let padded = [&[0][..], n].concat();
        assert_eq!(spki_rsa(&padded, e).unwrap(), fixture!("rsa2048.spki.der"));
    }

    #[test]
    fn ecdsa_sig_value_gives_openssls_der_back() {
        for (curve, sig, spki_der, alg) in [
            (
                EcCurve::P256,
                &fixture!("p256.sig.der")[..],
                &fixture!("p256.spki.der")[..],
                &rs::ECDSA_P256_SHA256_ASN1,
            ),
            (
                EcCurve::P384,
                &fixture!("p384.sig.der")[..],
                &fixture!("p384.spki.der")[..],
                &rs::ECDSA_P384_SHA384_ASN1,
            ),
        ] {
            // OpenSSL's DER → r‖s as a token returns it → DER again: the same bytes.
            let raw: Vec<u8> = match curve {
                EcCurve::P256 => p256::ecdsa::Signature::from_der(sig)
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
                _ => p384::ecdsa::Signature::from_der(sig)
                    .unwrap()
                    .to_bytes()
                    .to_vec(),
            };
            let der = ecdsa_sig_value(curve, &raw).unwrap();
            assert_eq!(der, sig, "{curve:?}");
            let point = SubjectPublicKeyInfoRef::from_der(spki_der)
                .unwrap()
                .subject_public_key
                .raw_bytes();
            UnparsedPublicKey::new(alg, point)
                .verify(MSG, &der)
                .unwrap();
        }
    }

    #[test]
    fn ecdsa_sig_value_pads_high_bit_and_strips_leading_zeros() {
        let mut raw = [0u8; 64];
        raw[0] = 0x80; // r needs a 0x00 pad
        raw[31] = 0x01;
        raw[33] = 0x01; // s has a leading zero byte to drop
        let der = ecdsa_sig_value(EcCurve::P256, &raw).unwrap();
        let mut want = vec![0x30, 0x44, 0x02, 0x21, 0x00];
        want.extend_from_slice(&raw[..32]);
        want.extend_from_slice(&[0x02, 0x1f]);
        want.extend_from_slice(&raw[33..]);
        assert_eq!(der, want);
    }

    #[test]
    fn ecdsa_sig_value_refuses_what_is_not_r_s() {
        let zero = [0u8; 64];
        let order_p256 = {
            // r = n (the group order) is out of range.
            let mut v =
                hex::decode("ffffffff00000000ffffffffffffffffbce6faada7179e84f3b9cac2fc632551")
                    .unwrap();
            v.extend_from_slice(&[1; 32]);
            v
        };
        for (curve, raw) in [
            (EcCurve::P256, &[][..]),
            (EcCurve::P256, &[1u8; 63][..]),
            (EcCurve::P256, &[1u8; 96][..]), // a P-384 length
            (EcCurve::P384, &[1u8; 64][..]),
            (EcCurve::P256, &zero[..]), // r = s = 0
            (EcCurve::P256, &order_p256[..]),
            (EcCurve::Ed25519, &[1u8; 64][..]),
        ] {
            let err = ecdsa_sig_value(curve, raw).unwrap_err();
            assert!(err.to_string().contains("ECDSA"), "{err}");
        }
    }

    #[test]
    fn ec_point_unwraps_der_or_raw() {
        let raw: Vec<u8> = std::iter::once(4).chain([7u8; 64]).collect();
        let wrapped = wrap_ec_point(&raw).unwrap();
        assert_eq!(&wrapped[..2], &[0x04, 65]);
        assert_eq!(unwrap_ec_point(&wrapped, 65).unwrap(), raw);
        assert_eq!(unwrap_ec_point(&raw, 65).unwrap(), raw);
        // A P-384 point; and past 127 bytes, the long length form.
        let raw384: Vec<u8> = std::iter::once(4).chain([9u8; 96]).collect();
        let wrapped384 = wrap_ec_point(&raw384).unwrap();
        assert_eq!(&wrapped384[..2], &[0x04, 97]);
        assert_eq!(unwrap_ec_point(&wrapped384, 97).unwrap(), raw384);
        let long = wrap_ec_point(&[1u8; 300]).unwrap();
        assert_eq!(&long[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(unwrap_ec_point(&long, 300).unwrap(), [1u8; 300]);
        // The points of OpenSSL's SPKIs round-trip.
        for (name, spki_der, len) in [
            ("p256", &fixture!("p256.spki.der")[..], 65),
            ("p384", &fixture!("p384.spki.der")[..], 97),
            ("x25519", &fixture!("x25519.spki.der")[..], 32),
        ] {
            let info = SubjectPublicKeyInfoRef::from_der(spki_der).unwrap();
            let point = info.subject_public_key.raw_bytes();
            assert_eq!(
                unwrap_ec_point(&wrap_ec_point(point).unwrap(), len).unwrap(),
                point,
                "{name}"
            );
        }
    }

    #[test]
    fn malformed_ec_points_are_refused() {
        let raw: Vec<u8> = std::iter::once(4).chain([7u8; 64]).collect();
        let wrapped = wrap_ec_point(&raw).unwrap();
        let mut wrong_tag = wrapped.clone();
        wrong_tag[0] = 0x03;
        let mut long_len = vec![0x04, 0x81, 65]; // non-minimal length: not DER
        long_len.extend_from_slice(&raw);
        for bad in [
            &raw[..40],
            &wrapped[..wrapped.len() - 1],
            &[&wrapped[..], &[0][..]].concat()[..],
            &wrong_tag[..],
            &long_len[..],
            &wrap_ec_point(&raw[..64]).unwrap()[..], // a 64-byte point in the wrapper
            &[][..],
        ] {
            let err = unwrap_ec_point(bad, 65).unwrap_err();
            assert!(err.to_string().contains("CKA_EC_POINT"), "{err}");
        }
    }

    fn private_key_of(pem: &[u8]) -> Vec<u8> {
        let doc = pkcs8(pem);
        PrivateKeyInfo::try_from(doc.as_bytes())
            .unwrap()
            .private_key
            .to_vec()
    }

    #[test]
    fn private_keys_of_openssl_parse() {
        let ed = private_key_of(fixture!("ed25519.pk8.pem"));
        assert_eq!(ed25519_seed(&ed).unwrap(), &ed[2..]);
        let rsa = private_key_of(fixture!("rsa2048.pk8.pem"));
        let k = rsa_private_key(&rsa).unwrap();
        assert_eq!(bit_len(k.modulus.as_bytes()), 2048);
        assert_eq!(k.public_exponent.as_bytes(), [1, 0, 1]);
        for part in [k.prime1, k.prime2, k.exponent1, k.exponent2, k.coefficient] {
            assert!(part.as_bytes()[0] != 0 && part.as_bytes().len() <= 128);
        }
    }

    #[test]
    fn malformed_private_keys_are_refused_never_panic() {
        let err =
            rsa_private_key(&private_key_of(fixture!("rsa2048-3primes.pk8.pem"))).unwrap_err();
        assert!(err.contains("multi-prime"), "{err}");
        let rsa = private_key_of(fixture!("rsa2048.pk8.pem"));
        let ed = private_key_of(fixture!("ed25519.pk8.pem"));
        // Every truncation, and one more byte, is refused with a reason.
        for cut in 0..rsa.len() {
            let err = rsa_private_key(&rsa[..cut]).unwrap_err();
            assert!(err.contains("RSAPrivateKey"), "{err}");
        }
        assert!(rsa_private_key(&[&rsa[..], &[0][..]].concat()).is_err());
        for cut in 0..ed.len() {
            assert!(ed25519_seed(&ed[..cut]).is_err());
        }
        assert!(ed25519_seed(&[&ed[..], &[0][..]].concat()).is_err());
        // A 31-byte seed; the RSA key given as Ed25519 and the other way round.
        let short = OctetStringRef::new(&[1u8; 31]).unwrap().to_der().unwrap();
        assert!(ed25519_seed(&short).unwrap_err().contains("31 bytes"));
        assert!(ed25519_seed(&rsa).is_err());
        assert!(rsa_private_key(&ed).is_err());
        // A negative modulus (sign bit set with no pad) is not an unsigned INTEGER.
        let mut negative = rsa.clone();
        let n_at = rsa
            .windows(3)
            .position(|w| w == [0x02, 0x82, 0x01])
            .unwrap();
        assert_eq!(negative[n_at + 4], 0x00, "modulus starts with its sign pad");
        negative[n_at + 4] = 0x80;
        assert!(rsa_private_key(&negative).is_err());
        // Every single-byte change to the header bytes is refused or still parses: no panic.
        for i in 0..16 {
            for b in [0x00, 0x7f, 0x80, 0xff] {
                let mut m = rsa.clone();
                m[i] = b;
                let _ = rsa_private_key(&m);
            }
        }
    }

    #[test]
    fn bit_length() {
        assert_eq!(bit_len(&[0, 0x01, 0]), 9);
        assert_eq!(bit_len(&[0x80; 256]), 2048);
        assert_eq!(bit_len(&[]), 0);
    }
}
