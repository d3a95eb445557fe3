//! Planning, pure: from what a cluster holds, the root, the policy and the time, decide what to
//! do. `status` shows the assessment, `plan` the decision, `issue` carries it out.

use std::collections::HashMap;

use serde::Serialize;
use time::OffsetDateTime;

use crate::pki::{
    CaCertsFiles, Cert, CertInfo, TrustBundle, issued_by, issuing_root, verify_cacerts_for_mesh,
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
    /// Verifies and signs under the current root, but its bundle also trusts roots that are
    /// neither the current root nor a configured extra anchor (nor a transition's): every
    /// workload there trusts an anchor the security team does not hold.
    UnknownRoots,
    /// No plug-in CA: istiod runs its self-signed CA (`istio-ca-secret`).
    SelfSigned,
    /// Verifies and chains to the current anchor, but its intermediate was issued by a CA that
    /// no longer signs: the mesh CA was replaced under the same anchor. Trust is unchanged; the
    /// intermediate is re-issued under the mesh CA now in the store.
    PreviousSigner,
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
            ClusterState::UnknownRoots => "unknown-roots",
            ClusterState::SelfSigned => "self-signed",
            ClusterState::PreviousSigner => "previous-signer",
        }
    }
}

/// What cacertd knows about one primary's `cacerts` at one instant.
#[derive(Clone, Debug, Serialize)]
pub struct Assessment {
    pub state: ClusterState,
    pub intermediate: Option<CertInfo>,
    #[serde(with = "crate::clock::rfc3339_seconds::option")]
    pub renew_at: Option<OffsetDateTime>,
    /// Whether the intermediate's life is capped by the root: renewing would not extend it.
    pub capped_by_root: bool,
    pub trusts_root: bool,
    pub trust_bundle: Vec<String>,
    /// When each root of `trust_bundle` expires (for the per-root expiry metric).
    #[serde(skip)]
    pub trust_bundle_expiries: Vec<OffsetDateTime>,
    /// SHA-256 fingerprints of the bundle's roots that are neither the current root nor known
    /// (see [`Expected::known_roots`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_roots: Vec<String>,
    pub problems: Vec<String>,
    pub warnings: Vec<String>,
    /// Kubernetes targets: the bundles istiod published to namespaces.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub published: Option<Published>,
    /// When the first revocation list of its `ca-crl.pem` expires (its nextUpdate): from then
    /// on Envoy rejects every chain that list covers (docs/istio.md §14). `None`: no lists.
    #[serde(
        with = "crate::clock::rfc3339_seconds::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revocation_lists_expire: Option<OffsetDateTime>,
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
    /// The image of each istiod Deployment (Kubernetes targets), which names its version.
    pub istiod_images: Option<Vec<String>>,
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
    /// The current root (the trust anchor); `None` before one exists (then only validity and
    /// renewal are judged).
    pub root: Option<&'a Cert>,
    /// The CA that issues intermediates now: the mesh CA below the anchor, or the root itself.
    /// An intermediate under the anchor that this CA did not issue is re-issued (`None`: not
    /// judged).
    pub signing_ca: Option<&'a Cert>,
    pub policy: &'a Policy,
    pub cluster: &'a str,
    pub trust_domain: &'a str,
    /// Roots a bundle may hold besides `root` without being flagged: the configured extra
    /// anchors, and those of a transition under way.
    pub known_roots: &'a [Cert],
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
        trust_domain,
        known_roots,
        ..
    } = *expected;
    let mut a = Assessment {
        published: published(snapshot, root),
        ..Assessment::missing()
    };
    let Some(files) = snapshot.cacerts.as_ref().filter(|f| !is_empty(f)) else {
        // No plug-in CA: istiod signs with its self-signed CA, if it has one. Plugging in the
        // common root now would leave every running workload trusting only the old root.
        if let Some(ss) = &snapshot.self_signed_ca {
            self_signed(&mut a, ss);
        }
        return a;
    };
    // Lists of CAs outside its chain (another cluster's predecessor) lapse harmlessly.
    a.revocation_lists_expire = crate::pki::own_lists(files)
        .iter()
        .filter_map(crate::pki::Crl::next_update)
        .min();
    let signer_root = read_trust(&mut a, files, root, known_roots);

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
    a.state = lifecycle(&mut a, v.signing_cert(), expected, now);
    if a.state != ClusterState::PolicyDrift
        && let Some(ca) = expected.signing_ca
        && !issued_by(v.signing_cert(), ca)
    {
        a.warnings.push(format!(
            "issued by {}, which no longer signs: the mesh CA was replaced under the same anchor \
             ({}); re-issuing changes no trust",
            v.signing_cert().info().issuer,
            ca.info().subject
        ));
        a.state = ClusterState::PreviousSigner;
    }
    if a.state == ClusterState::Valid && !a.unknown_roots.is_empty() {
        a.state = ClusterState::UnknownRoots;
    }
    a
}

