//! The handshake messages after the hellos (RFC 8446 §4.3–§4.6): zero-copy views that check
//! their structure, and the encoders the engine needs.

use super::codec::{put_bytes_u16, put_bytes_u24, put_bytes_u8, put_u16, put_u24_prefixed};
use super::extensions::{self, find, read_extensions, Extension, ExtensionContext};
use super::handshake::{encode_handshake, HandshakeMessage};
use super::limits::MAX_CERTIFICATE_ENTRIES;
use super::{
    ExtensionType, HandshakeType, HashAlg, KeyUpdateRequest, NamedGroup, SignatureScheme, WireError,
};

/// EncryptedExtensions (RFC 8446 §4.3.1).
#[derive(Clone, Debug)]
pub struct EncryptedExtensions<'a> {
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// Every extension, in wire order.
    pub extensions: Vec<Extension<'a>>,
    /// The server used the ClientHello's server_name (RFC 6066 §3: empty extension).
    pub server_name_ack: bool,
    /// The server's preferred groups, for later connections (RFC 8446 §4.2.7).
    pub supported_groups: Option<Vec<NamedGroup>>,
    /// The ALPN protocol the server selected (RFC 7301 §3.1: exactly one).
    pub alpn_protocol: Option<&'a [u8]>,
    /// The server accepted early data (RFC 8446 §4.2.10).
    pub early_data: bool,
    /// The largest record plaintext the server will receive (RFC 8449 §4).
    pub record_size_limit: Option<u16>,
}

impl<'a> EncryptedExtensions<'a> {
    /// Parses one complete EncryptedExtensions message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(
            raw,
            HandshakeType::EncryptedExtensions,
            "EncryptedExtensions",
        )?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is an EncryptedExtensions.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::EncryptedExtensions, "EncryptedExtensions")?;
        let mut r = m.body_reader("EncryptedExtensions");
        let exts = read_extensions(&mut r, ExtensionContext::EncryptedExtensions)?;
        r.expect_empty("EncryptedExtensions")?;
        let get = |t| find(&exts, t);
        let server_name_ack = extensions::flag(get(ExtensionType::ServerName), "server_name")?;
        let supported_groups = get(ExtensionType::SupportedGroups)
            .map(extensions::named_groups)
            .transpose()?;
        let alpn_protocol = match get(ExtensionType::ApplicationLayerProtocolNegotiation) {
            Some(e) => {
                let list = extensions::alpn_protocols(e)?;
                // RFC 7301 §3.1: the server's list "MUST contain exactly one" protocol.
                if list.len() != 1 {
                    return Err(WireError::IllegalValue {
                        what: "number of ALPN protocols in EncryptedExtensions (RFC 7301 §3.1: 1)",
                        value: list.len() as u64,
                    });
                }
                Some(list[0])
            }
            None => None,
        };
        let early_data = extensions::flag(get(ExtensionType::EarlyData), "early_data")?;
        let record_size_limit = get(ExtensionType::RecordSizeLimit)
            .map(extensions::record_size_limit)
            .transpose()?;
        Ok(Self {
            raw: m.raw,
            extensions: exts,
            server_name_ack,
            supported_groups,
            alpn_protocol,
            early_data,
            record_size_limit,
        })
    }
}

/// CertificateRequest (RFC 8446 §4.3.2).
#[derive(Clone, Debug)]
pub struct CertificateRequest<'a> {
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// certificate_request_context: empty in the handshake, non-empty post-handshake.
    pub context: &'a [u8],
    /// Every extension, signature_algorithms included, in wire order.
    pub extensions: Vec<Extension<'a>>,
    /// The schemes the server accepts in the client's CertificateVerify (RFC 8446 §4.3.2:
    /// required).
    pub signature_algorithms: Vec<SignatureScheme>,
    /// The schemes the server accepts in the client's certificates, if it restricts them.
    pub signature_algorithms_cert: Option<Vec<SignatureScheme>>,
}

