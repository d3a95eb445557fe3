//! Leadership: a Kubernetes Lease when `[daemon] lease` is set, else a lock file on
//! `state_dir`. Only the leader reconciles or drives a transition.

use std::sync::atomic::Ordering;
use std::time::Duration;

use time::OffsetDateTime;

use crate::fsutil::StateLock;

use super::Daemon;

/// A running Kubernetes Lease contest: the watcher task and its "am I leader" channel.
pub(super) struct LeaseHold {
    leading: tokio::sync::watch::Receiver<bool>,
    /// To check the Lease itself before acting (the manager's view can be stale when the
    /// management cluster is unreachable).
    client: kube::Client,
    /// When this manager started contending.
    since: std::time::Instant,
    task: tokio::task::JoinHandle<
        Result<kube_lease_manager::LeaseManager, kube_lease_manager::LeaseManagerError>,
    >,
}

impl Daemon {
    /// Whether this replica leads: with a Kubernetes Lease when `[daemon] lease` is set, else
    /// with a lock file on `state_dir`. Only the leader reconciles; a standby keeps trying.
    pub async fn try_lead(&self) -> bool {
        if let Some(settings) = self.config.daemon.lease.clone() {
            let mut hold = self.lease.lock().await;
            // A standby's lease manager sleeps until the holder's Lease would expire, so a Lease
            // the leader released on its way out would wait out its whole duration: contend
            // afresh as soon as the Lease is seen free.
            // A manager that has just started contending gets a grace period to take the
            // Lease itself before it is replaced.
            if let Some(h) = hold.as_ref()
                && !*h.leading.borrow()
                && h.since.elapsed() >= settings.grace
                && self.lease_released(h, &settings).await
                && let Some(old) = hold.take()
            {
                tracing::info!("the leader Lease was released; contending for it at once");
                old.task.abort();
            }
            if hold.is_none() {
                match self.contest(&settings).await {
                    Ok(h) => *hold = Some(h),
                    Err(e) => tracing::warn!(error = %e, "cannot contend for the leader Lease"),
                }
            }
            let mut leading = hold.as_ref().is_some_and(|h| *h.leading.borrow());
            if leading && let Some(h) = hold.as_ref() {
                leading = self.lease_still_held(h, &settings).await;
            }
            self.set_leading(leading).await;
            return leading;
        }
        let mut lock = self.lock.lock().await;
        if lock.is_none() {
            match StateLock::acquire(&self.config.state_dir) {
                Ok(l) => {
                    tracing::info!("leader lock acquired; this replica now acts");
                    *lock = Some(l);
                }
                Err(_) => tracing::debug!("another replica holds the leader lock; standing by"),
            }
        }
        let leading = lock.is_some();
        self.set_leading(leading).await;
        leading
    }

    /// Notes whether this replica leads. Only the leader's view of the clusters is current,
    /// so a replica that stops leading drops its per-cluster and transition series (a standby
    /// must not keep alerts firing, or silent, on what it last saw), and one that starts
    /// leading looks at every cluster on its first pass, which exports them afresh.
    pub(super) async fn set_leading(&self, leading: bool) {
        if leading != self.leader.swap(leading, Ordering::SeqCst) {
            tracing::info!(leading, "leadership changed");
            if leading {
                // Every cluster is looked at on the first pass, but a cluster backing off keeps
                // its backoff: a brief loss of the Lease must not turn into a burst of retries.
                for s in self.schedule.lock().await.values_mut() {
                    if s.failures == 0 {
                        s.next = OffsetDateTime::UNIX_EPOCH;
                    }
                }
            } else {
                self.metrics.forget_cluster_state();
            }
        }
        self.metrics.set_leader(leading);
    }

