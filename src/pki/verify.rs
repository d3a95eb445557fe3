//! Validation of a `cacerts` set the way istiod does it (docs/istio.md §1), and stricter where
//! istiod's check would let through material that breaks workloads later.
//!
//! istiod (security/pkg/pki/util/keycertbundle.go `verify`) parses `ca-cert.pem`, runs Go's
//! `x509.Certificate.Verify` with `root-cert.pem` as roots and `cert-chain.pem` as
//! intermediates (default key usage: serverAuth), parses the key and checks it matches. On top
//! of that we check what Go checks inside `Verify` (signatures, validity at `now`, CA flags,
//! path length, EKU) and what istiod needs from a signing CA: CA:TRUE, keyCertSign, a supported
//! key algorithm, all four files present, and path lengths that leave room for workload leaves.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Mutex, OnceLock};

use time::OffsetDateTime;

use super::constraints::{self, ConstrainedName};
use super::{CaCertsFiles, CaKey, Cert, KeyAlgorithm, PkiError, TrustBundle, fmt_time};

/// One reason a `cacerts` set is unusable, tied to the file it is about.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct BundleProblem {
    pub file: &'static str,
    pub message: String,
}

impl fmt::Display for BundleProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.file, self.message)
    }
}

impl BundleProblem {
    /// Every problem of a verification, in one line.
    pub fn join(problems: &[BundleProblem]) -> String {
        problems
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join("; ")
    }
}

/// A `cacerts` set that passed [`verify_cacerts`] at some instant. Only that function builds it.
#[derive(Debug)]
pub struct VerifiedCaCerts {
    signing: Cert,
    key_algorithm: KeyAlgorithm,
    /// From the signing certificate (index 0) up to and including the trust anchor.
    path: Vec<Cert>,
    trust: TrustBundle,
    warnings: Vec<BundleProblem>,
}

impl VerifiedCaCerts {
    /// The signing (intermediate) certificate, `ca-cert.pem`.
    pub fn signing_cert(&self) -> &Cert {
        &self.signing
    }

    pub fn key_algorithm(&self) -> KeyAlgorithm {
        self.key_algorithm
    }

    /// The root in `root-cert.pem` that `ca-cert.pem` chains to.
    pub fn anchor(&self) -> &Cert {
        // The path always ends at the anchor; it has at least [signing, anchor].
        &self.path[self.path.len() - 1]
    }

    pub fn path(&self) -> &[Cert] {
        &self.path
    }

    pub fn trust_bundle(&self) -> &TrustBundle {
        &self.trust
    }

    /// Things istiod accepts but an operator should know about.
    pub fn warnings(&self) -> &[BundleProblem] {
        &self.warnings
    }
}

/// Longest chain we try to build; Istio meshes use one or two levels.
const MAX_DEPTH: usize = 6;

/// Validates a `cacerts` set at `now`. Returns every problem found, not just the first.
pub fn verify_cacerts(
    files: &CaCertsFiles,
    now: OffsetDateTime,
) -> Result<VerifiedCaCerts, Vec<BundleProblem>> {
    verify_cacerts_for_mesh(files, now, None)
}

