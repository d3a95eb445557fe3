//! Drives a transition against the clusters' targets, one step at a time, persisting the record
//! after every step under `<state_dir>/transition/` so that a crash anywhere resumes exactly.
//!
//! Layout: `record.json` (the [`Record`]), and per primary `<cluster>/original/` and
//! `<cluster>/new/` holding the two `cacerts` sets it moves between (keys 0600). Both sets are
//! saved before the record exists, so a resumed transition never issues a second intermediate.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::record_store::RecordStore;
use super::{
    ClusterMaterial, MaterialOf, Record, State, Step, StepOutcome, TransitionKind, material,
    next_step, next_steps,
};
use crate::audit::Audit;
use crate::cluster::{
    CacertsWriter, KubeTarget, Material, Target, TargetError, WriteError, WriteMeta,
};
use crate::config::Config;
use crate::pki::{CaCertsFiles, Cert, fmt_time};
use crate::rollout::{self, RestartOptions, Stage};

pub use super::error::DriveError;
use super::error::target_err;
use super::gate::{check_gate, proxy_key};
use super::progress::{Event, Progress, Throttle, show_drain, show_gate_wait};

/// How the writer checks a phase's material: where a cluster keeps the signer it had before
/// the transition (AddNewRoot, and everything a rollback to the original puts back), that
/// signer is written back verbatim; from SwitchSigner on it signs with an intermediate
/// cacertd issued under the new root, and must chain to exactly `new_root`. A root's removal
/// keeps each cluster's own intermediate under the common root (checked when it started), so
/// the whole set is checked as cacertd's own, with whichever root of its bundle it chains to.
/// A revocation (or a renewal) keeps every signer but the revoked (renewed) one
/// (`signer_kept`), whose successor gets every check.
fn written_material(
    kind: TransitionKind,
    of: MaterialOf,
    new_root: Option<&Cert>,
    signer_kept: bool,
) -> Material<'_> {
    match (kind, of) {
        (_, MaterialOf::Original) | (_, MaterialOf::Phase(super::Phase::AddNewRoot)) => {
            Material::ServedBefore
        }
        (TransitionKind::Revoke | TransitionKind::Renew, _) if signer_kept => {
            Material::ServedBefore
        }
        (TransitionKind::RemoveRoot | TransitionKind::Revoke | TransitionKind::Renew, _) => {
            Material::Issued { root: None }
        }
        (_, MaterialOf::Phase(_)) => Material::Issued { root: new_root },
    }
}

/// How far [`drive`] goes.
#[derive(Clone, Debug)]
pub struct DriveOptions {
    /// What every decision that depends on time asks (gate timeouts, the drain period).
    pub clock: std::sync::Arc<dyn crate::clock::Clock>,
    /// Sleep through gates that do not hold yet and through the drain period.
    pub wait: bool,
    /// How often a gate is re-checked while waiting.
    pub poll: Duration,
    /// Stop after this many steps, as if the process had died (crash tests).
    pub stop_after: Option<usize>,
    /// Return (normally) after this many steps.
    pub max_steps: Option<usize>,
    /// Return (normally) after the step during which this much time has passed: the daemon
    /// checks its leadership between calls, and the targets and material are opened once per
    /// call rather than once per step.
    pub budget: Option<Duration>,
    /// Where progress through long waits is shown.
    pub progress: Progress,
}

