//! The Kubernetes target: Secret `istio-system/cacerts` in a cluster reached with `kube`.
//! Reads also collect istiod's self-signed CA (`istio-ca-secret`) and the bundles istiod
//! published (`istio-ca-root-cert` ConfigMaps); writes are optimistic (resourceVersion
//! preconditions) and keep every replaced version in a backup Secret.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::api::{Api, PostParams};
use kube::{Client, Config};
use zeroize::{Zeroize, Zeroizing};

pub mod access;
mod argo;
mod backups;
mod connect;
mod istiod;
mod paged;
mod proxies;
mod rollouts;
mod workload_certs;

pub use istiod::BundleObjects;
pub use proxies::Proxy;
pub use rollouts::{RolloutKind, Workload};
pub use workload_certs::{LongestWorkloadCert, SigningLimits, longest_workload_cert};

use super::retry::retrying;
use super::{Observed, TargetError, WriteMeta, WriteReport};
use crate::config::KubeSettings;
use crate::pki::{CaCertsFiles, fmt_time};
use crate::plan::Snapshot;

/// Istio's plug-in CA Secret and where istiod looks for it (docs/istio.md §1).
pub const NAMESPACE: &str = "istio-system";
pub const CACERTS: &str = "cacerts";
/// istiod's self-signed CA (docs/istio.md §4).
pub const ISTIO_CA_SECRET: &str = "istio-ca-secret";
/// The bundle istiod publishes to every namespace (docs/istio.md §4).
pub const ROOT_CERT_CONFIGMAP: &str = "istio-ca-root-cert";

const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "cacertd");
const BACKUP_OF: &str = "cacertd.io/backup-of";

pub struct KubeTarget {
    client: Client,
    cluster: String,
    url: String,
    settings: KubeSettings,
    /// Backups kept for a replacement that did not go as planned (it lost a race, or may
    /// have landed unseen), which `cacerts` does not name yet: the next write names them.
    unnamed: std::sync::Mutex<Vec<crate::cluster::BackupEntry>>,
}

impl KubeTarget {
    fn from_config(
        cluster: &str,
        mut config: Config,
        settings: &KubeSettings,
        config_err: impl Fn(String) -> TargetError,
    ) -> Result<Self, TargetError> {
        config.connect_timeout = Some(settings.timeout);
        config.read_timeout = Some(settings.timeout);
        config.write_timeout = Some(settings.timeout);
        // kube's own retry layer would retry 429/503/504 up to 15 times with backoff growing to
        // minutes, under our `retries` and unseen by it: the configured retries are the only ones.
        config.default_retry = false;
        let url = crate::config::url_for_messages(&config.cluster_url.to_string());
        let client = Client::try_from(config).map_err(|e| config_err(e.to_string()))?;
        Ok(KubeTarget {
            client,
            cluster: cluster.to_string(),
            url,
            settings: settings.clone(),
            unnamed: std::sync::Mutex::new(Vec::new()),
        })
    }

    pub fn describe(&self) -> String {
        format!(
            "cluster {} ({})",
            self.cluster,
            self.url.trim_end_matches('/')
        )
    }

    pub fn client(&self) -> &Client {
        &self.client
    }

    pub fn settings(&self) -> &KubeSettings {
        &self.settings
    }

    pub(crate) fn error(&self, action: impl Into<String>, e: kube::Error) -> TargetError {
        let (code, message) = match &e {
            kube::Error::Api(s) => (Some(s.code), format!("{} ({})", s.message, s.code)),
            other => match crate::net_error::why(other) {
                Some(why) => (None, format!("{why} ({other})")),
                None => (None, other.to_string()),
            },
        };
        TargetError::Kube {
            target: self.describe(),
            action: action.into(),
            message,
            code,
        }
    }

    fn secrets(&self) -> Api<Secret> {
        Api::namespaced(self.client.clone(), NAMESPACE)
    }

    pub async fn read(&self) -> Result<Observed, TargetError> {
        let secrets = self.secrets();
        let cacerts = retrying(&self.settings, "get cacerts", || secrets.get_opt(CACERTS))
            .await
            .map_err(|e| self.error(format!("get secret {NAMESPACE}/{CACERTS}"), e))?;
        let version = cacerts
            .as_ref()
            .and_then(|s| s.metadata.resource_version.clone());
        let self_signed = retrying(&self.settings, "get istio-ca-secret", || {
            secrets.get_opt(ISTIO_CA_SECRET)
        })
        .await
        .map_err(|e| self.error(format!("get secret {NAMESPACE}/{ISTIO_CA_SECRET}"), e))?;
        // One list of istiod's Deployments says where it publishes and what it runs.
        let istiod = self.istiod_deployments().await?;
        let objects = istiod::bundle_objects_of(&istiod);
        Ok(Observed {
            snapshot: Snapshot {
                cacerts: cacerts.map(files_of),
                self_signed_ca: self_signed.map(files_of),
                published_bundles: Some(self.published_bundles(&objects).await?),
                istiod_images: Some(istiod::images_of(&istiod)),
            },
            version,
        })
    }

