//! Drives a transition against the clusters' targets, one step at a time, persisting the record
//! after every step under `<state_dir>/transition/` so that a crash anywhere resumes exactly.
//!
//! Layout: `record.json` (the [`Record`]), and per primary `<cluster>/original/` and
//! `<cluster>/new/` holding the two `cacerts` sets it moves between (keys 0600). Both sets are
//! saved before the record exists, so a resumed transition never issues a second intermediate.

use std::collections::BTreeMap;
use std::time::Duration;

use time::OffsetDateTime;

use super::record_store::{NEW, ORIGINAL, RecordStore};
use super::{
    ClusterMaterial, MaterialOf, Options, Record, State, Step, StepOutcome, TransitionKind,
    from_self_signed, material, next_step, next_steps,
};
use crate::audit::Audit;
use crate::cluster::{
    CacertsWriter, KubeTarget, Material, Target, TargetError, WriteError, WriteMeta,
};
use crate::config::Config;
use crate::pki::{
    CaCertsFiles, Cert, RootCa, TrustBundle, fmt_time, verify_cacerts, verify_cacerts_for_mesh,
};
use crate::rollout::{self, RestartOptions, Stage};
use crate::root_store::rotation::RotationStore;

pub use super::error::DriveError;
use super::error::target_err;
use crate::root_store::RootSource;

/// How the writer checks a phase's material: where a cluster keeps the signer it had before
/// the transition (AddNewRoot, and everything a rollback to the original puts back), that
/// signer is written back verbatim; from SwitchSigner on it signs with an intermediate
/// cacertd issued under the new root.
fn written_material(of: MaterialOf) -> Material<'static> {
    match of {
        MaterialOf::Original | MaterialOf::Phase(super::Phase::AddNewRoot) => {
            Material::ServedBefore
        }
        MaterialOf::Phase(_) => Material::Issued { root: None },
    }
}

/// Whether a primary's istiod hot-reloads a changed `root-cert.pem` (`ISTIO_MULTIROOT_MESH`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum MultiRoot {
    On,
    Off,
    /// No istiod Deployment (`app=istiod` in istio-system) was found.
    NoIstiod,
    /// A directory target: nothing to look at.
    NotKubernetes,
    Unreachable(String),
}

impl std::fmt::Display for MultiRoot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            MultiRoot::On => f.write_str("on (ISTIO_MULTIROOT_MESH=true)"),
            MultiRoot::Off => f.write_str("off (istiod lacks ISTIO_MULTIROOT_MESH=true)"),
            MultiRoot::NoIstiod => f.write_str("unknown: no istiod Deployment found"),
            MultiRoot::NotKubernetes => f.write_str("unknown: directory target"),
            MultiRoot::Unreachable(e) => write!(f, "unknown: {e}"),
        }
    }
}

/// Multi-root hot reload of each primary's istiod, read from its Deployment's environment.
pub async fn multiroot(config: &Config) -> Vec<(String, MultiRoot)> {
    let mut out = Vec::new();
    for cluster in config.topology.primaries() {
        let state = match Target::open(cluster, config).await {
            Ok(Target::Kube(k)) => match k.istiod_multiroot().await {
                Ok(Some(true)) => MultiRoot::On,
                Ok(Some(false)) => MultiRoot::Off,
                Ok(None) => MultiRoot::NoIstiod,
                Err(e) => MultiRoot::Unreachable(e.to_string()),
            },
            Ok(Target::Dir(_)) => MultiRoot::NotKubernetes,
            Err(e) => MultiRoot::Unreachable(e.to_string()),
        };
        out.push((cluster.name.clone(), state));
    }
    out
}

/// `--skip-workload-restarts` leaves proxies to learn the new root from istiod's multi-root
/// hot reload; without it they would learn it only at their next certificate renewal, after
/// the next phase may have begun. Refused unless every Kubernetes primary's istiod has it.
async fn refuse_skip_without_multiroot(
    config: &Config,
    options: &Options,
) -> Result<(), DriveError> {
    if !options.skip_workload_restarts {
        return Ok(());
    }
    let lacking: Vec<String> = multiroot(config)
        .await
        .into_iter()
        .filter(|(_, m)| !matches!(m, MultiRoot::On | MultiRoot::NotKubernetes))
        .map(|(c, m)| format!("{c}: {m}"))
        .collect();
    if lacking.is_empty() {
        return Ok(());
    }
    Err(DriveError::Refused(format!(
        "--skip-workload-restarts relies on istiod's multi-root hot reload, which is not on \
         everywhere ({}); without it proxies learn the new root only when their certificate is \
         next renewed. Set ISTIO_MULTIROOT_MESH=true on istiod (and PROXY_CONFIG_XDS_AGENT=true \
         for proxies), or restart workloads",
        lacking.join("; ")
    )))
}

