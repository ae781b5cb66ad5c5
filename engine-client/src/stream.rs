//! The tokio side: [`Connector`] runs the handshake over any `AsyncRead + AsyncWrite`
//! (making the CS calls the connection asks for) and returns a [`TlsStream`], itself
//! `AsyncRead + AsyncWrite` (so usable under hyper).
//!
//! Reading also serves the post-handshake traffic (tickets registered at the CS,
//! post-handshake authentication, KeyUpdate answers); shutting down sends close_notify and
//! closes the CS session.
//!
//! A ticket registration never holds back application data: the CS call is polled beside the
//! socket, and the connection keeps decrypting while it is out. When the connection ends,
//! what is left of the CS work (the registration in flight, the remaining tickets and the
//! session close, in one last call) goes to a background task
//! ([`ClientConnection::detach_cs`]): EOF and shutdown do not wait for the CS. The tickets
//! reach the store once the CS accepted them; [`Connector::connect`] waits for a registration
//! that carries tickets for the same server when the caller resumes and the store has no
//! ticket for it (never for a call that only closes a session), and
//! [`Connector::wait_for_cs`] waits for all of it (before the process exits).
//!
//! The CS may be several replicas ([`CsPool`]): each connection's calls go through its own
//! route, which keeps the connection's LURK session on the replica its first call reached.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadBuf};

use crate::action::Action;
use crate::config::{ClientConfig, HandshakeSummary};
use crate::conn::{ClientConnection, CsEpilogue};
use crate::crypto_service::{CryptoService, CsFuture, CsSession};
use crate::cs_channel::CsClient;
use crate::cs_client::{CsCall, CsError};
use crate::cs_pool::CsPool;
use crate::error::Error;
use crate::server_name::ServerName;

/// Above this many buffered outgoing bytes, writes wait for the socket.
const MAX_BUFFERED_OUT: usize = 64 * 1024;
const READ_SIZE: usize = 18 * 1024;

/// Deframed but unprocessed TLS bytes above which reading pauses while a CS call holds the
/// records.
const MAX_HELD_IN: usize = 64 * 1024;
/// How long [`Connector::connect`] waits for ticket registrations of earlier connections to
/// the same server when the store has no ticket for it.
const EPILOGUE_WAIT: Duration = Duration::from_secs(2);

/// CS work of finished connections still running in the background: how many tasks, and,
/// per ticket store key, how many of them still bring tickets to the store.
#[derive(Default)]
struct Pending {
    all: usize,
    tickets: std::collections::HashMap<String, usize>,
}

/// CS work of finished connections still running in the background.
#[derive(Clone)]
struct Epilogues(Arc<tokio::sync::watch::Sender<Pending>>);

impl Epilogues {
    fn new() -> Self {
        Self(Arc::new(
            tokio::sync::watch::Sender::new(Pending::default()),
        ))
    }

    /// Whether some background work will still bring tickets for `store_key`. A session
    /// close without tickets never counts: nothing waits for it.
    fn tickets_pending(&self, store_key: &str) -> bool {
        self.0.borrow().tickets.contains_key(store_key)
    }

    /// Waits until no background CS work is left, at most `timeout`.
    async fn wait(&self, timeout: Duration) {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| p.all == 0)).await;
    }

    /// Waits until no background work brings tickets for `store_key`, at most `timeout`.
    async fn wait_tickets(&self, store_key: &str, timeout: Duration) {
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|p| !p.tickets.contains_key(store_key)))
            .await;
    }

    /// Runs `epilogue` in a background task on `rt`.
    fn spawn(
        &self,
        rt: &tokio::runtime::Handle,
        mut epilogue: CsEpilogue,
        in_flight: Option<CsFuture>,
        route: Arc<dyn CsSession>,
    ) {
        self.0.send_modify(|p| p.all += 1);
        let done = EpilogueDone(self.0.clone());
        let mut tickets = epilogue
            .carries_tickets()
            .then(|| TicketsDone::new(self.0.clone(), epilogue.store_key()));
        rt.spawn(async move {
            let _done = done;
            if let Some(fut) = in_flight {
                epilogue.in_flight_done(fut.await);
            }
            if !epilogue.last_carries_tickets() {
                // The rest only closes the session: nobody waits for it.
                drop(tickets.take());
            }
            if let Some(call) = epilogue.take_last_call() {
                let reply = route.perform(call).await;
                epilogue.last_done(reply);
            }
            drop(tickets);
        });
    }
}

