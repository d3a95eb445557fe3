//! `cacertd migrate`, `rotate-root` and `transition`: starting, driving and inspecting a
//! phased trust transition.

use time::OffsetDateTime;

use super::root::{Key, read_root};
use super::trust_check::check_trust_graph;
use super::{CliError, DriveArgs, Format, TransitionCommand, TransitionPlanArgs};
use super::{args, output};
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::transition::record_store::RecordStore;
use crate::transition::{self, TransitionKind, driver};

mod record_cmds;
pub(super) use record_cmds::transition_cmd;

pub(super) fn transition_options(
    config: &Config,
    args: &TransitionPlanArgs,
) -> transition::Options {
    let defaults = transition::Options::from_config(config);
    transition::Options {
        drain_seconds: args.drain.map_or(defaults.drain_seconds, |d| d.as_secs()),
        skip_workload_restarts: args.skip_workload_restarts,
        wait_for_renewal: args.wait_for_renewal,
        approve_each_phase: args.approve_each_phase,
        max_parallel: args.max_parallel.map_or(defaults.max_parallel, usize::from),
        ..defaults
    }
}

/// The options of a transition whose drain and restarts are fixed (a root's removal, a
/// revocation): only how many clusters at once and approvals are chosen.
pub(super) fn fixed_options(
    config: &Config,
    max_parallel: Option<u16>,
    approve_each_phase: bool,
) -> transition::Options {
    let plan = TransitionPlanArgs {
        drain: None,
        skip_workload_restarts: false,
        wait_for_renewal: false,
        approve_each_phase,
        max_parallel,
        output: args::OutputArgs {
            output: Format::Table,
        },
    };
    transition_options(config, &plan)
}

pub(super) async fn migrate_start(
    config: &Config,
    plan: &TransitionPlanArgs,
    drive: &DriveArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let options = transition_options(config, plan);
    let istiods = transition::start::istiods(config).await?;
    let record = match transition::start::start_migrate(
        config,
        &store,
        &istiods,
        options,
        now,
        drive.dry_run,
    )
    .await
    {
        // A dry run that finds nothing to do has done what it was asked.
        Err(driver::DriveError::NothingToDo(why)) if drive.dry_run => {
            say!("dry run: {why}; nothing to do");
            return Ok(());
        }
        other => other?,
    };
    print_istiod(&istiods, &record);
    if drive.dry_run {
        print_dry_run(config, &record, "migration", now);
        return Ok(());
    }
    started(&store, "migration", &record);
    run_drive(config, &store, drive, clock).await
}

pub(super) async fn rotate_root_start(
    config: &Config,
    args: &args::RotateStartArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let new_root = match (&args.new_root_cert, &args.new_root_key) {
        (Some(cert), Some(key)) => Some(read_root(config, cert, Key::File(key), None, now)?),
        _ => None,
    };
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let mut options = transition_options(config, &args.plan);
    if args.emergency {
        options.emergency = true;
        options.drain_seconds = 0;
    }
    let istiods = transition::start::istiods(config).await?;
    let record = transition::start::start_rotate_root(
        config,
        &store,
        &istiods,
        options,
        new_root,
        now,
        args.drive.dry_run,
    )
    .await?;
    print_istiod(&istiods, &record);
    if args.drive.dry_run {
        print_dry_run(config, &record, "root rotation", now);
        return Ok(());
    }
    started(&store, "root rotation", &record);
    run_drive(config, &store, &args.drive, clock).await
}

/// Whether each primary's istiod hot-reloads a new root bundle (ISTIO_MULTIROOT_MESH), and
/// the releases each runs, as read before the transition was recorded (none refused then).
fn print_istiod(istiods: &[transition::start::Istiod], record: &transition::Record) {
    for i in istiods {
        if record.clusters.contains_key(&i.cluster) {
            say!(
                "{}: istiod multi-root hot reload {}",
                i.cluster,
                i.multiroot
            );
        }
    }
    print_istiod_releases(istiods);
}

/// Each Kubernetes primary's istiod release and what is known of it (docs/istio.md §12);
/// `start` refuses where a behaviour is marked so.
fn print_istiod_releases(istiods: &[transition::start::Istiod]) {
    for i in istiods {
        for (image, _) in &i.images {
            let release = crate::status::IstiodRelease::of(image);
            let version = release.version.as_deref().unwrap_or("version unknown");
            say!("{}: istiod {version} ({image})", i.cluster);
            for b in &release.behaviours {
                let mark = if b.bearing == "refuse" {
                    "start refuses: "
                } else {
                    ""
                };
                say!("  {mark}{}: {}", b.reference, b.what);
            }
        }
    }
}

