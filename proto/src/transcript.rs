//! The handshake transcript (RFC 8446 §4.4.1).
//!
//! The Crypto Service must hash before it knows the hash: it computes binders with each PSK's
//! own hash at ClientHello time and learns the cipher suite only from the ServerHello (or the
//! HelloRetryRequest). A [`Transcript`] therefore keeps a running SHA-256 and SHA-384 context
//! over the exact bytes it was given (docs/design.md §4.2: never re-encode), so that the hash of
//! everything so far, with either function, costs one clone of a digest context. It keeps no
//! bytes: its size does not depend on the messages (a server Certificate of megabytes costs
//! nothing to hold). The HelloRetryRequest rule (RFC 8446 §4.4.1) needs only the hash of
//! ClientHello1, so the transcript is restarted right after ClientHello1, before the HRR is
//! added.

use std::fmt;

use ring::digest;

use crate::wire::enums::{HandshakeType, HashAlg};

/// Length of a handshake message header: msg_type (1) + uint24 length (RFC 8446 §4).
const HANDSHAKE_HEADER_LEN: usize = 4;

/// Why the transcript could not be restarted for a HelloRetryRequest.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TranscriptError {
    /// The transcript does not start with a whole handshake message.
    TruncatedFirstMessage,
    /// The first message is not a ClientHello.
    FirstMessageNotClientHello {
        /// The HandshakeType byte of the first message.
        got: u8,
    },
    /// The transcript was already restarted: a second HelloRetryRequest in one connection is
    /// illegal (RFC 8446 §4.1.4).
    AlreadyRestarted,
    /// Messages follow the first one: restart before adding the HelloRetryRequest.
    NotOnlyTheFirstMessage,
}

impl fmt::Display for TranscriptError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TruncatedFirstMessage => {
                write!(
                    f,
                    "the transcript does not start with a whole handshake message"
                )
            }
            Self::FirstMessageNotClientHello { got } => {
                write!(
                    f,
                    "the transcript starts with handshake type {got}, not a ClientHello"
                )
            }
            Self::AlreadyRestarted => write!(
                f,
                "the transcript was already restarted for a HelloRetryRequest (RFC 8446 §4.1.4)"
            ),
            Self::NotOnlyTheFirstMessage => write!(
                f,
                "the transcript holds more than ClientHello1: restart before adding the HelloRetryRequest"
            ),
        }
    }
}

impl std::error::Error for TranscriptError {}

/// The concatenation of the handshake messages so far (with their 4-byte headers), as
/// running hashes: hashable with any TLS 1.3 hash at any time. `Clone` forks it (e.g. one
/// branch per PSK candidate).
#[derive(Clone)]
pub struct Transcript {
    sha256: digest::Context,
    sha384: digest::Context,
    /// Bytes added so far.
    len: u64,
    /// The first message's header (its first `header_len` bytes so far): its type and length
    /// tell whether the transcript holds exactly ClientHello1.
    header: [u8; HANDSHAKE_HEADER_LEN],
    header_len: usize,
    hello_retry_hash: Option<HashAlg>,
}

impl Default for Transcript {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Transcript {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Transcript")
            .field("len", &self.len)
            .field("hello_retry_hash", &self.hello_retry_hash)
            .finish()
    }
}

impl Transcript {
    /// An empty transcript, hashing with SHA-256 and SHA-384 at once until the cipher suite
    /// is known.
    pub fn new() -> Self {
        Self {
            sha256: digest::Context::new(HashAlg::Sha256.digest_algorithm()),
            sha384: digest::Context::new(HashAlg::Sha384.digest_algorithm()),
            len: 0,
            header: [0; HANDSHAKE_HEADER_LEN],
            header_len: 0,
            hello_retry_hash: None,
        }
    }

    /// Appends handshake messages exactly as they were (or will be) sent, headers included.
    pub fn add(&mut self, raw_messages: &[u8]) {
        let take = (HANDSHAKE_HEADER_LEN - self.header_len).min(raw_messages.len());
        self.header[self.header_len..self.header_len + take].copy_from_slice(&raw_messages[..take]);
        self.header_len += take;
        self.len += raw_messages.len() as u64;
        self.sha256.update(raw_messages);
        self.sha384.update(raw_messages);
    }

    /// Transcript-Hash of everything added so far.
    pub fn hash(&self, alg: HashAlg) -> Vec<u8> {
        self.context(alg).clone().finish().as_ref().to_vec()
    }

    /// Transcript-Hash of everything added so far followed by `extra`, which is not added: e.g.
    /// a ClientHello truncated before its binders (RFC 8446 §4.2.11.2).
    pub fn hash_with(&self, alg: HashAlg, extra: &[u8]) -> Vec<u8> {
        let mut context = self.context(alg).clone();
        context.update(extra);
        context.finish().as_ref().to_vec()
    }

