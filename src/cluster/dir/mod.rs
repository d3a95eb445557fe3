//! The directory target: the four PEM files plus `cacerts.yaml`, for GitOps and offline use.
//! Writes go through [`batch`], which makes many of them durable at once.

mod batch;

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{TargetError, WriteMeta, WriteReport};
use crate::fsutil::{Mode, read_optional};
use crate::pki::CaCertsFiles;

pub const MANIFEST: &str = "cacerts.yaml";

/// cert-manager's form of the plug-in CA (docs/istio.md §1).
const TLS_CRT: &str = "tls.crt";
const TLS_KEY: &str = "tls.key";
const CA_CRT: &str = "ca.crt";

#[derive(Clone)]
pub struct DirTarget {
    path: PathBuf,
    backups: PathBuf,
}

impl DirTarget {
    pub fn new(path: PathBuf, backups: PathBuf) -> Self {
        DirTarget { path, backups }
    }

    /// Replaces the set; any previous set is backed up first. Returns once the write is
    /// durable, made so together with the other writes waiting at the time ([`batch`]).
    pub(in crate::cluster) async fn write(
        &self,
        files: &CaCertsFiles,
        meta: &WriteMeta,
    ) -> Result<WriteReport, TargetError> {
        batch::write(self, files, meta).await
    }

    fn mode_of(name: &str) -> Mode {
        if name == CaCertsFiles::CA_KEY || name == MANIFEST || name == TLS_KEY {
            Mode::Secret
        } else {
            Mode::Public
        }
    }
}

impl DirTarget {
    pub fn describe(&self) -> String {
        format!("directory {}", self.path.display())
    }

    /// The current set, `None` if there is none. Partial sets come back with the missing files
    /// empty, so validation can name them.
    pub fn read(&self) -> Result<Option<CaCertsFiles>, TargetError> {
        if !self.path.exists() {
            return Ok(None);
        }
        let read = |name: &str| read_optional(&self.path.join(name));
        // istiod uses the cert-manager form whenever tls.crt exists (detectSigningCABundle).
        if let Some(crt) = read(TLS_CRT)? {
            let key = read(TLS_KEY)?.unwrap_or_default();
            let ca = read(CA_CRT)?.unwrap_or_default();
            return Ok(Some(CaCertsFiles::from_cert_manager(
                &crt,
                Zeroizing::new(key),
                &ca,
            )));
        }
        let ca_cert = read(CaCertsFiles::CA_CERT)?;
        let ca_key = read(CaCertsFiles::CA_KEY)?.map(Zeroizing::new);
        let root_cert = read(CaCertsFiles::ROOT_CERT)?;
        let cert_chain = read(CaCertsFiles::CERT_CHAIN)?;
        if ca_cert.is_none() && ca_key.is_none() && root_cert.is_none() && cert_chain.is_none() {
            return Ok(None);
        }
        Ok(Some(CaCertsFiles {
            ca_cert: ca_cert.unwrap_or_default(),
            ca_key: ca_key.unwrap_or_default(),
            root_cert: root_cert.unwrap_or_default(),
            cert_chain: cert_chain.unwrap_or_default(),
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    pub(super) fn files(tag: &str) -> CaCertsFiles {
        CaCertsFiles {
            ca_cert: format!("cert {tag}").into_bytes(),
            ca_key: Zeroizing::new(format!("key {tag}").into_bytes()),
            root_cert: format!("root {tag}").into_bytes(),
            cert_chain: format!("chain {tag}").into_bytes(),
        }
    }

    pub(super) fn meta(secs: i64) -> WriteMeta {
        WriteMeta {
            cluster: "c1".into(),
            serial: "0a".into(),
            written_at: time::OffsetDateTime::from_unix_timestamp(secs).unwrap(),
            reason: "test".into(),
        }
    }

    #[tokio::test]
    async fn writes_the_set_with_modes_and_backs_up_what_it_replaces() {
        let tmp = tempfile::tempdir().unwrap();
        let t = DirTarget::new(tmp.path().join("out/c1"), tmp.path().join("backups/c1"));
        assert!(t.read().unwrap().is_none());
        assert_eq!(
            t.write(&files("1"), &meta(1_700_000_000))
                .await
                .unwrap()
                .backup,
            None
        );
        assert_eq!(t.read().unwrap().unwrap(), files("1"));
        let mode = |n: &str| {
            std::fs::metadata(tmp.path().join("out/c1").join(n))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("ca-key.pem"), 0o600);
        assert_eq!(mode("cacerts.yaml"), 0o600);
        assert_eq!(mode("ca-cert.pem"), 0o644);

        let r = t.write(&files("2"), &meta(1_700_000_000)).await.unwrap();
        let r2 = t.write(&files("3"), &meta(1_700_000_000)).await.unwrap();
        assert_eq!(t.read().unwrap().unwrap(), files("3"));
        let b1 = PathBuf::from(r.backup.unwrap());
        let b2 = PathBuf::from(r2.backup.unwrap());
        assert_ne!(b1, b2, "same-second writes get distinct backups");
        assert_eq!(std::fs::read(b1.join("ca-key.pem")).unwrap(), b"key 1");
        assert_eq!(std::fs::read(b2.join("ca-key.pem")).unwrap(), b"key 2");
        assert!(std::fs::read(b2.join("cacerts.yaml")).is_ok());
        assert_eq!(
            std::fs::metadata(b1.join("ca-cert.pem"))
                .unwrap()
                .permissions()
                .mode()
                & 0o777,
            0o600
        );
    }

    #[test]
    fn a_partial_set_is_returned_with_gaps() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("ca-cert.pem"), b"c").unwrap();
        let t = DirTarget::new(tmp.path().to_path_buf(), tmp.path().join("b"));
        let got = t.read().unwrap().unwrap();
        assert_eq!(got.ca_cert, b"c");
        assert!(got.ca_key.is_empty() && got.root_cert.is_empty());
    }

    #[tokio::test]
    async fn the_cert_manager_form_is_read() {
        let tmp = tempfile::tempdir().unwrap();
        std::fs::write(tmp.path().join("tls.crt"), b"garbage-crt").unwrap();
        std::fs::write(tmp.path().join("tls.key"), b"k").unwrap();
        std::fs::write(tmp.path().join("ca.crt"), b"ca").unwrap();
        // Legacy files next to it are ignored, as istiod ignores them.
        std::fs::write(tmp.path().join("ca-cert.pem"), b"legacy").unwrap();
        let t = DirTarget::new(tmp.path().to_path_buf(), tmp.path().join("b"));
        let got = t.read().unwrap().unwrap();
        assert_eq!(got.root_cert, b"ca");
        assert_eq!(got.cert_chain, b"garbage-crt\nca");
        assert_eq!(got.ca_key.as_slice(), b"k");
        let err = t.write(&files("1"), &meta(1)).await.unwrap_err();
        assert!(
            matches!(err, TargetError::ManagedByCertManager { .. }),
            "{err}"
        );
        assert_eq!(
            std::fs::read(tmp.path().join("ca-cert.pem")).unwrap(),
            b"legacy"
        );
    }
}