    pub(super) async fn write(
        &self,
        files: &CaCertsFiles,
        meta: &WriteMeta,
        observed: &Observed,
    ) -> Result<WriteReport, TargetError> {
        let secrets = self.secrets();
        let action = format!("write secret {NAMESPACE}/{CACERTS}");
        let conflict = |detail: String| TargetError::Conflict {
            target: self.describe(),
            detail,
        };
        let Some(version) = &observed.version else {
            let mut secret = new_secret(files, meta, None, ObjectMeta::default(), None);
            let post = PostParams::default();
            let created = retrying(&self.settings, "create cacerts", || {
                secrets.create(&post, &secret)
            })
            .await;
            wipe(&mut secret);
            return match created {
                Ok(mut made) => {
                    wipe(&mut made);
                    Ok(WriteReport::default())
                }
                Err(kube::Error::Api(s)) if s.code == 409 => {
                    Err(conflict("created by someone else meanwhile".into()))
                }
                Err(e) => Err(self.error(action, e)),
            };
        };
        // Back up exactly the version we are about to replace.
        let current = retrying(&self.settings, "get cacerts", || secrets.get_opt(CACERTS))
            .await
            .map_err(|e| self.error(format!("get secret {NAMESPACE}/{CACERTS}"), e))?
            .ok_or_else(|| conflict("deleted meanwhile".into()))?;
        if current.metadata.resource_version.as_ref() != Some(version) {
            return Err(conflict(format!(
                "resourceVersion {} is now {}",
                version,
                current.metadata.resource_version.as_deref().unwrap_or("?")
            )));
        }
        if current.type_.as_deref() == Some("kubernetes.io/tls")
            || current
                .data
                .as_ref()
                .is_some_and(|d| d.contains_key("tls.crt"))
        {
            return Err(TargetError::ManagedByCertManager {
                target: self.describe(),
            });
        }
        let mut secret = new_secret(
            files,
            meta,
            Some(version.clone()),
            current.metadata.clone(),
            current.type_.clone(),
        );
        let replaced = self.backup_and_replace(&current, &mut secret, meta).await;
        wipe(&mut secret);
        let mut current = current;
        wipe(&mut current);
        match replaced {
            Ok((backup, pruned)) => Ok(WriteReport {
                backup: Some(format!("secret {NAMESPACE}/{backup}")),
                pruned: pruned.removed,
                prune_problem: pruned.problem,
            }),
            Err(Step::Backup(e)) => Err(e),
            Err(Step::Replace(e, backup)) => {
                let kept = backup
                    .map(|b| format!(" (the backup made for it, secret {NAMESPACE}/{b}, is kept)"))
                    .unwrap_or_default();
                match e {
                    kube::Error::Api(s) if s.code == 409 => {
                        Err(conflict(format!("{}{kept}", s.message)))
                    }
                    e => Err(self.error(format!("{action}{kept}"), e)),
                }
            }
        }
    }

