//! Records out of a byte stream (RFC 8446 §5.1), Sans-IO.
//!
//! The [`Deframer`] owns a buffer: bytes go in with [`Deframer::push`] (or
//! [`Deframer::read_from`] for a blocking reader), whole records come out of
//! [`Deframer::next_record`]: `Ok(None)` = need more bytes, `Err` = fatal (not TLS, or a
//! record-layer rule broken). Records may be split across reads at any byte.
//!
//! Checks made as soon as the 5-byte header is there, before buffering the body: known content
//! type (§5: else `unexpected_message`), legacy_record_version 0x03XX (else this is not TLS),
//! length ≤ 2^14 for plaintext types and ≤ 2^14 + 256 for application_data, the outer type of
//! every protected record (§5.1, §5.2: else `record_overflow`), no empty Handshake or Alert
//! record.
//!
//! Middlebox compatibility (§5, D.4): while the handshake runs, an unprotected
//! change_cipher_spec record holding the single byte 0x01 is dropped here and never reaches the
//! caller; any other change_cipher_spec is `unexpected_message`. After the peer's Finished
//! ([`Deframer::end_middlebox_ccs`]) any change_cipher_spec is refused. (A *protected* record
//! whose inner type is change_cipher_spec is refused by the
//! [`RecordDecrypter`](crate::record::RecordDecrypter).)
//!
//! Which records must be protected (everything after ServerHello is application_data on the
//! outside) is the connection's rule, not the deframer's: it sees bytes, not keys.

use std::io;

use lurk_proto::wire::enums::ContentType;

use crate::error::{Error, InvalidMessage, PeerMisbehaved};
use crate::record::{HEADER_LEN, MAX_CIPHERTEXT_LEN, MAX_FRAGMENT_LEN};

/// How many middlebox change_cipher_spec records we drop before calling it abuse. The server
/// sends one (after ServerHello or HelloRetryRequest); rustls allows two as well.
pub const MAX_MIDDLEBOX_CCS: u8 = 2;

/// How many bytes [`Deframer::read_from`] asks for at a time.
const READ_SIZE: usize = 4096;

/// [`Deframer::read_from`] refuses to buffer more than this: two maximal records. A caller that
/// drains with `next_record` never gets near it.
const MAX_BUFFERED: usize = 2 * (HEADER_LEN + MAX_CIPHERTEXT_LEN);

/// One record as it came off the wire: header fields and body (still protected if
/// `typ` is application_data).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpaqueRecord {
    /// The outer content type.
    pub typ: ContentType,
    /// legacy_record_version (0x03XX; 0x0303 for protected records).
    pub version: u16,
    /// The record body.
    pub payload: Vec<u8>,
}

impl OpaqueRecord {
    /// The 5-byte header (the AAD of a protected record).
    pub fn header(&self) -> [u8; HEADER_LEN] {
        let [v1, v2] = self.version.to_be_bytes();
        let [l1, l2] = (self.payload.len() as u16).to_be_bytes();
        [self.typ.get(), v1, v2, l1, l2]
    }

    /// Header and body, as on the wire.
    pub fn encode(&self) -> Vec<u8> {
        [&self.header()[..], &self.payload].concat()
    }
}

/// Splits a byte stream into records. See the module documentation.
#[derive(Debug)]
pub struct Deframer {
    buf: Vec<u8>,
    middlebox_ccs_allowed: bool,
    middlebox_ccs_seen: u8,
    /// A fatal error is sticky: the stream is not resynchronisable.
    failed: Option<Error>,
}

impl Default for Deframer {
    fn default() -> Self {
        Self::new()
    }
}

impl Deframer {
    /// A deframer for a client that has sent its ClientHello: middlebox CCS allowed.
    pub fn new() -> Self {
        Self {
            buf: Vec::new(),
            middlebox_ccs_allowed: true,
            middlebox_ccs_seen: 0,
            failed: None,
        }
    }

    /// Appends received bytes.
    pub fn push(&mut self, bytes: &[u8]) {
        self.buf.extend_from_slice(bytes);
    }

