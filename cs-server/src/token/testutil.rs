//! Test fixture: one private SoftHSM configuration per test process (C_Initialize reads
//! `SOFTHSM2_CONF` once), and one fresh token per test, so that tests run in parallel
//! without seeing each other's objects.
//!
//! The token directory is a temporary directory kept for the life of the process (a static
//! is never dropped, so nothing removes it at exit); the next test process removes those
//! older than an hour.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

use cryptoki::object::{Attribute, AttributeInfo, AttributeType, ObjectHandle};
use cryptoki::session::Session;

use super::{initialize_token, load_module, Token};
use crate::config::TokenConfig;

pub(crate) const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
/// The user PIN of every test token, also in [`TEST_PIN_ENV`] and in `Fixture::pin_file`.
pub(crate) const TEST_PIN: &str = "lurk-test-user-pin";
pub(crate) const TEST_PIN_ENV: &str = "LURK_TEST_TOKEN_PIN";
const TEST_SO_PIN: &str = "lurk-test-so-pin";

pub(crate) struct Fixture {
    pub(crate) conf: PathBuf,
    pub(crate) pin_file: PathBuf,
}

pub(crate) fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        remove_stale_fixtures();
        let dir = tempfile::Builder::new()
            .prefix(PREFIX)
            .tempdir()
            .expect("temp dir")
            .keep();
        let tokens = dir.join("tokens");
        std::fs::create_dir(&tokens).unwrap();
        let conf = dir.join("softhsm2.conf");
        std::fs::write(
            &conf,
            format!(
                "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
                tokens.display()
            ),
        )
        .unwrap();
        let pin_file = dir.join("pin");
        std::fs::write(&pin_file, format!("{TEST_PIN}\n")).unwrap();
        // Set before the module is initialised (below), once, before any test thread
        // reads the environment through the token code.
        std::env::set_var(TEST_PIN_ENV, TEST_PIN);
        let env = BTreeMap::from([("SOFTHSM2_CONF".to_owned(), conf.display().to_string())]);
        load_module(SOFTHSM_MODULE.as_ref(), &env).expect("load SoftHSM");
        Fixture { conf, pin_file }
    })
}

const PREFIX: &str = "lurk-softhsm-test-";

/// Removes fixture directories of earlier test processes (older than an hour, so that a
/// concurrent test process keeps its own).
fn remove_stale_fixtures() {
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let old = e
            .metadata()
            .and_then(|m| m.modified())
            .ok()
            .and_then(|t| t.elapsed().ok())
            .is_some_and(|age| age.as_secs() > 3600);
        if old && e.file_name().to_string_lossy().starts_with(PREFIX) {
            let _ = std::fs::remove_dir_all(e.path());
        }
    }
}

/// A fresh token for one test, opened with a 4-session pool and the PIN from the
/// environment. Labels are unique per process.
pub(crate) fn new_token(name: &str) -> (Token, TokenConfig) {
    static N: AtomicUsize = AtomicUsize::new(0);
    fixture();
    let n = N.fetch_add(1, Ordering::Relaxed);
    let mut label = format!("{n}-{name}");
    label.truncate(32);
    initialize_token(
        SOFTHSM_MODULE.as_ref(),
        &BTreeMap::new(),
        &label,
        TEST_SO_PIN,
        TEST_PIN,
    )
    .expect("initialise a test token");
    let cfg = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        label,
        pin_env: Some(TEST_PIN_ENV.to_owned()),
        pin_file: None,
        pool_size: 4,
        sealing_key: "lurk-ticket-seal".to_owned(),
        module_env: BTreeMap::new(),
        recycle_after_objects: None,
        recycle_drain_ms: 3000,
    };
    let token = Token::open(&cfg).expect("open the test token");
    (token, cfg)
}

/// Asserts that the token refuses to reveal `attr` of `handle` (sensitive or absent).
pub(crate) fn assert_value_unreadable(
    session: &Session,
    handle: ObjectHandle,
    attr: AttributeType,
) {
    let info = session.get_attribute_info(handle, &[attr]).unwrap();
    assert!(
        matches!(
            info[0],
            AttributeInfo::Sensitive | AttributeInfo::Unavailable | AttributeInfo::TypeInvalid
        ),
        "{attr:?} is readable: {:?}",
        info[0]
    );
    let values = session.get_attributes(handle, &[attr]).unwrap();
    assert!(values.is_empty(), "{attr:?} returned a value");
}

/// Asserts that `handle` is sensitive and not extractable (PKCS#11 3.0 §4.9: its secret
/// value never leaves the token).
pub(crate) fn assert_sensitive_not_extractable(
    session: &Session,
    handle: ObjectHandle,
    what: &str,
) {
    let attrs = session
        .get_attributes(
            handle,
            &[AttributeType::Sensitive, AttributeType::Extractable],
        )
        .unwrap();
    assert!(attrs.contains(&Attribute::Sensitive(true)), "{what}");
    assert!(attrs.contains(&Attribute::Extractable(false)), "{what}");
}
