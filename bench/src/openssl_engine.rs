//! `openssl s_client` authenticating with the client key in the SoftHSM token through
//! OpenSSL's PKCS#11 *engine* (libp11's `libengine-pkcs11-openssl`: Debian packages no pkcs11
//! provider for OpenSSL 3.0), side by side with `openssl s_client` and a software key, against
//! the bench's client-auth server (issue 10 item 5).
//!
//! `s_client` makes one full handshake per process, so each sample is a process:
//! - **with handshake**: spawn to exit of `openssl s_client`: start-up, configuration, the
//!   engine and the token (C_Initialize, login, key lookup), TCP connect, the full handshake
//!   (CertificateVerify signed by the token), one GET, the response to EOF, exit;
//! - **start-up only**: the same command against a closed port: everything up to the key
//!   loaded and the context made, then a refused connect (s_client loads the key first);
//! - **handshake ≈**: the median of the paired differences (a sample of each, back to back).
//!
//! libp11 0.4.12 (Debian 12) cannot list the keys of a token that holds an Ed25519 key ("Unable
//! to enumerate private keys"), and the init-dev token holds one: then the engine rows use a
//! token of their own in the same SoftHSM, holding a P-256 key imported with `softhsm2-util`
//! (the same signing mechanism; the row says which token it used).

use std::fmt::Write as _;
use std::io::Write as _;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::cs_inproc::Fixture;
use crate::handshake::Pki;
use crate::sys::{self, ms, Lat};

type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// The token key label (init-dev) and the dedicated token's label and PIN.
const TOKEN_KEY_LABEL: &str = "client-p256";
const OWN_TOKEN: &str = "lurk-bench-openssl";
const OWN_PIN: &str = "bench-openssl-pin";

/// The SoftHSM token holding the client key `client-p256` (an init-dev token).
pub(crate) struct TokenSetup {
    pub(crate) module: PathBuf,
    pub(crate) label: String,
    pub(crate) pin: String,
    /// The module's environment (`SOFTHSM2_CONF`).
    pub(crate) env: Vec<(String, String)>,
    /// The certificate of `client-p256`.
    pub(crate) cert: PathBuf,
}

impl TokenSetup {
    pub(crate) fn of(fx: &Fixture) -> Result<Self, BoxError> {
        let pin = std::fs::read_to_string(fx.cfg.token.pin_file.as_ref().ok_or("no pin_file")?)?;
        Ok(Self {
            module: fx.cfg.token.module.clone(),
            label: fx.cfg.token.label.clone(),
            pin: pin.lines().next().unwrap_or("").trim().to_owned(),
            env: fx
                .cfg
                .token
                .module_env
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
            cert: fx.dev.join(format!("{TOKEN_KEY_LABEL}.pem")),
        })
    }
}

/// One way of giving `openssl s_client` its client key.
pub(crate) struct KeySpec {
    pub(crate) name: String,
    pub(crate) cert: PathBuf,
    /// A PEM file, or a `pkcs11:` URI read through the engine.
    pub(crate) key: String,
    /// `OPENSSL_CONF` loading the engine (module path, PIN) and the SoftHSM configuration.
    pub(crate) engine: Option<(PathBuf, Vec<(String, String)>)>,
}

/// One sample: wall time, the process's CPU time, whether it did what it should.
struct Sample {
    wall: Duration,
    cpu: Duration,
    ok: bool,
    output: String,
}

