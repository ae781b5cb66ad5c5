//! [`Action`]: the one question a driver of a [`ClientConnection`] asks.

use crate::conn::ClientConnection;
use crate::cs_client::CsCall;

/// What the driver of a [`ClientConnection`] must do next, from
/// [`ClientConnection::next_action`].
#[derive(Debug)]
pub enum Action {
    /// Make this CS call and hand the answer to [`ClientConnection::cs_response`].
    CallCs(CsCall),
    /// Send these bytes to the server (a whole flight: one write, then flush).
    SendTls(Vec<u8>),
    /// The handshake is over: application data may flow.
    HandshakeDone,
    /// The server sent close_notify.
    PeerClosed,
    /// Read from the server, then call [`ClientConnection::read_tls`] and
    /// [`ClientConnection::process_new_packets`].
    ReadTls,
}

impl ClientConnection {
    /// What to do next: CS calls first (records wait for them), then bytes to send, then the
    /// end of the handshake or of the connection, else a read.
    ///
    /// A handshake driver is this loop (what [`crate::Connector::connect`] runs):
    ///
    /// ```text
    /// loop {
    ///     match conn.next_action() {
    ///         Action::CallCs(call) => conn.cs_response(cs.perform(call).await)?,
    ///         Action::SendTls(bytes) => { io.write_all(&bytes).await?; io.flush().await? }
    ///         Action::HandshakeDone => break,
    ///         Action::PeerClosed => return Err(eof),
    ///         Action::ReadTls => { let n = io.read(&mut buf).await?; conn.read_tls(&buf[..n]);
    ///                              conn.process_new_packets()? }
    ///     }
    /// }
    /// ```
    pub fn next_action(&mut self) -> Action {
        if let Some(call) = self.take_cs_call() {
            return Action::CallCs(call);
        }
        if self.wants_write() {
            return Action::SendTls(self.take_tls());
        }
        if !self.is_handshaking() {
            return Action::HandshakeDone;
        }
        if self.peer_closed() {
            return Action::PeerClosed;
        }
        Action::ReadTls
    }
}
