//! Where a transition's record and material are kept, so that a crash anywhere resumes
//! exactly: in `state_dir` (local mode), or in Secrets of the management cluster (a Kubernetes
//! deployment, `[daemon] lease`), shared by every replica and by the CLI.
//!
//! The material of each primary is the two `cacerts` sets it moves between (`original`,
//! `new`, keys included). It is saved before the record exists, so a `start` that is run again
//! after a crash never issues a second intermediate.
//!
//! In the management cluster every save of the record is a compare-and-swap on the Secret's
//! resourceVersion: a second driver (another replica, a `transition` command) that advanced
//! the record in between makes the save fail, and this driver stops instead of overwriting.

mod management;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use kube::api::Api;
use time::OffsetDateTime;
use zeroize::Zeroizing;

use super::Record;
use super::error::DriveError;
use crate::cluster::KubeTarget;
use crate::config::{Config, RecordLocation};
use crate::fsutil::{
    Mode, create_private_dir, fs_err, read_optional, read_optional_up_to, write_atomic,
};
use crate::pki::CaCertsFiles;
pub use management::KubeRecord;

/// The most read of a transition record file: a mesh of tens of thousands of proxies
/// records far less.
const MAX_RECORD: u64 = 64 << 20;

const RECORD_KEY: &str = "record.json";
/// The two sets of `cacerts` a primary moves between.
pub(crate) const ORIGINAL: &str = "original";
pub(crate) const NEW: &str = "new";

/// A transition's record and material, wherever the configuration keeps them.
pub enum RecordStore {
    Dir(StateFiles),
    Kube(Box<KubeRecord>),
}

impl RecordStore {
    /// The store `[transition] record` names (state_dir unless a Lease is configured).
    pub async fn open(config: &Config) -> Result<Self, DriveError> {
        match &config.transition.record {
            RecordLocation::StateDir => Ok(RecordStore::Dir(StateFiles::new(&config.state_dir))),
            RecordLocation::Kubernetes {
                kubeconfig,
                context,
                namespace,
                name,
            } => {
                let target = KubeTarget::connect(
                    "management",
                    kubeconfig.as_deref(),
                    context.as_deref(),
                    &config.kubernetes,
                )
                .await
                .map_err(|e| DriveError::Record {
                    location: format!("Secret {namespace}/{name} in the management cluster"),
                    reason: e.to_string(),
                })?;
                Ok(RecordStore::Kube(Box::new(KubeRecord {
                    secrets: Api::namespaced(target.client().clone(), namespace),
                    namespace: namespace.clone(),
                    name: name.clone(),
                    settings: config.kubernetes.clone(),
                    version: Mutex::new(None),
                    state_dir: config.state_dir.clone(),
                })))
            }
        }
    }

    /// Where the record is, for messages.
    pub fn describe(&self) -> String {
        match self {
            RecordStore::Dir(f) => f.record_path().display().to_string(),
            RecordStore::Kube(k) => k.describe(&k.name),
        }
    }

    pub async fn load(&self) -> Result<Option<Record>, DriveError> {
        match self {
            RecordStore::Dir(f) => f.load(),
            RecordStore::Kube(k) => k.load().await,
        }
    }

    pub async fn save(&self, record: &Record) -> Result<(), DriveError> {
        match self {
            RecordStore::Dir(f) => f.save(record),
            RecordStore::Kube(k) => k.save(record).await,
        }
    }

    /// Refuses while a transition is under way; returns a finished one, which a new start
    /// moves aside ([`Self::archive`]) once nothing can be refused any more. Material saved
    /// without a record is a start that stopped early; with a finished record, it is that
    /// transition's.
    pub(crate) async fn check_room(&self) -> Result<Option<Record>, DriveError> {
        let Some(existing) = self.load().await? else {
            return Ok(None);
        };
        if !existing.is_over() {
            return Err(DriveError::AlreadyUnderWay(format!(
                "a transition is already under way (phase {}{}): see `transition status`",
                existing.phase,
                if existing.phase == super::Phase::Done {
                    ", the root swap pending: `transition resume`"
                } else {
                    ""
                }
            )));
        }
        Ok(Some(existing))
    }

    /// Moves a transition's record and material aside without touching any cluster, so that
    /// a new one can start. The material is kept without its intermediate keys (each one a
    /// cluster was given is in its `cacerts` or backups by then); nothing else is deleted.
    pub async fn archive(&self, record: &Record, now: OffsetDateTime) -> Result<(), DriveError> {
        let stamp = stamp(now);
        match self {
            RecordStore::Dir(f) => f.archive(&stamp),
            RecordStore::Kube(k) => {
                k.archive(record, &stamp).await?;
                // A root rotation's pending new root waits in state_dir in either case.
                let local = StateFiles::new(&k.state_dir);
                if local.dir.exists() {
                    local.archive(&stamp)?;
                }
                Ok(())
            }
        }
    }

    pub(crate) async fn save_files(
        &self,
        cluster: &str,
        which: &str,
        files: &CaCertsFiles,
    ) -> Result<(), DriveError> {
        match self {
            RecordStore::Dir(f) => f.save_files(cluster, which, files),
            RecordStore::Kube(k) => k.save_files(cluster, which, files).await,
        }
    }

    pub(crate) async fn load_files(
        &self,
        cluster: &str,
        which: &str,
    ) -> Result<Option<CaCertsFiles>, DriveError> {
        match self {
            RecordStore::Dir(f) => f.load_files(cluster, which),
            RecordStore::Kube(k) => k.load_files(cluster, which).await,
        }
    }

