//! `plan --check`: a dry run of the trust graph. From what every primary serves now and the
//! proxies no rollout restarts, the steps of a transition are played out on paper: after each
//! one, which groups of proxies still complete mTLS with each other, and which pair that works
//! today would not. [`read`] reads the clusters (changing nothing); [`check`] is pure.
//!
//! The model (README, "Trust transitions"): a proxy trusts the bundle it last received and
//! presents a certificate from the signer istiod had when it last renewed. istiod takes a new
//! `cacerts` when it restarts; a restarted workload receives istiod's bundle and a fresh
//! certificate; a proxy that takes pushed bundles (with multi-root istiod) receives each new
//! bundle at istiod's restart; any other proxy keeps its bundle until it is re-created — or,
//! where the plan waits for it (`--wait-for-renewal`), until its next renewal. Certificates of
//! an old signer live on until the drain period ends.

use std::collections::BTreeSet;

use serde::Serialize;
use time::OffsetDateTime;

use super::{MaterialOf, Phase, PlannedStep, Record, Scope, Stage, Step, TransitionKind};

/// One primary as it is now, and the proxies of its mesh (itself and the remotes its istiod
/// serves) that no rollout restarts.
#[derive(Clone, Debug)]
pub struct Primary {
    pub name: String,
    /// The roots its `root-cert.pem` (or istiod's self-signed CA) trusts, by fingerprint.
    pub bundle: BTreeSet<String>,
    /// The root its signing certificate chains to.
    pub signer: String,
    /// Its istiod pushes new bundles to proxies that take them (ISTIO_MULTIROOT_MESH).
    pub multiroot: bool,
    /// A folder someone else applies: its restarts happen with the application.
    pub directory: bool,
    pub pinned: Vec<Pinned>,
}

/// A proxy no rollout of cacertd's restarts: a bare pod, a Job's pod, a pod of another
/// controller, or one in an excluded namespace.
#[derive(Clone, Debug)]
pub struct Pinned {
    /// `cluster/namespace/pod`, and why it is pinned.
    pub name: String,
    /// It takes the bundles istiod pushes (PROXY_CONFIG_XDS_AGENT=true).
    pub pushed: bool,
}

/// The roots a transition moves to or away from.
#[derive(Clone, Debug)]
pub struct Roots {
    /// The root every moving primary signs under at the end (migrate: the common root;
    /// rotate-root: the new one).
    pub new: String,
    /// The root a removal takes out of every bundle.
    pub removed: Option<String>,
}

/// The root of `files`' bundle that its signing certificate (through `cert-chain.pem`) chains
/// to, if any.
pub(super) fn signing_root(files: &crate::pki::CaCertsFiles) -> Option<crate::pki::Cert> {
    use crate::pki::{CaCertsFiles, Cert, TrustBundle, issuing_root};
    let (trust, _) = TrustBundle::from_pem_lenient(&files.root_cert);
    let signing = Cert::lenient_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT)
        .0
        .into_iter()
        .next()?;
    let (chain, _) = Cert::lenient_from_pem(&files.cert_chain, CaCertsFiles::CERT_CHAIN);
    issuing_root(&signing, &chain, trust.roots())
}

