//! The tonic service: each RPC authenticates the engine, then runs its operation and maps
//! the result through the one error mapping of `error.rs`.
//!
//! Where an operation runs is decided per request ([`Where`]): an operation that may call
//! the token (PKCS#11) or the ticket store (SQLite) runs on a blocking thread, never on the
//! async workers. An operation that touches neither (memory ephemerals, no PSK, no client
//! signature, a session close) is tens of microseconds of CPU and runs inline: the hop to
//! the blocking pool and back (two thread wake-ups) cost more than the operation itself.

use std::sync::Arc;
use std::time::Duration;

use lurk_proto::pb;
use lurk_proto::pb::crypto_service_server::CryptoService;
use lurk_proto::wire::NamedGroup;
use tonic::{Request, Response, Status};

use crate::config::{Config, EphemeralBackendKind, FreshnessMode};
use crate::ephemeral::EphemeralSource;
use crate::error::{ServiceError, TokenError};
use crate::keyring::KeyRing;
use crate::ops;
use crate::server::engine_identity;
use crate::session::{SessionLimits, SessionTable};
use crate::store::TicketStore;
use crate::token::{Need, Token};

/// Everything an operation needs: the CS's state, shared by all requests.
pub struct Cs {
    pub token: Option<Token>,
    pub keys: KeyRing,
    pub store: Arc<dyn TicketStore>,
    pub sessions: SessionTable,
    pub ephemeral: EphemeralSource,
    pub freshness_mode: FreshnessMode,
    /// Test-vector mode: `null` freshness allowed, ephemeral keys injectable in-process.
    pub test_vectors: bool,
    pub ticket_lifetime_cap: u64,
    pub max_tickets_per_engine: u32,
}

impl Cs {
    /// Builds the CS from its configuration: opens the token (mechanism check included),
    /// loads the signing keys and their certificates, opens the ticket store.
    pub fn from_config(cfg: &Config) -> Result<Self, ServiceError> {
        let token = Token::open(&cfg.token)?;
        if !token.has_sealing_key()? {
            return Err(ServiceError::Token(TokenError::KeyNotFound(format!(
                "sealing key {:?}: create it with `lurk-cs token sealing-key --config FILE`",
                cfg.token.sealing_key
            ))));
        }
        let keys = KeyRing::load(&token, &cfg.keys)?;
        // Say at start, and exactly, what the token lacks for this configuration.
        token.check_mechanisms(&Need::for_service(
            keys.all().map(|k| k.key.key_type()),
            cfg.ephemeral.backend == EphemeralBackendKind::Token,
        ))?;
        let store =
            crate::store::SqliteStore::open(&cfg.store.path, Arc::new(token.clone()), &cfg.store)?;
        Ok(Self::new(cfg, Some(token), keys, Arc::new(store)))
    }

    pub fn new(
        cfg: &Config,
        token: Option<Token>,
        keys: KeyRing,
        store: Arc<dyn TicketStore>,
    ) -> Self {
        let limits = SessionLimits {
            max: cfg.sessions.max,
            max_per_engine: cfg.sessions.max_per_engine,
            handshake_ttl: Duration::from_secs(cfg.sessions.ttl_secs),
            established_ttl: Duration::from_secs(cfg.sessions.established_ttl_secs),
        };
        Self {
            ephemeral: EphemeralSource::new(
                cfg.ephemeral.backend,
                token.clone(),
                cfg.freshness.test_vectors,
            ),
            token,
            keys,
            store,
            sessions: SessionTable::new(limits),
            freshness_mode: cfg.freshness.mode,
            test_vectors: cfg.freshness.test_vectors,
            ticket_lifetime_cap: cfg.store.ticket_lifetime_secs,
            max_tickets_per_engine: cfg.store.max_tickets_per_engine,
        }
    }

    /// Test-vector mode: the next ephemeral key for `group` uses this private key.
    pub fn inject_ephemeral(&self, group: NamedGroup, private: &[u8]) -> Result<(), ServiceError> {
        self.ephemeral.inject(group, private)
    }
}

/// Where an operation runs (see the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Where {
    /// On the async worker: no token, no store, only short CPU work.
    Inline,
    /// On the blocking pool: may call the token or SQLite.
    Blocking,
}

impl Where {
    fn inline_if(cond: bool) -> Self {
        if cond {
            Self::Inline
        } else {
            Self::Blocking
        }
    }
}

/// The gRPC face of the CS.
#[derive(Clone)]
pub struct CryptoServiceImpl {
    cs: Arc<Cs>,
    plaintext: bool,
}

impl CryptoServiceImpl {
    pub fn new(cs: Arc<Cs>, plaintext: bool) -> Self {
        Self { cs, plaintext }
    }

    pub fn cs(&self) -> &Arc<Cs> {
        &self.cs
    }

    /// Whether the memory backend makes the ephemerals (no token call to make or use one).
    fn memory_ephemerals(&self) -> bool {
        self.cs.ephemeral.kind() == EphemeralBackendKind::Memory
    }

