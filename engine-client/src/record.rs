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
//! Per RFC 8446 §5.3 the nonce is the 12-byte IV XOR the 64-bit sequence number (big-endian,
//! left-padded with zeros); the sequence number belongs to one key: a new key means a new
//! object (or [`RecordEncrypter::rekey`]) starting at 0. A sequence number is never allowed to
//! wrap. The AAD is the 5-byte record header (§5.2).
//!
//! Keys come in as raw bytes ([`RecordKeys`]); HKDF-Expand-Label "key"/"iv" is done by the key
//! schedule. Key copies held here are zeroized on drop; the expanded AES/ChaCha key schedule
//! inside `ring` is not ours to wipe.

use std::fmt;

use ring::aead;
use zeroize::{Zeroize, ZeroizeOnDrop, Zeroizing};

use lurk_proto::wire::enums::{CipherSuite, ContentType};

use crate::deframer::OpaqueRecord;
use crate::error::{Error, InvalidMessage, PeerMisbehaved};

/// Maximum length of a record's content (TLSPlaintext.length, RFC 8446 §5.1): 2^14.
pub const MAX_FRAGMENT_LEN: usize = 1 << 14;
/// Maximum length of a protected record's body (TLSCiphertext.length, §5.2): 2^14 + 256.
pub const MAX_CIPHERTEXT_LEN: usize = MAX_FRAGMENT_LEN + 256;
/// Maximum length of a decrypted TLSInnerPlaintext (content, type and padding, §5.4): 2^14 + 1.
pub const MAX_INNER_PLAINTEXT_LEN: usize = MAX_FRAGMENT_LEN + 1;
/// Length of a record header.
pub const HEADER_LEN: usize = 5;
/// legacy_record_version of every protected record and of plaintext records after the first
/// ClientHello (RFC 8446 §5.1).
pub const LEGACY_RECORD_VERSION: u16 = 0x0303;
/// Smallest record_size_limit a peer may send (RFC 8449 §4).
pub const MIN_RECORD_SIZE_LIMIT: u16 = 64;

/// Tag length of the three AEADs of TLS 1.3 we implement.
const TAG_LEN: usize = 16;
const NONCE_LEN: usize = aead::NONCE_LEN;

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

    fn less_safe_key(&self) -> Result<aead::LessSafeKey, Error> {
        let alg = aead_algorithm(self.suite)?;
        if self.key.len() != alg.key_len() {
            return Err(Error::general(format!(
                "{} needs a {}-byte key, got {}",
                self.suite.name(),
                alg.key_len(),
                self.key.len()
            )));
        }
        let key = aead::UnboundKey::new(alg, &self.key)
            .map_err(|_| Error::general("ring refused the record key"))?;
        Ok(aead::LessSafeKey::new(key))
    }
}

impl fmt::Debug for RecordKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RecordKeys")
            .field("suite", &self.suite)
            .finish_non_exhaustive()
    }
}

fn aead_algorithm(suite: CipherSuite) -> Result<&'static aead::Algorithm, Error> {
    match suite {
        CipherSuite::TlsAes128GcmSha256 => Ok(&aead::AES_128_GCM),
        CipherSuite::TlsAes256GcmSha384 => Ok(&aead::AES_256_GCM),
        CipherSuite::TlsChacha20Poly1305Sha256 => Ok(&aead::CHACHA20_POLY1305),
        other => Err(Error::general(format!(
            "cipher suite {} ({:#06x}) is not implemented",
            other.name(),
            other.get()
        ))),
    }
}

/// RFC 8446 §5.3: the IV XOR the sequence number, big-endian, left-padded to the IV length.
pub(crate) fn make_nonce(iv: &[u8; NONCE_LEN], seq: u64) -> [u8; NONCE_LEN] {
    let mut nonce = *iv;
    for (n, s) in nonce[NONCE_LEN - 8..].iter_mut().zip(seq.to_be_bytes()) {
        *n ^= s;
    }
    nonce
}

