//! The configuration file as serde reads it: each section raw, with spans for errors.

use std::path::PathBuf;

use serde::Deserialize;
use toml::Spanned;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawConfig {
    pub(super) trust_domain: Spanned<String>,
    pub(super) state_dir: Spanned<PathBuf>,
    pub(super) policies_dir: Option<PathBuf>,
    pub(super) policy: Option<Spanned<String>>,
    pub(super) root: Option<RawRoot>,
    pub(super) kubernetes: Option<RawKube>,
    pub(super) vault: Option<Spanned<RawVault>>,
    pub(super) daemon: Option<Spanned<RawDaemon>>,
    pub(super) transition: Option<Spanned<RawTransition>>,
    pub(super) backups: Option<Spanned<RawBackups>>,
    /// PEM files of roots every cluster may trust besides the common root.
    pub(super) extra_trusted_roots: Option<Spanned<Vec<PathBuf>>>,
    #[serde(default)]
    pub(super) clusters: Vec<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBackups {
    pub(super) keep: Option<usize>,
    pub(super) max_age: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawDaemon {
    pub(super) listen: Option<String>,
    pub(super) interval: Option<String>,
    pub(super) jitter: Option<f64>,
    pub(super) backoff_max: Option<String>,
    pub(super) audit_log: Option<PathBuf>,
    pub(super) lease: Option<RawLease>,
    pub(super) log_format: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawTransition {
    pub(super) drain: Option<String>,
    pub(super) gate_timeout: Option<String>,
    pub(super) record: Option<String>,
    pub(super) record_secret: Option<String>,
    pub(super) exclude_namespaces: Option<Vec<String>>,
    pub(super) max_parallel: Option<u16>,
    pub(super) list_propagation: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawLease {
    pub(super) kubeconfig: Option<PathBuf>,
    pub(super) context: Option<String>,
    pub(super) namespace: Option<String>,
    pub(super) name: Option<String>,
    pub(super) duration: Option<String>,
    pub(super) grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawVault {
    pub(super) address: Option<String>,
    pub(super) ca_cert: Option<PathBuf>,
    pub(super) namespace: Option<String>,
    pub(super) timeout: Option<String>,
    pub(super) auth: Option<RawVaultAuth>,
}

#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawVaultAuth {
    Token {
        token_file: Option<PathBuf>,
    },
    AppRole {
        mount: Option<String>,
        role_id: String,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: Option<String>,
        role: String,
        jwt_file: Option<PathBuf>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawKube {
    pub(super) timeout: Option<Spanned<String>>,
    pub(super) retries: Option<u32>,
    pub(super) concurrency: Option<Spanned<usize>>,
    pub(super) rollout_timeout: Option<Spanned<String>>,
    pub(super) danger_insecure_transport: Option<bool>,
}

#[derive(Deserialize)]
#[serde(tag = "store", rename_all = "kebab-case", deny_unknown_fields)]
pub(super) enum RawRoot {
    File {
        dir: Option<PathBuf>,
    },
    VaultKv {
        mount: Option<String>,
        path: Option<String>,
    },
    VaultPki {
        mount: Option<String>,
        issuer: Option<String>,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawCluster {
    pub(super) name: Spanned<String>,
    pub(super) role: Spanned<RawRole>,
    pub(super) network: Option<String>,
    pub(super) primary: Option<Spanned<String>>,
    pub(super) target: Option<Spanned<RawTarget>>,
    pub(super) policy: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub(super) enum RawRole {
    Primary,
    Remote,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
pub(super) enum RawTarget {
    Dir {
        path: PathBuf,
        /// A kubeconfig reading the cluster the directory is applied to.
        observe: Option<PathBuf>,
        observe_context: Option<String>,
    },
    Kube {
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        remote_secret_from: Option<String>,
        /// With `remote_secret_from`: the server URL its kubeconfig must name.
        server: Option<String>,
        /// With `remote_secret_from`: the CA its kubeconfig must carry.
        ca_file: Option<PathBuf>,
    },
}
