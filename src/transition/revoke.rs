//! Starting a revocation (README, "When a key leaks"): one primary's intermediate is revoked
//! and replaced by a successor, as a transition of its own ([`TransitionKind::Revoke`]).
//!
//! Why three steps (docs/istio.md §14): a proxy that checks revocation lists rejects a chain
//! through any CA without a list in its file, so a successor's list must reach every proxy
//! before the successor signs anything; and the list naming the revoked intermediate must wait
//! until nothing legitimate still presents a certificate it signed, or it would cut off the
//! revoked cluster's own workloads. Each intermediate's own (empty) list is signed here with
//! its key from its cluster's `cacerts`, the successor's with its fresh key; the mesh CA's
//! with the root store's key (file, vault-kv), or by Vault's PKI engine, which revokes the
//! intermediate it signed and keeps the list (vault-pki). Lists of CAs above the mesh CA (a
//! corporate anchor) come from the operator.
//!
//! A renewal where the clusters serve lists ([`TransitionKind::Renew`]) is the same first two
//! steps without the revocation: the successor's list reaches every proxy before it signs, and
//! its predecessor's list stays, since what it signed is still trusted.

use time::OffsetDateTime;

use super::error::DriveError;
use super::record_store::RecordStore;
use super::start::{Istiod, Start, current_material, issue_new, store_signer};
use super::{ClusterMaterial, MaterialOf, Options, Phase, Record, Revocation, TransitionKind};
use crate::config::Config;
use crate::istio_version::IstioVersion;
use crate::pki::{
    CaCertsFiles, CaKey, Cert, Crl, Reason, Revoked, crls_pem, issued_by, sign_crl, verify_ca_crl,
    verify_cacerts,
};
use crate::root_store::Signer;

mod vault;
use vault::{kept_list, signed_by_vault, vault_list_now};

/// The first Istio release whose istiod reads `ca-crl.pem` (docs/istio.md §14).
pub const LISTS_SINCE: IstioVersion = IstioVersion::new(1, 27, 0);

/// What `revoke` (or `renew`) asks.
pub struct RevokeRequest {
    /// The primary whose intermediate is revoked (or renewed).
    pub cluster: String,
    /// Why it is revoked; `None`: it is renewed, not revoked.
    pub reason: Option<Reason>,
    /// Lists of the CAs above the mesh CA (`--chain-crl`), which cacertd cannot sign.
    pub chain_lists: Vec<Crl>,
}

impl RevokeRequest {
    /// The renewal of `cluster`'s intermediate where the clusters serve lists.
    pub fn renewal(cluster: &str) -> Self {
        RevokeRequest {
            cluster: cluster.to_string(),
            reason: None,
            chain_lists: Vec::new(),
        }
    }
}

/// `revoke CLUSTER` (or `renew CLUSTER`): reads every primary (each must sign under the
/// store's mesh CA), issues the successor, signs the lists, saves the material, then records
/// the revocation (renewal). Changes no cluster. Everything that can be refused is checked
/// before anything is saved.
pub async fn start_revoke(
    config: &Config,
    files: &RecordStore,
    istiods: &[Istiod],
    options: Options,
    request: RevokeRequest,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    let name = request.cluster.as_str();
    let revoked_cluster = revocable(config, &options, &request)?;
    refuse_old_istiod(istiods)?;
    let finished = files.check_room().await?;
    let signer = store_signer(config).await?;
    let (current, existing) = read_primaries(config, signer.signing_cert(), now).await?;
    let Some((_, revoked_set, revoked_ica)) = current.iter().find(|(n, ..)| n == name) else {
        return Err(DriveError::CurrentMaterial {
            cluster: name.to_string(),
            reason: "it has no cacerts".into(),
        });
    };
    if existing.iter().any(|l| l.lists(revoked_ica)) {
        return Err(DriveError::NothingToDo(format!(
            "{name}'s intermediate ({}) is revoked already",
            revoked_ica.info().subject
        )));
    }

    let (successor, successor_cert) =
        issue_successor(config, revoked_cluster, &signer, revoked_set, now).await?;

    // A list from every intermediate in use, the successor's included.
    let successor_in_use = (name.to_string(), successor.clone(), successor_cert);
    let in_use = current.iter().chain(std::iter::once(&successor_in_use));
    let lists = intermediate_lists(in_use, &existing, now)?;
    drop(successor_in_use);
    let (lists_before, lists_after) = all_lists(
        config,
        &signer,
        (&lists, &existing),
        &request,
        revoked_ica,
        now,
        dry_run,
    )
    .await?;

    let moving = moving_sets(
        &current,
        name,
        &successor,
        (&lists_before, &lists_after),
        now,
    )?;
    let (revocation, detail) = revocation_of(
        &request,
        revoked_ica,
        &current,
        (lists_before, lists_after),
        now,
    );
    let record = revocation_record(config, options, &moving, revocation, &request);
    let start = Start {
        config,
        files,
        finished,
        now,
    };
    let saved = start.save(record, moving, dry_run, detail).await?;
    // Recorded: the list from before is in the record now.
    let kept = kept_list(config, revoked_ica);
    if !dry_run && kept.exists() {
        let _ = std::fs::remove_file(&kept);
    }
    Ok(saved)
}