/// The record header for a protected record whose body is `len` bytes.
fn protected_header(len: usize) -> [u8; HEADER_LEN] {
    let [hi, lo] = (len as u16).to_be_bytes();
    let [v1, v2] = LEGACY_RECORD_VERSION.to_be_bytes();
    [ContentType::ApplicationData.get(), v1, v2, hi, lo]
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
    key: aead::LessSafeKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
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
            key: keys.less_safe_key()?,
            iv: Zeroizing::new(keys.iv),
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

        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&self.iv, seq));
        match self.key.seal_in_place_separate_tag(
            nonce,
            aead::Aad::from(header),
            &mut out[start + HEADER_LEN..],
        ) {
            Ok(tag) => {
                out.extend_from_slice(tag.as_ref());
                Ok(())
            }
            Err(_) => {
                out.truncate(start);
                Err(Error::general("AEAD seal failed"))
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
    key: aead::LessSafeKey,
    iv: Zeroizing<[u8; NONCE_LEN]>,
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
            key: keys.less_safe_key()?,
            iv: Zeroizing::new(keys.iv),
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
        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&self.iv, self.seq));
        let inner_len = self
            .key
            .open_in_place(nonce, aead::Aad::from(header), &mut payload)
            .map_err(|_| Error::DecryptError)?
            .len();
        self.seq += 1;
        payload.truncate(inner_len);

        if inner_len > self.max_inner {
            return Err(Error::RecordOverflow);
        }
        self.largest_inner = self.largest_inner.max(inner_len);
        // Strip the zero padding: the content type is the last non-zero byte (§5.4).
        let type_at = payload
            .iter()
            .rposition(|b| *b != 0)
            .ok_or(PeerMisbehaved::IllegalTlsInnerPlaintext)?;
        let typ = ContentType::from(payload[type_at]);
        payload.truncate(type_at);
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
pub(crate) mod vectors {
    //! RFC 8448 and Illustrated TLS 1.3 records from `testdata/`, shared by the tests of the
    //! record layer, deframer and joiner.

    use std::collections::HashMap;

    use serde_json::Value;

    use super::*;

    /// One record of a trace.
    pub(crate) struct VecRecord {
        pub(crate) sender: String,
        /// "plaintext", "early", "handshake" or "application".
        pub(crate) protection: String,
        pub(crate) seq: Option<u64>,
        pub(crate) nonce: Option<Vec<u8>>,
        pub(crate) inner_type: Option<u8>,
        pub(crate) padding: usize,
        /// Complete record, header included.
        pub(crate) record: Vec<u8>,
        /// Content (inner plaintext without type and padding).
        pub(crate) payload: Vec<u8>,
    }

    pub(crate) struct Trace {
        pub(crate) name: String,
        pub(crate) keys: HashMap<String, RecordKeys>,
        pub(crate) records: Vec<VecRecord>,
    }

    impl Trace {
        /// The keys protecting `r` ("client_handshake", "client_early_application", ...).
        pub(crate) fn keys_for(&self, r: &VecRecord) -> &RecordKeys {
            let dir = match r.protection.as_str() {
                "early" => "early_application",
                other => other,
            };
            let name = format!("{}_{dir}", r.sender);
            self.keys
                .get(&name)
                .unwrap_or_else(|| panic!("{}: no keys {name}", self.name))
        }
    }

    fn hex(v: &Value) -> Vec<u8> {
        hex::decode(v.as_str().expect("hex string")).expect("valid hex")
    }

    fn suite(name: &str) -> CipherSuite {
        CipherSuite::SUPPORTED
            .into_iter()
            .find(|s| s.name() == name)
            .expect("known suite")
    }

    fn keys(suite: CipherSuite, tk: &Value) -> HashMap<String, RecordKeys> {
        tk.as_object()
            .expect("traffic_keys")
            .iter()
            .map(|(name, v)| {
                let iv: [u8; 12] = hex(&v["iv"]).try_into().expect("12-byte iv");
                (
                    name.clone(),
                    RecordKeys::new(suite, Zeroizing::new(hex(&v["key"])), iv),
                )
            })
            .collect()
    }