    /// Replaces `cacerts` with `secret` after backing up `current`, returning the backup's
    /// name and what `[backups]` removed. The replacement is first tried as a server-side dry
    /// run, which the apiserver authorizes, admits and checks against the resourceVersion
    /// like the real one: a write that is bound to fail (forbidden, conflicting, refused by a
    /// webhook) fails before any backup is made, so retrying it does not leave a copy of the
    /// key each time. Old backups are removed only once the new `cacerts` is in place
    /// ([`backups`]); a write that fails removes none.
    async fn backup_and_replace(
        &self,
        current: &Secret,
        secret: &mut Secret,
        meta: &WriteMeta,
    ) -> Result<(String, backups::Pruned), Step> {
        let secrets = self.secrets();
        let dry_run = PostParams {
            dry_run: true,
            ..PostParams::default()
        };
        let mut tried = retrying(&self.settings, "try replacing cacerts", || {
            secrets.replace(CACERTS, &dry_run, secret)
        })
        .await
        .map_err(|e| Step::Replace(e, None))?;
        // The answer echoes the key: wiped like every other copy.
        wipe(&mut tried);
        let mut tracked = backups::tracked(current);
        let unnamed = self.unnamed.lock().map(|u| u.clone()).unwrap_or_default();
        for u in unnamed {
            if !tracked.contains(&u) {
                tracked.push(u);
            }
        }
        // A name cacerts still gives a backup (one deleted, until a write finds it gone) is
        // never reused: the old entry would take the new backup with it.
        let taken: Vec<&str> = tracked.iter().map(|b| b.name.as_str()).collect();
        let backup = self
            .backup(current, meta, &taken)
            .await
            .map_err(Step::Backup)?;
        let entry = crate::cluster::BackupEntry {
            name: backup.clone(),
            taken_at: meta.written_at,
            not_after: backups::not_after_of(current),
        };
        tracked.push(entry.clone());
        let plan = match &meta.retention {
            Some(rule) => self.plan_prune(tracked, rule, meta.written_at).await,
            None => backups::PrunePlan::keep_all(tracked),
        };
        backups::annotate(secret, &plan.named);
        let post = PostParams::default();
        let secret = &*secret;
        let replaced = retrying(&self.settings, "replace cacerts", || {
            secrets.replace(CACERTS, &post, secret)
        })
        .await;
        match replaced {
            Ok(mut written) => {
                wipe(&mut written);
                if let Ok(mut u) = self.unnamed.lock() {
                    u.clear();
                }
                Ok((backup, self.prune(plan).await))
            }
            Err(e) => {
                // Whether the replacement landed is read, not guessed from the error (a retried
                // call may end in a refusal after an earlier attempt committed unseen). While
                // cacerts still stands at the version backed up, nothing was replaced: the
                // backup copies what is in place, and goes. Otherwise it stays, named in the
                // error, and the next write names it in cacerts.
                let version = current.metadata.resource_version.as_deref();
                let left = match self.still_at(version).await && self.delete_backup(&backup).await {
                    true => None,
                    false => {
                        if let Ok(mut u) = self.unnamed.lock() {
                            u.push(entry);
                        }
                        Some(backup)
                    }
                };
                Err(Step::Replace(e, left))
            }
        }
    }

    /// Whether `cacerts` still stands at `version` (a fresh read; `false` when that cannot be
    /// told).
    async fn still_at(&self, version: Option<&str>) -> bool {
        let secrets = self.secrets();
        match retrying(&self.settings, "get cacerts", || secrets.get_opt(CACERTS)).await {
            Ok(Some(mut now)) => {
                let same = version.is_some() && now.metadata.resource_version.as_deref() == version;
                wipe(&mut now);
                same
            }
            _ => false,
        }
    }

    /// Deletes the backup `name` made for a write that replaced nothing; whether it is gone.
    async fn delete_backup(&self, name: &str) -> bool {
        match self.delete_secret(name, false).await {
            Ok(()) => true,
            Err(kube::Error::Api(s)) => s.code == 404,
            Err(_) => false,
        }
    }

    /// Deletes Secret `name` of istio-system (with `dry_run`, only tries to), wiping the answer:
    /// the apiserver may answer with the deleted Secret, key and all.
    pub(super) async fn delete_secret(&self, name: &str, dry_run: bool) -> Result<(), kube::Error> {
        let secrets = self.secrets();
        let params = kube::api::DeleteParams {
            dry_run,
            ..kube::api::DeleteParams::default()
        };
        let what = if dry_run {
            "try deleting secret"
        } else {
            "delete secret"
        };
        let deleted = retrying(&self.settings, what, || secrets.delete(name, &params)).await?;
        if let Some(mut echoed) = deleted.left() {
            wipe(&mut echoed);
        }
        Ok(())
    }

