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

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use time::OffsetDateTime;
use zeroize::{Zeroize, Zeroizing};

use super::Record;
use super::error::DriveError;
use crate::cluster::KubeTarget;
use crate::cluster::retry::retrying;
use crate::config::{Config, RecordLocation};
use crate::fsutil::{
    Mode, create_private_dir, fs_err, read_optional, read_optional_up_to, write_atomic,
};
use crate::pki::CaCertsFiles;

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
    /// a new one can start. The material is kept without its intermediate keys (each is in
    /// its cluster's `cacerts` or backups by then); nothing else is deleted.
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
    /// keys of its material: once it is over, each is in its cluster's `cacerts` or in that
    /// cluster's backups, and a copy kept here would outlive every retention rule.
    fn archive(&self, stamp: &str) -> Result<(), DriveError> {
        let to = self.dir.with_file_name(format!("transition-{stamp}"));
        std::fs::rename(&self.dir, &to).map_err(fs_err("cannot move aside", &self.dir))?;
        remove_material_keys(&to)
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

/// Overwrites every value of a Secret's data (key material among it) before it is dropped.
fn wipe(data: Option<&mut BTreeMap<String, ByteString>>) {
    for v in data.into_iter().flat_map(|d| d.values_mut()) {
        v.0.zeroize();
    }
}

fn to_json(record: &Record) -> Result<Vec<u8>, DriveError> {
    serde_json::to_vec_pretty(record).map_err(|e| DriveError::Record {
        location: "the transition record".into(),
        reason: e.to_string(),
    })
}

/// The record as Secret `<name>` (key `record.json`) and each primary's material as Secret
/// `<name>-<cluster>` (keys `original.ca-cert.pem`, …, `new.cert-chain.pem`), in one
/// namespace of the management cluster.
pub struct KubeRecord {
    secrets: Api<Secret>,
    namespace: String,
    name: String,
    settings: crate::config::KubeSettings,
    /// The record Secret's resourceVersion as last read or written: the next save's
    /// precondition (`None`: it did not exist).
    version: Mutex<Option<String>>,
    state_dir: PathBuf,
}

impl KubeRecord {
    fn describe(&self, secret: &str) -> String {
        format!(
            "Secret {}/{secret} in the management cluster",
            self.namespace
        )
    }

    fn error(&self, secret: &str, action: &str, e: kube::Error) -> DriveError {
        DriveError::Record {
            location: self.describe(secret),
            reason: format!("{action}: {e}"),
        }
    }

    /// Secret names are DNS subdomains; cluster names may hold '_' and capitals. Those are
    /// mapped, with a hash of the real name so that two clusters never share a Secret.
    fn material_name(&self, cluster: &str) -> String {
        let plain: String = cluster
            .chars()
            .map(|c| match c {
                'a'..='z' | '0'..='9' | '-' | '.' => c,
                'A'..='Z' => c.to_ascii_lowercase(),
                _ => '-',
            })
            .collect();
        if plain == cluster {
            format!("{}-{cluster}", self.name)
        } else {
            let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, cluster.as_bytes());
            let hex: String = digest.as_ref()[..4]
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            format!("{}-{plain}-{hex}", self.name)
        }
    }

    fn set_version(&self, v: Option<String>) {
        if let Ok(mut g) = self.version.lock() {
            *g = v;
        }
    }

    fn known_version(&self) -> Option<String> {
        self.version.lock().ok().and_then(|g| g.clone())
    }

    async fn get(&self, secret: &str) -> Result<Option<Secret>, DriveError> {
        retrying(&self.settings, "get transition secret", || {
            self.secrets.get_opt(secret)
        })
        .await
        .map_err(|e| self.error(secret, "cannot read", e))
    }

    async fn load(&self) -> Result<Option<Record>, DriveError> {
        let Some(secret) = self.get(&self.name).await? else {
            self.set_version(None);
            return Ok(None);
        };
        let bytes = secret
            .data
            .as_ref()
            .and_then(|d| d.get(RECORD_KEY))
            .ok_or_else(|| DriveError::Record {
                location: self.describe(&self.name),
                reason: format!("has no {RECORD_KEY}"),
            })?;
        let record = serde_json::from_slice(&bytes.0).map_err(|e| DriveError::Record {
            location: self.describe(&self.name),
            reason: format!("{RECORD_KEY}: {e}"),
        })?;
        self.set_version(secret.metadata.resource_version);
        Ok(Some(record))
    }

    fn secret(
        &self,
        name: &str,
        data: BTreeMap<String, ByteString>,
        version: Option<String>,
    ) -> Secret {
        Secret {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                namespace: Some(self.namespace.clone()),
                labels: Some(BTreeMap::from([
                    ("app.kubernetes.io/name".to_string(), "cacertd".to_string()),
                    ("cacertd.io/transition".to_string(), self.name.clone()),
                ])),
                resource_version: version,
                ..ObjectMeta::default()
            },
            type_: Some("Opaque".into()),
            data: Some(data),
            ..Secret::default()
        }
    }

    /// Creates `name`, or replaces it at `version`. A write that landed although its answer
    /// was lost (and so conflicts when retried) is recognised by reading it back.
    /// Returns the resourceVersion written. Every copy of the data (keys among it) is wiped.
    async fn put(
        &self,
        name: &str,
        mut data: BTreeMap<String, ByteString>,
        version: Option<String>,
    ) -> Result<Option<String>, DriveError> {
        let mut secret = self.secret(name, data.clone(), version.clone());
        let post = PostParams::default();
        let result = retrying(&self.settings, "write transition secret", || async {
            match &version {
                Some(_) => self.secrets.replace(name, &post, &secret).await,
                None => self.secrets.create(&post, &secret).await,
            }
        })
        .await;
        wipe(secret.data.as_mut());
        let outcome = match result {
            Ok(mut s) => {
                wipe(s.data.as_mut());
                Ok(s.metadata.resource_version)
            }
            Err(kube::Error::Api(s)) if s.code == 409 => match self.get(name).await? {
                Some(mut now) => {
                    let same = now.data.as_ref() == Some(&data);
                    wipe(now.data.as_mut());
                    match same {
                        true => Ok(now.metadata.resource_version),
                        false => Err(self.changed(name)),
                    }
                }
                None => Err(self.changed(name)),
            },
            Err(e) => Err(self.error(name, "cannot write", e)),
        };
        wipe(Some(&mut data));
        outcome
    }

    fn changed(&self, name: &str) -> DriveError {
        DriveError::ChangedMeanwhile(format!(
            "{} was changed by someone else since it was read (another cacertd replica, or a \
             `transition` command?): stopped without overwriting it; see `transition status`",
            self.describe(name)
        ))
    }

    async fn save(&self, record: &Record) -> Result<(), DriveError> {
        let data = BTreeMap::from([(RECORD_KEY.to_string(), ByteString(to_json(record)?))]);
        let written = self.put(&self.name, data, self.known_version()).await?;
        self.set_version(written);
        Ok(())
    }

    async fn save_files(
        &self,
        cluster: &str,
        which: &str,
        files: &CaCertsFiles,
    ) -> Result<(), DriveError> {
        let name = self.material_name(cluster);
        let current = self.get(&name).await?;
        let version = current
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let mut data = current.and_then(|s| s.data).unwrap_or_default();
        for (file, bytes) in files.files() {
            data.insert(format!("{which}.{file}"), ByteString(bytes.to_vec()));
        }
        self.put(&name, data, version).await?;
        Ok(())
    }

    async fn load_files(
        &self,
        cluster: &str,
        which: &str,
    ) -> Result<Option<CaCertsFiles>, DriveError> {
        let name = self.material_name(cluster);
        let Some(mut data) = self.get(&name).await?.and_then(|s| s.data) else {
            return Ok(None);
        };
        let mut take = |file: &str| {
            data.remove(&format!("{which}.{file}"))
                .map(|b| Zeroizing::new(b.0))
        };
        let found = (
            take(CaCertsFiles::CA_CERT),
            take(CaCertsFiles::CA_KEY),
            take(CaCertsFiles::ROOT_CERT),
            take(CaCertsFiles::CERT_CHAIN),
        );
        let ca_crl = take(CaCertsFiles::CA_CRL).map(|mut b| std::mem::take(&mut *b));
        // The other set's key is in there too.
        wipe(Some(&mut data));
        let (Some(mut ca_cert), Some(ca_key), Some(mut root_cert), Some(mut cert_chain)) = found
        else {
            return Ok(None);
        };
        Ok(Some(CaCertsFiles {
            ca_cert: std::mem::take(&mut *ca_cert),
            ca_key,
            root_cert: std::mem::take(&mut *root_cert),
            cert_chain: std::mem::take(&mut *cert_chain),
            ca_crl: ca_crl.unwrap_or_default(),
        }))
    }

    /// Copies each Secret to `<name>-<stamp>` (labelled archived), then deletes it: the
    /// material first and the record last, so that an interrupted archive never leaves
    /// material a later `start` would take for its own. Run again, it finishes.
    async fn archive(&self, record: &Record, stamp: &str) -> Result<(), DriveError> {
        let stamp = stamp.to_ascii_lowercase().replace(['+', '.'], "-");
        let mut names: Vec<String> = record
            .clusters
            .keys()
            .map(|c| self.material_name(c))
            .collect();
        names.push(self.name.clone());
        for name in names {
            let Some(secret) = self.get(&name).await? else {
                continue;
            };
            let copy = format!("{name}-{stamp}");
            // Kept without the intermediate keys of its material: once the transition is over,
            // each is in its cluster's `cacerts` or in that cluster's backups.
            let mut data = secret.data.unwrap_or_default();
            let key_suffix = format!(".{}", CaCertsFiles::CA_KEY);
            data.retain(|file, bytes| {
                let keep = !file.ends_with(&key_suffix);
                if !keep {
                    bytes.0.zeroize();
                }
                keep
            });
            let mut archived = self.secret(&copy, data, None);
            if let Some(labels) = archived.metadata.labels.as_mut() {
                labels.insert("cacertd.io/archived".into(), "true".into());
            }
            let post = PostParams::default();
            let created = retrying(&self.settings, "archive transition secret", || {
                self.secrets.create(&post, &archived)
            })
            .await;
            let copied = match created {
                Ok(mut s) => {
                    wipe(s.data.as_mut());
                    Ok(())
                }
                // Copied by an earlier, interrupted attempt: only if it holds the same data.
                Err(kube::Error::Api(s)) if s.code == 409 => match self.get(&copy).await? {
                    Some(mut there) => {
                        let same = there.data == archived.data;
                        wipe(there.data.as_mut());
                        match same {
                            true => Ok(()),
                            false => Err(self.changed(&copy)),
                        }
                    }
                    None => Err(self.changed(&copy)),
                },
                Err(e) => Err(self.error(&copy, "cannot create", e)),
            };
            wipe(archived.data.as_mut());
            copied?;
            // Only the version that was copied: a save in between is not lost.
            let delete = DeleteParams {
                preconditions: Some(Preconditions {
                    resource_version: secret.metadata.resource_version.clone(),
                    uid: None,
                }),
                ..DeleteParams::default()
            };
            match retrying(&self.settings, "delete transition secret", || {
                self.secrets.delete(&name, &delete)
            })
            .await
            {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    return Err(DriveError::ChangedMeanwhile(format!(
                        "{} changed while it was being moved aside (another cacertd?); nothing \
                         was lost: run the command again",
                        self.describe(&name)
                    )));
                }
                Err(e) => return Err(self.error(&name, "cannot delete", e)),
            }
        }
        self.set_version(None);
        Ok(())
    }
}

/// Removes `ca-key.pem` from every `<cluster>/<which>/` folder of an archived transition.
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
