//! `lurk-cs keys` and `lurk-cs psk` on a real token and store, then the CS using what they
//! stored: an imported key is listed sensitive and non-extractable, an external PSK's binder
//! is computed with the "ext binder" label (RFC 8446 §7.1).

use std::process::Command;

use lurk_e2e::{workspace_bin, DevSetup};
use lurk_proto::key_schedule::{binder, KeyScheduleEarly, PskKind};
use lurk_proto::pb;
use lurk_proto::wire::{
    self, CipherSuite, ClientHelloBuilder, HashAlg, NamedGroup, PskKeyExchangeMode, SignatureScheme,
};

fn lurk_cs(args: &[&str]) -> (bool, String) {
    let out = Command::new(workspace_bin("lurk-cs"))
        .args(args)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

#[tokio::test]
async fn imported_keys_are_listed_non_extractable_and_external_psks_get_ext_binders() {
    let dev = DevSetup::new();
    let cfg = dev.config_path();
    let cfg = cfg.to_str().unwrap();

    // The dev keys.
    let (ok, list) = lurk_cs(&["keys", "list", "--config", cfg]);
    assert!(ok, "{list}");
    for label in ["client-ed25519", "client-p256"] {
        let line = list
            .lines()
            .find(|l| l.contains(label) && l.starts_with("private"))
            .unwrap_or_else(|| panic!("{label} in {list}"));
        assert!(
            line.contains("sensitive=true") && line.contains("extractable=false"),
            "{line}"
        );
    }

    // Import a P-384 PKCS#8 key with its certificate.
    let dir = dev.path();
    let key = dir.join("p384.key");
    let cert = dir.join("p384.pem");
    assert!(Command::new("openssl")
        .args([
            "genpkey",
            "-algorithm",
            "EC",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-out"
        ])
        .arg(&key)
        .status()
        .unwrap()
        .success());
    assert!(Command::new("openssl")
        .args([
            "req",
            "-new",
            "-x509",
            "-days",
            "30",
            "-subj",
            "/CN=imported-p384",
            "-key"
        ])
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .status()
        .unwrap()
        .success());
    let (ok, out) = lurk_cs(&[
        "keys",
        "import",
        "--config",
        cfg,
        "--label",
        "imported-p384",
        "--id",
        "0a",
        "--key",
        key.to_str().unwrap(),
        "--cert",
        cert.to_str().unwrap(),
    ]);
    assert!(ok, "{out}");
    assert!(
        out.contains("[[keys]]"),
        "prints the configuration to add: {out}"
    );
    let (_, list) = lurk_cs(&["keys", "list", "--config", cfg]);
    let line = list
        .lines()
        .find(|l| l.contains("imported-p384") && l.starts_with("private"))
        .expect(&list);
    assert!(
        line.contains("sensitive=true") && line.contains("extractable=false"),
        "{line}"
    );
    // A certificate that does not carry the key is refused.
    let (ok, out) = lurk_cs(&[
        "keys",
        "import",
        "--config",
        cfg,
        "--label",
        "mismatch",
        "--id",
        "0b",
        "--key",
        key.to_str().unwrap(),
        "--cert",
        dir.join("client-p256.pem").to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");

    // An external PSK, read from a file (never from the command line).
    let psk = [0x5au8; 32];
    let psk_file = dir.join("psk.hex");
    std::fs::write(&psk_file, hex::encode(psk)).unwrap();
    let import = |identity: &str, engines: &[&str]| {
        let mut args = vec![
            "psk",
            "import",
            "--config",
            cfg,
            "--identity",
            identity,
            "--key-file",
            psk_file.to_str().unwrap(),
        ];
        args.extend_from_slice(engines);
        lurk_cs(&args)
    };
    // Which engines may use it is said explicitly.
    let (ok, out) = import("Client_identity", &[]);
    assert!(!ok && out.contains("--all-engines"), "{out}");
    let (ok, out) = import("Client_identity", &["--allowed-engine", "engine-dev"]);
    assert!(ok, "{out}");
    assert!(!out.contains(&hex::encode(psk)));
    let (ok, out) = import(
        "Everyone",
        &["--all-engines", "--allowed-engine", "engine-dev"],
    );
    assert!(!ok, "--all-engines with --allowed-engine: {out}");
    let (ok, out) = import("Everyone", &["--all-engines"]);
    assert!(ok, "{out}");
    let (ok, out) = import("Other_identity", &["--allowed-engine", "engine-other"]);
    assert!(ok, "{out}");

    let cs = dev.start();
    let mut c = cs.client("engine");
    let listed = |caps: pb::CapabilitiesResponse| {
        let mut ids: Vec<String> = caps
            .external_psks
            .iter()
            .map(|p| String::from_utf8(p.identity.clone()).unwrap())
            .collect();
        ids.sort();
        ids
    };
    let caps = c
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    // Capabilities lists only the PSKs the asking engine may use.
    assert_eq!(listed(caps), ["Client_identity", "Everyone"]);
    let mut c2 = cs.client("engine2");
    let caps2 = c2
        .capabilities(pb::CapabilitiesRequest {})
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed(caps2), ["Everyone", "Other_identity"]);

    let ch = ClientHelloBuilder::new([9u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(b"Client_identity", 0, 32)
        .build()
        .unwrap();
    let resp = c
        .c_init_client_hello(pb::CInitClientHelloRequest {
            client_hello: ch,
            freshness: pb::Freshness::Sha256 as i32,
            psks: vec![pb::PskInfo {
                identity_index: 0,
                psk_type: pb::PskType::External as i32,
                tls_hash: pb::TlsHash::Sha256 as i32,
            }],
            secret_request: None,
        })
        .await
        .unwrap()
        .into_inner();
    let early = KeyScheduleEarly::new(HashAlg::Sha256, Some(&psk));
    let key = early.binder_key(PskKind::External);
    let truncated = wire::truncated_for_binders(&resp.client_hello).unwrap();
    let expected = binder(
        HashAlg::Sha256,
        key.as_bytes(),
        &HashAlg::Sha256.hash(truncated),
    );
    assert_eq!(resp.binders, vec![expected.clone()]);
    let sent = wire::ClientHello::parse(&resp.client_hello).unwrap();
    assert_eq!(
        sent.pre_shared_key.unwrap().binders[0].binder,
        expected.as_slice()
    );
    // External PSKs are not consumed: a second offer works too.
    let again = ClientHelloBuilder::new([8u8; 32])
        .cipher_suites(&[CipherSuite::TlsAes128GcmSha256])
        .supported_versions(&[0x0304])
        .supported_groups(&[NamedGroup::X25519])
        .signature_algorithms(&[SignatureScheme::Ed25519])
        .key_share(NamedGroup::X25519, &[])
        .psk_modes(&[PskKeyExchangeMode::PskDheKe])
        .psk(b"Client_identity", 0, 32)
        .build()
        .unwrap();
    let offer = pb::CInitClientHelloRequest {
        client_hello: again,
        freshness: pb::Freshness::Sha256 as i32,
        psks: vec![pb::PskInfo {
            identity_index: 0,
            psk_type: pb::PskType::External as i32,
            tls_hash: pb::TlsHash::Sha256 as i32,
        }],
        secret_request: None,
    };
    c.c_init_client_hello(offer.clone()).await.unwrap();
    // An engine the PSK is not for cannot use it.
    let e = c2.c_init_client_hello(offer).await.unwrap_err();
    assert_eq!(
        lurk_proto::status::LurkStatus::from_grpc(&e),
        Some(lurk_proto::status::LurkStatus::InvalidPsk)
    );
    assert!(!cs.log().contains(&hex::encode(psk)));
}

#[test]
fn the_cs_refuses_to_start_without_its_sealing_key_until_one_is_created() {
    let dev = DevSetup::new();
    let cfg = dev.config_path();
    let cfg = cfg.to_str().unwrap();
    dev.edit_config(
        "sealing_key = \"lurk-ticket-seal\"",
        "sealing_key = \"production-seal\"",
    );
    let err = dev
        .try_start_with_env(&[])
        .err()
        .expect("no sealing key: no CS");
    assert!(
        err.contains("production-seal") && err.contains("token sealing-key"),
        "{err}"
    );

    let (ok, out) = lurk_cs(&["token", "sealing-key", "--config", cfg]);
    assert!(ok && out.contains("created"), "{out}");
    let (ok, out) = lurk_cs(&["token", "sealing-key", "--config", cfg]);
    assert!(ok && out.contains("already exists"), "{out}");
    let (_, list) = lurk_cs(&["keys", "list", "--config", cfg]);
    let line = list
        .lines()
        .find(|l| l.contains("production-seal"))
        .expect(&list);
    assert!(
        line.contains("sensitive=true") && line.contains("extractable=false"),
        "{line}"
    );
    let _cs = dev.start();
}