    /// The five RFC 8448 traces (AES-128-GCM-SHA256).
    pub(crate) fn rfc8448() -> Vec<Trace> {
        let doc: Value = serde_json::from_str(include_str!("../../testdata/rfc8448.json"))
            .expect("rfc8448.json");
        doc["sections"]
            .as_object()
            .expect("sections")
            .iter()
            .map(|(name, sec)| {
                let sum = &sec["summary"];
                let suite = suite(sum["cipher_suite"].as_str().expect("suite"));
                let records = sum["records"]
                    .as_array()
                    .expect("records")
                    .iter()
                    .map(|r| {
                        let d = &r["derived"];
                        VecRecord {
                            sender: r["sender"].as_str().expect("sender").to_owned(),
                            protection: d["protection"].as_str().expect("prot").to_owned(),
                            seq: d["seq"].as_u64(),
                            nonce: d.get("nonce").map(hex),
                            inner_type: d["inner_content_type"].as_u64().map(|t| t as u8),
                            padding: d["padding_length"].as_u64().unwrap_or(0) as usize,
                            record: hex(&r["record"]),
                            payload: hex(&r["payload"]),
                        }
                    })
                    .collect();
                Trace {
                    name: format!("rfc8448 {name}"),
                    keys: keys(suite, &sum["traffic_keys"]),
                    records,
                }
            })
            .collect()
    }

    /// The Illustrated TLS 1.3 traces: current (AES-256-GCM-SHA384) and 2018 (AES-128-GCM).
    pub(crate) fn illustrated() -> Vec<Trace> {
        let doc: Value = serde_json::from_str(include_str!("../../testdata/illustrated.json"))
            .expect("illustrated.json");
        doc["connections"]
            .as_object()
            .expect("connections")
            .iter()
            .map(|(name, c)| {
                let suite = suite(c["cipher_suite"].as_str().expect("suite"));
                let records = c["records"]
                    .as_array()
                    .expect("records")
                    .iter()
                    .map(|r| VecRecord {
                        sender: r["sender"].as_str().expect("sender").to_owned(),
                        protection: r["protection"].as_str().expect("prot").to_owned(),
                        seq: r["seq"].as_u64(),
                        nonce: r.get("nonce").map(hex),
                        inner_type: r["inner_content_type"].as_u64().map(|t| t as u8),
                        padding: r["padding_length"].as_u64().unwrap_or(0) as usize,
                        record: hex(&r["record"]),
                        payload: hex(&r["payload"]),
                    })
                    .collect();
                Trace {
                    name: format!("illustrated {name}"),
                    keys: keys(suite, &c["traffic_keys"]),
                    records,
                }
            })
            .collect()
    }

    /// Every trace.
    pub(crate) fn all() -> Vec<Trace> {
        let mut v = rfc8448();
        v.extend(illustrated());
        v
    }