impl<'a> CertificateRequest<'a> {
    /// Parses one complete CertificateRequest message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(
            raw,
            HandshakeType::CertificateRequest,
            "CertificateRequest",
        )?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is a CertificateRequest.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::CertificateRequest, "CertificateRequest")?;
        let mut r = m.body_reader("CertificateRequest");
        let context = r.sub_u8("certificate_request_context")?.rest();
        let exts = read_extensions(&mut r, ExtensionContext::CertificateRequest)?;
        r.expect_empty("CertificateRequest")?;
        // §4.3.2: "The "signature_algorithms" extension MUST be specified".
        let signature_algorithms = match find(&exts, ExtensionType::SignatureAlgorithms) {
            Some(e) => extensions::signature_schemes(e)?,
            None => {
                return Err(WireError::MissingExtension {
                    message: "CertificateRequest",
                    extension: "signature_algorithms",
                })
            }
        };
        let signature_algorithms_cert = find(&exts, ExtensionType::SignatureAlgorithmsCert)
            .map(extensions::signature_schemes)
            .transpose()?;
        Ok(Self {
            raw: m.raw,
            context,
            extensions: exts,
            signature_algorithms,
            signature_algorithms_cert,
        })
    }
}

/// One CertificateEntry (RFC 8446 §4.4.2): a DER certificate and its extensions.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertificateEntry<'a> {
    /// The DER X.509 certificate (not empty; not parsed here).
    pub cert_data: &'a [u8],
    /// The entry's extensions (such as an OCSP status or SCTs, RFC 8446 §4.4.2.1), in wire
    /// order.
    pub extensions: Vec<Extension<'a>>,
}

/// Certificate (RFC 8446 §4.4.2). An empty `entries` is a client declining to authenticate.
#[derive(Clone, Debug)]
pub struct Certificate<'a> {
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// certificate_request_context: empty from a server, the CertificateRequest's from a
    /// client.
    pub context: &'a [u8],
    /// Leaf first.
    pub entries: Vec<CertificateEntry<'a>>,
}

impl<'a> Certificate<'a> {
    /// Parses one complete Certificate message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(raw, HandshakeType::Certificate, "Certificate")?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is a Certificate.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::Certificate, "Certificate")?;
        let mut r = m.body_reader("Certificate");
        let context = r.sub_u8("certificate_request_context")?.rest();
        let mut list = r.sub_u24("certificate_list")?;
        r.expect_empty("Certificate")?;
        let mut entries = Vec::new();
        while !list.is_empty() {
            if entries.len() == MAX_CERTIFICATE_ENTRIES {
                return Err(WireError::TooMany {
                    what: "Certificate entries",
                    max: MAX_CERTIFICATE_ENTRIES,
                });
            }
            // §4.4.2: opaque cert_data<1..2^24-1>.
            let cert_data = list.sub_u24("cert_data")?.rest();
            if cert_data.is_empty() {
                return Err(WireError::bad_length("cert_data", 0));
            }
            let extensions = read_extensions(&mut list, ExtensionContext::Certificate)?;
            entries.push(CertificateEntry {
                cert_data,
                extensions,
            });
        }
        Ok(Self {
            raw: m.raw,
            context,
            entries,
        })
    }

    /// The DER certificates, leaf first.
    pub fn chain(&self) -> Vec<&'a [u8]> {
        self.entries.iter().map(|e| e.cert_data).collect()
    }
}

/// CertificateVerify (RFC 8446 §4.4.3).
#[derive(Clone, Debug)]
pub struct CertificateVerify<'a> {
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// The signature scheme used (unknown ones kept; the verifier checks it was offered).
    pub scheme: SignatureScheme,
    /// The signature over the content of RFC 8446 §4.4.3 (not empty).
    pub signature: &'a [u8],
}

