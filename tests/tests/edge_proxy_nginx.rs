//! The example edge proxy (`lurk-edge-proxy`) in front of a real nginx, driven by a real load
//! generator (`h2load`, nghttp2-client).
//!
//! nginx (Debian's package, a private prefix and config in a temp dir, a free port, killed by
//! PID) requires a client certificate (`ssl_verify_client on`), speaks TLS 1.3 only, issues
//! session tickets and closes a connection after 100 requests (`keepalive_requests`), so the
//! proxy's pool makes new upstream connections that resume with the CS's tickets. Its access
//! log says, per request, the TLS version, whether the session was reused, the client
//! verification result and the HTTP version.
//!
//! Three proxies: HTTP/2 (h2c) in, HTTP/2 to the upstream through ALPN; HTTP/1.1 in, same
//! upstream; TLS in (rustls) with HTTP/1.1 to the upstream. Every request must be answered
//! with 200, nginx must log client-authenticated TLS 1.3 for each and resumed sessions among
//! them, and the client key must be a non-extractable, sensitive token object. The same
//! proxy on hyper-rustls with the key in a file runs the first load too, for comparison.
//! The third proxy also names a CS replica that is down: its metrics must show it set aside
//! and the live one carrying every upstream session.

use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use lurk_e2e::lurk::{Lurk, CLIENT_KEYS};
use lurk_e2e::openssl::{certs, path_str};
use lurk_e2e::process::Proc;
use lurk_e2e::workspace_bin;

const KEY_ID: &str = CLIENT_KEYS[0].0;
const KEY_PKI_NAME: &str = CLIENT_KEYS[0].1;
/// nginx closes a connection after this many requests (HTTP/1.1 and HTTP/2).
const KEEPALIVE_REQUESTS: usize = 100;

fn find_program(name: &str) -> PathBuf {
    for dir in ["/usr/sbin", "/usr/bin", "/usr/local/sbin", "/usr/local/bin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let p = dir.join(name);
            if p.exists() {
                return p;
            }
        }
    }
    panic!("{name} not found: run scripts/install-deps.sh --test (nginx, nghttp2-client)");
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// A private nginx: its own prefix, config, logs and port; killed by PID on drop.
struct Nginx {
    _proc: Proc,
    dir: tempfile::TempDir,
    port: u16,
}

impl Nginx {
    fn start() -> Nginx {
        let nginx = find_program("nginx");
        let c = certs();
        let mut errors = String::new();
        for _ in 0..3 {
            let dir = tempfile::Builder::new()
                .prefix("lurk-nginx-")
                .tempdir()
                .expect("tempdir");
            let d = dir.path();
            let port = free_port();
            let conf = format!(
                r#"daemon off;
master_process off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    log_format lurk '$ssl_protocol $ssl_session_reused $ssl_client_verify $server_protocol $status';
    access_log {d}/access.log lurk;
    client_body_temp_path {d}/body;
    proxy_temp_path {d}/proxy;
    fastcgi_temp_path {d}/fastcgi;
    uwsgi_temp_path {d}/uwsgi;
    scgi_temp_path {d}/scgi;
    keepalive_requests {KEEPALIVE_REQUESTS};
    server {{
        listen 127.0.0.1:{port} ssl http2;
        server_name localhost;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        ssl_protocols TLSv1.3;
        ssl_verify_client on;
        ssl_client_certificate {client_ca};
        ssl_session_tickets on;
        ssl_session_timeout 5m;
        location / {{ return 200 "hello from nginx\n"; }}
    }}
}}
"#,
                d = d.display(),
                cert = path_str(&c.pem("server-ecdsa-p256")),
                key = path_str(&c.key("server-ecdsa-p256")),
                client_ca = path_str(&c.pem("ca-ecdsa")),
            );
            std::fs::write(d.join("nginx.conf"), conf).unwrap();
            let args = [
                "-p".to_owned(),
                path_str(d),
                "-c".to_owned(),
                path_str(&d.join("nginx.conf")),
                "-e".to_owned(),
                path_str(&d.join("error.log")),
            ];
            let mut proc = Proc::spawn(&nginx, &args, &[]).expect("spawn nginx");
            let deadline = Instant::now() + Duration::from_secs(10);
            while Instant::now() < deadline {
                if TcpStream::connect(("127.0.0.1", port)).is_ok() {
                    return Nginx {
                        _proc: proc,
                        dir,
                        port,
                    };
                }
                if proc.try_status().is_some() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            proc.kill();
            errors.push_str(&format!(
                "nginx on port {port}:\n{}\n{}\n",
                proc.output(),
                std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
            ));
        }
        panic!("nginx did not start:\n{errors}");
    }

    fn access_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default()
    }
}