/// Runs the transition from where its record stands until it is finished, must wait (and
/// `wait` is off), needs an approval, or stopped. Returns the step it rests at.
pub async fn drive(
    config: &Config,
    files: &RecordStore,
    opts: DriveOptions,
) -> Result<Step, DriveError> {
    let Some(mut record) = files.load().await? else {
        return Err(DriveError::NoTransition);
    };
    let audit = Audit::new(config.daemon.audit_log.clone());
    let opened = open_clusters(config, files, &record).await?;
    let mut done = 0usize;
    let mut shown = Throttle::default();
    let started = std::time::Instant::now();
    let mut bar = Bar::new(&opts.progress, config);
    loop {
        let now = opts.clock.now();
        bar.count(&record, now);
        let step = next_step(&record, now);
        if step != Step::Finished && opts.rest_after(done, started)? {
            return Ok(step);
        }
        if matches!(step, Step::Write { .. } | Step::Restart { .. }) {
            // Up to `max_parallel` clusters at once, within what this run may still do.
            let batch = next_steps(&record, now, opts.room(done));
            let doing: Vec<String> = batch.iter().map(describe_step).collect();
            opts.progress.doing(doing.join(", "));
            done +=
                run_cluster_steps(config, &audit, &opened, files, &mut record, &batch, now).await?;
            continue;
        }
        let outcome = match &step {
            Step::CheckGate { material: of } => {
                opts.progress
                    .doing(format!("checking the gate of {}", of.describe()));
                let read = gate_targets(&opened.targets, &opened.observed);
                let (remotes, materials) = (&opened.remotes, &opened.materials);
                match check_gate(&read, remotes, materials, &record, *of, now).await {
                    behind if behind.is_empty() => StepOutcome::GateHeld,
                    behind => StepOutcome::GateBehind(behind),
                }
            }
            Step::Drain { until } => {
                if !opts.wait {
                    return Ok(step);
                }
                drain_a_while(&opts, &mut shown, &record, *until, now).await;
                continue;
            }
            Step::Finished => {
                swap_root_when_done(config, files, &mut record, &opened.materials, now).await?;
                return Ok(step);
            }
            Step::AwaitApproval { .. } | Step::AwaitApplied { .. } | Step::Held { .. } => {
                return Ok(step);
            }
            Step::Write { .. } | Step::Restart { .. } => unreachable!("cluster steps run above"),
            Step::Stopped { report } => return Err(DriveError::Stopped(report.clone())),
        };
        let before = (record.phase, record.state.clone());
        let behind = matches!(outcome, StepOutcome::GateBehind(_));
        let outcome_seen = outcome.clone();
        record.record(&step, outcome, now);
        files.save(&record).await?;
        done += 1;
        if (record.phase, record.state.clone()) != before {
            note_moved(&opts.progress, &audit, &record, now);
        }
        if behind && matches!(record.state, State::Active | State::RollingBack { .. }) {
            if !opts.wait {
                return Ok(step);
            }
            if let StepOutcome::GateBehind(who) = &outcome_seen {
                say_who_is_behind(&opts, &mut shown, &record, who, now);
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
}

/// Carries out `batch`, the next write or restart steps (up to `max_parallel` clusters at
/// once), each through a [`Work`] holding what the opened clusters need.
async fn run_cluster_steps(
    config: &Config,
    audit: &Audit,
    opened: &Opened,
    files: &RecordStore,
    record: &mut Record,
    batch: &[Step],
    now: OffsetDateTime,
) -> Result<usize, DriveError> {
    let exclude = record.options.exclude_namespaces.clone();
    let revoked = record.revocation.as_ref().map(|r| r.cluster.clone());
    let refs = (&opened.targets, &opened.remotes, &opened.materials);
    let work = Work::new(config, audit, refs, &exclude, record, revoked.as_deref());
    run_batch(&work, files, record, batch, now).await
}

/// Waits up to a minute of a drain, saying until when (and, now and then, what it is for).
async fn drain_a_while(
    opts: &DriveOptions,
    shown: &mut Throttle,
    record: &Record,
    until: OffsetDateTime,
    now: OffsetDateTime,
) {
    let left = (until - now).unsigned_abs();
    tracing::info!(until = %fmt_time(until), "draining: the old root stays trusted until then");
    opts.progress.doing(format!(
        "draining: the old root stays trusted until {}",
        fmt_time(until)
    ));
    if shown.due(std::time::Instant::now()) {
        show_drain(&opts.progress, record, until, left, now);
    }
    tokio::time::sleep(left.min(Duration::from_secs(60))).await;
}

/// Says who a gate waits for: the first few at once, everyone now and then.
fn say_who_is_behind(
    opts: &DriveOptions,
    shown: &mut Throttle,
    record: &Record,
    who: &[String],
    now: OffsetDateTime,
) {
    opts.progress.doing(format!(
        "gate: {} behind: {}",
        who.len(),
        who.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
    ));
    if shown.due(std::time::Instant::now()) {
        show_gate_wait(&opts.progress, record, who, now);
    }
}

impl DriveOptions {
    /// How many more steps this run may take after `done`.
    fn room(&self, done: usize) -> usize {
        [self.max_steps, self.stop_after]
            .into_iter()
            .flatten()
            .map(|n| n.saturating_sub(done))
            .min()
            .unwrap_or(usize::MAX)
    }

    /// Whether a run that did `done` steps since `started` rests here (its step count or
    /// time budget is used up), or stops as if the process died (crash tests).
    fn rest_after(&self, done: usize, started: std::time::Instant) -> Result<bool, DriveError> {
        if self.max_steps.is_some_and(|n| done >= n)
            || (done > 0 && self.budget.is_some_and(|b| started.elapsed() >= b))
        {
            return Ok(true);
        }
        if self.stop_after.is_some_and(|n| done >= n) {
            return Err(DriveError::Interrupted { steps: done });
        }
        Ok(false)
    }
}

/// A finished rotation puts the new root in the store's place, once, then destroys the copy
/// of its key that waited for the rotation: from then on the store holds the only one.
async fn swap_root_when_done(
    config: &Config,
    files: &RecordStore,
    record: &mut Record,
    materials: &BTreeMap<String, ClusterMaterial>,
    now: OffsetDateTime,
) -> Result<(), DriveError> {
    if record.kind != TransitionKind::RotateRoot
        || record.phase != super::Phase::Done
        || record.root_swapped
    {
        return Ok(());
    }
    let Some((cluster, material)) = materials.iter().next() else {
        return Err(DriveError::RootSwap(
            "the transition moved no cluster".into(),
        ));
    };
    let new_root =
        Cert::one_from_pem(&material.new.root_cert, "new root-cert.pem").map_err(|e| {
            DriveError::CurrentMaterial {
                cluster: cluster.clone(),
                reason: format!("its saved new material is unreadable: {e}"),
            }
        })?;
    let store = crate::root_store::rotation::open(config)
        .await
        .map_err(|e| DriveError::RootSwap(e.to_string()))?;
    let audit = Audit::new(config.daemon.audit_log.clone());
    let serial = Some(new_root.info().serial.clone());
    if let Some(swapped) = store.swap(&new_root, now).await? {
        let detail = format!("the previous root is kept: {}", swapped.kept);
        audit.note(
            now,
            "root-rotated",
            None,
            "replaced",
            serial.clone(),
            Some(detail),
        );
    }
    if let Some(destroyed) = store.destroy_pending().await? {
        tracing::info!(what = %destroyed, "destroyed the waiting copy of the new root's key");
        audit.note(
            now,
            "root-next-destroyed",
            None,
            "destroyed",
            serial,
            Some(destroyed),
        );
    }
    record.root_swapped = true;
    record.note(now, "the new root replaced the old one in the root store");
    files.save(record).await?;
    Ok(())
}

/// A transition that moved to another phase or state: shown, logged and audited.
fn note_moved(progress: &Progress, audit: &Audit, record: &Record, now: OffsetDateTime) {
    tracing::info!(phase = %record.phase, state = ?record.state, "transition moved");
    progress.show(Event {
        at: now,
        event: "phase",
        record,
        detail: format!("now {}", record.state.describe()),
        fields: serde_json::json!({"state": record.state.describe()}),
    });
    let report = match &record.state {
        State::Failed { report, .. } => Some(report.clone()),
        _ => None,
    };
    audit.note(
        now,
        "transition-phase",
        None,
        record.phase.name(),
        None,
        report,
    );
}

/// A cluster step in words, beside the bar.
fn describe_step(step: &Step) -> String {
    match step {
        Step::Write { cluster, material } => {
            format!("{cluster}: writing {}", material.describe())
        }
        Step::Restart { cluster, stage } => format!("{cluster}: restarting {}", stage.name()),
        _ => String::new(),
    }
}

/// The bar's count of steps: how many are done of all, the steps ahead counted afresh from the
/// record (a rollback adds some). Counts only where a bar is shown.
struct Bar<'a> {
    progress: &'a Progress,
    scopes: Vec<super::Scope>,
    total: usize,
}

impl<'a> Bar<'a> {
    fn new(progress: &'a Progress, config: &Config) -> Self {
        let scopes = match progress {
            Progress::Bar(_) => super::Scope::all(config),
            _ => Vec::new(),
        };
        Bar {
            progress,
            scopes,
            total: 0,
        }
    }

    fn count(&mut self, record: &Record, now: OffsetDateTime) {
        if !matches!(self.progress, Progress::Bar(_)) {
            return;
        }
        // The last step ahead is the end itself.
        let ahead = super::steps_ahead(record, &self.scopes, now)
            .len()
            .saturating_sub(1);
        self.total = self.total.max(ahead);
        self.progress.steps(self.total - ahead, ahead);
    }
}

/// What a driver works on: each primary's target and material, and the Kubernetes remotes its
/// istiod serves (their bundles are gated too).
struct Opened {
    targets: BTreeMap<String, Target>,
    /// For primaries with a directory target and an `observe` kubeconfig: the cluster the
    /// folder is applied to, read (never written) by the gates.
    observed: BTreeMap<String, Target>,
    materials: BTreeMap<String, ClusterMaterial>,
    remotes: BTreeMap<String, Vec<(String, KubeTarget)>>,
}

async fn open_clusters(
    config: &Config,
    files: &RecordStore,
    record: &Record,
) -> Result<Opened, DriveError> {
    let mut targets: BTreeMap<String, Target> = BTreeMap::new();
    let mut materials: BTreeMap<String, ClusterMaterial> = BTreeMap::new();
    let mut remotes: BTreeMap<String, Vec<(String, KubeTarget)>> = BTreeMap::new();
    let mut observed: BTreeMap<String, Target> = BTreeMap::new();
    for name in record.clusters.keys() {
        let cluster = config
            .topology
            .get(name)
            .ok_or_else(|| DriveError::UnknownCluster {
                cluster: name.clone(),
            })?;
        if let Some(crate::topology::TargetConfig::Dir {
            observe: Some(o), ..
        }) = &cluster.target
            && record.options.directories.get(name) == Some(&super::DirProof::Observed)
        {
            let kube = KubeTarget::connect(
                name,
                Some(&o.kubeconfig),
                o.context.as_deref(),
                &config.kubernetes,
            )
            .await
            .map_err(target_err(name))?;
            observed.insert(name.clone(), Target::Kube(kube));
        }
        targets.insert(
            name.clone(),
            Target::open(cluster, config)
                .await
                .map_err(target_err(name))?,
        );
        let mut material = files.load_material(name).await?;
        material.lists_before = match &record.revocation {
            Some(r) => Some(r.lists_before.clone().into_bytes()),
            // Its signer and bundle stay; its lists are the new ones from the first write.
            None if record.only_lists(name) => Some(material.new.ca_crl.clone()),
            None => None,
        };
        materials.insert(name.clone(), material);
        // The remotes its istiod serves publish its bundle too; their gates count.
        let mut served = Vec::new();
        for remote in config.topology.remotes_of(name) {
            match Target::open(remote, config).await {
                Ok(Target::Kube(k)) => served.push((remote.name.clone(), k)),
                Ok(Target::Dir(_)) | Err(TargetError::NoTarget { .. }) => tracing::info!(
                    cluster = %remote.name,
                    "remote without a Kubernetes target: its bundles are not gated"
                ),
                Err(e) => return Err(target_err(&remote.name)(e)),
            }
        }
        remotes.insert(name.clone(), served);
    }
    Ok(Opened {
        targets,
        observed,
        materials,
        remotes,
    })
}

/// What the gates read for each primary: the cluster an observed folder is applied to, else
/// its target.
fn gate_targets<'a>(
    targets: &'a BTreeMap<String, Target>,
    observed: &'a BTreeMap<String, Target>,
) -> BTreeMap<String, &'a Target> {
    targets
        .iter()
        .map(|(name, t)| (name.clone(), observed.get(name).unwrap_or(t)))
        .collect()
}

