//! Renewals where the clusters serve revocation lists (README, "When a key leaks"): a proxy
//! that checks lists rejects a chain through a CA without one (docs/istio.md §14), so such a
//! primary's intermediate cannot be renewed by one write — its successor's list must reach
//! every primary first. The pass refuses the write and marks the cluster; the leader then
//! starts its renewal as a transition ([`crate::transition::TransitionKind::Renew`]), one at
//! a time, which [`Daemon::drive_transition`] carries on.

use super::Daemon;
use crate::fsutil::StateLock;
use crate::issuance::ClusterReport;
use crate::transition::Options;
use crate::transition::revoke::{RevokeRequest, start_revoke};

/// How soon a primary whose renewal waits for a transition is looked at again.
pub(super) const RETRY: time::Duration = time::Duration::minutes(1);

impl Daemon {
    /// Starts the renewal of the first primary of `reports` whose renewal needs a transition,
    /// unless a transition is under way (or its record cannot be read). A start that fails is
    /// logged, counted, and tried again after `[daemon] interval`.
    pub(super) async fn start_renewal(&self, reports: &[ClusterReport]) {
        let Some(cluster) = reports
            .iter()
            .find(|r| r.renew_by_transition)
            .map(|r| r.cluster.as_str())
        else {
            return;
        };
        if !self.no_transition("renewals").await {
            return;
        }
        // As when driving: with a Lease and the record in `state_dir`, the lock keeps a
        // `transition` command from starting one at the same moment.
        let local_record = self.config.transition.record == crate::config::RecordLocation::StateDir;
        let _lock = match local_record && self.config.daemon.lease.is_some() {
            true => match StateLock::acquire(&self.config.state_dir) {
                Ok(l) => Some(l),
                Err(_) => return,
            },
            false => None,
        };
        let Ok(store) = self.transition_store().await else {
            return;
        };
        let now = self.clock.now();
        let started = match crate::transition::start::istiods(&self.config).await {
            Ok(istiods) => {
                let options = Options::from_config(&self.config);
                let request = RevokeRequest::renewal(cluster);
                start_revoke(&self.config, store, &istiods, options, request, now, false).await
            }
            Err(e) => Err(e),
        };
        match started {
            Ok(_) => {
                tracing::info!(
                    cluster,
                    "renewing the intermediate as a transition: its successor's revocation \
                     list is published to every primary first"
                );
                // Driven at the next heartbeat.
                *self.next_transition_drive.lock().await = std::time::Instant::now();
            }
            Err(e) => {
                self.metrics.transition_error(e.reason());
                tracing::warn!(cluster, error = %e, reason = e.reason(), "cannot start the renewal");
                // Tried again at the next interval, not every minute.
                if let Some(s) = self.schedule.lock().await.get_mut(cluster) {
                    s.next = now + self.config.daemon.interval;
                }
            }
        }
    }
}
