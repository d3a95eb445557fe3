//! Where a cluster's `cacerts` goes: a directory (GitOps, offline; the embedded default) or a
//! Kubernetes cluster.

mod dir;
mod kube;
mod manifest;
mod retention;
pub(crate) mod retry;
mod writer;

pub use dir::DirTarget;
pub use kube::access;
pub use kube::{
    BundleObjects, KubeTarget, LongestWorkloadCert, Proxy, RolloutKind, SigningLimits, Workload,
    longest_workload_cert,
};
pub use manifest::cacerts_secret_yaml;
pub use retention::{BackupEntry, Retention};
pub use writer::{CacertsWriter, Material, WriteError};

use time::OffsetDateTime;

use crate::config::Config;
use crate::fsutil::FsError;
use crate::pki::CaCertsFiles;
use crate::plan::Snapshot;
use crate::topology::{Cluster, TargetConfig};

#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("cluster {cluster} has no target configured")]
    NoTarget { cluster: String },
    #[error(
        "{target} holds cert-manager's tls.crt, which istiod uses in preference to ca-cert.pem: \
         what cacertd writes would be ignored. Hand the cluster to cacertd by removing the \
         cert-manager Certificate and its tls.* material first"
    )]
    ManagedByCertManager { target: String },
    #[error("{target}: cacerts changed since it was read ({detail})")]
    Conflict { target: String, detail: String },
    #[error("{target}: cannot load the Kubernetes client configuration: {message}")]
    KubeConfig { target: String, message: String },
    #[error("{target}: {action}: {message}")]
    Kube {
        target: String,
        action: String,
        message: String,
        /// HTTP status when the API server answered.
        code: Option<u16>,
    },
    #[error("{target}: {action}: refused: {reason}")]
    Refused {
        target: String,
        action: String,
        reason: String,
    },
    #[error("{target}: rollout of {workload} did not finish within {timeout}: {pending}")]
    RolloutTimeout {
        target: String,
        workload: String,
        timeout: String,
        pending: String,
    },
}

impl TargetError {
    /// A short, stable label for metrics and reports.
    pub fn kind(&self) -> &'static str {
        match self {
            TargetError::Io(_) => "io",
            TargetError::NoTarget { .. } => "no-target",
            TargetError::ManagedByCertManager { .. } => "cert-manager",
            TargetError::Conflict { .. } => "conflict",
            TargetError::KubeConfig { .. } => "kubeconfig",
            TargetError::Kube {
                code: Some(403), ..
            } => "forbidden",
            TargetError::Kube { code: Some(c), .. } if *c >= 500 => "server-error",
            TargetError::Kube { code: Some(_), .. } => "api-error",
            TargetError::Kube { code: None, .. } => "unreachable",
            TargetError::Refused { .. } => "refused",
            TargetError::RolloutTimeout { .. } => "rollout-timeout",
        }
    }
}

/// What a write records next to the material, so a human sees who wrote it, when and why.
#[derive(Clone, Debug)]
pub struct WriteMeta {
    pub cluster: String,
    pub serial: String,
    pub written_at: OffsetDateTime,
    pub reason: String,
    /// Backups beyond this rule are removed once the write is done; `None` during a trust
    /// transition, when every copy is kept.
    pub retention: Option<Retention>,
}

/// Where the replaced material went, and which old backups went.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct WriteReport {
    pub backup: Option<String>,
    /// Old backups removed by `[backups]`.
    pub pruned: Vec<String>,
    /// Why backups due for removal were kept (the write itself succeeded).
    pub prune_problem: Option<String>,
}

/// What was read, and the version a write must start from (optimistic concurrency).
#[derive(Clone, Debug, Default)]
pub struct Observed {
    pub snapshot: Snapshot,
    /// Kubernetes: the resourceVersion of `cacerts` (`None`: it did not exist).
    pub version: Option<String>,
}

/// A cluster's target.
pub enum Target {
    Dir(DirTarget),
    Kube(KubeTarget),
}

impl Target {
    /// Opens the target of a cluster. Backups of directory targets go under
    /// `state_dir/backups/<cluster>`.
    pub async fn open(cluster: &Cluster, config: &Config) -> Result<Self, TargetError> {
        let (state_dir, settings) = (&config.state_dir, &config.kubernetes);
        match &cluster.target {
            Some(TargetConfig::Dir { path, .. }) => Ok(Target::Dir(DirTarget::new(
                path.clone(),
                state_dir.join("backups").join(&cluster.name),
            ))),
            Some(TargetConfig::Kube {
                kubeconfig,
                context,
            }) => Ok(Target::Kube(
                KubeTarget::connect(
                    &cluster.name,
                    kubeconfig.as_deref(),
                    context.as_deref(),
                    settings,
                )
                .await?,
            )),
            Some(TargetConfig::KubeRemoteSecret { source, pin }) => {
                let source_cluster =
                    config
                        .topology
                        .get(source)
                        .ok_or_else(|| TargetError::NoTarget {
                            cluster: source.clone(),
                        })?;
                let Some(TargetConfig::Kube {
                    kubeconfig,
                    context,
                }) = &source_cluster.target
                else {
                    return Err(TargetError::NoTarget {
                        cluster: source.clone(),
                    });
                };
                let via = KubeTarget::connect(
                    source,
                    kubeconfig.as_deref(),
                    context.as_deref(),
                    settings,
                )
                .await?;
                Ok(Target::Kube(
                    KubeTarget::connect_via_remote_secret(&cluster.name, &via, pin, settings)
                        .await?,
                ))
            }
            None => Err(TargetError::NoTarget {
                cluster: cluster.name.clone(),
            }),
        }
    }

    pub fn describe(&self) -> String {
        match self {
            Target::Dir(d) => d.describe(),
            Target::Kube(k) => k.describe(),
        }
    }

    pub async fn read(&self) -> Result<Observed, TargetError> {
        match self {
            Target::Dir(d) => Ok(Observed {
                snapshot: Snapshot::of(d.read()?),
                version: None,
            }),
            Target::Kube(k) => k.read().await,
        }
    }

    /// Replaces the set, starting from `observed` (a concurrent change in between is a
    /// [`TargetError::Conflict`]); what is replaced is backed up first. Only
    /// [`CacertsWriter`] calls this.
    async fn write(
        &self,
        files: &CaCertsFiles,
        meta: &WriteMeta,
        observed: &Observed,
    ) -> Result<WriteReport, TargetError> {
        match self {
            Target::Dir(d) => d.write(files, meta).await,
            Target::Kube(k) => k.write(files, meta, observed).await,
        }
    }
}
