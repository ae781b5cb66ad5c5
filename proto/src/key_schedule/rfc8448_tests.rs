//! RFC 8448 known answers for the key schedule and the transcript, read from
//! `testdata/rfc8448.json` (every value of RFC 8448 §3–§7, re-verified by its extraction script).

use std::sync::OnceLock;

use serde_json::Value;

use super::*;
use crate::transcript::Transcript;

const SUITE: CipherSuite = CipherSuite::TlsAes128GcmSha256;
const HASH: HashAlg = HashAlg::Sha256;

fn vectors() -> &'static Value {
    static VECTORS: OnceLock<Value> = OnceLock::new();
    VECTORS.get_or_init(|| {
        serde_json::from_str(include_str!("../../../testdata/rfc8448.json"))
            .expect("testdata/rfc8448.json is valid JSON")
    })
}

fn unhex(value: &Value, what: &str) -> Vec<u8> {
    let text = value
        .as_str()
        .unwrap_or_else(|| panic!("{what} is not a hex string"));
    hex::decode(text).unwrap_or_else(|e| panic!("{what} is not hex: {e}"))
}

/// One RFC 8448 section's `summary`.
pub(crate) struct Section {
    name: &'static str,
    summary: &'static Value,
}

pub(crate) fn section(name: &'static str) -> Section {
    let summary = &vectors()["sections"][name]["summary"];
    assert!(summary.is_object(), "no section {name} in rfc8448.json");
    Section { name, summary }
}

impl Section {
    fn get(&self, group: &str, key: &str) -> Vec<u8> {
        let what = format!("{}.summary.{group}.{key}", self.name);
        unhex(&self.summary[group][key], &what)
    }

    /// A handshake message, 4-byte header included.
    pub(crate) fn message(&self, name: &str) -> Vec<u8> {
        self.get("messages", name)
    }

    pub(crate) fn schedule(&self, name: &str) -> Vec<u8> {
        self.get("key_schedule", name)
    }

    pub(crate) fn verification_derived(&self, name: &str) -> Vec<u8> {
        self.get("verification_derived", name)
    }

    fn has_verification_derived(&self, name: &str) -> bool {
        self.summary["verification_derived"][name].is_string()
    }

    /// (secret, key, iv) of `summary.traffic_keys.<phase>`.
    fn traffic_keys(&self, phase: &str) -> (Vec<u8>, Vec<u8>, Vec<u8>) {
        let entry = &self.summary["traffic_keys"][phase];
        let what = format!("{}.traffic_keys.{phase}", self.name);
        (
            unhex(&entry["secret"], &what),
            unhex(&entry["key"], &what),
            unhex(&entry["iv"], &what),
        )
    }

    fn traffic_phases(&self) -> Vec<&'static str> {
        self.summary["traffic_keys"]
            .as_object()
            .expect("traffic_keys is an object")
            .keys()
            .map(|phase| -> &'static str { phase.as_str() })
            .collect()
    }
}

/// The handshake messages of each section in transcript order (the JSON object is unordered).
fn handshake_order(section: &str) -> &'static [&'static str] {
    match section {
        "simple_1rtt" | "compatibility_mode" => &[
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "server_certificate",
            "server_certificate_verify",
            "server_finished",
            "client_finished",
        ],
        "resumed_0rtt" => &[
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "server_finished",
            "end_of_early_data",
            "client_finished",
        ],
        "hello_retry_request" => &[
            "client_hello",
            "hello_retry_request",
            "client_hello_2",
            "server_hello",
            "encrypted_extensions",
            "server_certificate",
            "server_certificate_verify",
            "server_finished",
            "client_finished",
        ],
        "client_authentication" => &[
            "client_hello",
            "server_hello",
            "encrypted_extensions",
            "certificate_request",
            "server_certificate",
            "server_certificate_verify",
            "server_finished",
            "client_certificate",
            "client_certificate_verify",
            "client_finished",
        ],
        other => panic!("no message order for section {other}"),
    }
}

fn assert_secret(secret: &Secret, expected: &[u8], what: &str) {
    assert_eq!(
        hex::encode(secret.as_bytes()),
        hex::encode(expected),
        "{what}"
    );
    assert!(secret.ct_eq(expected), "{what}: ct_eq disagrees with ==");
}

/// The secrets of one handshake, as computed by this module from the section's inputs.
#[derive(Default)]
struct ComputedSecrets {
    client_early_traffic: Option<Secret>,
    client_handshake_traffic: Option<Secret>,
    server_handshake_traffic: Option<Secret>,
    client_application_traffic: Option<Secret>,
    server_application_traffic: Option<Secret>,
    resumption_master: Option<Secret>,
}