/// Decrements the count when the background task ends (or is cancelled).
struct EpilogueDone(Arc<tokio::sync::watch::Sender<Pending>>);

impl Drop for EpilogueDone {
    fn drop(&mut self) {
        self.0.send_modify(|p| p.all = p.all.saturating_sub(1));
    }
}

/// Counts a background task as bringing tickets for one store key until its tickets are
/// stored (or lost).
struct TicketsDone {
    pending: Arc<tokio::sync::watch::Sender<Pending>>,
    store_key: String,
}

impl TicketsDone {
    fn new(pending: Arc<tokio::sync::watch::Sender<Pending>>, store_key: &str) -> Self {
        pending.send_modify(|p| *p.tickets.entry(store_key.to_owned()).or_default() += 1);
        Self {
            pending,
            store_key: store_key.to_owned(),
        }
    }
}

impl Drop for TicketsDone {
    fn drop(&mut self) {
        self.pending.send_modify(|p| {
            if let Some(n) = p.tickets.get_mut(&self.store_key) {
                *n -= 1;
                if *n == 0 {
                    p.tickets.remove(&self.store_key);
                }
            }
        });
    }
}

/// Makes TLS connections with one configuration and one CS (one channel or a [`CsPool`]).
#[derive(Clone)]
pub struct Connector {
    config: Arc<ClientConfig>,
    cs: Option<Arc<dyn CryptoService>>,
    epilogues: Epilogues,
    /// Whether the CS offers c_server_flight (asked once, beside the first connection's
    /// first exchange).
    server_flight: Arc<tokio::sync::OnceCell<bool>>,
}

impl std::fmt::Debug for Connector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Connector")
            .field("config", &self.config)
            .field("cs", &self.cs.is_some())
            .finish()
    }
}

impl Connector {
    /// A connector; `cs` is the Crypto Service's client (`None`: the engine can only run
    /// handshakes that need no CS, sequence D).
    pub fn new(config: Arc<ClientConfig>, cs: Option<CsClient>) -> Self {
        Self {
            config,
            cs: cs.map(|c| Arc::new(CsPool::from_client(c)) as Arc<dyn CryptoService>),
            epilogues: Epilogues::new(),
            server_flight: Arc::default(),
        }
    }

    /// A connector calling the CS replicas of `pool`.
    pub fn with_cs_pool(config: Arc<ClientConfig>, pool: CsPool) -> Self {
        Self::with_cs(config, Arc::new(pool))
    }

    /// A connector calling `cs`, any [`CryptoService`].
    pub fn with_cs(config: Arc<ClientConfig>, cs: Arc<dyn CryptoService>) -> Self {
        Self {
            config,
            cs: Some(cs),
            epilogues: Epilogues::new(),
            server_flight: Arc::default(),
        }
    }

    /// Waits, at most `timeout`, for the CS work that connections left when they ended (ticket
    /// registrations, session closes). Call it before the process exits.
    pub async fn wait_for_cs(&self, timeout: Duration) {
        self.epilogues.wait(timeout).await;
    }

    /// Whether the CS offers `c_server_flight`: known after the first answer to
    /// `Capabilities`; until then a task asks (beside the connection's first exchange).
    fn server_flight(&self) -> Result<bool, tokio::task::JoinHandle<bool>> {
        if let Some(v) = self.server_flight.get() {
            return Ok(*v);
        }
        let Some(cs) = self.cs.clone().filter(|_| self.config.cs_server_flight) else {
            return Ok(false);
        };
        let cell = self.server_flight.clone();
        Err(tokio::spawn(async move {
            let asked = cell
                .get_or_try_init(|| async {
                    let caps = cs.capabilities().await?;
                    Ok::<_, CsError>(caps.exchanges.iter().any(|e| e == "c_server_flight"))
                })
                .await;
            match asked {
                Ok(v) => *v,
                Err(e) => {
                    tracing::debug!("Capabilities: {e}; using the standard exchanges");
                    false
                }
            }
        }))
    }

    /// The configuration.
    pub fn config(&self) -> &Arc<ClientConfig> {
        &self.config
    }