/// Reads every primary of the topology as [`check`] needs it: its bundle and signer (roots
/// named by `name`), whether its istiod pushes bundles, and — for Kubernetes primaries and
/// their Kubernetes remotes — the proxies no rollout of cacertd's restarts (pods with no
/// owner or an owner other than a ReplicaSet, DaemonSet or StatefulSet, and every proxy of an
/// excluded namespace). Changes nothing.
pub async fn read(
    config: &crate::config::Config,
    exclude_namespaces: &[String],
    name: &dyn Fn(&crate::pki::Cert) -> String,
) -> Result<Vec<Primary>, super::error::DriveError> {
    use crate::cluster::Target;
    use crate::pki::TrustBundle;
    const RESTARTED: [&str; 3] = ["ReplicaSet", "DaemonSet", "StatefulSet"];
    let mut out = Vec::new();
    for cluster in config.topology.primaries() {
        let err = super::error::target_err(&cluster.name);
        let target = Target::open(cluster, config).await.map_err(err)?;
        let snapshot = target
            .read()
            .await
            .map_err(super::error::target_err(&cluster.name))?
            .snapshot;
        let Some(files) = snapshot.cacerts.or_else(|| {
            snapshot
                .self_signed_ca
                .as_ref()
                .map(super::from_self_signed)
        }) else {
            return Err(super::error::DriveError::CurrentMaterial {
                cluster: cluster.name.clone(),
                reason: "neither cacerts nor istiod's istio-ca-secret found".into(),
            });
        };
        let (trust, _) = TrustBundle::from_pem_lenient(&files.root_cert);
        let signer =
            signing_root(&files).map_or_else(|| "an unknown root".to_string(), |r| name(&r));
        let mut primary = Primary {
            name: cluster.name.clone(),
            bundle: trust.roots().iter().map(name).collect(),
            signer,
            multiroot: false,
            directory: matches!(target, Target::Dir(_)),
            pinned: Vec::new(),
        };
        if let Target::Kube(kube) = &target {
            primary.multiroot = matches!(kube.istiod_multiroot().await, Ok(Some(true)));
            let mut remotes = Vec::new();
            for remote in config.topology.remotes_of(&cluster.name) {
                if let Ok(Target::Kube(k)) = Target::open(remote, config).await {
                    remotes.push((remote.name.clone(), k));
                }
            }
            let served =
                std::iter::once((&cluster.name, kube)).chain(remotes.iter().map(|(n, k)| (n, k)));
            for (name, k) in served {
                let proxies = k.proxies().await.map_err(super::error::target_err(name))?;
                for p in proxies {
                    let restarted =
                        p.ztunnel || p.owner.as_deref().is_some_and(|o| RESTARTED.contains(&o));
                    if restarted && !exclude_namespaces.contains(&p.namespace) {
                        continue;
                    }
                    primary.pinned.push(Pinned {
                        name: format!("{name}/{}", p.describe()),
                        pushed: p.takes_pushed_bundles,
                    });
                }
            }
        }
        out.push(primary);
    }
    Ok(out)
}

/// One step of the plan, and the pairs it would break.
#[derive(Clone, Debug, Serialize)]
pub struct CheckedStep {
    #[serde(flatten)]
    pub step: PlannedStep,
    /// Pairs (`a ↔ b: why`) that complete mTLS before the transition and would not after this
    /// step.
    pub breaks: Vec<String>,
    /// What the step depends on (a gate that waits for pods to be re-created, say).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
    /// Every pair of proxy groups (`a ↔ b`) that completes mTLS after this step.
    pub trusting: Vec<String>,
}

/// What proxies of one kind trust and present.
#[derive(Clone, Debug, PartialEq)]
struct Live {
    trust: BTreeSet<String>,
    certs: BTreeSet<String>,
}

struct State<'a> {
    primary: &'a Primary,
    moving: bool,
    /// What `cacerts` holds: (bundle, signer).
    served: (BTreeSet<String>, String),
    /// What istiod runs with since its last restart.
    istiod: (BTreeSet<String>, String),
    workloads: Live,
    pinned: Vec<Live>,
}

/// The trust graph before a transition and after each of its steps.
#[derive(Clone, Debug, Serialize)]
pub struct Checked {
    /// Every pair of proxy groups (`a ↔ b`) that completes mTLS now.
    pub before: Vec<String>,
    pub steps: Vec<CheckedStep>,
    /// What each cluster's `cacerts` says now and after each phase ahead.
    pub trust: Vec<TrustRow>,
}

/// One cluster (a primary, or a remote with its primary's istiod) in the trust table: what its
/// `cacerts` (a remote's: its primary's) trusts and signs under, now and after each phase.
#[derive(Clone, Debug, Serialize)]
pub struct TrustRow {
    pub cluster: String,
    /// For a remote, the primary whose istiod serves it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub served_by: Option<String>,
    pub columns: Vec<TrustCell>,
}

/// One column of the trust table.
#[derive(Clone, Debug, Serialize)]
pub struct TrustCell {
    /// `now`, or `after <phase>`.
    pub when: String,
    /// The roots the bundle holds.
    pub trusts: Vec<String>,
    /// The root the signing certificate chains to.
    pub signs_under: String,
}

