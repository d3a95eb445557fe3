//! The one writer of a cluster's `cacerts`. `issue`, `serve` and every step of a trust
//! transition write through [`CacertsWriter::write`], and nothing else can: the targets' own
//! write methods are private to this module's parent. The writer validates the exact bytes
//! about to be written, as istiod will (docs/istio.md §1), hands them to the target — which
//! backs up what it replaces and writes with optimistic concurrency — and notes the write in
//! the audit log.

use time::OffsetDateTime;

use crate::audit::Audit;
use crate::pki::{
    BundleProblem, CaCertsFiles, Cert, VerifiedCaCerts, verify_ca_crl, verify_cacerts_for_mesh,
};

use super::{Observed, Target, TargetError, WriteMeta, WriteReport};

/// What the material about to be written is, which decides how it is checked.
#[derive(Clone, Copy, Debug)]
pub enum Material<'a> {
    /// Made by cacertd (an intermediate it issued, with the bundle it chose): everything
    /// istiod checks, and the chain's name constraints must admit the mesh's workload
    /// identities (`spiffe://<trust domain>/…`). With `root`, the chain must end there.
    Issued { root: Option<&'a Cert> },
    /// What the cluster served before a trust transition, its signing certificate and chain
    /// put back verbatim (istiod's own self-signed set included), with the bundle a phase
    /// gives it: only what istiod checks. This signer is the one istiod already accepted,
    /// and it may predate the mesh's name constraints or trust domain; refusing it would
    /// leave the cluster unable to go back.
    ServedBefore,
}

/// Why nothing was written.
#[derive(Debug, thiserror::Error)]
pub enum WriteError {
    /// The material would not be accepted as it must be; nothing was sent to the cluster.
    #[error("the cacerts about to be written does not validate, so it was not written: {0}")]
    Invalid(String),
    #[error(transparent)]
    Target(#[from] TargetError),
}

/// Writes `cacerts` sets; `action` names its writes in the audit log.
pub struct CacertsWriter<'a> {
    trust_domain: &'a str,
    audit: &'a Audit,
    action: &'static str,
}

impl<'a> CacertsWriter<'a> {
    pub fn new(trust_domain: &'a str, audit: &'a Audit, action: &'static str) -> Self {
        CacertsWriter {
            trust_domain,
            audit,
            action,
        }
    }

    /// The checks [`CacertsWriter::write`] makes, for callers that want to stop before
    /// touching anything else.
    pub fn check(
        &self,
        files: &CaCertsFiles,
        material: Material<'_>,
        now: OffsetDateTime,
    ) -> Result<VerifiedCaCerts, String> {
        let trust_domain = match material {
            Material::Issued { .. } => Some(self.trust_domain),
            Material::ServedBefore => None,
        };
        let verified = verify_cacerts_for_mesh(files, now, trust_domain)
            .map_err(|problems| BundleProblem::join(&problems))?;
        verify_ca_crl(files, now)?;
        if let Material::Issued { root: Some(root) } = material
            && verified.anchor() != root
        {
            return Err(format!(
                "it chains to {}, not to the root it was issued under ({})",
                verified.anchor().info().subject,
                root.info().subject
            ));
        }
        Ok(verified)
    }

    /// Validates `files`, then writes them to `target` starting from `observed` (a change in
    /// between is a conflict, and nothing is written), backing up what is replaced.
    pub async fn write(
        &self,
        target: &Target,
        files: &CaCertsFiles,
        material: Material<'_>,
        meta: &WriteMeta,
        observed: &Observed,
    ) -> Result<WriteReport, WriteError> {
        self.check(files, material, meta.written_at)
            .map_err(WriteError::Invalid)?;
        // Proxies that hold the cluster's revocation lists check every chain against them:
        // a set without the file would leave them with an empty one, or none (docs/istio.md
        // §14). Revocation lists leave only through a transition that says so.
        if let Some(current) = &observed.snapshot.cacerts
            && current.has_lists()
            && !files.has_lists()
        {
            return Err(WriteError::Invalid(format!(
                "the cluster's cacerts carries {} (revocation lists its proxies check) and this \
                 set has none; renew its intermediate with `cacertd renew {}`, which keeps the \
                 lists",
                CaCertsFiles::CA_CRL,
                meta.cluster
            )));
        }
        let report = target.write(files, meta, observed).await?;
        self.audit.note(
            meta.written_at,
            self.action,
            Some(&meta.cluster),
            "written",
            Some(meta.serial.clone()),
            Some(match &report.backup {
                Some(backup) => format!("{}; replaced set kept in {backup}", meta.reason),
                None => meta.reason.clone(),
            }),
        );
        if !report.pruned.is_empty() {
            self.audit.note(
                meta.written_at,
                "backups-removed",
                Some(&meta.cluster),
                "removed",
                None,
                Some(format!(
                    "[backups] no longer keeps {}",
                    report.pruned.join(", ")
                )),
            );
        }
        if let Some(problem) = &report.prune_problem {
            tracing::warn!(cluster = %meta.cluster, problem = %problem, "old backups kept");
        }
        Ok(report)
    }
}