    /// Reads once from `rd` into the buffer (like rustls `read_tls`): returns the byte count,
    /// 0 at EOF. Refuses (`io::ErrorKind::Other`) when records are not being drained.
    pub fn read_from(&mut self, rd: &mut dyn io::Read) -> io::Result<usize> {
        if self.buf.len() >= MAX_BUFFERED {
            return Err(io::Error::other("deframer buffer full"));
        }
        let filled = self.buf.len();
        self.buf.resize(filled + READ_SIZE, 0);
        let res = rd.read(&mut self.buf[filled..]);
        let n = *res.as_ref().unwrap_or(&0);
        self.buf.truncate(filled + n);
        res
    }

    /// Bytes buffered and not yet returned as records.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Call once the peer's Finished has been received: from now on any change_cipher_spec
    /// record is `unexpected_message` (RFC 8446 §5).
    pub fn end_middlebox_ccs(&mut self) {
        self.middlebox_ccs_allowed = false;
    }

    /// Copies of the whole protected (application_data) records buffered now, in order, each
    /// with its header, change_cipher_spec records skipped; stops at the first record that is
    /// incomplete or of another type. Nothing is consumed: [`Self::next_record`] still returns
    /// them (and checks them).
    pub fn peek_protected_records(&self) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        let mut rest = self.buf.as_slice();
        while rest.len() >= HEADER_LEN {
            let len = usize::from(u16::from_be_bytes([rest[3], rest[4]]));
            if rest.len() < HEADER_LEN + len || len > MAX_CIPHERTEXT_LEN {
                break;
            }
            match ContentType::from(rest[0]) {
                ContentType::ChangeCipherSpec => {}
                ContentType::ApplicationData => out.push(rest[..HEADER_LEN + len].to_vec()),
                _ => break,
            }
            rest = &rest[HEADER_LEN + len..];
        }
        out
    }

    /// The next complete record: `Ok(None)` if more bytes are needed. Middlebox CCS records are
    /// consumed and skipped. After an error, returns the same error forever.
    pub fn next_record(&mut self) -> Result<Option<OpaqueRecord>, Error> {
        if let Some(e) = &self.failed {
            return Err(e.clone());
        }
        let res = self.next_record_inner();
        if let Err(e) = &res {
            self.failed = Some(e.clone());
        }
        res
    }

    fn next_record_inner(&mut self) -> Result<Option<OpaqueRecord>, Error> {
        loop {
            let Some(header) = self.buf.get(..HEADER_LEN) else {
                return Ok(None);
            };
            let typ = ContentType::from(header[0]);
            let version = u16::from_be_bytes([header[1], header[2]]);
            let len = usize::from(u16::from_be_bytes([header[3], header[4]]));

            let max_len = match typ {
                ContentType::ApplicationData => MAX_CIPHERTEXT_LEN,
                ContentType::Handshake | ContentType::Alert | ContentType::ChangeCipherSpec => {
                    MAX_FRAGMENT_LEN
                }
                other => return Err(InvalidMessage::InvalidContentType(other.get()).into()),
            };
            // Any 0x03XX, as rustls: the first ServerHello record may carry 0x0301.
            if version >> 8 != 0x03 {
                return Err(InvalidMessage::UnknownProtocolVersion(version).into());
            }
            if len > max_len {
                return Err(Error::RecordOverflow);
            }
            if len == 0 && matches!(typ, ContentType::Handshake | ContentType::Alert) {
                // RFC 8446 §5.1: no zero-length Handshake or Alert fragments. (An empty CCS is
                // refused below as a bad CCS; an empty protected record fails to decrypt.)
                return Err(InvalidMessage::InvalidEmptyPayload(typ).into());
            }
            if self.buf.len() < HEADER_LEN + len {
                return Ok(None);
            }

            let payload = self.buf[HEADER_LEN..HEADER_LEN + len].to_vec();
            self.buf.drain(..HEADER_LEN + len);

            if typ == ContentType::ChangeCipherSpec {
                if payload != [0x01] {
                    return Err(InvalidMessage::InvalidCcs.into());
                }
                if !self.middlebox_ccs_allowed || self.middlebox_ccs_seen >= MAX_MIDDLEBOX_CCS {
                    return Err(PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into());
                }
                self.middlebox_ccs_seen += 1;
                continue;
            }
            return Ok(Some(OpaqueRecord {
                typ,
                version,
                payload,
            }));
        }
    }
}