/// The phases whose material `steps` write, in order.
fn phases_written(steps: &[(Step, Option<PlannedStep>)]) -> Vec<Phase> {
    let mut phases = Vec::new();
    for (step, _) in steps {
        if let Step::Write {
            material: MaterialOf::Phase(phase),
            ..
        } = step
            && !phases.contains(phase)
        {
            phases.push(*phase);
        }
    }
    phases
}

/// The trust table of a plan that reads no cluster: every primary moves from what it trusts
/// and signs under now ("its current root") to the root the transition brings.
pub fn planned_trust(
    kind: TransitionKind,
    scopes: &[Scope],
    options: super::Options,
) -> Vec<TrustRow> {
    let current = "its current root".to_string();
    let roots = Roots {
        new: match kind {
            TransitionKind::Migrate => "the common root".into(),
            _ => "the new root".into(),
        },
        removed: None,
    };
    let primaries: Vec<Primary> = scopes
        .iter()
        .map(|s| Primary {
            name: s.primary.clone(),
            bundle: [current.clone()].into(),
            signer: current.clone(),
            multiroot: false,
            directory: false,
            pinned: Vec::new(),
        })
        .collect();
    let record = Record::new(kind, scopes.iter().map(|s| s.primary.clone()), options);
    let phases = phases_written(&super::steps_ahead(
        &record,
        scopes,
        OffsetDateTime::UNIX_EPOCH,
    ));
    trust_table(&record, scopes, &primaries, &roots, &phases, "now")
}

/// The trust table of a transition under way, for `status`: each of its primaries (from
/// what it trusted and signed under before the transition, in `primaries`) before it and after
/// each phase still ahead of `record`.
pub fn trust_ahead(
    record: &Record,
    scopes: &[Scope],
    primaries: &[Primary],
    roots: &Roots,
    now: OffsetDateTime,
) -> Vec<TrustRow> {
    let scopes: Vec<Scope> = scopes
        .iter()
        .filter(|s| record.clusters.contains_key(&s.primary))
        .cloned()
        .collect();
    let phases = phases_written(&super::steps_ahead(record, &scopes, now));
    trust_table(record, &scopes, primaries, roots, &phases, "before")
}

/// The trust table: each primary of `scopes` and its remotes, now and after each of `phases`
/// (what a moving primary serves then; one not moving keeps what it serves).
fn trust_table(
    record: &Record,
    scopes: &[Scope],
    primaries: &[Primary],
    roots: &Roots,
    phases: &[Phase],
    first: &str,
) -> Vec<TrustRow> {
    let mut rows = Vec::new();
    for scope in scopes {
        let Some(p) = primaries.iter().find(|p| p.name == scope.primary) else {
            continue;
        };
        let moving = record.clusters.contains_key(&p.name);
        let cell = |when: String, of: MaterialOf| {
            let (trusts, signs_under) = match moving {
                true => material(record.kind, p, roots, of),
                false => (p.bundle.clone(), p.signer.clone()),
            };
            TrustCell {
                when,
                trusts: trusts.into_iter().collect(),
                signs_under,
            }
        };
        let columns: Vec<TrustCell> = std::iter::once(cell(first.into(), MaterialOf::Original))
            .chain(
                phases
                    .iter()
                    .map(|&ph| cell(format!("after {ph}"), MaterialOf::Phase(ph))),
            )
            .collect();
        rows.push(TrustRow {
            cluster: p.name.clone(),
            served_by: None,
            columns: columns.clone(),
        });
        rows.extend(scope.remotes.iter().map(|r| TrustRow {
            cluster: r.clone(),
            served_by: Some(p.name.clone()),
            columns: columns.clone(),
        }));
    }
    rows
}

impl Checked {
    /// How many steps would break a pair that works now.
    pub fn flagged(&self) -> usize {
        self.steps.iter().filter(|s| !s.breaks.is_empty()).count()
    }
}

