//! `cacertd issue`, `status`, `verify`, `restart` and `serve`: the everyday commands.

use std::io::Write;
use std::path::Path;

use time::OffsetDateTime;

use super::root::root_init_in;
use super::{CliError, Format, select};
use super::{args, output};
use crate::clock::Clock;
use crate::cluster::DirTarget;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::issuance::{self, Outcome};
use crate::pki::verify_cacerts;
use crate::plan::PlanOptions;
use crate::root_store::{RootSource, StoreError};

pub(super) async fn issue(
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
        let info = root_init_in(config, &store, now).await?;
        if format.structured() {
            // stdout carries one document: the issuance's.
            eprintln!(
                "created root in {} (sha256 {})",
                store.describe(),
                info.fingerprint_sha256
            );
        } else {
            say!("created root in {}", store.describe());
            output::print_root(&mut std::io::stdout(), &info, now);
        }
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
    let signer = store.clone().signer().await?;
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    let reports = issuance::run(config, &signer, &audit, &clusters, opts, dry_run, now).await;
    drop(signer);
    store.close().await;
    match format {
        Format::Json | Format::Yaml => output::print_as(format, &reports),
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

pub(super) async fn status(
    config: &Config,
    clusters: &[String],
    format: Format,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    // Named clusters must exist (remotes too: they have a status row).
    if let Some(name) = clusters.iter().find(|n| config.topology.get(n).is_none()) {
        return Err(super::unknown_cluster(config, name));
    }
    let only = (!clusters.is_empty()).then_some(clusters);
    let source = RootSource::open(config).await?;
    let certs = source.load_certs().await;
    source.close().await;
    let store = source.describe();
    let none = std::collections::HashMap::new();
    let report =
        crate::status::status_report(config, &store, certs?.as_ref(), (&none, only), now).await;
    match format {
        Format::Json | Format::Yaml => output::print_as(format, &report),
        Format::Table => output::print_status(&mut std::io::stdout(), &store, &report),
    }
    // A cluster that could not be read is not a healthy status, however it is printed.
    let unread = report.clusters.iter().filter(|c| c.error.is_some()).count();
    if unread > 0 {
        return Err(CliError::Partial {
            message: format!("{unread} cluster(s) could not be read"),
            code: 1,
        });
    }
    Ok(())
}

/// `--at`: an RFC 3339 time (`2027-01-01T12:00:00Z`) or a date (`2027-01-01`, midnight UTC).
fn parse_at(s: &str) -> Result<OffsetDateTime, CliError> {
    if let Ok(t) = OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
        return Ok(t);
    }
    let date = time::macros::format_description!("[year]-[month]-[day]");
    time::Date::parse(s, &date)
        .map(|d| d.midnight().assume_utc())
        .map_err(|_| {
            CliError::Usage(format!(
                "--at {s:?}: not a date (2027-01-01) or an RFC 3339 time (2027-01-01T12:00:00Z)"
            ))
        })
}

pub(super) fn verify(
    dir: &Path,
    at: Option<&str>,
    format: Format,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let at = match at {
        Some(s) => parse_at(s)?,
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
        (_, Format::Json | Format::Yaml) => {
            output::print_as(format, &output::verify_json(dir, &result, at))
        }
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

pub(super) async fn restart(
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
        dry_run: a.dry_run,
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
        Format::Json | Format::Yaml => output::print_as(a.output.output, &all),
        Format::Table => {
            output::print_restarts(&mut std::io::stdout(), &all);
            if a.dry_run {
                say!("dry run: nothing was restarted");
            }
        }
    }
    if !failures.is_empty() {
        return Err(CliError::Partial {
            message: format!("restart stopped in the mesh of {}", failures.join(", ")),
            code: 1,
        });
    }
    Ok(())
}

pub(super) async fn serve(
    config: Config,
    clock: std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
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