/// A running `lurk-edge-proxy`, killed by PID on drop.
struct EdgeProxy {
    proc: Proc,
    addr: String,
    /// Its metrics listener (`--metrics-listen`).
    metrics_addr: String,
}

impl EdgeProxy {
    fn start(args: &[String]) -> EdgeProxy {
        let mut args = args.to_vec();
        args.extend(["--metrics-listen".into(), "127.0.0.1:0".into()]);
        let proc = Proc::spawn(workspace_bin("lurk-edge-proxy"), &args, &[]).expect("spawn proxy");
        assert!(
            proc.wait_output(Duration::from_secs(20), |t| t.contains("LISTEN ")),
            "lurk-edge-proxy did not start: {}",
            proc.output()
        );
        let out = proc.output();
        let line = |prefix: &str| {
            out.lines()
                .find_map(|l| l.strip_prefix(prefix))
                .unwrap_or_else(|| panic!("no {prefix:?} line: {out}"))
                .trim()
                .to_owned()
        };
        let (addr, metrics_addr) = (line("LISTEN "), line("METRICS "));
        EdgeProxy {
            proc,
            addr,
            metrics_addr,
        }
    }

    /// `GET /lurk-proxy/metrics` on the metrics listener (curl) as `name value` pairs.
    fn metrics(&self) -> Vec<(String, u64)> {
        let out = Command::new("curl")
            .args(["-sS", "--max-time", "10"])
            .arg(format!("http://{}/lurk-proxy/metrics", self.metrics_addr))
            .output()
            .expect("run curl");
        let body = String::from_utf8_lossy(&out.stdout).into_owned();
        assert!(
            out.status.success(),
            "curl: {}\nthe proxy said:\n{}",
            String::from_utf8_lossy(&out.stderr),
            self.proc.output()
        );
        body.lines()
            .filter(|l| !l.starts_with('#'))
            .filter_map(|l| l.rsplit_once(' '))
            .map(|(k, v)| (k.to_owned(), v.trim().parse().unwrap()))
            .collect()
    }

    /// The metrics whose name (labels included) starts with `prefix`.
    fn metrics_of(&self, prefix: &str) -> Vec<(String, u64)> {
        self.metrics()
            .into_iter()
            .filter(|(k, _)| k.starts_with(prefix))
            .collect()
    }

    fn metric(&self, name: &str) -> u64 {
        self.metrics()
            .into_iter()
            .find(|(k, _)| k == name)
            .unwrap_or_else(|| panic!("no {name} in the proxy's metrics: {:?}", self.metrics()))
            .1
    }
}

