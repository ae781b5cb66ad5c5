//! The PKCS#11 token: every credential of the CS lives here (docs/design.md §4.4–§4.6).
//!
//! - [`Token::open`] loads the module once per process ([`CInitializeFlags::OS_LOCKING_OK`]),
//!   finds the token by label, logs in with the PIN from the environment or a file, and
//!   keeps a pool of logged-in sessions (`pool`) that reopens failed sessions and
//!   re-initialises a failed module, with backoff; [`Token::probe`] and
//!   [`Token::healthy`] tell a health check whether the token answers;
//! - [`Token::check_mechanisms`] names what the token lacks for a configuration (`mechanisms`);
//! - signing keys found by RFC 7512 URI or label, and TLS 1.3 signatures (`sign`, `uri`);
//! - (EC)DHE key pairs as session objects, destroyed as soon as the shared secret exists
//!   (`ephemeral`);
//! - the AES-256-GCM key that seals stored PSKs (`seal`).
//!
//! Every method blocks on the token: async callers use `spawn_blocking`. Errors are
//! [`TokenError`]; messages never carry PINs or key material.

use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::MechanismType;
use cryptoki::object::{Attribute, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::slot::Slot;
use cryptoki::types::AuthPin;
use zeroize::Zeroizing;

use crate::config::TokenConfig;
use crate::error::TokenError;

pub(crate) mod der;
mod eph_pool;
mod ephemeral;
pub mod keys;
mod mechanisms;
mod pool;
mod seal;
mod sign;
#[cfg(test)]
pub(crate) mod testutil;
mod uri;
pub mod wrap;

pub use eph_pool::EphemeralPool;
pub use ephemeral::{validate_peer_key, TokenEphemeral};
pub use mechanisms::Need;
pub use sign::{SigningKey, SigningKeyType};
pub use uri::KeyUri;

pub use pool::{
    AsyncAdmission, Caller, EnteredAdmission, EphemeralAdmission, PoolUsage, RecycleStats,
};
use pool::{PooledSession, RecyclePolicy, SessionPool};

use crate::telemetry::{TokenCall, TokenOp};

/// A logged-in PKCS#11 token. Cheap to clone (an `Arc`); `Send + Sync`.
#[derive(Clone)]
pub struct Token {
    inner: Arc<Inner>,
}

struct Inner {
    pkcs11: Pkcs11,
    label: String,
    manufacturer: String,
    model: String,
    serial: String,
    mechanisms: Vec<MechanismType>,
    pool: SessionPool,
    sealing_label: String,
    /// The sealing key's handle and when it was looked up (`pool::HandleEpoch`).
    sealing_key: Mutex<Option<(pool::HandleEpoch, ObjectHandle)>>,
    signing_keys: Mutex<HashMap<String, SigningKey>>,
    x25519: ephemeral::X25519Route,
    keeps_destroyed_objects: bool,
}

/// True for a PKCS#11 module known to keep the memory of every session object destroyed
/// until `C_Finalize`: SoftHSM up to 2.6 (its `SessionObjectStore::deleteObject` leaves the
/// object in `allObjects`). Measured with SoftHSM 2.6.1: about 1 KiB per handshake with
/// token ephemerals (three objects each), see BENCHMARKS.md.
pub fn keeps_destroyed_objects(library_manufacturer: &str, major: u8, minor: u8) -> bool {
    library_manufacturer.trim() == "SoftHSM" && (major, minor) <= (2, 6)
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.inner.label)
            .field("slot", &self.inner.pool.slot().id())
            .field("sessions", &self.inner.pool.size())
            .finish_non_exhaustive()
    }
}

/// One loaded module: the context and the environment it was initialised with.
struct Module {
    pkcs11: Pkcs11,
    env: BTreeMap<String, String>,
}

/// One `Pkcs11` per module path per process: `C_Initialize` may run once, and modules such
/// as SoftHSM read their configuration (`SOFTHSM2_CONF`) only then.
static MODULES: OnceLock<Mutex<HashMap<PathBuf, Module>>> = OnceLock::new();

