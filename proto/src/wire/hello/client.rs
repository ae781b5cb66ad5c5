//! The ClientHello view (RFC 8446 §4.1.2) and the splicing the Crypto Service does on the
//! bytes it received (docs/design.md §4.2): [`complete_client_hello`] fills the random and the
//! empty key_share entries, [`truncated_for_binders`] gives the PartialClientHello the binders
//! are computed over, and [`set_binders`] writes them.

use crate::wire::codec::{patch_len, put_bytes_u16};
use crate::wire::extensions::{
    self, find, read_extensions, Extension, ExtensionContext, KeyShareEntry, OfferedPsks,
};
use crate::wire::handshake::{HandshakeMessage, HEADER_LEN};
use crate::wire::limits::MAX_CIPHER_SUITES;
use crate::wire::{
    CipherSuite, ExtensionType, HandshakeType, NamedGroup, PskKeyExchangeMode, SignatureScheme,
    WireError, TLS12, TLS13,
};

/// Offset of `random` in a ClientHello or ServerHello message (header + legacy_version).
pub const RANDOM_OFFSET: usize = HEADER_LEN + 2;

/// A parsed ClientHello, borrowing the message bytes. Offsets are relative to the first
/// byte of the 4-byte handshake header.
#[derive(Clone, Debug)]
pub struct ClientHello<'a> {
    /// The whole message, header included.
    pub raw: &'a [u8],
    /// Always [`TLS12`] (0x0303): parsing refuses any other value (RFC 8446 §4.1.2).
    pub legacy_version: u16,
    /// ClientHello.random: the engine's random in what the engine sends, the freshness
    /// output in what the CS completes (draft-mglt-lurk-tls13 §3).
    pub random: &'a [u8; 32],
    /// 0..=32 bytes, echoed by the server (RFC 8446 §4.1.2, Appendix D.4).
    pub legacy_session_id: &'a [u8],
    /// The suites offered, in the client's order (at least one, unknown ones kept).
    pub cipher_suites: Vec<CipherSuite>,
    /// Every extension, known or not, in wire order.
    pub extensions: Vec<Extension<'a>>,
    /// server_name's host names (RFC 6066 §3: at most one), if the extension is present.
    pub server_names: Option<Vec<&'a [u8]>>,
    /// supported_versions (RFC 8446 §4.2.1): present and containing [`TLS13`], or parsing
    /// fails.
    pub supported_versions: Vec<u16>,
    /// supported_groups (RFC 8446 §4.2.7), required with key_share.
    pub supported_groups: Option<Vec<NamedGroup>>,
    /// signature_algorithms (RFC 8446 §4.2.3): the schemes accepted in CertificateVerify.
    pub signature_algorithms: Option<Vec<SignatureScheme>>,
    /// signature_algorithms_cert (RFC 8446 §4.2.3): the schemes accepted in certificates.
    pub signature_algorithms_cert: Option<Vec<SignatureScheme>>,
    /// application_layer_protocol_negotiation's protocol names (RFC 7301).
    pub alpn_protocols: Option<Vec<&'a [u8]>>,
    /// key_share entries (empty key_exchange = placeholder for the CS).
    pub key_shares: Option<Vec<KeyShareEntry<'a>>>,
    /// psk_key_exchange_modes (RFC 8446 §4.2.9), required with pre_shared_key.
    pub psk_modes: Option<Vec<PskKeyExchangeMode>>,
    /// early_data is present (RFC 8446 §4.2.10); only with pre_shared_key.
    pub early_data: bool,
    /// The HelloRetryRequest's cookie echoed in a second ClientHello (RFC 8446 §4.2.2).
    pub cookie: Option<&'a [u8]>,
    /// post_handshake_auth is present (RFC 8446 §4.2.6).
    pub post_handshake_auth: bool,
    /// record_size_limit (RFC 8449 §4).
    pub record_size_limit: Option<u16>,
    /// pre_shared_key (RFC 8446 §4.2.11), checked to be the last extension.
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

    /// Parses a message already split from a flight; fails unless it is a ClientHello.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::ClientHello, "ClientHello")?;
        let mut r = m.body_reader("ClientHello");
        // §4.1.2: "the legacy_version field MUST be set to 0x0303".
        let legacy_version = r.u16()?;
        if legacy_version != TLS12 {
            return Err(WireError::IllegalValue {
                what: "ClientHello legacy_version (RFC 8446 §4.1.2)",
                value: legacy_version.into(),
            });
        }
        let random = r.array::<32>()?;
        let legacy_session_id = r.sub_u8("legacy_session_id")?.rest();
        if legacy_session_id.len() > 32 {
            return Err(WireError::bad_length(
                "legacy_session_id",
                legacy_session_id.len(),
            ));
        }
        let mut suites = r.sub_u16("cipher_suites")?;
        if suites.is_empty() || suites.remaining() % 2 != 0 {
            return Err(WireError::bad_length("cipher_suites", suites.remaining()));
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
            return Err(WireError::IllegalValue {
                what: "ClientHello legacy_compression_methods length (must be [0])",
                value: compression.len() as u64,
            });
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
                return Err(WireError::NotTls13 {
                    message: "ClientHello",
                })
            }
        };
        if !supported_versions.contains(&TLS13) {
            return Err(WireError::NotTls13 {
                message: "ClientHello",
            });
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
        let early_data = extensions::flag(get(ExtensionType::EarlyData), "early_data")?;
        let cookie = get(ExtensionType::Cookie)
            .map(extensions::cookie)
            .transpose()?;
        let post_handshake_auth =
            extensions::flag(get(ExtensionType::PostHandshakeAuth), "post_handshake_auth")?;
        let record_size_limit = get(ExtensionType::RecordSizeLimit)
            .map(extensions::record_size_limit)
            .transpose()?;
        let pre_shared_key = get(ExtensionType::PreSharedKey)
            .map(extensions::offered_psks)
            .transpose()?;

        // §9.2: a ClientHello "containing a "key_share" extension ... MUST also contain a
        // "supported_groups" extension".
        if key_shares.is_some() && supported_groups.is_none() {
            return Err(WireError::ExtensionRequires {
                message: "ClientHello",
                extension: "key_share",
                requires: "supported_groups",
            });
        }
        // §4.2.8: "Each KeyShareEntry value MUST correspond to a group offered in the
        // "supported_groups" extension" (servers MAY check; the CS does).
        if let (Some(shares), Some(groups)) = (&key_shares, &supported_groups) {
            if let Some(s) = shares.iter().find(|s| !groups.contains(&s.group)) {
                return Err(WireError::KeyShareGroupNotOffered {
                    group: s.group.get(),
                });
            }
        }
        // §4.2.9: a client offering pre_shared_key MUST also send psk_key_exchange_modes.
        if pre_shared_key.is_some() && psk_modes.is_none() {
            return Err(WireError::ExtensionRequires {
                message: "ClientHello",
                extension: "pre_shared_key",
                requires: "psk_key_exchange_modes",
            });
        }
        // §4.2.10: early data is only possible with a PSK.
        if early_data && pre_shared_key.is_none() {
            return Err(WireError::ExtensionRequires {
                message: "ClientHello",
                extension: "early_data",
                requires: "pre_shared_key",
            });
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
            Some(_) => Err(WireError::bad_length("key_exchange", 0)),
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
        return Err(WireError::KeyShareFillCount {
            empty: placeholders.len(),
            fills: fills.len(),
        });
    }
    for (entry, (group, key)) in placeholders.iter().zip(fills) {
        if entry.group != *group {
            return Err(WireError::KeyShareFillGroup {
                entry: entry.group.get(),
                key: group.get(),
            });
        }
        // §4.2.8: key_exchange<1..2^16-1>, with the size fixed by the group (§4.2.8.1/2).
        let expected = group.public_key_len();
        if key.is_empty() || expected.is_some_and(|n| n != key.len()) {
            return Err(WireError::bad_length("key_exchange", key.len()));
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
            .ok_or(WireError::MissingExtension {
                message: "ClientHello",
                extension: "key_share",
            })?;
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

const NO_PRE_SHARED_KEY: WireError = WireError::MissingExtension {
    message: "ClientHello",
    extension: "pre_shared_key",
};

/// Offset of the binders list (its u16 length) in a ClientHello with pre_shared_key.
pub fn binders_offset(raw: &[u8]) -> Result<usize, WireError> {
    let ch = ClientHello::parse(raw)?;
    ch.pre_shared_key
        .map(|p| p.binders_offset)
        .ok_or(NO_PRE_SHARED_KEY)
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
        let psk = ch.pre_shared_key.ok_or(NO_PRE_SHARED_KEY)?;
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
            return Err(WireError::BinderLength {
                index: i,
                len: binder.as_ref().len(),
                reserved: range.len(),
            });
        }
    }
    for (range, binder) in ranges.into_iter().zip(binders) {
        raw[range].copy_from_slice(binder.as_ref());
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_vectors::{client_hello_with_extensions, client_hellos, rfc8448};
    use crate::wire::ClientHelloBuilder;

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
        let raw = rfc8448().simple_1rtt.messages.client_hello.clone();
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
        let raw = rfc8448().simple_1rtt.messages.client_hello.clone();
        let ch = ClientHello::parse(&raw).unwrap();
        let key = ch.key_shares.as_ref().unwrap()[0].key_exchange.to_vec();
        let done =
            complete_client_hello(&blank_key_shares(&raw), None, &[(NamedGroup::X25519, key)])
                .unwrap();
        assert_eq!(done, raw);
    }

    #[test]
    fn complete_client_hello_refuses_fills_that_do_not_match_the_empty_entries() {
        let raw = rfc8448().simple_1rtt.messages.client_hello.clone();
        let blank = blank_key_shares(&raw);
        // Wrong group.
        let err = complete_client_hello(&blank, None, &[(NamedGroup::Secp256r1, vec![4; 65])]);
        assert!(
            matches!(err, Err(WireError::KeyShareFillGroup { .. })),
            "{err:?}"
        );
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
        let raw = rfc8448().resumed_0rtt.messages.client_hello.clone();
        let truncated = truncated_for_binders(&raw).unwrap();
        assert_eq!(truncated.len(), 477);
        assert_eq!(
            truncated,
            rfc8448()
                .resumed_0rtt
                .messages
                .client_hello_truncated_for_binder
                .clone()
                .expect("client_hello_truncated_for_binder")
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
        let raw = rfc8448().resumed_0rtt.messages.client_hello.clone();
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
            rfc8448()
                .resumed_0rtt
                .messages
                .client_hello_truncated_for_binder
                .clone()
                .expect("client_hello_truncated_for_binder")
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
        let raw = rfc8448().resumed_0rtt.messages.client_hello.clone();
        let mut copy = raw.clone();
        assert!(matches!(
            set_binders(&mut copy, &[vec![0; 48]]),
            Err(WireError::BinderLength { .. })
        ));
        assert_eq!(
            set_binders(&mut copy, &[vec![0; 32], vec![0; 32]]).unwrap_err(),
            WireError::BinderCountMismatch {
                identities: 1,
                binders: 2
            }
        );
        assert_eq!(copy, raw);
        let simple = rfc8448().simple_1rtt.messages.client_hello.clone();
        assert!(truncated_for_binders(&simple).is_err());
    }

    /// A ClientHello with extensions `exts` (type, body) appended after supported_versions.
    fn client_hello_with(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let base = ClientHelloBuilder::new([0; 32]).build().unwrap();
        client_hello_with_extensions(&base, true, exts)
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
        let raw = rfc8448().simple_1rtt.messages.client_hello.clone();
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
        let raw = rfc8448().simple_1rtt.messages.server_hello.clone();
        assert_eq!(
            ClientHello::parse(&raw).unwrap_err(),
            WireError::UnexpectedMessage {
                expected: "ClientHello",
                got: 2
            }
        );
    }
}
