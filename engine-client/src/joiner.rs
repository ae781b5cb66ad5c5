//! Handshake message reassembly (RFC 8446 §5.1): handshake record payloads in, whole
//! handshake messages (4-byte header included, the exact bytes the transcript hashes) out.
//!
//! This is rustls' `HandshakeDeframer` checks on a copying `Vec<u8>` (docs/design.md §8: the in-place
//! coalescer is not worth it here). It fixes the reference engine's `fragment_reassembly`,
//! which could not find a message whose header was split across records and let the rest of
//! a record be lost when several messages shared it:
//!
//! - any split: a message over many records, several messages in one record, the 4-byte header
//!   itself split across records;
//! - the size cap is checked as soon as the 4-byte header is complete, before any of the body
//!   is buffered (rustls PR #3204);
//! - zero-length handshake records are refused (§5.1);
//! - [`HandshakeJoiner::check_key_change`]: handshake messages must not span a key change, so
//!   nothing may be buffered when keys change (`KeyEpochWithPendingFragment`);
//! - [`HandshakeJoiner::check_non_handshake`]: no alert or application data record in the
//!   middle of a fragmented message (`MessageInterleavedWithHandshakeMessage`); it also counts
//!   consecutive empty application data records (legal, but a cheap way to keep us busy).

use std::fmt;

use lurk_proto::wire::enums::{ContentType, HandshakeType};

use crate::error::{Error, InvalidMessage, PeerMisbehaved};

/// Default cap on a handshake message body: 0xffff bytes, as rustls `MAX_HANDSHAKE_SIZE`.
/// Raise it with [`HandshakeJoiner::with_max_message_size`] for very large certificate chains.
pub const DEFAULT_MAX_HANDSHAKE_SIZE: usize = 0xffff;

/// Consecutive empty application data records tolerated.
pub const MAX_CONSECUTIVE_EMPTY_FRAGMENTS: u16 = 32;

const HS_HEADER_LEN: usize = 4;

/// A complete handshake message.
#[derive(Clone, PartialEq, Eq)]
pub struct HandshakeMessage {
    /// msg_type.
    pub typ: HandshakeType,
    /// The whole message as received: msg_type ‖ uint24 length ‖ body.
    pub encoded: Vec<u8>,
}

impl HandshakeMessage {
    /// The body (after the 4-byte header).
    pub fn body(&self) -> &[u8] {
        &self.encoded[HS_HEADER_LEN..]
    }
}

impl fmt::Debug for HandshakeMessage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandshakeMessage")
            .field("typ", &self.typ)
            .field("len", &self.encoded.len())
            .finish()
    }
}

/// Joins handshake fragments into messages. See the module documentation.
#[derive(Debug)]
pub struct HandshakeJoiner {
    /// Handshake bytes received; `buf[start..]` not yet returned.
    buf: Vec<u8>,
    /// First byte not yet returned by [`Self::next_message`].
    start: usize,
    /// End of the last complete message found (`start <= complete <= buf.len()`); from here on
    /// lies at most one incomplete message whose header, if complete, has passed the cap.
    complete: usize,
    max_size: usize,
    empty_fragments: u16,
}

impl Default for HandshakeJoiner {
    fn default() -> Self {
        Self::new()
    }
}

impl HandshakeJoiner {
    /// A joiner capping message bodies at [`DEFAULT_MAX_HANDSHAKE_SIZE`].
    pub fn new() -> Self {
        Self::with_max_message_size(DEFAULT_MAX_HANDSHAKE_SIZE)
    }

    /// A joiner capping message bodies at `max` bytes (at most 2^24 - 1 can be expressed).
    pub fn with_max_message_size(max: usize) -> Self {
        Self {
            buf: Vec::new(),
            start: 0,
            complete: 0,
            max_size: max,
            empty_fragments: 0,
        }
    }

