//! `scripts/cluster.sh`: three lurk-cs replicas on a private PostgreSQL cluster come up,
//! each SERVING (grpc.health.v1) and answering an engine with replica 1's credentials;
//! SIGTERM to the script stops the replicas and PostgreSQL.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lurk_e2e::{health_client, workspace_bin};
use lurk_engine::cs_client::CsEndpoint;
use lurk_proto::pb;
use tonic_health::ServingStatus;

/// SIGTERM to the script (which stops what it started) if the test fails midway.
struct StopOnDrop(u32);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.to_string()])
            .status();
    }
}

#[tokio::test]
async fn three_replicas_serve_and_stop_with_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let cluster = dir.path().join("cluster");
    let bin_dir = workspace_bin("lurk-cs").parent().unwrap().to_path_buf();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scripts/cluster.sh");
    let mut child = Command::new("bash")
        .arg(&script)
        .arg(&cluster)
        .arg("3")
        .env("LURK_BIN", &bin_dir)
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .unwrap();
    let _guard = StopOnDrop(child.id());
    let (tx, rx) = std::sync::mpsc::channel();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut urls = Vec::new();
    loop {
        let line = rx
            .recv_timeout(Duration::from_secs(120))
            .expect("cluster.sh did not get ready");
        if let Some(rest) = line.strip_prefix("REPLICA ") {
            urls.push(rest.split_whitespace().nth(1).unwrap().to_owned());
        }
        if line == "CLUSTER READY" {
            break;
        }
    }
    assert_eq!(urls.len(), 3);
    let tls = cluster.join("replica-1").join("tls");
    for url in &urls {
        let mut health = health_client(url, &tls, "engine");
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let st = health
                .check(tonic_health::pb::HealthCheckRequest::default())
                .await
                .map(|r| r.into_inner().status);
            if st.as_ref().ok() == Some(&(ServingStatus::Serving as i32)) {
                break;
            }
            assert!(Instant::now() < deadline, "{url}: {st:?}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let mut ep = CsEndpoint::from_files(
            url,
            Some(&tls.join("ca.pem")),
            Some(&tls.join("engine.pem")),
            Some(&tls.join("engine.key")),
        )
        .unwrap();
        ep.domain = Some("localhost".into());
        let pong = ep
            .connect_lazy()
            .unwrap()
            .ping(pb::PingRequest {})
            .await
            .unwrap()
            .into_inner();
        assert!(!pong.engine_identity.is_empty());
    }

    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "cluster.sh did not stop");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
    assert!(
        !cluster.join("pg/data/postmaster.pid").exists(),
        "PostgreSQL still running"
    );
}