/// Runs the whole client key schedule of a section, message by message, and checks every value
/// the section prints (RFC 8446 §7.1, §4.4.1, §4.4.4, §7.2, §7.3).
fn run_full_handshake(name: &'static str) -> ComputedSecrets {
    let section = section(name);
    let schedule = |key: &str| section.schedule(key);
    let mut computed = ComputedSecrets::default();

    let psk = schedule("psk_or_zero_ikm");
    let psk_offered = psk.iter().any(|&b| b != 0);
    let early = KeyScheduleEarly::new(HASH, psk_offered.then_some(psk.as_slice()));
    assert_secret(
        &early.early_secret,
        &schedule("early_secret"),
        "early secret",
    );
    assert_secret(
        &derived_salt(HASH, early.early_secret.as_bytes()),
        &schedule("derived_for_handshake"),
        "derived (early → handshake)",
    );
    if psk_offered {
        let client_hello_hash = HASH.hash(&section.message("client_hello"));
        computed.client_early_traffic = Some(early.client_early_traffic_secret(&client_hello_hash));
    }

    let mut early = Some(early);
    let mut handshake: Option<KeyScheduleHandshake> = None;
    let mut master: Option<KeyScheduleMaster> = None;
    let mut transcript = Transcript::new();

    // Transcript hashes the verification script printed, checked just before the message.
    let hash_checks = [
        (
            "server_certificate_verify",
            "transcript_hash_for_server_certificate_verify",
        ),
        (
            "client_certificate_verify",
            "transcript_hash_for_client_certificate_verify",
        ),
    ];

    for &message_name in handshake_order(name) {
        let message = section.message(message_name);
        for (before, key) in hash_checks {
            if before == message_name && section.has_verification_derived(key) {
                assert_eq!(
                    hex::encode(transcript.hash(HASH)),
                    hex::encode(section.verification_derived(key)),
                    "{name}: {key}"
                );
            }
        }

        match message_name {
            "server_finished" => {
                let hs = handshake.take().expect("ServerHello came first");
                let transcript_hash = transcript.hash(HASH);
                assert_eq!(
                    transcript_hash,
                    section.verification_derived("transcript_hash_for_server_finished")
                );
                let server_hs = computed.server_handshake_traffic.as_ref().expect("set");
                assert_secret(
                    &finished_key(HASH, server_hs.as_bytes()),
                    &schedule("server_finished_key"),
                    "server finished_key",
                );
                let verify_data =
                    finished_verify_data(HASH, server_hs.as_bytes(), &transcript_hash);
                assert_eq!(verify_data, schedule("server_finished_verify_data"));
                assert_eq!(
                    verify_data,
                    message[4..],
                    "the Finished body is verify_data"
                );
                assert!(verify_finished(
                    HASH,
                    server_hs.as_bytes(),
                    &transcript_hash,
                    &message[4..]
                ));
                let mut forged = message[4..].to_vec();
                forged[31] ^= 1;
                assert!(!verify_finished(
                    HASH,
                    server_hs.as_bytes(),
                    &transcript_hash,
                    &forged
                ));

                assert_secret(
                    &derived_salt(HASH, hs.handshake_secret.as_bytes()),
                    &schedule("derived_for_master"),
                    "derived (handshake → master)",
                );
                let ms = hs.into_master();
                assert_secret(
                    &ms.master_secret,
                    &schedule("master_secret"),
                    "master secret",
                );

                transcript.add(&message);
                let server_finished_hash = transcript.hash(HASH);
                assert_eq!(
                    server_finished_hash,
                    schedule("transcript_hash_for_application_secrets")
                );
                let cats = ms.client_application_traffic_secret_0(&server_finished_hash);
                let sats = ms.server_application_traffic_secret_0(&server_finished_hash);
                assert_secret(
                    &cats,
                    &schedule("client_application_traffic_secret_0"),
                    "c ap",
                );
                assert_secret(
                    &sats,
                    &schedule("server_application_traffic_secret_0"),
                    "s ap",
                );
                assert_secret(
                    &ms.exporter_master_secret(&server_finished_hash),
                    &schedule("exporter_master_secret"),
                    "exporter master",
                );
                computed.client_application_traffic = Some(cats);
                computed.server_application_traffic = Some(sats);
                master = Some(ms);
            }
            "client_finished" => {
                let ms = master.as_ref().expect("server Finished came first");
                let transcript_hash = transcript.hash(HASH);
                assert_eq!(
                    transcript_hash,
                    section.verification_derived("transcript_hash_for_client_finished")
                );
                let client_hs = computed.client_handshake_traffic.as_ref().expect("set");
                assert_secret(
                    &finished_key(HASH, client_hs.as_bytes()),
                    &schedule("client_finished_key"),
                    "client finished_key",
                );
                let verify_data =
                    finished_verify_data(HASH, client_hs.as_bytes(), &transcript_hash);
                assert_eq!(verify_data, schedule("client_finished_verify_data"));
                assert_eq!(verify_data, message[4..]);

                transcript.add(&message);
                let client_finished_hash = transcript.hash(HASH);
                assert_eq!(
                    client_finished_hash,
                    schedule("transcript_hash_for_resumption_master")
                );
                let rms = ms.resumption_master_secret(&client_finished_hash);
                assert_secret(&rms, &schedule("resumption_master_secret"), "res master");
                computed.resumption_master = Some(rms);
            }
            "hello_retry_request" => {
                transcript
                    .restart_for_hello_retry(HASH)
                    .expect("the transcript holds ClientHello1");
                let message_hash = section.verification_derived("message_hash_of_client_hello_1");
                assert_eq!(transcript.hash(HASH), HASH.hash(&message_hash));
                transcript.add(&message);
            }
            "server_hello" => {
                transcript.add(&message);
                let hello_hash = transcript.hash(HASH);
                assert_eq!(
                    hello_hash,
                    schedule("transcript_hash_for_handshake_secrets")
                );
                let ecdhe = schedule("ecdhe_shared_secret");
                let hs = early.take().expect("once").into_handshake(Some(&ecdhe));
                assert_secret(
                    &hs.handshake_secret,
                    &schedule("handshake_secret"),
                    "hs secret",
                );
                let chts = hs.client_handshake_traffic_secret(&hello_hash);
                let shts = hs.server_handshake_traffic_secret(&hello_hash);
                assert_secret(&chts, &schedule("client_handshake_traffic_secret"), "c hs");
                assert_secret(&shts, &schedule("server_handshake_traffic_secret"), "s hs");
                computed.client_handshake_traffic = Some(chts);
                computed.server_handshake_traffic = Some(shts);
                handshake = Some(hs);
            }
            _ => transcript.add(&message),
        }
    }
    assert!(
        computed.resumption_master.is_some(),
        "{name}: handshake completed"
    );

    // Record protection keys of every phase (RFC 8446 §7.3).
    for phase in section.traffic_phases() {
        let (expected_secret, expected_key, expected_iv) = section.traffic_keys(phase);
        let secret = match phase {
            "client_early_application" => &computed.client_early_traffic,
            "client_handshake" => &computed.client_handshake_traffic,
            "server_handshake" => &computed.server_handshake_traffic,
            "client_application" => &computed.client_application_traffic,
            "server_application" => &computed.server_application_traffic,
            other => panic!("{name}: unexpected traffic phase {other}"),
        }
        .as_ref()
        .unwrap_or_else(|| panic!("{name}: no secret for {phase}"));
        assert_secret(secret, &expected_secret, phase);
        let (key, iv) = traffic_key_iv(SUITE, secret.as_bytes()).expect("supported suite");
        assert_secret(&key, &expected_key, phase);
        assert_eq!(iv.to_vec(), expected_iv, "{name}: {phase} iv");
    }

    // KeyUpdate successors (RFC 8446 §7.2), computed by the verification script.
    for (side, secret_0) in [
        ("client", &computed.client_application_traffic),
        ("server", &computed.server_application_traffic),
    ] {
        let secret_0 = secret_0.as_ref().expect("set");
        let secret_1 = next_application_traffic_secret(HASH, secret_0.as_bytes());
        assert_secret(
            &secret_1,
            &section.verification_derived(&format!("{side}_application_traffic_secret_1")),
            "traffic upd",
        );
        let (key, iv) = traffic_key_iv(SUITE, secret_1.as_bytes()).expect("supported suite");
        assert_secret(
            &key,
            &section.verification_derived(&format!("{side}_application_1_key")),
            "key after update",
        );
        assert_eq!(
            iv.to_vec(),
            section.verification_derived(&format!("{side}_application_1_iv"))
        );
    }
    computed
}

