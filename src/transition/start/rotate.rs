//! Starting a root rotation: the new root kept apart until the rotation is done, and every
//! primary's intermediate under it issued and saved before the record exists.

use super::*;

/// `rotate-root start`: the new root (imported, or generated per the root policy; for
/// vault-pki, generated inside Vault) is kept apart ([`RootRotation`]) until the rotation is
/// done, then replaces the store's root (the old one is kept). Every primary must be on the
/// current root. Everything that can be refused is checked before anything is kept.
pub async fn start_rotate_root(
    config: &Config,
    files: &RecordStore,
    istiods: &[Istiod],
    mut options: Options,
    new_root: Option<crate::pki::RootCa>,
    now: OffsetDateTime,
    dry_run: bool,
) -> Result<Record, DriveError> {
    let store = rotation::open(config).await?;
    refuse_known_breakage(config, istiods).await?;
    let lists_served = serving_lists(config).await?;
    check_skipped_restarts(config, istiods, &mut options).await?;
    let finished = files.check_room().await?;
    let current = store.current().await?;
    let audit = Audit::new(config.daemon.audit_log.clone());
    let rotation = Rotation {
        config,
        files,
        audit: &audit,
        store: store.as_ref(),
        own: finished.is_none(),
        current: &current,
        now,
    };
    let new = match store.keeps_key_inside() {
        true => rotation.vault_new_root(new_root.is_some()).await?,
        false => {
            rotation
                .local_new_root(new_root, lists_served.is_some())
                .await?
        }
    };
    let new_cert = match &new {
        NewRoot::Local { root, .. } => Some(root.cert().clone()),
        NewRoot::Vault { waiting, .. } => waiting.clone(),
    };
    if new_cert.as_ref() == Some(&current) {
        return Err(DriveError::NewRoot(
            "the new root is the current root".into(),
        ));
    }
    let moving = rotation.moving(new_cert.as_ref()).await?;
    let lists = lists::served(&moving, now)?;
    if let (Some(served), NewRoot::Local { root, .. }) = (&lists, &new) {
        lists::check_new_root(root.cert(), root.chain(), &current, served)?;
    }
    if lists.is_some() {
        // The new CAs' lists must reach pods that no restart replaces before they sign.
        options.list_propagation_seconds = Some(config.transition.list_propagation.as_secs());
    }
    if dry_run {
        let clusters = moving.into_iter().map(|(c, _)| c.name.clone());
        return Ok(Record::new(TransitionKind::RotateRoot, clusters, options));
    }
    let clusters = rotation
        .issue_and_keep(new, moving, finished, lists)
        .await?;
    let record = Record::new(TransitionKind::RotateRoot, clusters, options);
    files.save(&record).await?;
    audit.note(now, "transition-start", None, "rotate-root", None, None);
    Ok(record)
}

/// A root rotation being started: what every step of the start reads.
struct Rotation<'a> {
    config: &'a Config,
    files: &'a RecordStore,
    audit: &'a Audit,
    store: &'a dyn RootRotation,
    /// No finished transition's files are in the way: saved material is this start's.
    own: bool,
    current: &'a Cert,
    now: OffsetDateTime,
}