    /// Splits a complete record into the deframer's view.
    pub(crate) fn opaque(record: &[u8]) -> OpaqueRecord {
        OpaqueRecord {
            typ: ContentType::from(record[0]),
            version: u16::from_be_bytes([record[1], record[2]]),
            payload: record[HEADER_LEN..].to_vec(),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use lurk_proto::wire::enums::AlertDescription;

    use super::vectors::{self, opaque};
    use super::*;

    fn keys(suite: CipherSuite, key: &[u8], iv: &str) -> RecordKeys {
        RecordKeys::new(
            suite,
            Zeroizing::new(key.to_vec()),
            hex::decode(iv).unwrap().try_into().unwrap(),
        )
    }

    fn aes128() -> RecordKeys {
        keys(
            CipherSuite::TlsAes128GcmSha256,
            &[7; 16],
            "000102030405060708090a0b",
        )
    }

    /// Decrypts every protected record of every trace with a fresh decrypter per key, in wire
    /// order (so sequence numbers must advance exactly as the trace says), then re-encrypts
    /// each with a fresh encrypter per key and compares bytes.
    #[test]
    fn traces_decrypt_and_reencrypt_byte_identically() {
        let mut checked = 0;
        let mut suites = Vec::new();
        for trace in vectors::all() {
            let mut decrypters: HashMap<String, RecordDecrypter> = HashMap::new();
            let mut encrypters: HashMap<String, RecordEncrypter> = HashMap::new();
            for r in trace.records.iter().filter(|r| r.protection != "plaintext") {
                let k = trace.keys_for(r);
                let id = format!("{}_{}", r.sender, r.protection);
                let dec = decrypters
                    .entry(id.clone())
                    .or_insert_with(|| RecordDecrypter::new(k).unwrap());
                let seq = r.seq.expect("seq");
                assert_eq!(dec.seq(), seq, "{} {id}", trace.name);
                if let Some(nonce) = &r.nonce {
                    assert_eq!(&make_nonce(&k.iv, seq)[..], &nonce[..], "{}", trace.name);
                }
                let msg = dec.decrypt(opaque(&r.record)).unwrap_or_else(|e| {
                    panic!("{} {id} seq {seq}: {e}", trace.name);
                });
                assert_eq!(msg.typ.get(), r.inner_type.unwrap(), "{}", trace.name);
                assert_eq!(msg.payload, r.payload, "{} {id} seq {seq}", trace.name);

                let enc = encrypters
                    .entry(id.clone())
                    .or_insert_with(|| RecordEncrypter::new(k).unwrap());
                assert_eq!(enc.seq(), seq);
                assert_eq!(r.padding, 0, "vectors carry no padding");
                let again = enc.encrypt(msg.typ, &msg.payload).unwrap();
                assert_eq!(again, r.record, "{} {id} seq {seq}", trace.name);
                suites.push(k.suite);
                checked += 1;
            }
        }
        // 8448: 7+8+4+4+4 protected records; Illustrated: 9+5.
        assert_eq!(checked, 41);
        assert!(suites.contains(&CipherSuite::TlsAes256GcmSha384));
    }

    #[test]
    fn early_data_and_end_of_early_data_use_client_early_keys() {
        let trace = vectors::rfc8448()
            .into_iter()
            .find(|t| t.name.ends_with("resumed_0rtt"))
            .unwrap();
        let early: Vec<_> = trace
            .records
            .iter()
            .filter(|r| r.protection == "early")
            .collect();
        assert_eq!(early.len(), 2);
        let mut dec = RecordDecrypter::new(&trace.keys["client_early_application"]).unwrap();
        let m = dec.decrypt(opaque(&early[0].record)).unwrap();
        assert_eq!(m.typ, ContentType::ApplicationData);
        assert_eq!(m.payload, b"ABCDEF");
        let m = dec.decrypt(opaque(&early[1].record)).unwrap();
        assert_eq!(m.typ, ContentType::Handshake);
        assert_eq!(m.payload, [5, 0, 0, 0], "EndOfEarlyData");
    }

    #[test]
    fn plaintext_client_hello_matches_trace() {
        for trace in vectors::all() {
            for r in trace.records.iter().filter(|r| r.protection == "plaintext") {
                let version = u16::from_be_bytes([r.record[1], r.record[2]]);
                let typ = ContentType::from(r.record[0]);
                assert_eq!(encode_plaintext(typ, &r.payload, version), r.record);
            }
        }
    }

    #[test]
    fn plaintext_is_fragmented_at_2_14() {
        let payload = vec![0xaa; MAX_FRAGMENT_LEN * 2 + 10];
        let out = encode_plaintext(ContentType::Handshake, &payload, 0x0301);
        assert_eq!(out.len(), payload.len() + 3 * HEADER_LEN);
        assert_eq!(&out[..5], &[22, 3, 1, 0x40, 0x00]);
        let second = HEADER_LEN + MAX_FRAGMENT_LEN;
        assert_eq!(&out[second..second + 5], &[22, 3, 1, 0x40, 0x00]);
        let third = 2 * second;
        assert_eq!(&out[third..third + 5], &[22, 3, 1, 0, 10]);
        assert!(encode_plaintext(ContentType::Handshake, &[], 0x0303).is_empty());
    }

    /// RFC 8439 §2.8.2 through our key setup and the nonce/AAD path of ring.
    #[test]
    fn chacha20_poly1305_rfc8439_known_answer() {
        let k = keys(
            CipherSuite::TlsChacha20Poly1305Sha256,
            &(0x80..0xa0).collect::<Vec<u8>>(),
            "070000004041424344454647",
        );
        let key = k.less_safe_key().unwrap();
        let aad = hex::decode("50515253c0c1c2c3c4c5c6c7").unwrap();
        let mut data = b"Ladies and Gentlemen of the class of '99: If I could offer you only one \
tip for the future, sunscreen would be it."
            .to_vec();
        // seq 0: the nonce is the IV itself.
        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&k.iv, 0));
        key.seal_in_place_append_tag(nonce, aead::Aad::from(&aad), &mut data)
            .unwrap();
        assert_eq!(
            hex::encode(&data),
            "d31a8d34648e60db7b86afbc53ef7ec2a4aded51296e08fea9e2b5a736ee62d63dbea45e8ca967\
1282fafb69da92728b1a71de0a9e060b2905d6a5b67ecd3b3692ddbd7f2d778b8c9803aee328091b58fab324\
e4fad675945585808b4831d7bc3ff4def08e4b7a9de576d26586cec64b61161ae10b594f09e26a7e902ecbd0\
600691"
        );
    }

