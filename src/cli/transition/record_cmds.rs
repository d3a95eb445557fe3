//! `transition status|resume|rollback|abort`: acting on the record of the transition under
//! way.

use super::*;

/// `transition status|resume|rollback|abort`.
pub(in crate::cli) async fn transition_cmd(
    config: &Config,
    cmd: TransitionCommand,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let files = RecordStore::open(config).await?;
    let dry_run = match &cmd {
        TransitionCommand::Status(o) => {
            let next = |record: &transition::Record| describe_next(config, record, now);
            return crate::cli::transition_status::show(&files, o.output, now, &next).await;
        }
        TransitionCommand::RemoveRoot(a) => return remove_root_start(config, a, clock).await,
        TransitionCommand::Resume(a) => a.drive.dry_run,
        TransitionCommand::Rollback(a) => a.drive.dry_run,
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
        return transition_dry_run(config, &files, &cmd, record, now);
    }
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    // Every command is noted in the audit log with the phase it left the transition in.
    let note = |event: &str, record: &transition::Record, detail: Option<String>| {
        audit.note(now, event, None, record.phase.name(), None, detail);
    };
    match cmd {
        TransitionCommand::Status(_) | TransitionCommand::RemoveRoot(_) => Ok(()),
        TransitionCommand::Resume(a) => {
            resume_record(&mut record, &a, now)?;
            files.save(&record).await?;
            if let Some(timeout) = a.gate_timeout {
                let detail = format!(
                    "every gate from now on may wait {}",
                    crate::clock::fmt_duration(timeout)
                );
                note("transition-gate-timeout", &record, Some(detail));
            }
            let confirmed = record
                .applied
                .then(|| "the folders are applied".to_string());
            note("transition-resume", &record, confirmed);
            run_drive_as(config, &files, &a.drive, clock, a.output.output).await
        }
        TransitionCommand::Rollback(a) => {
            record.rollback().map_err(CliError::Usage)?;
            record.note(now, "rollback asked");
            files.save(&record).await?;
            note("transition-rollback", &record, None);
            run_drive_as(config, &files, &a.drive, clock, a.output.output).await
        }
        TransitionCommand::Abort(a) => {
            let new_root = abandon_new_root(config, &record).await?;
            files.archive(&record, now).await?;
            note("transition-abort", &record, new_root.clone());
            let trusted = trusted_besides_the_root(config, &record).await;
            print_aborted(a.output.output, &record, new_root, &trusted);
            Ok(())
        }
    }
}

/// What `transition abort` left: where the transition was forgotten, what became of the new
/// root, and the roots clusters still trust besides the common root.
fn print_aborted(
    format: Format,
    record: &transition::Record,
    new_root: Option<String>,
    trusted: &[String],
) {
    if format.structured() {
        output::print_as(
            format,
            &serde_json::json!({
                "transition": record.kind.name(),
                "forgotten_at": record.position(),
                "new_root": new_root,
                "still_trusted": trusted,
            }),
        );
        return;
    }
    say!(
        "transition forgotten at phase {}; clusters keep what they serve now",
        record.phase
    );
    if let Some(new_root) = new_root {
        say!("{new_root}");
    }
    for line in trusted {
        say!("{line}");
    }
}

/// After an abort: the roots each of the transition's clusters still trusts besides the common
/// root — nothing removes them now, and `status` flags them from here on.
async fn trusted_besides_the_root(config: &Config, record: &transition::Record) -> Vec<String> {
    let root = match crate::root_store::RootSource::open(config).await {
        Ok(store) => store.load_cert().await.ok().flatten(),
        Err(_) => None,
    };
    let Some(root) = root else {
        return vec![
            "the root store could not be read: run `cacertd status` to see which roots \
                     each cluster trusts"
                .into(),
        ];
    };
    let mut lines = Vec::new();
    for cluster in config.topology.primaries() {
        if !record.clusters.contains_key(&cluster.name) {
            continue;
        }
        let served = match crate::cluster::Target::open(cluster, config).await {
            Ok(target) => target.read().await.map(|o| o.snapshot.cacerts),
            Err(e) => Err(e),
        };
        let bundle = match served {
            Ok(Some(files)) => crate::pki::TrustBundle::from_pem_lenient(&files.root_cert).0,
            Ok(None) => continue,
            Err(e) => {
                lines.push(format!("{}: cannot be read ({e})", cluster.name));
                continue;
            }
        };
        for other in bundle.roots().iter().filter(|r| **r != root) {
            let known = config.extra_roots.contains(other);
            lines.push(format!(
                "{} still trusts root {} (sha256 {}){}",
                cluster.name,
                other.info().subject,
                other.info().fingerprint_sha256,
                match known {
                    true => ", one of extra_trusted_roots",
                    false => ": `cacertd status` flags it from now on",
                }
            ));
        }
    }
    lines
}

