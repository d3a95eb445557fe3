//! A HashiCorp Vault for tests, because no Vault server can run where cacertd is tested. Real
//! HTTP, Vault's documented request and response shapes (`{"data": …}`, `{"auth": …}`,
//! `{"errors": […]}`) for exactly the endpoints cacertd uses:
//!
//! - KV v2: `GET/POST <mount>/data/<path>` (versions, `options.cas`), `GET/DELETE
//!   <mount>/metadata/<path>`, `POST <mount>/destroy/<path>` (`versions`)
//! - PKI: `root/generate/internal` (and `root/generate/exported`, which cacertd must never
//!   call; `issuer_name` must be unused), `root/sign-intermediate`,
//!   `issuer/<ref>/sign-intermediate`, `issuer/<ref>/json`, `issuer/<ref>` (rename),
//!   `config/issuers` (the default issuer), `cert/ca`, `ca/pem` — signing does real X.509 work
//!   (rcgen), so results can be checked with openssl;
//! - auth: `auth/approle/login`, `auth/kubernetes/login`, `auth/token/lookup-self`,
//!   `auth/token/renew-self`, `auth/token/revoke-self`; tokens expire after their TTL;
//! - `sys/internal/ui/mounts/<path>` (how the vault CLI learns a mount's type and KV version).
//!
//! Policies per token (path prefix globs with capabilities; 403 "permission denied"), a sealed
//! mode (503 "Vault is sealed") and faults (status codes, delays) on demand.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};

/// A policy rule: a path (a trailing `*` matches any suffix) and its capabilities.
#[derive(Clone, Debug)]
pub struct PathRule {
    pub path: String,
    pub capabilities: Vec<String>,
}

