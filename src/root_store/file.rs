//! The embedded default root store: `root-cert.pem` and `root-key.pem` (0600) in a private
//! folder under `state_dir`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use super::StoreError;
use crate::fsutil::{Mode, StagedFile, create_private_dir, read_optional, sync_dir};
use crate::pki::{CaKey, Cert, RootCa};

#[derive(Clone)]
pub struct FileRootStore {
    dir: PathBuf,
}

const CERT: &str = "root-cert.pem";
const KEY: &str = "root-key.pem";
/// For a mesh CA below an anchor: the certificates above it, up to the anchor.
const CHAIN: &str = "root-chain.pem";

impl FileRootStore {
    pub fn new(dir: PathBuf) -> Self {
        FileRootStore { dir }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn cert_path(&self) -> PathBuf {
        self.dir.join(CERT)
    }

    fn key_path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    fn chain_path(&self) -> PathBuf {
        self.dir.join(CHAIN)
    }

    /// The certificates above the signing CA, up to its anchor; empty for a self-signed root.
    pub fn load_chain(&self) -> Result<Vec<Cert>, StoreError> {
        let path = self.chain_path();
        match read_optional(&path)? {
            Some(pem) => Cert::all_from_pem(&pem, &what(&path)).map_err(|e| self.material(e)),
            None => Ok(Vec::new()),
        }
    }

    /// The signing CA's path to its anchor: the root alone, or the mesh CA and the
    /// certificates above it; `None` before a root exists.
    pub fn load_path(&self) -> Result<Option<Vec<Cert>>, StoreError> {
        let Some(cert) = self.load_cert()? else {
            return Ok(None);
        };
        let mut path = vec![cert];
        path.extend(self.load_chain()?);
        Ok(Some(path))
    }

    fn material(&self, source: crate::pki::PkiError) -> StoreError {
        StoreError::Material {
            store: self.describe(),
            source,
        }
    }
}

fn what(path: &Path) -> String {
    path.display().to_string()
}

impl FileRootStore {
    pub fn describe(&self) -> String {
        format!("file store {}", self.dir.display())
    }

    pub fn load_cert(&self) -> Result<Option<Cert>, StoreError> {
        let cert_path = self.cert_path();
        let Some(pem) = read_optional(&cert_path)? else {
            if self.key_path().exists() {
                return Err(StoreError::Incomplete {
                    store: self.describe(),
                    detail: format!("{KEY} exists without {CERT}; restore {CERT} from backup"),
                });
            }
            return Ok(None);
        };
        let cert = Cert::one_from_pem(&pem, &what(&cert_path)).map_err(|e| self.material(e))?;
        Ok(Some(cert))
    }

    pub fn load(&self) -> Result<RootCa, StoreError> {
        let cert = self.load_cert()?.ok_or_else(|| StoreError::NoRoot {
            store: self.describe(),
        })?;
        let key_path = self.key_path();
        let key_pem =
            Zeroizing::new(
                read_optional(&key_path)?.ok_or_else(|| StoreError::Incomplete {
                    store: self.describe(),
                    detail: format!("{CERT} exists without {KEY}; restore {KEY} from backup"),
                })?,
            );
        if let Ok(meta) = std::fs::metadata(&key_path)
            && meta.permissions().mode() & 0o077 != 0
        {
            tracing::warn!(
                path = %key_path.display(),
                mode = format!("{:o}", meta.permissions().mode() & 0o777),
                "root key file is readable by group or others; chmod 600 it"
            );
        }
        let key = CaKey::from_pem(&key_pem, &what(&key_path)).map_err(|e| self.material(e))?;
        let chain = self.load_chain()?;
        RootCa::new(cert, key, &what(&self.cert_path()))
            .and_then(|r| r.with_chain(chain, &what(&self.chain_path())))
            .map_err(|e| self.material(e))
    }

    pub fn create(&self, root: &RootCa) -> Result<(), StoreError> {
        if let Some(existing) = self.load_cert()? {
            return Err(StoreError::AlreadyExists {
                store: self.describe(),
                fingerprint: existing.info().fingerprint_sha256.clone(),
            });
        }
        if self.key_path().exists() {
            return Err(StoreError::Incomplete {
                store: self.describe(),
                detail: format!("{KEY} exists; refusing to replace it"),
            });
        }
        create_private_dir(&self.dir)?;
        let key_pem = root.key().to_pem();
        let key = StagedFile::new(&self.key_path(), key_pem.as_bytes(), Mode::Secret)?;
        let cert = StagedFile::new(&self.cert_path(), root.cert_pem().as_bytes(), Mode::Public)?;
        let chain: String = root.chain().iter().map(Cert::to_pem).collect();
        let chain = match chain.is_empty() {
            true => None,
            false => Some(StagedFile::new(
                &self.chain_path(),
                chain.as_bytes(),
                Mode::Public,
            )?),
        };
        // No-clobber: two `root init` racing on one folder leave exactly one root.
        key.commit_new().map_err(|_| StoreError::AlreadyExists {
            store: self.describe(),
            fingerprint: "created concurrently".to_string(),
        })?;
        // The chain before the certificate: a store is complete once root-cert.pem exists.
        if let Some(chain) = chain {
            chain.commit()?;
        }
        cert.commit_new()?;
        sync_dir(&self.dir)?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{KeyAlgorithm, RootSpec, Subject, generate_root};
    use std::time::Duration;

    fn root() -> RootCa {
        let spec = RootSpec {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            validity: Duration::from_secs(86400 * 365),
            subject: Subject::istio_root(),
        };
        generate_root(&spec, time::OffsetDateTime::now_utc()).unwrap()
    }

    #[test]
    fn create_then_load_round_trips_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRootStore::new(dir.path().join("root"));
        assert!(store.load_cert().unwrap().is_none());
        assert!(matches!(
            store.load().unwrap_err(),
            StoreError::NoRoot { .. }
        ));
        let r = root();
        store.create(&r).unwrap();
        let loaded = store.load().unwrap();
        assert_eq!(loaded.cert(), r.cert());
        assert_eq!(loaded.key().public_key_raw(), r.key().public_key_raw());
        let mode = std::fs::metadata(store.key_path())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(dir.path().join("root"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);

        let before = std::fs::read(store.key_path()).unwrap();
        let err = store.create(&root()).unwrap_err();
        assert!(matches!(err, StoreError::AlreadyExists { .. }), "{err}");
        assert_eq!(std::fs::read(store.key_path()).unwrap(), before);
    }

    #[test]
    fn a_half_written_store_is_reported_not_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRootStore::new(dir.path().to_path_buf());
        std::fs::write(store.key_path(), b"x").unwrap();
        assert!(matches!(
            store.load_cert().unwrap_err(),
            StoreError::Incomplete { .. }
        ));
        assert!(store.create(&root()).is_err());
        assert_eq!(std::fs::read(store.key_path()).unwrap(), b"x");
    }

    #[test]
    fn a_corrupt_key_is_named_without_its_contents() {
        let dir = tempfile::tempdir().unwrap();
        let store = FileRootStore::new(dir.path().to_path_buf());
        let r = root();
        store.create(&r).unwrap();
        std::fs::write(
            store.key_path(),
            crate::pki::secret_pem::armour("PRIVATE KEY", "U0VDUkVU", Some("PRIVATE KEY")),
        )
        .unwrap();
        let err = store.load().unwrap_err().to_string();
        assert!(
            err.contains("root-key.pem") && !err.contains("U0VDUkVU"),
            "{err}"
        );
    }
}
