//! `cacertd revoke CLUSTER`: starts the revocation of a primary's intermediate
//! (`transition::revoke`), then drives it like any transition; and `cacertd crl refresh`,
//! which keeps the lists of the CAs above the mesh CA current.

use super::CliError;
use super::args::{self, CrlRefreshArgs, RevokeArgs, RevokeReason};
use super::transition::{fixed_options, print_dry_run, run_drive, started};
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::pki::{Crl, Reason};
use crate::transition::record_store::RecordStore;
use crate::transition::revoke::{RevokeRequest, start_revoke};

/// Reads every `X509 CRL` block of `paths`; a file that cannot be read is a usage error.
fn read_lists(paths: &[std::path::PathBuf]) -> Result<Vec<Crl>, CliError> {
    let mut lists = Vec::new();
    for path in paths {
        let what = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| CliError::Usage(format!("{what}: {e}")))?;
        lists.extend(Crl::all_from_pem(&text, &what)?);
    }
    Ok(lists)
}

/// What `crl refresh` did to one primary.
#[derive(serde::Serialize)]
struct Refreshed {
    cluster: String,
    /// `refreshed`, `would refresh`, `unchanged`, `no lists` or `failed`.
    result: &'static str,
    detail: String,
}

/// `cacertd crl refresh --chain-crl FILE...`.
pub(super) async fn crl_refresh(
    config: &Config,
    args: &CrlRefreshArgs,
    now: time::OffsetDateTime,
) -> Result<(), CliError> {
    use crate::cluster::{CacertsWriter, Material, Target, WriteError, WriteMeta};
    use crate::pki::{CaCertsFiles, crls_pem, refreshed};
    let fresh = read_lists(&args.chain_crl)?;
    if !crate::transition::in_flight(config).await.quiet {
        return Err(CliError::Refused(
            "a transition is under way (or its record cannot be read): it writes the clusters' \
             lists itself; refresh them once it is over"
                .into(),
        ));
    }
    let store = crate::root_store::RootSource::open(config).await?;
    let certs = store
        .load_certs()
        .await?
        .ok_or_else(|| crate::root_store::StoreError::NoRoot {
            store: store.describe(),
        })?;
    store.close().await;
    // The CAs above the mesh CA: those between it and the anchor, and the anchor itself.
    let mut above: Vec<crate::pki::Cert> = certs.between.iter().skip(1).cloned().collect();
    if !certs.between.is_empty() {
        above.push(certs.anchor.clone());
    }
    if let Some(stray) = fresh.iter().find(|l| !above.iter().any(|c| l.signed_by(c))) {
        return Err(CliError::Refused(format!(
            "the list of {} is signed by none of the CAs above the mesh CA ({}): cacertd \
             signs the mesh CA's and the intermediates' lists itself",
            stray.issuer(),
            match above.is_empty() {
                true => "none: the mesh CA is the anchor".to_string(),
                false => above
                    .iter()
                    .map(|c| c.info().subject.clone())
                    .collect::<Vec<_>>()
                    .join(", "),
            }
        )));
    }
    let _lock = match args.dry_run {
        true => None,
        false => Some(StateLock::acquire(&config.state_dir)?),
    };
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    let writer = CacertsWriter::new(&config.trust_domain, &audit, "crl-refresh");
    let mut results = Vec::new();
    for cluster in config.topology.primaries() {
        let name = cluster.name.clone();
        let outcome = async {
            let target = Target::open(cluster, config)
                .await
                .map_err(|e| e.to_string())?;
            let observed = target.read().await.map_err(|e| e.to_string())?;
            let Some(current) = observed.snapshot.cacerts.clone() else {
                return Ok(("no lists", "no cacerts".to_string()));
            };
            let lists = Crl::all_from_pem(&current.ca_crl, CaCertsFiles::CA_CRL)
                .map_err(|e| e.to_string())?;
            if lists.is_empty() {
                return Ok(("no lists", "its cacerts has no ca-crl.pem".to_string()));
            }
            let (lists, replaced) = refreshed(&lists, &fresh, &above)?;
            if replaced == 0 {
                return Ok((
                    "unchanged",
                    "it serves these lists or newer ones".to_string(),
                ));
            }
            let files = CaCertsFiles {
                ca_crl: crls_pem(&lists),
                ..current
            };
            writer.check(&files, Material::ServedBefore, now)?;
            let detail = format!("{replaced} list(s) replaced");
            if args.dry_run {
                return Ok(("would refresh", detail));
            }
            let meta = WriteMeta {
                cluster: name.clone(),
                serial: crate::pki::Cert::one_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT)
                    .map(|c| c.info().serial.clone())
                    .unwrap_or_default(),
                written_at: now,
                reason: "revocation lists refreshed".into(),
                retention: Some(config.backups),
            };
            writer
                .write(&target, &files, Material::ServedBefore, &meta, &observed)
                .await
                .map_err(|e: WriteError| e.to_string())?;
            Ok(("refreshed", detail))
        }
        .await;
        results.push(match outcome {
            Ok((result, detail)) => Refreshed {
                cluster: name,
                result,
                detail,
            },
            Err(detail) => Refreshed {
                cluster: name,
                result: "failed",
                detail,
            },
        });
    }
    match args.output.output {
        args::Format::Json | args::Format::Yaml => {
            super::output::print_as(args.output.output, &results)
        }
        args::Format::Table => {
            for r in &results {
                say!("{}: {}: {}", r.cluster, r.result, r.detail);
            }
            if args.dry_run {
                say!("dry run: nothing was written");
            }
        }
    }
    let failed = results.iter().filter(|r| r.result == "failed").count();
    if failed > 0 {
        return Err(CliError::Partial {
            message: format!("{failed} cluster(s) failed"),
            code: 1,
        });
    }
    Ok(())
}

pub(super) async fn revoke(
    config: &Config,
    args: &RevokeArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let chain_lists = read_lists(&args.chain_crl)?;
    let request = RevokeRequest {
        cluster: args.cluster.clone(),
        reason: match args.reason {
            RevokeReason::KeyCompromise => Reason::KeyCompromise,
            RevokeReason::Superseded => Reason::Superseded,
            RevokeReason::CessationOfOperation => Reason::CessationOfOperation,
        },
        chain_lists,
    };
    let _lock = StateLock::acquire(&config.state_dir)?;
    let store = RecordStore::open(config).await?;
    let options = fixed_options(config, args.max_parallel, args.approve_each_phase);
    let istiods = crate::transition::start::istiods(config).await?;
    let record = start_revoke(
        config,
        &store,
        &istiods,
        options,
        request,
        now,
        args.drive.dry_run,
    )
    .await?;
    let what = format!("revocation of {}'s intermediate", args.cluster);
    if args.drive.dry_run {
        print_dry_run(config, &record, &what, now);
        return Ok(());
    }
    started(&store, &what, &record);
    run_drive(config, &store, &args.drive, clock).await
}
