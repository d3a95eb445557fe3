//! The phased trust transition (README, "Trust transitions"): the pure phase
//! machine shared by `migrate` (self-signed or unrelated roots → the common root) and
//! `rotate-root` (common root A → B), and the `cacerts` material each phase serves.
//!
//! Nothing here performs I/O. [`next_step`] reads a [`Record`] and says what to do next;
//! the driver does it and reports back with [`Record::record`]. Every step is idempotent, so a
//! driver that crashed between doing a step and persisting the record simply does it again.
//!
//! The two rules the order enforces:
//! - no cluster signs with the new CA before every cluster's gate showed it trusts the new root
//!   (`SwitchSigner` starts only after `AddNewRoot`'s gate held in every cluster);
//! - no cluster drops the old root before the drain period has passed since the last cluster
//!   stopped signing with the old CA (`RemoveOldRoot` waits for it).

pub mod driver;
pub mod error;
pub mod record_store;

use std::collections::BTreeMap;
use std::fmt;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::pki::{CaCertsFiles, Cert, PkiError, TrustBundle};

pub use crate::rollout::Stage;

/// What a transition does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum TransitionKind {
    /// Clusters on istiod's self-signed CA, or on an unrelated plugged-in root, move onto the
    /// common root.
    Migrate,
    /// The common root is replaced by a new one.
    RotateRoot,
}

/// The phases, in order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Phase {
    /// Every cluster keeps its signer and trusts old + new roots.
    AddNewRoot,
    /// Every cluster signs with its new intermediate and still trusts old + new.
    SwitchSigner,
    /// After the drain period, every cluster trusts the new root only.
    RemoveOldRoot,
    Done,
}

impl Phase {
    pub const ALL: [Phase; 4] = [
        Phase::AddNewRoot,
        Phase::SwitchSigner,
        Phase::RemoveOldRoot,
        Phase::Done,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::AddNewRoot => "AddNewRoot",
            Phase::SwitchSigner => "SwitchSigner",
            Phase::RemoveOldRoot => "RemoveOldRoot",
            Phase::Done => "Done",
        }
    }

    fn next(self) -> Phase {
        match self {
            Phase::AddNewRoot => Phase::SwitchSigner,
            Phase::SwitchSigner => Phase::RemoveOldRoot,
            Phase::RemoveOldRoot | Phase::Done => Phase::Done,
        }
    }

    /// The phase whose material a rollback from `self` restores; `None` means the material the
    /// cluster had before the transition.
    fn previous(self) -> Option<Phase> {
        match self {
            Phase::AddNewRoot => None,
            Phase::SwitchSigner => Some(Phase::AddNewRoot),
            Phase::RemoveOldRoot | Phase::Done => Some(Phase::SwitchSigner),
        }
    }
}

impl fmt::Display for Phase {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Which material a cluster should serve: a phase's, or what it had before the transition.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum MaterialOf {
    Original,
    Phase(Phase),
}

/// How far one primary cluster got in the current phase (or rollback).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterProgress {
    /// A write of the phase material was started (it may have landed even if the process died
    /// before `written` was recorded).
    #[serde(default)]
    pub writing: bool,
    /// The phase material is in its cacerts.
    pub written: bool,
    /// Restart stages finished, in order.
    pub restarted: Vec<Stage>,
}

impl ClusterProgress {
    fn next_restart(&self, skip_workloads: bool) -> Option<Stage> {
        Stage::ALL
            .into_iter()
            .filter(|s| !(skip_workloads && *s == Stage::Workloads))
            .find(|s| !self.restarted.contains(s))
    }
}

/// Where the transition stands.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "state", rename_all = "kebab-case")]
pub enum State {
    /// Moving forward through `phase`.
    Active,
    /// A gate timed out; `report` names who is behind. `resume` continues what was under way
    /// (the rollback, if `rolling_back_to` is set), `rollback` goes back.
    Failed {
        report: String,
        #[serde(default)]
        rolling_back_to: Option<MaterialOf>,
    },
    /// Returning every cluster to `to`'s material; on completion the transition is held at the
    /// start of the phase after `to` (or ends, when `to` is the original material).
    RollingBack { to: MaterialOf },
    /// A rollback to a phase's material finished; `resume` goes forward again, `rollback`
    /// further back.
    Held { note: String },
    /// Rolled back to the original material: nothing more to do.
    RolledBack,
}

/// Options fixed when the transition starts.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Options {
    /// How long the old root stays trusted after the last cluster switched signer.
    pub drain_seconds: u64,
    /// How long a gate may wait before the transition fails.
    pub gate_timeout_seconds: u64,
    /// Rely on istiod's multi-root hot reload instead of restarting workloads.
    pub skip_workload_restarts: bool,
    /// Wait for an operator's approval before starting each phase after the first.
    pub approve_each_phase: bool,
    /// Namespaces whose workloads are not restarted (their owners restart them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    /// How many clusters are written and restarted at once within a phase (at least 1).
    #[serde(default = "one")]
    pub max_parallel: usize,
}

fn one() -> usize {
    1
}

