//! What a connection offers and trusts ([`ClientConfig`]), and what it reports at the end of
//! the handshake ([`HandshakeSummary`]).

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

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

/// The configuration of the engine's connections, shared (`Arc`) by all of them. Made by
/// [`ClientConfig::builder`], which checks it: a configuration that exists is one the engine
/// can offer.
///
/// ```
/// use lurk_engine::config::{ClientConfig, ConfigError};
/// use lurk_engine::verify::TrustAnchors;
///
/// let config = ClientConfig::builder()
///     .trust_anchors(TrustAnchors::from_pem(include_bytes!("../../testdata/doc-ca.pem"))?)
///     .alpn_protocols(["h2", "http/1.1"])
///     .build()?;
/// assert_eq!(config.alpn_protocols(), [b"h2".to_vec(), b"http/1.1".to_vec()]);
///
/// // Checked when built, not when connecting.
/// let err = ClientConfig::builder().record_size_limit(32).build().unwrap_err();
/// assert!(matches!(err, ConfigError::RecordSizeLimit(32)));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone)]
pub struct ClientConfig {
    /// Trust anchors for the server's certificate chain.
    pub(crate) trust_anchors: TrustAnchors,
    /// Cipher suites, in preference order.
    pub(crate) cipher_suites: Vec<CipherSuite>,
    /// supported_groups, in preference order.
    pub(crate) groups: Vec<NamedGroup>,
    /// How many of the first `groups` get a key share in the first ClientHello (at least 1);
    /// the others are only listed (a server preferring one of them answers with a
    /// HelloRetryRequest).
    pub(crate) key_shares: usize,
    /// Who makes the (EC)DHE key pairs.
    pub(crate) ephemeral: Ephemeral,
    /// signature_algorithms offered.
    pub(crate) signature_schemes: Vec<SignatureScheme>,
    /// The client key for certificate requests (none: an empty Certificate is sent).
    pub(crate) client_key: Option<ClientKey>,
    /// ALPN protocols offered.
    pub(crate) alpn: Vec<Vec<u8>>,
    /// psk_key_exchange_modes offered with a PSK.
    pub(crate) psk_modes: Vec<PskKeyExchangeMode>,
    /// Where tickets are kept; `None`: tickets are ignored and resumption is off.
    pub(crate) ticket_store: Option<Arc<dyn TicketStore>>,
    /// Offer stored tickets for resumption.
    pub(crate) resume: bool,
    /// An external PSK held by the CS, offered instead of a ticket.
    pub(crate) external_psk: Option<ExternalPsk>,
    /// Data to send as 0-RTT early data when a ticket allows it (RFC 8446 §4.2.10: a ticket
    /// with max_early_data_size > 0, of a connection whose ALPN protocol is the first of
    /// `alpn`). At most max_early_data_size bytes go as 0-RTT; when the server accepts them
    /// the rest follows as ordinary data right after the handshake.
    pub(crate) early_data: Option<Vec<u8>>,
    /// Send the early data again (all of it) after the handshake when the server rejected it.
    pub(crate) resend_rejected_early_data: bool,
    /// Offer post-handshake client authentication (RFC 8446 §4.6.2).
    pub(crate) post_handshake_auth: bool,
    /// The LURK freshness function the CS applies to the engine's random (docs/design.md §3).
    pub(crate) freshness: pb::Freshness,
    /// Draft labels (default) or pylurk compatibility.
    pub(crate) freshness_mode: FreshnessMode,
    /// Middlebox compatibility mode (RFC 8446 D.4): 32-byte legacy_session_id and a
    /// change_cipher_spec before the second flight.
    pub(crate) middlebox_compat: bool,
    /// record_size_limit to offer (RFC 8449), 64..=16385: the largest TLSInnerPlaintext
    /// (content + content type byte + padding) the engine accepts in a protected record once
    /// the server echoes the extension. `None`: not offered.
    pub(crate) record_size_limit: Option<u16>,
    /// Keep exporter_master_secret so that [`crate::TlsStream::export_keying_material`] works
    /// (RFC 8446 §7.5). Through the Crypto Service (sequence A) this asks it for the secret
    /// `x`; off by default so that the secret is neither requested nor kept.
    pub(crate) exporter: bool,
    /// Make c_server_flight (one CS exchange instead of c_server_hello + c_client_finished,
    /// docs/protocol.md) when the CS offers it; on by default. Off: the standard pair only,
    /// and no Capabilities call to find out.
    pub(crate) cs_server_flight: bool,
    /// The core's clock.
    pub(crate) time: Arc<dyn TimeProvider>,
    /// The core's randomness (randoms, session ids).
    pub(crate) random: Arc<dyn RandomSource>,
}

