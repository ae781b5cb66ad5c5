//! Extensions (RFC 8446 §4.2): the list every hello-like message carries, and decoders for
//! the extensions a TLS 1.3 client sends or meets. Unknown extensions are kept as
//! (type, body) in the list; the decoders are called by the message views.

use std::ops::Range;

use super::codec::Reader;
use super::limits::{
    MAX_ALPN_PROTOCOLS, MAX_CERTIFICATE_ENTRY_EXTENSIONS, MAX_EXTENSIONS, MAX_KEY_SHARES,
    MAX_NAMED_GROUPS, MAX_PSK_IDENTITIES, MAX_SIGNATURE_SCHEMES,
};
use super::{ExtensionType, NamedGroup, PskKeyExchangeMode, SignatureScheme, WireError};

/// One extension as received: its type, its body, and where it starts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extension<'a> {
    /// The extension_type (RFC 8446 §4.2); unknown types are kept as `Unknown(n)`.
    pub typ: ExtensionType,
    /// The extension_data, without its two-byte length.
    pub body: &'a [u8],
    /// Absolute offset of the extension's type field in the parsed input (for a handshake
    /// message view: relative to the first byte of the 4-byte header).
    pub offset: usize,
}

impl<'a> Extension<'a> {
    /// Absolute offset of the first body byte.
    pub fn body_offset(&self) -> usize {
        self.offset + 4
    }

    /// A reader over the body, keeping absolute offsets.
    fn reader(&self, name: &'static str) -> Reader<'a> {
        Reader::with_base(self.body, self.body_offset(), name)
    }
}

/// The messages that carry extensions (the columns of the table in RFC 8446 §4.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExtensionContext {
    /// "CH" in RFC 8446 §4.2.
    ClientHello,
    /// "SH": the extensions a ServerHello may carry (key_share, pre_shared_key,
    /// supported_versions).
    ServerHello,
    /// "HRR": a ServerHello whose random is [`super::HELLO_RETRY_REQUEST_RANDOM`].
    HelloRetryRequest,
    /// "EE": the server's extensions that do not set up the cryptographic context.
    EncryptedExtensions,
    /// "CR".
    CertificateRequest,
    /// "CT": the extensions of one CertificateEntry (RFC 8446 §4.4.2).
    Certificate,
    /// "NST".
    NewSessionTicket,
}

impl ExtensionContext {
    /// The message's name, as error messages and [`WireError`] name it.
    pub fn name(self) -> &'static str {
        match self {
            Self::ClientHello => "ClientHello",
            Self::ServerHello => "ServerHello",
            Self::HelloRetryRequest => "HelloRetryRequest",
            Self::EncryptedExtensions => "EncryptedExtensions",
            Self::CertificateRequest => "CertificateRequest",
            Self::Certificate => "Certificate",
            Self::NewSessionTicket => "NewSessionTicket",
        }
    }

    /// How many extensions one block of this message may hold ([`super::limits`]).
    pub fn max_extensions(self) -> usize {
        match self {
            Self::Certificate => MAX_CERTIFICATE_ENTRY_EXTENSIONS,
            _ => MAX_EXTENSIONS,
        }
    }
}