    /// Adds the payload of one handshake record (plaintext, or decrypted with its padding and
    /// type removed). Fails on an empty payload or as soon as a message header announces a body
    /// over the cap.
    pub fn push(&mut self, fragment: &[u8]) -> Result<(), Error> {
        if fragment.is_empty() {
            return Err(PeerMisbehaved::EmptyHandshakeFragment.into());
        }
        self.empty_fragments = 0;
        self.compact();
        self.buf.extend_from_slice(fragment);
        self.scan()
    }

    /// The type of the next complete message, without taking it.
    pub fn peek_type(&self) -> Option<HandshakeType> {
        (self.start < self.complete).then(|| HandshakeType::from(self.buf[self.start]))
    }

    /// The next complete message, in order; `None` if none is complete yet.
    pub fn next_message(&mut self) -> Option<HandshakeMessage> {
        if self.start == self.complete {
            return None;
        }
        let len = body_len(&self.buf[self.start..]);
        let end = self.start + HS_HEADER_LEN + len;
        let encoded = self.buf[self.start..end].to_vec();
        self.start = end;
        if self.start == self.buf.len() {
            self.buf.clear();
            self.start = 0;
            self.complete = 0;
        }
        Some(HandshakeMessage {
            typ: HandshakeType::from(encoded[0]),
            encoded,
        })
    }

    /// True when nothing is buffered: no unreturned message, no partial one.
    pub fn is_empty(&self) -> bool {
        self.start == self.buf.len()
    }

    /// True when part of a message (possibly only part of its header) is buffered.
    pub fn has_pending_fragment(&self) -> bool {
        self.complete < self.buf.len()
    }

    /// Call before installing new read keys: handshake messages must not span key changes
    /// (RFC 8446 §5.1), so the record that ended with the message causing the change must have
    /// ended there too.
    pub fn check_key_change(&self) -> Result<(), Error> {
        if self.is_empty() {
            Ok(())
        } else {
            Err(PeerMisbehaved::KeyEpochWithPendingFragment.into())
        }
    }

    /// Call for every record that is not a handshake record (alert, application data), with
    /// its content type and content length, before acting on it.
    pub fn check_non_handshake(&mut self, typ: ContentType, len: usize) -> Result<(), Error> {
        if self.has_pending_fragment() {
            return Err(PeerMisbehaved::MessageInterleavedWithHandshakeMessage.into());
        }
        if typ == ContentType::ApplicationData && len == 0 {
            self.empty_fragments += 1;
            if self.empty_fragments > MAX_CONSECUTIVE_EMPTY_FRAGMENTS {
                return Err(PeerMisbehaved::TooManyEmptyFragments.into());
            }
        } else {
            self.empty_fragments = 0;
        }
        Ok(())
    }

    /// Moves `complete` over every complete message; checks the cap of the next header.
    fn scan(&mut self) -> Result<(), Error> {
        loop {
            let rest = &self.buf[self.complete..];
            if rest.len() < HS_HEADER_LEN {
                return Ok(());
            }
            let len = body_len(rest);
            if len > self.max_size {
                return Err(InvalidMessage::HandshakePayloadTooLarge {
                    len,
                    max: self.max_size,
                }
                .into());
            }
            if rest.len() < HS_HEADER_LEN + len {
                return Ok(());
            }
            self.complete += HS_HEADER_LEN + len;
        }
    }

    /// Drops returned bytes once they are the larger part of the buffer.
    fn compact(&mut self) {
        if self.start > 0 && self.start >= self.buf.len() / 2 {
            self.buf.drain(..self.start);
            self.complete -= self.start;
            self.start = 0;
        }
    }
}

/// The uint24 length of the message starting `bytes` (at least 4 bytes).
fn body_len(bytes: &[u8]) -> usize {
    usize::from(bytes[1]) << 16 | usize::from(bytes[2]) << 8 | usize::from(bytes[3])
}

#[cfg(test)]
mod tests {
    use lurk_proto::wire::enums::AlertDescription;

