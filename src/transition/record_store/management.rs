//! The transition's record and material in Secrets of the management cluster (see the
//! parent module for how each save is a compare-and-swap).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Mutex;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, DeleteParams, ObjectMeta, PostParams, Preconditions};
use zeroize::{Zeroize, Zeroizing};

use super::{RECORD_KEY, Record, to_json};
use crate::cluster::retry::retrying;
use crate::pki::CaCertsFiles;
use crate::transition::error::DriveError;

/// Overwrites every value of a Secret's data (key material among it) before it is dropped.
fn wipe(data: Option<&mut BTreeMap<String, ByteString>>) {
    for v in data.into_iter().flat_map(|d| d.values_mut()) {
        v.0.zeroize();
    }
}

/// The record as Secret `<name>` (key `record.json`) and each primary's material as Secret
/// `<name>-<cluster>` (keys `original.ca-cert.pem`, …, `new.cert-chain.pem`), in one
/// namespace of the management cluster.
pub struct KubeRecord {
    pub(super) secrets: Api<Secret>,
    pub(super) namespace: String,
    pub(super) name: String,
    pub(super) settings: crate::config::KubeSettings,
    /// The record Secret's resourceVersion as last read or written: the next save's
    /// precondition (`None`: it did not exist).
    pub(super) version: Mutex<Option<String>>,
    pub(super) state_dir: PathBuf,
}

impl KubeRecord {
    pub(super) fn describe(&self, secret: &str) -> String {
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
    pub(super) fn material_name(&self, cluster: &str) -> String {
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

    pub(super) async fn load(&self) -> Result<Option<Record>, DriveError> {
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

    pub(super) async fn save(&self, record: &Record) -> Result<(), DriveError> {
        let data = BTreeMap::from([(RECORD_KEY.to_string(), ByteString(to_json(record)?))]);
        let written = self.put(&self.name, data, self.known_version()).await?;
        self.set_version(written);
        Ok(())
    }

    pub(super) async fn save_files(
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

    pub(super) async fn load_files(
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
    pub(super) async fn archive(&self, record: &Record, stamp: &str) -> Result<(), DriveError> {
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
            // each one a cluster was given is in its `cacerts` or backups.
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
