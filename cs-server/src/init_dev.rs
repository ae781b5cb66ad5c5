//! `lurk-cs init-dev DIR`: a complete development setup in one step.
//!
//! Under `DIR`:
//! - `softhsm2.conf` and `tokens/`: a private SoftHSM token `lurk-dev` (random SO and user
//!   PINs; the user PIN in `pin`, mode 0600; the SO PIN is not kept: delete `DIR` to start
//!   again);
//! - in the token: client signing keys `client-ed25519` and `client-p256` (generated there,
//!   sensitive, not extractable) and the sealing key;
//! - `client-ed25519.pem`, `client-p256.pem`: self-signed client certificates, signed by the
//!   token keys (rcgen with a [`RemoteKeyPair`] that calls [`Token::sign`]);
//! - `tls/`: the gRPC transport PKI, plain files with software keys (transport credentials,
//!   not LURK credentials): `ca.pem`, `cs.pem`/`cs.key` (localhost, 127.0.0.1),
//!   `engine.pem`/`engine.key` (CN engine-dev), `engine2.pem`/`engine2.key` (CN engine-other);
//! - `lurk-cs.toml`, ready for `lurk-cs serve --config DIR/lurk-cs.toml`.
//!
//! The process must not have used the SoftHSM module before: its configuration
//! (`SOFTHSM2_CONF`) is read once, at `C_Initialize`. The CLI calls this first thing.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};

use lurk_proto::wire::SignatureScheme;
use rand::distributions::{Alphanumeric, DistString};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, RemoteKeyPair, SignatureAlgorithm,
};
use zeroize::Zeroizing;

use crate::config::TokenConfig;
use crate::error::TokenError;
use crate::token::keys::{generate_signing_key, key_uri, KeyKind};
use crate::token::{initialize_token, Need, SigningKey, SigningKeyType, Token};

/// Label of the SoftHSM token init-dev makes.
pub const DEV_TOKEN_LABEL: &str = "lurk-dev";
/// The gRPC listener address written in the development `lurk-cs.toml`.
pub const DEV_LISTEN_ADDR: &str = "127.0.0.1:7443";
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";
const SEALING_KEY_LABEL: &str = "lurk-ticket-seal";

/// The client keys made in the token: (config key id, token label, CKA_ID, kind).
const CLIENT_KEYS: [(&str, &str, &[u8], KeyKind); 2] = [
    ("ed25519", "client-ed25519", &[0x01], KeyKind::Ed25519),
    ("p256", "client-p256", &[0x02], KeyKind::P256),
];

