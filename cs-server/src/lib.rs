//! The LURK Crypto Service (CS): it holds every credential of a TLS 1.3 client and answers
//! the engine's LURK exchanges over gRPC (`lurk.tls13.v1.CryptoService`).
//!
//! Layout, from the wire inwards:
//! - [`server`]: listeners (mTLS, or plaintext in dev), engine identity, graceful shutdown;
//! - `transport`: the accept loop, TLS handshakes and HTTP/2 connections, all bounded;
//! - [`limits`]: per-engine exchange slots, the descriptor budget;
//! - [`service`]: the tonic service: one handler per RPC, each calling its operation;
//! - [`cs`]: the state every operation uses (token, keys, store, sessions, ephemerals);
//! - [`ops`]: one file per LURK exchange, enforcing docs/design.md §2–§4;
//! - [`session`]: the session table (the one place a replicated CS would replace);
//! - [`ephemeral`]: (EC)DHE backends (token, memory, test vectors);
//! - [`token`]: the PKCS#11 token (signing keys, ephemerals, sealing key, session pool);
//! - [`store`]: tickets and external PSKs in SQLite or PostgreSQL, sealed by the token;
//! - [`health`]: `grpc.health.v1` status from a probe of the token and the store;
//! - [`reload`]: certificate rotation on SIGHUP (listener TLS, signing key chains);
//! - [`error`]: the layer errors and the single mapping to gRPC + LURK status;
//! - [`refusal_log`]: refusal log lines, bounded per engine;
//! - [`telemetry`]: Prometheus metrics (own listener) and the access log;
//! - [`reflection`]: gRPC server reflection of `lurk.tls13.v1`.
#![forbid(unsafe_code)]
#![warn(unreachable_pub, trivial_numeric_casts)]
#![deny(missing_docs)]

pub mod config;
pub mod cs;
pub mod ephemeral;
pub mod error;
pub mod fair;
pub mod health;
pub mod init_dev;
pub mod keyring;
pub mod limits;
pub mod ops;
pub mod reflection;
pub mod refusal_log;
pub mod reload;
pub mod server;
pub mod server_auth;
pub mod service;
pub mod session;
pub mod store;
pub mod telemetry;
pub mod token;
mod transport;
