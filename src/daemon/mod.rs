//! `cacertd serve`: reconciles every primary on a schedule, renews intermediates when their
//! policy says so, repairs missing or tampered `cacerts`, exports Prometheus metrics and health
//! endpoints, and writes an audit log. Level-triggered and idempotent: every pass reads what
//! each cluster holds and decides afresh. A failing cluster backs off on its own; the others
//! carry on. Only the holder of the leader lock acts (in local mode, a lock on `state_dir`).

mod http;
mod leader;
mod lists;
mod metrics;
mod renewals;
mod watch;

use leader::{LeaseHold, lease_identity};
use watch::DirSignature;

pub use metrics::Metrics;

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

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
    /// The last `/status` answer, shared by every request for [`http::STATUS_MAX_AGE`]; the
    /// lock also makes concurrent requests wait for one read instead of each starting one.
    status_cache: tokio::sync::Mutex<Option<http::CachedStatus>>,
    /// The root store, opened once and kept for the daemon's life: one Vault session (renewed,
    /// logged in again when needed, revoked on the way out), not a login per pass.
    root_source: tokio::sync::Mutex<Option<RootSource>>,
    /// What the last pass read of each cluster it left unchanged, for `/status`; dropped when
    /// the cluster changes (a write, a watch, a transition), so `/status` reads it again.
    last_seen: Mutex<HashMap<String, crate::issuance::Seen>>,
    /// When Vault's revocation list was last looked at and published ([`lists`]).
    lists: Mutex<lists::ListWatch>,
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
            status_cache: tokio::sync::Mutex::new(None),
            root_source: tokio::sync::Mutex::new(None),
            last_seen: Mutex::new(HashMap::new()),
            lists: Mutex::new(lists::ListWatch::default()),
        })
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn is_leader(&self) -> bool {
        self.leader.load(Ordering::SeqCst)
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
        reports.iter().for_each(issuance::log_report);
        self.remember_dirs(&reports).await;
        let seconds = started.elapsed().as_secs_f64() / reports.len().max(1) as f64;
        self.note_pass(&reports, seconds, now).await;
        self.start_renewal(&reports).await;
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

    /// The root store, opened on first use (again after a failed open).
    async fn root_source(&self) -> Result<RootSource, StoreError> {
        let mut held = self.root_source.lock().await;
        if let Some(source) = held.as_ref() {
            return Ok(source.clone());
        }
        let source = RootSource::open(&self.config).await?;
        *held = Some(source.clone());
        Ok(source)
    }

    /// The store's name and certificates for `/status`, read through the daemon's session.
    async fn root_for_status(
        &self,
    ) -> Result<(String, Option<crate::root_store::RootCerts>), StoreError> {
        let source = self.root_source().await?;
        Ok((source.describe(), source.load_certs().await?))
    }

    /// Ends the root store's Vault session, revoking the token the daemon logged in for.
    pub async fn close_root_source(&self) {
        if let Some(source) = self.root_source.lock().await.take() {
            source.close().await;
        }
    }

    /// What signs this pass; `None` (every due cluster backing off, nothing touched) when the
    /// root cannot be obtained.
    async fn signer(
        &self,
        due: &[&crate::topology::Cluster],
        now: OffsetDateTime,
    ) -> Option<crate::root_store::Signer> {
        let signer = match self.root_source().await {
            Ok(source) => {
                if let Ok(Some(certs)) = source.load_certs().await {
                    self.metrics.certificate("all", "root", certs.anchor.info());
                    let infos: Vec<_> = certs.between.iter().map(|c| c.info().clone()).collect();
                    self.metrics.signing_chain(&infos);
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
        // Locks in one order everywhere: schedule, then marked, then last_seen.
        let mut schedule = self.schedule.lock().await;
        let mut marked = self.marked.lock().await;
        let mut seen = self.last_seen.lock().await;
        for r in reports {
            // Changed while this pass ran: what it read may be gone already.
            match &r.seen {
                Some(s) if !marked.contains(&r.cluster) => {
                    seen.insert(r.cluster.clone(), s.clone());
                }
                _ => {
                    seen.remove(&r.cluster);
                }
            }
            let result = match r.outcome {
                Outcome::Issued => "issued",
                Outcome::Kept => "unchanged",
                Outcome::Refused | Outcome::PolicyRefused => "refused",
                Outcome::Failed | Outcome::WouldIssue => "failure",
            };
            self.metrics.reconciled(&r.cluster, result, seconds, now);
            let ok = matches!(r.outcome, Outcome::Issued | Outcome::Kept);
            self.metrics.ready(&r.cluster, ok);
            // A refused or failed run may not have read the bundle: only what was seen counts.
            if matches!(r.outcome, Outcome::Issued | Outcome::Kept) || !r.unknown_roots.is_empty() {
                self.metrics
                    .unknown_roots(&r.cluster, r.unknown_roots.len());
                self.metrics
                    .trusted_roots(&r.cluster, &r.trust_bundle, &r.trust_bundle_expiries);
            }
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
            self.metrics
                .revocation_lists_expire(&r.cluster, r.revocation_lists_expire);
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
                // Its renewal waits for a transition (another's, or one that could not start):
                // looked at again soon, so that it follows as soon as it may.
                if r.renew_by_transition {
                    next = next.min(now + renewals::RETRY);
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
        self.last_seen.lock().await.remove(cluster);
        if let Some(s) = schedule.get_mut(cluster) {
            s.next = OffsetDateTime::UNIX_EPOCH;
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
        if active {
            // Trust moves under the daemon's feet: /status reads every cluster again.
            self.last_seen.lock().await.clear();
        }
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
            let Ok(store) = self.transition_store().await else {
                return;
            };
            let (after, wait) = self.drive_some(store).await;
            pause = wait;
            after
        } else {
            record
        };
        self.metrics.transition(record.as_ref(), self.clock.now());
        *next = std::time::Instant::now() + pause;
    }

    /// Drives the transition under way for one leader-check margin; returns its record after,
    /// and how long to wait before driving again.
    async fn drive_some(
        &self,
        store: &RecordStore,
    ) -> (Option<crate::transition::Record>, Duration) {
        use crate::transition::Step;
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
            progress: crate::transition::progress::Progress::Off,
        };
        let outcome = crate::transition::driver::drive(&self.config, store, opts).await;
        let after = store.load().await.ok().flatten();
        let pause = match outcome {
            Ok(Step::Drain { .. }) => Duration::from_secs(60),
            // An operator must act (approve the phase, or confirm that folders are applied):
            // looked at again soon, so that the next step follows promptly.
            Ok(Step::AwaitApproval { .. } | Step::AwaitApplied { .. }) => Duration::from_secs(2),
            // A gate that was checked and does not hold yet.
            Ok(Step::CheckGate { .. })
                if after.as_ref().is_some_and(|r| r.gate_since.is_some()) =>
            {
                Duration::from_secs(5)
            }
            Ok(step) => {
                tracing::debug!(?step, "transition step done");
                Duration::ZERO
            }
            Err(e) => {
                self.metrics.transition_error(e.reason());
                tracing::warn!(error = %e, reason = e.reason(), "the trust transition stopped");
                Duration::from_secs(30)
            }
        };
        (after, pause)
    }

    async fn transition_store(&self) -> Result<&RecordStore, DriveError> {
        self.transition_store
            .get_or_try_init(|| RecordStore::open(&self.config))
            .await
    }

    async fn transition_record(&self) -> Result<Option<crate::transition::Record>, DriveError> {
        self.transition_store().await?.load().await
    }

    /// No transition is under way (one writes the clusters itself). A record that cannot be
    /// read counts as one, and is logged: `what` waits.
    async fn no_transition(&self, what: &str) -> bool {
        match self.transition_record().await {
            Ok(Some(record)) => record.is_over(),
            Ok(None) => true,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the transition record; {what} wait");
                false
            }
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
        tracing::info!(cluster, failures, wait = %crate::clock::fmt_duration(wait), "backing off");
        schedule.insert(
            cluster.to_string(),
            Schedule {
                next: now + wait,
                failures,
            },
        );
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
        let http = tokio::spawn(http::serve(listener, self.router(), stop_rx.clone()));
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
                        self.refresh_lists().await;
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
        self.close_root_source().await;
        drop(stop_rx);
        Ok(())
    }
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

fn jittered(interval: Duration, jitter: f64) -> Duration {
    let mut byte = [0u8; 1];
    let _ = aws_lc_rs::rand::fill(&mut byte);
    interval + interval.mul_f64(jitter * f64::from(byte[0]) / 255.0)
}