    /// Reads the Lease: this replica holds it and its renewal is recent enough that no standby
    /// can take it for a while yet (half of `grace`). A leader cut off from the
    /// management cluster thus stops acting before its lease can be taken.
    pub(super) async fn lease_still_held(
        &self,
        h: &LeaseHold,
        s: &crate::config::LeaseSettings,
    ) -> bool {
        use k8s_openapi::api::coordination::v1::Lease;
        let api: kube::Api<Lease> = kube::Api::namespaced(h.client.clone(), &s.namespace);
        // No longer than the margin below: an answer that comes later is stale anyway.
        let wait = (s.grace / 2).clamp(Duration::from_millis(500), self.config.kubernetes.timeout);
        let lease = match tokio::time::timeout(wait, api.get(&s.name)).await {
            Ok(Ok(l)) => l,
            Ok(Err(e)) => {
                tracing::warn!(error = %e, "cannot read the leader Lease; not acting this pass");
                return false;
            }
            Err(_) => {
                tracing::warn!("reading the leader Lease timed out; not acting this pass");
                return false;
            }
        };
        let Some(spec) = lease.spec else {
            return false;
        };
        let holder = spec.holder_identity.as_deref() == Some(self.identity.as_str());
        // In milliseconds: the margin is a fraction of a second in small setups.
        let renewed = spec.renew_time.map(|t| t.0.as_millisecond());
        let duration = i64::from(spec.lease_duration_seconds.unwrap_or(0)).saturating_mul(1000);
        // The manager renews `grace` before expiry; half of it is the margin kept for the pass.
        let margin = i64::try_from(s.grace.as_millis() / 2).unwrap_or(i64::MAX);
        // Lease times are wall-clock times, whatever clock drives the schedule.
        let now = i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
            .unwrap_or(i64::MAX);
        let fresh =
            renewed.is_some_and(|r| now < r.saturating_add(duration).saturating_sub(margin));
        if !(holder && fresh) {
            tracing::warn!(
                holder,
                fresh,
                "the leader Lease is not safely ours; not acting this pass"
            );
        }
        holder && fresh
    }

    /// Whether the Lease has no holder (released); an unreadable Lease counts as held.
    pub(super) async fn lease_released(
        &self,
        h: &LeaseHold,
        s: &crate::config::LeaseSettings,
    ) -> bool {
        use k8s_openapi::api::coordination::v1::Lease;
        let api: kube::Api<Lease> = kube::Api::namespaced(h.client.clone(), &s.namespace);
        match tokio::time::timeout(self.config.kubernetes.timeout, api.get(&s.name)).await {
            Ok(Ok(lease)) => lease
                .spec
                .and_then(|spec| spec.holder_identity)
                .is_none_or(|holder| holder.is_empty()),
            _ => false,
        }
    }

    pub(super) async fn contest(
        &self,
        s: &crate::config::LeaseSettings,
    ) -> Result<LeaseHold, String> {
        let target = crate::cluster::KubeTarget::connect(
            "management",
            s.kubeconfig.as_deref(),
            s.context.as_deref(),
            &self.config.kubernetes,
        )
        .await
        .map_err(|e| e.to_string())?;
        let identity = self.identity.clone();
        let params = kube_lease_manager::LeaseParams::new(
            identity.clone(),
            s.duration.as_secs().max(2),
            s.grace.as_secs().clamp(1, s.duration.as_secs().max(2) - 1),
        );
        let manager = kube_lease_manager::LeaseManager::new(
            target.client().clone(),
            s.name.clone(),
            s.namespace.clone(),
            params,
            kube_lease_manager::LeaseCreateMode::AutoCreate,
        )
        .await
        .map_err(|e| e.to_string())?;
        tracing::info!(identity, lease = %s.name, namespace = %s.namespace, "contending for the leader Lease");
        let (leading, task) = manager.watch().await;
        Ok(LeaseHold {
            since: std::time::Instant::now(),
            leading,
            client: target.client().clone(),
            task,
        })
    }

    /// This replica's holder identity in the leader Lease, once it contends for it.
    pub async fn lease_identity(&self) -> Option<String> {
        let contending = self.lease.lock().await.is_some();
        contending.then(|| self.identity.clone())
    }

    /// Gives up leadership (on shutdown), so a standby can take over at once.
    pub async fn step_down(&self) {
        if let Some(hold) = self.lease.lock().await.take() {
            // Closing the channel makes the watcher release the Lease and stop.
            drop(hold.leading);
            let _ = tokio::time::timeout(Duration::from_secs(5), hold.task).await;
        }
        self.lock.lock().await.take();
        self.set_leading(false).await;
    }
}

pub(super) fn lease_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cacertd".into());
    let mut nonce = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        u32::from_be_bytes(nonce)
    )
}
