//! `c_server_flight` (docs/protocol.md, "One exchange after the server's flight"): this
//! project's exchange doing `c_server_hello` then `c_client_finished` in one round trip when
//! the server's first flight came with its ServerHello (the common case).
//!
//! The engine sends the ServerHello (as for c_server_hello) and the protected records that
//! followed it, as received. The CS derives the handshake secrets exactly as c_server_hello,
//! opens the records itself with server_handshake_traffic_secret (RFC 8446 §5.2), and when
//! they hold the whole flight through the server Finished runs c_client_finished on it: the
//! same checks (order, `[server_auth]`, the server Finished before anything is signed), the
//! same CertificateVerify rules, the same answer. When the records stop before the server
//! Finished, it answers what c_server_hello gives and the session waits for c_client_finished
//! as in the standard sequence. Either way the stage moves only once everything succeeded
//! (prepare/commit, `common::exchange_with`).

use lurk_proto::pb;
use lurk_proto::record::{self, RecordKey, MAX_INNER_PLAINTEXT_LEN};
use lurk_proto::status::LurkStatus;
use lurk_proto::wire::{encode_end_of_early_data, ContentType, HandshakeType};

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::state::{EstablishedState, HandshakeState, Stage};
use crate::ops::{c_client_finished, c_server_hello, common, msgs, Where};

/// The name in Capabilities' `exchanges`.
pub const NAME: &str = "c_server_flight";

/// At most this many records: the flight caps (16 messages, 512 KiB, `wire::limits`) fit in
/// 48 full records; a server splitting further is served by the standard pair.
pub const MAX_RECORDS: usize = 64;

enum Next {
    /// The flight was incomplete: c_client_finished follows.
    Handshake(HandshakeState),
    Established(EstablishedState),
}

/// c_server_hello's agreement, then c_client_finished's signature when a key is named and
/// its server checks under `[server_auth]`.
pub fn place(cs: &Cs, req: &pb::CServerFlightRequest) -> Where {
    Where::inline_if(
        common::memory_ephemerals(cs) && req.key_id.is_empty() && cs.server_auth.is_none(),
    )
}

/// Runs c_server_hello and, when the records hold the whole server flight, c_client_finished
/// for `engine`'s session in one exchange.
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CServerFlightRequest,
) -> Result<pb::CServerFlightResponse, ServiceError> {
    if !cs.server_flight {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidType,
            "c_server_flight is not offered by this CS (see Capabilities)",
        ));
    }
    common::check_secret_request(req.secret_request.as_ref())?;
    if req.records.len() > MAX_RECORDS {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidFormat,
            format!("more than {MAX_RECORDS} records"),
        ));
    }
    common::exchange_with(
        cs,
        engine,
        &req.session_id,
        |stage| match stage {
            Stage::Hello(state) => {
                let (next, resp) = prepare(cs, engine, state, &req)?;
                let (bytes, last) = match &next {
                    Next::Handshake(h) => (h.held_bytes(), false),
                    Next::Established(e) => (e.held_bytes(), req.last_exchange),
                };
                Ok(((next, resp), bytes, last))
            }
            other => Err(other.out_of_order(NAME)),
        },
        |stage, (next, resp)| {
            *stage = match next {
                Next::Handshake(h) => Stage::Handshake(Box::new(h)),
                Next::Established(e) => Stage::Established(Box::new(e)),
            };
            resp
        },
    )
}

