//! The Crypto Service the targets call in-process: a `Cs` on the memory ephemeral backend,
//! a real SoftHSM token (client signing keys, sealing key) and a real SQLite store, from an
//! `init-dev` set-up, and an external PSK whose bytes the targets know (leak checks).
//!
//! The set-up is made by a child process (`lurk-fuzz setup DIR`) and the token is opened
//! lazily, on the first input: AFL++ forks the target after its own start-up, and SoftHSM
//! must not have been initialised before a fork (it resets itself in the child).

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, SystemTime};

use lurk_cs::config::{Config, EphemeralBackendKind};
use lurk_cs::cs::Cs;
use lurk_cs::error::ServiceError;
use lurk_cs::keyring::{read_chain, KeyRing};
use lurk_cs::ops;
use lurk_cs::session::SessionTable;
use lurk_cs::store::ExternalPsk;
use lurk_cs::token::Token;
use lurk_engine::cs_client::{CsCall, CsError, CsReply};
use lurk_proto::wire::HashAlg;
use prost::Message;
use zeroize::Zeroizing;

/// The engine identity of every request.
pub const ENGINE: &str = "engine-fuzz";
/// The external PSK provisioned for [`ENGINE`].
pub const EXTERNAL_IDENTITY: &[u8] = b"lurk-fuzz external psk";
pub const EXTERNAL_PSK: &[u8] = b"lurk-fuzz: a PSK that never leaks";

pub struct Fixture {
    pub cs: Cs,
    /// The client key `p256` of the set-up: its certificate chain (DER).
    pub p256_chain: Vec<Vec<u8>>,
}

/// Where the set-up lives: `$LURK_FUZZ_DIR`, else a directory per user under the temp dir.
pub fn dir() -> PathBuf {
    std::env::var_os("LURK_FUZZ_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| std::env::temp_dir().join("lurk-fuzz-cs"))
}

/// `lurk-fuzz setup DIR`: init-dev, then the external PSK in the store.
pub fn setup(dir: &Path) {
    lurk_cs::init_dev::init_dev(dir).expect("init-dev");
    let cfg = Config::load(&dir.join("lurk-cs.toml")).expect("config");
    let token = Token::open(&cfg.token).expect("token");
    let store = lurk_cs::store::open(&cfg.store, Arc::new(token)).expect("store");
    store
        .put_external_psk(ExternalPsk {
            identity: EXTERNAL_IDENTITY.to_vec(),
            psk: Zeroizing::new(EXTERNAL_PSK.to_vec()),
            hash: HashAlg::Sha256,
            allowed_engines: vec![ENGINE.to_owned()],
        })
        .expect("external PSK");
}

/// Makes the set-up if it is missing, in a child process (see the module documentation).
/// Called before the fuzz loop.
pub fn ensure_setup() {
    let d = dir();
    if d.join("lurk-cs.toml").exists() {
        return;
    }
    let _ = std::fs::remove_dir_all(&d);
    let status = std::process::Command::new(std::env::current_exe().expect("exe"))
        .arg("setup")
        .arg(&d)
        .status()
        .expect("run lurk-fuzz setup");
    assert!(status.success(), "lurk-fuzz setup {} failed", d.display());
}

fn open() -> Fixture {
    ensure_setup();
    let d = dir();
    let mut cfg = Config::load(&d.join("lurk-cs.toml")).expect("config");
    cfg.ephemeral.backend = EphemeralBackendKind::Memory;
    let token = Token::open(&cfg.token).expect("token");
    let keys = KeyRing::load(&token, &cfg.keys).expect("keys");
    let store = lurk_cs::store::open(&cfg.store, Arc::new(token.clone())).expect("store");
    let p256_chain = read_chain(&d.join("client-p256.pem")).expect("client-p256.pem");
    Fixture {
        cs: Cs::new(&cfg, Some(token), keys, store),
        p256_chain,
    }
}

/// The fixture, reset: no session, no ticket (each input starts from the same state).
pub fn get() -> MutexGuard<'static, Fixture> {
    static F: OnceLock<Mutex<Fixture>> = OnceLock::new();
    let mut f = F
        .get_or_init(|| Mutex::new(open()))
        .lock()
        .unwrap_or_else(|p| p.into_inner());
    let limits = *f.cs.sessions.limits();
    f.cs.sessions = SessionTable::new(limits);
    // Every ticket and tombstone is expired a year from now.
    f.cs.store
        .purge_expired(SystemTime::now() + Duration::from_secs(365 * 86_400))
        .expect("purge the store");
    f
}

