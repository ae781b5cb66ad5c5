//! The engine + CS pair for the interop tests.
//!
//! [`lurk_env`] builds, once per test process, a CS set-up (`lurk-cs token init-dev`) whose
//! token also holds the test PKI's three client keys (imported with `lurk-cs keys import`,
//! signed by ca-ecdsa, so `s_server -Verify 1 -CAfile ca-ecdsa.pem` accepts them) and whose
//! store holds the test PKI's external PSK (`lurk-cs psk import`). Each test then starts its
//! own `lurk-cs serve` on it ([`Lurk::start`]), killed by PID when the test ends: SQLite
//! (WAL, busy timeout) and SoftHSM's file store take several processes.

use std::ffi::OsStr;
use std::process::Command;
use std::sync::{Mutex, OnceLock};

use crate::engine::{EngineConnect, EngineRun, Output};
use crate::openssl::{certs, path_str, SServer};
use crate::{scratch_dir, workspace_bin, CsProcess, DevSetup};

/// Client keys imported into the token: (key id for `--client-key` = token label, make-certs
/// name, object id, the CN the server prints). init-dev's own keys are `ed25519` / `p256`
/// (labels `client-ed25519` / `client-p256`, ids 01 / 02, self-signed: not for s_server).
pub const CLIENT_KEYS: [(&str, &str, &str, &str); 3] = [
    (
        "pki-ecdsa-p256",
        "client-ecdsa-p256",
        "a1",
        "test-client-ecdsa",
    ),
    ("pki-rsa", "client-rsa", "a2", "test-client-rsa"),
    ("pki-ed25519", "client-ed25519", "a3", "test-client-ed25519"),
];

/// The CS set-up shared by the tests of one process.
pub struct LurkEnv {
    pub setup: DevSetup,
}

fn lurk_cs(args: &[&OsStr]) -> String {
    let out = Command::new(workspace_bin("lurk-cs"))
        .args(args)
        .output()
        .expect("run lurk-cs");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "lurk-cs {args:?} failed:\n{text}");
    text
}

/// The shared set-up (made on first use).
pub fn lurk_env() -> &'static LurkEnv {
    static ENV: OnceLock<LurkEnv> = OnceLock::new();
    ENV.get_or_init(|| {
        let c = certs();
        let setup = DevSetup::new_in(&scratch_dir("cs"));
        let config = setup.config_path();
        for (label, name, id, _) in CLIENT_KEYS {
            let key = c.key(name);
            let cert = c.pem(name);
            let out = lurk_cs(&[
                "keys".as_ref(),
                "import".as_ref(),
                "--config".as_ref(),
                config.as_os_str(),
                "--label".as_ref(),
                label.as_ref(),
                "--id".as_ref(),
                id.as_ref(),
                "--key".as_ref(),
                key.as_os_str(),
                "--cert".as_ref(),
                cert.as_os_str(),
            ]);
            let block = out
                .find("[[keys]]")
                .map(|i| &out[i..])
                .unwrap_or_else(|| panic!("lurk-cs keys import printed no [[keys]] block:\n{out}"));
            setup.append_config(&format!("\n{}", block.trim_end()));
        }
        let psk_file = c.psk_key_file();
        lurk_cs(&[
            "psk".as_ref(),
            "import".as_ref(),
            "--config".as_ref(),
            config.as_os_str(),
            "--identity".as_ref(),
            c.psk_identity.as_ref(),
            "--key-file".as_ref(),
            psk_file.as_os_str(),
            "--all-engines".as_ref(),
        ]);
        LurkEnv { setup }
    })
}

/// One test's CS process and the engine options that go with it.
pub struct Lurk {
    pub cs: CsProcess,
}

impl Lurk {
    /// Starts a `lurk-cs serve` on the shared set-up.
    ///
    /// Starts are serialized within the process and retried: SoftHSM writes the token's
    /// file store at C_Login, and a CS logging in while another one does failed now and then
    /// with CKR_GENERAL_ERROR (C_Login, C_GetSlotList/C_GetTokenInfo; about 1 run in 5 with
    /// 34 tests on 2 cores).
    pub fn start() -> Lurk {
        Self::start_with_env(&[])
    }

    /// [`start`](Self::start) with `LURK_*` configuration overrides
    /// (`LURK_SERVER_AUTH__ENABLED=true`, ...).
    pub fn start_with_env(vars: &[(&str, &str)]) -> Lurk {
        static START: Mutex<()> = Mutex::new(());
        let env = lurk_env();
        let _one_at_a_time = START.lock().unwrap_or_else(|p| p.into_inner());
        let mut errors = Vec::new();
        for _ in 0..3 {
            match env.setup.try_start_with_env(vars) {
                Ok(cs) => return Lurk { cs },
                Err(e) => errors.push(e),
            }
        }
        panic!("{}", errors.join("\n--- retry ---\n"))
    }

    /// `--cs … --cs-ca … --cs-cert … --cs-key … --ca ca-all.pem` (identity `engine`).
    pub fn engine_args(&self) -> Vec<String> {
        let mut a = self.cs.engine_args("engine");
        a.push("--ca".into());
        a.push(path_str(&certs().ca_all()));
        a
    }

    /// `--cs … --cs-ca … --cs-cert … --cs-key …` only (no `--ca`).
    pub fn cs_args(&self) -> Vec<String> {
        self.cs.engine_args("engine")
    }

    fn with(&self, extra: &[&str]) -> Vec<String> {
        let mut a = self.engine_args();
        a.extend(extra.iter().map(|s| s.to_string()));
        a
    }

    /// `lurk-engine get https://localhost:PORT/ --json` + CS and trust options + `extra`.
    pub fn get(&self, server: &SServer, extra: &[&str]) -> Output {
        EngineRun::get(&server.url(), &self.with(extra))
    }

    /// [`get`](Self::get), left running.
    pub fn spawn_get(&self, server: &SServer, extra: &[&str]) -> crate::engine::EngineProc {
        EngineRun::spawn_get(&server.url(), &self.with(extra))
    }

    /// `lurk-engine connect localhost:PORT` + CS and trust options + `extra`.
    pub fn connect(&self, server: &SServer, extra: &[&str]) -> EngineConnect {
        EngineConnect::spawn(&server.host_port(), &self.with(extra))
    }
}
