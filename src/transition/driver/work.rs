//! One cluster's write or restart step of a transition: the material validated and written
//! through the one writer, the restarts of the primary and its remotes in Istio's order.

use super::*;

/// What a cluster's write or restart step needs.
pub(super) struct Work<'a> {
    pub(super) config: &'a Config,
    pub(super) targets: &'a BTreeMap<String, Target>,
    pub(super) remotes: &'a BTreeMap<String, Vec<(String, KubeTarget)>>,
    pub(super) materials: &'a BTreeMap<String, ClusterMaterial>,
    pub(super) audit: &'a Audit,
    /// Every write goes through it.
    pub(super) writer: CacertsWriter<'a>,
    pub(super) exclude_namespaces: &'a [String],
    pub(super) kind: TransitionKind,
    /// A revocation's cluster: the one whose signer changes.
    pub(super) revoked: Option<&'a str>,
    /// Primaries a migration only gives revocation lists, keeping their signer.
    pub(super) lists_only: Vec<String>,
}

/// The clusters a run opened: targets, each primary's remotes, each primary's material.
type OpenedRefs<'a> = (
    &'a BTreeMap<String, Target>,
    &'a BTreeMap<String, Vec<(String, KubeTarget)>>,
    &'a BTreeMap<String, ClusterMaterial>,
);

impl<'a> Work<'a> {
    /// What the cluster steps of `record` need, writing through one writer.
    pub(super) fn new(
        config: &'a Config,
        audit: &'a Audit,
        (targets, remotes, materials): OpenedRefs<'a>,
        exclude_namespaces: &'a [String],
        record: &Record,
        revoked: Option<&'a str>,
    ) -> Self {
        Work {
            config,
            targets,
            remotes,
            materials,
            audit,
            writer: CacertsWriter::new(&config.trust_domain, audit, "transition-write"),
            exclude_namespaces,
            kind: record.kind,
            revoked,
            lists_only: record.options.lists_only.clone(),
        }
    }
}

