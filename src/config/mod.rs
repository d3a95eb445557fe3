//! The configuration file (`cacertd.toml`). Paths inside it are relative to the file itself.
//! Every error names the file, and where it can, the line and the field.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use toml::Spanned;

use crate::policy::{PolicyError, PolicySet};
use crate::topology::{Cluster, Role, TargetConfig, Topology};

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config {file}: {source}")]
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
}

impl Default for KubeSettings {
    fn default() -> Self {
        KubeSettings {
            timeout: Duration::from_secs(10),
            retries: 3,
            concurrency: 8,
            rollout_timeout: Duration::from_secs(300),
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
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    trust_domain: Spanned<String>,
    state_dir: Spanned<PathBuf>,
    policies_dir: Option<PathBuf>,
    policy: Option<Spanned<String>>,
    root: Option<RawRoot>,
    kubernetes: Option<RawKube>,
    vault: Option<Spanned<RawVault>>,
    daemon: Option<Spanned<RawDaemon>>,
    transition: Option<Spanned<RawTransition>>,
    #[serde(default)]
    clusters: Vec<RawCluster>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDaemon {
    listen: Option<String>,
    interval: Option<String>,
    jitter: Option<f64>,
    backoff_max: Option<String>,
    audit_log: Option<PathBuf>,
    lease: Option<RawLease>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTransition {
    drain: Option<String>,
    gate_timeout: Option<String>,
    record: Option<String>,
    record_secret: Option<String>,
    exclude_namespaces: Option<Vec<String>>,
    max_parallel: Option<u16>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLease {
    kubeconfig: Option<PathBuf>,
    context: Option<String>,
    namespace: Option<String>,
    name: Option<String>,
    duration: Option<String>,
    grace: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVault {
    address: Option<String>,
    ca_cert: Option<PathBuf>,
    namespace: Option<String>,
    timeout: Option<String>,
    auth: Option<RawVaultAuth>,
}

#[derive(Deserialize)]
#[serde(tag = "method", rename_all = "lowercase", deny_unknown_fields)]
enum RawVaultAuth {
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
struct RawKube {
    timeout: Option<Spanned<String>>,
    retries: Option<u32>,
    concurrency: Option<Spanned<usize>>,
    rollout_timeout: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(tag = "store", rename_all = "kebab-case", deny_unknown_fields)]
enum RawRoot {
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
struct RawCluster {
    name: Spanned<String>,
    role: Spanned<RawRole>,
    network: Option<String>,
    primary: Option<Spanned<String>>,
    target: Option<Spanned<RawTarget>>,
    policy: Option<Spanned<String>>,
}

#[derive(Deserialize, Clone, Copy, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
enum RawRole {
    Primary,
    Remote,
}

#[derive(Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase", deny_unknown_fields)]
enum RawTarget {
    Dir {
        path: PathBuf,
    },
    Kube {
        kubeconfig: Option<PathBuf>,
        context: Option<String>,
        remote_secret_from: Option<String>,
    },
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
        let resolve = |p: &Path| sections.resolve(p);
        let invalid = |span: std::ops::Range<usize>, field: String, message: String| {
            sections.invalid(span, field, message)
        };

        let trust_domain = raw.trust_domain.get_ref().trim().to_string();
        if trust_domain.is_empty() || trust_domain.contains(['/', ' ', ':']) {
            return Err(invalid(
                raw.trust_domain.span(),
                "trust_domain".into(),
                format!(
                    "{:?} is not a valid SPIFFE trust domain",
                    raw.trust_domain.get_ref()
                ),
            ));
        }
        if raw.state_dir.get_ref().as_os_str().is_empty() {
            return Err(invalid(
                raw.state_dir.span(),
                "state_dir".into(),
                "must not be empty".into(),
            ));
        }
        let state_dir = resolve(raw.state_dir.get_ref());

        let policies = match &raw.policies_dir {
            Some(dir) => PolicySet::load_dir(&resolve(dir)),
            None => PolicySet::embedded(),
        }
        .map_err(|e| ConfigError::Policy(e, file.to_path_buf()))?;
        let default_policy = match &raw.policy {
            Some(p) => {
                policies
                    .get(p.get_ref())
                    .map_err(|e| invalid(p.span(), "policy".into(), e.to_string()))?;
                p.get_ref().clone()
            }
            None => {
                policies
                    .get("default")
                    .map_err(|e| ConfigError::Policy(e, file.to_path_buf()))?;
                "default".to_string()
            }
        };

        let root = sections.root(raw.root, &state_dir);
        let vault = sections.vault(raw.vault)?;
        let clusters = sections.clusters(&raw.clusters, &policies, &default_policy, &state_dir)?;
        let kubernetes = sections.kubernetes(raw.kubernetes)?;
        let daemon = sections.daemon(raw.daemon, &state_dir)?;
        let transition = sections.transition(raw.transition, &daemon)?;

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

    /// What a primary's `cacerts` is judged against.
    pub fn expected<'a>(
        &'a self,
        cluster: &'a Cluster,
        root: Option<&'a crate::pki::Cert>,
    ) -> crate::plan::Expected<'a> {
        crate::plan::Expected {
            root,
            policy: self.policy_for(cluster),
            cluster: &cluster.name,
            trust_domain: &self.trust_domain,
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

const DEFAULT_RECORD_SECRET: &str = "cacertd-transition";

/// Builds each section of the configuration from its raw form: paths resolved against the
/// file's folder, every error naming the field and its line.
struct Sections<'a> {
    text: &'a str,
    file: &'a Path,
    base: &'a Path,
}

impl Sections<'_> {
    fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    fn invalid(&self, span: std::ops::Range<usize>, field: String, message: String) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: line_of(self.text, span.start),
            field,
            message,
        }
    }

    /// `[root]`: the file store under `state_dir` unless told otherwise.
    fn root(&self, raw: Option<RawRoot>, state_dir: &Path) -> RootStoreConfig {
        match raw {
            None | Some(RawRoot::File { dir: None }) => RootStoreConfig::File {
                dir: state_dir.join("root"),
            },
            Some(RawRoot::File { dir: Some(d) }) => RootStoreConfig::File {
                dir: self.resolve(&d),
            },
            Some(RawRoot::VaultKv { mount, path }) => RootStoreConfig::VaultKv {
                mount: mount.unwrap_or_else(|| "secret".into()),
                path: path.unwrap_or_else(|| "cacertd/root".into()),
            },
            Some(RawRoot::VaultPki { mount, issuer }) => RootStoreConfig::VaultPki {
                mount: mount.unwrap_or_else(|| "pki".into()),
                issuer,
            },
        }
    }

    /// `[vault]`.
    fn vault(&self, raw: Option<Spanned<RawVault>>) -> Result<Option<VaultSettings>, ConfigError> {
        let vault = match raw {
            None => None,
            Some(v) => {
                let span = v.span();
                let v = v.into_inner();
                let timeout = match &v.timeout {
                    Some(t) => humantime::parse_duration(t)
                        .ok()
                        .filter(|d| !d.is_zero())
                        .ok_or_else(|| {
                            self.invalid(
                                span.clone(),
                                "vault.timeout".into(),
                                format!("{t:?} is not a positive duration"),
                            )
                        })?,
                    None => Duration::from_secs(10),
                };
                let auth = match v.auth {
                    None | Some(RawVaultAuth::Token { token_file: None }) => {
                        VaultAuth::Token { token_file: None }
                    }
                    Some(RawVaultAuth::Token {
                        token_file: Some(f),
                    }) => VaultAuth::Token {
                        token_file: Some(self.resolve(&f)),
                    },
                    Some(RawVaultAuth::AppRole {
                        mount,
                        role_id,
                        secret_id_file,
                    }) => VaultAuth::AppRole {
                        mount: mount.unwrap_or_else(|| "approle".into()),
                        role_id,
                        secret_id_file: self.resolve(&secret_id_file),
                    },
                    Some(RawVaultAuth::Kubernetes {
                        mount,
                        role,
                        jwt_file,
                    }) => VaultAuth::Kubernetes {
                        mount: mount.unwrap_or_else(|| "kubernetes".into()),
                        role,
                        jwt_file: jwt_file.map(|f| self.resolve(&f)).unwrap_or_else(|| {
                            PathBuf::from("/var/run/secrets/kubernetes.io/serviceaccount/token")
                        }),
                    },
                };
                Some(VaultSettings {
                    address: v.address,
                    ca_cert: v.ca_cert.map(|c| self.resolve(&c)),
                    namespace: v.namespace,
                    timeout,
                    auth,
                })
            }
        };
        Ok(vault)
    }

    /// `[[clusters]]`: names, roles, targets and policies, then what refers to what.
    fn clusters(
        &self,
        raw: &[RawCluster],
        policies: &PolicySet,
        default_policy: &str,
        state_dir: &Path,
    ) -> Result<Vec<Cluster>, ConfigError> {
        let mut seen: HashMap<String, usize> = HashMap::new();
        let mut dir_targets: HashMap<PathBuf, String> = HashMap::new();
        let mut clusters = Vec::new();
        for (i, rc) in raw.iter().enumerate() {
            let cluster = self.cluster(
                i,
                rc,
                (policies, default_policy),
                state_dir,
                (&mut seen, &mut dir_targets),
            )?;
            clusters.push(cluster);
        }
        self.check_references(raw, &clusters)?;
        Ok(clusters)
    }

    /// One `[[clusters]]` entry; `seen` holds the names so far and `dir_targets` the
    /// directories already written to.
    fn cluster(
        &self,
        i: usize,
        rc: &RawCluster,
        (policies, default_policy): (&PolicySet, &str),
        state_dir: &Path,
        (seen, dir_targets): (&mut HashMap<String, usize>, &mut HashMap<PathBuf, String>),
    ) -> Result<Cluster, ConfigError> {
        let field = |f: &str| format!("clusters[{i}].{f}");
        let name = rc.name.get_ref().clone();
        if !valid_cluster_name(&name) {
            return Err(self.invalid(
                rc.name.span(),
                field("name"),
                format!(
                    "{name:?} is not a valid cluster name (letters, digits, '-', '_' and '.', starting with a letter or digit, at most 63 characters)"
                ),
            ));
        }
        if let Some(first) = seen.insert(name.clone(), i) {
            return Err(self.invalid(
                rc.name.span(),
                field("name"),
                format!("duplicate cluster name {name:?} (already used by clusters[{first}])"),
            ));
        }
        let role = match rc.role.get_ref() {
            RawRole::Primary => Role::Primary,
            RawRole::Remote => Role::Remote,
        };
        let target = rc.target.as_ref().map(|t| match t.get_ref() {
            RawTarget::Dir { path } => TargetConfig::Dir {
                path: self.resolve(path),
            },
            RawTarget::Kube {
                kubeconfig,
                context,
                remote_secret_from: Some(source),
            } if kubeconfig.is_none() && context.is_none() => TargetConfig::KubeRemoteSecret {
                source: source.clone(),
            },
            RawTarget::Kube {
                kubeconfig,
                context,
                ..
            } => TargetConfig::Kube {
                kubeconfig: kubeconfig.as_deref().map(|p| self.resolve(p)),
                context: context.clone(),
            },
        });
        if let Some(t) = &rc.target
            && let RawTarget::Kube {
                kubeconfig,
                context,
                remote_secret_from: Some(_),
            } = t.get_ref()
            && (kubeconfig.is_some() || context.is_some())
        {
            return Err(self.invalid(
                t.span(),
                field("target"),
                "remote_secret_from takes the kubeconfig from Istio's remote secret; \
                         do not also give kubeconfig or context"
                    .into(),
            ));
        }
        match role {
            Role::Primary => {
                if let Some(p) = &rc.primary {
                    return Err(self.invalid(
                        p.span(),
                        field("primary"),
                        format!("{name} is a primary; only remote clusters name a primary"),
                    ));
                }
                if target.is_none() {
                    return Err(self.invalid(
                        rc.name.span(),
                        field("target"),
                        format!(
                            "primary {name} needs a target, e.g. target = {{ kind = \"dir\", path = \"out/{name}\" }}"
                        ),
                    ));
                }
            }
            Role::Remote => {
                if rc.primary.is_none() {
                    return Err(self.invalid(
                        rc.name.span(),
                        field("primary"),
                        format!(
                            "remote {name} must name the primary cluster whose istiod serves it"
                        ),
                    ));
                }
            }
        }
        if let (Some(TargetConfig::Dir { path }), Some(t)) = (&target, &rc.target) {
            let key = normalize(path);
            if overlaps(&key, &normalize(state_dir)) {
                return Err(self.invalid(
                    t.span(),
                    field("target.path"),
                    format!(
                        "{} overlaps state_dir {}; cacerts and the root store must live apart",
                        path.display(),
                        state_dir.display()
                    ),
                ));
            }
            if let Some((_, other)) = dir_targets.iter().find(|(p, _)| overlaps(p, &key)) {
                return Err(self.invalid(
                    t.span(),
                    field("target.path"),
                    format!("{name} and {other} write to the same or nested directories"),
                ));
            }
            dir_targets.insert(key, name.clone());
        }
        let policy = match &rc.policy {
            Some(p) => {
                policies
                    .get(p.get_ref())
                    .map_err(|e| self.invalid(p.span(), field("policy"), e.to_string()))?;
                p.get_ref().clone()
            }
            None => default_policy.to_string(),
        };
        Ok(Cluster {
            name,
            role,
            network: rc.network.clone(),
            primary: rc.primary.as_ref().map(|p| p.get_ref().clone()),
            target,
            policy,
        })
    }

    /// What clusters refer to: remote-secret sources and the primaries of remotes must be
    /// clusters of this file of the right kind.
    fn check_references(
        &self,
        raw: &[RawCluster],
        clusters: &[Cluster],
    ) -> Result<(), ConfigError> {
        // Remote-secret targets must name a cluster reached directly with a kubeconfig.
        for (i, rc) in raw.iter().enumerate() {
            let Some(t) = &rc.target else { continue };
            let RawTarget::Kube {
                remote_secret_from: Some(source),
                ..
            } = t.get_ref()
            else {
                continue;
            };
            let ok = clusters
                .iter()
                .find(|c| c.name == *source)
                .is_some_and(|c| matches!(c.target, Some(TargetConfig::Kube { .. })));
            if !ok || source == rc.name.get_ref() {
                return Err(self.invalid(
                    t.span(),
                    format!("clusters[{i}].target.remote_secret_from"),
                    format!(
                        "{source:?} must be another cluster of this file with a kube target given by kubeconfig/context"
                    ),
                ));
            }
        }
        // Second pass: remotes must point at a primary defined in this file.
        for (i, rc) in raw.iter().enumerate() {
            let Some(p) = &rc.primary else { continue };
            let target = clusters.iter().find(|c| c.name == *p.get_ref());
            let problem = match target {
                None => Some("is not defined in this file"),
                Some(c) if c.role != Role::Primary => Some("is not a primary"),
                Some(_) => None,
            };
            if let Some(problem) = problem {
                return Err(self.invalid(
                    p.span(),
                    format!("clusters[{i}].primary"),
                    format!(
                        "remote {} names primary {:?}, which {problem}",
                        rc.name.get_ref(),
                        p.get_ref()
                    ),
                ));
            }
        }
        Ok(())
    }

    /// `[kubernetes]`.
    fn kubernetes(&self, raw: Option<RawKube>) -> Result<KubeSettings, ConfigError> {
        let mut kubernetes = KubeSettings::default();
        if let Some(k) = raw {
            let duration = |field: &str, v: &Spanned<String>| {
                humantime::parse_duration(v.get_ref())
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| {
                        self.invalid(
                            v.span(),
                            format!("kubernetes.{field}"),
                            format!(
                                "{:?} is not a positive duration (e.g. \"10s\")",
                                v.get_ref()
                            ),
                        )
                    })
            };
            if let Some(t) = &k.timeout {
                kubernetes.timeout = duration("timeout", t)?;
            }
            if let Some(t) = &k.rollout_timeout {
                kubernetes.rollout_timeout = duration("rollout_timeout", t)?;
            }
            if let Some(r) = k.retries {
                kubernetes.retries = r;
            }
            if let Some(c) = &k.concurrency {
                if *c.get_ref() == 0 {
                    return Err(self.invalid(
                        c.span(),
                        "kubernetes.concurrency".into(),
                        "must be at least 1".into(),
                    ));
                }
                kubernetes.concurrency = *c.get_ref();
            }
        }
        Ok(kubernetes)
    }

    /// `[daemon]`, with its Lease.
    fn daemon(
        &self,
        raw: Option<Spanned<RawDaemon>>,
        state_dir: &Path,
    ) -> Result<DaemonSettings, ConfigError> {
        let mut daemon = DaemonSettings {
            listen: std::net::SocketAddr::from(([127, 0, 0, 1], 9090)),
            interval: Duration::from_secs(600),
            jitter: 0.1,
            backoff_max: Duration::from_secs(1800),
            audit_log: state_dir.join("audit.log"),
            lease: None,
        };
        if let Some(d) = raw {
            let span = d.span();
            let d = d.into_inner();
            let bad = |field: &str, msg: String| {
                self.invalid(span.clone(), format!("daemon.{field}"), msg)
            };
            let dur = |field: &str, v: &str| {
                humantime::parse_duration(v)
                    .ok()
                    .filter(|d| !d.is_zero())
                    .ok_or_else(|| bad(field, format!("{v:?} is not a positive duration")))
            };
            if let Some(l) = &d.listen {
                daemon.listen = l.parse().map_err(|_| {
                    bad(
                        "listen",
                        format!("{l:?} is not an address like 0.0.0.0:9090"),
                    )
                })?;
            }
            if let Some(i) = &d.interval {
                daemon.interval = dur("interval", i)?;
            }
            if let Some(b) = &d.backoff_max {
                daemon.backoff_max = dur("backoff_max", b)?;
            }
            if let Some(j) = d.jitter {
                if !(0.0..=1.0).contains(&j) {
                    return Err(bad("jitter", "must be between 0 and 1".into()));
                }
                daemon.jitter = j;
            }
            if let Some(a) = &d.audit_log {
                daemon.audit_log = self.resolve(a);
            }
            if let Some(l) = &d.lease {
                let duration = match &l.duration {
                    Some(v) => dur("lease.duration", v)?,
                    None => Duration::from_secs(15),
                };
                let grace = match &l.grace {
                    Some(v) => dur("lease.grace", v)?,
                    None => duration / 3,
                };
                if grace >= duration || duration < Duration::from_secs(2) {
                    return Err(bad(
                        "lease",
                        "needs duration of at least 2s and grace shorter than duration".into(),
                    ));
                }
                daemon.lease = Some(LeaseSettings {
                    kubeconfig: l.kubeconfig.as_deref().map(|p| self.resolve(p)),
                    context: l.context.clone(),
                    namespace: l.namespace.clone().unwrap_or_else(|| "cacertd".into()),
                    name: l.name.clone().unwrap_or_else(|| "cacertd-leader".into()),
                    duration,
                    grace,
                });
            }
        }
        Ok(daemon)
    }

    /// `[transition]`: where the record lives follows the Lease unless told.
    fn transition(
        &self,
        raw: Option<Spanned<RawTransition>>,
        daemon: &DaemonSettings,
    ) -> Result<TransitionSettings, ConfigError> {
        let mut transition = TransitionSettings::default();
        if let Some(t) = raw {
            let span = t.span();
            let t = t.into_inner();
            let parse = |field: &str, v: &str, zero_ok: bool| {
                humantime::parse_duration(v)
                    .ok()
                    .filter(|d| zero_ok || !d.is_zero())
                    .ok_or_else(|| {
                        self.invalid(
                            span.clone(),
                            format!("transition.{field}"),
                            format!("{v:?} is not a duration (e.g. \"24h\")"),
                        )
                    })
            };
            if let Some(d) = &t.drain {
                transition.drain = parse("drain", d, true)?;
            }
            if let Some(g) = &t.gate_timeout {
                transition.gate_timeout = parse("gate_timeout", g, false)?;
            }
            let field = |f: &str, reason: String| {
                self.invalid(span.clone(), format!("transition.{f}"), reason)
            };
            let secret = t
                .record_secret
                .clone()
                .unwrap_or_else(|| DEFAULT_RECORD_SECRET.into());
            if !valid_dns_label(&secret) || secret.len() > 40 {
                return Err(field(
                    "record_secret",
                    format!("{secret:?} is not a lowercase DNS label of at most 40 characters"),
                ));
            }
            transition.record = match (t.record.as_deref(), &daemon.lease) {
                (None | Some("kubernetes"), Some(l)) => RecordLocation::Kubernetes {
                    kubeconfig: l.kubeconfig.clone(),
                    context: l.context.clone(),
                    namespace: l.namespace.clone(),
                    name: secret,
                },
                (Some("kubernetes"), None) => {
                    return Err(field(
                        "record",
                        "\"kubernetes\" keeps the record in the management cluster, which \
                         [daemon] lease names: configure the lease, or use \"state_dir\""
                            .into(),
                    ));
                }
                (None | Some("state_dir"), _) => RecordLocation::StateDir,
                (Some(other), _) => {
                    return Err(field(
                        "record",
                        format!("{other:?}: expected \"kubernetes\" or \"state_dir\""),
                    ));
                }
            };
            for ns in t.exclude_namespaces.iter().flatten() {
                if !valid_dns_label(ns) {
                    return Err(field(
                        "exclude_namespaces",
                        format!("{ns:?} is not a namespace name"),
                    ));
                }
            }
            transition.exclude_namespaces = t.exclude_namespaces.unwrap_or_default();
            if let Some(n) = t.max_parallel {
                if n == 0 {
                    return Err(field("max_parallel", "must be at least 1".into()));
                }
                transition.max_parallel = usize::from(n);
            }
        } else if let Some(l) = &daemon.lease {
            transition.record = RecordLocation::Kubernetes {
                kubeconfig: l.kubeconfig.clone(),
                context: l.context.clone(),
                namespace: l.namespace.clone(),
                name: DEFAULT_RECORD_SECRET.into(),
            };
        }
        Ok(transition)
    }
}

/// A lowercase RFC 1123 label: what Kubernetes accepts as a namespace name.
fn valid_dns_label(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !name.starts_with('-')
        && !name.ends_with('-')
}

fn valid_cluster_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 63
        && name
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

/// Lexical normal form (`a/./b/../c` → `a/c`), for comparing configured folders.
fn normalize(p: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                if matches!(out.components().next_back(), Some(Component::Normal(_))) {
                    out.pop();
                } else {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// Whether one folder is the other or inside it.
fn overlaps(a: &Path, b: &Path) -> bool {
    a.starts_with(b) || b.starts_with(a)
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
mod tests {
    use super::*;

    /// The acceptance-check configuration, verbatim (shared with the integration tests).
    const ACCEPTANCE: &str = include_str!("../tests/data/acceptance.toml");

    fn file() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("cacertd.toml")
    }

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, &file())
    }

    fn err(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    #[test]
    fn the_acceptance_config_loads() {
        let c = parse(ACCEPTANCE).unwrap();
        assert_eq!(c.trust_domain, "cluster.local");
        assert_eq!(
            c.state_dir,
            Path::new(env!("CARGO_MANIFEST_DIR")).join("state")
        );
        let t = &c.topology;
        assert_eq!(
            t.primaries().map(|c| c.name.as_str()).collect::<Vec<_>>(),
            ["cluster1", "cluster2"]
        );
        assert_eq!(
            t.remotes_of("cluster1")
                .map(|c| c.name.as_str())
                .collect::<Vec<_>>(),
            ["cluster3"]
        );
        assert_eq!(t.remotes_of("cluster2").count(), 0);
        assert_eq!(t.networks(), ["network1", "network2"]);
        assert_eq!(
            t.get("cluster2").unwrap().target,
            Some(TargetConfig::Dir {
                path: Path::new(env!("CARGO_MANIFEST_DIR")).join("out/cluster2")
            })
        );
        assert_eq!(
            c.root,
            RootStoreConfig::File {
                dir: c.state_dir.join("root")
            }
        );
    }

    #[test]
    fn a_remote_naming_an_unknown_primary_is_named_with_its_line() {
        let text = ACCEPTANCE.replace("primary = \"cluster1\"", "primary = \"cluster9\"");
        let e = err(&text);
        assert!(
            e.contains(":25: clusters[2].primary:") && e.contains("cluster9"),
            "{e}"
        );
    }

    #[test]
    fn a_remote_naming_a_remote_is_refused() {
        let text = format!(
            "{ACCEPTANCE}\n[[clusters]]\nname = \"cluster4\"\nrole = \"remote\"\nprimary = \"cluster3\"\n"
        );
        assert!(err(&text).contains("is not a primary"), "{}", err(&text));
    }

    #[test]
    fn duplicate_names_are_refused() {
        let text = ACCEPTANCE.replace("name = \"cluster2\"", "name = \"cluster1\"");
        let e = err(&text);
        assert!(
            e.contains(":17: clusters[1].name: duplicate cluster name \"cluster1\""),
            "{e}"
        );
    }

    #[test]
    fn shape_errors_name_the_line() {
        let e = err(&ACCEPTANCE.replace("role = \"remote\"", "role = \"secondary\""));
        assert!(e.contains("line 24") && e.contains("secondary"), "{e}");
        let e = err(&ACCEPTANCE.replace("network = \"network2\"", "netwrk = \"network2\""));
        assert!(e.contains("netwrk") && e.contains("line 19"), "{e}");
        let e = err(&ACCEPTANCE.replace("store = \"file\"", "store = \"vault\""));
        assert!(e.contains("vault"), "{e}");
        let e =
            err(&ACCEPTANCE.replace("kind = \"dir\", path = \"out/cluster1\"", "kind = \"dir\""));
        assert!(e.contains("path"), "{e}");
        let e = err("trust_domain = \"x\"\n");
        assert!(e.contains("state_dir"), "{e}");
    }

    #[test]
    fn primaries_need_a_target_and_distinct_directories() {
        let e =
            err(&ACCEPTANCE.replace("target = { kind = \"dir\", path = \"out/cluster2\" }\n", ""));
        assert!(
            e.contains("clusters[1].target") && e.contains("needs a target"),
            "{e}"
        );
        for clash in [
            "out/./cluster1",
            "out/x/../cluster1",
            "out/cluster1/sub",
            "out",
        ] {
            let e = err(&ACCEPTANCE.replace("out/cluster2", clash));
            assert!(e.contains("same or nested directories"), "{clash}: {e}");
        }
        for clash in ["state/root", "state", "."] {
            let e = err(&ACCEPTANCE.replace("out/cluster2", clash));
            assert!(e.contains("overlaps state_dir"), "{clash}: {e}");
        }
    }

    #[test]
    fn unknown_policies_are_named() {
        let e = err(&ACCEPTANCE.replace("policy = \"default\"", "policy = \"strict\""));
        assert!(
            e.contains(":5: policy:") && e.contains("strict") && e.contains("istio-compatible"),
            "{e}"
        );
        let text = ACCEPTANCE.replace(
            "network = \"network2\"",
            "network = \"network2\"\npolicy = \"istio-compatible\"",
        );
        let c = parse(&text).unwrap();
        assert_eq!(
            c.topology.get("cluster2").unwrap().policy,
            "istio-compatible"
        );
        assert_eq!(
            c.policy_for(c.topology.get("cluster2").unwrap()).name,
            "istio-compatible"
        );
    }

    #[test]
    fn kube_targets_and_settings_parse() {
        let text = ACCEPTANCE.replace(
            "target = { kind = \"dir\", path = \"out/cluster2\" }",
            "target = { kind = \"kube\", kubeconfig = \"kc/c2.yaml\", context = \"c2\" }",
        ) + "\n[kubernetes]\ntimeout = \"2s\"\nconcurrency = 3\n";
        let c = parse(&text).unwrap();
        assert_eq!(
            c.topology.get("cluster2").unwrap().target,
            Some(TargetConfig::Kube {
                kubeconfig: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("kc/c2.yaml")),
                context: Some("c2".into()),
            })
        );
        assert_eq!(c.kubernetes.timeout, Duration::from_secs(2));
        assert_eq!(c.kubernetes.concurrency, 3);
        assert_eq!(c.kubernetes.retries, 3);
        let rs = text.replace(
            "target = { kind = \"dir\", path = \"out/cluster1\" }",
            "target = { kind = \"kube\", remote_secret_from = \"cluster2\" }",
        );
        let c = parse(&rs).unwrap();
        assert_eq!(
            c.topology.get("cluster1").unwrap().target,
            Some(TargetConfig::KubeRemoteSecret {
                source: "cluster2".into()
            })
        );
        let bad = rs.replace(
            "remote_secret_from = \"cluster2\"",
            "remote_secret_from = \"cluster3\"",
        );
        assert!(err(&bad).contains("remote_secret_from"), "{}", err(&bad));
        let e = err(&format!("{ACCEPTANCE}\n[kubernetes]\nconcurrency = 0\n"));
        assert!(e.contains("kubernetes.concurrency"), "{e}");
        let e = err(&format!("{ACCEPTANCE}\n[kubernetes]\ntimeout = \"soon\"\n"));
        assert!(e.contains("kubernetes.timeout"), "{e}");
    }

    #[test]
    fn bad_names_and_trust_domains_are_refused() {
        assert!(
            err(&ACCEPTANCE.replace("\"cluster2\"", "\"../evil\""))
                .contains("not a valid cluster name")
        );
        assert!(
            err(&ACCEPTANCE.replace("\"cluster.local\"", "\"spiffe://x\""))
                .contains("trust_domain")
        );
    }

    #[test]
    fn the_transition_record_follows_the_lease_unless_told() {
        let lease = "\n[daemon]\nlease = { namespace = \"mesh-ca\" }\n";
        let c = parse(ACCEPTANCE).unwrap();
        assert_eq!(c.transition.record, RecordLocation::StateDir);
        let c = parse(&format!("{ACCEPTANCE}{lease}")).unwrap();
        assert!(
            matches!(&c.transition.record, RecordLocation::Kubernetes { namespace, name, .. }
                if namespace == "mesh-ca" && name == "cacertd-transition"),
            "{:?}",
            c.transition.record
        );
        let c = parse(&format!(
            "{ACCEPTANCE}{lease}[transition]\nrecord = \"state_dir\"\nexclude_namespaces = [\"db\"]\n"
        ))
        .unwrap();
        assert_eq!(c.transition.record, RecordLocation::StateDir);
        assert_eq!(c.transition.exclude_namespaces, ["db"]);
        for (bad, field) in [
            ("record = \"kubernetes\"", "transition.record"),
            ("record = \"etcd\"", "transition.record"),
            ("record_secret = \"Not_A_Name\"", "transition.record_secret"),
            (
                "exclude_namespaces = [\"a/b\"]",
                "transition.exclude_namespaces",
            ),
            ("max_parallel = 0", "transition.max_parallel"),
        ] {
            let e = err(&format!("{ACCEPTANCE}\n[transition]\n{bad}\n"));
            assert!(e.contains(field), "{bad}: {e}");
        }
    }

    #[test]
    fn without_policies_dir_the_built_in_policies_are_used() {
        let text = ACCEPTANCE.replace("policies_dir = \"policies\"\n", "");
        let c = Config::parse(&text, Path::new("/nonexistent/cacertd.toml")).unwrap();
        assert_eq!(c.root_policy().name, "default");
        let e = Config::parse(ACCEPTANCE, Path::new("/nonexistent/cacertd.toml"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/policies"), "{e}");
    }
}
