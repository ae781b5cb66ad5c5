//! After the handshake: application data keys, NewSessionTicket (and their registration at
//! the CS), KeyUpdate, post-handshake authentication, the exporter's secret, and the CS work
//! left when the connection ends ([`CsEpilogue`]).

use std::sync::Arc;

use lurk_proto::key_schedule::{
    finished_verify_data, next_application_traffic_secret, resumption_psk, Secret,
};
use lurk_proto::pb;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::{
    encode_finished, encode_key_update, CertificateRequest, CipherSuite, ContentType,
    HandshakeType, HashAlg, KeyUpdate, KeyUpdateRequest, NewSessionTicket,
};
use zeroize::Zeroizing;

use super::server_flight::client_certificate;
use super::{cs_error, record_keys, require, unexpected_reply, Core};
use crate::cs_client::{CsCall, CsError, CsReply};
use crate::error::{Error, PeerMisbehaved};
use crate::joiner::HandshakeMessage;
use crate::tickets::StoredTicket;

/// How the connection's CS session may still be used after the handshake.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(super) enum CsSession {
    None,
    /// Sequence A/B: the CS ran the key schedule and keeps the resumption secret.
    Full(Vec<u8>),
    /// Sequence C: opened by c_init_client_finished; the first c_post_hand_auth carries our
    /// Finished when `awaiting_client_finished`.
    SigningOnly {
        id: Vec<u8>,
        awaiting_client_finished: bool,
    },
    Closed,
}

/// A post-handshake CertificateRequest being answered.
pub(super) struct PendingPha {
    certificate_request: Vec<u8>,
    certificate: Vec<u8>,
    key_id: String,
}

pub(super) enum TrafficWait {
    Tickets(Vec<StoredTicket>),
    PhaInit(PendingPha),
    Pha(PendingPha),
}

/// The handshake is done: application data, tickets, KeyUpdate, post-handshake auth.
pub struct ExpectTraffic {
    pub(super) suite: CipherSuite,
    pub(super) hash: HashAlg,
    pub(super) client_secret: Secret,
    pub(super) server_secret: Secret,
    /// Handshake transcript through the client Finished (the base of post-handshake auth).
    pub(super) transcript: Transcript,
    pub(super) resumption_master: Option<Secret>,
    /// exporter_master_secret (RFC 8446 §7.5), kept only when `ClientConfig::exporter` is set.
    pub(super) exporter_master: Option<Secret>,
    pub(super) cs: CsSession,
    pub(super) pha_offered: bool,
    /// ClientHello .. server Finished (+EndOfEarlyData) for a late c_init_client_finished.
    pub(super) cs_log: Vec<u8>,
    pub(super) client_finished: Vec<u8>,
    pub(super) alpn: Option<Vec<u8>>,
    pub(super) pending_tickets: Vec<(Vec<u8>, StoredTicket)>,
    pub(super) waiting: Option<TrafficWait>,
}

/// The CS work of a finished connection ([`ClientConnection::detach_cs`](super::ClientConnection::detach_cs)): the driver awaits
/// the registration in flight (if any) and gives its reply to [`Self::in_flight_done`], then
/// makes [`Self::take_last_call`] and gives its reply to [`Self::last_done`]. Tickets are stored
/// when, and only when, the CS accepted them.
pub struct CsEpilogue {
    pub(super) store: Option<Arc<dyn crate::tickets::TicketStore>>,
    pub(super) store_key: String,
    pub(super) in_flight: Option<Vec<StoredTicket>>,
    pub(super) last: Option<(CsCall, Vec<StoredTicket>)>,
}

impl std::fmt::Debug for CsEpilogue {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CsEpilogue")
            .field("in_flight", &self.in_flight.is_some())
            .field("last", &self.last.as_ref().map(|(c, _)| c.exchange()))
            .finish()
    }
}

impl CsEpilogue {
    /// Whether a registration was in flight when the connection ended.
    pub fn has_in_flight(&self) -> bool {
        self.in_flight.is_some()
    }

    /// Whether some of this work brings tickets to the store: a registration in flight, or a
    /// last call carrying tickets. A last call that only closes the session does not.
    pub fn carries_tickets(&self) -> bool {
        self.in_flight.as_ref().is_some_and(|m| !m.is_empty()) || self.last_carries_tickets()
    }

    /// Whether the last call carries tickets (rather than only closing the session).
    pub fn last_carries_tickets(&self) -> bool {
        self.last.as_ref().is_some_and(|(_, m)| !m.is_empty())
    }

    /// The ticket store key (`host:port`) the tickets go to.
    pub fn store_key(&self) -> &str {
        &self.store_key
    }

    /// The reply to the registration that was in flight.
    pub fn in_flight_done(&mut self, reply: Result<CsReply, CsError>) {
        if let Some(metas) = self.in_flight.take() {
            self.accept("c_register_tickets", metas, reply);
        }
    }

