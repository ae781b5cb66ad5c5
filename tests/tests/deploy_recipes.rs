//! The container recipes in `deploy/` cannot be built here (no base images, no container
//! engine), so their content is checked: the compose file parses as YAML (PyYAML, from
//! `scripts/install-deps.sh --test`) and keeps the CS read-only, unprivileged and without a secret
//! in its environment; the example configuration parses with the CS's own types; the
//! Containerfile builds the production binary and runs it as a non-root user; the systemd
//! unit reloads with SIGHUP. The Prometheus alerting rules pass `promtool check rules` and
//! their own cases (`promtool test rules`: each alert fires on the series that should raise
//! it, and only then); promtool comes from Debian's prometheus package
//! (`scripts/install-deps.sh --test`).

use std::path::PathBuf;
use std::process::Command;

use lurk_cs::config::{Config, StoreBackend};

fn repo_file(rel: &str) -> (PathBuf, String) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("..")
        .join(rel);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    (path, text)
}

/// PyYAML checks, printing `ok` or raising.
const COMPOSE_CHECK: &str = r#"
import sys, yaml
doc = yaml.safe_load(open(sys.argv[1]))
svc = doc["services"]
cs, pg = svc["cs"], svc["postgres"]
assert cs["read_only"] is True, "cs: read_only"
assert not str(cs["user"]).startswith("0"), "cs: non-root user"
assert cs["cap_drop"] == ["ALL"], "cs: cap_drop"
assert "no-new-privileges:true" in cs["security_opt"]
assert cs["build"]["dockerfile"] == "deploy/Containerfile"
assert set(cs["secrets"]) == {"token_pin", "pg_password"}
assert "environment" not in cs, "cs: no secret or setting in the environment"
mounts = {v.split(":")[1]: v for v in cs["volumes"]}
assert mounts["/etc/lurk/lurk-cs.toml"].endswith(":ro"), "config mounted read-only"
assert mounts["/etc/lurk/tls"].endswith(":ro")
assert "/var/lib/lurk" in mounts and "/var/lib/softhsm/tokens" in mounts
assert cs["depends_on"]["postgres"]["condition"] == "service_healthy"
env = pg["environment"]
assert "POSTGRES_PASSWORD" not in env and env["POSTGRES_PASSWORD_FILE"] == "/run/secrets/pg_password"
for name, s in doc["secrets"].items():
    assert set(s) == {"file"}, name
print("ok")
"#;

#[test]
fn the_compose_file_parses_and_keeps_the_cs_confined() {
    let (path, _) = repo_file("deploy/compose.yaml");
    let out = Command::new("python3")
        .arg("-c")
        .arg(COMPOSE_CHECK)
        .arg(&path)
        .output()
        .expect("python3 (scripts/install-deps.sh --test)");
    assert!(
        out.status.success() && out.stdout.starts_with(b"ok"),
        "deploy/compose.yaml: {}{} (PyYAML comes from scripts/install-deps.sh --test)",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_compose_configuration_parses_with_postgres_and_no_secret() {
    let (_, text) = repo_file("deploy/compose/lurk-cs.toml");
    let cfg = Config::from_toml(&text).expect("deploy/compose/lurk-cs.toml");
    assert_eq!(cfg.store.backend, StoreBackend::Postgres);
    let pg = cfg.store.postgres.as_ref().expect("[store.postgres]");
    assert!(!pg.dsn.contains("password"), "{}", pg.dsn);
    assert!(pg
        .password_file
        .as_ref()
        .unwrap()
        .starts_with("/run/secrets"));
    assert!(cfg
        .token
        .pin_file
        .as_ref()
        .unwrap()
        .starts_with("/run/secrets"));
    assert!(cfg.listen.tls.is_some() && !cfg.listen.plaintext);
    // Every file it names is under a directory the compose file mounts.
    let tls = cfg.listen.tls.as_ref().unwrap();
    for p in [&tls.cert, &tls.key, &tls.client_ca] {
        assert!(p.starts_with("/etc/lurk/tls"), "{}", p.display());
    }
    for k in &cfg.keys {
        assert!(k.certificate_chain.starts_with("/etc/lurk/keys"));
    }
}

#[test]
fn the_containerfile_builds_the_production_binary_for_a_non_root_user() {
    let (_, text) = repo_file("deploy/Containerfile");
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.starts_with('#'))
        .collect();
    let from = lines.iter().filter(|l| l.starts_with("FROM ")).count();
    assert_eq!(from, 2, "multi-stage: a build stage and a runtime stage");
    assert!(text.contains("cargo build --release --locked -p lurk-cs"));
    assert!(
        !text.contains("test-vectors"),
        "no test-vector mode in the image"
    );
    let user = lines
        .iter()
        .rev()
        .find(|l| l.starts_with("USER "))
        .expect("USER");
    assert!(!user.contains(" 0") && !user.contains("root"), "{user}");
    assert!(text.contains("VOLUME [\"/var/lib/lurk\"]"));
}

#[test]
fn the_systemd_unit_reloads_with_sighup() {
    let (_, text) = repo_file("deploy/lurk-cs.service");
    assert!(text
        .lines()
        .any(|l| l.trim() == "ExecReload=/bin/kill -HUP $MAINPID"));
}

#[test]
fn the_alerting_rules_pass_promtool_and_their_cases() {
    let (rules, _) = repo_file("deploy/prometheus/lurk-cs-alerts.yml");
    let dir = rules.parent().unwrap().to_path_buf();
    for args in [
        &["check", "rules", "lurk-cs-alerts.yml"][..],
        &["test", "rules", "lurk-cs-alerts.test.yml"],
    ] {
        let out = Command::new("promtool")
            .args(args)
            .current_dir(&dir)
            .output()
            .expect("promtool (Debian's prometheus package, scripts/install-deps.sh --test)");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
        assert!(
            text.contains("SUCCESS"),
            "promtool {}: {text}",
            args.join(" ")
        );
    }
}
