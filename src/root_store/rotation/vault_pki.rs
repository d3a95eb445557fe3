//! vault-pki's rotation: the new root is a second issuer Vault generates in the PKI engine,
//! `<base>-next` (`<base>`: the configured issuer, else `cacertd-root`), its key never leaving
//! Vault. It then takes the configured issuer's name (the old one renamed
//! `<name>-replaced-<time>`), or becomes the mount's default issuer; the old issuer stays in
//! the mount.

use time::OffsetDateTime;

use super::{Pending, RootRotation, RotationError, SwapResult, Swapped, not_the_new_root};
use crate::config::{Config, RootStoreConfig};
use crate::pki::{Cert, RootCa};
use crate::root_store::vault::VaultPki;
use crate::root_store::{RootSource, Signer, StoreError, VaultError};

pub(super) struct VaultPkiRotation {
    pub(super) pki: VaultPki,
    pub(super) base: String,
}

impl VaultPkiRotation {
    fn next(&self) -> String {
        format!("{}-next", self.base)
    }

    fn err(&self, e: VaultError) -> String {
        format!("{}: {e}", self.pki.describe())
    }

    /// Refuses to generate while the mount would make any new issuer its default at once.
    async fn refuse_default_follows_latest(&self) -> Result<(), RotationError> {
        let pki = &self.pki;
        let follows = pki
            .default_follows_latest_issuer()
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?;
        if follows {
            return Err(RotationError::Refused(format!(
                "{}: default_follows_latest_issuer is on, so a new root would become the \
                 default issuer at once and sign before every cluster trusts it; turn it off \
                 first (vault write {}/config/issuers default_follows_latest_issuer=false)",
                pki.describe(),
                pki.mount
            )));
        }
        Ok(())
    }
}

#[async_trait::async_trait(?Send)]
impl RootRotation for VaultPkiRotation {
    fn pending_location(&self) -> String {
        format!(
            "vault-pki {} issuer {} at {}",
            self.pki.mount,
            self.next(),
            self.pki.session.address()
        )
    }

    fn keeps_key_inside(&self) -> bool {
        true
    }

    async fn current(&self) -> Result<Cert, RotationError> {
        self.pki
            .root_cert()
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?
            .ok_or_else(|| RotationError::Refused("there is no root to rotate yet".into()))
    }

    /// `[root] issuer` set: it must name the issuer (the rotation hands the name to the new
    /// issuer; a reference by id would keep pointing at the old one). Checked when a rotation
    /// starts only: mid-swap, the name is briefly on neither issuer.
    async fn check(&self) -> Result<(), RotationError> {
        let pki = &self.pki;
        let Some(reference) = &pki.issuer else {
            return Ok(());
        };
        let name = pki
            .issuer_name(reference)
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?;
        if name.as_deref() != Some(reference.as_str()) {
            return Err(RotationError::Refused(format!(
                "[root] issuer = {reference:?} is not the name of an issuer in {} (an id?): \
                 a rotation hands the name to the new issuer, so name the issuer (vault write \
                 {}/issuer/<id> issuer_name=...) and use that name",
                pki.mount, pki.mount
            )));
        }
        Ok(())
    }

    async fn pending(&self) -> Result<Option<Pending>, RotationError> {
        Ok(self
            .pki
            .issuer_cert(&self.next())
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?
            .map(Pending::Inside))
    }

    async fn keep(&self, _root: &RootCa, _over: Option<u64>) -> Result<(), RotationError> {
        Err(RotationError::Refused(
            "the vault-pki store generates the new root inside Vault (its key never leaves \
             it): a root made elsewhere cannot be kept there"
                .into(),
        ))
    }

    async fn signer_inside(
        &self,
        config: &Config,
        reuse: bool,
        stale: bool,
        serial_number: Option<String>,
        now: OffsetDateTime,
    ) -> Result<Signer, RotationError> {
        let pki = &self.pki;
        let vault_err = |e: VaultError| RotationError::Refused(self.err(e));
        let next = self.next();
        if stale {
            let aside = format!("{}-{}", self.base, now.unix_timestamp());
            pki.rename_issuer(&next, &aside).await.map_err(vault_err)?;
        }
        if !reuse {
            self.refuse_default_follows_latest().await?;
            let policy = config.root_policy();
            policy
                .check_may_generate_root()
                .map_err(|v| RotationError::Refused(v.to_string()))?;
            let spec = policy.root_spec(&config.trust_domain);
            let cert = pki
                .generate_issuer(&next, &spec, serial_number.as_deref())
                .await
                .map_err(vault_err)?;
            policy
                .check_root(&cert)
                .map_err(|v| RotationError::Refused(v.to_string()))?;
        }
        let mut signing = config.clone();
        signing.root = RootStoreConfig::VaultPki {
            mount: pki.mount.clone(),
            issuer: Some(next),
        };
        let refused = |e: StoreError| RotationError::Refused(e.to_string());
        RootSource::open(&signing)
            .await
            .map_err(refused)?
            .signer()
            .await
            .map_err(refused)
    }

    /// `<base>-next` takes the configured issuer's name (the old issuer renamed
    /// `<name>-replaced-<unix time>`), or becomes the mount's default issuer.
    async fn swap(&self, new_root: &Cert, now: OffsetDateTime) -> SwapResult {
        let (pki, stop) = (&self.pki, RotationError::Swap);
        let vault_err = |e: VaultError| stop(self.err(e));
        let next = self.next();
        let waiting = pki.issuer_cert(&next).await.map_err(vault_err)?;
        if waiting.as_ref().is_some_and(|w| w != new_root) {
            return Err(not_the_new_root(&self.pending_location()));
        }
        match (&pki.issuer, waiting) {
            (Some(name), Some(_)) => {
                let mut kept = "renamed by an earlier attempt".to_string();
                if pki.issuer_cert(name).await.map_err(vault_err)?.is_some() {
                    let aside = format!("{name}-replaced-{}", now.unix_timestamp());
                    pki.rename_issuer(name, &aside).await.map_err(vault_err)?;
                    kept = format!("issuer {aside} of {}", pki.mount);
                }
                pki.rename_issuer(&next, name).await.map_err(vault_err)?;
                Ok(Some(Swapped { kept }))
            }
            (Some(name), None) => match pki.issuer_cert(name).await.map_err(vault_err)? {
                Some(cert) if &cert == new_root => Ok(None),
                _ => Err(stop(format!(
                    "{}: neither issuer {name} nor {next} holds the new root",
                    pki.describe()
                ))),
            },
            (None, Some(_)) => {
                if pki.root_cert().await.map_err(vault_err)?.as_ref() == Some(new_root) {
                    return Ok(None);
                }
                pki.set_default_issuer(&next).await.map_err(vault_err)?;
                Ok(Some(Swapped {
                    kept: format!("the previous default issuer, still in {}", pki.mount),
                }))
            }
            (None, None) => Err(stop(format!(
                "{}: the new issuer {next} is missing",
                pki.describe()
            ))),
        }
    }

    /// The key never left Vault, and the new issuer is now the root: nothing to destroy.
    async fn destroy_pending(&self) -> Result<Option<String>, RotationError> {
        Ok(None)
    }
}