    /// Runs the handshake with `server_name` on `io`, a connected transport (TCP, Unix
    /// socket, anything `AsyncRead + AsyncWrite`); `port` keys the ticket store (tickets
    /// are kept per `name:port`). When the caller dials the transport itself,
    /// [`Self::connect_with`] saves a round trip: it makes the first CS exchange while the
    /// transport is being connected.
    pub async fn connect<IO>(
        &self,
        mut io: IO,
        server_name: &ServerName,
        port: u16,
    ) -> Result<TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        match self.prepare(server_name, port).await {
            Ok(prepared) => self.finish(prepared, io).await,
            Err(failed) => Err(failed.send_alert(&mut io).await),
        }
    }

    /// Runs the handshake with `server_name` on the transport `io` resolves to, starting
    /// before it exists: the CS exchange that precedes the ClientHello (c_init_client_hello,
    /// which also makes the binders of a resumption) runs while `io` connects, both driven by the returned
    /// future (no task is spawned). The ClientHello goes out as soon as both are done, so the
    /// first exchange costs no time of its own when the TCP connect is the longer of the two.
    /// `port` keys the ticket store, as for [`Self::connect`].
    ///
    /// An error of `io` ends the handshake (an [`Error::Io`]); a failed CS exchange ends it
    /// without waiting for `io`. A CS session opened meanwhile is left to expire at the CS, as
    /// for any handshake that fails or is dropped before its end.
    ///
    /// ```no_run
    /// use std::sync::Arc;
    /// use lurk_engine::cs_client::CsEndpoint;
    /// use lurk_engine::verify::TrustAnchors;
    /// use lurk_engine::{ClientConfig, Connector, ServerName};
    /// use tokio::io::AsyncWriteExt;
    /// use tokio::net::TcpStream;
    ///
    /// # async fn example() -> Result<(), Box<dyn std::error::Error + Send + Sync>> {
    /// let config = ClientConfig::builder()
    ///     .trust_anchors(TrustAnchors::from_pem_file("ca.pem".as_ref())?)
    ///     .build()?;
    /// let cs = CsEndpoint::from_files(
    ///     "https://cs.internal:7443",
    ///     Some("cs-ca.pem".as_ref()),
    ///     Some("engine.pem".as_ref()),
    ///     Some("engine.key".as_ref()),
    /// )?
    /// .connect_lazy()?;
    /// let connector = Connector::new(Arc::new(config), Some(cs));
    ///
    /// let name = ServerName::try_from("example.com")?;
    /// // The TCP connect and the first CS exchange run together.
    /// let tcp = async {
    ///     let tcp = TcpStream::connect("example.com:443").await?;
    ///     tcp.set_nodelay(true)?;
    ///     Ok(tcp)
    /// };
    /// let mut tls = connector.connect_with(&name, 443, tcp).await?;
    /// tls.write_all(b"GET / HTTP/1.1\r\nHost: example.com\r\nConnection: close\r\n\r\n").await?;
    /// tls.flush().await?;
    /// # Ok(())
    /// # }
    /// ```
    pub async fn connect_with<IO, F>(
        &self,
        server_name: &ServerName,
        port: u16,
        io: F,
    ) -> Result<TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
        F: Future<Output = io::Result<IO>>,
    {
        let mut io_fut = std::pin::pin!(io);
        let mut prepare = std::pin::pin!(self.prepare(server_name, port));
        let mut transport: Option<IO> = None;
        // Both in this task: the connect first (its first poll sends the SYN), then the CS
        // exchange, each polled until done.
        let prepared = std::future::poll_fn(|cx| {
            if transport.is_none() {
                if let Poll::Ready(r) = io_fut.as_mut().poll(cx) {
                    match r {
                        Ok(t) => transport = Some(t),
                        Err(e) => return Poll::Ready(Err(Failed::new(Error::io(&e)))),
                    }
                }
            }
            prepare.as_mut().poll(cx)
        })
        .await;
        let prepared = match (prepared, transport) {
            (Ok(p), Some(io)) => return self.finish(p, io).await,
            (Ok(p), None) => p,
            (Err(failed), Some(mut io)) => return Err(failed.send_alert(&mut io).await),
            (Err(failed), None) => return Err(failed.error),
        };
        let io = io_fut.await.map_err(|e| Error::io(&e))?;
        self.finish(prepared, io).await
    }

    /// The handshake up to its first need of the transport: the wait for tickets of earlier
    /// connections (see [`Self::connect`]), the connection state, and the CS exchanges that
    /// precede the ClientHello.
    async fn prepare(&self, server_name: &ServerName, port: u16) -> Result<Prepared, Failed> {
        let server_name = server_name.as_str();
        // Tickets of earlier connections may still be on their way to the store: wait for
        // them (only for them: a session close carrying no ticket is never waited for) when
        // the caller resumes and the store has none for this server.
        if self.config.resume {
            if let Some(store) = &self.config.ticket_store {
                let key = format!("{server_name}:{port}");
                if self.epilogues.tickets_pending(&key) && store.count(&key) == 0 {
                    self.epilogues.wait_tickets(&key, EPILOGUE_WAIT).await;
                }
            }
        }
        let mut conn =
            ClientConnection::new(self.config.clone(), server_name, port, self.cs.is_some())
                .map_err(Failed::new)?;
        let server_flight = match self.server_flight() {
            Ok(v) => {
                conn.set_cs_server_flight(v);
                None
            }
            Err(task) => Some(task),
        };
        let route = self.cs.as_ref().map(|cs| cs.session());
        loop {
            match conn.next_action() {
                Action::CallCs(call) => {
                    let reply = match &route {
                        Some(r) => r.perform(call).await,
                        None => Err(no_cs()),
                    };
                    if let Err(error) = conn.cs_response(reply) {
                        return Err(Failed {
                            error,
                            alert: conn.take_tls(),
                        });
                    }
                }
                next => {
                    return Ok(Prepared {
                        conn,
                        route,
                        server_flight,
                        next,
                    })
                }
            }
        }
    }

    /// The rest of the handshake, on the transport.
    async fn finish<IO>(&self, prepared: Prepared, mut io: IO) -> Result<TlsStream<IO>, Error>
    where
        IO: AsyncRead + AsyncWrite + Unpin,
    {
        let Prepared {
            mut conn,
            route,
            mut server_flight,
            next,
        } = prepared;
        let mut next = Some(next);
        let mut buf = vec![0u8; READ_SIZE];
        let result: Result<(), Error> = async {
            loop {
                match next.take().unwrap_or_else(|| conn.next_action()) {
                    Action::CallCs(call) => {
                        let reply = match &route {
                            Some(r) => r.perform(call).await,
                            None => Err(no_cs()),
                        };
                        conn.cs_response(reply)?;
                    }
                    Action::SendTls(out) => {
                        io.write_all(&out).await.map_err(|e| Error::io(&e))?;
                        io.flush().await.map_err(|e| Error::io(&e))?;
                    }
                    Action::HandshakeDone => return Ok(()),
                    Action::PeerClosed => {
                        return Err(Error::Io {
                            kind: io::ErrorKind::UnexpectedEof,
                            message: "the server sent close_notify during the handshake".into(),
                        })
                    }
                    Action::ReadTls => {
                        let n = io.read(&mut buf).await.map_err(|e| Error::io(&e))?;
                        if n == 0 {
                            return Err(Error::Io {
                                kind: io::ErrorKind::UnexpectedEof,
                                message: "the server closed the connection during the handshake"
                                    .into(),
                            });
                        }
                        conn.read_tls(&buf[..n]);
                        if let Some(task) = server_flight.take() {
                            // Asked beside the first exchange: answered by now, as a rule.
                            conn.set_cs_server_flight(task.await.unwrap_or(false));
                        }
                        conn.process_new_packets()?;
                    }
                }
            }
        }
        .await;
        if let Err(e) = result {
            // The alert the connection queued, if any.
            let out = conn.take_tls();
            if !out.is_empty() {
                let _ = io.write_all(&out).await;
                let _ = io.flush().await;
            }
            return Err(e);
        }
        Ok(TlsStream {
            io,
            conn,
            cs: route,
            epilogues: self.epilogues.clone(),
            cs_fut: None,
            out: Vec::new(),
            read_buf: buf,
            io_eof: false,
            cs_closed: false,
        })
    }
}

