//! Per-cluster intermediate CAs, signed by the common root.

use std::time::Duration;

use rcgen::{BasicConstraints, CertificateParams, IsCa, Issuer, KeyUsagePurpose, SanType};
use time::OffsetDateTime;

use super::profile::{Subject, random_serial};
use super::root::BACKDATE;
use super::{CaKey, Cert, KeyAlgorithm, PkiError, RootCa, add_validity, fmt_time};

/// What to issue for one cluster, fully resolved from the policy.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct IntermediateSpec {
    pub key_algorithm: KeyAlgorithm,
    pub validity: Duration,
    pub path_len: u8,
    pub subject: Subject,
    pub dns_names: Vec<String>,
}

/// An issued intermediate with its (fresh) key. `Debug` shows no key material.
#[derive(Debug)]
pub struct IntermediateCa {
    pub cert: Cert,
    pub key: CaKey,
}

/// An intermediate whose remaining life is shorter than this is not worth issuing: the root is
/// about to expire and must be rotated.
const MIN_LIFETIME: Duration = Duration::from_secs(3600);

/// Issues an intermediate for one cluster with a NEW key. Validity is capped by the root's:
/// an intermediate never outlives the root that signed it. The CA flag, path length, key
/// usages, serial and validity are always set here, never taken from elsewhere.
pub fn issue_intermediate(
    root: &RootCa,
    spec: &IntermediateSpec,
    now: OffsetDateTime,
) -> Result<IntermediateCa, PkiError> {
    let root_info = root.cert().info();
    root.cert().check_valid_at(now, "root certificate")?;
    for above in root.chain() {
        above.check_valid_at(
            now,
            &format!("{} (in the root's chain)", above.info().subject),
        )?;
    }
    // Never valid past any certificate of its path to the anchor.
    let ends = root
        .chain()
        .iter()
        .map(|c| c.info().not_after)
        .fold(root_info.not_after, OffsetDateTime::min);
    let not_after = add_validity(now, spec.validity)?.min(ends);
    if not_after < now + MIN_LIFETIME {
        return Err(PkiError::RootExpiresTooSoon {
            root_not_after: fmt_time(ends),
        });
    }
    let key = CaKey::generate(spec.key_algorithm)?;
    let mut params = intermediate_params(spec, now, root_info.not_before)?;
    params.not_after = not_after;

    let issuer = Issuer::from_ca_cert_der(&root.cert().der().into(), root.key().signer())?;
    let signed = params.signed_by(key.signer(), &issuer)?;
    let cert = Cert::from_der(signed.der().to_vec(), "issued intermediate")?;
    // Go's verifier (istiod) and OpenSSL chain by exact issuer/subject bytes; rcgen re-encodes
    // the root's subject, so make sure it came out identical.
    if cert.x509().issuer().as_raw() != root.cert().x509().subject().as_raw() {
        return Err(PkiError::Invalid {
            what: "root certificate".to_string(),
            reason: "its subject name cannot be reproduced byte-for-byte in the issuer field \
                     (multi-valued RDN or unusual string type)"
                .to_string(),
        });
    }
    Ok(IntermediateCa { cert, key })
}

/// Certificate parameters for an intermediate: basicConstraints critical CA:TRUE with the
/// policy's pathlen, keyUsage keyCertSign+cRLSign+digitalSignature, SAN
/// DNS:istiod.istio-system.svc, authority key id, and NO extendedKeyUsage (Go's verifier, as
/// istiod uses it, rejects a CA whose EKU does not allow serverAuth — docs/istio.md §1).
pub(crate) fn intermediate_params(
    spec: &IntermediateSpec,
    now: OffsetDateTime,
    earliest: OffsetDateTime,
) -> Result<CertificateParams, PkiError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = spec.subject.to_distinguished_name();
    params.serial_number = Some(random_serial());
    params.not_before = (now - BACKDATE).max(earliest);
    params.not_after = add_validity(now, spec.validity)?;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(spec.path_len));
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    params.extended_key_usages = Vec::new();
    params.use_authority_key_identifier_extension = true;
    params.subject_alt_names = spec
        .dns_names
        .iter()
        .map(|n| {
            n.clone()
                .try_into()
                .map(SanType::DnsName)
                .map_err(|_| PkiError::Invalid {
                    what: "subject alternative name".to_string(),
                    reason: format!("{n:?} is not a valid DNS name"),
                })
        })
        .collect::<Result<_, _>>()?;
    Ok(params)
}

