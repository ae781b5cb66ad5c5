//! TLS 1.3 record protection (RFC 8446 §5.2-§5.4), the AEAD part both sides use: the engine
//! for its connection (with sequence numbers, size limits and fragmenting around it), the CS to
//! open the server's first flight itself (`c_server_flight`).
//!
//! The nonce is the 12-byte IV XOR the 64-bit sequence number, big-endian, left-padded with
//! zeros (§5.3); the AAD is the 5-byte record header (§5.2); the TLSInnerPlaintext is the
//! content, its real content type and zero padding (§5.4).

use ring::aead;
use zeroize::Zeroizing;

use crate::key_schedule::traffic_key_iv;
use crate::wire::{CipherSuite, ContentType};

/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// Maximum length of a record's content (TLSPlaintext.length, §5.1): 2^14.
pub const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Maximum length of a protected record's body (TLSCiphertext.length, §5.2): 2^14 + 256.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_FRAGMENT_LEN + 256;
/// Maximum length of a decrypted TLSInnerPlaintext (content, type and padding, §5.4): 2^14 + 1.
pub const MAX_INNER_PLAINTEXT_LEN: usize = MAX_FRAGMENT_LEN + 1;
/// legacy_record_version of every protected record (§5.1).
pub const LEGACY_RECORD_VERSION: u16 = 0x0303;
/// Tag length of the three AEADs of TLS 1.3 implemented here.
pub const TAG_LEN: usize = 16;
/// Nonce (and IV) length.
pub const NONCE_LEN: usize = aead::NONCE_LEN;

/// Why a record could not be protected or opened.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecordError {
    /// The suite's AEAD is not implemented.
    UnsupportedSuite(CipherSuite),
    /// The key does not have the AEAD's length.
    BadKey,
    /// The tag does not verify (bad_record_mac).
    Decrypt,
    /// The sealing failed.
    Seal,
    /// The TLSInnerPlaintext is all zeros: no content type (§5.4, unexpected_message).
    NoContentType,
}

impl std::fmt::Display for RecordError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::UnsupportedSuite(s) => {
                write!(
                    f,
                    "cipher suite {} ({:#06x}) is not implemented",
                    s.name(),
                    s.get()
                )
            }
            Self::BadKey => f.write_str("the record key does not fit the AEAD"),
            Self::Decrypt => f.write_str("a protected record does not authenticate"),
            Self::Seal => f.write_str("AEAD seal failed"),
            Self::NoContentType => f.write_str("TLSInnerPlaintext without a content type"),
        }
    }
}

impl std::error::Error for RecordError {}

/// The AEAD of a TLS 1.3 suite.
pub fn aead_algorithm(suite: CipherSuite) -> Result<&'static aead::Algorithm, RecordError> {
    match suite {
        CipherSuite::TlsAes128GcmSha256 => Ok(&aead::AES_128_GCM),
        CipherSuite::TlsAes256GcmSha384 => Ok(&aead::AES_256_GCM),
        CipherSuite::TlsChacha20Poly1305Sha256 => Ok(&aead::CHACHA20_POLY1305),
        other => Err(RecordError::UnsupportedSuite(other)),
    }
}