/// The clock of the sans-IO core (as rustls' `TimeProvider`): wall time for ticket ages and
/// certificate validity, monotonic time for the handshake duration. [`SystemTime`]'s and
/// [`Instant`]'s by default.
pub trait TimeProvider: Send + Sync {
    /// Now, wall clock.
    fn system_time(&self) -> SystemTime;
    /// Now, monotonic.
    fn instant(&self) -> Instant;
}

/// The system clock.
#[derive(Debug, Default)]
pub struct SystemClock;

impl TimeProvider for SystemClock {
    fn system_time(&self) -> SystemTime {
        SystemTime::now()
    }

    fn instant(&self) -> Instant {
        Instant::now()
    }
}

/// The randomness of the sans-IO core: the engine's random, the legacy session id. (The
/// engine's own (EC)DHE key pairs come from ring's system generator.)
pub trait RandomSource: Send + Sync {
    /// Fills `buf` with cryptographically secure random bytes.
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError>;
}

/// The random source failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no randomness")]
pub struct RandomError;

/// The operating system's generator (ring's `SystemRandom`).
#[derive(Debug, Default)]
pub struct SystemRandomSource;

impl RandomSource for SystemRandomSource {
    fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
        use ring::rand::SecureRandom;
        ring::rand::SystemRandom::new()
            .fill(buf)
            .map_err(|_| RandomError)
    }
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
            time: Arc::new(SystemClock),
            random: Arc::new(SystemRandomSource),
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

/// Why [`ClientConfigBuilder::build`] refused a configuration.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConfigError {
    /// No cipher suite.
    #[error("no cipher suite")]
    NoCipherSuites,
    /// A suite the engine does not implement (TLS 1.3 AEAD suites only).
    #[error("unsupported cipher suite {0:#06x}")]
    UnsupportedCipherSuite(u16),
    /// A suite listed twice.
    #[error("cipher suite {0:#06x} listed twice")]
    DuplicateCipherSuite(u16),
    /// No (EC)DHE group.
    #[error("no group")]
    NoGroups,
    /// A group the engine does not implement (x25519, secp256r1, secp384r1).
    #[error("unsupported group {0:#06x}")]
    UnsupportedGroup(u16),
    /// A group listed twice (RFC 8446 §4.2.7 lists each once).
    #[error("group {0:#06x} listed twice")]
    DuplicateGroup(u16),
    /// `key_shares` must be between 1 and the number of groups.
    #[error("{requested} key shares for {groups} groups")]
    KeyShares {
        /// The key shares asked for.
        requested: usize,
        /// The groups configured.
        groups: usize,
    },
    /// No signature scheme.
    #[error("no signature scheme")]
    NoSignatureSchemes,
    /// A signature scheme the engine cannot verify.
    #[error("unsupported signature scheme {0:#06x}")]
    UnsupportedSignatureScheme(u16),
    /// An ALPN protocol name must be 1 to 255 bytes (RFC 7301 §3.1).
    #[error("ALPN protocol {index} is {len} bytes (1 to 255)")]
    AlpnProtocolLength {
        /// Its position in the list.
        index: usize,
        /// Its length.
        len: usize,
    },
    /// An ALPN protocol listed twice.
    #[error("ALPN protocol {0:?} listed twice")]
    DuplicateAlpnProtocol(String),
    /// record_size_limit must be 64 to 16385 (RFC 8449 §4).
    #[error("record_size_limit {0} outside 64..=16385")]
    RecordSizeLimit(u16),
    /// A client key needs its key id at the CS.
    #[error("client key without a key id")]
    EmptyClientKeyId,
    /// A client key needs its certificate chain (RFC 8446 §4.4.2).
    #[error("client key {0:?} without a certificate")]
    ClientKeyWithoutCertificate(String),
    /// An external PSK identity must be 1 to 65535 bytes (RFC 8446 §4.2.11).
    #[error("external PSK identity of {0} bytes (1 to 65535)")]
    PskIdentityLength(usize),
    /// No configured suite has the external PSK's hash (RFC 8446 §4.2.11).
    #[error("no cipher suite with the external PSK's hash {0:?}")]
    NoSuiteForPskHash(HashAlg),
    /// PSKs (tickets or external) need at least one psk_key_exchange_mode
    /// (RFC 8446 §4.2.9).
    #[error("PSKs without a psk_key_exchange_mode")]
    NoPskModes,
    /// Early data needs a PSK: an external PSK, or resumption with a ticket store
    /// (RFC 8446 §4.2.10).
    #[error("early data without an external PSK or resumption")]
    EarlyDataWithoutPsk,
    /// Early data of zero bytes.
    #[error("empty early data")]
    EmptyEarlyData,
    /// Certificate authentication needs trust anchors (an external PSK alone does not).
    #[error("no trust anchors")]
    NoTrustAnchors,
}

