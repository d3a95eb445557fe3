//! Starting a transition: the material every primary moves between, issued and saved before
//! the record exists, and the refusals that keep a start from breaking mTLS.

use time::OffsetDateTime;

use super::record_store::{NEW, ORIGINAL, RecordStore};
use super::{Options, Record, TransitionKind, from_self_signed};
use crate::audit::Audit;
use crate::cluster::Target;
use crate::config::Config;

pub use super::preflight::{Istiod, MultiRoot, istiods};
use super::preflight::{check_skipped_restarts, refuse_known_breakage};
use crate::pki::{
    CaCertsFiles, Cert, RootCa, TrustBundle, verify_cacerts, verify_cacerts_for_mesh,
};
use crate::root_store::rotation::{self, Pending, RootRotation};

use super::error::DriveError;
use super::error::target_err;
use crate::root_store::RootSource;

mod lists;
mod rotate;
pub use rotate::start_rotate_root;

/// `migrate start`: reads every primary, saves the material it moves between (issuing each
/// new intermediate once), then records the transition. Changes no cluster. Where the
/// clusters on the common root serve revocation lists, the migration carries them
/// ([`with_lists`]).
pub async fn start_migrate(
    config: &Config,
    files: &RecordStore,
    istiods: &[Istiod],
    mut options: Options,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    refuse_known_breakage(config, istiods).await?;
    check_skipped_restarts(config, istiods, &mut options).await?;
    let finished = files.check_room().await?;
    let signer = store_signer(config).await?;
    let root = signer.root_cert().clone();

    // Worked out in memory first: a refusal leaves nothing behind.
    let (migrating, on_root) = read_for_migration(config, &root, now).await?;
    if migrating.is_empty() {
        return Err(DriveError::NothingToDo(
            "every primary already signs under the common root: nothing to migrate".into(),
        ));
    }
    let served = lists::served(&on_root, now)?;
    let generation = served.as_ref().map(|_| crate::pki::generation(now));
    let mut moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)> = Vec::new();
    for (cluster, original) in migrating {
        let name = cluster.name.as_str();
        if dry_run {
            moving.push((name.to_string(), original.clone(), original, false));
            continue;
        }
        let (new, issued) = match saved_new(files, finished.is_none(), name, &root, now).await? {
            Some(saved) => (saved, false),
            None => (
                issue_new(config, cluster, &signer, &root, generation.clone(), now).await?,
                true,
            ),
        };
        moving.push((name.to_string(), original, new, issued));
    }
    if let Some(served) = served {
        with_lists(
            &mut moving,
            on_root,
            &served,
            &mut options,
            (config, now, dry_run),
        )?;
    }
    let start = Start {
        config,
        files,
        finished,
        now,
    };
    start
        .record(TransitionKind::Migrate, moving, options, dry_run, None)
        .await
}