/// `migrate start`: reads every primary, saves the material it moves between (issuing each
/// new intermediate once), then records the transition. Changes no cluster.
pub async fn start_migrate(
    config: &Config,
    files: &RecordStore,
    options: Options,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    refuse_skip_without_multiroot(config, &options).await?;
    let finished = files.check_room().await?;
    let signer = RootSource::open(config)
        .await
        .map_err(|e| DriveError::Refused(e.to_string()))?
        .signer()
        .await
        .map_err(|e| DriveError::Refused(e.to_string()))?;
    let root = signer.root_cert().clone();

    // Worked out in memory first: a refusal leaves nothing behind.
    let mut moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)> = Vec::new();
    for cluster in config.topology.primaries() {
        let name = cluster.name.as_str();
        // What the cluster serves now: nothing was written without a record.
        let original = current_material(config, cluster, true).await?;
        let verified = verify_cacerts(&original, now).map_err(|problems| {
            DriveError::Refused(format!(
                "{name}: the current material does not validate, so it cannot be kept during \
                 the transition: {}",
                crate::pki::BundleProblem::join(&problems)
            ))
        })?;
        if verified.anchor() == &root {
            tracing::info!(
                cluster = name,
                "already signs under the common root; not migrated"
            );
            continue;
        }
        if dry_run {
            moving.push((name.to_string(), original.clone(), original, false));
            continue;
        }
        let (new, issued) = match saved_new(files, finished.is_none(), name, &root, now).await? {
            Some(saved) => (saved, false),
            None => (issue_new(config, cluster, &signer, &root, now).await?, true),
        };
        moving.push((name.to_string(), original, new, issued));
    }
    if moving.is_empty() {
        return Err(DriveError::Refused(
            "every primary already signs under the common root: nothing to migrate".into(),
        ));
    }
    let clusters: Vec<String> = moving.iter().map(|(n, ..)| n.clone()).collect();
    let record = Record::new(TransitionKind::Migrate, clusters, options);
    if dry_run {
        return Ok(record);
    }
    if let Some(finished) = finished {
        files.archive(&finished, now).await?;
    }
    let audit = Audit::new(config.daemon.audit_log.clone());
    save_moving(files, &audit, moving, now).await?;
    files.save(&record).await?;
    audit.note(now, "transition-start", None, "migrate", None, None);
    Ok(record)
}

/// What a primary serves now: its `cacerts` or, when `self_signed_ok`, istiod's own CA.
async fn current_material(
    config: &Config,
    cluster: &crate::topology::Cluster,
    self_signed_ok: bool,
) -> Result<CaCertsFiles, DriveError> {
    let name = cluster.name.as_str();
    let target = Target::open(cluster, config)
        .await
        .map_err(target_err(name))?;
    let observed = target.read().await.map_err(target_err(name))?;
    match (
        observed.snapshot.cacerts,
        &observed.snapshot.self_signed_ca,
        self_signed_ok,
    ) {
        (Some(c), _, _) => Ok(c),
        (None, Some(ss), true) => Ok(from_self_signed(ss)),
        (None, Some(_), false) => Err(DriveError::Refused(format!(
            "{name}: no cacerts in {} (istiod runs its self-signed CA): migrate it first",
            target.describe()
        ))),
        (None, None, _) => Err(DriveError::Refused(format!(
            "{name}: neither cacerts nor istiod's istio-ca-secret found in {}",
            target.describe()
        ))),
    }
}

/// A new intermediate a start that stopped early saved for `cluster`, if it is still good:
/// valid now and under `root`. Never one of a finished transition (`own` false).
async fn saved_new(
    files: &RecordStore,
    own: bool,
    cluster: &str,
    root: &Cert,
    now: OffsetDateTime,
) -> Result<Option<CaCertsFiles>, DriveError> {
    if !own {
        return Ok(None);
    }
    Ok(files
        .load_files(cluster, NEW)
        .await?
        .filter(|new| verify_cacerts(new, now).is_ok_and(|v| v.anchor() == root)))
}

