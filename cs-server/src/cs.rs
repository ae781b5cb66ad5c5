//! The CS's state, shared by every operation: the token, the signing keys, the ticket store,
//! the session table and the ephemeral backend. The gRPC adapter (`service`) holds one
//! `Arc<Cs>`; the operations (`ops`) take `&Cs`.

use std::sync::Arc;
use std::time::Duration;

use crate::config::{Config, EphemeralBackendKind, FreshnessMode};
use crate::ephemeral::EphemeralSource;
use crate::error::{ServiceError, TokenError};
use crate::keyring::KeyRing;
use crate::ops::state::Stage;
use crate::server_auth::ServerAuth;
use crate::session::{SessionLimits, SessionTable};
use crate::store::TicketStore;
use crate::token::{Need, Token};

/// Everything an operation needs: the CS's state, shared by all requests.
pub struct Cs {
    /// The PKCS#11 token (None only in tests and benches that need no token operation).
    pub token: Option<Token>,
    /// The signing keys and their certificate chains.
    pub keys: KeyRing,
    /// Sealed tickets and external PSKs.
    pub store: Arc<dyn TicketStore>,
    /// The open LURK sessions, bounded per engine and in total.
    pub sessions: SessionTable<Stage>,
    /// Where (EC)DHE key pairs come from (token, memory, test vectors).
    pub ephemeral: EphemeralSource,
    /// `[freshness] mode`: the ClientHello.random formula (draft-mglt-lurk-tls13 §3).
    pub freshness_mode: FreshnessMode,
    /// Test-vector mode: `null` freshness allowed, ephemeral keys injectable in-process.
    pub test_vectors: bool,
    /// `[store] ticket_lifetime_secs`: a registered ticket lives at most this long, whatever
    /// its NewSessionTicket says.
    pub ticket_lifetime_cap: u64,
    /// `[store] max_tickets_per_engine`, reported in Capabilities.
    pub max_tickets_per_engine: u32,
    /// Post-handshake authentications per session.
    pub max_post_handshake_auths: usize,
    /// `[server_auth]`: the CS authenticates TLS servers itself (None: off).
    pub server_auth: Option<ServerAuth>,
    /// `[exchanges] server_flight`: c_server_flight is offered.
    pub server_flight: bool,
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
        if cfg.ephemeral.backend == EphemeralBackendKind::Token && token.keeps_destroyed_objects() {
            match token.recycle_stats().after_objects {
                0 => tracing::warn!(
                    "this PKCS#11 module (SoftHSM up to 2.6) keeps the memory of every destroyed \
                     session object until the process ends: with [ephemeral] backend = \"token\" \
                     the CS grows by about 1 KiB per handshake; set [token] \
                     recycle_after_objects, use backend = \"memory\" or a newer module \
                     (deploy/README.md)"
                ),
                n => tracing::info!(
                    recycle_after_objects = n,
                    "this PKCS#11 module (SoftHSM up to 2.6) keeps the memory of every destroyed \
                     session object until C_Finalize: it is re-initialised after that many \
                     (deploy/README.md)"
                ),
            }
        }
        let store = crate::store::open(&cfg.store, Arc::new(token.clone()))?;
        let server_auth = ServerAuth::from_config(&cfg.server_auth)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        match &server_auth {
            Some(p) => tracing::info!(
                anchors = p.anchors(),
                "server_auth on: servers are authenticated by the CS"
            ),
            None => {
                tracing::info!("server_auth off: tickets are trusted only against honest servers")
            }
        }
        Ok(Self::new(cfg, Some(token), keys, store).with_server_auth(server_auth))
    }

    /// The CS with `[server_auth]` off: [`with_server_auth`](Self::with_server_auth) sets the
    /// policy (it reads a file, which this constructor does not).
    pub fn new(
        cfg: &Config,
        token: Option<Token>,
        keys: KeyRing,
        store: Arc<dyn TicketStore>,
    ) -> Self {
        let limits = SessionLimits {
            max: cfg.sessions.max,
            max_per_engine: cfg.sessions.max_per_engine,
            max_bytes: cfg.sessions.max_bytes,
            max_bytes_per_engine: cfg.sessions.max_bytes_per_engine,
            handshake_ttl: Duration::from_secs(cfg.sessions.ttl_secs),
            established_ttl: Duration::from_secs(cfg.sessions.established_ttl_secs),
            engine_keyed_ttl: Duration::from_secs(cfg.sessions.engine_keyed_ttl_secs),
        };
        Self {
            ephemeral: EphemeralSource::new(
                cfg.ephemeral.backend,
                token.clone(),
                cfg.freshness.test_vectors,
            )
            .with_token_pool(
                cfg.ephemeral.token_pool,
                Duration::from_secs(cfg.ephemeral.token_pool_max_age_secs),
            ),
            token,
            keys,
            store,
            sessions: SessionTable::new(limits),
            freshness_mode: cfg.freshness.mode,
            test_vectors: cfg.freshness.test_vectors,
            ticket_lifetime_cap: cfg.store.ticket_lifetime_secs,
            max_tickets_per_engine: cfg.store.max_tickets_per_engine,
            max_post_handshake_auths: cfg.sessions.max_post_handshake_auths,
            server_auth: None,
            server_flight: cfg.exchanges.server_flight,
        }
    }

    /// Sets the `[server_auth]` policy.
    pub fn with_server_auth(mut self, policy: Option<ServerAuth>) -> Self {
        self.server_auth = policy;
        self
    }

    /// Test-vector mode: the next ephemeral key for `group` uses this private key.
    #[cfg(feature = "test-vectors")]
    pub fn inject_ephemeral(
        &self,
        group: lurk_proto::wire::NamedGroup,
        private: &[u8],
    ) -> Result<(), ServiceError> {
        self.ephemeral.inject(group, private)
    }
}
