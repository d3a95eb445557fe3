use super::*;
use crate::pki::{RootCa, generate_root, issue_intermediate};
use crate::policy::PolicySet;
use std::time::Duration;
use time::macros::datetime;

const DAY: i64 = 86400;

fn t0() -> OffsetDateTime {
    datetime!(2026-01-01 00:00 UTC)
}

fn policy() -> Policy {
    PolicySet::embedded()
        .unwrap()
        .get("default")
        .unwrap()
        .clone()
}

fn root(p: &Policy) -> RootCa {
    generate_root(&p.root_spec("td"), t0()).unwrap()
}

fn expected<'a>(root: &'a Cert, policy: &'a Policy) -> Expected<'a> {
    Expected {
        root: Some(root),
        signing_ca: Some(root),
        policy,
        cluster: "c1",
        trust_domain: "td",
        known_roots: &[],
    }
}

fn judge(files: &CaCertsFiles, root: &RootCa, p: &Policy, at: OffsetDateTime) -> Assessment {
    assess(
        &Snapshot::of(Some(files.clone())),
        &expected(root.cert(), p),
        at,
    )
}

fn cacerts(root: &RootCa, p: &Policy, at: OffsetDateTime) -> CaCertsFiles {
    let int = issue_intermediate(root, &p.intermediate_spec("c1", "td"), at).unwrap();
    CaCertsFiles::for_intermediate(&int, &[], root.cert(), &TrustBundle::single(root.cert()))
}

#[test]
fn nothing_there_means_issue_with_the_root_alone() {
    let p = policy();
    let r = root(&p);
    let a = assess(&Snapshot::default(), &expected(r.cert(), &p), t0());
    assert_eq!(a.state, ClusterState::Missing);
    assert_eq!(
        decide(&a, PlanOptions::default()),
        Decision::Issue {
            reason: IssueReason::Missing,
            trust: TrustChoice::RootOnly
        }
    );
}

