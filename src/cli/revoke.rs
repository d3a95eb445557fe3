//! `cacertd revoke CLUSTER`: starts the revocation of a primary's intermediate
//! (`transition::revoke`), then drives it like any transition; `cacertd renew CLUSTER`, the
//! same without the revocation, for a renewal where the clusters serve lists; and `cacertd
//! crl refresh`, which keeps the lists of the CAs above the mesh CA current.

use super::CliError;
use super::args::{self, CrlRefreshArgs, FixedRunArgs, RenewArgs, RevokeArgs, RevokeReason};
use super::transition::{fixed_options, print_dry_run, run_drive, started};
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::pki::{Crl, Reason};
use crate::revocation::VaultListError;
use crate::transition::record_store::RecordStore;
use crate::transition::revoke::{RevokeRequest, start_revoke};

/// Reads every `X509 CRL` block of `paths`; a file that cannot be read is a usage error.
fn read_lists(paths: &[std::path::PathBuf]) -> Result<Vec<Crl>, CliError> {
    let mut lists = Vec::new();
    for path in paths {
        let what = path.display().to_string();
        let text = crate::fsutil::read_pem(path).map_err(|e| CliError::Usage(e.to_string()))?;
        lists.extend(Crl::all_from_pem(&text, &what)?);
    }
    Ok(lists)
}

/// `cacertd crl refresh [--chain-crl FILE...]`.
pub(super) async fn crl_refresh(
    config: &Config,
    args: &CrlRefreshArgs,
    now: time::OffsetDateTime,
) -> Result<(), CliError> {
    let fresh = read_lists(&args.chain_crl)?;
    if !crate::transition::in_flight(config).await.quiet {
        return Err(CliError::Refused(
            "a transition is under way (or its record cannot be read): it writes the clusters' \
             lists itself; refresh them once it is over"
                .into(),
        ));
    }
    let (fresh, signers) = lists_and_signers(config, fresh, args.dry_run, now).await?;
    let _lock = match args.dry_run {
        true => None,
        false => Some(StateLock::acquire(&config.state_dir)?),
    };
    let results =
        crate::revocation::refresh(config, &fresh, &signers, "crl-refresh", args.dry_run, now)
            .await;
    print_refreshed(args, &results);
    let failed = results.iter().filter(|r| r.failed()).count();
    if failed > 0 {
        return Err(CliError::Partial {
            message: format!("{failed} cluster(s) failed"),
            code: 1,
        });
    }
    Ok(())
}

/// The lists to put in place and who may have signed them: the lists given (or else fetched
/// where the chain says they are published), which must be signed by CAs above the mesh CA;
/// with the vault-pki store, also Vault's list, rebuilt now (unless `dry_run`), signed by the
/// mesh CA.
async fn lists_and_signers(
    config: &Config,
    fresh: Vec<Crl>,
    dry_run: bool,
    now: time::OffsetDateTime,
) -> Result<(Vec<Crl>, Vec<crate::pki::Cert>), CliError> {
    let store = crate::root_store::RootSource::open(config).await?;
    let gathered = gather_lists(&store, fresh, dry_run, now).await;
    store.close().await;
    gathered
}

