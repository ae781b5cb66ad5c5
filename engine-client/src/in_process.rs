//! The Crypto Service in the engine's process (cargo feature `in-process`): [`InProcessCs`]
//! calls `lurk-cs`'s operations on a [`lurk_cs::cs::Cs`] directly, for tests and for a
//! proxy that runs beside the token itself. The dependency goes one way: `lurk-cs` knows
//! nothing of the engine.
//!
//! The CS's limits that its gRPC service adds (request size, exchanges in flight per engine)
//! are not applied here: the process that holds the token trusts itself.

use std::sync::Arc;

use lurk_cs::cs::Cs;
use lurk_cs::ops;

use crate::crypto_service::{CryptoService, CsFuture, CsSession};
use crate::cs_client::{CsCall, CsError, CsReply};

/// A [`CryptoService`] over a [`Cs`] in this process, acting for one engine identity (the
/// name sessions, tickets and keys are checked against, as the mTLS identity would be).
#[derive(Clone)]
pub struct InProcessCs {
    cs: Arc<Cs>,
    engine: Arc<str>,
}

impl std::fmt::Debug for InProcessCs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InProcessCs")
            .field("engine", &self.engine)
            .finish_non_exhaustive()
    }
}

impl InProcessCs {
    /// Calls on `cs` as `engine`.
    pub fn new(cs: Arc<Cs>, engine: &str) -> Self {
        Self {
            cs,
            engine: engine.into(),
        }
    }

    /// What the CS offers this engine (as the `Capabilities` RPC answers).
    pub fn capabilities(&self) -> Result<lurk_proto::pb::CapabilitiesResponse, CsError> {
        ops::capabilities::handle(&self.cs, &self.engine)
            .map_err(|e| CsError::from(tonic::Status::from(e)))
    }
}

/// One exchange, on the calling thread (the token's calls block).
fn perform(cs: &Cs, engine: &str, call: CsCall) -> Result<CsReply, CsError> {
    // Errors go through the CS's one mapping (a LURK status, as over gRPC).
    let map = |e| CsError::from(tonic::Status::from(e));
    Ok(match call {
        CsCall::InitClientHello(r) => {
            CsReply::InitClientHello(ops::c_init_client_hello::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::ClientHello(r) => {
            CsReply::ClientHello(ops::c_client_hello::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::ServerHello(r) => {
            CsReply::ServerHello(ops::c_server_hello::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::ClientFinished(r) => {
            CsReply::ClientFinished(ops::c_client_finished::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::InitClientFinished(r) => CsReply::InitClientFinished(
            ops::c_init_client_finished::handle(cs, engine, r).map_err(map)?,
        ),
        CsCall::PostHandAuth(r) => {
            CsReply::PostHandAuth(ops::c_post_hand_auth::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::ServerFlight(r) => {
            CsReply::ServerFlight(ops::c_server_flight::handle(cs, engine, r).map_err(map)?)
        }
        CsCall::RegisterTickets(r) => {
            CsReply::RegisterTickets(ops::c_register_tickets::handle(cs, engine, r).map_err(map)?)
        }
    })
}

impl CryptoService for InProcessCs {
    fn session(&self) -> Arc<dyn CsSession> {
        Arc::new(self.clone())
    }

    fn capabilities(&self) -> crate::crypto_service::CapabilitiesFuture {
        let this = self.clone();
        Box::pin(async move { InProcessCs::capabilities(&this) })
    }
}

impl CsSession for InProcessCs {
    fn perform(&self, call: CsCall) -> CsFuture {
        let (cs, engine) = (self.cs.clone(), self.engine.clone());
        Box::pin(async move {
            tokio::task::spawn_blocking(move || perform(&cs, &engine, call))
                .await
                .map_err(|e| CsError::Other {
                    code: tonic::Code::Internal,
                    message: format!("CS task: {e}"),
                })?
        })
    }
}
