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
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::{CACERTS, KubeTarget, NAMESPACE};
use crate::cluster::retention::to_remove;
use crate::cluster::{BackupEntry, Retention};
use crate::pki::{CaCertsFiles, Cert};

/// The annotation of `cacerts` that names its backups.
pub(super) const TRACKED: &str = "cacertd.io/backups";
/// How every backup's name begins.
pub(super) const BACKUP_PREFIX: &str = "cacerts-backup-";

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
        // Whoever may write `cacerts` may write this annotation: only the names cacertd gives
        // its backups count, so it cannot be made to delete another Secret (istiod's CA, a
        // remote secret).
        .filter(|t| is_backup_name(&t.name))
        .map(|t| BackupEntry {
            name: t.name,
            taken_at: t.at,
            not_after: t.not_after,
        })
        .collect()
}

/// The problem `first` with backups of `cacerts` that [`KubeTarget::prune`] could not remove:
/// why they stay, and the command that deletes them.
fn delete_by_hand(first: &str, why: &str, names: &[String]) -> String {
    format!(
        "{first}; backups of {CACERTS} due for removal by [backups] {why}, or delete them: \
         kubectl -n {NAMESPACE} delete secret {}",
        names.join(" ")
    )
}

/// Whether `name` is one cacertd gives a backup: `cacerts-backup-<time>[-n]`, the time in
/// digits and lowercase letters.
fn is_backup_name(name: &str) -> bool {
    name.strip_prefix(BACKUP_PREFIX).is_some_and(|rest| {
        rest.starts_with(|c: char| c.is_ascii_digit())
            && rest
                .chars()
                .all(|c| c.is_ascii_digit() || c.is_ascii_lowercase() || c == '-')
    })
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

/// The backups a write of `cacerts` names, and those it removes once the new `cacerts` is in
/// place ([`KubeTarget::plan_prune`]).
pub(super) struct PrunePlan {
    /// The backups to name in `cacerts`: those that remain, and those about to be deleted
    /// (named until a later write finds them gone, so that one whose deletion does not happen
    /// — a failure, a crash — is never lost track of).
    pub named: Vec<BackupEntry>,
    /// The backups to delete once `cacerts` is replaced: their deletion passed a dry run.
    deletable: Vec<String>,
    problem: Option<String>,
}

impl PrunePlan {
    /// Every backup kept, nothing removed (no `[backups]` rule: a trust transition may be
    /// under way).
    pub fn keep_all(backups: Vec<BackupEntry>) -> Self {
        PrunePlan {
            named: backups,
            deletable: Vec::new(),
            problem: None,
        }
    }
}

/// What [`KubeTarget::prune`] did.
pub(super) struct Pruned {
    pub removed: Vec<String>,
    pub problem: Option<String>,
}

impl KubeTarget {
    /// Which of `backups` `rule` no longer keeps, and which of those may go: each deletion is
    /// tried as a server-side dry run (authorized and admitted like the real one), and nothing
    /// is deleted yet — only once the new `cacerts` is in place ([`KubeTarget::prune`]), so a
    /// write that fails removes no backup. One already gone is forgotten; one that cannot be
    /// deleted stays named, and the problem says which to delete by hand.
    pub(super) async fn plan_prune(
        &self,
        backups: Vec<BackupEntry>,
        rule: &Retention,
        now: OffsetDateTime,
    ) -> PrunePlan {
        let due = to_remove(&backups, rule, now);
        let mut deletable = Vec::new();
        let mut gone = Vec::new();
        let mut stuck = Vec::new();
        let mut problem = None;
        for name in &due {
            if problem.is_some() {
                stuck.push(name.clone());
                continue;
            }
            match self.delete_secret(name, true).await {
                Ok(()) => deletable.push(name.clone()),
                Err(kube::Error::Api(s)) if s.code == 404 => gone.push(name.clone()),
                Err(e) => {
                    let e = self.error(format!("delete secret {NAMESPACE}/{name}"), e);
                    problem = Some(e.to_string());
                    stuck.push(name.clone());
                }
            }
        }
        let problem = problem.map(|p| {
            let why = "are kept: grant deploy/kubernetes/target-cluster/rbac-backup-retention.yaml";
            delete_by_hand(&p, why, &stuck)
        });
        let named = backups
            .into_iter()
            .filter(|b| !gone.contains(&b.name))
            .collect();
        PrunePlan {
            named,
            deletable,
            problem,
        }
    }

    /// Deletes what `plan` found deletable, now that the new `cacerts` is in place. One that
    /// cannot be deleted after all stays named in `cacerts` (the next write tries again), and
    /// the problem says so, with the command that deletes it.
    pub(super) async fn prune(&self, plan: PrunePlan) -> Pruned {
        let mut removed = Vec::new();
        let mut left = Vec::new();
        let mut problem = plan.problem;
        for name in &plan.deletable {
            match self.delete_secret(name, false).await {
                Ok(()) => removed.push(format!("secret {NAMESPACE}/{name}")),
                Err(kube::Error::Api(s)) if s.code == 404 => {}
                Err(e) => {
                    let e = self.error(format!("delete secret {NAMESPACE}/{name}"), e);
                    left.push((name.clone(), e.to_string()));
                }
            }
        }
        if let Some((_, first)) = left.first() {
            let names: Vec<String> = left.iter().map(|(n, _)| n.clone()).collect();
            let note = delete_by_hand(first, "are left (the next write tries again)", &names);
            problem = Some(match problem {
                Some(p) => format!("{p}; {note}"),
                None => note,
            });
        }
        Pruned { removed, problem }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    #[test]
    fn only_names_cacertd_gives_its_backups_are_tracked() {
        let names = [
            "cacerts-backup-20261201t103000z",
            "cacerts-backup-20261201t103000z-2",
            "istio-ca-secret",
            "istio-remote-secret-cluster2",
            "cacerts",
            "cacerts-backup-",
            "cacerts-backup-../x",
            "cacerts-backup-Ab",
        ];
        let list: Vec<String> = names
            .iter()
            .map(|n| format!(r#"{{"name":"{n}","at":"2026-12-01T10:30:00Z"}}"#))
            .collect();
        let mut annotations = std::collections::BTreeMap::new();
        annotations.insert(TRACKED.to_string(), format!("[{}]", list.join(",")));
        let cacerts = Secret {
            metadata: ObjectMeta {
                annotations: Some(annotations),
                ..ObjectMeta::default()
            },
            ..Secret::default()
        };
        let kept: Vec<String> = tracked(&cacerts).into_iter().map(|b| b.name).collect();
        assert_eq!(kept, names[..2]);
    }
}
