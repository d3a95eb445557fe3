//! The mesh's common root: generation and import. The CA that signs the clusters'
//! intermediates is either the root itself (self-signed: the trust anchor) or a mesh CA below
//! an anchor the company keeps offline, with the chain that leads there.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
use time::OffsetDateTime;

use super::profile::{Subject, random_serial};
use super::{CaKey, Cert, KeyAlgorithm, PkiError, add_validity};

/// The CA that signs intermediates, with its key in hand (file or Vault KV store): a
/// self-signed root, or a mesh CA with `chain`, the certificates above it up to and including
/// a self-signed anchor. `Debug` shows no key material.
#[derive(Debug)]
pub struct RootCa {
    cert: Cert,
    key: CaKey,
    chain: Vec<Cert>,
}

/// What a freshly generated root looks like.
#[derive(Clone, Debug)]
pub struct RootSpec {
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
    pub subject: Subject,
}

/// Clock skew allowance: certificates start this long before `now`, as Istio's own CA does, so
/// a peer whose clock runs slightly behind does not see a not-yet-valid certificate.
pub const BACKDATE: Duration = Duration::from_secs(5 * 60);

/// Generates a self-signed root: explicit random serial, basicConstraints critical CA:TRUE
/// (no path length: the root may sit above intermediate layers), keyUsage critical
/// keyCertSign+cRLSign, subject key identifier (docs/istio.md §2).
pub fn generate_root(spec: &RootSpec, now: OffsetDateTime) -> Result<RootCa, PkiError> {
    let not_after = add_validity(now, spec.validity)?;
    let key = CaKey::generate(spec.key_algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = spec.subject.to_distinguished_name();
    params.serial_number = Some(random_serial());
    params.not_before = now - BACKDATE;
    params.not_after = not_after;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let cert = params.self_signed(key.signer())?;
    let cert = Cert::from_der(cert.der().to_vec(), "generated root")?;
    Ok(RootCa {
        cert,
        key,
        chain: Vec::new(),
    })
}

/// Imports an existing root from PEM, refusing anything istiod could not use: not a CA,
/// expired or not yet valid at `now`, unsupported key algorithm, key not matching.
pub fn import_root(
    cert_pem: &[u8],
    key_pem: &[u8],
    now: OffsetDateTime,
    cert_what: &str,
    key_what: &str,
) -> Result<RootCa, PkiError> {
    import_root_with_chain(cert_pem, key_pem, None, now, (cert_what, key_what, ""))
}

/// [`import_root`] of a self-signed root (`chain` `None`), or of a mesh CA below an anchor:
/// `chain` holds the certificates above it, up to and including the self-signed anchor (the
/// mesh CA itself may come first). Every link is checked as Go's verifier would check it.
pub fn import_root_with_chain(
    cert_pem: &[u8],
    key_pem: &[u8],
    chain_pem: Option<&[u8]>,
    now: OffsetDateTime,
    (cert_what, key_what, chain_what): (&str, &str, &str),
) -> Result<RootCa, PkiError> {
    let (cert, chain) = check_signing_ca(cert_pem, chain_pem, now, (cert_what, chain_what))?;
    let key = CaKey::from_pem(key_pem, key_what)?;
    RootCa::new(cert, key, cert_what)?.with_chain(chain, chain_what)
}

/// The checks of [`import_root_with_chain`] that need no key: the CA certificate and the
/// certificates above it (none for a self-signed root), as a store would keep them. Also for a
/// CA whose key stays where it was made (inside Vault).
pub fn check_signing_ca(
    cert_pem: &[u8],
    chain_pem: Option<&[u8]>,
    now: OffsetDateTime,
    (cert_what, chain_what): (&str, &str),
) -> Result<(Cert, Vec<Cert>), PkiError> {
    let cert = Cert::one_from_pem(cert_pem, cert_what)?;
    cert.supported_key(cert_what)?;
    if !cert.info().is_ca {
        return Err(PkiError::NotCa {
            what: cert_what.to_string(),
        });
    }
    let invalid = |reason: String| PkiError::Invalid {
        what: cert_what.to_string(),
        reason,
    };
    let x = cert.x509();
    if let Some(ku) = x.key_usage().ok().flatten()
        && !ku.value.key_cert_sign()
    {
        return Err(invalid("keyUsage does not allow keyCertSign".to_string()));
    }
    if cert.info().path_len == Some(0) {
        return Err(invalid(
            "pathlen:0 leaves no room for the per-cluster intermediates below it".to_string(),
        ));
    }
    if let Ok(Some(eku)) = x.extended_key_usage()
        && !eku.value.any
        && !eku.value.server_auth
    {
        return Err(invalid(
            "its extendedKeyUsage lacks serverAuth; Go's verifier (istiod) would reject every \
                 chain through it"
                .to_string(),
        ));
    }
    if let Some(reason) = super::constraints::go_would_refuse(&cert) {
        return Err(invalid(reason));
    }
    let self_signed = cert.is_self_issued() && super::verify::check_signature(&cert, &cert).is_ok();
    let chain = match chain_pem {
        None if !self_signed => {
            return Err(invalid(
                "not a self-signed root: for a mesh CA below another root, give the \
                 certificates above it up to that root with --chain"
                    .to_string(),
            ));
        }
        None => Vec::new(),
        Some(_) if self_signed => {
            return Err(invalid(
                "it is a self-signed root itself: --chain is for a mesh CA below one".to_string(),
            ));
        }
        Some(pem) => {
            let mut chain = Cert::all_from_pem(pem, chain_what)?;
            if chain.first() == Some(&cert) {
                chain.remove(0);
            }
            if chain.is_empty() {
                return Err(PkiError::Invalid {
                    what: chain_what.to_string(),
                    reason: "it holds no certificate above the mesh CA".to_string(),
                });
            }
            chain
        }
    };
    cert.check_valid_at(now, cert_what)?;
    check_chain(&cert, &chain, now).map_err(|reason| PkiError::Invalid {
        what: chain_what.to_string(),
        reason,
    })?;
    Ok((cert, chain))
}

/// A new key for a mesh CA and a certificate signing request for it (PEM), for the company's
/// CA to sign offline: the subject per `spec`, and a request for a CA certificate
/// (basicConstraints CA:TRUE, keyUsage keyCertSign and cRLSign). The signer decides the path
/// length; it must leave room for the clusters' intermediates (checked at import).
pub fn mesh_ca_request(spec: &RootSpec) -> Result<(CaKey, String), PkiError> {
    let key = CaKey::generate(spec.key_algorithm)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = spec.subject.to_distinguished_name();
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    // basicConstraints, critical: SEQUENCE { BOOLEAN TRUE } (rcgen writes no CA flag into a
    // request itself).
    let mut ca = rcgen::CustomExtension::from_oid_content(
        &[2, 5, 29, 19],
        vec![0x30, 0x03, 0x01, 0x01, 0xFF],
    );
    ca.set_criticality(true);
    params.custom_extensions = vec![ca];
    let csr = params.serialize_request(key.signer())?;
    let pem = csr.pem()?;
    Ok((key, pem))
}

/// The public key (DER SubjectPublicKeyInfo) a certificate signing request (PEM) asks a
/// certificate for.
pub fn request_public_key(request_pem: &[u8], what: &str) -> Result<Vec<u8>, PkiError> {
    use rustls::pki_types::pem::PemObject;
    use x509_parser::prelude::FromDer;
    let invalid = |reason: String| PkiError::Invalid {
        what: what.to_string(),
        reason,
    };
    let der = rustls::pki_types::CertificateSigningRequestDer::from_pem_slice(request_pem)
        .map_err(|e| invalid(format!("no certificate signing request in it ({e})")))?;
    let (_, request) =
        x509_parser::certification_request::X509CertificationRequest::from_der(der.as_ref())
            .map_err(|e| invalid(format!("not a certificate signing request ({e})")))?;
    Ok(request.certification_request_info.subject_pki.raw.to_vec())
}

/// Checks that `chain` leads from `signer` to a self-signed anchor, each certificate signed by
/// the next and checked as `cacerts` validation checks an issuer (a CA that may sign, valid at
/// `now`, no EKU Go refuses, the anchor trusted as configured), with a path length that leaves
/// room for what hangs below it: the clusters' intermediates, then workload leaves.
pub(crate) fn check_chain(
    signer: &Cert,
    chain: &[Cert],
    now: OffsetDateTime,
) -> Result<(), String> {
    let Some(anchor) = chain.last() else {
        return Ok(());
    };
    if !anchor.is_self_issued() || super::verify::check_signature(anchor, anchor).is_err() {
        return Err(format!(
            "it does not lead to a self-signed anchor: the last certificate, {}, is issued by {}",
            anchor.info().subject,
            anchor.info().issuer
        ));
    }
    let mut child = signer;
    for (i, issuer) in chain.iter().enumerate() {
        super::verify::check_signature(child, issuer).map_err(|e| {
            format!(
                "it does not lead from {} to its anchor: {e}",
                signer.info().subject
            )
        })?;
        // Below chain[i]: the CAs between it and the signer, the signer, and a cluster's
        // intermediate, before any workload leaf.
        let below = i + 2;
        super::verify::check_issuer(issuer, i + 1 == chain.len(), below, now)?;
        child = issuer;
    }
    Ok(())
}

impl RootCa {
    /// Pairs a certificate with its key, checking that they belong together.
    pub fn new(cert: Cert, key: CaKey, what: &str) -> Result<Self, PkiError> {
        if cert.public_key_raw() != key.public_key_raw() {
            return Err(PkiError::KeyMismatch {
                what: what.to_string(),
            });
        }
        Ok(RootCa {
            cert,
            key,
            chain: Vec::new(),
        })
    }

    /// Whether `chain` leads from `signer` to a self-signed anchor, each certificate signed by
    /// the next (structure only: validity and path lengths are for [`check_chain`]).
    pub fn check_chain_structure(signer: &Cert, chain: &[Cert]) -> Result<(), String> {
        let mut child = signer;
        for issuer in chain {
            super::verify::check_signature(child, issuer)?;
            child = issuer;
        }
        match chain.last() {
            Some(a) if !a.is_self_issued() => Err(format!(
                "it does not end with a self-signed anchor ({} is issued by {})",
                a.info().subject,
                a.info().issuer
            )),
            _ => Ok(()),
        }
    }

    /// Sets the certificates above this CA, up to its anchor, as a store keeps them. They are
    /// checked for structure only (each signed by the next, ending self-signed), not for
    /// validity now: an expired link is for `status` and the alerts to report, and for
    /// issuance to refuse.
    pub fn with_chain(mut self, chain: Vec<Cert>, what: &str) -> Result<Self, PkiError> {
        Self::check_chain_structure(&self.cert, &chain).map_err(|reason| PkiError::Invalid {
            what: what.to_string(),
            reason,
        })?;
        self.chain = chain;
        Ok(self)
    }

    /// The CA that signs the clusters' intermediates.
    pub fn cert(&self) -> &Cert {
        &self.cert
    }

    /// The certificates above [`RootCa::cert`], up to and including the anchor (empty when it
    /// is itself the anchor).
    pub fn chain(&self) -> &[Cert] {
        &self.chain
    }

    /// The trust anchor: what every cluster's bundle holds.
    pub fn anchor(&self) -> &Cert {
        self.chain.last().unwrap_or(&self.cert)
    }

    /// What sits between an intermediate this CA issues and the anchor, in `cert-chain.pem`
    /// order: this CA and the certificates above it, the anchor excluded.
    pub fn between(&self) -> Vec<Cert> {
        match self.chain.split_last() {
            Some((_, above)) => std::iter::once(&self.cert).chain(above).cloned().collect(),
            None => Vec::new(),
        }
    }

    pub fn key(&self) -> &CaKey {
        &self.key
    }

    pub fn cert_pem(&self) -> String {
        self.cert.to_pem()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::KeyDescription;

    fn now() -> OffsetDateTime {
        time::macros::datetime!(2026-01-01 00:00 UTC)
    }

    fn spec(alg: KeyAlgorithm) -> RootSpec {
        RootSpec {
            key_algorithm: alg,
            validity: Duration::from_secs(10 * 365 * 86400),
            subject: Subject::istio_root(),
        }
    }

    #[test]
    fn generated_root_has_the_required_shape() {
        for alg in [
            KeyAlgorithm::EcdsaP256,
            KeyAlgorithm::EcdsaP384,
            KeyAlgorithm::Rsa2048,
        ] {
            let root = generate_root(&spec(alg), now()).unwrap();
            let info = root.cert().info();
            assert!(info.is_ca);
            assert_eq!(info.path_len, None);
            assert_eq!(root.cert().key(), &KeyDescription::Supported(alg));
            assert_eq!(info.serial.len(), 32, "128-bit serial: {}", info.serial);
            assert_eq!(info.not_before, now() - BACKDATE);
            assert_eq!(
                info.not_after,
                now() + Duration::from_secs(10 * 365 * 86400)
            );
            let x = root.cert().x509();
            let bc = x.basic_constraints().unwrap().unwrap();
            assert!(bc.critical);
            let ku = x.key_usage().unwrap().unwrap();
            assert!(ku.critical && ku.value.key_cert_sign() && ku.value.crl_sign());
            assert!(x.extended_key_usage().unwrap().is_none());
            assert!(
                x.iter_extensions().any(
                    |e| e.oid == x509_parser::oid_registry::OID_X509_EXT_SUBJECT_KEY_IDENTIFIER
                )
            );
            assert!(root.cert().is_self_issued());
        }
    }

    #[test]
    fn serials_differ_between_roots_with_the_same_key_algorithm() {
        let a = generate_root(&spec(KeyAlgorithm::EcdsaP256), now()).unwrap();
        let b = generate_root(&spec(KeyAlgorithm::EcdsaP256), now()).unwrap();
        assert_ne!(a.cert().info().serial, b.cert().info().serial);
    }

    #[test]
    fn import_round_trips_and_checks_the_pair() {
        let root = generate_root(&spec(KeyAlgorithm::EcdsaP256), now()).unwrap();
        let other = generate_root(&spec(KeyAlgorithm::EcdsaP256), now()).unwrap();
        let cert_pem = root.cert_pem();
        let ok = import_root(
            cert_pem.as_bytes(),
            root.key().to_pem().as_bytes(),
            now(),
            "c",
            "k",
        );
        assert_eq!(ok.unwrap().cert(), root.cert());
        let err = import_root(
            cert_pem.as_bytes(),
            other.key().to_pem().as_bytes(),
            now(),
            "c",
            "k",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::KeyMismatch { .. }), "{err}");
    }

    #[test]
    fn import_refuses_expired_and_future_roots() {
        let root = generate_root(&spec(KeyAlgorithm::EcdsaP256), now()).unwrap();
        let (c, k) = (root.cert_pem(), root.key().to_pem());
        let later = now() + Duration::from_secs(11 * 365 * 86400);
        let err = import_root(c.as_bytes(), k.as_bytes(), later, "root.pem", "k").unwrap_err();
        assert!(matches!(err, PkiError::Expired { .. }), "{err}");
        let earlier = now() - Duration::from_secs(86400);
        let err = import_root(c.as_bytes(), k.as_bytes(), earlier, "root.pem", "k").unwrap_err();
        assert!(matches!(err, PkiError::NotYetValid { .. }), "{err}");
    }

    #[test]
    fn import_refuses_a_non_ca_certificate() {
        let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let mut params = CertificateParams::new(vec!["leaf.example".to_string()]).unwrap();
        params.not_before = now() - BACKDATE;
        params.not_after = now() + Duration::from_secs(86400);
        let leaf = params.self_signed(key.signer()).unwrap();
        let err = import_root(
            leaf.pem().as_bytes(),
            key.to_pem().as_bytes(),
            now(),
            "leaf.pem",
            "k",
        )
        .unwrap_err();
        assert!(matches!(err, PkiError::NotCa { .. }), "{err}");
        assert!(err.to_string().contains("leaf.pem"));
    }
}