/// Whether RFC 8446 §4.2's table (plus RFC 8449 for record_size_limit) allows `typ` in
/// `ctx`; `None` for extensions outside that table (unknown, or TLS 1.2 only), which are
/// kept and left to the caller.
pub fn allowed_in(typ: ExtensionType, ctx: ExtensionContext) -> Option<bool> {
    use ExtensionContext as C;
    use ExtensionType as T;
    let contexts: &[C] = match typ {
        T::ServerName
        | T::MaxFragmentLength
        | T::SupportedGroups
        | T::UseSrtp
        | T::Heartbeat
        | T::ApplicationLayerProtocolNegotiation
        | T::ClientCertificateType
        | T::ServerCertificateType
        | T::RecordSizeLimit => &[C::ClientHello, C::EncryptedExtensions],
        T::StatusRequest | T::SignedCertificateTimestamp => {
            &[C::ClientHello, C::CertificateRequest, C::Certificate]
        }
        T::SignatureAlgorithms | T::CertificateAuthorities | T::SignatureAlgorithmsCert => {
            &[C::ClientHello, C::CertificateRequest]
        }
        T::Padding | T::PskKeyExchangeModes | T::PostHandshakeAuth => &[C::ClientHello],
        T::KeyShare => &[C::ClientHello, C::ServerHello, C::HelloRetryRequest],
        T::PreSharedKey => &[C::ClientHello, C::ServerHello],
        T::EarlyData => &[C::ClientHello, C::EncryptedExtensions, C::NewSessionTicket],
        T::Cookie => &[C::ClientHello, C::HelloRetryRequest],
        T::SupportedVersions => &[C::ClientHello, C::ServerHello, C::HelloRetryRequest],
        T::OidFilters => &[C::CertificateRequest],
        _ => return None,
    };
    Some(contexts.contains(&ctx))
}

/// The extension types seen in one block: one bit per type (2^16 bits, 8 KiB on the stack),
/// so that the duplicate check costs the same for the first extension and the last.
struct SeenTypes([u64; 1024]);

impl SeenTypes {
    fn new() -> Self {
        Self([0; 1024])
    }

    /// Marks `typ` as seen; false if it already was.
    fn insert(&mut self, typ: u16) -> bool {
        let word = &mut self.0[usize::from(typ >> 6)];
        let bit = 1u64 << (typ & 63);
        let fresh = *word & bit == 0;
        *word |= bit;
        fresh
    }
}

/// Reads a `Extension extensions<0..2^16-1>` block: no type twice (RFC 8446 §4.2: "There
/// MUST NOT be more than one extension of the same type in a given extension block"), only
/// extensions §4.2 allows in `ctx`, and at most [`ExtensionContext::max_extensions`].
pub(crate) fn read_extensions<'a>(
    r: &mut Reader<'a>,
    ctx: ExtensionContext,
) -> Result<Vec<Extension<'a>>, WireError> {
    let mut block = r.sub_u16("extensions")?;
    let max = ctx.max_extensions();
    let mut seen = SeenTypes::new();
    let mut out: Vec<Extension<'a>> = Vec::new();
    while !block.is_empty() {
        if out.len() == max {
            return Err(WireError::TooMany {
                what: "extensions in one block",
                max,
            });
        }
        let offset = block.offset();
        let typ = ExtensionType::from(block.u16()?);
        let mut body = block.sub_u16("extension")?;
        let ext = Extension {
            typ,
            body: body.rest(),
            offset,
        };
        if !seen.insert(typ.get()) {
            return Err(WireError::DuplicateExtension {
                message: ctx.name(),
                typ: typ.get(),
            });
        }
        if allowed_in(typ, ctx) == Some(false) {
            return Err(WireError::ExtensionNotAllowed {
                message: ctx.name(),
                typ: typ.get(),
            });
        }
        out.push(ext);
    }
    Ok(out)
}

/// The extension of type `typ`, if present.
pub fn find<'b, 'a>(exts: &'b [Extension<'a>], typ: ExtensionType) -> Option<&'b Extension<'a>> {
    exts.iter().find(|e| e.typ == typ)
}

/// A non-empty u16-prefixed list of at most `max` u16 code points (supported_groups,
/// signature_algorithms: RFC 8446 §4.2.7, §4.2.3 `<2..2^16-2>`).
fn u16_list<T: From<u16>>(
    ext: &Extension<'_>,
    name: &'static str,
    max: usize,
) -> Result<Vec<T>, WireError> {
    let mut r = ext.reader(name);
    let mut list = r.sub_u16(name)?;
    r.expect_empty(name)?;
    if list.is_empty() || list.remaining() % 2 != 0 {
        return Err(WireError::bad_length(name, list.remaining()));
    }
    if list.remaining() / 2 > max {
        return Err(WireError::TooMany { what: name, max });
    }
    let mut out = Vec::with_capacity(list.remaining() / 2);
    while !list.is_empty() {
        out.push(T::from(list.u16()?));
    }
    Ok(out)
}

