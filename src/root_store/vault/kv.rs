//! vault-kv: the root certificate and key in a KV v2 secret, written with check-and-set.

use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

use vaultrs::client::VaultClient;

use super::{VaultError, VaultSession};
use crate::pki::{CaKey, Cert, PkiError, RootCa};

/// The KV v2 secret holding the root.
#[derive(Serialize, Deserialize)]
struct RootSecret {
    certificate: String,
    private_key: String,
    /// For a mesh CA below an anchor: the certificates above it, up to the anchor.
    #[serde(default)]
    chain: Option<String>,
}

/// The same secret as written: the key in a buffer wiped on drop (vaultrs' own JSON buffers
/// are out of reach).
#[derive(Serialize)]
struct WrittenRootSecret {
    certificate: String,
    #[serde(serialize_with = "serialize_str")]
    private_key: Zeroizing<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    chain: Option<String>,
}

fn serialize_str<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// The path of a root secret last read (signing CA to anchor), with its KV version.
pub type Seen = std::sync::Arc<std::sync::Mutex<Option<(u64, Vec<Cert>)>>>;

/// vault-kv: the root held in a KV v2 secret.
#[derive(Clone)]
pub struct VaultKv {
    pub session: std::sync::Arc<VaultSession>,
    pub mount: String,
    pub path: String,
    /// The signing CA's path to its anchor as last read, with its version: see
    /// [`VaultKv::root_cert`].
    pub seen: Seen,
}

impl VaultKv {
    pub fn describe(&self) -> String {
        format!(
            "vault-kv {}/{} at {}",
            self.mount,
            self.path,
            self.session.address()
        )
    }

    async fn check_mount(&self) -> Result<(), VaultError> {
        let info = self.session.mount_info(&self.mount).await?;
        let version = info
            .options
            .as_ref()
            .and_then(|o| o.get("version"))
            .map(String::as_str);
        if info.kind != "kv" || version != Some("2") {
            return Err(VaultError::Mount {
                mount: self.mount.clone(),
                problem: format!(
                    "is {} (version {}); cacertd needs a KV version 2 mount (vault secrets enable -version=2 kv)",
                    info.kind,
                    version.unwrap_or("1")
                ),
            });
        }
        Ok(())
    }

    /// The current version number of the root secret, `None` if there is none.
    pub async fn version(&self) -> Result<Option<u64>, VaultError> {
        self.version_at(&self.path).await
    }

    /// The secret where a root rotation keeps the new root until it is done: `<path>-next`.
    pub fn next_path(&self) -> String {
        format!("{}-next", self.path)
    }

