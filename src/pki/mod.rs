//! The certificate authority core: keys, roots, intermediates, `cacerts` bundles and their
//! validation. Pure: no file, network or clock access — `now` is always a parameter.

mod bundle;
mod cert;
mod constraints;
mod crl;
#[cfg(test)]
pub(crate) mod fixtures;
mod intermediate;
mod key;
mod profile;
mod root;
pub(crate) mod secret_pem;
mod verify;

pub use bundle::{CaCertsFiles, TrustBundle};
pub use cert::{Cert, CertInfo, KeyDescription, fingerprint_sha256, normalize_fingerprint};
pub use crl::{
    Crl, Reason, Revoked, crls_pem, own_lists, refreshed, sign_crl, uncovered, verify_ca_crl,
    without_lapsed,
};
pub use intermediate::{
    IntermediateCa, IntermediateSpec, check_signed_intermediate, intermediate_params_for_csr,
    issue_intermediate,
};
pub use key::{CaKey, KeyAlgorithm};
pub use profile::{Subject, generation};
pub use root::{
    BACKDATE, RootCa, RootSpec, check_signing_ca, generate_root, import_root,
    import_root_with_chain, mesh_ca_request, request_public_key,
};
pub use secret_pem::MAX_PEM_TEXT;
pub(crate) use secret_pem::base64_secret;
pub use verify::{
    BundleProblem, VerifiedCaCerts, issued_by, issuing_root, verify_cacerts,
    verify_cacerts_for_mesh,
};

/// The SAN Istio's reference tooling puts on every intermediate (tools/certs Makefile.selfsigned.mk).
pub const ISTIOD_SAN: &str = "istiod.istio-system.svc";

/// Errors of the PKI core. Every variant names the input it is about (`what`), and none ever
/// carries key material: key parse errors are reduced to a reason string we choose ourselves.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{what}: no PEM block found (expected -----BEGIN {expected}-----)")]
    NoPem {
        what: String,
        expected: &'static str,
    },
    #[error("{what}: malformed PEM: {reason}")]
    BadPem { what: String, reason: String },
    #[error("{what}: not a valid X.509 certificate: {reason}")]
    BadCert { what: String, reason: String },
    #[error("{what}: {reason}")]
    BadKey { what: String, reason: String },
    #[error(
        "{what}: unsupported key {found}; istiod accepts ECDSA P-256, ECDSA P-384 and RSA 2048/3072/4096"
    )]
    UnsupportedKey { what: String, found: String },
    #[error("{what}: the private key does not match the certificate's public key")]
    KeyMismatch { what: String },
    #[error("{what}: not a CA certificate (basicConstraints CA:TRUE is missing)")]
    NotCa { what: String },
    #[error("{what}: expired at {not_after}")]
    Expired { what: String, not_after: String },
    #[error("{what}: not valid before {not_before}")]
    NotYetValid { what: String, not_before: String },
    #[error("{what}: {reason}")]
    Invalid { what: String, reason: String },
    #[error(
        "the root expires at {root_not_after}; an intermediate issued now would live only until then — rotate the root first"
    )]
    RootExpiresTooSoon { root_not_after: String },
    #[error("signing failed: {0}")]
    Sign(#[from] rcgen::Error),
}

/// `now + validity`, or an error if that is not a representable date.
pub(crate) fn add_validity(
    now: time::OffsetDateTime,
    validity: std::time::Duration,
) -> Result<time::OffsetDateTime, PkiError> {
    time::Duration::try_from(validity)
        .ok()
        .and_then(|d| now.checked_add(d))
        .filter(|t| t.year() <= 9999)
        .ok_or_else(|| PkiError::Invalid {
            what: "validity".to_string(),
            reason: format!("{} is too long", humantime::format_duration(validity)),
        })
}

/// Formats a timestamp the way every cacertd output does: RFC 3339, UTC, whole seconds.
pub fn fmt_time(t: time::OffsetDateTime) -> String {
    let t = t
        .to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t);
    t.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}
