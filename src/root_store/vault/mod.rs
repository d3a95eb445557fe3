//! Root stores in HashiCorp Vault, through `vaultrs`:
//!
//! - **vault-kv** ("hold"): the root certificate and key in a KV v2 secret. Written with
//!   check-and-set 0, so an existing root is never replaced and of two concurrent `root init`s
//!   exactly one wins; every earlier version stays readable in Vault. When signing, the key is
//!   fetched into wiped memory, used, and dropped; it never touches disk.
//! - **vault-pki** ("fetch signatures"): the root key lives in Vault's PKI engine and never
//!   leaves it. cacertd makes the intermediate's key and a CSR locally; Vault signs it
//!   (`root/sign-intermediate`, or `issuer/<ref>/sign-intermediate`), and cacertd checks what
//!   comes back before using it.
//!
//! Authentication: a token (VAULT_TOKEN or a file), AppRole, or Kubernetes (the projected
//! service-account token). The token's lifetime is tracked; it is renewed when a third of it
//! is left (one renewal at a time, however many calls run), and cacertd logs in again when
//! renewal is refused or the token turns out dead (a 403 whose token no longer looks itself up;
//! a policy denial does not cost a login). Rate limits (429) and Vault's transient 500/502/504
//! are retried twice with a short backoff; sealed (503) is reported at once.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::{Zeroize, Zeroizing};

use crate::pki::{CaKey, Cert, IntermediateCa, IntermediateSpec, PkiError, RootCa};

pub use crate::config::{VaultAuth, VaultSettings};

/// Why a Vault call failed, in terms a security team can act on.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    #[error("Vault at {address} is sealed (503); unseal it and retry")]
    Sealed { address: String },
    #[error(
        "Vault denied {action} ({path}): permission denied (403); grant the token's policy this path"
    )]
    PermissionDenied { action: String, path: String },
    #[error("Vault {action} ({path}): not found (404)")]
    NotFound { action: String, path: String },
    #[error("Vault mount {mount:?}: {problem}")]
    Mount { mount: String, problem: String },
    #[error("Vault {action} ({path}): {message}")]
    Api {
        action: String,
        path: String,
        code: u16,
        message: String,
    },
    #[error("Vault at {address} unreachable during {action}: {message}")]
    Unreachable {
        address: String,
        action: String,
        message: String,
    },
    #[error("Vault login ({method}) failed: {message}")]
    Login {
        method: &'static str,
        message: String,
    },
    #[error("Vault configuration: {0}")]
    Config(String),
    #[error("{what} from Vault is malformed: {reason}")]
    Malformed { what: String, reason: String },
}

/// An authenticated client that keeps its token alive.
pub struct VaultSession {
    client: RwLock<VaultClient>,
    settings: VaultSettings,
    address: String,
    /// When the token expires; `None` for tokens without a TTL (root tokens).
    expires: RwLock<Option<(Instant, Duration)>>,
    /// One renewal or login at a time, however many calls run concurrently.
    refresh: tokio::sync::Mutex<()>,
}

/// How often one Vault call is retried after a transient error (429, 500, 502, 504).
const TRANSIENT_RETRIES: u32 = 2;

/// Whether a call may be sent again after a failure whose answer says nothing of whether it
/// was carried out (a 500, or a 502/504 from a proxy after Vault committed it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Repeat {
    /// Reads and logins: sending it twice does no harm.
    Safe,
    /// Writes (a root generated, a check-and-set write, a signature, an issuer renamed): only
    /// a rate limit (429, not carried out) is retried, so nothing is done twice.
    OnlyIfNotDone,
}

/// Runs `f`, retrying Vault's transient failures (an overloaded or restarting node, a rate
/// limit) with a short backoff. 503 means sealed, or a standby that cannot answer: that does
/// not pass in a moment, so it is returned at once.
async fn retrying_transient<T>(
    action: &str,
    repeat: Repeat,
    f: impl AsyncFn() -> Result<T, ClientError>,
) -> Result<T, ClientError> {
    let mut retries = 0;
    loop {
        match f().await {
            Err(ClientError::APIError { code, .. })
                if retries < TRANSIENT_RETRIES
                    && (code == 429
                        || repeat == Repeat::Safe && matches!(code, 500 | 502 | 504)) =>
            {
                let wait = Duration::from_millis(200) * 2u32.pow(retries);
                retries += 1;
                tracing::debug!(action, code, ?wait, "transient Vault error; retrying");
                tokio::time::sleep(wait).await;
            }
            other => return other,
        }
    }
}

