//! What a LURK session keeps between exchanges, one variant per point of the protocol
//! (docs/design.md §2, sequences A and C). An operation accepts only the stage that precedes it:
//! anything else is refused with `invalid_status` and leaves the session as it was.

use std::fmt;
use std::time::Instant;

use lurk_proto::key_schedule::Secret;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{CipherSuite, HashAlg, NamedGroup, SignatureScheme};

use crate::ephemeral::PendingEphemeral;
use crate::error::ServiceError;
use crate::session::{Lifetime, SessionState};

/// The stage a session is in.
pub enum Stage {
    /// After `c_init_client_hello` (or `c_client_hello`): waiting for the ServerHello.
    Hello(Box<HelloState>),
    /// After `c_server_hello`: waiting for the server's flight (`c_client_finished`).
    Handshake(Box<HandshakeState>),
    /// After the client Finished: tickets and post-handshake authentication.
    Established(Box<EstablishedState>),
    /// A placeholder while an operation owns the state.
    Taken,
}

impl fmt::Debug for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Stage {
    /// The stage's name in refusal messages and logs.
    pub fn name(&self) -> &'static str {
        match self {
            Self::Hello(_) => "hello",
            Self::Handshake(_) => "handshake",
            Self::Established(_) => "established",
            Self::Taken => "taken",
        }
    }

    /// After the client Finished (tickets and post-handshake authentication only).
    pub fn is_established(&self) -> bool {
        matches!(self, Self::Established(_))
    }

    /// The bytes this stage holds (approximately: sizes of the structures and of what they
    /// own on the heap), charged to the session's engine in the session table.
    pub fn held_bytes(&self) -> usize {
        match self {
            Self::Hello(s) => s.held_bytes(),
            Self::Handshake(s) => s.held_bytes(),
            Self::Established(s) => s.held_bytes(),
            Self::Taken => 0,
        }
    }

    /// Refusal for an exchange that does not come next in this session.
    pub fn out_of_order(&self, exchange: &str) -> ServiceError {
        ServiceError::refuse(
            LurkStatus::InvalidStatus,
            format!(
                "{exchange} is not a valid next exchange for a session in stage {}",
                self.name()
            ),
        )
    }
}

impl SessionState for Stage {
    fn held_bytes(&self) -> usize {
        Stage::held_bytes(self)
    }

    fn drop_may_block(&self) -> bool {
        match self {
            Self::Hello(s) => s
                .cs_shares
                .iter()
                .any(|c| matches!(c.pending, PendingEphemeral::Token(_))),
            _ => false,
        }
    }

    fn lifetime(&self) -> Lifetime {
        match self {
            Self::Established(s) if s.engine_keyed => Lifetime::EngineKeyed,
            Self::Established(_) => Lifetime::Established,
            _ => Lifetime::Handshake,
        }
    }
}

/// What a key pair the CS holds costs besides its public key: ring's private key, or once
/// agreed (kept for a retry, ephemeral.rs `MemoryKey`) the server's share and the shared
/// secret in two allocations; or the token's object handles.
const KEY_PAIR_BYTES: usize = 97 + 48 + 4 * ENTRY_BYTES;
/// What one small heap allocation (a `Vec` entry) costs besides its bytes, in the
/// `held_bytes` estimates the session table charges.
pub const ENTRY_BYTES: usize = 32;

/// A key share the CS generated and still holds.
pub struct CsShare {
    /// The share's group.
    pub group: NamedGroup,
    /// The public key sent in the ClientHello (reused if a HelloRetryRequest keeps it).
    pub public: Vec<u8>,
    /// The private half, in the token or in memory, used once by c_server_hello.
    pub pending: PendingEphemeral,
}

/// A PSK offered in the ClientHello, loaded from the store (never leaves the CS).
#[derive(Clone)]
pub struct OfferedPsk {
    /// The identity as offered in pre_shared_key.
    pub identity: Vec<u8>,
    /// The PSK (a ticket's is derived from r and the ticket_nonce, RFC 8446 §4.6.1).
    pub psk: Secret,
    /// The hash the PSK is bound to: only suites with this hash may select it (§4.2.11).
    pub hash: HashAlg,
    /// An external PSK (binder label "ext binder"), not a resumption ticket ("res binder").
    pub external: bool,
    /// A resumption ticket's server name, verified under `[server_auth]` when registered.
    pub server_name: Option<String>,
}

