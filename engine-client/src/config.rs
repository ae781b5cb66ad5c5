//! What a connection offers and trusts ([`ClientConfig`]), and what it reports at the end of
//! the handshake ([`HandshakeSummary`]).

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use lurk_proto::freshness::FreshnessMode;
use lurk_proto::pb;
use lurk_proto::wire::{CipherSuite, HashAlg, NamedGroup, PskKeyExchangeMode, SignatureScheme};

use crate::tickets::TicketStore;
use crate::verify::{TrustAnchors, CERTIFICATE_ONLY_SCHEMES, SUPPORTED_SCHEMES};

/// Who makes the (EC)DHE key pairs (LURK ephemeral method).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Ephemeral {
    /// The Crypto Service (cs_generated, the default: docs/design.md §4.4).
    #[default]
    Cs,
    /// The engine (e_generated; with no CS-held PSK the engine runs the key schedule itself).
    Engine,
}

/// The client key the engine may authenticate with: its id at the CS and its certificate chain
/// (from `Capabilities`).
#[derive(Clone, Debug)]
pub struct ClientKey {
    /// The key id at the CS.
    pub key_id: String,
    /// DER certificates, leaf first.
    pub certificate_chain: Vec<Vec<u8>>,
    /// The schemes the CS can sign with for this key; an empty list means "any".
    pub signature_schemes: Vec<SignatureScheme>,
}

/// An external PSK held by the CS.
#[derive(Clone, Debug)]
pub struct ExternalPsk {
    /// The PSK identity.
    pub identity: Vec<u8>,
    /// The PSK's hash (only suites with this hash are offered).
    pub hash: HashAlg,
}

/// The configuration of the engine's connections. Shared (`Arc`) by all of them.
#[derive(Clone)]
pub struct ClientConfig {
    /// Trust anchors for the server's certificate chain.
    pub trust_anchors: TrustAnchors,
    /// Cipher suites, in preference order.
    pub cipher_suites: Vec<CipherSuite>,
    /// supported_groups, in preference order.
    pub groups: Vec<NamedGroup>,
    /// How many of the first `groups` get a key share in the first ClientHello (at least 1);
    /// the others are only listed (a server preferring one of them answers with a
    /// HelloRetryRequest).
    pub key_shares: usize,
    /// Who makes the (EC)DHE key pairs.
    pub ephemeral: Ephemeral,
    /// signature_algorithms offered.
    pub signature_schemes: Vec<SignatureScheme>,
    /// The client key for certificate requests (none: an empty Certificate is sent).
    pub client_key: Option<ClientKey>,
    /// ALPN protocols offered.
    pub alpn: Vec<Vec<u8>>,
    /// psk_key_exchange_modes offered with a PSK.
    pub psk_modes: Vec<PskKeyExchangeMode>,
    /// Where tickets are kept; `None`: tickets are ignored and resumption is off.
    pub ticket_store: Option<Arc<dyn TicketStore>>,
    /// Offer stored tickets for resumption.
    pub resume: bool,
    /// An external PSK held by the CS, offered instead of a ticket.
    pub external_psk: Option<ExternalPsk>,
    /// Data to send as 0-RTT early data when a ticket allows it (RFC 8446 §4.2.10: a ticket
    /// with max_early_data_size > 0, of a connection whose ALPN protocol is the first of
    /// `alpn`). At most max_early_data_size bytes go as 0-RTT; when the server accepts them
    /// the rest follows as ordinary data right after the handshake.
    pub early_data: Option<Vec<u8>>,
    /// Send the early data again (all of it) after the handshake when the server rejected it.
    pub resend_rejected_early_data: bool,
    /// Offer post-handshake client authentication (RFC 8446 §4.6.2).
    pub post_handshake_auth: bool,
    /// The LURK freshness function the CS applies to the engine's random (docs/design.md §3).
    pub freshness: pb::Freshness,
    /// Draft labels (default) or pylurk compatibility.
    pub freshness_mode: FreshnessMode,
    /// Middlebox compatibility mode (RFC 8446 D.4): 32-byte legacy_session_id and a
    /// change_cipher_spec before the second flight.
    pub middlebox_compat: bool,
    /// record_size_limit to offer (RFC 8449), 64..=16385: the largest TLSInnerPlaintext
    /// (content + content type byte + padding) the engine accepts in a protected record once
    /// the server echoes the extension. `None`: not offered.
    pub record_size_limit: Option<u16>,
    /// Keep exporter_master_secret so that [`crate::TlsStream::export_keying_material`] works
    /// (RFC 8446 §7.5). Through the Crypto Service (sequence A) this asks it for the secret
    /// `x`; off by default so that the secret is neither requested nor kept.
    pub exporter: bool,
    /// Make c_server_flight (one CS exchange instead of c_server_hello + c_client_finished,
    /// docs/protocol.md) when the CS offers it; on by default. Off: the standard pair only,
    /// and no Capabilities call to find out.
    pub cs_server_flight: bool,
}

