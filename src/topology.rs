//! The mesh as cacertd sees it: clusters, their roles, networks, and which primary serves
//! which remote (docs/istio.md §5: only primaries run istiod and need `cacerts`).

use std::path::PathBuf;

use serde::Serialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    Primary,
    Remote,
}

/// Where a cluster's `cacerts` goes.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum TargetConfig {
    /// A directory receiving the four PEM files and a `cacerts.yaml` manifest (GitOps, offline).
    /// `observe`: read-only access to the cluster the directory is applied to, from which a
    /// trust transition learns that the cluster took each phase (without it, an operator
    /// confirms each phase with `transition resume --approve`).
    Dir {
        path: PathBuf,
        #[serde(skip_serializing_if = "Option::is_none")]
        observe: Option<Observe>,
    },
    /// A Kubernetes cluster: Secret `istio-system/cacerts`. Without a kubeconfig, the default
    /// loading rules apply (KUBECONFIG, ~/.kube/config, then in-cluster configuration).
    Kube {
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
    },
    /// A Kubernetes cluster reached with the kubeconfig Istio keeps for it in another
    /// cluster's remote secrets (`istioctl create-remote-secret`: Secrets labelled
    /// `istio/multiCluster=true` in istio-system, one key per cluster name).
    KubeRemoteSecret { source: String, pin: RemotePin },
}

/// What a remote secret's kubeconfig must say, when `cacertd.toml` pins it: anyone who can
/// write Secrets in the source cluster's istio-system could otherwise point cacertd, and the
/// intermediate key it writes, at a server of their choosing.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct RemotePin {
    /// The API server's URL (`server = "https://…"`).
    pub server: Option<String>,
    /// A PEM file with the CA certificate(s) the kubeconfig must carry (`ca_file`).
    pub ca_file: Option<PathBuf>,
}

/// A kubeconfig (and context) that reads, never writes, the cluster a directory is applied to.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Observe {
    pub kubeconfig: PathBuf,
    pub context: Option<String>,
}

impl std::fmt::Display for TargetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            TargetConfig::Dir { path, observe } => {
                write!(f, "dir:{}", path.display())?;
                if let Some(o) = observe {
                    write!(f, " (observed with {})", o.kubeconfig.display())?;
                }
                Ok(())
            }
            TargetConfig::Kube {
                kubeconfig,
                context,
                ..
            } => {
                write!(f, "kube")?;
                if let Some(k) = kubeconfig {
                    write!(f, ":{}", k.display())?;
                }
                if let Some(c) = context {
                    write!(f, "#{c}")?;
                }
                Ok(())
            }
            TargetConfig::KubeRemoteSecret { source, .. } => {
                write!(f, "kube:remote-secret@{source}")
            }
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Cluster {
    pub name: String,
    pub role: Role,
    pub network: Option<String>,
    /// For a remote: the primary whose istiod signs its workloads.
    pub primary: Option<String>,
    pub target: Option<TargetConfig>,
    /// Name of the issuance policy for this cluster.
    pub policy: String,
}

/// A validated topology: names unique, every remote served by a primary of this topology,
/// every primary with a target. Built only by the config loader.
#[derive(Clone, Debug, Default)]
pub struct Topology {
    clusters: Vec<Cluster>,
}

impl Topology {
    pub(crate) fn new(clusters: Vec<Cluster>) -> Self {
        Topology { clusters }
    }

    pub fn clusters(&self) -> &[Cluster] {
        &self.clusters
    }

    pub fn get(&self, name: &str) -> Option<&Cluster> {
        self.clusters.iter().find(|c| c.name == name)
    }

    pub fn primaries(&self) -> impl Iterator<Item = &Cluster> {
        self.clusters.iter().filter(|c| c.role == Role::Primary)
    }

    pub fn remotes_of<'a>(&'a self, primary: &'a str) -> impl Iterator<Item = &'a Cluster> {
        self.clusters
            .iter()
            .filter(move |c| c.role == Role::Remote && c.primary.as_deref() == Some(primary))
    }

    pub fn networks(&self) -> Vec<&str> {
        let mut n: Vec<&str> = self
            .clusters
            .iter()
            .filter_map(|c| c.network.as_deref())
            .collect();
        n.sort_unstable();
        n.dedup();
        n
    }
}
