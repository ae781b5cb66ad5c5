//! The LURK exchanges of a TLS 1.3 client, one file each (LURK.md §2).
pub mod c_client_finished;
pub mod c_client_hello;
pub mod c_init_client_finished;
pub mod c_init_client_hello;
pub mod c_post_hand_auth;
pub mod c_register_tickets;
pub mod c_server_hello;
