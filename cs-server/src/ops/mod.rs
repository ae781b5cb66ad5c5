//! The LURK exchanges of a TLS 1.3 client, one file each (docs/design.md §2), plus what they share:
//! the session stages (`state`), the policy and signing helpers (`common`) and the views of
//! the handshake messages they check (`msgs`). Each exchange declares where it runs
//! ([`Where`], its `place` function) beside its `handle`.
pub mod c_client_finished;
pub mod c_client_hello;
pub mod c_init_client_finished;
pub mod c_init_client_hello;
pub mod c_post_hand_auth;
pub mod c_register_tickets;
pub mod c_server_flight;
pub mod c_server_hello;
pub mod capabilities;
pub(crate) mod common;
pub(crate) mod msgs;
pub mod state;
#[cfg(test)]
pub(crate) mod tests;

/// Where an operation runs: an operation that may call the token (PKCS#11) or the ticket store
/// runs on a blocking thread, never on the async workers; one that touches neither is tens of
/// microseconds of CPU and runs inline (the hop to the blocking pool and back costs more).
/// Each exchange's `place` says which, from the CS's backends and the request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Where {
    /// On the async worker: no token, no store, only short CPU work.
    Inline,
    /// On the blocking pool: may call the token or the store.
    Blocking,
    /// On the blocking pool, after a token key-generation admission taken on the async side
    /// (`Ephemeral::admit_async`): may make key pairs in the token, which a planned module
    /// recycle waits for (token/pool/recycle.rs).
    KeyPairs,
}

impl Where {
    /// Inline when `cond` holds, else blocking.
    pub fn inline_if(cond: bool) -> Self {
        if cond {
            Self::Inline
        } else {
            Self::Blocking
        }
    }
}