/// The persisted transition record: everything needed to resume after a crash.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub kind: TransitionKind,
    pub phase: Phase,
    pub state: State,
    pub options: Options,
    /// Progress of each primary cluster in the current phase or rollback.
    pub clusters: BTreeMap<String, ClusterProgress>,
    /// When the current gate started waiting (unix seconds), once every step before it is done.
    pub gate_since: Option<i64>,
    /// When every cluster had switched signer (unix seconds): the drain period starts here.
    pub switched_at: Option<i64>,
    /// Set by `approve` when `approve_each_phase` is on; cleared on entering a phase and by a
    /// rollback.
    pub approved: bool,
    /// A cluster was given the new signer at some point (a SwitchSigner or later write).
    #[serde(default)]
    pub new_signer_used: bool,
    /// When a rollback took the new signer away from every cluster (unix seconds): certificates
    /// it signed live on until then + the drain period, so the new root stays trusted that long.
    #[serde(default)]
    pub new_signer_retired_at: Option<i64>,
    /// A root rotation is complete only once the store holds the new root.
    #[serde(default)]
    pub root_swapped: bool,
    /// Who was behind when the waiting gate was last checked (clusters and namespaces).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub behind: Vec<String>,
}

/// The next thing a driver should do.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Write `material` into `cluster`'s cacerts (keeping a backup of what was there).
    Write {
        cluster: String,
        material: MaterialOf,
    },
    /// Restart `stage` in `cluster` (istiod / gateways in the primary; workloads in the primary
    /// and every remote it serves) and wait for the rollout.
    Restart {
        cluster: String,
        stage: Stage,
    },
    /// Check the gate of `material` in every cluster.
    CheckGate {
        material: MaterialOf,
    },
    /// The old root must stay trusted until `until`.
    Drain {
        until: OffsetDateTime,
    },
    /// An operator must approve entering `phase`.
    AwaitApproval {
        phase: Phase,
    },
    /// Held after a rollback: nothing to do until an operator resumes or rolls back further.
    Held {
        note: String,
    },
    /// Nothing to do until an operator resumes or rolls back.
    Stopped {
        report: String,
    },
    Finished,
}

/// What a driver reports after a step.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum StepOutcome {
    Written,
    Restarted,
    /// The gate held in every cluster.
    GateHeld,
    /// The gate does not hold yet; each entry names a cluster (and namespace) that is behind.
    GateBehind(Vec<String>),
}

impl Record {
    pub fn new(
        kind: TransitionKind,
        clusters: impl IntoIterator<Item = String>,
        options: Options,
    ) -> Self {
        Record {
            kind,
            phase: Phase::AddNewRoot,
            state: State::Active,
            options,
            clusters: clusters
                .into_iter()
                .map(|c| (c, ClusterProgress::default()))
                .collect(),
            gate_since: None,
            switched_at: None,
            approved: false,
            new_signer_used: false,
            new_signer_retired_at: None,
            root_swapped: false,
            behind: Vec::new(),
        }
    }

    /// The material the clusters are being moved to right now.
    pub fn target_material(&self) -> MaterialOf {
        match &self.state {
            State::RollingBack { to } => *to,
            State::RolledBack => MaterialOf::Original,
            _ => MaterialOf::Phase(self.phase),
        }
    }

    /// Records the outcome of `step`, done at `now`.
    pub fn record(&mut self, step: &Step, outcome: StepOutcome, now: OffsetDateTime) {
        match (step, outcome) {
            (Step::Write { cluster, material }, StepOutcome::Written) => {
                if let Some(p) = self.clusters.get_mut(cluster) {
                    p.written = true;
                }
                if matches!(material, MaterialOf::Phase(p) if *p >= Phase::SwitchSigner) {
                    self.new_signer_used = true;
                }
            }
            (Step::Restart { cluster, stage }, StepOutcome::Restarted) => {
                if let Some(p) = self.clusters.get_mut(cluster)
                    && !p.restarted.contains(stage)
                {
                    p.restarted.push(*stage);
                }
            }
            (Step::CheckGate { .. }, StepOutcome::GateHeld) => self.gate_passed(now),
            (Step::CheckGate { .. }, StepOutcome::GateBehind(behind)) => {
                self.behind.clone_from(&behind);
                let since = *self.gate_since.get_or_insert(now.unix_timestamp());
                let waited = now.unix_timestamp() - since;
                if waited >= i64::try_from(self.options.gate_timeout_seconds).unwrap_or(i64::MAX) {
                    let rolling_back_to = match self.state {
                        State::RollingBack { to } => Some(to),
                        _ => None,
                    };
                    let what = match self.target_material() {
                        MaterialOf::Phase(p) => format!("phase {p}"),
                        MaterialOf::Original => "rollback to the original material".to_string(),
                    };
                    self.state = State::Failed {
                        report: format!(
                            "the gate of {what} did not hold within {}s; behind: {}",
                            self.options.gate_timeout_seconds,
                            behind.join("; ")
                        ),
                        rolling_back_to,
                    };
                }
            }
            // An outcome that does not belong to the step changes nothing.
            _ => {}
        }
    }