/// What the record keeps of the revocation (or renewal) `request` asks of `revoked`, and the
/// audit log's words for it.
fn revocation_of(
    request: &RevokeRequest,
    revoked: &Cert,
    current: &[(String, CaCertsFiles, Cert)],
    (lists_before, lists_after): (Vec<u8>, Vec<u8>),
    now: OffsetDateTime,
) -> (Revocation, Option<String>) {
    let name = &request.cluster;
    let info = revoked.info();
    let revocation = Revocation {
        cluster: name.clone(),
        subject: info.subject.clone(),
        serial: Revoked::of(revoked, now, Reason::Superseded).serial,
        fingerprint: info.fingerprint_sha256.clone(),
        reason: request.reason.unwrap_or(Reason::Superseded),
        lists_before: String::from_utf8_lossy(&lists_before).into_owned(),
        lists_after: String::from_utf8_lossy(&lists_after).into_owned(),
        first_lists: current
            .iter()
            .filter(|(_, set, _)| !set.has_lists())
            .map(|(n, ..)| n.clone())
            .collect(),
    };
    let detail = match request.reason {
        Some(reason) => format!(
            "revoking {name}'s intermediate {} ({})",
            info.serial,
            reason.name()
        ),
        None => format!(
            "renewing {name}'s intermediate {}, whose successor's revocation list is published \
             first",
            info.serial
        ),
    };
    (revocation, Some(detail))
}

/// The lists every primary serves during the revocation, as one `ca-crl.pem` each: `lists`
/// (one from every intermediate in use), the mesh CA's, those of the CAs above it and those
/// carried from earlier revocations — before and after the mesh CA's list names the revoked
/// intermediate.
async fn all_lists(
    config: &Config,
    signer: &Signer,
    (lists, existing): (&[Crl], &[Crl]),
    request: &RevokeRequest,
    revoked_ica: &Cert,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<(Vec<u8>, Vec<u8>), DriveError> {
    // The mesh CA, and the CAs above it up to the anchor (none when it is the anchor).
    let signing = signer.signing_cert();
    let above_ca: Vec<Cert> = match signer {
        Signer::Local(mesh_ca) => mesh_ca.chain().to_vec(),
        Signer::Vault { path, .. } => path.iter().skip(1).cloned().collect(),
    };
    let given = given_or_published(signing, &above_ca, request, existing, now).await?;
    let above = above_lists(&above_ca, &given, existing, now)?;
    let carried = carried_lists(existing, (lists, &above), signing, &above_ca, now);

    // The mesh CA's list, before and after: last, since with Vault getting it revokes there
    // (nothing after this refuses but an internal inconsistency). A renewal keeps it.
    let (before, after) = match (signer, request.reason) {
        (Signer::Local(mesh_ca), Some(reason)) => {
            signed_here(mesh_ca, existing, revoked_ica, reason, now)?
        }
        (Signer::Local(mesh_ca), None) => {
            let current = mesh_list_here(mesh_ca, existing, now)?;
            (current.clone(), current)
        }
        (Signer::Vault { pki, .. }, Some(_)) => {
            let pki = pki.store();
            signed_by_vault(config, pki, revoked_ica, now, dry_run).await?
        }
        (Signer::Vault { pki, .. }, None) => {
            let current = vault_list_now(pki.store(), now, dry_run).await?;
            (current.clone(), current)
        }
    };
    let assemble = |mesh: &Crl| {
        let mut all = lists.to_vec();
        all.push(mesh.clone());
        all.extend(above.iter().cloned());
        all.extend(carried.iter().cloned());
        crls_pem(&all)
    };
    Ok((assemble(&before), assemble(&after)))
}

/// The record of a revocation (or renewal) moving `moving`: no drain, since the revocation
/// goes out as soon as the revoked cluster re-certified, and each phase's lists given time to
/// reach the pods.
fn revocation_record(
    config: &Config,
    mut options: Options,
    moving: &[(String, CaCertsFiles, CaCertsFiles, bool)],
    revocation: Revocation,
    request: &RevokeRequest,
) -> Record {
    options.drain_seconds = 0;
    options.wait_for_renewal = false;
    options.renewal_wait_seconds = None;
    options.list_propagation_seconds = Some(config.transition.list_propagation.as_secs());
    let kind = match request.reason {
        Some(_) => TransitionKind::Revoke,
        None => TransitionKind::Renew,
    };
    let mut record = Record::new(kind, moving.iter().map(|(n, ..)| n.clone()), options);
    record.revocation = Some(revocation);
    record
}

/// The primary `request` names, unless a revocation there is refused: one without workload
/// restarts would publish the revocation while its workloads still present certificates from
/// the revoked intermediate.
fn revocable<'a>(
    config: &'a Config,
    options: &Options,
    request: &RevokeRequest,
) -> Result<&'a crate::topology::Cluster, DriveError> {
    let name = request.cluster.as_str();
    if options.skip_workload_restarts && request.reason.is_some() {
        return Err(DriveError::UnsafeForMesh(format!(
            "a revocation restarts every workload of {name} and its remotes: each must hold a \
             certificate from the successor before the revocation is published, or it is cut \
             off"
        )));
    }
    config
        .topology
        .primaries()
        .find(|c| c.name == name)
        .ok_or_else(|| DriveError::UnknownCluster {
            cluster: name.to_string(),
        })
}

