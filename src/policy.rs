//! Issuance policies (`policies/*.toml`): what roots and intermediates look like, when they are
//! renewed, and which clusters they may be issued for. Enforced before every signature.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;
use time::OffsetDateTime;

use crate::pki::{Cert, CertInfo, IntermediateSpec, KeyAlgorithm, RootSpec, Subject};

/// The policies shipped in `policies/`, compiled in so a config without `policies_dir` works.
const EMBEDDED: [(&str, &str); 2] = [
    ("default", include_str!("../policies/default.toml")),
    (
        "istio-compatible",
        include_str!("../policies/istio-compatible.toml"),
    ),
];

#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policies from {dir}: {source}")]
    ReadDir {
        dir: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot read policy {file}: {source}")]
    Read {
        file: PathBuf,
        source: std::io::Error,
    },
    #[error("policy {file}: {message}")]
    Parse { file: String, message: String },
    #[error("policy {file}: {field}: {message}")]
    Invalid {
        file: String,
        field: &'static str,
        message: String,
    },
    #[error("policy {name:?} not found in {source_desc} (available: {available})")]
    NotFound {
        name: String,
        source_desc: String,
        available: String,
    },
}

/// Longest root lifetime a policy may ask for.
const MAX_ROOT_VALIDITY: Duration = Duration::from_secs(36500 * 86400);

/// An issuance the policy refuses, naming the rule it breaks.
#[derive(Debug, thiserror::Error)]
#[error("policy {policy:?} refuses to issue for {cluster}: {rule} ({detail})")]
pub struct PolicyViolation {
    pub policy: String,
    pub cluster: String,
    pub rule: &'static str,
    pub detail: String,
}

/// When an intermediate is renewed: when this much of its lifetime remains.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum RenewBefore {
    /// Fraction of the total lifetime, in (0, 1).
    Fraction(f64),
    Duration(Duration),
}

impl RenewBefore {
    fn parse(s: &str) -> Result<Self, String> {
        let s = s.trim();
        if let Some(pct) = s.strip_suffix('%') {
            let p: f64 = pct
                .trim()
                .parse()
                .map_err(|_| format!("{s:?} is not a percentage"))?;
            if !(p > 0.0 && p < 100.0) {
                return Err(format!("{s:?} must be between 0% and 100% (exclusive)"));
            }
            return Ok(RenewBefore::Fraction(p / 100.0));
        }
        parse_duration(s).map(RenewBefore::Duration)
    }
}

impl fmt::Display for RenewBefore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RenewBefore::Fraction(x) => write!(f, "{}%", x * 100.0),
            RenewBefore::Duration(d) => write!(f, "{}", humantime::format_duration(*d)),
        }
    }
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s)
        .map_err(|e| format!("{s:?} is not a duration ({e}); write e.g. \"365d\", \"8760h\""))
}

/// A subject whose values may contain `{cluster}` and `{trust_domain}`: a [`Subject`] read
/// from the policy file, made concrete with [`Subject::render`].
pub type SubjectTemplate = Subject;

