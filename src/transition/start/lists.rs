//! Revocation lists through a root rotation, where the primaries serve them (README, "When a
//! key leaks"). A proxy that checks lists rejects a chain through a CA without one, and picks a
//! CA's list by the CA's name (docs/istio.md §14). So before anything signs under the new
//! root, every primary serves, besides the lists it has, a list from the new root and from
//! every new intermediate — each of those named apart from its predecessor — and keeps both
//! roots' lists while both are trusted; once the old root is gone, only the new CAs' lists
//! are served (chains through the old CAs end at a root nobody trusts any more).

use super::*;
use crate::pki::{Crl, crls_pem, sign_crl, verify_ca_crl, without_lapsed};

/// The lists the primaries that move serve: the newest of each CA (by name), lapsed lists of
/// CAs outside their chains left out; `None` when none of them serves lists.
pub(super) fn served(
    moving: &[(&crate::topology::Cluster, CaCertsFiles)],
    now: OffsetDateTime,
) -> Result<Option<Vec<Crl>>, DriveError> {
    let mut newest: Vec<Crl> = Vec::new();
    let mut any = false;
    for (cluster, set) in moving {
        if !set.has_lists() {
            continue;
        }
        any = true;
        let lists = verify_ca_crl(set, now).map_err(|reason| DriveError::CurrentMaterial {
            cluster: cluster.name.clone(),
            reason: format!("its revocation lists cannot be carried: {reason}"),
        })?;
        let (chain, _) = Cert::lenient_from_pem(&set.cert_chain, CaCertsFiles::CERT_CHAIN);
        for list in without_lapsed(&lists, &chain, now) {
            match newest.iter_mut().find(|k| k.issuer() == list.issuer()) {
                Some(kept)
                    if (list.number(), list.this_update())
                        > (kept.number(), kept.this_update()) =>
                {
                    *kept = list;
                }
                Some(_) => {}
                None => newest.push(list),
            }
        }
    }
    Ok(any.then_some(newest))
}

/// Refused where the new root (`new`, below the CAs `above` it) cannot be told apart from the
/// current one by name, or a CA above it has no list among `served` (cacertd cannot sign one
/// for it).
pub(super) fn check_new_root(
    new: &Cert,
    above: &[Cert],
    current: &Cert,
    served: &[Crl],
) -> Result<(), DriveError> {
    if new.info().subject == current.info().subject {
        return Err(DriveError::UnsafeForMesh(format!(
            "the new root has the current root's name ({}): where revocation lists are served, \
             a proxy picks a CA's list by its name, so the two roots' lists would be mistaken \
             for each other. Let cacertd generate the new root (it names it apart), or give \
             one with another name",
            current.info().subject
        )));
    }
    if let Some(bare) = above
        .iter()
        .find(|ca| !served.iter().any(|l| l.signed_by(ca)))
    {
        return Err(DriveError::UnsafeForMesh(format!(
            "{} (above the new root) has no revocation list among those the primaries serve, \
             and a proxy that checks lists rejects a chain through a CA without one",
            bare.info().subject
        )));
    }
    Ok(())
}

/// The new root's own list: signed here with its key (file, vault-kv), or Vault's for the
/// new issuer, rebuilt now (vault-pki), which must last as a revocation's must.
pub(super) async fn new_root_list(
    signer: &crate::root_store::Signer,
    now: OffsetDateTime,
) -> Result<Crl, DriveError> {
    use crate::revocation::VaultListError;
    match signer {
        crate::root_store::Signer::Local(root) => sign_crl(
            root.cert(),
            root.key(),
            &[],
            1,
            now,
            root.cert().info().not_after,
        )
        .map_err(|e| DriveError::NewRoot(e.to_string())),
        crate::root_store::Signer::Vault { pki, .. } => {
            let min = crate::revocation::VAULT_LIST_MIN_LIFE;
            crate::revocation::vault_list(pki.store(), true, min, now)
                .await
                .map_err(|e| match e {
                    VaultListError::Vault { .. } => DriveError::NewRoot(e.to_string()),
                    VaultListError::TooShort(why) => DriveError::UnsafeForMesh(why),
                })
        }
    }
}

/// Puts the lists into every primary's saved material: `original` gets those it serves with
/// the new CAs' added (served until the old root is gone, and by a rollback), `new` the new
/// CAs' alone: `root_list`, the lists `served` of the CAs `above` the new root, and each new
/// intermediate's, signed with its own key.
pub(super) fn carry(
    issued: &mut [(String, CaCertsFiles, CaCertsFiles, bool)],
    (root_list, above): (Crl, &[Cert]),
    served: &[Crl],
    now: OffsetDateTime,
) -> Result<(), DriveError> {
    let sign = |ca: &Cert, key: &crate::pki::CaKey| {
        sign_crl(ca, key, &[], 1, now, ca.info().not_after)
            .map_err(|e| DriveError::NewRoot(e.to_string()))
    };
    let mut new_lists = vec![root_list];
    for ca in above {
        new_lists.extend(served.iter().filter(|l| l.signed_by(ca)).cloned());
    }
    for (cluster, _, new, _) in issued.iter() {
        let bad = |e: crate::pki::PkiError| DriveError::CurrentMaterial {
            cluster: cluster.clone(),
            reason: format!("its new intermediate's list cannot be signed: {e}"),
        };
        let ica = Cert::one_from_pem(&new.ca_cert, CaCertsFiles::CA_CERT).map_err(bad)?;
        let key = crate::pki::CaKey::from_pem(&new.ca_key, CaCertsFiles::CA_KEY).map_err(bad)?;
        new_lists.push(sign(&ica, &key)?);
    }
    let during: Vec<Crl> = served.iter().chain(&new_lists).cloned().collect();
    for (_, original, new, _) in issued.iter_mut() {
        original.ca_crl = crls_pem(&during);
        new.ca_crl = crls_pem(&new_lists);
    }
    Ok(())
}
