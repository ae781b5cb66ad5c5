//! Test vectors: RFC 8448 and The Illustrated TLS 1.3 (current and 2018 archive).

use serde_json::Value;

use super::NamedGroup;

pub(crate) const RFC8448_SECTIONS: [&str; 5] = [
    "simple_1rtt",
    "resumed_0rtt",
    "hello_retry_request",
    "client_authentication",
    "compatibility_mode",
];

pub(crate) const ILLUSTRATED_CONNECTIONS: [&str; 2] = ["current", "archive_2018"];

pub(crate) fn rfc8448() -> Value {
    serde_json::from_str(include_str!("../../../testdata/rfc8448.json"))
        .expect("testdata/rfc8448.json is valid JSON")
}

pub(crate) fn illustrated() -> Value {
    serde_json::from_str(include_str!("../../../testdata/illustrated.json"))
        .expect("testdata/illustrated.json is valid JSON")
}

pub(crate) fn hex_of(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("a hex string")).expect("valid hex")
}

/// An RFC 8448 handshake message by section and name.
pub(crate) fn rfc8448_message(section: &str, name: &str) -> Vec<u8> {
    hex_of(&rfc8448()["sections"][section]["summary"]["messages"][name])
}

/// The payload of an Illustrated record, by its file name.
pub(crate) fn record_payload(conn: &Value, file: &str) -> Vec<u8> {
    let rec = conn["records"]
        .as_array()
        .expect("records")
        .iter()
        .find(|r| r["file"] == file)
        .expect("record present");
    hex_of(&rec["payload"])
}

/// Every handshake message of the vectors, named "<source>.<section>.<message>", plus the
/// Illustrated NewSessionTickets. The truncated ClientHello of RFC 8448 §4 is left out (it
/// is not a complete message).
pub(crate) fn all_messages() -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let rfc = rfc8448();
    for section in RFC8448_SECTIONS {
        let msgs = rfc["sections"][section]["summary"]["messages"]
            .as_object()
            .expect("messages");
        for (name, hex) in msgs {
            if name == "client_hello_truncated_for_binder" {
                continue;
            }
            out.push((format!("rfc8448.{section}.{name}"), hex_of(hex)));
        }
    }
    let ill = illustrated();
    for conn in ILLUSTRATED_CONNECTIONS {
        let c = &ill["connections"][conn];
        for (name, hex) in c["messages"].as_object().expect("messages") {
            out.push((format!("illustrated.{conn}.{name}"), hex_of(hex)));
        }
        for (i, t) in c["new_session_tickets"]
            .as_array()
            .expect("tickets")
            .iter()
            .enumerate()
        {
            out.push((
                format!("illustrated.{conn}.new_session_ticket_{i}"),
                hex_of(&t["message"]),
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
    let rfc = rfc8448();
    for section in RFC8448_SECTIONS {
        let s = &rfc["sections"][section]["summary"];
        let keys: Vec<(NamedGroup, Vec<u8>)> = s["ephemeral_keys"]["client"]
            .as_array()
            .expect("client keys")
            .iter()
            .map(|k| {
                let group = k["group"].as_str().expect("group name");
                (
                    NamedGroup::from_name(group).expect("known group"),
                    hex_of(&k["public_key"]),
                )
            })
            .collect();
        for name in ["client_hello", "client_hello_2"] {
            if let Some(hex) = s["messages"].get(name) {
                out.push(VectorClientHello {
                    name: format!("rfc8448.{section}.{name}"),
                    raw: hex_of(hex),
                    public_keys: keys.clone(),
                });
            }
        }
    }
    let ill = illustrated();
    for conn in ILLUSTRATED_CONNECTIONS {
        let c = &ill["connections"][conn];
        // Both Illustrated connections use x25519 only.
        out.push(VectorClientHello {
            name: format!("illustrated.{conn}.client_hello"),
            raw: hex_of(&c["messages"]["client_hello"]),
            public_keys: vec![(
                NamedGroup::X25519,
                hex_of(&c["ephemeral_keys"]["client"]["public_key"]),
            )],
        });
    }
    out
}
