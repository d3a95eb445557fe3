//! Planning, pure: from what a cluster holds, the root, the policy and the time, decide what to
//! do. `status` shows the assessment, `plan` the decision, `issue` carries it out.

use serde::Serialize;
use time::OffsetDateTime;

use crate::pki::{
    CaCertsFiles, Cert, CertInfo, TrustBundle, issuing_root, verify_cacerts_for_mesh,
};
use crate::policy::Policy;

/// The state of one primary's `cacerts`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterState {
    /// No `cacerts` at all.
    Missing,
    /// Verifies, chains to the current root, renewal not yet due.
    Valid,
    /// Verifies, but the policy's renew-before point has passed.
    RenewalDue,
    /// Verifies, but no longer matches the policy (key algorithm, path length).
    PolicyDrift,
    /// Incomplete, tampered, expired, or otherwise refused by istiod.
    Invalid,
    /// The trust bundle does not contain the current root: the cluster lives in another trust
    /// domain, and replacing its material outright would break its mTLS.
    ForeignTrust,
    /// Trusts the current root, but signs with a CA under another root (mid-transition).
    OtherSigner,
    /// No plug-in CA: istiod runs its self-signed CA (`istio-ca-secret`).
    SelfSigned,
}

impl ClusterState {
    pub fn name(self) -> &'static str {
        match self {
            ClusterState::Missing => "missing",
            ClusterState::Valid => "valid",
            ClusterState::RenewalDue => "renewal-due",
            ClusterState::PolicyDrift => "policy-drift",
            ClusterState::Invalid => "invalid",
            ClusterState::ForeignTrust => "foreign-trust",
            ClusterState::OtherSigner => "other-signer",
            ClusterState::SelfSigned => "self-signed",
        }
    }
}

/// What cacertd knows about one primary's `cacerts` at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub state: ClusterState,
    pub intermediate: Option<CertInfo>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub renew_at: Option<OffsetDateTime>,
    /// Whether the intermediate's life is capped by the root: renewing would not extend it.
    pub capped_by_root: bool,
    pub trusts_root: bool,
    pub trust_bundle: Vec<String>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// Kubernetes targets: the bundles istiod published to namespaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    #[serde(skip)]
    pub trust: Option<TrustBundle>,
}

/// What one primary cluster holds, as read from its target. Directory targets fill in only
/// `cacerts`; Kubernetes targets also report istiod's self-signed CA and the published bundles.
#[derive(Clone, Debug, Default)]
pub struct Snapshot {
    /// The plug-in CA (`cacerts`), in either form istiod reads.
    pub cacerts: Option<CaCertsFiles>,
    /// istiod's own self-signed CA (`istio-ca-secret`), present until a cluster is migrated.
    pub self_signed_ca: Option<CaCertsFiles>,
    /// `root-cert.pem` of each `istio-ca-root-cert` ConfigMap, by namespace: the bundle istiod
    /// has actually published to workloads.
    pub published_bundles: Option<Vec<(String, Vec<u8>)>>,
}

impl Snapshot {
    pub fn of(cacerts: Option<CaCertsFiles>) -> Self {
        Snapshot {
            cacerts,
            ..Default::default()
        }
    }
}

/// What a primary's `cacerts` is judged against.
#[derive(Clone, Copy, Debug)]
pub struct Expected<'a> {
    /// The current root; `None` before one exists (then only validity and renewal are judged).
    pub root: Option<&'a Cert>,
    pub policy: &'a Policy,
    pub cluster: &'a str,
    pub trust_domain: &'a str,
}

