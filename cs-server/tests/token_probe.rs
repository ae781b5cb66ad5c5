//! `Token::probe` and `Token::healthy` as a health service reads them, against a real module
//! that really fails: the test-only fault shim (tests/p11-fault-shim) in front of SoftHSM.
//! In a test binary of its own: re-initialising the module would disturb the tokens of
//! the other tests of a process.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use lurk_cs::config::TokenConfig;
use lurk_cs::error::TokenError;
use lurk_cs::token::{initialize_token, Token};

/// `target/<profile>/liblurk_p11_fault_shim.so`.
fn shim() -> PathBuf {
    let exe = std::env::current_exe().unwrap();
    let so = exe
        .parent()
        .and_then(|d| d.parent())
        .unwrap()
        .join("liblurk_p11_fault_shim.so");
    assert!(
        so.exists(),
        "{} not found: run `cargo build -p lurk-p11-fault-shim` first (scripts/test.sh does)",
        so.display()
    );
    so
}

fn unavailable(r: Result<(), TokenError>) -> String {
    match r {
        Err(TokenError::Unavailable(m)) => m,
        other => panic!("expected Unavailable, got {other:?}"),
    }
}

/// Probes until the token answers; every failure on the way must be `Unavailable`.
fn until_healthy(token: &Token) {
    let start = Instant::now();
    while let Err(e) = token.probe() {
        assert!(matches!(e, TokenError::Unavailable(_)), "{e}");
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the token did not come back"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(token.healthy());
}

#[test]
fn probe_reports_a_failing_token_and_drives_its_recovery() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = dir.path().join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            tokens.display()
        ),
    )
    .unwrap();
    let control = dir.path().join("faults");
    std::fs::write(&control, "").unwrap();
    // Set before the module is loaded, in the only test of this process.
    std::env::set_var("LURK_P11_FAULT_FILE", &control);
    let pin_file = dir.path().join("pin");
    std::fs::write(&pin_file, "probe-user-pin\n").unwrap();
    let module = shim();
    let env = BTreeMap::from([("SOFTHSM2_CONF".to_owned(), conf.display().to_string())]);
    initialize_token(&module, &env, "probe", "probe-so-pin", "probe-user-pin").unwrap();
    let token = Token::open(&TokenConfig {
        module,
        label: "probe".to_owned(),
        pin_env: None,
        pin_file: Some(pin_file.clone()),
        pool_size: 2,
        sealing_key: "probe-seal".to_owned(),
        module_env: env,
        recycle_after_objects: None,
        recycle_drain_ms: 3000,
    })
    .unwrap();
    token.probe().unwrap();
    assert!(token.healthy());

    // A session fault: the probe fails, the token stays up, the next probe is served on a
    // fresh session at once.
    std::fs::write(&control, "CKR_SESSION_HANDLE_INVALID C_GetSessionInfo\n").unwrap();
    unavailable(token.probe());
    assert!(token.healthy());
    std::fs::write(&control, "").unwrap();
    token.probe().unwrap();

    // A device fault: down until the module is re-initialised; probes drive it.
    std::fs::write(&control, "CKR_DEVICE_REMOVED C_GetSessionInfo\n").unwrap();
    unavailable(token.probe());
    assert!(!token.healthy());
    unavailable(token.probe());
    std::fs::write(&control, "").unwrap();
    until_healthy(&token);
    assert_eq!(token.random(16).unwrap().len(), 16);

    // SoftHSM itself loses its state (finalised under us): CKR_CRYPTOKI_NOT_INITIALIZED
    // from the real module, then a re-initialisation, and the token's keys work again.
    token.ensure_sealing_key().unwrap();
    let sealed = token.seal(b"aad", b"psk").unwrap();
    std::fs::write(&control, "finalize 1\n").unwrap();
    unavailable(token.probe());
    assert!(!token.healthy());
    until_healthy(&token);
    assert_eq!(&token.unseal(b"aad", &sealed).unwrap()[..], b"psk");

    // The token refuses the PIN while recovering (as after a reset with a new PIN): that
    // PIN is not tried again, so a token that locks PINs after a few failures keeps it,
    // until the PIN file changes.
    std::fs::write(
        &control,
        "CKR_DEVICE_ERROR C_GetSessionInfo\nCKR_PIN_INCORRECT C_Login\n",
    )
    .unwrap();
    let start = Instant::now();
    while !unavailable(token.probe()).contains("refused the user PIN") {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "no login attempt"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::fs::write(&control, "").unwrap();
    // Longer than the backoff delay by now (1.6 s): a retry would have succeeded.
    std::thread::sleep(Duration::from_millis(3500));
    assert!(unavailable(token.probe()).contains("refused the user PIN"));
    assert!(!token.healthy());
    std::fs::write(&pin_file, "probe-user-pin\n").unwrap();
    until_healthy(&token);
}
