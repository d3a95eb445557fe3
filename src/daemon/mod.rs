//! `cacertd serve`: reconciles every primary on a schedule, renews intermediates when their
//! policy says so, repairs missing or tampered `cacerts`, exports Prometheus metrics and health
//! endpoints, and writes an audit log. Level-triggered and idempotent: every pass reads what
//! each cluster holds and decides afresh. A failing cluster backs off on its own; the others
//! carry on. Only the holder of the leader lock acts (in local mode, a lock on `state_dir`).

mod metrics;

pub use metrics::Metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use time::OffsetDateTime;
use tokio::sync::Mutex;

use crate::audit::Audit;
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::issuance::{self, ClusterReport, Outcome};
use crate::plan::PlanOptions;
use crate::root_store::{RootSource, StoreError};
use crate::transition::error::DriveError;
use crate::transition::record_store::RecordStore;

/// When a cluster is next looked at, and how often it has failed in a row.
#[derive(Clone, Copy, Debug)]
struct Schedule {
    next: OffsetDateTime,
    failures: u32,
}

pub struct Daemon {
    config: Arc<Config>,
    clock: Arc<dyn Clock>,
    metrics: Metrics,
    audit: Audit,
    schedule: Mutex<HashMap<String, Schedule>>,
    /// Clusters a watch or file change marked due since their pass began: a change seen while
    /// a pass is under way may have come after that pass read the cluster.
    marked: Mutex<std::collections::HashSet<String>>,
    /// What each directory target looked like after its last pass (file sizes and times).
    seen: Mutex<HashMap<String, DirSignature>>,
    /// The root store answered on the last pass.
    root_ok: AtomicBool,
    leader: AtomicBool,
    lock: Mutex<Option<StateLock>>,
    lease: Mutex<Option<LeaseHold>>,
    /// When the trust transition under way is next driven.
    next_transition_drive: Mutex<std::time::Instant>,
    /// This replica's holder identity in the leader Lease: the host name (a pod's name), the
    /// process id and a random nonce, fixed for the life of the process.
    identity: String,
    /// Where the transition record is kept, opened once.
    transition_store: tokio::sync::OnceCell<RecordStore>,
}

