//! TLS 1.3 record protection (RFC 8446 §5), one object per direction and key.
//!
//! - [`RecordEncrypter`] turns content into complete `TLSCiphertext` records (header included),
//!   fragmenting content longer than the record limit and coalescing several handshake
//!   messages written together into as few records as possible (the reference engine wrote
//!   one record, and one socket write, per message).
//! - [`RecordDecrypter`] opens one [`OpaqueRecord`] from the [`Deframer`](crate::deframer),
//!   strips the padding and returns the real content type.
//! - [`encode_plaintext`] frames unprotected records (ClientHello, before any key).
//!
//! The AEAD itself (nonce = IV XOR sequence number, AAD = the record header, the inner
//! plaintext's padding, RFC 8446 §5.2-§5.4) lives in `lurk_proto::record`, which the CS uses
//! too; here are the sequence numbers (one per key: a new key means a new object, or
//! [`RecordEncrypter::rekey`], starting at 0, never allowed to wrap), the size limits and the
//! fragmenting.
//!
//! Keys come in as raw bytes ([`RecordKeys`]); HKDF-Expand-Label "key"/"iv" is done by the key
//! schedule. Key copies held here are zeroized on drop; the expanded AES/ChaCha key schedule
//! inside `ring` is not ours to wipe.

use std::fmt;

use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use lurk_proto::record::{self as protection, RecordError, RecordKey};
use lurk_proto::wire::enums::{CipherSuite, ContentType};

use crate::deframer::OpaqueRecord;
use crate::error::{Error, InvalidMessage, PeerMisbehaved};

pub use lurk_proto::record::{
    HEADER_LEN, LEGACY_RECORD_VERSION, MAX_CIPHERTEXT_LEN, MAX_FRAGMENT_LEN,
    MAX_INNER_PLAINTEXT_LEN,
};
/// Smallest record_size_limit a peer may send (RFC 8449 §4).
pub const MIN_RECORD_SIZE_LIMIT: u16 = 64;

use lurk_proto::record::{protected_header, NONCE_LEN, TAG_LEN};
#[cfg(test)]
use ring::aead;

/// Raw traffic key and IV for one direction (output of HKDF-Expand-Label "key" / "iv").
///
/// Zeroized on drop; `Debug` shows the suite only.
#[derive(Clone, Zeroize, ZeroizeOnDrop)]
pub struct RecordKeys {
    /// The negotiated cipher suite; selects the AEAD.
    #[zeroize(skip)]
    pub suite: CipherSuite,
    /// The write key: 16 bytes (AES-128-GCM) or 32 (AES-256-GCM, ChaCha20-Poly1305).
    pub key: Zeroizing<Vec<u8>>,
    /// The write IV.
    pub iv: [u8; NONCE_LEN],
}

impl RecordKeys {
    /// Bundles a key and an IV; checked when an encrypter or decrypter is built.
    pub fn new(suite: CipherSuite, key: Zeroizing<Vec<u8>>, iv: [u8; NONCE_LEN]) -> Self {
        Self { suite, key, iv }
    }

    /// ring's key, for the tests that seal records by hand.
    #[cfg(test)]
    fn less_safe_key(&self) -> Result<aead::LessSafeKey, Error> {
        let alg =
            protection::aead_algorithm(self.suite).map_err(|e| Error::general(e.to_string()))?;
        let key = aead::UnboundKey::new(alg, &self.key)
            .map_err(|_| Error::general("ring refused the record key"))?;
        Ok(aead::LessSafeKey::new(key))
    }

    fn record_key(&self) -> Result<RecordKey, Error> {
        RecordKey::new(self.suite, &self.key, self.iv).map_err(|e| match e {
            RecordError::BadKey => {
                let need = protection::aead_algorithm(self.suite).map_or(0, |a| a.key_len());
                Error::general(format!(
                    "{} needs a {need}-byte key, got {}",
                    self.suite.name(),
                    self.key.len()
                ))
            }
            other => Error::general(other.to_string()),
        })
    }
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

/// RFC 8446 §5.3 (the rule lives in `lurk_proto::record`).
#[cfg(test)]
pub(crate) fn make_nonce(iv: &[u8; NONCE_LEN], seq: u64) -> [u8; NONCE_LEN] {
    protection::make_nonce(iv, seq)
}

/// Converts a record_size_limit (RFC 8449; in TLS 1.3 it counts the inner content type and
/// padding) to a maximum TLSInnerPlaintext length.
fn inner_limit(limit: u16) -> Option<usize> {
    (limit >= MIN_RECORD_SIZE_LIMIT).then(|| usize::from(limit).min(MAX_INNER_PLAINTEXT_LEN))
}

/// How much zero padding the encrypter adds (RFC 8446 §5.4). Never pushes a record past the
/// size limit.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Padding {
    /// No padding (the default).
    #[default]
    None,
    /// Pad every TLSInnerPlaintext (content + type byte) up to a multiple of this many bytes.
    /// 0 and 1 mean no padding.
    ToMultipleOf(u16),
}