#[derive(Clone, Debug, PartialEq)]
pub struct RootPolicy {
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
    pub subject: SubjectTemplate,
    pub allowed_key_algorithms: Vec<KeyAlgorithm>,
    /// The trust anchors allowed, by SHA-256 fingerprint (upper-case hex pairs joined by `:`,
    /// as `status` prints them); empty: any.
    pub anchors: Vec<String>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct IntermediatePolicy {
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
    pub renew_before: RenewBefore,
    pub path_len: u8,
    pub subject: SubjectTemplate,
    pub dns_names: Vec<String>,
    /// The longest workload certificate the mesh's istiod signs
    /// (`intermediate.workload_cert_ttl`, Istio's default 24 h): an intermediate must have at
    /// least this much life left when it is renewed. For Kubernetes primaries, cacertd also
    /// reads what the proxies ask for when it issues ([`Policy::check_workload_certs`]).
    pub workload_cert_ttl: Duration,
}

/// One issuance policy, validated on load.
#[derive(Clone, Debug, PartialEq)]
pub struct Policy {
    pub name: String,
    pub description: String,
    pub clusters: Vec<String>,
    pub root: RootPolicy,
    pub intermediate: IntermediatePolicy,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPolicy {
    #[serde(default)]
    description: String,
    clusters: Vec<String>,
    root: RawRoot,
    intermediate: RawIntermediate,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawRoot {
    key_algorithm: KeyAlgorithm,
    validity: String,
    subject: SubjectTemplate,
    allowed_key_algorithms: Option<Vec<KeyAlgorithm>>,
    #[serde(default)]
    anchors: Vec<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawIntermediate {
    key_algorithm: KeyAlgorithm,
    validity: String,
    renew_before: String,
    path_len: u8,
    subject: SubjectTemplate,
    dns_names: Vec<String>,
    workload_cert_ttl: Option<String>,
}

impl Policy {
    /// Parses and validates one policy file's text. `file` names it in errors.
    pub fn parse(name: &str, text: &str, file: &str) -> Result<Self, PolicyError> {
        let raw: RawPolicy = toml::from_str(text).map_err(|e| PolicyError::Parse {
            file: file.to_string(),
            message: e.to_string(),
        })?;
        let invalid = |field: &'static str, message: String| PolicyError::Invalid {
            file: file.to_string(),
            field,
            message,
        };
        let root_validity =
            parse_duration(&raw.root.validity).map_err(|m| invalid("root.validity", m))?;
        let int_validity = parse_duration(&raw.intermediate.validity)
            .map_err(|m| invalid("intermediate.validity", m))?;
        let renew_before = RenewBefore::parse(&raw.intermediate.renew_before)
            .map_err(|m| invalid("intermediate.renew_before", m))?;
        let workload_cert_ttl = match &raw.intermediate.workload_cert_ttl {
            None => WORKLOAD_CERT_TTL,
            Some(text) => {
                parse_duration(text).map_err(|m| invalid("intermediate.workload_cert_ttl", m))?
            }
        };
        check_lifetimes(root_validity, int_validity, renew_before, workload_cert_ttl)
            .map_err(|(field, message)| invalid(field, message))?;
        check_names(&raw).map_err(|(field, message)| invalid(field, message))?;
        let allowed = raw
            .root
            .allowed_key_algorithms
            .unwrap_or_else(|| KeyAlgorithm::ALL.to_vec());
        if !allowed.contains(&raw.root.key_algorithm) {
            return Err(invalid(
                "root.allowed_key_algorithms",
                format!(
                    "does not include root.key_algorithm {}",
                    raw.root.key_algorithm
                ),
            ));
        }
        let anchors = raw
            .root
            .anchors
            .iter()
            .map(|a| crate::pki::normalize_fingerprint(a))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|m| invalid("root.anchors", m))?;
        Ok(Policy {
            name: name.to_string(),
            description: raw.description,
            clusters: raw.clusters,
            root: RootPolicy {
                key_algorithm: raw.root.key_algorithm,
                validity: root_validity,
                subject: raw.root.subject,
                allowed_key_algorithms: allowed,
                anchors,
            },
            intermediate: IntermediatePolicy {
                key_algorithm: raw.intermediate.key_algorithm,
                validity: int_validity,
                renew_before,
                path_len: raw.intermediate.path_len,
                subject: raw.intermediate.subject,
                dns_names: raw.intermediate.dns_names,
                workload_cert_ttl,
            },
        })
    }

    pub fn allows_cluster(&self, cluster: &str) -> bool {
        self.clusters.iter().any(|p| glob_match(p, cluster))
    }

    pub fn root_spec(&self, trust_domain: &str) -> RootSpec {
        RootSpec {
            key_algorithm: self.root.key_algorithm,
            validity: self.root.validity,
            subject: self.root.subject.render("", trust_domain),
        }
    }

    pub fn intermediate_spec(&self, cluster: &str, trust_domain: &str) -> IntermediateSpec {
        IntermediateSpec {
            key_algorithm: self.intermediate.key_algorithm,
            validity: self.intermediate.validity,
            path_len: self.intermediate.path_len,
            subject: self.intermediate.subject.render(cluster, trust_domain),
            dns_names: self.intermediate.dns_names.clone(),
        }
    }

    /// When an intermediate with these dates is due for renewal.
    pub fn renew_at(&self, info: &CertInfo) -> OffsetDateTime {
        let lifetime = info.not_after - info.not_before;
        let before = match self.intermediate.renew_before {
            RenewBefore::Fraction(f) => lifetime * f,
            RenewBefore::Duration(d) => time::Duration::try_from(d).unwrap_or(lifetime),
        };
        (info.not_after - before).clamp(info.not_before, info.not_after)
    }

    /// Whether the intermediates this policy issues outlive the longest workload certificate
    /// the mesh signs under them: `ttl`, as read from `cluster`'s istiod and proxies
    /// (`source` says where). Checked when issuing, beside the policy's own
    /// `workload_cert_ttl`.
    pub fn check_workload_certs(
        &self,
        cluster: &str,
        ttl: Duration,
        source: &str,
    ) -> Result<(), PolicyViolation> {
        let left = left_at_renewal(self.intermediate.validity, self.intermediate.renew_before);
        match left < ttl {
            false => Ok(()),
            true => Err(PolicyViolation {
                policy: self.name.clone(),
                cluster: cluster.to_string(),
                rule: "workload certificates must not outlive the intermediate",
                detail: format!(
                    "{}; or, if those certificates are not wanted, shorten them",
                    outlived(left, ttl, source)
                ),
            }),
        }
    }

    /// Whether this policy lets a new root be generated: not when it names the anchors allowed
    /// (a root made now could be none of them). Checked before anything is generated.
    pub fn check_may_generate_root(&self) -> Result<(), PolicyViolation> {
        match self.root.anchors.is_empty() {
            true => Ok(()),
            false => Err(PolicyViolation {
                policy: self.name.clone(),
                cluster: "the root".to_string(),
                rule: "root.anchors",
                detail: "this policy names the anchors allowed, and a root generated now would \
                         be none of them; import a listed one, or list the new root's \
                         fingerprint first"
                    .to_string(),
            }),
        }
    }

    /// Checks a trust anchor (a self-signed root, or the root above a mesh CA) against the
    /// anchors this policy names, if any.
    pub fn check_anchor(&self, anchor: &Cert) -> Result<(), PolicyViolation> {
        let fingerprint = &anchor.info().fingerprint_sha256;
        if self.root.anchors.is_empty() || self.root.anchors.contains(fingerprint) {
            return Ok(());
        }
        Err(PolicyViolation {
            policy: self.name.clone(),
            cluster: "the root".to_string(),
            rule: "root.anchors",
            detail: format!(
                "the anchor {} ({fingerprint}) is not one the policy allows: {}",
                anchor.info().subject,
                self.root.anchors.join(", ")
            ),
        })
    }

    /// Checks a root about to be stored (generated or imported) against the policy.
    pub fn check_root(&self, root: &Cert) -> Result<(), PolicyViolation> {
        let violation = |rule, detail| PolicyViolation {
            policy: self.name.clone(),
            cluster: "the root".to_string(),
            rule,
            detail,
        };
        let alg = root
            .supported_key("root")
            .map_err(|e| violation("root.allowed_key_algorithms", e.to_string()))?;
        if !self.root.allowed_key_algorithms.contains(&alg) {
            return Err(violation(
                "root.allowed_key_algorithms",
                format!(
                    "the root is {alg}; allowed: {}",
                    names(&self.root.allowed_key_algorithms)
                ),
            ));
        }
        Ok(())
    }

    /// Enforced before signing: the request must be one this policy allows.
    pub fn check_issuance(
        &self,
        cluster: &str,
        spec: &IntermediateSpec,
        root: &Cert,
    ) -> Result<(), PolicyViolation> {
        let violation = |rule, detail| PolicyViolation {
            policy: self.name.clone(),
            cluster: cluster.to_string(),
            rule,
            detail,
        };
        if !self.allows_cluster(cluster) {
            return Err(violation(
                "clusters",
                format!("{cluster} matches none of {:?}", self.clusters),
            ));
        }
        self.check_root(root)
            .and_then(|()| self.check_anchor(root))
            .map_err(|v| violation(v.rule, v.detail))?;
        if spec.key_algorithm != self.intermediate.key_algorithm {
            return Err(violation(
                "intermediate.key_algorithm",
                format!(
                    "requested {}, policy requires {}",
                    spec.key_algorithm, self.intermediate.key_algorithm
                ),
            ));
        }
        if spec.validity > self.intermediate.validity {
            return Err(violation(
                "intermediate.validity",
                format!(
                    "requested {}, policy allows at most {}",
                    humantime::format_duration(spec.validity),
                    humantime::format_duration(self.intermediate.validity)
                ),
            ));
        }
        if spec.path_len > self.intermediate.path_len {
            return Err(violation(
                "intermediate.path_len",
                format!(
                    "requested pathlen:{}, policy allows at most {}",
                    spec.path_len, self.intermediate.path_len
                ),
            ));
        }
        Ok(())
    }

    /// Checked after signing (and on anything a remote signer returns): the certificate must be
    /// what the policy describes.
    pub fn check_issued(&self, cluster: &str, cert: &Cert) -> Result<(), PolicyViolation> {
        let violation = |rule, detail| PolicyViolation {
            policy: self.name.clone(),
            cluster: cluster.to_string(),
            rule,
            detail,
        };
        let info = cert.info();
        if !info.is_ca || info.path_len != Some(u32::from(self.intermediate.path_len)) {
            return Err(violation(
                "intermediate.path_len",
                format!(
                    "issued certificate has CA:{} pathlen:{:?}",
                    info.is_ca, info.path_len
                ),
            ));
        }
        let lifetime = info.not_after - info.not_before;
        let max = time::Duration::try_from(self.intermediate.validity + crate::pki::BACKDATE)
            .unwrap_or(time::Duration::MAX);
        if lifetime > max {
            return Err(violation(
                "intermediate.validity",
                format!("issued certificate is valid for {lifetime}"),
            ));
        }
        if cert.key() != &crate::pki::KeyDescription::Supported(self.intermediate.key_algorithm) {
            return Err(violation(
                "intermediate.key_algorithm",
                format!("issued certificate has a {} key", info.key_algorithm),
            ));
        }
        if let Ok(Some(_)) = cert.x509().extended_key_usage() {
            return Err(violation(
                "intermediate (no extendedKeyUsage)",
                "issued certificate carries an extendedKeyUsage".to_string(),
            ));
        }
        Ok(())
    }

    /// Why an existing, valid intermediate no longer matches what this policy would issue for
    /// `cluster`, if it does not: key algorithm, path length, or subject (which also catches a
    /// set copied from another cluster).
    pub fn drift(&self, cert: &Cert, cluster: &str, trust_domain: &str) -> Option<String> {
        let info = cert.info();
        if cert.key() != &crate::pki::KeyDescription::Supported(self.intermediate.key_algorithm) {
            return Some(format!(
                "key is {}, policy now requires {}",
                info.key_algorithm, self.intermediate.key_algorithm
            ));
        }
        if info.path_len != Some(u32::from(self.intermediate.path_len)) {
            return Some(format!(
                "pathlen is {:?}, policy now requires {}",
                info.path_len, self.intermediate.path_len
            ));
        }
        let want = self.intermediate.subject.render(cluster, trust_domain);
        let x = cert.x509();
        let subject = x.subject();
        let first = |it: &mut dyn Iterator<
            Item = &x509_parser::x509::AttributeTypeAndValue<'_>,
        >| { it.next().and_then(|a| a.as_str().ok()).map(str::to_string) };
        let have = crate::pki::Subject {
            organization: first(&mut subject.iter_organization()),
            organizational_unit: first(&mut subject.iter_organizational_unit()),
            common_name: first(&mut subject.iter_common_name()).unwrap_or_default(),
            locality: first(&mut subject.iter_locality()),
            country: first(&mut subject.iter_country()),
            serial_number: None,
        };
        if have != want {
            return Some(format!(
                "subject is {:?}, policy issues {} for {cluster}",
                info.subject,
                describe_subject(&want)
            ));
        }
        None
    }
}

fn describe_subject(s: &crate::pki::Subject) -> String {
    let mut parts = Vec::new();
    let mut add = |k: &str, v: &Option<String>| {
        if let Some(v) = v {
            parts.push(format!("{k}={v}"));
        }
    };
    add("C", &s.country);
    add("O", &s.organization);
    add("OU", &s.organizational_unit);
    add("L", &s.locality);
    parts.push(format!("CN={}", s.common_name));
    format!("{:?}", parts.join(", "))
}

fn names(algs: &[KeyAlgorithm]) -> String {
    algs.iter().map(|a| a.name()).collect::<Vec<_>>().join(", ")
}

/// `*` matches any run of characters; everything else matches itself.
fn glob_match(pattern: &str, name: &str) -> bool {
    match pattern.split_once('*') {
        None => pattern == name,
        Some((prefix, rest)) => {
            let Some(tail) = name.strip_prefix(prefix) else {
                return false;
            };
            (0..=tail.len())
                .filter(|i| tail.is_char_boundary(*i))
                .any(|i| glob_match(rest, &tail[i..]))
        }
    }
}

/// All policies available to a configuration.
#[derive(Clone, Debug)]
pub struct PolicySet {
    policies: BTreeMap<String, Policy>,
    source_desc: String,
}

impl PolicySet {
    /// The policies compiled into cacertd (copies of `policies/`).
    pub fn embedded() -> Result<Self, PolicyError> {
        let mut policies = BTreeMap::new();
        for (name, text) in EMBEDDED {
            let file = format!("(built-in) policies/{name}.toml");
            policies.insert(name.to_string(), Policy::parse(name, text, &file)?);
        }
        Ok(PolicySet {
            policies,
            source_desc: "the built-in policies".to_string(),
        })
    }