/// Loads and initialises `module` once per process, after setting `env` in the process
/// environment. A later call for the same module with a different value of one of those
/// variables is refused: the module would silently keep the first one.
pub(crate) fn load_module(
    module: &Path,
    env: &BTreeMap<String, String>,
) -> Result<Pkcs11, TokenError> {
    let mut modules = MODULES
        .get_or_init(Default::default)
        .lock()
        .unwrap_or_else(|e| e.into_inner());
    if let Some(m) = modules.get(module) {
        for (k, v) in env {
            let in_effect = m.env.get(k).cloned().or_else(|| std::env::var(k).ok());
            if in_effect.as_deref() != Some(v.as_str()) {
                return Err(TokenError::Module {
                    module: module.display().to_string(),
                    reason: format!(
                        "already initialised in this process with {k}={}; cannot switch to {v:?} \
                         (start another process)",
                        in_effect.as_deref().unwrap_or("(unset)")
                    ),
                });
            }
        }
        return Ok(m.pkcs11.clone());
    }
    for (k, v) in env {
        // Edition 2021: safe. This runs before the module reads its environment, under the
        // registry lock; the service opens its token before starting worker threads.
        std::env::set_var(k, v);
    }
    let err = |reason: String| TokenError::Module {
        module: module.display().to_string(),
        reason,
    };
    let pkcs11 = Pkcs11::new(module).map_err(|e| err(e.to_string()))?;
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
        Err(e) => return Err(err(format!("C_Initialize: {e}"))),
    }
    modules.insert(
        module.to_path_buf(),
        Module {
            pkcs11: pkcs11.clone(),
            env: env.clone(),
        },
    );
    Ok(pkcs11)
}

/// C_Finalize then C_Initialize on a module that failed (token/pool.rs). A module that
/// already lost its initialisation answers C_Finalize with CKR_CRYPTOKI_NOT_INITIALIZED.
pub(crate) fn reinitialize_module(pkcs11: &Pkcs11) -> Result<(), TokenError> {
    match pkcs11.clone().finalize() {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiNotInitialized, _)) => {}
        Err(e) => tracing::warn!(error = %e, "C_Finalize failed; initialising again anyway"),
    }
    match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
        Err(e) => Err(TokenError::pkcs11("C_Initialize", e)),
    }
}

/// Finds the one slot holding an initialised token with this label.
fn find_slot(pkcs11: &Pkcs11, label: &str) -> Result<Slot, TokenError> {
    let slots = pkcs11
        .get_slots_with_initialized_token()
        .map_err(|e| TokenError::pkcs11("C_GetSlotList", e))?;
    let mut found = Vec::new();
    for slot in slots {
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| TokenError::pkcs11("C_GetTokenInfo", e))?;
        if info.label() == label {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [] => Err(TokenError::TokenNotFound(label.to_owned())),
        [slot] => Ok(*slot),
        _ => Err(TokenError::Other(format!(
            "{} tokens are labelled {label:?}; labels must be unique",
            found.len()
        ))),
    }
}

/// Reads the user PIN from `pin_env` (first) or `pin_file`: never from the configuration.
fn read_pin(cfg: &TokenConfig) -> Result<AuthPin, TokenError> {
    let mut why = Vec::new();
    if let Some(var) = &cfg.pin_env {
        match std::env::var(var) {
            Ok(v) if !v.is_empty() => {
                let v = Zeroizing::new(v);
                return Ok(AuthPin::from(v.as_str()));
            }
            Ok(_) => why.push(format!("environment variable {var} is empty")),
            Err(_) => why.push(format!("environment variable {var} is not set")),
        }
    }
    if let Some(path) = &cfg.pin_file {
        let text = Zeroizing::new(
            std::fs::read_to_string(path)
                .map_err(|e| TokenError::Pin(format!("{}: {e}", path.display())))?,
        );
        warn_if_readable_by_others(path);
        let line = text
            .lines()
            .next()
            .unwrap_or_default()
            .trim_end_matches('\r');
        if line.is_empty() {
            return Err(TokenError::Pin(format!("{}: empty", path.display())));
        }
        return Ok(AuthPin::from(line));
    }
    if why.is_empty() {
        why.push("set [token] pin_env or pin_file".to_owned());
    }
    Err(TokenError::Pin(why.join("; ")))
}

#[cfg(unix)]
fn warn_if_readable_by_others(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(meta) = std::fs::metadata(path) {
        if meta.permissions().mode() & 0o077 != 0 {
            tracing::warn!(
                file = %path.display(),
                "the PIN file is readable by group or others; chmod 600 it"
            );
        }
    }
}

