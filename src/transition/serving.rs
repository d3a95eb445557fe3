//! The `cacerts` material each phase serves (docs/istio.md on how istiod reloads a bundle).

use super::{MaterialOf, Phase};
use crate::pki::{CaCertsFiles, Cert, PkiError, TrustBundle};

/// The material one primary cluster moves between.
pub struct ClusterMaterial {
    /// What the cluster served before the transition: its `cacerts`, or for a self-signed
    /// cluster the `cacerts` form of `istio-ca-secret` (see [`from_self_signed`]).
    pub original: CaCertsFiles,
    /// Its new intermediate under the new root, with `root_cert` = the new root. (For a
    /// revocation: the set it ends with — its own signer, or the revoked one's successor —
    /// with the lists naming the revoked intermediate.)
    pub new: CaCertsFiles,
    /// A revocation's `ca-crl.pem` until the revocation is published; `None` otherwise.
    pub lists_before: Option<Vec<u8>>,
}

/// The `cacerts` form of istiod's self-signed CA: `istio-ca-secret`'s key and certificate
/// verbatim; its empty `cert-chain.pem` becomes the self-signed certificate itself, since
/// istiod requires all four files non-empty.
pub fn from_self_signed(istio_ca_secret: &CaCertsFiles) -> CaCertsFiles {
    let mut files = istio_ca_secret.clone();
    if files.cert_chain.iter().all(u8::is_ascii_whitespace) {
        files.cert_chain = files.ca_cert.clone();
    }
    if files.root_cert.iter().all(u8::is_ascii_whitespace) {
        files.root_cert = files.ca_cert.clone();
    }
    files
}

/// The `cacerts` a cluster serves for `of`. The old bundle's bytes are kept verbatim and the new
/// root appended after them (istiod before 1.31 reloads a bundle only if the old one is a
/// byte-substring of the new).
/// (For a root's removal, `new` is the cluster's own set with the root left out of its bundle:
/// only `RemoveOldRoot` and the original are ever served.)
/// Where the clusters serve revocation lists, a rotation saves as `original` the cluster's set
/// with the lists of both roots' CAs, and as `new` its new set with the new CAs' lists: while
/// both roots are trusted (`SwitchSigner`) the original's lists are served, since a proxy that
/// checks lists rejects a chain through a CA without one (docs/istio.md §14). A migrating
/// cluster had no lists, so it gets them only with the common root alone (`RemoveOldRoot`):
/// until then its own proxies present certificates from its old CA, which has none.
pub fn material(m: &ClusterMaterial, of: MaterialOf) -> Result<CaCertsFiles, PkiError> {
    if let Some(lists) = &m.lists_before {
        return Ok(revocation_material(m, lists, of));
    }
    let both = || -> Result<Vec<u8>, PkiError> {
        let new_root = Cert::one_from_pem(&m.new.root_cert, "new root-cert.pem")?;
        Ok(
            TrustBundle::from_pem(&m.original.root_cert, "current root-cert.pem")?
                .with_root_appended(&new_root)
                .pem_bytes()
                .to_vec(),
        )
    };
    Ok(match of {
        MaterialOf::Original => m.original.clone(),
        MaterialOf::Phase(Phase::AddNewRoot) => CaCertsFiles {
            root_cert: both()?,
            ..m.original.clone()
        },
        MaterialOf::Phase(Phase::SwitchSigner) => CaCertsFiles {
            root_cert: both()?,
            ca_crl: m.original.ca_crl.clone(),
            ..m.new.clone()
        },
        MaterialOf::Phase(Phase::RemoveOldRoot | Phase::Done) => m.new.clone(),
    })
}

/// A revocation's material: trust never changes; the lists that name no revoked intermediate
/// yet go out first, then the revoked cluster's successor signs, then the lists that name it.
fn revocation_material(m: &ClusterMaterial, lists_before: &[u8], of: MaterialOf) -> CaCertsFiles {
    match of {
        MaterialOf::Original => m.original.clone(),
        MaterialOf::Phase(Phase::AddNewRoot) => CaCertsFiles {
            ca_crl: lists_before.to_vec(),
            ..m.original.clone()
        },
        MaterialOf::Phase(Phase::SwitchSigner) => CaCertsFiles {
            ca_crl: lists_before.to_vec(),
            ..m.new.clone()
        },
        MaterialOf::Phase(Phase::RemoveOldRoot | Phase::Done) => m.new.clone(),
    }
}