/// Every primary as it is, those to migrate apart from those already on the common `root`.
async fn read_for_migration<'a>(
    config: &'a Config,
    root: &Cert,
    now: OffsetDateTime,
) -> Result<
    (
        Vec<(&'a crate::topology::Cluster, CaCertsFiles)>,
        Vec<(&'a crate::topology::Cluster, CaCertsFiles)>,
    ),
    DriveError,
> {
    let (mut migrating, mut on_root) = (Vec::new(), Vec::new());
    for cluster in config.topology.primaries() {
        let name = cluster.name.as_str();
        // What the cluster serves now: nothing was written without a record.
        let original = current_material(config, cluster, true).await?;
        let verified =
            verify_cacerts(&original, now).map_err(|problems| DriveError::CurrentMaterial {
                cluster: name.to_string(),
                reason: format!(
                    "the current material does not validate, so it cannot be kept during the \
                     transition: {}",
                    crate::pki::BundleProblem::join(&problems)
                ),
            })?;
        if verified.anchor() == root {
            tracing::info!(
                cluster = name,
                "already signs under the common root; not migrated"
            );
            on_root.push((cluster, original));
        } else {
            migrating.push((cluster, original));
        }
    }
    Ok((migrating, on_root))
}

/// A migration where the primaries on the common root serve revocation lists (`served`): a
/// proxy that checks lists rejects a chain through a CA without one (docs/istio.md §14), so
/// every primary on the common root serves, from the first step, a list from each migrating
/// cluster's new intermediate as well (it joins the transition for that alone: no restart, no
/// other change), before any of them signs; a migrating cluster serves the lists once it
/// trusts the common root alone (until then its own proxies present certificates from its
/// old CA, which has none).
fn with_lists(
    moving: &mut Vec<(String, CaCertsFiles, CaCertsFiles, bool)>,
    on_root: Vec<(&crate::topology::Cluster, CaCertsFiles)>,
    served: &[crate::pki::Crl],
    options: &mut Options,
    (config, now, dry_run): (&Config, OffsetDateTime, bool),
) -> Result<(), DriveError> {
    let mut lists = served.to_vec();
    if !dry_run {
        for (name, _, new, _) in moving.iter() {
            let bad = |e: crate::pki::PkiError| DriveError::CurrentMaterial {
                cluster: name.clone(),
                reason: format!("its new intermediate's list cannot be signed: {e}"),
            };
            let ica = Cert::one_from_pem(&new.ca_cert, CaCertsFiles::CA_CERT).map_err(bad)?;
            let key =
                crate::pki::CaKey::from_pem(&new.ca_key, CaCertsFiles::CA_KEY).map_err(bad)?;
            let until = ica.info().not_after;
            lists.push(crate::pki::sign_crl(&ica, &key, &[], 1, now, until).map_err(bad)?);
        }
    }
    let pem = crate::pki::crls_pem(&lists);
    for (_, _, new, _) in moving.iter_mut() {
        new.ca_crl.clone_from(&pem);
    }
    for (cluster, current) in on_root {
        let with = CaCertsFiles {
            ca_crl: pem.clone(),
            ..current.clone()
        };
        moving.push((cluster.name.clone(), current, with, false));
        options.lists_only.push(cluster.name.clone());
    }
    options.list_propagation_seconds = Some(config.transition.list_propagation.as_secs());
    Ok(())
}

/// What a primary serves now: its `cacerts` or, when `self_signed_ok`, istiod's own CA.
pub(super) async fn current_material(
    config: &Config,
    cluster: &crate::topology::Cluster,
    self_signed_ok: bool,
) -> Result<CaCertsFiles, DriveError> {
    let name = cluster.name.as_str();
    let target = Target::open(cluster, config)
        .await
        .map_err(target_err(name))?;
    let observed = target.read().await.map_err(target_err(name))?;
    match (
        observed.snapshot.cacerts,
        &observed.snapshot.self_signed_ca,
        self_signed_ok,
    ) {
        (Some(c), _, _) => Ok(c),
        (None, Some(ss), true) => Ok(from_self_signed(ss)),
        (None, Some(_), false) => Err(DriveError::CurrentMaterial {
            cluster: name.to_string(),
            reason: format!(
                "no cacerts in {} (istiod runs its self-signed CA): migrate it first",
                target.describe()
            ),
        }),
        (None, None, _) => Err(DriveError::CurrentMaterial {
            cluster: name.to_string(),
            reason: format!(
                "neither cacerts nor istiod's istio-ca-secret found in {}",
                target.describe()
            ),
        }),
    }
}

/// What signs intermediates under the store's root; a store that cannot give it refuses the
/// start.
pub(super) async fn store_signer(config: &Config) -> Result<crate::root_store::Signer, DriveError> {
    RootSource::open(config)
        .await
        .map_err(|e| DriveError::NewRoot(e.to_string()))?
        .signer()
        .await
        .map_err(|e| DriveError::NewRoot(e.to_string()))
}

/// The first primary that serves revocation lists, if any: a transition that issues
/// intermediates must then publish a list from each before it signs anything, since proxies
/// that check lists reject a chain through a CA without one (docs/istio.md §14).
async fn serving_lists(config: &Config) -> Result<Option<String>, DriveError> {
    for cluster in config.topology.primaries() {
        let name = cluster.name.as_str();
        let target = Target::open(cluster, config)
            .await
            .map_err(target_err(name))?;
        let observed = target.read().await.map_err(target_err(name))?;
        if observed.snapshot.cacerts.is_some_and(|c| c.has_lists()) {
            return Ok(Some(name.to_string()));
        }
    }
    Ok(None)
}

/// A new intermediate a start that stopped early saved for `cluster`, if it is still good:
/// valid now and under `root`. Never one of a finished transition (`own` false).
async fn saved_new(
    files: &RecordStore,
    own: bool,
    cluster: &str,
    root: &Cert,
    now: OffsetDateTime,
) -> Result<Option<CaCertsFiles>, DriveError> {
    if !own {
        return Ok(None);
    }
    Ok(files
        .load_files(cluster, NEW)
        .await?
        .filter(|new| verify_cacerts(new, now).is_ok_and(|v| v.anchor() == root)))
}

/// A start whose material is worked out: what recording it needs.
pub(super) struct Start<'a> {
    pub(super) config: &'a Config,
    pub(super) files: &'a RecordStore,
    /// A finished transition's record and material, moved aside first.
    pub(super) finished: Option<Record>,
    pub(super) now: OffsetDateTime,
}

impl Start<'_> {
    /// Saves the material of every primary `moving` moves, then the record of a `kind`
    /// transition over them (the record last: a start that stopped early left no record);
    /// notes it in the audit log. A dry run only returns the record it would save.
    pub(super) async fn record(
        self,
        kind: TransitionKind,
        moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)>,
        options: Options,
        dry_run: bool,
        detail: Option<String>,
    ) -> Result<Record, DriveError> {
        let clusters: Vec<String> = moving.iter().map(|(n, ..)| n.clone()).collect();
        let record = Record::new(kind, clusters, options);
        self.save(record, moving, dry_run, detail).await
    }

    /// Saves `record` (made by the caller) after the material of every primary `moving` moves.
    pub(super) async fn save(
        self,
        mut record: Record,
        moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)>,
        dry_run: bool,
        detail: Option<String>,
    ) -> Result<Record, DriveError> {
        let kind = record.kind;
        record.note(self.now, super::machine::STARTED);
        if dry_run {
            return Ok(record);
        }
        if let Some(finished) = self.finished {
            self.files.archive(&finished, self.now).await?;
        }
        let audit = Audit::new(self.config.daemon.audit_log.clone());
        save_moving(self.files, &audit, moving, self.now).await?;
        self.files.save(&record).await?;
        audit.note(
            self.now,
            "transition-start",
            None,
            kind.name(),
            None,
            detail,
        );
        Ok(record)
    }
}