fn prepare(
    cs: &Cs,
    engine: &str,
    state: &crate::ops::state::HelloState,
    req: &pb::CServerFlightRequest,
) -> Result<(Next, pb::CServerFlightResponse), ServiceError> {
    let (hs, sh) = c_server_hello::prepare(
        cs,
        state,
        &pb::CServerHelloRequest {
            session_id: req.session_id.clone(),
            server_hello: req.server_hello.clone(),
            ephemeral: req.ephemeral.clone(),
            // The engine opens the flight itself: it always gets h_c and h_s.
            secret_request: None,
        },
    )?;
    let mut secrets = sh.secrets;
    let Some(mut flight) = open_flight(&hs, &req.records)? else {
        return Ok((
            Next::Handshake(hs),
            pb::CServerFlightResponse {
                secrets,
                ..Default::default()
            },
        ));
    };
    // RFC 8446 §4.5: the client's EndOfEarlyData (empty) follows the server Finished when
    // the EncryptedExtensions accepted early data; c_client_finished expects it there.
    let ee = msgs::split(&flight)?
        .first()
        .filter(|m| m.typ == HandshakeType::EncryptedExtensions)
        .map(|m| msgs::encrypted_extensions(m.raw))
        .transpose()?;
    if ee.is_some_and(|e| e.early_data) {
        flight.extend_from_slice(&encode_end_of_early_data());
    }
    let (established, cf) = c_client_finished::run(
        cs,
        engine,
        &hs,
        &pb::CClientFinishedRequest {
            session_id: req.session_id.clone(),
            handshake_messages: flight,
            key_id: req.key_id.clone(),
            client_certificate: req.client_certificate.clone(),
            secret_request: req.secret_request,
            last_exchange: req.last_exchange,
        },
    )?;
    secrets.extend(cf.secrets);
    Ok((
        Next::Established(established),
        pb::CServerFlightResponse {
            secrets,
            flight_complete: true,
            certificate_verify: cf.certificate_verify,
            client_finished: cf.client_finished,
            last_exchange: req.last_exchange,
        },
    ))
}

fn refuse(why: impl Into<String>) -> ServiceError {
    ServiceError::refuse(LurkStatus::InvalidHandshake, why)
}

/// Opens the records under server_handshake_traffic_secret (sequence numbers from 0, RFC 8446
/// §5.3) and returns the handshake messages through the server Finished, or `None` when the
/// records end before it. Records after the one ending in the Finished are not read (they
/// are under another key). A record that does not open, is not handshake content, or a
/// Finished that does not end its record (§5.1: a key change aligns with a record boundary)
/// is refused.
fn open_flight(hs: &HandshakeState, records: &[Vec<u8>]) -> Result<Option<Vec<u8>>, ServiceError> {
    if records.is_empty() {
        return Ok(None);
    }
    let key = RecordKey::from_traffic_secret(hs.suite, hs.server_hs.as_bytes())
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    let mut messages = Vec::new();
    // Where the next handshake message starts in `messages`.
    let mut next = 0usize;
    for (seq, raw) in records.iter().enumerate() {
        let parts = record::split_records(raw).unwrap_or_default();
        let [(typ, header, body)] = parts.as_slice() else {
            return Err(ServiceError::refuse(
                LurkStatus::InvalidFormat,
                "each entry of records is one whole record",
            ));
        };
        if *typ != ContentType::ApplicationData {
            return Err(refuse("a record of the server flight is not protected"));
        }
        let mut inner = body.to_vec();
        key.open(seq as u64, *header, &mut inner)
            .map_err(|_| refuse("a record of the server flight does not authenticate"))?;
        if inner.len() > MAX_INNER_PLAINTEXT_LEN {
            return Err(refuse("a record of the server flight is too long"));
        }
        if record::strip_inner_plaintext(&mut inner) != Ok(ContentType::Handshake) {
            return Err(refuse(
                "a record of the server flight does not carry handshake messages",
            ));
        }
        messages.extend_from_slice(&inner);
        while messages.len() >= next + 4 {
            let len = u32::from_be_bytes([
                0,
                messages[next + 1],
                messages[next + 2],
                messages[next + 3],
            ]) as usize;
            let end = next + 4 + len;
            if messages.len() < end {
                break;
            }
            if messages[next] == HandshakeType::Finished.get() {
                if end != messages.len() {
                    return Err(refuse(
                        "the server Finished does not end its record (RFC 8446 §5.1)",
                    ));
                }
                return Ok(Some(messages));
            }
            next = end;
        }
    }
    Ok(None)
}
