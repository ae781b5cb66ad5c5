//! RFC 8448 and Illustrated TLS 1.3 records from `testdata/`, shared by the tests of the
//! record layer, deframer and joiner.

use std::collections::HashMap;

use lurk_test_support::rfc8448::TrafficKeys;

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

fn suite(name: &str) -> CipherSuite {
    CipherSuite::SUPPORTED
        .into_iter()
        .find(|s| s.name() == name)
        .expect("known suite")
}

fn keys<'a>(
    suite: CipherSuite,
    phases: impl IntoIterator<Item = (&'static str, &'a TrafficKeys)>,
) -> HashMap<String, RecordKeys> {
    phases
        .into_iter()
        .map(|(name, k)| {
            let iv: [u8; 12] = k.iv.clone().try_into().expect("12-byte iv");
            (
                name.to_owned(),
                RecordKeys::new(suite, Zeroizing::new(k.key.clone()), iv),
            )
        })
        .collect()
}

/// The five RFC 8448 traces (AES-128-GCM-SHA256).
pub(crate) fn rfc8448() -> Vec<Trace> {
    lurk_test_support::rfc8448()
        .sections()
        .into_iter()
        .map(|s| {
            let records = s
                .records
                .iter()
                .map(|r| {
                    let d = &r.derived;
                    VecRecord {
                        sender: r.sender.clone(),
                        protection: d.protection.clone(),
                        seq: d.seq,
                        nonce: d.nonce.clone(),
                        inner_type: d.inner_content_type,
                        padding: d.padding_length.unwrap_or(0),
                        record: r.record.clone(),
                        payload: r.payload.clone(),
                    }
                })
                .collect();
            Trace {
                name: format!("rfc8448 {}", s.name),
                keys: keys(suite(&s.cipher_suite), s.traffic_keys.phases()),
                records,
            }
        })
        .collect()
}

/// The Illustrated TLS 1.3 traces: current (AES-256-GCM-SHA384) and 2018 (AES-128-GCM).
pub(crate) fn illustrated() -> Vec<Trace> {
    lurk_test_support::illustrated()
        .connections()
        .into_iter()
        .map(|c| {
            let records = c
                .records
                .iter()
                .map(|r| VecRecord {
                    sender: r.sender.clone(),
                    protection: r.protection.clone(),
                    seq: r.seq,
                    nonce: r.nonce.clone(),
                    inner_type: r.inner_content_type,
                    padding: r.padding_length.unwrap_or(0),
                    record: r.record.clone(),
                    payload: r.payload.clone(),
                })
                .collect();
            let tk = &c.traffic_keys;
            let phases = [
                ("client_handshake", &tk.client_handshake),
                ("server_handshake", &tk.server_handshake),
                ("client_application", &tk.client_application),
                ("server_application", &tk.server_application),
            ];
            Trace {
                name: format!("illustrated {}", c.name),
                keys: keys(suite(&c.cipher_suite), phases),
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
