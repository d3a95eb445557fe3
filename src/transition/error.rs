//! What stops a trust transition, for the driver, the record stores and the CLI alike.

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
    /// Refused before anything changed.
    #[error("{0}")]
    Refused(String),
    /// The transition stopped; the record says where.
    #[error("{0}")]
    Stopped(String),
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
            RotationError::Refused(reason) => DriveError::Refused(reason),
            swap @ RotationError::Swap(_) => DriveError::Stopped(swap.to_string()),
            RotationError::Io(e) => DriveError::Io(e),
        }
    }
}
