//! What the operations read from handshake messages: thin views over `lurk_proto::wire`,
//! owning what outlives the request. What `lurk_proto::wire` refuses is mapped once, by
//! its kind (`error.rs`): bytes that do not parse (truncated, trailing bytes, a length out of
//! range, past a cap) are `invalid_format`; a rule the parser checks (versions, duplicate or
//! misplaced extensions, pre_shared_key not last, identities and binders unmatched, the
//! second ClientHello) is `invalid_handshake`, like a rule checked here or in an operation.

use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{
    self, CipherSuite, HandshakeMessage, HandshakeType, NamedGroup, PskKeyExchangeMode,
    SignatureScheme, TLS13,
};
use subtle::ConstantTimeEq;

use crate::error::ServiceError;

/// Splits a concatenation of complete handshake messages.
pub(crate) fn split(bytes: &[u8]) -> Result<Vec<HandshakeMessage<'_>>, ServiceError> {
    Ok(wire::split_handshake_messages(bytes)?)
}

pub(crate) fn encode(typ: HandshakeType, body: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(body.len() + 4);
    out.push(typ.get());
    out.extend_from_slice(&(body.len() as u32).to_be_bytes()[1..]);
    out.extend_from_slice(body);
    out
}

pub(crate) struct ClientHelloInfo {
    pub random: [u8; 32],
    pub legacy_session_id: Vec<u8>,
    pub suites: Vec<CipherSuite>,
    pub groups: Vec<NamedGroup>,
    /// (group, the engine left it empty for the CS)
    pub shares: Vec<(NamedGroup, bool)>,
    pub psk_identities: Vec<Vec<u8>>,
    pub psk_modes: Vec<PskKeyExchangeMode>,
    pub early_data: bool,
    pub post_handshake_auth: bool,
    /// The server_name extension's host_name (RFC 6066 §3), if any.
    pub server_name: Option<String>,
    /// signature_algorithms (RFC 8446 §4.2.3): what the server's CertificateVerify may use.
    pub signature_schemes: Vec<SignatureScheme>,
}

pub(crate) fn client_hello(raw: &[u8]) -> Result<ClientHelloInfo, ServiceError> {
    let ch = wire::ClientHello::parse(raw)?;
    // RFC 8446 §4.2.1: a TLS 1.3 ClientHello lists 0x0304 in supported_versions.
    if !ch.supported_versions.contains(&TLS13) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidHandshake,
            "the ClientHello does not offer TLS 1.3",
        ));
    }
    Ok(ClientHelloInfo {
        random: *ch.random,
        legacy_session_id: ch.legacy_session_id.to_vec(),
        suites: ch.cipher_suites.clone(),
        groups: ch.supported_groups.clone().unwrap_or_default(),
        shares: ch
            .key_shares
            .as_ref()
            .map(|v| v.iter().map(|k| (k.group, k.is_placeholder())).collect())
            .unwrap_or_default(),
        psk_identities: ch
            .pre_shared_key
            .as_ref()
            .map(|p| p.identities.iter().map(|i| i.identity.to_vec()).collect())
            .unwrap_or_default(),
        psk_modes: ch.psk_modes.clone().unwrap_or_default(),
        early_data: ch.early_data,
        post_handshake_auth: ch.post_handshake_auth,
        server_name: ch
            .server_names
            .as_ref()
            .and_then(|n| n.first())
            .map(|n| String::from_utf8_lossy(n).into_owned()),
        signature_schemes: ch.signature_algorithms.clone().unwrap_or_default(),
    })
}

pub(crate) fn complete_client_hello(
    raw: &[u8],
    random: Option<&[u8; 32]>,
    fills: &[(NamedGroup, Vec<u8>)],
) -> Result<Vec<u8>, ServiceError> {
    Ok(wire::complete_client_hello(raw, random, fills)?)
}

/// RFC 8446 §4.1.2: the second ClientHello changes only what a HelloRetryRequest allows.
pub(crate) fn check_second_client_hello(
    first: &[u8],
    hrr: &[u8],
    second: &[u8],
) -> Result<(), ServiceError> {
    Ok(wire::check_second_client_hello(first, hrr, second)?)
}

