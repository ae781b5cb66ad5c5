//! Certificate rotation without a restart: on SIGHUP the CS reads again the files its
//! configuration names (the configuration file itself is not read again):
//!
//! - `[listen.tls]` `cert`, `key` and `client_ca` ([`ListenerTls`]): a new rustls
//!   configuration is built and checked (certificates parse, the key matches the
//!   certificate, at least one CA) and then swapped in whole. Each accepted connection takes
//!   the configuration in force when its handshake starts, so new connections use the new
//!   files and established ones keep the ones they were made with. A file refused leaves the
//!   previous certificate, key and CA in force.
//! - `[[keys]] certificate_chain` ([`KeyRing::reload_chains`]): a chain whose leaf no longer
//!   carries the key's public key is refused and the previous chain stays.
//!
//! Each reload logs what it put in force and what it refused, then `certificate reload done`.

use std::sync::{Arc, PoisonError, RwLock};

use rustls::ServerConfig;
use tokio_rustls::TlsAcceptor;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::config::{ListenConfig, TlsConfig};
use crate::cs::Cs;
use crate::keyring::{ChainOutcome, KeyRing};
use crate::server::{load_tls, ServerError, ENGINE_ID_METADATA};

/// The listener's TLS configuration, replaced whole by [`reload`](Self::reload).
pub struct ListenerTls {
    files: TlsConfig,
    current: RwLock<Arc<ServerConfig>>,
}

/// What a loaded `[listen.tls]` holds, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSummary {
    /// Subject of the CS's certificate.
    pub subject: String,
    /// Its serial number (hex).
    pub serial: String,
    /// Its notAfter (RFC 2822).
    pub not_after: String,
    /// Number of client CA certificates.
    pub client_cas: usize,
}

impl ListenerTls {
    /// Loads `[listen.tls]`; errors name the file at fault.
    pub fn load(files: &TlsConfig) -> Result<Arc<Self>, ServerError> {
        let (config, summary) = load_tls(files)?;
        tracing::info!(
            cert = %files.cert.display(),
            subject = %summary.subject,
            serial = %summary.serial,
            not_after = %summary.not_after,
            client_cas = summary.client_cas,
            "listener TLS certificate loaded"
        );
        Ok(Arc::new(Self {
            files: files.clone(),
            current: RwLock::new(config),
        }))
    }

    /// The listener's TLS: `Some` for mTLS, `None` on a plaintext (development) listener;
    /// refuses both or neither.
    pub fn for_listen(cfg: &ListenConfig) -> Result<Option<Arc<Self>>, ServerError> {
        match (&cfg.tls, cfg.plaintext) {
            (Some(_), true) => {
                // Fail closed: with both, engine_identity could trust a header on a TLS port.
                Err(ServerError::Config(
                    "both [listen.tls] and plaintext = true: choose one".into(),
                ))
            }
            (Some(tls), false) => Ok(Some(Self::load(tls)?)),
            (None, true) => {
                tracing::warn!(
                    "PLAINTEXT gRPC listener: engines are not authenticated and name themselves \
                     with the {ENGINE_ID_METADATA} header. Development only."
                );
                Ok(None)
            }
            (None, false) => Err(ServerError::Config(
                "set [listen.tls] (mTLS) or, for development only, plaintext = true".into(),
            )),
        }
    }

    /// Reads the files again and puts them in force if they are usable; otherwise keeps the
    /// configuration in force and returns why. Each configuration has its own TLS session
    /// cache, so a session made under the old client CA is not resumed under the new one.
    pub fn reload(&self) -> Result<TlsSummary, ServerError> {
        let (config, summary) = load_tls(&self.files)?;
        *self.current.write().unwrap_or_else(PoisonError::into_inner) = config;
        Ok(summary)
    }

