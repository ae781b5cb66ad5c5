//! Test vectors: RFC 8448 and The Illustrated TLS 1.3 (current and 2018 archive), from the
//! typed loader of `lurk-test-support`, plus what needs proto's own types.

pub(crate) use lurk_test_support::{illustrated, rfc8448};

use super::handshake::HEADER_LEN;
use super::{encode_handshake, ClientHello, HandshakeType, NamedGroup};

/// Every handshake message of the vectors, named "<source>.<section>.<message>", plus the
/// Illustrated NewSessionTickets. The truncated ClientHello of RFC 8448 §4 is left out (it
/// is not a complete message).
pub(crate) fn all_messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for s in rfc8448().sections() {
        for (name, raw) in s.messages.iter() {
            if name == "client_hello_truncated_for_binder" {
                continue;
            }
            out.push((format!("rfc8448.{}.{name}", s.name), raw.to_vec()));
        }
    }
    for c in illustrated().connections() {
        for (name, raw) in c.messages.iter() {
            out.push((format!("illustrated.{}.{name}", c.name), raw.to_vec()));
        }
        for (i, t) in c.new_session_tickets.iter().enumerate() {
            out.push((
                format!("illustrated.{}.new_session_ticket_{i}", c.name),
                t.message.clone(),
            ));
        }
    }
    out
}

/// A ClientHello of the vectors with the client's ephemeral public keys of its connection.
pub(crate) struct VectorClientHello {
    pub(crate) name: String,
    pub(crate) raw: Vec<u8>,
    pub(crate) public_keys: Vec<(NamedGroup, Vec<u8>)>,
}

/// Every ClientHello of the vectors.
pub(crate) fn client_hellos() -> Vec<VectorClientHello> {
    let mut out = Vec::new();
    for s in rfc8448().sections() {
        let keys: Vec<(NamedGroup, Vec<u8>)> = s
            .ephemeral_keys
            .client
            .iter()
            .map(|k| {
                (
                    NamedGroup::from_name(&k.group).expect("known group"),
                    k.public_key.clone(),
                )
            })
            .collect();
        for (name, raw) in [
            ("client_hello", Some(&s.messages.client_hello)),
            ("client_hello_2", s.messages.client_hello_2.as_ref()),
        ] {
            if let Some(raw) = raw {
                out.push(VectorClientHello {
                    name: format!("rfc8448.{}.{name}", s.name),
                    raw: raw.clone(),
                    public_keys: keys.clone(),
                });
            }
        }
    }
    for c in illustrated().connections() {
        // Both Illustrated connections use x25519 only.
        out.push(VectorClientHello {
            name: format!("illustrated.{}.client_hello", c.name),
            raw: c.messages.client_hello.clone(),
            public_keys: vec![(
                NamedGroup::X25519,
                c.ephemeral_keys.client.public_key.clone(),
            )],
        });
    }
    out
}

/// `raw` (a ClientHello) re-encoded with its extension block replaced: the old extensions
/// when `keep` is set, then each `(type, body)` of `exts` (tests that need a list the
/// builder will not write).
pub(crate) fn client_hello_with_extensions(
    raw: &[u8],
    keep: bool,
    exts: &[(u16, Vec<u8>)],
) -> Vec<u8> {
    let at = ClientHello::parse(raw).unwrap().extensions_len_offset;
    let mut body = raw[HEADER_LEN..at].to_vec();
    let mut block = if keep {
        raw[at + 2..].to_vec()
    } else {
        Vec::new()
    };
    for (t, b) in exts {
        block.extend_from_slice(&t.to_be_bytes());
        block.extend_from_slice(&(b.len() as u16).to_be_bytes());
        block.extend_from_slice(b);
    }
    body.extend_from_slice(&(block.len() as u16).to_be_bytes());
    body.extend_from_slice(&block);
    encode_handshake(HandshakeType::ClientHello, &body).unwrap()
}