fn s_client(spec: &KeySpec, port: u16, ca: &Path) -> Result<Sample, BoxError> {
    let mut c = Command::new("openssl");
    c.arg("s_client")
        .arg("-connect")
        .arg(format!("127.0.0.1:{port}"))
        .args(["-tls1_3", "-ciphersuites", "TLS_AES_128_GCM_SHA256"])
        .args(["-groups", "X25519", "-servername", "localhost"])
        .args([
            "-verify_hostname",
            "localhost",
            "-verify_return_error",
            "-quiet",
        ])
        .arg("-CAfile")
        .arg(ca)
        .arg("-cert")
        .arg(&spec.cert);
    if let Some((conf, env)) = &spec.engine {
        c.args(["-engine", "pkcs11", "-keyform", "engine"])
            .env("OPENSSL_CONF", conf)
            .envs(env.iter().map(|(k, v)| (k, v)));
    }
    c.arg("-key")
        .arg(&spec.key)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let cpu0 = sys::cpu_children();
    let t0 = Instant::now();
    let mut child = c.spawn()?;
    // `-quiet` reads on after stdin's end, to the server's close.
    let _ = child
        .stdin
        .take()
        .ok_or("stdin")?
        .write_all(b"GET / HTTP/1.0\r\n\r\n");
    let out = child.wait_with_output()?;
    let wall = t0.elapsed();
    let cpu = sys::cpu_children().saturating_sub(cpu0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    Ok(Sample {
        wall,
        cpu,
        // The server answers only a client whose certificate and CertificateVerify it accepted
        // (TLS 1.3 §4.4.2.4: it refuses with an alert before any application data).
        ok: out.status.success() && stdout.contains("HTTP/1.0 200"),
        output: format!("{stdout}{stderr}"),
    })
}

/// One client's figures.
pub(crate) struct Row {
    pub(crate) client: String,
    pub(crate) with_hs: Lat,
    pub(crate) startup: Lat,
    pub(crate) handshake: Lat,
    pub(crate) cpu_hs: Duration,
    pub(crate) cpu_startup: Duration,
    pub(crate) server_cpu: Duration,
    pub(crate) failed: usize,
}

/// `n` pairs (a handshake, then a start-up only run), within `budget`.
pub(crate) fn measure(
    spec: &KeySpec,
    port: u16,
    server_pid: u32,
    ca: &Path,
    n: usize,
    budget: Duration,
) -> Result<Row, BoxError> {
    let closed = sys::free_port();
    let (mut hs, mut st, mut diff) = (Vec::new(), Vec::new(), Vec::new());
    let (mut cpu_hs, mut cpu_st, mut failed) = (Duration::ZERO, Duration::ZERO, 0);
    let srv0 = sys::cpu_of(server_pid);
    let t0 = Instant::now();
    while hs.len() < n && t0.elapsed() < budget {
        let h = s_client(spec, port, ca)?;
        if !h.ok {
            failed += 1;
            if hs.is_empty() && failed >= 3 {
                return Err(format!("{}: {}", spec.name, h.output.trim()).into());
            }
            continue;
        }
        let s = s_client(spec, closed, ca)?;
        // It got as far as the connect: the key was loaded (s_client loads it first).
        if s.ok || !s.output.contains("connect:errno") {
            return Err(format!("{}: start-up run: {}", spec.name, s.output.trim()).into());
        }
        diff.push(h.wall.saturating_sub(s.wall));
        hs.push(h.wall);
        st.push(s.wall);
        cpu_hs += h.cpu;
        cpu_st += s.cpu;
    }
    let k = u32::try_from(hs.len().max(1))?;
    Ok(Row {
        client: spec.name.clone(),
        server_cpu: sys::cpu_of(server_pid).saturating_sub(srv0) / k,
        with_hs: Lat::of(hs),
        startup: Lat::of(st),
        handshake: Lat::of(diff),
        cpu_hs: cpu_hs / k,
        cpu_startup: cpu_st / k,
        failed,
    })
}

/// The `OPENSSL_CONF` that loads the engine with the token's module and PIN (mode 0600).
fn engine_conf(dir: &Path, module: &Path, pin: &str, name: &str) -> Result<PathBuf, BoxError> {
    let path = dir.join(format!("openssl-engine-{name}.cnf"));
    let text = format!(
        "openssl_conf = openssl_init\n[openssl_init]\nengines = engine_section\n\
         [engine_section]\npkcs11 = pkcs11_section\n[pkcs11_section]\nengine_id = pkcs11\n\
         MODULE_PATH = {}\nPIN = {pin}\ninit = 0\n",
        module.display()
    );
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&path)?;
    f.write_all(text.as_bytes())?;
    Ok(path)
}

