//! Engine library: the TLS 1.3 client side of LURK-T.
//!
//! Sans-IO record layer (bytes in → records, messages and events out; no sockets here):
//!
//! - [`deframer`]: records out of a byte stream;
//! - [`record`]: record protection (RFC 8446 §5.2–5.4) and plaintext framing;
//! - [`joiner`]: handshake messages out of handshake record payloads;
//! - [`alert`]: alert parsing, encoding and close_notify semantics;
//! - [`error`]: the engine's error tree and the choice of alert to send.
#![forbid(unsafe_code)]

pub mod alert;
pub mod deframer;
pub mod error;
pub mod record;

pub use error::{Error, InvalidMessage, PeerMisbehaved};

