//! The phase machine: a transition's [`Record`] and the [`next_step`] it calls for. Pure: it
//! reads the record and a time, and the driver reports each step's outcome back.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{MaterialOf, Phase, TransitionKind};
use crate::rollout::Stage;

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
    /// The pods (`cluster/uid`) of this primary and its remotes that held a proxy when this phase's
    /// istiod restart had finished: they started before istiod served this phase's bundle, so
    /// unless something replaced them since, their proxies may not hold it (docs/istio.md §13).
    #[serde(default, skip_serializing_if = "super::ProxySet::is_empty")]
    pub proxies_before_istiod: super::ProxySet,
    /// When this phase's istiod restart finished (unix seconds).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub istiod_restarted_at: Option<i64>,
}

impl State {
    /// The state in words, as `transition status` and the logs print it.
    pub fn describe(&self) -> String {
        match self {
            State::Active => "active".into(),
            State::Failed { report, .. } => format!("failed: {report}"),
            State::RollingBack { to } => format!("rolling back to {}", to.describe()),
            State::Held { note } => format!("held: {note}"),
            State::RolledBack => "rolled back".into(),
        }
    }
}

impl ClusterProgress {
    /// The first of `stages` not restarted yet.
    fn next_restart(&self, stages: &[Stage]) -> Option<Stage> {
        stages.iter().copied().find(|s| !self.restarted.contains(s))
    }
}

/// What a revocation is about, fixed when it starts ([`TransitionKind::Revoke`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// The primary whose intermediate is revoked and re-issued.
    pub cluster: String,
    /// The revoked intermediate: subject, serial (hex) and SHA-256 fingerprint.
    pub subject: String,
    pub serial: String,
    pub fingerprint: String,
    /// Why (a renewal, which revokes nothing: `superseded`, never published).
    pub reason: crate::pki::Reason,
    /// `ca-crl.pem` until the revocation is published: a list from every intermediate in use
    /// (the revoked one and its successor included), from the mesh CA as before, and from
    /// every CA above it.
    pub lists_before: String,
    /// `ca-crl.pem` from `RemoveOldRoot` on: the mesh CA's list names the revoked intermediate.
    pub lists_after: String,
    /// Primaries whose cacerts had no revocation lists before: their proxies read the lists
    /// only once restarted after istiod published them (docs/istio.md §14), so their gateways
    /// and workloads restart when the revocation is published.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub first_lists: Vec<String>,
}

/// How a primary with a directory target shows that its cluster took a step's material: cacertd
/// only writes the folder, and something else (a GitOps tool, an operator) applies it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum DirProof {
    /// Its target's `observe` kubeconfig reads the cluster: the gate judges what it serves and
    /// publishes, as for a Kubernetes target.
    Observed,
    /// An operator confirms that the folder was applied (and istiod, gateways and workloads
    /// restarted there) with `transition resume --approve`, after each step's writes.
    Approval,
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
    /// With `skip_workload_restarts`: proxies that take no pushed bundles may learn the new
    /// root at their next certificate renewal, which the gate then waits for.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub wait_for_renewal: bool,
    /// Wait for an operator's approval before starting each phase after the first.
    pub approve_each_phase: bool,
    /// Namespaces whose workloads are not restarted (their owners restart them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub exclude_namespaces: Vec<String>,
    /// How many clusters are written and restarted at once within a phase (at least 1).
    #[serde(default = "one")]
    pub max_parallel: usize,
    /// Primaries with a directory target, and how each shows that its cluster took a step.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub directories: BTreeMap<String, DirProof>,
    /// With workload restarts skipped where proxies do not take pushed bundles: how long after
    /// a primary's istiod restart its proxies have all renewed their certificates, and with
    /// them learned the phase's bundle (docs/istio.md §13). `AddNewRoot`'s gate waits that
    /// long for the proxies that started before the restart.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub renewal_wait_seconds: Option<u64>,
    /// A revocation's wait, once istiod published the lists, for kubelet to update them in
    /// every pod ([transition] list_propagation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub list_propagation_seconds: Option<u64>,
    /// A root rotation because the old root's key leaked (`rotate-root start --emergency`): no
    /// drain; SwitchSigner's gate instead waits in every cluster until no proxy that started
    /// before its istiod switched signer is left.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub emergency: bool,
    /// Primaries a migration writes only to add revocation lists (the migrating clusters'
    /// new intermediates'), keeping their signer and bundle: already on the common root where
    /// the clusters serve lists. Nothing restarts there, and no proxy there is waited for.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub lists_only: Vec<String>,
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
    /// An operator confirmed that this step's folders are applied ([`DirProof::Approval`]);
    /// cleared with each gate passed.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub applied: bool,
    /// A revocation's cluster and lists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revocation: Option<Revocation>,
    /// What happened when: the start, each phase entered, failures, rollbacks, resumes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub timeline: Vec<Milestone>,
}

