//! RFC 8448 (Example Handshake Traces for TLS 1.3), `testdata/rfc8448.json`: each section's
//! summary, hex decoded. Handshake messages include their 4-byte header; records are the
//! complete TLSPlaintext/TLSCiphertext with the 5-byte header.

use std::sync::OnceLock;

use serde::Deserialize;

use crate::hex_serde;
use crate::named::named_bytes;

/// The whole trace file, parsed once.
pub fn rfc8448() -> &'static Rfc8448 {
    static DOC: OnceLock<Rfc8448> = OnceLock::new();
    DOC.get_or_init(|| {
        let raw: RawDoc = serde_json::from_str(include_str!("../../testdata/rfc8448.json"))
            .expect("testdata/rfc8448.json matches the typed loader");
        let s = raw.sections;
        Rfc8448 {
            server_rsa: raw.private_keys.server_rsa_sections_3_4_5_7,
            simple_1rtt: s.simple_1rtt.named("simple_1rtt"),
            resumed_0rtt: s.resumed_0rtt.named("resumed_0rtt"),
            hello_retry_request: s.hello_retry_request.named("hello_retry_request"),
            client_authentication: s.client_authentication.named("client_authentication"),
            compatibility_mode: s.compatibility_mode.named("compatibility_mode"),
        }
    })
}

/// The five traces of RFC 8448 §3–§7.
#[derive(Debug)]
pub struct Rfc8448 {
    /// The RSA key of the server certificate (CN=rsa) of §3, §4, §5 and §7.
    pub server_rsa: RsaKey,
    /// §3 Simple 1-RTT Handshake.
    pub simple_1rtt: Section,
    /// §4 Resumed 0-RTT Handshake.
    pub resumed_0rtt: Section,
    /// §5 HelloRetryRequest.
    pub hello_retry_request: Section,
    /// §6 Client Authentication.
    pub client_authentication: Section,
    /// §7 Compatibility Mode.
    pub compatibility_mode: Section,
}

impl Rfc8448 {
    /// The section names, in RFC order.
    pub const SECTION_NAMES: [&'static str; 5] = [
        "simple_1rtt",
        "resumed_0rtt",
        "hello_retry_request",
        "client_authentication",
        "compatibility_mode",
    ];

    /// Every section, in RFC order.
    pub fn sections(&self) -> [&Section; 5] {
        [
            &self.simple_1rtt,
            &self.resumed_0rtt,
            &self.hello_retry_request,
            &self.client_authentication,
            &self.compatibility_mode,
        ]
    }

    /// A section by its name; panics on an unknown one.
    pub fn section(&self, name: &str) -> &Section {
        self.sections()
            .into_iter()
            .find(|s| s.name == name)
            .unwrap_or_else(|| panic!("no section {name} in rfc8448.json"))
    }
}

/// The RSA private key of RFC 8448 §3 (big-endian integers).
#[derive(Debug, Clone, Deserialize)]
pub struct RsaKey {
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub modulus: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub public_exponent: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub private_exponent: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub prime1: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub prime2: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub exponent1: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub exponent2: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub coefficient: Vec<u8>,
}

/// One section's summary.
#[derive(Debug)]
pub struct Section {
    /// The JSON name (`simple_1rtt`, ...).
    pub name: &'static str,
    /// The RFC 8448 section number ("3" ... "7").
    pub rfc_section: String,
    /// The IANA name, e.g. `TLS_AES_128_GCM_SHA256`.
    pub cipher_suite: String,
    pub ephemeral_keys: EphemeralKeys,
    pub messages: Messages,
    pub key_schedule: KeySchedule,
    pub traffic_keys: TrafficKeysByPhase,
    /// Every record of the trace, in order.
    pub records: Vec<Record>,
    pub verification_derived: VerificationDerived,
    /// §3 only: the NewSessionTicket field by field.
    pub new_session_ticket_fields: Option<NewSessionTicketFields>,
}

