//! The `cacertd` command line: argument parsing, command dispatch, exit codes.

mod args;
mod output;

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use clap::Parser;
use time::OffsetDateTime;
use zeroize::Zeroizing;

pub use crate::status::StatusReport;
pub use args::{
    Args, Command, DriveArgs, Format, MigrateCommand, RootCommand, RotateRootCommand,
    TransitionCommand, TransitionPlanArgs,
};

use crate::clock::{Clock, SystemClock};
use crate::cluster::DirTarget;
use crate::config::{Config, ConfigError};
use crate::fsutil::{FsError, StateLock, fs_err};
use crate::issuance::{self, Outcome};
use crate::pki::{
    CaCertsFiles, PkiError, RootCa, TrustBundle, generate_root, import_root, issue_intermediate,
    verify_cacerts, verify_cacerts_for_mesh,
};
use crate::plan::PlanOptions;
use crate::policy::PolicyViolation;
use crate::root_store::{RootSource, StoreError};
use crate::topology::{Cluster, Role};
use crate::transition::record_store::RecordStore;
use crate::transition::{self, TransitionKind, driver};

/// Everything a command can fail with; each maps to a documented exit code.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Material(#[from] PkiError),
    #[error(transparent)]
    Policy(#[from] PolicyViolation),
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{0}")]
    Usage(String),
    #[error(transparent)]
    Transition(#[from] driver::DriveError),
    #[error("{0}")]
    InvalidBundle(String),
    /// Per-cluster results were already printed; this carries the exit code.
    #[error("{message}")]
    Partial { message: String, code: u8 },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Store(StoreError::AlreadyExists { .. }) => 5,
            CliError::Store(StoreError::Unsupported { .. }) => 2,
            CliError::Store(StoreError::Material { .. }) => 3,
            CliError::Store(_) | CliError::Io(_) => 1,
            CliError::Material(_) | CliError::InvalidBundle(_) => 3,
            CliError::Policy(_) => 4,
            CliError::Partial { code, .. } => *code,
            CliError::Transition(driver::DriveError::Refused(_)) => 5,
            CliError::Transition(driver::DriveError::Policy(_)) => 4,
            CliError::Transition(_) => 1,
        }
    }
}

/// Entry point of the binary: parses arguments, sets up logging, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let args = Args::parse();
    init_tracing(args.verbose);
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(1);
        }
    };
    match runtime.block_on(run(args, std::sync::Arc::new(SystemClock))) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

