//! The configuration file (`cacertd.toml`). Paths inside it are relative to the file itself.
//! Every error names the file, and where it can, the line and the field.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::policy::{PolicyError, PolicySet};

mod clusters;
mod raw;
mod sections;
mod vault_address;

pub use vault_address::{check_vault_address, url_for_messages};

use crate::topology::{Cluster, Role, TargetConfig, Topology};
use raw::*;
use sections::Sections;

/// For a config file that is not there: where cacertd looks for one.
fn missing_hint(e: &std::io::Error) -> &'static str {
    match e.kind() {
        std::io::ErrorKind::NotFound => {
            " (name the file with -c FILE or the CACERTD_CONFIG environment variable; without \
             either, cacertd reads cacertd.toml in the current directory)"
        }
        _ => "",
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {source}{hint}", hint = missing_hint(source))]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("config {file}: {message}")]
    Parse { file: PathBuf, message: String },
    #[error("config {file}:{line}: {field}: {message}")]
    Invalid {
        file: PathBuf,
        line: usize,
        field: String,
        message: String,
    },
    #[error("config {file}: {0}", file = .1.display())]
    Policy(#[source] PolicyError, PathBuf),
}

/// Where the common root lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RootStoreConfig {
    /// Files under `<state_dir>/root` (the embedded default).
    File { dir: PathBuf },
    /// A KV v2 secret in Vault holding certificate and key.
    VaultKv { mount: String, path: String },
    /// Vault's PKI engine; the key never leaves it.
    VaultPki {
        mount: String,
        issuer: Option<String>,
    },
}

/// How cacertd talks to Kubernetes clusters (`[kubernetes]`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KubeSettings {
    /// Per API call: connect, read and write timeouts.
    pub timeout: Duration,
    /// Retries of a call that failed with a 5xx, 429, timeout or connection error.
    pub retries: u32,
    /// Clusters worked on at once.
    pub concurrency: usize,
    /// How long to wait for a rollout to finish.
    pub rollout_timeout: Duration,
    /// `danger_insecure_transport = true`: accept local kubeconfigs that reach a cluster
    /// without verified TLS (`http://`, `insecure-skip-tls-verify`), over which the
    /// intermediate key and the credentials could be read or changed on the way. A remote
    /// secret's kubeconfig is never accepted so.
    pub insecure_transport: bool,
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            timeout: Duration::from_secs(10),
            retries: 3,
            concurrency: 8,
            rollout_timeout: Duration::from_secs(300),
            insecure_transport: false,
        }
    }
}

/// `[daemon]`: how `cacertd serve` runs.
#[derive(Clone, Debug, PartialEq)]
pub struct DaemonSettings {
    /// Where /metrics, /healthz, /readyz and /status are served.
    pub listen: std::net::SocketAddr,
    /// How often every cluster is reconciled (sooner when a renewal falls due).
    pub interval: Duration,
    /// Random spread added to each interval, as a fraction of it.
    pub jitter: f64,
    /// Longest wait before retrying a failing cluster (the wait doubles from 10 s).
    pub backoff_max: Duration,
    /// The append-only audit log (JSON lines).
    pub audit_log: PathBuf,
    /// Leader election with a Kubernetes Lease (several replicas); `None`: a lock file on
    /// `state_dir` (one machine).
    pub lease: Option<LeaseSettings>,
    /// How log lines are written when neither `--log-format` nor `CACERTD_LOG_FORMAT` says.
    pub log_format: LogFormat,
}

/// `[daemon] log_format`: log lines as text, or one JSON object per line.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The `[daemon] log_format` of the configuration at `path`, if it loads: logging starts
/// before a command reads its configuration (which then reports any error itself).
pub fn log_format_of(path: &Path) -> Option<LogFormat> {
    Config::load(path).ok().map(|c| c.daemon.log_format)
}

/// `[daemon] lease`: the Lease replicas contend for, in the management cluster.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaseSettings {
    pub kubeconfig: Option<PathBuf>,
    pub context: Option<String>,
    pub namespace: String,
    pub name: String,
    /// How long a lease lasts without renewal; a standby takes over after it.
    pub duration: Duration,
    /// How long before expiry the leader renews (and stops acting if it cannot).
    pub grace: Duration,
}

