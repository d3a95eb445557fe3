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

pub mod check;
pub mod driver;
pub mod error;
mod gate;
mod machine;
mod planned;
mod preflight;
pub mod progress;
mod proxy_set;
pub mod record_store;
pub mod revoke;
mod serving;
pub mod start;

pub use machine::{
    ClusterProgress, DirProof, Options, Record, Revocation, State, Step, StepOutcome, next_step,
    next_steps,
};
pub use planned::{PlannedStep, Scope, plan_steps, remaining_steps, steps_ahead};
pub use proxy_set::ProxySet;
pub use serving::{ClusterMaterial, from_self_signed, material};

use std::fmt;

use serde::{Deserialize, Serialize};

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
    /// A root nobody holds (planted, or left by an aborted transition) leaves every bundle
    /// that trusts it: one phase, `RemoveOldRoot`, each cluster keeping its signer.
    RemoveRoot,
    /// One primary's intermediate is revoked (README, "When a key leaks"): every primary
    /// publishes a revocation list from its successor (`AddNewRoot`'s place), the primary
    /// switches to the successor and restarts everything there (`SwitchSigner`), then every
    /// primary publishes the mesh CA's list naming the revoked intermediate (`RemoveOldRoot`).
    /// Trust does not change.
    Revoke,
    /// One primary's intermediate is renewed where the clusters serve revocation lists
    /// (README, "When a key leaks"): every primary publishes a list from the successor first
    /// (`AddNewRoot`'s place), then the primary signs with it (`SwitchSigner`; istiod picks
    /// it up without a restart, docs/istio.md §3). Nothing is revoked: the predecessor's
    /// list stays while what it signed lives, so it is done once switched (no
    /// `RemoveOldRoot`). Trust does not change.
    Renew,
}

impl TransitionKind {
    pub fn name(self) -> &'static str {
        match self {
            TransitionKind::Migrate => "migrate",
            TransitionKind::RotateRoot => "rotate-root",
            TransitionKind::RemoveRoot => "remove-root",
            TransitionKind::Revoke => "revoke",
            TransitionKind::Renew => "renew",
        }
    }
}

impl Options {
    /// A transition's options as `[transition]` sets them: restarts as needed, no approvals,
    /// and each directory target proven as its `observe` setting allows.
    pub fn from_config(config: &crate::config::Config) -> Options {
        let t = &config.transition;
        Options {
            drain_seconds: t.drain.as_secs(),
            gate_timeout_seconds: t.gate_timeout.as_secs(),
            skip_workload_restarts: false,
            wait_for_renewal: false,
            approve_each_phase: false,
            exclude_namespaces: t.exclude_namespaces.clone(),
            max_parallel: t.max_parallel,
            // Set by `start` from the proxies' settings when `--wait-for-renewal` is given.
            renewal_wait_seconds: None,
            list_propagation_seconds: None,
            emergency: false,
            lists_only: Vec::new(),
            directories: directories(config),
        }
    }
}

/// The primaries with a directory target, and how each shows that its cluster took a step.
fn directories(config: &crate::config::Config) -> std::collections::BTreeMap<String, DirProof> {
    config
        .topology
        .primaries()
        .filter_map(|p| match &p.target {
            Some(crate::topology::TargetConfig::Dir { observe, .. }) => Some((
                p.name.clone(),
                match observe {
                    Some(_) => DirProof::Observed,
                    None => DirProof::Approval,
                },
            )),
            _ => None,
        })
        .collect()
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

impl MaterialOf {
    pub fn describe(self) -> String {
        match self {
            MaterialOf::Original => "the material from before the transition".into(),
            MaterialOf::Phase(p) => format!("phase {p}'s material"),
        }
    }
}

/// A trust transition, as issuance sees it: the roots of the material it moves between, and
/// whether none is under way for sure (a record that cannot be read counts as one under way).
pub struct InFlight {
    pub roots: Vec<crate::pki::Cert>,
    pub quiet: bool,
    /// The record of the transition under way, when it could be read.
    pub record: Option<Record>,
    /// Each primary it moves whose saved material could be read: the roots its bundle held
    /// before, and the root each of its signers (before, after) chains to.
    pub moving: Vec<Moving>,
}

/// One primary a transition moves, as its saved material says.
pub struct Moving {
    pub cluster: String,
    pub bundle_before: Vec<crate::pki::Cert>,
    pub signer_before: Option<crate::pki::Cert>,
    pub signer_after: Option<crate::pki::Cert>,
}

/// What [`InFlight`] says of the transition record now.
pub async fn in_flight(config: &crate::config::Config) -> InFlight {
    let unknown = InFlight {
        roots: Vec::new(),
        quiet: false,
        record: None,
        moving: Vec::new(),
    };
    let Ok(files) = record_store::RecordStore::open(config).await else {
        return unknown;
    };
    let record = match files.load().await {
        Ok(Some(record)) if !record.is_over() => record,
        Ok(_) => {
            return InFlight {
                roots: Vec::new(),
                quiet: true,
                record: None,
                moving: Vec::new(),
            };
        }
        Err(_) => return unknown,
    };
    let mut roots: Vec<crate::pki::Cert> = Vec::new();
    let mut moving = Vec::new();
    for cluster in record.clusters.keys() {
        let Ok(material) = files.load_material(cluster).await else {
            continue;
        };
        moving.push(Moving {
            cluster: cluster.clone(),
            bundle_before: crate::pki::TrustBundle::from_pem_lenient(&material.original.root_cert)
                .0
                .roots()
                .to_vec(),
            signer_before: check::signing_root(&material.original),
            signer_after: check::signing_root(&material.new),
        });
        for pem in [&material.original.root_cert, &material.new.root_cert] {
            for root in crate::pki::TrustBundle::from_pem_lenient(pem).0.roots() {
                if !roots.contains(root) {
                    roots.push(root.clone());
                }
            }
        }
    }
    InFlight {
        roots,
        quiet: false,
        record: Some(record),
        moving,
    }
}
