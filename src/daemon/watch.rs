//! What makes a cluster due before its schedule: a watch on each Kubernetes primary's
//! `cacerts`, and changed files in a directory target.

use std::sync::Arc;
use std::time::Duration;

use crate::issuance::ClusterReport;

use super::Daemon;

impl Daemon {
    /// Kubernetes targets: a watch on each primary's `cacerts` makes it due when anyone
    /// changes or deletes it (the level-triggered pass then decides what to do).
    pub fn spawn_watchers(self: &Arc<Self>) -> Vec<tokio::task::JoinHandle<()>> {
        let mut tasks = Vec::new();
        for c in self.config.topology.primaries() {
            let Some(crate::topology::TargetConfig::Kube { .. }) = &c.target else {
                continue;
            };
            let (daemon, name) = (self.clone(), c.name.clone());
            tasks.push(tokio::spawn(
                async move { daemon.watch_cacerts(name).await },
            ));
        }
        tasks
    }

    pub(super) async fn watch_cacerts(self: Arc<Self>, cluster: String) {
        use futures::StreamExt;
        use k8s_openapi::api::core::v1::Secret;
        let Some(c) = self.config.topology.get(&cluster) else {
            return;
        };
        // The resourceVersion last seen: a re-watch from "0" replays the current object as
        // ADDED, which is no change. The first sight is not one either (the pass covers it).
        let mut last_seen: Option<String> = None;
        let mut failures = 0u32;
        // Set once a watch has been open: whatever happened while none was (a deletion leaves
        // nothing for a new watch to replay) is found by looking at the cluster again.
        let mut rewatch = false;
        loop {
            let target = match crate::cluster::Target::open(c, &self.config).await {
                Ok(crate::cluster::Target::Kube(k)) => k,
                _ => {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    continue;
                }
            };
            let api: kube::Api<Secret> =
                kube::Api::namespaced(target.client().clone(), "istio-system");
            let params = kube::api::WatchParams::default().fields("metadata.name=cacerts");
            match api.watch(&params, "0").await {
                Ok(stream) => {
                    failures = 0;
                    if std::mem::replace(&mut rewatch, true) {
                        self.mark_due(&cluster).await;
                    }
                    let mut stream = std::pin::pin!(stream);
                    while let Some(Ok(event)) = stream.next().await {
                        let seen = match event {
                            kube::api::WatchEvent::Added(s)
                            | kube::api::WatchEvent::Modified(s) => s.metadata.resource_version,
                            kube::api::WatchEvent::Deleted(_) => Some("deleted".to_string()),
                            kube::api::WatchEvent::Bookmark(_) => continue,
                            kube::api::WatchEvent::Error(e) => {
                                tracing::debug!(cluster = %cluster, error = %e.message, "watch of cacerts ended");
                                break;
                            }
                        };
                        let changed = last_seen.is_some() && seen != last_seen;
                        last_seen = seen;
                        if changed {
                            self.mark_due(&cluster).await;
                        }
                    }
                }
                Err(e) => {
                    failures += 1;
                    if failures == 1 {
                        tracing::warn!(cluster = %cluster, error = %e, "cannot watch cacerts (RBAC needs `watch` on it); changes are seen at the next interval");
                    } else {
                        tracing::debug!(cluster = %cluster, error = %e, "watch of cacerts failed; retrying");
                    }
                }
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Directory targets whose files changed since their last pass become due at once (the
    /// file-change trigger; cheap enough to run every heartbeat).
    pub async fn notice_dir_changes(&self) {
        let mut changed = Vec::new();
        {
            let seen = self.seen.lock().await;
            for c in self.config.topology.primaries() {
                if let Some(crate::topology::TargetConfig::Dir { path, .. }) = &c.target
                    && seen
                        .get(&c.name)
                        .is_some_and(|before| *before != dir_signature(path))
                {
                    changed.push(c.name.clone());
                }
            }
        }
        for name in changed {
            tracing::info!(cluster = %name, "target folder changed; reconciling now");
            self.mark_due(&name).await;
        }
    }

    pub(super) async fn remember_dirs(&self, reports: &[ClusterReport]) {
        let mut seen = self.seen.lock().await;
        for r in reports {
            if let Some(c) = self.config.topology.get(&r.cluster)
                && let Some(crate::topology::TargetConfig::Dir { path, .. }) = &c.target
            {
                seen.insert(r.cluster.clone(), dir_signature(path));
            }
        }
    }
}

/// Size and modification time of each cacerts file of a target folder, in a fixed order.
pub(super) type DirSignature = Vec<(u64, Option<std::time::SystemTime>)>;

/// Sizes and modification times of the files of a cacerts folder.
pub(super) fn dir_signature(path: &std::path::Path) -> DirSignature {
    [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
        "tls.crt",
        "tls.key",
        "ca.crt",
    ]
    .iter()
    .map(|f| match std::fs::metadata(path.join(f)) {
        Ok(m) => (m.len(), m.modified().ok()),
        Err(_) => (u64::MAX, None),
    })
    .collect()
}
