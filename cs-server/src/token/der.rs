//! The little DER this module needs: curve OIDs in `CKA_EC_PARAMS`, the OCTET STRING around
//! `CKA_EC_POINT`, ECDSA signatures (raw `r‖s` from PKCS#11 → `ECDSA-Sig-Value` for TLS),
//! SubjectPublicKeyInfo for the keys we hold, and reading an RSAPrivateKey (PKCS#1) out of a
//! PKCS#8 document. Everything else goes through x509-parser, pkcs8 or rcgen.

use crate::error::TokenError;

/// `CKA_EC_PARAMS` (DER OID) of the curves we use.
pub(crate) const OID_P256: &[u8] = &[0x06, 0x08, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07];
pub(crate) const OID_P384: &[u8] = &[0x06, 0x05, 0x2b, 0x81, 0x04, 0x00, 0x22];
pub(crate) const OID_ED25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x70];
pub(crate) const OID_X25519: &[u8] = &[0x06, 0x03, 0x2b, 0x65, 0x6e];
/// Some tokens name Edwards curves with a PrintableString instead of the OID (PKCS#11 3.0
/// allows both).
pub(crate) const PRINTABLE_ED25519: &[u8] = b"\x13\x0cedwards25519";
/// id-ecPublicKey (1.2.840.10045.2.1).
const OID_EC_PUBLIC_KEY: &[u8] = &[0x06, 0x07, 0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01];
/// rsaEncryption (1.2.840.113549.1.1.1).
const OID_RSA_ENCRYPTION: &[u8] = &[
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01,
];

const TAG_INTEGER: u8 = 0x02;
const TAG_BIT_STRING: u8 = 0x03;
const TAG_OCTET_STRING: u8 = 0x04;
const TAG_NULL: u8 = 0x05;
const TAG_SEQUENCE: u8 = 0x30;

/// Appends a DER length.
fn push_len(out: &mut Vec<u8>, len: usize) {
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
}

/// One TLV.
pub(crate) fn tlv(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 6);
    out.push(tag);
    push_len(&mut out, body.len());
    out.extend_from_slice(body);
    out
}

/// A DER INTEGER from an unsigned big-endian magnitude.
fn uint(magnitude: &[u8]) -> Vec<u8> {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    let m = &magnitude[skip..];
    let mut body = Vec::with_capacity(m.len() + 1);
    if m.is_empty() || m[0] & 0x80 != 0 {
        body.push(0);
    }
    body.extend_from_slice(m);
    tlv(TAG_INTEGER, &body)
}

/// A cursor over DER bytes (rustls-style `Reader`, enough for the few structures above).
pub(crate) struct DerReader<'a> {
    buf: &'a [u8],
}

impl<'a> DerReader<'a> {
    pub(crate) fn new(buf: &'a [u8]) -> Self {
        Self { buf }
    }

    /// Reads one TLV with the expected tag and returns its body.
    pub(crate) fn read(&mut self, tag: u8) -> Option<&'a [u8]> {
        let (&t, rest) = self.buf.split_first()?;
        if t != tag {
            return None;
        }
        let (&l0, rest) = rest.split_first()?;
        let (len, rest) = if l0 < 0x80 {
            (l0 as usize, rest)
        } else {
            let n = (l0 & 0x7f) as usize;
            if n == 0 || n > 4 || rest.len() < n {
                return None;
            }
            let len = rest[..n].iter().fold(0usize, |a, b| (a << 8) | *b as usize);
            // DER: minimal length encoding.
            if len < 0x80 || rest[0] == 0 {
                return None;
            }
            (len, &rest[n..])
        };
        if rest.len() < len {
            return None;
        }
        let (body, rest) = rest.split_at(len);
        self.buf = rest;
        Some(body)
    }

    /// Reads an INTEGER as an unsigned magnitude (leading zero bytes removed).
    pub(crate) fn read_uint(&mut self) -> Option<&'a [u8]> {
        let body = self.read(TAG_INTEGER)?;
        if body.is_empty() || body[0] & 0x80 != 0 {
            return None;
        }
        let skip = body.iter().take_while(|b| **b == 0).count();
        Some(&body[skip..])
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
}

/// `CKA_EC_POINT` is a DER OCTET STRING around the point (PKCS#11 2.40 §2.3.3); some modules
/// return the raw point. `raw_len` is the length of the raw encoding for this curve.
pub(crate) fn unwrap_ec_point(attr: &[u8], raw_len: usize) -> Result<Vec<u8>, TokenError> {
    if attr.len() == raw_len {
        return Ok(attr.to_vec());
    }
    let mut r = DerReader::new(attr);
    match r.read(TAG_OCTET_STRING) {
        Some(p) if r.is_empty() && p.len() == raw_len => Ok(p.to_vec()),
        _ => Err(TokenError::Other(format!(
            "unexpected CKA_EC_POINT encoding ({} bytes, expected a {raw_len}-byte point)",
            attr.len()
        ))),
    }
}

/// Wraps a raw point as `CKA_EC_POINT` wants it.
pub(crate) fn wrap_ec_point(raw: &[u8]) -> Vec<u8> {
    tlv(TAG_OCTET_STRING, raw)
}

/// PKCS#11 returns ECDSA signatures as `r‖s` (each the size of the group order); TLS and
/// X.509 want `ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER }`.
pub(crate) fn ecdsa_raw_to_der(raw: &[u8]) -> Result<Vec<u8>, TokenError> {
    if raw.is_empty() || !raw.len().is_multiple_of(2) {
        return Err(TokenError::Other(format!(
            "ECDSA signature of odd length {}",
            raw.len()
        )));
    }
    let (r, s) = raw.split_at(raw.len() / 2);
    let mut body = uint(r);
    body.extend_from_slice(&uint(s));
    Ok(tlv(TAG_SEQUENCE, &body))
}