    /// Authenticates the engine, then runs `op` where `place` says.
    async fn run<Req, Resp, F>(
        &self,
        req: Request<Req>,
        place: Where,
        op: F,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Send + 'static,
        Resp: Send + 'static,
        F: FnOnce(&Cs, &str, Req) -> Result<Resp, ServiceError> + Send + 'static,
    {
        let engine = engine_identity(&req, self.plaintext)?;
        let msg = req.into_inner();
        let result = match place {
            Where::Inline => op(&self.cs, engine.as_str(), msg),
            Where::Blocking => {
                let cs = self.cs.clone();
                let who = engine.clone();
                tokio::task::spawn_blocking(move || op(&cs, who.as_str(), msg))
                    .await
                    .map_err(|e| ServiceError::Internal(format!("operation task failed: {e}")))?
            }
        };
        match result {
            Ok(resp) => Ok(Response::new(resp)),
            Err(e) => {
                tracing::info!(engine = %engine, status = %e.lurk_status(), "exchange refused: {e}");
                Err(e.into())
            }
        }
    }
}

#[tonic::async_trait]
impl CryptoService for CryptoServiceImpl {
    async fn c_init_client_hello(
        &self,
        req: Request<pb::CInitClientHelloRequest>,
    ) -> Result<Response<pb::CInitClientHelloResponse>, Status> {
        // A PSK is taken from the store (and unsealed by the token).
        let place = Where::inline_if(self.memory_ephemerals() && req.get_ref().psks.is_empty());
        self.run(req, place, ops::c_init_client_hello::handle).await
    }

    async fn c_client_hello(
        &self,
        req: Request<pb::CClientHelloRequest>,
    ) -> Result<Response<pb::CClientHelloResponse>, Status> {
        // The new share only; the PSKs are in the session already.
        let place = Where::inline_if(self.memory_ephemerals());
        self.run(req, place, ops::c_client_hello::handle).await
    }

    async fn c_server_hello(
        &self,
        req: Request<pb::CServerHelloRequest>,
    ) -> Result<Response<pb::CServerHelloResponse>, Status> {
        // The agreement with the session's ephemeral (token-made with token ephemerals).
        let place = Where::inline_if(self.memory_ephemerals());
        self.run(req, place, ops::c_server_hello::handle).await
    }

    async fn c_client_finished(
        &self,
        req: Request<pb::CClientFinishedRequest>,
    ) -> Result<Response<pb::CClientFinishedResponse>, Status> {
        // Only a client CertificateVerify needs the token (a key to sign with).
        let place = Where::inline_if(req.get_ref().key_id.is_empty());
        self.run(req, place, ops::c_client_finished::handle).await
    }

    async fn c_init_client_finished(
        &self,
        req: Request<pb::CInitClientFinishedRequest>,
    ) -> Result<Response<pb::CInitClientFinishedResponse>, Status> {
        self.run(req, Where::Blocking, ops::c_init_client_finished::handle)
            .await
    }

    async fn c_post_hand_auth(
        &self,
        req: Request<pb::CPostHandAuthRequest>,
    ) -> Result<Response<pb::CPostHandAuthResponse>, Status> {
        self.run(req, Where::Blocking, ops::c_post_hand_auth::handle)
            .await
    }

    async fn c_register_tickets(
        &self,
        req: Request<pb::CRegisterTicketsRequest>,
    ) -> Result<Response<pb::CRegisterTicketsResponse>, Status> {
        // Tickets go to the store (sealed by the token); closing a session touches neither.
        let place = Where::inline_if(req.get_ref().new_session_tickets.is_empty());
        self.run(req, place, ops::c_register_tickets::handle).await
    }

    async fn capabilities(
        &self,
        req: Request<pb::CapabilitiesRequest>,
    ) -> Result<Response<pb::CapabilitiesResponse>, Status> {
        self.run(req, Where::Blocking, |cs, engine, _| {
            capabilities(cs, engine)
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

fn capabilities(cs: &Cs, engine: &str) -> Result<pb::CapabilitiesResponse, ServiceError> {
    let mut freshness = vec![
        pb::Freshness::Sha256 as i32,
        pb::Freshness::Sha384 as i32,
        pb::Freshness::Sha512 as i32,
    ];
    if cs.test_vectors {
        freshness.push(pb::Freshness::Null as i32);
    }
    let keys = cs
        .keys
        .usable_by(engine)
        .map(|k| pb::KeyInfo {
            key_id: k.id.clone(),
            key_type: k.kind_name(),
            signature_schemes: k.schemes().iter().map(|s| u32::from(s.get())).collect(),
            certificate_chain: k.chain.clone(),
        })
        .collect();
    let external_psks = cs
        .store
        .list_external_psks()?
        .into_iter()
        .filter(|p| p.allowed_engines.is_empty() || p.allowed_engines.iter().any(|e| e == engine))
        .map(|p| pb::ExternalPskInfo {
            identity: p.identity,
            tls_hash: match p.hash {
                lurk_proto::wire::HashAlg::Sha256 => pb::TlsHash::Sha256 as i32,
                lurk_proto::wire::HashAlg::Sha384 => pb::TlsHash::Sha384 as i32,
            },
        })
        .collect();
    let mut schemes: Vec<u32> = Vec::new();
    for k in cs.keys.usable_by(engine) {
        for s in k.schemes() {
            let s = u32::from(s.get());
            if !schemes.contains(&s) {
                schemes.push(s);
            }
        }
    }
    Ok(pb::CapabilitiesResponse {
        groups: NamedGroup::SUPPORTED
            .iter()
            .map(|g| u32::from(g.get()))
            .collect(),
        signature_schemes: schemes,
        freshness,
        keys,
        external_psks,
        ephemeral_backend: format!("{:?}", cs.ephemeral.kind()).to_lowercase(),
        max_tickets_per_engine: cs.max_tickets_per_engine,
        ticket_lifetime_seconds: cs.ticket_lifetime_cap,
    })
}

impl From<TokenError> for Status {
    fn from(e: TokenError) -> Self {
        ServiceError::from(e).into()
    }
}