impl VaultSession {
    pub async fn connect(settings: &VaultSettings) -> Result<Self, VaultError> {
        let mut builder = VaultClientSettingsBuilder::default();
        let address = match &settings.address {
            Some(a) => a.clone(),
            None => std::env::var("VAULT_ADDR").map_err(|_| {
                VaultError::Config("no Vault address: set [vault] address or VAULT_ADDR".into())
            })?,
        };
        if let Some(rest) = address.strip_prefix("http://") {
            let host = rest.split(['/', ':']).next().unwrap_or("");
            if !matches!(host, "127.0.0.1" | "localhost" | "[") && !rest.starts_with("[::1]") {
                return Err(VaultError::Config(format!(
                    "{address}: plain HTTP would send the Vault token (and a vault-kv root key) in \
                     cleartext; use https (plain HTTP is allowed on loopback only)"
                )));
            }
        }
        builder.address(&address);
        if let Some(ca) = settings
            .ca_cert
            .clone()
            .or_else(|| std::env::var("VAULT_CACERT").ok().map(PathBuf::from))
        {
            builder.ca_certs(vec![ca.display().to_string()]);
        }
        if let Some(ns) = settings
            .namespace
            .clone()
            .or_else(|| std::env::var("VAULT_NAMESPACE").ok())
        {
            builder.set_namespace(ns);
        }
        // Never skip TLS verification, whatever VAULT_SKIP_VERIFY says.
        builder
            .verify(true)
            .timeout(Some(settings.timeout))
            .token("");
        let client_settings = builder
            .build()
            .map_err(|e| VaultError::Config(format!("{e}")))?;
        let client =
            VaultClient::new(client_settings).map_err(|e| VaultError::Config(e.to_string()))?;
        let session = VaultSession {
            client: RwLock::new(client),
            settings: settings.clone(),
            address,
            expires: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
        };
        session.login().await?;
        Ok(session)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Obtains a token per the configured method and records its lifetime.
    async fn login(&self) -> Result<(), VaultError> {
        let (token, ttl) = match &self.settings.auth {
            VaultAuth::Token { token_file } => {
                let token = match token_file {
                    Some(f) => Zeroizing::new(read_secret_file(f)?),
                    None => Zeroizing::new(std::env::var("VAULT_TOKEN").map_err(|_| {
                        VaultError::Login {
                            method: "token",
                            message: "no token: set VAULT_TOKEN or [vault] auth.token_file".into(),
                        }
                    })?),
                };
                self.client.write().await.set_token(&token);
                let client = self.client.read().await;
                let info = retrying_transient("look up the token", Repeat::Safe, async || {
                    vaultrs::token::lookup_self(&*client).await
                })
                .await
                .map_err(|e| login_error("token", &self.address, &e))?;
                (None, (info.ttl > 0).then(|| Duration::from_secs(info.ttl)))
            }
            VaultAuth::AppRole {
                mount,
                role_id,
                secret_id_file,
            } => {
                let secret_id = Zeroizing::new(read_secret_file(secret_id_file)?);
                let client = self.client.read().await;
                let auth = retrying_transient("log in (approle)", Repeat::Safe, async || {
                    vaultrs::auth::approle::login(&*client, mount, role_id, &secret_id).await
                })
                .await
                .map_err(|e| login_error("approle", &self.address, &e))?;
                (
                    Some(Zeroizing::new(auth.client_token)),
                    Some(Duration::from_secs(auth.lease_duration)),
                )
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                let jwt = Zeroizing::new(read_secret_file(jwt_file)?);
                let client = self.client.read().await;
                let auth = retrying_transient("log in (kubernetes)", Repeat::Safe, async || {
                    vaultrs::auth::kubernetes::login(&*client, mount, role, &jwt).await
                })
                .await
                .map_err(|e| login_error("kubernetes", &self.address, &e))?;
                (
                    Some(Zeroizing::new(auth.client_token)),
                    Some(Duration::from_secs(auth.lease_duration)),
                )
            }
        };
        if let Some(token) = token {
            self.client.write().await.set_token(&token);
        }
        *self.expires.write().await = ttl
            .filter(|t| !t.is_zero())
            .map(|t| (Instant::now() + t, t));
        tracing::debug!(ttl = ?ttl, "logged in to Vault");
        Ok(())
    }

    /// Renews the token when a third of its life is left, or logs in again if it cannot.
    async fn keep_alive(&self) -> Result<(), VaultError> {
        let due = |e: Option<(Instant, Duration)>| {
            e.is_some_and(|(expires, ttl)| Instant::now() + ttl / 3 >= expires)
        };
        if !due(*self.expires.read().await) {
            return Ok(());
        }
        // Re-check under the lock: another call may have refreshed meanwhile.
        let _refreshing = self.refresh.lock().await;
        let Some((expires, ttl)) = *self.expires.read().await else {
            return Ok(());
        };
        if !due(Some((expires, ttl))) {
            return Ok(());
        }
        let renewed = {
            let client = self.client.read().await;
            vaultrs::token::renew_self(&*client, None).await
        };
        match renewed {
            // A renewal that comes back much shorter than the TTL means the token nears its
            // max TTL: log in afresh instead of renewing ever-shorter tokens.
            Ok(auth)
                if auth.lease_duration > 0
                    && Duration::from_secs(auth.lease_duration) >= ttl / 2 =>
            {
                let ttl = Duration::from_secs(auth.lease_duration);
                *self.expires.write().await = Some((Instant::now() + ttl, ttl));
                tracing::debug!(?ttl, "renewed the Vault token");
                Ok(())
            }
            other => {
                tracing::info!(error = ?other.err().map(|e| describe_client_error(&e)), "cannot renew the Vault token fully; logging in again");
                match self.login().await {
                    Ok(()) => Ok(()),
                    // The current token still has time left: keep using it.
                    Err(e) if Instant::now() < expires => {
                        tracing::warn!(error = %e, "Vault login failed; continuing with the current token");
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        }
    }

    /// Runs a Vault call with a live token; a 403 (the token may have expired or been revoked
    /// under us) triggers one fresh login and a retry.
    pub async fn call<T>(
        &self,
        action: &str,
        path: &str,
        f: impl AsyncFn(&VaultClient) -> Result<T, ClientError>,
    ) -> Result<T, VaultError> {
        self.call_with(action, path, Repeat::Safe, f).await
    }

    /// [`VaultSession::call`] for a write: not repeated after an answer that leaves open
    /// whether it was carried out.
    pub async fn call_write<T>(
        &self,
        action: &str,
        path: &str,
        f: impl AsyncFn(&VaultClient) -> Result<T, ClientError>,
    ) -> Result<T, VaultError> {
        self.call_with(action, path, Repeat::OnlyIfNotDone, f).await
    }

    async fn call_with<T>(
        &self,
        action: &str,
        path: &str,
        repeat: Repeat,
        f: impl AsyncFn(&VaultClient) -> Result<T, ClientError>,
    ) -> Result<T, VaultError> {
        self.keep_alive().await?;
        let mut relogged = false;
        loop {
            let result = retrying_transient(action, repeat, async || {
                let client = self.client.read().await;
                f(&client).await
            })
            .await;
            match result {
                Ok(v) => return Ok(v),
                // A 403 is usually a policy denial; log in again only if the token itself is
                // dead (expired or revoked under us), so denials do not burn AppRole secret-id
                // uses or leave tokens behind.
                Err(ClientError::APIError { code: 403, .. })
                    if !relogged
                        && !matches!(self.settings.auth, VaultAuth::Token { .. })
                        && !self.token_alive().await =>
                {
                    tracing::info!(
                        action,
                        "the Vault token is no longer valid; logging in again"
                    );
                    relogged = true;
                    let _refreshing = self.refresh.lock().await;
                    // Another call may have logged in meanwhile: one fresh token is enough.
                    if !self.token_alive().await {
                        self.login().await?;
                    }
                }
                Err(e) => return Err(self.classify(action, path, e)),
            }
        }
    }

    async fn token_alive(&self) -> bool {
        let client = self.client.read().await;
        vaultrs::token::lookup_self(&*client).await.is_ok()
    }

    fn classify(&self, action: &str, path: &str, e: ClientError) -> VaultError {
        let (action, path) = (action.to_string(), path.to_string());
        match e {
            ClientError::APIError { code: 503, .. } => VaultError::Sealed {
                address: self.address.clone(),
            },
            ClientError::APIError { code: 403, .. } => {
                VaultError::PermissionDenied { action, path }
            }
            ClientError::APIError { code: 404, .. } => VaultError::NotFound { action, path },
            ClientError::APIError { code, errors } => VaultError::Api {
                action,
                path,
                code,
                message: format!("{} ({code})", errors.join("; ")),
            },
            ClientError::RestClientError {
                source: rustify::errors::ClientError::ServerResponseError { code, .. },
            } => match code {
                404 => VaultError::NotFound { action, path },
                503 => VaultError::Sealed {
                    address: self.address.clone(),
                },
                code => VaultError::Api {
                    action,
                    path,
                    code,
                    message: format!("unexpected response ({code})"),
                },
            },
            ClientError::RestClientError {
                source: ref s @ rustify::errors::ClientError::ResponseParseError { .. },
            } => VaultError::Malformed {
                what: format!("Vault's answer to {action} ({path})"),
                reason: s.to_string(),
            },
            ref e @ ClientError::RestClientError { .. } => VaultError::Unreachable {
                address: self.address.clone(),
                action,
                message: describe_client_error(e),
            },
            other => VaultError::Api {
                action,
                path,
                code: 0,
                message: other.to_string(),
            },
        }
    }

    /// The type and KV version of the mount at `mount` (what the vault CLI asks before KV use).
    pub async fn mount_info(&self, mount: &str) -> Result<MountInfo, VaultError> {
        let endpoint = MountInfoRequest {
            path: mount.to_string(),
        };
        self.call(
            "look up mount",
            &format!("sys/internal/ui/mounts/{mount}"),
            async |c: &VaultClient| vaultrs::api::exec_with_result(c, endpoint.clone()).await,
        )
        .await
        .map_err(|e| match e {
            // Real Vault answers 403 ("preflight capability check") for a path under no mount.
            VaultError::Api { code: 400, .. }
            | VaultError::NotFound { .. }
            | VaultError::PermissionDenied { .. } => VaultError::Mount {
                mount: mount.to_string(),
                problem:
                    "no such mount, or no access to it (enable the secrets engine, fix [root] \
                          mount, or grant the token's policy read on it)"
                        .into(),
            },
            other => other,
        })
    }
}

fn read_secret_file(path: &PathBuf) -> Result<String, VaultError> {
    let mut s = std::fs::read_to_string(path)
        .map_err(|e| VaultError::Config(format!("cannot read {}: {e}", path.display())))?;
    let trimmed = s.trim().to_string();
    s.zeroize();
    Ok(trimmed)
}

/// vaultrs' own messages are terse ("An error occurred with the request"): add the causes.
fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => format!("{} ({code})", errors.join("; ")),
        other => {
            let mut msg = other.to_string();
            let mut source = std::error::Error::source(other);
            while let Some(s) = source {
                msg.push_str(": ");
                msg.push_str(&s.to_string());
                source = s.source();
            }
            msg
        }
    }
}

fn login_error(method: &'static str, address: &str, e: &ClientError) -> VaultError {
    match e {
        ClientError::APIError { code: 503, .. } => VaultError::Sealed {
            address: address.to_string(),
        },
        ClientError::RestClientError { .. } => VaultError::Unreachable {
            address: address.to_string(),
            action: format!("{method} login"),
            message: describe_client_error(e),
        },
        _ => VaultError::Login {
            method,
            message: describe_client_error(e),
        },
    }
}

/// `sys/internal/ui/mounts/<path>` (no special policy needed; the vault CLI uses it).
#[derive(Clone, Debug)]
struct MountInfoRequest {
    path: String,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
pub struct MountInfo {
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(default)]
    pub options: Option<HashMap<String, String>>,
}

impl rustify::Endpoint for MountInfoRequest {
    type Response = MountInfo;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        format!("sys/internal/ui/mounts/{}", self.path)
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        rustify::enums::RequestMethod::GET
    }
}

/// The `key_type` and `key_bits` Vault's PKI engine takes for a key algorithm.
pub fn key_type(alg: crate::pki::KeyAlgorithm) -> (&'static str, u64) {
    use crate::pki::KeyAlgorithm;
    match alg {
        KeyAlgorithm::EcdsaP256 => ("ec", 256),
        KeyAlgorithm::EcdsaP384 => ("ec", 384),
        KeyAlgorithm::Rsa2048 => ("rsa", 2048),
        KeyAlgorithm::Rsa3072 => ("rsa", 3072),
        KeyAlgorithm::Rsa4096 => ("rsa", 4096),
    }
}

/// A GET, or a POST with a JSON body, answered with the response's `data`. For the PKI calls
/// vaultrs has no request type for (a named root) or whose response it reads more strictly
/// than Vault versions agree on.
#[derive(Clone, Debug)]
struct RawRequest {
    path: String,
    /// `None`: a GET.
    body: Option<serde_json::Value>,
}

impl rustify::Endpoint for RawRequest {
    type Response = serde_json::Value;
    const REQUEST_BODY_TYPE: rustify::enums::RequestType = rustify::enums::RequestType::JSON;
    const RESPONSE_BODY_TYPE: rustify::enums::ResponseType = rustify::enums::ResponseType::JSON;