#[cfg(not(unix))]
fn warn_if_readable_by_others(_: &Path) {}

fn login(session: &Session, pin: &AuthPin, label: &str) -> Result<(), TokenError> {
    match session.login(UserType::User, Some(pin)) {
        Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => Ok(()),
        Err(CkError::Pkcs11(rv, _)) => Err(TokenError::Login {
            label: label.to_owned(),
            reason: match rv {
                RvError::PinIncorrect => "incorrect user PIN (CKR_PIN_INCORRECT)".to_owned(),
                RvError::PinLocked => "the user PIN is locked (CKR_PIN_LOCKED)".to_owned(),
                RvError::UserPinNotInitialized => {
                    "the user PIN is not initialised (CKR_USER_PIN_NOT_INITIALIZED)".to_owned()
                }
                other => format!("C_Login: {other:?}"),
            },
        }),
        Err(e) => Err(TokenError::Login {
            label: label.to_owned(),
            reason: e.to_string(),
        }),
    }
}

/// Initialises the token in the first uninitialised slot of `module` with this label, SO
/// PIN and user PIN (for `init-dev` and tests; a production token is initialised by its
/// owner's tools). Returns nothing: open it with [`Token::open`].
pub fn initialize_token(
    module: &Path,
    module_env: &BTreeMap<String, String>,
    label: &str,
    so_pin: &str,
    user_pin: &str,
) -> Result<(), TokenError> {
    if label.is_empty() || label.len() > 32 {
        return Err(TokenError::Other(format!(
            "token label {label:?} must be 1 to 32 bytes"
        )));
    }
    let pkcs11 = load_module(module, module_env)?;
    // One initialisation at a time: SoftHSM shows a single free slot, which a concurrent
    // initialisation would take.
    static INIT: Mutex<()> = Mutex::new(());
    let _one = INIT.lock().unwrap_or_else(|e| e.into_inner());
    if find_slot(&pkcs11, label).is_ok() {
        return Err(TokenError::Other(format!(
            "a token labelled {label:?} already exists"
        )));
    }
    let slots = pkcs11
        .get_slots_with_token()
        .map_err(|e| TokenError::pkcs11("C_GetSlotList", e))?;
    let mut free = None;
    for slot in slots {
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| TokenError::pkcs11("C_GetTokenInfo", e))?;
        if !info.token_initialized() {
            free = Some(slot);
            break;
        }
    }
    let slot = free.ok_or_else(|| {
        TokenError::Other("no slot with an uninitialised token to initialise".to_owned())
    })?;
    let so_pin = AuthPin::from(so_pin);
    pkcs11
        .init_token(slot, &so_pin, label)
        .map_err(|e| TokenError::pkcs11("C_InitToken", e))?;
    // The slot list changes after C_InitToken in SoftHSM: find the token again by label.
    let slot = find_slot(&pkcs11, label)?;
    let session = pkcs11
        .open_rw_session(slot)
        .map_err(|e| TokenError::pkcs11("C_OpenSession", e))?;
    session
        .login(UserType::So, Some(&so_pin))
        .map_err(|e| TokenError::pkcs11("C_Login(SO)", e))?;
    session
        .init_pin(&AuthPin::from(user_pin))
        .map_err(|e| TokenError::pkcs11("C_InitPIN", e))?;
    session
        .logout()
        .map_err(|e| TokenError::pkcs11("C_Logout", e))?;
    Ok(())
}

