//! The LURK exchanges of a TLS 1.3 client, one file each (docs/design.md §2), plus what they share:
//! the session stages (`state`), the policy and signing helpers (`common`) and the views of
//! the handshake messages they check (`msgs`).
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
