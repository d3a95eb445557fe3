//! The file store's rotation: the new root waits in `<state_dir>/transition/new-root/`; the
//! swap builds the new store complete beside the old one and moves the old folder to
//! `<root dir>-replaced-<time>`.

use std::path::{Path, PathBuf};

use time::OffsetDateTime;

use super::{Pending, RootRotation, RotationError, SwapResult, Swapped, not_the_new_root};
use crate::fsutil::{create_private_dir, fs_err, sync_dir};
use crate::pki::{Cert, RootCa};
use crate::root_store::{FileRootStore, StoreError};

pub(super) struct FileRotation {
    /// The root store's folder.
    pub(super) dir: PathBuf,
    /// Where the new root waits.
    pub(super) pending_dir: PathBuf,
}

fn refused(e: StoreError) -> RotationError {
    RotationError::Refused(e.to_string())
}

#[async_trait::async_trait(?Send)]
impl RootRotation for FileRotation {
    fn pending_location(&self) -> String {
        self.pending_dir.display().to_string()
    }

    async fn current(&self) -> Result<Cert, RotationError> {
        FileRootStore::new(self.dir.clone())
            .load_path()
            .map_err(refused)?
            .and_then(|mut path| path.pop())
            .ok_or_else(|| RotationError::Refused("there is no root to rotate yet".into()))
    }

    async fn pending(&self) -> Result<Option<Pending>, RotationError> {
        match FileRootStore::new(self.pending_dir.clone()).load() {
            Ok(root) => Ok(Some(Pending::Held {
                root,
                version: None,
            })),
            Err(StoreError::NoRoot { .. }) => Ok(None),
            Err(e) => Err(refused(e)),
        }
    }

    async fn keep(&self, root: &RootCa, _over: Option<u64>) -> Result<(), RotationError> {
        if let Some(parent) = self.pending_dir.parent() {
            create_private_dir(parent).map_err(|e| RotationError::Refused(e.to_string()))?;
        }
        FileRootStore::new(self.pending_dir.clone())
            .create(root)
            .map_err(refused)
    }

    async fn swap(&self, new_root: &Cert, now: OffsetDateTime) -> SwapResult {
        let store = FileRootStore::new(self.dir.clone());
        if store.load_cert().ok().flatten().as_ref() == Some(new_root) {
            return Ok(None);
        }
        let waiting = match self.pending().await {
            Ok(Some(Pending::Held { root, .. })) => root,
            Ok(_) => return Err(RotationError::Swap("the new root is missing".into())),
            Err(e) => return Err(RotationError::Swap(e.to_string())),
        };
        if waiting.cert() != new_root {
            return Err(not_the_new_root(&self.pending_location()));
        }
        let kept = swap_file_store(&self.dir, &waiting, now)?;
        Ok(Some(Swapped { kept }))
    }

    async fn destroy_pending(&self) -> Result<Option<String>, RotationError> {
        if !self.pending_dir.exists() {
            return Ok(None);
        }
        std::fs::remove_dir_all(&self.pending_dir)
            .map_err(fs_err("cannot remove", &self.pending_dir))?;
        if let Some(parent) = self.pending_dir.parent() {
            sync_dir(parent)?;
        }
        Ok(Some(format!(
            "the new root's key file in {}",
            self.pending_location()
        )))
    }
}

/// The swap: the new store is built complete in a sibling folder first, so the root folder is
/// always either the old root or the new one; the old folder is moved to
/// `<root dir>-replaced-<time>`. Returns where the old root went. Also replaces a mesh CA
/// under the same anchor outright (no transition).
pub(crate) fn swap_file_store(
    dir: &Path,
    new_root: &RootCa,
    now: OffsetDateTime,
) -> Result<String, RotationError> {
    let store_err = |e: StoreError| RotationError::Swap(e.to_string());
    let staging = PathBuf::from(format!("{}.new", dir.display()));
    let staged = FileRootStore::new(staging.clone());
    if staged.load_cert().ok().flatten().as_ref() != Some(new_root.cert()) {
        if staging.exists() {
            // Our own half-built staging folder from an interrupted swap.
            std::fs::remove_dir_all(&staging).map_err(fs_err("cannot clear", &staging))?;
        }
        staged.create(new_root).map_err(store_err)?;
    }
    let stamp = now
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
        .replace(':', "");
    let aside = PathBuf::from(format!("{}-replaced-{stamp}", dir.display()));
    if dir.exists() {
        std::fs::rename(dir, &aside).map_err(fs_err("cannot move aside", dir))?;
    }
    std::fs::rename(&staging, dir).map_err(fs_err("cannot move into place", dir))?;
    if let Some(parent) = dir.parent() {
        sync_dir(parent)?;
    }
    Ok(aside.display().to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::pki::fixtures;

    fn rotation(tmp: &Path) -> FileRotation {
        FileRotation {
            dir: tmp.join("root"),
            pending_dir: tmp.join("transition/new-root"),
        }
    }

    #[tokio::test]
    async fn the_swap_takes_only_the_root_the_clusters_moved_to_then_the_copy_is_destroyed() {
        let tmp = tempfile::tempdir().unwrap();
        let store = rotation(tmp.path());
        let (old, new, other) = (fixtures::root(), fixtures::root(), fixtures::root());
        FileRootStore::new(store.dir.clone()).create(&old).unwrap();
        store.keep(&new, None).await.unwrap();
        let now = OffsetDateTime::now_utc();

        let refused = store.swap(other.cert(), now).await.err().unwrap();
        assert!(
            refused.to_string().contains("nothing was swapped"),
            "{refused}"
        );
        assert_eq!(store.current().await.unwrap(), *old.cert());

        let swapped = store.swap(new.cert(), now).await.unwrap().unwrap();
        assert!(swapped.kept.contains("root-replaced-"), "{}", swapped.kept);
        assert_eq!(store.current().await.unwrap(), *new.cert());
        assert!(store.destroy_pending().await.unwrap().is_some());
        assert!(!store.pending_dir.exists());
        // Both again, as after a crash in between: nothing more to do.
        assert!(store.swap(new.cert(), now).await.unwrap().is_none());
        assert!(store.destroy_pending().await.unwrap().is_none());
    }
}