impl Padding {
    fn pad_len(self, inner_len: usize, max_inner: usize) -> usize {
        match self {
            Self::None | Self::ToMultipleOf(0 | 1) => 0,
            Self::ToMultipleOf(block) => {
                let block = usize::from(block);
                let padded = inner_len.div_ceil(block) * block;
                padded.min(max_inner).saturating_sub(inner_len)
            }
        }
    }
}

/// A decrypted record: the real content type and the content, padding removed.
#[derive(Clone, PartialEq, Eq)]
pub struct PlainMessage {
    /// Handshake, Alert or ApplicationData (the decrypter refuses anything else).
    pub typ: ContentType,
    /// The content.
    pub payload: Vec<u8>,
}

impl fmt::Debug for PlainMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Application data may be sensitive; show its length only.
        f.debug_struct("PlainMessage")
            .field("typ", &self.typ)
            .field("len", &self.payload.len())
            .finish()
    }
}

/// Protects outgoing records under one traffic key.
pub struct RecordEncrypter {
    suite: CipherSuite,
    key: RecordKey,
    seq: u64,
    /// Maximum TLSInnerPlaintext (content + type + padding): 2^14 + 1, or the peer's
    /// record_size_limit.
    max_inner: usize,
    padding: Padding,
}

impl RecordEncrypter {
    /// An encrypter at sequence number 0.
    pub fn new(keys: &RecordKeys) -> Result<Self, Error> {
        Ok(Self {
            suite: keys.suite,
            key: keys.record_key()?,
            seq: 0,
            max_inner: MAX_INNER_PLAINTEXT_LEN,
            padding: Padding::None,
        })
    }

    /// Installs a new key (KeyUpdate, or the next epoch). The sequence number restarts at 0;
    /// the size limit and padding policy are kept.
    pub fn rekey(&mut self, keys: &RecordKeys) -> Result<(), Error> {
        let limit = self.max_inner;
        let padding = self.padding;
        *self = Self::new(keys)?;
        self.max_inner = limit;
        self.padding = padding;
        Ok(())
    }

    /// The cipher suite of the key.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The sequence number the next record will use.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Tests jump to the end of a key's life.
    #[cfg(test)]
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Applies the peer's record_size_limit extension (RFC 8449). In TLS 1.3 the limit counts
    /// the content type byte and the padding, so the content of a record is at most
    /// `limit - 1` bytes (and never more than 2^14). Values below 64 are illegal.
    pub fn set_record_size_limit(&mut self, limit: u16) -> Result<(), Error> {
        self.max_inner = inner_limit(limit).ok_or(PeerMisbehaved::IllegalRecordSizeLimit)?;
        Ok(())
    }

    /// Largest content one record carries under the current limit.
    pub fn max_fragment_len(&self) -> usize {
        self.max_inner - 1
    }

    /// Sets the padding policy for the following records.
    pub fn set_padding(&mut self, padding: Padding) {
        self.padding = padding;
    }

    /// One complete record (header included) carrying all of `payload`.
    ///
    /// Refuses content longer than [`Self::max_fragment_len`] (use [`Self::encrypt_all`]) and
    /// empty Handshake/Alert content (RFC 8446 §5.1; empty ApplicationData records are legal).
    pub fn encrypt(&mut self, typ: ContentType, payload: &[u8]) -> Result<Vec<u8>, Error> {
        if payload.len() > self.max_fragment_len() {
            return Err(Error::general(format!(
                "{} bytes do not fit in one record (max {})",
                payload.len(),
                self.max_fragment_len()
            )));
        }
        if payload.is_empty() && typ != ContentType::ApplicationData {
            return Err(Error::general(format!(
                "refusing to send an empty {typ:?} record"
            )));
        }
        let mut out = Vec::with_capacity(HEADER_LEN + payload.len() + 1 + TAG_LEN);
        self.seal_record(typ, &[payload], &mut out)?;
        Ok(out)
    }