/// Saves each primary's two sets of material (noting the intermediates issued now).
async fn save_moving(
    files: &RecordStore,
    audit: &Audit,
    moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)>,
    now: OffsetDateTime,
) -> Result<(), DriveError> {
    for (name, original, new, issued) in moving {
        files.save_files(&name, ORIGINAL, &original).await?;
        files.save_files(&name, NEW, &new).await?;
        if issued {
            let serial = Cert::one_from_pem(&new.ca_cert, "new ca-cert.pem")
                .map(|c| c.info().serial.clone())
                .ok();
            audit.note(now, "transition-issue", Some(&name), "issued", serial, None);
        }
    }
    Ok(())
}

/// `rotate-root start`: the new root (imported, or generated per the root policy; for
/// vault-pki, generated inside Vault) is kept apart ([`RotationStore`]) until the rotation is
/// done, then replaces the store's root (the old one is kept). Every primary must be on the
/// current root. Everything that can be refused is checked before anything is kept.
pub async fn start_rotate_root(
    config: &Config,
    files: &RecordStore,
    options: Options,
    new_root: Option<crate::pki::RootCa>,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    let store = RotationStore::open(config).await?;
    refuse_skip_without_multiroot(config, &options).await?;
    let finished = files.check_room().await?;
    let own = finished.is_none();
    let current = store.current().await?;
    // A new root kept in Vault counts as this start's only if a start that stopped early saved
    // intermediates under it: one left by an aborted or rolled-back rotation, or one that
    // became the root, is not reused.
    let tied = async |root: &Cert| -> Result<bool, DriveError> {
        if !own || root == &current {
            return Ok(false);
        }
        for cluster in config.topology.primaries() {
            if saved_new(files, own, &cluster.name, root, now)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    };
    let new = match &store {
        RotationStore::VaultPki { .. } => {
            if new_root.is_some() {
                return Err(DriveError::Refused(
                    "the vault-pki store generates the new root inside Vault (its key never \
                     leaves it): --new-root-cert and --new-root-key cannot be used with it"
                        .into(),
                ));
            }
            store.check_named().await?;
            let pending = store.pending_issuer().await?;
            let exists = pending.is_some();
            let waiting = match pending {
                Some(cert) if tied(&cert).await? => {
                    config.root_policy().check_root(&cert).map_err(|v| {
                        DriveError::Refused(format!(
                            "the new issuer waiting in {}: {v}",
                            store.pending_location(&config.state_dir)
                        ))
                    })?;
                    Some(cert)
                }
                _ => None,
            };
            NewRoot::Vault {
                stale: exists && waiting.is_none(),
                waiting,
            }
        }
        _ => {
            let pending = store.pending(&config.state_dir).await?;
            let over = pending.as_ref().and_then(|(_, v)| *v);
            let waiting = match pending {
                // The file store's pending root is moved aside with a finished transition.
                Some((root, None)) if own && root.cert() != &current => Some(root),
                Some((root, Some(_))) if tied(root.cert()).await? => Some(root),
                _ => None,
            };
            match waiting {
                Some(saved) => {
                    if new_root
                        .as_ref()
                        .is_some_and(|given| given.cert() != saved.cert())
                    {
                        return Err(DriveError::Refused(format!(
                            "a different new root is already waiting in {}: start with it (no \
                             --new-root-cert) or `transition abort` first",
                            store.pending_location(&config.state_dir)
                        )));
                    }
                    NewRoot::Local {
                        root: saved,
                        saved: true,
                        over,
                    }
                }
                None => {
                    let root = match new_root {
                        Some(r) => r,
                        None => crate::pki::generate_root(
                            &config.root_policy().root_spec(&config.trust_domain),
                            now,
                        )
                        .map_err(|e| DriveError::Refused(e.to_string()))?,
                    };
                    config
                        .root_policy()
                        .check_root(root.cert())
                        .map_err(|v| DriveError::Refused(v.to_string()))?;
                    NewRoot::Local {
                        root,
                        saved: false,
                        over,
                    }
                }
            }
        }
    };
    let new_cert = match &new {
        NewRoot::Local { root, .. } => Some(root.cert().clone()),
        NewRoot::Vault { waiting, .. } => waiting.clone(),
    };
    if new_cert.as_ref() == Some(&current) {
        return Err(DriveError::Refused(
            "the new root is the current root".into(),
        ));
    }
    // Every primary: what it serves now, which must be under the current root.
    let mut moving: Vec<(&crate::topology::Cluster, CaCertsFiles)> = Vec::new();
    for cluster in config.topology.primaries() {
        let name = cluster.name.as_str();
        let original = current_material(config, cluster, false).await?;
        let verified = verify_cacerts(&original, now).map_err(|problems| {
            DriveError::Refused(format!(
                "{name}: the current cacerts does not validate: {}",
                crate::pki::BundleProblem::join(&problems)
            ))
        })?;
        if new_cert.as_ref() == Some(verified.anchor()) {
            tracing::info!(cluster = name, "already signs under the new root");
            continue;
        }
        if verified.anchor() != &current {
            return Err(DriveError::Refused(format!(
                "{name}: signs under another root than the current one: migrate it first"
            )));
        }
        moving.push((cluster, original));
    }
    if moving.is_empty() {
        return Err(DriveError::Refused(
            "every primary already signs under the new root".into(),
        ));
    }
    if dry_run {
        let clusters = moving.into_iter().map(|(c, _)| c.name.clone());
        return Ok(Record::new(TransitionKind::RotateRoot, clusters, options));
    }
    // The new root's signer (for vault-pki: the new issuer, generated now unless a start that
    // stopped early made it), then every new intermediate, in memory.
    let keep = match &new {
        NewRoot::Local {
            saved: false, over, ..
        } => Some(*over),
        _ => None,
    };
    let signer = match new {
        NewRoot::Local { root, .. } => crate::root_store::Signer::Local(root),
        NewRoot::Vault { ref waiting, stale } => {
            store
                .next_signer(config, waiting.is_some(), stale, now)
                .await?
        }
    };
    let root = signer.root_cert().clone();
    let mut issued = Vec::new();
    for (cluster, original) in moving {
        let name = cluster.name.clone();
        let (new, fresh) = match saved_new(files, own, &name, &root, now).await? {
            Some(saved) => (saved, false),
            None => (issue_new(config, cluster, &signer, &root, now).await?, true),
        };
        issued.push((name, original, new, fresh));
    }
    // Then saved: the new root before anything issued under it.
    if let Some(finished) = finished {
        files.archive(&finished, now).await?;
    }
    if let (Some(over), crate::root_store::Signer::Local(new_root)) = (keep, &signer) {
        store
            .keep_pending(&config.state_dir, new_root, over)
            .await?;
    }
    let audit = Audit::new(config.daemon.audit_log.clone());
    let clusters: Vec<String> = issued.iter().map(|(n, ..)| n.clone()).collect();
    save_moving(files, &audit, issued, now).await?;
    let record = Record::new(TransitionKind::RotateRoot, clusters, options);
    files.save(&record).await?;
    audit.note(now, "transition-start", None, "rotate-root", None, None);
    Ok(record)
}

/// The new root of a rotation being started.
enum NewRoot {
    /// In hand: kept by a start that stopped early (`saved`), or made or imported now.
    /// `over`: the KV version of a stale `<path>-next` to write over.
    Local {
        root: RootCa,
        saved: bool,
        over: Option<u64>,
    },
    /// A Vault PKI issuer: `waiting` if a start that stopped early generated it; `stale` if
    /// `<base>-next` names an earlier rotation's issuer.
    Vault { waiting: Option<Cert>, stale: bool },
}

async fn issue_new(
    config: &Config,
    cluster: &crate::topology::Cluster,
    signer: &crate::root_store::Signer,
    root: &Cert,
    now: OffsetDateTime,
) -> Result<CaCertsFiles, DriveError> {
    let name = cluster.name.as_str();
    let policy = config.policy_for(cluster);
    let spec = policy.intermediate_spec(name, &config.trust_domain);
    policy.check_issuance(name, &spec, root)?;
    let ica = signer
        .issue(&spec, now)
        .await
        .map_err(|e| DriveError::Refused(format!("{name}: {e}")))?;
    policy.check_issued(name, &ica.cert)?;
    let files = CaCertsFiles::for_intermediate(&ica, &[], root, &TrustBundle::single(root));
    verify_cacerts_for_mesh(&files, now, Some(&config.trust_domain)).map_err(|problems| {
        DriveError::Refused(format!(
            "{name}: internal check of the new cacerts failed: {}",
            crate::pki::BundleProblem::join(&problems)
        ))
    })?;
    Ok(files)
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

/// How a foreground driver shows where it stands while it waits (a gate, the drain) and when
/// the phase changes, on stderr: human lines on a terminal, JSON lines otherwise (for CI logs
/// and log collectors). The daemon exports metrics instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Progress {
    Off,
    Lines,
    Json,
}

impl Progress {
    /// Lines on a terminal, JSON otherwise.
    pub fn for_stderr() -> Self {
        use std::io::IsTerminal;
        if std::io::stderr().is_terminal() {
            Progress::Lines
        } else {
            Progress::Json
        }
    }

    fn show(
        self,
        at: OffsetDateTime,
        event: &str,
        record: &Record,
        detail: &str,
        fields: serde_json::Value,
    ) {
        if let Some(line) = self.line(at, event, record, detail, fields) {
            eprintln!("{line}");
        }
    }

    fn line(
        self,
        at: OffsetDateTime,
        event: &str,
        record: &Record,
        detail: &str,
        fields: serde_json::Value,
    ) -> Option<String> {
        let time = fmt_time(at);
        match self {
            Progress::Off => None,
            Progress::Lines => Some(format!(
                "[{time}] {:?} {} — {detail}",
                record.kind, record.phase
            )),
            Progress::Json => {
                let mut line = serde_json::json!({
                    "time": time,
                    "event": event,
                    "transition": record.kind,
                    "phase": record.phase,
                    "detail": detail,
                });
                if let (Some(line), serde_json::Value::Object(more)) =
                    (line.as_object_mut(), fields)
                {
                    line.extend(more);
                }
                Some(line.to_string())
            }
        }
    }
}

/// Shows a wait at most every 10 s (and its first time at once).
struct Throttle(Option<std::time::Instant>);

impl Throttle {
    fn due(&mut self, now: std::time::Instant) -> bool {
        if self
            .0
            .is_some_and(|last| now.duration_since(last) < Duration::from_secs(10))
        {
            return false;
        }
        self.0 = Some(now);
        true
    }
}

/// Runs the transition from where its record stands until it is finished, must wait (and
/// `wait` is off), needs an approval, or stopped. Returns the step it rests at.
pub async fn drive(
    config: &Config,
    files: &RecordStore,
    opts: DriveOptions,
) -> Result<Step, DriveError> {
    let Some(mut record) = files.load().await? else {
        return Err(DriveError::Refused("no transition is under way".into()));
    };
    let audit = Audit::new(config.daemon.audit_log.clone());
    let Opened {
        targets,
        materials,
        remotes,
    } = open_clusters(config, files, &record).await?;
    let mut done = 0usize;
    let mut shown = Throttle(None);
    let started = std::time::Instant::now();
    loop {
        let now = opts.clock.now();
        let step = next_step(&record, now);
        if step != Step::Finished && opts.max_steps.is_some_and(|n| done >= n) {
            return Ok(step);
        }
        if step != Step::Finished && done > 0 && opts.budget.is_some_and(|b| started.elapsed() >= b)
        {
            return Ok(step);
        }
        if step != Step::Finished && opts.stop_after.is_some_and(|n| done >= n) {
            return Err(DriveError::Stopped(format!(
                "stopped after {done} steps, as asked"
            )));
        }
        if matches!(step, Step::Write { .. } | Step::Restart { .. }) {
            // Up to `max_parallel` clusters at once, within what this run may still do.
            let room = [opts.max_steps, opts.stop_after]
                .into_iter()
                .flatten()
                .map(|n| n.saturating_sub(done))
                .min()
                .unwrap_or(usize::MAX);
            let batch = next_steps(&record, now, room);
            let exclude = record.options.exclude_namespaces.clone();
            let work = Work {
                config,
                targets: &targets,
                materials: &materials,
                audit: &audit,
                writer: CacertsWriter::new(&config.trust_domain, &audit, "transition-write"),
                exclude_namespaces: &exclude,
            };
            done += run_batch(&work, files, &mut record, &batch, now).await?;
            continue;
        }
        let outcome = match &step {
            Step::CheckGate { material: of } => {
                let behind = check_gate(&targets, &remotes, &materials, *of, now).await;
                if behind.is_empty() {
                    StepOutcome::GateHeld
                } else {
                    StepOutcome::GateBehind(behind)
                }
            }
            Step::Drain { until } => {
                if !opts.wait {
                    return Ok(step);
                }
                let left = (*until - now).unsigned_abs();
                tracing::info!(until = %fmt_time(*until), "draining: the old root stays trusted until then");
                if shown.due(std::time::Instant::now()) {
                    show_drain(opts.progress, &record, *until, left, now);
                }
                tokio::time::sleep(left.min(Duration::from_secs(60))).await;
                continue;
            }
            Step::Finished => {
                if record.kind == TransitionKind::RotateRoot
                    && record.phase == super::Phase::Done
                    && !record.root_swapped
                {
                    RotationStore::open(config)
                        .await
                        .map_err(|e| DriveError::Stopped(format!("root swap: {e}")))?
                        .swap(config, now)
                        .await?;
                    record.root_swapped = true;
                    files.save(&record).await?;
                }
                return Ok(step);
            }
            Step::AwaitApproval { .. } | Step::Held { .. } => return Ok(step),
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
            tracing::info!(phase = %record.phase, state = ?record.state, "transition moved");
            opts.progress.show(
                now,
                "phase",
                &record,
                &format!("now {}", state_name(&record.state)),
                serde_json::json!({"state": state_name(&record.state)}),
            );
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
        if behind && matches!(record.state, State::Active | State::RollingBack { .. }) {
            if !opts.wait {
                return Ok(step);
            }
            if let (StepOutcome::GateBehind(who), true) =
                (&outcome_seen, shown.due(std::time::Instant::now()))
            {
                show_gate_wait(opts.progress, &record, who, now);
            }
            tokio::time::sleep(opts.poll).await;
        }
    }
}

/// Shows how long the old root stays trusted.
fn show_drain(
    progress: Progress,
    record: &Record,
    until: OffsetDateTime,
    left: std::time::Duration,
    now: OffsetDateTime,
) {
    let left_text = humantime::format_duration(Duration::from_secs(left.as_secs()));
    progress.show(
        now,
        "drain",
        record,
        &format!(
            "draining: the old root stays trusted until {} ({left_text} left)",
            fmt_time(until)
        ),
        serde_json::json!({"until": fmt_time(until), "left_seconds": left.as_secs()}),
    );
}

/// Shows who a gate still waits for, and for how long it has.
fn show_gate_wait(progress: Progress, record: &Record, who: &[String], now: OffsetDateTime) {
    let waited = record
        .gate_since
        .map_or(0, |s| now.unix_timestamp().saturating_sub(s));
    progress.show(
        now,
        "gate",
        record,
        &format!(
            "waiting for the gate: {} behind ({}{}); waited {waited}s of {}s",
            who.len(),
            who.iter().take(3).cloned().collect::<Vec<_>>().join("; "),
            if who.len() > 3 { "; …" } else { "" },
            record.options.gate_timeout_seconds
        ),
        serde_json::json!({"behind": who, "waited_seconds": waited}),
    );
}

/// What a driver works on: each primary's target and material, and the Kubernetes remotes its
/// istiod serves (their bundles are gated too).
struct Opened {
    targets: BTreeMap<String, Target>,
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
    for name in record.clusters.keys() {
        let cluster = config.topology.get(name).ok_or_else(|| {
            DriveError::Refused(format!(
                "{name} is in the transition but no longer in the configuration"
            ))
        })?;
        targets.insert(
            name.clone(),
            Target::open(cluster, config)
                .await
                .map_err(target_err(name))?,
        );
        materials.insert(name.clone(), files.load_material(name).await?);
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
        materials,
        remotes,
    })
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

/// What a cluster's write or restart step needs.
struct Work<'a> {
    config: &'a Config,
    targets: &'a BTreeMap<String, Target>,
    materials: &'a BTreeMap<String, ClusterMaterial>,
    audit: &'a Audit,
    /// Every write goes through it.
    writer: CacertsWriter<'a>,
    exclude_namespaces: &'a [String],
}

impl Work<'_> {
    /// The material a write would serve (validated) and what the cluster holds now.
    async fn prepare_write(
        &self,
        cluster: &str,
        of: MaterialOf,
        now: OffsetDateTime,
    ) -> Result<(CaCertsFiles, crate::cluster::Observed), DriveError> {
        let want = material(&self.materials[cluster], of)
            .map_err(|e| DriveError::Refused(format!("{cluster}: {e}")))?;
        // Never hand istiod material it would refuse (an original that expired while the
        // transition was held, say): stop before touching the cluster, with the writer's own
        // checks.
        if let Err(problems) = self.writer.check(&want, written_material(of), now) {
            return Err(DriveError::Stopped(format!(
                "{cluster}: the cacerts for {} does not validate, so it was not written: {problems}",
                describe_material(of)
            )));
        }
        let observed = self.targets[cluster]
            .read()
            .await
            .map_err(target_err(cluster))?;
        Ok((want, observed))
    }

    /// Writes `want` unless the cluster already serves it (no extra backup then).
    async fn write(
        &self,
        cluster: &str,
        of: MaterialOf,
        want: &CaCertsFiles,
        observed: &crate::cluster::Observed,
        now: OffsetDateTime,
    ) -> Result<StepOutcome, DriveError> {
        if observed.snapshot.cacerts.as_ref() != Some(want) {
            let meta = WriteMeta {
                cluster: cluster.to_string(),
                serial: Cert::one_from_pem(&want.ca_cert, "ca-cert.pem")
                    .map(|c| c.info().serial.clone())
                    .unwrap_or_default(),
                written_at: now,
                reason: format!("trust transition: {}", describe_material(of)),
            };
            self.writer
                .write(&self.targets[cluster], want, written_material(of), &meta, observed)
                .await
                .map_err(|e| match e {
                    WriteError::Target(source) => target_err(cluster)(source),
                    WriteError::Invalid(problems) => DriveError::Stopped(format!(
                        "{cluster}: the cacerts for {} does not validate, so it was not written: {problems}",
                        describe_material(of)
                    )),
                })?;
        }
        Ok(StepOutcome::Written)
    }

    /// Restarts `stage` of the mesh `cluster`'s istiod serves and waits for the rollouts.
    async fn restart(
        &self,
        cluster: &str,
        stage: Stage,
        now: OffsetDateTime,
    ) -> Result<StepOutcome, DriveError> {
        let Target::Kube(_) = &self.targets[cluster] else {
            tracing::info!(
                cluster = %cluster,
                stage = stage.name(),
                "directory target: the restart is up to whoever applies the folder"
            );
            return Ok(StepOutcome::Restarted);
        };
        let primary =
            self.config.topology.get(cluster).ok_or_else(|| {
                DriveError::Refused(format!("{cluster} is not in the configuration"))
            })?;
        let ro = RestartOptions {
            stages: vec![stage],
            exclude_namespaces: self.exclude_namespaces.to_vec(),
            ..RestartOptions::default()
        };
        rollout::restart_primary(self.config, primary, &ro, now)
            .await
            .map_err(target_err(cluster))?;
        self.audit.note(
            now,
            "transition-restart",
            Some(cluster),
            stage.name(),
            None,
            None,
        );
        Ok(StepOutcome::Restarted)
    }
}

