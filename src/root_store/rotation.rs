//! A root rotation's side of each root store: where the new root waits until every cluster
//! trusts it and signs with it, and how it then takes the old root's place — the old one
//! always kept (a previous KV version, a renamed issuer, a folder moved aside). The trust
//! transition drives these primitives; they know nothing of clusters.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{RootSource, StoreError};
use crate::audit::Audit;
use crate::config::Config;
use crate::fsutil::{FsError, create_private_dir};
use crate::pki::{Cert, RootCa};

/// Why a rotation's store cannot do what was asked.
#[derive(Debug, thiserror::Error)]
pub enum RotationError {
    /// Refused before anything was kept or changed.
    #[error("{0}")]
    Refused(String),
    /// The swap at the end of a rotation stopped part-way; running it again completes it.
    #[error("root swap: {0}")]
    Swap(String),
    #[error(transparent)]
    Io(#[from] FsError),
}

/// Where a root rotation's new root waits until the rotation is done (beside the file root
/// store it will replace, whichever store keeps the record).
pub fn new_root_dir(state_dir: &Path) -> PathBuf {
    state_dir.join("transition").join("new-root")
}

/// The root store a rotation replaces the root of: where the new root waits until the rotation
/// is done, and how it then takes the old one's place (the old one always kept).
pub enum RotationStore {
    /// The new root waits in `<state_dir>/transition/new-root/`; the old root folder is moved
    /// to `<root dir>-replaced-<time>`.
    File { dir: PathBuf },
    /// The new root waits in the secret `<path>-next`; it then becomes the next version of
    /// `<path>` (check-and-set), so KV v2 keeps the old root as the version before.
    VaultKv(Box<super::vault::VaultKv>),
    /// The new root is a second issuer Vault generates in the PKI engine, `<base>-next`
    /// (`<base>`: the configured issuer, else `cacertd-root`), its key never leaving Vault. It
    /// then takes the configured issuer's name (the old one renamed `<name>-replaced-<time>`),
    /// or becomes the mount's default issuer; the old issuer stays in the mount.
    VaultPki {
        pki: Box<super::vault::VaultPki>,
        base: String,
    },
}

impl RotationStore {
    pub async fn open(config: &Config) -> Result<Self, RotationError> {
        match &config.root {
            crate::config::RootStoreConfig::File { dir } => {
                Ok(RotationStore::File { dir: dir.clone() })
            }
            crate::config::RootStoreConfig::VaultKv { .. } => {
                match RootSource::open(config).await {
                    Ok(RootSource::VaultKv(kv)) => Ok(RotationStore::VaultKv(Box::new(kv))),
                    Ok(other) => Err(RotationError::Refused(format!(
                        "{}: not a vault-kv store",
                        other.describe()
                    ))),
                    Err(e) => Err(RotationError::Refused(e.to_string())),
                }
            }
            crate::config::RootStoreConfig::VaultPki { issuer, .. } => {
                match RootSource::open(config).await {
                    Ok(RootSource::VaultPki(pki)) => Ok(RotationStore::VaultPki {
                        pki: Box::new(pki),
                        base: issuer.clone().unwrap_or_else(|| "cacertd-root".into()),
                    }),
                    Ok(other) => Err(RotationError::Refused(format!(
                        "{}: not a vault-pki store",
                        other.describe()
                    ))),
                    Err(e) => Err(RotationError::Refused(e.to_string())),
                }
            }
        }
    }

    fn vault_err(kv: &super::vault::VaultKv, e: super::VaultError) -> String {
        format!("{}: {e}", kv.describe())
    }

    /// The root the store holds now.
    pub async fn current(&self) -> Result<Cert, RotationError> {
        let cert = match self {
            RotationStore::File { dir } => super::FileRootStore::new(dir.clone())
                .load_cert()
                .map_err(|e| RotationError::Refused(e.to_string()))?,
            RotationStore::VaultKv(kv) => kv
                .load()
                .await
                .map_err(|e| RotationError::Refused(Self::vault_err(kv, e)))?
                .map(|(r, _)| r.cert().clone()),
            RotationStore::VaultPki { pki, .. } => pki
                .root_cert()
                .await
                .map_err(|e| RotationError::Refused(format!("{}: {e}", pki.describe())))?,
        };
        cert.ok_or_else(|| RotationError::Refused("there is no root to rotate yet".into()))
    }

