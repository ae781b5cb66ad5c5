//! ClientHello (RFC 8446 §4.1.2), ServerHello and HelloRetryRequest (§4.1.3, §4.1.4).
//!
//! The [`ClientHello`] view records the byte offsets the Crypto Service needs to splice
//! values into the bytes it received (docs/design.md §4.2): [`complete_client_hello`] fills the
//! random and the empty key_share entries, [`truncated_for_binders`] gives the
//! PartialClientHello the binders are computed over, and [`set_binders`] writes them.
//! [`ClientHelloBuilder`] is the engine's encoder.

use super::codec::{
    patch_len, put_bytes_u16, put_bytes_u8, put_u16, put_u16_prefixed, put_u32, put_u8,
    put_u8_prefixed,
};
use super::extensions::{
    self, find, read_extensions, Extension, ExtensionContext, KeyShareEntry, OfferedPsks,
};
use super::handshake::{encode_handshake, HandshakeMessage, HEADER_LEN};
use super::limits::MAX_CIPHER_SUITES;
use super::{
    CipherSuite, ExtensionType, HandshakeType, NamedGroup, PskKeyExchangeMode, SignatureScheme,
    WireError, HELLO_RETRY_REQUEST_RANDOM, TLS12, TLS13,
};

/// Offset of `random` in a ClientHello or ServerHello message (header + legacy_version).
pub const RANDOM_OFFSET: usize = HEADER_LEN + 2;

/// A parsed ClientHello, borrowing the message bytes. Offsets are relative to the first
/// byte of the 4-byte handshake header.
#[derive(Clone, Debug)]
pub struct ClientHello<'a> {
    /// The whole message, header included.
    pub raw: &'a [u8],
    pub legacy_version: u16,
    pub random: &'a [u8; 32],
    pub legacy_session_id: &'a [u8],
    pub cipher_suites: Vec<CipherSuite>,
    /// Every extension, known or not, in wire order.
    pub extensions: Vec<Extension<'a>>,
    pub server_names: Option<Vec<&'a [u8]>>,
    pub supported_versions: Vec<u16>,
    pub supported_groups: Option<Vec<NamedGroup>>,
    pub signature_algorithms: Option<Vec<SignatureScheme>>,
    pub signature_algorithms_cert: Option<Vec<SignatureScheme>>,
    pub alpn_protocols: Option<Vec<&'a [u8]>>,
    /// key_share entries (empty key_exchange = placeholder for the CS).
    pub key_shares: Option<Vec<KeyShareEntry<'a>>>,
    pub psk_modes: Option<Vec<PskKeyExchangeMode>>,
    pub early_data: bool,
    pub cookie: Option<&'a [u8]>,
    pub post_handshake_auth: bool,
    pub record_size_limit: Option<u16>,
    pub pre_shared_key: Option<OfferedPsks<'a>>,
    /// Offset of the extensions block's u16 length.
    pub extensions_len_offset: usize,
}

impl<'a> ClientHello<'a> {
    /// Parses one complete ClientHello message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(raw, HandshakeType::ClientHello, "ClientHello")?;
        Self::from_message(&m)
    }

    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::ClientHello, "ClientHello")?;
        let mut r = m.body_reader("ClientHello");
        // §4.1.2: "the legacy_version field MUST be set to 0x0303".
        let legacy_version = r.u16()?;
        if legacy_version != TLS12 {
            return Err(WireError::invalid(format!(
                "ClientHello legacy_version {legacy_version:#06x}, expected 0x0303"
            )));
        }
        let random = r.array::<32>()?;
        let legacy_session_id = r.sub_u8("legacy_session_id")?.rest();
        if legacy_session_id.len() > 32 {
            return Err(WireError::invalid(
                "ClientHello legacy_session_id over 32 bytes",
            ));
        }
        let mut suites = r.sub_u16("cipher_suites")?;
        if suites.is_empty() || suites.remaining() % 2 != 0 {
            return Err(WireError::invalid(
                "ClientHello cipher_suites must be non-empty with an even length",
            ));
        }
        if suites.remaining() / 2 > MAX_CIPHER_SUITES {
            return Err(WireError::TooMany {
                what: "cipher_suites",
                max: MAX_CIPHER_SUITES,
            });
        }
        let mut cipher_suites = Vec::with_capacity(suites.remaining() / 2);
        while !suites.is_empty() {
            cipher_suites.push(CipherSuite::from(suites.u16()?));
        }
        // §4.1.2: legacy_compression_methods "MUST contain exactly one byte, set to zero".
        let compression = r.sub_u8("legacy_compression_methods")?.rest();
        if compression != [0] {
            return Err(WireError::invalid(
                "ClientHello legacy_compression_methods must be exactly [0]",
            ));
        }
        let extensions_len_offset = r.offset();
        let exts = read_extensions(&mut r, ExtensionContext::ClientHello)?;
        r.expect_empty("ClientHello")?;

        // §4.2.11: "The "pre_shared_key" extension MUST be the last extension in the
        // ClientHello".
        if let Some(pos) = exts
            .iter()
            .position(|e| e.typ == ExtensionType::PreSharedKey)
        {
            if pos + 1 != exts.len() {
                return Err(WireError::PreSharedKeyNotLast);
            }
        }

        let get = |t| find(&exts, t);
        // §4.2.1: a TLS 1.3 ClientHello carries supported_versions, offering 0x0304.
        let supported_versions = match get(ExtensionType::SupportedVersions) {
            Some(e) => extensions::client_versions(e)?,
            None => {
                return Err(WireError::invalid(
                    "ClientHello without supported_versions (not TLS 1.3)",
                ))
            }
        };
        if !supported_versions.contains(&TLS13) {
            return Err(WireError::invalid(
                "ClientHello supported_versions does not offer TLS 1.3",
            ));
        }
        let server_names = get(ExtensionType::ServerName)
            .map(extensions::server_names)
            .transpose()?;
        let supported_groups = get(ExtensionType::SupportedGroups)
            .map(extensions::named_groups)
            .transpose()?;
        let signature_algorithms = get(ExtensionType::SignatureAlgorithms)
            .map(extensions::signature_schemes)
            .transpose()?;
        let signature_algorithms_cert = get(ExtensionType::SignatureAlgorithmsCert)
            .map(extensions::signature_schemes)
            .transpose()?;
        let alpn_protocols = get(ExtensionType::ApplicationLayerProtocolNegotiation)
            .map(extensions::alpn_protocols)
            .transpose()?;
        let key_shares = get(ExtensionType::KeyShare)
            .map(extensions::client_key_shares)
            .transpose()?;
        let psk_modes = get(ExtensionType::PskKeyExchangeModes)
            .map(extensions::psk_modes)
            .transpose()?;
        let early_data = match get(ExtensionType::EarlyData) {
            Some(e) => {
                extensions::expect_empty_body(e, "early_data")?;
                true
            }
            None => false,
        };
        let cookie = get(ExtensionType::Cookie)
            .map(extensions::cookie)
            .transpose()?;
        let post_handshake_auth = match get(ExtensionType::PostHandshakeAuth) {
            Some(e) => {
                extensions::expect_empty_body(e, "post_handshake_auth")?;
                true
            }
            None => false,
        };
        let record_size_limit = get(ExtensionType::RecordSizeLimit)
            .map(extensions::record_size_limit)
            .transpose()?;
        let pre_shared_key = get(ExtensionType::PreSharedKey)
            .map(extensions::offered_psks)
            .transpose()?;

        // §9.2: a ClientHello "containing a "key_share" extension ... MUST also contain a
        // "supported_groups" extension".
        if key_shares.is_some() && supported_groups.is_none() {
            return Err(WireError::invalid(
                "ClientHello has key_share without supported_groups",
            ));
        }
        // §4.2.8: "Each KeyShareEntry value MUST correspond to a group offered in the
        // "supported_groups" extension" (servers MAY check; the CS does).
        if let (Some(shares), Some(groups)) = (&key_shares, &supported_groups) {
            if let Some(s) = shares.iter().find(|s| !groups.contains(&s.group)) {
                return Err(WireError::invalid(format!(
                    "key_share group {:#06x} is not in supported_groups",
                    s.group.get()
                )));
            }
        }
        // §4.2.9: a client offering pre_shared_key MUST also send psk_key_exchange_modes.
        if pre_shared_key.is_some() && psk_modes.is_none() {
            return Err(WireError::invalid(
                "ClientHello offers pre_shared_key without psk_key_exchange_modes",
            ));
        }
        // §4.2.10: early data is only possible with a PSK.
        if early_data && pre_shared_key.is_none() {
            return Err(WireError::invalid(
                "ClientHello offers early_data without pre_shared_key",
            ));
        }

        Ok(Self {
            raw: m.raw,
            legacy_version,
            random,
            legacy_session_id,
            cipher_suites,
            extensions: exts,
            server_names,
            supported_versions,
            supported_groups,
            signature_algorithms,
            signature_algorithms_cert,
            alpn_protocols,
            key_shares,
            psk_modes,
            early_data,
            cookie,
            post_handshake_auth,
            record_size_limit,
            pre_shared_key,
            extensions_len_offset,
        })
    }

    /// The extension of type `typ`, if present.
    pub fn extension(&self, typ: ExtensionType) -> Option<&Extension<'a>> {
        find(&self.extensions, typ)
    }

    /// The key_share entries left empty for the CS to fill, in wire order.
    pub fn placeholder_key_shares(&self) -> Vec<KeyShareEntry<'a>> {
        self.key_shares
            .iter()
            .flatten()
            .filter(|e| e.is_placeholder())
            .copied()
            .collect()
    }

    /// Offset of the random (always [`RANDOM_OFFSET`]).
    pub fn random_offset(&self) -> usize {
        RANDOM_OFFSET
    }

    /// Fails if a key_share entry is still empty: RFC 8446 §4.2.8 requires
    /// `key_exchange<1..2^16-1>` on the wire (the engine checks what the CS returned).
    pub fn ensure_complete(&self) -> Result<(), WireError> {
        match self.placeholder_key_shares().first() {
            Some(e) => Err(WireError::invalid(format!(
                "key_share entry for group {:#06x} is still empty",
                e.group.get()
            ))),
            None => Ok(()),
        }
    }
}