    /// A TLS 1.3 ChaCha20-Poly1305 record computed independently (Python `cryptography` 48):
    /// seq 7, 3 bytes of padding.
    #[test]
    fn chacha20_poly1305_record_known_answer_and_round_trip() {
        let k = keys(
            CipherSuite::TlsChacha20Poly1305Sha256,
            &(0x80..0xa0).collect::<Vec<u8>>(),
            "070000004041424344454647",
        );
        let record = hex::decode(
            "170303003cb2203442545a1c268ed91fd913d71296a79905fdae82d016ee7a249fa4d183e2e7850887\
2a9eafe9906c7f095700a0d9a5fca771d713351412ea78b0",
        )
        .unwrap();
        let mut dec = RecordDecrypter::new(&k).unwrap();
        dec.seq = 7;
        let m = dec.decrypt(opaque(&record)).unwrap();
        assert_eq!(m.typ, ContentType::ApplicationData);
        assert_eq!(m.payload, b"Ladies and Gentlemen of the class of '99");

        let mut enc = RecordEncrypter::new(&k).unwrap();
        enc.seq = 7;
        enc.set_padding(Padding::ToMultipleOf(4)); // 40 + 1 → 44: 3 bytes of padding
        assert_eq!(enc.encrypt(m.typ, &m.payload).unwrap(), record);

        let mut enc = RecordEncrypter::new(&k).unwrap();
        let mut dec = RecordDecrypter::new(&k).unwrap();
        for i in 0..5u8 {
            let rec = enc.encrypt(ContentType::Handshake, &[i; 100]).unwrap();
            let m = dec.decrypt(opaque(&rec)).unwrap();
            assert_eq!((m.typ, m.payload), (ContentType::Handshake, vec![i; 100]));
        }
    }

    #[test]
    fn aes256_round_trip() {
        let k = keys(
            CipherSuite::TlsAes256GcmSha384,
            &[9; 32],
            "0a0b0c0d0e0f101112131415",
        );
        let mut enc = RecordEncrypter::new(&k).unwrap();
        let mut dec = RecordDecrypter::new(&k).unwrap();
        let rec = enc.encrypt(ContentType::Alert, &[2, 40]).unwrap();
        assert_eq!(dec.decrypt(opaque(&rec)).unwrap().payload, [2, 40]);
    }

    #[test]
    fn bad_keys_refused() {
        let short = keys(
            CipherSuite::TlsAes256GcmSha384,
            &[1; 16],
            "000000000000000000000000",
        );
        assert!(matches!(
            RecordEncrypter::new(&short),
            Err(Error::General(_))
        ));
        let ccm = keys(
            CipherSuite::TlsAes128CcmSha256,
            &[1; 16],
            "000000000000000000000000",
        );
        assert!(matches!(RecordDecrypter::new(&ccm), Err(Error::General(_))));
    }

    #[test]
    fn debug_shows_no_key_material() {
        let k = keys(
            CipherSuite::TlsAes128GcmSha256,
            &[0xab; 16],
            "cdcdcdcdcdcdcdcdcdcdcdcd",
        );
        let enc = RecordEncrypter::new(&k).unwrap();
        let dec = RecordDecrypter::new(&k).unwrap();
        for s in [format!("{k:?}"), format!("{enc:?}"), format!("{dec:?}")] {
            for leak in ["171", "205", "key:", "iv:", "[", "0x"] {
                assert!(!s.contains(leak), "{s}");
            }
            assert!(s.contains("TlsAes128GcmSha256"), "{s}");
        }
    }