#[test]
fn simple_1rtt_full_schedule() {
    run_full_handshake("simple_1rtt");
}

#[test]
fn resumed_0rtt_full_schedule() {
    let computed = run_full_handshake("resumed_0rtt");
    assert!(computed.client_early_traffic.is_some());
}

#[test]
fn hello_retry_request_full_schedule() {
    run_full_handshake("hello_retry_request");
}

#[test]
fn client_authentication_full_schedule() {
    run_full_handshake("client_authentication");
}

#[test]
fn compatibility_mode_full_schedule() {
    run_full_handshake("compatibility_mode");
}

#[test]
fn ticket_psk_of_section_3_is_the_psk_of_section_4() {
    let simple = section("simple_1rtt");
    let ticket = &vectors()["sections"]["simple_1rtt"]["summary"]["verification_derived"]
        ["new_session_ticket_fields"];
    let nonce = unhex(&ticket["ticket_nonce"], "ticket_nonce");
    assert_eq!(nonce, simple.schedule("ticket_nonce"));

    // The nonce as it sits in the NewSessionTicket message (RFC 8446 §4.6.1): after the
    // header, ticket_lifetime (4), ticket_age_add (4), comes ticket_nonce<0..255>.
    let new_session_ticket = simple.message("new_session_ticket");
    let nonce_len = usize::from(new_session_ticket[4 + 8]);
    let nonce_in_message = &new_session_ticket[4 + 9..4 + 9 + nonce_len];
    assert_eq!(nonce_in_message, nonce);

    let psk = resumption_psk(
        HASH,
        &simple.schedule("resumption_master_secret"),
        nonce_in_message,
    );
    assert_secret(&psk, &simple.schedule("resumption_psk"), "resumption PSK");
    assert_secret(
        &psk,
        &section("resumed_0rtt").schedule("psk_or_zero_ikm"),
        "§4 PSK",
    );
}