/// supported_groups (RFC 8446 §4.2.7).
pub fn named_groups(ext: &Extension<'_>) -> Result<Vec<NamedGroup>, WireError> {
    u16_list(ext, "supported_groups", MAX_NAMED_GROUPS)
}

/// signature_algorithms / signature_algorithms_cert (RFC 8446 §4.2.3).
pub fn signature_schemes(ext: &Extension<'_>) -> Result<Vec<SignatureScheme>, WireError> {
    u16_list(ext, "signature_algorithms", MAX_SIGNATURE_SCHEMES)
}

/// ClientHello server_name (RFC 6066 §3): the host name of the ServerNameList, which "MUST
/// NOT contain more than one name of the same name_type" (host_name is the only type).
pub fn server_names<'a>(ext: &Extension<'a>) -> Result<Vec<&'a [u8]>, WireError> {
    let mut r = ext.reader("server_name");
    let mut list = r.sub_u16("server_name list")?;
    r.expect_empty("server_name")?;
    let mut out = Vec::new();
    while !list.is_empty() {
        let name_type = list.u8()?;
        // RFC 6066 §3: host_name(0) is the only type; others cannot be skipped safely.
        if name_type != 0 {
            return Err(WireError::IllegalValue {
                what: "server_name name_type (RFC 6066 §3)",
                value: name_type.into(),
            });
        }
        let mut host = list.sub_u16("host_name")?;
        let host = host.rest();
        if host.is_empty() {
            return Err(WireError::bad_length("host_name", 0));
        }
        if !out.is_empty() {
            return Err(WireError::DuplicateHostName);
        }
        out.push(host);
    }
    if out.is_empty() {
        return Err(WireError::bad_length("server_name_list", 0));
    }
    Ok(out)
}

/// ALPN (RFC 7301 §3.1): a non-empty list of non-empty protocol names.
pub fn alpn_protocols<'a>(ext: &Extension<'a>) -> Result<Vec<&'a [u8]>, WireError> {
    let mut r = ext.reader("application_layer_protocol_negotiation");
    let mut list = r.sub_u16("protocol_name_list")?;
    r.expect_empty("application_layer_protocol_negotiation")?;
    let mut out = Vec::new();
    while !list.is_empty() {
        if out.len() == MAX_ALPN_PROTOCOLS {
            return Err(WireError::TooMany {
                what: "ALPN protocols",
                max: MAX_ALPN_PROTOCOLS,
            });
        }
        let name = list.sub_u8("protocol_name")?.rest();
        if name.is_empty() {
            return Err(WireError::bad_length("protocol_name", 0));
        }
        out.push(name);
    }
    if out.is_empty() {
        return Err(WireError::bad_length("protocol_name_list", 0));
    }
    Ok(out)
}

/// An extension whose body must be empty (early_data in ClientHello / EncryptedExtensions,
/// post_handshake_auth, server_name in EncryptedExtensions).
pub fn expect_empty_body(ext: &Extension<'_>, name: &'static str) -> Result<(), WireError> {
    if ext.body.is_empty() {
        Ok(())
    } else {
        Err(WireError::TrailingBytes(name))
    }
}

/// A flag extension: `true` when present with an empty body, `false` when absent
/// (early_data, RFC 8446 §4.2.10; post_handshake_auth, §4.2.6; server_name in
/// EncryptedExtensions, RFC 6066 §3).
pub fn flag(ext: Option<&Extension<'_>>, name: &'static str) -> Result<bool, WireError> {
    match ext {
        Some(e) => expect_empty_body(e, name).map(|()| true),
        None => Ok(false),
    }
}