    #[test]
    fn tampered_record_is_decrypt_error() {
        let mut enc = RecordEncrypter::new(&aes128()).unwrap();
        let rec = enc.encrypt(ContentType::ApplicationData, b"hello").unwrap();
        for i in [0, 2, HEADER_LEN, rec.len() - 1] {
            // Header bytes are AAD: a changed type is refused before decryption, a changed
            // version by the tag.
            let mut bad = rec.clone();
            bad[i] ^= 1;
            if i == 0 {
                // 0x16: outer type must be application_data.
                let e = RecordDecrypter::new(&aes128())
                    .unwrap()
                    .decrypt(opaque(&bad))
                    .unwrap_err();
                assert!(matches!(e, Error::InappropriateMessage { .. }));
                continue;
            }
            let mut dec = RecordDecrypter::new(&aes128()).unwrap();
            assert_eq!(
                dec.decrypt(opaque(&bad)).unwrap_err(),
                Error::DecryptError,
                "byte {i}"
            );
            assert_eq!(
                dec.seq(),
                0,
                "a failed record does not advance the sequence"
            );
        }
    }

    #[test]
    fn sequence_numbers_increment_and_nonce_follows() {
        let k = aes128();
        assert_eq!(make_nonce(&k.iv, 0), k.iv);
        assert_eq!(
            hex::encode(make_nonce(&k.iv, 0x0102_0304_0506_0708)),
            "00010203050705030d0f0d03"
        );
        assert_eq!(
            hex::encode(make_nonce(&[0xff; 12], 1)),
            "fffffffffffffffffffffffe"
        );
        let mut enc = RecordEncrypter::new(&k).unwrap();
        let mut dec = RecordDecrypter::new(&k).unwrap();
        let r0 = enc.encrypt(ContentType::ApplicationData, b"x").unwrap();
        let r1 = enc.encrypt(ContentType::ApplicationData, b"x").unwrap();
        assert_ne!(r0, r1, "same content, different nonce");
        assert_eq!(enc.seq(), 2);
        // Out of order: r1 cannot open at seq 0.
        assert_eq!(
            RecordDecrypter::new(&k)
                .unwrap()
                .decrypt(opaque(&r1))
                .unwrap_err(),
            Error::DecryptError
        );
        dec.decrypt(opaque(&r0)).unwrap();
        dec.decrypt(opaque(&r1)).unwrap();
        assert_eq!(dec.seq(), 2);
    }

    #[test]
    fn rekey_resets_sequence_and_keeps_limits() {
        let mut enc = RecordEncrypter::new(&aes128()).unwrap();
        enc.set_record_size_limit(100).unwrap();
        enc.encrypt(ContentType::ApplicationData, b"a").unwrap();
        let k2 = keys(
            CipherSuite::TlsAes128GcmSha256,
            &[8; 16],
            "0f0e0d0c0b0a090807060504",
        );
        enc.rekey(&k2).unwrap();
        assert_eq!(enc.seq(), 0);
        assert_eq!(enc.max_fragment_len(), 99);
        let rec = enc.encrypt(ContentType::ApplicationData, b"b").unwrap();
        let mut dec = RecordDecrypter::new(&aes128()).unwrap();
        dec.rekey(&k2).unwrap();
        assert_eq!(dec.decrypt(opaque(&rec)).unwrap().payload, b"b");
    }

    #[test]
    fn sequence_never_wraps() {
        let mut enc = RecordEncrypter::new(&aes128()).unwrap();
        enc.seq = u64::MAX - 1;
        let rec = enc.encrypt(ContentType::ApplicationData, b"last").unwrap();
        assert_eq!(
            enc.encrypt(ContentType::ApplicationData, b"wrap")
                .unwrap_err(),
            Error::SequenceExhausted
        );
        let mut dec = RecordDecrypter::new(&aes128()).unwrap();
        dec.seq = u64::MAX - 1;
        dec.decrypt(opaque(&rec)).unwrap();
        assert_eq!(
            dec.decrypt(opaque(&rec)).unwrap_err(),
            Error::SequenceExhausted
        );
    }

    /// Seals an arbitrary inner plaintext (for malformed-record tests).
    fn seal_raw(k: &RecordKeys, seq: u64, inner: &[u8]) -> Vec<u8> {
        let header = protected_header(inner.len() + TAG_LEN);
        let mut buf = inner.to_vec();
        let nonce = aead::Nonce::assume_unique_for_key(make_nonce(&k.iv, seq));
        k.less_safe_key()
            .unwrap()
            .seal_in_place_append_tag(nonce, aead::Aad::from(header), &mut buf)
            .unwrap();
        [&header[..], &buf].concat()
    }