/// Builds a [`ClientConfig`]; [`build`](Self::build) checks it. Defaults: every supported
/// suite, x25519 then P-256 then P-384 with one key share, ephemeral keys made by the CS,
/// resumption on when a ticket store is set, middlebox compatibility on, no ALPN, no client
/// key.
#[derive(Clone, Debug)]
#[must_use]
pub struct ClientConfigBuilder {
    cfg: ClientConfig,
}

impl ClientConfig {
    /// A builder with the defaults.
    pub fn builder() -> ClientConfigBuilder {
        ClientConfigBuilder {
            cfg: ClientConfig::default(),
        }
    }

    /// The ALPN protocols offered, in order.
    pub fn alpn_protocols(&self) -> &[Vec<u8>] {
        &self.alpn
    }

    /// The client key, if any.
    pub fn client_key(&self) -> Option<&ClientKey> {
        self.client_key.as_ref()
    }

    /// The ticket store, if any.
    pub fn ticket_store(&self) -> Option<&Arc<dyn TicketStore>> {
        self.ticket_store.as_ref()
    }
}

impl ClientConfigBuilder {
    /// Trust anchors for the server's certificate chain.
    pub fn trust_anchors(mut self, anchors: TrustAnchors) -> Self {
        self.cfg.trust_anchors = anchors;
        self
    }

    /// Cipher suites, in preference order.
    pub fn cipher_suites(mut self, suites: impl IntoIterator<Item = CipherSuite>) -> Self {
        self.cfg.cipher_suites = suites.into_iter().collect();
        self
    }

    /// supported_groups, in preference order.
    pub fn groups(mut self, groups: impl IntoIterator<Item = NamedGroup>) -> Self {
        self.cfg.groups = groups.into_iter().collect();
        self
    }

    /// How many of the first groups get a key share in the first ClientHello (the others are
    /// listed only; a server preferring one answers with a HelloRetryRequest).
    pub fn key_shares(mut self, n: usize) -> Self {
        self.cfg.key_shares = n;
        self
    }

    /// Who makes the (EC)DHE key pairs.
    pub fn ephemeral(mut self, ephemeral: Ephemeral) -> Self {
        self.cfg.ephemeral = ephemeral;
        self
    }

    /// signature_algorithms offered.
    pub fn signature_schemes(mut self, schemes: impl IntoIterator<Item = SignatureScheme>) -> Self {
        self.cfg.signature_schemes = schemes.into_iter().collect();
        self
    }

    /// The CS-held key to answer certificate requests with (without one, an empty
    /// Certificate is sent). [`ClientKey::from_capabilities`] makes one from what the CS
    /// says.
    pub fn client_key(mut self, key: ClientKey) -> Self {
        self.cfg.client_key = Some(key);
        self
    }

    /// ALPN protocols, in preference order (`["h2", "http/1.1"]` for hyper).
    pub fn alpn_protocols<P: AsRef<[u8]>>(
        mut self,
        protocols: impl IntoIterator<Item = P>,
    ) -> Self {
        self.cfg.alpn = protocols.into_iter().map(|p| p.as_ref().to_vec()).collect();
        self
    }

    /// psk_key_exchange_modes offered with a PSK (default: psk_dhe_ke).
    pub fn psk_modes(mut self, modes: impl IntoIterator<Item = PskKeyExchangeMode>) -> Self {
        self.cfg.psk_modes = modes.into_iter().collect();
        self
    }

    /// Where tickets are kept (without a store, tickets are ignored and resumption is off).
    pub fn ticket_store(mut self, store: Arc<dyn TicketStore>) -> Self {
        self.cfg.ticket_store = Some(store);
        self
    }

    /// Offer stored tickets (default: on).
    pub fn resume(mut self, yes: bool) -> Self {
        self.cfg.resume = yes;
        self
    }

