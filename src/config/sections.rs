//! Builds each section of `cacertd.toml` from its raw form (`[root]`, `[vault]`,
//! `[kubernetes]`, `[daemon]`, `[transition]`); `[[clusters]]` is in `clusters.rs`.

use std::path::{Path, PathBuf};
use std::time::Duration;

use toml::Spanned;

use super::raw::*;
use super::*;

const DEFAULT_RECORD_SECRET: &str = "cacertd-transition";

/// Builds each section of the configuration from its raw form: paths resolved against the
/// file's folder, every error naming the field and its line.
pub(super) struct Sections<'a> {
    pub(super) text: &'a str,
    pub(super) file: &'a Path,
    pub(super) base: &'a Path,
}

impl Sections<'_> {
    pub(super) fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.base.join(p)
        }
    }

    pub(super) fn invalid(
        &self,
        span: std::ops::Range<usize>,
        field: String,
        message: String,
    ) -> ConfigError {
        ConfigError::Invalid {
            file: self.file.to_path_buf(),
            line: line_of(self.text, span.start),
            field,
            message,
        }
    }

    /// `extra_trusted_roots`: every certificate of each PEM file, each a CA.
    pub(super) fn extra_roots(
        &self,
        files: &Spanned<Vec<PathBuf>>,
    ) -> Result<Vec<crate::pki::Cert>, ConfigError> {
        let mut roots = Vec::new();
        for (i, file) in files.get_ref().iter().enumerate() {
            let field = format!("extra_trusted_roots[{i}]");
            let path = self.resolve(file);
            let pem = crate::fsutil::read_pem(&path).map_err(|e| {
                self.invalid(
                    files.span(),
                    field.clone(),
                    format!("cannot read {}: {e}", path.display()),
                )
            })?;
            let certs = crate::pki::Cert::all_from_pem(&pem, &path.display().to_string())
                .map_err(|e| self.invalid(files.span(), field.clone(), e.to_string()))?;
            if let Some(leaf) = certs.iter().find(|c| !c.info().is_ca) {
                return Err(self.invalid(
                    files.span(),
                    field,
                    format!(
                        "{} is not a CA certificate ({}), so it cannot be a trust anchor",
                        path.display(),
                        leaf.info().subject
                    ),
                ));
            }
            roots.extend(certs);
        }
        Ok(roots)
    }

    /// `[root]`: the file store under `state_dir` unless told otherwise.
    pub(super) fn root(&self, raw: Option<RawRoot>, state_dir: &Path) -> RootStoreConfig {
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
    pub(super) fn vault(
        &self,
        raw: Option<Spanned<RawVault>>,
    ) -> Result<Option<VaultSettings>, ConfigError> {
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
                if let Some(a) = &v.address {
                    super::check_vault_address(a)
                        .map_err(|m| self.invalid(span.clone(), "vault.address".into(), m))?;
                }
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

    /// `[kubernetes]`.
    pub(super) fn kubernetes(&self, raw: Option<RawKube>) -> Result<KubeSettings, ConfigError> {
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
            if let Some(insecure) = k.danger_insecure_transport {
                kubernetes.insecure_transport = insecure;
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
    pub(super) fn daemon(
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
            log_format: super::LogFormat::Text,
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
            if let Some(f) = &d.log_format {
                daemon.log_format = match f.as_str() {
                    "text" => super::LogFormat::Text,
                    "json" => super::LogFormat::Json,
                    other => {
                        return Err(bad(
                            "log_format",
                            format!("{other:?} is not one of \"text\", \"json\""),
                        ));
                    }
                };
            }
            if let Some(l) = &d.lease {
                daemon.lease = Some(self.lease(l, &bad)?);
            }
        }
        Ok(daemon)
    }

    /// `[daemon.lease]`: the Kubernetes Lease replicas contend for; `bad` names a bad field.
    fn lease(
        &self,
        l: &RawLease,
        bad: &dyn Fn(&str, String) -> ConfigError,
    ) -> Result<LeaseSettings, ConfigError> {
        let dur = |field: &str, v: &str| {
            humantime::parse_duration(v)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(field, format!("{v:?} is not a positive duration")))
        };
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
        Ok(LeaseSettings {
            kubeconfig: l.kubeconfig.as_deref().map(|p| self.resolve(p)),
            context: l.context.clone(),
            namespace: l.namespace.clone().unwrap_or_else(|| "cacertd".into()),
            name: l.name.clone().unwrap_or_else(|| "cacertd-leader".into()),
            duration,
            grace,
        })
    }

    /// `[backups]`: how many backups of each cluster's `cacerts` are kept, for how long.
    pub(super) fn backups(
        &self,
        raw: Option<Spanned<RawBackups>>,
    ) -> Result<Retention, ConfigError> {
        let mut retention = Retention::default();
        let Some(b) = raw else {
            return Ok(retention);
        };
        let span = b.span();
        let b = b.into_inner();
        let bad =
            |field: &str, msg: String| self.invalid(span.clone(), format!("backups.{field}"), msg);
        if let Some(keep) = b.keep {
            if keep == 0 {
                return Err(bad(
                    "keep",
                    "must be at least 1: the newest backup is the way back from the last write"
                        .into(),
                ));
            }
            retention.keep = keep;
        }
        if let Some(age) = &b.max_age {
            let d = humantime::parse_duration(age)
                .ok()
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad("max_age", format!("{age:?} is not a positive duration")))?;
            retention.max_age = Some(d);
        }
        Ok(retention)
    }

    /// `[transition]`: where the record lives follows the Lease unless told.
    pub(super) fn transition(
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
            if let Some(p) = &t.list_propagation {
                transition.list_propagation = parse("list_propagation", p, true)?;
            }
            let field = |f: &str, reason: String| {
                self.invalid(span.clone(), format!("transition.{f}"), reason)
            };
            transition.record = self.record_location(
                span.clone(),
                (t.record.as_deref(), t.record_secret.clone()),
                daemon,
            )?;
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
        } else {
            transition.record = self.record_location(0..0, (None, None), daemon)?;
        }
        Ok(transition)
    }

    /// Where the transition record lives (`[transition] record`, `record_secret`): in the
    /// management cluster where `[daemon] lease` names one, else in `state_dir`.
    fn record_location(
        &self,
        span: std::ops::Range<usize>,
        (record, secret): (Option<&str>, Option<String>),
        daemon: &DaemonSettings,
    ) -> Result<RecordLocation, ConfigError> {
        let field =
            |f: &str, reason: String| self.invalid(span.clone(), format!("transition.{f}"), reason);
        let secret = secret.unwrap_or_else(|| DEFAULT_RECORD_SECRET.into());
        if !valid_dns_label(&secret) || secret.len() > 40 {
            return Err(field(
                "record_secret",
                format!("{secret:?} is not a lowercase DNS label of at most 40 characters"),
            ));
        }
        match (record, &daemon.lease) {
            (None | Some("kubernetes"), Some(l)) => Ok(RecordLocation::Kubernetes {
                kubeconfig: l.kubeconfig.clone(),
                context: l.context.clone(),
                namespace: l.namespace.clone(),
                name: secret,
            }),
            (Some("kubernetes"), None) => Err(field(
                "record",
                "\"kubernetes\" keeps the record in the management cluster, which [daemon] \
                 lease names: configure the lease, or use \"state_dir\""
                    .into(),
            )),
            (None | Some("state_dir"), _) => Ok(RecordLocation::StateDir),
            (Some(other), _) => Err(field(
                "record",
                format!("{other:?}: expected \"kubernetes\" or \"state_dir\""),
            )),
        }
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