/// A handshake up to its first need of the transport ([`Connector::prepare`]).
struct Prepared {
    conn: ClientConnection,
    route: Option<Arc<dyn CsSession>>,
    /// The Capabilities question, when still out.
    server_flight: Option<tokio::task::JoinHandle<bool>>,
    /// The first action that needs the transport.
    next: Action,
}

/// A handshake that failed before it needed the transport, and the alert it queued.
struct Failed {
    error: Error,
    alert: Vec<u8>,
}

impl Failed {
    fn new(error: Error) -> Self {
        Self {
            error,
            alert: Vec::new(),
        }
    }

    /// Sends the queued alert on `io` (best effort); the error.
    async fn send_alert<IO: AsyncWrite + Unpin>(self, io: &mut IO) -> Error {
        if !self.alert.is_empty() {
            let _ = io.write_all(&self.alert).await;
            let _ = io.flush().await;
        }
        self.error
    }
}

fn no_cs() -> CsError {
    CsError::Config("no Crypto Service configured".into())
}

/// A TLS connection after its handshake.
pub struct TlsStream<IO> {
    io: IO,
    conn: ClientConnection,
    /// The connection's way to the CS (its session's replica).
    cs: Option<Arc<dyn CsSession>>,
    epilogues: Epilogues,
    cs_fut: Option<CsFuture>,
    out: Vec<u8>,
    read_buf: Vec<u8>,
    io_eof: bool,
    cs_closed: bool,
}