/// The revoked cluster's successor: same trust (the bundle it serves now), a fresh key, and
/// a name of its own (docs/istio.md §14): its issuance time and a random part ([`crate::pki::generation`]).
async fn issue_successor(
    config: &Config,
    cluster: &crate::topology::Cluster,
    signer: &Signer,
    revoked_set: &CaCertsFiles,
    now: OffsetDateTime,
) -> Result<(CaCertsFiles, Cert), DriveError> {
    let generation = Some(crate::pki::generation(now));
    let mut successor =
        issue_new(config, cluster, signer, signer.root_cert(), generation, now).await?;
    successor.root_cert.clone_from(&revoked_set.root_cert);
    let cert = Cert::one_from_pem(&successor.ca_cert, "the successor's ca-cert.pem")
        .map_err(|e| DriveError::NewRoot(e.to_string()))?;
    Ok((successor, cert))
}

/// Every primary as it is: its name, its set and its intermediate, which the mesh CA
/// (`signing`) must have issued; and the lists they carry.
async fn read_primaries(
    config: &Config,
    signing: &Cert,
    now: OffsetDateTime,
) -> Result<(Vec<(String, CaCertsFiles, Cert)>, Vec<Crl>), DriveError> {
    let mut current: Vec<(String, CaCertsFiles, Cert)> = Vec::new();
    let mut existing: Vec<Crl> = Vec::new();
    for cluster in config.topology.primaries() {
        let set = current_material(config, cluster, false).await?;
        let bad = |reason: String| DriveError::CurrentMaterial {
            cluster: cluster.name.clone(),
            reason,
        };
        verify_cacerts(&set, now).map_err(|p| {
            bad(format!(
                "its cacerts does not validate, so it cannot be carried through a revocation: {}",
                crate::pki::BundleProblem::join(&p)
            ))
        })?;
        let ica = Cert::one_from_pem(&set.ca_cert, CaCertsFiles::CA_CERT)
            .map_err(|e| bad(e.to_string()))?;
        if !issued_by(&ica, signing) {
            return Err(bad(format!(
                "its intermediate ({}) was not issued by the mesh CA ({}): every primary must \
                 sign under the common root before lists can be published (`cacertd migrate \
                 start`; a replaced mesh CA: `cacertd issue`)",
                ica.info().subject,
                signing.info().subject
            )));
        }
        existing.extend(verify_ca_crl(&set, now).map_err(bad)?);
        current.push((cluster.name.clone(), set, ica));
    }
    Ok((current, existing))
}