/// A token of its own in the fixture's SoftHSM with a P-256 key (PKCS#8 imported) and its
/// self-signed certificate; returns (certificate, key URI).
fn own_token(t: &TokenSetup, dir: &Path) -> Result<(PathBuf, String), BoxError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["bench openssl engine".to_owned()])?;
    // A subject of its own: OpenSSL finds a trust anchor by subject name.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench openssl engine");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let cert = params.self_signed(&key)?;
    let p8 = dir.join("openssl-engine-key.p8");
    std::fs::write(&p8, key.serialize_pem())?;
    let cert_path = dir.join("openssl-engine-cert.pem");
    std::fs::write(&cert_path, cert.pem())?;
    let util = |args: &[&str]| -> Result<(), BoxError> {
        let out = Command::new("softhsm2-util")
            .args(args)
            .envs(t.env.iter().map(|(k, v)| (k, v)))
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "softhsm2-util {}: {}",
                args[0],
                String::from_utf8_lossy(&out.stdout).trim()
            )
            .into());
        }
        Ok(())
    };
    util(&[
        "--init-token",
        "--free",
        "--label",
        OWN_TOKEN,
        "--pin",
        OWN_PIN,
        "--so-pin",
        OWN_PIN,
    ])?;
    let p8s = p8.to_str().ok_or("path")?;
    util(&[
        "--import", p8s, "--token", OWN_TOKEN, "--label", "client", "--id", "01", "--pin", OWN_PIN,
    ])?;
    std::fs::remove_file(&p8)?;
    Ok((
        cert_path,
        format!("pkcs11:token={OWN_TOKEN};object=client;type=private"),
    ))
}

/// The clients: s_client with a software key, and with the token key through the engine
/// (the init-dev token's key when libp11 can read it, else a token of its own). Also returns
/// the certificates the server must accept, PEM.
pub(crate) fn clients(t: &TokenSetup, dir: &Path) -> Result<(Vec<KeySpec>, String), BoxError> {
    let soft = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(vec!["bench openssl client".to_owned()])?;
    // A subject of its own: OpenSSL finds a trust anchor by subject name.
    params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "bench openssl client");
    params.extended_key_usages = vec![rcgen::ExtendedKeyUsagePurpose::ClientAuth];
    let soft_cert = params.self_signed(&soft)?;
    let soft_key = dir.join("openssl-soft.key");
    let soft_pem = dir.join("openssl-soft.pem");
    std::fs::write(&soft_key, soft.serialize_pem())?;
    std::fs::write(&soft_pem, soft_cert.pem())?;
    let dev = KeySpec {
        name: format!(
            "openssl s_client, token key via the pkcs11 engine (token {})",
            t.label
        ),
        cert: t.cert.clone(),
        key: format!(
            "pkcs11:token={};object={TOKEN_KEY_LABEL};type=private",
            t.label
        ),
        engine: Some((engine_conf(dir, &t.module, &t.pin, "dev")?, t.env.clone())),
    };
    let (own_cert, own_uri) = own_token(t, dir)?;
    let own = KeySpec {
        name: format!("openssl s_client, token key via the pkcs11 engine (token {OWN_TOKEN})"),
        cert: own_cert.clone(),
        key: own_uri,
        engine: Some((engine_conf(dir, &t.module, OWN_PIN, "own")?, t.env.clone())),
    };
    let pinned = [&soft_pem, &t.cert, &own_cert]
        .iter()
        .map(std::fs::read_to_string)
        .collect::<Result<String, _>>()?;
    let soft = KeySpec {
        name: "openssl s_client, software key".into(),
        cert: soft_pem,
        key: soft_key.to_str().ok_or("path")?.to_owned(),
        engine: None,
    };
    Ok((vec![soft, dev, own], pinned))
}

