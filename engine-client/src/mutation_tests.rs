//! No-panic tests for the receive path: 20,000 mutations (bit flips, truncation, insertion,
//! deletion, length fields overwritten) of the RFC 8448 records and messages go through the
//! [`Deframer`], the [`HandshakeJoiner`] and a [`ClientConnection`] in each of its states.
//! Errors are expected; a panic is a bug. What comes out must be what went in (records and
//! handshake messages are exact slices of the input).

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use lurk_proto::wire::enums::{CipherSuite, ContentType};
use lurk_test_support::mutate::{mutate, XorShift};
use lurk_test_support::rfc8448::{self, TrafficKeys};
use zeroize::Zeroizing;

use crate::config::{ClientConfig, Ephemeral};
use crate::conn::ClientConnection;
use crate::deframer::Deframer;
use crate::joiner::HandshakeJoiner;
use crate::record::{RecordEncrypter, RecordKeys};

const ITERATIONS: usize = 20_000;
/// The connection tests make a connection (and replay a handshake) per input: their 20,000
/// inputs are split over two tests of 10,000 (two seeds) to stay under ~2 s each in debug
/// builds.
const HALF: usize = ITERATIONS / 2;

/// Runs `f` on `input`, failing the test with the iteration and input on a panic.
fn no_panic(i: usize, input: &[u8], f: impl FnOnce()) {
    if catch_unwind(AssertUnwindSafe(f)).is_err() {
        panic!("iteration {i} panicked on input {}", hex::encode(input));
    }
}

#[test]
fn deframer_never_panics_and_records_are_input_slices() {
    let mut seeds = Vec::new();
    for s in rfc8448::rfc8448().sections() {
        let all: Vec<u8> = s.records.iter().flat_map(|r| r.record.clone()).collect();
        seeds.extend(s.records.iter().map(|r| r.record.clone()));
        seeds.push(all);
    }
    let mut rng = XorShift::new(0x5eed_0001);
    for i in 0..ITERATIONS {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        no_panic(i, &input, || {
            let mut d = Deframer::new();
            // In two pieces, as a socket would deliver them.
            let cut = input.len() / 3;
            d.push(&input[..cut]);
            let mut cursor = 0;
            let mut check = |rec: crate::deframer::OpaqueRecord| {
                let mut enc = vec![rec.typ.get()];
                enc.extend_from_slice(&rec.version.to_be_bytes());
                enc.extend_from_slice(&(rec.payload.len() as u16).to_be_bytes());
                enc.extend_from_slice(&rec.payload);
                let at = input[cursor..]
                    .windows(enc.len())
                    .position(|w| w == enc.as_slice())
                    .expect("a record is a slice of the input");
                cursor += at + enc.len();
            };
            while let Ok(Some(rec)) = d.next_record() {
                check(rec);
            }
            d.push(&input[cut..]);
            while let Ok(Some(rec)) = d.next_record() {
                check(rec);
            }
        });
    }
}

#[test]
fn joiner_never_panics_and_messages_are_the_input() {
    let mut seeds = Vec::new();
    for s in rfc8448::rfc8448().sections() {
        // Every record's payload, whatever its type (non-handshake bytes are seeds too).
        seeds.extend(s.records.iter().map(|r| r.payload.clone()));
        seeds.extend(s.messages.iter().map(|(_, m)| m.to_vec()));
    }
    let mut rng = XorShift::new(0x5eed_0002);
    for i in 0..ITERATIONS {
        let input = mutate(&mut rng, &seeds[i % seeds.len()]);
        no_panic(i, &input, || {
            let mut j = HandshakeJoiner::new();
            let mut out = Vec::new();
            // Fragmented at a random point, as records may split messages.
            let cut = input.len() / 2;
            for part in [&input[..cut], &input[cut..]] {
                if part.is_empty() || j.push(part).is_err() {
                    return;
                }
                while let Some(m) = j.next_message() {
                    out.extend_from_slice(&m.encoded);
                }
            }
            if j.is_empty() {
                assert_eq!(out, input, "messages out = bytes in");
            } else {
                assert!(input.starts_with(&out));
            }
        });
    }
}

/// RFC 8448 §3 replayed through the states (as in `conn::tests`).
struct Replay {
    section: &'static rfc8448::Section,
}

impl Replay {
    fn new() -> Self {
        Self {
            section: &rfc8448::rfc8448().simple_1rtt,
        }
    }

    fn record(&self, i: usize) -> Vec<u8> {
        self.section.records[i].record.clone()
    }

    fn payload(&self, i: usize) -> Vec<u8> {
        self.section.records[i].payload.clone()
    }

    fn keys(k: &TrafficKeys) -> RecordKeys {
        RecordKeys::new(
            CipherSuite::TlsAes128GcmSha256,
            Zeroizing::new(k.key.clone()),
            k.iv.clone().try_into().unwrap(),
        )
    }

    /// `payload` sealed as one record of inner type `typ` under `keys`.
    fn seal(keys: &RecordKeys, typ: ContentType, payload: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        let mut enc = RecordEncrypter::new(keys).unwrap();
        if payload.is_empty() {
            // Our encrypter makes no empty handshake or alert record; an empty application
            // data record is legal (RFC 8446 §5.1) and out of place in the handshake.
            out.extend(enc.encrypt(ContentType::ApplicationData, payload).unwrap());
        } else {
            enc.encrypt_all(typ, payload, &mut out).unwrap();
        }
        out
    }