/// Fills a ClientHello the engine sent to the CS (docs/design.md §4.2): writes `random` (if
/// given) and inserts, for each key_share entry with an empty key_exchange in wire order,
/// the next public key of `fills`, whose group must match. Every length that encloses an
/// inserted key (entry, client_shares, extension, extensions block, handshake header) is
/// updated; every other byte stays as it was. `fills` must match the empty entries exactly.
pub fn complete_client_hello(
    raw: &[u8],
    random: Option<&[u8; 32]>,
    fills: &[(NamedGroup, Vec<u8>)],
) -> Result<Vec<u8>, WireError> {
    let ch = ClientHello::parse(raw)?;
    let placeholders = ch.placeholder_key_shares();
    if placeholders.len() != fills.len() {
        return Err(WireError::invalid(format!(
            "{} key shares to fill but {} public keys given",
            placeholders.len(),
            fills.len()
        )));
    }
    for (entry, (group, key)) in placeholders.iter().zip(fills) {
        if entry.group != *group {
            return Err(WireError::invalid(format!(
                "key share to fill is for group {:#06x}, public key given for {:#06x}",
                entry.group.get(),
                group.get()
            )));
        }
        // §4.2.8: key_exchange<1..2^16-1>, with the size fixed by the group (§4.2.8.1/2).
        let expected = group.public_key_len();
        if key.is_empty() || expected.is_some_and(|n| n != key.len()) {
            return Err(WireError::invalid(format!(
                "public key of {} bytes for group {:#06x}",
                key.len(),
                group.get()
            )));
        }
    }

    let added: usize = fills.iter().map(|(_, k)| k.len()).sum();
    let mut out = Vec::with_capacity(raw.len() + added);
    let mut copied = 0;
    for (entry, (_, key)) in placeholders.iter().zip(fills) {
        // Copy up to and including the entry's (zero) length field, then the key.
        let len_at = entry.key_exchange_len_offset();
        out.extend_from_slice(&raw[copied..len_at]);
        put_bytes_u16(&mut out, "key_exchange", key)?;
        copied = len_at + 2;
    }
    out.extend_from_slice(&raw[copied..]);

    if added > 0 {
        // The key_share extension and everything enclosing it start before the first
        // inserted key, so their offsets in `out` are those of `raw`.
        let ext = ch
            .extension(ExtensionType::KeyShare)
            .ok_or_else(|| WireError::invalid("no key_share extension"))?;
        let grow = |out: &mut Vec<u8>, at: usize, width: usize, name| {
            let old = read_len(raw, at, width);
            patch_len(out, at, width, old + added, name)
        };
        grow(&mut out, ext.body_offset(), 2, "client_shares")?;
        grow(&mut out, ext.offset + 2, 2, "key_share extension")?;
        grow(&mut out, ch.extensions_len_offset, 2, "extensions")?;
        grow(&mut out, 1, 3, "ClientHello")?;
    }
    if let Some(random) = random {
        out[RANDOM_OFFSET..RANDOM_OFFSET + 32].copy_from_slice(random);
    }
    Ok(out)
}

/// A big-endian length of `width` bytes at `at`; `at` comes from a successful parse of
/// `buf`, so it is in bounds.
fn read_len(buf: &[u8], at: usize, width: usize) -> usize {
    buf[at..at + width]
        .iter()
        .fold(0usize, |acc, &b| (acc << 8) | usize::from(b))
}

/// Offset of the binders list (its u16 length) in a ClientHello with pre_shared_key.
pub fn binders_offset(raw: &[u8]) -> Result<usize, WireError> {
    let ch = ClientHello::parse(raw)?;
    ch.pre_shared_key
        .map(|p| p.binders_offset)
        .ok_or_else(|| WireError::invalid("ClientHello has no pre_shared_key extension"))
}