/// Runs the rows against a client-auth server on `port`; the engine row on the init-dev token
/// is dropped, with a note, when libp11 cannot read its key, and the own-token row kept;
/// when it can, the own-token row is dropped.
pub(crate) fn run_rows(
    specs: &[KeySpec],
    port: u16,
    server_pid: u32,
    ca: &Path,
    n: usize,
    budget: Duration,
) -> (Vec<Row>, Vec<String>) {
    let mut rows = Vec::new();
    let mut notes = Vec::new();
    let mut dev_ok = false;
    for (i, spec) in specs.iter().enumerate() {
        if i == 2 && dev_ok {
            break;
        }
        crate::step(&format!("client auth · {}", spec.name));
        match measure(spec, port, server_pid, ca, n, budget) {
            Ok(r) => {
                dev_ok |= i == 1;
                rows.push(r);
            }
            Err(e) => {
                let e = e.to_string();
                // The engine's own words, one line (libp11 prints several).
                let why = e
                    .lines()
                    .find(|l| l.contains("Unable to") || l.contains("error:"))
                    .unwrap_or(e.lines().next().unwrap_or(""));
                notes.push(if i == 1 {
                    format!(
                        "client auth · {}: the pkcs11 engine could not load the key ({why}); \
                         the next row uses a token of its own",
                        spec.name
                    )
                } else {
                    format!("client auth · {}: {why}", spec.name)
                });
            }
        }
    }
    (rows, notes)
}

/// The section and notes, against the bench's rustls server requiring a client certificate.
pub(crate) fn run(
    fx: &Fixture,
    pki: &Pki,
    n: usize,
    budget: Duration,
) -> Result<(String, Vec<String>), BoxError> {
    let dir = tempfile::Builder::new()
        .prefix("lurk-bench-openssl-")
        .tempdir()?;
    let (specs, pinned) = clients(&TokenSetup::of(fx)?, dir.path())?;
    let pinned_path = dir.path().join("pinned.pem");
    std::fs::write(&pinned_path, pinned)?;
    let (srv, port) = crate::client_auth::start_server(pki, &pinned_path)?;
    let (rows, notes) = run_rows(&specs, port, srv.pid(), &pki.ca(), n, budget);
    drop(srv);
    Ok((markdown(&rows), notes))
}

