//! Carrying out a plan: for each primary, read its `cacerts`, decide, and when needed issue a
//! new intermediate under its policy, check the result the way istiod will, and write it with
//! a backup of what it replaces.

use serde::Serialize;
use time::OffsetDateTime;

use futures::StreamExt;

use crate::audit::Audit;
use crate::cluster::{
    CacertsWriter, Material, Observed, Target, TargetError, WriteError, WriteMeta,
};
use crate::config::Config;
use crate::pki::{CaCertsFiles, TrustBundle};
use crate::plan::{Decision, PlanOptions, TrustChoice, assess, decide};
use crate::root_store::Signer;
use crate::topology::Cluster;

/// What happened to one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Issued,
    WouldIssue,
    /// Left as it is (`unchanged`, as the table says).
    #[serde(rename = "unchanged")]
    Kept,
    /// Refused because it would be unsafe (would break trust).
    Refused,
    /// Refused by the issuance policy.
    PolicyRefused,
    Failed,
}

#[derive(Clone, Debug, Serialize)]
pub struct ClusterReport {
    pub cluster: String,
    pub outcome: Outcome,
    pub reason: Option<String>,
    pub serial: Option<String>,
    #[serde(with = "crate::clock::rfc3339_seconds::option")]
    pub not_before: Option<OffsetDateTime>,
    #[serde(with = "crate::clock::rfc3339_seconds::option")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "crate::clock::rfc3339_seconds::option")]
    pub renew_at: Option<OffsetDateTime>,
    /// When the first revocation list the cluster serves expires (`None`: it serves none).
    #[serde(
        with = "crate::clock::rfc3339_seconds::option",
        skip_serializing_if = "Option::is_none"
    )]
    pub revocation_lists_expire: Option<OffsetDateTime>,
    pub backup: Option<String>,
    /// Refused because its cacerts carries revocation lists: its renewal must publish the
    /// successor's list first, as a transition (`cacertd renew`), which `serve` starts.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub renew_by_transition: bool,
    /// Old backups `[backups]` removed after the write.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub backups_removed: Vec<String>,
    /// Why backups due for removal were kept (the write itself succeeded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub backups_kept_because: Option<String>,
    /// SHA-256 fingerprints of roots its bundle trusts that are neither the current root nor
    /// known ([`crate::plan::Expected::known_roots`]).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_roots: Vec<String>,
    /// SHA-256 fingerprints of every root its bundle held when it was read.
    #[serde(skip)]
    pub trust_bundle: Vec<String>,
    /// When each of those roots expires.
    #[serde(skip)]
    pub trust_bundle_expiries: Vec<OffsetDateTime>,
    /// When the cluster was left as it is: what was read of it, judged, with its istiod
    /// images — still what it serves, for the daemon's `/status`.
    #[serde(skip)]
    pub seen: Option<Seen>,
}

/// What a run read of a cluster it left unchanged.
#[derive(Clone, Debug)]
pub struct Seen {
    pub assessment: crate::plan::Assessment,
    pub istiod_images: Vec<String>,
}

impl ClusterReport {
    fn new(cluster: &str, outcome: Outcome) -> Self {
        ClusterReport {
            cluster: cluster.to_string(),
            outcome,
            reason: None,
            serial: None,
            not_before: None,
            not_after: None,
            renew_at: None,
            revocation_lists_expire: None,
            backup: None,
            renew_by_transition: false,
            backups_removed: Vec::new(),
            backups_kept_because: None,
            seen: None,
            unknown_roots: Vec::new(),
            trust_bundle: Vec::new(),
            trust_bundle_expiries: Vec::new(),
        }
    }

    /// Refused: `cluster`'s cacerts carries revocation lists, so its renewal (`why`) takes a
    /// transition that publishes the successor's list first (docs/istio.md §14).
    fn renew_by_transition(cluster: &str, why: &str) -> Self {
        let mut report = ClusterReport::new(cluster, Outcome::Refused).with_reason(format!(
            "{why}; its cacerts carries revocation lists ({}), and a proxy that checks them \
             rejects a chain through a CA without one, so its successor's list must reach every \
             primary before the successor signs: renew it with `cacertd renew {cluster}` (serve \
             starts that by itself)",
            CaCertsFiles::CA_CRL
        ));
        report.renew_by_transition = true;
        report
    }

    fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }

    /// The intermediate the cluster serves, as assessed, and when it is to be renewed.
    fn with_served(mut self, assessment: &crate::plan::Assessment) -> Self {
        if let Some(info) = &assessment.intermediate {
            self.serial = Some(info.serial.clone());
            self.not_before = Some(info.not_before);
            self.not_after = Some(info.not_after);
        }
        self.renew_at = assessment.renew_at;
        self.revocation_lists_expire = assessment.revocation_lists_expire;
        self
    }
}

/// Runs the issuance for `clusters` (primaries), several at a time ([`in_flight`]),
/// and records what it decided in `audit`. `root` signs; with `dry_run` nothing is signed,
/// written or audited. Each cluster is independent: one
/// failing or hanging does not stop the others. Reports come back in the order given.
/// Logs what a run did to one cluster: an issuance at info, a failure or refusal at warn,
/// nothing when it was left alone. For the daemon, whose log is its report; the CLI reports in
/// its table (or document) instead, so that each failure is said once.
pub fn log_report(report: &ClusterReport) {
    match report.outcome {
        Outcome::Issued => tracing::info!(
            cluster = %report.cluster,
            serial = report.serial.as_deref().unwrap_or(""),
            reason = report.reason.as_deref().unwrap_or(""),
            "issued intermediate"
        ),
        Outcome::Failed | Outcome::Refused | Outcome::PolicyRefused => tracing::warn!(
            cluster = %report.cluster,
            outcome = ?report.outcome,
            reason = report.reason.as_deref().unwrap_or(""),
            "cluster not updated"
        ),
        Outcome::Kept | Outcome::WouldIssue => {}
    }
}

pub async fn run(
    config: &Config,
    root: &Signer,
    audit: &Audit,
    clusters: &[&Cluster],
    opts: PlanOptions,
    dry_run: bool,
    now: OffsetDateTime,
) -> Vec<ClusterReport> {
    // Hundreds of clusters note hundreds of events: durable together at the end of the run.
    let audit = &audit.syncing_later();
    let writer = CacertsWriter::new(&config.trust_domain, audit, "cacerts-write");
    let (known_roots, retention) = known_roots_and_retention(config).await;
    let pass = Pass {
        config,
        root,
        writer: &writer,
        opts,
        dry_run,
        now,
        cores: tokio::sync::Semaphore::new(
            2 * std::thread::available_parallelism().map_or(1, std::num::NonZero::get),
        ),
        known_roots: std::sync::Arc::new(known_roots),
        retention,
    };
    let pass = &pass;
    let mut reports: Vec<(usize, ClusterReport)> =
        futures::stream::iter(clusters.iter().enumerate())
            .map(|(i, cluster)| async move {
                let report = pass.one(cluster).await;
                (i, report)
            })
            .buffer_unordered(in_flight(config, clusters))
            .collect()
            .await;
    reports.sort_by_key(|(i, _)| *i);
    let reports: Vec<ClusterReport> = reports.into_iter().map(|(_, report)| report).collect();
    if !dry_run {
        audit_reports(audit, &reports, now);
        audit.sync();
    }
    reports
}

/// The roots a bundle may hold besides the current one: the configured extra anchors, and
/// those of the material a transition under way moves between.
pub fn known_roots(
    config: &Config,
    in_flight: &crate::transition::InFlight,
) -> Vec<crate::pki::Cert> {
    let mut known = config.extra_roots.clone();
    for root in &in_flight.roots {
        if !known.contains(root) {
            known.push(root.clone());
        }
    }
    known
}

/// [`known_roots`], and the backup rule writes follow: none while a transition may be under
/// way (every copy of what it moves between is kept).
async fn known_roots_and_retention(
    config: &Config,
) -> (Vec<crate::pki::Cert>, Option<crate::config::Retention>) {
    let in_flight = crate::transition::in_flight(config).await;
    (
        known_roots(config, &in_flight),
        in_flight.quiet.then_some(config.backups),
    )
}

/// How many clusters one run works on at once: `kubernetes.concurrency` where any target is a
/// Kubernetes cluster; many more when every one is a directory, whose writes are made durable
/// in batches — the more wait at once, the fewer commits ([`crate::cluster::DirTarget`]).
fn in_flight(config: &Config, clusters: &[&Cluster]) -> usize {
    const DIRECTORIES_AT_ONCE: usize = 256;
    let all_dirs = clusters
        .iter()
        .all(|c| matches!(c.target, Some(crate::topology::TargetConfig::Dir { .. })));
    match all_dirs {
        true => DIRECTORIES_AT_ONCE,
        false => config.kubernetes.concurrency.max(1),
    }
}