    /// An external PSK held by the CS, offered instead of a ticket.
    pub fn external_psk(mut self, psk: ExternalPsk) -> Self {
        self.cfg.external_psk = Some(psk);
        self
    }

    /// Data to send as 0-RTT early data when a PSK allows it (RFC 8446 §4.2.10); what the
    /// server does not take as early data follows right after the handshake.
    pub fn early_data(mut self, data: Vec<u8>) -> Self {
        self.cfg.early_data = Some(data);
        self
    }

    /// Send rejected early data again after the handshake (default: on).
    pub fn resend_rejected_early_data(mut self, yes: bool) -> Self {
        self.cfg.resend_rejected_early_data = yes;
        self
    }

    /// Offer post-handshake client authentication (RFC 8446 §4.6.2).
    pub fn post_handshake_auth(mut self, yes: bool) -> Self {
        self.cfg.post_handshake_auth = yes;
        self
    }

    /// The LURK freshness function (docs/design.md §3; default SHA-256).
    pub fn freshness(mut self, freshness: pb::Freshness) -> Self {
        self.cfg.freshness = freshness;
        self
    }

    /// Draft labels (default) or pylurk compatibility.
    pub fn freshness_mode(mut self, mode: FreshnessMode) -> Self {
        self.cfg.freshness_mode = mode;
        self
    }

    /// Middlebox compatibility mode (RFC 8446 D.4; default on).
    pub fn middlebox_compat(mut self, yes: bool) -> Self {
        self.cfg.middlebox_compat = yes;
        self
    }

    /// Offer record_size_limit (RFC 8449), 64..=16385.
    pub fn record_size_limit(mut self, limit: u16) -> Self {
        self.cfg.record_size_limit = Some(limit);
        self
    }

    /// Keep exporter_master_secret for [`crate::TlsStream::export_keying_material`]
    /// (RFC 8446 §7.5; through the CS this asks it for the secret; default off).
    pub fn exporter(mut self, yes: bool) -> Self {
        self.cfg.exporter = yes;
        self
    }

    /// Make c_server_flight (one CS exchange for the server's flight, docs/protocol.md) when
    /// the CS offers it (default on); off: the standard pair only, and no Capabilities call.
    pub fn cs_server_flight(mut self, yes: bool) -> Self {
        self.cfg.cs_server_flight = yes;
        self
    }

    /// The clock of the protocol core (default: the system's).
    pub fn time_provider(mut self, time: Arc<dyn TimeProvider>) -> Self {
        self.cfg.time = time;
        self
    }

    /// The randomness of the protocol core (default: the system's).
    pub fn random_source(mut self, random: Arc<dyn RandomSource>) -> Self {
        self.cfg.random = random;
        self
    }