fn to_io(e: Error) -> io::Error {
    match &e {
        Error::Io { kind, .. } => io::Error::new(*kind, e),
        _ => io::Error::new(io::ErrorKind::InvalidData, e),
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> TlsStream<IO> {
    /// What the handshake negotiated (LURK exchanges made later are appended).
    pub fn summary(&self) -> &HandshakeSummary {
        self.conn.summary()
    }

    /// The connection state machine.
    pub fn connection(&self) -> &ClientConnection {
        &self.conn
    }

    /// The transport.
    pub fn get_ref(&self) -> &IO {
        &self.io
    }

    /// Keying material from the TLS 1.3 exporter (RFC 8446 §7.5); needs
    /// `ClientConfig::exporter`. See [`ClientConnection::export_keying_material`].
    pub fn export_keying_material(
        &self,
        label: &[u8],
        context: &[u8],
        len: usize,
    ) -> Result<Vec<u8>, Error> {
        self.conn.export_keying_material(label, context, len)
    }

    /// Sends a KeyUpdate (`request_peer`: update_requested) and switches the write key.
    pub async fn key_update(&mut self, request_peer: bool) -> io::Result<()> {
        self.conn.key_update(request_peer).map_err(to_io)?;
        self.flush().await
    }

    /// Reads (and processes tickets, KeyUpdates, post-handshake requests) until at least one
    /// NewSessionTicket arrived or `timeout` passed; data read meanwhile is kept for `read`.
    pub async fn wait_for_tickets(&mut self, timeout: Duration) -> io::Result<usize> {
        let deadline = tokio::time::Instant::now() + timeout;
        while self.conn.summary().tickets_received == 0 && !self.conn.peer_closed() && !self.io_eof
        {
            let fut = std::future::poll_fn(|cx| self.poll_progress(cx));
            match tokio::time::timeout_at(deadline, fut).await {
                Ok(r) => r?,
                Err(_) => break,
            }
        }
        // Let the registration at the CS finish.
        std::future::poll_fn(|cx| self.poll_cs(cx)).await?;
        Ok(self.conn.summary().tickets_received)
    }

    /// Drives pending CS calls to completion.
    fn poll_cs(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        loop {
            if let Some(fut) = self.cs_fut.as_mut() {
                let reply = ready!(fut.as_mut().poll(cx));
                self.cs_fut = None;
                if let Err(e) = self.conn.cs_response(reply) {
                    self.out.extend(self.conn.take_tls());
                    return Poll::Ready(Err(to_io(e)));
                }
                continue;
            }
            match self.conn.take_cs_call() {
                Some(call) => self.start_cs(call),
                None => return Poll::Ready(Ok(())),
            }
        }
    }

    fn start_cs(&mut self, call: CsCall) {
        let fut: CsFuture = match &self.cs {
            Some(route) => route.perform(call),
            None => Box::pin(async { Err(no_cs()) }),
        };
        self.cs_fut = Some(fut);
    }

    fn poll_flush_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.out.extend(self.conn.take_tls());
        while !self.out.is_empty() {
            let n = ready!(Pin::new(&mut self.io).poll_write(cx, &self.out))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.out.drain(..n);
        }
        Pin::new(&mut self.io).poll_flush(cx)
    }

    /// One step of reading: CS calls, pending writes, then one read from the transport.
    /// Ready when something happened (plaintext, EOF, or a processed read). A CS call still
    /// out does not stop reading: the connection decides which records wait for it.
    fn poll_progress(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let cs_pending = match self.poll_cs(cx) {
            Poll::Ready(r) => {
                r?;
                false
            }
            Poll::Pending => true,
        };
        ready!(self.poll_flush_out(cx))?;
        if self.conn.plaintext_len() > 0 || self.conn.peer_closed() || self.io_eof {
            return Poll::Ready(Ok(()));
        }
        if cs_pending && self.conn.held_tls_len() > MAX_HELD_IN {
            // The CS call's waker is registered.
            return Poll::Pending;
        }
        let mut rb = ReadBuf::new(&mut self.read_buf);
        ready!(Pin::new(&mut self.io).poll_read(cx, &mut rb))?;
        let n = rb.filled().len();
        if n == 0 {
            self.io_eof = true;
            return Poll::Ready(Ok(()));
        }
        self.conn.read_tls(&self.read_buf[..n]);
        if let Err(e) = self.conn.process_new_packets() {
            self.out.extend(self.conn.take_tls());
            let _ = self.poll_flush_out(cx);
            return Poll::Ready(Err(to_io(e)));
        }
        Poll::Ready(Ok(()))
    }

    /// Closes the CS session if the connection has one open (best effort): in the background
    /// when a runtime is there, else here, after the call in flight.
    fn poll_close_cs(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        loop {
            if !self.cs_closed && self.detach_cs() {
                self.cs_closed = true;
            }
            match self.poll_cs(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Err(e)) => tracing::warn!("closing the CS session: {e}"),
                Poll::Ready(Ok(())) => {}
            }
            if self.cs_closed {
                return Poll::Ready(());
            }
            self.cs_closed = true;
            match self.conn.close_cs_session() {
                Some(call) => self.start_cs(call),
                None => return Poll::Ready(()),
            }
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncRead for TlsStream<IO> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        loop {
            if this.conn.plaintext_len() > 0 {
                let n = this.conn.read_plaintext(buf.initialize_unfilled());
                buf.advance(n);
                return Poll::Ready(Ok(()));
            }
            if this.conn.peer_closed() {
                ready!(this.poll_close_cs(cx));
                return Poll::Ready(Ok(()));
            }
            if this.io_eof {
                if this.conn.records_held() {
                    // Records may be held for the CS call: deliver them first.
                    ready!(this.poll_cs(cx))?;
                    this.conn.process_new_packets().map_err(to_io)?;
                    continue;
                }
                ready!(this.poll_close_cs(cx));
                return Poll::Ready(Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    "the server closed the TCP connection without close_notify (possible truncation)",
                )));
            }
            ready!(this.poll_progress(cx))?;
        }
    }
}