#[test]
fn renewal_happens_exactly_when_due_not_before() {
    let p = policy();
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let a = judge(&files, &r, &p, t0());
    assert_eq!(a.state, ClusterState::Valid);
    let renew_at = a.renew_at.unwrap();
    assert_eq!(decide(&a, PlanOptions::default()), Decision::Keep);

    let just_before = renew_at - time::Duration::seconds(1);
    assert_eq!(
        judge(&files, &r, &p, just_before).state,
        ClusterState::Valid
    );
    let due = judge(&files, &r, &p, renew_at);
    assert_eq!(due.state, ClusterState::RenewalDue);
    match decide(&due, PlanOptions::default()) {
        Decision::Issue {
            reason: IssueReason::RenewalDue,
            trust: TrustChoice::Keep(t),
        } => {
            assert_eq!(t.pem_bytes(), files.root_cert.as_slice());
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn an_expired_intermediate_is_reissued_keeping_the_bundle() {
    let p = policy();
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let a = judge(&files, &r, &p, t0() + time::Duration::days(400));
    assert_eq!(a.state, ClusterState::Invalid);
    assert!(
        a.problems.iter().any(|m| m.contains("expired")),
        "{:?}",
        a.problems
    );
    assert!(matches!(
        decide(&a, PlanOptions::default()),
        Decision::Issue {
            reason: IssueReason::Invalid,
            trust: TrustChoice::Keep(_)
        }
    ));
}

#[test]
fn force_reissues_a_valid_intermediate() {
    let p = policy();
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let a = judge(&files, &r, &p, t0());
    let opts = PlanOptions {
        force: true,
        ..Default::default()
    };
    assert!(matches!(
        decide(&a, opts),
        Decision::Issue {
            reason: IssueReason::Forced,
            ..
        }
    ));
}

#[test]
fn a_cluster_on_another_root_is_refused_unless_told_in_danger_terms() {
    let p = policy();
    let (ours, theirs) = (root(&p), root(&p));
    let files = cacerts(&theirs, &p, t0());
    let a = judge(&files, &ours, &p, t0());
    assert_eq!(a.state, ClusterState::ForeignTrust);
    let Decision::Refuse { reason } = decide(&a, PlanOptions::default()) else {
        panic!()
    };
    assert!(
        reason.contains(&theirs.cert().info().fingerprint_sha256),
        "{reason}"
    );
    let opts = PlanOptions {
        danger_replace_trust_bundle: true,
        ..Default::default()
    };
    assert_eq!(
        decide(&a, opts),
        Decision::Issue {
            reason: IssueReason::ReplaceTrust,
            trust: TrustChoice::RootOnly
        }
    );
}

/// A bundle mid-transition: the old root's bytes, then the new root.
fn both_roots(old: &RootCa, new: &RootCa) -> Vec<u8> {
    TrustBundle::single(old.cert())
        .with_root_appended(new.cert())
        .pem_bytes()
        .to_vec()
}

#[test]
fn a_cluster_mid_transition_is_not_touched() {
    let p = policy();
    let (old, new) = (root(&p), root(&p));
    let mut files = cacerts(&old, &p, t0());
    files.root_cert = both_roots(&old, &new);
    let a = judge(&files, &new, &p, t0());
    assert_eq!(a.state, ClusterState::OtherSigner);
    assert!(matches!(
        decide(&a, PlanOptions::default()),
        Decision::Refuse { .. }
    ));
}

/// `a` is to be issued a new intermediate, for `reason`.
fn assert_issues(a: &Assessment, reason: IssueReason) {
    match decide(a, PlanOptions::default()) {
        Decision::Issue { reason: r, .. } => assert_eq!(r, reason),
        other => panic!("expected an issuance for {reason:?}, got {other:?}"),
    }
}

#[test]
fn a_tampered_key_is_detected_and_repaired() {
    let p = policy();
    let r = root(&p);
    let mut files = cacerts(&r, &p, t0());
    files.ca_key = cacerts(&r, &p, t0()).ca_key;
    let a = judge(&files, &r, &p, t0());
    assert_eq!(a.state, ClusterState::Invalid);
    assert_issues(&a, IssueReason::Invalid);
}

#[test]
fn a_policy_change_triggers_reissue() {
    let p = policy();
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let mut stricter = p.clone();
    stricter.intermediate.key_algorithm = crate::pki::KeyAlgorithm::EcdsaP384;
    let a = judge(&files, &r, &stricter, t0());
    assert_eq!(a.state, ClusterState::PolicyDrift);
    assert_issues(&a, IssueReason::PolicyChanged);
}

#[test]
fn a_capped_intermediate_is_not_renewed_in_a_loop() {
    let mut p = policy();
    p.root.validity = Duration::from_secs(200 * DAY as u64);
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let a = judge(&files, &r, &p, t0() + time::Duration::days(190));
    assert!(a.capped_by_root);
    assert!(
        a.warnings.iter().any(|w| w.contains("rotate the root")),
        "{:?}",
        a.warnings
    );
    assert_eq!(
        a.state,
        ClusterState::Valid,
        "renewing cannot extend past the root"
    );
}

#[test]
fn a_foreign_bundle_stays_foreign_when_something_else_is_broken() {
    let p = policy();
    let (ours, theirs) = (root(&p), root(&p));
    let mut files = cacerts(&theirs, &p, t0());
    // A CRL block Go skips but a strict parser chokes on, and a missing chain.
    files
        .root_cert
        .extend_from_slice(b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n");
    files.cert_chain.clear();
    let a = judge(&files, &ours, &p, t0());
    assert_eq!(a.state, ClusterState::ForeignTrust);
    assert!(matches!(
        decide(&a, PlanOptions::default()),
        Decision::Refuse { .. }
    ));
    // Unreadable trust is not trust either.
    files.root_cert = b"garbage".to_vec();
    let a = judge(&files, &ours, &p, t0());
    assert_eq!(a.state, ClusterState::ForeignTrust);
}

#[test]
fn mid_transition_is_recognised_even_when_the_set_does_not_validate() {
    let p = policy();
    let (old, new) = (root(&p), root(&p));
    let mut files = cacerts(&old, &p, t0());
    files.root_cert = both_roots(&old, &new);
    files.cert_chain.clear();
    let a = judge(&files, &new, &p, t0());
    assert_eq!(a.state, ClusterState::OtherSigner);
}

#[test]
fn an_empty_set_counts_as_missing() {
    let p = policy();
    let r = root(&p);
    let files = CaCertsFiles {
        ca_cert: Vec::new(),
        ca_key: Default::default(),
        root_cert: b"\n".to_vec(),
        cert_chain: Vec::new(),
        ca_crl: Vec::new(),
    };
    assert_eq!(judge(&files, &r, &p, t0()).state, ClusterState::Missing);
}

#[test]
fn another_clusters_intermediate_is_drift() {
    let p = policy();
    let r = root(&p);
    let files = cacerts(&r, &p, t0());
    let mut e = expected(r.cert(), &p);
    e.cluster = "c2";
    let a = assess(&Snapshot::of(Some(files.clone())), &e, t0());
    assert_eq!(a.state, ClusterState::PolicyDrift);
    assert!(a.problems[0].contains("subject"), "{:?}", a.problems);
}

#[test]
fn a_self_signed_cluster_is_not_plugged_in_directly() {
    let p = policy();
    let (ours, istiod) = (root(&p), root(&p));
    let ss = CaCertsFiles {
        ca_cert: istiod.cert_pem().into_bytes(),
        ca_key: istiod.key().to_pem().as_bytes().to_vec().into(),
        root_cert: istiod.cert_pem().into_bytes(),
        cert_chain: Vec::new(),
        ca_crl: Vec::new(),
    };
    let snap = Snapshot {
        cacerts: None,
        self_signed_ca: Some(ss),
        published_bundles: Some(vec![
            ("default".into(), istiod.cert_pem().into_bytes()),
            ("app".into(), ours.cert_pem().into_bytes()),
        ]),
        istiod_images: None,
    };
    let a = assess(&snap, &expected(ours.cert(), &p), t0());
    assert_eq!(a.state, ClusterState::SelfSigned);
    assert_eq!(
        a.published,
        Some(Published {
            namespaces: 2,
            with_root: 1
        })
    );
    assert_eq!(
        a.trust_bundle,
        vec![istiod.cert().info().fingerprint_sha256.clone()]
    );
    let Decision::Refuse { reason } = decide(&a, PlanOptions::default()) else {
        panic!()
    };
    assert!(reason.contains("self-signed"), "{reason}");
}

/// A root in the bundle that is neither the current root nor known is flagged, and never
/// carried forward silently.
#[test]
fn a_root_nobody_configured_is_flagged_and_not_carried_forward() {
    let p = policy();
    let (ours, planted) = (root(&p), root(&p));
    let mut files = cacerts(&ours, &p, t0());
    files.root_cert = both_roots(&ours, &planted);
    let a = judge(&files, &ours, &p, t0());
    assert_eq!(a.state, ClusterState::UnknownRoots);
    assert_eq!(
        a.unknown_roots,
        [planted.cert().info().fingerprint_sha256.clone()]
    );
    // Nothing due: kept (and reported). Forced: refused, unless decided either way.
    assert_eq!(decide(&a, PlanOptions::default()), Decision::Keep);
    let force = PlanOptions {
        force: true,
        ..Default::default()
    };
    assert!(
        matches!(decide(&a, force), Decision::Refuse { reason } if reason.contains("--keep-unknown-roots"))
    );
    let keep = PlanOptions {
        keep_unknown_roots: true,
        ..force
    };
    assert!(matches!(
        decide(&a, keep),
        Decision::Issue {
            trust: TrustChoice::Keep(_),
            ..
        }
    ));
    let replace = PlanOptions {
        danger_replace_trust_bundle: true,
        ..force
    };
    assert!(matches!(
        decide(&a, replace),
        Decision::Issue {
            trust: TrustChoice::RootOnly,
            ..
        }
    ));
    // Renewal due: refused too — renewing would carry it forward.
    let late = judge(&files, &ours, &p, t0() + time::Duration::days(300));
    assert_eq!(late.state, ClusterState::RenewalDue);
    assert!(matches!(
        decide(&late, PlanOptions::default()),
        Decision::Refuse { .. }
    ));
    // Configured (extra_trusted_roots): an anchor like any other.
    let known = [planted.cert().clone()];
    let with_known = Expected {
        known_roots: &known,
        ..expected(ours.cert(), &p)
    };
    let a = assess(&Snapshot::of(Some(files)), &with_known, t0());
    assert_eq!(a.state, ClusterState::Valid);
    assert!(a.unknown_roots.is_empty());
}

/// A mesh CA replaced under the same anchor: the intermediates the old one issued still chain
/// to the anchor, so trust is unchanged, but they are re-issued under the new one, keeping the
/// cluster's bundle as it is. An intermediate the new mesh CA issued is left alone.
#[test]
fn an_intermediate_from_a_replaced_mesh_ca_is_reissued_keeping_trust() {
    let p = policy();
    let anchor = root(&p);
    let mesh_ca = |cluster: &str| {
        let mut spec = p.intermediate_spec(cluster, "td");
        spec.path_len = 1;
        let ca = issue_intermediate(&anchor, &spec, t0()).unwrap();
        RootCa::new(ca.cert, ca.key, "mesh")
            .unwrap()
            .with_chain(vec![anchor.cert().clone()], "chain")
            .unwrap()
    };
    let (old, new) = (mesh_ca("old"), mesh_ca("new"));
    let files_under = |mesh: &RootCa| {
        let int = issue_intermediate(mesh, &p.intermediate_spec("c1", "td"), t0()).unwrap();
        CaCertsFiles::for_intermediate(
            &int,
            &mesh.between(),
            anchor.cert(),
            &TrustBundle::single(anchor.cert()),
        )
    };
    let with_signer = |signing_ca| Expected {
        signing_ca: Some(signing_ca),
        ..expected(anchor.cert(), &p)
    };
    let from_old = Snapshot::of(Some(files_under(&old)));
    assert_eq!(
        assess(&from_old, &with_signer(old.cert()), t0()).state,
        ClusterState::Valid
    );
    let a = assess(&from_old, &with_signer(new.cert()), t0());
    assert_eq!(a.state, ClusterState::PreviousSigner);
    assert!(
        a.warnings.iter().any(|w| w.contains("no longer signs")),
        "{:?}",
        a.warnings
    );
    assert_eq!(
        decide(&a, PlanOptions::default()),
        Decision::Issue {
            reason: IssueReason::SignerReplaced,
            trust: TrustChoice::Keep(TrustBundle::single(anchor.cert())),
        }
    );
    let from_new = Snapshot::of(Some(files_under(&new)));
    assert_eq!(
        assess(&from_new, &with_signer(new.cert()), t0()).state,
        ClusterState::Valid
    );
}

#[test]
fn the_first_revocation_list_to_expire_is_reported() {
    use crate::pki::{CaKey, crls_pem, sign_crl};
    let p = policy();
    let r = root(&p);
    let mut files = cacerts(&r, &p, t0());
    assert_eq!(judge(&files, &r, &p, t0()).revocation_lists_expire, None);
    let own = Cert::one_from_pem(&files.ca_cert, "ca-cert.pem").unwrap();
    let key = CaKey::from_pem(&files.ca_key, "ca-key.pem").unwrap();
    let (soon, later) = (
        t0() + time::Duration::days(10),
        t0() + time::Duration::days(300),
    );
    files.ca_crl = crls_pem(&[
        sign_crl(r.cert(), r.key(), &[], 1, t0(), later).unwrap(),
        sign_crl(&own, &key, &[], 1, t0(), soon).unwrap(),
    ]);
    let a = judge(&files, &r, &p, t0());
    assert_eq!(a.revocation_lists_expire, Some(soon));
    assert_eq!(a.state, ClusterState::Valid, "lists change nothing else");
}