async fn gather_lists(
    store: &crate::root_store::RootSource,
    mut fresh: Vec<Crl>,
    dry_run: bool,
    now: time::OffsetDateTime,
) -> Result<(Vec<Crl>, Vec<crate::pki::Cert>), CliError> {
    let certs = store
        .load_certs()
        .await?
        .ok_or_else(|| crate::root_store::StoreError::NoRoot {
            store: store.describe(),
        })?;
    // The CAs above the mesh CA: those between it and the anchor, and the anchor itself.
    let mut signers: Vec<crate::pki::Cert> = certs.between.iter().skip(1).cloned().collect();
    if !certs.between.is_empty() {
        signers.push(certs.anchor.clone());
    }
    refuse_strays(&fresh, &signers)?;
    // The lists of the CAs above the mesh CA, unless given: fetched where they are published.
    if fresh.is_empty() && !certs.between.is_empty() {
        let chain = certs.path();
        match crate::revocation::fetch_published(&chain).await {
            Ok(published) => fresh = published,
            // Vault's own list is still worth refreshing: said, not fatal.
            Err(e) if store.as_vault_pki().is_some() => {
                tracing::warn!(error = %e, "the company's lists are not refreshed; Vault's is");
            }
            Err(e) => {
                return Err(CliError::Partial {
                    message: format!("cannot fetch the published revocation lists: {e}"),
                    code: 1,
                });
            }
        }
    }
    // Where Vault signs the mesh CA's list: Vault's, rebuilt now.
    if let Some(pki) = store.as_vault_pki() {
        let min = crate::revocation::VAULT_LIST_MIN_LIFE;
        let list = crate::revocation::vault_list(pki, !dry_run, min, now)
            .await
            .map_err(|e| match e {
                VaultListError::Vault { store, source } => {
                    CliError::Store(crate::root_store::StoreError::Vault { store, source })
                }
                VaultListError::TooShort(why) => CliError::Refused(why),
            })?;
        fresh.push(list);
        signers.push(certs.signing_ca().clone());
    }
    if fresh.is_empty() {
        return Err(CliError::Usage(
            "nothing to refresh: the mesh CA is the anchor, and cacertd signs the mesh CA's \
             own lists (except with the vault-pki store, whose list this command fetches \
             from Vault)"
                .into(),
        ));
    }
    Ok((fresh, signers))
}

/// Refused: a list given that none of the CAs above the mesh CA (`signers`) signed.
fn refuse_strays(given: &[Crl], signers: &[crate::pki::Cert]) -> Result<(), CliError> {
    let Some(stray) = given
        .iter()
        .find(|l| !signers.iter().any(|c| l.signed_by(c)))
    else {
        return Ok(());
    };
    Err(CliError::Refused(format!(
        "the list of {} is signed by none of the CAs above the mesh CA ({}): cacertd signs the \
         mesh CA's and the intermediates' lists itself",
        stray.issuer(),
        match signers.is_empty() {
            true => "none: the mesh CA is the anchor".to_string(),
            false => signers
                .iter()
                .map(|c| c.info().subject.clone())
                .collect::<Vec<_>>()
                .join(", "),
        }
    )))
}

/// What `crl refresh` did, as a document or a line per primary.
fn print_refreshed(args: &CrlRefreshArgs, results: &[crate::revocation::Refreshed]) {
    match args.output.output {
        args::Format::Json | args::Format::Yaml => {
            super::output::print_as(args.output.output, &results)
        }
        args::Format::Table => {
            for r in results {
                say!("{}: {}: {}", r.cluster, r.result, r.detail);
            }
            if args.dry_run {
                say!("dry run: nothing was written");
            }
        }
    }
}

pub(super) async fn revoke(
    config: &Config,
    args: &RevokeArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let chain_lists = read_lists(&args.chain_crl)?;
    let request = RevokeRequest {
        cluster: args.cluster.clone(),
        reason: Some(match args.reason {
            RevokeReason::KeyCompromise => Reason::KeyCompromise,
            RevokeReason::Superseded => Reason::Superseded,
            RevokeReason::CessationOfOperation => Reason::CessationOfOperation,
        }),
        chain_lists,
    };
    let what = format!("revocation of {}'s intermediate", args.cluster);
    start_and_drive(config, request, (&what, &args.run), clock).await
}

pub(super) async fn renew(
    config: &Config,
    args: &RenewArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let request = RevokeRequest::renewal(&args.cluster);
    let what = format!("renewal of {}'s intermediate", args.cluster);
    start_and_drive(config, request, (&what, &args.run), clock).await
}

/// Starts the revocation (or renewal) `request` asks, then prints it (a dry run) or drives it.
async fn start_and_drive(
    config: &Config,
    request: RevokeRequest,
    (what, run): (&str, &FixedRunArgs),
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let options = fixed_options(config, run.max_parallel, run.approve_each_phase);
    let drive = &run.drive;
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let istiods = crate::transition::start::istiods(config).await?;
    let record = start_revoke(
        config,
        &store,
        &istiods,
        options,
        request,
        now,
        drive.dry_run,
    )
    .await?;
    if drive.dry_run {
        print_dry_run(config, &record, what, now);
        return Ok(());
    }
    started(&store, what, &record);
    run_drive(config, &store, drive, clock).await
}