/// The session after the ClientHello: what c_server_hello (or a second c_client_hello after
/// a HelloRetryRequest) needs.
pub struct HelloState {
    /// The ClientHello (or, after a HelloRetryRequest, message_hash + HRR + ClientHello2).
    pub transcript: Transcript,
    /// The last completed ClientHello, as sent.
    pub client_hello: Vec<u8>,
    /// The ClientHello.random the CS derived (draft-mglt-lurk-tls13 §3).
    pub random: [u8; 32],
    /// The ServerHello must echo it (RFC 8446 §4.1.3).
    pub legacy_session_id: Vec<u8>,
    /// The ServerHello's cipher_suite must be one of them.
    pub offered_suites: Vec<CipherSuite>,
    /// supported_groups: a HelloRetryRequest may only ask for one of them (§4.1.4).
    pub offered_groups: Vec<NamedGroup>,
    /// Groups with a key share in the ClientHello (CS- or engine-generated).
    pub shared_groups: Vec<NamedGroup>,
    /// The key shares the CS made (cs_generated); the others the engine made.
    pub cs_shares: Vec<CsShare>,
    /// The PSKs offered, in pre_shared_key's order (selected_identity indexes them).
    pub psks: Vec<OfferedPsk>,
    /// psk_ke offered: the server may resume without (EC)DHE (RFC 8446 §4.2.9).
    pub psk_ke: bool,
    /// psk_dhe_ke offered: the server may resume with (EC)DHE.
    pub psk_dhe_ke: bool,
    /// early_data offered in the ClientHello (RFC 8446 §4.2.10).
    pub early_data: bool,
    /// post_handshake_auth offered (RFC 8446 §4.2.6).
    pub post_handshake_auth: bool,
    /// A HelloRetryRequest was already answered: a second one is refused (§4.1.4).
    pub retried: bool,
    /// The ClientHello's server_name (SNI), what `[server_auth]` authenticates the server for.
    pub server_name: Option<String>,
    /// The ClientHello's signature_algorithms: the server CertificateVerify uses one of them.
    pub signature_schemes: Vec<SignatureScheme>,
}

impl CsShare {
    /// Bytes charged to the session for this share.
    pub fn held_bytes(&self) -> usize {
        size_of::<Self>() + self.public.len() + KEY_PAIR_BYTES
    }
}

impl OfferedPsk {
    /// Bytes charged to the session for this PSK.
    pub fn held_bytes(&self) -> usize {
        size_of::<Self>()
            + self.identity.len()
            + self.psk.len()
            + self.server_name.as_ref().map_or(0, String::len)
            + 3 * ENTRY_BYTES
    }
}

/// The longest key_share public value the CS makes (an uncompressed P-384 point).
pub const MAX_PUBLIC_KEY_LEN: usize = 97;
/// The longest server name a stored ticket is bound to: a DNS name (RFC 1035 §2.3.4: 253
/// bytes) or an address, as `[server_auth]` verified it.
const MAX_BOUND_NAME_LEN: usize = 256;

impl HelloState {
    /// An upper bound of [`held_bytes`](Self::held_bytes) for the state c_init_client_hello
    /// builds from a ClientHello of `hello_len` bytes read as `ch`: the session table
    /// reserves it before any key pair is made or any ticket taken.
    pub(crate) fn reserve_bound(hello_len: usize, ch: &crate::ops::msgs::ClientHelloInfo) -> usize {
        let shares = ch.shares.len();
        let psk = |identity: &Vec<u8>| {
            size_of::<OfferedPsk>()
                + identity.len()
                + crate::store::MAX_EXTERNAL_PSK_LEN
                + MAX_BOUND_NAME_LEN
                + 3 * ENTRY_BYTES
        };
        size_of::<Self>()
            // The completed ClientHello: its shares filled in, exact capacity.
            + hello_len
            + shares * MAX_PUBLIC_KEY_LEN
            + ch.legacy_session_id.len()
            // Offered suites, offered and shared groups, signature schemes.
            + 2 * (ch.suites.len() + 2 * ch.groups.len() + ch.signature_schemes.len())
            + shares * (size_of::<CsShare>() + MAX_PUBLIC_KEY_LEN + KEY_PAIR_BYTES)
            + ch.psk_identities.iter().map(psk).sum::<usize>()
            + ch.server_name.as_ref().map_or(0, String::len)
            + 8 * ENTRY_BYTES
    }

    /// Bytes charged to the session in this stage.
    pub fn held_bytes(&self) -> usize {
        size_of::<Self>()
            + self.client_hello.capacity()
            + self.legacy_session_id.len()
            + 2 * (self.offered_suites.len() + self.offered_groups.len() + self.shared_groups.len())
            + self
                .cs_shares
                .iter()
                .map(CsShare::held_bytes)
                .sum::<usize>()
            + self.psks.iter().map(OfferedPsk::held_bytes).sum::<usize>()
            + self.server_name.as_ref().map_or(0, String::len)
            + 2 * self.signature_schemes.len()
            + 8 * ENTRY_BYTES
    }
}