impl<IO: AsyncRead + AsyncWrite + Unpin> AsyncWrite for TlsStream<IO> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if this.out.len() > MAX_BUFFERED_OUT {
            ready!(this.poll_flush_out(cx))?;
        }
        this.conn.write_plaintext(buf).map_err(to_io)?;
        // Push what we can now; the rest goes with the next flush.
        match this.poll_flush_out(cx) {
            Poll::Ready(Err(e)) => Poll::Ready(Err(e)),
            _ => Poll::Ready(Ok(buf.len())),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().poll_flush_out(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        this.conn.send_close_notify();
        ready!(this.poll_flush_out(cx))?;
        ready!(this.poll_close_cs(cx));
        Pin::new(&mut this.io).poll_shutdown(cx)
    }
}

impl<IO> TlsStream<IO> {
    /// Hands the CS work left (registration in flight, remaining tickets, session close) to
    /// a background task. False when it stays here (no runtime, or a call in flight that the
    /// connection still waits for).
    fn detach_cs(&mut self) -> bool {
        let (Some(route), Ok(rt)) = (self.cs.clone(), tokio::runtime::Handle::try_current()) else {
            return false;
        };
        let Some(epilogue) = self.conn.detach_cs() else {
            return false;
        };
        let in_flight = if epilogue.has_in_flight() {
            self.cs_fut.take()
        } else {
            None
        };
        self.epilogues.spawn(&rt, epilogue, in_flight, route);
        true
    }
}

/// A connection dropped without EOF or shutdown still hands its CS work to the background.
impl<IO> Drop for TlsStream<IO> {
    fn drop(&mut self) {
        if self.cs_closed {
            return;
        }
        self.cs_closed = true;
        self.detach_cs();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// `TlsStream` and the handshake future can move between threads (hyper, tokio::spawn).
    #[test]
    fn stream_and_connect_future_are_send() {
        let connector = Connector::new(Arc::new(ClientConfig::default()), None);
        let (a, _b) = tokio::io::duplex(64);
        let name = ServerName::try_from("localhost").unwrap();
        let fut = connector.connect(a, &name, 443);
        assert_send(&fut);
        let (a, _b) = tokio::io::duplex(64);
        let fut = connector.connect_with(&name, 443, async { Ok(a) });
        assert_send(&fut);
        fn stream_is_send<T: Send>() {}
        stream_is_send::<TlsStream<tokio::net::TcpStream>>();
    }
}