fn init_tracing(verbose: u8) {
    // vaultrs and rustify log every failed call at ERROR with terse messages; cacertd reports
    // those failures itself, with the path and what to do.
    let default = match verbose {
        0 => "warn,rustify=off,vaultrs=off",
        1 => "info,rustify=off,vaultrs=off",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// Runs one command.
/// Runs one command; `clock` is the one time source of the whole run (the daemon and the
/// transition driver ask it too).
pub async fn run(args: Args, clock: std::sync::Arc<dyn Clock>) -> Result<(), CliError> {
    let Args {
        config: config_path,
        verbose: _,
        command,
    } = args;
    let now = clock.now();
    match command {
        // `verify` needs no configuration.
        Command::Verify(v) => verify(&v.dir, v.at.as_deref(), v.output.output, now),
        command => {
            let config = Config::load(&config_path)?;
            match command {
                Command::Root(RootCommand::Init) => root_init(&config, now).await,
                Command::Root(RootCommand::Import { cert, key }) => {
                    root_import(&config, &cert, &key, now).await
                }
                Command::Root(RootCommand::Show(o)) => root_show(&config, o.output, now).await,
                Command::Issue(a) => {
                    let opts = PlanOptions {
                        force: a.force,
                        danger_replace_trust_bundle: a.danger_replace_trust_bundle,
                    };
                    issue(
                        &config,
                        &a.clusters,
                        opts,
                        a.init_root,
                        a.dry_run,
                        a.output.output,
                        now,
                    )
                    .await
                }
                Command::Plan(a) => {
                    let opts = PlanOptions {
                        force: a.force,
                        danger_replace_trust_bundle: false,
                    };
                    issue(
                        &config,
                        &a.clusters,
                        opts,
                        false,
                        true,
                        a.output.output,
                        now,
                    )
                    .await
                }
                Command::Status(o) => status(&config, o.output, now).await,
                Command::Check => check(&config),
                Command::Migrate(MigrateCommand::Plan(a)) => {
                    transition_plan(&config, TransitionKind::Migrate, &a)
                }
                Command::Migrate(MigrateCommand::Start(a)) => {
                    migrate_start(&config, &a.plan, &a.drive, &clock).await
                }
                Command::RotateRoot(RotateRootCommand::Plan(a)) => {
                    transition_plan(&config, TransitionKind::RotateRoot, &a)
                }
                Command::RotateRoot(RotateRootCommand::Start(a)) => {
                    rotate_root_start(&config, &a, &clock).await
                }
                Command::Transition(t) => transition_cmd(&config, t, &clock).await,
                Command::Serve => serve(config, clock.clone()).await,
                Command::Restart(a) => restart(&config, a, now).await,
                Command::Verify(_) => unreachable!("handled above"),
            }
        }
    }
}

async fn root_init(config: &Config, now: OffsetDateTime) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    root_init_in(config, &store, now).await
}

async fn root_init_in(
    config: &Config,
    store: &RootSource,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    if let Some(existing) = store.load_cert().await? {
        return Err(StoreError::AlreadyExists {
            store: store.describe(),
            fingerprint: existing.info().fingerprint_sha256.clone(),
        }
        .into());
    }
    let policy = config.root_policy();
    let spec = policy.root_spec(&config.trust_domain);
    let cert = if let Some(pki) = store.as_vault_pki() {
        // The key is generated inside Vault and never leaves it.
        let key = crate::root_store::vault::key_type(spec.key_algorithm);
        let cert = pki
            .generate_root(
                spec.subject.organization.as_deref(),
                &spec.subject.common_name,
                key,
                spec.validity,
            )
            .await
            .map_err(|source| StoreError::Vault {
                store: store.describe(),
                source,
            })?;
        policy.check_root(&cert)?;
        cert
    } else {
        let root = generate_root(&spec, now)?;
        policy.check_root(root.cert())?;
        prove_root(config, &root, now)?;
        let _lock = StateLock::acquire(&config.state_dir)?;
        store.create(&root).await?;
        root.cert().clone()
    };
    tracing::info!(
        serial = %cert.info().serial,
        fingerprint = %cert.info().fingerprint_sha256,
        store = %store.describe(),
        "created root"
    );
    println!("created root in {}", store.describe());
    output::print_root(&mut std::io::stdout(), cert.info(), now);
    Ok(())
}

async fn root_import(
    config: &Config,
    cert: &Path,
    key: &Path,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let root = read_root(config, cert, key, now)?;
    let store = RootSource::open(config).await?;
    {
        let _lock = StateLock::acquire(&config.state_dir)?;
        store.create(&root).await?;
    }
    println!("imported root into {}", store.describe());
    output::print_root(&mut std::io::stdout(), root.cert().info(), now);
    Ok(())
}

/// Reads a root to import (certificate and key files) and refuses anything istiod could not use
/// or the root policy does not allow.
fn read_root(
    config: &Config,
    cert: &Path,
    key: &Path,
    now: OffsetDateTime,
) -> Result<RootCa, CliError> {
    let cert_pem = std::fs::read(cert).map_err(fs_err("cannot read", cert))?;
    let key_pem = Zeroizing::new(std::fs::read(key).map_err(fs_err("cannot read", key))?);
    let root = import_root(
        &cert_pem,
        &key_pem,
        now,
        &cert.display().to_string(),
        &key.display().to_string(),
    )?;
    config.root_policy().check_root(root.cert())?;
    prove_root(config, &root, now)?;
    Ok(root)
}

/// Before a root is stored: issue a throw-away intermediate with it under the policy and
/// validate the result as istiod would, name constraints included. A root that cannot sign
/// usable intermediates is refused now rather than discovered at the first `issue`.
fn prove_root(config: &Config, root: &RootCa, now: OffsetDateTime) -> Result<(), CliError> {
    let policy = config.root_policy();
    let cluster = config
        .topology
        .primaries()
        .next()
        .map_or("trial", |c| c.name.as_str());
    let spec = policy.intermediate_spec(cluster, &config.trust_domain);
    let trial = issue_intermediate(root, &spec, now)?;
    let files =
        CaCertsFiles::for_intermediate(&trial, &[], root.cert(), &TrustBundle::single(root.cert()));
    verify_cacerts_for_mesh(&files, now, Some(&config.trust_domain)).map_err(|problems| {
        CliError::InvalidBundle(format!(
            "this root cannot sign intermediates istiod would accept: {}",
            crate::pki::BundleProblem::join(&problems)
        ))
    })?;
    Ok(())
}

async fn root_show(config: &Config, format: Format, now: OffsetDateTime) -> Result<(), CliError> {
    let store = RootSource::open(config).await?;
    let cert = store.load_cert().await?.ok_or_else(|| StoreError::NoRoot {
        store: store.describe(),
    })?;
    let location = store.location().await?;
    match format {
        Format::Json => output::print_json(&crate::status::root_json(&location, cert.info(), now)),
        Format::Table => {
            println!("store: {location}");
            output::print_root(&mut std::io::stdout(), cert.info(), now);
        }
    }
    Ok(())
}

/// The primaries named on the command line, or all of them.
fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Cluster>, CliError> {
    if names.is_empty() {
        return Ok(config.topology.primaries().collect());
    }
    names
        .iter()
        .map(|n| match config.topology.get(n) {
            None => Err(CliError::Usage(format!(
                "unknown cluster {n:?} (known: {})",
                config
                    .topology
                    .clusters()
                    .iter()
                    .map(|c| c.name.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ))),
            Some(c) if c.role == Role::Remote => Err(CliError::Usage(format!(
                "{n} is a remote cluster: it runs no istiod and gets no cacerts; its workloads are \
                 signed by primary {}",
                c.primary.as_deref().unwrap_or("?")
            ))),
            Some(c) => Ok(c),
        })
        .collect()
}

async fn issue(
    config: &Config,
    names: &[String],
    opts: PlanOptions,
    init_root: bool,
    dry_run: bool,
    format: Format,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let clusters = select(config, names)?;
    let store = RootSource::open(config).await?;
    if init_root && store.load_cert().await?.is_none() {
        if dry_run {
            return Err(CliError::Usage(
                "--dry-run with --init-root: no root exists yet, so there is nothing to plan against"
                    .into(),
            ));
        }
        root_init_in(config, &store, now).await?;
    }
    // Fails (changing nothing) when there is no root; then, one writer at a time from reading
    // the targets to writing them.
    store.load_cert().await?.ok_or_else(|| StoreError::NoRoot {
        store: store.describe(),
    })?;
    let _lock = if dry_run {
        None
    } else {
        Some(StateLock::acquire(&config.state_dir)?)
    };
    // Nothing is written to any cluster when the root cannot be obtained.
    let signer = store.signer().await?;
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    let reports = issuance::run(config, &signer, &audit, &clusters, opts, dry_run, now).await;
    drop(signer);
    match format {
        Format::Json => output::print_json(&reports),
        Format::Table => output::print_reports(&mut std::io::stdout(), &reports),
    }
    let count = |o: Outcome| reports.iter().filter(|r| r.outcome == o).count();
    let (failed, refused, policy) = (
        count(Outcome::Failed),
        count(Outcome::Refused),
        count(Outcome::PolicyRefused),
    );
    let code = if failed > 0 {
        1
    } else if refused > 0 {
        5
    } else if policy > 0 {
        4
    } else {
        0
    };
    if code != 0 {
        return Err(CliError::Partial {
            message: format!(
                "{failed} cluster(s) failed, {refused} refused as unsafe, {policy} refused by policy"
            ),
            code,
        });
    }
    Ok(())
}

async fn status(config: &Config, format: Format, now: OffsetDateTime) -> Result<(), CliError> {
    let (store, report) = crate::status::status_report(config, now).await?;
    match format {
        Format::Json => output::print_json(&report),
        Format::Table => output::print_status(&mut std::io::stdout(), &store, &report),
    }
    Ok(())
}

fn verify(
    dir: &Path,
    at: Option<&str>,
    format: Format,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let at = match at {
        Some(s) => OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339)
            .map_err(|e| CliError::Usage(format!("--at {s:?}: not an RFC 3339 time ({e})")))?,
        None => now,
    };
    if !dir.is_dir() {
        return Err(CliError::Usage(format!(
            "{}: not a directory",
            dir.display()
        )));
    }
    let target = DirTarget::new(dir.to_path_buf(), dir.join(".unused"));
    let files = target
        .read()
        .map_err(|e| CliError::Usage(e.to_string()))?
        .ok_or_else(|| {
            CliError::InvalidBundle(format!(
                "{}: no cacerts files (ca-cert.pem, ca-key.pem, root-cert.pem, cert-chain.pem) found",
                dir.display()
            ))
        })?;
    let result = verify_cacerts(&files, at);
    let mut out = std::io::stdout();
    match (&result, format) {
        (_, Format::Json) => output::print_json(&output::verify_json(dir, &result, at)),
        (Ok(v), Format::Table) => output::print_verified(&mut out, dir, v, at),
        (Err(problems), Format::Table) => {
            let _ = writeln!(
                out,
                "{}: INVALID — istiod would refuse this cacerts:",
                dir.display()
            );
            for p in problems {
                let _ = writeln!(out, "  {p}");
            }
        }
    }
    match result {
        Ok(_) => Ok(()),
        Err(problems) => Err(CliError::InvalidBundle(format!(
            "{}: {} problem(s) found",
            dir.display(),
            problems.len()
        ))),
    }
}

async fn restart(
    config: &Config,
    a: args::RestartArgs,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    use crate::rollout::{RestartOptions, Stage, restart_primary};
    let primaries = select(config, &a.clusters)?;
    let stages = if a.only.is_empty() {
        Stage::ALL.to_vec()
    } else {
        a.only
            .iter()
            .map(|s| match s {
                args::StageArg::Istiod => Stage::Istiod,
                args::StageArg::Gateways => Stage::Gateways,
                args::StageArg::Workloads => Stage::Workloads,
            })
            .collect()
    };
    if a.no_wait && stages.len() > 1 {
        return Err(CliError::Usage(
            "--no-wait with more than one stage would restart gateways and workloads before istiod \
             serves the new material; add --only with a single stage"
                .into(),
        ));
    }
    let opts = RestartOptions {
        stages,
        wait: !a.no_wait,
        gateway_selector: a.gateway_selector,
        exclude_namespaces: a.exclude_namespace,
    };
    // Each primary's mesh is independent: one stopping does not spare the others.
    let mut all = Vec::new();
    let mut failures = Vec::new();
    for primary in primaries {
        match restart_primary(config, primary, &opts, now).await {
            Ok(done) => all.extend(done),
            Err(e) => {
                eprintln!("error: restart of {}'s mesh stopped: {e}", primary.name);
                failures.push(primary.name.clone());
            }
        }
    }
    match a.output.output {
        Format::Json => output::print_json(&all),
        Format::Table => output::print_restarts(&mut std::io::stdout(), &all),
    }
    if !failures.is_empty() {
        return Err(CliError::Partial {
            message: format!("restart stopped in the mesh of {}", failures.join(", ")),
            code: 1,
        });
    }
    Ok(())
}

async fn serve(config: Config, clock: std::sync::Arc<dyn Clock>) -> Result<(), CliError> {
    let daemon = crate::daemon::Daemon::new(config, clock);
    let shutdown = async {
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(t) => t,
                    Err(_) => {
                        let _ = tokio::signal::ctrl_c().await;
                        return;
                    }
                };
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
    };
    daemon
        .run(shutdown)
        .await
        .map_err(|e| CliError::Usage(format!("cannot serve: {e}")))
}

