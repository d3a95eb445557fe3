//! The four-file `cacerts` set istiod reads, and the trust bundle inside it.

use std::fmt;

use zeroize::Zeroizing;

use super::{Cert, IntermediateCa, PkiError};

/// The `cacerts` Secret's four keys, as raw bytes (docs/istio.md §1). The key buffer is wiped on
/// drop and `Debug` never shows it.
#[derive(Clone, PartialEq, Eq)]
pub struct CaCertsFiles {
    pub ca_cert: Vec<u8>,
    pub ca_key: Zeroizing<Vec<u8>>,
    pub root_cert: Vec<u8>,
    pub cert_chain: Vec<u8>,
    /// The optional fifth file, `ca-crl.pem`: revocation lists istiod checks and publishes
    /// (docs/istio.md §14). Empty when the set has none.
    pub ca_crl: Vec<u8>,
}

impl fmt::Debug for CaCertsFiles {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CaCertsFiles")
            .field("ca_cert", &format_args!("{} bytes", self.ca_cert.len()))
            .field("ca_key", &"...")
            .field("root_cert", &format_args!("{} bytes", self.root_cert.len()))
            .field(
                "cert_chain",
                &format_args!("{} bytes", self.cert_chain.len()),
            )
            .field("ca_crl", &format_args!("{} bytes", self.ca_crl.len()))
            .finish()
    }
}

impl CaCertsFiles {
    pub const CA_CERT: &'static str = "ca-cert.pem";
    pub const CA_KEY: &'static str = "ca-key.pem";
    pub const ROOT_CERT: &'static str = "root-cert.pem";
    pub const CERT_CHAIN: &'static str = "cert-chain.pem";
    pub const CA_CRL: &'static str = "ca-crl.pem";

    /// It carries revocation lists (`ca-crl.pem` is there and not blank).
    pub fn has_lists(&self) -> bool {
        !self.ca_crl.iter().all(u8::is_ascii_whitespace)
    }

    /// The set for a freshly issued intermediate: `cert-chain.pem` is the intermediate, any
    /// further intermediates above it, then the root — leaf-most first, as istiod expects.
    pub fn for_intermediate(
        intermediate: &IntermediateCa,
        intermediates_above: &[Cert],
        root: &Cert,
        trust: &TrustBundle,
    ) -> Self {
        let ca_cert = intermediate.cert.to_pem();
        let mut chain = ca_cert.clone();
        for c in intermediates_above {
            chain.push_str(&c.to_pem());
        }
        chain.push_str(&root.to_pem());
        let key_pem = intermediate.key.to_pem();
        CaCertsFiles {
            ca_cert: ca_cert.into_bytes(),
            ca_key: Zeroizing::new(key_pem.as_bytes().to_vec()),
            root_cert: trust.pem_bytes().to_vec(),
            cert_chain: chain.into_bytes(),
            ca_crl: Vec::new(),
        }
    }

    /// Reads the cert-manager form (`tls.crt`, `tls.key`, `ca.crt`) that istiod ≥1.15 also
    /// accepts, the way istiod maps it (pilot/pkg/bootstrap `detectSigningCABundle`): the
    /// signing certificate is `tls.crt`, the roots `ca.crt`, the chain `tls.crt` then `ca.crt`.
    pub fn from_cert_manager(tls_crt: &[u8], tls_key: Zeroizing<Vec<u8>>, ca_crt: &[u8]) -> Self {
        let ca_cert = match Cert::all_from_pem(tls_crt, "tls.crt") {
            Ok(certs) if !certs.is_empty() => certs[0].to_pem().into_bytes(),
            // Keep the bytes as they are; validation reports what is wrong with them.
            _ => tls_crt.to_vec(),
        };
        let mut cert_chain = tls_crt.to_vec();
        if !cert_chain.is_empty() && !cert_chain.ends_with(b"\n") {
            cert_chain.push(b'\n');
        }
        cert_chain.extend_from_slice(ca_crt);
        CaCertsFiles {
            ca_cert,
            ca_key: tls_key,
            root_cert: ca_crt.to_vec(),
            cert_chain,
            ca_crl: Vec::new(),
        }
    }

    /// The four files istiod requires, (file name, contents); the key is written with 0600.
    pub fn entries(&self) -> [(&'static str, &[u8]); 4] {
        [
            (Self::CA_CERT, &self.ca_cert),
            (Self::CA_KEY, &self.ca_key),
            (Self::ROOT_CERT, &self.root_cert),
            (Self::CERT_CHAIN, &self.cert_chain),
        ]
    }

    /// Every file of the set, in the order they are written: the four, then `ca-crl.pem` when
    /// the set has one.
    pub fn files(&self) -> Vec<(&'static str, &[u8])> {
        let mut files = self.entries().to_vec();
        if !self.ca_crl.is_empty() {
            files.push((Self::CA_CRL, &self.ca_crl));
        }
        files
    }
}

/// The roots a cluster trusts (`root-cert.pem`). Keeps the exact PEM bytes it was built from:
/// before Istio 1.31, istiod's multi-root reload accepted a new bundle only if the old one was
/// a byte-substring of it (docs/istio.md §3), so adding a root must append, never re-encode.
#[derive(Clone, PartialEq, Eq)]
pub struct TrustBundle {
    pem: Vec<u8>,
    roots: Vec<Cert>,
}

impl fmt::Debug for TrustBundle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.roots.iter().map(|r| &r.info().fingerprint_sha256))
            .finish()
    }
}