    /// Checks the configuration.
    pub fn build(self) -> Result<ClientConfig, ConfigError> {
        let c = self.cfg;
        if c.cipher_suites.is_empty() {
            return Err(ConfigError::NoCipherSuites);
        }
        for (i, s) in c.cipher_suites.iter().enumerate() {
            if !CipherSuite::SUPPORTED.contains(s) {
                return Err(ConfigError::UnsupportedCipherSuite(u16::from(*s)));
            }
            if c.cipher_suites[..i].contains(s) {
                return Err(ConfigError::DuplicateCipherSuite(u16::from(*s)));
            }
        }
        if c.groups.is_empty() {
            return Err(ConfigError::NoGroups);
        }
        for (i, g) in c.groups.iter().enumerate() {
            if !NamedGroup::SUPPORTED.contains(g) {
                return Err(ConfigError::UnsupportedGroup(u16::from(*g)));
            }
            if c.groups[..i].contains(g) {
                return Err(ConfigError::DuplicateGroup(u16::from(*g)));
            }
        }
        if c.key_shares == 0 || c.key_shares > c.groups.len() {
            return Err(ConfigError::KeyShares {
                requested: c.key_shares,
                groups: c.groups.len(),
            });
        }
        if c.signature_schemes.is_empty() {
            return Err(ConfigError::NoSignatureSchemes);
        }
        if let Some(s) = c
            .signature_schemes
            .iter()
            .find(|s| !SUPPORTED_SCHEMES.contains(s) && !CERTIFICATE_ONLY_SCHEMES.contains(s))
        {
            return Err(ConfigError::UnsupportedSignatureScheme(u16::from(*s)));
        }
        for (index, p) in c.alpn.iter().enumerate() {
            if p.is_empty() || p.len() > 255 {
                return Err(ConfigError::AlpnProtocolLength {
                    index,
                    len: p.len(),
                });
            }
            if c.alpn[..index].contains(p) {
                return Err(ConfigError::DuplicateAlpnProtocol(
                    String::from_utf8_lossy(p).into_owned(),
                ));
            }
        }
        if let Some(n) = c.record_size_limit {
            if !(64..=16385).contains(&n) {
                return Err(ConfigError::RecordSizeLimit(n));
            }
        }
        if let Some(k) = &c.client_key {
            if k.key_id.is_empty() {
                return Err(ConfigError::EmptyClientKeyId);
            }
            if k.certificate_chain.is_empty() {
                return Err(ConfigError::ClientKeyWithoutCertificate(k.key_id.clone()));
            }
        }
        let resumption = c.resume && c.ticket_store.is_some();
        if let Some(p) = &c.external_psk {
            if p.identity.is_empty() || p.identity.len() > 0xffff {
                return Err(ConfigError::PskIdentityLength(p.identity.len()));
            }
            if !c.cipher_suites.iter().any(|s| s.hash() == Some(p.hash)) {
                return Err(ConfigError::NoSuiteForPskHash(p.hash));
            }
        }
        if (resumption || c.external_psk.is_some()) && c.psk_modes.is_empty() {
            return Err(ConfigError::NoPskModes);
        }
        if let Some(d) = &c.early_data {
            if d.is_empty() {
                return Err(ConfigError::EmptyEarlyData);
            }
            if !resumption && c.external_psk.is_none() {
                return Err(ConfigError::EarlyDataWithoutPsk);
            }
        }
        if c.trust_anchors.is_empty() && c.external_psk.is_none() {
            return Err(ConfigError::NoTrustAnchors);
        }
        Ok(c)
    }
}

impl ClientKey {
    /// The client key `key_id` as the CS's `Capabilities` answer describes it (certificate
    /// chain and signature schemes); `None` when the CS offers no such key to this engine.
    pub fn from_capabilities(caps: &pb::CapabilitiesResponse, key_id: &str) -> Option<Self> {
        let k = caps.keys.iter().find(|k| k.key_id == key_id)?;
        Some(Self {
            key_id: key_id.to_owned(),
            certificate_chain: k.certificate_chain.clone(),
            signature_schemes: k
                .signature_schemes
                .iter()
                .map(|s| SignatureScheme::from(*s as u16))
                .collect(),
        })
    }
}