pub(crate) fn truncated_for_binders(raw: &[u8]) -> Result<&[u8], ServiceError> {
    Ok(wire::truncated_for_binders(raw)?)
}

pub(crate) fn set_binders(raw: &mut [u8], binders: &[Vec<u8>]) -> Result<(), ServiceError> {
    Ok(wire::set_binders(raw, binders)?)
}

pub(crate) struct ServerHelloInfo {
    pub is_hrr: bool,
    pub legacy_session_id_echo: Vec<u8>,
    pub suite: CipherSuite,
    pub key_share: Option<(NamedGroup, Vec<u8>)>,
    pub hrr_group: Option<NamedGroup>,
    pub selected_psk: Option<u16>,
    pub cookie: Option<Vec<u8>>,
}

pub(crate) fn server_hello(raw: &[u8]) -> Result<ServerHelloInfo, ServiceError> {
    let sh = wire::ServerHello::parse(raw)?;
    Ok(ServerHelloInfo {
        is_hrr: sh.is_hello_retry_request(),
        legacy_session_id_echo: sh.legacy_session_id_echo.to_vec(),
        suite: sh.cipher_suite,
        key_share: sh.key_share.map(|k| (k.group, k.key_exchange.to_vec())),
        hrr_group: sh.selected_group,
        selected_psk: sh.selected_identity,
        cookie: sh.cookie.map(<[u8]>::to_vec),
    })
}

pub(crate) struct EncryptedExtensionsInfo {
    pub early_data: bool,
}

pub(crate) fn encrypted_extensions(raw: &[u8]) -> Result<EncryptedExtensionsInfo, ServiceError> {
    let ee = wire::EncryptedExtensions::parse(raw)?;
    Ok(EncryptedExtensionsInfo {
        early_data: ee.early_data,
    })
}

pub(crate) struct CertificateRequestInfo {
    pub context: Vec<u8>,
    pub signature_schemes: Vec<SignatureScheme>,
}

pub(crate) fn certificate_request(raw: &[u8]) -> Result<CertificateRequestInfo, ServiceError> {
    let cr = wire::CertificateRequest::parse(raw)?;
    Ok(CertificateRequestInfo {
        context: cr.context.to_vec(),
        signature_schemes: cr.signature_algorithms.clone(),
    })
}

pub(crate) struct CertificateInfo {
    pub context: Vec<u8>,
    pub chain: Vec<Vec<u8>>,
}

pub(crate) fn certificate(raw: &[u8]) -> Result<CertificateInfo, ServiceError> {
    let c = wire::Certificate::parse(raw)?;
    Ok(CertificateInfo {
        context: c.context.to_vec(),
        chain: c.entries.iter().map(|e| e.cert_data.to_vec()).collect(),
    })
}

/// The server CertificateVerify: (scheme, signature).
pub(crate) fn certificate_verify(raw: &[u8]) -> Result<(SignatureScheme, Vec<u8>), ServiceError> {
    let cv = wire::CertificateVerify::parse(raw)?;
    Ok((cv.scheme, cv.signature.to_vec()))
}

pub(crate) struct TicketInfo {
    pub lifetime: u32,
    pub nonce: Vec<u8>,
    pub ticket: Vec<u8>,
    pub max_early_data: u32,
}

pub(crate) fn new_session_ticket(raw: &[u8]) -> Result<TicketInfo, ServiceError> {
    let t = wire::NewSessionTicket::parse(raw)?;
    Ok(TicketInfo {
        lifetime: t.ticket_lifetime,
        nonce: t.ticket_nonce.to_vec(),
        ticket: t.ticket.to_vec(),
        max_early_data: t.max_early_data_size.unwrap_or(0),
    })
}

/// Whether a Finished message carries `expected` (constant time).
pub(crate) fn finished_matches(raw: &[u8], hash: wire::HashAlg, expected: &[u8]) -> bool {
    match wire::Finished::parse(raw, hash) {
        Ok(f) => f.verify_data.len() == expected.len() && bool::from(f.verify_data.ct_eq(expected)),
        Err(_) => false,
    }
}