/// Records in the audit log what an issuance run decided: issued, refused and failed clusters
/// (unchanged ones are not events; the writes themselves are noted by the writer).
fn audit_reports(audit: &Audit, reports: &[ClusterReport], at: OffsetDateTime) {
    for r in reports {
        let outcome = match r.outcome {
            Outcome::Issued => "issued",
            Outcome::Refused => "refused",
            Outcome::PolicyRefused => "policy-refused",
            Outcome::Failed => "failed",
            Outcome::Kept | Outcome::WouldIssue => continue,
        };
        audit.note(
            at,
            "issue",
            Some(&r.cluster),
            outcome,
            r.serial.clone(),
            r.reason.clone(),
        );
    }
}

/// How often a write that lost a race (409) is re-read and re-planned before giving up.
const CONFLICT_ATTEMPTS: usize = 3;

/// One issuance run's shared inputs.
struct Pass<'a> {
    config: &'a Config,
    root: &'a Signer,
    writer: &'a CacertsWriter<'a>,
    opts: PlanOptions,
    dry_run: bool,
    now: OffsetDateTime,
    /// Two assessments per core at a time ([`Pass::read_and_assess`]).
    cores: tokio::sync::Semaphore,
    /// Roots a bundle may hold besides the current one ([`crate::plan::Expected::known_roots`]).
    known_roots: std::sync::Arc<Vec<crate::pki::Cert>>,
    /// `[backups]`, unless a transition may be under way.
    retention: Option<crate::config::Retention>,
}