/// The PartialClientHello of RFC 8446 §4.2.11.2: the message up to, not including, the
/// binders list (its length field excluded), over which each binder is computed.
pub fn truncated_for_binders(raw: &[u8]) -> Result<&[u8], WireError> {
    let at = binders_offset(raw)?;
    Ok(&raw[..at])
}

/// Overwrites the placeholder binders of a ClientHello in place, keeping every length: each
/// binder must have the length of the one it replaces (RFC 8446 §4.2.11.2).
pub fn set_binders<B: AsRef<[u8]>>(raw: &mut [u8], binders: &[B]) -> Result<(), WireError> {
    let ranges: Vec<_> = {
        let ch = ClientHello::parse(raw)?;
        let psk = ch
            .pre_shared_key
            .ok_or_else(|| WireError::invalid("ClientHello has no pre_shared_key extension"))?;
        if psk.binders.len() != binders.len() {
            return Err(WireError::BinderCountMismatch {
                identities: psk.binders.len(),
                binders: binders.len(),
            });
        }
        psk.binders.iter().map(|b| b.range()).collect()
    };
    for (i, (range, binder)) in ranges.iter().zip(binders).enumerate() {
        if range.len() != binder.as_ref().len() {
            return Err(WireError::invalid(format!(
                "binder {i} has {} bytes, the ClientHello reserves {}",
                binder.as_ref().len(),
                range.len()
            )));
        }
    }
    for (range, binder) in ranges.into_iter().zip(binders) {
        raw[range].copy_from_slice(binder.as_ref());
    }
    Ok(())
}

/// Encodes a TLS 1.3 ServerHello (RFC 8446 §4.1.3) selecting `suite`, with a key share for
/// `group`, echoing `session_id`: what a server sends, for test servers and simulators (the
/// engine and the CS only parse ServerHellos).
pub fn encode_server_hello(
    random: &[u8; 32],
    session_id: &[u8],
    suite: CipherSuite,
    group: NamedGroup,
    key_exchange: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(96 + key_exchange.len());
    put_u16(&mut body, TLS12);
    body.extend_from_slice(random);
    put_bytes_u8(&mut body, "legacy_session_id_echo", session_id)?;
    put_u16(&mut body, suite.get());
    put_u8(&mut body, 0);
    put_u16_prefixed(&mut body, "extensions", |b| {
        put_u16(b, ExtensionType::KeyShare.get());
        put_u16_prefixed(b, "key_share", |b| {
            put_u16(b, group.get());
            put_bytes_u16(b, "key_exchange", key_exchange)
        })?;
        put_u16(b, ExtensionType::SupportedVersions.get());
        put_u16_prefixed(b, "supported_versions", |b| {
            put_u16(b, TLS13);
            Ok(())
        })
    })?;
    encode_handshake(HandshakeType::ServerHello, &body)
}

/// A parsed ServerHello or HelloRetryRequest (same message type; RFC 8446 §4.1.3 tells them
/// apart by the random).
#[derive(Clone, Debug)]
pub struct ServerHello<'a> {
    pub raw: &'a [u8],
    pub legacy_version: u16,
    pub random: &'a [u8; 32],
    pub legacy_session_id_echo: &'a [u8],
    pub cipher_suite: CipherSuite,
    pub extensions: Vec<Extension<'a>>,
    /// supported_versions' selected_version (always 0x0304 once parsed).
    pub selected_version: u16,
    /// ServerHello key_share (None for a HelloRetryRequest, or a PSK-only handshake).
    pub key_share: Option<KeyShareEntry<'a>>,
    /// HelloRetryRequest key_share: the group the server asks for.
    pub selected_group: Option<NamedGroup>,
    /// ServerHello pre_shared_key: the index of the selected identity.
    pub selected_identity: Option<u16>,
    /// HelloRetryRequest cookie, to echo in the second ClientHello.
    pub cookie: Option<&'a [u8]>,
}

impl<'a> ServerHello<'a> {
    /// Parses one complete ServerHello or HelloRetryRequest message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(raw, HandshakeType::ServerHello, "ServerHello")?;
        Self::from_message(&m)
    }

    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::ServerHello, "ServerHello")?;
        let mut r = m.body_reader("ServerHello");
        // §4.1.3: legacy_version MUST be 0x0303; TLS 1.3 is negotiated in supported_versions.
        let legacy_version = r.u16()?;
        if legacy_version != TLS12 {
            return Err(WireError::invalid(format!(
                "ServerHello legacy_version {legacy_version:#06x}, expected 0x0303"
            )));
        }
        let random = r.array::<32>()?;
        let legacy_session_id_echo = r.sub_u8("legacy_session_id_echo")?.rest();
        if legacy_session_id_echo.len() > 32 {
            return Err(WireError::invalid(
                "ServerHello legacy_session_id_echo over 32 bytes",
            ));
        }
        let cipher_suite = CipherSuite::from(r.u16()?);
        // §4.1.3: legacy_compression_method "MUST have the value 0".
        if r.u8()? != 0 {
            return Err(WireError::invalid(
                "ServerHello legacy_compression_method must be 0",
            ));
        }
        let is_hrr = *random == HELLO_RETRY_REQUEST_RANDOM;
        let ctx = if is_hrr {
            ExtensionContext::HelloRetryRequest
        } else {
            ExtensionContext::ServerHello
        };
        let exts = read_extensions(&mut r, ctx)?;
        r.expect_empty(ctx.name())?;

        let get = |t| find(&exts, t);
        // §4.1.3/§4.2.1: a TLS 1.3 server MUST send supported_versions selecting 0x0304.
        let selected_version = match get(ExtensionType::SupportedVersions) {
            Some(e) => extensions::selected_version(e)?,
            None => {
                return Err(WireError::invalid(format!(
                    "{} without supported_versions (not TLS 1.3)",
                    ctx.name()
                )))
            }
        };
        if selected_version != TLS13 {
            return Err(WireError::invalid(format!(
                "{} selects version {selected_version:#06x}, expected 0x0304",
                ctx.name()
            )));
        }
        let (key_share, selected_group) = match get(ExtensionType::KeyShare) {
            Some(e) if is_hrr => (None, Some(extensions::hrr_selected_group(e)?)),
            Some(e) => (Some(extensions::server_key_share(e)?), None),
            None => (None, None),
        };
        let selected_identity = get(ExtensionType::PreSharedKey)
            .map(extensions::selected_identity)
            .transpose()?;
        let cookie = get(ExtensionType::Cookie)
            .map(extensions::cookie)
            .transpose()?;
        Ok(Self {
            raw: m.raw,
            legacy_version,
            random,
            legacy_session_id_echo,
            cipher_suite,
            extensions: exts,
            selected_version,
            key_share,
            selected_group,
            selected_identity,
            cookie,
        })
    }

    /// RFC 8446 §4.1.3: a HelloRetryRequest is a ServerHello whose random is
    /// SHA-256("HelloRetryRequest").
    pub fn is_hello_retry_request(&self) -> bool {
        *self.random == HELLO_RETRY_REQUEST_RANDOM
    }

    pub fn extension(&self, typ: ExtensionType) -> Option<&Extension<'a>> {
        find(&self.extensions, typ)
    }
}