impl TrustBundle {
    pub fn from_pem(pem_text: &[u8], what: &str) -> Result<Self, PkiError> {
        let roots = Cert::all_from_pem(pem_text, what)?;
        Ok(TrustBundle {
            pem: pem_text.to_vec(),
            roots,
        })
    }

    /// A bundle read as istiod reads it: unusable blocks are skipped (see
    /// [`Cert::lenient_from_pem`]); the bytes are kept verbatim all the same.
    pub fn from_pem_lenient(pem_text: &[u8]) -> (Self, Vec<String>) {
        let (roots, skipped) = Cert::lenient_from_pem(pem_text, CaCertsFiles::ROOT_CERT);
        (
            TrustBundle {
                pem: pem_text.to_vec(),
                roots,
            },
            skipped,
        )
    }

    /// A bundle holding one root.
    pub fn single(root: &Cert) -> Self {
        TrustBundle {
            pem: root.to_pem().into_bytes(),
            roots: vec![root.clone()],
        }
    }

    pub fn roots(&self) -> &[Cert] {
        &self.roots
    }

    pub fn pem_bytes(&self) -> &[u8] {
        &self.pem
    }

    pub fn contains(&self, cert: &Cert) -> bool {
        self.roots.iter().any(|r| r.der() == cert.der())
    }

    /// This bundle with `root` appended after the existing bytes, which are kept verbatim.
    /// Appending a root that is already present returns the bundle unchanged.
    pub fn with_root_appended(&self, root: &Cert) -> Self {
        if self.contains(root) {
            return self.clone();
        }
        let mut pem = self.pem.clone();
        if !pem.is_empty() && !pem.ends_with(b"\n") {
            pem.push(b'\n');
        }
        pem.extend_from_slice(root.to_pem().as_bytes());
        let mut roots = self.roots.clone();
        roots.push(root.clone());
        TrustBundle { pem, roots }
    }

    /// This bundle without `root` (the others re-encoded in their order).
    pub fn without(&self, root: &Cert) -> Self {
        let roots: Vec<Cert> = self.roots.iter().filter(|r| *r != root).cloned().collect();
        let pem = roots
            .iter()
            .map(Cert::to_pem)
            .collect::<String>()
            .into_bytes();
        TrustBundle { pem, roots }
    }

    pub fn fingerprints(&self) -> Vec<String> {
        self.roots
            .iter()
            .map(|r| r.info().fingerprint_sha256.clone())
            .collect()
    }

    /// When each root expires, in the order of [`TrustBundle::fingerprints`].
    pub fn expiries(&self) -> Vec<time::OffsetDateTime> {
        self.roots.iter().map(|r| r.info().not_after).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{KeyAlgorithm, RootSpec, Subject, generate_root};
    use std::time::Duration;

    fn root() -> Cert {
        let spec = RootSpec {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(86400 * 30),
            subject: Subject::istio_root(),
        };
        generate_root(&spec, time::macros::datetime!(2026-01-01 00:00 UTC))
            .unwrap()
            .cert()
            .clone()
    }

    #[test]
    fn appending_keeps_old_bytes_verbatim() {
        let (a, b) = (root(), root());
        // An existing bundle as another tool wrote it: CRLF line ends and no final newline.
        let old = a.to_pem().replace('\n', "\r\n");
        let old = old.trim_end().as_bytes().to_vec();
        let bundle = TrustBundle::from_pem(&old, "root-cert.pem").unwrap();
        let grown = bundle.with_root_appended(&b);
        assert!(grown.pem_bytes().starts_with(&old));
        assert_eq!(grown.roots().len(), 2);
        assert!(grown.contains(&a) && grown.contains(&b));
        let reparsed = TrustBundle::from_pem(grown.pem_bytes(), "x").unwrap();
        assert_eq!(reparsed.fingerprints(), grown.fingerprints());
        // Idempotent.
        assert_eq!(grown.with_root_appended(&b), grown);
    }

    #[test]
    fn debug_of_files_hides_the_key() {
        let files = CaCertsFiles {
            ca_cert: b"c".to_vec(),
            ca_key: Zeroizing::new(
                crate::pki::secret_pem::armour("PRIVATE KEY", "secret", None).into_bytes(),
            ),
            root_cert: vec![],
            cert_chain: vec![],
            ca_crl: vec![],
        };
        let dbg = format!("{files:?}");
        assert!(!dbg.contains("secret") && !dbg.contains("PRIVATE"), "{dbg}");
    }
}