/// A list from every intermediate `in_use`, signed with its key (one the clusters carry that
/// lasts as long as the intermediate is kept).
fn intermediate_lists<'a>(
    in_use: impl Iterator<Item = &'a (String, CaCertsFiles, Cert)>,
    existing: &[Crl],
    now: OffsetDateTime,
) -> Result<Vec<Crl>, DriveError> {
    let list_err = |cluster: &str, e: crate::pki::PkiError| DriveError::CurrentMaterial {
        cluster: cluster.to_string(),
        reason: format!("its revocation list cannot be signed: {e}"),
    };
    let mut lists: Vec<Crl> = Vec::new();
    for (cluster, set, ica) in in_use {
        if let Some(kept) = existing.iter().find(|l| {
            l.signed_by(ica) && l.next_update().is_some_and(|n| n >= ica.info().not_after)
        }) {
            lists.push(kept.clone());
            continue;
        }
        let key =
            CaKey::from_pem(&set.ca_key, CaCertsFiles::CA_KEY).map_err(|e| list_err(cluster, e))?;
        let list = sign_crl(ica, &key, &[], 1, now, ica.info().not_after)
            .map_err(|e| list_err(cluster, e))?;
        lists.push(list);
    }

    Ok(lists)
}

/// The lists of the CAs above the mesh CA (`above_ca`, `signing` below them) to choose from
/// besides those the clusters carry: those given (`--chain-crl`), or else, where some CA has no
/// current list among `existing`, those published where the chain says
/// ([`crate::revocation::fetch_published`]); a fetch that fails leaves the choice to
/// [`above_lists`], which names what is missing.
async fn given_or_published(
    signing: &Cert,
    above_ca: &[Cert],
    request: &RevokeRequest,
    existing: &[Crl],
    now: OffsetDateTime,
) -> Result<Vec<Crl>, DriveError> {
    let current = |ca: &Cert| {
        existing
            .iter()
            .any(|l| l.signed_by(ca) && l.next_update().is_some_and(|n| n > now))
    };
    if !request.chain_lists.is_empty() || above_ca.iter().all(current) {
        return Ok(request.chain_lists.clone());
    }
    let chain: Vec<Cert> = std::iter::once(signing).chain(above_ca).cloned().collect();
    match crate::revocation::fetch_published(&chain).await {
        Ok(published) => Ok(published),
        Err(e) => {
            tracing::warn!(error = %e, "the company's published revocation lists cannot be fetched");
            Ok(Vec::new())
        }
    }
}

/// The lists of the CAs above the mesh CA (`above_ca`): the newest current one of each, from
/// those the operator gave or the clusters carry; refused where one has none.
fn above_lists(
    above_ca: &[Cert],
    given_lists: &[Crl],
    existing: &[Crl],
    now: OffsetDateTime,
) -> Result<Vec<Crl>, DriveError> {
    for given in given_lists {
        if !above_ca.iter().any(|c| given.signed_by(c)) {
            return Err(DriveError::NewRoot(format!(
                "--chain-crl: the list of {} is signed by none of the CAs above the mesh CA ({})",
                given.issuer(),
                names(above_ca)
            )));
        }
    }
    let mut above: Vec<Crl> = Vec::new();
    for ca in above_ca {
        let fresh = |l: &&Crl| l.signed_by(ca) && l.next_update().is_some_and(|n| n > now);
        let newest = given_lists
            .iter()
            .chain(existing.iter())
            .filter(fresh)
            .max_by_key(|l| l.this_update());
        match newest {
            Some(l) => above.push(l.clone()),
            None => {
                return Err(DriveError::UnsafeForMesh(format!(
                    "{} has no current revocation list: a proxy that checks lists rejects every \
                     chain through a CA without one. Pass the list your PKI publishes for it \
                     with --chain-crl FILE (none could be fetched from the CRL distribution \
                     points of the chain)",
                    ca.info().subject
                )));
            }
        }
    }
    Ok(above)
}

/// Lists the clusters carry of intermediates no longer in use (an earlier revocation's): kept
/// while current, since certificates they signed may live on.
fn carried_lists(
    existing: &[Crl],
    (lists, above): (&[Crl], &[Crl]),
    signing: &Cert,
    above_ca: &[Cert],
    now: OffsetDateTime,
) -> Vec<Crl> {
    let ours = |l: &Crl| {
        lists.iter().chain(above).any(|k| k.der() == l.der())
            || l.signed_by(signing)
            || above_ca.iter().any(|c| l.signed_by(c))
    };
    existing
        .iter()
        .filter(|l| !ours(l) && l.next_update().is_some_and(|n| n > now))
        .cloned()
        .collect()
}

