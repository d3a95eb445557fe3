//! Where the common root lives: a local file store (the embedded default), a Vault KV v2
//! secret, or Vault's PKI engine (the key never leaves Vault).

mod file;
mod request;
pub mod rotation;
pub mod vault;

pub use file::FileRootStore;
pub use request::PendingRequest;
pub use vault::{VaultAuth, VaultError, VaultPki, VaultSettings};

use time::OffsetDateTime;

use crate::config::{Config, RootStoreConfig};
use crate::fsutil::FsError;
use crate::pki::{Cert, IntermediateCa, IntermediateSpec, PkiError, RootCa, issue_intermediate};
use vault::{SignError, VaultKv, VaultSession};

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("no root in {store}; create one with `cacertd root init` or `cacertd root import`")]
    NoRoot { store: String },
    #[error("{store} already holds a root ({fingerprint}); refusing to replace it")]
    AlreadyExists { store: String, fingerprint: String },
    #[error("{store} is incomplete: {detail}")]
    Incomplete { store: String, detail: String },
    #[error(transparent)]
    Io(#[from] FsError),
    #[error("{store} holds unusable material: {source}")]
    Material {
        store: String,
        #[source]
        source: PkiError,
    },
    #[error("{store}: {source}")]
    Vault {
        store: String,
        #[source]
        source: VaultError,
    },
    #[error(
        "{store}: the new mesh CA chains to {new_anchor}, not to the current anchor \
         {anchor}; changing the anchor changes what every cluster trusts and takes a phased \
         rotation (`cacertd rotate-root start`), not a replacement"
    )]
    OtherAnchor {
        store: String,
        anchor: String,
        new_anchor: String,
    },
    #[error("{store}: {operation} is not possible: {reason}")]
    Unsupported {
        store: String,
        operation: &'static str,
        reason: &'static str,
    },
}

/// The configured root store, opened (and, for Vault, logged in). Clones share one Vault
/// session.
#[derive(Clone)]
pub enum RootSource {
    File(FileRootStore),
    VaultKv(VaultKv),
    VaultPki(VaultPki),
}

/// The certificates of a root store: the trust anchor, and what sits between it and an
/// intermediate (the mesh CA and the certificates above it; none for a self-signed root).
pub struct RootCerts {
    pub anchor: Cert,
    pub between: Vec<Cert>,
}

impl RootCerts {
    /// The CA that issues intermediates: the mesh CA, or the anchor itself when it is the
    /// root.
    pub fn signing_ca(&self) -> &Cert {
        self.between.first().unwrap_or(&self.anchor)
    }

    /// The signing CA, then the CAs above it up to the anchor (`[signer, …, anchor]`); just
    /// the anchor when it signs.
    pub fn path(&self) -> Vec<Cert> {
        self.between
            .iter()
            .chain(std::iter::once(&self.anchor))
            .cloned()
            .collect()
    }

    /// From the signing CA's path to its anchor (`[signer, …, anchor]`).
    fn of_path(mut path: Vec<Cert>) -> Option<Self> {
        let anchor = path.pop()?;
        Some(RootCerts {
            anchor,
            between: path,
        })
    }
}

/// What signs intermediates: the root in hand, or Vault's PKI engine.
pub enum Signer {
    Local(RootCa),
    /// `path`: the issuer's certificate, then those above it up to `root`, the anchor.
    Vault {
        root: Cert,
        path: Vec<Cert>,
        pki: VaultPkiRef,
    },
}

/// A handle to the PKI store a [`Signer::Vault`] signs through.
pub struct VaultPkiRef(std::sync::Arc<VaultPki>);

impl VaultPkiRef {
    /// The PKI store that signs.
    pub fn store(&self) -> &VaultPki {
        &self.0
    }
}

impl RootSource {
    pub async fn open(config: &Config) -> Result<Self, StoreError> {
        // One Vault session per store, named in errors as `store` names it.
        let session = async |store: String| {
            let settings = config.vault.clone().ok_or_else(|| StoreError::Vault {
                store: "vault".into(),
                source: VaultError::Config("a Vault root store needs a [vault] section".into()),
            })?;
            VaultSession::connect(&settings)
                .await
                .map(std::sync::Arc::new)
                .map_err(|source| StoreError::Vault { store, source })
        };
        Ok(match &config.root {
            RootStoreConfig::File { dir } => RootSource::File(FileRootStore::new(dir.clone())),
            RootStoreConfig::VaultKv { mount, path } => RootSource::VaultKv(VaultKv {
                session: session(format!("vault-kv {mount}/{path}")).await?,
                mount: mount.clone(),
                path: path.clone(),
                seen: Default::default(),
            }),
            RootStoreConfig::VaultPki { mount, issuer } => RootSource::VaultPki(VaultPki {
                session: session(format!("vault-pki {mount}")).await?,
                mount: mount.clone(),
                issuer: issuer.clone(),
            }),
        })
    }