/// Why init-dev made nothing, or stopped part-way.
#[derive(Debug, thiserror::Error)]
pub enum InitDevError {
    /// The directory already holds a finished set-up: it is never overwritten.
    #[error(
        "{0} already holds a development setup (lurk-cs.toml); use it, or remove the \
         directory to make a new one"
    )]
    Exists(PathBuf),
    /// A token directory without `lurk-cs.toml`: an earlier run stopped part-way.
    #[error("{0} holds a token directory from an unfinished init-dev; remove the directory")]
    Unfinished(PathBuf),
    /// A file or directory could not be written.
    #[error("{path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// SoftHSM token creation, login or key generation failed.
    #[error("token: {0}")]
    Token(#[from] TokenError),
    /// A certificate could not be made (rcgen, or the token signing it).
    #[error("certificate: {0}")]
    Cert(#[from] rcgen::Error),
}

/// What [`init_dev`] made.
#[derive(Clone, Debug)]
pub struct DevSetup {
    /// The set-up's directory, `DIR`.
    pub dir: PathBuf,
    /// `DIR/lurk-cs.toml`.
    pub config: PathBuf,
    /// `DIR/softhsm2.conf` (set `SOFTHSM2_CONF` to it to use softhsm2-util / pkcs11-tool).
    pub softhsm_conf: PathBuf,
    /// The token's label, [`DEV_TOKEN_LABEL`].
    pub token_label: String,
    /// `DIR/pin`: the user PIN (mode 0600), named by the config's `[token] pin_file`.
    pub pin_file: PathBuf,
    /// (config key id, certificate file) of each client key.
    pub client_certs: Vec<(String, PathBuf)>,
    /// `DIR/tls`: the transport CA, the CS's and the two engines' certificates and keys.
    pub tls_dir: PathBuf,
}

/// Signs certificates with a key in the token (rcgen's remote-key hook).
pub struct TokenCertSigner {
    token: Token,
    key: SigningKey,
    scheme: SignatureScheme,
    alg: &'static SignatureAlgorithm,
}

impl TokenCertSigner {
    /// Ed25519 and ECDSA keys (the schemes whose TLS encoding is also X.509's).
    pub fn new(token: &Token, key: SigningKey) -> Result<Self, TokenError> {
        let (scheme, alg) = match key.key_type() {
            SigningKeyType::Ed25519 => (SignatureScheme::Ed25519, &rcgen::PKCS_ED25519),
            SigningKeyType::EcdsaP256 => (
                SignatureScheme::EcdsaSecp256r1Sha256,
                &rcgen::PKCS_ECDSA_P256_SHA256,
            ),
            SigningKeyType::EcdsaP384 => (
                SignatureScheme::EcdsaSecp384r1Sha384,
                &rcgen::PKCS_ECDSA_P384_SHA384,
            ),
            SigningKeyType::Rsa { .. } => {
                return Err(TokenError::Unsupported(
                    "certificates signed by an RSA token key (use an external CA)".to_owned(),
                ))
            }
        };
        Ok(Self {
            token: token.clone(),
            key,
            scheme,
            alg,
        })
    }
}

impl RemoteKeyPair for TokenCertSigner {
    fn public_key(&self) -> &[u8] {
        self.key.public_key_raw()
    }

    fn sign(&self, msg: &[u8]) -> Result<Vec<u8>, rcgen::Error> {
        // Ed25519 signs the TBS itself; ECDSA hashes it and returns the DER
        // ECDSA-Sig-Value, which is also X.509's encoding.
        self.token.sign(&self.key, self.scheme, msg).map_err(|e| {
            tracing::error!(error = %e, "token signature for a certificate failed");
            rcgen::Error::RemoteKeyError
        })
    }

    fn algorithm(&self) -> &'static SignatureAlgorithm {
        self.alg
    }
}

/// A self-signed client certificate (PEM) for a token key, signed by that key.
pub fn self_signed_client_cert(
    token: &Token,
    key: SigningKey,
    common_name: &str,
) -> Result<String, InitDevError> {
    let signer = KeyPair::from_remote(Box::new(TokenCertSigner::new(token, key)?))?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
    Ok(params.self_signed(&signer)?.pem())
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> InitDevError + '_ {
    move |source| InitDevError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a new file with this mode (0600 for secrets).
fn write_file(path: &Path, contents: &[u8], mode: u32) -> Result<(), InitDevError> {
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create_new(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(mode);
    }
    #[cfg(not(unix))]
    let _ = mode;
    let mut f = opts.open(path).map_err(io(path))?;
    f.write_all(contents).map_err(io(path))
}

fn random_pin() -> Zeroizing<String> {
    Zeroizing::new(Alphanumeric.sample_string(&mut rand::rngs::OsRng, 24))
}

/// A TOML string literal.
fn q(s: impl AsRef<str>) -> String {
    toml::Value::String(s.as_ref().to_owned()).to_string()
}

fn qp(p: &Path) -> String {
    q(p.display().to_string())
}

/// The paths the configuration names.
struct Layout {
    dir: PathBuf,
    softhsm_conf: PathBuf,
    tokens: PathBuf,
    pin: PathBuf,
    tls: PathBuf,
    config: PathBuf,
}

impl Layout {
    fn new(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            softhsm_conf: dir.join("softhsm2.conf"),
            tokens: dir.join("tokens"),
            pin: dir.join("pin"),
            tls: dir.join("tls"),
            config: dir.join("lurk-cs.toml"),
        }
    }

    fn client_cert(&self, label: &str) -> PathBuf {
        self.dir.join(format!("{label}.pem"))
    }
}