/// Plays `record`'s steps from the start over `primaries` (every primary of the topology; those
/// the record does not move keep what they serve). `scopes` and `now` as for
/// [`super::steps_ahead`].
pub fn check(
    record: &Record,
    scopes: &[Scope],
    primaries: &[Primary],
    roots: &Roots,
    now: OffsetDateTime,
) -> Checked {
    let mut states: Vec<State<'_>> = primaries
        .iter()
        .map(|p| {
            let live = Live {
                trust: p.bundle.clone(),
                certs: [p.signer.clone()].into(),
            };
            State {
                primary: p,
                moving: record.clusters.contains_key(&p.name),
                served: (p.bundle.clone(), p.signer.clone()),
                istiod: (p.bundle.clone(), p.signer.clone()),
                workloads: live.clone(),
                pinned: p.pinned.iter().map(|_| live.clone()).collect(),
            }
        })
        .collect();
    let before = working_pairs(&states);
    let shown = |pairs: &BTreeSet<(String, String)>| {
        pairs
            .iter()
            .map(|(a, b)| format!("{a} ↔ {b}"))
            .collect::<Vec<_>>()
    };
    let mut out = Vec::new();
    let ahead = super::steps_ahead(record, scopes, now);
    let phases = phases_written(&ahead);
    for (step, line) in ahead {
        let mut notes = Vec::new();
        play(&step, record, roots, &mut states, &mut notes);
        let Some(line) = line else {
            continue;
        };
        let now_working = working_pairs(&states);
        let breaks = before
            .iter()
            .filter(|pair| !now_working.contains(*pair))
            .map(|(a, b)| why_broken(&states, a, b))
            .collect();
        out.push(CheckedStep {
            step: line,
            breaks,
            notes,
            trusting: shown(&now_working),
        });
    }
    Checked {
        before: shown(&before),
        steps: out,
        trust: trust_table(record, scopes, primaries, roots, &phases, "now"),
    }
}

/// The `cacerts` (bundle, signer) a moving primary serves for `of`.
fn material(
    kind: TransitionKind,
    p: &Primary,
    roots: &Roots,
    of: MaterialOf,
) -> (BTreeSet<String>, String) {
    let with_new = || {
        let mut b = p.bundle.clone();
        b.insert(roots.new.clone());
        b
    };
    match (kind, of) {
        (_, MaterialOf::Original) => (p.bundle.clone(), p.signer.clone()),
        (TransitionKind::RemoveRoot, _) => {
            let mut b = p.bundle.clone();
            if let Some(r) = &roots.removed {
                b.remove(r);
            }
            (b, p.signer.clone())
        }
        (_, MaterialOf::Phase(Phase::AddNewRoot)) => (with_new(), p.signer.clone()),
        (_, MaterialOf::Phase(Phase::SwitchSigner)) => (with_new(), roots.new.clone()),
        (_, MaterialOf::Phase(Phase::RemoveOldRoot | Phase::Done)) => {
            ([roots.new.clone()].into(), roots.new.clone())
        }
    }
}

