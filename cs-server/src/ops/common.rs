//! Rules and computations several exchanges share: the secret_request policy, freshness,
//! PSK loading, binders and the client CertificateVerify.

use lurk_proto::freshness::client_random;
use lurk_proto::key_schedule::{binder, KeyScheduleEarly, PskKind, Secret};
use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{HandshakeMessage, HandshakeType, HashAlg, SignatureScheme};

use crate::config::EphemeralBackendKind;
use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::msgs;
use crate::ops::state::{OfferedPsk, Stage};
use crate::session::{lock_session, Session, SessionId};

/// At most this many PSK identities in one ClientHello (each one costs a store lookup).
pub(crate) const MAX_PSK_IDENTITIES: usize = 8;
/// At most this many NewSessionTicket messages in one c_register_tickets.
pub(crate) const MAX_TICKETS_PER_REQUEST: usize = 16;
/// At most this many NewSessionTicket messages registered in one session (servers send a
/// few per connection).
pub(crate) const MAX_TICKETS_PER_SESSION: usize = 64;
/// At most this many registrations of one session refused or failed by the store: each
/// costs a store transaction, and a refused one changes nothing, so it could be repeated
/// for the session's whole life.
pub(crate) const MAX_STORE_FAILURES_PER_SESSION: u8 = 8;

/// Reads the server's Certificate then CertificateVerify (RFC 8446 §4.4.2, §4.4.3) from the
/// flight into the transcript and, with `[server_auth]` on, checks them for `server_name`
/// with the schemes the ClientHello `offered` (docs/protocol.md): returns the verified name,
/// `None` with the policy off.
pub(crate) fn server_certificate<'m, 'a: 'm>(
    cs: &Cs,
    it: &mut impl Iterator<Item = &'m HandshakeMessage<'a>>,
    transcript: &mut Transcript,
    hash: HashAlg,
    server_name: Option<&str>,
    offered: &[SignatureScheme],
) -> Result<Option<String>, ServiceError> {
    let mut raw = [&[][..]; 2];
    let mut th_certificate = Vec::new();
    for (k, expected) in [HandshakeType::Certificate, HandshakeType::CertificateVerify]
        .into_iter()
        .enumerate()
    {
        let m = it.next().filter(|m| m.typ == expected).ok_or_else(|| {
            ServiceError::refuse(
                LurkStatus::InvalidHandshake,
                format!("expected the server's {expected:?}"),
            )
        })?;
        transcript.add(m.raw);
        if k == 0 && cs.server_auth.is_some() {
            th_certificate = transcript.hash(hash);
        }
        raw[k] = m.raw;
    }
    match cs.server_auth.as_ref() {
        Some(policy) => Ok(Some(policy.check_certificate(
            server_name,
            offered,
            raw[0],
            &th_certificate,
            raw[1],
        )?)),
        None => Ok(None),
    }
}

/// Whether the memory backend makes the ephemerals (no token call to make or use one).
pub(crate) fn memory_ephemerals(cs: &Cs) -> bool {
    cs.ephemeral.kind() == EphemeralBackendKind::Memory
}

/// The secret_request policy (docs/design.md §4.6): r, the PSK and private keys never leave the
/// CS; asking for r is refused outright. Other bits are wishes.
pub(crate) fn check_secret_request(req: Option<&pb::SecretRequest>) -> Result<(), ServiceError> {
    if req.is_some_and(|r| r.r) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidSecretRequest,
            "the resumption master secret (r) never leaves the CS",
        ));
    }
    Ok(())
}

pub(crate) fn secret(kind: pb::SecretType, value: &Secret) -> pb::Secret {
    pb::Secret {
        secret_type: kind as i32,
        value: value.as_bytes().to_vec(),
    }
}

/// The ClientHello.random the CS derives from the engine's random (docs/design.md §3).
pub(crate) fn fresh_random(
    cs: &Cs,
    freshness: i32,
    engine_random: &[u8; 32],
) -> Result<[u8; 32], ServiceError> {
    let f = pb::Freshness::try_from(freshness).map_err(|_| {
        ServiceError::refuse(
            LurkStatus::InvalidFreshness,
            format!("unknown freshness function {freshness}"),
        )
    })?;
    if f == pb::Freshness::Null && !(cfg!(feature = "test-vectors") && cs.test_vectors) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidFreshness,
            "null freshness is accepted only in test-vector mode",
        ));
    }
    Ok(client_random(f, cs.freshness_mode, engine_random))
}

