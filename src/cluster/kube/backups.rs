//! The backup Secrets of `cacerts` (`cacerts-backup-<time>[-n]` in istio-system), and their
//! removal by `[backups]`. Listing Secrets would need `list` of every Secret in istio-system,
//! so `cacerts` itself names its backups, with when each was taken and when the intermediate
//! it holds expires, in the annotation `cacertd.io/backups`; the annotation is written with
//! `cacerts`, so it never names a backup that a failed write did not leave.
//!
//! Removing a backup needs `delete` of Secrets in istio-system, which the shipped `rbac.yaml`
//! does not grant (it cannot be limited by name): `rbac-backup-retention.yaml` does, and the
//! admission policy limits it to backups. Without it, the backups due for removal stay
//! named, and each write says which to delete.

use k8s_openapi::api::core::v1::Secret;
use kube::api::DeleteParams;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CACERTS, KubeTarget, NAMESPACE};
use crate::cluster::retention::to_remove;
use crate::cluster::retry::retrying;
use crate::cluster::{BackupEntry, Retention};
use crate::pki::{CaCertsFiles, Cert};

/// The annotation of `cacerts` that names its backups.
pub(super) const TRACKED: &str = "cacertd.io/backups";

#[derive(Serialize, Deserialize)]
struct Tracked {
    name: String,
    #[serde(with = "crate::clock::rfc3339_seconds")]
    at: OffsetDateTime,
    #[serde(with = "crate::clock::rfc3339_seconds::option", default)]
    not_after: Option<OffsetDateTime>,
}

/// The backups `cacerts` names (none if the annotation is missing or unreadable: they are then
/// kept, never guessed at).
pub(super) fn tracked(cacerts: &Secret) -> Vec<BackupEntry> {
    let Some(text) = cacerts
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(TRACKED))
    else {
        return Vec::new();
    };
    let tracked: Vec<Tracked> = serde_json::from_str(text).unwrap_or_default();
    tracked
        .into_iter()
        .map(|t| BackupEntry {
            name: t.name,
            taken_at: t.at,
            not_after: t.not_after,
        })
        .collect()
}

/// When the intermediate in `cacerts` expires, if it can be read.
pub(super) fn not_after_of(cacerts: &Secret) -> Option<OffsetDateTime> {
    let pem = cacerts.data.as_ref()?.get(CaCertsFiles::CA_CERT)?;
    Cert::one_from_pem(&pem.0, "cacerts")
        .ok()
        .map(|c| c.info().not_after)
}

/// Names `backups` in `secret`'s annotation.
pub(super) fn annotate(secret: &mut Secret, backups: &[BackupEntry]) {
    let tracked: Vec<Tracked> = backups
        .iter()
        .map(|b| Tracked {
            name: b.name.clone(),
            at: b.taken_at,
            not_after: b.not_after,
        })
        .collect();
    let annotations = secret
        .metadata
        .annotations
        .get_or_insert_with(Default::default);
    match serde_json::to_string(&tracked) {
        Ok(text) if !tracked.is_empty() => {
            annotations.insert(TRACKED.to_string(), text);
        }
        _ => {
            annotations.remove(TRACKED);
        }
    }
}

/// What [`KubeTarget::prune`] did.
pub(super) struct Pruned {
    /// The backups that remain, to name in `cacerts`.
    pub kept: Vec<BackupEntry>,
    pub removed: Vec<String>,
    pub problem: Option<String>,
}

impl KubeTarget {
    /// Deletes the backups `rule` no longer keeps. One that is already gone is forgotten; one
    /// that cannot be deleted stays named, and the problem says which to delete by hand.
    pub(super) async fn prune(
        &self,
        backups: Vec<BackupEntry>,
        rule: &Retention,
        now: OffsetDateTime,
    ) -> Pruned {
        let due = to_remove(&backups, rule, now);
        let secrets = self.secrets();
        let params = DeleteParams::default();
        let mut removed = Vec::new();
        let mut stuck = Vec::new();
        let mut problem = None;
        for name in &due {
            if problem.is_some() {
                stuck.push(name.clone());
                continue;
            }
            let deleted = retrying(&self.settings, "delete backup", || {
                secrets.delete(name, &params)
            })
            .await;
            match deleted {
                Ok(_) => removed.push(format!("secret {NAMESPACE}/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let e = self.error(format!("delete secret {NAMESPACE}/{name}"), e);
                    problem = Some(e.to_string());
                    stuck.push(name.clone());
                }
            }
        }
        let problem = problem.map(|p| {
            format!(
                "{p}; backups of {CACERTS} due for removal by [backups] are kept: grant \
                 deploy/kubernetes/target-cluster/rbac-backup-retention.yaml, or delete them: \
                 kubectl -n {NAMESPACE} delete secret {}",
                stuck.join(" ")
            )
        });
        let kept = backups
            .into_iter()
            .filter(|b| !due.contains(&b.name) || stuck.contains(&b.name))
            .collect();
        Pruned {
            kept,
            removed,
            problem,
        }
    }
}