/// One exchange on the CS, as the gRPC service runs it (the engine identity checked
/// already); `Ok` holds the encoded response too, for the leak checks.
pub fn call(cs: &Cs, engine: &str, call: CsCall) -> Result<(CsReply, Vec<u8>), ServiceError> {
    Ok(match call {
        CsCall::InitClientHello(r) => {
            let resp = ops::c_init_client_hello::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::InitClientHello(resp), enc)
        }
        CsCall::ClientHello(r) => {
            let resp = ops::c_client_hello::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::ClientHello(resp), enc)
        }
        CsCall::ServerHello(r) => {
            let resp = ops::c_server_hello::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::ServerHello(resp), enc)
        }
        CsCall::ClientFinished(r) => {
            let resp = ops::c_client_finished::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::ClientFinished(resp), enc)
        }
        CsCall::ServerFlight(r) => {
            let resp = ops::c_server_flight::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::ServerFlight(resp), enc)
        }
        CsCall::InitClientFinished(r) => {
            let resp = ops::c_init_client_finished::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::InitClientFinished(resp), enc)
        }
        CsCall::PostHandAuth(r) => {
            let resp = ops::c_post_hand_auth::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::PostHandAuth(resp), enc)
        }
        CsCall::RegisterTickets(r) => {
            let resp = ops::c_register_tickets::handle(cs, engine, r)?;
            let enc = resp.encode_to_vec();
            (CsReply::RegisterTickets(resp), enc)
        }
    })
}

/// A refusal as the engine receives it (through the one error mapping, `error.rs`).
pub fn as_engine_error(e: ServiceError) -> CsError {
    CsError::from(tonic::Status::from(e))
}

/// Panics if `haystack` holds one of `secrets` (16 bytes or more), raw or in hex (either
/// case: the haystack is lowered once for the hex). This runs on every CS answer and engine
/// output: a window-by-window compare was up to a quarter of an input's time.
pub fn assert_no_secret(haystack: &[u8], secrets: &[Vec<u8>], what: &str) {
    let mut lowered = None;
    for s in secrets.iter().filter(|s| s.len() >= 16) {
        let raw = contains(haystack, s);
        let lower = lowered.get_or_insert_with(|| haystack.to_ascii_lowercase());
        let hexed = contains(lower, hex::encode(s).as_bytes());
        assert!(!raw && !hexed, "{what} holds a secret");
    }
}

/// Whether `needle` (not empty) occurs in `haystack`: memchr for its first byte, then a
/// compare (haystacks are short: a searcher's set-up would cost more than the search).
fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    let Some((&first, rest)) = needle.split_first() else {
        return true;
    };
    let Some(last_start) = haystack.len().checked_sub(needle.len()) else {
        return false;
    };
    let mut from = 0;
    while let Some(p) = memchr::memchr(first, &haystack[from..=last_start]) {
        let at = from + p;
        if &haystack[at + 1..at + needle.len()] == rest {
            return true;
        }
        from = at + 1;
        if from > last_start {
            return false;
        }
    }
    false
}

/// The secrets no CS answer may hold besides the connection's: the external PSK.
pub fn fixed_secrets() -> Vec<Vec<u8>> {
    vec![EXTERNAL_PSK.to_vec()]
}