pub(crate) fn hash_of(tls_hash: i32) -> Result<HashAlg, ServiceError> {
    match pb::TlsHash::try_from(tls_hash) {
        Ok(pb::TlsHash::Sha256) => Ok(HashAlg::Sha256),
        Ok(pb::TlsHash::Sha384) => Ok(HashAlg::Sha384),
        Err(_) => Err(ServiceError::refuse(
            LurkStatus::InvalidPsk,
            format!("unknown tls_hash {tls_hash}"),
        )),
    }
}

/// Loads the PSK of each identity the ClientHello offers. A resumption ticket is consumed
/// (used once, RFC 8446 §C.4) and only the engine that registered it can load it.
///
/// A ticket bound to a server name (registered under `[server_auth]`) is offered only in a
/// ClientHello whose server_name is that name; under `[server_auth]`, a ticket bound to no
/// name (registered with the policy off) is refused. Under the policy, a ticket bound to
/// another name is refused *before* it is taken (`peek_ticket`), so that offering it for the
/// wrong name does not use it up; any other refused ticket is consumed like any offered one.
/// The take stays the one atomic point of single use, and the name is checked again on
/// what it returns (authenticated by the seal's AAD).
pub(crate) fn load_psks(
    cs: &Cs,
    engine: &str,
    identities: &[Vec<u8>],
    infos: &[pb::PskInfo],
    server_name: Option<&str>,
) -> Result<Vec<OfferedPsk>, ServiceError> {
    let mut out = Vec::with_capacity(identities.len());
    for (i, identity) in identities.iter().enumerate() {
        let info = infos
            .iter()
            .find(|p| p.identity_index as usize == i)
            .ok_or_else(|| {
                ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    format!("no PSK metadata for identity {i}"),
                )
            })?;
        let hash = hash_of(info.tls_hash)?;
        let external = match pb::PskType::try_from(info.psk_type) {
            Ok(pb::PskType::External) => true,
            Ok(pb::PskType::Resumption) => false,
            Err(_) => {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    "unknown psk_type",
                ))
            }
        };
        let psk = if external {
            crate::telemetry::store_op("get_external_psk", || {
                cs.store.get_external_psk(Some(engine), identity)
            })?
            .map(|p| (p.psk, p.hash, None))
        } else {
            if cs.server_auth.is_some() {
                let binding = crate::telemetry::store_op("peek_ticket", || {
                    cs.store.peek_ticket(engine, identity)
                })?;
                if let Some(bound) = binding.and_then(|b| b.server_name) {
                    if Some(bound.as_str()) != server_name {
                        return Err(ServiceError::refuse(
                            LurkStatus::InvalidPsk,
                            format!("PSK identity {i} is a ticket of another server"),
                        ));
                    }
                }
            }
            let taken = crate::telemetry::store_op("take_ticket", || {
                cs.store.take_ticket(engine, identity)
            })?;
            if taken.is_some() {
                crate::telemetry::ticket_taken();
            }
            taken.map(|t| (t.psk, t.hash, Some(t.server_name)))
        };
        let (psk, stored_hash, ticket_name) = psk.ok_or_else(|| {
            ServiceError::refuse(
                LurkStatus::InvalidPsk,
                format!("PSK identity {i} is unknown to this CS"),
            )
        })?;
        if stored_hash != hash {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidPsk,
                format!("PSK identity {i} is bound to {stored_hash:?}, not {hash:?}"),
            ));
        }
        let ticket_name = ticket_name.flatten();
        if let Some(bound) = ticket_name.as_deref() {
            if Some(bound) != server_name {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    format!("PSK identity {i} is a ticket of another server"),
                ));
            }
        } else if !external && cs.server_auth.is_some() {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidPsk,
                format!(
                    "[server_auth]: PSK identity {i} is a ticket whose server was not authenticated"
                ),
            ));
        }
        out.push(OfferedPsk {
            identity: identity.clone(),
            psk: Secret::from_bytes(&psk),
            hash,
            external,
            server_name: ticket_name,
        });
    }
    Ok(out)
}

