//! Resumption tickets and external PSKs (docs/design.md §4.6): the PSKs never leave the CS, so the
//! CS keeps them, sealed, in a store.
//!
//! - [`Sealer`]: authenticated encryption under a key the store never sees (the PKCS#11
//!   token's AES key in production; its impl is in `token/seal.rs`).
//! - [`TicketStore`]: what the service needs, blocking (the service calls it through
//!   `spawn_blocking`). [`SqliteStore`] is the one backend today; a larger deployment will
//!   put tickets in PostgreSQL behind the same trait.
//!
//! Rules every backend follows:
//! - **Only the PSK is sealed**, and its AAD binds it to everything stored next to it in
//!   clear (`ticket_aad`, `external_psk_aad`): schema version, engine identity, SHA-256
//!   of the ticket identity, hash, cipher suite, times, `max_early_data`, server name (for
//!   external PSKs: identity and the list of allowed engines). A row copied to another engine
//!   or identity, or whose lifetime or allowed engines were edited, fails to unseal.
//! - **Tickets are keyed by (engine, SHA-256(identity))**: a ticket registered by one engine
//!   is invisible to every other engine.
//! - **A ticket is used once** (RFC 8446 §C.4): [`TicketStore::take_ticket`] deletes it.
//! - **Lifetime** = min(the server's `ticket_lifetime`, the configured cap ≤ 7 days); an
//!   expired ticket is never returned. **Count**: at most `max_tickets_per_engine` live
//!   tickets per engine; expired ones are purged before counting, and a refused registration
//!   leaves the existing tickets untouched.

use std::fmt;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use lurk_proto::wire::HashAlg;
use zeroize::Zeroizing;

use crate::error::{StoreError, TokenError};

mod sqlite;

pub use sqlite::SqliteStore;

/// Version of the store's schema and of the AAD layout. A store holding another version is
/// refused (`StoreError::Schema`); a migration must bump both.
pub const SCHEMA_VERSION: i64 = 1;

/// RFC 8446 §4.6.1: servers must not use a ticket lifetime above 7 days, and clients must
/// not cache a ticket longer.
pub const MAX_TICKET_LIFETIME_SECS: u64 = 7 * 24 * 3600;

/// Longest identity accepted (RFC 8446 §4.2.11: `opaque identity<1..2^16-1>`).
pub const MAX_IDENTITY_LEN: usize = u16::MAX as usize;

/// Longest engine identity accepted (a certificate CN is at most 64 characters; DNS names at
/// most 253).
pub const MAX_ENGINE_LEN: usize = 255;

/// Authenticated encryption of the stored PSKs, under a key the store never holds.
///
/// The PKCS#11 `Token` implements it with AES-GCM under the token key named by
/// `token.sealing_key`. `seal` returns an opaque blob (nonce, ciphertext and tag, in the
/// implementation's format); `unseal` must fail with [`TokenError::Unseal`] when the blob or
/// the AAD was altered, and with another `TokenError` when the token itself failed.
pub trait Sealer: Send + Sync {
    fn seal(&self, aad: &[u8], plaintext: &[u8]) -> Result<Vec<u8>, TokenError>;
    fn unseal(&self, aad: &[u8], sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, TokenError>;
}

/// A ticket to register, as `c_register_tickets` derived it.
pub struct NewTicket {
    /// `NewSessionTicket.ticket`: the identity the engine will offer in `pre_shared_key`.
    pub identity: Vec<u8>,
    /// HKDF-Expand-Label(resumption_master_secret, "resumption", ticket_nonce, Hash.length).
    pub psk: Zeroizing<Vec<u8>>,
    /// The hash of the cipher suite of the connection that issued the ticket.
    pub hash: HashAlg,
    /// That cipher suite (RFC 8446 §4.6.1: the ticket may only be used with the same hash).
    pub cipher_suite: u16,
    /// `NewSessionTicket.ticket_lifetime` in seconds; 0 means "do not cache".
    pub lifetime_secs: u32,
    /// The `early_data` extension's `max_early_data_size` (0 without it).
    pub max_early_data: u32,
    /// The SNI of the connection that issued the ticket, if any.
    pub server_name: Option<String>,
}

impl fmt::Debug for NewTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewTicket")
            .field("identity_len", &self.identity.len())
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("cipher_suite", &format_args!("{:#06x}", self.cipher_suite))
            .field("lifetime_secs", &self.lifetime_secs)
            .field("max_early_data", &self.max_early_data)
            .field("server_name", &self.server_name)
            .finish()
    }
}