/// Saves each primary's two sets of material (noting the intermediates issued now).
async fn save_moving(
    files: &RecordStore,
    audit: &Audit,
    moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)>,
    now: OffsetDateTime,
) -> Result<(), DriveError> {
    for (name, original, new, issued) in moving {
        files.save_files(&name, ORIGINAL, &original).await?;
        files.save_files(&name, NEW, &new).await?;
        if issued {
            let serial = Cert::one_from_pem(&new.ca_cert, "new ca-cert.pem")
                .map(|c| c.info().serial.clone())
                .ok();
            audit.note(now, "transition-issue", Some(&name), "issued", serial, None);
        }
    }
    Ok(())
}

pub(super) async fn issue_new(
    config: &Config,
    cluster: &crate::topology::Cluster,
    signer: &crate::root_store::Signer,
    root: &Cert,
    serial_number: Option<String>,
    now: OffsetDateTime,
) -> Result<CaCertsFiles, DriveError> {
    let name = cluster.name.as_str();
    let policy = config.policy_for(cluster);
    let mut spec = policy.intermediate_spec(name, &config.trust_domain);
    spec.subject.serial_number = serial_number;
    policy.check_issuance(name, &spec, root)?;
    let ica = signer
        .issue(&spec, now)
        .await
        .map_err(|e| DriveError::NewRoot(format!("{name}: {e}")))?;
    policy.check_issued(name, &ica.cert)?;
    let files =
        CaCertsFiles::for_intermediate(&ica, &signer.between(), root, &TrustBundle::single(root));
    verify_cacerts_for_mesh(&files, now, Some(&config.trust_domain)).map_err(|problems| {
        DriveError::NewRoot(format!(
            "{name}: internal check of the new cacerts failed: {}",
            crate::pki::BundleProblem::join(&problems)
        ))
    })?;
    Ok(files)
}