/// RFC 8446 §4.2.11.2: each binder is an HMAC over the transcript so far plus the
/// ClientHello truncated before the binders, under the PSK's binder key.
pub(crate) fn binders<P: std::borrow::Borrow<OfferedPsk>>(
    prefix: &Transcript,
    client_hello: &[u8],
    psks: &[P],
) -> Result<Vec<Vec<u8>>, ServiceError> {
    let truncated = msgs::truncated_for_binders(client_hello)?;
    Ok(psks
        .iter()
        .map(|p| {
            let p = p.borrow();
            let early = KeyScheduleEarly::new(p.hash, Some(p.psk.as_bytes()));
            let kind = if p.external {
                PskKind::External
            } else {
                PskKind::Resumption
            };
            let key = early.binder_key(kind);
            binder(p.hash, key.as_bytes(), &prefix.hash_with(p.hash, truncated))
        })
        .collect())
}

/// Signs the client CertificateVerify (RFC 8446 §4.4.3) over `transcript_hash` (the
/// handshake through the client Certificate) with the key `key_id`, in a scheme from the
/// server's signature_algorithms. Checks that the Certificate message the engine sends
/// carries that key's certificate. Returns None when the engine sends an empty Certificate
/// (no suitable key: no CertificateVerify, RFC 8446 §4.4.2).
pub(crate) fn certificate_verify(
    cs: &Cs,
    engine: &str,
    key_id: &str,
    client_certificate: &[u8],
    expected_context: &[u8],
    offered: &[SignatureScheme],
    transcript_hash: &[u8],
) -> Result<Option<Vec<u8>>, ServiceError> {
    let cert = msgs::certificate(client_certificate)?;
    // RFC 8446 §4.4.2: the context echoes the CertificateRequest's.
    if cert.context != expected_context {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            "the client Certificate does not echo the certificate_request_context",
        ));
    }
    if cert.chain.is_empty() {
        return Ok(None);
    }
    let key = cs.keys.get(key_id, engine)?;
    if cert.chain[0] != key.chain()[0] {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            format!("the client Certificate's leaf is not the certificate of key {key_id:?}"),
        ));
    }
    let scheme = key.choose_scheme(offered)?;
    let mut content = vec![0x20u8; 64];
    content.extend_from_slice(b"TLS 1.3, client CertificateVerify");
    content.push(0);
    content.extend_from_slice(transcript_hash);
    let token = cs
        .token
        .as_ref()
        .ok_or_else(|| ServiceError::Internal("no token to sign with".into()))?;
    let signature = token.sign(&key.key, scheme, &content)?;
    let mut body = Vec::with_capacity(signature.len() + 4);
    body.extend_from_slice(&scheme.get().to_be_bytes());
    body.extend_from_slice(&(signature.len() as u16).to_be_bytes());
    body.extend_from_slice(&signature);
    Ok(Some(msgs::encode(HandshakeType::CertificateVerify, &body)))
}

/// The client's answer to a CertificateRequest received in the handshake: adds the client
/// Certificate and, when the engine has a key, the CertificateVerify the CS signs to the
/// transcript. Returns the CertificateVerify message (empty when no request or no key).
#[allow(clippy::too_many_arguments)]
pub(crate) fn answer_certificate_request(
    cs: &Cs,
    engine: &str,
    cert_request: Option<&msgs::CertificateRequestInfo>,
    key_id: &str,
    client_certificate: &[u8],
    transcript: &mut Transcript,
    hash: HashAlg,
) -> Result<Vec<u8>, ServiceError> {
    let Some(cr) = cert_request else {
        return Ok(Vec::new());
    };
    if client_certificate.is_empty() {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidCertificate,
            "the server asked for a certificate: send the client Certificate message",
        ));
    }
    transcript.add(client_certificate);
    let cv = certificate_verify(
        cs,
        engine,
        key_id,
        client_certificate,
        &cr.context,
        &cr.signature_schemes,
        &transcript.hash(hash),
    )?;
    match cv {
        Some(cv) => {
            transcript.add(&cv);
            Ok(cv)
        }
        None => Ok(Vec::new()),
    }
}