/// One moment of a transition's timeline.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Milestone {
    /// Unix seconds.
    pub at: i64,
    pub what: String,
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
    /// Wait for an operator to confirm that the folders of `clusters` (directory targets
    /// proven by approval) are applied to their clusters.
    AwaitApplied {
        clusters: Vec<String>,
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
    /// istiod restarted; these pods (`cluster/uid`) held a proxy once its rollout finished.
    IstiodRestarted {
        proxies: Vec<String>,
    },
    /// The gate held in every cluster.
    GateHeld,
    /// The gate does not hold yet; each entry names a cluster (and namespace) that is behind.
    GateBehind(Vec<String>),
}

/// The timeline's first entry.
pub const STARTED: &str = "started";

impl Record {
    pub fn new(
        kind: TransitionKind,
        clusters: impl IntoIterator<Item = String>,
        options: Options,
    ) -> Self {
        Record {
            kind,
            // A root's removal is the last phase alone.
            phase: match kind {
                TransitionKind::RemoveRoot => Phase::RemoveOldRoot,
                TransitionKind::Migrate
                | TransitionKind::RotateRoot
                | TransitionKind::Revoke
                | TransitionKind::Renew => Phase::AddNewRoot,
            },
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
            applied: false,
            revocation: None,
            timeline: Vec::new(),
        }
    }

    /// Adds `what`, at `now`, to the timeline.
    pub fn note(&mut self, now: OffsetDateTime, what: impl Into<String>) {
        self.timeline.push(Milestone {
            at: now.unix_timestamp(),
            what: what.into(),
        });
    }

    /// When the transition was started, if its timeline says so (older records do not).
    pub fn started_at(&self) -> Option<i64> {
        self.timeline
            .iter()
            .find(|m| m.what == STARTED)
            .map(|m| m.at)
    }

