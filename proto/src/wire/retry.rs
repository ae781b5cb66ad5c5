//! The second ClientHello (RFC 8446 §4.1.2): the one rule of what may differ from the first
//! after a HelloRetryRequest. The engine checks what it sends with it, the Crypto Service
//! refuses a second ClientHello that breaks it.

use super::hello::{ClientHello, ServerHello, RANDOM_OFFSET};
use std::fmt;

use super::{Extension, ExtensionType, WireError};

/// The rule of RFC 8446 §4.1.2 a second ClientHello breaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryRule {
    /// The message it answers is not a HelloRetryRequest.
    NotHelloRetryRequest,
    /// It changes what must stay byte for byte the same.
    Changes(RetryField),
    /// It does not carry exactly one key share, for the HelloRetryRequest's `group`.
    KeyShare {
        /// The group the HelloRetryRequest names.
        group: u16,
    },
    /// It keeps early_data (RFC 8446 §4.2.10).
    EarlyData,
    /// It does not carry exactly the HelloRetryRequest's cookie (RFC 8446 §4.2.2).
    Cookie,
    /// Its padding is not all zeros (RFC 7685 §3).
    Padding,
    /// A PSK changes its binder length.
    BinderLength,
    /// A PSK usable with the HelloRetryRequest's cipher suite is left out.
    DropsUsablePsk,
    /// PSK identities are added or reordered.
    AddsOrReordersPsks,
}

/// What a second ClientHello must keep from the first (RFC 8446 §4.1.2).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RetryField {
    /// ClientHello.random.
    Random,
    /// legacy_session_id.
    LegacySessionId,
    /// cipher_suites (or legacy_version, legacy_compression_methods).
    CipherSuites,
    /// The list or the order of the extensions.
    ExtensionList,
    /// The body of the extension of this type.
    Extension(u16),
}

impl fmt::Display for RetryRule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotHelloRetryRequest => write!(f, "answers no HelloRetryRequest"),
            Self::Changes(RetryField::Random) => write!(f, "changes the random"),
            Self::Changes(RetryField::LegacySessionId) => write!(f, "changes legacy_session_id"),
            Self::Changes(RetryField::CipherSuites) => write!(f, "changes cipher_suites"),
            Self::Changes(RetryField::ExtensionList) => {
                write!(f, "changes the list or the order of its extensions")
            }
            Self::Changes(RetryField::Extension(typ)) => write!(f, "changes extension {typ:#06x}"),
            Self::KeyShare { group } => {
                write!(f, "must carry one key share, for group {group:#06x}")
            }
            Self::EarlyData => write!(f, "carries early_data (RFC 8446 §4.2.10)"),
            Self::Cookie => write!(
                f,
                "must carry exactly the HelloRetryRequest's cookie (RFC 8446 §4.2.2)"
            ),
            Self::Padding => write!(f, "has padding with non-zero bytes (RFC 7685 §3)"),
            Self::BinderLength => write!(f, "changes the binder length of a PSK"),
            Self::DropsUsablePsk => write!(
                f,
                "drops a PSK usable with the HelloRetryRequest's cipher suite"
            ),
            Self::AddsOrReordersPsks => write!(f, "adds or reorders PSK identities"),
        }?;
        write!(f, " (RFC 8446 §4.1.2)")
    }
}