impl ExternalPsk {
    /// The external PSK `identity` as the CS's `Capabilities` answer describes it (its
    /// hash); `None` when the CS offers no such PSK to this engine.
    pub fn from_capabilities(caps: &pb::CapabilitiesResponse, identity: &[u8]) -> Option<Self> {
        let p = caps.external_psks.iter().find(|p| p.identity == identity)?;
        Some(Self {
            identity: identity.to_vec(),
            hash: if p.tls_hash == pb::TlsHash::Sha384 as i32 {
                HashAlg::Sha384
            } else {
                HashAlg::Sha256
            },
        })
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tickets::MemoryTicketStore;

    fn anchors() -> TrustAnchors {
        TrustAnchors::from_pem(include_bytes!("../../testdata/doc-ca.pem")).unwrap()
    }

    fn base() -> ClientConfigBuilder {
        ClientConfig::builder().trust_anchors(anchors())
    }

    fn key(id: &str, chain: Vec<Vec<u8>>) -> ClientKey {
        ClientKey {
            key_id: id.into(),
            certificate_chain: chain,
            signature_schemes: Vec::new(),
        }
    }

    /// Each rule refuses at build time with its own error; the defaults pass.
    #[test]
    fn build_checks_each_rule() {
        use ConfigError as E;
        assert!(base().build().is_ok());
        let psk = |identity: Vec<u8>, hash| ExternalPsk { identity, hash };
        let cases: Vec<(ClientConfigBuilder, ConfigError)> = vec![
            (base().cipher_suites([]), E::NoCipherSuites),
            (
                base().cipher_suites([CipherSuite::from(0x1304)]),
                E::UnsupportedCipherSuite(0x1304),
            ),
            (
                base().cipher_suites([
                    CipherSuite::TlsAes128GcmSha256,
                    CipherSuite::TlsAes128GcmSha256,
                ]),
                E::DuplicateCipherSuite(0x1301),
            ),
            (base().groups([]), E::NoGroups),
            (
                base().groups([NamedGroup::from(0x0019)]),
                E::UnsupportedGroup(0x0019),
            ),
            (
                base().groups([NamedGroup::X25519, NamedGroup::X25519]),
                E::DuplicateGroup(0x001d),
            ),
            (
                base().key_shares(4),
                E::KeyShares {
                    requested: 4,
                    groups: 3,
                },
            ),
            (
                base().key_shares(0),
                E::KeyShares {
                    requested: 0,
                    groups: 3,
                },
            ),
            (base().signature_schemes([]), E::NoSignatureSchemes),
            (
                base().signature_schemes([SignatureScheme::from(0x0201)]),
                E::UnsupportedSignatureScheme(0x0201),
            ),
            (
                base().alpn_protocols(["h2", ""]),
                E::AlpnProtocolLength { index: 1, len: 0 },
            ),
            (
                base().alpn_protocols([vec![b'a'; 256]]),
                E::AlpnProtocolLength { index: 0, len: 256 },
            ),
            (
                base().alpn_protocols(["h2", "h2"]),
                E::DuplicateAlpnProtocol("h2".into()),
            ),
            (base().record_size_limit(63), E::RecordSizeLimit(63)),
            (base().record_size_limit(16386), E::RecordSizeLimit(16386)),
            (
                base().client_key(key("", vec![vec![1]])),
                E::EmptyClientKeyId,
            ),
            (
                base().client_key(key("k", vec![])),
                E::ClientKeyWithoutCertificate("k".into()),
            ),
            (
                base().external_psk(psk(Vec::new(), HashAlg::Sha256)),
                E::PskIdentityLength(0),
            ),
            (
                base()
                    .cipher_suites([CipherSuite::TlsAes128GcmSha256])
                    .external_psk(psk(b"p".to_vec(), HashAlg::Sha384)),
                E::NoSuiteForPskHash(HashAlg::Sha384),
            ),
            (
                base()
                    .external_psk(psk(b"p".to_vec(), HashAlg::Sha256))
                    .psk_modes([]),
                E::NoPskModes,
            ),
            (base().early_data(b"x".to_vec()), E::EarlyDataWithoutPsk),
            (
                base()
                    .ticket_store(Arc::new(MemoryTicketStore::default()))
                    .resume(false)
                    .early_data(b"x".to_vec()),
                E::EarlyDataWithoutPsk,
            ),
            (
                base()
                    .ticket_store(Arc::new(MemoryTicketStore::default()))
                    .early_data(Vec::new()),
                E::EmptyEarlyData,
            ),
            (ClientConfig::builder(), E::NoTrustAnchors),
        ];
        for (b, want) in cases {
            assert_eq!(b.build().unwrap_err(), want);
        }
        // What the rules allow.
        assert!(ClientConfig::builder()
            .external_psk(psk(b"p".to_vec(), HashAlg::Sha256))
            .early_data(b"x".to_vec())
            .build()
            .is_ok());
        assert!(base()
            .ticket_store(Arc::new(MemoryTicketStore::default()))
            .early_data(b"x".to_vec())
            .record_size_limit(64)
            .alpn_protocols(["h2", "http/1.1"])
            .client_key(key("k", vec![vec![1]]))
            .build()
            .is_ok());
    }

    /// The core's randomness is the configured source: two connections with the same fixed
    /// source send the same ClientHello random; with the system's, they differ.
    #[test]
    fn randomness_is_injected() {
        struct Fixed;
        impl RandomSource for Fixed {
            fn fill(&self, buf: &mut [u8]) -> Result<(), RandomError> {
                buf.fill(0x42);
                Ok(())
            }
        }
        let random_of = |cfg: &Arc<ClientConfig>| {
            let mut conn = crate::ClientConnection::new(cfg.clone(), "localhost", 443, false)
                .expect("ClientHello");
            let record = conn.take_tls();
            // Record header (5), handshake header (4), legacy_version (2), then random.
            record[11..43].to_vec()
        };
        let fixed = Arc::new(
            base()
                .ephemeral(Ephemeral::Engine)
                .random_source(Arc::new(Fixed))
                .build()
                .unwrap(),
        );
        assert_eq!(random_of(&fixed), random_of(&fixed));
        let system = Arc::new(base().ephemeral(Ephemeral::Engine).build().unwrap());
        assert_ne!(random_of(&system), random_of(&system));
    }
}