/// Parameters for the CSR of an intermediate that a remote CA (Vault PKI) signs: the subject
/// and SANs cacertd would set itself. The CA flag, path length, validity and serial are the
/// signer's to set (a CSR cannot carry them), and are checked on what comes back.
pub fn intermediate_params_for_csr(spec: &IntermediateSpec) -> Result<CertificateParams, PkiError> {
    let full = intermediate_params(spec, OffsetDateTime::UNIX_EPOCH, OffsetDateTime::UNIX_EPOCH)?;
    let mut params = CertificateParams::default();
    params.distinguished_name = full.distinguished_name;
    params.subject_alt_names = full.subject_alt_names;
    Ok(params)
}

/// Checks an intermediate a remote CA signed for `key` before it is used: the key is ours,
/// it is a CA with the path length asked for, it carries no EKU, the root signed it, and it
/// neither outlives the root nor lives longer than asked.
pub fn check_signed_intermediate(
    cert: &Cert,
    key: &CaKey,
    root: &Cert,
    spec: &IntermediateSpec,
    what: &str,
) -> Result<(), PkiError> {
    let invalid = |reason: String| PkiError::Invalid {
        what: what.to_string(),
        reason,
    };
    if cert.public_key_raw() != key.public_key_raw() {
        return Err(PkiError::KeyMismatch {
            what: what.to_string(),
        });
    }
    let info = cert.info();
    if !info.is_ca || info.path_len != Some(u32::from(spec.path_len)) {
        return Err(invalid(format!(
            "expected CA:TRUE pathlen:{}, got CA:{} pathlen:{:?}",
            spec.path_len, info.is_ca, info.path_len
        )));
    }
    match cert.x509().extended_key_usage() {
        Ok(None) => {}
        Ok(Some(_)) => return Err(invalid("carries an extendedKeyUsage; CAs must not".into())),
        Err(e) => return Err(invalid(format!("unreadable extendedKeyUsage: {e}"))),
    }
    // The signer must have kept the CSR's subject and SANs (use_csr_values), or every later
    // run would see a cluster whose intermediate does not match its policy.
    kept_names(cert, spec).map_err(invalid)?;
    if cert.x509().issuer().as_raw() != root.x509().subject().as_raw() {
        return Err(invalid(format!(
            "issued by {:?}, not by the root {:?}",
            info.issuer,
            root.info().subject
        )));
    }
    super::verify::check_signature(cert, root).map_err(invalid)?;
    if info.not_after > root.info().not_after {
        return Err(invalid("outlives the root".into()));
    }
    // Remote CAs backdate a little too; allow for it.
    let slack = time::Duration::minutes(10);
    let max = time::Duration::try_from(spec.validity).unwrap_or(time::Duration::MAX) + slack;
    if info.not_after - info.not_before > max {
        return Err(invalid(format!(
            "valid {} to {}, longer than the {} asked for",
            fmt_time(info.not_before),
            fmt_time(info.not_after),
            humantime::format_duration(spec.validity)
        )));
    }
    Ok(())
}

