//! RFC 8448 known answers for the key schedule and the transcript, read from
//! `testdata/rfc8448.json` (every value of RFC 8448 §3–§7, re-verified by its extraction script).

use lurk_test_support::rfc8448::Section;

use super::*;
use crate::transcript::Transcript;

const SUITE: CipherSuite = CipherSuite::TlsAes128GcmSha256;
const HASH: HashAlg = HashAlg::Sha256;

pub(crate) fn section(name: &str) -> &'static Section {
    lurk_test_support::rfc8448().section(name)
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
    let ks = &section.key_schedule;
    let mut computed = ComputedSecrets::default();

    let psk = ks.psk_or_zero_ikm.clone();
    let psk_offered = psk.iter().any(|&b| b != 0);
    let early = KeyScheduleEarly::new(HASH, psk_offered.then_some(psk.as_slice()));
    assert_secret(
        &early.early_secret,
        &ks.early_secret.clone(),
        "early secret",
    );
    assert_secret(
        &derived_salt(HASH, early.early_secret.as_bytes()),
        &ks.derived_for_handshake.clone(),
        "derived (early → handshake)",
    );
    if psk_offered {
        let client_hello_hash = HASH.hash(&section.messages.client_hello.clone());
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
        let message = section.messages.by_name(message_name).to_vec();
        for (before, key) in hash_checks {
            if before == message_name && section.verification_derived.get(key).is_some() {
                assert_eq!(
                    hex::encode(transcript.hash(HASH)),
                    hex::encode(section.verification_derived.by_name(key)),
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
                    section
                        .verification_derived
                        .transcript_hash_for_server_finished
                        .clone()
                );
                let server_hs = computed.server_handshake_traffic.as_ref().expect("set");
                assert_secret(
                    &finished_key(HASH, server_hs.as_bytes()),
                    &ks.server_finished_key.clone(),
                    "server finished_key",
                );
                let verify_data =
                    finished_verify_data(HASH, server_hs.as_bytes(), &transcript_hash);
                assert_eq!(verify_data, ks.server_finished_verify_data.clone());
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
                    &ks.derived_for_master.clone(),
                    "derived (handshake → master)",
                );
                let ms = hs.into_master();
                assert_secret(
                    &ms.master_secret,
                    &ks.master_secret.clone(),
                    "master secret",
                );

                transcript.add(&message);
                let server_finished_hash = transcript.hash(HASH);
                assert_eq!(
                    server_finished_hash,
                    ks.transcript_hash_for_application_secrets.clone()
                );
                let cats = ms.client_application_traffic_secret_0(&server_finished_hash);
                let sats = ms.server_application_traffic_secret_0(&server_finished_hash);
                assert_secret(
                    &cats,
                    &ks.client_application_traffic_secret_0.clone(),
                    "c ap",
                );
                assert_secret(
                    &sats,
                    &ks.server_application_traffic_secret_0.clone(),
                    "s ap",
                );
                assert_secret(
                    &ms.exporter_master_secret(&server_finished_hash),
                    &ks.exporter_master_secret.clone(),
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
                    section
                        .verification_derived
                        .transcript_hash_for_client_finished
                        .clone()
                );
                let client_hs = computed.client_handshake_traffic.as_ref().expect("set");
                assert_secret(
                    &finished_key(HASH, client_hs.as_bytes()),
                    &ks.client_finished_key.clone(),
                    "client finished_key",
                );
                let verify_data =
                    finished_verify_data(HASH, client_hs.as_bytes(), &transcript_hash);
                assert_eq!(verify_data, ks.client_finished_verify_data.clone());
                assert_eq!(verify_data, message[4..]);

                transcript.add(&message);
                let client_finished_hash = transcript.hash(HASH);
                assert_eq!(
                    client_finished_hash,
                    ks.transcript_hash_for_resumption_master.clone()
                );
                let rms = ms.resumption_master_secret(&client_finished_hash);
                assert_secret(&rms, &ks.resumption_master_secret.clone(), "res master");
                computed.resumption_master = Some(rms);
            }
            "hello_retry_request" => {
                transcript
                    .restart_for_hello_retry(HASH)
                    .expect("the transcript holds ClientHello1");
                let message_hash = section
                    .verification_derived
                    .message_hash_of_client_hello_1
                    .clone()
                    .expect("message_hash_of_client_hello_1");
                assert_eq!(transcript.hash(HASH), HASH.hash(&message_hash));
                transcript.add(&message);
            }
            "server_hello" => {
                transcript.add(&message);
                let hello_hash = transcript.hash(HASH);
                assert_eq!(hello_hash, ks.transcript_hash_for_handshake_secrets.clone());
                let ecdhe = ks.ecdhe_shared_secret.clone();
                let hs = early.take().expect("once").into_handshake(Some(&ecdhe));
                assert_secret(
                    &hs.handshake_secret,
                    &ks.handshake_secret.clone(),
                    "hs secret",
                );
                let chts = hs.client_handshake_traffic_secret(&hello_hash);
                let shts = hs.server_handshake_traffic_secret(&hello_hash);
                assert_secret(&chts, &ks.client_handshake_traffic_secret.clone(), "c hs");
                assert_secret(&shts, &ks.server_handshake_traffic_secret.clone(), "s hs");
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
    for (phase, expected) in section.traffic_keys.phases() {
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
        assert_secret(secret, &expected.secret, phase);
        let (key, iv) = traffic_key_iv(SUITE, secret.as_bytes()).expect("supported suite");
        assert_secret(&key, &expected.key, phase);
        assert_eq!(iv.to_vec(), expected.iv, "{name}: {phase} iv");
    }

    // KeyUpdate successors (RFC 8446 §7.2), computed by the verification script.
    let derived = &section.verification_derived;
    for (secret_0, expected_secret, expected_key, expected_iv) in [
        (
            &computed.client_application_traffic,
            &derived.client_application_traffic_secret_1,
            &derived.client_application_1_key,
            &derived.client_application_1_iv,
        ),
        (
            &computed.server_application_traffic,
            &derived.server_application_traffic_secret_1,
            &derived.server_application_1_key,
            &derived.server_application_1_iv,
        ),
    ] {
        let secret_0 = secret_0.as_ref().expect("set");
        let secret_1 = next_application_traffic_secret(HASH, secret_0.as_bytes());
        assert_secret(&secret_1, expected_secret, "traffic upd");
        let (key, iv) = traffic_key_iv(SUITE, secret_1.as_bytes()).expect("supported suite");
        assert_secret(&key, expected_key, "key after update");
        assert_eq!(&iv.to_vec(), expected_iv);
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
    let ticket = simple
        .new_session_ticket_fields
        .as_ref()
        .expect("§3 ticket fields");
    let nonce = ticket.ticket_nonce.clone();
    assert_eq!(
        nonce,
        simple
            .key_schedule
            .ticket_nonce
            .clone()
            .expect("ticket_nonce")
    );

    // The nonce as it sits in the NewSessionTicket message (RFC 8446 §4.6.1): after the
    // header, ticket_lifetime (4), ticket_age_add (4), comes ticket_nonce<0..255>.
    let new_session_ticket = simple
        .messages
        .new_session_ticket
        .clone()
        .expect("new_session_ticket");
    let nonce_len = usize::from(new_session_ticket[4 + 8]);
    let nonce_in_message = &new_session_ticket[4 + 9..4 + 9 + nonce_len];
    assert_eq!(nonce_in_message, nonce);

    let psk = resumption_psk(
        HASH,
        &simple.key_schedule.resumption_master_secret.clone(),
        nonce_in_message,
    );
    assert_secret(
        &psk,
        &simple
            .key_schedule
            .resumption_psk
            .clone()
            .expect("resumption_psk"),
        "resumption PSK",
    );
    assert_secret(
        &psk,
        &section("resumed_0rtt").key_schedule.psk_or_zero_ikm.clone(),
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
    let psk = resumed.key_schedule.psk_or_zero_ikm.clone();
    let early = KeyScheduleEarly::new(HASH, Some(&psk));

    let binder_key = early.binder_key(PskKind::Resumption);
    assert_secret(
        &binder_key,
        &resumed.key_schedule.binder_key.clone().expect("binder_key"),
        "res binder",
    );
    assert_secret(
        &early.binder_key(PskKind::External),
        resumed
            .verification_derived
            .by_name("binder_key_if_this_psk_were_external_(ext_binder)"),
        "ext binder",
    );
    assert_secret(
        &finished_key(HASH, binder_key.as_bytes()),
        &resumed
            .key_schedule
            .binder_finished_key
            .clone()
            .expect("binder_finished_key"),
        "binder finished_key",
    );

    let client_hello = resumed.messages.client_hello.clone();
    let truncated = truncate_before_binders(&client_hello, HASH.output_len());
    assert_eq!(truncated.len(), 477);
    assert_eq!(
        truncated,
        resumed
            .messages
            .client_hello_truncated_for_binder
            .clone()
            .expect("client_hello_truncated_for_binder")
    );
    assert_eq!(
        truncated,
        resumed
            .key_schedule
            .binder_client_hello_prefix
            .clone()
            .expect("binder_client_hello_prefix")
    );

    let truncated_hash = Transcript::new().hash_with(HASH, truncated);
    assert_eq!(
        truncated_hash,
        resumed
            .key_schedule
            .binder_transcript_hash
            .clone()
            .expect("binder_transcript_hash")
    );
    let computed_binder = binder(HASH, binder_key.as_bytes(), &truncated_hash);
    assert_eq!(
        computed_binder,
        resumed.key_schedule.binder.clone().expect("binder")
    );
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
        resumed
            .key_schedule
            .transcript_hash_for_early_secrets
            .clone()
            .expect("transcript_hash_for_early_secrets")
    );
    assert_secret(
        &early.client_early_traffic_secret(&client_hello_hash),
        &resumed
            .key_schedule
            .client_early_traffic_secret
            .clone()
            .expect("client_early_traffic_secret"),
        "c e traffic",
    );
    assert_secret(
        &early.early_exporter_master_secret(&client_hello_hash),
        &resumed
            .key_schedule
            .early_exporter_master_secret
            .clone()
            .expect("early_exporter_master_secret"),
        "e exp master",
    );
}