/// [`verify_cacerts`], also checking that name constraints in the chain admit the workload
/// identities of `trust_domain` (`spiffe://<trust_domain>/...`).
pub fn verify_cacerts_for_mesh(
    files: &CaCertsFiles,
    now: OffsetDateTime,
    trust_domain: Option<&str>,
) -> Result<VerifiedCaCerts, Vec<BundleProblem>> {
    let missing: Vec<BundleProblem> = files
        .entries()
        .into_iter()
        .filter(|(_, bytes)| bytes.iter().all(u8::is_ascii_whitespace))
        .map(|(file, _)| BundleProblem {
            file,
            message: "missing or empty (istiod 1.27+ refuses a cacerts set without all four keys)"
                .to_string(),
        })
        .collect();
    if !missing.is_empty() {
        return Err(missing);
    }
    let mut f = Findings::default();
    let signing = f.signing_cert(files);
    let key = f.ok(
        CaCertsFiles::CA_KEY,
        CaKey::from_pem(&files.ca_key, CaCertsFiles::CA_KEY),
    );
    let trust = f.trust_bundle(files);
    let chain = f.chain(files);
    let key_algorithm = signing
        .as_ref()
        .and_then(|signing| f.check_signing(signing, key.as_ref(), now));
    if let (Some(signing), Some(chain)) = (&signing, &chain)
        && chain.first().map(Cert::der) != Some(signing.der())
    {
        f.problem(
            CaCertsFiles::CERT_CHAIN,
            "must start with the certificate in ca-cert.pem (leaf-most first)".to_string(),
        );
    }
    if let Some(trust) = &trust {
        f.check_roots(trust, now);
    }
    let path = match (&signing, &trust, &chain) {
        (Some(signing), Some(trust), Some(chain)) => {
            f.path(signing, trust, chain, now, trust_domain)
        }
        _ => None,
    };
    match (signing, key_algorithm, path, trust) {
        (Some(signing), Some(key_algorithm), Some(path), Some(trust)) if f.problems.is_empty() => {
            Ok(VerifiedCaCerts {
                signing,
                key_algorithm,
                path,
                trust,
                warnings: f.warnings,
            })
        }
        _ => Err(f.problems),
    }
}

/// What a verification found so far: problems (istiod would refuse the set) and warnings.
#[derive(Default)]
struct Findings {
    problems: Vec<BundleProblem>,
    warnings: Vec<BundleProblem>,
}

impl Findings {
    fn problem(&mut self, file: &'static str, message: String) {
        self.problems.push(BundleProblem { file, message });
    }

    fn warn(&mut self, file: &'static str, message: String) {
        self.warnings.push(BundleProblem { file, message });
    }

    /// The value, or `None` with the error noted against `file`.
    fn ok<T>(&mut self, file: &'static str, r: Result<T, PkiError>) -> Option<T> {
        r.map_err(|e| self.problem(file, strip_what(&e))).ok()
    }