/// A running Kubernetes Lease contest: the watcher task and its "am I leader" channel.
struct LeaseHold {
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

const BACKOFF_START: Duration = Duration::from_secs(10);

impl Daemon {
    pub fn new(config: Config, clock: Arc<dyn Clock>) -> Arc<Self> {
        let audit = Audit::new(config.daemon.audit_log.clone());
        Arc::new(Daemon {
            config: Arc::new(config),
            clock,
            metrics: Metrics::new(),
            audit,
            schedule: Mutex::new(HashMap::new()),
            marked: Mutex::new(std::collections::HashSet::new()),
            seen: Mutex::new(HashMap::new()),
            root_ok: AtomicBool::new(false),
            leader: AtomicBool::new(false),
            lock: Mutex::new(None),
            lease: Mutex::new(None),
            next_transition_drive: Mutex::new(std::time::Instant::now()),
            identity: lease_identity(),
            transition_store: tokio::sync::OnceCell::new(),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
    }

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
    async fn set_leading(&self, leading: bool) {
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
    async fn lease_still_held(&self, h: &LeaseHold, s: &crate::config::LeaseSettings) -> bool {
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
    async fn lease_released(&self, h: &LeaseHold, s: &crate::config::LeaseSettings) -> bool {
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

    async fn contest(&self, s: &crate::config::LeaseSettings) -> Result<LeaseHold, String> {
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

    /// One pass: every primary whose time has come is reconciled. Nothing happens unless this
    /// replica leads.
    pub async fn tick(&self) -> Vec<ClusterReport> {
        if !self.is_leader() {
            return Vec::new();
        }
        let now = self.clock.now();
        let due = self.due_clusters(now).await;
        if due.is_empty() {
            return Vec::new();
        }
        let started = std::time::Instant::now();
        let Some(signer) = self.signer(&due, now).await else {
            return Vec::new();
        };
        let reports = issuance::run(
            &self.config,
            &signer,
            &self.audit,
            &due,
            PlanOptions::default(),
            false,
            now,
        )
        .await;
        drop(signer);
        self.remember_dirs(&reports).await;
        let seconds = started.elapsed().as_secs_f64() / reports.len().max(1) as f64;
        self.note_pass(&reports, seconds, now).await;
        reports
    }

    /// The primaries whose next look has come, less those a trust transition holds (changed
    /// only through it); none when the record cannot be read. Marks made until now are
    /// answered by the pass that reads them.
    async fn due_clusters(&self, now: OffsetDateTime) -> Vec<&crate::topology::Cluster> {
        let mut due: Vec<_> = {
            let schedule = self.schedule.lock().await;
            self.config
                .topology
                .primaries()
                .filter(|c| schedule.get(&c.name).is_none_or(|s| s.next <= now))
                .collect()
        };
        if due.is_empty() {
            return due;
        }
        // Clusters a trust transition holds are changed only through it (the record is read
        // only when some cluster is due).
        match self.transition_record().await {
            Ok(Some(record)) if !record.is_over() => {
                due.retain(|c| !record.clusters.contains_key(&c.name));
            }
            Ok(_) => {}
            // Unknown: nothing that a transition may hold is touched.
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the transition record; reconciliation waits");
                return Vec::new();
            }
        }
        if due.is_empty() {
            return due;
        }
        // This pass reads these clusters afresh: marks made until now are answered by it.
        {
            let mut marked = self.marked.lock().await;
            for c in &due {
                marked.remove(&c.name);
            }
        }
        due
    }

    /// What signs this pass; `None` (every due cluster backing off, nothing touched) when the
    /// root cannot be obtained.
    async fn signer(
        &self,
        due: &[&crate::topology::Cluster],
        now: OffsetDateTime,
    ) -> Option<crate::root_store::Signer> {
        let signer = match RootSource::open(&self.config).await {
            Ok(source) => {
                if let Ok(Some(root)) = source.load_cert().await {
                    self.metrics.certificate("all", "root", root.info());
                }
                source.signer().await
            }
            Err(e) => Err(e),
        };
        match signer {
            Ok(s) => {
                self.root_ok.store(true, Ordering::SeqCst);
                Some(s)
            }
            Err(e) => {
                // No root, no writes: every due cluster waits and retries with backoff.
                self.root_ok.store(false, Ordering::SeqCst);
                self.metrics
                    .root_error(&store_kind(&self.config), &root_error_reason(&e));
                tracing::warn!(error = %e, "cannot obtain the root; no cluster is touched");
                let mut schedule = self.schedule.lock().await;
                for c in due {
                    self.back_off(&mut schedule, &c.name, now);
                }
                None
            }
        }
    }

    /// Exports what a pass did and schedules each cluster's next look: after a failure, its
    /// backoff; else the interval (with jitter) or its renewal, whichever comes first — or at
    /// once when it changed while the pass ran.
    async fn note_pass(&self, reports: &[ClusterReport], seconds: f64, now: OffsetDateTime) {
        // Locks in one order everywhere: schedule, then marked.
        let mut schedule = self.schedule.lock().await;
        let mut marked = self.marked.lock().await;
        for r in reports {
            let result = match r.outcome {
                Outcome::Issued => "issued",
                Outcome::Kept => "unchanged",
                Outcome::Refused | Outcome::PolicyRefused => "refused",
                Outcome::Failed | Outcome::WouldIssue => "failure",
            };
            self.metrics.reconciled(&r.cluster, result, seconds, now);
            let ok = matches!(r.outcome, Outcome::Issued | Outcome::Kept);
            self.metrics.ready(&r.cluster, ok);
            if let (Some(serial), Some(nb), Some(na)) = (&r.serial, r.not_before, r.not_after) {
                let info = crate::pki::CertInfo {
                    serial: serial.clone(),
                    subject: String::new(),
                    issuer: String::new(),
                    not_before: nb,
                    not_after: na,
                    fingerprint_sha256: String::new(),
                    is_ca: true,
                    path_len: None,
                    key_algorithm: String::new(),
                };
                self.metrics.certificate(&r.cluster, "intermediate", &info);
            }
            self.metrics.renewal_at(&r.cluster, r.renew_at);
            if matches!(r.outcome, Outcome::Failed) {
                self.back_off(&mut schedule, &r.cluster, now);
            } else {
                // Next look: after the interval (with jitter), or when renewal falls due.
                let mut next =
                    now + jittered(self.config.daemon.interval, self.config.daemon.jitter);
                if let Some(renew) = r.renew_at
                    && renew > now
                {
                    next = next.min(renew);
                }
                // Changed while this pass ran, perhaps after it read the cluster: look again.
                if marked.remove(&r.cluster) {
                    next = OffsetDateTime::UNIX_EPOCH;
                }
                schedule.insert(r.cluster.clone(), Schedule { next, failures: 0 });
            }
        }
    }

    /// Makes a cluster due at once (something changed under it). A cluster backing off
    /// after failures keeps its backoff.
    pub async fn mark_due(&self, cluster: &str) {
        let mut schedule = self.schedule.lock().await;
        if schedule.get(cluster).is_some_and(|s| s.failures > 0) {
            return;
        }
        self.marked.lock().await.insert(cluster.to_string());
        if let Some(s) = schedule.get_mut(cluster) {
            s.next = OffsetDateTime::UNIX_EPOCH;
        }
    }

    /// Directory targets whose files changed since their last pass become due at once (the
    /// file-change trigger; cheap enough to run every heartbeat).
    pub async fn notice_dir_changes(&self) {
        let mut changed = Vec::new();
        {
            let seen = self.seen.lock().await;
            for c in self.config.topology.primaries() {
                if let Some(crate::topology::TargetConfig::Dir { path }) = &c.target
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

    async fn remember_dirs(&self, reports: &[ClusterReport]) {
        let mut seen = self.seen.lock().await;
        for r in reports {
            if let Some(c) = self.config.topology.get(&r.cluster)
                && let Some(crate::topology::TargetConfig::Dir { path }) = &c.target
            {
                seen.insert(r.cluster.clone(), dir_signature(path));
            }
        }
    }

    /// Advances the trust transition under way, if any, on each heartbeat: as many steps as fit
    /// in the margin the leader check keeps (half the Lease's grace; 10 s with the local lock),
    /// at least one, then leadership is checked again. A gate that does not hold yet is
    /// re-checked every 5 s, a drain every minute. With a Lease and the record in `state_dir`,
    /// the lock on `state_dir` is taken for the steps too, so a `transition` command run beside
    /// the daemon never drives at the same time (a record in the management cluster is guarded
    /// by compare-and-swap instead).
    pub async fn drive_transition(&self) {
        let mut next = self.next_transition_drive.lock().await;
        if std::time::Instant::now() < *next {
            return;
        }
        let record = match self.transition_record().await {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the transition record");
                *next = std::time::Instant::now() + Duration::from_secs(30);
                return;
            }
        };
        let active = record.as_ref().is_some_and(|r| {
            matches!(
                r.state,
                crate::transition::State::Active | crate::transition::State::RollingBack { .. }
            ) && !r.is_over()
        });
        let mut pause = Duration::from_secs(5);
        // A record in the management cluster is guarded by compare-and-swap instead.
        let local_record = self.config.transition.record == crate::config::RecordLocation::StateDir;
        let _lock = if active && local_record && self.config.daemon.lease.is_some() {
            match StateLock::acquire(&self.config.state_dir) {
                Ok(l) => Some(l),
                Err(_) => {
                    tracing::info!("a transition command holds the state lock; not driving");
                    *next = std::time::Instant::now() + pause;
                    return;
                }
            }
        } else {
            None
        };
        let record = if active {
            let opts = crate::transition::driver::DriveOptions {
                clock: self.clock.clone(),
                wait: false,
                poll: Duration::from_secs(5),
                stop_after: None,
                // Back within the margin the leader check keeps; at least one step each time.
                max_steps: None,
                budget: Some(match &self.config.daemon.lease {
                    Some(l) => l.grace / 2,
                    None => Duration::from_secs(10),
                }),
                progress: crate::transition::driver::Progress::Off,
            };
            let Ok(store) = self.transition_store().await else {
                return;
            };
            let outcome = crate::transition::driver::drive(&self.config, store, opts).await;
            let after = store.load().await.ok().flatten();
            match outcome {
                Ok(crate::transition::Step::Drain { .. }) => pause = Duration::from_secs(60),
                Ok(crate::transition::Step::AwaitApproval { .. }) => {}
                // A gate that was checked and does not hold yet.
                Ok(crate::transition::Step::CheckGate { .. })
                    if after.as_ref().is_some_and(|r| r.gate_since.is_some()) => {}
                Ok(step) => {
                    tracing::debug!(?step, "transition step done");
                    pause = Duration::ZERO;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "the trust transition stopped");
                    pause = Duration::from_secs(30);
                }
            }
            after
        } else {
            record
        };
        self.metrics.transition(record.as_ref(), self.clock.now());
        *next = std::time::Instant::now() + pause;
    }

    async fn transition_store(&self) -> Result<&RecordStore, DriveError> {
        self.transition_store
            .get_or_try_init(|| RecordStore::open(&self.config))
            .await
    }

    async fn transition_record(&self) -> Result<Option<crate::transition::Record>, DriveError> {
        self.transition_store().await?.load().await
    }

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

    async fn watch_cacerts(self: Arc<Self>, cluster: String) {
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

    fn back_off(
        &self,
        schedule: &mut HashMap<String, Schedule>,
        cluster: &str,
        now: OffsetDateTime,
    ) {
        let failures = schedule.get(cluster).map_or(0, |s| s.failures) + 1;
        let wait = BACKOFF_START
            .saturating_mul(1 << (failures - 1).min(16))
            .min(self.config.daemon.backoff_max);
        tracing::info!(cluster, failures, wait = %humantime::format_duration(wait), "backing off");
        schedule.insert(
            cluster.to_string(),
            Schedule {
                next: now + wait,
                failures,
            },
        );
    }

    /// The HTTP endpoints: /metrics, /healthz, /readyz, /status.
    pub fn router(self: &Arc<Self>) -> Router {
        Router::new()
            .route("/metrics", get(metrics_handler))
            .route("/healthz", get(|| async { "ok\n" }))
            .route("/readyz", get(readyz_handler))
            .route("/status", get(status_handler))
            .with_state(self.clone())
    }

    /// Runs until `shutdown` resolves: serves HTTP, contends for leadership, and reconciles on
    /// a one-second heartbeat (each cluster only when due). Steps down on the way out.
    pub async fn run(
        self: Arc<Self>,
        shutdown: impl std::future::Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let listener = tokio::net::TcpListener::bind(self.config.daemon.listen).await?;
        // The bound address, not the configured one: port 0 picks a free port.
        let listen = listener.local_addr()?;
        tracing::info!(%listen, "serving /metrics, /healthz, /readyz, /status");
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut http_stop = stop_rx.clone();
        let server = axum::serve(listener, self.router()).with_graceful_shutdown(async move {
            let _ = http_stop.changed().await;
        });
        let http = tokio::spawn(async move { server.await });
        tokio::pin!(shutdown);
        let watchers = self.spawn_watchers();
        let mut heartbeat = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = &mut shutdown => break,
                _ = heartbeat.tick() => {
                    if self.try_lead().await {
                        self.drive_transition().await;
                        self.notice_dir_changes().await;
                        // A pass is finished, not abandoned midway, before shutdown is noticed.
                        self.tick().await;
                    }
                }
            }
        }
        for w in watchers {
            w.abort();
        }
        tracing::info!("shutting down: releasing the leader lock");
        self.step_down().await;
        let _ = stop_tx.send(true);
        let _ = http.await;
        drop(stop_rx);
        Ok(())
    }
}

/// Size and modification time of each cacerts file of a target folder, in a fixed order.
type DirSignature = Vec<(u64, Option<std::time::SystemTime>)>;

/// Sizes and modification times of the files of a cacerts folder.
fn dir_signature(path: &std::path::Path) -> DirSignature {
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

fn store_kind(config: &Config) -> String {
    match &config.root {
        crate::config::RootStoreConfig::File { .. } => "file".into(),
        crate::config::RootStoreConfig::VaultKv { .. } => "vault-kv".into(),
        crate::config::RootStoreConfig::VaultPki { .. } => "vault-pki".into(),
    }
}

fn root_error_reason(e: &StoreError) -> String {
    match e {
        StoreError::NoRoot { .. } => "no-root",
        StoreError::Vault { source, .. } => match source {
            crate::root_store::VaultError::Sealed { .. } => "sealed",
            crate::root_store::VaultError::PermissionDenied { .. } => "permission-denied",
            crate::root_store::VaultError::Unreachable { .. } => "unreachable",
            crate::root_store::VaultError::Login { .. } => "login",
            _ => "vault",
        },
        StoreError::Material { .. } => "malformed",
        _ => "io",
    }
    .to_string()
}

fn lease_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "cacertd".into());
    let mut nonce = [0u8; 4];
    let _ = aws_lc_rs::rand::fill(&mut nonce);
    format!(
        "{host}-{}-{:08x}",
        std::process::id(),
        u32::from_be_bytes(nonce)
    )
}

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    interval + interval.mul_f64(jitter * f64::from(byte[0]) / 255.0)
}

async fn metrics_handler(State(d): State<Arc<Daemon>>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        d.metrics.encode(),
    )
        .into_response()
}

async fn readyz_handler(State(d): State<Arc<Daemon>>) -> Response {
    if !d.is_leader() {
        // A standby is ready to take over: its role is known.
        return (StatusCode::OK, "standby\n").into_response();
    }
    if d.root_ok.load(Ordering::SeqCst) {
        (StatusCode::OK, "leader\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            "root store not reachable yet\n",
        )
            .into_response()
    }
}

async fn status_handler(State(d): State<Arc<Daemon>>) -> Response {
    // Reading every target is not a Send future (the clients' retry closures), so it runs on a
    // blocking thread of its own, driven by the same runtime.
    let handle = tokio::runtime::Handle::current();
    let report = tokio::task::spawn_blocking(move || {
        handle.block_on(crate::status::status_report(&d.config, d.clock.now()))
    })
    .await;
    let report = match report {
        Ok(r) => r,
        Err(e) => return (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    };
    match report {
        Ok((_, report)) => match serde_json::to_string_pretty(&report) {
            Ok(body) => ([(header::CONTENT_TYPE, "application/json")], body).into_response(),
            Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
        },
        Err(e) => (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    }
}
