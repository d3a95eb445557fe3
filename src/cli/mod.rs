//! The `cacertd` command line: argument parsing, command dispatch, exit codes.

mod args;
mod connect;
mod issue;
mod output;
mod revoke;
mod root;
mod transition;
mod transition_status;
mod trust_check;

use std::process::ExitCode;

use clap::Parser;

pub use crate::status::StatusReport;
pub use args::{
    Args, Command, DriveArgs, Format, MigrateCommand, RootCommand, RotateRootCommand,
    TransitionCommand, TransitionPlanArgs,
};

use crate::clock::{Clock, SystemClock};
use crate::config::{Config, ConfigError};
use crate::fsutil::FsError;
use crate::pki::PkiError;
use crate::plan::PlanOptions;
use crate::policy::PolicyViolation;
use crate::root_store::StoreError;
use crate::topology::{Cluster, Role};
use crate::transition::{TransitionKind, driver};

use issue::{issue, restart, serve, status, verify};
use root::{root_import, root_init, root_init_dry_run, root_request, root_show};
use transition::{migrate_start, rotate_root_start, transition_cmd, transition_plan};

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
    /// Refused as unsafe now (e.g. while a transition is under way).
    #[error("{0}")]
    Refused(String),
    /// Per-cluster results were already printed; this carries the exit code.
    #[error("{message}")]
    Partial { message: String, code: u8 },
}

impl CliError {
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) | CliError::Usage(_) => 2,
            CliError::Store(StoreError::AlreadyExists { .. } | StoreError::OtherAnchor { .. })
            | CliError::Refused(_) => 5,
            CliError::Store(StoreError::Unsupported { .. }) => 2,
            CliError::Store(StoreError::Material { .. }) => 3,
            CliError::Store(_) | CliError::Io(_) => 1,
            CliError::Material(_) | CliError::InvalidBundle(_) => 3,
            CliError::Policy(_) => 4,
            CliError::Partial { code, .. } => *code,
            CliError::Transition(e) => e.exit_code(),
        }
    }
}

/// Entry point of the binary: parses arguments, sets up logging, runs, maps errors to exit codes.
pub fn main() -> ExitCode {
    let args = Args::parse();
    let format =
        args.log_format
            .unwrap_or_else(|| match crate::config::log_format_of(&args.config) {
                Some(crate::config::LogFormat::Json) => args::LogFormat::Json,
                _ => args::LogFormat::Text,
            });
    init_tracing(args.verbose, format);
    if let Err(e) = crate::harden::forbid_core_dumps() {
        tracing::warn!(error = %e, "core dumps could not be turned off: a crash could write key material to disk");
    }
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

/// kube's client logs whole response bodies it cannot parse (at WARN) and response headers:
/// a body may be a Secret holding an intermediate key. Never shown, whatever the filter.
const NO_RESPONSE_BODIES: &str = "kube_client::client=off";

fn init_tracing(verbose: u8, format: args::LogFormat) {
    // vaultrs and rustify log every failed call at ERROR with terse messages; cacertd reports
    // those failures itself, with the path and what to do.
    let default = match verbose {
        0 => "warn,rustify=off,vaultrs=off",
        1 => "info,rustify=off,vaultrs=off",
        _ => "debug",
    };
    let wanted = std::env::var("RUST_LOG")
        .ok()
        .filter(|w| !w.trim().is_empty())
        .unwrap_or_else(|| default.to_string());
    let filter = tracing_subscriber::EnvFilter::try_new(format!("{wanted},{NO_RESPONSE_BODIES}"))
        .unwrap_or_else(|_| {
            tracing_subscriber::EnvFilter::new(format!("{default},{NO_RESPONSE_BODIES}"))
        });
    // Escape codes only where a person reads them: not in a file, a pipe or `kubectl logs`.
    use std::io::IsTerminal;
    let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(colour);
    let _ = match format {
        args::LogFormat::Text => builder.try_init(),
        args::LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
}

/// `cacertd version`: what this binary is, as a bug report needs it.
fn version(format: Format) {
    let fields = [
        ("version", env!("CARGO_PKG_VERSION")),
        ("commit", env!("CACERTD_GIT_COMMIT")),
        ("rustc", env!("CACERTD_RUSTC_VERSION")),
        ("crypto_provider", "aws-lc-rs (rustls)"),
    ];
    match format {
        Format::Json | Format::Yaml => output::print_as(
            format,
            &serde_json::Map::from_iter(
                fields
                    .iter()
                    .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v))),
            ),
        ),
        Format::Table => {
            for (k, v) in fields {
                say!("{k}: {v}");
            }
        }
    }
}

