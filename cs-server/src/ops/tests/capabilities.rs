//! Capabilities has no refusal; what it lists for an engine is still a rule: another
//! engine's external PSKs are not named, and the exchanges and freshness functions are the
//! ones this CS serves.

use lurk_proto::pb;

use super::*;
use crate::ops::capabilities::handle;
use crate::store::ExternalPsk;

fn psk(identity: &[u8], engines: &[&str]) -> ExternalPsk {
    ExternalPsk {
        identity: identity.to_vec(),
        psk: zeroize::Zeroizing::new(vec![9; 32]),
        hash: HashAlg::Sha256,
        allowed_engines: engines.iter().map(|e| e.to_string()).collect(),
    }
}

#[test]
fn an_engine_sees_its_own_and_unrestricted_external_psks_only() {
    let f = fx();
    f.cs.store
        .put_external_psk(psk(b"mine", &[ENGINE]))
        .unwrap();
    f.cs.store
        .put_external_psk(psk(b"theirs", &[OTHER]))
        .unwrap();
    f.cs.store.put_external_psk(psk(b"everyone", &[])).unwrap();
    let names = |engine| {
        let mut v: Vec<Vec<u8>> = handle(&f.cs, engine)
            .unwrap()
            .external_psks
            .into_iter()
            .map(|p| p.identity)
            .collect();
        v.sort();
        v
    };
    assert_eq!(names(ENGINE), [b"everyone".to_vec(), b"mine".to_vec()]);
    assert_eq!(names(OTHER), [b"everyone".to_vec(), b"theirs".to_vec()]);
}

#[test]
fn the_exchanges_and_freshness_offered_are_the_ones_served() {
    let on = handle(&fx().cs, ENGINE).unwrap();
    assert_eq!(on.exchanges, ["c_server_flight"]);
    assert_eq!(on.ephemeral_backend, "memory");
    assert!(on.keys.is_empty());
    // Null freshness is refused outside test-vector mode, and not offered.
    assert!(!on.freshness.contains(&(pb::Freshness::Null as i32)));
    let off = handle(&fx_with(|c| c.exchanges.server_flight = false).cs, ENGINE).unwrap();
    assert!(off.exchanges.is_empty());
}
