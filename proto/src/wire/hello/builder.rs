//! [`ClientHelloBuilder`]: the engine's ClientHello encoder (RFC 8446 §4.1.2).

use crate::wire::codec::{
    put_bytes_u16, put_bytes_u8, put_u16, put_u16_prefixed, put_u32, put_u8, put_u8_prefixed,
};
use crate::wire::handshake::encode_handshake;
use crate::wire::{
    CipherSuite, ExtensionType, HandshakeType, NamedGroup, PskKeyExchangeMode, SignatureScheme,
    WireError, TLS12, TLS13,
};

/// One PSK offered by [`ClientHelloBuilder`]: identity, obfuscated_ticket_age, and the
/// length of its binder (the hash length of the PSK's suite).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OfferedPsk {
    /// The ticket or external PSK identity (not empty).
    pub identity: Vec<u8>,
    /// The ticket age plus ticket_age_add, mod 2^32 (RFC 8446 §4.2.11.1); 0 for an external
    /// PSK.
    pub obfuscated_ticket_age: u32,
    /// The binder's length, 32..=255: Hash.length of the PSK's cipher suite.
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
    /// [`check_second_client_hello`](crate::wire::check_second_client_hello) is the rule.
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

    /// cipher_suites, in preference order (not empty); replaces [`CipherSuite::SUPPORTED`].
    pub fn cipher_suites(mut self, suites: &[CipherSuite]) -> Self {
        self.cipher_suites = suites.to_vec();
        self
    }

    /// server_name with one host_name (RFC 6066 §3).
    pub fn server_name(mut self, host: &str) -> Self {
        self.server_name = Some(host.as_bytes().to_vec());
        self
    }

    /// supported_versions (RFC 8446 §4.2.1), which must contain [`TLS13`]; `[TLS13]` by
    /// default.
    pub fn supported_versions(mut self, versions: &[u16]) -> Self {
        self.supported_versions = versions.to_vec();
        self
    }

    /// supported_groups (RFC 8446 §4.2.7); not sent when empty. Every key share's group must
    /// be listed.
    pub fn supported_groups(mut self, groups: &[NamedGroup]) -> Self {
        self.supported_groups = groups.to_vec();
        self
    }

    /// signature_algorithms (RFC 8446 §4.2.3): the schemes accepted in CertificateVerify;
    /// not sent when empty.
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

    /// application_layer_protocol_negotiation (RFC 7301), each name not empty; not sent when
    /// empty.
    pub fn alpn_protocols(mut self, protocols: &[&[u8]]) -> Self {
        self.alpn = protocols.iter().map(|p| p.to_vec()).collect();
        self
    }

    /// psk_key_exchange_modes (RFC 8446 §4.2.9), required with a PSK; not sent when empty.
    pub fn psk_modes(mut self, modes: &[PskKeyExchangeMode]) -> Self {
        self.psk_modes = modes.to_vec();
        self
    }

    /// Whether to send post_handshake_auth (RFC 8446 §4.2.6): the client accepts a
    /// CertificateRequest after the handshake.
    pub fn post_handshake_auth(mut self, offer: bool) -> Self {
        self.post_handshake_auth = offer;
        self
    }

    /// Whether to send early_data (RFC 8446 §4.2.10), which requires a PSK; a second
    /// ClientHello never carries it.
    pub fn early_data(mut self, offer: bool) -> Self {
        self.early_data = offer;
        self
    }

    /// The cookie of a HelloRetryRequest, echoed in the second ClientHello (§4.2.2).
    pub fn cookie(mut self, cookie: &[u8]) -> Self {
        self.cookie = Some(cookie.to_vec());
        self
    }

    /// record_size_limit (RFC 8449 §4): the largest record plaintext the client will receive
    /// (in TLS 1.3 counting the content type and padding), at least 64.
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
    /// [`ClientHello::parse`](crate::wire::ClientHello::parse); the rules that parsing checks are checked here first.
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
            return Err(WireError::bad_length(
                "legacy_session_id",
                self.legacy_session_id.len(),
            ));
        }
        if self.cipher_suites.is_empty() {
            return Err(WireError::bad_length("cipher_suites", 0));
        }
        if !self.supported_versions.contains(&TLS13) {
            return Err(WireError::NotTls13 {
                message: "ClientHello",
            });
        }
        for (i, (g, _)) in self.key_shares.iter().enumerate() {
            if self.key_shares[..i].iter().any(|(h, _)| h == g) {
                return Err(WireError::DuplicateKeyShare { group: g.get() });
            }
            // §9.2 and §4.2.8: key shares only for groups of supported_groups.
            if !self.supported_groups.contains(g) {
                return Err(WireError::KeyShareGroupNotOffered { group: g.get() });
            }
        }
        if self.alpn.iter().any(|p| p.is_empty()) {
            return Err(WireError::bad_length("protocol_name", 0));
        }
        if self.cookie.as_ref().is_some_and(|c| c.is_empty()) {
            return Err(WireError::bad_length("cookie", 0));
        }
        if self.record_size_limit.is_some_and(|l| l < 64) {
            return Err(WireError::IllegalValue {
                what: "record_size_limit (RFC 8449 §4: at least 64)",
                value: self.record_size_limit.unwrap_or_default().into(),
            });
        }
        if !self.psks.is_empty() && self.psk_modes.is_empty() {
            return Err(WireError::ExtensionRequires {
                message: "ClientHello",
                extension: "pre_shared_key",
                requires: "psk_key_exchange_modes",
            });
        }
        if self.early_data && self.psks.is_empty() {
            return Err(WireError::ExtensionRequires {
                message: "ClientHello",
                extension: "early_data",
                requires: "pre_shared_key",
            });
        }
        for p in &self.psks {
            if p.identity.is_empty() {
                return Err(WireError::bad_length("identity", 0));
            }
            if !(32..=255).contains(&p.binder_len) {
                return Err(WireError::bad_length("binder", p.binder_len));
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
    use crate::wire::{truncated_for_binders, ClientHello};

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
}
