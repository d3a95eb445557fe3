//! Keeping Vault's revocation list current in every primary (README, "When a key leaks"):
//! with the vault-pki store the mesh CA's list is Vault's, and it expires within days (the
//! PKI engine's CRL `expiry`), after which every proxy would reject every chain through the
//! mesh CA (docs/istio.md §14). So the leader looks at Vault's list hourly; once it is due
//! (half of its life gone, or ten days left) Vault rebuilds it, and every primary that serves
//! lists gets the newer one.
//!
//! Likewise the lists of the CAs above the mesh CA (a company's intermediates and offline
//! root), which the company publishes where the chain's certificates say: where a primary
//! serves lists, the leader fetches them hourly and puts each newer one in place.

use std::time::Duration;

use time::OffsetDateTime;

use super::Daemon;
use crate::revocation::{Refreshed, due_for_refresh, fetch_published, refresh, vault_list};

/// How often the leader looks at Vault's list.
pub const LIST_CHECK_INTERVAL: Duration = Duration::from_secs(3600);

/// What the leader knows of the lists it publishes.
#[derive(Default)]
pub struct ListWatch {
    /// When it last looked.
    checked: Option<OffsetDateTime>,
    /// The thisUpdate of the list every primary was last found serving or given.
    published: Option<OffsetDateTime>,
    /// The thisUpdate of each list of the CAs above the mesh CA every primary was last given.
    company: Option<Vec<OffsetDateTime>>,
}

impl Daemon {
    /// Hourly: with the vault-pki store, Vault's list, rebuilt once it is due; below a
    /// company's CAs, their published lists — each put in place of the older one wherever a
    /// primary serves lists. Not while a transition is under way (it writes the lists itself);
    /// a failure is logged and tried again at the next look.
    pub async fn refresh_lists(&self) {
        let now = self.clock.now();
        {
            let mut watch = self.lists.lock().await;
            let interval = time::Duration::try_from(LIST_CHECK_INTERVAL).unwrap_or_default();
            if watch.checked.is_some_and(|t| now - t < interval) {
                return;
            }
            watch.checked = Some(now);
        }
        if !self.no_transition("revocation lists").await {
            return;
        }
        if matches!(
            self.config.root,
            crate::config::RootStoreConfig::VaultPki { .. }
        ) && let Err(e) = self.publish_vault_list(now).await
        {
            tracing::warn!(error = %e, "cannot refresh Vault's revocation list in the primaries");
        }
        if let Err(e) = self.publish_company_lists(now).await {
            tracing::warn!(error = %e, "cannot refresh the company's revocation lists in the primaries");
        }
    }

    /// The lists of the CAs above the mesh CA, fetched where they are published, put in place
    /// where newer — only where some primary serves lists, and only when they changed since
    /// they were last given.
    async fn publish_company_lists(&self, now: OffsetDateTime) -> Result<(), String> {
        let serves = self
            .last_seen
            .lock()
            .await
            .values()
            .any(|s| s.assessment.revocation_lists_expire.is_some());
        if !serves {
            return Ok(());
        }
        let source = self.root_source().await.map_err(|e| e.to_string())?;
        let Some(certs) = source.load_certs().await.map_err(|e| e.to_string())? else {
            return Ok(());
        };
        if certs.between.is_empty() {
            return Ok(());
        }
        let chain = certs.path();
        let fetched = fetch_published(&chain).await?;
        let stamps: Vec<OffsetDateTime> =
            fetched.iter().map(crate::pki::Crl::this_update).collect();
        if self.lists.lock().await.company.as_ref() == Some(&stamps) {
            return Ok(());
        }
        let results = refresh(&self.config, &fetched, &chain[1..], "serve", false, now).await;
        log_refreshed(
            &results,
            "revocation lists refreshed from the company's PKI",
        );
        if !results.iter().any(Refreshed::failed) {
            self.lists.lock().await.company = Some(stamps);
        }
        Ok(())
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
            true => vault_list(pki, true, crate::revocation::VAULT_LIST_MIN_LIFE, now)
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
        log_refreshed(&results, "revocation lists refreshed from Vault");
        if !results.iter().any(|r| r.failed()) {
            self.lists.lock().await.published = Some(list.this_update());
        }
        Ok(())
    }
}

/// Logs what a refresh did: each primary refreshed (`what`), each failure.
fn log_refreshed(results: &[Refreshed], what: &str) {
    for r in results {
        match r.result {
            "refreshed" => tracing::info!(cluster = %r.cluster, detail = %r.detail, "{what}"),
            "failed" => {
                tracing::warn!(cluster = %r.cluster, error = %r.detail, "cannot refresh its revocation lists")
            }
            _ => {}
        }
    }
}