impl Default for ClientConfig {
    fn default() -> Self {
        Self {
            trust_anchors: TrustAnchors::default(),
            cipher_suites: CipherSuite::SUPPORTED.to_vec(),
            groups: vec![
                NamedGroup::X25519,
                NamedGroup::Secp256r1,
                NamedGroup::Secp384r1,
            ],
            key_shares: 1,
            ephemeral: Ephemeral::Cs,
            signature_schemes: SUPPORTED_SCHEMES
                .iter()
                .chain(CERTIFICATE_ONLY_SCHEMES.iter())
                .copied()
                .collect(),
            client_key: None,
            alpn: Vec::new(),
            psk_modes: vec![PskKeyExchangeMode::PskDheKe],
            ticket_store: None,
            resume: true,
            external_psk: None,
            early_data: None,
            resend_rejected_early_data: true,
            post_handshake_auth: false,
            freshness: pb::Freshness::Sha256,
            freshness_mode: FreshnessMode::Draft,
            middlebox_compat: true,
            record_size_limit: None,
            exporter: false,
            cs_server_flight: true,
        }
    }
}

impl fmt::Debug for ClientConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientConfig")
            .field("trust_anchors", &self.trust_anchors.len())
            .field("cipher_suites", &self.cipher_suites)
            .field("groups", &self.groups)
            .field("key_shares", &self.key_shares)
            .field("ephemeral", &self.ephemeral)
            .field("client_key", &self.client_key.as_ref().map(|k| &k.key_id))
            .field("alpn", &self.alpn)
            .field("psk_modes", &self.psk_modes)
            .field("tickets", &self.ticket_store.is_some())
            .field("external_psk", &self.external_psk.is_some())
            .field("early_data", &self.early_data.as_ref().map(Vec::len))
            .field("post_handshake_auth", &self.post_handshake_auth)
            .field("record_size_limit", &self.record_size_limit)
            .field("exporter", &self.exporter)
            .finish_non_exhaustive()
    }
}

/// The TLS 1.3 key exchange mode of a handshake (pytls13 `set_tls_mode`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TlsMode {
    /// Certificate authentication, (EC)DHE.
    Ecdhe,
    /// PSK with (EC)DHE (psk_dhe_ke).
    PskEcdhe,
    /// PSK only (psk_ke).
    Psk,
}

impl TlsMode {
    /// "ecdhe", "psk_ecdhe", "psk".
    pub fn name(self) -> &'static str {
        match self {
            Self::Ecdhe => "ecdhe",
            Self::PskEcdhe => "psk_ecdhe",
            Self::Psk => "psk",
        }
    }
}

/// What a handshake negotiated and how (filled as the connection goes; LURK exchanges made
/// after the handshake are appended).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HandshakeSummary {
    /// The server name the connection was made for.
    pub server_name: String,
    /// "TLSv1.3".
    pub tls_version: &'static str,
    /// The negotiated suite.
    pub cipher_suite: Option<CipherSuite>,
    /// The (EC)DHE group, if any.
    pub group: Option<NamedGroup>,
    /// The key exchange mode.
    pub mode: Option<TlsMode>,
    /// A resumption ticket was accepted.
    pub resumed: bool,
    /// An external PSK was accepted.
    pub external_psk: bool,
    /// The server answered with a HelloRetryRequest.
    pub hello_retry: bool,
    /// Early data was offered.
    pub early_data_offered: bool,
    /// The server accepted the early data.
    pub early_data_accepted: bool,
    /// The client sent a certificate (in or after the handshake).
    pub client_authenticated: bool,
    /// The ALPN protocol selected.
    pub alpn: Option<Vec<u8>>,
    /// The LURK exchanges made, in order.
    pub lurk_exchanges: Vec<&'static str>,
    /// Time from the start to the client Finished being sent.
    pub handshake_time: Option<Duration>,
    /// NewSessionTicket messages received.
    pub tickets_received: usize,
}

impl HandshakeSummary {
    pub(crate) fn new(server_name: &str) -> Self {
        Self {
            server_name: server_name.to_owned(),
            tls_version: "TLSv1.3",
            cipher_suite: None,
            group: None,
            mode: None,
            resumed: false,
            external_psk: false,
            hello_retry: false,
            early_data_offered: false,
            early_data_accepted: false,
            client_authenticated: false,
            alpn: None,
            lurk_exchanges: Vec::new(),
            handshake_time: None,
            tickets_received: 0,
        }
    }

    /// The summary as one JSON object (the CLI's `--json` line).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "server_name": self.server_name,
            "tls_version": self.tls_version,
            "cipher_suite": self.cipher_suite.map(CipherSuite::name),
            "group": self.group.map(NamedGroup::name),
            "mode": self.mode.map(TlsMode::name),
            "resumed": self.resumed,
            "external_psk": self.external_psk,
            "hello_retry": self.hello_retry,
            "early_data_offered": self.early_data_offered,
            "early_data_accepted": self.early_data_accepted,
            "client_authenticated": self.client_authenticated,
            "alpn": self.alpn.as_ref().map(|a| String::from_utf8_lossy(a).into_owned()),
            "lurk_exchanges": self.lurk_exchanges,
            "handshake_ms": self.handshake_time.map(|d| d.as_secs_f64() * 1000.0),
            "tickets_received": self.tickets_received,
        })
    }
}