impl Token {
    /// Opens the token `cfg` names and logs in a pool of `cfg.pool_size` read-write sessions
    /// (0 = twice the number of CPUs).
    ///
    /// PKCS#11 login state belongs to the application: while another `Token` of this process
    /// is open on the same token, `C_Login` answers CKR_USER_ALREADY_LOGGED_IN without
    /// looking at the PIN. The service opens one `Token` per process.
    pub fn open(cfg: &TokenConfig) -> Result<Token, TokenError> {
        let pkcs11 = load_module(&cfg.module, &cfg.module_env)?;
        let slot = find_slot(&pkcs11, &cfg.label)?;
        let info = pkcs11
            .get_token_info(slot)
            .map_err(|e| TokenError::pkcs11("C_GetTokenInfo", e))?;
        let mechanisms = pkcs11
            .get_mechanism_list(slot)
            .map_err(|e| TokenError::pkcs11("C_GetMechanismList", e))?;
        let size = if cfg.pool_size == 0 {
            2 * std::thread::available_parallelism().map_or(1, |n| n.get())
        } else {
            cfg.pool_size
        };
        let library = pkcs11
            .get_library_info()
            .map_err(|e| TokenError::pkcs11("C_GetInfo", e))?;
        let keeps_destroyed_objects = keeps_destroyed_objects(
            library.manufacturer_id(),
            library.library_version().major(),
            library.library_version().minor(),
        );
        let pin = read_pin(cfg)?;
        let mut sessions = Vec::with_capacity(size);
        for _ in 0..size {
            let s = pkcs11
                .open_rw_session(slot)
                .map_err(|e| TokenError::pkcs11("C_OpenSession", e))?;
            // Login state is per application and token: the first login covers every session;
            // the others get UserAlreadyLoggedIn, which is fine.
            login(&s, &pin, &cfg.label)?;
            sessions.push(s);
        }
        drop(pin);
        let x25519 = ephemeral::X25519Route::from_mechanisms(&mechanisms);
        let recycle = RecyclePolicy {
            after_objects: cfg.recycle_threshold(keeps_destroyed_objects),
            drain: std::time::Duration::from_millis(cfg.recycle_drain_ms),
        };
        tracing::info!(
            token = %cfg.label,
            slot = slot.id(),
            sessions = size,
            recycle_after_objects = recycle.after_objects,
            "token opened"
        );
        Ok(Token {
            inner: Arc::new(Inner {
                pool: SessionPool::new(pkcs11.clone(), cfg.clone(), slot, sessions, recycle),
                pkcs11,
                label: cfg.label.clone(),
                manufacturer: info.manufacturer_id().to_owned(),
                model: info.model().to_owned(),
                serial: info.serial_number().to_owned(),
                mechanisms,
                sealing_label: cfg.sealing_key.clone(),
                sealing_key: Mutex::new(None),
                signing_keys: Mutex::new(HashMap::new()),
                x25519,
                keeps_destroyed_objects,
            }),
        })
    }

    /// Whether the module keeps every destroyed session object's memory until the process
    /// ends ([`keeps_destroyed_objects`]): token ephemerals then grow the CS by each handshake.
    pub fn keeps_destroyed_objects(&self) -> bool {
        self.inner.keeps_destroyed_objects
    }

    /// The planned module recycle's figures (token/pool/recycle.rs). Reads memory only.
    pub fn recycle_stats(&self) -> RecycleStats {
        self.inner.pool.recycle_stats()
    }

