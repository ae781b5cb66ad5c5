//! ServerHello and HelloRetryRequest (RFC 8446 §4.1.3, §4.1.4): the view both the engine and
//! the CS parse, and the encoder test servers use.

use crate::wire::codec::{put_bytes_u16, put_bytes_u8, put_u16, put_u16_prefixed, put_u8};
use crate::wire::extensions::{
    self, find, read_extensions, Extension, ExtensionContext, KeyShareEntry,
};
use crate::wire::handshake::{encode_handshake, HandshakeMessage};
use crate::wire::{
    CipherSuite, ExtensionType, HandshakeType, NamedGroup, WireError, HELLO_RETRY_REQUEST_RANDOM,
    TLS12, TLS13,
};

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
    /// The whole message, header included (what the transcript hashes).
    pub raw: &'a [u8],
    /// Always [`TLS12`] (0x0303): parsing refuses any other value (RFC 8446 §4.1.3).
    pub legacy_version: u16,
    /// ServerHello.random; [`HELLO_RETRY_REQUEST_RANDOM`] marks a HelloRetryRequest.
    pub random: &'a [u8; 32],
    /// The client's legacy_session_id as echoed (0..=32 bytes); the client checks it matches.
    pub legacy_session_id_echo: &'a [u8],
    /// The suite the server selected (not checked against the offer here).
    pub cipher_suite: CipherSuite,
    /// Every extension, in wire order.
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

    /// Parses a message already split from a flight; fails unless it is a ServerHello.
    pub fn from_message(m: &HandshakeMessage<'a>) -> Result<Self, WireError> {
        m.expect(HandshakeType::ServerHello, "ServerHello")?;
        let mut r = m.body_reader("ServerHello");
        // §4.1.3: legacy_version MUST be 0x0303; TLS 1.3 is negotiated in supported_versions.
        let legacy_version = r.u16()?;
        if legacy_version != TLS12 {
            return Err(WireError::IllegalValue {
                what: "ServerHello legacy_version (RFC 8446 §4.1.3)",
                value: legacy_version.into(),
            });
        }
        let random = r.array::<32>()?;
        let legacy_session_id_echo = r.sub_u8("legacy_session_id_echo")?.rest();
        if legacy_session_id_echo.len() > 32 {
            return Err(WireError::bad_length(
                "legacy_session_id_echo",
                legacy_session_id_echo.len(),
            ));
        }
        let cipher_suite = CipherSuite::from(r.u16()?);
        // §4.1.3: legacy_compression_method "MUST have the value 0".
        let compression = r.u8()?;
        if compression != 0 {
            return Err(WireError::IllegalValue {
                what: "ServerHello legacy_compression_method (RFC 8446 §4.1.3)",
                value: compression.into(),
            });
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
                return Err(WireError::NotTls13 {
                    message: ctx.name(),
                })
            }
        };
        if selected_version != TLS13 {
            return Err(WireError::NotTls13 {
                message: ctx.name(),
            });
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

    /// The extension of type `typ`, if the message carries it.
    pub fn extension(&self, typ: ExtensionType) -> Option<&Extension<'a>> {
        find(&self.extensions, typ)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::test_vectors::{illustrated, rfc8448};
    use crate::wire::ClientHello;

    #[test]
    fn hello_retry_request_of_rfc8448_section_5_is_detected_with_cookie_and_group() {
        let raw = rfc8448()
            .hello_retry_request
            .messages
            .hello_retry_request
            .clone()
            .expect("hello_retry_request");
        let hrr = ServerHello::parse(&raw).unwrap();
        assert!(hrr.is_hello_retry_request());
        assert_eq!(hrr.selected_group, Some(NamedGroup::Secp256r1));
        assert_eq!(hrr.cookie.map(<[u8]>::len), Some(114));
        assert!(hrr.key_share.is_none());

        let ch2 = rfc8448()
            .hello_retry_request
            .messages
            .client_hello_2
            .clone()
            .expect("client_hello_2");
        let ch2 = ClientHello::parse(&ch2).unwrap();
        assert_eq!(ch2.cookie, hrr.cookie);
        let ch1 = rfc8448().hello_retry_request.messages.client_hello.clone();
        assert_eq!(ClientHello::parse(&ch1).unwrap().random, ch2.random);
    }

    #[test]
    fn every_vector_server_hello_parses() {
        for s in rfc8448().sections() {
            let section = s.name;
            let raw = &s.messages.server_hello;
            let sh = ServerHello::parse(raw).unwrap_or_else(|e| panic!("{section}: {e}"));
            assert!(!sh.is_hello_retry_request(), "{section}");
            let ks = sh.key_share.unwrap();
            let server_key = &s.ephemeral_keys.server[0].public_key;
            assert_eq!(ks.key_exchange, server_key, "{section}");
            assert_eq!(
                sh.selected_identity,
                (section == "resumed_0rtt").then_some(0),
                "{section}"
            );
        }
        for c in illustrated().connections() {
            let sh = ServerHello::parse(&c.messages.server_hello).unwrap();
            assert_eq!(sh.legacy_session_id_echo.len(), 32);
            assert_eq!(
                sh.key_share.unwrap().key_exchange,
                c.ephemeral_keys.server.public_key
            );
        }
    }

    #[test]
    fn server_hello_must_select_tls13_with_legacy_version_0303() {
        let raw = rfc8448().simple_1rtt.messages.server_hello.clone();
        let mut bad = raw.clone();
        bad[4..6].copy_from_slice(&[3, 4]);
        assert!(ServerHello::parse(&bad).is_err());
        // supported_versions is the last extension: its selected_version ends the message.
        let mut bad = raw.clone();
        let n = bad.len();
        bad[n - 2..].copy_from_slice(&[3, 3]);
        assert!(matches!(
            ServerHello::parse(&bad),
            Err(WireError::NotTls13 { .. })
        ));
    }

    #[test]
    fn encode_server_hello_reproduces_rfc8448_section3() {
        let raw = &rfc8448().simple_1rtt.messages.server_hello;
        let sh = ServerHello::parse(raw).unwrap();
        let key = sh.key_share.unwrap();
        let encoded = encode_server_hello(
            sh.random,
            sh.legacy_session_id_echo,
            sh.cipher_suite,
            key.group,
            key.key_exchange,
        )
        .unwrap();
        assert_eq!(&encoded, raw);
    }
}
