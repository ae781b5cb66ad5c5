//! Caps on what one message, one flight and one request may hold.
//!
//! RFC 8446 lets a handshake message reach 2^24 - 1 bytes and a u16 list hold 32,767 entries;
//! real stacks send a small fraction of that. Past these caps a view refuses the input with
//! [`WireError::TooLarge`](super::WireError::TooLarge) or
//! [`WireError::TooMany`](super::WireError::TooMany) (decode_error, and `invalid_format` at
//! the Crypto Service) before doing any per-entry work, so the cost of parsing is linear in
//! bytes that are themselves bounded. Each cap sits well above what a real stack sends.

use super::HandshakeType;

/// Body of a ClientHello. A browser ClientHello with an ML-KEM key share is under 2 KiB; the
/// engine's own stays far below this even with several tickets (a few hundred bytes each)
/// and an HRR cookie. Two full records (RFC 8446 §5.1: 2^14 bytes each).
pub const MAX_CLIENT_HELLO_LEN: usize = 32 * 1024;

/// Body of a Certificate. OpenSSL refuses chains over 100 KiB by default (`max_cert_list`);
/// rustls and the engine's joiner refuse any handshake message over 64 KiB.
pub const MAX_CERTIFICATE_LEN: usize = 256 * 1024;

/// Body of any other handshake message: rustls' `MAX_HANDSHAKE_SIZE`, the engine joiner's
/// default cap.
pub const MAX_HANDSHAKE_LEN: usize = 0xffff;

/// The largest body a handshake message of type `typ` may have, and what to call it.
pub fn max_body_len(typ: HandshakeType) -> (usize, &'static str) {
    match typ {
        HandshakeType::ClientHello => (MAX_CLIENT_HELLO_LEN, "ClientHello"),
        HandshakeType::Certificate => (MAX_CERTIFICATE_LEN, "Certificate"),
        _ => (MAX_HANDSHAKE_LEN, "handshake message"),
    }
}

/// Messages in one concatenated flight. The longest the Crypto Service receives is a whole
/// handshake (`c_init_client_finished`): ClientHello, HelloRetryRequest, ClientHello,
/// ServerHello, EncryptedExtensions, CertificateRequest, Certificate, CertificateVerify,
/// Finished, EndOfEarlyData: 10.
pub const MAX_FLIGHT_MESSAGES: usize = 16;

/// Bytes of one concatenated flight: a Certificate at its cap plus as much again for the
/// rest of a handshake (two ClientHellos at their cap are 64 KiB).
pub const MAX_FLIGHT_LEN: usize = 2 * MAX_CERTIFICATE_LEN;

/// Bytes of one encoded gRPC request to the Crypto Service. The largest legitimate one is a
/// flight, a client Certificate and a CertificateRequest (`c_post_hand_auth`): 832 KiB at
/// the caps above; the rest (session id, key id, PSK infos) is small.
pub const MAX_REQUEST_LEN: usize = 1024 * 1024;

// c_post_hand_auth at its caps, with 64 KiB for its small fields, fits one request.
const _: () = assert!(
    MAX_FLIGHT_LEN + MAX_CERTIFICATE_LEN + MAX_HANDSHAKE_LEN + 64 * 1024 <= MAX_REQUEST_LEN
);

/// Extensions in one message's extension block. Browsers send about 18 (GREASE included),
/// OpenSSL 3.0 nine; a server's EncryptedExtensions or a NewSessionTicket a handful. The
/// RFC 8446 §4.2 table plus the other registered types in use are under 64.
pub const MAX_EXTENSIONS: usize = 64;

/// Extensions of one CertificateEntry: TLS 1.3 defines status_request and
/// signed_certificate_timestamp there (RFC 8446 §4.4.2), RFC 9345 delegated_credential.
pub const MAX_CERTIFICATE_ENTRY_EXTENSIONS: usize = 8;

/// Entries of a Certificate: real chains have 2 to 5; webpki builds paths through at most 6
/// intermediates.
pub const MAX_CERTIFICATE_ENTRIES: usize = 16;

/// ClientHello key_share entries. Browsers send 2 or 3 (a hybrid ML-KEM share, X25519,
/// GREASE), OpenSSL 3.0 one; each empty entry costs the Crypto Service a key pair.
pub const MAX_KEY_SHARES: usize = 8;

/// supported_groups entries: OpenSSL 3.0 sends 10 (finite-field groups included), browsers
/// about 5.
pub const MAX_NAMED_GROUPS: usize = 64;