impl<'a> CertificateVerify<'a> {
    /// Parses one complete CertificateVerify message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(
            raw,
            HandshakeType::CertificateVerify,
            "CertificateVerify",
        )?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is a CertificateVerify.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::CertificateVerify, "CertificateVerify")?;
        let mut r = m.body_reader("CertificateVerify");
        let scheme = SignatureScheme::from(r.u16()?);
        let signature = r.sub_u16("signature")?.rest();
        r.expect_empty("CertificateVerify")?;
        if signature.is_empty() {
            return Err(WireError::IllegalValue {
                what: "CertificateVerify signature length",
                value: 0,
            });
        }
        Ok(Self {
            raw: m.raw,
            scheme,
            signature,
        })
    }
}

/// Finished (RFC 8446 §4.4.4): verify_data, as long as the suite's hash.
#[derive(Clone, Debug)]
pub struct Finished<'a> {
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// HMAC(finished_key, Transcript-Hash) (RFC 8446 §4.4.4), Hash.length bytes.
    pub verify_data: &'a [u8],
}

impl<'a> Finished<'a> {
    /// Parses a Finished whose verify_data has the length of `hash` (§4.4.4:
    /// `opaque verify_data[Hash.length]`).
    pub fn parse(raw: &'a [u8], hash: HashAlg) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(raw, HandshakeType::Finished, "Finished")?;
        Self::from_message(&m, hash)
    }

    /// Parses a message already split from a flight; fails unless it is a Finished.
    pub fn from_message(m: &HandshakeMessage<'a>, hash: HashAlg) -> Result<Self, WireError> {
        m.expect(HandshakeType::Finished, "Finished")?;
        if m.body.len() != hash.output_len() {
            return Err(WireError::bad_length("verify_data", m.body.len()));
        }
        Ok(Self {
            raw: m.raw,
            verify_data: m.body,
        })
    }
}

/// NewSessionTicket (RFC 8446 §4.6.1).
#[derive(Clone, Debug)]
pub struct NewSessionTicket<'a> {
    /// The whole message, header included.
    pub raw: &'a [u8],
    /// Seconds the ticket may be used, at most [`MAX_TICKET_LIFETIME`].
    pub ticket_lifetime: u32,
    /// Added to the ticket age (mod 2^32) to make obfuscated_ticket_age (§4.2.11.1).
    pub ticket_age_add: u32,
    /// Input of the ticket's PSK: HKDF-Expand-Label(resumption_master_secret, "resumption",
    /// ticket_nonce, Hash.length) (§4.6.1).
    pub ticket_nonce: &'a [u8],
    /// The opaque ticket, sent back as the PSK identity (not empty).
    pub ticket: &'a [u8],
    /// Every extension, in wire order.
    pub extensions: Vec<Extension<'a>>,
    /// early_data's max_early_data_size, if the ticket allows early data.
    pub max_early_data_size: Option<u32>,
}

/// §4.6.1: "Servers MUST NOT use any value greater than 604800 seconds (7 days)".
pub const MAX_TICKET_LIFETIME: u32 = 604_800;

impl<'a> NewSessionTicket<'a> {
    /// Parses one complete NewSessionTicket message (header included).
    pub fn parse(raw: &'a [u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(
            raw,
            HandshakeType::NewSessionTicket,
            "NewSessionTicket",
        )?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is a NewSessionTicket.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::NewSessionTicket, "NewSessionTicket")?;
        let mut r = m.body_reader("NewSessionTicket");
        let ticket_lifetime = r.u32()?;
        if ticket_lifetime > MAX_TICKET_LIFETIME {
            return Err(WireError::IllegalValue {
                what: "NewSessionTicket ticket_lifetime (RFC 8446 §4.6.1: at most 604800 s)",
                value: ticket_lifetime.into(),
            });
        }
        let ticket_age_add = r.u32()?;
        let ticket_nonce = r.sub_u8("ticket_nonce")?.rest();
        // §4.6.1: opaque ticket<1..2^16-1>.
        let ticket = r.sub_u16("ticket")?.rest();
        if ticket.is_empty() {
            return Err(WireError::bad_length("ticket", 0));
        }
        let exts = read_extensions(&mut r, ExtensionContext::NewSessionTicket)?;
        r.expect_empty("NewSessionTicket")?;
        let max_early_data_size = find(&exts, ExtensionType::EarlyData)
            .map(extensions::max_early_data_size)
            .transpose()?;
        Ok(Self {
            raw: m.raw,
            ticket_lifetime,
            ticket_age_add,
            ticket_nonce,
            ticket,
            extensions: exts,
            max_early_data_size,
        })
    }
}