/// Runs one command; `clock` is the one time source of the whole run (the daemon and the
/// transition driver ask it too).
pub async fn run(args: Args, clock: std::sync::Arc<dyn Clock>) -> Result<(), CliError> {
    let Args {
        config: config_path,
        verbose: _,
        log_format: _,
        command,
    } = args;
    let now = clock.now();
    match command {
        // `verify` needs no configuration.
        Command::Verify(v) => verify(&v.dir, v.at.as_deref(), v.output.output, now),
        // Neither reads the configuration.
        Command::Version(o) => {
            version(o.output);
            Ok(())
        }
        Command::Completion { shell } => {
            use clap::CommandFactory;
            clap_complete::generate(
                shell,
                &mut Args::command(),
                "cacertd",
                &mut std::io::stdout(),
            );
            Ok(())
        }
        command => {
            let config = Config::load(&config_path)?;
            run_with_config(config, command, clock, now).await
        }
    }
}

/// A command that reads the configuration.
async fn run_with_config(
    config: Config,
    command: Command,
    clock: std::sync::Arc<dyn Clock>,
    now: time::OffsetDateTime,
) -> Result<(), CliError> {
    match command {
        Command::Root(r) => root_cmd(&config, r, now).await,
        Command::Issue(a) => {
            let opts = PlanOptions {
                force: a.force,
                danger_replace_trust_bundle: a.danger_replace_trust_bundle,
                keep_unknown_roots: a.keep_unknown_roots,
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
                keep_unknown_roots: false,
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
        Command::Status(a) => status(&config, &a.clusters, a.output.output, now).await,
        Command::Check { connect, output } => check_cmd(&config, connect, output.output).await,
        Command::Migrate(MigrateCommand::Plan(a)) => {
            transition_plan(&config, TransitionKind::Migrate, &a.plan, a.check).await
        }
        Command::Migrate(MigrateCommand::Start(a)) => {
            migrate_start(&config, &a.plan, &a.drive, &clock).await
        }
        Command::RotateRoot(RotateRootCommand::Plan(a)) => {
            transition_plan(&config, TransitionKind::RotateRoot, &a.plan, a.check).await
        }
        Command::RotateRoot(RotateRootCommand::Start(a)) => {
            rotate_root_start(&config, &a, &clock).await
        }
        Command::Transition(t) => transition_cmd(&config, t, &clock).await,
        Command::Revoke(a) => revoke::revoke(&config, &a, &clock).await,
        Command::Renew(a) => revoke::renew(&config, &a, &clock).await,
        Command::Crl(args::CrlCommand::Refresh(a)) => revoke::crl_refresh(&config, &a, now).await,
        Command::Serve { listen } => {
            let mut config = config;
            if let Some(addr) = listen {
                config.daemon.listen = addr;
            }
            serve(config, clock.clone()).await
        }
        Command::Restart(a) => restart(&config, a, now).await,
        Command::Verify(_) | Command::Version(_) | Command::Completion { .. } => {
            unreachable!("handled above")
        }
    }
}

/// `cacertd root …`.
async fn root_cmd(
    config: &Config,
    command: RootCommand,
    now: time::OffsetDateTime,
) -> Result<(), CliError> {
    match command {
        RootCommand::Init {
            csr: None,
            dry_run: true,
        } => root_init_dry_run(config).await,
        RootCommand::Init {
            csr: None,
            dry_run: false,
        } => root_init(config, now).await,
        RootCommand::Init { csr: Some(out), .. } => root_request(config, &out, now).await,
        RootCommand::Import {
            cert,
            key,
            chain,
            replace,
        } => {
            root_import(
                config,
                (&cert, key.as_deref(), chain.as_deref()),
                replace,
                now,
            )
            .await
        }
        RootCommand::Show(o) => root_show(config, o.output, now).await,
    }
}

/// `cacertd check [--connect]`.
async fn check_cmd(config: &Config, connect: bool, format: Format) -> Result<(), CliError> {
    let reached = match connect {
        true => Some(connect::reach(config).await),
        false => None,
    };
    match format {
        Format::Json | Format::Yaml => output::print_as(format, &check_json(config, &reached)),
        Format::Table => {
            check(config)?;
            if let Some(reached) = &reached {
                connect::print(reached);
            }
        }
    }
    reached.as_deref().map_or(Ok(()), connect::verdict)
}

/// A cluster named on the command line that the configuration does not have.
fn unknown_cluster(config: &Config, name: &str) -> CliError {
    CliError::Usage(format!(
        "unknown cluster {name:?} (known: {})",
        config
            .topology
            .clusters()
            .iter()
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    ))
}

/// The primaries named on the command line, or all of them.
fn select<'a>(config: &'a Config, names: &[String]) -> Result<Vec<&'a Cluster>, CliError> {
    if names.is_empty() {
        return Ok(config.topology.primaries().collect());
    }
    names
        .iter()
        .map(|n| match config.topology.get(n) {
            None => Err(unknown_cluster(config, n)),
            Some(c) if c.role == Role::Remote => Err(CliError::Usage(format!(
                "{n} is a remote cluster: it runs no istiod and gets no cacerts; its workloads are \
                 signed by primary {}",
                c.primary.as_deref().unwrap_or("?")
            ))),
            Some(c) => Ok(c),
        })
        .collect()
}

