//! A phase's gate: who is still behind before the next step may run — each primary's served
//! `cacerts`, the bundles istiod published in the primary and its remotes (docs/istio.md §10),
//! and, before any cluster signs under a new root, every proxy that may not trust it yet
//! (docs/istio.md §13).

use std::collections::{BTreeMap, HashMap};

use time::OffsetDateTime;

use super::{ClusterMaterial, MaterialOf, Record, State, material};
use crate::cluster::{KubeTarget, Target};
use crate::pki::{TrustBundle, verify_cacerts};

/// Who is behind `of`'s gate: each primary must serve exactly the material (and it must
/// validate); on Kubernetes, every bundle object its istiod wrote in the primary and in the
/// remotes it serves must hold exactly its roots, and at `AddNewRoot` no proxy may still run
/// that started before istiod served the new root.
pub(super) async fn check_gate(
    targets: &BTreeMap<String, &Target>,
    remotes: &BTreeMap<String, Vec<(String, KubeTarget)>>,
    materials: &BTreeMap<String, ClusterMaterial>,
    record: &Record,
    of: MaterialOf,
    now: OffsetDateTime,
) -> Vec<String> {
    let mut behind = Vec::new();
    for (cluster, target) in targets {
        let Ok(want) = material(&materials[cluster], of) else {
            behind.push(format!("{cluster}: its saved material is unreadable"));
            continue;
        };
        let observed = match target.read().await {
            Ok(o) => o,
            Err(e) => {
                behind.push(format!("{cluster}: unreachable: {e}"));
                continue;
            }
        };
        if observed.snapshot.cacerts.as_ref() != Some(&want) {
            behind.push(format!(
                "{cluster}: cacerts is not the material of this step"
            ));
            continue;
        }
        if let Err(problems) = verify_cacerts(&want, now) {
            behind.push(format!(
                "{cluster}: cacerts does not validate: {}",
                problems[0]
            ));
            continue;
        }
        let expected = roots_of(&want.root_cert);
        let published = observed.snapshot.published_bundles.unwrap_or_default();
        bundles_behind(cluster, &published, &expected, &mut behind);
        let served_remotes = remotes.get(cluster).map(Vec::as_slice).unwrap_or_default();
        if !remote_bundles_behind(cluster, target, served_remotes, &expected, &mut behind).await {
            continue;
        }
        let Target::Kube(kube) = *target else {
            continue;
        };
        // The primary and the remotes its istiod serves: istiod publishes there, and their
        // proxies get its certificates.
        let served: Vec<(&str, &KubeTarget)> = std::iter::once((cluster.as_str(), kube))
            .chain(
                remotes
                    .get(cluster)
                    .into_iter()
                    .flatten()
                    .map(|(n, t)| (n.as_str(), t)),
            )
            .collect();
        // Lists the step serves must be where the proxies read them.
        if of != MaterialOf::Original && want.has_lists() {
            for (name, target) in &served {
                lists_behind(name, target, &want.ca_crl, &mut behind).await;
            }
        }
        if let (Some(why), Some(progress)) = (
            proxies_gated(record, cluster, of),
            record.clusters.get(cluster),
        ) {
            for (name, target) in &served {
                let since = Since { progress, now };
                let options = &record.options;
                proxies_behind(name, target, kube, since, why, options, &mut behind).await;
            }
        }
    }
    if behind.is_empty()
        && record.options.list_propagation_seconds.is_some()
        && of != MaterialOf::Original
        && let Some(wait) = lists_propagating(record, now)
    {
        behind.push(wait);
    }
    behind
}

/// Notes in `behind` each remote `cluster` serves whose bundle objects (those its istiod
/// writes) do not hold `expected`. `false` when `cluster`'s istiod could not be read, noted
/// too: nothing more is to be learnt of it now.
async fn remote_bundles_behind(
    cluster: &str,
    target: &Target,
    remotes: &[(String, KubeTarget)],
    expected: &[Vec<u8>],
    behind: &mut Vec<String>,
) -> bool {
    let Target::Kube(kube) = target else {
        return true;
    };
    if remotes.is_empty() {
        return true;
    }
    let objects = match kube.bundle_objects().await {
        Ok(o) => o,
        Err(e) => {
            behind.push(format!("{cluster}: unreachable: {e}"));
            return false;
        }
    };
    for (remote, target) in remotes {
        match target.published_bundles(&objects).await {
            Ok(published) => bundles_behind(remote, &published, expected, behind),
            Err(e) => behind.push(format!("{remote}: unreachable: {e}")),
        }
    }
    true
}