/// The HTTP status curl got for `url` (with `extra` options), within 30 s.
fn http_status(url: &str, extra: &[&str]) -> String {
    let out = Command::new("curl")
        .args(["-s", "-o", "/dev/null", "-w", "%{http_code}"])
        .args(["--max-time", "30"])
        .args(extra)
        .arg(url)
        .output()
        .expect("run curl");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// What h2load reported.
struct Load {
    succeeded: usize,
    ok_2xx: usize,
    req_per_s: f64,
}

/// `h2load -n N -c C [extra] URL`; panics unless it ran to the end.
fn h2load(url: &str, n: usize, clients: usize, extra: &[&str]) -> Load {
    let mut cmd = Command::new(find_program("h2load"));
    cmd.args(["-n", &n.to_string(), "-c", &clients.to_string()])
        .args(extra)
        .arg(url);
    let out = cmd.output().expect("run h2load");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "h2load failed:\n{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // "requests: 600 total, 600 started, 600 done, 600 succeeded, 0 failed, ...",
    // "status codes: 600 2xx, ...", "finished in 1.23s, 487.80 req/s, 47.87KB/s".
    let field = |line_start: &str, unit: &str| -> String {
        let line = text
            .lines()
            .find(|l| l.trim_start().starts_with(line_start))
            .unwrap_or_else(|| panic!("no {line_start:?} in h2load's output:\n{text}"));
        line.split(',')
            .find_map(|part| part.trim().strip_suffix(unit))
            .and_then(|s| s.rsplit(' ').next())
            .unwrap_or_else(|| panic!("no {unit:?} in {line:?}"))
            .to_owned()
    };
    Load {
        succeeded: field("requests:", " succeeded").parse().unwrap(),
        ok_2xx: field("status codes:", " 2xx").parse().unwrap(),
        req_per_s: field("finished in", " req/s").parse().unwrap(),
    }
}

fn check_all_answered(what: &str, load: &Load, n: usize, proxy: &EdgeProxy) {
    assert!(
        load.succeeded == n && load.ok_2xx == n,
        "{what}: {} of {n} requests succeeded, {} answered 2xx; the proxy said:\n{}",
        load.succeeded,
        load.ok_2xx,
        proxy.proc.output()
    );
}

#[test]
fn edge_proxy_in_front_of_nginx_with_the_key_in_the_cs() {
    let c = certs();
    let lurk = Lurk::start();
    let nginx = Nginx::start();
    let upstream = format!("https://localhost:{}", nginx.port);

    let mut common: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        upstream.clone(),
        "--ca".into(),
        path_str(&c.ca_all()),
        // A request that an HTTP/2 upstream connection strands (hyper's client can wait
        // forever on a connection nginx stopped serving) is sent again after 10 s.
        "--upstream-timeout".into(),
        "10".into(),
    ];
    let mut lurk_args = common.clone();
    lurk_args.extend(lurk.cs_args());
    lurk_args.extend(["--client-key".into(), KEY_ID.into()]);

    // 1. HTTP/2 in (prior knowledge), HTTP/2 to nginx through ALPN.
    const N_H2: usize = 600;
    let p1 = EdgeProxy::start(&lurk_args);
    let url1 = format!("http://{}/", p1.addr);
    let h2 = h2load(&url1, N_H2, 4, &["-m", "8"]);
    check_all_answered("h2 in", &h2, N_H2, &p1);
    // 2. HTTP/1.1 in, same proxy (same pool, same tickets).
    const N_H1: usize = 300;
    let h1 = h2load(&url1, N_H1, 4, &["--h1"]);
    check_all_answered("http/1.1 in", &h1, N_H1, &p1);

    // 3. TLS in (rustls, ALPN h2), HTTP/1.1 to nginx; one request at a time, so that each
    //    upstream connection after the first (nginx closes one every 100 requests) finds the
    //    tickets of the one before.
    const N_TLS: usize = 300;
    let mut tls_args = lurk_args.clone();
    // A second CS replica, down (nothing listens there): first calls that pick it are made
    // again on the live one, which the metrics below must show.
    let dead_port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = format!("https://127.0.0.1:{dead_port}");
    tls_args.extend(["--cs".into(), dead.clone()]);
    tls_args.extend([
        "--tls-cert".into(),
        path_str(&c.pem("server-ecdsa-p256")),
        "--tls-key".into(),
        path_str(&c.key("server-ecdsa-p256")),
        "--upstream-http1".into(),
    ]);
    let p3 = EdgeProxy::start(&tls_args);
    let tls = h2load(&format!("https://{}/", p3.addr), N_TLS, 1, &["-m", "1"]);
    check_all_answered("TLS in", &tls, N_TLS, &p3);

    // The handshake counters of the proxies.
    let full1 = p1.metric("lurk_proxy_upstream_handshakes_total{resumed=\"false\"}");
    let resumed1 = p1.metric("lurk_proxy_upstream_handshakes_total{resumed=\"true\"}");
    let full3 = p3.metric("lurk_proxy_upstream_handshakes_total{resumed=\"false\"}");
    let resumed3 = p3.metric("lurk_proxy_upstream_handshakes_total{resumed=\"true\"}");
    assert_eq!(p1.metric("lurk_proxy_requests_total"), (N_H2 + N_H1) as u64);
    assert_eq!(p1.metric("lurk_proxy_upstream_errors_total"), 0);
    assert_eq!(p3.metric("lurk_proxy_upstream_errors_total"), 0);
    // A full handshake authenticates with the CS's key; a resumed one needs no certificate.
    assert_eq!(
        p1.metric("lurk_proxy_upstream_client_authenticated_total"),
        full1
    );
    assert_eq!(
        p1.metric("lurk_proxy_upstream_alpn_total{protocol=\"h2\"}"),
        full1 + resumed1,
        "every upstream connection of proxy 1 negotiated h2"
    );
    assert_eq!(
        p3.metric("lurk_proxy_upstream_alpn_total{protocol=\"http/1.1\"}"),
        full3 + resumed3
    );
    assert!(resumed1 > 0, "proxy 1 resumed no upstream session");
    assert!(resumed3 > 0, "proxy 3 resumed no upstream session");

    // The engine's view of the CS replicas: proxy 1's one replica healthy, with a session
    // per upstream connection (and per one opened, then dropped), nothing failed or left
    // unsent, nothing outstanding once idle.
    let cs_url = lurk.cs_args()[1].clone();
    let replica = |p: &EdgeProxy, family: &str, url: &str| {
        p.metric(&format!("lurk_proxy_cs_{family}{{replica=\"{url}\"}}"))
    };
    assert_eq!(p1.metrics_of("lurk_proxy_cs_replica_healthy").len(), 1);
    assert_eq!(replica(&p1, "replica_healthy", &cs_url), 1);
    assert!(replica(&p1, "sessions_total", &cs_url) >= full1 + resumed1);
    assert!(replica(&p1, "calls_answered_total", &cs_url) >= full1 + resumed1);
    assert_eq!(replica(&p1, "failures_total", &cs_url), 0);
    assert_eq!(replica(&p1, "calls_not_sent_total", &cs_url), 0);
    let idle = Instant::now() + Duration::from_secs(5);
    while replica(&p1, "calls_outstanding", &cs_url) > 0 {
        assert!(Instant::now() < idle, "{:?}", p1.metrics());
        std::thread::sleep(Duration::from_millis(50));
    }
    // Proxy 3: the replica that is down is set aside, with its failed calls (or probes);
    // the live one carried every session.
    assert_eq!(
        replica(&p3, "replica_healthy", &dead),
        0,
        "{:?}",
        p3.metrics()
    );
    assert!(replica(&p3, "failures_total", &dead) >= 1);
    assert_eq!(replica(&p3, "sessions_total", &dead), 0);
    assert_eq!(replica(&p3, "replica_healthy", &cs_url), 1);
    assert!(replica(&p3, "sessions_total", &cs_url) >= full3 + resumed3);

    // nginx's view: one line per request, each client-authenticated TLS 1.3.
    let log = nginx.access_log();
    let lines: Vec<Vec<&str>> = log.lines().map(|l| l.split(' ').collect()).collect();
    assert_eq!(lines.len(), N_H2 + N_H1 + N_TLS, "access log lines");
    for l in &lines {
        assert_eq!(l.len(), 5, "{l:?}");
        assert_eq!(l[0], "TLSv1.3", "{l:?}");
        assert_eq!(l[2], "SUCCESS", "client certificate verified: {l:?}");
        assert_eq!(l[4], "200", "{l:?}");
    }
    let h2_lines = lines.iter().filter(|l| l[3] == "HTTP/2.0").count();
    let h1_lines = lines.iter().filter(|l| l[3] == "HTTP/1.1").count();
    assert_eq!(h2_lines, N_H2 + N_H1, "HTTP/2 to nginx from proxy 1");
    assert_eq!(h1_lines, N_TLS, "HTTP/1.1 to nginx from proxy 3");
    let reused = lines.iter().filter(|l| l[1] == "r").count();
    assert!(reused > 0, "nginx saw no resumed session:\n{log}");
    // Each response carried its connection's handshake summary (hyper's response
    // extensions): the proxies saw as many answers on resumed connections as nginx logged.
    let resp = |p: &EdgeProxy, r: &str| {
        p.metric(&format!(
            "lurk_proxy_upstream_responses_total{{resumed=\"{r}\"}}"
        ))
    };
    let (r1, f1) = (resp(&p1, "true"), resp(&p1, "false"));
    let (r3, f3) = (resp(&p3, "true"), resp(&p3, "false"));
    assert_eq!(
        r1 + f1,
        (N_H2 + N_H1) as u64,
        "responses with a summary, proxy 1"
    );
    assert_eq!(r3 + f3, N_TLS as u64, "responses with a summary, proxy 3");
    assert_eq!(
        (r1 + r3) as usize,
        reused,
        "responses on resumed connections"
    );

    // The proxy's own listener serves no metrics: the path goes to the upstream like any
    // other (the metrics name the CS replicas).
    let out = Command::new("curl")
        .args(["-sS", "--max-time", "10"])
        .arg(format!("http://{}/lurk-proxy/metrics", p1.addr))
        .output()
        .expect("run curl");
    assert_eq!(String::from_utf8_lossy(&out.stdout), "hello from nginx\n");
    // The metrics listener serves that one path, to GET (and HEAD) only.
    let status = |extra: &[&str], path: &str| {
        http_status(&format!("http://{}{path}", p1.metrics_addr), extra)
    };
    assert_eq!(status(&[], "/lurk-proxy/metrics"), "200");
    assert_eq!(status(&["--head"], "/lurk-proxy/metrics"), "200");
    assert_eq!(status(&[], "/"), "404");
    assert_eq!(status(&["--data", "x"], "/lurk-proxy/metrics"), "405");

    // The key is a token object the token never lets out, and the proxies had no key file.
    let keys = Command::new(workspace_bin("lurk-cs"))
        .args(["keys", "list", "--config"])
        .arg(lurk_e2e::lurk::lurk_env().setup.config_path())
        .output()
        .expect("lurk-cs keys list");
    let keys = String::from_utf8_lossy(&keys.stdout).into_owned();
    let line = keys
        .lines()
        .find(|l| l.starts_with("private") && l.contains(KEY_ID))
        .unwrap_or_else(|| panic!("{KEY_ID} not in the token:\n{keys}"));
    assert!(
        line.contains("sensitive=true") && line.contains("extractable=false"),
        "{line}"
    );
    let key_file = path_str(&c.key(KEY_PKI_NAME));
    assert!(!lurk_args.contains(&key_file) && !tls_args.contains(&key_file));

    // The baseline: the same proxy on hyper-rustls with the key in a file, the same load.
    common.extend([
        "--key-file".into(),
        key_file,
        "--cert-file".into(),
        path_str(&c.pem(KEY_PKI_NAME)),
    ]);
    let base = EdgeProxy::start(&common);
    let base_h2 = h2load(&format!("http://{}/", base.addr), N_H2, 4, &["-m", "8"]);
    check_all_answered("baseline h2 in", &base_h2, N_H2, &base);

    println!(
        "edge proxy (debug build), {N_H2} requests h2 in / h2 upstream: {:.0} req/s through the \
         engine, {:.0} req/s on hyper-rustls with the key in a file",
        h2.req_per_s, base_h2.req_per_s
    );
    println!(
        "http/1.1 in: {:.0} req/s; TLS in, http/1.1 upstream: {:.0} req/s",
        h1.req_per_s, tls.req_per_s
    );
    println!(
        "requests sent again after an upstream GOAWAY/close: proxy 1 {}, proxy 3 {}",
        p1.metric("lurk_proxy_upstream_retries_total"),
        p3.metric("lurk_proxy_upstream_retries_total")
    );
    println!(
        "upstream handshakes: proxy 1 {full1} full + {resumed1} resumed (h2), proxy 3 {full3} \
         full + {resumed3} resumed (http/1.1); nginx: {reused} of {} requests on resumed sessions",
        lines.len()
    );
    drop(p1);
    drop(p3);
    drop(base);
    drop(nginx);
}

