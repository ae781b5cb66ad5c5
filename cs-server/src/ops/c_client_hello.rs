//! `c_client_hello` (docs/design.md §4.8): after a HelloRetryRequest, the engine sends the HRR and
//! its second ClientHello. The CS keeps the first random (both ClientHellos carry the same
//! one, docs/design.md §3), replaces the first ClientHello in the transcript by message_hash
//! (RFC 8446 §4.4.1) and recomputes the binders. When the HRR selects a group, the CS makes
//! a key share for it and destroys the old key pairs; when it only carries a cookie, the
//! second ClientHello keeps the first one's shares (RFC 8446 §4.1.2) and the CS refills the
//! empty entries with the public keys it already holds. A second ClientHello that changes
//! anything else than RFC 8446 §4.1.2 allows is refused before anything is generated.

use lurk_proto::pb;
use lurk_proto::status::LurkStatus;
use lurk_proto::transcript::Transcript;
use lurk_proto::wire::hello::RANDOM_OFFSET;
use lurk_proto::wire::CipherSuite;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::common;
use crate::ops::msgs;
use crate::ops::state::{CsShare, HelloState, OfferedPsk, Stage};
use crate::ops::Where;

fn invalid(why: impl Into<String>) -> ServiceError {
    ServiceError::refuse(LurkStatus::InvalidHandshake, why)
}

/// The new share only (the PSKs are in the session already). With token key pairs, on the
/// blocking pool without the async admission (`Where::KeyPairs`): that admission waits out
/// a planned module recycle, whose drain would wait for this session's first key pairs,
/// given up only when this exchange runs (`not_needed_by_recycle`). The key generation
/// takes its admission itself, after that.
pub fn place(cs: &Cs, _req: &pb::CClientHelloRequest) -> Where {
    if common::memory_ephemerals(cs) {
        Where::Inline
    } else {
        Where::Blocking
    }
}

/// Takes the HelloRetryRequest and the second ClientHello of `engine`'s session and returns
/// that ClientHello completed (random, key shares, binders).
pub fn handle(
    cs: &Cs,
    engine: &str,
    req: pb::CClientHelloRequest,
) -> Result<pb::CClientHelloResponse, ServiceError> {
    common::exchange(
        cs,
        engine,
        &req.session_id,
        false,
        |stage| match stage {
            Stage::Hello(state) => {
                let retry = prepare(cs, state, &req)?;
                // The second ClientHello replaces the first; a new key pair is added.
                let bytes = state.held_bytes() - state.client_hello.capacity()
                    + retry.client_hello.capacity()
                    + retry.new_share.as_ref().map_or(0, CsShare::held_bytes);
                Ok((retry, bytes))
            }
            other => Err(other.out_of_order("c_client_hello")),
        },
        commit,
    )
}

/// What a successful c_client_hello changes in the session.
struct Retry {
    suite: CipherSuite,
    /// The key share made for the HRR's group (the old key pairs are then dropped).
    new_share: Option<CsShare>,
    /// The PSKs the second ClientHello keeps, in its order.
    psks: Vec<OfferedPsk>,
    transcript: Transcript,
    client_hello: Vec<u8>,
    response: pb::CClientHelloResponse,
}

fn commit(stage: &mut Stage, retry: Retry) -> pb::CClientHelloResponse {
    if let Stage::Hello(state) = stage {
        // With a new group the old key pairs are dropped (destroyed).
        if let Some(share) = retry.new_share {
            state.shared_groups = vec![share.group];
            state.cs_shares = vec![share];
        }
        state.psks = retry.psks;
        state.transcript = retry.transcript;
        state.client_hello = retry.client_hello;
        state.offered_suites = vec![retry.suite];
        state.early_data = false;
        state.retried = true;
    }
    retry.response
}