    /// Ends the Vault session: a token cacertd obtained by logging in is revoked, not left to
    /// expire. A token it was given is left alone.
    pub async fn close(&self) {
        match self {
            RootSource::File(_) => {}
            RootSource::VaultKv(v) => v.session.close().await,
            RootSource::VaultPki(v) => v.session.close().await,
        }
    }

    pub fn describe(&self) -> String {
        match self {
            RootSource::File(f) => f.describe(),
            RootSource::VaultKv(v) => v.describe(),
            RootSource::VaultPki(v) => v.describe(),
        }
    }

    fn vault_err(&self, source: VaultError) -> StoreError {
        StoreError::Vault {
            store: self.describe(),
            source,
        }
    }

    /// The trust anchor (the root, or the anchor above a mesh CA), `None` before a root exists.
    pub async fn load_cert(&self) -> Result<Option<Cert>, StoreError> {
        Ok(self.load_certs().await?.map(|c| c.anchor))
    }

    /// The anchor and what sits between it and an intermediate, read once; `None` before a
    /// root exists.
    pub async fn load_certs(&self) -> Result<Option<RootCerts>, StoreError> {
        let path = match self {
            RootSource::File(f) => f.load_path()?,
            RootSource::VaultKv(v) => v.path().await.map_err(|e| self.vault_err(e))?,
            RootSource::VaultPki(v) => v.path().await.map_err(|e| self.vault_err(e))?,
        };
        Ok(path.and_then(RootCerts::of_path))
    }

    /// For `root show`: where exactly the root is (the KV version in use, for vault-kv).
    pub async fn location(&self) -> Result<String, StoreError> {
        match self {
            RootSource::VaultKv(v) => match v.version().await.map_err(|e| self.vault_err(e))? {
                Some(version) => Ok(format!("{} (version {version})", self.describe())),
                None => Ok(self.describe()),
            },
            _ => Ok(self.describe()),
        }
    }

    /// What signs intermediates with this store's root.
    pub async fn signer(self) -> Result<Signer, StoreError> {
        let store = self.describe();
        match self {
            RootSource::File(f) => Ok(Signer::Local(f.load()?)),
            RootSource::VaultKv(v) => match v.load().await.map_err(|source| StoreError::Vault {
                store: store.clone(),
                source,
            })? {
                Some((root, version)) => {
                    tracing::debug!(store = %store, version, "root fetched from Vault KV");
                    Ok(Signer::Local(root))
                }
                None => Err(StoreError::NoRoot { store }),
            },
            RootSource::VaultPki(v) => {
                let path = v
                    .path()
                    .await
                    .map_err(|source| StoreError::Vault {
                        store: store.clone(),
                        source,
                    })?
                    .ok_or_else(|| StoreError::NoRoot {
                        store: store.clone(),
                    })?;
                let root = path.last().cloned().ok_or_else(|| StoreError::NoRoot {
                    store: store.clone(),
                })?;
                Ok(Signer::Vault {
                    root,
                    path,
                    pki: VaultPkiRef(std::sync::Arc::new(v)),
                })
            }
        }
    }

    /// Stores a root made or imported here. Never replaces one.
    pub async fn create(&self, root: &RootCa) -> Result<(), StoreError> {
        match self {
            RootSource::File(f) => f.create(root),
            RootSource::VaultKv(v) => match v.create(root).await.map_err(|e| self.vault_err(e))? {
                Ok(_) => Ok(()),
                // Check-and-set 0 lost: someone stored a root first. Name the winner.
                Err(()) => Err(StoreError::AlreadyExists {
                    store: self.describe(),
                    fingerprint: match v.load().await {
                        Ok(Some((winner, _))) => winner.cert().info().fingerprint_sha256.clone(),
                        _ => "unknown".into(),
                    },
                }),
            },
            RootSource::VaultPki(_) => Err(StoreError::Unsupported {
                store: self.describe(),
                operation: "storing a root made outside Vault",
                reason: "the PKI store keeps the root key inside Vault; use `root init` to have Vault generate it, or import it into Vault's PKI engine yourself",
            }),
        }
    }