#[cfg(test)]
mod tests {

    use super::*;
    use crate::cluster::DirTarget;
    use crate::pki::fixtures::{cacerts_under, now, root};

    fn meta(at: OffsetDateTime) -> WriteMeta {
        WriteMeta {
            cluster: "c1".into(),
            serial: "1a".into(),
            written_at: at,
            reason: "test".into(),
            retention: None,
        }
    }

    #[tokio::test]
    async fn only_material_that_validates_as_what_it_is_is_written_and_every_write_is_audited() {
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(DirTarget::new(dir.path().join("out"), dir.path().join("b")));
        let audit_log = dir.path().join("audit.log");
        let audit = Audit::new(audit_log.clone());
        let writer = CacertsWriter::new("cluster.local", &audit, "cacerts-write");
        let (ours, theirs) = (root(), root());
        let set = cacerts_under(&ours);
        let observed = Observed::default();

        // Issued under another root than the one it claims: nothing reaches the target.
        let wrong = Material::Issued {
            root: Some(theirs.cert()),
        };
        let err = writer
            .write(&target, &set, wrong, &meta(now()), &observed)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::Invalid(m) if m.contains("not to the root")),
            "{err}"
        );
        // Expired at the time of writing: refused whatever it is.
        let later = now() + time::Duration::days(400);
        for material in [Material::ServedBefore, Material::Issued { root: None }] {
            let err = writer
                .write(&target, &set, material, &meta(later), &observed)
                .await
                .unwrap_err();
            assert!(matches!(err, WriteError::Invalid(_)), "{err}");
        }
        assert!(!dir.path().join("out").exists(), "nothing written");
        assert!(!audit_log.exists(), "nothing to audit");

        let right = Material::Issued {
            root: Some(ours.cert()),
        };
        writer
            .write(&target, &set, right, &meta(now()), &observed)
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/ca-cert.pem")).unwrap(),
            set.ca_cert
        );
        let audit = std::fs::read_to_string(&audit_log).unwrap();
        assert_eq!(audit.lines().count(), 1, "{audit}");
        assert!(audit.contains("\"action\":\"cacerts-write\""), "{audit}");
        assert!(!audit.contains("PRIVATE KEY"));
    }

    #[tokio::test]
    async fn revocation_lists_are_checked_and_never_dropped_by_a_write() {
        use crate::pki::{CaKey, crls_pem, sign_crl};
        let dir = tempfile::tempdir().unwrap();
        let target = Target::Dir(DirTarget::new(dir.path().join("out"), dir.path().join("b")));
        let audit = Audit::new(dir.path().join("audit.log"));
        let writer = CacertsWriter::new("cluster.local", &audit, "cacerts-write");
        let ours = root();
        let plain = cacerts_under(&ours);
        let own = Cert::one_from_pem(&plain.ca_cert, "ca-cert.pem").unwrap();
        let key = CaKey::from_pem(&plain.ca_key, "ca-key.pem").unwrap();
        let later = now() + time::Duration::days(30);
        let by_root = sign_crl(ours.cert(), ours.key(), &[], 1, now(), later).unwrap();
        let by_own = sign_crl(&own, &key, &[], 1, now(), later).unwrap();
        let material = Material::Issued { root: None };

        // A list istiod would refuse (the intermediate has none): nothing written.
        let mut half = plain.clone();
        half.ca_crl = crls_pem(std::slice::from_ref(&by_root));
        let err = writer
            .write(&target, &half, material, &meta(now()), &Observed::default())
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::Invalid(m) if m.contains("ca-crl.pem")),
            "{err}"
        );
        assert!(!dir.path().join("out").exists());

        let mut full = plain.clone();
        full.ca_crl = crls_pem(&[by_root, by_own]);
        writer
            .write(&target, &full, material, &meta(now()), &Observed::default())
            .await
            .unwrap();
        assert_eq!(
            std::fs::read(dir.path().join("out/ca-crl.pem")).unwrap(),
            full.ca_crl
        );

        // The next write without lists would take them from the proxies: refused.
        let observed = target.read().await.unwrap();
        let err = writer
            .write(&target, &plain, material, &meta(now()), &observed)
            .await
            .unwrap_err();
        assert!(
            matches!(&err, WriteError::Invalid(m) if m.contains("cacertd renew c1")),
            "{err}"
        );
        assert_eq!(
            std::fs::read(dir.path().join("out/ca-crl.pem")).unwrap(),
            full.ca_crl
        );
    }
}
