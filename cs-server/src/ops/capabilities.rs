//! `Capabilities`: what this CS offers the asking engine (groups, signature schemes,
//! freshness functions, the keys and external PSKs that engine may use, ticket limits).

use lurk_proto::pb;
use lurk_proto::wire::NamedGroup;

use crate::cs::Cs;
use crate::error::ServiceError;
use crate::ops::Where;

/// Reads the keys' certificates and mechanisms from the token.
pub fn place(_cs: &Cs, _req: &pb::CapabilitiesRequest) -> Where {
    Where::Blocking
}

/// Answers `Capabilities` for `engine`.
pub fn handle(cs: &Cs, engine: &str) -> Result<pb::CapabilitiesResponse, ServiceError> {
    let mut freshness = vec![
        pb::Freshness::Sha256 as i32,
        pb::Freshness::Sha384 as i32,
        pb::Freshness::Sha512 as i32,
    ];
    if cs.test_vectors {
        freshness.push(pb::Freshness::Null as i32);
    }
    let keys = cs
        .keys
        .usable_by(engine)
        .map(|k| pb::KeyInfo {
            key_id: k.id.clone(),
            key_type: k.kind_name(),
            signature_schemes: k.schemes().iter().map(|s| u32::from(s.get())).collect(),
            certificate_chain: k.chain().to_vec(),
        })
        .collect();
    let external_psks = cs
        .store
        .list_external_psks()?
        .into_iter()
        .filter(|p| p.allowed_engines.is_empty() || p.allowed_engines.iter().any(|e| e == engine))
        .map(|p| pb::ExternalPskInfo {
            identity: p.identity,
            tls_hash: match p.hash {
                lurk_proto::wire::HashAlg::Sha256 => pb::TlsHash::Sha256 as i32,
                lurk_proto::wire::HashAlg::Sha384 => pb::TlsHash::Sha384 as i32,
            },
        })
        .collect();
    let mut schemes: Vec<u32> = Vec::new();
    for k in cs.keys.usable_by(engine) {
        for s in k.schemes() {
            let s = u32::from(s.get());
            if !schemes.contains(&s) {
                schemes.push(s);
            }
        }
    }
    Ok(pb::CapabilitiesResponse {
        groups: NamedGroup::SUPPORTED
            .iter()
            .map(|g| u32::from(g.get()))
            .collect(),
        signature_schemes: schemes,
        freshness,
        keys,
        external_psks,
        ephemeral_backend: format!("{:?}", cs.ephemeral.kind()).to_lowercase(),
        max_tickets_per_engine: cs.max_tickets_per_engine,
        ticket_lifetime_seconds: cs.ticket_lifetime_cap,
        exchanges: if cs.server_flight {
            vec![crate::ops::c_server_flight::NAME.to_owned()]
        } else {
            Vec::new()
        },
    })
}