fn transition_options(config: &Config, args: &TransitionPlanArgs) -> transition::Options {
    transition::Options {
        drain_seconds: args.drain.unwrap_or(config.transition.drain).as_secs(),
        gate_timeout_seconds: config.transition.gate_timeout.as_secs(),
        skip_workload_restarts: args.skip_workload_restarts,
        approve_each_phase: args.approve_each_phase,
        exclude_namespaces: config.transition.exclude_namespaces.clone(),
        max_parallel: args
            .max_parallel
            .map_or(config.transition.max_parallel, usize::from),
    }
}

async fn migrate_start(
    config: &Config,
    plan: &TransitionPlanArgs,
    drive: &DriveArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let options = transition_options(config, plan);
    let record = driver::start_migrate(config, &store, options, now, drive.dry_run).await?;
    print_multiroot(config, &record).await;
    if drive.dry_run {
        print_dry_run(config, &record, "migration", now);
        return Ok(());
    }
    started(&store, "migration", &record);
    run_drive(config, &store, drive, clock).await
}

async fn rotate_root_start(
    config: &Config,
    args: &args::RotateStartArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let new_root = match (&args.new_root_cert, &args.new_root_key) {
        (Some(cert), Some(key)) => Some(read_root(config, cert, key, now)?),
        _ => None,
    };
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let record = driver::start_rotate_root(
        config,
        &store,
        transition_options(config, &args.plan),
        new_root,
        now,
        args.drive.dry_run,
    )
    .await?;
    print_multiroot(config, &record).await;
    if args.drive.dry_run {
        print_dry_run(config, &record, "root rotation", now);
        return Ok(());
    }
    started(&store, "root rotation", &record);
    run_drive(config, &store, &args.drive, clock).await
}