    fn gate_passed(&mut self, now: OffsetDateTime) {
        self.reset_progress();
        match self.state.clone() {
            State::Active => {
                if self.phase == Phase::SwitchSigner {
                    self.switched_at = Some(now.unix_timestamp());
                }
                self.phase = self.phase.next();
                self.approved = false;
            }
            State::RollingBack { to } => match to {
                MaterialOf::Original => {
                    self.phase = Phase::AddNewRoot;
                    self.state = State::RolledBack;
                }
                MaterialOf::Phase(p) => {
                    if p < Phase::SwitchSigner && self.new_signer_used {
                        self.new_signer_retired_at = Some(now.unix_timestamp());
                    }
                    // Every cluster serves `p`'s material again: the transition rests at the
                    // start of the phase after `p`, stopped, until `resume` (which goes
                    // forward again) or a further rollback.
                    self.phase = p.next();
                    self.state = State::Held {
                        note: format!("rolled back to the material of phase {p}"),
                    };
                }
            },
            State::Failed { .. } | State::Held { .. } | State::RolledBack => {}
        }
    }

    fn reset_progress(&mut self) {
        for p in self.clusters.values_mut() {
            *p = ClusterProgress::default();
        }
        self.gate_since = None;
        self.behind.clear();
    }

    /// Continues a failed transition: the current phase is retried from where it stopped.
    pub fn resume(&mut self) -> Result<(), String> {
        match self.state {
            State::Failed {
                rolling_back_to: Some(to),
                ..
            } => {
                self.state = State::RollingBack { to };
                self.gate_since = None;
                Ok(())
            }
            State::Failed { .. } | State::Held { .. } => {
                self.state = State::Active;
                self.gate_since = None;
                Ok(())
            }
            State::Active => Ok(()),
            State::RollingBack { .. } => Err("a rollback is in progress".into()),
            State::RolledBack => Err("the transition was rolled back; start a new one".into()),
        }
    }

    /// Starts returning every cluster to the previous phase's material.
    pub fn rollback(&mut self) -> Result<(), String> {
        if self.phase == Phase::Done && self.state == State::Active {
            return Err(
                "the transition is done; the old root is no longer trusted anywhere, \
                 so rolling back would break mTLS — start a new transition instead"
                    .into(),
            );
        }
        if matches!(self.state, State::RollingBack { .. } | State::RolledBack) {
            return Err("a rollback is already in progress or finished".into());
        }
        // The latest phase whose material any cluster serves: the current one once a cluster
        // was written in it, else the one before (complete everywhere). Its predecessor's
        // material is the target.
        let untouched = self.untouched();
        let latest = if untouched {
            self.phase.previous()
        } else {
            Some(self.phase)
        };
        let to = match latest.and_then(Phase::previous) {
            Some(p) => MaterialOf::Phase(p),
            None => MaterialOf::Original,
        };
        self.reset_progress();
        self.approved = false;
        self.state = State::RollingBack { to };
        Ok(())
    }

    /// Nothing left to do: done (a root rotation with the store swapped) or rolled back. Until
    /// then the transition owns its clusters: nothing else may write their cacerts.
    pub fn is_over(&self) -> bool {
        match self.state {
            State::RolledBack => true,
            State::Active => {
                self.phase == Phase::Done
                    && (self.kind != TransitionKind::RotateRoot || self.root_swapped)
            }
            _ => false,
        }
    }

    /// No cluster was written (or began to be) in the current phase or rollback.
    fn untouched(&self) -> bool {
        self.clusters.values().all(|p| !p.written && !p.writing)
    }

    /// Notes that a write to `cluster` is about to start; persist the record before writing.
    pub fn begin_write(&mut self, cluster: &str) {
        if let Some(p) = self.clusters.get_mut(cluster) {
            p.writing = true;
        }
    }

    /// Approves entering the current phase (with `approve_each_phase`).
    pub fn approve(&mut self) {
        self.approved = true;
    }
}

/// What to do next. Writes go cluster by cluster; each cluster's restarts follow its write, in
/// order; the gate is checked once every cluster finished. Before a phase's first write come
/// its approval (with `approve_each_phase`) and, for RemoveOldRoot, the drain period; a
/// rollback to the original material after the new signer was used waits a drain period too.
pub fn next_step(record: &Record, now: OffsetDateTime) -> Step {
    match &record.state {
        State::Failed { report, .. } => {
            return Step::Stopped {
                report: report.clone(),
            };
        }
        State::Held { note } => return Step::Held { note: note.clone() },
        State::RolledBack => return Step::Finished,
        State::Active if record.phase == Phase::Done => return Step::Finished,
        State::Active => {
            let untouched = record.untouched();
            if untouched
                && record.options.approve_each_phase
                && record.phase != Phase::AddNewRoot
                && !record.approved
            {
                return Step::AwaitApproval {
                    phase: record.phase,
                };
            }
            if record.phase == Phase::RemoveOldRoot
                && untouched
                && let Some(switched) = record.switched_at
            {
                let until = drain_end(switched, record.options.drain_seconds);
                if now < until {
                    return Step::Drain { until };
                }
            }
        }
        State::RollingBack {
            to: MaterialOf::Original,
        } => {
            // Removing the new root again: certificates the new signer issued must expire first.
            if record.untouched()
                && let Some(retired) = record.new_signer_retired_at
            {
                let until = drain_end(retired, record.options.drain_seconds);
                if now < until {
                    return Step::Drain { until };
                }
            }
        }
        State::RollingBack { .. } => {}
    }
    let material = record.target_material();
    for (cluster, progress) in &record.clusters {
        if !progress.written {
            return Step::Write {
                cluster: cluster.clone(),
                material,
            };
        }
        if let Some(stage) = progress.next_restart(record.options.skip_workload_restarts) {
            return Step::Restart {
                cluster: cluster.clone(),
                stage,
            };
        }
    }
    Step::CheckGate { material }
}

