//! `init_dev` in a process of its own (this test binary): SoftHSM reads `SOFTHSM2_CONF`
//! once per process, and init-dev must be the first to load it so that the token lands in
//! the directory it writes.

use std::path::Path;

use lurk_cs::config::Config;
use lurk_cs::init_dev::{init_dev, InitDevError};
use lurk_cs::token::keys::list_keys;
use lurk_cs::token::{Need, SigningKeyType, Token};
use lurk_proto::wire::{NamedGroup, SignatureScheme};
use ring::signature::{self as rs, UnparsedPublicKey};
use x509_parser::prelude::*;

fn pem_certs(path: &Path) -> Vec<Vec<u8>> {
    let data = std::fs::read(path).unwrap();
    rustls_pemfile::certs(&mut data.as_slice())
        .map(|c| c.unwrap().to_vec())
        .collect()
}

fn verify_alg(key_type: SigningKeyType) -> &'static dyn rs::VerificationAlgorithm {
    match key_type {
        SigningKeyType::Ed25519 => &rs::ED25519,
        SigningKeyType::EcdsaP256 => &rs::ECDSA_P256_SHA256_ASN1,
        other => panic!("{other:?}"),
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[test]
fn init_dev_makes_a_usable_setup() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("dev");
    let setup = init_dev(&dir).unwrap();

    // The configuration parses with the service's own parser and opens the token.
    let cfg = Config::from_toml(&std::fs::read_to_string(&setup.config).unwrap()).unwrap();
    let token = Token::open(&cfg.token).unwrap();
    let mut needs = vec![Need::Sealing];
    needs.extend(NamedGroup::SUPPORTED.map(Need::TokenEphemeral));

    // Both client keys: found from the config, certificates signed by the token keys,
    // carrying the token's public key.
    assert_eq!(cfg.keys.len(), 2);
    for k in &cfg.keys {
        let key = token.find_signing_key(&k.object).unwrap();
        needs.push(Need::Sign(key.key_type()));
        let chain = pem_certs(&k.certificate_chain);
        assert_eq!(chain.len(), 1);
        let (_, cert) = X509Certificate::from_der(&chain[0]).unwrap();
        assert_eq!(cert.public_key().raw, key.spki_der(), "{}", k.id);
        assert!(key.matches_certificate(&chain[0]).unwrap());
        let alg = verify_alg(key.key_type());
        UnparsedPublicKey::new(alg, key.public_key_raw())
            .verify(cert.tbs_certificate.as_ref(), &cert.signature_value.data)
            .expect("self-signature verifies with the token key");
        // And the key signs TLS CertificateVerify content verifiable with the certificate.
        let msg = [0x20u8; 100];
        let scheme = key.schemes()[0];
        let sig = token.sign(&key, scheme, &msg).unwrap();
        UnparsedPublicKey::new(alg, &cert.public_key().subject_public_key.data[..])
            .verify(&msg, &sig)
            .unwrap();
        assert!(matches!(
            (k.id.as_str(), scheme),
            ("ed25519", SignatureScheme::Ed25519) | ("p256", SignatureScheme::EcdsaSecp256r1Sha256)
        ));
    }
    token.check_mechanisms(&needs).unwrap();

    // Keys: sensitive, not extractable; the sealing key is there and works.
    let listing = list_keys(&token).unwrap();
    let labels: Vec<_> = listing.iter().map(|l| l.label.as_str()).collect();
    assert_eq!(
        labels,
        ["client-ed25519", "client-p256", "lurk-ticket-seal"]
    );
    assert!(listing.iter().all(|l| l.sensitive && !l.extractable));
    let sealed = token.seal(b"aad", b"psk").unwrap();
    assert_eq!(&token.unseal(b"aad", &sealed).unwrap()[..], b"psk");

    // The token really lives in DIR/tokens: another process sees it with DIR's config.
    let out = std::process::Command::new("softhsm2-util")
        .arg("--show-slots")
        .env("SOFTHSM2_CONF", &setup.softhsm_conf)
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&out.stdout).contains("lurk-dev"));

    // Transport PKI: the leaves chain to the CA; names as the tests of isolation expect.
    let tls = cfg.listen.tls.as_ref().unwrap();
    let ca_der = &pem_certs(&tls.client_ca)[0];
    let (_, ca) = X509Certificate::from_der(ca_der).unwrap();
    assert!(ca.is_ca());
    for (file, cn) in [
        ("cs.pem", "lurk-cs"),
        ("engine.pem", "engine-dev"),
        ("engine2.pem", "engine-other"),
    ] {
        let der = &pem_certs(&setup.tls_dir.join(file))[0];
        let (_, leaf) = X509Certificate::from_der(der).unwrap();
        let got_cn = leaf
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap();
        assert_eq!(got_cn, cn);
        UnparsedPublicKey::new(
            &rs::ECDSA_P256_SHA256_ASN1,
            &ca.public_key().subject_public_key.data[..],
        )
        .verify(leaf.tbs_certificate.as_ref(), &leaf.signature_value.data)
        .unwrap_or_else(|_| panic!("{file} is not signed by the CA"));
        let key_file = setup.tls_dir.join(file.replace(".pem", ".key"));
        assert!(std::fs::read_to_string(&key_file)
            .unwrap()
            .contains("PRIVATE KEY"));
        #[cfg(unix)]
        assert_eq!(mode(&key_file), 0o600);
    }
    let cs_pem = setup.tls_dir.join("cs.pem");
    let cs_der = &pem_certs(&cs_pem)[0];
    let (_, cs) = X509Certificate::from_der(cs_der).unwrap();
    let san = cs.subject_alternative_name().unwrap().unwrap().value;
    let names: Vec<String> = san
        .general_names
        .iter()
        .map(|n| match n {
            GeneralName::DNSName(d) => d.to_string(),
            GeneralName::IPAddress(ip) => format!("{ip:?}"),
            other => format!("{other:?}"),
        })
        .collect();
    assert!(names.contains(&"localhost".to_owned()), "{names:?}");
    assert!(names.contains(&"[127, 0, 0, 1]".to_owned()), "{names:?}");

    #[cfg(unix)]
    assert_eq!(mode(&setup.pin_file), 0o600);

    // A second run on the same directory is refused.
    assert!(matches!(init_dev(&dir), Err(InitDevError::Exists(_))));
}