/// Each primary with the remotes its istiod serves.
fn scopes(config: &Config) -> Vec<transition::Scope> {
    config
        .topology
        .primaries()
        .map(|p| transition::Scope {
            primary: p.name.clone(),
            remotes: config
                .topology
                .remotes_of(&p.name)
                .map(|r| r.name.clone())
                .collect(),
        })
        .collect()
}

/// Whether each primary's istiod hot-reloads a new root bundle (ISTIO_MULTIROOT_MESH).
async fn print_multiroot(config: &Config, record: &transition::Record) {
    for (cluster, state) in driver::multiroot(config).await {
        if record.clusters.contains_key(&cluster) {
            println!("{cluster}: istiod multi-root hot reload {state}");
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
        transition::Step::Finished => match record.state {
            transition::State::RolledBack => "nothing: rolled back".into(),
            _ if record.is_over() => "nothing: done".into(),
            _ => "swap the new root into the root store: `cacertd transition resume`".into(),
        },
        _ => {
            let steps = transition::remaining_steps(record, &scopes(config), now);
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

/// `--dry-run`: which primaries the transition covers and every step still ahead of it.
fn print_dry_run(config: &Config, record: &transition::Record, what: &str, now: OffsetDateTime) {
    let clusters: Vec<&str> = record.clusters.keys().map(String::as_str).collect();
    println!(
        "dry run: the {what} would cover {} (phase {}, {:?}). Nothing was changed.",
        clusters.join(", "),
        record.phase,
        record.state
    );
    let scopes: Vec<transition::Scope> = scopes(config)
        .into_iter()
        .filter(|s| record.clusters.contains_key(&s.primary))
        .collect();
    let steps = transition::remaining_steps(record, &scopes, now);
    match record.state {
        transition::State::RollingBack { to } => {
            println!(
                "\nrolling back to {}:",
                match to {
                    transition::MaterialOf::Original =>
                        "the material from before the transition".into(),
                    transition::MaterialOf::Phase(p) => format!("{p}'s material"),
                }
            );
            print_steps(&steps, false);
        }
        _ => print_steps(&steps, true),
    }
}

fn print_steps(steps: &[transition::PlannedStep], by_phase: bool) {
    let mut phase = None;
    for (i, step) in steps.iter().enumerate() {
        if by_phase && phase != Some(step.phase) {
            println!("\n{}:", step.phase);
            phase = Some(step.phase);
        }
        match &step.cluster {
            Some(c) => println!("  {:>3}. {c}: {}", i + 1, step.action),
            None => println!("  {:>3}. {}", i + 1, step.action),
        }
    }
    if steps.is_empty() {
        println!("no step is left");
    }
}

fn started(store: &RecordStore, what: &str, record: &transition::Record) {
    let clusters: Vec<&str> = record.clusters.keys().map(String::as_str).collect();
    println!(
        "{what} recorded for {} in {}",
        clusters.join(", "),
        store.describe()
    );
}

async fn run_drive(
    config: &Config,
    store: &RecordStore,
    args: &DriveArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let opts = driver::DriveOptions {
        clock: clock.clone(),
        wait: args.wait,
        poll: std::time::Duration::from_secs(2),
        stop_after: args.stop_after_steps,
        max_steps: None,
        budget: None,
        progress: driver::Progress::for_stderr(),
    };
    let rest = driver::drive(config, store, opts).await?;
    match rest {
        transition::Step::Finished => println!("transition finished"),
        transition::Step::AwaitApproval { phase } => {
            println!("waiting for approval to enter {phase}: `cacertd transition resume --approve`")
        }
        transition::Step::Drain { until } => println!(
            "draining until {}: `cacertd transition resume` after that (or with --wait)",
            crate::pki::fmt_time(until)
        ),
        transition::Step::CheckGate { .. } => println!(
            "the gate does not hold yet (see `cacertd transition status`); \
             `cacertd transition resume --wait` waits for it"
        ),
        transition::Step::Held { note } => println!(
            "{note}; `cacertd transition resume` goes forward again, `transition rollback` \
             further back"
        ),
        other => println!("stopped at {other:?}"),
    }
    Ok(())
}

async fn transition_cmd(
    config: &Config,
    cmd: TransitionCommand,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let files = RecordStore::open(config).await?;
    if let TransitionCommand::Status(o) = cmd {
        let Some(record) = files.load().await? else {
            println!("no transition is under way");
            return Ok(());
        };
        let next = describe_next(config, &record, now);
        if o.output == Format::Json {
            output::print_json(&serde_json::json!({
                "record": record,
                "next": next,
            }));
            return Ok(());
        }
        println!(
            "{:?} transition: phase {}, {:?}",
            record.kind, record.phase, record.state
        );
        for (c, p) in &record.clusters {
            let restarts: Vec<&str> = p.restarted.iter().map(|s| s.name()).collect();
            println!(
                "  {c}: {}; restarted: {}",
                if p.written { "written" } else { "not written" },
                if restarts.is_empty() {
                    "-".to_string()
                } else {
                    restarts.join(", ")
                }
            );
        }
        if let (Some(since), transition::State::Active | transition::State::RollingBack { .. }) =
            (record.gate_since, &record.state)
        {
            println!(
                "gate: waiting for {}s (fails after {}s){}",
                now.unix_timestamp().saturating_sub(since),
                record.options.gate_timeout_seconds,
                if record.behind.is_empty() {
                    String::new()
                } else {
                    format!("; behind: {}", record.behind.join("; "))
                }
            );
        }
        println!("next: {next}");
        return Ok(());
    }
    let dry_run = match &cmd {
        TransitionCommand::Status(_) => false,
        TransitionCommand::Resume(a) => a.drive.dry_run,
        TransitionCommand::Rollback(d) => d.dry_run,
        TransitionCommand::Abort(a) => a.dry_run,
    };
    // A dry run takes no lock: it may look while the daemon drives.
    let _lock = match dry_run {
        true => None,
        false => Some(StateLock::acquire(&config.state_dir)?),
    };
    let Some(mut record) = files.load().await? else {
        return Err(CliError::Usage("no transition is under way".into()));
    };
    if dry_run {
        let what = match &cmd {
            TransitionCommand::Resume(a) => {
                resume_record(&mut record, a)?;
                "resumed transition"
            }
            TransitionCommand::Rollback(_) => {
                record.rollback().map_err(CliError::Usage)?;
                "rollback"
            }
            _ => {
                println!(
                    "dry run: would move the record and material in {} aside (nothing is \
                     deleted) and forget the transition at phase {}, {:?}; no cluster would be \
                     touched. Nothing was changed.",
                    files.describe(),
                    record.phase,
                    record.state
                );
                return Ok(());
            }
        };
        print_dry_run(config, &record, what, now);
        return Ok(());
    }
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    match cmd {
        TransitionCommand::Status(_) => unreachable!("handled above"),
        TransitionCommand::Resume(a) => {
            resume_record(&mut record, &a)?;
            files.save(&record).await?;
            if let Some(timeout) = a.gate_timeout {
                audit.note(
                    now,
                    "transition-gate-timeout",
                    None,
                    record.phase.name(),
                    None,
                    Some(format!(
                        "every gate from now on may wait {}",
                        humantime::format_duration(timeout)
                    )),
                );
            }
            audit.note(
                now,
                "transition-resume",
                None,
                record.phase.name(),
                None,
                None,
            );
            run_drive(config, &files, &a.drive, clock).await
        }
        TransitionCommand::Rollback(d) => {
            record.rollback().map_err(CliError::Usage)?;
            files.save(&record).await?;
            audit.note(
                now,
                "transition-rollback",
                None,
                record.phase.name(),
                None,
                None,
            );
            run_drive(config, &files, &d, clock).await
        }
        TransitionCommand::Abort(_) => {
            files.archive(&record, now).await?;
            audit.note(
                now,
                "transition-abort",
                None,
                record.phase.name(),
                None,
                None,
            );
            println!(
                "transition forgotten at phase {}; clusters keep what they serve now",
                record.phase
            );
            Ok(())
        }
    }
}

/// What `transition resume` changes in the record: a stopped transition goes on, an approval
/// is noted, and a new gate timeout replaces the one it started with.
fn resume_record(record: &mut transition::Record, a: &args::ResumeArgs) -> Result<(), CliError> {
    if let Some(timeout) = a.gate_timeout {
        if timeout < std::time::Duration::from_secs(1) {
            return Err(CliError::Usage(
                "--gate-timeout must be at least 1s: a gate needs time to be checked".into(),
            ));
        }
        record.options.gate_timeout_seconds = timeout.as_secs();
    }
    record.resume().map_err(CliError::Usage)?;
    if a.approve {
        record.approve();
    }
    Ok(())
}

/// `migrate plan` / `rotate-root plan`: the steps of a transition over every primary.
fn transition_plan(
    config: &Config,
    kind: TransitionKind,
    args: &TransitionPlanArgs,
) -> Result<(), CliError> {
    let drain = args.drain.unwrap_or(config.transition.drain);
    let options = transition_options(config, args);
    let scopes = scopes(config);
    let steps = transition::plan_steps(kind, &scopes, &options);
    if args.output.output == Format::Json {
        output::print_json(&steps);
        return Ok(());
    }
    let name = match kind {
        TransitionKind::Migrate => "migrate",
        TransitionKind::RotateRoot => "rotate-root",
    };
    println!(
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
        humantime::format_duration(drain),
        humantime::format_duration(config.transition.gate_timeout)
    );
    print_steps(&steps, true);
    Ok(())
}

fn check(config: &Config) -> Result<(), CliError> {
    println!("config {}: ok", config.file.display());
    println!("trust domain: {}", config.trust_domain);
    println!("state dir:    {}", config.state_dir.display());
    println!("root policy:  {}", config.default_policy);
    for c in config.topology.clusters() {
        match c.role {
            Role::Primary => println!(
                "  {} primary network={} policy={} target={}",
                c.name,
                c.network.as_deref().unwrap_or("-"),
                c.policy,
                c.target
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            Role::Remote => println!(
                "  {} remote  network={} served by {}",
                c.name,
                c.network.as_deref().unwrap_or("-"),
                c.primary.as_deref().unwrap_or("?")
            ),
        }
    }
    Ok(())
}