    /// Replaces the CA that signs intermediates with `new`, which must chain to the same
    /// anchor: no cluster's trust changes, only who issues their intermediates (each is
    /// re-issued at its next `issue` or daemon pass). The old CA is kept: its folder moved
    /// aside (file store) or the previous KV version (vault-kv). Returns where it was kept,
    /// `None` when `new` is already the store's.
    pub async fn replace_signing_ca(
        &self,
        new: &RootCa,
        now: OffsetDateTime,
    ) -> Result<Option<String>, StoreError> {
        let current = self.load_certs().await?.ok_or_else(|| StoreError::NoRoot {
            store: self.describe(),
        })?;
        if current.anchor != *new.anchor() {
            let name = |c: &Cert| format!("{} ({})", c.info().subject, c.info().fingerprint_sha256);
            return Err(StoreError::OtherAnchor {
                store: self.describe(),
                anchor: name(&current.anchor),
                new_anchor: name(new.anchor()),
            });
        }
        if current.between == new.between() {
            return Ok(None);
        }
        match self {
            RootSource::File(f) => rotation::swap_file_store(f.dir(), new, now)
                .map(Some)
                .map_err(|e| StoreError::Incomplete {
                    store: self.describe(),
                    detail: e.to_string(),
                }),
            RootSource::VaultKv(v) => {
                let version = v
                    .version()
                    .await
                    .map_err(|e| self.vault_err(e))?
                    .unwrap_or(0);
                match v
                    .write_at(&v.path, new, version)
                    .await
                    .map_err(|e| self.vault_err(e))?
                {
                    Ok(_) => Ok(Some(format!("version {version} of {}/{}", v.mount, v.path))),
                    Err(()) => Err(StoreError::Incomplete {
                        store: self.describe(),
                        detail: "the root changed while it was being replaced; nothing was \
                                 written, look at it again"
                            .into(),
                    }),
                }
            }
            RootSource::VaultPki(_) => Err(StoreError::Unsupported {
                store: self.describe(),
                operation: "replacing the mesh CA from outside Vault",
                reason: "the PKI store signs with the mount's issuer; make the new mesh CA that issuer in Vault (intermediate/set-signed, then the default issuer) and cacertd re-issues every intermediate under it",
            }),
        }
    }

    /// Whether the root key is ever in cacertd's hands (file, vault-kv) or not (vault-pki).
    pub fn key_is_remote(&self) -> bool {
        matches!(self, RootSource::VaultPki(_))
    }

    pub fn as_vault_pki(&self) -> Option<&VaultPki> {
        match self {
            RootSource::VaultPki(v) => Some(v),
            _ => None,
        }
    }
}

impl Signer {
    /// The trust anchor the intermediates chain to: what every cluster's bundle holds.
    pub fn root_cert(&self) -> &Cert {
        match self {
            Signer::Local(r) => r.anchor(),
            Signer::Vault { root, .. } => root,
        }
    }

    /// The CA that issues intermediates: the mesh CA (or Vault's issuer), or the root itself.
    pub fn signing_cert(&self) -> &Cert {
        match self {
            Signer::Local(r) => r.cert(),
            Signer::Vault { path, root, .. } => path.first().unwrap_or(root),
        }
    }

    /// What sits between an intermediate and [`Signer::root_cert`] in `cert-chain.pem`: the
    /// mesh CA and the certificates above it, the anchor excluded (none for a self-signed
    /// root).
    pub fn between(&self) -> Vec<Cert> {
        match self {
            Signer::Local(r) => r.between(),
            Signer::Vault { path, .. } => path[..path.len().saturating_sub(1)].to_vec(),
        }
    }

    /// Issues an intermediate per `spec`: locally with the root key, or through Vault (then
    /// checked before it is returned).
    pub async fn issue(
        &self,
        spec: &IntermediateSpec,
        now: OffsetDateTime,
    ) -> Result<IntermediateCa, String> {
        match self {
            Signer::Local(root) => issue_intermediate(root, spec, now).map_err(|e| e.to_string()),
            Signer::Vault { path, pki, .. } => {
                pki.0
                    .sign_intermediate(spec, path)
                    .await
                    .map_err(|e: SignError| match e {
                        SignError::Vault(v) => format!("{}: {v}", pki.0.describe()),
                        SignError::Pki(p) => p.to_string(),
                    })
            }
        }
    }
}
