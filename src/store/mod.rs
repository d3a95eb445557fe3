//! Where the common root lives. The file store is the embedded default; Vault stores plug in
//! behind the same trait.

mod file;

pub use file::FileRootStore;

use crate::config::RootStoreConfig;
use crate::fsutil::FsError;
use crate::pki::{Cert, PkiError, RootCa};

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
}

/// A place that holds the common root.
pub trait RootStore {
    /// Human-readable location, e.g. `file store state/root`.
    fn describe(&self) -> String;
    /// The root certificate, or `None` when no root has been created yet.
    fn load_cert(&self) -> Result<Option<Cert>, StoreError>;
    /// The root with its key, for signing. The key lives in zeroizing memory.
    fn load(&self) -> Result<RootCa, StoreError>;
    /// Stores a new root. Never replaces an existing one.
    fn create(&self, root: &RootCa) -> Result<(), StoreError>;
}

/// Opens the store a configuration names.
pub fn open(config: &RootStoreConfig) -> Box<dyn RootStore> {
    match config {
        RootStoreConfig::File { dir } => Box::new(FileRootStore::new(dir.clone())),
    }
}
