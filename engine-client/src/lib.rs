//! The LURK engine: a TLS 1.3 client that holds no long-term secret and calls the Crypto
//! Service whenever a credential is involved.
//!
//! - [`cs_client`]: the channel to one Crypto Service (mTLS, one HTTP/2 connection reused);
//!   [`cs_pool`]: several CS replicas (DNS names re-resolved, sessions pinned, health checks).
//!
//! Sans-IO record layer (bytes in → records, messages and events out; no sockets here):
//!
//! - [`deframer`]: records out of a byte stream;
//! - [`record`]: record protection (RFC 8446 §5.2–5.4) and plaintext framing;
//! - [`joiner`]: handshake messages out of handshake record payloads;
//! - [`alert`]: alert parsing, encoding and close_notify semantics;
//! - [`error`]: the engine's error tree and the choice of alert to send.
//!
//! The client:
//!
//! - [`conn`]: the Sans-IO TLS 1.3 client state machine (CS calls are actions);
//! - [`stream`]: [`Connector`] and [`TlsStream`] for tokio;
//! - [`config`]: [`ClientConfig`] and the [`HandshakeSummary`];
//! - [`tickets`]: the engine's ticket store; [`verify`]: server authentication;
//!   [`keyshare`]: the engine's own (EC)DHE key pairs.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, trivial_numeric_casts)]

pub mod alert;
pub mod config;
pub mod conn;
pub mod cs_client;
pub mod cs_pool;
pub mod deframer;
pub mod error;
#[cfg(feature = "hyper")]
pub mod hyper_connector;
pub mod joiner;
pub mod keyshare;
pub mod record;
pub mod server_name;
pub mod stream;
pub mod tickets;
pub mod verify;

pub use config::{ClientConfig, ClientKey, Ephemeral, ExternalPsk, HandshakeSummary, TlsMode};
pub use conn::ClientConnection;
pub use error::{CertificateError, Error, InvalidMessage, PeerMisbehaved};
pub use server_name::{InvalidServerName, ServerName};
pub use stream::{Connector, TlsStream};
pub use tickets::{MemoryTicketStore, StoredTicket, TicketStore};

#[cfg(feature = "hyper")]
pub use hyper_connector::{HttpsConnector, MaybeHttpsStream};

#[cfg(test)]
mod mutation_tests;

#[cfg(test)]
mod pipeline_tests {
    //! Deframer → decrypter → joiner on whole server flights of the traces.

    use lurk_proto::wire::enums::ContentType;

    use crate::alert::{AlertOutcome, AlertReceiver};
    use crate::deframer::Deframer;
    use crate::joiner::HandshakeJoiner;
    use crate::record::{vectors, RecordDecrypter};

    /// Feeds every server record of each trace one byte at a time and checks the handshake
    /// messages that come out, switching keys at the right message and ending on close_notify.
    #[test]
    fn server_flights_byte_by_byte() {
        for trace in vectors::all() {
            let mut stream = Vec::new();
            let mut expected_hs = Vec::new();
            for r in trace.records.iter().filter(|r| r.sender == "server") {
                stream.extend_from_slice(&r.record);
                if r.inner_type.unwrap_or(r.record[0]) == 22 {
                    expected_hs.push(r.payload.clone());
                }
            }
            let keys = |name: &str| trace.keys.get(name).expect(name).clone();

            let mut d = Deframer::new();
            let mut j = HandshakeJoiner::new();
            let mut alerts = AlertReceiver::new();
            let mut dec: Option<RecordDecrypter> = None;
            let mut got_hs = Vec::new();
            let mut app = Vec::new();
            let mut closed = false;
            for b in &stream {
                d.push(&[*b]);
                while let Some(rec) = d.next_record().unwrap() {
                    let msg = match &mut dec {
                        Some(dec) => dec.decrypt(rec).unwrap(),
                        None => crate::record::PlainMessage {
                            typ: rec.typ,
                            payload: rec.payload,
                        },
                    };
                    match msg.typ {
                        ContentType::Handshake => {
                            j.push(&msg.payload).unwrap();
                            while let Some(m) = j.next_message() {
                                let key_change = match m.encoded[0] {
                                    2 if m.encoded[6..38]
                                        != lurk_proto::wire::HELLO_RETRY_REQUEST_RANDOM =>
                                    {
                                        Some("server_handshake")
                                    }
                                    20 => Some("server_application"),
                                    _ => None,
                                };
                                got_hs.push(m.encoded);
                                if let Some(name) = key_change {
                                    j.check_key_change().unwrap();
                                    dec = Some(RecordDecrypter::new(&keys(name)).unwrap());
                                    if name == "server_application" {
                                        d.end_middlebox_ccs();
                                    }
                                }
                            }
                        }
                        ContentType::Alert => {
                            j.check_non_handshake(msg.typ, msg.payload.len()).unwrap();
                            assert_eq!(
                                alerts.receive(&msg.payload).unwrap(),
                                AlertOutcome::CloseNotify
                            );
                            closed = true;
                        }
                        _ => {
                            j.check_non_handshake(msg.typ, msg.payload.len()).unwrap();
                            app.extend(msg.payload);
                        }
                    }
                }
            }
            // Records may carry several messages: compare the concatenations.
            assert_eq!(got_hs.concat(), expected_hs.concat(), "{}", trace.name);
            assert!(j.is_empty());
            assert!(!app.is_empty() || closed, "{}", trace.name);
        }
    }
}