/// KeyUpdate (RFC 8446 §4.6.3).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyUpdate {
    /// Whether the peer must answer with a KeyUpdate of its own (only the two known values
    /// parse).
    pub request_update: KeyUpdateRequest,
}

impl KeyUpdate {
    /// Parses one complete KeyUpdate message (header included).
    pub fn parse(raw: &[u8]) -> Result<Self, WireError> {
        let m = HandshakeMessage::parse_typed(raw, HandshakeType::KeyUpdate, "KeyUpdate")?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is a KeyUpdate.
    pub fn from_message(m: &HandshakeMessage<'_>) -> Result<Self, WireError> {
        m.expect(HandshakeType::KeyUpdate, "KeyUpdate")?;
        let mut r = m.body_reader("KeyUpdate");
        let request_update = KeyUpdateRequest::from(r.u8()?);
        r.expect_empty("KeyUpdate")?;
        // §4.6.3: any value other than 0 or 1 is an illegal_parameter.
        if let KeyUpdateRequest::Unknown(v) = request_update {
            return Err(WireError::IllegalValue {
                what: "KeyUpdate request_update (RFC 8446 §4.6.3)",
                value: v.into(),
            });
        }
        Ok(Self { request_update })
    }
}

/// EndOfEarlyData (RFC 8446 §4.5): an empty body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct EndOfEarlyData;

impl EndOfEarlyData {
    /// Parses one complete EndOfEarlyData message (header included).
    pub fn parse(raw: &[u8]) -> Result<Self, WireError> {
        let m =
            HandshakeMessage::parse_typed(raw, HandshakeType::EndOfEarlyData, "EndOfEarlyData")?;
        Self::from_message(&m)
    }

    /// Parses a message already split from a flight; fails unless it is an EndOfEarlyData.
    pub fn from_message(m: &HandshakeMessage<'_>) -> Result<Self, WireError> {
        m.expect(HandshakeType::EndOfEarlyData, "EndOfEarlyData")?;
        if !m.body.is_empty() {
            return Err(WireError::TrailingBytes("EndOfEarlyData"));
        }
        Ok(Self)
    }
}

/// A Certificate message (§4.4.2): `context`, then each DER certificate (leaf first) with an
/// empty extension list.
pub fn encode_certificate<C: AsRef<[u8]>>(
    context: &[u8],
    chain: &[C],
) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::new();
    put_bytes_u8(&mut body, "certificate_request_context", context)?;
    put_u24_prefixed(&mut body, "certificate_list", |b| {
        for cert in chain {
            if cert.as_ref().is_empty() {
                return Err(WireError::bad_length("cert_data", 0));
            }
            put_bytes_u24(b, "cert_data", cert.as_ref())?;
            put_u16(b, 0); // no extensions
        }
        Ok(())
    })?;
    encode_handshake(HandshakeType::Certificate, &body)
}

/// A CertificateVerify message (§4.4.3).
pub fn encode_certificate_verify(
    scheme: SignatureScheme,
    signature: &[u8],
) -> Result<Vec<u8>, WireError> {
    let mut body = Vec::with_capacity(4 + signature.len());
    put_u16(&mut body, scheme.get());
    put_bytes_u16(&mut body, "signature", signature)?;
    encode_handshake(HandshakeType::CertificateVerify, &body)
}

/// A Finished message (§4.4.4).
pub fn encode_finished(verify_data: &[u8]) -> Result<Vec<u8>, WireError> {
    encode_handshake(HandshakeType::Finished, verify_data)
}