    /// Number of bytes added so far (after a restart, counting from the message_hash message).
    pub fn len(&self) -> u64 {
        self.len
    }

    /// True before any message was added.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The hash the transcript was restarted with, if a HelloRetryRequest happened. From then
    /// on only that hash is meaningful, and the ServerHello must select a suite with it
    /// (RFC 8446 §4.1.4: same cipher suite as the HelloRetryRequest): callers check that.
    pub fn hello_retry_hash(&self) -> Option<HashAlg> {
        self.hello_retry_hash
    }

    /// Replaces ClientHello1, which must be all the transcript holds, by the synthetic message
    /// `message_hash(254) || 00 00 Hash.length || Hash(ClientHello1)` (RFC 8446 §4.4.1). The
    /// HelloRetryRequest is added after.
    pub fn restart_for_hello_retry(&mut self, alg: HashAlg) -> Result<(), TranscriptError> {
        if self.hello_retry_hash.is_some() {
            return Err(TranscriptError::AlreadyRestarted);
        }
        if self.header_len < HANDSHAKE_HEADER_LEN {
            return Err(TranscriptError::TruncatedFirstMessage);
        }
        let header = self.header;
        if header[0] != HandshakeType::ClientHello.get() {
            return Err(TranscriptError::FirstMessageNotClientHello { got: header[0] });
        }
        let body_len =
            u64::from(header[1]) << 16 | u64::from(header[2]) << 8 | u64::from(header[3]);
        let total = HANDSHAKE_HEADER_LEN as u64 + body_len;
        if total > self.len {
            return Err(TranscriptError::TruncatedFirstMessage);
        }
        if total < self.len {
            return Err(TranscriptError::NotOnlyTheFirstMessage);
        }
        let client_hello_hash = self.hash(alg);
        let mut restarted = Self::new();
        restarted.add(&message_hash_message(&client_hello_hash));
        restarted.hello_retry_hash = Some(alg);
        *self = restarted;
        Ok(())
    }

    fn context(&self, alg: HashAlg) -> &digest::Context {
        match alg {
            HashAlg::Sha256 => &self.sha256,
            HashAlg::Sha384 => &self.sha384,
        }
    }
}