/// `check -o json`: the configuration as read, and with `--connect` what each cluster lacks.
fn check_json(config: &Config, reached: &Option<Vec<connect::Reached>>) -> serde_json::Value {
    let clusters: Vec<serde_json::Value> = config
        .topology
        .clusters()
        .iter()
        .map(|c| {
            serde_json::json!({
                "name": c.name,
                "role": c.role,
                "network": c.network,
                "policy": (c.role == Role::Primary).then_some(&c.policy),
                "served_by": c.primary,
                "target": c.target.as_ref().map(ToString::to_string),
            })
        })
        .collect();
    serde_json::json!({
        "config": config.file.display().to_string(),
        "trust_domain": config.trust_domain,
        "state_dir": config.state_dir.display().to_string(),
        "root_policy": config.default_policy,
        "clusters": clusters,
        "connect": reached,
    })
}

fn check(config: &Config) -> Result<(), CliError> {
    say!("config {}: ok", config.file.display());
    say!("trust domain: {}", config.trust_domain);
    say!("state dir:    {}", config.state_dir.display());
    say!("root policy:  {}", config.default_policy);
    for c in config.topology.clusters() {
        match c.role {
            Role::Primary => say!(
                "  {} primary network={} policy={} target={}",
                c.name,
                c.network.as_deref().unwrap_or("-"),
                c.policy,
                c.target
                    .as_ref()
                    .map(ToString::to_string)
                    .unwrap_or_default()
            ),
            Role::Remote => say!(
                "  {} remote  network={} served by {}",
                c.name,
                c.network.as_deref().unwrap_or("-"),
                c.primary.as_deref().unwrap_or("?")
            ),
        }
    }
    Ok(())
}