impl PathRule {
    pub fn new(path: &str, capabilities: &[&str]) -> Self {
        PathRule {
            path: path.to_string(),
            capabilities: capabilities.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Vault's policy paths: `+` matches one path segment, a trailing `*` any rest.
    fn allows(&self, path: &str, capability: &str) -> bool {
        let (pattern, glob) = match self.path.strip_suffix('*') {
            Some(prefix) => (prefix, true),
            None => (self.path.as_str(), false),
        };
        let mut want = pattern.split('/').peekable();
        let mut got = path.split('/');
        let mut matches = true;
        while let Some(w) = want.next() {
            let last = want.peek().is_none();
            match got.next() {
                Some(g) if last && glob => matches &= g.starts_with(w),
                Some(g) => matches &= w == "+" || w == g,
                None => matches = false,
            }
        }
        if !glob && got.next().is_some() {
            matches = false;
        }
        matches
            && self
                .capabilities
                .iter()
                .any(|c| c == capability || c == "sudo" && capability == "sudo")
    }
}

#[derive(Clone, Debug)]
struct Token {
    rules: Vec<PathRule>,
    ttl: Duration,
    expires: Option<Instant>,
    renewable: bool,
    /// Renewals allowed before renew-self fails (the max TTL is reached).
    renewals_left: u32,
}

struct KvVersion {
    data: Value,
    created: String,
}

struct Issuer {
    id: String,
    name: String,
    /// One of the settings Vault's issuer update resets when not given.
    leaf_not_after_behavior: String,
    cert_pem: String,
    cert_der: Vec<u8>,
    key: rcgen::KeyPair,
    not_after: time::OffsetDateTime,
}

#[derive(Default)]
struct State {
    sealed: bool,
    tokens: HashMap<String, Token>,
    approles: HashMap<(String, String), (Vec<PathRule>, Duration)>,
    kube_roles: HashMap<(String, String), (Vec<PathRule>, Duration)>,
    kv_mounts: HashMap<String, u8>,
    kv: HashMap<(String, String), Vec<KvVersion>>,
    pki_mounts: HashMap<String, Vec<Issuer>>,
    requests: Vec<(String, String)>,
    namespaces: Vec<Option<String>>,
    /// (status, requests to let through first, requests to answer with it).
    faults: Vec<(u16, usize, usize)>,
    /// (method, path, status, requests to answer with it).
    path_faults: Vec<(String, String, u16, usize)>,
    delay: Option<Duration>,
    /// Tokens report their TTL but stay valid past it (see [`TestVault::keep_tokens_alive`]).
    tokens_never_expire: bool,
    /// KV writes wait here until this many have arrived (then the barrier is gone).
    write_barrier: Option<(usize, Arc<tokio::sync::Barrier>)>,
    /// (method, path, status) of every answered request.
    answers: Vec<(String, String, u16)>,
    /// Requests being handled now, and the most ever handled at once, per path.
    in_flight: HashMap<String, (usize, usize)>,
    /// After this many more requests, every token issued so far is revoked.
    revoke_after: Option<usize>,
    pki_max_ttl: Option<Duration>,
    pki_default_follows_latest: bool,
    next_id: u64,
    login_renewals: u32,
}

/// A running test Vault on one loopback port. Dropping it stops the server.
pub struct TestVault {
    pub addr: std::net::SocketAddr,
    /// The serving certificate (PEM) when the server speaks TLS.
    pub ca_pem: Option<String>,
    state: Arc<Mutex<State>>,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

impl TestVault {
    /// Starts an unsealed Vault with a KV v2 mount `secret`, a KV v1 mount `kv1`, a PKI mount
    /// `pki`, and a root token `root-token` with every permission.
    pub fn start() -> Self {
        Self::start_with(false)
    }

    /// Like [`TestVault::start`], serving HTTPS with a self-signed certificate for 127.0.0.1.
    pub fn start_tls() -> Self {
        Self::start_with(true)
    }

    fn start_with(tls: bool) -> Self {
        let identity = tls.then(crate::http::TlsIdentity::generate);
        let acceptor = identity.as_ref().map(|i| i.acceptor());
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let addr = listener.local_addr().expect("addr");
        let state = Arc::new(Mutex::new(State::default()));
        {
            let mut st = state.lock().unwrap();
            st.kv_mounts.insert("secret".into(), 2);
            st.kv_mounts.insert("kv1".into(), 1);
            st.pki_mounts.insert("pki".into(), Vec::new());
            st.login_renewals = 100;
        }
        let vault = TestVault {
            addr,
            ca_pem: identity.map(|i| i.cert_pem),
            state: state.clone(),
            shutdown: None,
            thread: None,
        };
        vault.add_token(
            "root-token",
            vec![PathRule::new(
                "*",
                &["create", "read", "update", "delete", "list", "sudo"],
            )],
            Duration::from_secs(3600),
        );
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).expect("listener");
                let serve = async {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            continue;
                        };
                        let state = state.clone();
                        let acceptor = acceptor.clone();
                        tokio::spawn(async move {
                            let service = service_fn(move |req| handle(state.clone(), req));
                            let http = hyper::server::conn::http1::Builder::new();
                            match acceptor {
                                Some(a) => {
                                    if let Ok(tls) = a.accept(stream).await {
                                        let _ =
                                            http.serve_connection(TokioIo::new(tls), service).await;
                                    }
                                }
                                None => {
                                    let _ =
                                        http.serve_connection(TokioIo::new(stream), service).await;
                                }
                            }
                        });
                    }
                };
                tokio::select! {
                    _ = serve => {}
                    _ = rx => {}
                }
            });
        });
        let mut vault = vault;
        vault.shutdown = Some(tx);
        vault.thread = Some(thread);
        vault
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub fn url(&self) -> String {
        match self.ca_pem {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    /// The X-Vault-Namespace header of every request so far.
    pub fn namespaces(&self) -> Vec<Option<String>> {
        self.lock().namespaces.clone()
    }

    pub fn add_token(&self, token: &str, rules: Vec<PathRule>, ttl: Duration) {
        self.lock().tokens.insert(
            token.to_string(),
            Token {
                rules,
                ttl,
                expires: Some(Instant::now() + ttl),
                renewable: true,
                renewals_left: 100,
            },
        );
    }

    /// Limits how often `token` can be renewed before renew-self fails.
    pub fn set_renewals_left(&self, token: &str, n: u32) {
        if let Some(t) = self.lock().tokens.get_mut(token) {
            t.renewals_left = n;
        }
    }

    pub fn add_approle(&self, role_id: &str, secret_id: &str, rules: Vec<PathRule>, ttl: Duration) {
        self.lock()
            .approles
            .insert((role_id.into(), secret_id.into()), (rules, ttl));
    }

    pub fn add_kubernetes_role(&self, role: &str, jwt: &str, rules: Vec<PathRule>, ttl: Duration) {
        self.lock()
            .kube_roles
            .insert((role.into(), jwt.into()), (rules, ttl));
    }

    /// Logins through AppRole or Kubernetes hand out tokens that cannot be renewed (their max
    /// TTL is reached), so a client must log in again when they run out.
    pub fn set_login_tokens_renewable(&self, renewable: bool) {
        self.lock().login_renewals = if renewable { 100 } else { 0 };
    }

    /// Writes a KV v2 version directly (a fixture, no policy check).
    pub fn kv_put(&self, mount: &str, path: &str, data: Value) {
        self.lock()
            .kv
            .entry((mount.to_string(), path.to_string()))
            .or_default()
            .push(KvVersion {
                data,
                created: now_rfc3339(),
            });
    }

    /// Like a PKI mount's max lease TTL (768 h by default in real Vault): longer TTLs asked for
    /// are silently shortened to it.
    pub fn set_pki_max_ttl(&self, ttl: Option<Duration>) {
        self.lock().pki_max_ttl = ttl;
    }

    pub fn seal(&self, sealed: bool) {
        self.lock().sealed = sealed;
    }

    /// The next `count` requests answer `status`.
    pub fn fail_next(&self, status: u16, count: usize) {
        self.fail_after(0, status, count);
    }

    /// Like [`TestVault::fail_next`], after letting `skip` requests through.
    pub fn fail_after(&self, skip: usize, status: u16, count: usize) {
        self.lock().faults.push((status, skip, count));
    }

    /// The next `count` requests with this method and path (without `/v1/`) answer `status`.
    pub fn fail_path(&self, method: &str, path: &str, status: u16, count: usize) {
        self.lock()
            .path_faults
            .push((method.to_string(), path.to_string(), status, count));
    }

    /// Forgets the faults `fail_next` queued and not yet used.
    pub fn clear_faults(&self) {
        let mut st = self.lock();
        st.faults.clear();
        st.path_faults.clear();
    }

    pub fn set_delay(&self, d: Option<Duration>) {
        self.lock().delay = d;
    }

    /// The next `n` KV v2 writes are held until all `n` have arrived, then handled together:
    /// for races between clients that have all read before any writes.
    pub fn hold_kv_writes_until(&self, n: usize) {
        self.lock().write_barrier = Some((n, Arc::new(tokio::sync::Barrier::new(n))));
    }

    /// Tokens still report their TTL counting down (so clients renew on their own schedule)
    /// but are not refused once it has passed: a slow machine cannot turn a test of renewal
    /// into one of expiry.
    pub fn keep_tokens_alive(&self, alive: bool) {
        self.lock().tokens_never_expire = alive;
    }

    /// The most requests to `path` ever handled at once.
    pub fn max_in_flight(&self, path: &str) -> usize {
        self.lock().in_flight.get(path).map_or(0, |f| f.1)
    }

    /// Every token issued so far is revoked once `n` more requests have arrived (the next one
    /// after them meets the revocation), as when an operator revokes a lease or Vault loses its
    /// token store: what a client sees is a 403 for a token that no longer looks itself up.
    pub fn revoke_tokens_after(&self, n: usize) {
        self.lock().revoke_after = Some(n);
    }

    /// Every answered request: (method, path without `/v1/`, HTTP status).
    pub fn answers(&self) -> Vec<(String, String, u16)> {
        self.lock().answers.clone()
    }

    /// Every request so far: (method, path without `/v1/`).
    pub fn requests(&self) -> Vec<(String, String)> {
        self.lock().requests.clone()
    }

    /// The KV v2 versions stored at `mount`/`path`, oldest first.
    pub fn kv_versions(&self, mount: &str, path: &str) -> Vec<Value> {
        self.lock()
            .kv
            .get(&(mount.to_string(), path.to_string()))
            .map(|v| v.iter().map(|x| x.data.clone()).collect())
            .unwrap_or_default()
    }

    /// The ids of the issuers of a PKI mount.
    pub fn pki_issuer_ids(&self, mount: &str) -> Vec<String> {
        self.lock()
            .pki_mounts
            .get(mount)
            .map(|i| i.iter().map(|i| i.id.clone()).collect())
            .unwrap_or_default()
    }

    /// Names issuer `id` of a PKI mount (what `vault write <mount>/issuer/<id> issuer_name=…`
    /// does).
    pub fn pki_name_issuer(&self, mount: &str, id: &str, name: &str) {
        if let Some(i) = self
            .lock()
            .pki_mounts
            .get_mut(mount)
            .and_then(|is| is.iter_mut().find(|i| i.id == id))
        {
            i.name = name.to_string();
        }
    }

    /// Sets an issuer setting (`leaf_not_after_behavior`) that an issuer update resets.
    pub fn pki_set_leaf_behavior(&self, mount: &str, index: usize, value: &str) {
        if let Some(i) = self
            .lock()
            .pki_mounts
            .get_mut(mount)
            .and_then(|is| is.get_mut(index))
        {
            i.leaf_not_after_behavior = value.to_string();
        }
    }

    /// The `leaf_not_after_behavior` of each issuer of a PKI mount, the default first.
    pub fn pki_leaf_behaviors(&self, mount: &str) -> Vec<String> {
        self.lock()
            .pki_mounts
            .get(mount)
            .map(|i| {
                i.iter()
                    .map(|i| i.leaf_not_after_behavior.clone())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `default_follows_latest_issuer` for every PKI mount (generating an issuer makes it the
    /// default at once).
    pub fn set_pki_default_follows_latest(&self, on: bool) {
        self.lock().pki_default_follows_latest = on;
    }

    /// The names of the issuers of a PKI mount, the default first.
    pub fn pki_issuer_names(&self, mount: &str) -> Vec<String> {
        self.lock()
            .pki_mounts
            .get(mount)
            .map(|i| i.iter().map(|i| i.name.clone()).collect())
            .unwrap_or_default()
    }

    /// Certificates of the issuers of a PKI mount, as PEM.
    pub fn pki_issuers(&self, mount: &str) -> Vec<String> {
        self.lock()
            .pki_mounts
            .get(mount)
            .map(|i| i.iter().map(|i| i.cert_pem.clone()).collect())
            .unwrap_or_default()
    }
}

impl Drop for TestVault {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn reply(status: u16, body: Value) -> Response<Full<Bytes>> {
    Response::builder()
        .status(status)
        .header("content-type", "application/json")
        .body(Full::new(Bytes::from(body.to_string())))
        .expect("response")
}

/// What Vault answers to a write that returns nothing: 204, no body.
fn no_content() -> Response<Full<Bytes>> {
    Response::builder()
        .status(204)
        .body(Full::new(Bytes::new()))
        .expect("response")
}

fn errors(status: u16, messages: &[&str]) -> Response<Full<Bytes>> {
    reply(status, json!({"errors": messages}))
}

/// Vault's envelope around `data` or `auth`.
fn envelope(data: Value, auth: Value) -> Value {
    json!({
        "request_id": "00000000-0000-0000-0000-000000000000", "lease_id": "", "renewable": false,
        "lease_duration": 0, "data": data, "wrap_info": null, "warnings": null, "auth": auth,
    })
}

async fn handle(
    state: Arc<Mutex<State>>,
    req: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    let method = req.method().clone();
    let full_path = req.uri().path().to_string();
    let query = req.uri().query().unwrap_or("").to_string();
    let token = req
        .headers()
        .get("x-vault-token")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let namespace = req
        .headers()
        .get("x-vault-namespace")
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let body = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    let body: Value = if body.is_empty() {
        json!({})
    } else {
        serde_json::from_slice(&body).unwrap_or(json!({}))
    };
    let path = full_path.trim_start_matches("/v1/").to_string();
    let is_kv_write = matches!(method, Method::POST | Method::PUT) && path.contains("/data/");
    let (delay, barrier) = {
        let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
        st.requests.push((method.to_string(), path.clone()));
        st.namespaces.push(namespace);
        let barrier = match st.write_barrier.as_mut() {
            Some((left, barrier)) if is_kv_write => {
                *left -= 1;
                let barrier = barrier.clone();
                if *left == 0 {
                    st.write_barrier = None;
                }
                Some(barrier)
            }
            _ => None,
        };
        let flight = st.in_flight.entry(path.clone()).or_default();
        flight.0 += 1;
        flight.1 = flight.1.max(flight.0);
        match st.revoke_after {
            Some(0) => {
                st.tokens.clear();
                st.revoke_after = None;
            }
            Some(n) => st.revoke_after = Some(n - 1),
            None => {}
        }
        (st.delay, barrier)
    };
    if let Some(barrier) = barrier {
        barrier.wait().await;
    }
    if let Some(d) = delay {
        tokio::time::sleep(d).await;
    }
    let response = answer(&state, &method, &path, &query, token.as_deref(), &body);
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(flight) = st.in_flight.get_mut(&path) {
        flight.0 -= 1;
    }
    st.answers
        .push((method.to_string(), path, response.status().as_u16()));
    Ok(response)
}

/// The answer to one request, faults and sealing first.
fn answer(
    state: &Mutex<State>,
    method: &Method,
    path: &str,
    query: &str,
    token: Option<&str>,
    body: &Value,
) -> Response<Full<Bytes>> {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(f) = st
        .path_faults
        .iter_mut()
        .find(|(m, p, _, n)| *n > 0 && m == method.as_str() && p == path)
    {
        f.3 -= 1;
        let code = f.2;
        return errors(code, &["injected fault"]);
    }
    let fault = match st.faults.iter().position(|(_, _, n)| *n > 0) {
        Some(i) if st.faults[i].1 > 0 => {
            st.faults[i].1 -= 1;
            None
        }
        Some(i) => {
            st.faults[i].2 -= 1;
            let code = st.faults[i].0;
            st.faults.retain(|(_, _, n)| *n > 0);
            Some(code)
        }
        None => None,
    };
    if let Some(code) = fault {
        return errors(code, &["injected fault"]);
    }
    if st.sealed {
        return errors(503, &["Vault is sealed"]);
    }
    route(&mut st, method, path, query, token, body)
}

/// The capability a request needs (Vault's mapping of HTTP verbs).
fn capability(method: &Method, exists: bool) -> &'static str {
    match *method {
        Method::GET => "read",
        Method::DELETE => "delete",
        _ if exists => "update",
        _ => "create",
    }
}

fn route(
    st: &mut State,
    method: &Method,
    path: &str,
    query: &str,
    token: Option<&str>,
    body: &Value,
) -> Response<Full<Bytes>> {
    // Unauthenticated endpoints.
    match (method, path) {
        (&Method::POST | &Method::PUT, "auth/approle/login") => {
            let key = (
                body["role_id"].as_str().unwrap_or("").to_string(),
                body["secret_id"].as_str().unwrap_or("").to_string(),
            );
            return match st.approles.get(&key).cloned() {
                Some((rules, ttl)) => login(st, rules, ttl),
                None => errors(400, &["invalid role or secret ID"]),
            };
        }
        (&Method::POST | &Method::PUT, "auth/kubernetes/login") => {
            let key = (
                body["role"].as_str().unwrap_or("").to_string(),
                body["jwt"].as_str().unwrap_or("").to_string(),
            );
            return match st.kube_roles.get(&key).cloned() {
                Some((rules, ttl)) => login(st, rules, ttl),
                None => errors(403, &["permission denied"]),
            };
        }
        _ => {}
    }
    let Some(token_id) = token else {
        return errors(403, &["permission denied"]);
    };
    let valid = st
        .tokens
        .get(token_id)
        .filter(|t| st.tokens_never_expire || t.expires.is_none_or(|e| e > Instant::now()))
        .cloned();
    let Some(tok) = valid else {
        // Vault answers an expired or unknown token exactly as a missing permission.
        return errors(403, &["permission denied"]);
    };
    match (method, path) {
        (&Method::GET, "auth/token/lookup-self") => {
            let ttl = tok
                .expires
                .map_or(0, |e| e.saturating_duration_since(Instant::now()).as_secs());
            return reply(
                200,
                envelope(
                    json!({
                        "accessor": "acc", "creation_time": 1_700_000_000u64, "creation_ttl": tok.ttl.as_secs(),
                        "display_name": "token", "entity_id": "", "expire_time": null, "explicit_max_ttl": 0,
                        "id": token_id, "identity_policies": null, "issue_time": null, "meta": null,
                        "num_uses": 0, "orphan": true, "path": "auth/token/create", "policies": ["default"],
                        "renewable": tok.renewable, "role": null, "ttl": ttl, "type": "service",
                    }),
                    Value::Null,
                ),
            );
        }
        (&Method::POST | &Method::PUT, "auth/token/revoke-self") => {
            st.tokens.remove(token_id);
            return Response::builder()
                .status(204)
                .body(Full::new(Bytes::new()))
                .expect("response");
        }
        (&Method::POST | &Method::PUT, "auth/token/renew-self") => {
            let t = st.tokens.get_mut(token_id).expect("checked above");
            if t.renewals_left == 0 {
                return errors(400, &["lease is not renewable: max TTL reached"]);
            }
            t.renewals_left -= 1;
            t.expires = Some(Instant::now() + t.ttl);
            let ttl = t.ttl.as_secs();
            return reply(
                200,
                envelope(
                    Value::Null,
                    json!({
                        "client_token": token_id, "accessor": "a", "policies": ["default", "cacertd"],
                        "token_policies": ["default", "cacertd"], "metadata": null, "lease_duration": ttl,
                        "renewable": true, "entity_id": "", "token_type": "service", "orphan": true,
                    }),
                ),
            );
        }
        _ => {}
    }
    if let Some(rest) = path.strip_prefix("sys/internal/ui/mounts/") {
        let mount = rest.split('/').next().unwrap_or("");
        if let Some(v) = st.kv_mounts.get(mount) {
            return reply(
                200,
                envelope(
                    json!({"type": "kv", "path": format!("{mount}/"), "options": {"version": v.to_string()}}),
                    Value::Null,
                ),
            );
        }
        if st.pki_mounts.contains_key(mount) {
            return reply(
                200,
                envelope(
                    json!({"type": "pki", "path": format!("{mount}/"), "options": null}),
                    Value::Null,
                ),
            );
        }
        // What real Vault answers for a path under no mount.
        return errors(
            403,
            &[&format!(
                "preflight capability check returned 403, please ensure client's policies grant access to path \"{rest}/\""
            )],
        );
    }
    let mount = path.split('/').next().unwrap_or("").to_string();
    let rest = path[mount.len()..].trim_start_matches('/').to_string();
    let exists = match rest.strip_prefix("data/") {
        Some(p) => st.kv.contains_key(&(mount.clone(), p.to_string())),
        None => true,
    };
    let cap = capability(method, exists);
    if !tok.rules.iter().any(|r| r.allows(path, cap)) {
        return errors(403, &["1 error occurred:\n\t* permission denied\n\n"]);
    }
    if let Some(version) = st.kv_mounts.get(&mount).copied() {
        return kv(st, method, &mount, &rest, query, body, version);
    }
    if st.pki_mounts.contains_key(&mount) {
        return pki(st, method, &mount, &rest, body);
    }
    errors(
        404,
        &[&format!(
            "no handler for route \"{path}\". route entry not found."
        )],
    )
}

fn login(st: &mut State, rules: Vec<PathRule>, ttl: Duration) -> Response<Full<Bytes>> {
    st.next_id += 1;
    let token = format!("hvs.test{}", st.next_id);
    st.tokens.insert(
        token.clone(),
        Token {
            rules,
            ttl,
            expires: Some(Instant::now() + ttl),
            renewable: st.login_renewals > 0,
            renewals_left: st.login_renewals,
        },
    );
    reply(
        200,
        envelope(
            Value::Null,
            json!({
                "client_token": token, "accessor": format!("acc{}", st.next_id), "policies": ["default", "cacertd"],
                "token_policies": ["default", "cacertd"], "metadata": {}, "lease_duration": ttl.as_secs(),
                "renewable": true, "entity_id": "", "token_type": "service", "orphan": true,
            }),
        ),
    )
}

fn kv(
    st: &mut State,
    method: &Method,
    mount: &str,
    rest: &str,
    query: &str,
    body: &Value,
    version: u8,
) -> Response<Full<Bytes>> {
    if version != 2 {
        // A v1 mount has no data/ or metadata/ API: this is just a secret named "data/...".
        return errors(404, &[]);
    }
    if let Some(p) = rest.strip_prefix("destroy/") {
        let Some(versions) = st.kv.get_mut(&(mount.to_string(), p.to_string())) else {
            return errors(404, &[]);
        };
        let Some(wanted) = body["versions"].as_array() else {
            return errors(400, &["no versions provided"]);
        };
        for v in wanted.iter().filter_map(Value::as_u64) {
            if let Some(version) = versions.get_mut((v as usize).wrapping_sub(1)) {
                version.data = Value::Null;
            }
        }
        return no_content();
    }
    if let Some(p) = rest.strip_prefix("metadata/")
        && *method == Method::DELETE
    {
        st.kv.remove(&(mount.to_string(), p.to_string()));
        return no_content();
    }
    if let Some(p) = rest.strip_prefix("metadata/") {
        let Some(versions) = st.kv.get(&(mount.to_string(), p.to_string())) else {
            return errors(404, &[]);
        };
        let map: serde_json::Map<String, Value> = versions
            .iter()
            .enumerate()
            .map(|(i, v)| {
                (
                    (i + 1).to_string(),
                    json!({"created_time": v.created, "deletion_time": "", "destroyed": v.data.is_null()}),
                )
            })
            .collect();
        return reply(
            200,
            envelope(
                json!({
                    "current_version": versions.len(), "oldest_version": 1, "max_versions": 0, "cas_required": false,
                    "created_time": versions[0].created, "updated_time": versions[versions.len() - 1].created,
                    "custom_metadata": null, "delete_version_after": "0s", "versions": map,
                }),
                Value::Null,
            ),
        );
    }
    let Some(p) = rest.strip_prefix("data/") else {
        return errors(404, &[]);
    };
    let key = (mount.to_string(), p.to_string());
    match *method {
        Method::GET => {
            let Some(versions) = st.kv.get(&key) else {
                return errors(404, &[]);
            };
            let wanted = query
                .split('&')
                .find_map(|kv| kv.strip_prefix("version="))
                .and_then(|v| v.parse::<usize>().ok())
                .filter(|v| *v > 0)
                .unwrap_or(versions.len());
            let Some(v) = versions.get(wanted - 1) else {
                return errors(404, &[]);
            };
            reply(
                200,
                envelope(
                    json!({
                        "data": v.data,
                        "metadata": {"created_time": v.created, "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": wanted},
                    }),
                    Value::Null,
                ),
            )
        }
        Method::POST | Method::PUT => {
            let current = st.kv.get(&key).map_or(0, Vec::len);
            if let Some(cas) = body["options"]["cas"].as_u64()
                && cas as usize != current
            {
                return errors(
                    400,
                    &["check-and-set parameter did not match the current version"],
                );
            }
            if !body["data"].is_object() {
                return errors(400, &["no data provided"]);
            }
            let created = now_rfc3339();
            st.kv.entry(key).or_default().push(KvVersion {
                data: body["data"].clone(),
                created: created.clone(),
            });
            reply(
                200,
                envelope(
                    json!({"created_time": created, "custom_metadata": null, "deletion_time": "", "destroyed": false, "version": current + 1}),
                    Value::Null,
                ),
            )
        }
        _ => errors(405, &["unsupported operation"]),
    }
}

fn pki(
    st: &mut State,
    method: &Method,
    mount: &str,
    rest: &str,
    body: &Value,
) -> Response<Full<Bytes>> {
    match (method, rest) {
        (&Method::POST | &Method::PUT, "root/generate/internal" | "root/generate/exported") => {
            let exported = rest.ends_with("exported");
            if let Some(name) = body["issuer_name"].as_str().filter(|n| !n.is_empty())
                && st
                    .pki_mounts
                    .get(mount)
                    .expect("mount")
                    .iter()
                    .any(|i| i.name == name)
            {
                return errors(400, &[&format!("issuer name already in use: {name}")]);
            }
            let alg = match (
                body["key_type"].as_str().unwrap_or("ec"),
                body["key_bits"].as_u64().unwrap_or(256),
            ) {
                ("ec", 384) => &rcgen::PKCS_ECDSA_P384_SHA384,
                ("ec", _) => &rcgen::PKCS_ECDSA_P256_SHA256,
                _ => &rcgen::PKCS_RSA_SHA256,
            };
            let key = if alg == &rcgen::PKCS_RSA_SHA256 {
                let size = match body["key_bits"].as_u64() {
                    Some(3072) => rcgen::RsaKeySize::_3072,
                    Some(4096) => rcgen::RsaKeySize::_4096,
                    _ => rcgen::RsaKeySize::_2048,
                };
                rcgen::KeyPair::generate_rsa_for(alg, size)
            } else {
                rcgen::KeyPair::generate_for(alg)
            }
            .expect("key");
            let ttl = parse_ttl(&body["ttl"]).unwrap_or(Duration::from_secs(87600 * 3600));
            let ttl = st.pki_max_ttl.map_or(ttl, |max| ttl.min(max));
            let now = time::OffsetDateTime::now_utc();
            let mut params = rcgen::CertificateParams::default();
            params.distinguished_name = rcgen::DistinguishedName::new();
            if let Some(o) = body["organization"].as_str() {
                params
                    .distinguished_name
                    .push(rcgen::DnType::OrganizationName, o);
            }
            params.distinguished_name.push(
                rcgen::DnType::CommonName,
                body["common_name"].as_str().unwrap_or("Root CA"),
            );
            params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
            params.key_usages = vec![
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            params.not_before = now - time::Duration::seconds(30);
            params.not_after = now + ttl;
            params.serial_number = Some(serial(st));
            let cert = params.self_signed(&key).expect("self-signed");
            st.next_id += 1;
            let issuer = Issuer {
                id: format!("issuer-{}", st.next_id),
                name: body["issuer_name"].as_str().unwrap_or("").to_string(),
                leaf_not_after_behavior: "err".into(),
                cert_pem: cert.pem(),
                cert_der: cert.der().to_vec(),
                key,
                not_after: params.not_after,
            };
            let mut data = json!({
                "certificate": issuer.cert_pem, "issuing_ca": issuer.cert_pem, "serial_number": "00",
                "issuer_id": issuer.id, "issuer_name": issuer.name, "key_id": format!("key-{}", st.next_id),
                "expiration": params.not_after.unix_timestamp(),
            });
            if exported {
                data["private_key"] = Value::from(issuer.key.serialize_pem());
                data["private_key_type"] = Value::from("ec");
            }
            let follows = st.pki_default_follows_latest;
            let issuers = st.pki_mounts.get_mut(mount).expect("mount");
            if follows {
                issuers.insert(0, issuer);
            } else {
                issuers.push(issuer);
            }
            reply(200, envelope(data, Value::Null))
        }
        (&Method::POST | &Method::PUT, r)
            if r == "root/sign-intermediate"
                || (r.starts_with("issuer/") && r.ends_with("/sign-intermediate")) =>
        {
            let issuers = st.pki_mounts.get(mount).expect("mount");
            let issuer = if r == "root/sign-intermediate" {
                issuers.first()
            } else {
                let reference = r
                    .trim_start_matches("issuer/")
                    .trim_end_matches("/sign-intermediate");
                if reference == "default" {
                    issuers.first()
                } else {
                    issuers
                        .iter()
                        .find(|i| i.id == reference || (!i.name.is_empty() && i.name == reference))
                }
            };
            let Some(issuer) = issuer else {
                return errors(
                    500,
                    &[
                        "1 error occurred:\n\t* unable to find PKI issuer for reference: no such issuer\n\n",
                    ],
                );
            };
            let Some(csr_pem) = body["csr"].as_str() else {
                return errors(400, &["\"csr\" is empty"]);
            };
            let Ok(mut csr) = rcgen::CertificateSigningRequestParams::from_pem(csr_pem) else {
                return errors(400, &["certificate request could not be parsed"]);
            };
            let use_csr = body["use_csr_values"].as_bool().unwrap_or(false);
            if !use_csr {
                let mut dn = rcgen::DistinguishedName::new();
                dn.push(
                    rcgen::DnType::CommonName,
                    body["common_name"].as_str().unwrap_or(""),
                );
                csr.params.distinguished_name = dn;
                csr.params.subject_alt_names.clear();
            }
            let ttl = parse_ttl(&body["ttl"]).unwrap_or(Duration::from_secs(30 * 86400));
            let ttl = st.pki_max_ttl.map_or(ttl, |max| ttl.min(max));
            let now = time::OffsetDateTime::now_utc();
            let not_after = now + ttl;
            if not_after > issuer.not_after {
                return errors(
                    400,
                    &[
                        "cannot satisfy request, as TTL would result in notAfter of the issued certificate that is beyond the expiration of the CA certificate",
                    ],
                );
            }
            let max_path = body["max_path_length"].as_i64().unwrap_or(-1);
            csr.params.is_ca = if max_path < 0 {
                rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained)
            } else {
                rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(max_path as u8))
            };
            csr.params.key_usages = vec![
                rcgen::KeyUsagePurpose::DigitalSignature,
                rcgen::KeyUsagePurpose::KeyCertSign,
                rcgen::KeyUsagePurpose::CrlSign,
            ];
            csr.params.extended_key_usages.clear();
            csr.params.not_before = now - time::Duration::seconds(30);
            csr.params.not_after = not_after;
            csr.params.use_authority_key_identifier_extension = true;
            csr.params.serial_number = Some(serial(st));
            let issuers = st.pki_mounts.get(mount).expect("mount");
            let issuer = issuers
                .iter()
                .find(|i| i.cert_der == issuer_der(issuers, r))
                .expect("issuer");
            let signer =
                rcgen::Issuer::from_ca_cert_der(&issuer.cert_der.clone().into(), &issuer.key)
                    .expect("issuer");
            let cert = match csr.signed_by(&signer) {
                Ok(c) => c,
                Err(e) => return errors(500, &[&format!("error signing: {e}")]),
            };
            reply(
                200,
                envelope(
                    json!({
                        "certificate": cert.pem(), "issuing_ca": issuer.cert_pem, "ca_chain": [issuer.cert_pem],
                        "serial_number": "00", "expiration": not_after.unix_timestamp(),
                    }),
                    Value::Null,
                ),
            )
        }
        (&Method::GET, "config/issuers") => {
            let default = st
                .pki_mounts
                .get(mount)
                .and_then(|i| i.first())
                .map_or(String::new(), |i| i.id.clone());
            reply(
                200,
                envelope(
                    json!({"default": default, "default_follows_latest_issuer": st.pki_default_follows_latest}),
                    Value::Null,
                ),
            )
        }
        // The default issuer is the first of the mount's list.
        (&Method::POST | &Method::PUT, "config/issuers") => {
            let reference = body["default"].as_str().unwrap_or("");
            let issuers = st.pki_mounts.get_mut(mount).expect("mount");
            let Some(at) = issuers
                .iter()
                .position(|i| i.id == reference || (!i.name.is_empty() && i.name == reference))
            else {
                return errors(400, &["unable to find PKI issuer for reference"]);
            };
            let issuer = issuers.remove(at);
            let id = issuer.id.clone();
            issuers.insert(0, issuer);
            reply(
                200,
                envelope(
                    json!({"default": id, "default_follows_latest_issuer": false}),
                    Value::Null,
                ),
            )
        }
        (&Method::POST | &Method::PUT, r)
            if r.starts_with("issuer/") && r.matches('/').count() == 1 =>
        {
            let reference = r.trim_start_matches("issuer/");
            let name = body["issuer_name"].as_str().unwrap_or("").to_string();
            let issuers = st.pki_mounts.get_mut(mount).expect("mount");
            if !name.is_empty()
                && issuers
                    .iter()
                    .any(|i| i.name == name && i.id != reference && i.name != reference)
            {
                return errors(400, &[&format!("issuer name already in use: {name}")]);
            }
            let Some(issuer) = issuers
                .iter_mut()
                .find(|i| i.id == reference || (!i.name.is_empty() && i.name == reference))
            else {
                return errors(
                    500,
                    &[
                        "1 error occurred:\n\t* unable to find PKI issuer for reference: no such issuer\n\n",
                    ],
                );
            };
            issuer.name = name;
            // Like Vault's issuer update: a field not given is reset to its default.
            issuer.leaf_not_after_behavior = body["leaf_not_after_behavior"]
                .as_str()
                .unwrap_or("err")
                .to_string();
            reply(
                200,
                envelope(
                    json!({"issuer_id": issuer.id, "issuer_name": issuer.name, "certificate": issuer.cert_pem}),
                    Value::Null,
                ),
            )
        }
        (&Method::GET, "cert/ca") => match st.pki_mounts.get(mount).and_then(|i| i.first()) {
            Some(i) => reply(
                200,
                envelope(
                    json!({"certificate": i.cert_pem, "revocation_time": 0}),
                    Value::Null,
                ),
            ),
            None => errors(400, &["no default issuer currently configured"]),
        },
        // An issuer: its certificate (`/json`), or with its settings too.
        (&Method::GET, r)
            if r.starts_with("issuer/")
                && (r.ends_with("/json") || r.matches('/').count() == 1) =>
        {
            let reference = r.trim_start_matches("issuer/").trim_end_matches("/json");
            match st
                .pki_mounts
                .get(mount)
                .and_then(|is| is.iter().find(|i| i.id == reference || i.name == reference))
            {
                Some(i) => reply(
                    200,
                    envelope(
                        json!({"certificate": i.cert_pem, "ca_chain": [i.cert_pem], "issuer_id": i.id,
                               "issuer_name": i.name, "leaf_not_after_behavior": i.leaf_not_after_behavior,
                               "usage": "read-only,issuing-certificates,crl-signing,ocsp-signing",
                               "manual_chain": null, "revocation_signature_algorithm": ""}),
                        Value::Null,
                    ),
                ),
                None => errors(
                    500,
                    &[
                        "1 error occurred:\n\t* unable to find PKI issuer for reference: no such issuer\n\n",
                    ],
                ),
            }
        }
        (&Method::GET, "ca/pem") => match st.pki_mounts.get(mount).and_then(|i| i.first()) {
            Some(i) => Response::builder()
                .status(200)
                .header("content-type", "application/pem-certificate-chain")
                .body(Full::new(Bytes::from(i.cert_pem.clone())))
                .expect("response"),
            None => errors(400, &["no default issuer currently configured"]),
        },
        _ => errors(404, &["unsupported path"]),
    }
}

fn issuer_der(issuers: &[Issuer], route: &str) -> Vec<u8> {
    let reference = route
        .trim_start_matches("issuer/")
        .trim_end_matches("/sign-intermediate");
    let found = if route == "root/sign-intermediate" || reference == "default" {
        issuers.first()
    } else {
        issuers
            .iter()
            .find(|i| i.id == reference || (!i.name.is_empty() && i.name == reference))
    };
    found.map(|i| i.cert_der.clone()).unwrap_or_default()
}

fn serial(st: &mut State) -> rcgen::SerialNumber {
    st.next_id += 1;
    let mut bytes = [0u8; 16];
    bytes[0] = 0x11;
    bytes[8..].copy_from_slice(&st.next_id.to_be_bytes());
    rcgen::SerialNumber::from_slice(&bytes)
}

/// Vault TTLs: seconds as a number, or a Go duration string ("720h", "30m", "90s").
fn parse_ttl(v: &Value) -> Option<Duration> {
    if let Some(n) = v.as_u64() {
        return Some(Duration::from_secs(n));
    }
    let s = v.as_str()?;
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit())?);
    let n: u64 = num.parse().ok()?;
    Some(Duration::from_secs(match unit {
        "s" | "" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return None,
    }))
}