    /// Admits token key generations on this thread until the admission drops: a planned
    /// module recycle waits for it, and the key pairs it makes (one per `generate_ephemeral`)
    /// are never kept waiting by a recycle that would wait for their siblings. Take one for
    /// every key pair one request makes; waits while a recycle is under way.
    pub fn admit_ephemerals(&self) -> Result<EphemeralAdmission<'_>, TokenError> {
        self.inner.pool.admit()
    }

    /// [`admit_ephemerals`](Self::admit_ephemerals) for a request about to run on a blocking
    /// thread: waits on the async side (see [`AsyncAdmission`]).
    pub async fn admit_ephemerals_async(&self) -> Result<AsyncAdmission, TokenError> {
        AsyncAdmission::take(self).await
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.inner.label
    }

    /// The mechanisms the token lists.
    pub fn mechanisms(&self) -> &[MechanismType] {
        &self.inner.mechanisms
    }

    /// Number of sessions in the pool.
    pub fn pool_size(&self) -> usize {
        self.inner.pool.size()
    }

    /// A session of the pool for the caller's exclusive use until the guard drops. Never
    /// hold one while calling another `Token` method (the pool may be empty).
    pub(crate) fn session(&self) -> Result<PooledSession<'_>, TokenError> {
        self.session_for(TokenOp::OTHER)
    }

    /// [`session`](Self::session) for `op`: the one place token calls are measured (the
    /// wait, the time held under `op`, the exchange's token time; `telemetry::TokenCall`).
    pub(crate) fn session_for(&self, op: TokenOp) -> Result<PooledSession<'_>, TokenError> {
        let mut call = TokenCall::start(op);
        let mut session = self.inner.pool.checkout()?;
        call.checked_out();
        session.measured_by(call);
        Ok(session)
    }

    /// The session pool now (for the metrics).
    pub fn pool_usage(&self) -> PoolUsage {
        self.inner.pool.usage()
    }

    pub(crate) fn pkcs11(&self) -> &Pkcs11 {
        &self.inner.pkcs11
    }

    pub(crate) fn slot(&self) -> Slot {
        self.inner.pool.slot()
    }

    /// Random bytes from the token's generator.
    pub fn random(&self, n: usize) -> Result<Zeroizing<Vec<u8>>, TokenError> {
        let mut out = Zeroizing::new(vec![0u8; n]);
        let session = self.session()?;
        session
            .generate_random_slice(&mut out)
            .map_err(session.fail("C_GenerateRandom"))?;
        Ok(out)
    }

    /// Whether the token is up: no failure seen since it was opened or last recovered.
    /// Reads memory only (no token call); see [`probe`](Self::probe) for a live check.
    pub fn healthy(&self) -> bool {
        self.inner.pool.healthy()
    }

    /// A cheap live check for a health service: takes a pooled session and asks the token
    /// for its state (C_GetSessionInfo), which must be a logged-in read-write session. A
    /// token that is down answers [`TokenError::Unavailable`] at once, or is re-initialised
    /// here when its backoff delay has passed, like an exchange would (token/pool.rs).
    pub fn probe(&self) -> Result<(), TokenError> {
        let session = self.session_for(TokenOp::PROBE)?;
        let info = session
            .get_session_info()
            .map_err(session.fail("C_GetSessionInfo"))?;
        if info.session_state() != cryptoki::session::SessionState::RwUser {
            return Err(session.error(
                "C_GetSessionInfo",
                CkError::Pkcs11(
                    RvError::UserNotLoggedIn,
                    cryptoki::context::Function::GetSessionInfo,
                ),
            ));
        }
        Ok(())
    }
}