    /// `ca-cert.pem`'s first certificate (istiod ignores the rest).
    fn signing_cert(&mut self, files: &CaCertsFiles) -> Option<Cert> {
        let mut certs = self.ok(
            CaCertsFiles::CA_CERT,
            Cert::all_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT),
        )?;
        if certs.len() > 1 {
            self.warn(
                CaCertsFiles::CA_CERT,
                format!(
                    "{} certificates; istiod uses the first and ignores the rest",
                    certs.len()
                ),
            );
        }
        Some(certs.remove(0))
    }

    /// `root-cert.pem`, read as istiod reads it (Go's AppendCertsFromPEM skips what it cannot
    /// use).
    fn trust_bundle(&mut self, files: &CaCertsFiles) -> Option<TrustBundle> {
        let (bundle, skipped) = TrustBundle::from_pem_lenient(&files.root_cert);
        for note in skipped {
            self.warn(CaCertsFiles::ROOT_CERT, note);
        }
        if bundle.roots().is_empty() {
            self.problem(
                CaCertsFiles::ROOT_CERT,
                "holds no usable certificate".to_string(),
            );
            return None;
        }
        Some(bundle)
    }

    /// `cert-chain.pem`, read leniently like the bundle.
    fn chain(&mut self, files: &CaCertsFiles) -> Option<Vec<Cert>> {
        let (certs, skipped) = Cert::lenient_from_pem(&files.cert_chain, CaCertsFiles::CERT_CHAIN);
        for note in skipped {
            self.warn(CaCertsFiles::CERT_CHAIN, note);
        }
        if certs.is_empty() {
            self.problem(
                CaCertsFiles::CERT_CHAIN,
                "holds no usable certificate".to_string(),
            );
            return None;
        }
        Some(certs)
    }

    /// Whether istiod can sign with `signing` and `key`; its key algorithm if supported.
    fn check_signing(
        &mut self,
        signing: &Cert,
        key: Option<&CaKey>,
        now: OffsetDateTime,
    ) -> Option<KeyAlgorithm> {
        let key_algorithm = self.ok(
            CaCertsFiles::CA_CERT,
            signing.supported_key(CaCertsFiles::CA_CERT),
        );
        if !signing.info().is_ca {
            self.problem(
                CaCertsFiles::CA_CERT,
                "not a CA certificate (basicConstraints CA:TRUE is missing); istiod cannot sign with it"
                    .to_string(),
            );
        }
        if let Err(msg) = check_signing_ca_usage(signing) {
            self.problem(CaCertsFiles::CA_CERT, msg);
        }
        if let Some(msg) = constraints::go_would_refuse(signing) {
            self.problem(CaCertsFiles::CA_CERT, msg);
        }
        self.ok(
            CaCertsFiles::CA_CERT,
            signing.check_valid_at(now, CaCertsFiles::CA_CERT),
        );
        if let Some(key) = key
            && key.public_key_raw() != signing.public_key_raw().as_slice()
        {
            self.problem(
                CaCertsFiles::CA_KEY,
                "does not match the public key of ca-cert.pem".to_string(),
            );
        }
        key_algorithm
    }

    /// Trust anchors istiod accepts but an operator should know about.
    fn check_roots(&mut self, trust: &TrustBundle, now: OffsetDateTime) {
        for (i, root) in trust.roots().iter().enumerate() {
            let n = i + 1;
            if !root.info().is_ca {
                // Go does not require the CA flag on trust anchors; it is still a smell.
                self.warn(
                    CaCertsFiles::ROOT_CERT,
                    format!(
                        "certificate #{n} ({}) is not marked CA",
                        root.info().subject
                    ),
                );
            }
            if root.info().not_after < now {
                self.warn(
                    CaCertsFiles::ROOT_CERT,
                    format!(
                        "certificate #{n} ({}) expired at {}",
                        root.info().subject,
                        fmt_time(root.info().not_after)
                    ),
                );
            }
        }
    }

    /// The path from `signing` to a root of `trust`, each CA's name constraints admitting
    /// istiod's names and the mesh's SPIFFE identities.
    fn path(
        &mut self,
        signing: &Cert,
        trust: &TrustBundle,
        chain: &[Cert],
        now: OffsetDateTime,
        trust_domain: Option<&str>,
    ) -> Option<Vec<Cert>> {
        let path = build_path(signing, trust.roots(), chain, now)
            .map_err(|msg| self.problem(CaCertsFiles::CA_CERT, msg))
            .ok()?;
        let mut names = constraints::dns_names(signing);
        names.extend(trust_domain.map(ConstrainedName::spiffe));
        for ca in &path[1..] {
            if let Err(msg) = constraints::check_name_constraints(ca, &names) {
                self.problem(CaCertsFiles::CA_CERT, msg);
            }
        }
        Some(path)
    }
}

/// Our errors lead with the file name; inside a [`BundleProblem`] the file is already named.
fn strip_what(e: &PkiError) -> String {
    let s = e.to_string();
    for file in [
        CaCertsFiles::CA_CERT,
        CaCertsFiles::CA_KEY,
        CaCertsFiles::ROOT_CERT,
        CaCertsFiles::CERT_CHAIN,
    ] {
        if let Some(rest) = s.strip_prefix(&format!("{file}: ")) {
            return rest.to_string();
        }
    }
    s
}

/// A CA that signs workload certificates needs keyCertSign (if keyUsage is present at all) and
/// an EKU that is either absent or allows serverAuth/any (Go's verifier, docs/istio.md §1).
fn check_signing_ca_usage(cert: &Cert) -> Result<(), String> {
    let x = cert.x509();
    if let Ok(Some(ku)) = x.key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err("keyUsage does not allow keyCertSign".to_string());
    }
    check_eku(cert)
}

fn check_eku(cert: &Cert) -> Result<(), String> {
    match cert.x509().extended_key_usage() {
        Ok(None) => Ok(()),
        Ok(Some(eku)) if eku.value.any || eku.value.server_auth => Ok(()),
        Ok(Some(_)) => Err(format!(
            "{} has an extendedKeyUsage without serverAuth; Go's verifier (istiod) rejects the chain — \
             CA certificates should carry no EKU",
            cert.info().subject
        )),
        Err(e) => Err(format!("unreadable extendedKeyUsage: {e}")),
    }
}

