//! The directory target: the four PEM files plus `cacerts.yaml`, for GitOps and offline use.
//! Writes go through [`batch`], which makes many of them durable at once.

mod batch;
mod fsyncs;

use std::path::PathBuf;

use zeroize::Zeroizing;

use super::{BackupEntry, Retention, TargetError, WriteMeta, WriteReport};
use crate::fsutil::{FsError, Mode, fs_err, read_optional, sync_dir};
use crate::pki::{CaCertsFiles, Cert};

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
    /// durable, made so together with the other writes waiting at the time ([`batch`]). Then
    /// the backups beyond `meta.retention` are removed.
    pub(in crate::cluster) async fn write(
        &self,
        files: &CaCertsFiles,
        meta: &WriteMeta,
    ) -> Result<WriteReport, TargetError> {
        let mut report = batch::write(self, files, meta).await?;
        if let Some(rule) = &meta.retention {
            match self.prune(rule, meta.written_at) {
                Ok(pruned) => report.pruned = pruned,
                Err(e) => report.prune_problem = Some(e.to_string()),
            }
        }
        Ok(report)
    }

    /// The backups of this target, each folder under the backups folder.
    fn backups(&self) -> Result<Vec<BackupEntry>, FsError> {
        let entries = match std::fs::read_dir(&self.backups) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(fs_err("cannot list", &self.backups)(e)),
        };
        let mut backups = Vec::new();
        for entry in entries {
            let entry = entry.map_err(fs_err("cannot list", &self.backups))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let path = entry.path();
            if name.starts_with('.') || !path.is_dir() {
                continue;
            }
            let taken_at = match stamp_of(&name) {
                Some(t) => t,
                None => match entry.metadata().and_then(|m| m.modified()) {
                    Ok(t) => t.into(),
                    Err(_) => continue,
                },
            };
            let not_after = read_optional(&path.join(CaCertsFiles::CA_CERT))
                .ok()
                .flatten()
                .and_then(|pem| Cert::one_from_pem(&pem, "backup").ok())
                .map(|c| c.info().not_after);
            backups.push(BackupEntry {
                name,
                taken_at,
                not_after,
            });
        }
        Ok(backups)
    }

    /// Removes the backups `rule` no longer keeps; returns their folders.
    fn prune(&self, rule: &Retention, now: time::OffsetDateTime) -> Result<Vec<String>, FsError> {
        let gone = super::retention::to_remove(&self.backups()?, rule, now);
        let mut removed = Vec::new();
        for name in gone {
            let path = self.backups.join(&name);
            std::fs::remove_dir_all(&path).map_err(fs_err("cannot remove backup", &path))?;
            removed.push(path.display().to_string());
        }
        if !removed.is_empty() {
            sync_dir(&self.backups)?;
        }
        Ok(removed)
    }

    fn mode_of(name: &str) -> Mode {
        if name == CaCertsFiles::CA_KEY || name == MANIFEST || name == TLS_KEY {
            Mode::Secret
        } else {
            Mode::Public
        }
    }
}

/// How a backup folder is named: the write's time to the second (`20261130T114102Z`), with
/// `-1`, `-2`… for later ones of the same second.
const BACKUP_STAMP: &[time::format_description::BorrowedFormatItem<'static>] =
    time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");

/// The time a backup folder is named after; a later one of the same second (`…Z-n`) counts
/// as `n` microseconds later, so that backups keep their order.
fn stamp_of(name: &str) -> Option<time::OffsetDateTime> {
    let stamp = name.get(..16)?;
    let at = time::PrimitiveDateTime::parse(stamp, BACKUP_STAMP)
        .ok()?
        .assume_utc();
    let n: i64 = match name.get(16..) {
        Some("") | None => 0,
        Some(rest) => rest.strip_prefix('-')?.parse().ok()?,
    };
    Some(at + time::Duration::microseconds(n))
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
            ca_crl: read(CaCertsFiles::CA_CRL)?.unwrap_or_default(),
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
            ca_crl: Vec::new(),
        }
    }

    pub(super) fn meta(secs: i64) -> WriteMeta {
        WriteMeta {
            cluster: "c1".into(),
            serial: "0a".into(),
            written_at: time::OffsetDateTime::from_unix_timestamp(secs).unwrap(),
            reason: "test".into(),
            retention: None,
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