fn state_name(state: &State) -> String {
    match state {
        State::Active => "active".into(),
        State::Failed { report, .. } => format!("failed: {report}"),
        State::RollingBack { to } => format!("rolling back to {}", describe_material(*to)),
        State::Held { note } => format!("held: {note}"),
        State::RolledBack => "rolled back".into(),
    }
}

fn describe_material(of: MaterialOf) -> String {
    match of {
        MaterialOf::Original => "back to the material from before the transition".into(),
        MaterialOf::Phase(p) => format!("phase {p}"),
    }
}

/// Who is behind `of`'s gate: each primary must serve exactly the material (and it must
/// validate); on Kubernetes, every `istio-ca-root-cert` ConfigMap of the primary and of the
/// remotes it serves must hold exactly its roots.
async fn check_gate(
    targets: &BTreeMap<String, Target>,
    remotes: &BTreeMap<String, Vec<(String, KubeTarget)>>,
    materials: &BTreeMap<String, ClusterMaterial>,
    of: MaterialOf,
    now: OffsetDateTime,
) -> Vec<String> {
    let mut behind = Vec::new();
    for (cluster, target) in targets {
        let Ok(want) = material(&materials[cluster], of) else {
            behind.push(format!("{cluster}: its saved material is unreadable"));
            continue;
        };
        let observed = match target.read().await {
            Ok(o) => o,
            Err(e) => {
                behind.push(format!("{cluster}: unreachable: {e}"));
                continue;
            }
        };
        if observed.snapshot.cacerts.as_ref() != Some(&want) {
            behind.push(format!(
                "{cluster}: cacerts is not the material of this step"
            ));
            continue;
        }
        if let Err(problems) = verify_cacerts(&want, now) {
            behind.push(format!(
                "{cluster}: cacerts does not validate: {}",
                problems[0]
            ));
            continue;
        }
        let expected = roots_of(&want.root_cert);
        let published = observed.snapshot.published_bundles.unwrap_or_default();
        bundles_behind(cluster, &published, &expected, &mut behind);
        for (remote, target) in remotes.get(cluster).into_iter().flatten() {
            match target.published_bundles().await {
                Ok(published) => bundles_behind(remote, &published, &expected, &mut behind),
                Err(e) => behind.push(format!("{remote}: unreachable: {e}")),
            }
        }
    }
    behind
}

