//! `tests/go_tls_server/main.go`: a TLS 1.3 server on Go's crypto/tls (the stack most
//! cloud-native servers and proxies are built on), built once per test process with the Go
//! toolchain `scripts/install-deps.sh --test` installs (Debian's golang-go; standard library only,
//! nothing fetched).

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::fact_server::FactServer;
use crate::scratch_dir;

/// The server binary, built on first use into a scratch directory.
pub fn server_binary() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let dir = scratch_dir("go");
        let bin = dir.join("go_tls_server");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("go_tls_server/main.go");
        let out = Command::new("go")
            .arg("build")
            .arg("-o")
            .arg(&bin)
            .arg(&src)
            .env("GOCACHE", dir.join("cache"))
            .env("GOPATH", dir.join("gopath"))
            .env("GOPROXY", "off")
            .env("GOFLAGS", "-mod=mod")
            .output()
            .unwrap_or_else(|e| panic!("go not found ({e}): run scripts/install-deps.sh --test"));
        assert!(
            out.status.success(),
            "go build failed:\n{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        bin
    })
    .clone()
}

/// Starts the Go server with `args` (it binds a free loopback port itself).
pub fn start<S: AsRef<str>>(args: &[S]) -> FactServer {
    let args: Vec<&str> = args.iter().map(AsRef::as_ref).collect();
    FactServer::spawn(server_binary(), &args)
}