    use super::*;

    fn msg(typ: u8, body_len: usize) -> Vec<u8> {
        let mut m = vec![typ];
        m.extend_from_slice(&(body_len as u32).to_be_bytes()[1..]);
        m.extend((0..body_len).map(|i| (i * 7 + usize::from(typ)) as u8));
        m
    }

    fn drain(j: &mut HandshakeJoiner) -> Vec<Vec<u8>> {
        std::iter::from_fn(|| j.next_message().map(|m| m.encoded)).collect()
    }

    #[test]
    fn message_of_5000_bytes_over_10_records() {
        let m = msg(11, 4996);
        assert_eq!(m.len(), 5000);
        let mut j = HandshakeJoiner::new();
        for (i, chunk) in m.chunks(500).enumerate() {
            assert!(j.next_message().is_none());
            j.push(chunk).unwrap();
            if i < 9 {
                assert!(j.has_pending_fragment());
            }
        }
        let got = j.next_message().unwrap();
        assert_eq!(got.typ, HandshakeType::Certificate);
        assert_eq!(got.encoded, m);
        assert_eq!(got.body().len(), 4996);
        assert!(j.is_empty() && !j.has_pending_fragment());
        assert!(j.next_message().is_none());
    }

    #[test]
    fn three_messages_in_one_record() {
        let msgs = [msg(8, 2), msg(11, 300), msg(20, 32)];
        let mut j = HandshakeJoiner::new();
        j.push(&msgs.concat()).unwrap();
        assert!(!j.has_pending_fragment());
        assert!(!j.is_empty());
        assert_eq!(drain(&mut j), msgs);
        assert!(j.is_empty());
    }

    #[test]
    fn header_split_across_records() {
        let a = msg(8, 6);
        let b = msg(15, 70);
        let mut j = HandshakeJoiner::new();
        // Record 1: all of a and 2 bytes of b's header; record 2: the other 2 header bytes;
        // record 3: the body.
        j.push(&[&a[..], &b[..2]].concat()).unwrap();
        assert_eq!(j.next_message().unwrap().encoded, a);
        assert!(j.next_message().is_none());
        assert!(j.has_pending_fragment());
        j.push(&b[2..4]).unwrap();
        assert!(j.next_message().is_none());
        j.push(&b[4..]).unwrap();
        assert_eq!(j.next_message().unwrap().encoded, b);
        assert!(j.is_empty());
    }

    #[test]
    fn every_split_point_of_a_flight() {
        let msgs = [
            msg(8, 10),
            msg(11, 1000),
            msg(15, 260),
            msg(20, 48),
            msg(4, 0),
        ];
        let flight = msgs.concat();
        for a in (0..flight.len()).step_by(13) {
            for b in [a + 1, a + 4, a + 500, flight.len()] {
                let b = b.min(flight.len());
                let mut j = HandshakeJoiner::new();
                let mut got = Vec::new();
                for part in [&flight[..a], &flight[a..b], &flight[b..]] {
                    if !part.is_empty() {
                        j.push(part).unwrap();
                        got.extend(drain(&mut j));
                    }
                }
                assert_eq!(got, msgs, "split at {a}, {b}");
            }
        }
    }

    #[test]
    fn cap_checked_as_soon_as_the_header_arrives() {
        let mut j = HandshakeJoiner::with_max_message_size(1000);
        // Header announcing 1001 bytes, split 2 + 2: refused at the 4th byte, no body needed.
        j.push(&[11, 0]).unwrap();
        let e = j.push(&[0x03, 0xe9]).unwrap_err();
        assert_eq!(
            e,
            InvalidMessage::HandshakePayloadTooLarge {
                len: 1001,
                max: 1000
            }
            .into()
        );
        assert_eq!(e.alert(), Some(AlertDescription::DecodeError));

        // Default cap: 0xffff; a 16 MB announcement is refused with 4 bytes in.
        let mut j = HandshakeJoiner::new();
        assert!(j.push(&[11, 0xff, 0xff, 0xff]).is_err());
        // The cap applies to a later message of the same record too.
        let mut j = HandshakeJoiner::new();
        assert!(j.push(&[&msg(8, 2)[..], &[11, 1, 0, 0]].concat()).is_err());
        // Exactly the cap is fine.
        let mut j = HandshakeJoiner::with_max_message_size(10);
        j.push(&msg(11, 10)).unwrap();
        assert!(j.next_message().is_some());
    }