/// The distinct roots of a bundle, as DER, sorted.
fn roots_of(bundle: &[u8]) -> Vec<Vec<u8>> {
    let mut roots: Vec<Vec<u8>> = TrustBundle::from_pem_lenient(bundle)
        .0
        .roots()
        .iter()
        .map(|r| r.der().to_vec())
        .collect();
    roots.sort();
    roots.dedup();
    roots
}

/// Adds each namespace of `cluster` whose `istio-ca-root-cert` does not hold exactly `expected`.
fn bundles_behind(
    cluster: &str,
    published: &[(String, Vec<u8>)],
    expected: &[Vec<u8>],
    behind: &mut Vec<String>,
) {
    for (ns, bundle) in published {
        let got = roots_of(bundle);
        if got != expected {
            behind.push(format!(
                "{cluster}/{ns}: istio-ca-root-cert holds {} root(s), not the {} expected",
                got.len(),
                expected.len()
            ));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record() -> Record {
        Record::new(
            TransitionKind::Migrate,
            ["a".to_string()],
            Options {
                drain_seconds: 0,
                gate_timeout_seconds: 60,
                skip_workload_restarts: false,
                approve_each_phase: false,
                exclude_namespaces: Vec::new(),
                max_parallel: 1,
            },
        )
    }

    #[test]
    fn progress_is_a_line_on_a_terminal_and_json_otherwise() {
        let r = record();
        let fields = || serde_json::json!({"behind": ["a/app: 1 root(s), not the 2 expected"]});
        let line = Progress::Lines
            .line(
                OffsetDateTime::UNIX_EPOCH,
                "gate",
                &r,
                "waiting for the gate",
                fields(),
            )
            .unwrap();
        assert!(
            line.contains("Migrate AddNewRoot — waiting for the gate"),
            "{line}"
        );
        let json: serde_json::Value = serde_json::from_str(
            &Progress::Json
                .line(
                    OffsetDateTime::UNIX_EPOCH,
                    "gate",
                    &r,
                    "waiting for the gate",
                    fields(),
                )
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["event"], "gate");
        assert_eq!(json["phase"], "add-new-root");
        assert_eq!(json["transition"], "migrate");
        assert_eq!(json["behind"][0], "a/app: 1 root(s), not the 2 expected");
        assert!(
            Progress::Off
                .line(OffsetDateTime::UNIX_EPOCH, "gate", &r, "x", fields())
                .is_none()
        );
    }

    #[test]
    fn only_the_signer_a_cluster_had_is_written_back_without_the_mesh_checks() {
        use crate::transition::Phase;
        for of in [MaterialOf::Original, MaterialOf::Phase(Phase::AddNewRoot)] {
            assert!(
                matches!(written_material(of), Material::ServedBefore),
                "{of:?}"
            );
        }
        for p in [Phase::SwitchSigner, Phase::RemoveOldRoot, Phase::Done] {
            assert!(
                matches!(
                    written_material(MaterialOf::Phase(p)),
                    Material::Issued { .. }
                ),
                "{p:?}"
            );
        }
    }

    #[test]
    fn waits_are_shown_at_once_then_at_most_every_ten_seconds() {
        let start = std::time::Instant::now();
        let mut t = Throttle(None);
        assert!(t.due(start));
        assert!(!t.due(start));
        assert!(!t.due(start + Duration::from_millis(9_999)));
        assert!(t.due(start + Duration::from_secs(10)));
        // The ten seconds count from the last line shown, not from the first.
        assert!(!t.due(start + Duration::from_secs(19)));
        assert!(t.due(start + Duration::from_secs(20)));
    }
}