/// A ticket taken out of the store (and so deleted from it).
pub struct StoredTicket {
    pub psk: Zeroizing<Vec<u8>>,
    pub hash: HashAlg,
    pub cipher_suite: u16,
    pub max_early_data: u32,
    pub server_name: Option<String>,
    /// When the CS registered the ticket (an approximation of when the server issued it).
    pub issued_at: SystemTime,
    /// `issued_at` + the effective lifetime.
    pub expires_at: SystemTime,
}

impl fmt::Debug for StoredTicket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StoredTicket")
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("cipher_suite", &format_args!("{:#06x}", self.cipher_suite))
            .field("max_early_data", &self.max_early_data)
            .field("server_name", &self.server_name)
            .field("issued_at", &self.issued_at)
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// An external PSK (RFC 8446 §2.2, provisioned out of band). Not consumed on use.
pub struct ExternalPsk {
    pub identity: Vec<u8>,
    pub psk: Zeroizing<Vec<u8>>,
    pub hash: HashAlg,
    /// Engine identities allowed to use it; empty = every authenticated engine.
    pub allowed_engines: Vec<String>,
}

impl fmt::Debug for ExternalPsk {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ExternalPsk")
            .field("identity", &String::from_utf8_lossy(&self.identity))
            .field("psk", &"<redacted>")
            .field("hash", &self.hash)
            .field("allowed_engines", &self.allowed_engines)
            .finish()
    }
}

/// What may be said about an external PSK without the PSK itself (`Capabilities`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ExternalPskInfo {
    pub identity: Vec<u8>,
    pub hash: HashAlg,
    pub allowed_engines: Vec<String>,
}

/// The store of tickets and external PSKs. Methods block (SQLite, token calls): call them
/// from `spawn_blocking`.
pub trait TicketStore: Send + Sync {
    /// Registers a ticket for `engine`. A ticket with a lifetime of 0 is not stored (RFC 8446
    /// §4.6.1: "discard immediately"). Registering an identity the engine already has
    /// replaces it. Beyond `max_tickets_per_engine` live tickets (expired ones are purged
    /// first) fails with `StoreError::TooManyTickets`, leaving the existing ones intact.
    fn put_ticket(&self, engine: &str, ticket: NewTicket) -> Result<(), StoreError>;

    /// Takes `engine`'s ticket with this identity: returns it unsealed and deletes it (a
    /// ticket is used once). `None` when the engine has no such live ticket (another
    /// engine's ticket with the same identity is not visible). A row whose seal fails to
    /// authenticate is deleted and reported as `StoreError::Seal(TokenError::Unseal)`; any
    /// other token failure leaves the row in place.
    fn take_ticket(
        &self,
        engine: &str,
        identity: &[u8],
    ) -> Result<Option<StoredTicket>, StoreError>;

    /// Live (unexpired) tickets of `engine`.
    fn count_tickets(&self, engine: &str) -> Result<u64, StoreError>;

    /// Deletes every ticket expired at `now`; returns how many.
    fn purge_expired(&self, now: SystemTime) -> Result<u64, StoreError>;

    /// Provisions (or replaces) an external PSK.
    fn put_external_psk(&self, psk: ExternalPsk) -> Result<(), StoreError>;

