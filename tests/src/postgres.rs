//! A private PostgreSQL cluster for tests: `initdb` in a temp dir (as the `postgres` user
//! when running as root: `initdb` refuses root), its own free port on 127.0.0.1 and its own
//! Unix socket directory, password authentication (SCRAM) over TCP for the superuser `lurk`
//! (trusted over the socket, for the tests' own access), stopped
//! by PID when dropped. Nothing depends on a system-wide server. `scripts/install-deps.sh --test`
//! installs Debian's `postgresql` package when `initdb` is missing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

/// The superuser of test clusters and its password (tests pass it through an environment
/// variable or a file, as a CS would get it).
pub const USER: &str = "lurk";
pub const PASSWORD: &str = "lurk-test-password";

/// Directory of the PostgreSQL server binaries: Debian's `/usr/lib/postgresql/NN/bin`
/// (highest NN), else wherever `initdb` is on PATH.
pub fn bin_dir() -> PathBuf {
    find_bin_dir()
        .expect("PostgreSQL server binaries not found: run scripts/install-deps.sh --test")
}

/// [`bin_dir`], or `None` when PostgreSQL is not installed.
pub fn find_bin_dir() -> Option<PathBuf> {
    let mut versions: Vec<(u32, PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| {
            let v = e.file_name().to_str()?.parse().ok()?;
            let bin = e.path().join("bin");
            bin.join("initdb").exists().then_some((v, bin))
        })
        .collect();
    versions.sort();
    if let Some((_, bin)) = versions.pop() {
        return Some(bin);
    }
    let out = Command::new("sh")
        .args(["-c", "command -v initdb"])
        .output()
        .ok()?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_owned();
    if path.is_empty() {
        return None;
    }
    Some(std::fs::canonicalize(&path).ok()?.parent()?.to_path_buf())
}

fn is_root() -> bool {
    let out = Command::new("id").arg("-u").output().expect("id -u");
    String::from_utf8_lossy(&out.stdout).trim() == "0"
}