fn markdown(rows: &[Row]) -> String {
    let mut s = String::from(
        "### Client authentication with `openssl s_client` (key in the token through the pkcs11 engine)\n\n\
         The same server as above (rustls, a client certificate required); `openssl s_client` \
         (TLS 1.3, TLS_AES_128_GCM_SHA256, X25519, one GET, the response to EOF), one process per \
         handshake, the token key read through libp11's pkcs11 engine (`-engine pkcs11 \
         -keyform engine`, `libengine-pkcs11-openssl`). *With handshake*: a process from spawn \
         to exit. *Start-up only*: the same command against a closed port (start-up, engine and \
         token initialisation, login, key lookup, then a refused connect). *Handshake ≈*: the \
         median of the differences of pairs run back to back: TCP connect, handshake, GET and \
         response, and the token's signature; process start-up and the token's set-up are not \
         counted. CPU is the s_client process's, per run.\n\n\
         | client | with handshake ms p50/p90 | start-up only ms p50/p90 | handshake ≈ ms p50/p90 | CPU ms with handshake / start-up only | server CPU ms | n | failed |\n\
         |---|---|---|---|---|---|---|---|\n",
    );
    for r in rows {
        let _ = writeln!(
            s,
            "| {} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} / {:.3} | {:.3} | {} | {} |",
            r.client,
            ms(r.with_hs.p50),
            ms(r.with_hs.p90),
            ms(r.startup.p50),
            ms(r.startup.p90),
            ms(r.handshake.p50),
            ms(r.handshake.p90),
            ms(r.cpu_hs),
            ms(r.cpu_startup),
            ms(r.server_cpu),
            r.with_hs.n,
            r.failed
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A SoftHSM token made with `softhsm2-util` alone (SoftHSM reads its configuration once
    /// per process, and this test binary's other tests load the module in-process), holding
    /// what an init-dev token holds: an Ed25519 key and the P-256 `client-p256`.
    fn dev_like_token(dir: &Path) -> TokenSetup {
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
        let env = vec![("SOFTHSM2_CONF".to_owned(), conf.display().to_string())];
        let util = |args: &[&str]| {
            let out = Command::new("softhsm2-util")
                .args(args)
                .envs(env.iter().map(|(k, v)| (k, v)))
                .output()
                .unwrap();
            assert!(out.status.success(), "{args:?}: {out:?}");
        };
        util(&[
            "--init-token",
            "--free",
            "--label",
            "test-dev",
            "--pin",
            "1234",
            "--so-pin",
            "5678",
        ]);
        // OpenSSL's PKCS#8 for Ed25519 (softhsm2-util reads no v2 PKCS#8, which rcgen writes).
        let ed = dir.join("client-ed25519.p8");
        assert!(Command::new("openssl")
            .args(["genpkey", "-algorithm", "ED25519", "-out"])
            .arg(&ed)
            .status()
            .unwrap()
            .success());
        let p256 = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(vec!["test client".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "test client");
        let cert = dir.join("client-p256.pem");
        std::fs::write(&cert, params.self_signed(&p256).unwrap().pem()).unwrap();
        let p256_p8 = dir.join("client-p256.p8");
        std::fs::write(&p256_p8, p256.serialize_pem()).unwrap();
        for (p8, label, id) in [
            (&ed, "client-ed25519", "01"),
            (&p256_p8, TOKEN_KEY_LABEL, "02"),
        ] {
            util(&[
                "--import",
                p8.to_str().unwrap(),
                "--token",
                "test-dev",
                "--label",
                label,
                "--id",
                id,
                "--pin",
                "1234",
            ]);
            std::fs::remove_file(p8).unwrap();
        }
        TokenSetup {
            module: "/usr/lib/softhsm/libsofthsm2.so".into(),
            label: "test-dev".into(),
            pin: "1234".into(),
            env,
            cert,
        }
    }

    /// Against real SoftHSM tokens and an `openssl s_server` that requires a client
    /// certificate: s_client authenticates with the software key and with a token key through
    /// the pkcs11 engine (the init-dev-like token's, or a token of its own when libp11 cannot
    /// read that one), and an unknown client is refused.
    #[test]
    fn s_client_authenticates_with_the_token_key_through_the_engine() {
        let dir = tempfile::tempdir().unwrap();
        let token = dev_like_token(dir.path());
        let (specs, pinned) = clients(&token, dir.path()).unwrap();
        let pinned_path = dir.path().join("pinned.pem");
        std::fs::write(&pinned_path, pinned).unwrap();
        let server_key = rcgen::KeyPair::generate().unwrap();
        let server_cert = rcgen::CertificateParams::new(vec!["localhost".to_owned()])
            .unwrap()
            .self_signed(&server_key)
            .unwrap();
        let (key, cert) = (dir.path().join("srv.key"), dir.path().join("srv.pem"));
        std::fs::write(&key, server_key.serialize_pem()).unwrap();
        std::fs::write(&cert, server_cert.pem()).unwrap();
        let port = sys::free_port();
        let mut srv = crate::handshake::Proc {
            child: Command::new("openssl")
                .args(["s_server", "-accept"])
                .arg(format!("127.0.0.1:{port}"))
                .args([
                    "-tls1_3",
                    "-www",
                    "-quiet",
                    "-Verify",
                    "1",
                    "-verify_return_error",
                ])
                .arg("-cert")
                .arg(&cert)
                .arg("-key")
                .arg(&key)
                .arg("-CAfile")
                .arg(&pinned_path)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "s_server did not start");
            assert!(srv.child.try_wait().unwrap().is_none(), "s_server exited");
            std::thread::sleep(Duration::from_millis(20));
        }
        let (rows, notes) = run_rows(&specs, port, srv.pid(), &cert, 2, Duration::from_secs(30));
        assert!(
            rows.len() == 2 && rows.iter().all(|r| r.with_hs.n == 2 && r.failed == 0),
            "{notes:?}"
        );
        assert!(rows[1].client.contains("pkcs11 engine"));
        if rows[1].client.contains(OWN_TOKEN) {
            // libp11 0.4.12: no key of a token holding an Ed25519 key can be read.
            assert!(notes[0].contains("Unable to enumerate"), "{notes:?}");
        }
        // A client the server does not know is refused: the check above can fail.
        let unknown = KeySpec {
            name: "unknown".into(),
            cert: dir.path().join("srv.pem"),
            key: key.to_str().unwrap().to_owned(),
            engine: None,
        };
        assert!(!s_client(&unknown, port, &cert).unwrap().ok);
        let _ = srv.child.kill();
    }
}
