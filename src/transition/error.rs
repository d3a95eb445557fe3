//! What stops a trust transition, for the driver, the record stores and the CLI alike. Each
//! kind of refusal or stop is a variant of its own, so the CLI's exit code and the daemon's
//! metric label come from the variant, not from a message.

use crate::cluster::TargetError;
use crate::fsutil::FsError;

#[derive(Debug, thiserror::Error)]
pub enum DriveError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error(transparent)]
    Policy(#[from] crate::policy::PolicyViolation),
    /// The record or material could not be read or written.
    #[error("transition record, {location}: {reason}")]
    Record { location: String, reason: String },
    #[error("{cluster}: {source}")]
    Target {
        cluster: String,
        #[source]
        source: TargetError,
    },
    /// `resume`, `rollback` or the daemon found no record.
    #[error("no transition is under way")]
    NoTransition,
    /// A cluster the record names is not in the configuration (any more).
    #[error("{cluster} is in the transition but not in the configuration")]
    UnknownCluster { cluster: String },
    /// A primary's current material cannot be carried through a transition (it does not
    /// validate, is missing, or is under another root than the transition starts from).
    #[error("{cluster}: {reason}")]
    CurrentMaterial { cluster: String, reason: String },
    /// Every primary already is where the transition would take it.
    #[error("{0}")]
    NothingToDo(String),
    /// The new root, or material issued under it, cannot be used: refused by the root
    /// policy, different from a root already waiting, or the root store refused it.
    #[error("{0}")]
    NewRoot(String),
    /// The mesh is not set up for what was asked (e.g. skipping workload restarts without
    /// multi-root hot reload): doing it would break mTLS.
    #[error("{0}")]
    UnsafeForMesh(String),
    /// Material a phase would write does not validate, so nothing was written.
    #[error(
        "{cluster}: the cacerts for {what} does not validate, so it was not written: {problems}"
    )]
    Unwritable {
        cluster: String,
        what: String,
        problems: String,
    },
    /// `start` while another transition is under way.
    #[error("{0}")]
    AlreadyUnderWay(String),
    /// The record changed under this process (another replica or command): nothing was
    /// overwritten.
    #[error("{0}")]
    ChangedMeanwhile(String),
    /// Stopped on purpose after a number of steps, as if the process died (crash tests:
    /// the hidden `--stop-after-steps`).
    #[error("stopped after {steps} steps, as asked")]
    Interrupted { steps: usize },
    /// The phase machine stopped (a gate timed out, a restart failed); the record says where
    /// and `transition resume` or `rollback` continue.
    #[error("{0}")]
    Stopped(String),
    /// Putting the new root in the store's place failed; the transition waits to retry it.
    #[error("root swap: {0}")]
    RootSwap(String),
}

impl DriveError {
    /// The CLI's exit code (README, "Exit codes"): 4 for the issuance policy, 5 for a
    /// refusal before anything changed, 1 for a failure or a stop.
    pub fn exit_code(&self) -> u8 {
        match self {
            DriveError::Policy(_) => 4,
            DriveError::NoTransition
            | DriveError::UnknownCluster { .. }
            | DriveError::CurrentMaterial { .. }
            | DriveError::NothingToDo(_)
            | DriveError::NewRoot(_)
            | DriveError::UnsafeForMesh(_)
            | DriveError::AlreadyUnderWay(_) => 5,
            DriveError::Io(_)
            | DriveError::Record { .. }
            | DriveError::Target { .. }
            | DriveError::Unwritable { .. }
            | DriveError::ChangedMeanwhile(_)
            | DriveError::Interrupted { .. }
            | DriveError::Stopped(_)
            | DriveError::RootSwap(_) => 1,
        }
    }

    /// A short, stable label for metrics and JSON output.
    pub fn reason(&self) -> &'static str {
        match self {
            DriveError::Io(_) => "io",
            DriveError::Policy(_) => "policy",
            DriveError::Record { .. } => "record",
            DriveError::Target { .. } => "cluster",
            DriveError::NoTransition => "no-transition",
            DriveError::UnknownCluster { .. } => "unknown-cluster",
            DriveError::CurrentMaterial { .. } => "current-material",
            DriveError::NothingToDo(_) => "nothing-to-do",
            DriveError::NewRoot(_) => "new-root",
            DriveError::UnsafeForMesh(_) => "unsafe-for-mesh",
            DriveError::Unwritable { .. } => "invalid-material",
            DriveError::AlreadyUnderWay(_) => "under-way",
            DriveError::ChangedMeanwhile(_) => "changed-meanwhile",
            DriveError::Interrupted { .. } => "interrupted",
            DriveError::Stopped(_) => "stopped",
            DriveError::RootSwap(_) => "root-swap",
        }
    }
}

/// Wraps a cluster target's error with the cluster's name.
pub(crate) fn target_err(cluster: &str) -> impl FnOnce(TargetError) -> DriveError + '_ {
    move |source| DriveError::Target {
        cluster: cluster.to_string(),
        source,
    }
}

impl From<crate::root_store::rotation::RotationError> for DriveError {
    fn from(e: crate::root_store::rotation::RotationError) -> Self {
        use crate::root_store::rotation::RotationError;
        match e {
            RotationError::Refused(reason) => DriveError::NewRoot(reason),
            RotationError::Swap(e) => DriveError::RootSwap(e),
            RotationError::Io(e) => DriveError::Io(e),
        }
    }
}
