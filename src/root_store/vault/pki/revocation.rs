//! Revocation through the PKI engine (README, "When a key leaks"): Vault keeps the list of what
//! its issuer revoked and signs it with the issuer's key, which never leaves it.

use super::{VaultError, VaultPki};
use crate::pki::Crl;

impl VaultPki {
    /// The issuer reference the lists are read from: the configured issuer, or the default.
    fn list_issuer(&self) -> &str {
        self.issuer.as_deref().unwrap_or("default")
    }

    /// The issuer's current revocation list, as Vault last built it.
    pub async fn revocation_list(&self) -> Result<Crl, VaultError> {
        let path = format!("{}/issuer/{}/crl", self.mount, self.list_issuer());
        let data = self
            .raw("read the revocation list", path.clone(), None)
            .await?;
        let what = format!("{} revocation list ({path})", self.describe());
        let pem = data["crl"].as_str().ok_or_else(|| VaultError::Malformed {
            what: what.clone(),
            reason: "no crl in the response".into(),
        })?;
        let mut lists =
            Crl::all_from_pem(pem.as_bytes(), &what).map_err(|e| VaultError::Malformed {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        match (lists.pop(), lists.is_empty()) {
            (Some(list), true) => Ok(list),
            _ => Err(VaultError::Malformed {
                what,
                reason: "not exactly one revocation list".into(),
            }),
        }
    }

    /// Has Vault rebuild its lists now (`crl/rotate`): a fresh thisUpdate and nextUpdate,
    /// the same entries.
    pub async fn rebuild_revocation_lists(&self) -> Result<(), VaultError> {
        let path = format!("{}/crl/rotate", self.mount);
        self.raw("rebuild the revocation lists", path, None)
            .await
            .map(drop)
    }

    /// Has Vault revoke the certificate it issued with `serial` (hex, any case, colons
    /// optional); its lists are rebuilt with it.
    pub async fn revoke(&self, serial: &str) -> Result<(), VaultError> {
        let hex: String = serial
            .chars()
            .filter(char::is_ascii_hexdigit)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let colons = hex
            .as_bytes()
            .chunks(2)
            .map(|pair| String::from_utf8_lossy(pair).into_owned())
            .collect::<Vec<_>>()
            .join(":");
        let path = format!("{}/revoke", self.mount);
        self.raw(
            "revoke",
            path,
            Some(serde_json::json!({ "serial_number": colons })),
        )
        .await
        .map(drop)
    }
}
