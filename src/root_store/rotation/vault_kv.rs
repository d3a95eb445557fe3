//! vault-kv's rotation: the new root waits in the secret `<path>-next`; it then becomes the
//! next version of `<path>` (check-and-set), so KV v2 keeps the old root as the version before,
//! and every version of `<path>-next` is destroyed.

use time::OffsetDateTime;

use super::{Pending, RootRotation, RotationError, SwapResult, Swapped, not_the_new_root};
use crate::pki::{Cert, RootCa};
use crate::root_store::VaultError;
use crate::root_store::vault::VaultKv;

pub(super) struct VaultKvRotation {
    pub(super) kv: VaultKv,
}

impl VaultKvRotation {
    fn err(&self, e: VaultError) -> String {
        format!("{}: {e}", self.kv.describe())
    }
}

#[async_trait::async_trait(?Send)]
impl RootRotation for VaultKvRotation {
    fn pending_location(&self) -> String {
        let kv = &self.kv;
        format!(
            "vault-kv {}/{} at {}",
            kv.mount,
            kv.next_path(),
            kv.session.address()
        )
    }

    async fn current(&self) -> Result<Cert, RotationError> {
        self.kv
            .load()
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?
            .map(|(r, _)| r.anchor().clone())
            .ok_or_else(|| RotationError::Refused("there is no root to rotate yet".into()))
    }

    async fn pending(&self) -> Result<Option<Pending>, RotationError> {
        Ok(self
            .kv
            .load_at(&self.kv.next_path())
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?
            .map(|(root, version)| Pending::Held {
                root,
                version: Some(version),
            }))
    }

    async fn keep(&self, root: &RootCa, over: Option<u64>) -> Result<(), RotationError> {
        let kv = &self.kv;
        match kv
            .write_at(&kv.next_path(), root, over.unwrap_or(0))
            .await
            .map_err(|e| RotationError::Refused(self.err(e)))?
        {
            Ok(_) => Ok(()),
            Err(()) => Err(RotationError::Refused(format!(
                "{}: someone else wrote a new root there at the same time",
                self.pending_location()
            ))),
        }
    }

    async fn swap(&self, new_root: &Cert, _now: OffsetDateTime) -> SwapResult {
        let (kv, stop) = (&self.kv, RotationError::Swap);
        let Some((current, version)) = kv.load().await.map_err(|e| stop(self.err(e)))? else {
            return Err(stop(format!("{}: the root is gone", kv.describe())));
        };
        if current.cert() == new_root {
            return Ok(None);
        }
        let waiting = match self.pending().await.map_err(|e| stop(e.to_string()))? {
            Some(Pending::Held { root, .. }) => root,
            _ => return Err(stop("the new root is missing".into())),
        };
        if waiting.cert() != new_root {
            return Err(not_the_new_root(&self.pending_location()));
        }
        let written = kv
            .write_at(&kv.path, &waiting, version)
            .await
            .map_err(|e| stop(self.err(e)))?;
        drop(waiting);
        // A lost check-and-set is fine only if what won is the new root (an earlier attempt
        // whose answer was lost); either way the new root must be what stays.
        let now_there = kv.load().await.ok().flatten();
        if now_there.as_ref().map(|(r, _)| r.cert()) != Some(new_root) {
            let what = match written {
                Ok(_) => "the new root did not stay",
                Err(()) => "the root changed while it was being replaced",
            };
            return Err(stop(format!("{}: {what}", kv.describe())));
        }
        Ok(Some(Swapped {
            kept: format!("version {version} of {}/{}", kv.mount, kv.path),
        }))
    }

    async fn destroy_pending(&self) -> Result<Option<String>, RotationError> {
        let next = self.kv.next_path();
        let destroyed = self
            .kv
            .destroy_all_at(&next)
            .await
            .map_err(|e| RotationError::Swap(self.err(e)))?;
        Ok(destroyed.map(|n| {
            format!(
                "{} (every version: {n}, and its metadata)",
                self.pending_location()
            )
        }))
    }
}
