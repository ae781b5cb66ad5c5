//! An engine connection, the in-memory server and the in-process CS wired together: the
//! driver every connection and CS target uses to reach a given state with valid traffic.

use std::sync::Arc;

use lurk_engine::config::{ClientConfig, ClientKey, Ephemeral, ExternalPsk};
use lurk_engine::cs_client::{CsCall, CsReply};
use lurk_engine::verify::TrustAnchors;
use lurk_engine::{ClientConnection, MemoryTicketStore};
use lurk_proto::key_schedule::{resumption_psk, verify_binder, KeyScheduleEarly, PskKind};
use lurk_proto::wire::{truncated_for_binders, ClientHello, HashAlg, NamedGroup};

use crate::fixture::{self, assert_no_secret, Fixture};
use crate::server::{Identity, Opts, Res, Server};

/// How a connection is set up (from the first byte of an input).
#[derive(Clone, Copy, Debug, Default)]
pub struct Setup {
    /// The CS makes the ephemerals (sequence A); else the engine (sequences C/D).
    pub cs_ephemeral: bool,
    /// Middlebox compatibility (a random legacy_session_id, CCS records).
    pub middlebox: bool,
    /// The engine has a client key (CertificateRequest answered, post-handshake auth offered).
    pub client_key: bool,
    /// The engine offers the CS's external PSK (the server does not take it).
    pub external_psk: bool,
    /// A first connection got a ticket (registered at the CS in sequence A): the connection
    /// under test offers it (the server does not take it).
    pub resume: bool,
    pub server: Opts,
}

impl Setup {
    pub fn from_byte(b: u8) -> Self {
        Self {
            cs_ephemeral: b & 1 == 0,
            middlebox: b & 2 != 0,
            client_key: b & 4 != 0,
            external_psk: b & 64 != 0,
            resume: b & 128 != 0,
            server: Opts {
                hrr: b & 8 != 0,
                cert_request: b & 16 != 0,
                sha384: b & 32 != 0,
            },
        }
    }

    pub fn to_byte(self) -> u8 {
        u8::from(!self.cs_ephemeral)
            | u8::from(self.middlebox) << 1
            | u8::from(self.client_key) << 2
            | u8::from(self.server.hrr) << 3
            | u8::from(self.server.cert_request) << 4
            | u8::from(self.server.sha384) << 5
            | u8::from(self.external_psk) << 6
            | u8::from(self.resume) << 7
    }
}

/// What a hook says about a CS call it saw.
pub enum Flow {
    /// Let the CS answer it.
    Continue,
    /// Stop the scenario here (the call is dropped).
    Stop,
}

pub struct Scenario {
    pub conn: ClientConnection,
    pub srv: Server,
    /// Answer the ClientHello with the whole valid flight (else only the ServerHello).
    pub auto_flight: bool,
    /// Every CS answer and engine output is checked against these, the server's secrets
    /// and the PSKs of the tickets sent.
    pub secrets: Vec<Vec<u8>>,
    /// Nonces of the tickets sent (their PSKs are derived once r is known).
    pub ticket_nonces: Vec<Vec<u8>>,
    /// LURK exchanges the CS refused.
    pub refused: Vec<&'static str>,
    /// The first connection's ticket (resume set-up): identity, hash, PSK; and how many CS
    /// answers carried a ClientHello whose binder for it verifies (a ticket is used once).
    pub ticket: Option<(Vec<u8>, HashAlg, Vec<u8>)>,
    pub ticket_uses: usize,
}

pub fn identity() -> Arc<Identity> {
    static ID: std::sync::OnceLock<Arc<Identity>> = std::sync::OnceLock::new();
    ID.get_or_init(Identity::new).clone()
}

fn config(fix: &Fixture, setup: Setup) -> Arc<ClientConfig> {
    let id = identity();
    let mut b = ClientConfig::builder()
        .trust_anchors(TrustAnchors::from_der(&[&id.ca]).expect("anchor"))
        .groups([NamedGroup::X25519, NamedGroup::Secp256r1])
        .key_shares(1)
        .ephemeral(if setup.cs_ephemeral {
            Ephemeral::Cs
        } else {
            Ephemeral::Engine
        })
        .post_handshake_auth(setup.client_key)
        .ticket_store(Arc::new(MemoryTicketStore::new(8)))
        .middlebox_compat(setup.middlebox);
    if setup.client_key {
        b = b.client_key(ClientKey {
            key_id: "p256".into(),
            certificate_chain: fix.p256_chain.clone(),
            signature_schemes: Vec::new(),
        });
    }
    if setup.external_psk {
        b = b.external_psk(ExternalPsk {
            identity: fixture::EXTERNAL_IDENTITY.to_vec(),
            hash: HashAlg::Sha256,
        });
    }
    Arc::new(b.build().expect("fuzz engine configuration"))
}

/// The resumption ticket of the resume set-up.
pub const TICKET: &[u8] = b"lurk-fuzz resumption ticket";

impl Scenario {
    fn with_config(config: Arc<ClientConfig>, setup: Setup) -> Self {
        let conn = ClientConnection::new(config, "localhost", 443, true).expect("a connection");
        Self {
            conn,
            srv: Server::new(identity(), setup.server),
            auto_flight: true,
            secrets: fixture::fixed_secrets(),
            ticket_nonces: Vec::new(),
            refused: Vec::new(),
            ticket: None,
            ticket_uses: 0,
        }
    }