/// Builds a path from `signing` up to a certificate of `roots`, using `chain` as intermediates
/// (Go's `VerifyOptions{Roots, Intermediates}`), and checks it. Returns the most telling
/// reason when no valid path exists.
fn build_path(
    signing: &Cert,
    roots: &[Cert],
    chain: &[Cert],
    now: OffsetDateTime,
) -> Result<Vec<Cert>, String> {
    let mut path = vec![signing.clone()];
    let mut best_error = None;
    if extend(&mut path, roots, chain, now, &mut best_error) {
        return Ok(path);
    }
    Err(best_error.unwrap_or_else(|| {
        format!(
            "does not chain to any root in root-cert.pem (issuer {:?} not found among {} root(s) and the cert-chain.pem intermediates)",
            signing.info().issuer,
            roots.len()
        )
    }))
}

fn extend(
    path: &mut Vec<Cert>,
    roots: &[Cert],
    chain: &[Cert],
    now: OffsetDateTime,
    best_error: &mut Option<String>,
) -> bool {
    // The path is never empty: it starts with the signing certificate.
    let child = path[path.len() - 1].clone();
    for (candidate, is_root) in roots
        .iter()
        .map(|r| (r, true))
        .chain(chain.iter().map(|c| (c, false)))
    {
        if path.iter().any(|p| p.der() == candidate.der()) && !is_root {
            continue;
        }
        if candidate.x509().subject().as_raw() != child.x509().issuer().as_raw() {
            continue;
        }
        if let Err(msg) = check_signature(&child, candidate) {
            best_error.get_or_insert(msg);
            continue;
        }
        let depth = path.len();
        if let Err(msg) = check_issuer(candidate, is_root, depth, now) {
            *best_error = Some(msg);
            continue;
        }
        path.push(candidate.clone());
        if is_root {
            return true;
        }
        if path.len() <= MAX_DEPTH && extend(path, roots, chain, now, best_error) {
            return true;
        }
        path.pop();
    }
    false
}

/// Whether `issuer` issued `child`: names and signature only, as [`issuing_root`] judges.
pub fn issued_by(child: &Cert, issuer: &Cert) -> bool {
    issuer.x509().subject().as_raw() == child.x509().issuer().as_raw()
        && check_signature(child, issuer).is_ok()
}

/// The root of `roots` that `signing` was issued under, through `chain`, judged by names and
/// signatures only (no dates or constraints): who signs, even when the set is otherwise broken.
pub fn issuing_root(signing: &Cert, chain: &[Cert], roots: &[Cert]) -> Option<Cert> {
    fn up(child: &Cert, chain: &[Cert], roots: &[Cert], depth: usize) -> Option<Cert> {
        let issued_by = |c: &Cert| issued_by(child, c);
        if let Some(root) = roots.iter().find(|r| issued_by(r)) {
            return Some(root.clone());
        }
        if depth >= MAX_DEPTH {
            return None;
        }
        chain
            .iter()
            .filter(|c| c.der() != child.der() && !c.is_self_issued() && issued_by(c))
            .find_map(|c| up(c, chain, roots, depth + 1))
    }
    up(signing, chain, roots, 0)
}

/// Whether `issuer`'s key signed `child`. The answer is remembered for the life of the process
/// under both certificates' SHA-256 fingerprints (it depends on nothing else): one pass checks
/// the same pair while building the path and again while finding the issuing root, and a
/// daemon checks the same clusters on every pass.
pub(crate) fn check_signature(child: &Cert, issuer: &Cert) -> Result<(), String> {
    type Checked = HashMap<(String, String), Result<(), String>>;
    /// Bounds the memory: cleared when full (a mesh has a few entries per cluster).
    const REMEMBERED: usize = 1 << 16;
    static CHECKED: OnceLock<Mutex<Checked>> = OnceLock::new();
    let key = (
        child.info().fingerprint_sha256.clone(),
        issuer.info().fingerprint_sha256.clone(),
    );
    let checked = CHECKED.get_or_init(Mutex::default);
    if let Some(known) = checked.lock().ok().and_then(|m| m.get(&key).cloned()) {
        return known;
    }
    let result = verify_signature(child, issuer);
    if let Ok(mut m) = checked.lock() {
        if m.len() >= REMEMBERED {
            m.clear();
        }
        m.insert(key, result.clone());
    }
    result
}