/// The synthetic handshake message that stands for ClientHello1 after a HelloRetryRequest
/// (RFC 8446 §4.4.1).
pub fn message_hash_message(client_hello_hash: &[u8]) -> Vec<u8> {
    let hash_len =
        u8::try_from(client_hello_hash.len()).expect("a TLS 1.3 hash is at most 64 bytes");
    let mut message = Vec::with_capacity(HANDSHAKE_HEADER_LEN + client_hello_hash.len());
    message.extend_from_slice(&[HandshakeType::MessageHash.get(), 0, 0, hash_len]);
    message.extend_from_slice(client_hello_hash);
    message
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::key_schedule::rfc8448_tests::section;

    #[test]
    fn hashes_with_either_function_after_the_fact() {
        let simple = section("simple_1rtt");
        let client_hello = simple.messages.client_hello.clone();
        let server_hello = simple.messages.server_hello.clone();
        let mut transcript = Transcript::new();
        assert!(transcript.is_empty());
        transcript.add(&client_hello);
        transcript.add(&server_hello);
        assert_eq!(
            transcript.hash(HashAlg::Sha256),
            simple
                .key_schedule
                .transcript_hash_for_handshake_secrets
                .clone()
        );
        let both = [client_hello.as_slice(), server_hello.as_slice()].concat();
        assert_eq!(
            transcript.hash(HashAlg::Sha384),
            HashAlg::Sha384.hash(&both)
        );
        assert_eq!(transcript.len(), both.len() as u64);
        assert_eq!(
            Transcript::new().hash(HashAlg::Sha256),
            HashAlg::Sha256.hash(&[])
        );
    }

    #[test]
    fn hash_with_does_not_add() {
        let simple = section("simple_1rtt");
        let mut transcript = Transcript::new();
        transcript.add(&simple.messages.client_hello.clone());
        let server_hello = simple.messages.server_hello.clone();
        let peeked = transcript.hash_with(HashAlg::Sha256, &server_hello);
        assert_eq!(
            peeked,
            simple
                .key_schedule
                .transcript_hash_for_handshake_secrets
                .clone()
        );
        assert_eq!(
            transcript.hash(HashAlg::Sha256),
            HashAlg::Sha256.hash(&simple.messages.client_hello.clone())
        );
    }

    #[test]
    fn clone_forks_the_transcript() {
        let mut trunk = Transcript::new();
        trunk.add(b"\x01\x00\x00\x00");
        let mut branch = trunk.clone();
        branch.add(b"more");
        assert_ne!(trunk.hash(HashAlg::Sha256), branch.hash(HashAlg::Sha256));
        assert_eq!(
            trunk.hash(HashAlg::Sha256),
            HashAlg::Sha256.hash(b"\x01\x00\x00\x00")
        );
    }

    /// RFC 8448 §5: ClientHello1 becomes message_hash, and the handshake traffic secrets come
    /// out right (checked in full in key_schedule's RFC 8448 tests); the restart comes before
    /// the HelloRetryRequest is added, never after.
    #[test]
    fn hello_retry_restart_before_the_hrr() {
        let hrr = section("hello_retry_request");
        let expected_message_hash = hrr
            .verification_derived
            .message_hash_of_client_hello_1
            .clone()
            .expect("message_hash_of_client_hello_1");
        assert_eq!(
            message_hash_message(&HashAlg::Sha256.hash(&hrr.messages.client_hello.clone())),
            expected_message_hash
        );

        let mut restarted_early = Transcript::new();
        restarted_early.add(&hrr.messages.client_hello.clone());
        restarted_early
            .restart_for_hello_retry(HashAlg::Sha256)
            .expect("ClientHello1");
        assert_eq!(
            restarted_early.hash(HashAlg::Sha256),
            HashAlg::Sha256.hash(&expected_message_hash)
        );
        assert_eq!(restarted_early.len(), expected_message_hash.len() as u64);
        assert_eq!(restarted_early.hello_retry_hash(), Some(HashAlg::Sha256));
        restarted_early.add(
            &hrr.messages
                .hello_retry_request
                .clone()
                .expect("hello_retry_request"),
        );
        restarted_early.add(&hrr.messages.client_hello_2.clone().expect("client_hello_2"));
        restarted_early.add(&hrr.messages.server_hello.clone());
        assert_eq!(
            restarted_early.hash(HashAlg::Sha256),
            hrr.key_schedule
                .transcript_hash_for_handshake_secrets
                .clone()
        );

        let mut late = Transcript::new();
        late.add(&hrr.messages.client_hello.clone());
        late.add(
            &hrr.messages
                .hello_retry_request
                .clone()
                .expect("hello_retry_request"),
        );
        assert_eq!(
            late.restart_for_hello_retry(HashAlg::Sha256),
            Err(TranscriptError::NotOnlyTheFirstMessage)
        );
    }

    /// The first message's header may arrive split across calls; the transcript still knows
    /// where ClientHello1 ends.
    #[test]
    fn a_client_hello_added_in_pieces_restarts_too() {
        let client_hello = section("hello_retry_request").messages.client_hello.clone();
        let mut pieces = Transcript::new();
        for chunk in client_hello.chunks(3) {
            pieces.add(chunk);
        }
        pieces.restart_for_hello_retry(HashAlg::Sha256).unwrap();
        let mut whole = Transcript::new();
        whole.add(&client_hello);
        whole.restart_for_hello_retry(HashAlg::Sha256).unwrap();
        assert_eq!(pieces.hash(HashAlg::Sha256), whole.hash(HashAlg::Sha256));
    }

    #[test]
    fn hello_retry_restart_with_sha384_uses_a_48_byte_hash() {
        let client_hello = section("simple_1rtt").messages.client_hello.clone();
        let mut transcript = Transcript::new();
        transcript.add(&client_hello);
        transcript
            .restart_for_hello_retry(HashAlg::Sha384)
            .expect("ClientHello1");
        let mut expected = vec![0xfe, 0, 0, 48];
        expected.extend_from_slice(&HashAlg::Sha384.hash(&client_hello));
        assert_eq!(
            transcript.hash(HashAlg::Sha384),
            HashAlg::Sha384.hash(&expected)
        );
    }

    #[test]
    fn hello_retry_restart_errors() {
        assert_eq!(
            Transcript::new().restart_for_hello_retry(HashAlg::Sha256),
            Err(TranscriptError::TruncatedFirstMessage)
        );

        let mut not_client_hello = Transcript::new();
        not_client_hello.add(&section("simple_1rtt").messages.server_hello.clone());
        assert_eq!(
            not_client_hello.restart_for_hello_retry(HashAlg::Sha256),
            Err(TranscriptError::FirstMessageNotClientHello { got: 2 })
        );

        let client_hello = section("simple_1rtt").messages.client_hello.clone();
        let mut truncated = Transcript::new();
        truncated.add(&client_hello[..client_hello.len() - 1]);
        assert_eq!(
            truncated.restart_for_hello_retry(HashAlg::Sha256),
            Err(TranscriptError::TruncatedFirstMessage)
        );

        let mut twice = Transcript::new();
        twice.add(&client_hello);
        twice
            .restart_for_hello_retry(HashAlg::Sha256)
            .expect("first");
        assert_eq!(
            twice.restart_for_hello_retry(HashAlg::Sha256),
            Err(TranscriptError::AlreadyRestarted)
        );
    }
}
