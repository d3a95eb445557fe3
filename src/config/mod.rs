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
        let daemon = sections.daemon(raw.daemon, &state_dir)?;
        let mut apart = vec![clusters::Apart {
            what: "state_dir",
            path: state_dir.clone(),
            why: "the state (root, backups, transitions)",
        }];
        if let RootStoreConfig::File { dir } = &root {
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
mod tests {
    use super::*;

    /// The acceptance-check configuration, verbatim (shared with the integration tests).
    const ACCEPTANCE: &str = include_str!("../../tests/data/acceptance.toml");

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
    fn a_vault_address_that_is_not_a_safe_url_is_refused_at_load() {
        for (address, why) in [
            ("not a url", "is not a URL"),
            ("HTTP://10.0.0.5:8200", "plain HTTP"),
        ] {
            let text = format!(
                "{ACCEPTANCE}\n[vault]\naddress = \"{address}\"\nauth = {{ method = \"token\" }}\n"
            );
            let e = err(&text);
            assert!(
                e.contains("vault.address") && e.contains(why),
                "{address}: {e}"
            );
        }
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
                path: Path::new(env!("CARGO_MANIFEST_DIR")).join("out/cluster2"),
                observe: None,
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
        // Names that only share a prefix are apart.
        for apart in ["out/cluster10", "out/cluster1.d", "out2/cluster1", "ou"] {
            let text = ACCEPTANCE.replace("out/cluster2", apart);
            assert!(parse(&text).is_ok(), "{apart}");
        }
        for clash in ["state/root", "state", "."] {
            let e = err(&ACCEPTANCE.replace("out/cluster2", clash));
            assert!(e.contains("overlaps state_dir"), "{clash}: {e}");
        }
    }

    /// The root store's folder and the audit log, wherever they are configured, and folders
    /// reached through symlinks, are kept apart from the targets.
    #[test]
    fn targets_live_apart_from_the_root_the_audit_log_and_what_symlinks_reach() {
        let root_in_target = ACCEPTANCE.replace(
            "store = \"file\"\n",
            "store = \"file\"\ndir = \"out/cluster2/root\"\n",
        );
        let e = err(&root_in_target);
        assert!(e.contains("overlaps the root store"), "{e}");
        let audit_in_target =
            format!("{ACCEPTANCE}\n[daemon]\naudit_log = \"out/cluster1/audit.log\"\n");
        let e = err(&audit_in_target);
        assert!(e.contains("overlaps the audit log"), "{e}");

        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("state")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("link")).unwrap();
        let text = ACCEPTANCE
            .replace("policies_dir = \"policies\"\n", "")
            .replace("out/cluster2", "link/cluster2");
        let e = Config::parse(&text, &dir.path().join("cacertd.toml"))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("overlaps state_dir") && e.contains("resolves to"),
            "{e}"
        );
        // A symlink to a folder of its own is fine.
        std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
        std::fs::remove_file(dir.path().join("link")).unwrap();
        std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link")).unwrap();
        Config::parse(&text, &dir.path().join("cacertd.toml")).unwrap();
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
                source: "cluster2".into(),
                pin: Default::default(),
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