    pub fn pending_location(&self, state_dir: &Path) -> String {
        match self {
            RotationStore::File { .. } => new_root_dir(state_dir).display().to_string(),
            RotationStore::VaultKv(kv) => {
                format!(
                    "vault-kv {}/{} at {}",
                    kv.mount,
                    kv.next_path(),
                    kv.session.address()
                )
            }
            RotationStore::VaultPki { pki, base } => format!(
                "vault-pki {} issuer {base}-next at {}",
                pki.mount,
                pki.session.address()
            ),
        }
    }

    /// vault-pki, `[root] issuer` set: it must name the issuer (the rotation hands the name
    /// to the new issuer; a reference by id would keep pointing at the old one). Checked when
    /// a rotation starts only: mid-swap, the name is briefly on neither issuer.
    pub async fn check_named(&self) -> Result<(), RotationError> {
        let RotationStore::VaultPki { pki, .. } = self else {
            return Ok(());
        };
        let Some(reference) = &pki.issuer else {
            return Ok(());
        };
        let name = pki
            .issuer_name(reference)
            .await
            .map_err(|e| RotationError::Refused(format!("{}: {e}", pki.describe())))?;
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

    /// vault-pki: the certificate of the issuer a rotation generated, if there is one.
    pub async fn pending_issuer(&self) -> Result<Option<Cert>, RotationError> {
        match self {
            RotationStore::VaultPki { pki, base } => pki
                .issuer_cert(&format!("{base}-next"))
                .await
                .map_err(|e| RotationError::Refused(format!("{}: {e}", pki.describe()))),
            _ => Ok(None),
        }
    }

    /// vault-pki: what signs under the new issuer, generated first unless `waiting`; a `stale`
    /// `<base>-next` (an earlier rotation's, now the root) is renamed out of the way first.
    pub async fn next_signer(
        &self,
        config: &Config,
        waiting: bool,
        stale: bool,
        now: OffsetDateTime,
    ) -> Result<super::Signer, RotationError> {
        let RotationStore::VaultPki { pki, base } = self else {
            return Err(RotationError::Refused("not a vault-pki store".into()));
        };
        let vault_err =
            |e: super::VaultError| RotationError::Refused(format!("{}: {e}", pki.describe()));
        let next = format!("{base}-next");
        if stale {
            pki.rename_issuer(&next, &format!("{base}-{}", now.unix_timestamp()))
                .await
                .map_err(vault_err)?;
        }
        if !waiting {
            if pki
                .default_follows_latest_issuer()
                .await
                .map_err(vault_err)?
            {
                return Err(RotationError::Refused(format!(
                    "{}: default_follows_latest_issuer is on, so a new root would become the \
                     default issuer at once and sign before every cluster trusts it; turn it off \
                     first (vault write {}/config/issuers default_follows_latest_issuer=false)",
                    pki.describe(),
                    pki.mount
                )));
            }
            let policy = config.root_policy();
            let spec = policy.root_spec(&config.trust_domain);
            let cert = pki
                .generate_issuer(
                    &next,
                    spec.subject.organization.as_deref(),
                    &spec.subject.common_name,
                    super::vault::key_type(spec.key_algorithm),
                    spec.validity,
                )
                .await
                .map_err(vault_err)?;
            policy
                .check_root(&cert)
                .map_err(|v| RotationError::Refused(v.to_string()))?;
        }
        let mut signing = config.clone();
        signing.root = crate::config::RootStoreConfig::VaultPki {
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

    /// The new root kept by a rotation, with its KV version (to write over it).
    pub async fn pending(
        &self,
        state_dir: &Path,
    ) -> Result<Option<(RootCa, Option<u64>)>, RotationError> {
        match self {
            RotationStore::File { .. } => {
                match super::FileRootStore::new(new_root_dir(state_dir)).load() {
                    Ok(root) => Ok(Some((root, None))),
                    Err(super::StoreError::NoRoot { .. }) => Ok(None),
                    Err(e) => Err(RotationError::Refused(e.to_string())),
                }
            }
            RotationStore::VaultKv(kv) => Ok(kv
                .load_at(&kv.next_path())
                .await
                .map_err(|e| RotationError::Refused(Self::vault_err(kv, e)))?
                .map(|(root, version)| (root, Some(version)))),
            RotationStore::VaultPki { .. } => Ok(None),
        }
    }

    /// Keeps `root` as the new root; `over` is the version of a stale one to write over.
    pub async fn keep_pending(
        &self,
        state_dir: &Path,
        root: &RootCa,
        over: Option<u64>,
    ) -> Result<(), RotationError> {
        match self {
            RotationStore::File { .. } => {
                let dir = new_root_dir(state_dir);
                if let Some(parent) = dir.parent() {
                    create_private_dir(parent)
                        .map_err(|e| RotationError::Refused(e.to_string()))?;
                }
                super::FileRootStore::new(dir)
                    .create(root)
                    .map_err(|e| RotationError::Refused(e.to_string()))
            }
            RotationStore::VaultKv(kv) => {
                match kv
                    .write_at(&kv.next_path(), root, over.unwrap_or(0))
                    .await
                    .map_err(|e| RotationError::Refused(Self::vault_err(kv, e)))?
                {
                    Ok(_) => Ok(()),
                    Err(()) => Err(RotationError::Refused(format!(
                        "{}: someone else wrote a new root there at the same time",
                        self.pending_location(state_dir)
                    ))),
                }
            }
            RotationStore::VaultPki { .. } => Err(RotationError::Refused(
                "vault-pki keeps its new root in Vault".into(),
            )),
        }
    }

    /// Makes the pending new root the store's root, keeping the old one. Idempotent.
    pub async fn swap(&self, config: &Config, now: OffsetDateTime) -> Result<(), RotationError> {
        let stop = RotationError::Swap;
        let new_root = || async {
            self.pending(&config.state_dir)
                .await
                .map_err(|e| stop(e.to_string()))?
                .map(|(root, _)| root)
                .ok_or_else(|| stop("the new root is missing".into()))
        };
        let (new_root, kept) = match self {
            RotationStore::VaultPki { pki, base } => {
                return swap_pki(pki, base, config, now).await;
            }
            RotationStore::File { dir } => {
                let new_root = new_root().await?;
                let kept = swap_file_store(dir, &new_root, now)?;
                (new_root, kept)
            }
            RotationStore::VaultKv(kv) => {
                let new_root = new_root().await?;
                let Some((current, version)) =
                    kv.load().await.map_err(|e| stop(Self::vault_err(kv, e)))?
                else {
                    return Err(stop(format!("{}: the root is gone", kv.describe())));
                };
                if current.cert() == new_root.cert() {
                    return Ok(());
                }
                match kv
                    .write_at(&kv.path, &new_root, version)
                    .await
                    .map_err(|e| stop(Self::vault_err(kv, e)))?
                {
                    Ok(_) => {}
                    Err(()) => {
                        let now_there = kv.load().await.ok().flatten();
                        if now_there.as_ref().map(|(r, _)| r.cert()) != Some(new_root.cert()) {
                            return Err(stop(format!(
                                "{}: the root changed while it was being replaced",
                                kv.describe()
                            )));
                        }
                    }
                }
                match kv.load().await.ok().flatten() {
                    Some((r, _)) if r.cert() == new_root.cert() => {}
                    _ => {
                        return Err(stop(format!(
                            "{}: the new root did not stay",
                            kv.describe()
                        )));
                    }
                }
                let kept = format!("version {version} of {}/{}", kv.mount, kv.path);
                (new_root, kept)
            }
        };
        if !kept.is_empty() {
            note_rotated(config, now, new_root.cert(), &kept);
        }
        Ok(())
    }
}

fn note_rotated(config: &Config, now: OffsetDateTime, new_root: &Cert, kept: &str) {
    Audit::new(config.daemon.audit_log.clone()).note(
        now,
        "root-rotated",
        None,
        "replaced",
        Some(new_root.info().serial.clone()),
        Some(format!("the previous root is kept: {kept}")),
    );
}

/// vault-pki: `<base>-next` takes the configured issuer's name (the old issuer renamed
/// `<name>-replaced-<unix time>`), or becomes the mount's default issuer. Idempotent.
async fn swap_pki(
    pki: &super::vault::VaultPki,
    base: &str,
    config: &Config,
    now: OffsetDateTime,
) -> Result<(), RotationError> {
    let stop = RotationError::Swap;
    let vault_err = |e: super::VaultError| stop(format!("{}: {e}", pki.describe()));
    let next = format!("{base}-next");
    let new = pki.issuer_cert(&next).await.map_err(vault_err)?;
    let (new, kept) = match (&pki.issuer, new) {
        (Some(name), Some(new)) => {
            let mut kept = "renamed by an earlier attempt".to_string();
            if pki.issuer_cert(name).await.map_err(vault_err)?.is_some() {
                let aside = format!("{name}-replaced-{}", now.unix_timestamp());
                pki.rename_issuer(name, &aside).await.map_err(vault_err)?;
                kept = format!("issuer {aside} of {}", pki.mount);
            }
            pki.rename_issuer(&next, name).await.map_err(vault_err)?;
            (new, kept)
        }
        (Some(name), None) => {
            return match pki.issuer_cert(name).await.map_err(vault_err)? {
                Some(_) => Ok(()),
                None => Err(stop(format!(
                    "{}: neither issuer {name} nor {next} exists",
                    pki.describe()
                ))),
            };
        }
        (None, Some(new)) => {
            if pki.root_cert().await.map_err(vault_err)?.as_ref() == Some(&new) {
                return Ok(());
            }
            pki.set_default_issuer(&next).await.map_err(vault_err)?;
            (
                new,
                format!("the previous default issuer, still in {}", pki.mount),
            )
        }
        (None, None) => {
            return Err(stop(format!(
                "{}: the new issuer {next} is missing",
                pki.describe()
            )));
        }
    };
    note_rotated(config, now, &new, &kept);
    Ok(())
}

/// The file store's swap: the new store is built complete in a sibling folder first, so the
/// root folder is always either the old root or the new one; the old folder is moved to
/// `<root dir>-replaced-<time>`. Returns where the old root went ("" if already swapped).
fn swap_file_store(
    dir: &Path,
    new_root: &RootCa,
    now: OffsetDateTime,
) -> Result<String, RotationError> {
    let store_err = |e: StoreError| RotationError::Swap(e.to_string());
    let store = super::FileRootStore::new(dir.to_path_buf());
    if store.load_cert().ok().flatten().as_ref() == Some(new_root.cert()) {
        return Ok(String::new());
    }
    let staging = PathBuf::from(format!("{}.new", dir.display()));
    let staged = super::FileRootStore::new(staging.clone());
    if staged.load_cert().ok().flatten().as_ref() != Some(new_root.cert()) {
        if staging.exists() {
            // Our own half-built staging folder from an interrupted swap.
            std::fs::remove_dir_all(&staging)
                .map_err(crate::fsutil::fs_err("cannot clear", &staging))?;
        }
        staged.create(new_root).map_err(store_err)?;
    }
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
        .replace(':', "");
    let aside = PathBuf::from(format!("{}-replaced-{stamp}", dir.display()));
    if dir.exists() {
        std::fs::rename(dir, &aside).map_err(crate::fsutil::fs_err("cannot move aside", dir))?;
    }
    std::fs::rename(&staging, dir).map_err(crate::fsutil::fs_err("cannot move into place", dir))?;
    if let Some(parent) = dir.parent() {
        crate::fsutil::sync_dir(parent)?;
    }
    Ok(aside.display().to_string())
}
