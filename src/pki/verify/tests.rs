use super::*;
use crate::pki::RootCa;
use crate::pki::fixtures::{DAY, cacerts_under, now, root};
use std::time::Duration;
use zeroize::Zeroizing;

fn bundle(root: &RootCa) -> CaCertsFiles {
    cacerts_under(root)
}

fn messages(r: Result<VerifiedCaCerts, Vec<BundleProblem>>) -> Vec<String> {
    r.unwrap_err().iter().map(ToString::to_string).collect()
}

#[test]
fn a_fresh_bundle_verifies() {
    let root = root();
    let v = verify_cacerts(&bundle(&root), now()).unwrap();
    assert_eq!(v.anchor(), root.cert());
    assert_eq!(v.path().len(), 2);
    assert!(v.warnings().is_empty());
}

#[test]
fn every_missing_file_is_named() {
    let root = root();
    let mut b = bundle(&root);
    b.cert_chain.clear();
    b.ca_key = Zeroizing::new(Vec::new());
    let m = messages(verify_cacerts(&b, now()));
    assert_eq!(m.len(), 2, "{m:?}");
    assert!(m[0].starts_with("ca-key.pem: missing"));
    assert!(m[1].starts_with("cert-chain.pem: missing"));
}

#[test]
fn a_foreign_key_is_caught() {
    let root = root();
    let mut b = bundle(&root);
    b.ca_key = bundle(&root).ca_key;
    let m = messages(verify_cacerts(&b, now()));
    assert_eq!(
        m,
        vec!["ca-key.pem: does not match the public key of ca-cert.pem"]
    );
}

#[test]
fn an_unrelated_root_is_caught() {
    let (r1, r2) = (root(), root());
    let mut b = bundle(&r1);
    b.root_cert = r2.cert_pem().into_bytes();
    let m = messages(verify_cacerts(&b, now()));
    assert!(
        m.iter()
            .any(|m| m.contains("ca-cert.pem") && m.contains("does not verify")),
        "{m:?}"
    );
}

#[test]
fn expiry_is_judged_at_the_given_instant() {
    let root = root();
    let b = bundle(&root);
    assert!(verify_cacerts(&b, now() + Duration::from_secs(364 * DAY)).is_ok());
    let m = messages(verify_cacerts(&b, now() + Duration::from_secs(366 * DAY)));
    assert!(
        m.iter().any(|m| m.starts_with("ca-cert.pem: expired")),
        "{m:?}"
    );
}

#[test]
fn chain_must_start_with_the_signing_cert() {
    let root = root();
    let mut b = bundle(&root);
    b.cert_chain = root.cert_pem().into_bytes();
    let m = messages(verify_cacerts(&b, now()));
    assert_eq!(
        m,
        vec!["cert-chain.pem: must start with the certificate in ca-cert.pem (leaf-most first)"]
    );
}

#[test]
fn garbage_files_are_reported_per_file() {
    let root = root();
    let mut b = bundle(&root);
    b.root_cert = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n".to_vec();
    b.ca_cert = b"garbage".to_vec();
    let m = messages(verify_cacerts(&b, now()));
    assert!(
        m.iter().any(|m| m.starts_with("ca-cert.pem: no PEM block")),
        "{m:?}"
    );
    assert!(m.iter().any(|m| m.starts_with("root-cert.pem:")), "{m:?}");
}

#[test]
fn a_bundle_with_two_roots_verifies_against_either() {
    let (old, new) = (root(), root());
    let mut b = bundle(&new);
    let trust = TrustBundle::single(old.cert()).with_root_appended(new.cert());
    b.root_cert = trust.pem_bytes().to_vec();
    let v = verify_cacerts(&b, now()).unwrap();
    assert_eq!(v.anchor(), new.cert());
    assert_eq!(v.trust_bundle().roots().len(), 2);
}

#[test]
fn a_root_with_pathlen_zero_cannot_carry_an_intermediate() {
    use rcgen::{BasicConstraints, CertificateParams, IsCa, KeyUsagePurpose};
    let key = CaKey::generate(KeyAlgorithm::EcdsaP256).unwrap();
    let mut p = CertificateParams::default();
    p.not_before = now() - Duration::from_secs(60);
    p.not_after = now() + Duration::from_secs(3650 * DAY);
    p.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign];
    let cert = p.self_signed(key.signer()).unwrap();
    let cert = Cert::from_der(cert.der().to_vec(), "root").unwrap();
    let root = RootCa::new(cert, key, "root").unwrap();
    let m = messages(verify_cacerts(&bundle(&root), now()));
    assert!(m.iter().any(|m| m.contains("pathlen:0")), "{m:?}");
}