/// Checks `second` against `first` and the HelloRetryRequest `hrr` (all three complete
/// handshake messages, header included). RFC 8446 §4.1.2: "the client MUST send the same
/// ClientHello without modification, except as follows":
/// - key_share: replaced by a single entry of the HRR's group when the HRR names one
///   (§4.2.8), else unchanged;
/// - early_data: removed (§4.2.10: not allowed after a HelloRetryRequest);
/// - cookie: present with the HRR's value exactly when the HRR carries one (§4.2.2);
/// - pre_shared_key: new ticket ages and binders; identities kept in order, and only those
///   incompatible with the HRR's cipher suite (another hash, seen by the binder length) may
///   be dropped; it stays last (§4.2.11);
/// - padding (RFC 7685): may be added, removed or resized; all zeros (RFC 7685 §3).
///
/// Everything else is byte for byte the same: legacy_version, random, legacy_session_id,
/// cipher_suites, legacy_compression_methods, and every other extension, in the same order.
pub fn check_second_client_hello(first: &[u8], hrr: &[u8], second: &[u8]) -> Result<(), WireError> {
    let first = ClientHello::parse(first)?;
    let second = ClientHello::parse(second)?;
    let hrr = ServerHello::parse(hrr)?;
    if !hrr.is_hello_retry_request() {
        return Err(WireError::SecondClientHello(
            RetryRule::NotHelloRetryRequest,
        ));
    }
    let changed = |what| WireError::SecondClientHello(RetryRule::Changes(what));

    // legacy_version, random, legacy_session_id, cipher_suites, legacy_compression_methods.
    fn head<'a>(ch: &ClientHello<'a>) -> &'a [u8] {
        &ch.raw[RANDOM_OFFSET - 2..ch.extensions_len_offset]
    }
    if head(&first) != head(&second) {
        let what = if first.random != second.random {
            RetryField::Random
        } else if first.legacy_session_id != second.legacy_session_id {
            RetryField::LegacySessionId
        } else {
            RetryField::CipherSuites
        };
        return Err(changed(what));
    }

    // Every extension but those below, in the same order with the same bytes.
    let kept = |exts: &[Extension<'_>]| -> Vec<(ExtensionType, Vec<u8>)> {
        exts.iter()
            .filter(|e| {
                !matches!(
                    e.typ,
                    ExtensionType::EarlyData
                        | ExtensionType::Cookie
                        | ExtensionType::Padding
                        | ExtensionType::PreSharedKey
                )
            })
            .map(|e| (e.typ, e.body.to_vec()))
            .collect()
    };
    let (a, b) = (kept(&first.extensions), kept(&second.extensions));
    if a.len() != b.len() || a.iter().zip(&b).any(|(x, y)| x.0 != y.0) {
        return Err(changed(RetryField::ExtensionList));
    }
    for ((typ, x), (_, y)) in a.iter().zip(&b) {
        if *typ == ExtensionType::KeyShare && hrr.selected_group.is_some() {
            continue;
        }
        if x != y {
            return Err(changed(RetryField::Extension(typ.get())));
        }
    }

    // key_share (§4.1.2, §4.2.8): one entry, for the HRR's group.
    if let Some(group) = hrr.selected_group {
        match second.key_shares.as_deref() {
            Some([entry]) if entry.group == group => {}
            _ => {
                return Err(WireError::SecondClientHello(RetryRule::KeyShare {
                    group: group.get(),
                }))
            }
        }
    }

    // early_data (§4.2.10): "A client MUST NOT include the "early_data" extension in its
    // followup ClientHello".
    if second.early_data {
        return Err(WireError::SecondClientHello(RetryRule::EarlyData));
    }

    // cookie (§4.2.2): echoed when the HRR sent one, never invented.
    if second.cookie != hrr.cookie {
        return Err(WireError::SecondClientHello(RetryRule::Cookie));
    }

    // padding (RFC 7685 §3): "The client MUST fill the padding extension completely with
    // zero bytes".
    if let Some(p) = second.extension(ExtensionType::Padding) {
        if p.body.iter().any(|&b| b != 0) {
            return Err(WireError::SecondClientHello(RetryRule::Padding));
        }
    }

    check_psks(&first, &hrr, &second)
}

