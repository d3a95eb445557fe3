//! A root rotation's side of each root store, behind one trait ([`RootRotation`]): where the
//! new root waits until every cluster trusts it and signs with it, how it then takes the old
//! root's place — the old one always kept (a previous KV version, a renamed issuer, a folder
//! moved aside) — and how the waiting copy of its key is destroyed once the store holds it.
//! The trust transition drives these primitives; they know nothing of clusters.

mod file;
mod vault_kv;
mod vault_pki;

pub(crate) use file::swap_file_store;

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{RootSource, Signer};
use crate::config::{Config, RootStoreConfig};
use crate::fsutil::FsError;
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

/// A new root waiting for its rotation to finish.
pub enum Pending {
    /// cacertd holds the key (file and vault-kv stores), with the KV version to write over.
    Held { root: RootCa, version: Option<u64> },
    /// The key stays inside the store (a vault-pki issuer): only the certificate is known.
    Inside(Cert),
}

impl Pending {
    pub fn cert(&self) -> &Cert {
        match self {
            Pending::Held { root, .. } => root.cert(),
            Pending::Inside(cert) => cert,
        }
    }
}

/// What a swap did: where the previous root is kept.
pub struct Swapped {
    pub kept: String,
}

/// What [`RootRotation::swap`] answers: what it did, `None` if the new root already was the
/// store's.
pub type SwapResult = Result<Option<Swapped>, RotationError>;

/// A root store's rotation primitives: keep a pending root, read it, swap it in, destroy the
/// pending copy. Every method that changes something is idempotent, so a rotation that stopped
/// anywhere completes by running the same call again.
#[async_trait::async_trait(?Send)]
pub trait RootRotation: Send + Sync {
    /// Where the new root waits, as messages name it.
    fn pending_location(&self) -> String;

    /// The new root's key is made and kept inside the store (vault-pki): it cannot be
    /// imported, and what signs under it comes from [`RootRotation::signer_inside`].
    fn keeps_key_inside(&self) -> bool {
        false
    }

    /// The trust anchor of the root the store holds now (the root, or the anchor above a
    /// mesh CA).
    async fn current(&self) -> Result<Cert, RotationError>;

    /// Checks, before anything is kept, that the store can rotate as configured.
    async fn check(&self) -> Result<(), RotationError> {
        Ok(())
    }

    /// The new root waiting, if there is one.
    async fn pending(&self) -> Result<Option<Pending>, RotationError>;

    /// Keeps `root` as the new root; `over` is the version of a stale one to write over.
    async fn keep(&self, root: &RootCa, over: Option<u64>) -> Result<(), RotationError>;

    /// What signs under a new root made inside the store: generated now unless `reuse` (with
    /// `serial_number` in its subject, if given, to name it apart); a `stale` one (an earlier
    /// rotation's) is moved out of the way first.
    async fn signer_inside(
        &self,
        _config: &Config,
        _reuse: bool,
        _stale: bool,
        _serial_number: Option<String>,
        _now: OffsetDateTime,
    ) -> Result<Signer, RotationError> {
        Err(RotationError::Refused(format!(
            "{}: the new root's key is held by cacertd, not made inside the store",
            self.pending_location()
        )))
    }

    /// Makes `new_root` — the one waiting, which every cluster now signs under — the store's
    /// root, keeping the old one. `None`: it already was (an earlier attempt swapped it).
    async fn swap(&self, new_root: &Cert, now: OffsetDateTime) -> SwapResult;

    /// Destroys the copy of a new root's key that waited for the rotation (every version of
    /// it, for vault-kv), once the store holds the root itself or the root is given up before
    /// anything was signed under it. Returns what was destroyed, `None` if nothing was there.
    async fn destroy_pending(&self) -> Result<Option<String>, RotationError>;
}

/// The configured root store's rotation primitives.
pub async fn open(config: &Config) -> Result<Box<dyn RootRotation>, RotationError> {
    let refused = |e: super::StoreError| RotationError::Refused(e.to_string());
    Ok(match &config.root {
        RootStoreConfig::File { dir } => Box::new(file::FileRotation {
            dir: dir.clone(),
            pending_dir: new_root_dir(&config.state_dir),
        }),
        RootStoreConfig::VaultKv { .. } => match RootSource::open(config).await.map_err(refused)? {
            RootSource::VaultKv(kv) => Box::new(vault_kv::VaultKvRotation { kv }),
            other => return Err(not_the_store(&other, "vault-kv")),
        },
        RootStoreConfig::VaultPki { issuer, .. } => {
            match RootSource::open(config).await.map_err(refused)? {
                RootSource::VaultPki(pki) => Box::new(vault_pki::VaultPkiRotation {
                    base: issuer.clone().unwrap_or_else(|| "cacertd-root".into()),
                    pki,
                }),
                other => return Err(not_the_store(&other, "vault-pki")),
            }
        }
    })
}

fn not_the_store(opened: &RootSource, kind: &str) -> RotationError {
    RotationError::Refused(format!("{}: not a {kind} store", opened.describe()))
}

/// The swap was asked for a root other than the one waiting: nothing is changed.
fn not_the_new_root(location: &str) -> RotationError {
    RotationError::Swap(format!(
        "the root waiting in {location} is not the one every cluster now signs under; \
         nothing was swapped"
    ))
}