impl Rotation<'_> {
    /// Whether a new root kept in the store counts as this start's: only if a start that
    /// stopped early saved intermediates under it. One left by an aborted or rolled-back
    /// rotation, or one that became the root, is not reused.
    async fn tied(&self, root: &Cert) -> Result<bool, DriveError> {
        if !self.own || root == self.current {
            return Ok(false);
        }
        for cluster in self.config.topology.primaries() {
            if saved_new(self.files, self.own, &cluster.name, root, self.now)
                .await?
                .is_some()
            {
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// vault-pki: the new issuer is generated inside Vault (now, or by a start that stopped
    /// early); a root cannot be imported.
    async fn vault_new_root(&self, imported: bool) -> Result<NewRoot, DriveError> {
        let (config, store) = (self.config, self.store);
        if imported {
            return Err(DriveError::NewRoot(
                "the vault-pki store generates the new root inside Vault (its key never \
                 leaves it): --new-root-cert and --new-root-key cannot be used with it"
                    .into(),
            ));
        }
        store.check().await?;
        let pending = store.pending().await?;
        let exists = pending.is_some();
        let waiting = match pending {
            Some(Pending::Inside(cert)) if self.tied(&cert).await? => {
                let policy = config.root_policy();
                policy
                    .check_root(&cert)
                    .and_then(|()| policy.check_anchor(&cert))
                    .map_err(|v| {
                        DriveError::NewRoot(format!(
                            "the new issuer waiting in {}: {v}",
                            store.pending_location()
                        ))
                    })?;
                Some(cert)
            }
            _ => None,
        };
        Ok(NewRoot::Vault {
            stale: exists && waiting.is_none(),
            waiting,
        })
    }

    /// File and vault-kv stores: the root kept by a start that stopped early, else the one
    /// given, else one generated under the root policy — where revocation lists are served
    /// (`lists`), named apart from the current root by a serialNumber attribute (its
    /// issuance time and a random part, [`crate::pki::generation`]), since a proxy picks a CA's list by its name (docs/istio.md §14).
    async fn local_new_root(
        &self,
        given: Option<RootCa>,
        lists: bool,
    ) -> Result<NewRoot, DriveError> {
        let (config, store) = (self.config, self.store);
        let (waiting, over) = match store.pending().await? {
            Some(Pending::Held { root, version }) => (Some(root), version),
            _ => (None, None),
        };
        let waiting = match (waiting, over) {
            // The file store's pending root is moved aside with a finished transition.
            (Some(root), None) if self.own && root.cert() != self.current => Some(root),
            (Some(root), Some(_)) if self.tied(root.cert()).await? => Some(root),
            _ => None,
        };
        if let Some(saved) = waiting {
            if given
                .as_ref()
                .is_some_and(|given| given.cert() != saved.cert())
            {
                return Err(DriveError::NewRoot(format!(
                    "a different new root is already waiting in {}: start with it (no \
                     --new-root-cert) or `transition abort` first",
                    store.pending_location()
                )));
            }
            return Ok(NewRoot::Local {
                root: saved,
                saved: true,
                over,
            });
        }
        let policy = config.root_policy();
        let root = match given {
            Some(r) => r,
            None => {
                policy
                    .check_may_generate_root()
                    .map_err(|v| DriveError::NewRoot(v.to_string()))?;
                let mut spec = policy.root_spec(&config.trust_domain);
                if lists {
                    spec.subject.serial_number = Some(crate::pki::generation(self.now));
                }
                crate::pki::generate_root(&spec, self.now)
                    .map_err(|e| DriveError::NewRoot(e.to_string()))?
            }
        };
        policy
            .check_root(root.cert())
            .and_then(|()| policy.check_anchor(root.anchor()))
            .map_err(|v| DriveError::NewRoot(v.to_string()))?;
        Ok(NewRoot::Local {
            root,
            saved: false,
            over,
        })
    }

    /// Every primary still to move, with what it serves now (which must be under the current
    /// root); one already under the new root is left out.
    async fn moving(
        &self,
        new_cert: Option<&Cert>,
    ) -> Result<Vec<(&crate::topology::Cluster, CaCertsFiles)>, DriveError> {
        let mut moving = Vec::new();
        for cluster in self.config.topology.primaries() {
            let name = cluster.name.as_str();
            let original = current_material(self.config, cluster, false).await?;
            let verified = verify_cacerts(&original, self.now).map_err(|problems| {
                DriveError::CurrentMaterial {
                    cluster: name.to_string(),
                    reason: format!(
                        "the current cacerts does not validate: {}",
                        crate::pki::BundleProblem::join(&problems)
                    ),
                }
            })?;
            if new_cert == Some(verified.anchor()) {
                tracing::info!(cluster = name, "already signs under the new root");
                continue;
            }
            if verified.anchor() != self.current {
                return Err(DriveError::CurrentMaterial {
                    cluster: name.to_string(),
                    reason: "signs under another root than the current one: migrate it first"
                        .into(),
                });
            }
            moving.push((cluster, original));
        }
        if moving.is_empty() {
            return Err(DriveError::NothingToDo(
                "every primary already signs under the new root".into(),
            ));
        }
        Ok(moving)
    }

    /// The new root's signer (for vault-pki: the new issuer, generated now unless a start
    /// that stopped early made it), then every new intermediate, in memory — where the
    /// primaries serve `lists`, each named apart from its predecessor and the lists carried
    /// ([`lists::carry`]); then saved: the new root before anything issued under it. Returns
    /// the clusters that move.
    async fn issue_and_keep(
        &self,
        new: NewRoot,
        moving: Vec<(&crate::topology::Cluster, CaCertsFiles)>,
        finished: Option<Record>,
        lists: Option<Vec<crate::pki::Crl>>,
    ) -> Result<Vec<String>, DriveError> {
        let (config, files, now) = (self.config, self.files, self.now);
        let keep = match &new {
            NewRoot::Local {
                saved: false, over, ..
            } => Some(*over),
            _ => None,
        };
        let generation = lists.as_ref().map(|_| crate::pki::generation(now));
        let signer = match new {
            NewRoot::Local { root, .. } => crate::root_store::Signer::Local(root),
            NewRoot::Vault { ref waiting, stale } => {
                let name_apart = generation.clone();
                self.store
                    .signer_inside(config, waiting.is_some(), stale, name_apart, now)
                    .await?
            }
        };
        let root = signer.root_cert().clone();
        let above: Vec<Cert> = match &signer {
            crate::root_store::Signer::Local(r) => r.chain().to_vec(),
            crate::root_store::Signer::Vault { path, .. } => path.iter().skip(1).cloned().collect(),
        };
        let lists = match lists {
            Some(served) => {
                lists::check_new_root(&root, &above, self.current, &served)?;
                let root_list = lists::new_root_list(&signer, now).await?;
                Some((served, root_list))
            }
            None => None,
        };
        let mut issued = Vec::new();
        for (cluster, original) in moving {
            let name = cluster.name.clone();
            let (new, fresh) = match saved_new(files, self.own, &name, &root, now).await? {
                Some(saved) => (saved, false),
                None => (
                    issue_new(config, cluster, &signer, &root, generation.clone(), now).await?,
                    true,
                ),
            };
            issued.push((name, original, new, fresh));
        }
        if let Some((served, root_list)) = lists {
            lists::carry(&mut issued, (root_list, &above), &served, now)?;
        }
        if let Some(finished) = finished {
            files.archive(&finished, now).await?;
        }
        if let (Some(over), crate::root_store::Signer::Local(new_root)) = (keep, &signer) {
            self.store.keep(new_root, over).await?;
        }
        let clusters: Vec<String> = issued.iter().map(|(n, ..)| n.clone()).collect();
        save_moving(files, self.audit, issued, now).await?;
        Ok(clusters)
    }
}

/// The new root of a rotation being started.
enum NewRoot {
    /// In hand: kept by a start that stopped early (`saved`), or made or imported now.
    /// `over`: the KV version of a stale `<path>-next` to write over.
    Local {
        root: RootCa,
        saved: bool,
        over: Option<u64>,
    },
    /// A Vault PKI issuer: `waiting` if a start that stopped early generated it; `stale` if
    /// `<base>-next` names an earlier rotation's issuer.
    Vault { waiting: Option<Cert>, stale: bool },
}