/// The next steps when the next one is a cluster's write or restart: the next step of each of
/// up to `record.options.max_parallel` clusters (each cluster's own write and restarts stay in
/// order; the gate still comes after every cluster). Otherwise just [`next_step`].
pub fn next_steps(record: &Record, now: OffsetDateTime, room: usize) -> Vec<Step> {
    let first = next_step(record, now);
    let max = record.options.max_parallel.min(room).max(1);
    if max == 1 || !matches!(first, Step::Write { .. } | Step::Restart { .. }) {
        return vec![first];
    }
    let material = record.target_material();
    let skip = record.options.skip_workload_restarts;
    record
        .clusters
        .iter()
        .filter_map(|(cluster, progress)| {
            if !progress.written {
                Some(Step::Write {
                    cluster: cluster.clone(),
                    material,
                })
            } else {
                progress.next_restart(skip).map(|stage| Step::Restart {
                    cluster: cluster.clone(),
                    stage,
                })
            }
        })
        .take(max)
        .collect()
}

/// `from` + `drain_seconds`, saturating at the latest representable time (never wrapping to the
/// past, which would skip the drain).
fn drain_end(from: i64, drain_seconds: u64) -> OffsetDateTime {
    let end = from.saturating_add(i64::try_from(drain_seconds).unwrap_or(i64::MAX));
    OffsetDateTime::from_unix_timestamp(end).unwrap_or_else(|_| {
        time::PrimitiveDateTime::new(time::Date::MAX, time::Time::MIDNIGHT).assume_utc()
    })
}

/// The material one primary cluster moves between.
pub struct ClusterMaterial {
    /// What the cluster served before the transition: its `cacerts`, or for a self-signed
    /// cluster the `cacerts` form of `istio-ca-secret` (see [`from_self_signed`]).
    pub original: CaCertsFiles,
    /// Its new intermediate under the new root, with `root_cert` = the new root.
    pub new: CaCertsFiles,
}

/// The `cacerts` form of istiod's self-signed CA: `istio-ca-secret`'s key and certificate
/// verbatim; its empty `cert-chain.pem` becomes the self-signed certificate itself, since
/// istiod requires all four files non-empty.
pub fn from_self_signed(istio_ca_secret: &CaCertsFiles) -> CaCertsFiles {
    let mut files = istio_ca_secret.clone();
    if files.cert_chain.iter().all(u8::is_ascii_whitespace) {
        files.cert_chain = files.ca_cert.clone();
    }
    if files.root_cert.iter().all(u8::is_ascii_whitespace) {
        files.root_cert = files.ca_cert.clone();
    }
    files
}

/// The `cacerts` a cluster serves for `of`. The old bundle's bytes are kept verbatim and the new
/// root appended after them (istiod before 1.31 reloads a bundle only if the old one is a
/// byte-substring of the new).
pub fn material(m: &ClusterMaterial, of: MaterialOf) -> Result<CaCertsFiles, PkiError> {
    let new_root = Cert::one_from_pem(&m.new.root_cert, "new root-cert.pem")?;
    let both = TrustBundle::from_pem(&m.original.root_cert, "current root-cert.pem")?
        .with_root_appended(&new_root);
    Ok(match of {
        MaterialOf::Original => m.original.clone(),
        MaterialOf::Phase(Phase::AddNewRoot) => CaCertsFiles {
            root_cert: both.pem_bytes().to_vec(),
            ..m.original.clone()
        },
        MaterialOf::Phase(Phase::SwitchSigner) => CaCertsFiles {
            root_cert: both.pem_bytes().to_vec(),
            ..m.new.clone()
        },
        MaterialOf::Phase(Phase::RemoveOldRoot | Phase::Done) => m.new.clone(),
    })
}

/// One line of a plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PlannedStep {
    pub phase: Phase,
    /// The primary the step acts on; `None` for steps over the whole topology.
    pub cluster: Option<String>,
    pub action: String,
}

/// A primary cluster and the remotes its istiod serves.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Scope {
    pub primary: String,
    pub remotes: Vec<String>,
}