    /// Copies `current` to a new Secret `cacerts-backup-<time>[-n]`, of a name not `taken`, and
    /// returns its name.
    async fn backup(
        &self,
        current: &Secret,
        meta: &WriteMeta,
        taken: &[&str],
    ) -> Result<String, TargetError> {
        let secrets = self.secrets();
        let stamp = meta
            .written_at
            .format(time::macros::format_description!(
                "[year][month][day]t[hour][minute][second]z"
            ))
            .unwrap_or_else(|_| meta.written_at.unix_timestamp().to_string());
        for n in 0..100 {
            let name = if n == 0 {
                format!("{}{stamp}", backups::BACKUP_PREFIX)
            } else {
                format!("{}{stamp}-{n}", backups::BACKUP_PREFIX)
            };
            if taken.contains(&name.as_str()) {
                continue;
            }
            let mut labels = BTreeMap::new();
            labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
            labels.insert(BACKUP_OF.to_string(), CACERTS.to_string());
            let mut annotations = current.metadata.annotations.clone().unwrap_or_default();
            annotations.insert("cacertd.io/backed-up-at".into(), fmt_time(meta.written_at));
            annotations.insert(
                "cacertd.io/replaced-resource-version".into(),
                current
                    .metadata
                    .resource_version
                    .clone()
                    .unwrap_or_default(),
            );
            annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
            let mut backup = Secret {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    namespace: Some(NAMESPACE.to_string()),
                    labels: Some(labels),
                    annotations: Some(annotations),
                    ..Default::default()
                },
                type_: current.type_.clone(),
                data: current.data.clone(),
                ..Default::default()
            };
            let post = PostParams::default();
            let created = retrying(&self.settings, "create backup", || {
                secrets.create(&post, &backup)
            })
            .await;
            wipe(&mut backup);
            match created {
                Ok(mut made) => {
                    wipe(&mut made);
                    return Ok(name);
                }
                Err(kube::Error::Api(s)) if s.code == 409 => continue,
                Err(e) => {
                    return Err(self.error(format!("create backup secret {NAMESPACE}/{name}"), e));
                }
            }
        }
        Err(TargetError::Refused {
            target: self.describe(),
            action: "back up cacerts".into(),
            reason: "no free backup name".into(),
        })
    }
}

/// Where a write of `cacerts` stopped.
enum Step {
    Backup(TargetError),
    /// The replacement failed, with the backup made for it (if it got that far).
    Replace(kube::Error, Option<String>),
}

/// The files of a `cacerts`-shaped Secret (four-key or cert-manager form). The key moves out
/// of the Secret into wiped memory.
fn files_of(secret: Secret) -> CaCertsFiles {
    let mut data = secret.data.unwrap_or_default();
    let cert_manager = data.contains_key("tls.crt");
    let mut take = |k: &str| data.remove(k).map(|b| b.0).unwrap_or_default();
    let result = if cert_manager {
        let (crt, key, ca) = (
            take("tls.crt"),
            Zeroizing::new(take("tls.key")),
            take("ca.crt"),
        );
        CaCertsFiles::from_cert_manager(&crt, key, &ca)
    } else {
        CaCertsFiles {
            ca_cert: take(CaCertsFiles::CA_CERT),
            ca_key: Zeroizing::new(take(CaCertsFiles::CA_KEY)),
            root_cert: take(CaCertsFiles::ROOT_CERT),
            cert_chain: take(CaCertsFiles::CERT_CHAIN),
            ca_crl: take(CaCertsFiles::CA_CRL),
        }
    };
    for v in data.values_mut() {
        v.0.zeroize();
    }
    result
}

/// The new `cacerts`: type Opaque, the four keys, our label and annotations (who, when, which
/// serial, why) on top of whatever labels and annotations were there.
fn new_secret(
    files: &CaCertsFiles,
    meta: &WriteMeta,
    resource_version: Option<String>,
    previous: ObjectMeta,
    previous_type: Option<String>,
) -> Secret {
    let mut labels = previous.labels.unwrap_or_default();
    labels.insert(MANAGED_BY.0.to_string(), MANAGED_BY.1.to_string());
    let mut annotations = previous.annotations.unwrap_or_default();
    // `kubectl apply` keeps the whole applied object here — including the old private key.
    annotations.remove("kubectl.kubernetes.io/last-applied-configuration");
    for (k, v) in [
        ("cacertd.io/cluster", meta.cluster.clone()),
        ("cacertd.io/serial", meta.serial.clone()),
        ("cacertd.io/written-at", fmt_time(meta.written_at)),
        ("cacertd.io/reason", meta.reason.clone()),
    ] {
        annotations.insert(k.to_string(), v);
    }
    let data = files
        .files()
        .into_iter()
        .map(|(k, v)| (k.to_string(), ByteString(v.to_vec())))
        .collect();
    Secret {
        metadata: ObjectMeta {
            name: Some(CACERTS.to_string()),
            namespace: Some(NAMESPACE.to_string()),
            labels: Some(labels),
            annotations: Some(annotations),
            resource_version,
            ..Default::default()
        },
        // A Secret's type is immutable; keep whatever it is (cert-manager's was refused).
        type_: Some(previous_type.unwrap_or_else(|| "Opaque".to_string())),
        data: Some(data),
        ..Default::default()
    }
}

/// Wipes the data of a Secret we built or read (it holds a private key).
fn wipe(secret: &mut Secret) {
    if let Some(data) = secret.data.as_mut() {
        for v in data.values_mut() {
            v.0.zeroize();
        }
    }
}