/// One PSK offered by [`ClientHelloBuilder`]: identity, obfuscated_ticket_age, and the
/// length of its binder (the hash length of the PSK's suite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedPsk {
    pub identity: Vec<u8>,
    pub obfuscated_ticket_age: u32,
    pub binder_len: usize,
}

/// The engine's ClientHello encoder. Extensions are written in this order: server_name,
/// supported_versions, supported_groups, signature_algorithms, signature_algorithms_cert,
/// key_share, ALPN, psk_key_exchange_modes, post_handshake_auth, early_data, cookie,
/// record_size_limit, padding, then pre_shared_key last (RFC 8446 §4.2.11) with zero-filled
/// binders for the CS (or the engine) to compute over the truncated message.
#[derive(Clone, Debug)]
pub struct ClientHelloBuilder {
    random: [u8; 32],
    legacy_session_id: Vec<u8>,
    cipher_suites: Vec<CipherSuite>,
    server_name: Option<Vec<u8>>,
    supported_versions: Vec<u16>,
    supported_groups: Vec<NamedGroup>,
    signature_algorithms: Vec<SignatureScheme>,
    signature_algorithms_cert: Vec<SignatureScheme>,
    key_shares: Vec<(NamedGroup, Vec<u8>)>,
    alpn: Vec<Vec<u8>>,
    psk_modes: Vec<PskKeyExchangeMode>,
    post_handshake_auth: bool,
    early_data: bool,
    cookie: Option<Vec<u8>>,
    record_size_limit: Option<u16>,
    padding: Option<usize>,
    psks: Vec<OfferedPsk>,
}

impl ClientHelloBuilder {
    /// A ClientHello offering TLS 1.3 only, the supported cipher suites, and nothing else
    /// yet. `random` is the engine's random (the CS's freshness input under LURK).
    pub fn new(random: [u8; 32]) -> Self {
        Self {
            random,
            legacy_session_id: Vec::new(),
            cipher_suites: CipherSuite::SUPPORTED.to_vec(),
            server_name: None,
            supported_versions: vec![TLS13],
            supported_groups: Vec::new(),
            signature_algorithms: Vec::new(),
            signature_algorithms_cert: Vec::new(),
            key_shares: Vec::new(),
            alpn: Vec::new(),
            psk_modes: Vec::new(),
            post_handshake_auth: false,
            early_data: false,
            cookie: None,
            record_size_limit: None,
            padding: None,
            psks: Vec::new(),
        }
    }

    /// The builder of the second ClientHello (RFC 8446 §4.1.2): this one without early_data,
    /// with the HelloRetryRequest's `cookie`, with `share` as the only key share when the HRR
    /// names a group (else the same shares), and `psks` in place of the offered PSKs (the
    /// same identities in the same order, those unusable with the HRR's suite left out, with
    /// new ages). Everything else is kept, so it encodes to the same bytes;
    /// [`check_second_client_hello`](super::check_second_client_hello) is the rule.
    pub fn retry(
        &self,
        cookie: Option<&[u8]>,
        share: Option<(NamedGroup, &[u8])>,
        psks: Vec<OfferedPsk>,
    ) -> Self {
        let mut b = self.clone();
        b.early_data = false;
        b.cookie = cookie.map(<[u8]>::to_vec);
        if let Some((group, key)) = share {
            b.key_shares = vec![(group, key.to_vec())];
        }
        b.psks = psks;
        b
    }

    /// The PSKs offered, in order.
    pub fn psks(&self) -> &[OfferedPsk] {
        &self.psks
    }

    /// legacy_session_id: 32 random bytes in middlebox compatibility mode (RFC 8446
    /// Appendix D.4), empty otherwise.
    pub fn legacy_session_id(mut self, id: &[u8]) -> Self {
        self.legacy_session_id = id.to_vec();
        self
    }

