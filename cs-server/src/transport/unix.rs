//! The Unix-domain-socket listener (`[listen.unix]`) for engines on the CS's host: no TLS and
//! no TCP, so a LURK round trip costs less. The peer's uid, from SO_PEERCRED (read by the
//! kernel at connect, not claimed by the peer), names the engine through the configured map;
//! a uid not in the map is refused at accept. Connections share the TCP listener's
//! descriptor slots, per-engine connection cap, request caps and timeouts.

use std::collections::HashMap;
use std::os::unix::fs::{FileTypeExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio::net::{UnixListener, UnixStream};
use tokio::sync::{mpsc, Semaphore};

use super::{
    is_resource_exhaustion, serve_http2, Shared, ACCEPT_BACKOFF_MAX, ACCEPT_BACKOFF_MIN,
    WARN_PERIOD,
};
use crate::config::UnixListenConfig;
use crate::limits::RateLimitedWarn;
use crate::server::{EngineId, ServerError};

/// The engine a Unix-socket connection belongs to, put in each of its requests' extensions
/// (read by `server::engine_identity`).
#[derive(Clone, Debug)]
pub struct UnixPeer {
    /// The identity `[listen.unix] engines` gives the peer's uid.
    pub engine: EngineId,
    /// The peer's uid (SO_PEERCRED).
    pub uid: u32,
}

/// A bound Unix socket and its uid → engine map. The socket file is removed when this (or
/// the accept loop holding it) is dropped.
pub struct UnixListening {
    listener: UnixListener,
    engines: HashMap<u32, EngineId>,
    file: SocketFile,
}

impl std::fmt::Debug for UnixListening {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnixListening")
            .field("path", &self.file.0)
            .field("engines", &self.engines)
            .finish_non_exhaustive()
    }
}

impl UnixListening {
    /// Binds `cfg.path` (replacing a socket file left by an earlier run) and sets its mode.
    /// Needs a tokio runtime.
    pub fn bind(cfg: &UnixListenConfig) -> Result<Self, ServerError> {
        let io = |source| ServerError::Io {
            path: cfg.path.display().to_string(),
            source,
        };
        let mut engines = HashMap::new();
        for e in &cfg.engines {
            let id = EngineId::new(&e.engine).map_err(|_| {
                ServerError::Config(format!("unix: {:?} is not an engine identity", e.engine))
            })?;
            engines.insert(e.uid, id);
        }
        match std::fs::symlink_metadata(&cfg.path) {
            Ok(m) if m.file_type().is_socket() => std::fs::remove_file(&cfg.path).map_err(io)?,
            Ok(_) => {
                return Err(ServerError::Config(format!(
                    "unix: {} exists and is not a socket",
                    cfg.path.display()
                )))
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io(e)),
        }
        let listener = UnixListener::bind(&cfg.path).map_err(|source| ServerError::Bind {
            addr: cfg.path.display().to_string(),
            source,
        })?;
        let file = SocketFile(cfg.path.clone());
        // Until this call the file has the umask's mode; the uid map is what admits a peer.
        std::fs::set_permissions(&cfg.path, std::fs::Permissions::from_mode(cfg.mode))
            .map_err(io)?;
        Ok(Self {
            listener,
            engines,
            file,
        })
    }

    /// The socket file.
    pub fn path(&self) -> &Path {
        &self.file.0
    }
}

/// Removes the socket file (if it is still ours: a socket) on drop.
struct SocketFile(PathBuf);

impl Drop for SocketFile {
    fn drop(&mut self) {
        if std::fs::symlink_metadata(&self.0).is_ok_and(|m| m.file_type().is_socket()) {
            let _ = std::fs::remove_file(&self.0);
        }
    }
}

/// Accepts on `unix` until the server stops (`shared.stop`), then removes the socket file.
/// Each connection takes one of the `slots` shared with the TCP listener, and holds `alive`.
pub(super) async fn accept_loop(
    unix: UnixListening,
    shared: Arc<Shared>,
    slots: Arc<Semaphore>,
    alive: mpsc::Sender<()>,
) {
    let mut stop = shared.stop.clone();
    let refused_warn = RateLimitedWarn::new(WARN_PERIOD);
    let mut backoff = ACCEPT_BACKOFF_MIN;
    loop {
        let slot = tokio::select! {
            s = slots.clone().acquire_owned() => match s {
                Ok(s) => s,
                Err(_) => break,
            },
            _ = stop.wait_for(|s| *s) => break,
        };
        let accepted = tokio::select! {
            r = unix.listener.accept() => r,
            _ = stop.wait_for(|s| *s) => break,
        };
        let stream = match accepted {
            Ok((s, _)) => {
                backoff = ACCEPT_BACKOFF_MIN;
                s
            }
            Err(e) if is_resource_exhaustion(&e) => {
                tracing::debug!(error = %e, "unix accept failed: backing off");
                drop(slot);
                // At most ACCEPT_BACKOFF_MAX; the stop is seen on the next turn.
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(ACCEPT_BACKOFF_MAX);
                continue;
            }
            Err(e) => {
                tracing::debug!(error = %e, "unix accept failed");
                continue;
            }
        };
        let Some(peer) = identify(&unix.engines, &stream, &refused_warn) else {
            continue;
        };
        let shared = shared.clone();
        let alive = alive.clone();
        tokio::spawn(async move {
            connection(&shared, stream, peer).await;
            drop(slot);
            drop(alive);
        });
    }
    tracing::info!(path = %unix.path().display(), "unix listener stopped");
}

/// The engine of a freshly accepted peer, or `None` (connection dropped, logged) when its uid
/// is not in the map.
fn identify(
    engines: &HashMap<u32, EngineId>,
    stream: &UnixStream,
    refused_warn: &RateLimitedWarn,
) -> Option<UnixPeer> {
    let cred = match stream.peer_cred() {
        Ok(c) => c,
        Err(e) => {
            tracing::debug!(error = %e, "SO_PEERCRED failed: connection closed");
            return None;
        }
    };
    match engines.get(&cred.uid()) {
        Some(engine) => Some(UnixPeer {
            engine: engine.clone(),
            uid: cred.uid(),
        }),
        None => {
            if let Some(n) = refused_warn.check() {
                tracing::warn!(
                    uid = cred.uid(),
                    pid = cred.pid(),
                    times = n,
                    "unix socket peer's uid maps to no engine ([listen.unix] engines): connection refused"
                );
            }
            None
        }
    }
}

/// One mapped peer: the engine's connection cap, then HTTP/2 as on the TCP listener.
async fn connection(shared: &Shared, stream: UnixStream, peer: UnixPeer) {
    let Some(counted) = shared.engines.enter(&peer.engine) else {
        super::engine_cap_reached(shared, &peer.engine);
        return;
    };
    let requests = counted.requests.clone();
    serve_http2(shared, stream, peer, Some(requests)).await;
    drop(counted);
}
