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
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use tokio::sync::RwLock;
use vaultrs::client::{Client, VaultClient, VaultClientSettingsBuilder};
use vaultrs::error::ClientError;
use zeroize::Zeroizing;

pub use crate::config::{VaultAuth, VaultSettings};

mod credentials;
mod kv;
mod pki;

use credentials::read_secret_file;

pub use kv::VaultKv;
pub use pki::{SignError, VaultPki};

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
    /// The token is one cacertd logged in for (AppRole, Kubernetes), to revoke when done; a
    /// token it was given (`VAULT_TOKEN`, a token file) is not its to revoke.
    logged_in: std::sync::atomic::AtomicBool,
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
        crate::config::check_vault_address(&address).map_err(VaultError::Config)?;
        builder.address(&address);
        let pinned_ca = settings
            .ca_cert
            .clone()
            .or_else(|| std::env::var("VAULT_CACERT").ok().map(PathBuf::from));
        // vaultrs would add the CA to the system's roots; it is set below as the only one.
        builder.ca_certs(Vec::new());
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
        let mut client =
            VaultClient::new(client_settings).map_err(|e| VaultError::Config(e.to_string()))?;
        if let Some(ca) = &pinned_ca {
            client.http = pinned_http(&address, ca, settings.timeout)?;
        }
        let session = VaultSession {
            client: RwLock::new(client),
            settings: settings.clone(),
            address,
            expires: RwLock::new(None),
            refresh: tokio::sync::Mutex::new(()),
            logged_in: std::sync::atomic::AtomicBool::new(false),
        };
        session.login().await?;
        Ok(session)
    }

    pub fn address(&self) -> &str {
        &self.address
    }

    /// Revokes the token this session logged in for, if it did; said at debug level only if
    /// Vault refuses (the token then expires with its TTL).
    pub async fn close(&self) {
        if !self
            .logged_in
            .swap(false, std::sync::atomic::Ordering::SeqCst)
        {
            return;
        }
        let client = self.client.read().await;
        match vaultrs::token::revoke_self(&*client).await {
            Ok(()) => tracing::debug!("revoked the Vault token"),
            Err(e) => {
                tracing::debug!(error = %describe_client_error(&e), "cannot revoke the Vault token; it expires with its TTL")
            }
        }
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
                self.role_login("approle", secret_id_file, async |c, secret| {
                    vaultrs::auth::approle::login(c, mount, role_id, secret).await
                })
                .await?
            }
            VaultAuth::Kubernetes {
                mount,
                role,
                jwt_file,
            } => {
                self.role_login("kubernetes", jwt_file, async |c, jwt| {
                    vaultrs::auth::kubernetes::login(c, mount, role, jwt).await
                })
                .await?
            }
        };
        if let Some(token) = token {
            self.client.write().await.set_token(&token);
            self.logged_in
                .store(true, std::sync::atomic::Ordering::SeqCst);
        }
        *self.expires.write().await = ttl
            .filter(|t| !t.is_zero())
            .map(|t| (Instant::now() + t, t));
        tracing::debug!(ttl = ?ttl, "logged in to Vault");
        Ok(())
    }

    /// Logs in with `method` (AppRole, Kubernetes), whose secret (a secret ID, a service
    /// account JWT) is read from `file` into wiped memory for the call. Returns the token and
    /// its lifetime.
    async fn role_login(
        &self,
        method: &'static str,
        file: &std::path::Path,
        login: impl AsyncFn(&VaultClient, &str) -> Result<vaultrs::api::AuthInfo, ClientError>,
    ) -> Result<(Option<Zeroizing<String>>, Option<Duration>), VaultError> {
        let secret = Zeroizing::new(read_secret_file(file)?);
        let client = self.client.read().await;
        let action = format!("log in ({method})");
        let auth = retrying_transient(&action, Repeat::Safe, async || {
            login(&client, &secret).await
        })
        .await
        .map_err(|e| login_error(method, &self.address, &e))?;
        Ok((
            Some(Zeroizing::new(auth.client_token)),
            Some(Duration::from_secs(auth.lease_duration)),
        ))
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

/// An HTTP client that trusts `ca` and nothing else. With a CA configured, Vault is the
/// server that certificate authority vouches for, not any server a public or corporate CA in
/// the system's store vouches for under the same name.
fn pinned_http(
    address: &str,
    ca: &Path,
    timeout: Duration,
) -> Result<rustify::clients::reqwest::Client, VaultError> {
    let shown = ca.display();
    let pem = crate::fsutil::read_pem(ca)
        .map_err(|e| VaultError::Config(format!("the Vault CA certificate: {e}")))?;
    let certs = reqwest::Certificate::from_pem_bundle(&pem).map_err(|e| {
        VaultError::Config(format!("the Vault CA certificate {shown} is not PEM: {e}"))
    })?;
    if certs.is_empty() {
        return Err(VaultError::Config(format!(
            "the Vault CA certificate {shown} holds no certificate"
        )));
    }
    let http = reqwest::ClientBuilder::new()
        .tls_backend_rustls()
        .timeout(timeout)
        .tls_certs_only(certs)
        .build()
        .map_err(|e| VaultError::Config(format!("cannot build the Vault client: {e}")))?;
    Ok(rustify::clients::reqwest::Client::new(address, http))
}

/// vaultrs' own messages are terse ("An error occurred with the request"): add the causes.
fn describe_client_error(e: &ClientError) -> String {
    match e {
        ClientError::APIError { code, errors } => format!("{} ({code})", errors.join("; ")),
        other if let Some(why) = crate::net_error::why(other) => why,
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
