//! The tonic service: each RPC authenticates the engine, then runs its operation and maps
//! the result through the one error mapping of `error.rs`.
//!
//! Where an operation runs is declared by the operation, per request (`ops::Where`, each
//! exchange's `place`): one that may call the token (PKCS#11) or the ticket store runs on a
//! blocking thread, never on the async workers; one that touches neither (memory ephemerals,
//! no PSK, no client signature, a session close) runs inline.
//! That holds for requests of ordinary size only: one over [`INLINE_MAX_REQUEST_LEN`] runs
//! on the blocking pool whatever its operation, so that parsing and hashing a large flight
//! never holds an async worker (and another engine's Ping) for long.
//!
//! Every request is first checked against the request cap
//! ([`lurk_proto::wire::limits::MAX_REQUEST_LEN`]): over it, `invalid_format`.
//!
//! A blocking operation first takes one of its engine's exchange slots (`[limits]
//! max_exchanges_per_engine`, with a bounded queue; `limits.rs`): past them it is refused at
//! once with `too_many_requests`, so one engine cannot hold every blocking thread or token
//! session. One that opens a session with token key pairs (`Where::KeyPairs`) first waits
//! out a planned module recycle, holding no slot meanwhile (token/pool/recycle.rs).

use std::sync::Arc;

use lurk_proto::pb;
use lurk_proto::pb::crypto_service_server::CryptoService;
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::limits::MAX_REQUEST_LEN;
use prost::Message;
use tonic::{Request, Response, Status};

use crate::cs::Cs;
use crate::error::{ServiceError, TokenError};
use crate::limits::ExchangeLimiter;
use crate::ops::{self, Where};
use crate::refusal_log::{self, RefusalLog, Verdict};
use crate::server::{engine_identity, EngineId};
use crate::telemetry::{self, Answer, Exchange, Probe};
use crate::token::AsyncAdmission;

/// Largest encoded request that may run inline. A normal handshake's largest request (the
/// server flight of c_client_finished) is a few KiB. Measured (`lurk-bench parse-cost`,
/// BENCHMARKS.md): a 64 KiB flight costs 0.18 ms of CPU, the largest the caps allow (450 KB)
/// 1.7 ms; a ClientHello at every cap (32 KiB) 0.18 ms, a 64 KiB ServerHello 0.22 ms.
pub const INLINE_MAX_REQUEST_LEN: usize = 64 * 1024;

/// The gRPC face of the CS.
#[derive(Clone)]
pub struct CryptoServiceImpl {
    cs: Arc<Cs>,
    plaintext: bool,
    refusals: Arc<RefusalLog>,
    exchanges: Arc<ExchangeLimiter>,
}

impl CryptoServiceImpl {
    /// The service with the default `[limits]` exchange slots.
    pub fn new(cs: Arc<Cs>, plaintext: bool) -> Self {
        let exchanges = ExchangeLimiter::from_config(&crate::config::LimitsConfig::default());
        Self {
            cs,
            plaintext,
            refusals: Arc::new(RefusalLog::default()),
            exchanges,
        }
    }

    /// Uses `exchanges` for the per-engine slots of blocking operations.
    pub fn with_exchange_limiter(mut self, exchanges: Arc<ExchangeLimiter>) -> Self {
        self.exchanges = exchanges;
        self
    }

    /// The state the operations share.
    pub fn cs(&self) -> &Arc<Cs> {
        &self.cs
    }

    /// Authenticates the engine, then runs `op` where `place` says; counts the exchange
    /// and writes its access-log line (`telemetry`).
    async fn run<Req, Resp, F>(
        &self,
        req: Request<Req>,
        place: Where,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Message + Exchange + Send + 'static,
        Resp: Answer + Send + 'static,
        F: FnOnce(&Cs, &str, Req) -> Result<Resp, ServiceError> + Send + 'static,
    {
        let probe = Probe::start(req.get_ref());
        let op =
            |cs: &Cs, who: &str, msg: Req| telemetry::token_time_of::<Req, _>(|| op(cs, who, msg));
        let (engine, result) = self.authenticate_and_run(req, place, op).await;
        probe.finish(engine.as_ref().map(|e| e.as_str()), &result);
        match (result, engine) {
            (Ok(resp), _) => Ok(Response::new(resp)),
            (Err(e), None) => Err(e.into()),
            (Err(e), Some(engine)) => {
                // At most a burst of lines per engine per interval (refusal_log).
                if let Verdict::Log { suppressed, last } = self.refusals.note(engine.as_str()) {
                    if suppressed > 0 {
                        tracing::info!(engine = %engine, suppressed, "refusals not logged in the last interval");
                    }
                    tracing::info!(engine = %engine, status = %e.lurk_status(), "exchange refused: {e}");
                    if last {
                        tracing::info!(engine = %engine, "further refusals of this engine are counted, not logged, for {} s", refusal_log::INTERVAL.as_secs());
                    }
                }
                Err(e.into())
            }
        }
    }

    /// [`run`](Self::run) without the telemetry: the engine (if authenticated) and the result.
    async fn authenticate_and_run<Req, Resp, F>(
        &self,
        req: Request<Req>,
        place: Where,
        op: F,
    ) -> (Option<EngineId>, Result<Resp, ServiceError>)
    where
        Req: Message + Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&Cs, &str, Req) -> Result<Resp, ServiceError> + Send + 'static,
    {
        let engine = match engine_identity(&req, self.plaintext) {
            Ok(engine) => engine,
            Err(e) => return (None, Err(e)),
        };
        let msg = req.into_inner();
        let len = msg.encoded_len();
        let place = if len > INLINE_MAX_REQUEST_LEN && place == Where::Inline {
            Where::Blocking
        } else {
            place
        };
        let result = match place {
            _ if len > MAX_REQUEST_LEN => Err(ServiceError::refuse(
                LurkStatus::InvalidFormat,
                format!("a request of {len} bytes is over the cap of {MAX_REQUEST_LEN}"),
            )),
            Where::Inline => op(&self.cs, engine.as_str(), msg),
            Where::Blocking => self.blocking(&engine, None, msg, op).await,
            // Admitted before the slot: a recycle's wait holds no slot (token/pool/recycle.rs).
            Where::KeyPairs => match self.cs.ephemeral.admit_async().await {
                Err(e) => Err(e),
                Ok(admission) => self.blocking(&engine, admission, msg, op).await,
            },
        };
        (Some(engine), result)
    }