/// §5.3: the IV XOR the sequence number, big-endian, left-padded to the IV length.
pub fn make_nonce(iv: &[u8; NONCE_LEN], seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// The header of a protected record whose body is `len` bytes (§5.2).
pub fn protected_header(len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (len as u16).to_be_bytes();
    let [v1, v2] = LEGACY_RECORD_VERSION.to_be_bytes();
    [ContentType::ApplicationData.get(), v1, v2, hi, lo]
}

/// One direction's traffic key and IV, ready to seal or open records (no sequence number:
/// the caller keeps it).
pub struct RecordKey {
    suite: CipherSuite,
    key: aead::LessSafeKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
}

impl std::fmt::Debug for RecordKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecordKey")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

impl RecordKey {
    /// From the raw key and IV (HKDF-Expand-Label "key" / "iv" outputs).
    pub fn new(suite: CipherSuite, key: &[u8], iv: [u8; NONCE_LEN]) -> Result<Self, RecordError> {
        let alg = aead_algorithm(suite)?;
        if key.len() != alg.key_len() {
            return Err(RecordError::BadKey);
        }
        let key = aead::UnboundKey::new(alg, key).map_err(|_| RecordError::BadKey)?;
        Ok(Self {
            suite,
            key: aead::LessSafeKey::new(key),
            iv: Zeroizing::new(iv),
        })
    }

    /// From a traffic secret (§7.3: key and IV expanded from it).
    pub fn from_traffic_secret(suite: CipherSuite, secret: &[u8]) -> Result<Self, RecordError> {
        let (key, iv) =
            traffic_key_iv(suite, secret).ok_or(RecordError::UnsupportedSuite(suite))?;
        Self::new(suite, key.as_bytes(), iv)
    }

    /// The suite.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// Opens the body of the record numbered `seq` in place: `body` (ciphertext and tag)
    /// becomes the TLSInnerPlaintext (content, type, padding). `header` is the record's header.
    pub fn open(
        &self,
        seq: u64,
        header: [u8; HEADER_LEN],
        body: &mut Vec<u8>,
    ) -> Result<(), RecordError> {
        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&self.iv, seq));
        let len = self
            .key
            .open_in_place(nonce, aead::Aad::from(header), body)
            .map_err(|_| RecordError::Decrypt)?
            .len();
        body.truncate(len);
        Ok(())
    }

    /// Seals `buf[start + HEADER_LEN..]` (a TLSInnerPlaintext after its header at `start`) in
    /// place as the record numbered `seq`, and appends the tag.
    pub fn seal(&self, seq: u64, buf: &mut Vec<u8>, start: usize) -> Result<(), RecordError> {
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&buf[start..start + HEADER_LEN]);
        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&self.iv, seq));
        let tag = self
            .key
            .seal_in_place_separate_tag(
                nonce,
                aead::Aad::from(header),
                &mut buf[start + HEADER_LEN..],
            )
            .map_err(|_| RecordError::Seal)?;
        buf.extend_from_slice(tag.as_ref());
        Ok(())
    }
}

/// §5.4: strips the zero padding of a TLSInnerPlaintext; returns the real content type and
/// leaves the content in `inner`.
pub fn strip_inner_plaintext(inner: &mut Vec<u8>) -> Result<ContentType, RecordError> {
    let at = inner
        .iter()
        .rposition(|b| *b != 0)
        .ok_or(RecordError::NoContentType)?;
    let typ = ContentType::from(inner[at]);
    inner.truncate(at);
    Ok(typ)
}

/// A record seen from outside: its outer content type, its header and its body.
pub type RecordParts<'a> = (ContentType, [u8; HEADER_LEN], &'a [u8]);

/// Splits `bytes` into whole records (5-byte header and body); `None` when a record is cut
/// short or longer than a protected record may be.
pub fn split_records(mut bytes: &[u8]) -> Option<Vec<RecordParts<'_>>> {
    let mut out = Vec::new();
    while !bytes.is_empty() {
        if bytes.len() < HEADER_LEN {
            return None;
        }
        let mut header = [0u8; HEADER_LEN];
        header.copy_from_slice(&bytes[..HEADER_LEN]);
        let len = usize::from(u16::from_be_bytes([header[3], header[4]]));
        if len > MAX_CIPHERTEXT_LEN || bytes.len() < HEADER_LEN + len {
            return None;
        }
        out.push((
            ContentType::from(header[0]),
            header,
            &bytes[HEADER_LEN..HEADER_LEN + len],
        ));
        bytes = &bytes[HEADER_LEN + len..];
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_then_open_round_trips_with_padding() {
        let key = RecordKey::new(CipherSuite::TlsAes128GcmSha256, &[7u8; 16], [9u8; 12]).unwrap();
        let mut buf = Vec::new();
        let inner = [b"hello".as_slice(), &[ContentType::Handshake.get(), 0, 0]].concat();
        buf.extend_from_slice(&protected_header(inner.len() + TAG_LEN));
        buf.extend_from_slice(&inner);
        key.seal(3, &mut buf, 0).unwrap();
        let recs = split_records(&buf).unwrap();
        assert_eq!(recs.len(), 1);
        let (typ, header, body) = recs[0];
        assert_eq!(typ, ContentType::ApplicationData);
        let mut body = body.to_vec();
        // Another sequence number does not open it.
        assert_eq!(
            key.open(2, header, &mut body.clone()),
            Err(RecordError::Decrypt)
        );
        key.open(3, header, &mut body).unwrap();
        assert_eq!(strip_inner_plaintext(&mut body), Ok(ContentType::Handshake));
        assert_eq!(body, b"hello");
        assert_eq!(
            strip_inner_plaintext(&mut vec![0, 0]),
            Err(RecordError::NoContentType)
        );
    }

    #[test]
    fn cut_records_do_not_split() {
        assert!(split_records(&[23, 3, 3, 0, 4, 1, 2]).is_none());
        assert!(split_records(&[23, 3]).is_none());
        assert_eq!(split_records(&[]).unwrap().len(), 0);
    }
}