/// An upstream that accepts connections and never answers (its TLS handshake stalls): each
/// attempt of the proxy gives up after `--upstream-timeout`, a GET is tried three times and
/// then answered 504, a POST with a body once; the proxy keeps serving (before: the request
/// waited forever).
#[test]
fn a_silent_upstream_gets_a_gateway_timeout_not_a_hang() {
    let c = certs();
    let lurk = Lurk::start();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let port = silent.local_addr().unwrap().port();
    std::thread::spawn(move || {
        let mut held = Vec::new();
        while let Ok((s, _)) = silent.accept() {
            held.push(s);
        }
    });
    let mut args: Vec<String> = vec![
        "--listen".into(),
        "127.0.0.1:0".into(),
        "--upstream".into(),
        format!("https://localhost:{port}"),
        "--ca".into(),
        path_str(&c.ca_all()),
        "--upstream-timeout".into(),
        "0.5".into(),
    ];
    args.extend(lurk.cs_args());
    args.extend(["--client-key".into(), KEY_ID.into()]);
    let proxy = EdgeProxy::start(&args);
    let curl = |extra: &[&str]| http_status(&format!("http://{}/", proxy.addr), extra);
    assert_eq!(curl(&[]), "504", "GET: {}", proxy.proc.output());
    assert_eq!(proxy.metric("lurk_proxy_upstream_retries_total"), 2);
    assert_eq!(
        curl(&["--data", "x=1"]),
        "504",
        "POST: {}",
        proxy.proc.output()
    );
    assert_eq!(proxy.metric("lurk_proxy_upstream_retries_total"), 2);
    assert_eq!(proxy.metric("lurk_proxy_upstream_errors_total"), 2);
}