/// `current` with the root `wanted` dropped from its bundle; `None` if its bundle does not
/// hold it. Refused where the cluster signs under that root, or trusts it alone.
fn without_root(
    config: &Config,
    name: &str,
    current: &CaCertsFiles,
    wanted: &str,
    now: OffsetDateTime,
) -> Result<Option<CaCertsFiles>, DriveError> {
    let (trust, _) = TrustBundle::from_pem_lenient(&current.root_cert);
    let Some(root) = trust
        .roots()
        .iter()
        .find(|r| r.info().fingerprint_sha256 == wanted)
        .cloned()
    else {
        return Ok(None);
    };
    // Its workloads' certificates must not chain to the root leaving their bundle.
    let signing = Cert::lenient_from_pem(&current.ca_cert, CaCertsFiles::CA_CERT)
        .0
        .into_iter()
        .next();
    let (chain, _) = Cert::lenient_from_pem(&current.cert_chain, CaCertsFiles::CERT_CHAIN);
    let signs_under = signing
        .as_ref()
        .and_then(|s| crate::pki::issuing_root(s, &chain, trust.roots()));
    if signs_under.as_ref() == Some(&root) {
        return Err(DriveError::UnsafeForMesh(format!(
            "{name} signs under {wanted}: removing it would break every certificate its \
             istiod issued. Move {name} onto the common root first (`cacertd migrate \
             start`)"
        )));
    }
    if trust.roots().len() == 1 {
        return Err(DriveError::UnsafeForMesh(format!(
            "{name} trusts {wanted} alone: nothing would be left in its bundle"
        )));
    }
    let kept = trust.without(&root);
    let new = CaCertsFiles {
        root_cert: kept.pem_bytes().to_vec(),
        ..current.clone()
    };
    verify_cacerts_for_mesh(&new, now, Some(&config.trust_domain)).map_err(|problems| {
        DriveError::CurrentMaterial {
            cluster: name.to_string(),
            reason: format!(
                "its cacerts without {wanted} would not validate: {}",
                crate::pki::BundleProblem::join(&problems)
            ),
        }
    })?;
    Ok(Some(new))
}

/// `transition remove-root FINGERPRINT`: every primary whose bundle trusts that root keeps its
/// signer and drops the root from its bundle, in one phase with its restarts and gate. Refused
/// for the common root (and its mesh CA's anchor), for a root any primary still signs under,
/// and when no primary trusts it. Changes no cluster. `fingerprint` as `status` prints it
/// ([`crate::pki::normalize_fingerprint`]).
pub async fn start_remove_root(
    config: &Config,
    files: &RecordStore,
    options: Options,
    fingerprint: &str,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    let finished = files.check_room().await?;
    let store = RootSource::open(config)
        .await
        .map_err(|e| DriveError::NewRoot(e.to_string()))?;
    let anchor = store
        .load_cert()
        .await
        .map_err(|e| DriveError::NewRoot(e.to_string()))?;
    let wanted = fingerprint;
    if anchor
        .as_ref()
        .is_some_and(|a| a.info().fingerprint_sha256 == wanted)
    {
        return Err(DriveError::UnsafeForMesh(format!(
            "{wanted} is the common root: every cluster signs under it. Replace it with \
             `cacertd rotate-root start` instead"
        )));
    }
    let mut moving: Vec<(String, CaCertsFiles, CaCertsFiles, bool)> = Vec::new();
    for cluster in config.topology.primaries() {
        let name = cluster.name.as_str();
        let current = match current_material(config, cluster, false).await {
            Ok(c) => c,
            // No cacerts (self-signed, or missing): no bundle of ours trusts anything here.
            Err(DriveError::CurrentMaterial { .. }) => continue,
            // A cluster that cannot be read may trust the root: never skipped silently.
            Err(e) => return Err(e),
        };
        let Some(new) = without_root(config, name, &current, wanted, now)? else {
            continue;
        };
        moving.push((name.to_string(), current, new, false));
    }
    if moving.is_empty() {
        return Err(DriveError::NothingToDo(format!(
            "no primary's bundle trusts {wanted}: nothing to remove"
        )));
    }
    let start = Start {
        config,
        files,
        finished,
        now,
    };
    let detail = Some(format!("removing {wanted}"));
    start
        .record(TransitionKind::RemoveRoot, moving, options, dry_run, detail)
        .await
}
