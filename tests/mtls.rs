//! The cross-cluster trust the product exists for: a workload of cluster1 and one of cluster2,
//! each with a certificate signed the way its cluster's istiod would sign it (by that cluster's
//! intermediate), complete a real mutual-TLS handshake over TCP — each side trusting only its
//! own cluster's root-cert.pem and checking the peer's SPIFFE identity, as Envoy does.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Setup;
use common::mtls::{SPIFFE_ID, handshake, workload};

#[test]
fn workloads_of_two_clusters_complete_mutual_tls_both_ways() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let (c1, c2) = (s.path("out/cluster1"), s.path("out/cluster2"));
    // The two intermediates differ: this is cross-cluster trust through the common root.
    assert_ne!(
        std::fs::read(c1.join("ca-cert.pem")).unwrap(),
        std::fs::read(c2.join("ca-cert.pem")).unwrap()
    );

    let ids = handshake(workload(&c1), workload(&c2)).expect("cluster2 → cluster1");
    assert_eq!(ids, vec![SPIFFE_ID]);
    let ids = handshake(workload(&c2), workload(&c1)).expect("cluster1 → cluster2");
    assert_eq!(ids, vec![SPIFFE_ID]);
}

#[test]
fn a_cluster_under_another_root_is_not_trusted() {
    let ours = Setup::new();
    ours.cacertd(&["issue", "--init-root"]).ok();
    let theirs = Setup::new();
    theirs.cacertd(&["issue", "--init-root"]).ok();
    let err = handshake(
        workload(&ours.path("out/cluster1")),
        workload(&theirs.path("out/cluster1")),
    )
    .expect_err("a workload under another root must be refused");
    // Both roots carry the same subject: the path is found by name, and the signature
    // under the other root's key is what fails.
    assert_eq!(err, "client: invalid peer certificate: BadSignature");
    let err = handshake(
        workload(&theirs.path("out/cluster2")),
        workload(&ours.path("out/cluster2")),
    )
    .expect_err("and the other way round");
    assert_eq!(err, "client: invalid peer certificate: BadSignature");
}

#[test]
fn mtls_still_works_after_one_cluster_renews_its_intermediate() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let before = workload(&s.path("out/cluster2"));
    s.cacertd(&["issue", "--force", "cluster1"]).ok();
    // A workload signed by cluster1's NEW intermediate talks to one signed before the renewal.
    handshake(before, workload(&s.path("out/cluster1"))).expect("renewal must not break trust");
}