#[cfg(test)]
mod tests {
    use lurk_proto::wire::enums::AlertDescription;

    use super::*;
    use crate::record::vectors;

    fn server_stream(trace: &vectors::Trace) -> (Vec<u8>, Vec<Vec<u8>>) {
        let mut stream = Vec::new();
        let mut expected = Vec::new();
        for r in trace.records.iter().filter(|r| r.sender == "server") {
            stream.extend_from_slice(&r.record);
            if r.record[0] != 20 {
                expected.push(r.record.clone());
            }
        }
        (stream, expected)
    }

    fn drain(d: &mut Deframer) -> Vec<Vec<u8>> {
        let mut out = Vec::new();
        while let Some(r) = d.next_record().unwrap() {
            out.push(r.encode());
        }
        out
    }

    #[test]
    fn records_fed_one_byte_at_a_time() {
        for trace in vectors::all() {
            let (stream, expected) = server_stream(&trace);
            let mut d = Deframer::new();
            let mut got = Vec::new();
            for b in &stream {
                d.push(&[*b]);
                got.extend(drain(&mut d));
            }
            assert_eq!(got, expected, "{}", trace.name);
            assert_eq!(d.buffered(), 0);
        }
    }

    #[test]
    fn several_records_in_one_push_and_random_splits() {
        for trace in vectors::all() {
            let (stream, expected) = server_stream(&trace);
            let mut d = Deframer::new();
            d.push(&stream);
            assert_eq!(drain(&mut d), expected, "{}", trace.name);

            for step in [2, 3, 5, 7, 64, 1000] {
                let mut d = Deframer::new();
                let mut got = Vec::new();
                for chunk in stream.chunks(step) {
                    d.push(chunk);
                    got.extend(drain(&mut d));
                }
                assert_eq!(got, expected, "{} step {step}", trace.name);
            }
        }
    }

    #[test]
    fn middlebox_ccs_dropped_during_handshake_only() {
        let compat = vectors::rfc8448()
            .into_iter()
            .find(|t| t.name.ends_with("compatibility_mode"))
            .unwrap();
        let (stream, expected) = server_stream(&compat);
        assert!(stream.windows(6).any(|w| w == [20, 3, 3, 0, 1, 1]));
        let mut d = Deframer::new();
        d.push(&stream);
        assert_eq!(drain(&mut d), expected);

        let mut d = Deframer::new();
        d.end_middlebox_ccs();
        d.push(&[20, 3, 3, 0, 1, 1]);
        assert_eq!(
            d.next_record().unwrap_err(),
            PeerMisbehaved::IllegalMiddleboxChangeCipherSpec.into()
        );

        let mut d = Deframer::new();
        d.push(&[20, 3, 3, 0, 1, 1].repeat(3));
        assert!(d.next_record().is_err(), "third CCS refused");
    }

    #[test]
    fn bad_ccs_refused() {
        for bad in [
            &[20, 3, 3, 0, 1, 2][..],
            &[20, 3, 3, 0, 2, 1, 1],
            &[20, 3, 3, 0, 0],
        ] {
            let mut d = Deframer::new();
            d.push(bad);
            let e = d.next_record().unwrap_err();
            assert_eq!(e, InvalidMessage::InvalidCcs.into(), "{bad:?}");
            assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
        }
    }