/// A KeyShareEntry (RFC 8446 §4.2.8) and where it lies in the message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyShareEntry<'a> {
    /// The group the share is for; unknown groups are kept as `Unknown(n)`.
    pub group: NamedGroup,
    /// Empty in a ClientHello the engine sends to the CS: the CS fills it (LURK
    /// cs_generated). RFC 8446 itself requires at least one byte.
    pub key_exchange: &'a [u8],
    /// Absolute offset of the entry (its `group` field).
    pub offset: usize,
}

impl KeyShareEntry<'_> {
    /// Absolute offset of the key_exchange length field.
    pub fn key_exchange_len_offset(&self) -> usize {
        self.offset + 2
    }

    /// Absolute range of the key_exchange bytes.
    pub fn key_exchange_range(&self) -> Range<usize> {
        let start = self.offset + 4;
        start..start + self.key_exchange.len()
    }

    /// Whether the engine left this entry for the CS to fill.
    pub fn is_placeholder(&self) -> bool {
        self.key_exchange.is_empty()
    }
}

fn read_key_share_entry<'a>(r: &mut Reader<'a>) -> Result<KeyShareEntry<'a>, WireError> {
    let offset = r.offset();
    let group = NamedGroup::from(r.u16()?);
    let key_exchange = r.sub_u16("key_exchange")?.rest();
    Ok(KeyShareEntry {
        group,
        key_exchange,
        offset,
    })
}

/// ClientHello key_share: `KeyShareEntry client_shares<0..2^16-1>` (RFC 8446 §4.2.8), at
/// most [`MAX_KEY_SHARES`] entries (so the duplicate check below stays small).
/// Empty key_exchange values are accepted (placeholders for the CS to fill).
pub fn client_key_shares<'a>(ext: &Extension<'a>) -> Result<Vec<KeyShareEntry<'a>>, WireError> {
    let mut r = ext.reader("key_share");
    let mut list = r.sub_u16("client_shares")?;
    r.expect_empty("key_share")?;
    let mut out: Vec<KeyShareEntry<'a>> = Vec::new();
    while !list.is_empty() {
        if out.len() == MAX_KEY_SHARES {
            return Err(WireError::TooMany {
                what: "key_share entries",
                max: MAX_KEY_SHARES,
            });
        }
        let entry = read_key_share_entry(&mut list)?;
        // §4.2.8: "Clients MUST NOT offer multiple KeyShareEntry values for the same group."
        if out.iter().any(|e| e.group == entry.group) {
            return Err(WireError::DuplicateKeyShare {
                group: entry.group.get(),
            });
        }
        out.push(entry);
    }
    Ok(out)
}

/// ServerHello key_share: one KeyShareEntry with a non-empty key (RFC 8446 §4.2.8).
pub fn server_key_share<'a>(ext: &Extension<'a>) -> Result<KeyShareEntry<'a>, WireError> {
    let mut r = ext.reader("key_share");
    let entry = read_key_share_entry(&mut r)?;
    r.expect_empty("key_share")?;
    if entry.key_exchange.is_empty() {
        return Err(WireError::bad_length("key_exchange", 0));
    }
    Ok(entry)
}

/// HelloRetryRequest key_share: `NamedGroup selected_group` (RFC 8446 §4.2.8).
pub fn hrr_selected_group(ext: &Extension<'_>) -> Result<NamedGroup, WireError> {
    let mut r = ext.reader("key_share");
    let group = NamedGroup::from(r.u16()?);
    r.expect_empty("key_share")?;
    Ok(group)
}

/// A PskIdentity of the ClientHello pre_shared_key extension (RFC 8446 §4.2.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PskIdentity<'a> {
    /// The ticket as the server sent it, or the external PSK's identity (1..2^16-1 bytes).
    pub identity: &'a [u8],
    /// The ticket's age in milliseconds plus its ticket_age_add, mod 2^32 (RFC 8446
    /// §4.2.11.1); 0 for an external PSK.
    pub obfuscated_ticket_age: u32,
    /// Absolute offset of the identity's length field.
    pub offset: usize,
}