    /// A connection that has sent the RFC's ClientHello (exporter and record_size_limit on,
    /// for the code paths they add).
    fn connection(&self) -> ClientConnection {
        let cfg = Arc::new(ClientConfig {
            middlebox_compat: false,
            ephemeral: Ephemeral::Engine,
            exporter: true,
            ticket_store: Some(Arc::new(crate::tickets::MemoryTicketStore::default())),
            ..ClientConfig::default()
        });
        ClientConnection::replay(
            cfg,
            &self.section.messages.client_hello,
            &self.section.key_schedule.ecdhe_shared_secret,
        )
        .unwrap()
    }
}

/// Feeds `bytes` and processes; the connection may fail but not panic, and a failed
/// connection stays failed.
fn feed(conn: &mut ClientConnection, bytes: &[u8]) {
    conn.read_tls(bytes);
    if let Err(e) = conn.process_new_packets() {
        assert_eq!(conn.process_new_packets().unwrap_err(), e, "sticky");
    }
    let _ = conn.take_tls();
}

/// Waiting for the ServerHello: mutated plaintext ServerHello records, then the real flight.
fn expect_server_hello(seed: u64) {
    let r = Replay::new();
    let (sh, flight) = (r.record(1), r.record(2));
    let mut rng = XorShift::new(seed);
    for i in 0..HALF {
        let input = mutate(&mut rng, &sh);
        no_panic(i, &input, || {
            let mut conn = r.connection();
            feed(&mut conn, &input);
            feed(&mut conn, &flight);
        });
    }
}

/// After the real ServerHello: the server flight (EncryptedExtensions .. Finished) mutated in
/// plaintext and sealed under the RFC's server handshake key, so that the mutations reach the
/// message parsers and the states behind the record layer.
fn server_flight(seed: u64) {
    let r = Replay::new();
    let sh = r.record(1);
    let keys = Replay::keys(&r.section.traffic_keys.server_handshake);
    let flight = r.payload(2);
    let mut rng = XorShift::new(seed);
    for i in 0..HALF {
        let input = mutate(&mut rng, &flight);
        no_panic(i, &input, || {
            let mut conn = r.connection();
            feed(&mut conn, &sh);
            feed(
                &mut conn,
                &Replay::seal(&keys, ContentType::Handshake, &input),
            );
        });
    }
}

/// After the handshake: mutated NewSessionTicket / application data / close_notify under the
/// server application key, and whole mutated records. One connection serves until it fails.
fn traffic(seed: u64) {
    let r = Replay::new();
    let keys = Replay::keys(&r.section.traffic_keys.server_application);
    let seeds: Vec<(ContentType, Vec<u8>)> = vec![
        (ContentType::Handshake, r.payload(4)),
        (ContentType::ApplicationData, r.payload(6)),
        (ContentType::Alert, r.payload(8)),
        (
            ContentType::Handshake,
            lurk_proto::wire::encode_key_update(
                lurk_proto::wire::KeyUpdateRequest::UpdateRequested,
            ),
        ),
    ];
    let fresh = || {
        let mut conn = r.connection();
        feed(&mut conn, &r.record(1));
        feed(&mut conn, &r.record(2));
        assert!(!conn.is_handshaking());
        conn
    };
    let mut conn = fresh();
    // The server's write key, its sequence number following the records sent to `conn`.
    let mut enc = RecordEncrypter::new(&keys).unwrap();
    let mut rng = XorShift::new(seed);
    for i in 0..HALF {
        let (typ, seed) = &seeds[i % seeds.len()];
        let input = mutate(&mut rng, seed);
        let mut record = Vec::new();
        if input.is_empty() {
            record.extend(enc.encrypt(ContentType::ApplicationData, &[]).unwrap());
        } else {
            enc.encrypt_all(*typ, &input, &mut record).unwrap();
        }
        if i % 4 == 3 {
            // The record itself mutated (header, ciphertext, tag).
            record = mutate(&mut rng, &record);
        }
        no_panic(i, &input, || {
            feed(&mut conn, &record);
            let _ = conn.export_keying_material(b"EXPERIMENTAL-x", &input, 32);
            let _ = conn.write_plaintext(&input);
            let mut buf = [0u8; 64];
            conn.read_plaintext(&mut buf);
        });
        if conn.error().is_some() || conn.peer_closed() || i % 4 == 3 {
            conn = fresh();
            enc = RecordEncrypter::new(&keys).unwrap();
        }
    }
}

#[test]
fn connection_in_expect_server_hello_never_panics_1() {
    expect_server_hello(0x5eed_0003);
}

#[test]
fn connection_in_expect_server_hello_never_panics_2() {
    expect_server_hello(0x5eed_0013);
}

#[test]
fn connection_in_the_server_flight_never_panics_1() {
    server_flight(0x5eed_0004);
}

#[test]
fn connection_in_the_server_flight_never_panics_2() {
    server_flight(0x5eed_0014);
}

#[test]
fn connection_in_traffic_never_panics_1() {
    traffic(0x5eed_0005);
}

#[test]
fn connection_in_traffic_never_panics_2() {
    traffic(0x5eed_0015);
}