/// What the transition does next, in words.
fn describe_next(config: &Config, record: &transition::Record, now: OffsetDateTime) -> String {
    match transition::next_step(record, now) {
        transition::Step::Drain { until } => format!(
            "drain until {} (the old root stays trusted), then {}",
            crate::pki::fmt_time(until),
            record.phase
        ),
        transition::Step::AwaitApproval { phase } => format!(
            "wait for an operator's approval to enter {phase}: `cacertd transition resume --approve`"
        ),
        transition::Step::AwaitApplied { clusters } => applied_note(&clusters),
        transition::Step::Finished => match record.state {
            transition::State::RolledBack => "nothing: rolled back".into(),
            _ if record.is_over() => "nothing: done".into(),
            _ => "swap the new root into the root store: `cacertd transition resume`".into(),
        },
        _ => {
            let steps = transition::remaining_steps(record, &transition::Scope::all(config), now);
            match steps.first() {
                Some(s) => match &s.cluster {
                    Some(c) => format!("{c}: {}", s.action),
                    None => s.action.clone(),
                },
                None => "nothing".into(),
            }
        }
    }
}

/// What a transition waiting for folders to be applied asks of the operator.
fn applied_note(clusters: &[String]) -> String {
    format!(
        "wait until the folders of {} are applied to their clusters, then istiod, the gateways \
         and the workloads restarted there (in that order), and istiod has published the new \
         bundle; then confirm with `cacertd transition resume --approve`. Nothing moves on \
         before that: the next step must not run ahead of what the clusters hold.",
        clusters.join(", ")
    )
}

/// `--dry-run`: which primaries the transition covers and every step still ahead of it.
pub(super) fn print_dry_run(
    config: &Config,
    record: &transition::Record,
    what: &str,
    now: OffsetDateTime,
) {
    let clusters: Vec<&str> = record.clusters.keys().map(String::as_str).collect();
    say!(
        "dry run: the {what} would cover {} ({}, {}). Nothing was changed.",
        clusters.join(", "),
        record.position(),
        record.state.describe()
    );
    let scopes: Vec<transition::Scope> = transition::Scope::all(config)
        .into_iter()
        .filter(|s| record.clusters.contains_key(&s.primary))
        .collect();
    let steps = transition::remaining_steps(record, &scopes, now);
    match record.state {
        transition::State::RollingBack { to } => {
            say!("\nrolling back to {}:", to.describe());
            print_steps(&steps, false);
        }
        _ => print_steps(&steps, true),
    }
}

fn print_steps(steps: &[transition::PlannedStep], by_phase: bool) {
    let mut phase = None;
    for (i, step) in steps.iter().enumerate() {
        if by_phase && phase != Some(step.phase) {
            say!("\n{}:", step.phase);
            phase = Some(step.phase);
        }
        match &step.cluster {
            Some(c) => say!("  {:>3}. {c}: {}", i + 1, step.action),
            None => say!("  {:>3}. {}", i + 1, step.action),
        }
    }
    if steps.is_empty() {
        say!("no step is left");
    }
}

pub(super) fn started(store: &RecordStore, what: &str, record: &transition::Record) {
    let clusters: Vec<&str> = record.clusters.keys().map(String::as_str).collect();
    say!(
        "{what} recorded for {} in {}",
        clusters.join(", "),
        store.describe()
    );
}

pub(super) async fn run_drive(
    config: &Config,
    store: &RecordStore,
    args: &DriveArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    run_drive_as(config, store, args, clock, Format::Table).await
}