fn play(
    step: &Step,
    record: &Record,
    roots: &Roots,
    states: &mut [State<'_>],
    notes: &mut Vec<String>,
) {
    let skip = record.options.skip_workload_restarts;
    match step {
        Step::Write {
            cluster,
            material: of,
        } => {
            if let Some(s) = states.iter_mut().find(|s| &s.primary.name == cluster) {
                s.served = material(record.kind, s.primary, roots, *of);
            }
        }
        Step::Restart { cluster, stage } => {
            if let Some(s) = states.iter_mut().find(|s| &s.primary.name == cluster) {
                match stage {
                    Stage::Istiod => istiod_restarts(s),
                    Stage::Gateways => {}
                    Stage::Workloads => workloads_restart(s),
                }
            }
        }
        // Whoever applies a folder restarts istiod, the gateways and (unless restarts are
        // skipped) the workloads there.
        Step::AwaitApplied { .. } | Step::CheckGate { .. } => {
            for s in states
                .iter_mut()
                .filter(|s| s.moving && s.primary.directory)
            {
                if s.istiod != s.served {
                    istiod_restarts(s);
                    if !skip {
                        workloads_restart(s);
                    }
                }
            }
            if let Step::CheckGate { material: of } = step {
                gate(record, *of, states, skip, notes);
            }
        }
        // Certificates of the old signers have expired by the drain's end.
        Step::Drain { .. } => {
            for s in states.iter_mut() {
                let signer: BTreeSet<String> = [s.istiod.1.clone()].into();
                s.workloads.certs = signer.clone();
                for p in &mut s.pinned {
                    p.certs = signer.clone();
                }
            }
        }
        Step::AwaitApproval { .. } | Step::Held { .. } | Step::Stopped { .. } | Step::Finished => {}
    }
}

/// istiod takes the served `cacerts`: renewals from now on come from its signer, and proxies
/// that take pushed bundles receive its bundle.
fn istiod_restarts(s: &mut State<'_>) {
    s.istiod = s.served.clone();
    let (bundle, signer) = s.istiod.clone();
    s.workloads.certs.insert(signer.clone());
    for (p, live) in s.primary.pinned.iter().zip(&mut s.pinned) {
        live.certs.insert(signer.clone());
        if p.pushed && s.primary.multiroot {
            live.trust = bundle.clone();
        }
    }
}

fn workloads_restart(s: &mut State<'_>) {
    s.workloads = Live {
        trust: s.istiod.0.clone(),
        certs: [s.istiod.1.clone()].into(),
    };
}

/// A gate holds once every proxy it waits for has what istiod serves: without restarts the
/// workloads have it (pushed, or renewed: `start` refuses otherwise); with `--wait-for-renewal`
/// so do pinned proxies. At `AddNewRoot`, pinned proxies that have it by neither way hold the
/// gate until re-created — the note says so; played out here as never re-created.
fn gate(
    record: &Record,
    of: MaterialOf,
    states: &mut [State<'_>],
    skip: bool,
    notes: &mut Vec<String>,
) {
    let renewal = record.options.renewal_wait_seconds.is_some() || record.options.wait_for_renewal;
    for s in states.iter_mut().filter(|s| s.moving) {
        if skip {
            s.workloads.trust = s.istiod.0.clone();
        }
        for (p, live) in s.primary.pinned.iter().zip(&mut s.pinned) {
            let pushed = p.pushed && s.primary.multiroot;
            if renewal && !pushed {
                live.trust = s.istiod.0.clone();
                live.certs.insert(s.istiod.1.clone());
            } else if !pushed
                && live.trust != s.istiod.0
                && of == MaterialOf::Phase(Phase::AddNewRoot)
            {
                notes.push(format!(
                    "holds only once {} is re-created (or its namespace excluded): it keeps \
                     the bundle it started with",
                    p.name
                ));
            }
        }
    }
}

/// A group of proxies: a primary's restartable workloads (with its remotes'), or one pinned
/// proxy. Named for output.
fn groups<'a>(states: &'a [State<'a>]) -> Vec<(String, &'a Live)> {
    let mut out = Vec::new();
    for s in states {
        out.push((format!("{} workloads", s.primary.name), &s.workloads));
        for (p, live) in s.primary.pinned.iter().zip(&s.pinned) {
            out.push((p.name.clone(), live));
        }
    }
    out
}

/// Pairs of groups (including a group with itself) whose proxies complete mTLS both ways:
/// each trusts every root the other's certificates chain to.
fn working_pairs(states: &[State<'_>]) -> BTreeSet<(String, String)> {
    let groups = groups(states);
    let mut out = BTreeSet::new();
    for (i, (a, la)) in groups.iter().enumerate() {
        for (b, lb) in &groups[i..] {
            if la.certs.is_subset(&lb.trust) && lb.certs.is_subset(&la.trust) {
                out.insert((a.clone(), b.clone()));
            }
        }
    }
    out
}

fn why_broken(states: &[State<'_>], a: &str, b: &str) -> String {
    let groups = groups(states);
    let find = |n: &str| groups.iter().find(|(g, _)| g == n).map(|(_, l)| *l);
    let (Some(la), Some(lb)) = (find(a), find(b)) else {
        return format!("{a} ↔ {b}");
    };
    let untrusted = |from: &Live, to: &Live| -> Vec<String> {
        from.certs.difference(&to.trust).cloned().collect()
    };
    let (ab, ba) = (untrusted(la, lb), untrusted(lb, la));
    if a == b {
        return format!(
            "{a}, among themselves: their certificates chain to {}, which they no longer trust",
            ab.join(", ")
        );
    }
    let mut why = Vec::new();
    if !ab.is_empty() {
        why.push(format!(
            "{b} does not trust {}, which certificates of {a} chain to",
            ab.join(", ")
        ));
    }
    if !ba.is_empty() {
        why.push(format!(
            "{a} does not trust {}, which certificates of {b} chain to",
            ba.join(", ")
        ));
    }
    format!("{a} ↔ {b}: {}", why.join("; "))
}

#[cfg(test)]
mod tests;