/// Notes in `a` what `files` trust (against the common `root` and the `known` others) and the
/// intermediate they sign with; returns the root of the bundle it chains to, by signature.
fn read_trust(
    a: &mut Assessment,
    files: &CaCertsFiles,
    root: Option<&Cert>,
    known: &[Cert],
) -> Option<Cert> {
    let (trust, _) = TrustBundle::from_pem_lenient(&files.root_cert);
    a.trusts_root = root.is_some_and(|r| trust.contains(r));
    a.trust_bundle = trust.fingerprints();
    a.trust_bundle_expiries = trust.expiries();
    if let Some(root) = root.filter(|_| a.trusts_root) {
        a.unknown_roots = unknown_roots(&trust, root, known);
    }
    let signing = Cert::lenient_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT)
        .0
        .into_iter()
        .next();
    a.intermediate = signing.as_ref().map(|c| c.info().clone());
    let signer_root = signing.as_ref().and_then(|c| {
        let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, CaCertsFiles::CERT_CHAIN);
        issuing_root(c, &chain, trust.roots())
    });
    a.trust = Some(trust);
    signer_root
}

impl Assessment {
    /// A cluster without `cacerts`, before anything else is known.
    fn missing() -> Self {
        Assessment {
            state: ClusterState::Missing,
            intermediate: None,
            renew_at: None,
            capped_by_root: false,
            trusts_root: false,
            trust_bundle: Vec::new(),
            trust_bundle_expiries: Vec::new(),
            unknown_roots: Vec::new(),
            problems: Vec::new(),
            warnings: Vec::new(),
            published: None,
            revocation_lists_expire: None,
            trust: None,
        }
    }
}

/// A cluster whose istiod signs with its self-signed CA (`istio-ca-secret`): what it trusts
/// and signs with.
fn self_signed(a: &mut Assessment, ss: &CaCertsFiles) {
    let (trust, _) = TrustBundle::from_pem_lenient(&ss.root_cert);
    a.trust_bundle = trust.fingerprints();
    a.trust_bundle_expiries = trust.expiries();
    a.intermediate = Cert::lenient_from_pem(&ss.ca_cert, CaCertsFiles::CA_CERT)
        .0
        .into_iter()
        .next()
        .map(|c| c.info().clone());
    a.state = ClusterState::SelfSigned;
}

/// How many namespaces' published bundles there are, and how many hold the root.
fn published(snapshot: &Snapshot, root: Option<&Cert>) -> Option<Published> {
    let bundles = snapshot.published_bundles.as_ref()?;
    // Every namespace holds the same text once istiod caught up: each text is read once.
    let mut judged: HashMap<&[u8], bool> = HashMap::new();
    Some(Published {
        namespaces: bundles.len(),
        with_root: bundles
            .iter()
            .filter(|(_, pem)| {
                *judged.entry(pem.as_slice()).or_insert_with(|| {
                    let (b, _) = TrustBundle::from_pem_lenient(pem);
                    root.is_some_and(|r| b.contains(r))
                })
            })
            .count(),
    })
}

/// The fingerprints of the roots of `trust` that are neither `root` nor `known`.
fn unknown_roots(trust: &TrustBundle, root: &Cert, known: &[Cert]) -> Vec<String> {
    trust
        .roots()
        .iter()
        .filter(|r| *r != root && !known.contains(r))
        .map(|r| r.info().fingerprint_sha256.clone())
        .collect()
}

/// Where a valid set under the right root stands in its life: drifted from its policy, due
/// for renewal, or valid (also when renewal could not extend it past the root).
fn lifecycle(
    a: &mut Assessment,
    signing: &Cert,
    expected: &Expected<'_>,
    now: OffsetDateTime,
) -> ClusterState {
    let Expected {
        root,
        policy,
        cluster,
        trust_domain,
        ..
    } = *expected;
    let info = signing.info();
    let renew_at = policy.renew_at(info);
    a.renew_at = Some(renew_at);
    a.capped_by_root = root.is_some_and(|r| info.not_after >= r.info().not_after);
    if let Some(drift) = policy.drift(signing, cluster, trust_domain) {
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
    }
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
    /// Carry roots nobody configured forward into a re-issued set, knowingly.
    pub keep_unknown_roots: bool,
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
    SignerReplaced,
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
            IssueReason::SignerReplaced => {
                "mesh CA replaced under the same anchor (trust unchanged)"
            }
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
    let decision = decide_state(a, opts);
    // Re-issuing keeps the bundle: never carry a root nobody configured forward silently.
    match decision {
        Decision::Issue {
            trust: TrustChoice::Keep(_),
            reason,
        } if !a.unknown_roots.is_empty() && !opts.keep_unknown_roots => {
            if opts.danger_replace_trust_bundle {
                return Decision::Issue {
                    reason,
                    trust: TrustChoice::RootOnly,
                };
            }
            Decision::Refuse {
                reason: format!(
                    "its root-cert.pem also trusts {}, which is neither the current root nor \
                     in extra_trusted_roots; re-issuing would carry it forward. Add it to \
                     extra_trusted_roots if it belongs, pass --keep-unknown-roots to carry it \
                     forward knowingly, remove it from every bundle with restarts and a gate \
                     (`cacertd transition remove-root FINGERPRINT`), or pass \
                     --danger-replace-trust-bundle to write the current root alone (workloads \
                     relying on the other roots lose mTLS)",
                    a.unknown_roots.join(", ")
                ),
            }
        }
        other => other,
    }
}

fn decide_state(a: &Assessment, opts: PlanOptions) -> Decision {
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
        ClusterState::Valid | ClusterState::UnknownRoots if opts.force => {
            issue(IssueReason::Forced)
        }
        ClusterState::Valid | ClusterState::UnknownRoots => Decision::Keep,
        ClusterState::RenewalDue => issue(IssueReason::RenewalDue),
        ClusterState::PreviousSigner => issue(IssueReason::SignerReplaced),
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
mod tests;