    /// Every `*.toml` in `dir`; the policy's name is the file stem.
    pub fn load_dir(dir: &Path) -> Result<Self, PolicyError> {
        let entries = std::fs::read_dir(dir).map_err(|source| PolicyError::ReadDir {
            dir: dir.to_path_buf(),
            source,
        })?;
        let mut policies = BTreeMap::new();
        for entry in entries {
            let path = entry
                .map_err(|source| PolicyError::ReadDir {
                    dir: dir.to_path_buf(),
                    source,
                })?
                .path();
            if path.extension().and_then(|e| e.to_str()) != Some("toml") {
                continue;
            }
            let Some(name) = path.file_stem().and_then(|s| s.to_str()) else {
                continue;
            };
            let text = std::fs::read_to_string(&path).map_err(|source| PolicyError::Read {
                file: path.clone(),
                source,
            })?;
            let policy = Policy::parse(name, &text, &path.display().to_string())?;
            policies.insert(name.to_string(), policy);
        }
        Ok(PolicySet {
            policies,
            source_desc: dir.display().to_string(),
        })
    }

    pub fn get(&self, name: &str) -> Result<&Policy, PolicyError> {
        self.policies
            .get(name)
            .ok_or_else(|| PolicyError::NotFound {
                name: name.to_string(),
                source_desc: self.source_desc.clone(),
                available: if self.policies.is_empty() {
                    "none".to_string()
                } else {
                    self.policies.keys().cloned().collect::<Vec<_>>().join(", ")
                },
            })
    }
}

/// A policy field that does not hold, and why.
type Refusal = (&'static str, String);

/// Lifetimes a policy may set: a root of a day to a century, an intermediate of at least an
/// hour that never outlives the root, renewed before it expires with at least a workload
/// certificate's lifetime left.
fn check_lifetimes(
    root_validity: Duration,
    int_validity: Duration,
    renew_before: RenewBefore,
    workload_cert_ttl: Duration,
) -> Result<(), Refusal> {
    if root_validity < Duration::from_secs(86400) {
        return Err(("root.validity", "must be at least one day".to_string()));
    }
    if root_validity > MAX_ROOT_VALIDITY {
        return Err((
            "root.validity",
            "must be at most 100 years (36500d)".to_string(),
        ));
    }
    if int_validity < Duration::from_secs(3600) {
        return Err((
            "intermediate.validity",
            "must be at least one hour".to_string(),
        ));
    }
    if int_validity > root_validity {
        return Err((
            "intermediate.validity",
            "is longer than root.validity; an intermediate never outlives its root".to_string(),
        ));
    }
    if let RenewBefore::Duration(d) = renew_before
        && d >= int_validity
    {
        return Err((
            "intermediate.renew_before",
            "must be shorter than intermediate.validity, or every run would renew".to_string(),
        ));
    }
    if workload_cert_ttl < Duration::from_secs(60) {
        return Err((
            "intermediate.workload_cert_ttl",
            "must be at least one minute".to_string(),
        ));
    }
    let left = left_at_renewal(int_validity, renew_before);
    if left < workload_cert_ttl {
        return Err((
            "intermediate.renew_before",
            outlived(left, workload_cert_ttl, "intermediate.workload_cert_ttl"),
        ));
    }
    Ok(())
}

/// How much of an intermediate's life is left when it is renewed.
fn left_at_renewal(validity: Duration, renew_before: RenewBefore) -> Duration {
    match renew_before {
        RenewBefore::Fraction(f) => validity.mul_f64(f),
        RenewBefore::Duration(d) => d.min(validity),
    }
}

/// Why an intermediate with `left` of its life at renewal is refused when workload
/// certificates of `ttl` (as `source` says) are signed.
fn outlived(left: Duration, ttl: Duration, source: &str) -> String {
    let whole = crate::clock::fmt_duration;
    format!(
        "leaves {} of the intermediate's life at renewal, less than a workload certificate's \
         {} ({source}): workload certificates istiod signs just before the renewal would \
         outlive the intermediate (istiod before 1.28.7, 1.29.3 and 1.30.0 does not shorten \
         them: istio/istio#59768); renew earlier or issue longer-lived intermediates",
        whole(left),
        whole(ttl),
    )
}

/// The lifetime of the workload certificates istiod signs by default
/// (`DEFAULT_WORKLOAD_CERT_TTL`, and the agent's `SECRET_TTL`; docs/istio.md §13).
pub const WORKLOAD_CERT_TTL: Duration = Duration::from_secs(24 * 3600);

/// Names a policy may set: some clusters, subjects with a common name and an ISO country,
/// valid DNS names for istiod.
fn check_names(raw: &RawPolicy) -> Result<(), Refusal> {
    if raw.clusters.is_empty() {
        return Err((
            "clusters",
            "is empty; use [\"*\"] to allow every cluster".to_string(),
        ));
    }
    for (field, subject) in [
        ("root.subject", &raw.root.subject),
        ("intermediate.subject", &raw.intermediate.subject),
    ] {
        if subject.common_name.trim().is_empty() {
            return Err((field, "common_name must not be empty".to_string()));
        }
        if let Some(c) = &subject.country
            && (c.len() != 2 || !c.chars().all(|c| c.is_ascii_uppercase()))
        {
            return Err((
                field,
                format!("country {c:?} must be a two-letter ISO code"),
            ));
        }
    }
    for n in &raw.intermediate.dns_names {
        let label_ok = |l: &str| {
            !l.is_empty()
                && l.len() <= 63
                && l.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        };
        if n.len() > 253 || !n.split('.').all(label_ok) {
            return Err(("intermediate.dns_names", format!("{n:?} is not a DNS name")));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests;