    #[test]
    fn padding_is_stripped() {
        let k = aes128();
        let rec = seal_raw(&k, 0, &[b'h', b'i', 22, 0, 0, 0, 0, 0, 0, 0]);
        let m = RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&rec))
            .unwrap();
        assert_eq!(
            (m.typ, &m.payload[..]),
            (ContentType::Handshake, &b"hi"[..])
        );
        // A zero inside the content is content, not padding.
        let rec = seal_raw(&k, 0, &[0, 0, 23, 0]);
        let m = RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&rec))
            .unwrap();
        assert_eq!(m.payload, [0, 0]);
    }

    #[test]
    fn padding_policy_pads_and_respects_limit() {
        let k = aes128();
        let mut enc = RecordEncrypter::new(&k).unwrap();
        enc.set_padding(Padding::ToMultipleOf(256));
        let rec = enc.encrypt(ContentType::ApplicationData, b"abc").unwrap();
        assert_eq!(rec.len(), HEADER_LEN + 256 + TAG_LEN);
        let big = vec![1; MAX_FRAGMENT_LEN];
        let rec = enc.encrypt(ContentType::ApplicationData, &big).unwrap();
        assert_eq!(rec.len(), HEADER_LEN + MAX_INNER_PLAINTEXT_LEN + TAG_LEN);
        let mut dec = RecordDecrypter::new(&k).unwrap();
        let mut out = Vec::new();
        enc.seq = 0;
        enc.encrypt_all(ContentType::ApplicationData, b"abc", &mut out)
            .unwrap();
        assert_eq!(dec.decrypt(opaque(&out)).unwrap().payload, b"abc");
    }

    #[test]
    fn all_zero_inner_plaintext_refused() {
        let k = aes128();
        for inner in [&[0u8; 9][..], &[][..]] {
            let rec = seal_raw(&k, 0, inner);
            assert_eq!(
                RecordDecrypter::new(&k)
                    .unwrap()
                    .decrypt(opaque(&rec))
                    .unwrap_err(),
                Error::PeerMisbehaved(PeerMisbehaved::IllegalTlsInnerPlaintext)
            );
        }
    }

    #[test]
    fn protected_ccs_and_unknown_inner_type_refused() {
        let k = aes128();
        let e = RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&seal_raw(&k, 0, &[1, 20])))
            .unwrap_err();
        assert_eq!(e, PeerMisbehaved::ProtectedChangeCipherSpec.into());
        assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
        let e = RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&seal_raw(&k, 0, &[1, 99, 0])))
            .unwrap_err();
        assert_eq!(e, InvalidMessage::InvalidInnerContentType(99).into());
        assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
    }

    #[test]
    fn oversize_inner_plaintext_is_record_overflow() {
        let k = aes128();
        // 2^14 content + type + 1 padding byte = 2^14 + 2 > 2^14 + 1.
        let mut inner = vec![1u8; MAX_FRAGMENT_LEN];
        inner.extend_from_slice(&[23, 0]);
        let rec = seal_raw(&k, 0, &inner);
        assert_eq!(
            RecordDecrypter::new(&k)
                .unwrap()
                .decrypt(opaque(&rec))
                .unwrap_err(),
            Error::RecordOverflow
        );
        // Exactly 2^14 + 1 is fine.
        inner.pop();
        let rec = seal_raw(&k, 0, &inner);
        RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&rec))
            .unwrap();
        // Our advertised record_size_limit is enforced.
        let mut dec = RecordDecrypter::new(&k).unwrap();
        dec.set_record_size_limit(1000).unwrap();
        assert_eq!(
            dec.decrypt(opaque(&rec)).unwrap_err(),
            Error::RecordOverflow
        );
        assert!(dec.set_record_size_limit(63).is_err());

        // A limit learnt after a longer record was opened under the same key: overflow.
        let mut dec = RecordDecrypter::new(&k).unwrap();
        dec.decrypt(opaque(&rec)).unwrap();
        assert_eq!(dec.largest_inner_plaintext(), MAX_INNER_PLAINTEXT_LEN);
        assert_eq!(
            dec.set_record_size_limit(1000).unwrap_err(),
            Error::RecordOverflow
        );
        dec.set_record_size_limit(16385).unwrap();
    }

    #[test]
    fn oversize_ciphertext_refused() {
        let mut dec = RecordDecrypter::new(&aes128()).unwrap();
        let o = OpaqueRecord {
            typ: ContentType::ApplicationData,
            version: 0x0303,
            payload: vec![0; MAX_CIPHERTEXT_LEN + 1],
        };
        assert_eq!(dec.decrypt(o).unwrap_err(), Error::RecordOverflow);
    }

    #[test]
    fn large_application_data_is_fragmented() {
        let k = aes128();
        let mut enc = RecordEncrypter::new(&k).unwrap();
        let data: Vec<u8> = (0..40_000u32).map(|i| i as u8).collect();
        assert!(enc.encrypt(ContentType::ApplicationData, &data).is_err());
        let mut out = Vec::new();
        let n = enc
            .encrypt_all(ContentType::ApplicationData, &data, &mut out)
            .unwrap();
        assert_eq!(n, 3);
        let mut dec = RecordDecrypter::new(&k).unwrap();
        let mut got = Vec::new();
        let mut rest = &out[..];
        let mut lens = Vec::new();
        while !rest.is_empty() {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            assert!(len <= MAX_CIPHERTEXT_LEN);
            let m = dec.decrypt(opaque(&rest[..HEADER_LEN + len])).unwrap();
            lens.push(m.payload.len());
            got.extend(m.payload);
            rest = &rest[HEADER_LEN + len..];
        }
        assert_eq!(
            lens,
            [
                MAX_FRAGMENT_LEN,
                MAX_FRAGMENT_LEN,
                40_000 - 2 * MAX_FRAGMENT_LEN
            ]
        );
        assert_eq!(got, data);
    }

    #[test]
    fn record_size_limit_applies_when_writing() {
        let k = aes128();
        let mut enc = RecordEncrypter::new(&k).unwrap();
        assert_eq!(
            enc.set_record_size_limit(63).unwrap_err(),
            PeerMisbehaved::IllegalRecordSizeLimit.into()
        );
        enc.set_record_size_limit(64).unwrap();
        assert_eq!(enc.max_fragment_len(), 63);
        let mut out = Vec::new();
        assert_eq!(
            enc.encrypt_all(ContentType::ApplicationData, &[5; 200], &mut out)
                .unwrap(),
            4
        );
        // A limit above 2^14 + 1 is capped (RFC 8449 §4).
        enc.set_record_size_limit(u16::MAX).unwrap();
        assert_eq!(enc.max_fragment_len(), MAX_FRAGMENT_LEN);
    }

    #[test]
    fn handshake_messages_written_together_share_one_record() {
        let k = aes128();
        let mut enc = RecordEncrypter::new(&k).unwrap();
        let cert = [11u8; 700];
        let cv = [15u8; 80];
        let fin = [20u8; 36];
        let mut out = Vec::new();
        let n = enc
            .encrypt_parts(ContentType::Handshake, &[&cert, &cv, &fin], &mut out)
            .unwrap();
        assert_eq!(n, 1);
        let m = RecordDecrypter::new(&k)
            .unwrap()
            .decrypt(opaque(&out))
            .unwrap();
        assert_eq!(m.payload, [&cert[..], &cv, &fin].concat());

        // Across the limit, parts straddle record boundaries without gaps.
        enc.set_record_size_limit(500).unwrap();
        out.clear();
        let n = enc
            .encrypt_parts(ContentType::Handshake, &[&cert, &cv, &fin], &mut out)
            .unwrap();
        assert_eq!(n, 2); // 816 bytes in 499 + 317
    }

    #[test]
    fn empty_records() {
        let mut enc = RecordEncrypter::new(&aes128()).unwrap();
        assert!(enc.encrypt(ContentType::Handshake, &[]).is_err());
        assert!(enc.encrypt(ContentType::Alert, &[]).is_err());
        let rec = enc.encrypt(ContentType::ApplicationData, &[]).unwrap();
        let m = RecordDecrypter::new(&aes128())
            .unwrap()
            .decrypt(opaque(&rec))
            .unwrap();
        assert!(m.payload.is_empty());
        let mut out = Vec::new();
        assert_eq!(
            enc.encrypt_all(ContentType::Handshake, &[], &mut out)
                .unwrap(),
            0
        );
        assert!(out.is_empty());
    }
}