/// Closes the session when the engine says this was its last exchange.
pub(crate) fn finish(
    cs: &Cs,
    id: &SessionId,
    session: &mut Session<Stage>,
    last_exchange: bool,
) -> bool {
    if last_exchange {
        cs.sessions.close(id);
    } else {
        cs.sessions.touch(id, session);
    }
    last_exchange
}

/// Runs one exchange on an open session so that a refused exchange changes nothing
/// (docs/protocol.md): `prepare` sees the stage read-only and does everything that can fail
/// (checks, agreements, signatures), returning its result and the bytes the stage will hold
/// once it is applied (an upper bound); the session table admits that size or refuses
/// (`too_many_sessions`); only then does `commit` apply the result, and `commit` cannot fail.
/// The session is then touched, or closed when `last_exchange`.
pub(crate) fn exchange<P, R>(
    cs: &Cs,
    engine: &str,
    session_id: &[u8],
    last_exchange: bool,
    prepare: impl FnOnce(&Stage) -> Result<(P, usize), ServiceError>,
    commit: impl FnOnce(&mut Stage, P) -> R,
) -> Result<R, ServiceError> {
    exchange_or_refuse(
        cs,
        engine,
        session_id,
        last_exchange,
        prepare,
        |stage, p| Ok(commit(stage, p)),
    )
}

/// [`exchange`] for an exchange whose outcome decides whether the session ends: `prepare`
/// also says whether `last_exchange` applies (`c_server_flight` keeps the session open when
/// the flight was incomplete).
pub(crate) fn exchange_with<P, R>(
    cs: &Cs,
    engine: &str,
    session_id: &[u8],
    prepare: impl FnOnce(&Stage) -> Result<(P, usize, bool), ServiceError>,
    commit: impl FnOnce(&mut Stage, P) -> R,
) -> Result<R, ServiceError> {
    run_exchange(cs, engine, session_id, prepare, |stage, p| {
        Ok(commit(stage, p))
    })
}

/// [`exchange`] whose commit may still be refused by something outside the session
/// (`c_register_tickets`: the store). A `commit` that fails must leave the stage as it was:
/// the session is then neither touched nor closed, and holds the bytes it held.
pub(crate) fn exchange_or_refuse<P, R>(
    cs: &Cs,
    engine: &str,
    session_id: &[u8],
    last_exchange: bool,
    prepare: impl FnOnce(&Stage) -> Result<(P, usize), ServiceError>,
    commit: impl FnOnce(&mut Stage, P) -> Result<R, ServiceError>,
) -> Result<R, ServiceError> {
    run_exchange(
        cs,
        engine,
        session_id,
        |stage| prepare(stage).map(|(p, bytes)| (p, bytes, last_exchange)),
        commit,
    )
}

fn run_exchange<P, R>(
    cs: &Cs,
    engine: &str,
    session_id: &[u8],
    prepare: impl FnOnce(&Stage) -> Result<(P, usize, bool), ServiceError>,
    commit: impl FnOnce(&mut Stage, P) -> Result<R, ServiceError>,
) -> Result<R, ServiceError> {
    let id = SessionId::parse(session_id)?;
    let handle = cs.sessions.get(engine, &id)?;
    let result = (|| {
        let mut session = lock_session(&handle)?;
        let (prepared, bytes_after, last_exchange) = prepare(&session.stage)?;
        if !last_exchange {
            cs.sessions.resize(&id, bytes_after)?;
        }
        let out = commit(&mut session.stage, prepared);
        // What the session holds now, whenever it lives on (a failed last exchange may keep
        // it, and may have grown it: c_register_tickets' unsettled tickets).
        if !last_exchange || out.is_err() {
            cs.sessions.settle(&id, session.stage.held_bytes());
        }
        let out = out?;
        finish(cs, &id, &mut session, last_exchange);
        Ok(out)
    })();
    crate::session::release(handle);
    result
}