    /// The last call: the remaining tickets, closing the session.
    pub fn take_last_call(&mut self) -> Option<CsCall> {
        self.last.as_mut().map(|(c, _)| c.clone())
    }

    /// The reply to the last call.
    pub fn last_done(&mut self, reply: Result<CsReply, CsError>) {
        if let Some((call, metas)) = self.last.take() {
            self.accept(call.exchange(), metas, reply);
        }
    }

    fn accept(
        &self,
        exchange: &'static str,
        metas: Vec<StoredTicket>,
        reply: Result<CsReply, CsError>,
    ) {
        match reply {
            Ok(CsReply::RegisterTickets(_)) => {
                if let Some(store) = &self.store {
                    for t in metas {
                        store.insert(&self.store_key, t);
                    }
                }
            }
            // Losing tickets does not matter to a connection that is over.
            Ok(_) => tracing::warn!("{}", unexpected_reply(exchange)),
            Err(e) => tracing::warn!("{}", cs_error(exchange, e)),
        }
    }
}

impl ExpectTraffic {
    pub(super) fn handle(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        require(
            m,
            &[
                HandshakeType::NewSessionTicket,
                HandshakeType::KeyUpdate,
                HandshakeType::CertificateRequest,
            ],
        )?;
        match m.typ {
            HandshakeType::NewSessionTicket => self.new_session_ticket(core, m),
            HandshakeType::KeyUpdate => {
                let ku = KeyUpdate::parse(&m.encoded)?;
                // §4.6.3: the KeyUpdate is the last message under the old key.
                core.joiner.check_key_change()?;
                self.server_secret =
                    next_application_traffic_secret(self.hash, self.server_secret.as_bytes());
                let keys = record_keys(self.suite, &self.server_secret)?;
                core.decrypter
                    .as_mut()
                    .ok_or_else(|| Error::general("no read key"))?
                    .rekey(&keys)?;
                if ku.request_update == KeyUpdateRequest::UpdateRequested && !core.close_sent {
                    // Answered before any other write (§4.6.3).
                    self.send_key_update(core, KeyUpdateRequest::UpdateNotRequested)?;
                }
                Ok(())
            }
            _ => self.post_handshake_auth(core, m),
        }
    }

    pub(super) fn send_key_update(
        &mut self,
        core: &mut Core,
        req: KeyUpdateRequest,
    ) -> Result<(), Error> {
        core.send_encrypted(ContentType::Handshake, &[&encode_key_update(req)])?;
        self.client_secret =
            next_application_traffic_secret(self.hash, self.client_secret.as_bytes());
        let keys = record_keys(self.suite, &self.client_secret)?;
        core.encrypter
            .as_mut()
            .ok_or_else(|| Error::general("no write key"))?
            .rekey(&keys)
    }

    fn new_session_ticket(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        let nst = NewSessionTicket::parse(&m.encoded)?;
        core.summary.tickets_received += 1;
        let Some(store) = core.config.ticket_store.clone() else {
            return Ok(());
        };
        let mut ticket = StoredTicket {
            identity: nst.ticket.to_vec(),
            age_add: nst.ticket_age_add,
            lifetime: nst.ticket_lifetime,
            max_early_data: nst.max_early_data_size.unwrap_or(0),
            suite: self.suite,
            received_at: core.config.time.system_time(),
            psk: None,
            alpn: self.alpn.clone(),
        };
        if let Some(rms) = &self.resumption_master {
            let psk = resumption_psk(self.hash, rms.as_bytes(), nst.ticket_nonce);
            ticket.psk = Some(Zeroizing::new(psk.as_bytes().to_vec()));
            store.insert(&core.store_key, ticket);
        } else if matches!(self.cs, CsSession::Full(_)) {
            self.pending_tickets.push((m.encoded.clone(), ticket));
        }
        Ok(())
    }

    /// Registers the tickets received so far at the CS (one call for all of them).
    pub(super) fn flush_tickets(&mut self, core: &mut Core) -> Result<(), Error> {
        if self.pending_tickets.is_empty() || core.cs_busy() {
            return Ok(());
        }
        let CsSession::Full(id) = &self.cs else {
            self.pending_tickets.clear();
            return Ok(());
        };
        let (raws, metas): (Vec<_>, Vec<_>) = std::mem::take(&mut self.pending_tickets)
            .into_iter()
            .unzip();
        core.request_cs(CsCall::RegisterTickets(pb::CRegisterTicketsRequest {
            session_id: id.clone(),
            new_session_tickets: raws,
            last_exchange: false,
        }))?;
        self.waiting = Some(TrafficWait::Tickets(metas));
        Ok(())
    }