/// signature_algorithms / signature_algorithms_cert entries: OpenSSL 3.0 sends 20, browsers
/// 8 to 11.
pub const MAX_SIGNATURE_SCHEMES: usize = 64;

/// ClientHello cipher_suites: OpenSSL 3.0 sends 31 (TLS 1.2 suites included), browsers
/// about 16.
pub const MAX_CIPHER_SUITES: usize = 128;

/// pre_shared_key identities: clients offer one ticket (rustls, browsers) or two (OpenSSL:
/// a ticket and an external PSK). The Crypto Service's own policy is stricter.
pub const MAX_PSK_IDENTITIES: usize = 16;

/// ALPN protocol names in a ClientHello: browsers offer 2 or 3 (h2, http/1.1).
pub const MAX_ALPN_PROTOCOLS: usize = 32;

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::codec::Reader;
    use crate::wire::extensions::{self, read_extensions, Extension, ExtensionContext};
    use crate::wire::handshake::{encode_handshake, split_handshake_messages, HEADER_LEN};
    use crate::wire::{
        Certificate, ClientHello, ClientHelloBuilder, ExtensionType, HandshakeMessage, NamedGroup,
        WireError,
    };

    fn ext_bytes(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let mut out = Vec::new();
        for (t, b) in exts {
            out.extend_from_slice(&t.to_be_bytes());
            out.extend_from_slice(&(b.len() as u16).to_be_bytes());
            out.extend_from_slice(b);
        }
        out
    }

    fn block(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let body = ext_bytes(exts);
        let mut out = (body.len() as u16).to_be_bytes().to_vec();
        out.extend_from_slice(&body);
        out
    }

    /// `n` extensions of distinct unregistered types (allowed in every message).
    fn unknown_exts(n: usize) -> Vec<(u16, Vec<u8>)> {
        (0..n).map(|i| (0x7000 + i as u16, Vec::new())).collect()
    }

    /// The engine's ClientHello with `exts` appended to its extension block.
    fn client_hello_with(exts: &[(u16, Vec<u8>)]) -> Vec<u8> {
        let base = ClientHelloBuilder::new([0; 32])
            .supported_groups(&[NamedGroup::X25519])
            .key_share(NamedGroup::X25519, &[])
            .build()
            .unwrap();
        let ch = ClientHello::parse(&base).unwrap();
        let mut body = base[HEADER_LEN..ch.extensions_len_offset].to_vec();
        let mut list = base[ch.extensions_len_offset + 2..].to_vec();
        list.extend_from_slice(&ext_bytes(exts));
        body.extend_from_slice(&(list.len() as u16).to_be_bytes());
        body.extend_from_slice(&list);
        encode_handshake(HandshakeType::ClientHello, &body).unwrap()
    }

    fn parse_block(data: &[u8], ctx: ExtensionContext) -> Result<usize, WireError> {
        read_extensions(&mut Reader::new(data, "test"), ctx).map(|v| v.len())
    }

    #[test]
    fn an_extension_block_holds_at_most_its_cap() {
        let full = unknown_exts(MAX_EXTENSIONS);
        assert_eq!(
            parse_block(&block(&full), ExtensionContext::EncryptedExtensions),
            Ok(MAX_EXTENSIONS)
        );
        assert_eq!(
            parse_block(
                &block(&unknown_exts(MAX_EXTENSIONS + 1)),
                ExtensionContext::EncryptedExtensions
            ),
            Err(WireError::TooMany {
                what: "extensions in one block",
                max: MAX_EXTENSIONS
            })
        );
        let entry = unknown_exts(MAX_CERTIFICATE_ENTRY_EXTENSIONS + 1);
        assert!(matches!(
            parse_block(&block(&entry), ExtensionContext::Certificate),
            Err(WireError::TooMany { .. })
        ));
    }

    #[test]
    fn a_duplicate_is_found_whatever_its_distance_and_type() {
        // The first and the last of a full block; types at the bitset's word edges.
        for typ in [0u16, 63, 64, 0x7000, 0xffff] {
            let mut exts = unknown_exts(MAX_EXTENSIONS - 2);
            exts.insert(0, (typ, Vec::new()));
            exts.push((typ, Vec::new()));
            assert_eq!(
                parse_block(&block(&exts), ExtensionContext::ClientHello),
                Err(WireError::DuplicateExtension {
                    message: "ClientHello",
                    typ
                }),
                "{typ:#06x}"
            );
        }
    }

    #[test]
    fn a_client_hello_with_thousands_of_extensions_is_refused() {
        let raw = client_hello_with(&unknown_exts(4000));
        assert!(raw.len() < MAX_CLIENT_HELLO_LEN, "refused for the count");
        assert!(matches!(
            ClientHello::parse(&raw),
            Err(WireError::TooMany { .. })
        ));
    }

    fn list_ext(typ: ExtensionType, items: &[Vec<u8>], prefix_u8: bool) -> Extension<'static> {
        let inner: Vec<u8> = items.concat();
        let mut body = if prefix_u8 {
            vec![inner.len() as u8]
        } else {
            (inner.len() as u16).to_be_bytes().to_vec()
        };
        body.extend_from_slice(&inner);
        Extension {
            typ,
            body: Box::leak(body.into_boxed_slice()),
            offset: 0,
        }
    }

    fn u16s(n: usize) -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| (0x1000 + i as u16).to_be_bytes().to_vec())
            .collect()
    }

    #[test]
    fn code_point_lists_are_capped() {
        let groups = |n| list_ext(ExtensionType::SupportedGroups, &u16s(n), false);
        assert_eq!(
            extensions::named_groups(&groups(MAX_NAMED_GROUPS)).map(|v| v.len()),
            Ok(MAX_NAMED_GROUPS)
        );
        assert!(matches!(
            extensions::named_groups(&groups(MAX_NAMED_GROUPS + 1)),
            Err(WireError::TooMany { .. })
        ));
        let schemes = list_ext(
            ExtensionType::SignatureAlgorithms,
            &u16s(MAX_SIGNATURE_SCHEMES + 1),
            false,
        );
        assert!(matches!(
            extensions::signature_schemes(&schemes),
            Err(WireError::TooMany { .. })
        ));
    }

    #[test]
    fn key_shares_are_capped_before_the_duplicate_check() {
        let shares = |n: usize| {
            let entries: Vec<Vec<u8>> = (0..n)
                .map(|i| {
                    let mut e = (0x1000 + i as u16).to_be_bytes().to_vec();
                    e.extend_from_slice(&[0, 1, 7]);
                    e
                })
                .collect();
            list_ext(ExtensionType::KeyShare, &entries, false)
        };
        assert_eq!(
            extensions::client_key_shares(&shares(MAX_KEY_SHARES)).map(|v| v.len()),
            Ok(MAX_KEY_SHARES)
        );
        assert_eq!(
            extensions::client_key_shares(&shares(MAX_KEY_SHARES + 1)),
            Err(WireError::TooMany {
                what: "key_share entries",
                max: MAX_KEY_SHARES
            })
        );
    }

    #[test]
    fn psk_identities_and_binders_are_capped() {
        let offer = |n: usize| {
            let ids: Vec<Vec<u8>> = (0..n).map(|_| vec![0, 1, b'x', 0, 0, 0, 0]).collect();
            let mut body = list_ext(ExtensionType::PreSharedKey, &ids, false)
                .body
                .to_vec();
            let binders: Vec<u8> = (0..n)
                .flat_map(|_| [&[32u8][..], &[0; 32]].concat())
                .collect();
            body.extend_from_slice(&(binders.len() as u16).to_be_bytes());
            body.extend_from_slice(&binders);
            Extension {
                typ: ExtensionType::PreSharedKey,
                body: Box::leak(body.into_boxed_slice()),
                offset: 0,
            }
        };
        let ok = extensions::offered_psks(&offer(MAX_PSK_IDENTITIES)).unwrap();
        assert_eq!(ok.identities.len(), MAX_PSK_IDENTITIES);
        assert!(matches!(
            extensions::offered_psks(&offer(MAX_PSK_IDENTITIES + 1)),
            Err(WireError::TooMany { .. })
        ));
    }

    #[test]
    fn alpn_names_are_capped_and_server_name_holds_one_host() {
        let names: Vec<Vec<u8>> = (0..=MAX_ALPN_PROTOCOLS).map(|_| vec![1, b'a']).collect();
        let alpn = list_ext(
            ExtensionType::ApplicationLayerProtocolNegotiation,
            &names,
            false,
        );
        assert!(matches!(
            extensions::alpn_protocols(&alpn),
            Err(WireError::TooMany { .. })
        ));
        let hosts = [vec![0, 0, 1, b'a'], vec![0, 0, 1, b'b']];
        let sni = list_ext(ExtensionType::ServerName, &hosts, false);
        assert!(matches!(
            extensions::server_names(&sni),
            Err(WireError::DuplicateHostName)
        ));
    }

    #[test]
    fn cipher_suites_are_capped() {
        let base = ClientHelloBuilder::new([0; 32]).build().unwrap();
        let suites: Vec<_> = (0..=MAX_CIPHER_SUITES as u16)
            .map(|i| crate::wire::CipherSuite::from(0x2000 + i))
            .collect();
        let raw = ClientHelloBuilder::new([0; 32])
            .cipher_suites(&suites)
            .build()
            .unwrap();
        ClientHello::parse(&base).unwrap();
        assert!(matches!(
            ClientHello::parse(&raw),
            Err(WireError::TooMany { .. })
        ));
    }

    /// A Certificate of `entries` entries, each with `exts` extensions.
    fn certificate(entries: usize, exts: usize) -> Vec<u8> {
        let mut list = Vec::new();
        for _ in 0..entries {
            list.extend_from_slice(&[0, 0, 2, 0x30, 0]);
            list.extend_from_slice(&block(&unknown_exts(exts)));
        }
        let mut body = vec![0];
        body.extend_from_slice(&(list.len() as u32).to_be_bytes()[1..]);
        body.extend_from_slice(&list);
        encode_handshake(HandshakeType::Certificate, &body).unwrap()
    }

    #[test]
    fn certificate_entries_and_their_extensions_are_capped() {
        let full = certificate(MAX_CERTIFICATE_ENTRIES, MAX_CERTIFICATE_ENTRY_EXTENSIONS);
        assert_eq!(
            Certificate::parse(&full).unwrap().entries.len(),
            MAX_CERTIFICATE_ENTRIES
        );
        assert_eq!(
            Certificate::parse(&certificate(MAX_CERTIFICATE_ENTRIES + 1, 0)).unwrap_err(),
            WireError::TooMany {
                what: "Certificate entries",
                max: MAX_CERTIFICATE_ENTRIES
            }
        );
        // The shape of the 6 s request of the review: 63 entries x thousands of extensions.
        let wide = certificate(63, 1000);
        assert!(wide.len() < MAX_CERTIFICATE_LEN, "refused for the counts");
        assert!(matches!(
            Certificate::parse(&wide),
            Err(WireError::TooMany { .. })
        ));
    }

    /// A header announcing `len` body bytes, followed by only one body byte: the cap is
    /// checked on the header, before the body is needed.
    fn header_only(typ: HandshakeType, len: usize) -> Vec<u8> {
        let mut raw = vec![typ.get()];
        raw.extend_from_slice(&(len as u32).to_be_bytes()[1..]);
        raw.push(0);
        raw
    }

    #[test]
    fn message_bodies_are_capped_by_type_on_the_header() {
        for (typ, max, what) in [
            (
                HandshakeType::ClientHello,
                MAX_CLIENT_HELLO_LEN,
                "ClientHello",
            ),
            (
                HandshakeType::Certificate,
                MAX_CERTIFICATE_LEN,
                "Certificate",
            ),
            (
                HandshakeType::EncryptedExtensions,
                MAX_HANDSHAKE_LEN,
                "handshake message",
            ),
        ] {
            assert_eq!(max_body_len(typ), (max, what));
            assert_eq!(
                HandshakeMessage::parse(&header_only(typ, max + 1)).unwrap_err(),
                WireError::TooLarge {
                    what,
                    len: max + 1,
                    max
                }
            );
            assert_eq!(
                HandshakeMessage::parse(&header_only(typ, max)).unwrap_err(),
                WireError::Truncated("handshake message"),
                "at the cap: parsed on"
            );
        }
    }

    #[test]
    fn a_flight_is_capped_in_messages_and_bytes() {
        let fin = encode_handshake(HandshakeType::Finished, &[0; 32]).unwrap();
        let flight = fin.repeat(MAX_FLIGHT_MESSAGES);
        assert_eq!(
            split_handshake_messages(&flight).unwrap().len(),
            MAX_FLIGHT_MESSAGES
        );
        assert!(matches!(
            split_handshake_messages(&[flight, fin].concat()),
            Err(WireError::TooMany { .. })
        ));
        let big = vec![0u8; MAX_FLIGHT_LEN + 1];
        assert!(matches!(
            split_handshake_messages(&big),
            Err(WireError::TooLarge { what: "flight", .. })
        ));
    }
}