impl Scope {
    fn clusters(&self) -> String {
        std::iter::once(self.primary.as_str())
            .chain(self.remotes.iter().map(String::as_str))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

/// Every step of a transition over `scopes`, in order, as `plan` prints them: the machine
/// driven with every step succeeding at once. Changes nothing and depends on nothing else, so
/// the same topology and options always give the same plan.
pub fn plan_steps(kind: TransitionKind, scopes: &[Scope], options: &Options) -> Vec<PlannedStep> {
    let record = Record::new(
        kind,
        scopes.iter().map(|s| s.primary.clone()),
        options.clone(),
    );
    remaining_steps(&record, scopes, OffsetDateTime::UNIX_EPOCH)
}

/// The steps still ahead of `record` at `now`, as [`plan_steps`] prints them, if every step
/// succeeds at once and every approval is given (`--dry-run` of `resume` and `rollback`).
/// Stops where an operator must act (a failed or held transition).
pub fn remaining_steps(record: &Record, scopes: &[Scope], now: OffsetDateTime) -> Vec<PlannedStep> {
    let mut record = record.clone();
    let kind = record.kind;
    let options = record.options.clone();
    let mut now = now;
    let scope_of = |cluster: &str| scopes.iter().find(|s| s.primary == cluster);
    let mut steps = Vec::new();
    loop {
        let step = next_step(&record, now);
        let phase = record.phase;
        let (cluster, action, outcome) = match &step {
            Step::Write { cluster, material } => (
                Some(cluster.clone()),
                format!(
                    "write cacerts: {}",
                    match material {
                        MaterialOf::Phase(p) => describe(kind, *p),
                        MaterialOf::Original =>
                            "the material it had before the transition, verbatim",
                    }
                ),
                StepOutcome::Written,
            ),
            Step::Restart { cluster, stage } => {
                let action = match (stage, scope_of(cluster)) {
                    (Stage::Istiod, _) | (_, None) => {
                        format!("restart {} and wait for the rollout", stage.name())
                    }
                    (Stage::Gateways, Some(s)) => format!(
                        "restart the gateways of {} and wait for the rollouts",
                        s.clusters()
                    ),
                    (Stage::Workloads, Some(s)) => format!(
                        "restart the workloads of every injected namespace of {}{} and wait for \
                         the rollouts",
                        s.clusters(),
                        if options.exclude_namespaces.is_empty() {
                            String::new()
                        } else {
                            format!(" except {}", options.exclude_namespaces.join(", "))
                        }
                    ),
                };
                (Some(cluster.clone()), action, StepOutcome::Restarted)
            }
            Step::CheckGate { material } => (
                None,
                format!(
                    "gate, in every cluster: {}",
                    match material {
                        MaterialOf::Phase(p) => gate(*p),
                        MaterialOf::Original => {
                            "every primary serves its material from before the transition; \
                             every istio-ca-root-cert ConfigMap holds exactly its roots"
                        }
                    }
                ),
                StepOutcome::GateHeld,
            ),
            Step::Drain { until } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!(
                        "wait the drain period ({}) so that no live workload certificate \
                         chains to the old root",
                        humantime::format_duration(std::time::Duration::from_secs(
                            options.drain_seconds
                        ))
                    ),
                });
                now = *until;
                continue;
            }
            Step::AwaitApproval { .. } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: "wait for an operator's approval".into(),
                });
                record.approve();
                continue;
            }
            Step::Stopped { report } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!("stopped until an operator resumes or rolls back: {report}"),
                });
                break;
            }
            Step::Held { note } => {
                steps.push(PlannedStep {
                    phase,
                    cluster: None,
                    action: format!("held until an operator resumes or rolls back: {note}"),
                });
                break;
            }
            Step::Finished => break,
        };
        steps.push(PlannedStep {
            phase,
            cluster,
            action,
        });
        record.record(&step, outcome, now);
    }
    steps
}

fn describe(kind: TransitionKind, phase: Phase) -> &'static str {
    match (kind, phase) {
        (TransitionKind::Migrate, Phase::AddNewRoot) => {
            "the current signer, verbatim (from istio-ca-secret if istiod is self-signed); \
             root-cert.pem = the current roots + the common root"
        }
        (TransitionKind::RotateRoot, Phase::AddNewRoot) => {
            "the current intermediate, verbatim; root-cert.pem = the current roots + the new root"
        }
        (_, Phase::SwitchSigner) => {
            "a new intermediate under the new root; root-cert.pem = the current roots + the new \
             root"
        }
        (_, Phase::RemoveOldRoot | Phase::Done) => {
            "the new intermediate; root-cert.pem = the new root only"
        }
    }
}