fn render_config(l: &Layout) -> String {
    let mut c = String::new();
    c.push_str(
        "# Written by `lurk-cs init-dev` for development: a SoftHSM token in this directory,\n\
         # its PIN in a file, and a private transport PKI. Not for production.\n\n",
    );
    c.push_str(&format!("[listen]\naddr = {}\n\n", q(DEV_LISTEN_ADDR)));
    c.push_str(&format!(
        "[listen.tls]\ncert = {}\nkey = {}\nclient_ca = {}\n\n",
        qp(&l.tls.join("cs.pem")),
        qp(&l.tls.join("cs.key")),
        qp(&l.tls.join("ca.pem"))
    ));
    c.push_str(&format!(
        "[token]\nmodule = {}\nlabel = {}\npin_file = {}\nsealing_key = {}\n\n",
        q(SOFTHSM_MODULE),
        q(DEV_TOKEN_LABEL),
        qp(&l.pin),
        q(SEALING_KEY_LABEL)
    ));
    c.push_str(&format!(
        "[token.module_env]\nSOFTHSM2_CONF = {}\n\n",
        qp(&l.softhsm_conf)
    ));
    for (id, label, _, _) in CLIENT_KEYS {
        c.push_str(&format!(
            "[[keys]]\nid = {}\nobject = {}\ncertificate_chain = {}\n\n",
            q(id),
            q(format!("pkcs11:object={label};type=private")),
            qp(&l.client_cert(label))
        ));
    }
    c.push_str("# token: (EC)DHE key pairs in the token; memory: in CS memory (faster).\n");
    c.push_str("[ephemeral]\nbackend = \"token\"\n\n");
    c.push_str(&format!(
        "[store]\npath = {}\n",
        qp(&l.dir.join("tickets.sqlite"))
    ));
    c
}

/// Makes the development setup described in the module documentation.
pub fn init_dev(dir: &Path) -> Result<DevSetup, InitDevError> {
    if dir.join("lurk-cs.toml").exists() {
        return Err(InitDevError::Exists(dir.to_path_buf()));
    }
    let tokens = dir.join("tokens");
    if tokens.is_dir()
        && std::fs::read_dir(&tokens)
            .map_err(io(&tokens))?
            .next()
            .is_some()
    {
        return Err(InitDevError::Unfinished(dir.to_path_buf()));
    }
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700)).map_err(io(dir))?;
    }
    let dir = dir.canonicalize().map_err(io(dir))?;
    let l = Layout::new(&dir);
    std::fs::create_dir_all(&l.tokens).map_err(io(&l.tokens))?;
    std::fs::create_dir_all(&l.tls).map_err(io(&l.tls))?;

    // 1. SoftHSM configuration and token.
    write_file(
        &l.softhsm_conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\nlog.level = ERROR\n",
            l.tokens.display()
        )
        .as_bytes(),
        0o600,
    )?;
    let module_env = BTreeMap::from([(
        "SOFTHSM2_CONF".to_owned(),
        l.softhsm_conf.display().to_string(),
    )]);
    let (so_pin, user_pin) = (random_pin(), random_pin());
    initialize_token(
        SOFTHSM_MODULE.as_ref(),
        &module_env,
        DEV_TOKEN_LABEL,
        &so_pin,
        &user_pin,
    )?;
    drop(so_pin);
    write_file(&l.pin, format!("{}\n", user_pin.as_str()).as_bytes(), 0o600)?;
    drop(user_pin);
    let token_cfg = TokenConfig {
        module: SOFTHSM_MODULE.into(),
        label: DEV_TOKEN_LABEL.to_owned(),
        pin_env: None,
        pin_file: Some(l.pin.clone()),
        pool_size: 2,
        sealing_key: SEALING_KEY_LABEL.to_owned(),
        module_env,
        recycle_after_objects: None,
        recycle_drain_ms: 3000,
    };
    let token = Token::open(&token_cfg)?;
    token.check_mechanisms(&[
        Need::GenerateSigningKey(SigningKeyType::Ed25519),
        Need::GenerateSigningKey(SigningKeyType::EcdsaP256),
        Need::SealingKeyGen,
    ])?;

    // 2. Client keys in the token, and their self-signed certificates.
    let mut client_certs = Vec::new();
    for (id, label, ck_id, kind) in CLIENT_KEYS {
        generate_signing_key(&token, label, ck_id, kind)?;
        let key = token.find_signing_key(&key_uri(label, ck_id))?;
        let pem = self_signed_client_cert(&token, key, &format!("lurk dev client ({id})"))?;
        let path = l.client_cert(label);
        write_file(&path, pem.as_bytes(), 0o644)?;
        client_certs.push((id.to_owned(), path));
    }

    // 3. The sealing key.
    token.ensure_sealing_key()?;
    drop(token);

    // 4. Transport PKI (software keys).
    write_transport_pki(&l.tls)?;

    // 5. The configuration, written last: its presence marks a finished setup.
    write_file(&l.config, render_config(&l).as_bytes(), 0o644)?;
    tracing::info!(dir = %dir.display(), "development setup written");
    Ok(DevSetup {
        config: l.config.clone(),
        softhsm_conf: l.softhsm_conf.clone(),
        token_label: DEV_TOKEN_LABEL.to_owned(),
        pin_file: l.pin.clone(),
        client_certs,
        tls_dir: l.tls.clone(),
        dir,
    })
}