/// Assesses a primary's current `cacerts` at `now`.
///
/// Trust is judged from what can be parsed, independently of whether the set validates: a set
/// that does not demonstrably trust the current root is never classed as merely invalid, so
/// `issue` cannot replace another trust domain's bundle just because something else about the
/// set is broken.
pub fn assess(snapshot: &Snapshot, expected: &Expected<'_>, now: OffsetDateTime) -> Assessment {
    let Expected {
        root,
        policy,
        cluster,
        trust_domain,
    } = *expected;
    let mut a = Assessment {
        state: ClusterState::Missing,
        intermediate: None,
        renew_at: None,
        capped_by_root: false,
        trusts_root: false,
        trust_bundle: Vec::new(),
        problems: Vec::new(),
        warnings: Vec::new(),
        published: None,
        trust: None,
    };
    if let Some(bundles) = &snapshot.published_bundles {
        let with_root = bundles
            .iter()
            .filter(|(_, pem)| {
                let (b, _) = TrustBundle::from_pem_lenient(pem);
                root.is_some_and(|r| b.contains(r))
            })
            .count();
        a.published = Some(Published {
            namespaces: bundles.len(),
            with_root,
        });
    }
    let Some(files) = snapshot.cacerts.as_ref().filter(|f| !is_empty(f)) else {
        // No plug-in CA: istiod signs with its self-signed CA, if it has one. Plugging in the
        // common root now would leave every running workload trusting only the old root.
        if let Some(ss) = &snapshot.self_signed_ca {
            let (trust, _) = TrustBundle::from_pem_lenient(&ss.root_cert);
            a.trust_bundle = trust.fingerprints();
            a.intermediate = Cert::lenient_from_pem(&ss.ca_cert, CaCertsFiles::CA_CERT)
                .0
                .into_iter()
                .next()
                .map(|c| c.info().clone());
            a.state = ClusterState::SelfSigned;
        }
        return a;
    };
    let (trust, _) = TrustBundle::from_pem_lenient(&files.root_cert);
    a.trusts_root = root.is_some_and(|r| trust.contains(r));
    a.trust_bundle = trust.fingerprints();
    let signing = Cert::lenient_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT)
        .0
        .into_iter()
        .next();
    a.intermediate = signing.as_ref().map(|c| c.info().clone());
    // Who signs: the root of the bundle the signing certificate chains to, by signature.
    let signer_root = signing.as_ref().and_then(|c| {
        let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, CaCertsFiles::CERT_CHAIN);
        issuing_root(c, &chain, trust.roots())
    });
    a.trust = Some(trust);

    let verified = verify_cacerts_for_mesh(files, now, Some(trust_domain));
    match &verified {
        Ok(v) => a.warnings = v.warnings().iter().map(ToString::to_string).collect(),
        Err(problems) => a.problems = problems.iter().map(ToString::to_string).collect(),
    }
    if let Some(root) = root {
        if !a.trusts_root {
            a.state = ClusterState::ForeignTrust;
            return a;
        }
        if signer_root.as_ref().is_some_and(|s| s != root) {
            a.state = ClusterState::OtherSigner;
            return a;
        }
    }
    let v = match verified {
        Ok(v) => v,
        Err(_) => {
            a.state = ClusterState::Invalid;
            return a;
        }
    };
    let info = v.signing_cert().info();
    let renew_at = policy.renew_at(info);
    a.renew_at = Some(renew_at);
    a.capped_by_root = root.is_some_and(|r| info.not_after >= r.info().not_after);
    a.state = if let Some(drift) = policy.drift(v.signing_cert(), cluster, trust_domain) {
        a.problems.push(drift);
        ClusterState::PolicyDrift
    } else if now >= renew_at && a.capped_by_root {
        a.warnings.push(format!(
            "renewal is due but cannot extend validity past the root's expiry ({}); rotate the root",
            crate::pki::fmt_time(info.not_after)
        ));
        ClusterState::Valid
    } else if now >= renew_at {
        ClusterState::RenewalDue
    } else {
        ClusterState::Valid
    };
    a
}

fn is_empty(files: &CaCertsFiles) -> bool {
    files
        .entries()
        .iter()
        .all(|(_, b)| b.iter().all(u8::is_ascii_whitespace))
}

/// How many namespaces' `istio-ca-root-cert` ConfigMaps istiod has published, and how many of
/// them contain the current root.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
pub struct Published {
    pub namespaces: usize,
    pub with_root: usize,
}

/// Switches a run can be given.
#[derive(Clone, Copy, Debug, Default)]
pub struct PlanOptions {
    /// Re-issue even a valid intermediate.
    pub force: bool,
    /// Replace a trust bundle that does not contain the current root. Breaks mTLS between this
    /// cluster's workloads and every workload still on the old root until all restart.
    pub danger_replace_trust_bundle: bool,
}

/// Why a new intermediate is issued.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum IssueReason {
    Missing,
    Forced,
    RenewalDue,
    PolicyChanged,
    Invalid,
    ReplaceTrust,
}

impl IssueReason {
    pub fn describe(&self) -> &'static str {
        match self {
            IssueReason::Missing => "no cacerts yet",
            IssueReason::Forced => "forced",
            IssueReason::RenewalDue => "renewal due",
            IssueReason::PolicyChanged => "policy changed",
            IssueReason::Invalid => "current cacerts invalid",
            IssueReason::ReplaceTrust => "replacing foreign trust bundle (danger)",
        }
    }
}

/// Which trust bundle the new `cacerts` carries.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TrustChoice {
    /// The current `root-cert.pem`, byte for byte (it contains the root; may hold more roots
    /// that a transition put there).
    Keep(TrustBundle),
    /// The current root alone.
    RootOnly,
}