    pub fn new(fix: &Fixture, setup: Setup) -> Self {
        let config = config(fix, setup);
        if !setup.resume {
            return Self::with_config(config, setup);
        }
        // A first connection, with the same configuration (ticket store), gets a ticket.
        let plain = Setup {
            resume: false,
            ..setup
        };
        let mut first = Self::with_config(config.clone(), plain);
        first.run(fix).expect("the first handshake");
        assert!(
            !first.conn.is_handshaking(),
            "the first handshake completes"
        );
        first.send_ticket(&[0x7e; 4], TICKET);
        let out = first.srv.take_out();
        first.conn.read_tls(&out);
        first.conn.process_new_packets().expect("the ticket");
        first.run(fix).expect("the ticket registered");
        let r = first.srv.r.as_ref().expect("r").as_bytes().to_vec();
        let hash = first.srv.hash();
        let psk = resumption_psk(hash, &r, &[0x7e; 4]).as_bytes().to_vec();
        let mut s = Self::with_config(config, setup);
        s.secrets.push(r);
        s.secrets.push(psk.clone());
        s.ticket = Some((TICKET.to_vec(), hash, psk));
        s
    }

    /// Counts a CS answer whose ClientHello carries a valid binder for the first connection's
    /// ticket: at most one may (RFC 8446 §C.4, docs/design.md: a ticket is used once).
    pub fn check_reply(&mut self, reply: &CsReply) {
        let (CsReply::InitClientHello(r), Some((identity, hash, psk))) = (reply, &self.ticket)
        else {
            return;
        };
        let Ok(ch) = ClientHello::parse(&r.client_hello) else {
            return;
        };
        let Some(offered) = &ch.pre_shared_key else {
            return;
        };
        let Ok(truncated) = truncated_for_binders(&r.client_hello) else {
            return;
        };
        let binder_key = KeyScheduleEarly::new(*hash, Some(psk)).binder_key(PskKind::Resumption);
        let th = hash.hash(truncated);
        for (id, b) in offered.identities.iter().zip(&offered.binders) {
            if id.identity == &identity[..]
                && verify_binder(*hash, binder_key.as_bytes(), &th, b.binder)
            {
                self.ticket_uses += 1;
            }
        }
        assert!(self.ticket_uses <= 1, "a ticket was used twice");
    }

    /// Every secret no CS answer and no engine output may hold.
    pub fn all_secrets(&self) -> Vec<Vec<u8>> {
        let mut s = self.secrets.clone();
        if let Some(r) = &self.srv.r {
            s.push(r.as_bytes().to_vec());
            for n in &self.ticket_nonces {
                s.push(
                    resumption_psk(self.srv.hash(), r.as_bytes(), n)
                        .as_bytes()
                        .to_vec(),
                );
            }
        }
        s
    }

    /// Runs engine, server and CS until none has anything to do. `hook` sees each CS call
    /// first. Err: the engine or the server failed (the engine's error is sticky).
    pub fn pump(
        &mut self,
        fix: &Fixture,
        hook: &mut dyn FnMut(&Fixture, &mut Self, &CsCall) -> Flow,
    ) -> Res<()> {
        loop {
            let mut progressed = false;
            if let Some(call) = self.conn.take_cs_call() {
                progressed = true;
                if let Flow::Stop = hook(fix, self, &call) {
                    return Ok(());
                }
                let exchange = call.exchange();
                let reply = match fixture::call(&fix.cs, fixture::ENGINE, call) {
                    Ok((reply, encoded)) => {
                        assert_no_secret(&encoded, &self.all_secrets(), exchange);
                        self.check_reply(&reply);
                        Ok(reply)
                    }
                    Err(e) => {
                        assert_no_secret(e.to_string().as_bytes(), &self.all_secrets(), exchange);
                        self.refused.push(exchange);
                        Err(fixture::as_engine_error(e))
                    }
                };
                self.conn.cs_response(reply).map_err(|e| e.to_string())?;
            }
            let out = self.conn.take_tls();
            if !out.is_empty() {
                progressed = true;
                assert_no_secret(&out, &self.all_secrets(), "engine output");
                let before = self.srv.stage;
                self.srv.read(&out)?;
                if self.auto_flight
                    && before == crate::server::Stage::ClientHello
                    && self.srv.stage == crate::server::Stage::Flight
                {
                    self.srv.send_flight();
                }
            }
            let sout = self.srv.take_out();
            if !sout.is_empty() {
                progressed = true;
                self.conn.read_tls(&sout);
                self.conn.process_new_packets().map_err(|e| e.to_string())?;
            }
            if !progressed {
                return Ok(());
            }
        }
    }

    /// `pump` without a hook.
    pub fn run(&mut self, fix: &Fixture) -> Res<()> {
        self.pump(fix, &mut |_, _, _| Flow::Continue)
    }

    /// A valid handshake to the established state; panics if it does not get there.
    pub fn established(fix: &Fixture, setup: Setup) -> Self {
        let mut s = Self::new(fix, setup);
        s.run(fix).expect("a valid handshake");
        assert!(
            !s.conn.is_handshaking() && s.srv.stage == crate::server::Stage::Established,
            "the valid handshake did not complete ({setup:?})"
        );
        s
    }

    /// Sends NewSessionTickets from the server (their PSKs join the secrets).
    pub fn send_ticket(&mut self, nonce: &[u8], ticket: &[u8]) {
        self.ticket_nonces.push(nonce.to_vec());
        let nst = crate::server::new_session_ticket(3600, nonce, ticket, None);
        self.srv
            .send_record(lurk_proto::wire::ContentType::Handshake, &nst);
    }
}