    /// The external PSK with this identity, unsealed. With `Some(engine)`, a PSK restricted
    /// to other engines is reported as absent; `None` skips that check (administration).
    fn get_external_psk(
        &self,
        engine: Option<&str>,
        identity: &[u8],
    ) -> Result<Option<ExternalPsk>, StoreError>;

    /// Deletes an external PSK; returns whether it existed.
    fn delete_external_psk(&self, identity: &[u8]) -> Result<bool, StoreError>;

    /// Identities, hashes and allowed engines of the external PSKs (never the PSKs).
    fn list_external_psks(&self) -> Result<Vec<ExternalPskInfo>, StoreError>;
}

/// SHA-256 of a PSK identity: the key tickets and external PSKs are stored under.
pub(crate) fn identity_hash(identity: &[u8]) -> [u8; 32] {
    let d = ring::digest::digest(&ring::digest::SHA256, identity);
    let mut out = [0u8; 32];
    out.copy_from_slice(d.as_ref());
    out
}

/// Stable code of a hash in stored rows and AADs.
pub(crate) fn hash_code(h: HashAlg) -> u8 {
    match h {
        HashAlg::Sha256 => 1,
        HashAlg::Sha384 => 2,
    }
}

pub(crate) fn hash_from_code(code: i64) -> Result<HashAlg, StoreError> {
    match code {
        1 => Ok(HashAlg::Sha256),
        2 => Ok(HashAlg::Sha384),
        other => Err(StoreError::Corrupt(format!("unknown hash code {other}"))),
    }
}

/// Seconds since the Unix epoch (0 for times before it).
pub(crate) fn unix_secs(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs())
}

pub(crate) fn from_unix_secs(s: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(s)
}

/// Everything stored beside a ticket's sealed PSK, in clear.
pub(crate) struct TicketMeta<'a> {
    pub engine: &'a str,
    pub id_hash: &'a [u8; 32],
    pub hash: HashAlg,
    pub cipher_suite: u16,
    pub issued_at: u64,
    pub expires_at: u64,
    pub max_early_data: u32,
    pub server_name: Option<&'a str>,
}

/// AAD of a ticket's sealed PSK: a fixed label, the schema version, then every field stored
/// beside it, each length-prefixed or fixed-size so that no two tuples encode alike.
pub(crate) fn ticket_aad(m: &TicketMeta<'_>) -> Vec<u8> {
    let mut aad = Vec::with_capacity(96 + m.engine.len());
    aad.extend_from_slice(b"lurk-cs ticket\0");
    aad.extend_from_slice(&(SCHEMA_VERSION as u32).to_be_bytes());
    push_str16(&mut aad, m.engine);
    aad.extend_from_slice(m.id_hash);
    aad.push(hash_code(m.hash));
    aad.extend_from_slice(&m.cipher_suite.to_be_bytes());
    aad.extend_from_slice(&m.issued_at.to_be_bytes());
    aad.extend_from_slice(&m.expires_at.to_be_bytes());
    aad.extend_from_slice(&m.max_early_data.to_be_bytes());
    match m.server_name {
        None => aad.push(0),
        Some(sn) => {
            aad.push(1);
            push_str16(&mut aad, sn);
        }
    }
    aad
}

/// AAD of an external PSK: label, schema version, identity hash, hash, allowed engines (in
/// the order stored).
pub(crate) fn external_psk_aad(id_hash: &[u8; 32], hash: HashAlg, allowed: &[String]) -> Vec<u8> {
    let mut aad = Vec::with_capacity(64);
    aad.extend_from_slice(b"lurk-cs external-psk\0");
    aad.extend_from_slice(&(SCHEMA_VERSION as u32).to_be_bytes());
    aad.extend_from_slice(id_hash);
    aad.push(hash_code(hash));
    aad.extend_from_slice(&(allowed.len() as u32).to_be_bytes());
    for e in allowed {
        push_str16(&mut aad, e);
    }
    aad
}