/// A command run as the `postgres` user when we are root.
fn pg_command(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(mut c: Command, what: &str) {
    let out = c.output().unwrap_or_else(|e| panic!("{what}: {e}"));
    assert!(
        out.status.success(),
        "{what} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A running private cluster. Dropping it stops the server (SIGINT, fast shutdown) by PID.
pub struct PgCluster {
    dir: tempfile::TempDir,
    bin: PathBuf,
    pub port: u16,
    tls: bool,
    fsync: bool,
}

impl PgCluster {
    /// `initdb` and start (`fsync=off`: tests need no durability across an OS crash).
    pub fn start() -> Self {
        Self::init(false, false)
    }

    /// Like [`start`](Self::start) with PostgreSQL's default durability (`fsync=on`), as a
    /// production server runs: for measurements.
    pub fn start_with_fsync() -> Self {
        Self::init(false, true)
    }

    /// Like [`start`](Self::start), with TLS required on TCP (`hostssl` only): the server's
    /// certificate (for `127.0.0.1` and `localhost`) is self-signed, its PEM in
    /// [`ca_file`](Self::ca_file).
    pub fn start_with_tls() -> Self {
        Self::init(true, false)
    }

    /// The PEM the server's certificate verifies against (TLS clusters).
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    fn init(tls: bool, fsync: bool) -> Self {
        let bin = bin_dir();
        let dir = tempfile::Builder::new()
            .prefix("lurk-pg-")
            .tempdir()
            .expect("tempdir");
        // The postgres user must reach the data directory.
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let data = dir.path().join("data");
        let sock = dir.path().join("sock");
        std::fs::create_dir(&data).unwrap();
        std::fs::create_dir(&sock).unwrap();
        let pwfile = dir.path().join("pwfile");
        std::fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        std::fs::set_permissions(&pwfile, std::fs::Permissions::from_mode(0o644)).unwrap();
        if is_root() {
            for p in [&data, &sock] {
                run(
                    {
                        let mut c = Command::new("chown");
                        c.arg("postgres:postgres").arg(p);
                        c
                    },
                    "chown",
                );
            }
        }
        let mut c = pg_command(&bin.join("initdb"));
        c.arg("-D")
            .arg(&data)
            .args([
                "-U",
                USER,
                "--auth-host=scram-sha-256",
                "--auth-local=trust",
            ])
            .args(["--no-sync", "-E", "UTF8"])
            .arg(format!("--pwfile={}", pwfile.display()));
        run(c, "initdb");
        if tls {
            let cert = rcgen::generate_simple_self_signed(vec![
                "127.0.0.1".to_owned(),
                "localhost".to_owned(),
            ])
            .unwrap();
            std::fs::write(dir.path().join("ca.pem"), cert.cert.pem()).unwrap();
            let crt = data.join("server.crt");
            let key = data.join("server.key");
            std::fs::write(&crt, cert.cert.pem()).unwrap();
            std::fs::write(&key, cert.key_pair.serialize_pem()).unwrap();
            std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
            let hba = data.join("pg_hba.conf");
            let text = std::fs::read_to_string(&hba).unwrap();
            let text: String = text
                .lines()
                .map(|l| match l.strip_prefix("host ") {
                    Some(rest) => format!("hostssl {rest}\n"),
                    None => format!("{l}\n"),
                })
                .collect();
            std::fs::write(&hba, text).unwrap();
            if is_root() {
                let mut c = Command::new("chown");
                c.arg("postgres:postgres").arg(&crt).arg(&key).arg(&hba);
                run(c, "chown");
            }
        }
        let cluster = Self {
            dir,
            bin,
            port: free_port(),
            tls,
            fsync,
        };
        cluster.start_server();
        cluster
    }

    fn data(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// The Unix socket directory.
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    /// Starts the server (after [`stop`](Self::stop)), on the same port.
    pub fn start_server(&self) {
        let mut opts = format!(
            "-p {} -k {} -c listen_addresses=127.0.0.1 -c max_connections=200",
            self.port,
            self.socket_dir().display()
        );
        if !self.fsync {
            opts.push_str(" -c fsync=off");
        }
        if self.tls {
            opts.push_str(" -c ssl=on");
        }
        let mut c = pg_command(&self.bin.join("pg_ctl"));
        c.arg("start")
            .arg("-D")
            .arg(self.data())
            .args(["-w", "-t", "30", "-o", &opts, "-l"])
            .arg(self.dir.path().join("sock").join("log"));
        run(c, "pg_ctl start");
    }

    /// The postmaster's PID (first line of `postmaster.pid`), if running.
    pub fn pid(&self) -> Option<u32> {
        std::fs::read_to_string(self.data().join("postmaster.pid"))
            .ok()?
            .lines()
            .next()?
            .trim()
            .parse()
            .ok()
    }

    /// Fast shutdown by PID (SIGINT); waits until the server is gone.
    pub fn stop(&self) {
        let Some(pid) = self.pid() else { return };
        let _ = Command::new("kill")
            .args(["-INT", &pid.to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.data().join("postmaster.pid").exists() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Creates a database owned by [`USER`].
    pub fn create_db(&self, name: &str) {
        let mut c = Command::new(self.bin.join("psql"));
        c.arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", USER])
            .args(["-d", "postgres", "-v", "ON_ERROR_STOP=1", "-q", "-c"])
            .arg(format!("CREATE DATABASE \"{name}\""));
        run(c, "CREATE DATABASE");
    }

    /// Runs SQL with psql in `db`; returns its unaligned, tuples-only output.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .arg("-h")
            .arg(self.socket_dir())
            .args(["-p", &self.port.to_string(), "-U", USER])
            .args([
                "-d",
                db,
                "-v",
                "ON_ERROR_STOP=1",
                "-q",
                "-A",
                "-t",
                "-c",
                sql,
            ])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A DSN for `db` over TCP (no password: the CS reads it from env or file).
    pub fn dsn(&self, db: &str) -> String {
        format!("host=127.0.0.1 port={} user={USER} dbname={db}", self.port)
    }

    /// A DSN for `db` over the Unix socket (trusted: for the tests' own raw access).
    pub fn socket_dsn(&self, db: &str) -> String {
        format!(
            "host={} port={} user={USER} dbname={db}",
            self.socket_dir().display(),
            self.port
        )
    }

    /// `[store]` TOML for a CS on database `db`, password from `$password_env`.
    pub fn store_toml(&self, db: &str, password_env: &str) -> String {
        format!(
            "backend = \"postgres\"\n[store.postgres]\ndsn = \"{}\"\npassword_env = \"{password_env}\"\nconnect_timeout_ms = 1000\n",
            self.dsn(db)
        )
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        self.stop();
    }
}