/// What to do for one primary.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    Keep,
    Issue {
        reason: IssueReason,
        trust: TrustChoice,
    },
    Refuse {
        reason: String,
    },
}

/// Decides from an assessment. Never replaces a trust bundle that lacks the root unless told
/// to, in danger terms.
pub fn decide(a: &Assessment, opts: PlanOptions) -> Decision {
    let keep_trust = || match &a.trust {
        Some(t) if a.trusts_root => TrustChoice::Keep(t.clone()),
        _ => TrustChoice::RootOnly,
    };
    let issue = |reason| Decision::Issue {
        reason,
        trust: keep_trust(),
    };
    match a.state {
        ClusterState::Missing => issue(IssueReason::Missing),
        ClusterState::Valid if opts.force => issue(IssueReason::Forced),
        ClusterState::Valid => Decision::Keep,
        ClusterState::RenewalDue => issue(IssueReason::RenewalDue),
        ClusterState::PolicyDrift => issue(IssueReason::PolicyChanged),
        ClusterState::Invalid => issue(IssueReason::Invalid),
        ClusterState::ForeignTrust if opts.danger_replace_trust_bundle => Decision::Issue {
            reason: IssueReason::ReplaceTrust,
            trust: TrustChoice::RootOnly,
        },
        ClusterState::ForeignTrust => Decision::Refuse {
            reason: format!(
                "its root-cert.pem trusts {} but not the current root; replacing it would break \
                 mTLS with every workload still on the old CA. Move it with a phased trust \
                 transition, or pass --danger-replace-trust-bundle if no workload depends on it",
                if a.trust_bundle.is_empty() {
                    "nothing readable".to_string()
                } else {
                    a.trust_bundle.join(", ")
                }
            ),
        },
        ClusterState::OtherSigner if opts.danger_replace_trust_bundle => {
            issue(IssueReason::ReplaceTrust)
        }
        ClusterState::OtherSigner => Decision::Refuse {
            reason: "it signs with a CA under another root that it still trusts (a trust \
                     transition is in progress); switching signers here could break clusters \
                     that do not trust the current root yet"
                .to_string(),
        },
        ClusterState::SelfSigned if opts.danger_replace_trust_bundle => Decision::Issue {
            reason: IssueReason::ReplaceTrust,
            trust: TrustChoice::RootOnly,
        },
        ClusterState::SelfSigned => Decision::Refuse {
            reason: "istiod signs with its self-signed CA (istio-ca-secret); plugging in the \
                     common root directly would break mTLS with every running workload. Migrate \
                     it with a phased trust transition, or pass --danger-replace-trust-bundle if \
                     no workload depends on it"
                .to_string(),
        },
    }
}

#[cfg(test)]
mod tests {
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
            policy,
            cluster: "c1",
            trust_domain: "td",
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

    #[test]
    fn a_cluster_mid_transition_is_not_touched() {
        let p = policy();
        let (old, new) = (root(&p), root(&p));
        let mut files = cacerts(&old, &p, t0());
        files.root_cert = TrustBundle::single(old.cert())
            .with_root_appended(new.cert())
            .pem_bytes()
            .to_vec();
        let a = judge(&files, &new, &p, t0());
        assert_eq!(a.state, ClusterState::OtherSigner);
        assert!(matches!(
            decide(&a, PlanOptions::default()),
            Decision::Refuse { .. }
        ));
    }

    #[test]
    fn a_tampered_key_is_detected_and_repaired() {
        let p = policy();
        let r = root(&p);
        let mut files = cacerts(&r, &p, t0());
        files.ca_key = cacerts(&r, &p, t0()).ca_key;
        let a = judge(&files, &r, &p, t0());
        assert_eq!(a.state, ClusterState::Invalid);
        assert!(matches!(
            decide(&a, PlanOptions::default()),
            Decision::Issue {
                reason: IssueReason::Invalid,
                ..
            }
        ));
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
        assert!(matches!(
            decide(&a, PlanOptions::default()),
            Decision::Issue {
                reason: IssueReason::PolicyChanged,
                ..
            }
        ));
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
        files.root_cert = TrustBundle::single(old.cert())
            .with_root_appended(new.cert())
            .pem_bytes()
            .to_vec();
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
        };
        let snap = Snapshot {
            cacerts: None,
            self_signed_ca: Some(ss),
            published_bundles: Some(vec![
                ("default".into(), istiod.cert_pem().into_bytes()),
                ("app".into(), ours.cert_pem().into_bytes()),
            ]),
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
}