/// While lists just published may not have reached every pod's mounted file: the wait counts
/// from the gate's first check after the step's writes (istiod publishes within seconds).
fn lists_propagating(record: &Record, now: OffsetDateTime) -> Option<String> {
    // A renewal changes the lists only where the successor's list is published.
    if record.kind == super::TransitionKind::Renew
        && record.target_material() != MaterialOf::Phase(super::Phase::AddNewRoot)
    {
        return None;
    }
    let wait = record.options.list_propagation_seconds.unwrap_or(0);
    let since = record.gate_since.unwrap_or(now.unix_timestamp());
    let until = since.saturating_add(i64::try_from(wait).unwrap_or(i64::MAX));
    (now.unix_timestamp() < until).then(|| {
        let at = OffsetDateTime::from_unix_timestamp(until)
            .map(crate::pki::fmt_time)
            .unwrap_or_else(|_| until.to_string());
        format!(
            "every cluster: kubelet may still be updating the mounted revocation lists in the \
             pods, until {at}"
        )
    })
}

/// Adds each `istio-ca-crl` ConfigMap of `name` that does not hold exactly the lists of
/// `want` (compared as sets), or a note that istiod published none.
async fn lists_behind(name: &str, target: &KubeTarget, want: &[u8], behind: &mut Vec<String>) {
    let set = |pem: &[u8]| -> Option<Vec<Vec<u8>>> {
        let mut ders: Vec<Vec<u8>> = crate::pki::Crl::all_from_pem(pem, "ca-crl.pem")
            .ok()?
            .iter()
            .map(|l| l.der().to_vec())
            .collect();
        ders.sort();
        ders.dedup();
        Some(ders)
    };
    let published = match target.published_lists().await {
        Ok(p) => p,
        Err(e) => {
            behind.push(format!("{name}: unreachable: {e}"));
            return;
        }
    };
    if published.is_empty() {
        behind.push(format!(
            "{name}: istiod has not published its revocation lists (ConfigMap istio-ca-crl) \
             yet; it does from Istio 1.27 on, with PILOT_ENABLE_CA_CRL (on by default)"
        ));
        return;
    }
    let want = set(want);
    for (at, pem) in published {
        if set(&pem) != want {
            behind.push(format!(
                "{name}/{at}: does not hold the revocation lists of this step yet"
            ));
        }
    }
}

/// What the proxies that started before istiod's restart may lack.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// The new root in their bundle.
    NewRoot,
    /// A certificate from the new intermediate: theirs may be from the revoked one.
    RevokedSigner,
    /// A certificate under the new root: theirs may be under the compromised one.
    OldSigner,
}

/// What the proxies that started before `cluster`'s istiod restart in this phase may lack,
/// when the gate of `of` waits for them to be replaced:
/// - before any cluster signs under a new root (`AddNewRoot`), that root in their bundle;
/// - before an emergency rotation drops the old root without a drain (`SwitchSigner`), a
///   certificate under the new one;
/// - before a revocation is published (`SwitchSigner` of the revoked cluster), a certificate
///   from the successor.
fn proxies_gated(record: &Record, cluster: &str, of: MaterialOf) -> Option<Why> {
    use super::Phase::{AddNewRoot, SwitchSigner};
    if record.state != State::Active || record.only_lists(cluster) {
        return None;
    }
    match (of, &record.revocation) {
        (MaterialOf::Phase(SwitchSigner), Some(r))
            if r.cluster == cluster && record.kind == super::TransitionKind::Revoke =>
        {
            Some(Why::RevokedSigner)
        }
        (_, Some(_)) => None,
        (MaterialOf::Phase(SwitchSigner), None) if record.options.emergency => Some(Why::OldSigner),
        (MaterialOf::Phase(AddNewRoot), None) => Some(Why::NewRoot),
        _ => None,
    }
}

/// How a proxy is kept in the record: its cluster and its pod's uid (a re-created pod has a
/// new one).
pub(super) fn proxy_key(cluster: &str, p: &crate::cluster::Proxy) -> String {
    format!("{cluster}/{}", p.uid)
}

/// At most this many proxies are named per cluster; the rest are counted.
const PROXIES_NAMED: usize = 10;

/// A primary's progress in the phase, and the gate's time.
#[derive(Clone, Copy)]
struct Since<'a> {
    progress: &'a super::ClusterProgress,
    now: OffsetDateTime,
}