/// Callers validated lengths (≤ `MAX_ENGINE_LEN`, or a server name ≤ 255 by RFC 6066).
fn push_str16(out: &mut Vec<u8>, s: &str) {
    let len = u16::try_from(s.len()).unwrap_or(u16::MAX);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&s.as_bytes()[..usize::from(len)]);
}

pub(crate) fn check_engine(engine: &str) -> Result<(), StoreError> {
    if engine.is_empty() || engine.len() > MAX_ENGINE_LEN || engine.contains('\n') {
        return Err(StoreError::Invalid(format!(
            "engine identity must be 1..={MAX_ENGINE_LEN} bytes without newline"
        )));
    }
    Ok(())
}

pub(crate) fn check_identity(identity: &[u8]) -> Result<(), StoreError> {
    if identity.is_empty() || identity.len() > MAX_IDENTITY_LEN {
        return Err(StoreError::Invalid(format!(
            "PSK identity must be 1..={MAX_IDENTITY_LEN} bytes"
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta<'a>(engine: &'a str, id_hash: &'a [u8; 32]) -> TicketMeta<'a> {
        TicketMeta {
            engine,
            id_hash,
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            issued_at: 10,
            expires_at: 20,
            max_early_data: 0,
            server_name: Some("example.com"),
        }
    }

    #[test]
    fn ticket_aad_binds_engine_identity_and_metadata() {
        let h = identity_hash(b"ticket");
        let base = ticket_aad(&meta("engine-a", &h));
        assert_ne!(base, ticket_aad(&meta("engine-b", &h)));
        assert_ne!(
            base,
            ticket_aad(&meta("engine-a", &identity_hash(b"other")))
        );
        let mut m = meta("engine-a", &h);
        m.expires_at = 21;
        assert_ne!(base, ticket_aad(&m));
        let mut m = meta("engine-a", &h);
        m.server_name = None;
        assert_ne!(base, ticket_aad(&m));
        // Length prefixes: moving a byte between engine and server name changes the AAD.
        let mut m = meta("engine-ae", &h);
        m.server_name = Some("xample.com");
        assert_ne!(base, ticket_aad(&m));
    }

    #[test]
    fn external_aad_binds_allowed_engines() {
        let h = identity_hash(b"ext");
        let a = external_psk_aad(&h, HashAlg::Sha256, &["a".into(), "b".into()]);
        assert_ne!(a, external_psk_aad(&h, HashAlg::Sha256, &["a".into()]));
        assert_ne!(a, external_psk_aad(&h, HashAlg::Sha256, &["ab".into()]));
        assert_ne!(
            a,
            external_psk_aad(&h, HashAlg::Sha384, &["a".into(), "b".into()])
        );
    }

    #[test]
    fn debug_never_shows_the_psk() {
        let psk = vec![0xAB; 32];
        let t = StoredTicket {
            psk: Zeroizing::new(psk.clone()),
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            max_early_data: 0,
            server_name: None,
            issued_at: UNIX_EPOCH,
            expires_at: UNIX_EPOCH,
        };
        let n = NewTicket {
            identity: b"id".to_vec(),
            psk: Zeroizing::new(psk.clone()),
            hash: HashAlg::Sha256,
            cipher_suite: 0x1301,
            lifetime_secs: 1,
            max_early_data: 0,
            server_name: None,
        };
        let e = ExternalPsk {
            identity: b"id".to_vec(),
            psk: Zeroizing::new(psk),
            hash: HashAlg::Sha256,
            allowed_engines: vec![],
        };
        for s in [format!("{t:?}"), format!("{n:?}"), format!("{e:?}")] {
            assert!(s.contains("redacted"), "{s}");
            assert!(!s.to_lowercase().contains("ab, ab"), "{s}");
            assert!(!s.contains("171"), "{s}");
        }
    }
}