    #[test]
    fn bad_content_type_refused_at_header() {
        for typ in [0u8, 19, 24, 0x48 /* 'H' of "HTTP/1.1" */] {
            let mut d = Deframer::new();
            d.push(&[typ, 3, 3, 0]);
            assert_eq!(d.next_record(), Ok(None), "4 bytes: not a header yet");
            d.push(&[1]);
            let e = d.next_record().unwrap_err();
            assert_eq!(e, InvalidMessage::InvalidContentType(typ).into());
            assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
        }
    }

    #[test]
    fn bad_version_refused() {
        for v in [[2u8, 0], [0x16, 3], [0xfe, 0xfd], [4, 4]] {
            let mut d = Deframer::new();
            d.push(&[22, v[0], v[1], 0, 1]);
            assert_eq!(
                d.next_record().unwrap_err(),
                InvalidMessage::UnknownProtocolVersion(u16::from_be_bytes(v)).into()
            );
        }
        // 0x0301 is fine (first ServerHello of some servers).
        let mut d = Deframer::new();
        d.push(&[22, 3, 1, 0, 1, 2]);
        assert_eq!(d.next_record().unwrap().unwrap().version, 0x0301);
    }

    #[test]
    fn oversize_length_refused_at_header() {
        // Protected: 2^14 + 256 is the max; one more is refused with only the header present.
        let mut d = Deframer::new();
        d.push(&[23, 3, 3, 0x41, 0x01]);
        assert_eq!(d.next_record().unwrap_err(), Error::RecordOverflow);
        assert_eq!(
            Error::RecordOverflow.alert(),
            Some(AlertDescription::RecordOverflow)
        );
        let mut d = Deframer::new();
        d.push(&[23, 3, 3, 0x41, 0x00]);
        assert_eq!(d.next_record(), Ok(None));
        // Plaintext: 2^14 max.
        let mut d = Deframer::new();
        d.push(&[22, 3, 3, 0x40, 0x01]);
        assert_eq!(d.next_record().unwrap_err(), Error::RecordOverflow);
        let mut d = Deframer::new();
        d.push(&[21, 3, 3, 0x40, 0x00]);
        assert_eq!(d.next_record(), Ok(None));
    }

    #[test]
    fn empty_plaintext_records_refused() {
        for typ in [22u8, 21] {
            let mut d = Deframer::new();
            d.push(&[typ, 3, 3, 0, 0]);
            assert!(matches!(
                d.next_record(),
                Err(Error::InvalidMessage(InvalidMessage::InvalidEmptyPayload(
                    _
                )))
            ));
        }
        let mut d = Deframer::new();
        d.push(&[23, 3, 3, 0, 0]);
        assert_eq!(d.next_record().unwrap().unwrap().payload, b"");
    }

    #[test]
    fn errors_are_sticky() {
        let mut d = Deframer::new();
        d.push(&[99, 3, 3, 0, 1, 0]);
        let e = d.next_record().unwrap_err();
        d.push(&[22, 3, 3, 0, 1, 1]);
        assert_eq!(d.next_record().unwrap_err(), e);
    }

    #[test]
    fn read_from_a_reader() {
        let trace = vectors::rfc8448().remove(0);
        let (stream, expected) = server_stream(&trace);
        let mut rd = &stream[..];
        let mut d = Deframer::new();
        let mut got = Vec::new();
        while d.read_from(&mut rd).unwrap() > 0 {
            got.extend(drain(&mut d));
        }
        assert_eq!(got, expected);

        // An undrained deframer refuses to grow without bound.
        let junk = vec![23u8; 3 * MAX_BUFFERED];
        let mut rd = &junk[..];
        let mut d = Deframer::new();
        let err = loop {
            match d.read_from(&mut rd) {
                Ok(_) => {}
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::Other);
    }

    #[test]
    fn header_round_trip() {
        let r = OpaqueRecord {
            typ: ContentType::ApplicationData,
            version: 0x0303,
            payload: vec![1; 300],
        };
        assert_eq!(r.header(), [23, 3, 3, 1, 44]);
        let mut d = Deframer::new();
        d.push(&r.encode());
        assert_eq!(d.next_record().unwrap(), Some(r));
    }
}