    /// Appends `payload` to `out` as as many records as the size limit requires. Returns the
    /// number of records written (0 for an empty payload).
    pub fn encrypt_all(
        &mut self,
        typ: ContentType,
        payload: &[u8],
        out: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        self.encrypt_parts(typ, &[payload], out)
    }

    /// Appends the concatenation of `parts` (e.g. the Certificate, CertificateVerify and
    /// Finished of one flight) to `out`, coalesced into the fewest records the size limit
    /// allows, so that a flight goes out in one write. Returns the number of records written.
    pub fn encrypt_parts(
        &mut self,
        typ: ContentType,
        parts: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<usize, Error> {
        let max = self.max_fragment_len();
        let total: usize = parts.iter().map(|p| p.len()).sum();
        out.reserve(total + total.div_ceil(max) * (HEADER_LEN + 1 + TAG_LEN));
        let mut records = 0;
        let mut pending: Vec<&[u8]> = Vec::new();
        let mut pending_len = 0;
        for part in parts {
            let mut rest: &[u8] = part;
            while !rest.is_empty() {
                let take = rest.len().min(max - pending_len);
                let (head, tail) = rest.split_at(take);
                pending.push(head);
                pending_len += take;
                rest = tail;
                if pending_len == max {
                    self.seal_record(typ, &pending, out)?;
                    records += 1;
                    pending.clear();
                    pending_len = 0;
                }
            }
        }
        if pending_len > 0 {
            self.seal_record(typ, &pending, out)?;
            records += 1;
        }
        Ok(records)
    }

    fn next_seq(&mut self) -> Result<u64, Error> {
        // Never wrap (RFC 8446 §5.3); u64::MAX itself is never used so that `seq + 1` exists.
        if self.seq == u64::MAX {
            return Err(Error::SequenceExhausted);
        }
        let seq = self.seq;
        self.seq += 1;
        Ok(seq)
    }

    /// Appends one record whose content is the concatenation of `pieces` (at most the limit).
    fn seal_record(
        &mut self,
        typ: ContentType,
        pieces: &[&[u8]],
        out: &mut Vec<u8>,
    ) -> Result<(), Error> {
        let content_len: usize = pieces.iter().map(|p| p.len()).sum();
        if content_len + 1 > self.max_inner {
            return Err(Error::general("record content over the limit"));
        }
        let seq = self.next_seq()?;
        let pad = self.padding.pad_len(content_len + 1, self.max_inner);
        let body_len = content_len + 1 + pad + TAG_LEN;
        let header = protected_header(body_len);

        let start = out.len();
        out.extend_from_slice(&header);
        for piece in pieces {
            out.extend_from_slice(piece);
        }
        out.push(typ.get());
        out.resize(out.len() + pad, 0);

        match self.key.seal(seq, out, start) {
            Ok(()) => Ok(()),
            Err(e) => {
                out.truncate(start);
                Err(Error::general(e.to_string()))
            }
        }
    }
}

impl fmt::Debug for RecordEncrypter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordEncrypter")
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .field("max_inner", &self.max_inner)
            .field("padding", &self.padding)
            .finish_non_exhaustive()
    }
}

/// Opens incoming protected records under one traffic key.
pub struct RecordDecrypter {
    suite: CipherSuite,
    key: RecordKey,
    seq: u64,
    /// Maximum TLSInnerPlaintext accepted: 2^14 + 1, or the record_size_limit we advertised.
    max_inner: usize,
    /// The longest TLSInnerPlaintext opened under this key, so that a limit that becomes known
    /// after the first records (the server's EncryptedExtensions says whether it honours ours)
    /// still covers them.
    largest_inner: usize,
}

impl RecordDecrypter {
    /// A decrypter at sequence number 0.
    pub fn new(keys: &RecordKeys) -> Result<Self, Error> {
        Ok(Self {
            suite: keys.suite,
            key: keys.record_key()?,
            seq: 0,
            max_inner: MAX_INNER_PLAINTEXT_LEN,
            largest_inner: 0,
        })
    }