    /// The current version number of the root secret at `at`, `None` if there is none.
    pub async fn version_at(&self, at: &str) -> Result<Option<u64>, VaultError> {
        self.check_mount().await?;
        let path = format!("{}/metadata/{at}", self.mount);
        match self
            .session
            .call("read root metadata", &path, async |c: &VaultClient| {
                vaultrs::kv2::read_metadata(c, &self.mount, at).await
            })
            .await
        {
            Ok(m) => Ok(Some(m.current_version)),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The trust anchor at the current version (the root, or the anchor above a mesh CA).
    /// Remembered by version: the secret holds the key too, and a look at the certificates
    /// (`status`, `/status`, each pass's metrics) should not fetch the key again while the
    /// version is the same.
    pub async fn root_cert(&self) -> Result<Option<Cert>, VaultError> {
        Ok(self.path().await?.and_then(|mut path| path.pop()))
    }

    /// The signing CA's path to its anchor (the root alone, or the mesh CA and the
    /// certificates above it), remembered by KV version as [`VaultKv::root_cert`] says.
    pub async fn path(&self) -> Result<Option<Vec<Cert>>, VaultError> {
        let Some(version) = self.version().await? else {
            return Ok(None);
        };
        let remembered = |seen: &Option<(u64, Vec<Cert>)>| {
            seen.as_ref()
                .filter(|(v, _)| *v == version)
                .map(|(_, c)| c.clone())
        };
        if let Some(certs) = self.seen.lock().ok().and_then(|s| remembered(&s)) {
            return Ok(Some(certs));
        }
        let Some((root, version)) = self.load().await? else {
            return Ok(None);
        };
        let mut certs = vec![root.cert().clone()];
        certs.extend_from_slice(root.chain());
        drop(root);
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some((version, certs.clone()));
        }
        Ok(Some(certs))
    }

    /// The root (certificate and key) at the current version, with that version.
    pub async fn load(&self) -> Result<Option<(RootCa, u64)>, VaultError> {
        self.load_at(&self.path).await
    }

    /// The root at the current version of the secret at `at`, with that version.
    pub async fn load_at(&self, at: &str) -> Result<Option<(RootCa, u64)>, VaultError> {
        let Some(version) = self.version_at(at).await? else {
            return Ok(None);
        };
        let path = format!("{}/data/{at}", self.mount);
        let secret: RootSecret = self
            .session
            .call("read root", &path, async |c: &VaultClient| {
                vaultrs::kv2::read_version(c, &self.mount, at, version).await
            })
            .await?;
        let RootSecret {
            certificate,
            private_key,
            chain,
        } = secret;
        let key_pem = Zeroizing::new(private_key.into_bytes());
        let what = format!("vault-kv {path} (version {version})");
        let malformed = |e: PkiError| VaultError::Malformed {
            what: what.clone(),
            reason: e.to_string(),
        };
        let cert = Cert::one_from_pem(certificate.as_bytes(), &format!("{what} certificate"))
            .map_err(malformed)?;
        let key = CaKey::from_pem(&key_pem, &format!("{what} private_key")).map_err(malformed)?;
        let chain = match &chain {
            Some(pem) => {
                Cert::all_from_pem(pem.as_bytes(), &format!("{what} chain")).map_err(malformed)?
            }
            None => Vec::new(),
        };
        let root = RootCa::new(cert, key, &what)
            .and_then(|r| r.with_chain(chain, &format!("{what} chain")))
            .map_err(malformed)?;
        Ok(Some((root, version)))
    }

    /// Destroys every version of the secret at `at` (their data is gone for good, unlike a
    /// KV v2 delete), then its metadata. Returns how many versions there were, `None` if
    /// there was no such secret.
    pub async fn destroy_all_at(&self, at: &str) -> Result<Option<usize>, VaultError> {
        self.check_mount().await?;
        let path = format!("{}/metadata/{at}", self.mount);
        let meta = match self
            .session
            .call("read metadata", &path, async |c: &VaultClient| {
                vaultrs::kv2::read_metadata(c, &self.mount, at).await
            })
            .await
        {
            Ok(m) => m,
            Err(VaultError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(e),
        };
        let mut versions: Vec<u64> = meta
            .versions
            .keys()
            .filter_map(|v| v.parse().ok())
            .collect();
        versions.sort_unstable();
        let destroy = format!("{}/destroy/{at}", self.mount);
        // Both calls are idempotent, so they may be repeated after a lost answer.
        self.session
            .call("destroy versions", &destroy, async |c: &VaultClient| {
                vaultrs::kv2::destroy_versions(c, &self.mount, at, versions.clone()).await
            })
            .await?;
        self.session
            .call("delete metadata", &path, async |c: &VaultClient| {
                vaultrs::kv2::delete_metadata(c, &self.mount, at).await
            })
            .await?;
        Ok(Some(versions.len()))
    }

    /// Stores a new root with check-and-set 0: fails if any version exists.
    pub async fn create(&self, root: &RootCa) -> Result<Result<u64, ()>, VaultError> {
        self.write_at(&self.path, root, 0).await
    }

    /// Writes `root` as the next version of the secret at `at`, only if its current version
    /// is `cas` (0: only if there is none). KV v2 keeps the earlier versions. `Ok(Err(()))`:
    /// the check-and-set was lost (someone else wrote first).
    pub async fn write_at(
        &self,
        at: &str,
        root: &RootCa,
        cas: u64,
    ) -> Result<Result<u64, ()>, VaultError> {
        self.check_mount().await?;
        let cas = u32::try_from(cas).map_err(|_| VaultError::Malformed {
            what: format!("{}/metadata/{at}", self.mount),
            reason: format!("version {cas} is beyond what check-and-set can name"),
        })?;
        let key = root.key().to_pem();
        let chain: String = root.chain().iter().map(Cert::to_pem).collect();
        let secret = WrittenRootSecret {
            certificate: root.cert_pem(),
            private_key: Zeroizing::new(key.to_string()),
            chain: (!chain.is_empty()).then_some(chain),
        };
        let path = format!("{}/data/{at}", self.mount);
        let result = self
            .session
            .call_write("write root", &path, async |c: &VaultClient| {
                vaultrs::kv2::set_with_options(
                    c,
                    &self.mount,
                    at,
                    &secret,
                    vaultrs::api::kv2::requests::SetSecretRequestOptions { cas },
                )
                .await
            })
            .await;
        drop(secret);
        match result {
            Ok(meta) => Ok(Ok(meta.version)),
            Err(VaultError::Api {
                code: 400, message, ..
            }) if message.contains("check-and-set") => Ok(Err(())),
            Err(e) => Err(e),
        }
    }
}
