//! The Crypto Service behind a trait: [`CryptoService`] opens a [`CsSession`] per
//! connection, and the connection makes its LURK exchanges ([`CsCall`]) through it.
//!
//! [`CsPool`] (gRPC over mTLS to one or more replicas, the session pinned to the replica its
//! first call reached) is the implementation the engine ships; another one can put the CS
//! somewhere else (in the same process as the token, behind another transport) or decorate
//! the pool (metrics, tracing).

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use lurk_proto::pb;

use crate::cs_client::{CsCall, CsError, CsReply};
use crate::cs_pool::{CsPool, CsRoute};

/// The answer to one [`CsCall`], to come.
pub type CsFuture = Pin<Box<dyn Future<Output = Result<CsReply, CsError>> + Send>>;

/// A Crypto Service.
pub trait CryptoService: Send + Sync + 'static {
    /// The way one connection's calls go: every exchange of its LURK session (from the first
    /// c_init_client_hello to the last c_register_tickets) goes through the session returned
    /// here, which must reach the CS instance that holds that session.
    fn session(&self) -> Arc<dyn CsSession>;

    /// What the CS offers (its `Capabilities` answer), asked once per [`crate::Connector`]
    /// to learn whether it makes c_server_flight. The default says "not known", and the
    /// engine then makes the standard exchanges only.
    fn capabilities(&self) -> CapabilitiesFuture {
        Box::pin(async {
            Err(CsError::Other {
                code: tonic::Code::Unimplemented,
                message: "Capabilities".into(),
            })
        })
    }
}

/// The CS's `Capabilities` answer, to come.
pub type CapabilitiesFuture =
    Pin<Box<dyn Future<Output = Result<pb::CapabilitiesResponse, CsError>> + Send>>;

/// One connection's way to the CS.
pub trait CsSession: Send + Sync + 'static {
    /// Makes one LURK exchange. The future must not borrow `self` (it may outlive the
    /// connection: ticket registrations finish in the background).
    fn perform(&self, call: CsCall) -> CsFuture;
}

impl CryptoService for CsPool {
    fn session(&self) -> Arc<dyn CsSession> {
        Arc::new(CsRoute::new(self.clone()))
    }

    fn capabilities(&self) -> CapabilitiesFuture {
        let pool = self.clone();
        Box::pin(async move { CsPool::capabilities(&pool).await })
    }
}

impl CsSession for CsRoute {
    fn perform(&self, call: CsCall) -> CsFuture {
        Box::pin(CsRoute::perform(self, call))
    }
}