    /// Installs a new key; the sequence number restarts at 0, the size limit is kept.
    pub fn rekey(&mut self, keys: &RecordKeys) -> Result<(), Error> {
        let limit = self.max_inner;
        *self = Self::new(keys)?;
        self.max_inner = limit;
        Ok(())
    }

    /// The cipher suite of the key.
    pub fn suite(&self) -> CipherSuite {
        self.suite
    }

    /// The sequence number the next record must have been sent with.
    pub fn seq(&self) -> u64 {
        self.seq
    }

    /// Tests jump to the end of a key's life.
    #[cfg(test)]
    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Enforces the record_size_limit we advertised (RFC 8449 §4: larger records are a
    /// `record_overflow`). Our own value, so a value below 64 is a local error. Records
    /// already opened under this key count too: a longer one is a `record_overflow` now.
    pub fn set_record_size_limit(&mut self, limit: u16) -> Result<(), Error> {
        let max = inner_limit(limit)
            .ok_or_else(|| Error::general(format!("record_size_limit {limit} below 64")))?;
        if self.largest_inner > max {
            return Err(Error::RecordOverflow);
        }
        self.max_inner = max;
        Ok(())
    }

    /// The longest TLSInnerPlaintext opened under this key so far.
    pub fn largest_inner_plaintext(&self) -> usize {
        self.largest_inner
    }

    /// Authenticates and decrypts one record; returns the inner content type and content.
    ///
    /// Errors: outer type other than application_data → `unexpected_message`; body over
    /// 2^14 + 256 or inner plaintext over the limit → `record_overflow`; bad tag →
    /// [`Error::DecryptError`]; all-zero inner plaintext, protected change_cipher_spec or an
    /// unknown inner type → `unexpected_message`.
    pub fn decrypt(&mut self, record: OpaqueRecord) -> Result<PlainMessage, Error> {
        if record.typ != ContentType::ApplicationData {
            return Err(Error::InappropriateMessage {
                expected: vec![ContentType::ApplicationData],
                got: record.typ,
            });
        }
        if record.payload.len() > MAX_CIPHERTEXT_LEN {
            return Err(Error::RecordOverflow);
        }
        if self.seq == u64::MAX {
            return Err(Error::SequenceExhausted);
        }
        let header = record.header();
        let mut payload = record.payload;
        self.key
            .open(self.seq, header, &mut payload)
            .map_err(|_| Error::DecryptError)?;
        self.seq += 1;
        let inner_len = payload.len();

        if inner_len > self.max_inner {
            return Err(Error::RecordOverflow);
        }
        self.largest_inner = self.largest_inner.max(inner_len);
        // Strip the zero padding: the content type is the last non-zero byte (§5.4).
        let typ = protection::strip_inner_plaintext(&mut payload)
            .map_err(|_| PeerMisbehaved::IllegalTlsInnerPlaintext)?;
        match typ {
            ContentType::Handshake | ContentType::Alert | ContentType::ApplicationData => {
                Ok(PlainMessage { typ, payload })
            }
            ContentType::ChangeCipherSpec => Err(PeerMisbehaved::ProtectedChangeCipherSpec.into()),
            other => Err(InvalidMessage::InvalidInnerContentType(other.get()).into()),
        }
    }
}

impl fmt::Debug for RecordDecrypter {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordDecrypter")
            .field("suite", &self.suite)
            .field("seq", &self.seq)
            .field("max_inner", &self.max_inner)
            .finish_non_exhaustive()
    }
}

/// Frames `payload` as unprotected records of type `typ` (TLSPlaintext, RFC 8446 §5.1), at most
/// 2^14 bytes each. `legacy_version` is 0x0301 for the first ClientHello (for middlebox
/// compatibility) and 0x0303 otherwise. An empty payload yields no record: TLS forbids empty
/// handshake fragments.
pub fn encode_plaintext(typ: ContentType, payload: &[u8], legacy_version: u16) -> Vec<u8> {
    let mut out = Vec::with_capacity(payload.len() + payload.len().div_ceil(MAX_FRAGMENT_LEN) * 5);
    for chunk in payload.chunks(MAX_FRAGMENT_LEN) {
        out.push(typ.get());
        out.extend_from_slice(&legacy_version.to_be_bytes());
        out.extend_from_slice(&(chunk.len() as u16).to_be_bytes());
        out.extend_from_slice(chunk);
    }
    out
}

#[cfg(test)]
pub(crate) mod vectors;

#[cfg(test)]
mod tests;