    #[test]
    fn pending_fragment_blocks_key_change() {
        let sh = msg(2, 86);
        let mut j = HandshakeJoiner::new();
        j.push(&sh[..50]).unwrap();
        let e = j.check_key_change().unwrap_err();
        assert_eq!(e, PeerMisbehaved::KeyEpochWithPendingFragment.into());
        assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));
        j.push(&sh[50..]).unwrap();
        // Complete but not yet taken: still not aligned.
        assert!(j.check_key_change().is_err());
        j.next_message().unwrap();
        j.check_key_change().unwrap();

        // ServerHello followed in the same record by the start of another message.
        let mut j = HandshakeJoiner::new();
        j.push(&[&sh[..], &[8, 0]].concat()).unwrap();
        j.next_message().unwrap();
        assert!(j.check_key_change().is_err());
        // ... or by a whole one.
        let mut j = HandshakeJoiner::new();
        j.push(&[sh.clone(), msg(8, 2)].concat()).unwrap();
        j.next_message().unwrap();
        assert!(j.check_key_change().is_err());
    }

    #[test]
    fn interleaving_refused() {
        let cert = msg(11, 3000);
        let mut j = HandshakeJoiner::new();
        j.check_non_handshake(ContentType::Alert, 2).unwrap();
        j.push(&cert[..1000]).unwrap();
        for typ in [ContentType::Alert, ContentType::ApplicationData] {
            let e = j.check_non_handshake(typ, 2).unwrap_err();
            assert_eq!(
                e,
                PeerMisbehaved::MessageInterleavedWithHandshakeMessage.into()
            );
        }
        // A partial header counts as a pending fragment too.
        let mut j = HandshakeJoiner::new();
        j.push(&[4]).unwrap();
        assert!(j
            .check_non_handshake(ContentType::ApplicationData, 5)
            .is_err());
    }

    #[test]
    fn empty_records() {
        let mut j = HandshakeJoiner::new();
        let e = j.push(&[]).unwrap_err();
        assert_eq!(e, PeerMisbehaved::EmptyHandshakeFragment.into());
        assert_eq!(e.alert(), Some(AlertDescription::UnexpectedMessage));

        let mut j = HandshakeJoiner::new();
        for _ in 0..MAX_CONSECUTIVE_EMPTY_FRAGMENTS {
            j.check_non_handshake(ContentType::ApplicationData, 0)
                .unwrap();
        }
        // A non-empty record resets the count.
        j.check_non_handshake(ContentType::ApplicationData, 1)
            .unwrap();
        for _ in 0..MAX_CONSECUTIVE_EMPTY_FRAGMENTS {
            j.check_non_handshake(ContentType::ApplicationData, 0)
                .unwrap();
        }
        assert_eq!(
            j.check_non_handshake(ContentType::ApplicationData, 0)
                .unwrap_err(),
            PeerMisbehaved::TooManyEmptyFragments.into()
        );
    }

    #[test]
    fn long_stream_stays_compact() {
        let m = msg(4, 200);
        let mut j = HandshakeJoiner::new();
        for _ in 0..1000 {
            j.push(&m[..100]).unwrap();
            j.push(&m[100..]).unwrap();
            assert_eq!(j.next_message().unwrap().encoded, m);
        }
        assert!(j.buf.capacity() < 10 * m.len());
    }
}