fn verify_signature(child: &Cert, issuer: &Cert) -> Result<(), String> {
    let c = child.x509();
    let alg = c.signature_algorithm.algorithm.to_id_string();
    // sha1WithRSAEncryption, the old OIW one, ecdsa-with-SHA1: Go refuses SHA-1 signatures.
    if ["1.2.840.113549.1.1.5", "1.3.14.3.2.29", "1.2.840.10045.4.1"].contains(&alg.as_str()) {
        return Err(format!(
            "{} is signed with SHA-1, which Go (istiod) refuses",
            child.info().subject
        ));
    }
    let i = issuer.x509();
    let verified = match alg.as_str() {
        ECDSA_WITH_SHA512 => verify_ecdsa_sha512(i.public_key(), c),
        _ => x509_parser::verify::verify_signature(
            i.public_key(),
            &c.signature_algorithm,
            &c.signature_value,
            c.tbs_certificate.as_ref(),
        )
        .map_err(|e| e.to_string()),
    };
    verified.map_err(|e| {
        format!(
            "signature of {} does not verify with the key of {} ({e})",
            child.info().subject,
            issuer.info().subject
        )
    })
}

/// ecdsa-with-SHA512 (RFC 5758), which Go verifies and corporate CAs use; x509-parser does not
/// know it.
const ECDSA_WITH_SHA512: &str = "1.2.840.10045.4.3.4";

/// An ecdsa-with-SHA512 signature of `child`, checked with `issuer`'s key on its curve.
fn verify_ecdsa_sha512(
    issuer: &x509_parser::x509::SubjectPublicKeyInfo<'_>,
    child: &x509_parser::certificate::X509Certificate<'_>,
) -> Result<(), String> {
    use aws_lc_rs::signature::{
        ECDSA_P256_SHA512_ASN1, ECDSA_P384_SHA512_ASN1, ECDSA_P521_SHA512_ASN1, UnparsedPublicKey,
        VerificationAlgorithm,
    };
    let curve = issuer
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok())
        .map(|oid| oid.to_id_string())
        .unwrap_or_default();
    let algorithm: &'static dyn VerificationAlgorithm = match curve.as_str() {
        "1.2.840.10045.3.1.7" => &ECDSA_P256_SHA512_ASN1,
        "1.3.132.0.34" => &ECDSA_P384_SHA512_ASN1,
        "1.3.132.0.35" => &ECDSA_P521_SHA512_ASN1,
        _ => {
            return Err("ecdsa-with-SHA512 from a key that is not on P-256, P-384 or P-521".into());
        }
    };
    UnparsedPublicKey::new(algorithm, &issuer.subject_public_key.data)
        .verify(child.tbs_certificate.as_ref(), &child.signature_value.data)
        .map_err(|_| "signature verification error".to_string())
}

/// `issuer` sits `depth` places above the signing certificate. Workload leaves hang below the
/// signing certificate, so `depth` intermediates follow `issuer` in every workload path, and
/// its pathLenConstraint must allow that many (RFC 5280 4.2.1.9).
pub(crate) fn check_issuer(
    issuer: &Cert,
    is_anchor: bool,
    depth: usize,
    now: OffsetDateTime,
) -> Result<(), String> {
    let info = issuer.info();
    // Go requires CA:TRUE of intermediates only; a trust anchor is trusted as configured.
    if !info.is_ca && !is_anchor {
        return Err(format!("issuer {} is not a CA", info.subject));
    }
    if let Some(msg) = constraints::go_would_refuse(issuer) {
        return Err(msg);
    }
    if let Ok(Some(ku)) = issuer.x509().key_usage()
        && !ku.value.key_cert_sign()
    {
        return Err(format!(
            "issuer {} lacks keyUsage keyCertSign",
            info.subject
        ));
    }
    if let Some(max) = info.path_len
        && (max as usize) < depth
    {
        return Err(format!(
            "issuer {} has pathlen:{max} but {depth} CA certificate(s) sit below it; workload \
                 certificates signed by ca-cert.pem would be rejected",
            info.subject
        ));
    }
    if !issuer.is_valid_at(now) {
        return Err(format!(
            "issuer {} is not valid now (valid {} to {})",
            info.subject,
            fmt_time(info.not_before),
            fmt_time(info.not_after)
        ));
    }
    check_eku(issuer)
}

#[cfg(test)]
mod tests;