    pub fn cipher_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.cipher_suites = suites.to_vec();
        self
    }

    /// server_name with one host_name (RFC 6066 §3).
    pub fn server_name(mut self, host: &str) -> Self {
        self.server_name = Some(host.as_bytes().to_vec());
        self
    }

    pub fn supported_versions(mut self, versions: &[u16]) -> Self {
        self.supported_versions = versions.to_vec();
        self
    }

    pub fn supported_groups(mut self, groups: &[NamedGroup]) -> Self {
        self.supported_groups = groups.to_vec();
        self
    }

    pub fn signature_algorithms(mut self, schemes: &[SignatureScheme]) -> Self {
        self.signature_algorithms = schemes.to_vec();
        self
    }

    /// signature_algorithms_cert; not sent when empty.
    pub fn signature_algorithms_cert(mut self, schemes: &[SignatureScheme]) -> Self {
        self.signature_algorithms_cert = schemes.to_vec();
        self
    }

    /// Adds a key_share entry; an empty `key_exchange` asks the CS to generate it.
    pub fn key_share(mut self, group: NamedGroup, key_exchange: &[u8]) -> Self {
        self.key_shares.push((group, key_exchange.to_vec()));
        self
    }

    pub fn alpn_protocols(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    pub fn psk_modes(mut self, modes: &[PskKeyExchangeMode]) -> Self {
        self.psk_modes = modes.to_vec();
        self
    }

    pub fn post_handshake_auth(mut self, offer: bool) -> Self {
        self.post_handshake_auth = offer;
        self
    }

    pub fn early_data(mut self, offer: bool) -> Self {
        self.early_data = offer;
        self
    }

    /// The cookie of a HelloRetryRequest, echoed in the second ClientHello (§4.2.2).
    pub fn cookie(mut self, cookie: &[u8]) -> Self {
        self.cookie = Some(cookie.to_vec());
        self
    }

    pub fn record_size_limit(mut self, limit: u16) -> Self {
        self.record_size_limit = Some(limit);
        self
    }

    /// A padding extension (RFC 7685) of `len` zero bytes, before pre_shared_key.
    pub fn padding(mut self, len: Option<usize>) -> Self {
        self.padding = len;
        self
    }

    /// Offers a PSK; its binder is written as `binder_len` zero bytes.
    pub fn psk(mut self, identity: &[u8], obfuscated_ticket_age: u32, binder_len: usize) -> Self {
        self.psks.push(OfferedPsk {
            identity: identity.to_vec(),
            obfuscated_ticket_age,
            binder_len,
        });
        self
    }

    /// Encodes the ClientHello message (header included). The result parses with
    /// [`ClientHello::parse`]; the rules that parsing checks are checked here first.
    pub fn build(&self) -> Result<Vec<u8>, WireError> {
        self.check()?;
        let mut body = Vec::new();
        put_u16(&mut body, TLS12);
        body.extend_from_slice(&self.random);
        put_bytes_u8(&mut body, "legacy_session_id", &self.legacy_session_id)?;
        put_u16_prefixed(&mut body, "cipher_suites", |b| {
            for s in &self.cipher_suites {
                put_u16(b, s.get());
            }
            Ok(())
        })?;
        put_bytes_u8(&mut body, "legacy_compression_methods", &[0])?;
        put_u16_prefixed(&mut body, "extensions", |b| self.encode_extensions(b))?;
        encode_handshake(HandshakeType::ClientHello, &body)
    }

    fn check(&self) -> Result<(), WireError> {
        if self.legacy_session_id.len() > 32 {
            return Err(WireError::invalid("legacy_session_id over 32 bytes"));
        }
        if self.cipher_suites.is_empty() {
            return Err(WireError::invalid("no cipher suite"));
        }
        if !self.supported_versions.contains(&TLS13) {
            return Err(WireError::invalid("supported_versions must offer TLS 1.3"));
        }
        for (i, (g, _)) in self.key_shares.iter().enumerate() {
            if self.key_shares[..i].iter().any(|(h, _)| h == g) {
                return Err(WireError::invalid("key_share: a group offered twice"));
            }
            // §9.2 and §4.2.8: key shares only for groups of supported_groups.
            if !self.supported_groups.contains(g) {
                return Err(WireError::invalid(
                    "key_share group not in supported_groups",
                ));
            }
        }
        if self.alpn.iter().any(|p| p.is_empty()) {
            return Err(WireError::invalid("ALPN: empty protocol name"));
        }
        if self.cookie.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(WireError::invalid("cookie: empty"));
        }
        if self.record_size_limit.is_some_and(|l| l < 64) {
            return Err(WireError::invalid("record_size_limit below 64"));
        }
        if !self.psks.is_empty() && self.psk_modes.is_empty() {
            return Err(WireError::invalid(
                "pre_shared_key requires psk_key_exchange_modes (RFC 8446 §4.2.9)",
            ));
        }
        if self.early_data && self.psks.is_empty() {
            return Err(WireError::invalid(
                "early_data requires pre_shared_key (RFC 8446 §4.2.10)",
            ));
        }
        for p in &self.psks {
            if p.identity.is_empty() {
                return Err(WireError::invalid("pre_shared_key: empty identity"));
            }
            if !(32..=255).contains(&p.binder_len) {
                return Err(WireError::invalid(
                    "pre_shared_key: binder length not in 32..=255",
                ));
            }
        }
        Ok(())
    }

    fn encode_extensions(&self, b: &mut Vec<u8>) -> Result<(), WireError> {
        if let Some(host) = &self.server_name {
            ext(b, ExtensionType::ServerName, |b| {
                put_u16_prefixed(b, "server_name list", |b| {
                    put_u8(b, 0); // host_name
                    put_bytes_u16(b, "host_name", host)
                })
            })?;
        }
        ext(b, ExtensionType::SupportedVersions, |b| {
            put_u8_prefixed(b, "versions", |b| {
                for v in &self.supported_versions {
                    put_u16(b, *v);
                }
                Ok(())
            })
        })?;
        if !self.supported_groups.is_empty() {
            ext(b, ExtensionType::SupportedGroups, |b| {
                put_u16_prefixed(b, "named_group_list", |b| {
                    for g in &self.supported_groups {
                        put_u16(b, g.get());
                    }
                    Ok(())
                })
            })?;
        }
        for (typ, list) in [
            (
                ExtensionType::SignatureAlgorithms,
                &self.signature_algorithms,
            ),
            (
                ExtensionType::SignatureAlgorithmsCert,
                &self.signature_algorithms_cert,
            ),
        ] {
            if !list.is_empty() {
                ext(b, typ, |b| {
                    put_u16_prefixed(b, "supported_signature_algorithms", |b| {
                        for s in list {
                            put_u16(b, s.get());
                        }
                        Ok(())
                    })
                })?;
            }
        }
        if !self.key_shares.is_empty() {
            ext(b, ExtensionType::KeyShare, |b| {
                put_u16_prefixed(b, "client_shares", |b| {
                    for (g, key) in &self.key_shares {
                        put_u16(b, g.get());
                        put_bytes_u16(b, "key_exchange", key)?;
                    }
                    Ok(())
                })
            })?;
        }
        if !self.alpn.is_empty() {
            ext(b, ExtensionType::ApplicationLayerProtocolNegotiation, |b| {
                put_u16_prefixed(b, "protocol_name_list", |b| {
                    for p in &self.alpn {
                        put_bytes_u8(b, "protocol_name", p)?;
                    }
                    Ok(())
                })
            })?;
        }
        if !self.psk_modes.is_empty() {
            ext(b, ExtensionType::PskKeyExchangeModes, |b| {
                put_u8_prefixed(b, "ke_modes", |b| {
                    for m in &self.psk_modes {
                        put_u8(b, m.get());
                    }
                    Ok(())
                })
            })?;
        }
        if self.post_handshake_auth {
            ext(b, ExtensionType::PostHandshakeAuth, |_| Ok(()))?;
        }
        if self.early_data {
            ext(b, ExtensionType::EarlyData, |_| Ok(()))?;
        }
        if let Some(c) = &self.cookie {
            ext(b, ExtensionType::Cookie, |b| put_bytes_u16(b, "cookie", c))?;
        }
        if let Some(l) = self.record_size_limit {
            ext(b, ExtensionType::RecordSizeLimit, |b| {
                put_u16(b, l);
                Ok(())
            })?;
        }
        if let Some(n) = self.padding {
            ext(b, ExtensionType::Padding, |b| {
                b.resize(b.len() + n, 0);
                Ok(())
            })?;
        }
        if !self.psks.is_empty() {
            ext(b, ExtensionType::PreSharedKey, |b| {
                put_u16_prefixed(b, "identities", |b| {
                    for p in &self.psks {
                        put_bytes_u16(b, "identity", &p.identity)?;
                        put_u32(b, p.obfuscated_ticket_age);
                    }
                    Ok(())
                })?;
                put_u16_prefixed(b, "binders", |b| {
                    for p in &self.psks {
                        put_bytes_u8(b, "binder", &vec![0; p.binder_len])?;
                    }
                    Ok(())
                })
            })?;
        }
        Ok(())
    }
}