    /// Runs `op` on the blocking pool under one of the engine's exchange slots, with
    /// `admission` entered on its thread.
    async fn blocking<Req, Resp, F>(
        &self,
        engine: &EngineId,
        admission: Option<AsyncAdmission>,
        msg: Req,
        op: F,
    ) -> Result<Resp, ServiceError>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&Cs, &str, Req) -> Result<Resp, ServiceError> + Send + 'static,
    {
        let slot = self.exchanges.acquire(engine.as_str()).await?;
        // Held until the operation ends, even if the RPC times out meanwhile.
        let cs = self.cs.clone();
        let who = engine.clone();
        tokio::task::spawn_blocking(move || {
            let _slot = slot;
            let _pool = crate::session::OnBlockingPool::enter();
            // Its token checkouts queue as this engine's (fair.rs).
            let _caller = crate::token::Caller::enter(who.as_str());
            let _entered = admission.as_ref().map(AsyncAdmission::enter);
            op(&cs, who.as_str(), msg)
        })
        .await
        .unwrap_or_else(|e| {
            Err(ServiceError::Internal(format!(
                "operation task failed: {e}"
            )))
        })
    }
}

#[tonic::async_trait]
impl CryptoService for CryptoServiceImpl {
    async fn c_init_client_hello(
        &self,
        req: Request<pb::CInitClientHelloRequest>,
    ) -> Result<Response<pb::CInitClientHelloResponse>, Status> {
        let place = ops::c_init_client_hello::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_init_client_hello::handle).await
    }

    async fn c_client_hello(
        &self,
        req: Request<pb::CClientHelloRequest>,
    ) -> Result<Response<pb::CClientHelloResponse>, Status> {
        let place = ops::c_client_hello::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_client_hello::handle).await
    }

    async fn c_server_hello(
        &self,
        req: Request<pb::CServerHelloRequest>,
    ) -> Result<Response<pb::CServerHelloResponse>, Status> {
        let place = ops::c_server_hello::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_server_hello::handle).await
    }

    async fn c_client_finished(
        &self,
        req: Request<pb::CClientFinishedRequest>,
    ) -> Result<Response<pb::CClientFinishedResponse>, Status> {
        let place = ops::c_client_finished::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_client_finished::handle).await
    }

    async fn c_server_flight(
        &self,
        req: Request<pb::CServerFlightRequest>,
    ) -> Result<Response<pb::CServerFlightResponse>, Status> {
        let place = ops::c_server_flight::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_server_flight::handle).await
    }

    async fn c_init_client_finished(
        &self,
        req: Request<pb::CInitClientFinishedRequest>,
    ) -> Result<Response<pb::CInitClientFinishedResponse>, Status> {
        let place = ops::c_init_client_finished::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_init_client_finished::handle)
            .await
    }

    async fn c_post_hand_auth(
        &self,
        req: Request<pb::CPostHandAuthRequest>,
    ) -> Result<Response<pb::CPostHandAuthResponse>, Status> {
        let place = ops::c_post_hand_auth::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_post_hand_auth::handle).await
    }

    async fn c_register_tickets(
        &self,
        req: Request<pb::CRegisterTicketsRequest>,
    ) -> Result<Response<pb::CRegisterTicketsResponse>, Status> {
        let place = ops::c_register_tickets::place(&self.cs, req.get_ref());
        self.run(req, place, ops::c_register_tickets::handle).await
    }

    async fn capabilities(
        &self,
        req: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        let place = ops::capabilities::place(&self.cs, req.get_ref());
        self.run(req, place, |cs, engine, _| {
            ops::capabilities::handle(cs, engine)
        })
        .await
    }

    async fn ping(
        &self,
        req: Request<pb::PingRequest>,
    ) -> Result<Response<pb::PingResponse>, Status> {
        self.run(req, Where::Inline, |_, engine, _| {
            Ok(pb::PingResponse {
                version: env!("CARGO_PKG_VERSION").to_owned(),
                engine_identity: engine.to_owned(),
            })
        })
        .await
    }
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        ServiceError::from(e).into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::token::Caller;

    /// The token sessions of a blocking exchange are queued as its engine's
    /// (fair.rs): the operation runs marked with it (the guard's restoring is
    /// fair.rs's test).
    #[tokio::test]
    async fn a_blocking_exchange_runs_as_its_engine() {
        let f = ops::tests::fx();
        let svc = CryptoServiceImpl::new(Arc::new(f.cs), true);
        let engine = EngineId::new("engine-a").unwrap();
        let seen = svc
            .blocking(&engine, None, (), |_, _, ()| Ok(Caller::current()))
            .await
            .unwrap();
        assert_eq!(seen.as_deref(), Some("engine-a"));
    }
}