/// Finds at most one object matching `template`; two or more is an error (`what` names
/// the object in messages).
pub(crate) fn find_one(
    session: &PooledSession<'_>,
    template: &[Attribute],
    what: &dyn fmt::Display,
) -> Result<Option<ObjectHandle>, TokenError> {
    let found = session
        .find_objects(template)
        .map_err(session.fail("C_FindObjects"))?;
    match found.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(*one)),
        many => Err(TokenError::KeyNotFound(format!(
            "{what}: {} objects match; make the name unique (add id=)",
            many.len()
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::{self, TEST_PIN_ENV};
    use super::*;

    #[test]
    fn open_with_pin_from_env_and_from_file() {
        let (token, mut cfg) = testutil::new_token("open-env-file");
        assert_eq!(token.label(), cfg.label);
        assert_eq!(token.pool_size(), cfg.pool_size);
        // From the environment (the fixture's config uses pin_env).
        assert_eq!(cfg.pin_env.as_deref(), Some(TEST_PIN_ENV));
        drop(token);
        // From a file, with pin_env unset.
        cfg.pin_env = None;
        cfg.pin_file = Some(testutil::fixture().pin_file.clone());
        cfg.pool_size = 0;
        let token = Token::open(&cfg).unwrap();
        assert!(token.pool_size() >= 2);
        assert_eq!(token.random(16).unwrap().len(), 16);
        // An env var that is not set falls back to the file.
        cfg.pin_env = Some("LURK_TEST_UNSET_PIN_VARIABLE".to_owned());
        assert!(Token::open(&cfg).is_ok());
    }

    /// The module's own version decides: SoftHSM up to 2.6 keeps destroyed session objects
    /// (checked against the installed `softhsm2-util --version`), other modules do not.
    #[test]
    fn modules_that_keep_destroyed_objects_are_recognised() {
        assert!(keeps_destroyed_objects("SoftHSM", 2, 6));
        assert!(keeps_destroyed_objects(
            "SoftHSM                         ",
            2,
            5
        ));
        assert!(!keeps_destroyed_objects("SoftHSM", 2, 7));
        assert!(!keeps_destroyed_objects("SoftHSM", 3, 0));
        assert!(!keeps_destroyed_objects("Thales", 2, 6));
        let (token, _) = testutil::new_token("keeps-destroyed");
        let out = std::process::Command::new("softhsm2-util")
            .arg("--version")
            .output()
            .expect("softhsm2-util");
        let version = String::from_utf8_lossy(&out.stdout);
        let mut parts = version.trim().split('.').map(|p| p.parse::<u8>().unwrap());
        let (major, minor) = (parts.next().unwrap(), parts.next().unwrap());
        assert_eq!(
            token.keeps_destroyed_objects(),
            (major, minor) <= (2, 6),
            "{version}"
        );
    }

    #[test]
    fn wrong_pin_is_a_login_error() {
        let (token, mut cfg) = testutil::new_token("wrong-pin");
        // While a session is logged in, C_Login answers CKR_USER_ALREADY_LOGGED_IN before
        // looking at the PIN: close the first Token's sessions.
        drop(token);
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pin");
        std::fs::write(&path, "not-the-pin\n").unwrap();
        cfg.pin_env = None;
        cfg.pin_file = Some(path);
        let err = Token::open(&cfg).unwrap_err();
        assert!(
            matches!(&err, TokenError::Login { reason, .. } if reason.contains("incorrect user PIN")),
            "{err}"
        );
        assert!(!err.to_string().contains("not-the-pin"));
    }

    #[test]
    fn missing_pin_and_unknown_token_are_clear() {
        let (_token, mut cfg) = testutil::new_token("missing-pin");
        cfg.pin_env = Some("LURK_TEST_UNSET_PIN_VARIABLE".to_owned());
        let err = Token::open(&cfg).unwrap_err();
        assert!(
            matches!(err, TokenError::Pin(ref m) if m.contains("LURK_TEST_UNSET_PIN_VARIABLE"))
        );
        cfg.label = "no-such-token".to_owned();
        assert!(matches!(
            Token::open(&cfg).unwrap_err(),
            TokenError::TokenNotFound(_)
        ));
    }

    #[test]
    fn switching_module_env_in_one_process_is_refused() {
        let (_token, mut cfg) = testutil::new_token("switch-env");
        cfg.module_env.insert(
            "SOFTHSM2_CONF".to_owned(),
            "/somewhere/else/softhsm2.conf".to_owned(),
        );
        let err = Token::open(&cfg).unwrap_err();
        assert!(matches!(err, TokenError::Module { .. }), "{err}");
        // The value in effect is accepted.
        cfg.module_env.insert(
            "SOFTHSM2_CONF".to_owned(),
            testutil::fixture().conf.display().to_string(),
        );
        Token::open(&cfg).unwrap();
    }

    /// Logging the application out behind the pool's back (what a token reset does): the
    /// call that meets it fails as `Unavailable`, its session is closed, the other idle
    /// sessions are checked before use, and a fresh session is logged in; the module is not
    /// re-initialised for a session fault, and a key pair whose session died is refused.
    #[test]
    fn a_logged_out_session_is_replaced_by_a_fresh_logged_in_one() {
        use lurk_proto::wire::NamedGroup;
        let (token, _cfg) = testutil::new_token("relogin");
        token.ensure_sealing_key().unwrap();
        let sealed = token.seal(b"aad", b"psk").unwrap();
        let eph = token.generate_ephemeral(NamedGroup::Secp256r1).unwrap();
        token.probe().unwrap();
        token.session().unwrap().logout().unwrap();

        let err = token.seal(b"aad", b"psk").unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)), "{err}");
        // A session fault: the token stays up, no re-initialisation.
        assert!(token.healthy());
        assert_eq!(token.inner.pool.generation(), 0);
        assert_eq!(&token.unseal(b"aad", &sealed).unwrap()[..], b"psk");
        token.probe().unwrap();
        // Every session of the old login was dropped, so the key pair's objects are gone:
        // refused, never derived from a stale handle.
        let err = token.derive_ephemeral(eph, &[4u8; 65]).unwrap_err();
        assert!(matches!(err, TokenError::Unavailable(_)), "{err}");
        assert_eq!(token.count_session_objects(), 0);
        // And the pool refills on demand.
        std::thread::scope(|s| {
            for _ in 0..2 * token.pool_size() {
                s.spawn(|| token.random(8).unwrap());
            }
        });
        assert!(token.inner.pool.idle() <= token.pool_size());
    }

    /// A session opened after every other one closed logs in afresh, and SoftHSM then names
    /// private objects by new handles: a handle cached before must not be reused by it, even
    /// when its opening was reserved before the last close (the e2e token_fault race).
    #[test]
    fn a_session_opened_after_the_last_one_closed_looks_its_handles_up_again() {
        let (token, _cfg) = testutil::new_token("relogin-race");
        token.ensure_sealing_key().unwrap();
        token.seal(b"aad", b"psk").unwrap();
        // Leave one open session, idle, and a sealing-key handle cached under its epoch.
        let held: Vec<_> = (0..token.pool_size())
            .map(|_| token.session().unwrap())
            .collect();
        for s in &held[1..] {
            s.fault.set(Some(pool::Fault::Session));
        }
        drop(held);
        token.seal(b"aad", b"psk").unwrap();
        assert_eq!(token.inner.pool.idle(), 1);
        let last = token.session().unwrap();

        // The next checkout reserves a new session; before it opens it, the last open one
        // closes on a fault, which logs the token out.
        let (reserved_tx, reserved) = std::sync::mpsc::channel();
        let (go, go_rx) = std::sync::mpsc::channel::<()>();
        token.inner.pool.before_next_open(move || {
            reserved_tx.send(()).unwrap();
            go_rx.recv().unwrap();
        });
        std::thread::scope(|s| {
            let sealer = s.spawn(|| token.seal(b"aad", b"psk"));
            reserved.recv().unwrap();
            last.fault.set(Some(pool::Fault::Session));
            drop(last);
            go.send(()).unwrap();
            let sealed = sealer.join().unwrap().unwrap();
            assert_eq!(&token.unseal(b"aad", &sealed).unwrap()[..], b"psk");
        });
    }

    #[test]
    fn pool_serves_more_threads_than_sessions() {
        let (token, _cfg) = testutil::new_token("pool-threads");
        assert_eq!(token.inner.pool.idle(), token.pool_size());
        std::thread::scope(|s| {
            for _ in 0..3 * token.pool_size() {
                s.spawn(|| {
                    for _ in 0..20 {
                        token.random(32).unwrap();
                    }
                });
            }
        });
        assert_eq!(token.inner.pool.idle(), token.pool_size());
    }

    /// One engine holds every session and waits with more exchanges; another engine's
    /// exchange, which came last, gets the first session back (fair.rs).
    #[test]
    fn a_freed_session_goes_to_the_engine_holding_none_before_another_engines_backlog() {
        let (token, _cfg) = testutil::new_token("pool-fair");
        let size = token.pool_size();
        let waiting = |n: usize| {
            while token.pool_usage().waiting != n {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
        };
        let order = Mutex::new(Vec::new());
        let (release, held) = std::sync::mpsc::channel::<()>();
        let held = Mutex::new(held);
        std::thread::scope(|s| {
            let (took, all_taken) = std::sync::mpsc::channel();
            for _ in 0..size {
                let (token, held, took) = (&token, &held, took.clone());
                s.spawn(move || {
                    let _c = Caller::enter("flood");
                    let session = token.session().unwrap();
                    took.send(()).unwrap();
                    held.lock().unwrap().recv().unwrap();
                    drop(session);
                });
            }
            (0..size).for_each(|_| all_taken.recv().unwrap());
            // Each waiter notes its turn while it holds the session.
            let wait_as = |engine: &'static str| {
                let (token, order) = (&token, &order);
                move || {
                    let _c = Caller::enter(engine);
                    let _session = token.session().unwrap();
                    order.lock().unwrap().push(engine);
                }
            };
            for n in 1..=3 {
                s.spawn(wait_as("flood"));
                waiting(n);
            }
            s.spawn(wait_as("quiet"));
            waiting(4);
            // One session comes back and goes round the waiters, one at a time.
            release.send(()).unwrap();
            while order.lock().unwrap().len() < 4 {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            (1..size).for_each(|_| release.send(()).unwrap());
        });
        assert_eq!(*order.lock().unwrap(), ["quiet", "flood", "flood", "flood"]);
        assert_eq!(token.pool_usage().in_use, 0);
        assert!(token.inner.pool.fair_is_empty());
    }
}
