//! What a policy file may say: lifetimes that hold together (an intermediate renewed with
//! more life left than a workload certificate lives) and names Istio accepts.

use std::time::Duration;

use super::{MAX_ROOT_VALIDITY, RawPolicy, RenewBefore};

/// A policy field that does not hold, and why.
type Refusal = (&'static str, String);

/// Lifetimes a policy may set: a root of a day to a century, an intermediate of at least an
/// hour that never outlives the root, renewed before it expires with at least a workload
/// certificate's lifetime left.
pub(super) fn check_lifetimes(
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
pub(super) fn left_at_renewal(validity: Duration, renew_before: RenewBefore) -> Duration {
    match renew_before {
        RenewBefore::Fraction(f) => validity.mul_f64(f),
        RenewBefore::Duration(d) => d.min(validity),
    }
}

/// Why an intermediate with `left` of its life at renewal is refused when workload
/// certificates of `ttl` (as `source` says) are signed.
pub(super) fn outlived(left: Duration, ttl: Duration, source: &str) -> String {
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
pub(super) fn check_names(raw: &RawPolicy) -> Result<(), Refusal> {
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