    /// The restarts `cluster` goes through after its write in the current phase or rollback,
    /// in order. A directory target's are up to whoever applies the folder. A trust transition
    /// restarts istiod, gateways and workloads (these skipped on request). A revocation
    /// restarts only where a signer changes — the revoked cluster, entering SwitchSigner or
    /// rolling back before it — and, when the revocation is published, the gateways and
    /// workloads of primaries whose proxies never had lists to check. A renewal restarts
    /// nothing: istiod takes a new intermediate without a restart (docs/istio.md §3), and
    /// nothing is revoked that a proxy must check.
    pub fn restarts(&self, cluster: &str) -> Vec<Stage> {
        if self.is_directory(cluster)
            || self.kind == TransitionKind::Renew
            || self.only_lists(cluster)
        {
            return Vec::new();
        }
        let Some(revocation) = &self.revocation else {
            let skip = self.options.skip_workload_restarts;
            return Stage::ALL
                .into_iter()
                .filter(|s| !(skip && *s == Stage::Workloads))
                .collect();
        };
        let revoked = revocation.cluster == cluster;
        match (self.target_material(), &self.state) {
            (MaterialOf::Phase(Phase::SwitchSigner), State::Active)
            | (MaterialOf::Phase(Phase::AddNewRoot), State::RollingBack { .. })
                if revoked =>
            {
                Stage::ALL.to_vec()
            }
            (MaterialOf::Phase(Phase::RemoveOldRoot), State::Active)
                if !revoked && revocation.first_lists.iter().any(|c| c == cluster) =>
            {
                vec![Stage::Gateways, Stage::Workloads]
            }
            _ => Vec::new(),
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
                if self.kind != TransitionKind::RemoveRoot
                    && matches!(material, MaterialOf::Phase(p) if *p >= Phase::SwitchSigner)
                {
                    self.new_signer_used = true;
                }
            }
            (
                Step::Restart { cluster, stage },
                outcome @ (StepOutcome::Restarted | StepOutcome::IstiodRestarted { .. }),
            ) => {
                if let Some(p) = self.clusters.get_mut(cluster)
                    && !p.restarted.contains(stage)
                {
                    p.restarted.push(*stage);
                    if let StepOutcome::IstiodRestarted { proxies } = outcome {
                        p.proxies_before_istiod = super::ProxySet::of(proxies);
                        p.istiod_restarted_at = Some(now.unix_timestamp());
                    }
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
                    self.note(now, format!("failed: the gate of {what} did not hold"));
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
                self.phase = match (self.kind, self.phase) {
                    // A renewal revokes nothing: switched, it is done.
                    (TransitionKind::Renew, Phase::SwitchSigner) => Phase::Done,
                    (_, p) => p.next(),
                };
                self.approved = false;
                self.note(now, format!("entered phase {}", self.phase));
            }
            State::RollingBack { to } => match to {
                MaterialOf::Original => {
                    self.phase = Phase::AddNewRoot;
                    self.state = State::RolledBack;
                    self.note(now, "rolled back to the original material");
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
                    self.note(now, format!("rolled back to the material of phase {p}"));
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
        self.applied = false;
    }

    /// An operator confirms that the folders written in this step are applied.
    pub fn confirm_applied(&mut self) {
        self.applied = true;
    }

    /// `cluster` is in the transition only to be given revocation lists
    /// ([`Options::lists_only`]).
    pub fn only_lists(&self, cluster: &str) -> bool {
        self.options.lists_only.iter().any(|c| c == cluster)
    }

    fn is_directory(&self, cluster: &str) -> bool {
        self.options.directories.contains_key(cluster)
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
            // Resuming a rollback continues it (through a drain it waits, say).
            State::Active | State::RollingBack { .. } => Ok(()),
            State::RolledBack => Err("the transition was rolled back; start a new one".into()),
        }
    }

    /// Starts returning every cluster to the previous phase's material.
    pub fn rollback(&mut self) -> Result<(), String> {
        if self.phase == Phase::Done && self.state == State::Active {
            return Err(match self.kind {
                TransitionKind::Revoke | TransitionKind::Renew => {
                    "the transition is done; its cluster signs with the successor, whose list \
                     every primary serves — to replace it again, start a new one (`cacertd \
                     renew`)"
                }
                _ => {
                    "the transition is done; the old root is no longer trusted anywhere, \
                     so rolling back would break mTLS — start a new transition instead"
                }
            }
            .into());
        }
        if matches!(self.state, State::RollingBack { .. }) {
            return Err(
                "a rollback is already in progress; continue it with `cacertd \
                 transition resume` (with --wait to wait out a drain)"
                    .into(),
            );
        }
        if self.state == State::RolledBack {
            return Err("the transition was rolled back already; start a new one".into());
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
            // A root's removal has one phase: back is what each cluster had.
            Some(p) if self.kind != TransitionKind::RemoveRoot => MaterialOf::Phase(p),
            _ => MaterialOf::Original,
        };
        if let Some(revocation) = &self.revocation
            && to == MaterialOf::Original
            && !revocation.first_lists.is_empty()
            && !(untouched && self.phase == Phase::AddNewRoot)
        {
            return Err(format!(
                "{} had no revocation lists before; istiod published the lists to their \
                 proxies, and taking them away again could leave those proxies unable to \
                 verify anyone. Continue with `cacertd transition resume`",
                revocation.first_lists.join(", ")
            ));
        }
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

    /// Where the transition stands, in words: `in phase SwitchSigner`, `waiting to enter phase
    /// SwitchSigner` (no cluster written in it yet), `phase Done`.
    pub fn position(&self) -> String {
        match (self.phase, &self.state) {
            (Phase::Done, _) => "phase Done".into(),
            (p, State::Active) if self.untouched() => format!("waiting to enter phase {p}"),
            (p, _) => format!("in phase {p}"),
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

mod steps;
pub use steps::{next_step, next_steps};

#[cfg(test)]
mod tests;