/// Proxies of `name` (the primary, or a remote its istiod serves) that started before the
/// primary's istiod served this phase's bundle and were not replaced since — a bare pod,
/// a Job's pod, a pod of a controller cacertd does not restart — unless they take the
/// bundles istiod pushes (multi-root on istiod and `PROXY_CONFIG_XDS_AGENT` on the proxy),
/// their namespace is excluded, or, with `--wait-for-renewal`, every one of them has renewed
/// its certificate since the restart (docs/istio.md §13).
async fn proxies_behind(
    name: &str,
    target: &KubeTarget,
    istiod_cluster: &KubeTarget,
    Since { progress, now }: Since<'_>,
    why: Why,
    options: &super::Options,
    behind: &mut Vec<String>,
) {
    // Namespaces excluded from restarts count too where an old certificate would be cut off:
    // their owners must restart them.
    let none = Vec::new();
    let exclude = match why {
        Why::NewRoot => &options.exclude_namespaces,
        Why::RevokedSigner | Why::OldSigner => &none,
    };
    if progress.proxies_before_istiod.is_empty() {
        return;
    }
    let proxies = match target.proxies().await {
        Ok(p) => p,
        Err(e) => {
            behind.push(format!("{name}: its proxies cannot be listed: {e}"));
            return;
        }
    };
    let before = &progress.proxies_before_istiod;
    let old: Vec<_> = proxies
        .into_iter()
        .filter(|p| before.contains(&proxy_key(name, p)))
        .filter(|p| !exclude.contains(&p.namespace))
        .collect();
    // A pushed bundle brings a root, never a new certificate.
    let pushed = if why == Why::NewRoot && old.iter().any(|p| p.takes_pushed_bundles) {
        matches!(istiod_cluster.istiod_multiroot().await, Ok(Some(true)))
    } else {
        false
    };
    let stale: Vec<_> = old
        .iter()
        .filter(|p| !(pushed && p.takes_pushed_bundles))
        .collect();
    if stale.is_empty() {
        return;
    }
    if let (Some(wait), Some(at), Why::NewRoot) = (
        options.renewal_wait_seconds,
        progress.istiod_restarted_at,
        why,
    ) {
        behind.extend(renewal_not_over(name, &stale, wait, at, now));
        return;
    }
    name_stale(name, &stale, why, behind);
}

/// With `--wait-for-renewal`: `stale` proxies learn the new root at their next certificate
/// renewal, due `wait` seconds after istiod restarted at `at` — or later for a proxy started
/// since with a longer certificate lifetime (one whose renewal cannot be read never counts as
/// renewed). What still waits, if the renewals are not all due by `now`.
fn renewal_not_over(
    name: &str,
    stale: &[&crate::cluster::Proxy],
    wait: u64,
    at: i64,
    now: OffsetDateTime,
) -> Option<String> {
    let longest = stale
        .iter()
        .map(|p| p.renewal.as_ref().map_or(u64::MAX, |d| d.as_secs()))
        .fold(wait, u64::max);
    let renewed_by = at.saturating_add(i64::try_from(longest).unwrap_or(i64::MAX));
    if now.unix_timestamp() >= renewed_by {
        return None;
    }
    let by = OffsetDateTime::from_unix_timestamp(renewed_by)
        .map(crate::pki::fmt_time)
        .unwrap_or_else(|_| renewed_by.to_string());
    Some(format!(
        "{name}: {} proxies started before istiod served the new root and learn it at \
         their next certificate renewal, by {by} (--wait-for-renewal)",
        stale.len()
    ))
}

/// Names the proxies of `name` that started too early (the first [`PROXIES_NAMED`], then how
/// many more), each with what to do about it.
fn name_stale(name: &str, stale: &[&crate::cluster::Proxy], why: Why, behind: &mut Vec<String>) {
    let (started, risk) = match why {
        Why::NewRoot => ("served the new root", "may not trust it"),
        Why::RevokedSigner => (
            "signed with the new intermediate",
            "may still present a certificate from the revoked one, which the revocation will \
             cut off",
        ),
        Why::OldSigner => (
            "signed under the new root",
            "may still present a certificate under the compromised root, which leaves every \
             bundle next",
        ),
    };
    for p in stale.iter().take(PROXIES_NAMED) {
        behind.push(format!(
            "{name}/{}: its proxy started before istiod {started} and {risk}; delete the pod \
             so that it is re-created{}",
            p.describe(),
            match why {
                Why::NewRoot => " (or exclude its namespace)",
                Why::RevokedSigner | Why::OldSigner => "",
            }
        ));
    }
    if stale.len() > PROXIES_NAMED {
        behind.push(format!(
            "{name}: {} more proxies started before istiod {started}",
            stale.len() - PROXIES_NAMED
        ));
    }
}

/// The distinct roots of a bundle, as DER, sorted.
fn roots_of(bundle: &[u8]) -> Vec<Vec<u8>> {
    let mut roots: Vec<Vec<u8>> = TrustBundle::from_pem_lenient(bundle)
        .0
        .roots()
        .iter()
        .map(|r| r.der().to_vec())
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// Adds each bundle object of `cluster` that does not hold exactly `expected`.
fn bundles_behind(
    cluster: &str,
    published: &[(String, Vec<u8>)],
    expected: &[Vec<u8>],
    behind: &mut Vec<String>,
) {
    // Every namespace holds the same bundle once istiod caught up: each text is read once.
    let mut judged: HashMap<&[u8], Option<usize>> = HashMap::new();
    for (ns, bundle) in published {
        let wrong = *judged.entry(bundle.as_slice()).or_insert_with(|| {
            let got = roots_of(bundle);
            (got != expected).then_some(got.len())
        });
        if let Some(held) = wrong {
            behind.push(format!(
                "{cluster}/{ns}: holds {held} root(s), not the {} expected",
                expected.len()
            ));
        }
    }
}