/// Everything that can fail, on the session's stage read-only.
fn prepare(
    cs: &Cs,
    state: &HelloState,
    req: &pb::CClientHelloRequest,
) -> Result<Retry, ServiceError> {
    if state.retried {
        // RFC 8446 §4.1.4: a second HelloRetryRequest in one connection is an error.
        return Err(ServiceError::refuse(
            LurkStatus::InvalidStatus,
            "only one HelloRetryRequest per handshake",
        ));
    }
    let hrr = msgs::server_hello(&req.hello_retry_request)?;
    if !hrr.is_hrr {
        return Err(invalid("hello_retry_request is not a HelloRetryRequest"));
    }
    if hrr.legacy_session_id_echo != state.legacy_session_id {
        // RFC 8446 §4.1.4: the HRR echoes legacy_session_id like a ServerHello.
        return Err(invalid(
            "the HelloRetryRequest does not echo the ClientHello's legacy_session_id",
        ));
    }
    if !state.offered_suites.contains(&hrr.suite) {
        return Err(invalid("the HRR selects a cipher suite not offered"));
    }
    let hash = hrr
        .suite
        .hash()
        .ok_or_else(|| invalid("the HRR selects an unsupported cipher suite"))?;
    if let Some(group) = hrr.hrr_group {
        // RFC 8446 §4.1.4: the selected group was offered and had no share yet.
        if !state.offered_groups.contains(&group) || state.shared_groups.contains(&group) {
            return Err(invalid(format!(
                "the HRR selects {} which was not offered or already had a key share",
                group.name()
            )));
        }
    } else if hrr.cookie.is_none() {
        // RFC 8446 §4.1.4: an HRR that would not change the ClientHello is an error.
        return Err(invalid(
            "a HelloRetryRequest with neither a group nor a cookie",
        ));
    }

    let ch2 = msgs::client_hello(&req.client_hello)?;
    // The second ClientHello as it will be sent (the first one's random, the key shares the
    // CS holds after a cookie-only HRR; the new share, free under the rule, comes after the
    // check) must change only what RFC 8446 §4.1.2 allows.
    let mut fills = Vec::new();
    let candidate = match hrr.hrr_group {
        Some(group) => {
            if ch2.shares != [(group, true)] {
                return Err(invalid(
                    "the second ClientHello must leave one key share empty, for the HRR's group",
                ));
            }
            let mut v = req.client_hello.clone();
            v[RANDOM_OFFSET..RANDOM_OFFSET + 32].copy_from_slice(&state.random);
            v
        }
        None => {
            for (group, empty) in &ch2.shares {
                if *empty {
                    let held = state
                        .cs_shares
                        .iter()
                        .find(|s| s.group == *group)
                        .ok_or_else(|| invalid("an empty key share the CS did not make"))?;
                    fills.push((*group, held.public.clone()));
                }
            }
            msgs::complete_client_hello(&req.client_hello, Some(&state.random), &fills)?
        }
    };
    msgs::check_second_client_hello(&state.client_hello, &req.hello_retry_request, &candidate)?;
    let kept = kept_psks(state, &ch2.psk_identities, hash)?;
    if kept.iter().enumerate().any(|(i, k)| kept[..i].contains(k)) {
        return Err(ServiceError::refuse(
            LurkStatus::InvalidPsk,
            "a PSK identity offered twice",
        ));
    }

    // A new key pair for the selected group.
    let mut new_share = None;
    let mut client_hello = candidate;
    if let Some(group) = hrr.hrr_group {
        // The first ClientHello's key pairs serve no more once this exchange commits
        // (RFC 8446 §4.1.4: the HRR's group had no share): a module recycle due now need not
        // wait for them while this generation waits for it.
        for s in &state.cs_shares {
            s.pending.not_needed_by_recycle();
        }
        let (public, pending) = cs.ephemeral.generate(group)?;
        fills = vec![(group, public.clone())];
        client_hello = msgs::complete_client_hello(&req.client_hello, Some(&state.random), &fills)?;
        new_share = Some(CsShare {
            group,
            public,
            pending,
        });
    }

    let mut transcript = state.transcript.clone();
    transcript
        .restart_for_hello_retry(hash)
        .map_err(|e| invalid(e.to_string()))?;
    transcript.add(&req.hello_retry_request);
    // Binders follow the second ClientHello's order of identities (distinct: checked above).
    let psks: Vec<OfferedPsk> = kept.iter().map(|&i| state.psks[i].clone()).collect();
    let binders = if psks.is_empty() {
        Vec::new()
    } else {
        let b = common::binders(&transcript, &client_hello, &psks)?;
        msgs::set_binders(&mut client_hello, &b)?;
        b
    };
    transcript.add(&client_hello);

    let key_shares = fills
        .iter()
        .map(|(g, public)| pb::KeyShareEntry {
            group: u32::from(g.get()),
            key_exchange: public.clone(),
        })
        .collect();
    Ok(Retry {
        suite: hrr.suite,
        new_share,
        psks,
        transcript,
        client_hello: client_hello.clone(),
        response: pb::CClientHelloResponse {
            client_hello,
            key_shares,
            binders,
        },
    })
}

/// Positions (in the first ClientHello's PSK list) of the identities the second one keeps:
/// they may shrink to those whose hash fits the HRR's suite, never grow (RFC 8446 §4.1.2).
fn kept_psks(
    state: &HelloState,
    identities: &[Vec<u8>],
    hash: lurk_proto::wire::HashAlg,
) -> Result<Vec<usize>, ServiceError> {
    identities
        .iter()
        .map(|identity| {
            let pos = state
                .psks
                .iter()
                .position(|p| &p.identity == identity)
                .ok_or_else(|| {
                    ServiceError::refuse(
                        LurkStatus::InvalidPsk,
                        "the second ClientHello offers a new PSK identity",
                    )
                })?;
            if state.psks[pos].hash != hash {
                return Err(ServiceError::refuse(
                    LurkStatus::InvalidPsk,
                    "a PSK whose hash does not match the HRR's suite",
                ));
            }
            Ok(pos)
        })
        .collect()
}
