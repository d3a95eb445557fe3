//! Checks Go's crypto/x509 applies to every certificate of a chain (istiod verifies with it;
//! Envoy's BoringSSL applies the same rules to workload chains): unhandled critical
//! extensions, negative serials, and name constraints.

use x509_parser::extensions::GeneralName;

use super::Cert;

/// Extensions Go's parser understands (crypto/x509 parser.go); a critical extension outside
/// this list makes `Verify` fail with UnhandledCriticalExtension.
const HANDLED: [&str; 13] = [
    "2.5.29.14",         // subjectKeyIdentifier
    "2.5.29.15",         // keyUsage
    "2.5.29.17",         // subjectAltName
    "2.5.29.19",         // basicConstraints
    "2.5.29.30",         // nameConstraints
    "2.5.29.31",         // cRLDistributionPoints
    "2.5.29.32",         // certificatePolicies
    "2.5.29.33",         // policyMappings
    "2.5.29.35",         // authorityKeyIdentifier
    "2.5.29.36",         // policyConstraints
    "2.5.29.37",         // extKeyUsage
    "2.5.29.54",         // inhibitAnyPolicy
    "1.3.6.1.5.5.7.1.1", // authorityInfoAccess
];

/// Critical extensions Go would not handle, by OID.
pub(crate) fn unhandled_critical_extensions(cert: &Cert) -> Vec<String> {
    cert.x509()
        .extensions()
        .iter()
        .filter(|e| e.critical)
        .map(|e| e.oid.to_id_string())
        .filter(|oid| !HANDLED.contains(&oid.as_str()))
        .collect()
}

/// Go 1.23+ (istiod 1.24+) refuses to parse certificates with a negative serial number.
pub(crate) fn has_negative_serial(cert: &Cert) -> bool {
    cert.x509()
        .raw_serial()
        .first()
        .is_some_and(|b| b & 0x80 != 0)
}

/// The Go-visible problems of one certificate in a chain, if any.
pub(crate) fn go_would_refuse(cert: &Cert) -> Option<String> {
    let subject = &cert.info().subject;
    let unhandled = unhandled_critical_extensions(cert);
    if !unhandled.is_empty() {
        return Some(format!(
            "{subject} has critical extension(s) {} that Go's verifier (istiod) does not handle",
            unhandled.join(", ")
        ));
    }
    if has_negative_serial(cert) {
        return Some(format!(
            "{subject} has a negative serial number, which Go 1.23+ (istiod 1.24+) refuses to parse"
        ));
    }
    None
}

/// A name that must satisfy the name constraints of every CA above it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum ConstrainedName {
    Dns(String),
    /// A URI, checked by its host as Go does (a SPIFFE ID's host is the trust domain).
    Uri {
        uri: String,
        host: String,
    },
}

impl ConstrainedName {
    pub(crate) fn spiffe(trust_domain: &str) -> Self {
        ConstrainedName::Uri {
            uri: format!("spiffe://{trust_domain}/ns/<namespace>/sa/<account>"),
            host: trust_domain.to_string(),
        }
    }

    fn describe(&self) -> String {
        match self {
            ConstrainedName::Dns(d) => format!("DNS:{d}"),
            ConstrainedName::Uri { uri, .. } => format!("URI:{uri}"),
        }
    }
}

/// The DNS SANs of a certificate, as names to check.
pub(crate) fn dns_names(cert: &Cert) -> Vec<ConstrainedName> {
    let x = cert.x509();
    let Ok(Some(san)) = x.subject_alternative_name() else {
        return Vec::new();
    };
    san.value
        .general_names
        .iter()
        .filter_map(|n| match n {
            GeneralName::DNSName(d) => Some(ConstrainedName::Dns(d.to_string())),
            _ => None,
        })
        .collect()
}

/// Picks the constraint values of one name type out of a subtree.
type ConstraintOfKind = fn(&GeneralName) -> Option<String>;
/// Whether a name (or URI host) falls under a constraint value.
type NameMatcher = fn(&str, &str) -> bool;

/// Checks `names` against the name constraints of `ca` (RFC 5280 4.2.1.10, with Go's
/// matching: a constraint "example.com" admits it and its subdomains, ".example.com" only
/// subdomains; URI constraints match the URI's host).
pub(crate) fn check_name_constraints(ca: &Cert, names: &[ConstrainedName]) -> Result<(), String> {
    let x = ca.x509();
    let nc = match x.name_constraints() {
        Ok(Some(nc)) => nc.value,
        Ok(None) => return Ok(()),
        Err(e) => {
            return Err(format!(
                "{}: unreadable nameConstraints: {e}",
                ca.info().subject
            ));
        }
    };
    for name in names {
        let (kind_matches, matches): (ConstraintOfKind, NameMatcher) = match name {
            ConstrainedName::Dns(_) => (
                |g| match g {
                    GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                },
                dns_matches,
            ),
            ConstrainedName::Uri { .. } => (
                |g| match g {
                    GeneralName::URI(u) => Some(u.to_string()),
                    _ => None,
                },
                uri_host_matches,
            ),
        };
        let value = match name {
            ConstrainedName::Dns(d) => d.as_str(),
            ConstrainedName::Uri { host, .. } => host.as_str(),
        };
        if let Some(excluded) = &nc.excluded_subtrees
            && let Some(c) = excluded
                .iter()
                .filter_map(|s| kind_matches(&s.base))
                .find(|c| matches(value, c))
        {
            return Err(format!(
                "{} excludes {c:?}, which {} falls under",
                ca.info().subject,
                name.describe()
            ));
        }
        if let Some(permitted) = &nc.permitted_subtrees {
            let of_kind: Vec<String> = permitted
                .iter()
                .filter_map(|s| kind_matches(&s.base))
                .collect();
            if !of_kind.is_empty() && !of_kind.iter().any(|c| matches(value, c)) {
                return Err(format!(
                    "{} permits only {} but {} is needed",
                    ca.info().subject,
                    of_kind.join(", "),
                    name.describe()
                ));
            }
        }
    }
    Ok(())
}

fn dns_matches(name: &str, constraint: &str) -> bool {
    let name = name.trim_end_matches('.').to_ascii_lowercase();
    let constraint = constraint.to_ascii_lowercase();
    if constraint.is_empty() {
        return true;
    }
    if let Some(suffix) = constraint.strip_prefix('.') {
        return name.ends_with(&format!(".{suffix}"));
    }
    name == constraint || name.ends_with(&format!(".{constraint}"))
}

fn uri_host_matches(host: &str, constraint: &str) -> bool {
    let host = host.to_ascii_lowercase();
    let constraint = constraint.to_ascii_lowercase();
    if constraint.starts_with('.') {
        return host.ends_with(&constraint);
    }
    host == constraint
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dns_matching_follows_go() {
        assert!(dns_matches("istiod.istio-system.svc", "svc"));
        assert!(dns_matches("istiod.istio-system.svc", "istio-system.svc"));
        assert!(!dns_matches("istiod.istio-system.svc", "example.com"));
        assert!(dns_matches("a.example.com", ".example.com"));
        assert!(!dns_matches("example.com", ".example.com"));
        assert!(dns_matches("example.com", "example.com"));
        assert!(!dns_matches("badexample.com", "example.com"));
    }

    #[test]
    fn uri_matching_is_by_host() {
        assert!(uri_host_matches("cluster.local", "cluster.local"));
        assert!(!uri_host_matches("cluster.local", "example.org"));
        assert!(uri_host_matches("mesh.example.org", ".example.org"));
        assert!(!uri_host_matches("example.org", ".example.org"));
    }
}