/// `[transition]`: how trust transitions (`migrate`, `rotate-root`) run.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TransitionSettings {
    /// How long the old root stays trusted after every cluster switched signer: at least the
    /// longest workload certificate lifetime (Istio's default: 24 h).
    pub drain: Duration,
    /// How long a phase's gate may wait for every cluster before the transition fails.
    pub gate_timeout: Duration,
    /// Where the transition record (and the material it moves between) is kept.
    pub record: RecordLocation,
    /// Namespaces whose workloads a transition does not restart (their owners do, before the
    /// drain ends). Their `istio-ca-root-cert` is still checked: istiod publishes it anyway.
    pub exclude_namespaces: Vec<String>,
    /// How many clusters a transition writes and restarts at once within a phase.
    pub max_parallel: usize,
    /// How long a revocation's gates give kubelet to update the revocation lists mounted in
    /// every pod once istiod published them (its sync period and ConfigMap cache).
    pub list_propagation: Duration,
}

/// `[transition] record`: where a transition's record lives.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum RecordLocation {
    /// `<state_dir>/transition/` (local mode).
    StateDir,
    /// Secrets in the management cluster named by `[daemon] lease` (in its namespace): the
    /// default when a Lease is configured, so every replica and the CLI share one record.
    Kubernetes {
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        namespace: String,
        /// The record Secret; each primary's material is in `<name>-<cluster>`.
        name: String,
    },
}

impl Default for TransitionSettings {
    fn default() -> Self {
        TransitionSettings {
            drain: Duration::from_secs(24 * 3600),
            gate_timeout: Duration::from_secs(30 * 60),
            record: RecordLocation::StateDir,
            exclude_namespaces: Vec::new(),
            max_parallel: 1,
            list_propagation: Duration::from_secs(180),
        }
    }
}

/// `[backups]`: the newest `keep` backups of each cluster's `cacerts` are kept, none older
/// than `max_age` (the whole rule is `to_remove`'s, in src/cluster/retention.rs).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Retention {
    pub keep: usize,
    pub max_age: Option<Duration>,
}

impl Default for Retention {
    fn default() -> Self {
        Retention {
            keep: 10,
            max_age: None,
        }
    }
}

/// A loaded, validated configuration.
#[derive(Clone, Debug)]
pub struct Config {
    pub file: PathBuf,
    pub trust_domain: String,
    pub state_dir: PathBuf,
    pub policies: PolicySet,
    pub default_policy: String,
    pub root: RootStoreConfig,
    pub topology: Topology,
    pub kubernetes: KubeSettings,
    pub vault: Option<VaultSettings>,
    pub daemon: DaemonSettings,
    pub transition: TransitionSettings,
    /// `[backups]`: how many backups of each cluster's `cacerts` are kept, for how long.
    pub backups: Retention,
    /// Roots the security team chose to have trusted besides the common root
    /// (`extra_trusted_roots`, e.g. another mesh's root for federation): a bundle holding them
    /// is not flagged, and `issue` carries them forward.
    pub extra_roots: Vec<crate::pki::Cert>,
}

/// The trust domain and `state_dir`, checked.
fn top_level(sections: &Sections, raw: &RawConfig) -> Result<(String, PathBuf), ConfigError> {
    let trust_domain = raw.trust_domain.get_ref().trim().to_string();
    if trust_domain.is_empty() || trust_domain.contains(['/', ' ', ':']) {
        return Err(sections.invalid(
            raw.trust_domain.span(),
            "trust_domain".into(),
            format!(
                "{:?} is not a valid SPIFFE trust domain",
                raw.trust_domain.get_ref()
            ),
        ));
    }
    if raw.state_dir.get_ref().as_os_str().is_empty() {
        return Err(sections.invalid(
            raw.state_dir.span(),
            "state_dir".into(),
            "must not be empty".into(),
        ));
    }
    Ok((trust_domain, sections.resolve(raw.state_dir.get_ref())))
}

/// The policies (`policies_dir`, or the built-in ones) and the name of the default one, which
/// must exist.
fn policies(sections: &Sections, raw: &RawConfig) -> Result<(PolicySet, String), ConfigError> {
    let file = sections.file;
    let policies = match &raw.policies_dir {
        Some(dir) => PolicySet::load_dir(&sections.resolve(dir)),
        None => PolicySet::embedded(),
    }
    .map_err(|e| ConfigError::Policy(e, file.to_path_buf()))?;
    let default_policy = match &raw.policy {
        Some(p) => {
            policies
                .get(p.get_ref())
                .map_err(|e| sections.invalid(p.span(), "policy".into(), e.to_string()))?;
            p.get_ref().clone()
        }
        None => {
            policies
                .get("default")
                .map_err(|e| ConfigError::Policy(e, file.to_path_buf()))?;
            "default".to_string()
        }
    };
    Ok((policies, default_policy))
}