/// Runs a batch of cluster steps (writes and restarts, up to `max_parallel` clusters at once)
/// and records each outcome; returns how many were done.
async fn run_batch(
    work: &Work<'_>,
    files: &RecordStore,
    record: &mut Record,
    batch: &[Step],
    now: OffsetDateTime,
) -> Result<usize, DriveError> {
    let mut done = 0;
    // Writes are checked and noted in the record before any of them starts: a write
    // that lands but is not recorded still counts when a rollback works out what
    // clusters may serve.
    let mut prepared = Vec::new();
    for s in batch {
        prepared.push(match s {
            Step::Write {
                cluster,
                material: of,
            } => Some(work.prepare_write(cluster, *of, now).await?),
            _ => None,
        });
    }
    if prepared.iter().any(Option::is_some) {
        for s in batch {
            if let Step::Write { cluster, .. } = s {
                record.begin_write(cluster);
            }
        }
        files.save(record).await?;
    }
    let results =
        futures::future::join_all(batch.iter().zip(prepared).map(|(s, prepared)| async move {
            match (s, prepared) {
                (
                    Step::Write {
                        cluster,
                        material: of,
                    },
                    Some((want, observed)),
                ) => work.write(cluster, *of, &want, &observed, now).await,
                (Step::Restart { cluster, stage }, _) => work.restart(cluster, *stage, now).await,
                _ => unreachable!("writes are prepared above"),
            }
        }))
        .await;
    let mut failed = None;
    for (s, result) in batch.iter().zip(results) {
        match result {
            Ok(outcome) => {
                record.record(s, outcome, now);
                done += 1;
            }
            Err(e) => {
                failed.get_or_insert(e);
            }
        }
    }
    files.save(record).await?;
    if let Some(e) = failed {
        return Err(e);
    }
    Ok(done)
}

mod work;
use work::Work;

#[cfg(test)]
mod tests;
