//! `cacertd revoke CLUSTER`: starts the revocation of a primary's intermediate
//! (`transition::revoke`), then drives it like any transition.

use super::CliError;
use super::args::{self, RevokeArgs, RevokeReason, TransitionPlanArgs};
use super::transition::{print_dry_run, run_drive, started, transition_options};
use crate::clock::Clock;
use crate::config::Config;
use crate::fsutil::StateLock;
use crate::pki::{Crl, Reason};
use crate::transition::record_store::RecordStore;
use crate::transition::revoke::{RevokeRequest, start_revoke};

pub(super) async fn revoke(
    config: &Config,
    args: &RevokeArgs,
    clock: &std::sync::Arc<dyn Clock>,
) -> Result<(), CliError> {
    let now = clock.now();
    let mut chain_lists = Vec::new();
    for path in &args.chain_crl {
        let what = path.display().to_string();
        let text = std::fs::read(path).map_err(|e| CliError::Usage(format!("{what}: {e}")))?;
        chain_lists.extend(Crl::all_from_pem(&text, &what)?);
    }
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
    let plan = TransitionPlanArgs {
        drain: None,
        skip_workload_restarts: false,
        wait_for_renewal: false,
        approve_each_phase: args.approve_each_phase,
        max_parallel: args.max_parallel,
        output: args::OutputArgs {
            output: args::Format::Table,
        },
    };
    let options = transition_options(config, &plan);
    let record = start_revoke(config, &store, options, request, now, args.drive.dry_run).await?;
    let what = format!("revocation of {}'s intermediate", args.cluster);
    if args.drive.dry_run {
        print_dry_run(config, &record, &what, now);
        return Ok(());
    }
    started(&store, &what, &record);
    run_drive(config, &store, &args.drive, clock).await
}