fn write_transport_pki(tls: &Path) -> Result<(), InitDevError> {
    let ca_key = KeyPair::generate()?;
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.distinguished_name
        .push(DnType::CommonName, "lurk dev transport CA");
    ca.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    ca.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let ca_cert = ca.self_signed(&ca_key)?;
    write_file(&tls.join("ca.pem"), ca_cert.pem().as_bytes(), 0o644)?;

    let leaves: [(&str, &str, Vec<String>, ExtendedKeyUsagePurpose); 3] = [
        (
            "cs",
            "lurk-cs",
            vec!["localhost".to_owned(), "127.0.0.1".to_owned()],
            ExtendedKeyUsagePurpose::ServerAuth,
        ),
        (
            "engine",
            "engine-dev",
            vec!["engine-dev".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
        (
            "engine2",
            "engine-other",
            vec!["engine-other".to_owned()],
            ExtendedKeyUsagePurpose::ClientAuth,
        ),
    ];
    for (file, cn, sans, eku) in leaves {
        let key = KeyPair::generate()?;
        let mut p = CertificateParams::new(sans)?;
        p.distinguished_name.push(DnType::CommonName, cn);
        p.is_ca = IsCa::ExplicitNoCa;
        p.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        p.extended_key_usages = vec![eku];
        let cert = p.signed_by(&key, &ca_cert, &ca_key)?;
        write_file(
            &tls.join(format!("{file}.pem")),
            cert.pem().as_bytes(),
            0o644,
        )?;
        let key_pem = Zeroizing::new(key.serialize_pem());
        write_file(&tls.join(format!("{file}.key")), key_pem.as_bytes(), 0o600)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn the_written_config_parses_with_the_service_loader() {
        let dir = Path::new("/tmp/lurk dev \"quoted\"");
        let text = render_config(&Layout::new(dir));
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.listen.addr, DEV_LISTEN_ADDR);
        let tls = cfg.listen.tls.unwrap();
        assert_eq!(tls.client_ca, dir.join("tls/ca.pem"));
        assert_eq!(cfg.token.label, DEV_TOKEN_LABEL);
        assert_eq!(
            cfg.token.pin_file.as_deref(),
            Some(dir.join("pin").as_path())
        );
        assert_eq!(cfg.token.pin_env, None);
        assert_eq!(
            cfg.token
                .module_env
                .get("SOFTHSM2_CONF")
                .map(String::as_str),
            Some(dir.join("softhsm2.conf").to_str().unwrap())
        );
        let ids: Vec<_> = cfg.keys.iter().map(|k| k.id.as_str()).collect();
        assert_eq!(ids, ["ed25519", "p256"]);
        assert_eq!(
            cfg.keys[0].object,
            "pkcs11:object=client-ed25519;type=private"
        );
        assert_eq!(cfg.store.path, dir.join("tickets.sqlite"));
    }

    #[test]
    fn an_existing_setup_is_refused_before_touching_the_token() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("lurk-cs.toml"), "").unwrap();
        assert!(matches!(init_dev(dir.path()), Err(InitDevError::Exists(_))));
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("tokens")).unwrap();
        std::fs::write(dir.path().join("tokens/x"), "").unwrap();
        assert!(matches!(
            init_dev(dir.path()),
            Err(InitDevError::Unfinished(_))
        ));
    }
}
