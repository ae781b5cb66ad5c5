//! ClientHello (RFC 8446 §4.1.2), ServerHello and HelloRetryRequest (§4.1.3, §4.1.4).
//!
//! - [`client`]: the [`ClientHello`] view, which records the byte offsets the Crypto Service
//!   needs to splice values into the bytes it received (docs/design.md §4.2), and the splicing:
//!   [`complete_client_hello`], [`truncated_for_binders`], [`set_binders`].
//! - [`builder`]: [`ClientHelloBuilder`], the engine's encoder.
//! - [`server`]: the [`ServerHello`] / HelloRetryRequest view and [`encode_server_hello`].

pub mod builder;
pub mod client;
pub mod server;

pub use builder::{ClientHelloBuilder, OfferedPsk};
pub use client::{
    binders_offset, complete_client_hello, set_binders, truncated_for_binders, ClientHello,
    RANDOM_OFFSET,
};
pub use server::{encode_server_hello, ServerHello};
