//! `grpc.health.v1.Health` (tonic-health): SERVING only while the token answers and the
//! ticket store is reachable, checked by a background probe every `probe_interval_ms`;
//! NOT_SERVING as soon as shutdown starts, before the listener stops (so that load
//! balancers and engines move away while RPCs still get answers).
//!
//! The status is reported for the whole server (`""`) and for `lurk.tls13.v1.CryptoService`.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde::Deserialize;
use tonic_health::server::HealthReporter;
use tonic_health::ServingStatus;

use crate::cs::Cs;
use crate::error::ServiceError;

/// `[health]`.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// Milliseconds between two probes of the token and the store.
    #[serde(default = "default_interval")]
    pub probe_interval_ms: u64,
    /// A probe that takes longer than this (milliseconds) counts as failed.
    #[serde(default = "default_timeout")]
    pub probe_timeout_ms: u64,
    /// On SIGTERM/SIGINT: milliseconds between reporting NOT_SERVING and closing the
    /// listener (RPCs keep being served meanwhile).
    #[serde(default = "default_shutdown_delay")]
    pub shutdown_delay_ms: u64,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            probe_interval_ms: default_interval(),
            probe_timeout_ms: default_timeout(),
            shutdown_delay_ms: default_shutdown_delay(),
        }
    }
}

fn default_interval() -> u64 {
    1000
}
fn default_timeout() -> u64 {
    2000
}
fn default_shutdown_delay() -> u64 {
    1000
}

/// The gRPC service name whose status is reported beside the server's (`""`).
pub const SERVICE_NAME: &str = lurk_proto::pb::crypto_service_server::SERVICE_NAME;

/// The health status shared by the probe and the shutdown path.
#[derive(Clone)]
pub struct Health {
    reporter: HealthReporter,
    stopping: Arc<AtomicBool>,
}

impl Health {
    /// The reporter and the gRPC service to add to the server. Starts NOT_SERVING: the
    /// first probe decides.
    pub fn new() -> (
        Self,
        tonic_health::pb::health_server::HealthServer<impl tonic_health::pb::health_server::Health>,
    ) {
        let (reporter, service) = tonic_health::server::health_reporter();
        let h = Self {
            reporter,
            stopping: Arc::new(AtomicBool::new(false)),
        };
        (h, service)
    }

    async fn set(&self, status: ServingStatus) {
        self.reporter.set_service_status("", status).await;
        self.reporter.set_service_status(SERVICE_NAME, status).await;
    }

    /// Shutdown begins: NOT_SERVING from now on, whatever the probe finds.
    pub async fn shutting_down(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.set(ServingStatus::NotServing).await;
        tracing::info!("health: NOT_SERVING (shutting down)");
    }

    /// Probes the token and the store forever (spawn it).
    pub async fn run_probe(self, cs: Arc<Cs>, cfg: HealthConfig) {
        self.set(ServingStatus::NotServing).await;
        let mut tick = tokio::time::interval(Duration::from_millis(cfg.probe_interval_ms.max(10)));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let timeout = Duration::from_millis(cfg.probe_timeout_ms.max(1));
        let mut serving: Option<bool> = None;
        loop {
            tick.tick().await;
            let cs = cs.clone();
            let probe = tokio::task::spawn_blocking(move || probe(&cs));
            let result = match tokio::time::timeout(timeout, probe).await {
                Ok(Ok(r)) => r,
                Ok(Err(e)) => Err(format!("probe task failed: {e}")),
                Err(_) => Err(format!("probe took more than {timeout:?}")),
            };
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let ok = result.is_ok();
            if serving != Some(ok) {
                match &result {
                    Ok(()) => tracing::info!("health: SERVING"),
                    Err(reason) => tracing::warn!(%reason, "health: NOT_SERVING"),
                }
                self.set(if ok {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                })
                .await;
                serving = Some(ok);
            }
        }
    }
}

/// One probe: the token answers with a logged-in session (`Token::probe`: C_GetSessionInfo;
/// a token marked down fails at once, or is re-initialised when its backoff has passed) and
/// the store answers a query.
fn probe(cs: &Cs) -> Result<(), String> {
    if let Some(token) = &cs.token {
        token
            .probe()
            .map_err(|e| ServiceError::from(e).to_string())?;
    }
    cs.store.ping().map_err(|e| e.to_string())
}