    pub(crate) async fn load_material(
        &self,
        cluster: &str,
    ) -> Result<super::ClusterMaterial, DriveError> {
        let missing = |which: &str| DriveError::Record {
            location: match self {
                RecordStore::Dir(f) => f.material_dir(cluster, which).display().to_string(),
                RecordStore::Kube(k) => k.describe(&k.material_name(cluster)),
            },
            reason: format!("the saved {which} material of {cluster} is missing"),
        };
        Ok(super::ClusterMaterial {
            original: self
                .load_files(cluster, ORIGINAL)
                .await?
                .ok_or_else(|| missing(ORIGINAL))?,
            new: self
                .load_files(cluster, NEW)
                .await?
                .ok_or_else(|| missing(NEW))?,
            lists_before: None,
        })
    }
}

fn stamp(now: OffsetDateTime) -> String {
    now.format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
        .replace(':', "")
}

/// The files of a transition in `state_dir`: `transition/record.json` and, per primary,
/// `transition/<cluster>/{original,new}/` (keys 0600).
pub struct StateFiles {
    dir: PathBuf,
}

impl StateFiles {
    pub fn new(state_dir: &Path) -> Self {
        StateFiles {
            dir: state_dir.join("transition"),
        }
    }

    fn record_path(&self) -> PathBuf {
        self.dir.join("record.json")
    }

    pub fn load(&self) -> Result<Option<Record>, DriveError> {
        let path = self.record_path();
        let Some(bytes) = read_optional_up_to(&path, MAX_RECORD)? else {
            return Ok(None);
        };
        serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|e| DriveError::Record {
                location: path.display().to_string(),
                reason: e.to_string(),
            })
    }

    pub fn save(&self, record: &Record) -> Result<(), DriveError> {
        create_private_dir(&self.dir)?;
        write_atomic(&self.record_path(), &to_json(record)?, Mode::Secret)?;
        Ok(())
    }

    /// Moves the transition's folder aside as `transition-<stamp>`, without the intermediate
    /// keys of its material: once it is over, each one a cluster was given is in its `cacerts`
    /// or backups (one never written signed nothing), and a copy kept here would outlive
    /// every retention rule.
    fn archive(&self, stamp: &str) -> Result<(), DriveError> {
        // The keys go first: should the move fail, running the command again finds the
        // transition where it was and finishes.
        remove_material_keys(&self.dir)?;
        let to = self.dir.with_file_name(format!("transition-{stamp}"));
        std::fs::rename(&self.dir, &to).map_err(fs_err("cannot move aside", &self.dir))?;
        self.strip_older_archives();
        Ok(())
    }

    /// Takes the keys out of the archives of earlier transitions too: versions of cacertd
    /// before this one archived them with their keys. A folder that cannot be cleaned is
    /// named in a warning, and the move that just happened stands.
    fn strip_older_archives(&self) {
        let Some(parent) = self.dir.parent() else {
            return;
        };
        let Ok(entries) = std::fs::read_dir(parent) else {
            return;
        };
        for entry in entries.flatten() {
            let archived = entry
                .file_name()
                .to_string_lossy()
                .starts_with("transition-")
                && entry.file_type().is_ok_and(|t| t.is_dir());
            if archived && let Err(e) = remove_material_keys(&entry.path()) {
                tracing::warn!(error = %e, "an archived transition still holds intermediate keys");
            }
        }
    }

    fn material_dir(&self, cluster: &str, which: &str) -> PathBuf {
        self.dir.join(cluster).join(which)
    }

    fn save_files(
        &self,
        cluster: &str,
        which: &str,
        files: &CaCertsFiles,
    ) -> Result<(), DriveError> {
        let dir = self.material_dir(cluster, which);
        create_private_dir(&dir)?;
        for (name, bytes) in files.files() {
            write_atomic(&dir.join(name), bytes, Mode::Secret)?;
        }
        Ok(())
    }

    fn load_files(&self, cluster: &str, which: &str) -> Result<Option<CaCertsFiles>, DriveError> {
        let dir = self.material_dir(cluster, which);
        let read = |name: &str| read_optional(&dir.join(name));
        let (Some(ca_cert), Some(ca_key), Some(root_cert), Some(cert_chain)) = (
            read(CaCertsFiles::CA_CERT)?,
            read(CaCertsFiles::CA_KEY)?,
            read(CaCertsFiles::ROOT_CERT)?,
            read(CaCertsFiles::CERT_CHAIN)?,
        ) else {
            return Ok(None);
        };
        Ok(Some(CaCertsFiles {
            ca_cert,
            ca_key: Zeroizing::new(ca_key),
            root_cert,
            cert_chain,
            ca_crl: read(CaCertsFiles::CA_CRL)?.unwrap_or_default(),
        }))
    }
}

fn to_json(record: &Record) -> Result<Vec<u8>, DriveError> {
    serde_json::to_vec_pretty(record).map_err(|e| DriveError::Record {
        location: "the transition record".into(),
        reason: e.to_string(),
    })
}

/// Removes `ca-key.pem` from every `<cluster>/<which>/` folder of a transition being archived.
/// The new root waiting in `new-root/` is not material: `transition abort` decides about it.
fn remove_material_keys(archive: &Path) -> Result<(), DriveError> {
    let entries = |dir: &Path| -> Result<Vec<PathBuf>, DriveError> {
        let mut found = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(fs_err("cannot read", dir))? {
            let entry = entry.map_err(fs_err("cannot read", dir))?;
            if entry.file_type().is_ok_and(|t| t.is_dir()) {
                found.push(entry.path());
            }
        }
        Ok(found)
    };
    for cluster in entries(archive)? {
        if cluster.file_name().is_some_and(|n| n == "new-root") {
            continue;
        }
        for material in entries(&cluster)? {
            let key = material.join(CaCertsFiles::CA_KEY);
            match std::fs::remove_file(&key) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(fs_err("cannot remove", &key)(e).into()),
            }
        }
    }
    Ok(())
}
