//! Test material shared by the unit tests: a fixed instant, an ECDSA root, and a cluster's
//! `cacerts` under it.

use std::time::Duration;

use time::OffsetDateTime;
use time::macros::datetime;

use super::{
    CaCertsFiles, ISTIOD_SAN, IntermediateSpec, KeyAlgorithm, RootCa, RootSpec, Subject,
    TrustBundle, generate_root, issue_intermediate,
};

pub const DAY: u64 = 86400;

/// The instant the fixtures are made at.
pub fn now() -> OffsetDateTime {
    datetime!(2026-01-01 00:00 UTC)
}

/// A fresh ten-year ECDSA P-256 root.
pub fn root() -> RootCa {
    let spec = RootSpec {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::from_secs(3650 * DAY),
        subject: Subject::istio_root(),
    };
    generate_root(&spec, now()).unwrap()
}

/// A one-year intermediate for cluster `c1`.
pub fn spec() -> IntermediateSpec {
    IntermediateSpec {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::from_secs(365 * DAY),
        path_len: 0,
        subject: Subject::istio_intermediate("c1"),
        dns_names: vec![ISTIOD_SAN.to_string()],
    }
}

/// `c1`'s `cacerts` under `root`, trusting only `root`.
pub fn cacerts_under(root: &RootCa) -> CaCertsFiles {
    let int = issue_intermediate(root, &spec(), now()).unwrap();
    CaCertsFiles::for_intermediate(&int, &[], root.cert(), &TrustBundle::single(root.cert()))
}

/// A one-year intermediate for `cluster` under `root`.
pub fn intermediate(root: &RootCa, cluster: &str) -> super::IntermediateCa {
    let spec = IntermediateSpec {
        subject: Subject::istio_intermediate(cluster),
        ..spec()
    };
    issue_intermediate(root, &spec, now()).unwrap()
}