    fn path(&self) -> String {
        self.path.clone()
    }

    fn method(&self) -> rustify::enums::RequestMethod {
        match self.body {
            Some(_) => rustify::enums::RequestMethod::POST,
            None => rustify::enums::RequestMethod::GET,
        }
    }

    fn body(&self) -> Result<Option<Vec<u8>>, rustify::errors::ClientError> {
        Ok(self.body.as_ref().and_then(|b| serde_json::to_vec(b).ok()))
    }
}

/// The KV v2 secret holding the root.
#[derive(Serialize, Deserialize)]
struct RootSecret {
    certificate: String,
    private_key: String,
}

/// The same secret as written: the key in a buffer wiped on drop (vaultrs' own JSON buffers
/// are out of reach).
#[derive(Serialize)]
struct WrittenRootSecret {
    certificate: String,
    #[serde(serialize_with = "serialize_str")]
    private_key: Zeroizing<String>,
}

fn serialize_str<S: serde::Serializer>(v: &Zeroizing<String>, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(v)
}

/// vault-kv: the root held in a KV v2 secret.
pub struct VaultKv {
    pub session: VaultSession,
    pub mount: String,
    pub path: String,
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
        let root = RootCa::new(cert, key, &what).map_err(malformed)?;
        Ok(Some((root, version)))
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
        let secret = WrittenRootSecret {
            certificate: root.cert_pem(),
            private_key: Zeroizing::new(key.to_string()),
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

/// vault-pki: the root key stays in Vault's PKI engine.
pub struct VaultPki {
    pub session: VaultSession,
    pub mount: String,
    /// An issuer name or id; `None` signs with the mount's default issuer.
    pub issuer: Option<String>,
}

impl VaultPki {
    pub fn describe(&self) -> String {
        match &self.issuer {
            Some(i) => format!(
                "vault-pki {} issuer {i} at {}",
                self.mount,
                self.session.address()
            ),
            None => format!("vault-pki {} at {}", self.mount, self.session.address()),
        }
    }

    /// The root certificate Vault signs with, `None` if the mount has no issuer yet.
    pub async fn root_cert(&self) -> Result<Option<Cert>, VaultError> {
        let pem = match &self.issuer {
            Some(issuer) => {
                let path = format!("{}/issuer/{issuer}/json", self.mount);
                match self
                    .session
                    .call("read issuer", &path, async |c: &VaultClient| {
                        vaultrs::pki::issuer::read(c, &self.mount, Some(issuer.as_str())).await
                    })
                    .await
                {
                    Ok(r) => r.certificate,
                    Err(VaultError::NotFound { .. }) => return Ok(None),
                    Err(VaultError::Api { message, .. })
                        if message.contains("unable to find PKI issuer") =>
                    {
                        return Err(VaultError::Config(format!(
                            "[root] issuer {issuer:?} does not exist in mount {} (vault list {}/issuers)",
                            self.mount, self.mount
                        )));
                    }
                    Err(e) => return Err(e),
                }
            }
            None => {
                let path = format!("{}/cert/ca", self.mount);
                match self
                    .session
                    .call("read CA certificate", &path, async |c: &VaultClient| {
                        vaultrs::pki::cert::read(c, &self.mount, "ca").await
                    })
                    .await
                {
                    Ok(r) if !r.certificate.trim().is_empty() => r.certificate,
                    Ok(_) | Err(VaultError::NotFound { .. }) => return Ok(None),
                    Err(VaultError::Api { code: 400, .. }) => return Ok(None),
                    Err(e) => return Err(e),
                }
            }
        };
        let what = format!("{} root certificate", self.describe());
        Cert::one_from_pem(pem.as_bytes(), &what)
            .map(Some)
            .map_err(|e| VaultError::Malformed {
                what,
                reason: e.to_string(),
            })
    }

    async fn raw(
        &self,
        action: &str,
        path: String,
        body: Option<serde_json::Value>,
    ) -> Result<serde_json::Value, VaultError> {
        let endpoint = RawRequest {
            path: path.clone(),
            body,
        };
        let call =
            async |c: &VaultClient| vaultrs::api::exec_with_result(c, endpoint.clone()).await;
        match endpoint.body {
            Some(_) => self.session.call_write(action, &path, call).await,
            None => self.session.call(action, &path, call).await,
        }
    }

    /// The issuer named (or with the id) `reference`; `None` if there is no such issuer.
    async fn read_issuer(
        &self,
        reference: &str,
    ) -> Result<Option<vaultrs::api::pki::responses::ReadIssuerCertificateResponse>, VaultError>
    {
        let path = format!("{}/issuer/{reference}/json", self.mount);
        match self
            .session
            .call("read issuer", &path, async |c: &VaultClient| {
                vaultrs::pki::issuer::read(c, &self.mount, Some(reference)).await
            })
            .await
        {
            Ok(r) => Ok(Some(r)),
            Err(VaultError::NotFound { .. }) => Ok(None),
            Err(VaultError::Api { message, .. })
                if message.contains("unable to find PKI issuer") =>
            {
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// The name of the issuer `reference` names (by name or id), if it exists.
    pub async fn issuer_name(&self, reference: &str) -> Result<Option<String>, VaultError> {
        Ok(self.read_issuer(reference).await?.map(|r| r.issuer_name))
    }

    /// The certificate of the issuer named (or with the id) `reference`; `None` if there is
    /// no such issuer.
    pub async fn issuer_cert(&self, reference: &str) -> Result<Option<Cert>, VaultError> {
        let Some(pem) = self.read_issuer(reference).await?.map(|r| r.certificate) else {
            return Ok(None);
        };
        let what = format!("{} issuer {reference}", self.describe());
        Cert::one_from_pem(pem.as_bytes(), &what)
            .map(Some)
            .map_err(|e| VaultError::Malformed {
                what,
                reason: e.to_string(),
            })
    }

    /// Has Vault generate a further root inside the PKI engine as issuer `name` (the key is
    /// never returned); the mount's default issuer is left as it is.
    pub async fn generate_issuer(
        &self,
        name: &str,
        organization: Option<&str>,
        common_name: &str,
        key: (&str, u64),
        ttl: Duration,
    ) -> Result<Cert, VaultError> {
        let path = format!("{}/root/generate/internal", self.mount);
        let mut body = serde_json::json!({
            "common_name": common_name,
            "key_type": key.0,
            "key_bits": key.1,
            "ttl": format!("{}s", ttl.as_secs()),
            "issuer_name": name,
        });
        if let Some(o) = organization {
            body["organization"] = serde_json::json!([o]);
        }
        let data = self.raw("generate root", path.clone(), Some(body)).await?;
        let what = format!("{} generated root {name}", self.describe());
        let pem = data["certificate"]
            .as_str()
            .ok_or_else(|| VaultError::Malformed {
                what: path.clone(),
                reason: "no certificate in the response".into(),
            })?;
        let cert =
            Cert::one_from_pem(pem.as_bytes(), &what).map_err(|e| VaultError::Malformed {
                what: what.clone(),
                reason: e.to_string(),
            })?;
        check_lifetime(&cert, ttl, &self.mount, &what)?;
        Ok(cert)
    }

    /// Renames issuer `reference` to `name`. Vault's issuer update (POST) resets every field
    /// it is not given, so the issuer's settings are read first and sent back unchanged.
    pub async fn rename_issuer(&self, reference: &str, name: &str) -> Result<(), VaultError> {
        const KEPT: [&str; 9] = [
            "leaf_not_after_behavior",
            "manual_chain",
            "usage",
            "revocation_signature_algorithm",
            "issuing_certificates",
            "crl_distribution_points",
            "delta_crl_distribution_points",
            "ocsp_servers",
            "enable_aia_url_templating",
        ];
        let path = format!("{}/issuer/{reference}", self.mount);
        let current = self.raw("read issuer", path.clone(), None).await?;
        let mut body = serde_json::Map::new();
        for key in KEPT {
            if let Some(v) = current.get(key).filter(|v| !v.is_null()) {
                body.insert(key.to_string(), v.clone());
            }
        }
        body.insert("issuer_name".into(), serde_json::Value::from(name));
        self.raw("rename issuer", path, Some(serde_json::Value::Object(body)))
            .await
            .map(drop)
    }

    /// Makes issuer `reference` the mount's default issuer.
    pub async fn set_default_issuer(&self, reference: &str) -> Result<(), VaultError> {
        let path = format!("{}/config/issuers", self.mount);
        self.raw(
            "set the default issuer",
            path,
            Some(serde_json::json!({ "default": reference })),
        )
        .await
        .map(drop)
    }

    /// Whether the mount makes every newly generated issuer its default at once
    /// (`default_follows_latest_issuer`).
    pub async fn default_follows_latest_issuer(&self) -> Result<bool, VaultError> {
        let path = format!("{}/config/issuers", self.mount);
        let data = self
            .raw("read the issuers configuration", path, None)
            .await?;
        Ok(data["default_follows_latest_issuer"]
            .as_bool()
            .unwrap_or(false))
    }

    /// Asks Vault to generate the root inside the PKI engine (`root/generate/internal`: the
    /// key is never returned).
    pub async fn generate_root(
        &self,
        organization: Option<&str>,
        common_name: &str,
        key: (&str, u64),
        ttl: Duration,
    ) -> Result<Cert, VaultError> {
        if let Some(issuer) = &self.issuer {
            return Err(VaultError::Config(format!(
                "root init with [root] issuer = {issuer:?}: Vault names issuers itself; run \
                 `root init` without `issuer`, then name the issuer Vault created (vault \
                 list {}/issuers) if you need a specific one",
                self.mount
            )));
        }
        let path = format!("{}/root/generate/internal", self.mount);
        let ttl_asked = ttl;
        let ttl = format!("{}s", ttl.as_secs());
        let resp = self
            .session
            .call_write("generate root", &path, async |c: &VaultClient| {
                let mut opts = vaultrs::api::pki::requests::GenerateRootRequest::builder();
                opts.common_name(common_name)
                    .key_type(key.0)
                    .key_bits(key.1)
                    .ttl(ttl.clone());
                if let Some(o) = organization {
                    opts.organization(vec![o.to_string()]);
                }
                vaultrs::pki::cert::ca::generate(c, &self.mount, "internal", Some(&mut opts)).await
            })
            .await?
            .ok_or_else(|| VaultError::Malformed {
                what: path.clone(),
                reason: "empty response".into(),
            })?;
        let what = format!("{} generated root", self.describe());
        let cert = Cert::one_from_pem(resp.certificate.as_bytes(), &what).map_err(|e| {
            VaultError::Malformed {
                what: what.clone(),
                reason: e.to_string(),
            }
        })?;
        check_lifetime(&cert, ttl_asked, &self.mount, &what)?;
        // Two concurrent `root init`s each make an issuer; only the default one is the root.
        if let Some(default) = self.root_cert().await?
            && default != cert
        {
            return Err(VaultError::Config(format!(
                "another run generated a root in {} at the same time; its default issuer is {} \
                 — use that one",
                self.mount,
                default.info().fingerprint_sha256
            )));
        }
        Ok(cert)
    }

    /// Has Vault sign an intermediate for a key made here. The CSR carries the subject and
    /// SANs (`use_csr_values`); the CA flag, path length and TTL are set by the request.
    pub async fn sign_intermediate(
        &self,
        spec: &IntermediateSpec,
        root: &Cert,
    ) -> Result<IntermediateCa, SignError> {
        let key = CaKey::generate(spec.key_algorithm)?;
        let params = crate::pki::intermediate_params_for_csr(spec)?;
        let csr = params
            .serialize_request(key.signer())
            .map_err(PkiError::from)?
            .pem()
            .map_err(PkiError::from)?;
        // Like the local signer: never ask for more than the root has left. Vault signs at its
        // own present, so this is measured on the wall clock, not the injected one.
        let left: Duration = (root.info().not_after - time::OffsetDateTime::now_utc())
            .try_into()
            .unwrap_or(Duration::ZERO);
        let validity = spec
            .validity
            .min(left.saturating_sub(Duration::from_secs(60)));
        let ttl = format!("{}s", validity.as_secs());
        let cn = spec.subject.common_name.clone();
        let path = match &self.issuer {
            Some(i) => format!("{}/issuer/{i}/sign-intermediate", self.mount),
            None => format!("{}/root/sign-intermediate", self.mount),
        };
        let (certificate, chain) = match &self.issuer {
            Some(issuer) => {
                let r = self
                    .session
                    .call_write("sign intermediate", &path, async |c: &VaultClient| {
                        let mut opts =
                            vaultrs::api::pki::requests::SignIntermediateIssuerRequest::builder();
                        opts.max_path_length(i32::from(spec.path_len))
                            .ttl(ttl.clone())
                            .use_csr_values(true)
                            .format("pem");
                        vaultrs::pki::issuer::sign_intermediate(
                            c,
                            &self.mount,
                            &csr,
                            &cn,
                            Some(issuer),
                            Some(&mut opts),
                        )
                        .await
                    })
                    .await?;
                (r.certificate, r.ca_chain)
            }
            None => {
                let r = self
                    .session
                    .call_write("sign intermediate", &path, async |c: &VaultClient| {
                        let mut opts =
                            vaultrs::api::pki::requests::SignIntermediateRequest::builder();
                        opts.max_path_length(i32::from(spec.path_len))
                            .ttl(ttl.clone())
                            .use_csr_values(true)
                            .format("pem");
                        vaultrs::pki::cert::ca::sign_intermediate(
                            c,
                            &self.mount,
                            &csr,
                            &cn,
                            Some(&mut opts),
                        )
                        .await
                    })
                    .await?;
                (r.certificate, r.ca_chain.unwrap_or_default())
            }
        };
        drop(chain);
        let what = format!("certificate signed by {}", self.describe());
        let cert = Cert::one_from_pem(certificate.as_bytes(), &what)?;
        crate::pki::check_signed_intermediate(&cert, &key, root, spec, &what)?;
        check_lifetime(&cert, validity, &self.mount, &what)?;
        Ok(IntermediateCa { cert, key })
    }
}

/// Vault silently shortens certificates to the mount's max lease TTL (768 h by default): a
/// "10-year" root that lives a month must not go unnoticed.
fn check_lifetime(cert: &Cert, asked: Duration, mount: &str, what: &str) -> Result<(), VaultError> {
    let info = cert.info();
    let got: Duration = (info.not_after - info.not_before)
        .try_into()
        .unwrap_or(Duration::ZERO);
    if got + Duration::from_secs(3600) < asked.mul_f64(0.95) {
        return Err(VaultError::Malformed {
            what: what.to_string(),
            reason: format!(
                "valid for {} but {} was asked for: the mount's max lease TTL is shorter. Raise it \
                 (vault secrets tune -max-lease-ttl={}h {mount}); a root Vault generated this \
                 short stays in the mount until you delete it (vault delete {mount}/root)",
                humantime::format_duration(Duration::from_secs(got.as_secs())),
                humantime::format_duration(asked),
                asked.as_secs().div_ceil(3600)
            ),
        });
    }
    Ok(())
}

/// Signing through Vault fails either at Vault or in the check of what it returned.
#[derive(Debug, thiserror::Error)]
pub enum SignError {
    #[error(transparent)]
    Vault(#[from] VaultError),
    #[error(transparent)]
    Pki(#[from] PkiError),
}
