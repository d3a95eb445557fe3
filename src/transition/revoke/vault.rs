//! The mesh CA's list when Vault's PKI engine signs it (vault-pki): Vault revokes the
//! intermediate it issued and keeps the list; cacertd publishes what Vault signs, once it lasts
//! long enough, and keeps the list from before a revocation until the revocation is recorded.

use super::*;

use crate::revocation::VAULT_LIST_MIN_LIFE;

/// The mesh CA's lists before and after the revocation, from Vault's PKI engine, whose issuer
/// signs them: its list now (rebuilt, so it is fresh), then — once that list is kept in the
/// state directory, so a run interrupted after Vault revoked still has it — the revocation
/// in Vault and the list Vault rebuilt with it. A dry run revokes nothing: the list before
/// stands in for both.
pub(super) async fn signed_by_vault(
    config: &Config,
    pki: &crate::root_store::VaultPki,
    revoked: &Cert,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<(Crl, Crl), DriveError> {
    let vault =
        |e: crate::root_store::VaultError| DriveError::NewRoot(format!("{}: {e}", pki.describe()));
    let serial = revoked.info().serial.clone();
    let kept = kept_list(config, revoked);
    let current = vault_list_now(pki, now, dry_run).await?;
    let before = match current.lists(revoked) {
        false => current,
        // Revoked in Vault by a run that stopped before it was recorded: its list before.
        true => crate::fsutil::read_optional(&kept)
            .ok()
            .flatten()
            .and_then(|pem| Crl::all_from_pem(&pem, &kept.display().to_string()).ok())
            .and_then(|mut l| l.pop())
            .filter(|l| !l.lists(revoked))
            .ok_or_else(|| {
                DriveError::UnsafeForMesh(format!(
                    "{} lists {}'s intermediate (serial {serial}) already, and no list of \
                     Vault's from before it is kept in {}: publishing Vault's list now would \
                     cut off the cluster's workloads before they hold certificates from a \
                     successor. Run `cacertd issue --force` for the cluster, restart its \
                     workloads, then `cacertd crl refresh`",
                    pki.describe(),
                    revoked.info().subject,
                    kept.display()
                ))
            })?,
    };
    let after = match dry_run {
        true => before.clone(),
        false => {
            crate::fsutil::write_atomic(
                &kept,
                &crls_pem(std::slice::from_ref(&before)),
                crate::fsutil::Mode::Public,
            )
            .map_err(|e| DriveError::NewRoot(e.to_string()))?;
            pki.revoke(&serial).await.map_err(vault)?;
            let after = pki.revocation_list().await.map_err(vault)?;
            if !after.lists(revoked) {
                return Err(DriveError::NewRoot(format!(
                    "{} revoked serial {serial}, but its rebuilt list does not name it",
                    pki.describe()
                )));
            }
            after
        }
    };
    if !dry_run {
        long_enough(pki, &before, now)?;
        long_enough(pki, &after, now)?;
    }
    Ok((before, after))
}

/// Vault's list as it stands, rebuilt (unless `dry_run`) so that it is fresh.
pub(super) async fn vault_list_now(
    pki: &crate::root_store::VaultPki,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Crl, DriveError> {
    use crate::revocation::VaultListError;
    let list = crate::revocation::vault_list(pki, !dry_run, VAULT_LIST_MIN_LIFE, now)
        .await
        .map_err(|e| match e {
            VaultListError::Vault { .. } => DriveError::NewRoot(e.to_string()),
            VaultListError::TooShort(why) => DriveError::UnsafeForMesh(why),
        })?;
    if !dry_run {
        long_enough(pki, &list, now)?;
    }
    Ok(list)
}

/// Where Vault's list from before a revocation of `revoked` waits until the revocation is
/// recorded.
pub(super) fn kept_list(config: &Config, revoked: &Cert) -> std::path::PathBuf {
    config.state_dir.join(format!(
        "revocation-{}-list-before.pem",
        revoked.info().serial
    ))
}

fn long_enough(
    pki: &crate::root_store::VaultPki,
    list: &Crl,
    now: OffsetDateTime,
) -> Result<(), DriveError> {
    crate::revocation::long_enough(pki, list, VAULT_LIST_MIN_LIFE, now)
        .map_err(DriveError::UnsafeForMesh)
}
