//! Keeping Vault's revocation list current in every primary (README, "When a key leaks"):
//! with the vault-pki store the mesh CA's list is Vault's, and it expires within days (the
//! PKI engine's CRL `expiry`), after which every proxy would reject every chain through the
//! mesh CA (docs/istio.md §14). So the leader looks at Vault's list hourly; once it is due
//! (half of its life gone, or ten days left) Vault rebuilds it, and every primary that serves
//! lists gets the newer one.

use std::time::Duration;

use time::OffsetDateTime;

use super::Daemon;
use crate::revocation::{due_for_refresh, refresh, vault_list};

/// How often the leader looks at Vault's list.
pub const LIST_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// What the leader knows of the lists it publishes.
#[derive(Default)]
pub struct ListWatch {
    /// When it last looked.
    checked: Option<OffsetDateTime>,
    /// The thisUpdate of the list every primary was last found serving or given.
    published: Option<OffsetDateTime>,
}

impl Daemon {
    /// With the vault-pki store, hourly: Vault's list, rebuilt once it is due, put in place of
    /// the older one wherever a primary serves lists. Not while a transition is under way (it
    /// writes the lists itself); a failure is logged and tried again at the next look.
    pub async fn refresh_vault_lists(&self) {
        if !matches!(
            self.config.root,
            crate::config::RootStoreConfig::VaultPki { .. }
        ) {
            return;
        }
        let now = self.clock.now();
        {
            let mut watch = self.lists.lock().await;
            let interval = time::Duration::try_from(LIST_CHECK_INTERVAL).unwrap_or_default();
            if watch.checked.is_some_and(|t| now - t < interval) {
                return;
            }
            watch.checked = Some(now);
        }
        match self.transition_record().await {
            Ok(Some(record)) if !record.is_over() => return,
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the transition record; revocation lists wait");
                return;
            }
        }
        if let Err(e) = self.publish_vault_list(now).await {
            tracing::warn!(error = %e, "cannot refresh Vault's revocation list in the primaries");
        }
    }

    async fn publish_vault_list(&self, now: OffsetDateTime) -> Result<(), String> {
        let source = self.root_source().await.map_err(|e| e.to_string())?;
        let Some(pki) = source.as_vault_pki() else {
            return Ok(());
        };
        let Some(certs) = source.load_certs().await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        let current = pki.revocation_list().await.map_err(|e| e.to_string())?;
        let stale = due_for_refresh(&current, now);
        if !stale && self.lists.lock().await.published == Some(current.this_update()) {
            return Ok(());
        }
        let list = match stale {
            true => vault_list(
                pki,
                true,
                crate::transition::revoke::VAULT_LIST_MIN_LIFE,
                now,
            )
            .await
            .map_err(|e| e.to_string())?,
            false => current,
        };
        let results = refresh(
            &self.config,
            std::slice::from_ref(&list),
            std::slice::from_ref(certs.signing_ca()),
            "serve",
            false,
            now,
        )
        .await;
        for r in &results {
            match r.result {
                "refreshed" => {
                    tracing::info!(cluster = %r.cluster, detail = %r.detail, "revocation lists refreshed from Vault")
                }
                "failed" => {
                    tracing::warn!(cluster = %r.cluster, error = %r.detail, "cannot refresh its revocation lists")
                }
                _ => {}
            }
        }
        if !results.iter().any(|r| r.failed()) {
            self.lists.lock().await.published = Some(list.this_update());
        }
        Ok(())
    }
}