/// An aborted root rotation's new root: its waiting key is destroyed unless a cluster was
/// ever given a signer under it (then the key may still be needed to move those clusters on,
/// and is kept). Says which, for the operator and the audit log.
async fn abandon_new_root(
    config: &Config,
    record: &transition::Record,
) -> Result<Option<String>, CliError> {
    if record.kind != transition::TransitionKind::RotateRoot || record.root_swapped {
        return Ok(None);
    }
    let store = crate::root_store::rotation::open(config)
        .await
        .map_err(transition::driver::DriveError::from)?;
    let place = store.pending_location();
    if record.new_signer_used {
        return Ok(Some(format!(
            "the new root waiting in {place} is kept: clusters were given intermediates under \
             it, and its key may be needed to move them on"
        )));
    }
    if store.keeps_key_inside() {
        return Ok(Some(format!(
            "the new root {place} stays in Vault (its key never leaves it); a later \
             `rotate-root start` moves it aside"
        )));
    }
    let destroyed = store
        .destroy_pending()
        .await
        .map_err(transition::driver::DriveError::from)?;
    Ok(destroyed
        .map(|what| format!("destroyed {what}: nothing was ever signed under the new root")))
}

/// `--dry-run` of `resume`, `rollback` and `abort`: what they would do, changing nothing.
fn transition_dry_run(
    config: &Config,
    files: &RecordStore,
    cmd: &TransitionCommand,
    mut record: transition::Record,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    let what = match cmd {
        TransitionCommand::Resume(a) => {
            resume_record(&mut record, a, now)?;
            "resumed transition"
        }
        TransitionCommand::Rollback(_) => {
            record.rollback().map_err(CliError::Usage)?;
            "rollback"
        }
        _ => {
            say!(
                "dry run: would move the record and material in {} aside (nothing is \
                 deleted) and forget the transition ({}, {}); no cluster would be touched. \
                 Nothing was changed.",
                files.describe(),
                record.position(),
                record.state.describe()
            );
            return Ok(());
        }
    };
    print_dry_run(config, &record, what, now);
    Ok(())
}

/// What `transition resume` changes in the record: a stopped transition goes on, an approval
/// is noted, and a new gate timeout replaces the one it started with.
fn resume_record(
    record: &mut transition::Record,
    a: &args::ResumeArgs,
    now: OffsetDateTime,
) -> Result<(), CliError> {
    if let Some(timeout) = a.gate_timeout {
        if timeout < std::time::Duration::from_secs(1) {
            return Err(CliError::Usage(
                "--gate-timeout must be at least 1s: a gate needs time to be checked".into(),
            ));
        }
        record.options.gate_timeout_seconds = timeout.as_secs();
    }
    let stopped = matches!(
        record.state,
        transition::State::Failed { .. } | transition::State::Held { .. }
    );
    record.resume().map_err(CliError::Usage)?;
    if stopped {
        record.note(now, "resumed");
    }
    if a.approve {
        // After a step's writes to folders nobody observes, the approval says they are
        // applied; before a phase (--approve-each-phase), that the phase may begin.
        match transition::next_step(record, now) {
            transition::Step::AwaitApplied { .. } => {
                record.confirm_applied();
                record.note(now, "an operator confirmed the folders are applied");
            }
            _ => {
                record.approve();
                record.note(now, format!("an operator approved phase {}", record.phase));
            }
        }
    }
    Ok(())
}
