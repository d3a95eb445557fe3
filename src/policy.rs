//! Issuance policies (`policies/*.toml`): what roots and intermediates look like, when they are
//! renewed, and which clusters they may be issued for. Enforced before every signature.

use std::fmt;
use std::path::PathBuf;
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

mod limits;
mod set;

pub use limits::WORKLOAD_CERT_TTL;
use limits::{check_lifetimes, check_names, left_at_renewal, outlived};
pub use set::PolicySet;

#[cfg(test)]
mod tests;