impl Work<'_> {
    fn only_lists(&self, cluster: &str) -> bool {
        self.lists_only.iter().any(|c| c == cluster)
    }

    /// How the writer checks `cluster`'s material of `of` ([`written_material`]); a cluster
    /// that only gets lists keeps its signer, checked as it served it.
    fn checked_as<'b>(
        &self,
        cluster: &str,
        of: MaterialOf,
        new_root: Option<&'b Cert>,
    ) -> crate::cluster::Material<'b> {
        if self.only_lists(cluster) {
            return crate::cluster::Material::ServedBefore;
        }
        written_material(self.kind, of, new_root, self.revoked != Some(cluster))
    }

    /// The material a write would serve (validated) and what the cluster holds now.
    pub(super) async fn prepare_write(
        &self,
        cluster: &str,
        of: MaterialOf,
        now: OffsetDateTime,
    ) -> Result<(CaCertsFiles, crate::cluster::Observed), DriveError> {
        let want =
            material(&self.materials[cluster], of).map_err(|e| DriveError::CurrentMaterial {
                cluster: cluster.to_string(),
                reason: e.to_string(),
            })?;
        // Never hand istiod material it would refuse (an original that expired while the
        // transition was held, say): stop before touching the cluster, with the writer's own
        // checks.
        let new_root = self.new_root(cluster)?;
        if let Err(problems) =
            self.writer
                .check(&want, self.checked_as(cluster, of, new_root.as_ref()), now)
        {
            return Err(DriveError::Unwritable {
                cluster: cluster.to_string(),
                what: describe_material(of),
                problems: problems.to_string(),
            });
        }
        let observed = self.targets[cluster]
            .read()
            .await
            .map_err(target_err(cluster))?;
        Ok((want, observed))
    }

    /// The root `cluster`'s new intermediate was issued under (none for a root's removal,
    /// whose clusters keep their intermediates).
    fn new_root(&self, cluster: &str) -> Result<Option<Cert>, DriveError> {
        if matches!(
            self.kind,
            TransitionKind::RemoveRoot | TransitionKind::Revoke | TransitionKind::Renew
        ) || self.only_lists(cluster)
        {
            return Ok(None);
        }
        Cert::one_from_pem(&self.materials[cluster].new.root_cert, "new root-cert.pem")
            .map(Some)
            .map_err(|e| DriveError::CurrentMaterial {
                cluster: cluster.to_string(),
                reason: format!("its saved new material is unreadable: {e}"),
            })
    }

    /// Writes `want` unless the cluster already serves it (no extra backup then).
    pub(super) async fn write(
        &self,
        cluster: &str,
        of: MaterialOf,
        want: &CaCertsFiles,
        observed: &crate::cluster::Observed,
        now: OffsetDateTime,
    ) -> Result<StepOutcome, DriveError> {
        if observed.snapshot.cacerts.as_ref() != Some(want) {
            let meta = WriteMeta {
                cluster: cluster.to_string(),
                serial: Cert::one_from_pem(&want.ca_cert, "ca-cert.pem")
                    .map(|c| c.info().serial.clone())
                    .unwrap_or_default(),
                written_at: now,
                reason: format!("trust transition: {}", describe_material(of)),
                // Every copy is kept while trust moves.
                retention: None,
            };
            self.writer
                .write(
                    &self.targets[cluster],
                    want,
                    self.checked_as(cluster, of, self.new_root(cluster)?.as_ref()),
                    &meta,
                    observed,
                )
                .await
                .map_err(|e| match e {
                    WriteError::Target(source) => target_err(cluster)(source),
                    WriteError::Invalid(problems) => DriveError::Unwritable {
                        cluster: cluster.to_string(),
                        what: describe_material(of),
                        problems: problems.to_string(),
                    },
                })?;
        }
        Ok(StepOutcome::Written)
    }

    /// Restarts `stage` of the mesh `cluster`'s istiod serves and waits for the rollouts.
    pub(super) async fn restart(
        &self,
        cluster: &str,
        stage: Stage,
        now: OffsetDateTime,
    ) -> Result<StepOutcome, DriveError> {
        let Target::Kube(kube) = &self.targets[cluster] else {
            tracing::info!(
                cluster = %cluster,
                stage = stage.name(),
                "directory target: the restart is up to whoever applies the folder"
            );
            return Ok(StepOutcome::Restarted);
        };
        let primary =
            self.config
                .topology
                .get(cluster)
                .ok_or_else(|| DriveError::UnknownCluster {
                    cluster: cluster.to_string(),
                })?;
        let ro = RestartOptions {
            stages: vec![stage],
            exclude_namespaces: self.exclude_namespaces.to_vec(),
            ..RestartOptions::default()
        };
        rollout::restart_primary(self.config, primary, &ro, now)
            .await
            .map_err(target_err(cluster))?;
        self.audit.note(
            now,
            "transition-restart",
            Some(cluster),
            stage.name(),
            None,
            None,
        );
        if stage != Stage::Istiod {
            return Ok(StepOutcome::Restarted);
        }
        // Every proxy there now started before istiod served this phase's bundle.
        let mut proxies = Vec::new();
        for p in kube.proxies().await.map_err(target_err(cluster))? {
            proxies.push(proxy_key(cluster, &p));
        }
        for (remote, target) in self.remotes.get(cluster).into_iter().flatten() {
            for p in target.proxies().await.map_err(target_err(remote))? {
                proxies.push(proxy_key(remote, &p));
            }
        }
        Ok(StepOutcome::IstiodRestarted { proxies })
    }
}

fn describe_material(of: MaterialOf) -> String {
    match of {
        MaterialOf::Original => "back to the material from before the transition".into(),
        MaterialOf::Phase(p) => format!("phase {p}"),
    }
}
