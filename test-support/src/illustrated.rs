//! The Illustrated TLS 1.3 connections (tls13.xargs.org), `testdata/illustrated.json`:
//! `current` (TLS_AES_256_GCM_SHA384) and `archive_2018` (TLS_AES_128_GCM_SHA256), hex decoded.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::hex_serde;
use crate::named::named_bytes;

/// The whole trace file, parsed once.
pub fn illustrated() -> &'static Illustrated {
    static DOC: OnceLock<Illustrated> = OnceLock::new();
    DOC.get_or_init(|| {
        let raw: RawDoc = serde_json::from_str(include_str!("../../testdata/illustrated.json"))
            .expect("testdata/illustrated.json matches the typed loader");
        let mut current = raw.connections.current;
        current.name = "current";
        let mut archive_2018 = raw.connections.archive_2018;
        archive_2018.name = "archive_2018";
        Illustrated {
            current,
            archive_2018,
        }
    })
}

/// Both connections of the site.
#[derive(Debug)]
pub struct Illustrated {
    /// The current walk-through (OpenSSL client and server).
    pub current: Connection,
    /// The 2018 walk-through kept under archive/.
    pub archive_2018: Connection,
}

impl Illustrated {
    /// The connection names.
    pub const CONNECTION_NAMES: [&'static str; 2] = ["current", "archive_2018"];

    /// Both connections, `current` first.
    pub fn connections(&self) -> [&Connection; 2] {
        [&self.current, &self.archive_2018]
    }

    /// A connection by its name; panics on an unknown one.
    pub fn connection(&self, name: &str) -> &Connection {
        self.connections()
            .into_iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no connection {name} in illustrated.json"))
    }
}

/// One connection.
#[derive(Debug, Deserialize)]
pub struct Connection {
    /// `current` or `archive_2018`.
    #[serde(skip)]
    pub name: &'static str,
    /// The IANA name, e.g. `TLS_AES_256_GCM_SHA384`.
    pub cipher_suite: String,
    /// The group name (`x25519`).
    pub group: String,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub server_certificate_verify_scheme: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub client_random: Vec<u8>,
    pub ephemeral_keys: EphemeralKeys,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub server_certificate_der: Vec<u8>,
    pub server_certificate_subject: String,
    pub server_certificate_issuer: String,
    /// PKCS#1 PEM.
    pub server_rsa_private_key_pem: String,
    pub messages: Messages,
    pub new_session_tickets: Vec<NewSessionTicket>,
    pub key_schedule: KeySchedule,
    pub traffic_keys: TrafficKeysByPhase,
    /// Every record of the connection, in order.
    pub records: Vec<Record>,
    pub application_data: Vec<ApplicationData>,
    /// KeyUpdate successors (RFC 8446 §7.2), computed: not on the site.
    pub computed_not_on_site: ComputedNotOnSite,
}

impl Connection {
    /// The record the site names `file` (`clienthello`, `serverencticket1`, ...); panics when
    /// absent.
    pub fn record(&self, file: &str) -> &Record {
        self.records
            .iter()
            .find(|r| r.file == file)
            .unwrap_or_else(|| panic!("no record {file} in illustrated.{}", self.name))
    }
}

#[derive(Debug, Clone, Deserialize)]
pub struct EphemeralKeys {
    pub client: EphemeralKey,
    pub server: EphemeralKey,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EphemeralKey {
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub private_key: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub public_key: Vec<u8>,
}

named_bytes! {
    /// The handshake messages, 4-byte header included.
    Messages {
        required: [
            client_hello,
            server_hello,
            encrypted_extensions,
            server_certificate,
            server_certificate_verify,
            server_finished,
            client_finished,
        ],
        optional: [],
    }
}

/// A NewSessionTicket the server sent.
#[derive(Debug, Clone, Deserialize)]
pub struct NewSessionTicket {
    /// Seconds.
    pub ticket_lifetime: u32,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket_age_add: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket_nonce: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub extensions: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub resumption_psk: Vec<u8>,
    /// The whole message, 4-byte header included.
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub message: Vec<u8>,
}

named_bytes! {
    /// The key schedule values of the connection.
    KeySchedule {
        required: [
            early_secret,
            derived_for_handshake,
            ecdhe_shared_secret,
            handshake_secret,
            transcript_hash_for_handshake_secrets,
            client_handshake_traffic_secret,
            server_handshake_traffic_secret,
            derived_for_master,
            master_secret,
            transcript_hash_for_server_certificate_verify,
            transcript_hash_for_server_finished,
            server_finished_key,
            server_finished_verify_data,
            transcript_hash_for_application_secrets,
            client_application_traffic_secret_0,
            server_application_traffic_secret_0,
            exporter_master_secret,
            transcript_hash_for_client_finished,
            client_finished_key,
            client_finished_verify_data,
            transcript_hash_for_resumption_master,
            resumption_master_secret,
        ],
        optional: [],
    }
}

pub use crate::rfc8448::TrafficKeys;

#[derive(Debug, Clone, Deserialize)]
pub struct TrafficKeysByPhase {
    pub client_handshake: TrafficKeys,
    pub server_handshake: TrafficKeys,
    pub client_application: TrafficKeys,
    pub server_application: TrafficKeys,
}

/// One record as the site shows it.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// `client` or `server`.
    pub sender: String,
    /// The site's name for it (`clienthello`, `serverencextensions`, ...).
    pub file: String,
    /// The whole record, 5-byte header included.
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub record: Vec<u8>,
    /// `plaintext`, `handshake` or `application`.
    pub protection: String,
    /// The outer content type (plaintext records).
    pub content_type: Option<u8>,
    pub seq: Option<u64>,
    #[serde(default, deserialize_with = "hex_serde::opt_bytes")]
    pub nonce: Option<Vec<u8>>,
    pub inner_content_type: Option<u8>,
    pub padding_length: Option<usize>,
    /// The plaintext carried (for protected records: the inner plaintext's content).
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub payload: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct ApplicationData {
    pub sender: String,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub data: Vec<u8>,
}

named_bytes! {
    /// KeyUpdate successors (RFC 8446 §7.2).
    ComputedNotOnSite {
        required: [
            client_application_traffic_secret_1,
            client_application_1_key,
            client_application_1_iv,
            server_application_traffic_secret_1,
            server_application_1_key,
            server_application_1_iv,
        ],
        optional: [],
    }
}

#[derive(Deserialize)]
struct RawDoc {
    connections: RawConnections,
}

#[derive(Deserialize)]
struct RawConnections {
    current: Connection,
    archive_2018: Connection,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rfc8448;

    /// Every value of both files goes through the typed loader (a missing or non-hex value
    /// fails here, not in the test that uses it).
    #[test]
    fn both_files_load_and_decode() {
        let ill = illustrated();
        for c in ill.connections() {
            assert_eq!(c.messages.iter().count(), 7, "{}", c.name);
            assert_eq!(c.new_session_tickets.len(), 2, "{}", c.name);
            assert_eq!(c.record("clienthello").payload, c.messages.client_hello);
        }
        let rfc = rfc8448();
        for (s, name) in rfc.sections().iter().zip(rfc8448::Rfc8448::SECTION_NAMES) {
            assert_eq!(s.name, name);
            assert_eq!(s.records[0].payload, s.messages.client_hello, "{name}");
        }
        assert!(rfc.simple_1rtt.new_session_ticket_fields.is_some());
        assert_eq!(
            rfc.hello_retry_request.messages.by_name("client_hello_2"),
            &rfc.hello_retry_request
                .messages
                .client_hello_2
                .clone()
                .unwrap()[..]
        );
    }
}