/// The session after the ServerHello: the handshake secrets, waiting for the server's
/// flight (c_client_finished).
pub struct HandshakeState {
    /// The cipher suite the ServerHello selected.
    pub suite: CipherSuite,
    /// Its hash.
    pub hash: HashAlg,
    /// Through the ServerHello.
    pub transcript: Transcript,
    /// At the Handshake Secret (RFC 8446 §7.1).
    pub key_schedule: lurk_proto::key_schedule::KeyScheduleHandshake,
    /// client_handshake_traffic_secret: the client Finished's key.
    pub client_hs: Secret,
    /// server_handshake_traffic_secret: checks the server Finished.
    pub server_hs: Secret,
    /// A PSK was selected: no server Certificate is expected.
    pub psk_mode: bool,
    /// early_data was offered: only then may EncryptedExtensions accept it.
    pub early_data_offered: bool,
    /// post_handshake_auth was offered (RFC 8446 §4.2.6).
    pub post_handshake_auth: bool,
    /// The ClientHello's server_name (SNI).
    pub server_name: Option<String>,
    /// The ClientHello's signature_algorithms.
    pub signature_schemes: Vec<SignatureScheme>,
    /// The server name the selected PSK authenticates (a resumption ticket's checked name,
    /// or the SNI for an external PSK); `None` without a PSK.
    pub psk_server_name: Option<String>,
}

impl HandshakeState {
    /// Bytes charged to the session in this stage.
    pub fn held_bytes(&self) -> usize {
        // The key schedule and the two traffic secrets: a few hashes each.
        size_of::<Self>()
            + 4 * (64 + ENTRY_BYTES)
            + self.server_name.as_ref().map_or(0, String::len)
            + self.psk_server_name.as_ref().map_or(0, String::len)
            + 2 * self.signature_schemes.len()
            + 3 * ENTRY_BYTES
    }
}

/// The session after the client Finished: what tickets and post-handshake authentication
/// need.
pub struct EstablishedState {
    /// The connection's cipher suite.
    pub suite: CipherSuite,
    /// Its hash.
    pub hash: HashAlg,
    /// Transcript through the client Finished: the base of every post-handshake
    /// authentication (RFC 8446 §4.4.1).
    pub transcript: Transcript,
    /// r: used for c_register_tickets, never returned; dropped (zeroized) with the session.
    pub resumption_master: Option<Secret>,
    /// When the client Finished was made: tickets registered later expire no later than
    /// their lifetime counted from here, and r is usable `established_ttl` from here only.
    pub established_at: Instant,
    /// SHA-256 of every ticket_nonce and ticket identity registered in this session: a
    /// NewSessionTicket is registered once (RFC 8446 §4.6.1: nonces are unique per
    /// connection), so that a ticket, once resumed, cannot be stored again.
    pub registered_nonces: Vec<[u8; 32]>,
    /// SHA-256 of every ticket identity registered in this session (see
    /// `registered_nonces`).
    pub registered_identities: Vec<[u8; 32]>,
    /// (nonce, identity) SHA-256 pairs of a registration whose store write failed with its
    /// outcome unknown (it may have been stored): each is bound to the other for the life of
    /// the session. The same pair may be registered again (the store leaves a stored identity
    /// as it is); the nonce under another identity, or the reverse, is refused, so that the
    /// same PSK is never stored twice.
    pub unsettled_tickets: Vec<([u8; 32], [u8; 32])>,
    /// Registrations of this session the store refused or failed (at most
    /// `MAX_STORE_FAILURES_PER_SESSION`: then the session registers no more).
    pub store_failures: u8,
    /// post_handshake_auth was offered: c_post_hand_auth is refused otherwise.
    pub post_handshake_auth: bool,
    /// Sequence C: the engine made the client Finished itself; the CS receives it with the
    /// first c_post_hand_auth.
    pub awaiting_client_finished: bool,
    /// certificate_request_context values already answered (RFC 8446 §4.3.2: unique).
    pub pha_contexts: Vec<Vec<u8>>,
    /// Sequence C: opened by c_init_client_finished, the engine ran the key schedule and the
    /// CS saw no server's key exchange: a shorter life (`engine_keyed_ttl_secs`).
    pub engine_keyed: bool,
    /// The server name `[server_auth]` verified in this handshake (`None` with the policy
    /// off): tickets registered in this session are bound to it.
    pub server_name: Option<String>,
}

impl EstablishedState {
    /// Bytes charged to the session in this stage.
    pub fn held_bytes(&self) -> usize {
        size_of::<Self>()
            + self
                .resumption_master
                .as_ref()
                .map_or(0, |r| r.len() + ENTRY_BYTES)
            + self
                .pha_contexts
                .iter()
                .map(|c| c.len() + ENTRY_BYTES)
                .sum::<usize>()
            + 32 * (self.registered_nonces.len() + self.registered_identities.len())
            + 64 * self.unsettled_tickets.len()
            + self
                .server_name
                .as_ref()
                .map_or(0, |n| n.len() + ENTRY_BYTES)
    }
}
