//! Keeping the revocation lists every primary serves current (README, "When a key leaks"):
//! a list past its nextUpdate makes every proxy reject every chain it covers (docs/istio.md
//! §14), so each is replaced by a newer one of the same signer before it expires. The lists
//! of the CAs above the mesh CA come from the operator's PKI (`crl refresh --chain-crl`, or
//! fetched where the certificates say they are published, [`fetch_published`]); the
//! mesh CA's, when Vault's PKI engine signs it, from Vault — by hand with `crl refresh`, and
//! by `serve` once it is due ([`due_for_refresh`]).

use time::OffsetDateTime;

mod published;
pub use published::{FETCH_TIMEOUT, MAX_LIST_BYTES, fetch_published};

use crate::cluster::{CacertsWriter, Material, Target, WriteError, WriteMeta};
use crate::config::Config;
use crate::pki::{CaCertsFiles, Cert, Crl, crls_pem, refreshed, without_lapsed};
use crate::root_store::{VaultError, VaultPki};

/// What a refresh did to one primary.
#[derive(Clone, Debug, serde::Serialize)]
pub struct Refreshed {
    pub cluster: String,
    /// `refreshed`, `would refresh`, `unchanged`, `no lists` or `failed`.
    pub result: &'static str,
    pub detail: String,
}

impl Refreshed {
    pub fn failed(&self) -> bool {
        self.result == "failed"
    }
}

/// Puts each of `fresh` (signed by one of `signers`) in place of the older list of the same
/// signer in every primary that serves lists: one checked write per primary whose lists
/// change, audited as `actor`; with `dry_run`, says what would change and writes nothing.
/// The caller holds the state lock and has checked that no transition is under way (it
/// writes the lists itself).
pub async fn refresh(
    config: &Config,
    fresh: &[Crl],
    signers: &[Cert],
    actor: &'static str,
    dry_run: bool,
    now: OffsetDateTime,
) -> Vec<Refreshed> {
    let audit = crate::audit::Audit::new(config.daemon.audit_log.clone());
    let writer = CacertsWriter::new(&config.trust_domain, &audit, actor);
    let mut results = Vec::new();
    for cluster in config.topology.primaries() {
        let lists = Lists {
            fresh,
            signers,
            dry_run,
            now,
        };
        let (result, detail) = refresh_one(config, &writer, cluster, lists)
            .await
            .unwrap_or_else(|detail| ("failed", detail));
        results.push(Refreshed {
            cluster: cluster.name.clone(),
            result,
            detail,
        });
    }
    results
}

/// What [`refresh`] puts in place, and how.
#[derive(Clone, Copy)]
struct Lists<'a> {
    fresh: &'a [Crl],
    signers: &'a [Cert],
    dry_run: bool,
    now: OffsetDateTime,
}