/// A PskBinderEntry (RFC 8446 §4.2.11).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PskBinder<'a> {
    /// The binder: an HMAC over the truncated ClientHello (RFC 8446 §4.2.11.2), Hash.length
    /// bytes (32..255 on the wire).
    pub binder: &'a [u8],
    /// Absolute offset of the binder's one-byte length field.
    pub offset: usize,
}

impl PskBinder<'_> {
    /// Absolute range of the binder bytes.
    pub fn range(&self) -> Range<usize> {
        self.offset + 1..self.offset + 1 + self.binder.len()
    }
}

/// The ClientHello pre_shared_key extension: OfferedPsks (RFC 8446 §4.2.11).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedPsks<'a> {
    /// The PSKs offered, in the client's order; the server's selected_identity indexes them.
    pub identities: Vec<PskIdentity<'a>>,
    /// One binder per identity, in the same order (checked while parsing).
    pub binders: Vec<PskBinder<'a>>,
    /// Absolute offset of the binders list's length field: the PartialClientHello of
    /// §4.2.11.2 is everything before it.
    pub binders_offset: usize,
}

/// ClientHello pre_shared_key: identities `<7..2^16-1>`, binders `<33..2^16-1>`, as many
/// binders as identities, each binder `<32..255>` (RFC 8446 §4.2.11); at most
/// [`MAX_PSK_IDENTITIES`] of each.
pub fn offered_psks<'a>(ext: &Extension<'a>) -> Result<OfferedPsks<'a>, WireError> {
    let mut r = ext.reader("pre_shared_key");
    let mut ids = r.sub_u16("identities")?;
    let mut identities = Vec::new();
    while !ids.is_empty() {
        if identities.len() == MAX_PSK_IDENTITIES {
            return Err(too_many_psks());
        }
        let offset = ids.offset();
        let identity = ids.sub_u16("identity")?.rest();
        if identity.is_empty() {
            return Err(WireError::bad_length("identity", 0));
        }
        let obfuscated_ticket_age = ids.u32()?;
        identities.push(PskIdentity {
            identity,
            obfuscated_ticket_age,
            offset,
        });
    }
    let binders_offset = r.offset();
    let mut list = r.sub_u16("binders")?;
    r.expect_empty("pre_shared_key")?;
    let mut binders = Vec::new();
    while !list.is_empty() {
        if binders.len() == MAX_PSK_IDENTITIES {
            return Err(too_many_psks());
        }
        let offset = list.offset();
        let binder = list.sub_u8("binder")?.rest();
        if binder.len() < 32 {
            return Err(WireError::bad_length("binder", binder.len()));
        }
        binders.push(PskBinder { binder, offset });
    }
    if identities.is_empty() {
        return Err(WireError::bad_length("identities", 0));
    }
    if identities.len() != binders.len() {
        return Err(WireError::BinderCountMismatch {
            identities: identities.len(),
            binders: binders.len(),
        });
    }
    Ok(OfferedPsks {
        identities,
        binders,
        binders_offset,
    })
}

fn too_many_psks() -> WireError {
    WireError::TooMany {
        what: "pre_shared_key identities or binders",
        max: MAX_PSK_IDENTITIES,
    }
}

/// ServerHello pre_shared_key: `uint16 selected_identity` (RFC 8446 §4.2.11).
pub fn selected_identity(ext: &Extension<'_>) -> Result<u16, WireError> {
    let mut r = ext.reader("pre_shared_key");
    let v = r.u16()?;
    r.expect_empty("pre_shared_key")?;
    Ok(v)
}

/// psk_key_exchange_modes: `PskKeyExchangeMode ke_modes<1..255>` (RFC 8446 §4.2.9).
pub fn psk_modes(ext: &Extension<'_>) -> Result<Vec<PskKeyExchangeMode>, WireError> {
    let mut r = ext.reader("psk_key_exchange_modes");
    let modes = r.sub_u8("ke_modes")?.rest();
    r.expect_empty("psk_key_exchange_modes")?;
    if modes.is_empty() {
        return Err(WireError::bad_length("ke_modes", 0));
    }
    Ok(modes.iter().map(|&m| PskKeyExchangeMode::from(m)).collect())
}

