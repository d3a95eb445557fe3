//! Where a cluster's `cacerts` goes. The directory target is the embedded default (GitOps,
//! offline); the Kubernetes target plugs in behind the same trait.

mod dir;
mod manifest;

pub use dir::DirTarget;
pub use manifest::cacerts_secret_yaml;

use std::path::Path;

use time::OffsetDateTime;

use crate::fsutil::FsError;
use crate::pki::CaCertsFiles;
use crate::topology::{Cluster, TargetConfig};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("cluster {cluster} has no target configured")]
    NoTarget { cluster: String },
    #[error(
        "{dir} holds cert-manager's tls.crt, which istiod uses in preference to ca-cert.pem: \
         files written by cacertd would be ignored. Move the tls.* files away to hand this \
         cluster to cacertd"
    )]
    ManagedByCertManager { dir: String },
}

/// What a write records next to the material, so a human sees who wrote it, when and why.
#[derive(Clone, Debug)]
pub struct WriteMeta {
    pub cluster: String,
    pub serial: String,
    pub written_at: OffsetDateTime,
    pub reason: String,
}

/// Where the replaced material went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub backup: Option<String>,
}

/// A cluster's `cacerts`: read what is there, write a new set keeping the old one recoverable.
pub trait ClusterTarget {
    fn describe(&self) -> String;
    /// The current set, `None` if the cluster has none. Partial sets are returned with the
    /// missing files empty, so validation can name them.
    fn read(&self) -> Result<Option<CaCertsFiles>, TargetError>;
    /// Replaces the set; any previous set is backed up first.
    fn write(&self, files: &CaCertsFiles, meta: &WriteMeta) -> Result<WriteReport, TargetError>;
}

/// Opens the target of a cluster. Backups of directory targets go under `state_dir/backups`.
pub fn open(cluster: &Cluster, state_dir: &Path) -> Result<Box<dyn ClusterTarget>, TargetError> {
    match &cluster.target {
        Some(TargetConfig::Dir { path }) => Ok(Box::new(DirTarget::new(
            path.clone(),
            state_dir.join("backups").join(&cluster.name),
        ))),
        None => Err(TargetError::NoTarget {
            cluster: cluster.name.clone(),
        }),
    }
}