/// The ClientHello truncated before its binders (RFC 8446 §4.2.11.2): pre_shared_key is the
/// last extension and the binders list (uint16 length + entries) its last field.
fn truncate_before_binders(client_hello: &[u8], binder_len: usize) -> &[u8] {
    let binders_list_len = 1 + binder_len; // one PskBinderEntry: uint8 length + HMAC
    let truncated_len = client_hello.len() - 2 - binders_list_len;
    let length_field = &client_hello[truncated_len..truncated_len + 2];
    assert_eq!(
        usize::from(u16::from_be_bytes([length_field[0], length_field[1]])),
        binders_list_len,
        "binders list length"
    );
    assert_eq!(usize::from(client_hello[truncated_len + 2]), binder_len);
    &client_hello[..truncated_len]
}

#[test]
fn resumed_0rtt_binder_and_early_secrets() {
    let resumed = section("resumed_0rtt");
    let psk = resumed.schedule("psk_or_zero_ikm");
    let early = KeyScheduleEarly::new(HASH, Some(&psk));

    let binder_key = early.binder_key(PskKind::Resumption);
    assert_secret(&binder_key, &resumed.schedule("binder_key"), "res binder");
    assert_secret(
        &early.binder_key(PskKind::External),
        &resumed.verification_derived("binder_key_if_this_psk_were_external_(ext_binder)"),
        "ext binder",
    );
    assert_secret(
        &finished_key(HASH, binder_key.as_bytes()),
        &resumed.schedule("binder_finished_key"),
        "binder finished_key",
    );

    let client_hello = resumed.message("client_hello");
    let truncated = truncate_before_binders(&client_hello, HASH.output_len());
    assert_eq!(truncated.len(), 477);
    assert_eq!(
        truncated,
        resumed.message("client_hello_truncated_for_binder")
    );
    assert_eq!(truncated, resumed.schedule("binder_client_hello_prefix"));

    let truncated_hash = Transcript::new().hash_with(HASH, truncated);
    assert_eq!(truncated_hash, resumed.schedule("binder_transcript_hash"));
    let computed_binder = binder(HASH, binder_key.as_bytes(), &truncated_hash);
    assert_eq!(computed_binder, resumed.schedule("binder"));
    assert_eq!(computed_binder, client_hello[truncated.len() + 3..]);
    assert!(verify_binder(
        HASH,
        binder_key.as_bytes(),
        &truncated_hash,
        &computed_binder
    ));
    assert!(!verify_binder(
        HASH,
        binder_key.as_bytes(),
        &truncated_hash,
        &computed_binder[..31]
    ));

    let client_hello_hash = HASH.hash(&client_hello);
    assert_eq!(
        client_hello_hash,
        resumed.schedule("transcript_hash_for_early_secrets")
    );
    assert_secret(
        &early.client_early_traffic_secret(&client_hello_hash),
        &resumed.schedule("client_early_traffic_secret"),
        "c e traffic",
    );
    assert_secret(
        &early.early_exporter_master_secret(&client_hello_hash),
        &resumed.schedule("early_exporter_master_secret"),
        "e exp master",
    );
}