/// What no cluster's target may overlap: the state, the file root store, the audit log.
fn kept_apart(
    state_dir: &Path,
    root: &RootStoreConfig,
    daemon: &DaemonSettings,
) -> Vec<clusters::Apart> {
    let mut apart = vec![clusters::Apart {
        what: "state_dir",
        path: state_dir.to_path_buf(),
        why: "the state (root, backups, transitions)",
    }];
    if let RootStoreConfig::File { dir } = root {
        apart.push(clusters::Apart {
            what: "the root store",
            path: dir.clone(),
            why: "the root key",
        });
    }
    apart.push(clusters::Apart {
        what: "the audit log",
        path: daemon.audit_log.clone(),
        why: "the audit log",
    });
    apart
}

impl Config {
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Config::parse(&text, file)
    }

    /// Parses config text as if read from `file` (relative paths resolve against its folder).
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Parse {
            file: file.to_path_buf(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let base = file.parent().unwrap_or(Path::new("."));
        let base = if base.as_os_str().is_empty() {
            Path::new(".")
        } else {
            base
        };
        let sections = Sections { text, file, base };
        let (trust_domain, state_dir) = top_level(&sections, &raw)?;
        let (policies, default_policy) = policies(&sections, &raw)?;
        let root = sections.root(raw.root, &state_dir);
        let vault = sections.vault(raw.vault)?;
        let daemon = sections.daemon(raw.daemon, &state_dir)?;
        let apart = kept_apart(&state_dir, &root, &daemon);
        let clusters = sections.clusters(&raw.clusters, &policies, &default_policy, &apart)?;
        let kubernetes = sections.kubernetes(raw.kubernetes)?;
        let transition = sections.transition(raw.transition, &daemon)?;
        let backups = sections.backups(raw.backups)?;
        let extra_roots = match &raw.extra_trusted_roots {
            Some(files) => sections.extra_roots(files)?,
            None => Vec::new(),
        };

        Ok(Config {
            file: file.to_path_buf(),
            trust_domain,
            state_dir,
            policies,
            default_policy,
            root,
            topology: Topology::new(clusters),
            kubernetes,
            vault,
            daemon,
            transition,
            backups,
            extra_roots,
        })
    }

    /// The policy that governs the root (the config's top-level `policy`).
    pub fn root_policy(&self) -> &crate::policy::Policy {
        // Checked to exist when the config was loaded.
        #[allow(clippy::expect_used)]
        self.policies
            .get(&self.default_policy)
            .expect("default policy checked at load")
    }

    /// What a primary's `cacerts` is judged against: `root` the trust anchor, `signing_ca`
    /// the CA that issues intermediates now (the mesh CA, or the root itself).
    pub fn expected<'a>(
        &'a self,
        cluster: &'a Cluster,
        (root, signing_ca): (Option<&'a crate::pki::Cert>, Option<&'a crate::pki::Cert>),
    ) -> crate::plan::Expected<'a> {
        crate::plan::Expected {
            root,
            signing_ca,
            policy: self.policy_for(cluster),
            cluster: &cluster.name,
            trust_domain: &self.trust_domain,
            known_roots: &self.extra_roots,
        }
    }

    /// The policy of one cluster.
    pub fn policy_for(&self, cluster: &Cluster) -> &crate::policy::Policy {
        // Every cluster's policy was checked to exist when the config was loaded.
        #[allow(clippy::expect_used)]
        self.policies
            .get(&cluster.policy)
            .expect("cluster policy checked at load")
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// How cacertd authenticates to Vault.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VaultAuth {
    /// A token from `token_file`, else VAULT_TOKEN.
    Token { token_file: Option<PathBuf> },
    AppRole {
        mount: String,
        role_id: String,
        secret_id_file: PathBuf,
    },
    Kubernetes {
        mount: String,
        role: String,
        jwt_file: PathBuf,
    },
}

/// `[vault]`: where Vault is and how to log in. Unset fields fall back to VAULT_ADDR,
/// VAULT_CACERT and VAULT_NAMESPACE.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct VaultSettings {
    pub address: Option<String>,
    pub ca_cert: Option<PathBuf>,
    pub namespace: Option<String>,
    pub timeout: Duration,
    pub auth: VaultAuth,
}

#[cfg(test)]
mod tests;