/// Drives the transition, then says where it rests: in words, or (`-o json`) as an object
/// with the transition, its position and state, where it rests and what comes next.
async fn run_drive_as(
    config: &Config,
    store: &RecordStore,
    args: &DriveArgs,
    clock: &std::sync::Arc<dyn Clock>,
    format: Format,
) -> Result<(), CliError> {
    let progress = transition::progress::Progress::for_stderr();
    let opts = driver::DriveOptions {
        clock: clock.clone(),
        wait: args.wait,
        poll: std::time::Duration::from_secs(2),
        stop_after: args.stop_after_steps,
        max_steps: None,
        budget: None,
        progress: progress.clone(),
    };
    let driven = driver::drive(config, store, opts).await;
    progress.finish();
    let rest = driven?;
    let rests = match rest {
        transition::Step::Finished => "transition finished".to_string(),
        transition::Step::AwaitApproval { phase } => {
            format!("waiting for approval to enter {phase}: `cacertd transition resume --approve`")
        }
        transition::Step::AwaitApplied { clusters } => applied_note(&clusters),
        transition::Step::Drain { until } => format!(
            "draining until {}: `cacertd transition resume` after that (or with --wait)",
            crate::pki::fmt_time(until)
        ),
        transition::Step::CheckGate { .. } => "the gate does not hold yet (see `cacertd \
             transition status`); `cacertd transition resume --wait` waits for it"
            .to_string(),
        transition::Step::Held { note } => format!(
            "{note}; `cacertd transition resume` goes forward again, `transition rollback` \
             further back"
        ),
        transition::Step::Write { .. }
        | transition::Step::Restart { .. }
        | transition::Step::Stopped { .. } => "stopped before its next step".to_string(),
    };
    match (format, store.load().await?) {
        (Format::Json | Format::Yaml, Some(record)) => output::print_as(
            format,
            &serde_json::json!({
                "transition": record.kind.name(),
                "position": record.position(),
                "state": record.state.describe(),
                "rests": rests,
                "next": describe_next(config, &record, clock.now()),
            }),
        ),
        _ => say!("{rests}"),
    }
    Ok(())
}

/// `transition remove-root FINGERPRINT`: records the removal, then drives it.
async fn remove_root_start(
    config: &Config,
    args: &args::RemoveRootArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let fingerprint = crate::pki::normalize_fingerprint(&args.fingerprint)
        .map_err(|reason| CliError::Usage(format!("FINGERPRINT: {reason}")))?;
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let options = fixed_options(config, args.max_parallel, false);
    if args.check {
        return check_trust_graph(
            config,
            TransitionKind::RemoveRoot,
            options,
            Some(&fingerprint),
            Format::Table,
        )
        .await;
    }
    let record = transition::start::start_remove_root(
        config,
        &store,
        options,
        &fingerprint,
        now,
        args.drive.dry_run,
    )
    .await?;
    if args.drive.dry_run {
        print_dry_run(config, &record, &format!("removal of {fingerprint}"), now);
        return Ok(());
    }
    started(&store, &format!("removal of {fingerprint}"), &record);
    run_drive(config, &store, &args.drive, clock).await
}

/// `migrate plan` / `rotate-root plan`: the steps of a transition over every primary, and
/// (as text) the istiod release of each Kubernetes primary.
pub(super) async fn transition_plan(
    config: &Config,
    kind: TransitionKind,
    args: &TransitionPlanArgs,
    check: bool,
) -> Result<(), CliError> {
    let drain = args.drain.unwrap_or(config.transition.drain);
    let options = transition_options(config, args);
    let scopes = transition::Scope::all(config);
    if check {
        return check_trust_graph(config, kind, options, None, args.output.output).await;
    }
    let steps = transition::plan_steps(kind, &scopes, &options);
    if args.output.output.structured() {
        output::print_as(args.output.output, &steps);
        return Ok(());
    }
    let name = kind.name();
    say!(
        "{name}: {} primaries{}; drain {}; each gate may wait {}. This plan changes nothing.",
        scopes.len(),
        if options.max_parallel > 1 {
            format!(
                ", up to {} at once (each one's steps in this order)",
                options.max_parallel
            )
        } else {
            String::new()
        },
        crate::clock::fmt_duration(drain),
        crate::clock::fmt_duration(config.transition.gate_timeout)
    );
    print_steps(&steps, true);
    super::trust_check::print_trust_table(&transition::check::planned_trust(
        kind, &scopes, options,
    ));
    if kind == TransitionKind::RotateRoot {
        say!(
            "\nA rotation changes every cluster's trust anchor. To replace only the mesh CA under \
             the same anchor (the company's root), no rotation is needed: `cacertd root import \
             --cert F --key F --chain F --replace`, then `cacertd issue` re-issues every \
             intermediate with trust unchanged."
        );
    }
    match transition::start::istiods(config).await {
        Ok(istiods) => print_istiod_releases(&istiods),
        Err(e) => say!("istiod releases unknown: {e}"),
    }
    Ok(())
}