    fn post_handshake_auth(&mut self, core: &mut Core, m: &HandshakeMessage) -> Result<(), Error> {
        if !self.pha_offered {
            return Err(PeerMisbehaved::UnsolicitedPostHandshakeAuth.into());
        }
        let cr = CertificateRequest::parse(&m.encoded)?;
        // §4.3.2: a post-handshake request has a non-empty context.
        if cr.context.is_empty() {
            return Err(PeerMisbehaved::IllegalCertificateRequestContext.into());
        }
        let (certificate, key_id) = client_certificate(core, &m.encoded)?;
        let pending = PendingPha {
            certificate_request: m.encoded.clone(),
            certificate,
            key_id,
        };
        if pending.key_id.is_empty() {
            // No key: an empty Certificate and our Finished, no CS call.
            return self.finish_pha(core, pending, Vec::new());
        }
        match self.cs.clone() {
            CsSession::Full(id) => self.request_pha(core, id, Vec::new(), pending),
            CsSession::SigningOnly {
                id,
                awaiting_client_finished,
            } => {
                let msgs = if awaiting_client_finished {
                    self.client_finished.clone()
                } else {
                    Vec::new()
                };
                self.request_pha(core, id, msgs, pending)
            }
            CsSession::None | CsSession::Closed => {
                // Sequence C opened late: the CS needs the handshake first.
                core.request_cs(CsCall::InitClientFinished(pb::CInitClientFinishedRequest {
                    handshake_messages: self.cs_log.clone(),
                    freshness: core.config.freshness as i32,
                    key_id: String::new(),
                    client_certificate: Vec::new(),
                    last_exchange: false,
                }))?;
                self.waiting = Some(TrafficWait::PhaInit(pending));
                Ok(())
            }
        }
    }

    fn request_pha(
        &mut self,
        core: &mut Core,
        id: Vec<u8>,
        handshake_messages: Vec<u8>,
        pending: PendingPha,
    ) -> Result<(), Error> {
        core.request_cs(CsCall::PostHandAuth(pb::CPostHandAuthRequest {
            session_id: id,
            handshake_messages,
            certificate_request: pending.certificate_request.clone(),
            key_id: pending.key_id.clone(),
            client_certificate: pending.certificate.clone(),
            last_exchange: false,
        }))?;
        self.waiting = Some(TrafficWait::Pha(pending));
        Ok(())
    }

    /// Certificate, CertificateVerify, Finished under the current application key; the Finished
    /// over the handshake transcript + CertificateRequest + Certificate + CertificateVerify with
    /// the current client application traffic secret (§4.4.1, §4.4.4).
    fn finish_pha(&mut self, core: &mut Core, p: PendingPha, cv: Vec<u8>) -> Result<(), Error> {
        let mut t = self.transcript.clone();
        t.add(&p.certificate_request);
        t.add(&p.certificate);
        if !cv.is_empty() {
            t.add(&cv);
        }
        let vd = finished_verify_data(self.hash, self.client_secret.as_bytes(), &t.hash(self.hash));
        let fin = encode_finished(&vd)?;
        let mut parts: Vec<&[u8]> = vec![&p.certificate];
        if !cv.is_empty() {
            parts.push(&cv);
            core.summary.client_authenticated = true;
        }
        parts.push(&fin);
        core.send_encrypted(ContentType::Handshake, &parts)
    }

    pub(super) fn cs_response(
        &mut self,
        core: &mut Core,
        exchange: &'static str,
        reply: Result<CsReply, CsError>,
    ) -> Result<(), Error> {
        let waiting = self
            .waiting
            .take()
            .ok_or_else(|| Error::general("CS response nobody waits for"))?;
        match (waiting, reply) {
            (TrafficWait::Tickets(metas), Ok(CsReply::RegisterTickets(_))) => {
                if let Some(store) = &core.config.ticket_store {
                    for t in metas {
                        store.insert(&core.store_key, t);
                    }
                }
                Ok(())
            }
            (TrafficWait::Tickets(_), Err(e)) => {
                // Losing tickets does not break the connection.
                tracing::warn!("{}", cs_error(exchange, e));
                Ok(())
            }
            (TrafficWait::PhaInit(p), Ok(CsReply::InitClientFinished(r))) => {
                if r.session_id.is_empty() {
                    return Err(Error::CryptoService {
                        exchange,
                        status: None,
                        message: "no session for post-handshake authentication".into(),
                    });
                }
                self.cs = CsSession::SigningOnly {
                    id: r.session_id.clone(),
                    awaiting_client_finished: true,
                };
                let fin = self.client_finished.clone();
                self.request_pha(core, r.session_id, fin, p)
            }
            (TrafficWait::Pha(p), Ok(CsReply::PostHandAuth(r))) => {
                if let CsSession::SigningOnly {
                    awaiting_client_finished,
                    ..
                } = &mut self.cs
                {
                    *awaiting_client_finished = false;
                }
                self.finish_pha(core, p, r.certificate_verify)
            }
            (_, Err(e)) => Err(cs_error(exchange, e)),
            (_, Ok(_)) => Err(unexpected_reply(exchange)),
        }
    }
}