/// [`refresh`] in one primary: what it did, in a word and in words.
async fn refresh_one(
    config: &Config,
    writer: &CacertsWriter<'_>,
    cluster: &crate::topology::Cluster,
    lists: Lists<'_>,
) -> Result<(&'static str, String), String> {
    let Lists {
        fresh,
        signers,
        dry_run,
        now,
    } = lists;
    let target = Target::open(cluster, config)
        .await
        .map_err(|e| e.to_string())?;
    let observed = target.read().await.map_err(|e| e.to_string())?;
    let Some(current) = observed.snapshot.cacerts.clone() else {
        return Ok(("no lists", "no cacerts".to_string()));
    };
    let lists =
        Crl::all_from_pem(&current.ca_crl, CaCertsFiles::CA_CRL).map_err(|e| e.to_string())?;
    if lists.is_empty() {
        return Ok(("no lists", "its cacerts has no ca-crl.pem".to_string()));
    }
    let (lists, replaced) = refreshed(&lists, fresh, signers)?;
    let (chain, _) = Cert::lenient_from_pem(&current.cert_chain, CaCertsFiles::CERT_CHAIN);
    let kept = without_lapsed(&lists, &chain, now);
    let lapsed = lists.len() - kept.len();
    if replaced + lapsed == 0 {
        return Ok((
            "unchanged",
            "it serves these lists or newer ones".to_string(),
        ));
    }
    let files = CaCertsFiles {
        ca_crl: crls_pem(&kept),
        ..current
    };
    writer.check(&files, Material::ServedBefore, now)?;
    let detail = match lapsed {
        0 => format!("{replaced} list(s) replaced"),
        n => format!(
            "{replaced} list(s) replaced, {n} lapsed list(s) of CAs no longer in use left out"
        ),
    };
    if dry_run {
        return Ok(("would refresh", detail));
    }
    let meta = WriteMeta {
        cluster: cluster.name.clone(),
        serial: Cert::one_from_pem(&files.ca_cert, CaCertsFiles::CA_CERT)
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

/// Why Vault's list cannot be published.
#[derive(Debug, thiserror::Error)]
pub enum VaultListError {
    /// Vault did not answer as asked.
    #[error("{store}: {source}")]
    Vault { store: String, source: VaultError },
    /// The list would expire too soon ([`long_enough`]).
    #[error("{0}")]
    TooShort(String),
}

/// The mesh CA's list as Vault signs it: rebuilt first unless `rebuild` is false (a dry run
/// changes nothing in Vault either). Refused with less than `min_life` left, since publishing
/// it would soon cut every chain off; a list not rebuilt is judged by how long Vault makes its
/// lists last, as a rebuild would make it.
pub async fn vault_list(
    pki: &VaultPki,
    rebuild: bool,
    min_life: time::Duration,
    now: OffsetDateTime,
) -> Result<Crl, VaultListError> {
    let vault = |source: VaultError| VaultListError::Vault {
        store: pki.describe(),
        source,
    };
    if rebuild {
        pki.rebuild_revocation_lists().await.map_err(vault)?;
    }
    let list = pki.revocation_list().await.map_err(vault)?;
    let at = if rebuild { now } else { list.this_update() };
    long_enough(pki, &list, min_life, at).map_err(VaultListError::TooShort)?;
    Ok(list)
}

/// Refused when `list` (Vault's) has less than `min_life` left.
pub fn long_enough(
    pki: &VaultPki,
    list: &Crl,
    min_life: time::Duration,
    now: OffsetDateTime,
) -> Result<(), String> {
    let left = list.next_update().map(|n| n - now);
    if left.is_some_and(|l| l >= min_life) {
        return Ok(());
    }
    let show = |d: time::Duration| crate::clock::fmt_duration(d.try_into().unwrap_or_default());
    Err(format!(
        "{}'s revocation list has {} left: every proxy rejects every chain through a CA whose \
         list has expired, so cacertd publishes only lists with at least {} left. Set a longer \
         expiry (vault write {}/config/crl expiry=720h)",
        pki.describe(),
        left.map_or("no expiry stated, so none".into(), show),
        show(min_life),
        pki.mount
    ))
}

/// The least life a list Vault signs must have when cacertd publishes it: room for the
/// revocation to finish, for `serve` to publish the next list ten days before this one
/// expires ([`REFRESH_BEFORE`]), and for the alert a week before, if that
/// fails. Vault's default CRL expiry (72h) is refused; 720h is a good setting.
pub const VAULT_LIST_MIN_LIFE: time::Duration = time::Duration::days(14);

/// A list Vault signs is replaced at the latest this long before it expires: three days before
/// `CacertdRevocationListExpiringSoon` fires (7 days), so the alert means the refresh failed.
pub const REFRESH_BEFORE: time::Duration = time::Duration::days(10);

/// Whether a list is due to be replaced at `now`: half of its life (from thisUpdate to
/// nextUpdate) has passed, or less than [`REFRESH_BEFORE`] is left, or it states no end.
pub fn due_for_refresh(list: &Crl, now: OffsetDateTime) -> bool {
    match list.next_update() {
        None => true,
        Some(next) => {
            now >= list.this_update() + (next - list.this_update()) / 2
                || next - now < REFRESH_BEFORE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::{fixtures, sign_crl};
    use time::Duration;

    #[test]
    fn a_list_is_due_at_half_its_life_or_ten_days_before_it_ends() {
        let root = fixtures::root();
        let t0 = fixtures::now();
        let list =
            |life: Duration| sign_crl(root.cert(), root.key(), &[], 1, t0, t0 + life).unwrap();
        // A 30-day list: due after 15 days.
        let month = list(Duration::days(30));
        assert!(!due_for_refresh(&month, t0 + Duration::days(14)));
        assert!(due_for_refresh(&month, t0 + Duration::days(15)));
        // A year's list: at half its life, long before ten days are left.
        let year = list(Duration::days(365));
        assert!(!due_for_refresh(&year, t0 + Duration::days(182)));
        assert!(due_for_refresh(&year, t0 + Duration::days(183)));
        // A 14-day list: due with ten days left, before half its life.
        let fortnight = list(Duration::days(14));
        assert!(!due_for_refresh(&fortnight, t0 + Duration::days(3)));
        assert!(due_for_refresh(
            &fortnight,
            t0 + Duration::days(4) + Duration::seconds(1)
        ));
    }
}