    /// An acceptor with the configuration in force now (one per accepted connection).
    pub(crate) fn acceptor(&self) -> TlsAcceptor {
        TlsAcceptor::from(
            self.current
                .read()
                .unwrap_or_else(PoisonError::into_inner)
                .clone(),
        )
    }
}

/// The summary of a certificate (DER) and CA count, for the log.
pub(crate) fn summarize(leaf: &[u8], client_cas: usize) -> TlsSummary {
    match X509Certificate::from_der(leaf) {
        Ok((_, c)) => TlsSummary {
            subject: c.subject().to_string(),
            serial: c.raw_serial_as_string(),
            not_after: c
                .validity()
                .not_after
                .to_rfc2822()
                .unwrap_or_else(|e| format!("({e})")),
            client_cas,
        },
        Err(_) => TlsSummary {
            subject: "(unparsable)".into(),
            serial: String::new(),
            not_after: String::new(),
            client_cas,
        },
    }
}

/// What one reload did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ReloadReport {
    /// The listener's TLS was replaced.
    pub listener_reloaded: bool,
    /// The listener's new files were refused (the old ones stay).
    pub listener_refused: bool,
    /// Signing keys whose certificate chain was replaced.
    pub chains_replaced: usize,
    /// Signing keys whose file holds the chain already in force.
    pub chains_unchanged: usize,
    /// Signing keys whose new chain was refused (the old one stays in force).
    pub chains_refused: usize,
}

/// Reloads the listener's TLS files (if any) and the signing keys' chains, logging each
/// outcome. Reads files: call it off the async threads.
pub fn reload_certificates(tls: Option<&ListenerTls>, keys: &KeyRing) -> ReloadReport {
    let mut report = ReloadReport::default();
    if let Some(tls) = tls {
        match tls.reload() {
            Ok(s) => {
                report.listener_reloaded = true;
                tracing::info!(
                    cert = %tls.files.cert.display(),
                    subject = %s.subject,
                    serial = %s.serial,
                    not_after = %s.not_after,
                    client_cas = s.client_cas,
                    "listener certificate, key and client CA reloaded: new connections use them"
                );
            }
            Err(e) => {
                report.listener_refused = true;
                tracing::error!(
                    error = %e,
                    "listener certificate reload refused: the previous certificate, key and client CA stay in force"
                );
            }
        }
    }
    for r in keys.reload_chains() {
        match r.outcome {
            ChainOutcome::Replaced => {
                report.chains_replaced += 1;
                tracing::info!(key = %r.key_id, path = %r.path.display(),
                    "signing key certificate chain reloaded");
            }
            ChainOutcome::Unchanged => {
                report.chains_unchanged += 1;
                tracing::debug!(key = %r.key_id, path = %r.path.display(),
                    "signing key certificate chain unchanged");
            }
            ChainOutcome::Refused(why) => {
                report.chains_refused += 1;
                tracing::error!(key = %r.key_id, path = %r.path.display(), error = %why,
                    "signing key certificate chain refused: the previous chain stays in force");
            }
        }
    }
    tracing::info!(
        listener_reloaded = report.listener_reloaded,
        listener_refused = report.listener_refused,
        chains_replaced = report.chains_replaced,
        chains_unchanged = report.chains_unchanged,
        chains_refused = report.chains_refused,
        "certificate reload done"
    );
    report
}

/// Installs the SIGHUP handler (before the CS says it is ready, so that an early SIGHUP does
/// not end the process) and reloads the certificates on each SIGHUP until the process ends.
/// Must run inside the tokio runtime.
pub fn reload_on_sighup(tls: Option<Arc<ListenerTls>>, cs: Arc<Cs>) -> std::io::Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup())?;
    tokio::spawn(async move {
        while hangup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading certificates");
            let (tls, cs) = (tls.clone(), cs.clone());
            let _ =
                tokio::task::spawn_blocking(move || reload_certificates(tls.as_deref(), &cs.keys))
                    .await;
        }
    });
    Ok(())
}