/// SubjectPublicKeyInfo for an EC key on a named curve (`curve_oid` is the DER OID).
pub(crate) fn spki_ec(curve_oid: &[u8], point: &[u8]) -> Vec<u8> {
    let mut alg = OID_EC_PUBLIC_KEY.to_vec();
    alg.extend_from_slice(curve_oid);
    spki(&tlv(TAG_SEQUENCE, &alg), point)
}

/// SubjectPublicKeyInfo for an Ed25519 key (RFC 8410: no parameters).
pub(crate) fn spki_ed25519(public: &[u8]) -> Vec<u8> {
    spki(&tlv(TAG_SEQUENCE, OID_ED25519), public)
}

/// `RSAPublicKey ::= SEQUENCE { modulus, publicExponent }` (what ring verifies with).
pub(crate) fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut body = uint(modulus);
    body.extend_from_slice(&uint(exponent));
    tlv(TAG_SEQUENCE, &body)
}

/// SubjectPublicKeyInfo for an RSA key (rsaEncryption, NULL parameters).
pub(crate) fn spki_rsa(modulus: &[u8], exponent: &[u8]) -> Vec<u8> {
    let mut alg = OID_RSA_ENCRYPTION.to_vec();
    alg.extend_from_slice(&[TAG_NULL, 0]);
    spki(&tlv(TAG_SEQUENCE, &alg), &rsa_public_key(modulus, exponent))
}

fn spki(alg: &[u8], key: &[u8]) -> Vec<u8> {
    let mut bits = Vec::with_capacity(key.len() + 1);
    bits.push(0); // no unused bits
    bits.extend_from_slice(key);
    let mut body = alg.to_vec();
    body.extend_from_slice(&tlv(TAG_BIT_STRING, &bits));
    tlv(TAG_SEQUENCE, &body)
}

/// The parts of an RSAPrivateKey (RFC 8017 §A.1.2), borrowed from the (zeroizing) document.
pub(crate) struct RsaPrivateParts<'a> {
    pub(crate) modulus: &'a [u8],
    pub(crate) public_exponent: &'a [u8],
    pub(crate) private_exponent: &'a [u8],
    pub(crate) prime1: &'a [u8],
    pub(crate) prime2: &'a [u8],
    pub(crate) exponent1: &'a [u8],
    pub(crate) exponent2: &'a [u8],
    pub(crate) coefficient: &'a [u8],
}

pub(crate) fn parse_rsa_private_key(der: &[u8]) -> Option<RsaPrivateParts<'_>> {
    let mut outer = DerReader::new(der);
    let mut r = DerReader::new(outer.read(TAG_SEQUENCE)?);
    if !outer.is_empty() {
        return None;
    }
    // Version 0 (two primes); version 1 (multi-prime) is refused.
    if r.read(TAG_INTEGER)? != [0] {
        return None;
    }
    let parts = RsaPrivateParts {
        modulus: r.read_uint()?,
        public_exponent: r.read_uint()?,
        private_exponent: r.read_uint()?,
        prime1: r.read_uint()?,
        prime2: r.read_uint()?,
        exponent1: r.read_uint()?,
        exponent2: r.read_uint()?,
        coefficient: r.read_uint()?,
    };
    r.is_empty().then_some(parts)
}

/// Number of significant bits of an unsigned big-endian integer.
pub(crate) fn bit_len(magnitude: &[u8]) -> usize {
    let skip = magnitude.iter().take_while(|b| **b == 0).count();
    match magnitude.get(skip) {
        None => 0,
        Some(b) => (magnitude.len() - skip) * 8 - b.leading_zeros() as usize,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ecdsa_der_pads_high_bit_and_strips_zeros() {
        let mut raw = vec![0u8; 64];
        raw[0] = 0x80; // r needs a 0x00 pad
        raw[32] = 0x00;
        raw[33] = 0x01; // s has a leading zero to drop
        let der = ecdsa_raw_to_der(&raw).unwrap();
        let mut outer = DerReader::new(&der);
        let mut seq = DerReader::new(outer.read(TAG_SEQUENCE).unwrap());
        let r = seq.read(TAG_INTEGER).unwrap();
        assert_eq!(r.len(), 33);
        assert_eq!(r[0], 0);
        let s = seq.read(TAG_INTEGER).unwrap();
        assert_eq!(s.len(), 31);
        assert!(seq.is_empty() && outer.is_empty());
    }

    #[test]
    fn ec_point_unwraps_der_or_raw() {
        let raw: Vec<u8> = std::iter::once(4).chain([7u8; 64]).collect();
        assert_eq!(unwrap_ec_point(&wrap_ec_point(&raw), 65).unwrap(), raw);
        assert_eq!(unwrap_ec_point(&raw, 65).unwrap(), raw);
        assert!(unwrap_ec_point(&raw[..40], 65).is_err());
    }

    #[test]
    fn long_lengths_round_trip() {
        let body = vec![1u8; 300];
        let t = tlv(TAG_OCTET_STRING, &body);
        assert_eq!(&t[..4], &[0x04, 0x82, 0x01, 0x2c]);
        assert_eq!(
            DerReader::new(&t).read(TAG_OCTET_STRING).unwrap(),
            &body[..]
        );
    }

    #[test]
    fn bit_length() {
        assert_eq!(bit_len(&[0, 0x01, 0]), 9);
        assert_eq!(bit_len(&[0x80; 256]), 2048);
        assert_eq!(bit_len(&[]), 0);
    }
}