/// pre_shared_key after a HelloRetryRequest (§4.1.2): the first one's identities in the same
/// order, with the same binder lengths; a PSK may be left out only when its hash is not the
/// HRR's suite's (its binder length is not that hash's length).
fn check_psks(
    first: &ClientHello<'_>,
    hrr: &ServerHello<'_>,
    second: &ClientHello<'_>,
) -> Result<(), WireError> {
    let suite_len = hrr.cipher_suite.hash().map(|h| h.output_len());
    let offered: Vec<(&[u8], usize)> = first
        .pre_shared_key
        .iter()
        .flat_map(|p| p.identities.iter().zip(&p.binders))
        .map(|(i, b)| (i.identity, b.binder.len()))
        .collect();
    let sent: Vec<(&[u8], usize)> = second
        .pre_shared_key
        .iter()
        .flat_map(|p| p.identities.iter().zip(&p.binders))
        .map(|(i, b)| (i.identity, b.binder.len()))
        .collect();
    let mut next = sent.iter().peekable();
    for (identity, len) in &offered {
        if let Some((_, l)) = next.next_if(|(i, _)| i == identity) {
            if l != len {
                return Err(WireError::SecondClientHello(RetryRule::BinderLength));
            }
        } else if suite_len.is_none_or(|l| l == *len) {
            return Err(WireError::SecondClientHello(RetryRule::DropsUsablePsk));
        }
    }
    if next.next().is_some() {
        return Err(WireError::SecondClientHello(RetryRule::AddsOrReordersPsks));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::hello::{ClientHelloBuilder, OfferedPsk};
    use crate::wire::test_vectors::{self, rfc8448};
    use crate::wire::{
        encode_handshake, CipherSuite, HandshakeType, NamedGroup, PskKeyExchangeMode,
        SignatureScheme, HELLO_RETRY_REQUEST_RANDOM,
    };

    const SHA256_ID: &[u8] = b"ticket-sha256";
    const SHA384_ID: &[u8] = b"ticket-sha384";

    /// A HelloRetryRequest for `suite`, naming `group` and carrying `cookie` when given.
    fn hrr(suite: CipherSuite, group: Option<NamedGroup>, cookie: Option<&[u8]>) -> Vec<u8> {
        let mut body = vec![3, 3];
        body.extend_from_slice(&HELLO_RETRY_REQUEST_RANDOM);
        body.push(32);
        body.extend_from_slice(&[0x5e; 32]);
        body.extend_from_slice(&suite.get().to_be_bytes());
        body.push(0);
        let mut exts = vec![0, 0x2b, 0, 2, 3, 4];
        if let Some(g) = group {
            exts.extend_from_slice(&[0, 0x33, 0, 2]);
            exts.extend_from_slice(&g.get().to_be_bytes());
        }
        if let Some(c) = cookie {
            exts.extend_from_slice(&[0, 0x2c]);
            exts.extend_from_slice(&(c.len() as u16 + 2).to_be_bytes());
            exts.extend_from_slice(&(c.len() as u16).to_be_bytes());
            exts.extend_from_slice(c);
        }
        body.extend_from_slice(&(exts.len() as u16).to_be_bytes());
        body.extend_from_slice(&exts);
        encode_handshake(HandshakeType::ServerHello, &body).unwrap()
    }

    /// The engine's kind of first ClientHello: every extension it may send, two PSKs of
    /// different hashes, early data and padding.
    fn first_builder() -> ClientHelloBuilder {
        ClientHelloBuilder::new([0x11; 32])
            .legacy_session_id(&[0x5e; 32])
            .cipher_suites(&[
                CipherSuite::TlsAes256GcmSha384,
                CipherSuite::TlsAes128GcmSha256,
                CipherSuite::TlsChacha20Poly1305Sha256,
            ])
            .server_name("example.com")
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp256r1])
            .signature_algorithms(&[SignatureScheme::Ed25519, SignatureScheme::RsaPssRsaeSha256])
            .key_share(NamedGroup::X25519, &[0x25; 32])
            .alpn_protocols(&[b"h2", b"http/1.1"])
            .psk_modes(&[PskKeyExchangeMode::PskDheKe])
            .post_handshake_auth(true)
            .early_data(true)
            .record_size_limit(16385)
            .padding(Some(40))
            .psk(SHA384_ID, 1000, 48)
            .psk(SHA256_ID, 2000, 32)
    }

    /// The PSKs of `b` with new ages, keeping those whose binder has `len` bytes.
    fn psks_of_len(b: &ClientHelloBuilder, len: usize) -> Vec<OfferedPsk> {
        b.psks()
            .iter()
            .filter(|p| p.binder_len == len)
            .map(|p| OfferedPsk {
                obfuscated_ticket_age: p.obfuscated_ticket_age + 150,
                ..p.clone()
            })
            .collect()
    }

    /// (type, body) of each extension.
    fn exts(raw: &[u8]) -> Vec<(u16, Vec<u8>)> {
        ClientHello::parse(raw)
            .unwrap()
            .extensions
            .iter()
            .map(|e| (e.typ.get(), e.body.to_vec()))
            .collect()
    }

    /// Checks that the bytes before the extensions block are the same and returns the
    /// extension types that differ between the two ClientHellos (added, removed, or with
    /// other bytes), sorted.
    fn diff(first: &[u8], second: &[u8]) -> Vec<u16> {
        let head = |raw: &[u8]| {
            let at = ClientHello::parse(raw).unwrap().extensions_len_offset;
            raw[4..at].to_vec()
        };
        assert_eq!(head(first), head(second), "the bytes before the extensions");
        let (a, b) = (exts(first), exts(second));
        let mut out = Vec::new();
        for (t, body) in &a {
            if b.iter()
                .find(|(u, _)| u == t)
                .is_none_or(|(_, c)| c != body)
            {
                out.push(*t);
            }
        }
        for (t, _) in &b {
            if !a.iter().any(|(u, _)| u == t) {
                out.push(*t);
            }
        }
        // The extensions in both keep their relative order.
        let common = |x: &[(u16, Vec<u8>)], y: &[(u16, Vec<u8>)]| -> Vec<u16> {
            x.iter()
                .map(|e| e.0)
                .filter(|t| y.iter().any(|f| f.0 == *t))
                .collect()
        };
        assert_eq!(common(&a, &b), common(&b, &a), "order of the extensions");
        out.sort_unstable();
        out
    }

    /// Re-encodes `raw` with its extension list changed by `f`.
    fn with_exts(raw: &[u8], f: impl FnOnce(&mut Vec<(u16, Vec<u8>)>)) -> Vec<u8> {
        let mut list = exts(raw);
        f(&mut list);
        test_vectors::client_hello_with_extensions(raw, false, &list)
    }

    /// HRR suite, group, cookie; the PSKs kept; the extensions that change.
    type Case<'a> = (
        CipherSuite,
        Option<NamedGroup>,
        Option<&'a [u8]>,
        &'a [&'a [u8]],
        &'a [u16],
    );

    const KEY_SHARE: u16 = 51;
    const EARLY_DATA: u16 = 42;
    const COOKIE: u16 = 44;
    const PADDING: u16 = 21;
    const PSK: u16 = 41;

    #[test]
    fn rfc8448_section5_second_client_hello_follows_the_rule() {
        let m = &rfc8448().hello_retry_request.messages;
        let ch2 = m.client_hello_2.as_deref().expect("client_hello_2");
        let hrr = m
            .hello_retry_request
            .as_deref()
            .expect("hello_retry_request");
        check_second_client_hello(&m.client_hello, hrr, ch2).unwrap();
        assert_eq!(
            diff(&m.client_hello, ch2),
            [PADDING, COOKIE, KEY_SHARE],
            "RFC 8448 §5 also resizes the padding"
        );
    }

    /// Every HRR case: the builder's second ClientHello differs from the first in exactly
    /// the extensions §4.1.2 lets change, and passes the rule.
    #[test]
    fn retry_builder_changes_only_what_rfc8446_allows() {
        let b1 = first_builder();
        let ch1 = b1.build().unwrap();
        let p256 = [4u8; 65];
        // (HRR suite, group, cookie, PSKs kept, changed extensions)
        let cases: [Case<'_>; 4] = [
            // Group HRR for a SHA-256 suite: the SHA-384 PSK is dropped.
            (
                CipherSuite::TlsAes128GcmSha256,
                Some(NamedGroup::Secp256r1),
                None,
                &[SHA256_ID],
                &[PSK, EARLY_DATA, KEY_SHARE],
            ),
            // Cookie-only HRR: the same key share.
            (
                CipherSuite::TlsAes256GcmSha384,
                None,
                Some(b"cookie"),
                &[SHA384_ID],
                &[PSK, EARLY_DATA, COOKIE],
            ),
            // Cookie and group.
            (
                CipherSuite::TlsChacha20Poly1305Sha256,
                Some(NamedGroup::Secp256r1),
                Some(&[0xc0; 300]),
                &[SHA256_ID],
                &[PSK, EARLY_DATA, COOKIE, KEY_SHARE],
            ),
            // Group HRR, both PSKs of the suite's hash kept (here none is dropped).
            (
                CipherSuite::TlsAes256GcmSha384,
                Some(NamedGroup::Secp256r1),
                None,
                &[SHA384_ID],
                &[PSK, EARLY_DATA, KEY_SHARE],
            ),
        ];
        for (suite, group, cookie, kept, changed) in cases {
            let len = suite.hash().unwrap().output_len();
            let psks = psks_of_len(&b1, len);
            let ch2 = b1
                .retry(cookie, group.map(|g| (g, &p256[..])), psks)
                .build()
                .unwrap();
            let h = hrr(suite, group, cookie);
            check_second_client_hello(&ch1, &h, &ch2).unwrap();
            assert_eq!(diff(&ch1, &ch2), changed, "{suite:?} {group:?}");
            let parsed = ClientHello::parse(&ch2).unwrap();
            let ids: Vec<&[u8]> = parsed
                .pre_shared_key
                .as_ref()
                .unwrap()
                .identities
                .iter()
                .map(|i| i.identity)
                .collect();
            assert_eq!(ids, kept);
            assert_eq!(parsed.cookie, cookie);
            assert!(!parsed.early_data);
            assert_eq!(parsed.extensions.last().unwrap().typ.get(), PSK);
            // The padding may change, be added or removed.
            for pad in [None, Some(0), Some(200)] {
                let padded = b1
                    .retry(cookie, group.map(|g| (g, &p256[..])), psks_of_len(&b1, len))
                    .padding(pad)
                    .build()
                    .unwrap();
                check_second_client_hello(&ch1, &h, &padded).unwrap();
                let mut want = changed.to_vec();
                want.push(PADDING);
                want.sort_unstable();
                assert_eq!(diff(&ch1, &padded), want);
            }
        }
        // Without a PSK, early data or padding: a group HRR changes the key share only.
        let plain = ClientHelloBuilder::new([1; 32])
            .supported_groups(&[NamedGroup::X25519, NamedGroup::Secp384r1])
            .key_share(NamedGroup::X25519, &[]);
        let ch1 = plain.build().unwrap();
        let ch2 = plain
            .retry(None, Some((NamedGroup::Secp384r1, &[])), Vec::new())
            .build()
            .unwrap();
        let h = hrr(
            CipherSuite::TlsAes128GcmSha256,
            Some(NamedGroup::Secp384r1),
            None,
        );
        check_second_client_hello(&ch1, &h, &ch2).unwrap();
        assert_eq!(diff(&ch1, &ch2), [KEY_SHARE]);
        // All PSKs dropped: no pre_shared_key left.
        let b = ClientHelloBuilder::new([1; 32])
            .supported_groups(&[NamedGroup::X25519])
            .key_share(NamedGroup::X25519, &[])
            .psk_modes(&[PskKeyExchangeMode::PskDheKe])
            .psk(SHA384_ID, 0, 48);
        let ch2 = b.retry(Some(b"c"), None, Vec::new()).build().unwrap();
        let h = hrr(CipherSuite::TlsAes128GcmSha256, None, Some(b"c"));
        check_second_client_hello(&b.build().unwrap(), &h, &ch2).unwrap();
        assert_eq!(diff(&b.build().unwrap(), &ch2), [PSK, COOKIE]);
    }

    /// Every change §4.1.2 does not allow is refused.
    #[test]
    fn any_other_change_is_refused() {
        let b1 = first_builder();
        let ch1 = b1.build().unwrap();
        let suite = CipherSuite::TlsAes128GcmSha256;
        let group = NamedGroup::Secp256r1;
        let p256 = [4u8; 65];
        let h = hrr(suite, Some(group), Some(b"cookie"));
        let good = || {
            b1.retry(
                Some(b"cookie"),
                Some((group, &p256[..])),
                psks_of_len(&b1, 32),
            )
        };
        let ch2 = good().build().unwrap();
        check_second_client_hello(&ch1, &h, &ch2).unwrap();

        let mut random = ch2.clone();
        random[RANDOM_OFFSET] ^= 1;
        let mut session_id = ch2.clone();
        session_id[RANDOM_OFFSET + 33] ^= 1;
        let mut bad: Vec<(&str, Vec<u8>)> = vec![
            ("random", random),
            ("legacy_session_id", session_id),
            (
                "cipher_suites narrowed to the HRR's",
                good().cipher_suites(&[suite]).build().unwrap(),
            ),
            (
                "server_name",
                good().server_name("example.org").build().unwrap(),
            ),
            ("ALPN", good().alpn_protocols(&[b"h2"]).build().unwrap()),
            (
                "supported_groups",
                good()
                    .supported_groups(&[NamedGroup::Secp256r1, NamedGroup::X25519])
                    .build()
                    .unwrap(),
            ),
            (
                "signature_algorithms",
                good()
                    .signature_algorithms(&[SignatureScheme::Ed25519])
                    .build()
                    .unwrap(),
            ),
            (
                "post_handshake_auth removed",
                good().post_handshake_auth(false).build().unwrap(),
            ),
            (
                "signature_algorithms_cert added",
                good()
                    .signature_algorithms_cert(&[SignatureScheme::Ed25519])
                    .build()
                    .unwrap(),
            ),
            (
                "record_size_limit",
                good().record_size_limit(1000).build().unwrap(),
            ),
            ("early_data kept", good().early_data(true).build().unwrap()),
            (
                "no cookie",
                b1.retry(None, Some((group, &p256[..])), psks_of_len(&b1, 32))
                    .build()
                    .unwrap(),
            ),
            (
                "another cookie",
                b1.retry(
                    Some(b"cookiE"),
                    Some((group, &p256[..])),
                    psks_of_len(&b1, 32),
                )
                .build()
                .unwrap(),
            ),
            (
                "the first key share kept",
                b1.retry(Some(b"cookie"), None, psks_of_len(&b1, 32))
                    .build()
                    .unwrap(),
            ),
            (
                "a share for another group",
                b1.retry(
                    Some(b"cookie"),
                    Some((NamedGroup::X25519, &[9; 32])),
                    psks_of_len(&b1, 32),
                )
                .build()
                .unwrap(),
            ),
            (
                "two shares",
                good()
                    .key_share(NamedGroup::X25519, &[9; 32])
                    .build()
                    .unwrap(),
            ),
            (
                "the SHA-256 PSK dropped",
                b1.retry(Some(b"cookie"), Some((group, &p256[..])), Vec::new())
                    .build()
                    .unwrap(),
            ),
            ("a new PSK", good().psk(b"another", 0, 32).build().unwrap()),
            (
                "both PSKs kept, reordered",
                b1.retry(
                    Some(b"cookie"),
                    Some((group, &p256[..])),
                    b1.psks().iter().rev().cloned().collect(),
                )
                .build()
                .unwrap(),
            ),
            (
                "a kept PSK with another binder length",
                b1.retry(
                    Some(b"cookie"),
                    Some((group, &p256[..])),
                    vec![OfferedPsk {
                        identity: SHA256_ID.to_vec(),
                        obfuscated_ticket_age: 0,
                        binder_len: 48,
                    }],
                )
                .build()
                .unwrap(),
            ),
            ("extensions reordered", with_exts(&ch2, |l| l.swap(0, 1))),
            (
                "an unknown extension added",
                with_exts(&ch2, |l| l.insert(2, (0xfafa, vec![]))),
            ),
            (
                "server_name removed",
                with_exts(&ch2, |l| l.retain(|e| e.0 != 0)),
            ),
            (
                "non-zero padding",
                with_exts(&ch2, |l| {
                    let p = l.iter_mut().find(|e| e.0 == PADDING).unwrap();
                    p.1[3] = 1;
                }),
            ),
        ];
        // A cookie when the HRR sent none.
        let no_cookie_hrr = hrr(suite, Some(group), None);
        for (what, ch) in bad.drain(..) {
            ClientHello::parse(&ch).unwrap_or_else(|e| panic!("{what}: {e}"));
            let e = check_second_client_hello(&ch1, &h, &ch).unwrap_err();
            assert_eq!(
                e.alert(),
                crate::wire::AlertDescription::IllegalParameter,
                "{what}"
            );
        }
        check_second_client_hello(&ch1, &no_cookie_hrr, &ch2).unwrap_err();
        // Not a HelloRetryRequest.
        let mut sh = h.clone();
        sh[RANDOM_OFFSET] ^= 1;
        check_second_client_hello(&ch1, &sh, &ch2).unwrap_err();
    }
}