/// NewSessionTicket early_data: `uint32 max_early_data_size` (RFC 8446 §4.2.10).
pub fn max_early_data_size(ext: &Extension<'_>) -> Result<u32, WireError> {
    let mut r = ext.reader("early_data");
    let v = r.u32()?;
    r.expect_empty("early_data")?;
    Ok(v)
}

/// ClientHello supported_versions: `ProtocolVersion versions<2..254>` (RFC 8446 §4.2.1).
pub fn client_versions(ext: &Extension<'_>) -> Result<Vec<u16>, WireError> {
    let mut r = ext.reader("supported_versions");
    let mut list = r.sub_u8("versions")?;
    r.expect_empty("supported_versions")?;
    if list.is_empty() || list.remaining() % 2 != 0 {
        return Err(WireError::bad_length("versions", list.remaining()));
    }
    let mut out = Vec::new();
    while !list.is_empty() {
        out.push(list.u16()?);
    }
    Ok(out)
}

/// ServerHello / HelloRetryRequest supported_versions: `selected_version` (§4.2.1).
pub fn selected_version(ext: &Extension<'_>) -> Result<u16, WireError> {
    let mut r = ext.reader("supported_versions");
    let v = r.u16()?;
    r.expect_empty("supported_versions")?;
    Ok(v)
}

/// cookie: `opaque cookie<1..2^16-1>` (RFC 8446 §4.2.2).
pub fn cookie<'a>(ext: &Extension<'a>) -> Result<&'a [u8], WireError> {
    let mut r = ext.reader("cookie");
    let c = r.sub_u16("cookie")?.rest();
    r.expect_empty("cookie")?;
    if c.is_empty() {
        return Err(WireError::bad_length("cookie", 0));
    }
    Ok(c)
}

