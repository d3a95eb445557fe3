//! A mesh CA key waiting for the company CA's signature (`root init --csr`, file and vault-kv
//! stores): made here and kept 0600 in `<state_dir>/root-request/`, beside its request, until
//! `root import` stores it with the signed certificate; then removed.

use std::path::{Path, PathBuf};

use zeroize::Zeroizing;

use crate::fsutil::{FsError, Mode, StagedFile, create_private_dir, fs_err, read_optional};
use crate::pki::CaKey;

pub struct PendingRequest {
    dir: PathBuf,
}

const KEY: &str = "mesh-ca-key.pem";
const REQUEST: &str = "mesh-ca.csr";

impl PendingRequest {
    pub fn new(state_dir: &Path) -> Self {
        PendingRequest {
            dir: state_dir.join("root-request"),
        }
    }

    /// Where the key waits (named in messages; never its contents).
    pub fn key_path(&self) -> PathBuf {
        self.dir.join(KEY)
    }

    /// Where a copy of the request is kept, to hand it over again.
    pub fn request_path(&self) -> PathBuf {
        self.dir.join(REQUEST)
    }

    pub fn exists(&self) -> bool {
        self.key_path().exists()
    }

    /// Keeps a request whose key stays elsewhere (inside Vault), to check the signed
    /// certificate against it. A newer request replaces it.
    pub fn save_request(&self, request: &str) -> Result<(), FsError> {
        create_private_dir(&self.dir)?;
        StagedFile::new(&self.request_path(), request.as_bytes(), Mode::Public)?.commit()
    }

    /// The request kept, if any.
    pub fn request_pem(&self) -> Result<Option<Vec<u8>>, FsError> {
        read_optional(&self.request_path())
    }

    /// Keeps `key` (0600) and its request. Never replaces a key already waiting.
    pub fn save(&self, key: &CaKey, request: &str) -> Result<(), FsError> {
        create_private_dir(&self.dir)?;
        let key_pem = key.to_pem();
        StagedFile::new(&self.request_path(), request.as_bytes(), Mode::Public)?.commit()?;
        StagedFile::new(&self.key_path(), key_pem.as_bytes(), Mode::Secret)?.commit_new()
    }

    /// The waiting key's PEM, `None` if no request waits.
    pub fn key_pem(&self) -> Result<Option<Zeroizing<Vec<u8>>>, FsError> {
        Ok(read_optional(&self.key_path())?.map(Zeroizing::new))
    }

    /// Removes the waiting key and its request, once the key is stored.
    pub fn remove(&self) -> Result<(), FsError> {
        match std::fs::remove_dir_all(&self.dir) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                Err(fs_err("cannot remove", &self.dir)(e))
            }
            _ => Ok(()),
        }
    }
}