/// A KeyUpdate message (§4.6.3).
pub fn encode_key_update(request: KeyUpdateRequest) -> Vec<u8> {
    vec![HandshakeType::KeyUpdate.get(), 0, 0, 1, request.get()]
}

/// An EndOfEarlyData message (§4.5).
pub fn encode_end_of_early_data() -> Vec<u8> {
    vec![HandshakeType::EndOfEarlyData.get(), 0, 0, 0]
}

/// The synthetic `message_hash` message that replaces ClientHello1 in the transcript after
/// a HelloRetryRequest (§4.4.1): `Hash(ClientHello1)` behind a type-254 header.
pub fn message_hash(hash: &[u8]) -> Result<Vec<u8>, WireError> {
    encode_handshake(HandshakeType::MessageHash, hash)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::handshake::split_handshake_messages;
    use crate::wire::hello::{ClientHello, ServerHello};
    use crate::wire::test_vectors::{illustrated, rfc8448};
    use crate::wire::CipherSuite;

    /// Parses `raw` with the view for its type; `hash` is the connection's suite hash.
    fn parse_any(raw: &[u8], hash: HashAlg) -> Result<HandshakeType, WireError> {
        let m = HandshakeMessage::parse(raw)?;
        match m.typ {
            HandshakeType::ClientHello => ClientHello::from_message(&m).map(drop),
            HandshakeType::ServerHello => ServerHello::from_message(&m).map(drop),
            HandshakeType::EncryptedExtensions => EncryptedExtensions::from_message(&m).map(drop),
            HandshakeType::CertificateRequest => CertificateRequest::from_message(&m).map(drop),
            HandshakeType::Certificate => Certificate::from_message(&m).map(drop),
            HandshakeType::CertificateVerify => CertificateVerify::from_message(&m).map(drop),
            HandshakeType::Finished => Finished::from_message(&m, hash).map(drop),
            HandshakeType::NewSessionTicket => NewSessionTicket::from_message(&m).map(drop),
            HandshakeType::EndOfEarlyData => EndOfEarlyData::from_message(&m).map(drop),
            HandshakeType::KeyUpdate => KeyUpdate::from_message(&m).map(drop),
            other => panic!("no view for {other:?}"),
        }?;
        Ok(m.typ)
    }

    fn suite_hash(name: &str) -> HashAlg {
        let suite = [
            CipherSuite::TlsAes128GcmSha256,
            CipherSuite::TlsAes256GcmSha384,
            CipherSuite::TlsChacha20Poly1305Sha256,
        ]
        .into_iter()
        .find(|s| s.name() == name)
        .unwrap_or_else(|| panic!("unknown suite {name}"));
        suite.hash().unwrap()
    }

    #[test]
    fn every_handshake_message_of_rfc8448_and_illustrated_parses_with_its_view() {
        let mut count = 0;
        for s in rfc8448().sections() {
            let section = s.name;
            let hash = suite_hash(&s.cipher_suite);
            for (name, raw) in s.messages.iter() {
                if name == "client_hello_truncated_for_binder" {
                    continue;
                }
                parse_any(raw, hash).unwrap_or_else(|e| panic!("{section}.{name}: {e}"));
                count += 1;
            }
        }
        for c in illustrated().connections() {
            let conn = c.name;
            let hash = suite_hash(&c.cipher_suite);
            for (name, raw) in c.messages.iter() {
                parse_any(raw, hash).unwrap_or_else(|e| panic!("{conn}.{name}: {e}"));
                count += 1;
            }
        }
        assert_eq!(count, 8 + 6 + 9 + 10 + 7 + 7 + 7);
    }

    #[test]
    fn rfc8448_encrypted_extensions_are_decoded() {
        let raw = rfc8448().resumed_0rtt.messages.encrypted_extensions.clone();
        let ee = EncryptedExtensions::parse(&raw).unwrap();
        assert!(ee.server_name_ack);
        assert!(ee.early_data);
        assert_eq!(ee.record_size_limit, Some(0x4001));
        assert_eq!(ee.supported_groups.as_ref().map(Vec::len), Some(9));
        assert_eq!(ee.alpn_protocol, None);
    }

    #[test]
    fn rfc8448_certificate_request_keeps_all_extensions() {
        let raw = rfc8448()
            .client_authentication
            .messages
            .certificate_request
            .clone()
            .expect("certificate_request");
        let cr = CertificateRequest::parse(&raw).unwrap();
        assert!(cr.context.is_empty());
        assert!(cr
            .signature_algorithms
            .contains(&SignatureScheme::RsaPssRsaeSha256));
        assert!(!cr.extensions.is_empty());
    }

    #[test]
    fn certificate_request_without_signature_algorithms_is_refused() {
        let raw = encode_handshake(HandshakeType::CertificateRequest, &[0, 0, 0]).unwrap();
        assert!(matches!(
            CertificateRequest::parse(&raw),
            Err(WireError::MissingExtension { .. })
        ));
    }

    #[test]
    fn certificates_of_the_vectors_give_their_der_chain() {
        for c in illustrated().connections() {
            let raw = &c.messages.server_certificate;
            let cert = Certificate::parse(raw).unwrap();
            assert_eq!(cert.chain(), [&c.server_certificate_der[..]]);
            // Re-encoding a chain with empty extensions gives back the same message.
            assert_eq!(
                &encode_certificate(cert.context, &cert.chain()).unwrap(),
                raw
            );
        }
        let raw = rfc8448()
            .client_authentication
            .messages
            .client_certificate
            .clone()
            .expect("client_certificate");
        let cert = Certificate::parse(&raw).unwrap();
        assert_eq!(cert.entries.len(), 1);
        assert_eq!(cert.entries[0].cert_data[0], 0x30, "DER SEQUENCE");
    }

    #[test]
    fn empty_client_certificate_round_trips() {
        let raw = encode_certificate::<&[u8]>(&[], &[]).unwrap();
        assert_eq!(raw, [11, 0, 0, 4, 0, 0, 0, 0]);
        assert!(Certificate::parse(&raw).unwrap().entries.is_empty());
    }

    #[test]
    fn certificate_with_entry_overrunning_the_list_is_truncated() {
        // certificate_list of 5 bytes holding a cert_data that claims 9.
        let raw =
            encode_handshake(HandshakeType::Certificate, &[0, 0, 0, 5, 0, 0, 9, 1, 2]).unwrap();
        assert_eq!(
            Certificate::parse(&raw).unwrap_err(),
            WireError::Truncated("cert_data")
        );
    }

    #[test]
    fn certificate_verify_of_rfc8448_round_trips_through_the_encoder() {
        for (section, name) in [
            ("simple_1rtt", "server_certificate_verify"),
            ("client_authentication", "client_certificate_verify"),
            ("client_authentication", "server_certificate_verify"),
        ] {
            let raw = rfc8448().section(section).messages.by_name(name).to_vec();
            let cv = CertificateVerify::parse(&raw).unwrap();
            assert_eq!(
                encode_certificate_verify(cv.scheme, cv.signature).unwrap(),
                raw
            );
        }
        let raw = rfc8448()
            .client_authentication
            .messages
            .server_certificate_verify
            .clone()
            .expect("server_certificate_verify");
        let cv = CertificateVerify::parse(&raw).unwrap();
        assert_eq!(cv.scheme, SignatureScheme::EcdsaSecp256r1Sha256);
    }

    #[test]
    fn finished_must_have_the_hash_length() {
        let raw = rfc8448().simple_1rtt.messages.client_finished.clone();
        let fin = Finished::parse(&raw, HashAlg::Sha256).unwrap();
        assert_eq!(encode_finished(fin.verify_data).unwrap(), raw);
        assert!(matches!(
            Finished::parse(&raw, HashAlg::Sha384),
            Err(WireError::BadLength { .. })
        ));
    }

    #[test]
    fn rfc8448_new_session_ticket_fields() {
        let raw = rfc8448()
            .simple_1rtt
            .messages
            .new_session_ticket
            .clone()
            .expect("new_session_ticket");
        let nst = NewSessionTicket::parse(&raw).unwrap();
        assert_eq!(nst.ticket_lifetime, 30);
        assert_eq!(nst.ticket_age_add, 0xfad6aac5);
        assert_eq!(nst.ticket_nonce, [0, 0]);
        assert_eq!(nst.ticket.len(), 178);
        assert_eq!(nst.max_early_data_size, Some(0x400));
    }

    #[test]
    fn illustrated_tickets_match_their_decomposed_fields() {
        for c in illustrated().connections() {
            for t in &c.new_session_tickets {
                let nst = NewSessionTicket::parse(&t.message).unwrap();
                assert_eq!(nst.ticket_lifetime, t.ticket_lifetime);
                assert_eq!(nst.ticket_age_add.to_be_bytes().to_vec(), t.ticket_age_add);
                assert_eq!(nst.ticket_nonce, t.ticket_nonce);
                assert_eq!(nst.ticket, t.ticket);
                // The 2018 tickets carry a GREASE extension, kept as unknown.
                let ext_bytes: Vec<u8> = nst
                    .extensions
                    .iter()
                    .flat_map(|e| {
                        let mut v = e.typ.get().to_be_bytes().to_vec();
                        v.extend_from_slice(&(e.body.len() as u16).to_be_bytes());
                        v.extend_from_slice(e.body);
                        v
                    })
                    .collect();
                assert_eq!(ext_bytes, t.extensions);
            }
        }
    }

    #[test]
    fn two_tickets_in_one_record_split_and_parse() {
        let payload = &illustrated().archive_2018.record("servertickets").payload;
        let msgs = split_handshake_messages(payload).unwrap();
        assert_eq!(msgs.len(), 2);
        for m in &msgs {
            NewSessionTicket::from_message(m).unwrap();
        }
    }

    #[test]
    fn ticket_lifetime_over_seven_days_is_refused() {
        let mut body = (MAX_TICKET_LIFETIME + 1).to_be_bytes().to_vec();
        body.extend_from_slice(&[0, 0, 0, 0, 0, 0, 1, 7, 0, 0]);
        let raw = encode_handshake(HandshakeType::NewSessionTicket, &body).unwrap();
        assert!(matches!(
            NewSessionTicket::parse(&raw),
            Err(WireError::IllegalValue { .. })
        ));
    }

    #[test]
    fn key_update_and_end_of_early_data_round_trip_and_refuse_bad_bodies() {
        let ku = encode_key_update(KeyUpdateRequest::UpdateRequested);
        assert_eq!(
            KeyUpdate::parse(&ku).unwrap().request_update,
            KeyUpdateRequest::UpdateRequested
        );
        assert!(KeyUpdate::parse(&[24, 0, 0, 1, 2]).is_err());
        assert!(KeyUpdate::parse(&[24, 0, 0, 2, 0, 0]).is_err());

        let eoed = encode_end_of_early_data();
        assert_eq!(
            eoed,
            rfc8448()
                .resumed_0rtt
                .messages
                .end_of_early_data
                .clone()
                .expect("end_of_early_data")
        );
        EndOfEarlyData::parse(&eoed).unwrap();
        assert_eq!(
            EndOfEarlyData::parse(&[5, 0, 0, 1, 0]).unwrap_err(),
            WireError::TrailingBytes("EndOfEarlyData")
        );
    }

    #[test]
    fn message_hash_has_type_254_and_the_hash_as_body() {
        let h = HashAlg::Sha256.hash(b"ClientHello1");
        let m = message_hash(&h).unwrap();
        assert_eq!(&m[..4], &[254, 0, 0, 32]);
        assert_eq!(&m[4..], &h[..]);
    }
}
