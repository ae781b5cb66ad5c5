//! The handshake message header (RFC 8446 §4): `HandshakeType msg_type; uint24 length;`.

use super::codec::{put_bytes_u24, put_u8, Reader};
use super::limits::{max_body_len, MAX_FLIGHT_LEN, MAX_FLIGHT_MESSAGES};
use super::{HandshakeType, WireError};

/// Size of the handshake header (type + uint24 length).
pub const HEADER_LEN: usize = 4;

/// One complete handshake message, borrowed from its input.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct HandshakeMessage<'a> {
    /// msg_type; unknown types are kept as `Unknown(n)`.
    pub typ: HandshakeType,
    /// The body, without the header.
    pub body: &'a [u8],
    /// The exact wire bytes, 4-byte header included (what the transcript hashes).
    pub raw: &'a [u8],
}

impl<'a> HandshakeMessage<'a> {
    /// Reads one complete message at the reader's position; refuses a body over the cap of
    /// its type ([`max_body_len`]).
    pub fn read(r: &mut Reader<'a>) -> Result<Self, WireError> {
        let mut peek = r.clone();
        let typ = HandshakeType::from(peek.u8().map_err(|_| trunc())?);
        let len = peek.u24().map_err(|_| trunc())? as usize;
        let (max, what) = max_body_len(typ);
        if len > max {
            return Err(WireError::TooLarge { what, len, max });
        }
        if peek.remaining() < len {
            return Err(trunc());
        }
        let raw = r.take(HEADER_LEN + len)?;
        Ok(Self {
            typ,
            body: &raw[HEADER_LEN..],
            raw,
        })
    }

    /// Parses `raw` as exactly one handshake message.
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let mut r = Reader::new(raw, "handshake message");
        let m = Self::read(&mut r)?;
        r.expect_empty("handshake message")?;
        Ok(m)
    }

    /// Parses `raw` as exactly one handshake message of type `expected`.
    pub(crate) fn parse_typed(
        raw: &'a [u8],
        expected: HandshakeType,
        name: &'static str,
    ) -> Result<Self, WireError> {
        let m = Self::parse(raw)?;
        m.expect(expected, name)?;
        Ok(m)
    }

    /// Fails with [`WireError::UnexpectedMessage`] unless this message is of type `expected`.
    pub fn expect(&self, expected: HandshakeType, name: &'static str) -> Result<(), WireError> {
        if self.typ == expected {
            Ok(())
        } else {
            Err(WireError::UnexpectedMessage {
                expected: name,
                got: self.typ.get(),
            })
        }
    }

    /// A reader over the body whose offsets are relative to `raw[0]` (header included).
    pub(crate) fn body_reader(&self, name: &'static str) -> Reader<'a> {
        let mut r = Reader::new(self.raw, name);
        // Invariant: `raw` holds at least the header (checked when the message was read).
        let _header = r.take(HEADER_LEN);
        r
    }
}

fn trunc() -> WireError {
    WireError::Truncated("handshake message")
}

/// Splits a concatenation of complete handshake messages; a partial message at the end is
/// an error (the caller reassembles records first). A flight holds at most
/// [`MAX_FLIGHT_MESSAGES`] messages and [`MAX_FLIGHT_LEN`] bytes.
pub fn split_handshake_messages(data: &[u8]) -> Result<Vec<HandshakeMessage<'_>>, WireError> {
    if data.len() > MAX_FLIGHT_LEN {
        return Err(WireError::TooLarge {
            what: "flight",
            len: data.len(),
            max: MAX_FLIGHT_LEN,
        });
    }
    let mut r = Reader::new(data, "handshake message");
    let mut out = Vec::new();
    while !r.is_empty() {
        if out.len() == MAX_FLIGHT_MESSAGES {
            return Err(WireError::TooMany {
                what: "handshake messages in a flight",
                max: MAX_FLIGHT_MESSAGES,
            });
        }
        out.push(HandshakeMessage::read(&mut r)?);
    }
    Ok(out)
}

/// Encodes a handshake message: header + body. Fails if the body reaches 2^24 bytes.
pub fn encode_handshake(typ: HandshakeType, body: &[u8]) -> Result<Vec<u8>, WireError> {
    let mut buf = Vec::with_capacity(HEADER_LEN + body.len());
    put_u8(&mut buf, typ.get());
    put_bytes_u24(&mut buf, "handshake message", body)?;
    Ok(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_vectors;

    #[test]
    fn every_vector_message_is_one_complete_handshake_message() {
        for (name, raw) in test_vectors::all_messages() {
            let m = HandshakeMessage::parse(&raw).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(m.raw, &raw[..], "{name}");
            assert_eq!(m.body.len() + 4, raw.len(), "{name}");
        }
    }

    #[test]
    fn split_finds_each_message_of_a_concatenated_flight() {
        // The 2018 Illustrated server sends EE, Certificate, CertificateVerify and Finished
        // in one record.
        let conn = &test_vectors::illustrated().archive_2018;
        let flight = &conn.record("serverenchandshake").payload;
        let msgs = split_handshake_messages(flight).unwrap();
        let types: Vec<_> = msgs.iter().map(|m| m.typ).collect();
        assert_eq!(
            types,
            [
                HandshakeType::EncryptedExtensions,
                HandshakeType::Certificate,
                HandshakeType::CertificateVerify,
                HandshakeType::Finished
            ]
        );
        let m = &conn.messages;
        assert_eq!(msgs[1].raw, m.server_certificate);
        assert_eq!(msgs[3].raw, m.server_finished);
    }

    #[test]
    fn split_refuses_a_partial_message_at_the_end() {
        let mut data = encode_handshake(HandshakeType::Finished, &[7; 32]).unwrap();
        data.extend_from_slice(&[20, 0, 0, 32, 1, 2]);
        assert_eq!(
            split_handshake_messages(&data).unwrap_err(),
            WireError::Truncated("handshake message")
        );
        assert_eq!(
            split_handshake_messages(&[20, 0]).unwrap_err(),
            WireError::Truncated("handshake message")
        );
    }

    #[test]
    fn parse_refuses_trailing_bytes_after_one_message() {
        let mut data = encode_handshake(HandshakeType::EndOfEarlyData, &[]).unwrap();
        data.push(0);
        assert_eq!(
            HandshakeMessage::parse(&data).unwrap_err(),
            WireError::TrailingBytes("handshake message")
        );
    }

    #[test]
    fn encode_handshake_writes_type_and_u24_length() {
        assert_eq!(
            encode_handshake(HandshakeType::KeyUpdate, &[1]).unwrap(),
            [24, 0, 0, 1, 1]
        );
    }

    #[test]
    fn expect_names_the_wanted_and_received_types() {
        let raw = encode_handshake(HandshakeType::Finished, &[0; 32]).unwrap();
        let m = HandshakeMessage::parse(&raw).unwrap();
        assert_eq!(
            m.expect(HandshakeType::ServerHello, "ServerHello")
                .unwrap_err(),
            WireError::UnexpectedMessage {
                expected: "ServerHello",
                got: 20
            }
        );
    }
}