/// What each primary moves between: the revoked one to its successor, every one to the lists
/// after; every set it will serve checked as the writer will check it.
fn moving_sets(
    current: &[(String, CaCertsFiles, Cert)],
    name: &str,
    successor: &CaCertsFiles,
    (lists_before, lists_after): (&[u8], &[u8]),
    now: OffsetDateTime,
) -> Result<Vec<(String, CaCertsFiles, CaCertsFiles, bool)>, DriveError> {
    let mut moving = Vec::new();
    for (cluster, set, _) in current {
        let revoked = cluster == name;
        let new = CaCertsFiles {
            ca_crl: lists_after.to_vec(),
            ..if revoked {
                successor.clone()
            } else {
                set.clone()
            }
        };
        // Every set it will serve, as the writer will check it.
        let m = ClusterMaterial {
            original: set.clone(),
            new: new.clone(),
            lists_before: Some(lists_before.to_vec()),
        };
        for p in [Phase::AddNewRoot, Phase::SwitchSigner, Phase::RemoveOldRoot] {
            let files = super::material(&m, MaterialOf::Phase(p))
                .map_err(|e| DriveError::NewRoot(format!("{cluster}: {e}")))?;
            verify_ca_crl(&files, now).map_err(|reason| DriveError::CurrentMaterial {
                cluster: cluster.clone(),
                reason: format!("its cacerts for phase {p} would be refused: {reason}"),
            })?;
        }
        moving.push((cluster.clone(), set.clone(), new, revoked));
    }

    Ok(moving)
}

/// The mesh CA's list as it stands, signed here with its key: the newest list the clusters
/// carry, or an empty one.
fn mesh_list_here(
    mesh_ca: &crate::pki::RootCa,
    existing: &[Crl],
    now: OffsetDateTime,
) -> Result<Crl, DriveError> {
    let signing = mesh_ca.cert();
    let previous = existing
        .iter()
        .filter(|l| l.signed_by(signing))
        .max_by_key(|l| (l.number(), l.this_update()));
    match previous {
        Some(p) => Ok(p.clone()),
        None => sign_crl(
            signing,
            mesh_ca.key(),
            &[],
            1,
            now,
            signing.info().not_after,
        )
        .map_err(|e| DriveError::NewRoot(e.to_string())),
    }
}

/// The mesh CA's lists before and after the revocation, signed here with its key: the list as
/// it stands ([`mesh_list_here`]), and its entries with `revoked` added.
fn signed_here(
    mesh_ca: &crate::pki::RootCa,
    existing: &[Crl],
    revoked: &Cert,
    reason: Reason,
    now: OffsetDateTime,
) -> Result<(Crl, Crl), DriveError> {
    let signing = mesh_ca.cert();
    let before = mesh_list_here(mesh_ca, existing, now)?;
    let number = before.number().unwrap_or(0);
    let until = signing.info().not_after;
    let mesh_err = |e: crate::pki::PkiError| DriveError::NewRoot(e.to_string());
    let mut entries: Vec<Revoked> = before.entries().to_vec();
    entries.push(Revoked::of(revoked, now, reason));
    let after =
        sign_crl(signing, mesh_ca.key(), &entries, number + 1, now, until).map_err(mesh_err)?;
    Ok((before, after))
}

fn names(certs: &[Cert]) -> String {
    if certs.is_empty() {
        return "none: the mesh CA is the anchor".into();
    }
    certs
        .iter()
        .map(|c| c.info().subject.clone())
        .collect::<Vec<_>>()
        .join(", ")
}

/// Refused where a primary's istiod is older than [`LISTS_SINCE`]: it would ignore the lists,
/// and the revoked intermediate would stay trusted there.
fn refuse_old_istiod(istiods: &[Istiod]) -> Result<(), DriveError> {
    let mut old = Vec::new();
    for Istiod {
        cluster, images, ..
    } in istiods
    {
        for (image, version) in images {
            if version.is_some_and(|v| v < LISTS_SINCE) {
                old.push(format!("{cluster} ({image})"));
            }
        }
    }
    if old.is_empty() {
        return Ok(());
    }
    Err(DriveError::UnsafeForMesh(format!(
        "istiod before {LISTS_SINCE} ignores revocation lists, so the revoked intermediate would \
         stay trusted in {}. Upgrade istiod there first",
        old.join(", ")
    )))
}