/// Writes one extension: type, then the u16-prefixed body written by `body`.
fn ext<F>(b: &mut Vec<u8>, typ: ExtensionType, body: F) -> Result<(), WireError>
where
    F: FnOnce(&mut Vec<u8>) -> Result<(), WireError>,
{
    put_u16(b, typ.get());
    put_u16_prefixed(b, "extension", body)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_vectors::{self, client_hellos, rfc8448_message};

    /// The message with every key_share key_exchange made empty (what the engine sends to
    /// the CS), rebuilt by hand from the parsed offsets.
    fn blank_key_shares(raw: &[u8]) -> Vec<u8> {
        let ch = ClientHello::parse(raw).unwrap();
        let shares = ch.key_shares.clone().unwrap_or_default();
        let removed: usize = shares.iter().map(|s| s.key_exchange.len()).sum();
        let mut out = Vec::new();
        let mut copied = 0;
        for s in &shares {
            out.extend_from_slice(&raw[copied..s.key_exchange_len_offset()]);
            out.extend_from_slice(&[0, 0]);
            copied = s.key_exchange_range().end;
        }
        out.extend_from_slice(&raw[copied..]);
        if let Some(ext) = ch.extension(ExtensionType::KeyShare) {
            for (at, width) in [
                (ext.body_offset(), 2),
                (ext.offset + 2, 2),
                (ch.extensions_len_offset, 2),
                (1, 3),
            ] {
                let old = read_len(raw, at, width);
                patch_len(&mut out, at, width, old - removed, "test").unwrap();
            }
        }
        out
    }

    #[test]
    fn every_vector_client_hello_parses() {
        for v in client_hellos() {
            let ch = ClientHello::parse(&v.raw).unwrap_or_else(|e| panic!("{}: {e}", v.name));
            assert!(ch.supported_versions.contains(&TLS13), "{}", v.name);
            assert!(ch.key_shares.is_some(), "{}", v.name);
            assert_eq!(&ch.raw[RANDOM_OFFSET..RANDOM_OFFSET + 32], ch.random);
        }
    }

    #[test]
    fn rfc8448_simple_client_hello_fields() {
        let raw = rfc8448_message("simple_1rtt", "client_hello");
        let ch = ClientHello::parse(&raw).unwrap();
        assert_eq!(ch.server_names.as_deref(), Some(&[&b"server"[..]][..]));
        assert_eq!(
            ch.cipher_suites,
            [
                CipherSuite::TlsAes128GcmSha256,
                CipherSuite::TlsChacha20Poly1305Sha256,
                CipherSuite::TlsAes256GcmSha384
            ]
        );
        let shares = ch.key_shares.as_ref().unwrap();
        assert_eq!(shares.len(), 1);
        assert_eq!(shares[0].group, NamedGroup::X25519);
        assert_eq!(
            ch.psk_modes.as_deref(),
            Some(&[PskKeyExchangeMode::PskDheKe][..])
        );
        assert_eq!(ch.record_size_limit, Some(0x4001));
        // RFC 8448's ClientHello carries TLS 1.2 leftovers, kept as unknown extensions.
        assert!(ch.extension(ExtensionType::RenegotiationInfo).is_some());
        assert!(ch.extension(ExtensionType::SessionTicket).is_some());
        assert!(ch.pre_shared_key.is_none());
    }

    #[test]
    fn blanked_key_shares_completed_with_original_keys_give_back_the_original_bytes() {
        for v in client_hellos() {
            let ch = ClientHello::parse(&v.raw).unwrap();
            let fills: Vec<(NamedGroup, Vec<u8>)> = ch
                .key_shares
                .iter()
                .flatten()
                .map(|s| {
                    let key = v
                        .public_keys
                        .iter()
                        .find(|(g, _)| *g == s.group)
                        .unwrap_or_else(|| panic!("{}: no key for {:?}", v.name, s.group));
                    assert_eq!(key.1, s.key_exchange, "{}", v.name);
                    key.clone()
                })
                .collect();
            let mut blank = blank_key_shares(&v.raw);
            blank[RANDOM_OFFSET..RANDOM_OFFSET + 32].fill(0xee);
            let blank_ch = ClientHello::parse(&blank).unwrap();
            assert_eq!(blank_ch.placeholder_key_shares().len(), fills.len());
            let done = complete_client_hello(&blank, Some(ch.random), &fills).unwrap();
            assert_eq!(done, v.raw, "{}", v.name);
        }
    }

    #[test]
    fn complete_client_hello_without_random_keeps_the_received_random() {
        let raw = rfc8448_message("simple_1rtt", "client_hello");
        let ch = ClientHello::parse(&raw).unwrap();
        let key = ch.key_shares.as_ref().unwrap()[0].key_exchange.to_vec();
        let done =
            complete_client_hello(&blank_key_shares(&raw), None, &[(NamedGroup::X25519, key)])
                .unwrap();
        assert_eq!(done, raw);
    }

    #[test]
    fn complete_client_hello_refuses_fills_that_do_not_match_the_empty_entries() {
        let raw = rfc8448_message("simple_1rtt", "client_hello");
        let blank = blank_key_shares(&raw);
        // Wrong group.
        let err = complete_client_hello(&blank, None, &[(NamedGroup::Secp256r1, vec![4; 65])]);
        assert!(matches!(err, Err(WireError::Invalid(_))), "{err:?}");
        // Too many, too few.
        let two = [
            (NamedGroup::X25519, vec![1; 32]),
            (NamedGroup::X25519, vec![1; 32]),
        ];
        assert!(complete_client_hello(&blank, None, &two).is_err());
        assert!(complete_client_hello(&blank, None, &[]).is_err());
        // Wrong key size for the group.
        assert!(complete_client_hello(&blank, None, &[(NamedGroup::X25519, vec![1; 31])]).is_err());
        // A ClientHello whose shares are already filled has nothing to fill.
        assert!(complete_client_hello(&raw, None, &[(NamedGroup::X25519, vec![1; 32])]).is_err());
    }

    #[test]
    fn complete_client_hello_fills_two_groups_in_wire_order() {
        let built = ClientHelloBuilder::new([7; 32])
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
            .key_share(NamedGroup::X25519, &[])
            .key_share(NamedGroup::Secp256r1, &[])
            .build()
            .unwrap();
        let fills = [
            (NamedGroup::X25519, vec![0x25; 32]),
            (NamedGroup::Secp256r1, vec![0x04; 65]),
        ];
        let done = complete_client_hello(&built, Some(&[9; 32]), &fills).unwrap();
        let expected = ClientHelloBuilder::new([9; 32])
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
            .key_share(NamedGroup::X25519, &[0x25; 32])
            .key_share(NamedGroup::Secp256r1, &[0x04; 65])
            .build()
            .unwrap();
        assert_eq!(done, expected);
    }

    #[test]
    fn resumed_client_hello_truncates_to_477_bytes_and_set_binders_restores_it() {
        let raw = rfc8448_message("resumed_0rtt", "client_hello");
        let truncated = truncated_for_binders(&raw).unwrap();
        assert_eq!(truncated.len(), 477);
        assert_eq!(
            truncated,
            rfc8448_message("resumed_0rtt", "client_hello_truncated_for_binder")
        );
        let ch = ClientHello::parse(&raw).unwrap();
        let psk = ch.pre_shared_key.clone().unwrap();
        assert_eq!(psk.identities.len(), 1);
        assert_eq!(psk.identities[0].obfuscated_ticket_age, 0xfad6aacb);
        assert_eq!(psk.identities[0].identity.len(), 178);
        assert!(ch.early_data);
        let binder = psk.binders[0].binder.to_vec();
        assert_eq!(binder.len(), 32);

        let mut placeholder = raw.clone();
        let range = psk.binders[0].range();
        placeholder[range].fill(0);
        assert_ne!(placeholder, raw);
        set_binders(&mut placeholder, &[binder]).unwrap();
        assert_eq!(placeholder, raw);
    }

    #[test]
    fn crypto_service_flow_on_the_resumed_client_hello_reproduces_rfc8448() {
        // What the engine sends: its own random, an empty x25519 share, zero binders.
        let raw = rfc8448_message("resumed_0rtt", "client_hello");
        let ch = ClientHello::parse(&raw).unwrap();
        let key = ch.key_shares.as_ref().unwrap()[0].key_exchange.to_vec();
        let binder = ch.pre_shared_key.as_ref().unwrap().binders[0]
            .binder
            .to_vec();
        let binder_range = ch.pre_shared_key.as_ref().unwrap().binders[0].range();
        let mut sent = raw.clone();
        sent[binder_range].fill(0);
        let mut sent = blank_key_shares(&sent);
        sent[RANDOM_OFFSET..RANDOM_OFFSET + 32].fill(0x11);
        let sent_ch = ClientHello::parse(&sent).unwrap();
        assert!(sent_ch.ensure_complete().is_err());

        // The CS: fresh random and key share, binders over the truncated message.
        let mut done =
            complete_client_hello(&sent, Some(ch.random), &[(NamedGroup::X25519, key)]).unwrap();
        assert_eq!(
            truncated_for_binders(&done).unwrap(),
            rfc8448_message("resumed_0rtt", "client_hello_truncated_for_binder")
        );
        set_binders(&mut done, &[binder]).unwrap();
        assert_eq!(done, raw);
        ClientHello::parse(&done)
            .unwrap()
            .ensure_complete()
            .unwrap();
    }

    #[test]
    fn set_binders_refuses_a_binder_of_another_length_or_count() {
        let raw = rfc8448_message("resumed_0rtt", "client_hello");
        let mut copy = raw.clone();
        assert!(matches!(
            set_binders(&mut copy, &[vec![0; 48]]),
            Err(WireError::Invalid(_))
        ));
        assert_eq!(
            set_binders(&mut copy, &[vec![0; 32], vec![0; 32]]).unwrap_err(),
            WireError::BinderCountMismatch {
                identities: 1,
                binders: 2
            }
        );
        assert_eq!(copy, raw);
        let simple = rfc8448_message("simple_1rtt", "client_hello");
        assert!(truncated_for_binders(&simple).is_err());
    }

    #[test]
    fn hello_retry_request_of_rfc8448_section_5_is_detected_with_cookie_and_group() {
        let raw = rfc8448_message("hello_retry_request", "hello_retry_request");
        let hrr = ServerHello::parse(&raw).unwrap();
        assert!(hrr.is_hello_retry_request());
        assert_eq!(hrr.selected_group, Some(NamedGroup::Secp256r1));
        assert_eq!(hrr.cookie.map(<[u8]>::len), Some(114));
        assert!(hrr.key_share.is_none());

        let ch2 = rfc8448_message("hello_retry_request", "client_hello_2");
        let ch2 = ClientHello::parse(&ch2).unwrap();
        assert_eq!(ch2.cookie, hrr.cookie);
        let ch1 = rfc8448_message("hello_retry_request", "client_hello");
        assert_eq!(ClientHello::parse(&ch1).unwrap().random, ch2.random);
    }

    #[test]
    fn every_vector_server_hello_parses() {
        let rfc = test_vectors::rfc8448();
        for section in test_vectors::RFC8448_SECTIONS {
            let raw = test_vectors::hex_of(
                &rfc["sections"][section]["summary"]["messages"]["server_hello"],
            );
            let sh = ServerHello::parse(&raw).unwrap_or_else(|e| panic!("{section}: {e}"));
            assert!(!sh.is_hello_retry_request(), "{section}");
            let ks = sh.key_share.unwrap();
            let server_key = test_vectors::hex_of(
                &rfc["sections"][section]["summary"]["ephemeral_keys"]["server"][0]["public_key"],
            );
            assert_eq!(ks.key_exchange, server_key, "{section}");
            assert_eq!(
                sh.selected_identity,
                (section == "resumed_0rtt").then_some(0),
                "{section}"
            );
        }
        let ill = test_vectors::illustrated();
        for conn in test_vectors::ILLUSTRATED_CONNECTIONS {
            let c = &ill["connections"][conn];
            let raw = test_vectors::hex_of(&c["messages"]["server_hello"]);
            let sh = ServerHello::parse(&raw).unwrap();
            assert_eq!(sh.legacy_session_id_echo.len(), 32);
            assert_eq!(
                sh.key_share.unwrap().key_exchange,
                test_vectors::hex_of(&c["ephemeral_keys"]["server"]["public_key"])
            );
        }
    }

    #[test]
    fn server_hello_must_select_tls13_with_legacy_version_0303() {
        let raw = rfc8448_message("simple_1rtt", "server_hello");
        let mut bad = raw.clone();
        bad[4..6].copy_from_slice(&[3, 4]);
        assert!(ServerHello::parse(&bad).is_err());
        // supported_versions is the last extension: its selected_version ends the message.
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 2..].copy_from_slice(&[3, 3]);
        assert!(matches!(
            ServerHello::parse(&bad),
            Err(WireError::Invalid(_))
        ));
    }

    #[test]
    fn builder_output_parses_back_with_all_fields() {
        let built = ClientHelloBuilder::new([1; 32])
            .legacy_session_id(&[2; 32])
            .cipher_suites(&[CipherSuite::TlsAes256GcmSha384])
            .server_name("example.com")
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp384r1])
            .signature_algorithms(&[SignatureScheme::Ed25519, SignatureScheme::RsaPssRsaeSha256])
            .signature_algorithms_cert(&[SignatureScheme::Ed25519])
            .key_share(NamedGroup::X25519, &[])
            .key_share(NamedGroup::Secp384r1, &[4; 97])
            .alpn_protocols(&[b"h2", b"http/1.1"])
            .psk_modes(&[PskKeyExchangeMode::PskDheKe])
            .post_handshake_auth(true)
            .early_data(true)
            .cookie(b"cookie!")
            .record_size_limit(16385)
            .psk(b"ticket-1", 0x01020304, 32)
            .psk(b"ticket-2", 5, 48)
            .build()
            .unwrap();
        let ch = ClientHello::parse(&built).unwrap();
        assert_eq!(ch.random, &[1; 32]);
        assert_eq!(ch.legacy_session_id, &[2; 32]);
        assert_eq!(ch.cipher_suites, [CipherSuite::TlsAes256GcmSha384]);
        assert_eq!(ch.server_names.unwrap(), [b"example.com"]);
        assert_eq!(ch.supported_versions, [TLS13]);
        assert_eq!(
            ch.supported_groups.unwrap(),
            [NamedGroup::X25519, NamedGroup::Secp384r1]
        );
        assert_eq!(
            ch.signature_algorithms.unwrap(),
            [SignatureScheme::Ed25519, SignatureScheme::RsaPssRsaeSha256]
        );
        assert_eq!(
            ch.signature_algorithms_cert.unwrap(),
            [SignatureScheme::Ed25519]
        );
        let shares = ch.key_shares.unwrap();
        assert!(shares[0].is_placeholder());
        assert_eq!(shares[1].key_exchange, &[4; 97]);
        assert_eq!(ch.alpn_protocols.unwrap(), [&b"h2"[..], &b"http/1.1"[..]]);
        assert_eq!(ch.psk_modes.unwrap(), [PskKeyExchangeMode::PskDheKe]);
        assert!(ch.post_handshake_auth);
        assert!(ch.early_data);
        assert_eq!(ch.cookie, Some(&b"cookie!"[..]));
        assert_eq!(ch.record_size_limit, Some(16385));
        let psk = ch.pre_shared_key.unwrap();
        assert_eq!(psk.identities[0].identity, b"ticket-1");
        assert_eq!(psk.identities[0].obfuscated_ticket_age, 0x01020304);
        assert_eq!(psk.identities[1].identity, b"ticket-2");
        assert_eq!(psk.binders[0].binder, &[0; 32]);
        assert_eq!(psk.binders[1].binder, &[0; 48]);
        let order: Vec<_> = ch.extensions.iter().map(|e| e.typ).collect();
        assert_eq!(
            order,
            [
                ExtensionType::ServerName,
                ExtensionType::SupportedVersions,
                ExtensionType::SupportedGroups,
                ExtensionType::SignatureAlgorithms,
                ExtensionType::SignatureAlgorithmsCert,
                ExtensionType::KeyShare,
                ExtensionType::ApplicationLayerProtocolNegotiation,
                ExtensionType::PskKeyExchangeModes,
                ExtensionType::PostHandshakeAuth,
                ExtensionType::EarlyData,
                ExtensionType::Cookie,
                ExtensionType::RecordSizeLimit,
                ExtensionType::PreSharedKey,
            ]
        );
        assert_eq!(
            truncated_for_binders(&built).unwrap().len(),
            psk.binders_offset
        );
    }

    #[test]
    fn builder_refuses_inconsistent_offers() {
        let b = || ClientHelloBuilder::new([0; 32]);
        assert!(b().psk(b"id", 0, 32).build().is_err(), "PSK without modes");
        assert!(
            b().early_data(true).build().is_err(),
            "early data without PSK"
        );
        assert!(b()
            .psk_modes(&[PskKeyExchangeMode::PskKe])
            .psk(b"id", 0, 31)
            .build()
            .is_err());
        assert!(b().cipher_suites(&[]).build().is_err());
        assert!(b().legacy_session_id(&[0; 33]).build().is_err());
        assert!(b()
            .supported_groups(&[NamedGroup::X25519])
            .key_share(NamedGroup::X25519, &[])
            .key_share(NamedGroup::X25519, &[])
            .build()
            .is_err());
        assert!(
            b().key_share(NamedGroup::X25519, &[]).build().is_err(),
            "key share without supported_groups"
        );
    }

    /// A ClientHello with extensions `exts` (type, body) appended after supported_versions.
    fn client_hello_with(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let base = ClientHelloBuilder::new([0; 32]).build().unwrap();
        let ch = ClientHello::parse(&base).unwrap();
        let mut body = base[HEADER_LEN..ch.extensions_len_offset].to_vec();
        let mut block = base[ch.extensions_len_offset + 2..].to_vec();
        for (t, b) in exts {
            block.extend_from_slice(&t.to_be_bytes());
            block.extend_from_slice(&(b.len() as u16).to_be_bytes());
            block.extend_from_slice(b);
        }
        body.extend_from_slice(&(block.len() as u16).to_be_bytes());
        body.extend_from_slice(&block);
        encode_handshake(HandshakeType::ClientHello, &body).unwrap()
    }

    fn psk_ext(binders: usize) -> (u16, Vec<u8>) {
        let mut b = vec![0, 7, 0, 1, b'x', 0, 0, 0, 0];
        let list_len = (binders * 33) as u16;
        b.extend_from_slice(&list_len.to_be_bytes());
        for _ in 0..binders {
            b.push(32);
            b.extend_from_slice(&[0; 32]);
        }
        (0x0029, b)
    }

    #[test]
    fn client_hello_with_duplicate_extension_is_refused() {
        let raw = client_hello_with(&[(0x0031, vec![]), (0x0031, vec![])]);
        assert_eq!(
            ClientHello::parse(&raw).unwrap_err(),
            WireError::DuplicateExtension {
                message: "ClientHello",
                typ: 0x31
            }
        );
    }

    #[test]
    fn client_hello_with_pre_shared_key_not_last_is_refused() {
        let raw = client_hello_with(&[(0x002d, vec![1, 1]), psk_ext(1), (0x0031, vec![])]);
        assert_eq!(
            ClientHello::parse(&raw).unwrap_err(),
            WireError::PreSharedKeyNotLast
        );
        let ok = client_hello_with(&[(0x002d, vec![1, 1]), (0x0031, vec![]), psk_ext(1)]);
        ClientHello::parse(&ok).unwrap();
    }

    #[test]
    fn client_hello_with_binder_count_mismatch_is_refused() {
        let raw = client_hello_with(&[(0x002d, vec![1, 1]), psk_ext(2)]);
        assert_eq!(
            ClientHello::parse(&raw).unwrap_err(),
            WireError::BinderCountMismatch {
                identities: 1,
                binders: 2
            }
        );
    }

    #[test]
    fn client_hello_truncated_or_with_trailing_bytes_is_refused() {
        let raw = rfc8448_message("simple_1rtt", "client_hello");
        // A message cut short (header claims more than present).
        assert_eq!(
            ClientHello::parse(&raw[..raw.len() - 1]).unwrap_err(),
            WireError::Truncated("handshake message")
        );
        // Header and body shortened together: the extensions block overruns the body.
        let mut short = raw[..raw.len() - 1].to_vec();
        patch_len(&mut short, 1, 3, raw.len() - 5, "test").unwrap();
        assert_eq!(
            ClientHello::parse(&short).unwrap_err(),
            WireError::Truncated("extensions")
        );
        // One extra byte inside the body, after the extensions block.
        let mut long = raw.clone();
        long.push(0);
        patch_len(&mut long, 1, 3, raw.len() - 3, "test").unwrap();
        assert_eq!(
            ClientHello::parse(&long).unwrap_err(),
            WireError::TrailingBytes("ClientHello")
        );
        // One extra byte after the message.
        let mut after = raw.clone();
        after.push(0);
        assert_eq!(
            ClientHello::parse(&after).unwrap_err(),
            WireError::TrailingBytes("handshake message")
        );
    }

    #[test]
    fn client_hello_parse_refuses_another_message_type() {
        let raw = rfc8448_message("simple_1rtt", "server_hello");
        assert_eq!(
            ClientHello::parse(&raw).unwrap_err(),
            WireError::UnexpectedMessage {
                expected: "ClientHello",
                got: 2
            }
        );
    }

    #[test]
    fn encode_server_hello_reproduces_rfc8448_section3() {
        let doc: serde_json::Value =
            serde_json::from_str(include_str!("../../../testdata/rfc8448.json")).unwrap();
        let raw = hex::decode(
            doc["sections"]["simple_1rtt"]["summary"]["messages"]["server_hello"]
                .as_str()
                .unwrap(),
        )
        .unwrap();
        let sh = ServerHello::parse(&raw).unwrap();
        let key = sh.key_share.unwrap();
        let encoded = encode_server_hello(
            sh.random,
            sh.legacy_session_id_echo,
            sh.cipher_suite,
            key.group,
            key.key_exchange,
        )
        .unwrap();
        assert_eq!(encoded, raw);
    }
}