/// Why `cert` does not carry the CN and DNS SANs `spec` asked for, if it does not.
fn kept_names(cert: &Cert, spec: &IntermediateSpec) -> Result<(), String> {
    let x = cert.x509();
    let cn = x
        .subject()
        .iter_common_name()
        .next()
        .and_then(|a| a.as_str().ok())
        .unwrap_or("");
    if cn != spec.subject.common_name {
        return Err(format!(
            "subject CN is {cn:?}, {:?} was asked for",
            spec.subject.common_name
        ));
    }
    let mut dns: Vec<String> = x
        .subject_alternative_name()
        .ok()
        .flatten()
        .map(|san| {
            san.value
                .general_names
                .iter()
                .filter_map(|n| match n {
                    x509_parser::extensions::GeneralName::DNSName(d) => Some(d.to_string()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let mut want = spec.dns_names.clone();
    dns.sort();
    want.sort();
    if dns != want {
        return Err(format!("DNS SANs are {dns:?}, {want:?} were asked for"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{ISTIOD_SAN, RootSpec, generate_root};
    use time::macros::datetime;

    const DAY: u64 = 86400;

    fn now() -> OffsetDateTime {
        datetime!(2026-01-01 00:00 UTC)
    }

    fn root(valid_days: u64) -> RootCa {
        let spec = RootSpec {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(valid_days * DAY),
            subject: Subject::istio_root(),
        };
        generate_root(&spec, now()).unwrap()
    }

    fn spec(path_len: u8) -> IntermediateSpec {
        IntermediateSpec {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(365 * DAY),
            path_len,
            subject: Subject::istio_intermediate("cluster1"),
            dns_names: vec![ISTIOD_SAN.to_string()],
        }
    }

    #[test]
    fn intermediate_has_the_istio_shape() {
        let root = root(3650);
        let int = issue_intermediate(&root, &spec(0), now()).unwrap();
        let x = int.cert.x509();
        let bc = x.basic_constraints().unwrap().unwrap();
        assert!(bc.critical && bc.value.ca);
        assert_eq!(bc.value.path_len_constraint, Some(0));
        let ku = x.key_usage().unwrap().unwrap();
        assert!(ku.value.key_cert_sign() && ku.value.crl_sign() && ku.value.digital_signature());
        assert!(
            x.extended_key_usage().unwrap().is_none(),
            "CAs must carry no EKU"
        );
        let san = x.subject_alternative_name().unwrap().unwrap();
        assert_eq!(
            format!("{:?}", san.value.general_names),
            "[DNSName(\"istiod.istio-system.svc\")]"
        );
        assert_eq!(
            x.subject().to_string(),
            "O=Istio, L=cluster1, CN=Intermediate CA"
        );
        assert_eq!(x.issuer().as_raw(), root.cert().x509().subject().as_raw());
        let aki = x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::AuthorityKeyIdentifier(a) => {
                    a.key_identifier.clone()
                }
                _ => None,
            })
            .expect("authority key id");
        let root_x = root.cert().x509();
        let ski = root_x
            .iter_extensions()
            .find_map(|e| match e.parsed_extension() {
                x509_parser::extensions::ParsedExtension::SubjectKeyIdentifier(k) => {
                    Some(k.clone())
                }
                _ => None,
            })
            .unwrap();
        assert_eq!(aki.0, ski.0);
        assert_eq!(
            int.cert.info().not_after,
            now() + Duration::from_secs(365 * DAY)
        );
        assert_eq!(int.cert.info().serial.len(), 32);
    }

    #[test]
    fn each_issuance_gets_a_new_key_and_serial() {
        let root = root(3650);
        let a = issue_intermediate(&root, &spec(0), now()).unwrap();
        let b = issue_intermediate(&root, &spec(0), now()).unwrap();
        assert_ne!(a.key.public_key_raw(), b.key.public_key_raw());
        assert_ne!(a.cert.info().serial, b.cert.info().serial);
    }

    #[test]
    fn validity_is_capped_by_the_root() {
        let root = root(100);
        let int = issue_intermediate(&root, &spec(0), now()).unwrap();
        assert_eq!(int.cert.info().not_after, root.cert().info().not_after);
        assert!(int.cert.info().not_before >= root.cert().info().not_before);
    }

    #[test]
    fn a_root_about_to_expire_is_refused() {
        let root = root(100);
        let late = now() + Duration::from_secs(100 * DAY) - Duration::from_secs(60);
        let err = issue_intermediate(&root, &spec(0), late).unwrap_err();
        assert!(matches!(err, PkiError::RootExpiresTooSoon { .. }), "{err}");
        let after = now() + Duration::from_secs(101 * DAY);
        let err = issue_intermediate(&root, &spec(0), after).unwrap_err();
        assert!(matches!(err, PkiError::Expired { .. }), "{err}");
    }

    #[test]
    fn path_len_follows_the_spec() {
        let root = root(3650);
        let int = issue_intermediate(&root, &spec(2), now()).unwrap();
        assert_eq!(int.cert.info().path_len, Some(2));
    }

    #[test]
    fn serials_are_positive_and_sixteen_bytes() {
        for _ in 0..200 {
            let s = random_serial().to_bytes();
            assert_eq!(s.len(), 16);
            assert!(s[0] != 0 && s[0] < 0x80);
        }
    }

    #[test]
    fn what_a_remote_signer_returns_is_checked() {
        let (r, other) = (root(3650), root(3650));
        let int = issue_intermediate(&r, &spec(0), now()).unwrap();
        let what = "signed";
        assert!(check_signed_intermediate(&int.cert, &int.key, r.cert(), &spec(0), what).is_ok());
        let stranger = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
        let e =
            check_signed_intermediate(&int.cert, &stranger, r.cert(), &spec(0), what).unwrap_err();
        assert!(matches!(e, PkiError::KeyMismatch { .. }), "{e}");
        let e = check_signed_intermediate(&int.cert, &int.key, other.cert(), &spec(0), what)
            .unwrap_err();
        assert!(
            e.to_string().contains("not by the root") || e.to_string().contains("signature"),
            "{e}"
        );
        let e =
            check_signed_intermediate(&int.cert, &int.key, r.cert(), &spec(1), what).unwrap_err();
        assert!(e.to_string().contains("pathlen"), "{e}");
        let mut short = spec(0);
        short.validity = Duration::from_secs(30 * DAY);
        let e = check_signed_intermediate(&int.cert, &int.key, r.cert(), &short, what).unwrap_err();
        assert!(e.to_string().contains("longer than"), "{e}");
        let mut renamed = spec(0);
        renamed.subject.common_name = "Other CA".into();
        let e =
            check_signed_intermediate(&int.cert, &int.key, r.cert(), &renamed, what).unwrap_err();
        assert!(e.to_string().contains("subject CN"), "{e}");
    }
}
