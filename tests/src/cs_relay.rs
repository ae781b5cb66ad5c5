//! A gRPC relay between an engine and a real `lurk-cs`: it forwards every call unchanged (over
//! its own mTLS channel, as the CS's `engine` identity) and logs when each LURK call starts and
//! ends, so that a test sees which calls a connection waited for. It can hold the
//! `c_register_tickets` calls that only close a session (no ticket, `last_exchange`) until the
//! next `c_init_client_hello` arrives or `hold` has passed.
//!
//! It can also delay every call (`set_delay`), to stand for a CS farther away, and tell when a
//! call reached it (`wait_for_start`).
//!
//! It forwards; it answers nothing itself: every answer is the real CS's.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use lurk_engine::cs_channel::CsClient;
use lurk_proto::pb;
use lurk_proto::pb::crypto_service_server::{CryptoService, CryptoServiceServer};
use tokio::sync::Notify;
use tonic::{Request, Response, Status};

/// One logged event.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// A call reached the relay (exchange name; `true` for a call that only closes a session).
    Start(&'static str, bool),
    /// The CS's answer went back to the engine.
    End(&'static str, bool),
}

#[derive(Default)]
struct Shared {
    log: Mutex<Vec<(Instant, Event)>>,
    next_hello: Notify,
    /// Bumped at each logged event.
    logged: tokio::sync::watch::Sender<u64>,
    /// How long each call waits before it is forwarded.
    delay: Mutex<Option<Duration>>,
}

struct Relay {
    cs: CsClient,
    shared: Arc<Shared>,
    hold: Option<Duration>,
}

/// A running relay (its tokio task ends with the runtime).
pub struct CsRelay {
    pub addr: SocketAddr,
    shared: Arc<Shared>,
}

impl CsRelay {
    /// Starts a relay to `cs` on a free loopback port, in the current runtime. `hold`: how long
    /// a call that only closes a session is held, at most, waiting for the next
    /// `c_init_client_hello` (`None`: never held).
    pub async fn start(cs: CsClient, hold: Option<Duration>) -> CsRelay {
        let shared = Arc::new(Shared::default());
        let relay = Relay {
            cs,
            shared: shared.clone(),
            hold,
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the relay");
        let addr = listener.local_addr().unwrap();
        let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(CryptoServiceServer::new(relay))
                .serve_with_incoming(incoming),
        );
        CsRelay { addr, shared }
    }

    /// A client of the relay (plaintext HTTP/2 on loopback), for a `Connector`.
    pub fn client(&self) -> CsClient {
        lurk_engine::cs_client::CsEndpoint {
            url: format!("http://{}", self.addr),
            ca_pem: None,
            identity_pem: None,
            domain: None,
        }
        .connect_lazy()
        .unwrap()
    }

    /// The events so far, in order.
    pub fn events(&self) -> Vec<(Instant, Event)> {
        self.shared.log.lock().unwrap().clone()
    }

    /// Forgets the events so far.
    pub fn clear(&self) {
        self.shared.log.lock().unwrap().clear();
    }

    /// Every call from now on waits `delay` after it reached the relay, before it is
    /// forwarded (`None`: none).
    pub fn set_delay(&self, delay: Option<Duration>) {
        *self.shared.delay.lock().unwrap() = delay;
    }

    /// Waits, at most `timeout`, until a call of `exchange` reached the relay at or after
    /// `since`; when it did.
    pub async fn wait_for_start(
        &self,
        exchange: &str,
        since: Instant,
        timeout: Duration,
    ) -> Option<Instant> {
        let started = || {
            self.shared
                .log
                .lock()
                .unwrap()
                .iter()
                .find(|(t, e)| *t >= since && matches!(e, Event::Start(n, _) if *n == exchange))
                .map(|(t, _)| *t)
        };
        let mut rx = self.shared.logged.subscribe();
        let _ = tokio::time::timeout(timeout, rx.wait_for(|_| started().is_some())).await;
        started()
    }
}

impl Relay {
    fn log(&self, e: Event) {
        self.shared.log.lock().unwrap().push((Instant::now(), e));
        self.shared.logged.send_modify(|n| *n += 1);
    }

    async fn forward<Req, Resp, F, Fut>(
        &self,
        name: &'static str,
        closing: bool,
        req: Request<Req>,
        call: F,
    ) -> Result<Response<Resp>, Status>
    where
        F: FnOnce(CsClient, Req) -> Fut,
        Fut: std::future::Future<Output = Result<Response<Resp>, Status>>,
    {
        self.log(Event::Start(name, closing));
        if name == "c_init_client_hello" {
            self.shared.next_hello.notify_waiters();
        }
        if let (true, Some(hold)) = (closing, self.hold) {
            let _ = tokio::time::timeout(hold, self.shared.next_hello.notified()).await;
        }
        let delay = *self.shared.delay.lock().unwrap();
        if let Some(d) = delay {
            tokio::time::sleep(d).await;
        }
        let out = call(self.cs.clone(), req.into_inner()).await;
        self.log(Event::End(name, closing));
        out.map(|r| Response::new(r.into_inner()))
    }
}

#[tonic::async_trait]
impl CryptoService for Relay {
    async fn c_init_client_hello(
        &self,
        r: Request<pb::CInitClientHelloRequest>,
    ) -> Result<Response<pb::CInitClientHelloResponse>, Status> {
        self.forward("c_init_client_hello", false, r, |mut c, r| async move {
            c.c_init_client_hello(r).await
        })
        .await
    }
    async fn c_client_hello(
        &self,
        r: Request<pb::CClientHelloRequest>,
    ) -> Result<Response<pb::CClientHelloResponse>, Status> {
        self.forward("c_client_hello", false, r, |mut c, r| async move {
            c.c_client_hello(r).await
        })
        .await
    }
    async fn c_server_hello(
        &self,
        r: Request<pb::CServerHelloRequest>,
    ) -> Result<Response<pb::CServerHelloResponse>, Status> {
        self.forward("c_server_hello", false, r, |mut c, r| async move {
            c.c_server_hello(r).await
        })
        .await
    }
    async fn c_client_finished(
        &self,
        r: Request<pb::CClientFinishedRequest>,
    ) -> Result<Response<pb::CClientFinishedResponse>, Status> {
        self.forward("c_client_finished", false, r, |mut c, r| async move {
            c.c_client_finished(r).await
        })
        .await
    }
    async fn c_server_flight(
        &self,
        r: Request<pb::CServerFlightRequest>,
    ) -> Result<Response<pb::CServerFlightResponse>, Status> {
        self.forward("c_server_flight", false, r, |mut c, r| async move {
            c.c_server_flight(r).await
        })
        .await
    }
    async fn c_init_client_finished(
        &self,
        r: Request<pb::CInitClientFinishedRequest>,
    ) -> Result<Response<pb::CInitClientFinishedResponse>, Status> {
        self.forward("c_init_client_finished", false, r, |mut c, r| async move {
            c.c_init_client_finished(r).await
        })
        .await
    }
    async fn c_post_hand_auth(
        &self,
        r: Request<pb::CPostHandAuthRequest>,
    ) -> Result<Response<pb::CPostHandAuthResponse>, Status> {
        self.forward("c_post_hand_auth", false, r, |mut c, r| async move {
            c.c_post_hand_auth(r).await
        })
        .await
    }
    async fn c_register_tickets(
        &self,
        r: Request<pb::CRegisterTicketsRequest>,
    ) -> Result<Response<pb::CRegisterTicketsResponse>, Status> {
        let closing = r.get_ref().last_exchange && r.get_ref().new_session_tickets.is_empty();
        self.forward("c_register_tickets", closing, r, |mut c, r| async move {
            c.c_register_tickets(r).await
        })
        .await
    }
    async fn capabilities(
        &self,
        r: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        self.forward("capabilities", false, r, |mut c, r| async move {
            c.capabilities(r).await
        })
        .await
    }
    async fn ping(
        &self,
        r: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.forward("ping", false, r, |mut c, r| async move { c.ping(r).await })
            .await
    }
}