/// The ephemeral key shares each side made (two for the client of §5: one per ClientHello).
#[derive(Debug, Clone, Deserialize)]
pub struct EphemeralKeys {
    pub client: Vec<EphemeralKey>,
    pub server: Vec<EphemeralKey>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct EphemeralKey {
    /// The group name as RFC 8446 §4.2.7 spells it (`x25519`, `secp256r1`).
    pub group: String,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub private_key: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub public_key: Vec<u8>,
}

named_bytes! {
    /// The handshake messages of a section, 4-byte header included.
    Messages {
        required: [
            client_hello,
            server_hello,
            encrypted_extensions,
            server_finished,
            client_finished,
        ],
        optional: [
            /// §4: the ClientHello up to (not including) its binders; not a complete message.
            client_hello_truncated_for_binder,
            hello_retry_request,
            client_hello_2,
            certificate_request,
            server_certificate,
            server_certificate_verify,
            client_certificate,
            client_certificate_verify,
            end_of_early_data,
            new_session_ticket,
        ],
    }
}

named_bytes! {
    /// The key schedule values RFC 8448 prints for a section.
    KeySchedule {
        required: [
            early_secret,
            psk_or_zero_ikm,
            derived_for_handshake,
            handshake_secret,
            ecdhe_shared_secret,
            client_handshake_traffic_secret,
            transcript_hash_for_handshake_secrets,
            server_handshake_traffic_secret,
            derived_for_master,
            master_secret,
            server_finished_key,
            server_finished_verify_data,
            client_application_traffic_secret_0,
            transcript_hash_for_application_secrets,
            server_application_traffic_secret_0,
            exporter_master_secret,
            client_finished_key,
            client_finished_verify_data,
            resumption_master_secret,
            transcript_hash_for_resumption_master,
        ],
        optional: [
            resumption_psk,
            ticket_nonce,
            binder_client_hello_prefix,
            binder_transcript_hash,
            binder_key,
            binder_finished_key,
            binder,
            client_early_traffic_secret,
            transcript_hash_for_early_secrets,
            early_exporter_master_secret,
        ],
    }
}

/// Secret, key and IV of one traffic phase, named `<writer>_<phase>`.
#[derive(Debug, Clone, Deserialize)]
pub struct TrafficKeys {
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub secret: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub key: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub iv: Vec<u8>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct TrafficKeysByPhase {
    pub client_handshake: TrafficKeys,
    pub server_handshake: TrafficKeys,
    pub client_application: TrafficKeys,
    pub server_application: TrafficKeys,
    /// §4 only: the 0-RTT keys.
    pub client_early_application: Option<TrafficKeys>,
}

impl TrafficKeysByPhase {
    /// Every phase present with its JSON name, in the file's key order.
    pub fn phases(&self) -> Vec<(&'static str, &TrafficKeys)> {
        let mut out = vec![("client_application", &self.client_application)];
        if let Some(early) = &self.client_early_application {
            out.push(("client_early_application", early));
        }
        out.extend([
            ("client_handshake", &self.client_handshake),
            ("server_application", &self.server_application),
            ("server_handshake", &self.server_handshake),
        ]);
        out
    }
}

/// One record of the trace.
#[derive(Debug, Clone, Deserialize)]
pub struct Record {
    /// `client` or `server`.
    pub sender: String,
    /// `handshake`, `change_cipher_spec`, `alert` or `application_data` (the inner type).
    pub kind: String,
    /// The plaintext carried (for protected records: the inner plaintext's content).
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub payload: Vec<u8>,
    /// The whole record, 5-byte header included.
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub record: Vec<u8>,
    pub derived: RecordDerived,
}

/// What the extraction script derived for a record.
#[derive(Debug, Clone, Deserialize)]
pub struct RecordDerived {
    /// `plaintext`, `early`, `handshake` or `application`.
    pub protection: String,
    #[serde(default, deserialize_with = "hex_serde::opt_bytes")]
    pub legacy_record_version: Option<Vec<u8>>,
    /// The record sequence number (protected records).
    pub seq: Option<u64>,
    pub inner_content_type: Option<u8>,
    pub padding_length: Option<usize>,
    /// The per-record AEAD nonce (protected records).
    #[serde(default, deserialize_with = "hex_serde::opt_bytes")]
    pub nonce: Option<Vec<u8>>,
}

named_bytes! {
    /// Values RFC 8448 does not print, computed by the extraction's verification script.
    VerificationDerived {
        required: [
            transcript_hash_for_server_finished,
            transcript_hash_for_client_finished,
            client_application_traffic_secret_1,
            server_application_traffic_secret_1,
            client_application_1_key,
            client_application_1_iv,
            server_application_1_key,
            server_application_1_iv,
        ],
        optional: [
            server_certificate_verify_scheme,
            transcript_hash_for_server_certificate_verify,
            client_certificate_verify_scheme,
            transcript_hash_for_client_certificate_verify,
            /// §5: the synthetic `message_hash` message replacing ClientHello1.
            message_hash_of_client_hello_1,
        ],
    }
}

/// §3's NewSessionTicket, field by field (verification_derived.new_session_ticket_fields).
#[derive(Debug, Clone, Deserialize)]
pub struct NewSessionTicketFields {
    pub ticket_lifetime: u32,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket_age_add: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket_nonce: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub ticket: Vec<u8>,
    #[serde(deserialize_with = "hex_serde::bytes")]
    pub extensions: Vec<u8>,
    pub max_early_data_size: u32,
}

impl RawSection {
    fn named(self, name: &'static str) -> Section {
        let s = self.summary;
        let derived = &s.verification_derived;
        Section {
            name,
            rfc_section: self.rfc_section,
            cipher_suite: s.cipher_suite,
            ephemeral_keys: s.ephemeral_keys,
            messages: s.messages,
            key_schedule: s.key_schedule,
            traffic_keys: s.traffic_keys,
            records: s.records,
            verification_derived: VerificationDerived::deserialize(derived)
                .unwrap_or_else(|e| panic!("{name}.verification_derived: {e}")),
            new_session_ticket_fields: derived.get("new_session_ticket_fields").map(|v| {
                NewSessionTicketFields::deserialize(v)
                    .unwrap_or_else(|e| panic!("{name}.new_session_ticket_fields: {e}"))
            }),
        }
    }
}

#[derive(Deserialize)]
struct RawDoc {
    private_keys: RawPrivateKeys,
    sections: RawSections,
}

#[derive(Deserialize)]
struct RawPrivateKeys {
    server_rsa_sections_3_4_5_7: RsaKey,
}

#[derive(Deserialize)]
struct RawSections {
    simple_1rtt: RawSection,
    resumed_0rtt: RawSection,
    hello_retry_request: RawSection,
    client_authentication: RawSection,
    compatibility_mode: RawSection,
}

#[derive(Deserialize)]
struct RawSection {
    rfc_section: String,
    summary: RawSummary,
}

#[derive(Deserialize)]
struct RawSummary {
    cipher_suite: String,
    ephemeral_keys: EphemeralKeys,
    messages: Messages,
    key_schedule: KeySchedule,
    traffic_keys: TrafficKeysByPhase,
    records: Vec<Record>,
    verification_derived: serde_json::Value,
}