impl Pass<'_> {
    /// One cluster: read, decide, and issue and write if it needs it; a write that lost a
    /// race is re-read and decided again.
    async fn one(&self, cluster: &Cluster) -> ClusterReport {
        let name = cluster.name.as_str();
        let failed = |msg: String| ClusterReport::new(name, Outcome::Failed).with_reason(msg);
        let target = match Target::open(cluster, self.config).await {
            Ok(t) => t,
            Err(e) => return failed(e.to_string()),
        };
        let mut attempt = 0;
        // The serial of a write whose answer was lost: if it turns out to have landed, the next
        // read finds it, and it is reported as issued rather than "kept".
        let mut attempted: Option<String> = None;
        loop {
            attempt += 1;
            match self.attempt_once(cluster, &target, &mut attempted).await {
                Err(WriteError::Target(TargetError::Conflict { detail, .. }))
                    if attempt < CONFLICT_ATTEMPTS =>
                {
                    tracing::info!(cluster = name, detail = %detail, "cacerts changed meanwhile; re-reading");
                }
                Err(WriteError::Invalid(problems)) => {
                    return failed(format!(
                        "internal check of the new cacerts failed: {problems}"
                    ));
                }
                Err(WriteError::Target(e)) => return failed(e.to_string()),
                Ok(report) => return report,
            }
        }
    }

    async fn attempt_once(
        &self,
        cluster: &Cluster,
        target: &Target,
        attempted: &mut Option<String>,
    ) -> Result<ClusterReport, WriteError> {
        let (observed, assessment) = self.read_and_assess(cluster, target).await?;
        let report = self
            .act(cluster, target, &observed, &assessment, attempted)
            .await?;
        let seen = (report.outcome == Outcome::Kept).then(|| Seen {
            assessment: assessment.clone(),
            istiod_images: observed
                .snapshot
                .istiod_images
                .iter()
                .flatten()
                .cloned()
                .collect(),
        });
        // What was written, or else what was read.
        let (trust_bundle, trust_bundle_expiries) = match report.outcome {
            Outcome::Issued => (
                report.trust_bundle.clone(),
                report.trust_bundle_expiries.clone(),
            ),
            _ => (
                assessment.trust_bundle.clone(),
                assessment.trust_bundle_expiries.clone(),
            ),
        };
        Ok(ClusterReport {
            trust_bundle,
            trust_bundle_expiries,
            unknown_roots: assessment.unknown_roots,
            seen,
            ..report
        })
    }

    /// What to do about what `cluster` serves, done.
    async fn act(
        &self,
        cluster: &Cluster,
        target: &Target,
        observed: &Observed,
        assessment: &crate::plan::Assessment,
        attempted: &mut Option<String>,
    ) -> Result<ClusterReport, WriteError> {
        use crate::plan::ClusterState;
        let Pass {
            config,
            root,
            opts,
            dry_run,
            ..
        } = *self;
        let name = cluster.name.as_str();
        let policy = config.policy_for(cluster);
        // A write of ours whose answer was lost, found in place and valid: done, not to redo.
        let landed = matches!(
            assessment.state,
            ClusterState::Valid | ClusterState::UnknownRoots
        ) && assessment
            .intermediate
            .as_ref()
            .is_some_and(|i| attempted.as_deref() == Some(i.serial.as_str()));
        let (reason, trust) = match decide(assessment, opts) {
            _ if landed => {
                return Ok(ClusterReport::new(name, Outcome::Issued)
                    .with_reason(
                        "issued (confirmed by re-reading after the answer to the write was lost)",
                    )
                    .with_served(assessment));
            }
            Decision::Keep => {
                let reason = match assessment.state {
                    ClusterState::UnknownRoots => "valid, but it trusts roots nobody configured",
                    _ => "valid",
                };
                return Ok(ClusterReport::new(name, Outcome::Kept)
                    .with_reason(reason)
                    .with_served(assessment));
            }
            Decision::Refuse { reason } => {
                return Ok(ClusterReport::new(name, Outcome::Refused).with_reason(reason));
            }
            Decision::Issue { reason, trust } => (reason, trust),
        };
        let mut why = reason.describe().to_string();
        if let Some(first) = assessment.problems.first() {
            why = format!("{why}: {first}");
        }
        let spec = policy.intermediate_spec(name, &config.trust_domain);
        if let Err(v) = policy.check_issuance(name, &spec, root.root_cert()) {
            return Ok(ClusterReport::new(name, Outcome::PolicyRefused).with_reason(v.to_string()));
        }
        if let Target::Kube(kube) = target {
            let longest = self.longest_workload_cert(cluster, kube).await?;
            if let Err(v) = policy.check_workload_certs(name, longest.ttl, &longest.source) {
                return Ok(
                    ClusterReport::new(name, Outcome::PolicyRefused).with_reason(v.to_string())
                );
            }
        }
        // Revocation lists in place (docs/istio.md §14): one write cannot renew it.
        if observed
            .snapshot
            .cacerts
            .as_ref()
            .is_some_and(CaCertsFiles::has_lists)
        {
            return Ok(ClusterReport::renew_by_transition(name, &why).with_served(assessment));
        }
        if dry_run {
            return Ok(ClusterReport::new(name, Outcome::WouldIssue).with_reason(why));
        }
        self.issue_and_write(cluster, target, observed, why, trust, attempted)
            .await
    }

    /// The longest workload certificate `primary`'s istiod signs, for it or its remotes
    /// (docs/istio.md §13): read only when an intermediate is about to be issued, since it
    /// lists every pod of the primary and of each remote on Kubernetes. A cluster whose pods
    /// cannot be listed (a remote that is down, RBAC that allows no cluster-wide list) is
    /// warned about and left out: the policy's own `workload_cert_ttl` still holds, and an
    /// intermediate due for renewal is not held back by a remote's outage.
    async fn longest_workload_cert(
        &self,
        cluster: &Cluster,
        primary: &crate::cluster::KubeTarget,
    ) -> Result<crate::cluster::LongestWorkloadCert, TargetError> {
        let limits = primary.signing_limits().await?;
        let mut proxies = Vec::new();
        let served = std::iter::once(cluster).chain(self.config.topology.remotes_of(&cluster.name));
        for each in served {
            let listed = match each.name == cluster.name {
                true => primary.proxies().await,
                false => match Target::open(each, self.config).await {
                    Ok(Target::Kube(kube)) => kube.proxies().await,
                    Ok(Target::Dir(_)) => continue,
                    Err(e) => Err(e),
                },
            };
            match listed {
                Ok(list) => proxies.push((each.name.clone(), list)),
                Err(e) => tracing::warn!(
                    cluster = %cluster.name,
                    pods_of = %each.name,
                    error = %e,
                    "cannot list the pods, so the certificate lifetimes their proxies ask for \
                     are not checked against the policy"
                ),
            }
        }
        Ok(crate::cluster::longest_workload_cert(
            limits,
            proxies
                .iter()
                .flat_map(|(name, list)| list.iter().map(move |p| (name.as_str(), p))),
        ))
    }

    /// Reads what `cluster` serves and assesses it on the blocking pool, two clusters per core
    /// at a time (a directory is read there too): reading, certificate parsing and signature
    /// checks are most of a run with nothing to do, and the clusters of a run all wait on one
    /// task otherwise. Two, so a core has the next cluster while this task hands out the one
    /// after it: with one, cores wait on the handover about a third of the time.
    async fn read_and_assess(
        &self,
        cluster: &Cluster,
        target: &Target,
    ) -> Result<(Observed, crate::plan::Assessment), TargetError> {
        // A cluster is read over the network before a core is taken: only the work on a
        // core waits for one.
        let source = match target {
            Target::Dir(d) => Err(d.clone()),
            Target::Kube(_) => Ok(target.read().await?),
        };
        let _core = self.cores.acquire().await;
        let root = self.root.root_cert().clone();
        let signing_ca = self.root.signing_cert().clone();
        let policy = self.config.policy_for(cluster).clone();
        let name = cluster.name.clone();
        let trust_domain = self.config.trust_domain.clone();
        let known = self.known_roots.clone();
        let now = self.now;
        let check = move || {
            // Read already, or a directory to read here.
            let observed = match source {
                Ok(observed) => observed,
                Err(dir) => Observed {
                    snapshot: crate::plan::Snapshot::of(dir.read()?),
                    version: None,
                },
            };
            let expected = crate::plan::Expected {
                root: Some(&root),
                signing_ca: Some(&signing_ca),
                policy: &policy,
                cluster: &name,
                trust_domain: &trust_domain,
                known_roots: &known,
            };
            let assessment = assess(&observed.snapshot, &expected, now);
            Ok((observed, assessment))
        };
        match tokio::task::spawn_blocking(check).await {
            Ok(done) => done,
            Err(e) => std::panic::resume_unwind(e.into_panic()),
        }
    }

    /// Issues `cluster` a new intermediate and writes it with `trust` as its bundle.
    async fn issue_and_write(
        &self,
        cluster: &Cluster,
        target: &Target,
        observed: &crate::cluster::Observed,
        why: String,
        trust: TrustChoice,
        attempted: &mut Option<String>,
    ) -> Result<ClusterReport, WriteError> {
        let Pass {
            config,
            root,
            writer,
            now,
            ..
        } = *self;
        let name = cluster.name.as_str();
        let policy = config.policy_for(cluster);
        let spec = policy.intermediate_spec(name, &config.trust_domain);
        let failed = |msg: String| Ok(ClusterReport::new(name, Outcome::Failed).with_reason(msg));
        let intermediate = match root.issue(&spec, now).await {
            Ok(i) => i,
            Err(e) => return failed(e),
        };
        if let Err(v) = policy.check_issued(name, &intermediate.cert) {
            return Ok(ClusterReport::new(name, Outcome::PolicyRefused).with_reason(v.to_string()));
        }
        let trust = match trust {
            TrustChoice::Keep(t) => t,
            TrustChoice::RootOnly => TrustBundle::single(root.root_cert()),
        };
        let files = CaCertsFiles::for_intermediate(
            &intermediate,
            &root.between(),
            root.root_cert(),
            &trust,
        );
        // The writer validates exactly what is about to be written, chaining to this root.
        let info = intermediate.cert.info();
        let meta = WriteMeta {
            cluster: name.to_string(),
            serial: info.serial.clone(),
            written_at: now,
            reason: why.clone(),
            retention: self.retention,
        };
        *attempted = Some(info.serial.clone());
        let material = Material::Issued {
            root: Some(root.root_cert()),
        };
        let written = writer
            .write(target, &files, material, &meta, observed)
            .await?;
        let mut r = ClusterReport::new(name, Outcome::Issued).with_reason(why);
        r.serial = Some(info.serial.clone());
        r.not_before = Some(info.not_before);
        r.not_after = Some(info.not_after);
        r.renew_at = Some(policy.renew_at(info));
        r.backup = written.backup;
        r.backups_removed = written.pruned;
        r.backups_kept_because = written.prune_problem;
        r.trust_bundle = trust.fingerprints();
        r.trust_bundle_expiries = trust.expiries();
        Ok(r)
    }
}
