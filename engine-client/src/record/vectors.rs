//! RFC 8448 and Illustrated TLS 1.3 records from `testdata/`, shared by the tests of the
//! record layer, deframer and joiner.

use std::collections::HashMap;

use serde_json::Value;

use super::*;

/// One record of a trace.
pub(crate) struct VecRecord {
    pub(crate) sender: String,
    /// "plaintext", "early", "handshake" or "application".
    pub(crate) protection: String,
    pub(crate) seq: Option<u64>,
    pub(crate) nonce: Option<Vec<u8>>,
    pub(crate) inner_type: Option<u8>,
    pub(crate) padding: usize,
    /// Complete record, header included.
    pub(crate) record: Vec<u8>,
    /// Content (inner plaintext without type and padding).
    pub(crate) payload: Vec<u8>,
}

pub(crate) struct Trace {
    pub(crate) name: String,
    pub(crate) keys: HashMap<String, RecordKeys>,
    pub(crate) records: Vec<VecRecord>,
}

impl Trace {
    /// The keys protecting `r` ("client_handshake", "client_early_application", ...).
    pub(crate) fn keys_for(&self, r: &VecRecord) -> &RecordKeys {
        let dir = match r.protection.as_str() {
            "early" => "early_application",
            other => other,
        };
        let name = format!("{}_{dir}", r.sender);
        self.keys
            .get(&name)
            .unwrap_or_else(|| panic!("{}: no keys {name}", self.name))
    }
}

fn hex(v: &Value) -> Vec<u8> {
    hex::decode(v.as_str().expect("hex string")).expect("valid hex")
}

fn suite(name: &str) -> CipherSuite {
    CipherSuite::SUPPORTED
        .into_iter()
        .find(|s| s.name() == name)
        .expect("known suite")
}

fn keys(suite: CipherSuite, tk: &Value) -> HashMap<String, RecordKeys> {
    tk.as_object()
        .expect("traffic_keys")
        .iter()
        .map(|(name, v)| {
            let iv: [u8; 12] = hex(&v["iv"]).try_into().expect("12-byte iv");
            (
                name.clone(),
                RecordKeys::new(suite, Zeroizing::new(hex(&v["key"])), iv),
            )
        })
        .collect()
}

/// The five RFC 8448 traces (AES-128-GCM-SHA256).
pub(crate) fn rfc8448() -> Vec<Trace> {
    let doc: Value =
        serde_json::from_str(include_str!("../../../testdata/rfc8448.json")).expect("rfc8448.json");
    doc["sections"]
        .as_object()
        .expect("sections")
        .iter()
        .map(|(name, sec)| {
            let sum = &sec["summary"];
            let suite = suite(sum["cipher_suite"].as_str().expect("suite"));
            let records = sum["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| {
                    let d = &r["derived"];
                    VecRecord {
                        sender: r["sender"].as_str().expect("sender").to_owned(),
                        protection: d["protection"].as_str().expect("prot").to_owned(),
                        seq: d["seq"].as_u64(),
                        nonce: d.get("nonce").map(hex),
                        inner_type: d["inner_content_type"].as_u64().map(|t| t as u8),
                        padding: d["padding_length"].as_u64().unwrap_or(0) as usize,
                        record: hex(&r["record"]),
                        payload: hex(&r["payload"]),
                    }
                })
                .collect();
            Trace {
                name: format!("rfc8448 {name}"),
                keys: keys(suite, &sum["traffic_keys"]),
                records,
            }
        })
        .collect()
}

/// The Illustrated TLS 1.3 traces: current (AES-256-GCM-SHA384) and 2018 (AES-128-GCM).
pub(crate) fn illustrated() -> Vec<Trace> {
    let doc: Value = serde_json::from_str(include_str!("../../../testdata/illustrated.json"))
        .expect("illustrated.json");
    doc["connections"]
        .as_object()
        .expect("connections")
        .iter()
        .map(|(name, c)| {
            let suite = suite(c["cipher_suite"].as_str().expect("suite"));
            let records = c["records"]
                .as_array()
                .expect("records")
                .iter()
                .map(|r| VecRecord {
                    sender: r["sender"].as_str().expect("sender").to_owned(),
                    protection: r["protection"].as_str().expect("prot").to_owned(),
                    seq: r["seq"].as_u64(),
                    nonce: r.get("nonce").map(hex),
                    inner_type: r["inner_content_type"].as_u64().map(|t| t as u8),
                    padding: r["padding_length"].as_u64().unwrap_or(0) as usize,
                    record: hex(&r["record"]),
                    payload: hex(&r["payload"]),
                })
                .collect();
            Trace {
                name: format!("illustrated {name}"),
                keys: keys(suite, &c["traffic_keys"]),
                records,
            }
        })
        .collect()
}

/// Every trace.
pub(crate) fn all() -> Vec<Trace> {
    let mut v = rfc8448();
    v.extend(illustrated());
    v
}

/// Splits a complete record into the deframer's view.
pub(crate) fn opaque(record: &[u8]) -> OpaqueRecord {
    OpaqueRecord {
        typ: ContentType::from(record[0]),
        version: u16::from_be_bytes([record[1], record[2]]),
        payload: record[HEADER_LEN..].to_vec(),
    }
}
