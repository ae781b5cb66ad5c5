//! Test fixtures of lurk, loaded once and typed: the RFC 8448 traces ([`rfc8448()`]), the
//! Illustrated TLS 1.3 connections ([`illustrated()`]) from `testdata/`, with every hex value
//! decoded, and the fixed-seed message mutator ([`mutate`]).
//!
//! Bytes and strings only: no `lurk-proto` type, so `lurk-proto`'s own unit tests can
//! dev-depend on this crate (a crate that depended on `lurk-proto` would give those tests a
//! second, incompatible copy of its types).

pub mod illustrated;
pub mod mutate;
pub mod rfc8448;

mod hex_serde;
mod named;

pub use illustrated::illustrated;
pub use rfc8448::rfc8448;
