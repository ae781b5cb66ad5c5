//! The LURK engine: a TLS 1.3 client that holds no long-term secret and calls the Crypto
//! Service (CS) whenever a credential is involved, for proxies to link in the way they link
//! tokio-rustls.
//!
//! ```no_run
//! use std::sync::Arc;
//! use lurk_engine::cs_client::CsEndpoint;
//! use lurk_engine::verify::TrustAnchors;
//! use lurk_engine::{ClientConfig, Connector, MemoryTicketStore, ServerName};
//! use tokio::io::{AsyncReadExt, AsyncWriteExt};
//!
//! # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
//! let config = ClientConfig::builder()
//!     .trust_anchors(TrustAnchors::from_pem_file("ca.pem".as_ref())?)
//!     .ticket_store(Arc::new(MemoryTicketStore::default()))
//!     .build()?;
//! let cs = CsEndpoint::from_files(
//!     "https://cs.internal:7443",
//!     Some("cs-ca.pem".as_ref()),
//!     Some("engine.pem".as_ref()),
//!     Some("engine.key".as_ref()),
//! )?
//! .connect_lazy()?;
//! let connector = Connector::new(Arc::new(config), Some(cs));
//!
//! let tcp = tokio::net::TcpStream::connect("example.com:443").await?;
//! let name = ServerName::try_from("example.com")?;
//! let mut tls = connector.connect(tcp, &name, 443).await?;
//! tls.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await?;
//! let mut response = Vec::new();
//! tls.read_to_end(&mut response).await?;
//! println!("{:?}", tls.summary());
//! # Ok(())
//! # }
//! ```
//!
//! # I/O contract
//!
//! [`Connector::connect`] takes any connected `AsyncRead + AsyncWrite + Unpin` transport and
//! returns a [`TlsStream`] once the handshake is over; the stream is itself `AsyncRead +
//! AsyncWrite` (hence usable under hyper: `HttpsConnector` with the `hyper` feature).
//! [`Connector::connect_with`] takes the connect future instead, and makes the first CS
//! exchange while the transport connects.
//! As with tokio-rustls:
//!
//! - `poll_write` encrypts into a buffer and returns at once; bytes reach the socket on
//!   `poll_flush` (or when the buffer passes 64 KiB). Flush after writing.
//! - `poll_read` returns decrypted application data; `Ok(0)` means the server sent
//!   close_notify. A transport EOF without close_notify is an `UnexpectedEof` error
//!   (possible truncation).
//! - `poll_shutdown` sends close_notify, then shuts the transport down.
//! - Reading also serves what arrives after the handshake: NewSessionTicket (registered at
//!   the CS), KeyUpdate, post-handshake CertificateRequest. A CS call never holds back
//!   application data; what is left of the CS work when a connection ends runs in the
//!   background ([`Connector::wait_for_cs`] waits for it before the process exits).
//!
//! The handshake itself is sans-IO ([`ClientConnection`]): bytes in, bytes and CS calls out;
//! [`ClientConnection::next_action`] says what its driver must do next.
//!
//! # Security model
//!
//! The engine runs where the traffic is and may be compromised; the CS runs beside the
//! token (PKCS#11) that holds the client keys, the ticket PSKs and, by default, the
//! (EC)DHE private keys. The engine sees traffic keys of its own connections only: it
//! never receives a signing key, a PSK or a resumption secret, and the CS signs only inside
//! a fresh handshake it follows itself (the engine's random goes through a freshness
//! function, docs/design.md §3). A stolen engine can make handshakes while it runs and
//! while its mTLS identity at the CS is valid, and nothing after.
//!
//! # Where things live
//!
//! - [`config`]: [`ClientConfig`] (built and checked by [`ClientConfig::builder`]),
//!   [`ClientKey`], [`ExternalPsk`], the [`HandshakeSummary`];
//! - [`ServerName`], in [`server_name`];
//! - [`stream`]: [`Connector`] and [`TlsStream`] for tokio;
//! - [`crypto_service`]: the CS behind a trait ([`CryptoService`], one [`CsSession`] per
//!   connection);
//! - [`cs_client`]: the channel to one CS (mTLS, one HTTP/2 connection reused) and the
//!   [`CsCall`](cs_client::CsCall)s; [`cs_pool`]: several CS replicas (DNS names
//!   re-resolved, sessions pinned, health checks);
//! - [`tickets`]: the ticket store; [`verify`]: server authentication ([`TrustAnchors`](verify::TrustAnchors));
//! - [`error`]: the error tree and the alert each error sends;
//! - `in_process` (feature `in-process`): `InProcessCs`, the CS's operations called in this
//!   process;
//! - `hyper_connector` (feature `hyper`): `HttpsConnector` for `hyper_util`'s client;
//! - [`action`]: [`Action`], what the driver of a [`ClientConnection`] does next;
//! - the protocol core (record layer, handshake state machine) is private.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, trivial_numeric_casts)]
#![deny(missing_docs)]

pub mod action;
mod alert;
pub mod config;
mod conn;
pub mod crypto_service;
pub mod cs_channel;
pub mod cs_client;
pub mod cs_pool;
mod deframer;
pub mod error;
#[cfg(feature = "hyper")]
pub mod hyper_connector;
#[cfg(feature = "in-process")]
pub mod in_process;
mod joiner;
mod keyshare;
mod record;
pub mod server_name;
pub mod stream;
pub mod tickets;
pub mod verify;

/// The protocol core's internals, for the workspace's tests, fuzz targets and benchmarks
/// only: not part of the API, and changed without notice.
#[doc(hidden)]
pub mod internals {
    /// Alert parsing and close_notify semantics.
    pub mod alert {
        pub use crate::alert::*;
    }
    /// The sans-IO client state machine.
    pub mod conn {
        pub use crate::conn::*;
    }
    /// Records out of a byte stream.
    pub mod deframer {
        pub use crate::deframer::*;
    }
    /// Handshake messages out of record payloads.
    pub mod joiner {
        pub use crate::joiner::*;
    }
    /// The engine's own (EC)DHE key pairs.
    pub mod keyshare {
        pub use crate::keyshare::*;
    }
    /// Record protection.
    pub mod record {
        pub use crate::record::*;
    }
}

pub use action::Action;
pub use config::{ClientConfig, ClientKey, Ephemeral, ExternalPsk, HandshakeSummary, TlsMode};
pub use conn::ClientConnection;
pub use crypto_service::{CryptoService, CsSession};
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