fn gate(phase: Phase) -> &'static str {
    match phase {
        Phase::AddNewRoot => {
            "every istio-ca-root-cert ConfigMap holds both roots; every restart finished"
        }
        Phase::SwitchSigner => {
            "as above, and every istiod serves its new intermediate as ca-cert.pem"
        }
        Phase::RemoveOldRoot | Phase::Done => {
            "every istio-ca-root-cert ConfigMap holds the new root only; every restart finished"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options {
            exclude_namespaces: Vec::new(),
            max_parallel: 1,
            drain_seconds: 86_400,
            gate_timeout_seconds: 600,
            skip_workload_restarts: false,
            approve_each_phase: false,
        }
    }

    fn t(secs: i64) -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp(1_800_000_000 + secs).unwrap()
    }

    /// Drives the record with every step succeeding; returns the steps in order.
    fn run(record: &mut Record, mut now: OffsetDateTime) -> Vec<Step> {
        let mut steps = Vec::new();
        for _ in 0..1000 {
            let step = next_step(record, now);
            steps.push(step.clone());
            let outcome = match &step {
                Step::Write { .. } => StepOutcome::Written,
                Step::Restart { .. } => StepOutcome::Restarted,
                Step::CheckGate { .. } => StepOutcome::GateHeld,
                Step::Drain { until } => {
                    now = *until;
                    continue;
                }
                Step::AwaitApproval { .. } => {
                    record.approve();
                    continue;
                }
                Step::Stopped { .. } | Step::Held { .. } | Step::Finished => return steps,
            };
            record.record(&step, outcome, now);
        }
        panic!("the transition did not finish");
    }

    #[test]
    fn several_clusters_at_once_keep_each_clusters_order_and_the_gate_last() {
        let mut o = opts();
        o.max_parallel = 2;
        let names = ["a", "b", "c"].map(String::from);
        let mut r = Record::new(TransitionKind::Migrate, names, o);
        let write = |c: &str| Step::Write {
            cluster: c.into(),
            material: MaterialOf::Phase(Phase::AddNewRoot),
        };
        let restart = |c: &str, stage| Step::Restart {
            cluster: c.into(),
            stage,
        };
        assert_eq!(next_steps(&r, t(0), usize::MAX), [write("a"), write("b")]);
        assert_eq!(
            next_steps(&r, t(0), 1),
            [write("a")],
            "no more than the room left"
        );
        r.record(&write("a"), StepOutcome::Written, t(0));
        assert_eq!(
            next_steps(&r, t(0), usize::MAX),
            [restart("a", Stage::Istiod), write("b")]
        );
        // Run everything in batches: the gate comes only once all three clusters are done.
        let mut seen = Vec::new();
        loop {
            let batch = next_steps(&r, t(0), usize::MAX);
            if matches!(batch[0], Step::CheckGate { .. }) {
                break;
            }
            assert!(batch.len() <= 2);
            for s in batch {
                let outcome = match s {
                    Step::Write { .. } => StepOutcome::Written,
                    _ => StepOutcome::Restarted,
                };
                r.record(&s, outcome, t(0));
                seen.push(s);
            }
        }
        assert_eq!(
            seen.len(),
            3 * 4 - 1,
            "a's write was recorded before the loop"
        );
        assert!(
            r.clusters
                .values()
                .all(|p| p.written && p.restarted.len() == 3)
        );
    }

    #[test]
    fn no_cluster_switches_signer_before_every_cluster_trusts_the_new_root() {
        let mut r = Record::new(
            TransitionKind::Migrate,
            ["east".to_string(), "west".to_string()],
            opts(),
        );
        let steps = run(&mut r, t(0));
        assert_eq!(r.phase, Phase::Done);
        let first_switch = steps
            .iter()
            .position(|s| {
                matches!(
                    s,
                    Step::Write {
                        material: MaterialOf::Phase(Phase::SwitchSigner),
                        ..
                    }
                )
            })
            .unwrap();
        let add_writes: Vec<usize> = steps
            .iter()
            .enumerate()
            .filter(|(_, s)| {
                matches!(
                    s,
                    Step::Write {
                        material: MaterialOf::Phase(Phase::AddNewRoot),
                        ..
                    }
                )
            })
            .map(|(i, _)| i)
            .collect();
        assert_eq!(add_writes.len(), 2);
        let gate = steps
            .iter()
            .position(|s| matches!(s, Step::CheckGate { .. }))
            .unwrap();
        assert!(add_writes.iter().all(|i| *i < gate) && gate < first_switch);
        // Each cluster restarts istiod, then gateways, then workloads, after its write.
        let east: Vec<&Step> = steps
            .iter()
            .filter(|s| matches!(s, Step::Write { cluster, .. } | Step::Restart { cluster, .. } if cluster == "east"))
            .take(4)
            .collect();
        assert!(matches!(east[0], Step::Write { .. }));
        assert!(matches!(
            east[1],
            Step::Restart {
                stage: Stage::Istiod,
                ..
            }
        ));
        assert!(matches!(
            east[2],
            Step::Restart {
                stage: Stage::Gateways,
                ..
            }
        ));
        assert!(matches!(
            east[3],
            Step::Restart {
                stage: Stage::Workloads,
                ..
            }
        ));
    }

    #[test]
    fn the_old_root_stays_until_the_drain_period_has_passed() {
        let mut r = Record::new(TransitionKind::RotateRoot, ["a".to_string()], opts());
        let mut now = t(0);
        while r.phase != Phase::RemoveOldRoot {
            let step = next_step(&r, now);
            let outcome = match step {
                Step::Write { .. } => StepOutcome::Written,
                Step::Restart { .. } => StepOutcome::Restarted,
                Step::CheckGate { .. } => StepOutcome::GateHeld,
                other => panic!("unexpected {other:?}"),
            };
            r.record(&step, outcome, now);
            now += time::Duration::seconds(1);
        }
        let switched = r.switched_at.unwrap();
        let until = OffsetDateTime::from_unix_timestamp(switched + 86_400).unwrap();
        assert_eq!(next_step(&r, now), Step::Drain { until });
        assert_eq!(
            next_step(&r, until - time::Duration::seconds(1)),
            Step::Drain { until }
        );
        assert!(matches!(next_step(&r, until), Step::Write { .. }));
    }

    #[test]
    fn a_gate_that_does_not_hold_in_time_fails_with_who_is_behind_and_resume_continues() {
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
        let write = Step::Write {
            cluster: "a".into(),
            material: MaterialOf::Phase(Phase::AddNewRoot),
        };
        r.record(&write, StepOutcome::Written, t(0));
        for stage in Stage::ALL {
            r.record(
                &Step::Restart {
                    cluster: "a".into(),
                    stage,
                },
                StepOutcome::Restarted,
                t(0),
            );
        }
        let gate = next_step(&r, t(0));
        assert!(matches!(gate, Step::CheckGate { .. }));
        let behind = vec!["a/bookinfo: istio-ca-root-cert lacks the new root".to_string()];
        r.record(&gate, StepOutcome::GateBehind(behind.clone()), t(0));
        assert_eq!(r.state, State::Active, "still within the gate timeout");
        assert_eq!(r.behind, behind, "kept for `transition status`");
        r.record(&gate, StepOutcome::GateBehind(behind), t(600));
        let Step::Stopped { report } = next_step(&r, t(600)) else {
            panic!("expected a stop")
        };
        assert!(
            report.contains("a/bookinfo") && report.contains("AddNewRoot"),
            "{report}"
        );
        r.resume().unwrap();
        assert_eq!(
            next_step(&r, t(700)),
            gate,
            "resume re-checks the gate, nothing redone"
        );
        r.record(&gate, StepOutcome::GateHeld, t(700));
        assert!(r.behind.is_empty(), "cleared once the gate held");
        assert_eq!(r.phase, Phase::SwitchSigner);
    }

    #[test]
    fn rollback_returns_every_cluster_to_the_previous_phases_material() {
        let mut r = Record::new(
            TransitionKind::Migrate,
            ["a".to_string(), "b".to_string()],
            opts(),
        );
        // Finish AddNewRoot, write SwitchSigner to "a" only.
        while r.phase == Phase::AddNewRoot {
            let s = next_step(&r, t(0));
            let o = match s {
                Step::Write { .. } => StepOutcome::Written,
                Step::Restart { .. } => StepOutcome::Restarted,
                _ => StepOutcome::GateHeld,
            };
            r.record(&s, o, t(0));
        }
        let s = next_step(&r, t(0));
        r.record(&s, StepOutcome::Written, t(0));
        r.rollback().unwrap();
        let steps = run(&mut r, t(1));
        let writes: Vec<_> = steps
            .iter()
            .filter_map(|s| match s {
                Step::Write { cluster, material } => Some((cluster.as_str(), *material)),
                _ => None,
            })
            .collect();
        assert_eq!(
            writes,
            [
                ("a", MaterialOf::Phase(Phase::AddNewRoot)),
                ("b", MaterialOf::Phase(Phase::AddNewRoot))
            ]
        );
        assert_eq!(r.phase, Phase::SwitchSigner);
        assert!(matches!(r.state, State::Held { .. }));
        // A second rollback returns to the original material and ends the transition — after
        // a drain, since "a" signed with the new CA and its certificates still live.
        r.rollback().unwrap();
        let steps = run(&mut r, t(2));
        assert!(
            matches!(steps[0], Step::Drain { until } if until == t(1) + time::Duration::days(1)),
            "{steps:?}"
        );
        assert!(steps.iter().any(|s| matches!(
            s,
            Step::Write {
                material: MaterialOf::Original,
                ..
            }
        )));
        assert_eq!(r.state, State::RolledBack);
        assert_eq!(next_step(&r, t(3)), Step::Finished);
    }

    #[test]
    fn a_finished_transition_cannot_be_rolled_back() {
        let mut r = Record::new(TransitionKind::RotateRoot, ["a".to_string()], opts());
        run(&mut r, t(0));
        assert!(r.rollback().unwrap_err().contains("done"));
    }

    #[test]
    fn skipping_workload_restarts_and_approval_between_phases() {
        let mut o = opts();
        o.skip_workload_restarts = true;
        o.approve_each_phase = true;
        o.drain_seconds = 0;
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
        let steps = run(&mut r, t(0));
        assert!(!steps.iter().any(|s| matches!(
            s,
            Step::Restart {
                stage: Stage::Workloads,
                ..
            }
        )));
        let approvals: Vec<Phase> = steps
            .iter()
            .filter_map(|s| match s {
                Step::AwaitApproval { phase } => Some(*phase),
                _ => None,
            })
            .collect();
        assert_eq!(approvals, [Phase::SwitchSigner, Phase::RemoveOldRoot]);
    }

    #[test]
    fn the_record_survives_a_json_round_trip() {
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
        let s = next_step(&r, t(0));
        r.record(&s, StepOutcome::Written, t(0));
        r.rollback().unwrap();
        let json = serde_json::to_string(&r).unwrap();
        let back: Record = serde_json::from_str(&json).unwrap();
        assert_eq!(back, r);
    }

    #[test]
    fn the_plan_lists_every_step_in_order_and_is_stable() {
        let scopes = [
            Scope {
                primary: "east".into(),
                remotes: vec!["east-remote".into()],
            },
            Scope {
                primary: "west".into(),
                remotes: vec![],
            },
        ];
        let steps = plan_steps(TransitionKind::Migrate, &scopes, &opts());
        assert_eq!(steps, plan_steps(TransitionKind::Migrate, &scopes, &opts()));
        // 3 phases × 2 clusters × (1 write + 3 restarts) + 3 gates + 1 drain.
        assert_eq!(steps.len(), 3 * 2 * 4 + 3 + 1, "{steps:#?}");
        assert_eq!(steps[0].phase, Phase::AddNewRoot);
        assert_eq!(steps[0].cluster.as_deref(), Some("east"));
        assert!(steps[0].action.contains("istio-ca-secret"));
        assert!(
            steps[3].action.contains("east, east-remote"),
            "{:?}",
            steps[3]
        );
        let drain = steps
            .iter()
            .position(|s| s.action.contains("drain"))
            .unwrap();
        assert_eq!(steps[drain].phase, Phase::RemoveOldRoot);
        assert!(steps[drain].action.contains("1day"), "{:?}", steps[drain]);
        assert!(
            steps[..drain]
                .iter()
                .all(|s| s.phase < Phase::RemoveOldRoot)
        );
    }

    /// Drives until `phase` is about to start (nothing written in it yet).
    fn until_phase(r: &mut Record, phase: Phase, now: OffsetDateTime) {
        while r.phase < phase {
            let s = next_step(r, now);
            let o = match s {
                Step::Write { .. } => StepOutcome::Written,
                Step::Restart { .. } => StepOutcome::Restarted,
                Step::CheckGate { .. } => StepOutcome::GateHeld,
                Step::AwaitApproval { .. } => {
                    r.approve();
                    continue;
                }
                other => panic!("unexpected {other:?}"),
            };
            r.record(&s, o, now);
        }
    }

    #[test]
    fn a_write_begun_but_not_recorded_counts_when_rolling_back() {
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
        until_phase(&mut r, Phase::SwitchSigner, t(0));
        // The SwitchSigner write to "a" may have landed; the process died before recording it.
        r.begin_write("a");
        r.rollback().unwrap();
        assert_eq!(
            r.state,
            State::RollingBack {
                to: MaterialOf::Phase(Phase::AddNewRoot)
            }
        );
    }

    #[test]
    fn a_rollback_whose_gate_fails_is_resumed_as_a_rollback() {
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], opts());
        until_phase(&mut r, Phase::SwitchSigner, t(0));
        let w = next_step(&r, t(0));
        r.record(&w, StepOutcome::Written, t(0));
        r.rollback().unwrap();
        loop {
            let s = next_step(&r, t(0));
            if let Step::CheckGate { .. } = s {
                r.record(&s, StepOutcome::GateBehind(vec!["a/app".into()]), t(0));
                r.record(&s, StepOutcome::GateBehind(vec!["a/app".into()]), t(600));
                break;
            }
            let o = match s {
                Step::Write { .. } => StepOutcome::Written,
                _ => StepOutcome::Restarted,
            };
            r.record(&s, o, t(0));
        }
        assert!(matches!(
            r.state,
            State::Failed {
                rolling_back_to: Some(MaterialOf::Phase(Phase::AddNewRoot)),
                ..
            }
        ));
        r.resume().unwrap();
        assert_eq!(
            r.state,
            State::RollingBack {
                to: MaterialOf::Phase(Phase::AddNewRoot)
            }
        );
        assert!(matches!(next_step(&r, t(700)), Step::CheckGate { .. }));
    }

    #[test]
    fn a_rollback_withdraws_the_approval() {
        let mut o = opts();
        o.approve_each_phase = true;
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
        until_phase(&mut r, Phase::SwitchSigner, t(0));
        r.approve();
        let w = next_step(&r, t(0));
        assert!(matches!(w, Step::Write { .. }));
        r.record(&w, StepOutcome::Written, t(0));
        r.rollback().unwrap();
        run_rollback(&mut r);
        assert!(matches!(r.state, State::Held { .. }));
        r.resume().unwrap();
        assert_eq!(
            next_step(&r, t(1)),
            Step::AwaitApproval {
                phase: Phase::SwitchSigner
            }
        );
    }

    fn run_rollback(r: &mut Record) {
        while matches!(r.state, State::RollingBack { .. }) {
            let s = next_step(r, t(0));
            let o = match s {
                Step::Write { .. } => StepOutcome::Written,
                Step::Restart { .. } => StepOutcome::Restarted,
                _ => StepOutcome::GateHeld,
            };
            r.record(&s, o, t(0));
        }
    }

    #[test]
    fn an_enormous_drain_never_wraps_into_no_drain() {
        let mut o = opts();
        o.drain_seconds = u64::MAX;
        let mut r = Record::new(TransitionKind::Migrate, ["a".to_string()], o);
        until_phase(&mut r, Phase::RemoveOldRoot, t(0));
        assert!(matches!(next_step(&r, t(10_000_000)), Step::Drain { .. }));
    }
}