/// record_size_limit: `uint16 RecordSizeLimit`, at least 64 (RFC 8449 §4).
pub fn record_size_limit(ext: &Extension<'_>) -> Result<u16, WireError> {
    let mut r = ext.reader("record_size_limit");
    let v = r.u16()?;
    r.expect_empty("record_size_limit")?;
    if v < 64 {
        return Err(WireError::IllegalValue {
            what: "record_size_limit (RFC 8449 §4: at least 64)",
            value: v.into(),
        });
    }
    Ok(v)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(exts: &[(u16, &[u8])]) -> Vec<u8> {
        let mut body = Vec::new();
        for (t, b) in exts {
            body.extend_from_slice(&t.to_be_bytes());
            body.extend_from_slice(&(b.len() as u16).to_be_bytes());
            body.extend_from_slice(b);
        }
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    #[test]
    fn extension_block_keeps_unknown_extensions_with_offsets() {
        let data = block(&[(0x5a5a, &[1, 2]), (0x002a, &[])]);
        let mut r = Reader::new(&data, "test");
        let exts = read_extensions(&mut r, ExtensionContext::EncryptedExtensions).unwrap();
        assert_eq!(exts[0].typ, ExtensionType::Unknown(0x5a5a));
        assert_eq!(exts[0].body, &[1, 2]);
        assert_eq!(exts[0].offset, 2);
        assert_eq!(exts[1].typ, ExtensionType::EarlyData);
        assert_eq!(exts[1].offset, 8);
    }

    #[test]
    fn duplicate_extension_type_is_refused() {
        let data = block(&[(0x0000, &[]), (0x0000, &[])]);
        let mut r = Reader::new(&data, "test");
        assert_eq!(
            read_extensions(&mut r, ExtensionContext::EncryptedExtensions).unwrap_err(),
            WireError::DuplicateExtension {
                message: "EncryptedExtensions",
                typ: 0
            }
        );
    }

    #[test]
    fn extension_outside_its_messages_is_refused() {
        // key_share is not an EncryptedExtensions extension (RFC 8446 §4.2 table).
        let data = block(&[(0x0033, &[0, 0x1d, 0, 0])]);
        let mut r = Reader::new(&data, "test");
        assert_eq!(
            read_extensions(&mut r, ExtensionContext::EncryptedExtensions).unwrap_err(),
            WireError::ExtensionNotAllowed {
                message: "EncryptedExtensions",
                typ: 0x33
            }
        );
    }

    #[test]
    fn extension_body_longer_than_block_is_truncated() {
        let data = [0, 4, 0, 0, 0, 9];
        let mut r = Reader::new(&data, "test");
        assert_eq!(
            read_extensions(&mut r, ExtensionContext::ClientHello).unwrap_err(),
            WireError::Truncated("extension")
        );
    }

    fn ext(typ: ExtensionType, body: &[u8]) -> Extension<'_> {
        Extension {
            typ,
            body,
            offset: 100,
        }
    }

    #[test]
    fn client_key_shares_accept_placeholders_and_report_ranges() {
        let body = [0, 10, 0, 0x1d, 0, 2, 0xaa, 0xbb, 0, 0x17, 0, 0];
        let shares = client_key_shares(&ext(ExtensionType::KeyShare, &body)).unwrap();
        assert_eq!(shares.len(), 2);
        assert_eq!(shares[0].group, NamedGroup::X25519);
        assert_eq!(shares[0].offset, 106);
        assert_eq!(shares[0].key_exchange_range(), 110..112);
        assert!(shares[1].is_placeholder());
        assert_eq!(shares[1].offset, 112);
    }

    #[test]
    fn client_key_shares_refuse_a_group_twice() {
        let body = [0, 8, 0, 0x1d, 0, 0, 0, 0x1d, 0, 0];
        assert!(matches!(
            client_key_shares(&ext(ExtensionType::KeyShare, &body)),
            Err(WireError::DuplicateKeyShare { group: 0x1d })
        ));
    }

    #[test]
    fn offered_psks_refuse_binder_count_mismatch() {
        let mut body = vec![0, 9, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1];
        body.extend_from_slice(&[0, 0]); // no binders
        assert_eq!(
            offered_psks(&ext(ExtensionType::PreSharedKey, &body)).unwrap_err(),
            WireError::BinderCountMismatch {
                identities: 1,
                binders: 0
            }
        );
    }

    #[test]
    fn offered_psks_refuse_a_short_binder() {
        let mut body = vec![0, 9, 0, 3, b'a', b'b', b'c', 0, 0, 0, 1];
        body.extend_from_slice(&[0, 2, 1, 0]);
        assert!(matches!(
            offered_psks(&ext(ExtensionType::PreSharedKey, &body)),
            Err(WireError::BadLength { len: 1, .. })
        ));
    }

    #[test]
    fn supported_groups_refuse_odd_length() {
        let body = [0, 3, 0, 0x1d, 0];
        assert!(named_groups(&ext(ExtensionType::SupportedGroups, &body)).is_err());
    }

    #[test]
    fn record_size_limit_below_64_is_refused() {
        assert!(record_size_limit(&ext(ExtensionType::RecordSizeLimit, &[0, 63])).is_err());
        assert_eq!(
            record_size_limit(&ext(ExtensionType::RecordSizeLimit, &[0x40, 1])).unwrap(),
            0x4001
        );
    }

    #[test]
    fn alpn_and_server_name_lists_decode() {
        let alpn = [0, 6, 2, b'h', b'2', 2, b'h', b'3'];
        assert_eq!(
            alpn_protocols(&ext(
                ExtensionType::ApplicationLayerProtocolNegotiation,
                &alpn
            ))
            .unwrap(),
            [b"h2", b"h3"]
        );
        let sni = [0, 6, 0, 0, 3, b'a', b'.', b'b'];
        assert_eq!(
            server_names(&ext(ExtensionType::ServerName, &sni)).unwrap(),
            [b"a.b"]
        );
    }
}
