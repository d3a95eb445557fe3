//! Carrying out a plan: for each primary, read its `cacerts`, decide, and when needed issue a
//! new intermediate under its policy, check the result the way istiod will, and write it with
//! a backup of what it replaces.

use serde::Serialize;
use time::OffsetDateTime;

use crate::config::Config;
use crate::pki::{CaCertsFiles, RootCa, TrustBundle, issue_intermediate, verify_cacerts_for_mesh};
use crate::plan::{Decision, PlanOptions, TrustChoice, assess, decide};
use crate::target::{self, WriteMeta};
use crate::topology::Cluster;

/// What happened to one cluster.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Issued,
    WouldIssue,
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
    #[serde(with = "time::serde::rfc3339::option")]
    pub not_after: Option<OffsetDateTime>,
    #[serde(with = "time::serde::rfc3339::option")]
    pub renew_at: Option<OffsetDateTime>,
    pub backup: Option<String>,
}

impl ClusterReport {
    fn new(cluster: &str, outcome: Outcome) -> Self {
        ClusterReport {
            cluster: cluster.to_string(),
            outcome,
            reason: None,
            serial: None,
            not_after: None,
            renew_at: None,
            backup: None,
        }
    }

    fn with_reason(mut self, reason: impl Into<String>) -> Self {
        self.reason = Some(reason.into());
        self
    }
}

/// Runs the issuance for `clusters` (primaries). `root` signs; with `dry_run` nothing is
/// signed or written. Each cluster is independent: one failing does not stop the others.
pub fn run(
    config: &Config,
    root: &RootCa,
    clusters: &[&Cluster],
    opts: PlanOptions,
    dry_run: bool,
    now: OffsetDateTime,
) -> Vec<ClusterReport> {
    clusters
        .iter()
        .map(|cluster| {
            let report = one(config, root, cluster, opts, dry_run, now);
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
            report
        })
        .collect()
}

fn one(
    config: &Config,
    root: &RootCa,
    cluster: &Cluster,
    opts: PlanOptions,
    dry_run: bool,
    now: OffsetDateTime,
) -> ClusterReport {
    let name = cluster.name.as_str();
    let failed = |msg: String| ClusterReport::new(name, Outcome::Failed).with_reason(msg);
    let target = match target::open(cluster, &config.state_dir) {
        Ok(t) => t,
        Err(e) => return failed(e.to_string()),
    };
    let observed = match target.read() {
        Ok(o) => o,
        Err(e) => return failed(format!("reading {}: {e}", target.describe())),
    };
    let policy = config.policy_for(cluster);
    let assessment = assess(
        observed.as_ref(),
        &config.expected(cluster, Some(root.cert())),
        now,
    );
    let (reason, trust) = match decide(&assessment, opts) {
        Decision::Keep => {
            let mut r = ClusterReport::new(name, Outcome::Kept).with_reason("valid");
            if let Some(info) = &assessment.intermediate {
                r.serial = Some(info.serial.clone());
                r.not_after = Some(info.not_after);
            }
            r.renew_at = assessment.renew_at;
            return r;
        }
        Decision::Refuse { reason } => {
            return ClusterReport::new(name, Outcome::Refused).with_reason(reason);
        }
        Decision::Issue { reason, trust } => (reason, trust),
    };
    let mut why = reason.describe().to_string();
    if let Some(first) = assessment.problems.first() {
        why = format!("{why}: {first}");
    }
    let spec = policy.intermediate_spec(name, &config.trust_domain);
    if let Err(v) = policy.check_issuance(name, &spec, root.cert()) {
        return ClusterReport::new(name, Outcome::PolicyRefused).with_reason(v.to_string());
    }
    if dry_run {
        return ClusterReport::new(name, Outcome::WouldIssue).with_reason(why);
    }
    let intermediate = match issue_intermediate(root, &spec, now) {
        Ok(i) => i,
        Err(e) => return failed(e.to_string()),
    };
    if let Err(v) = policy.check_issued(name, &intermediate.cert) {
        return ClusterReport::new(name, Outcome::PolicyRefused).with_reason(v.to_string());
    }
    let trust = match trust {
        TrustChoice::Keep(t) => t,
        TrustChoice::RootOnly => TrustBundle::single(root.cert()),
    };
    let files = CaCertsFiles::for_intermediate(&intermediate, &[], root.cert(), &trust);
    // Never hand istiod something it would refuse: validate exactly what is about to be written.
    match verify_cacerts_for_mesh(&files, now, Some(&config.trust_domain)) {
        Ok(v) if v.anchor() == root.cert() => {}
        Ok(_) => return failed("internal check: new cacerts does not chain to the root".into()),
        Err(problems) => {
            let list: Vec<String> = problems.iter().map(ToString::to_string).collect();
            return failed(format!(
                "internal check of the new cacerts failed: {}",
                list.join("; ")
            ));
        }
    }
    let info = intermediate.cert.info();
    let meta = WriteMeta {
        cluster: name.to_string(),
        serial: info.serial.clone(),
        written_at: now,
        reason: why.clone(),
    };
    match target.write(&files, &meta) {
        Ok(w) => {
            let mut r = ClusterReport::new(name, Outcome::Issued).with_reason(why);
            r.serial = Some(info.serial.clone());
            r.not_after = Some(info.not_after);
            r.renew_at = Some(policy.renew_at(info));
            r.backup = w.backup;
            r
        }
        Err(e) => failed(format!("writing {}: {e}", target.describe())),
    }
}
