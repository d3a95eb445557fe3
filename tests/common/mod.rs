//! Helpers shared by the integration tests: a scratch copy of the acceptance setup, the
//! cacertd binary, and the real `openssl` CLI.
#![allow(dead_code)]

pub mod kube;
pub mod mtls;

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::time::{Duration, Instant};

/// The acceptance-check configuration from the project's specification, verbatim.
pub const ACCEPTANCE_CONFIG: &str = include_str!("../data/acceptance.toml");

/// A scratch directory with `cacertd.toml` and a copy of the repository's `policies/`.
pub struct Setup {
    pub dir: tempfile::TempDir,
}

impl Setup {
    pub fn new() -> Self {
        Setup::with_config(ACCEPTANCE_CONFIG)
    }

    pub fn with_config(config: &str) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let policies = dir.path().join("policies");
        std::fs::create_dir(&policies).unwrap();
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
        for entry in std::fs::read_dir(src).unwrap() {
            let p = entry.unwrap().path();
            std::fs::copy(&p, policies.join(p.file_name().unwrap())).unwrap();
        }
        std::fs::write(dir.path().join("cacertd.toml"), config).unwrap();
        Setup { dir }
    }

    pub fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    pub fn read(&self, rel: &str) -> Vec<u8> {
        std::fs::read(self.path(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
    }

    /// Runs `cacertd -c cacertd.toml ARGS...` in the scratch directory.
    pub fn cacertd(&self, args: &[&str]) -> Run {
        self.cacertd_env(args, &[])
    }

    /// Runs a transition command, then plays the operator of the setup's folders: each time
    /// the transition waits for them to be applied, `transition resume --approve --wait`.
    /// Returns the last run (the command's, or the last resume's), whatever its exit code.
    pub fn through_folders(&self, args: &[&str]) -> Run {
        let mut run = self.cacertd(args);
        for _ in 0..16 {
            let waits = run.code == 0
                && self
                    .cacertd(&["transition", "status"])
                    .stdout
                    .contains("next: wait until the folders");
            if !waits {
                return run;
            }
            run = self.cacertd(&["transition", "resume", "--approve", "--wait"]);
        }
        panic!("the transition keeps waiting for its folders");
    }

    /// Like [`Setup::cacertd`], with extra environment variables (other VAULT_* are removed).
    pub fn cacertd_env(&self, args: &[&str], env: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacertd"));
        for v in [
            "VAULT_ADDR",
            "VAULT_TOKEN",
            "VAULT_CACERT",
            "VAULT_NAMESPACE",
            "VAULT_SKIP_VERIFY",
        ] {
            cmd.env_remove(v);
        }
        cmd.current_dir(self.dir.path())
            .arg("-c")
            .arg("cacertd.toml")
            .args(args)
            .env_remove("RUST_LOG")
            .env_remove("CACERTD_CONFIG")
            .env_remove("CACERTD_LOG_FORMAT");
        cmd.envs(env.iter().copied());
        Run::of(output_within(cmd, RUN_TIMEOUT))
    }

    /// Every file under the scratch directory with its bytes, to prove nothing changed — except
    /// the audit log, whose job is to record refusals and failures too.
    pub fn snapshot(&self) -> BTreeMap<PathBuf, Vec<u8>> {
        let mut out = BTreeMap::new();
        walk(self.dir.path(), &mut out);
        out.remove(&self.path("state/audit.log"));
        out
    }
}

/// How long one cacertd run may take: a run that hangs fails its test instead of holding up
/// the whole suite.
pub const RUN_TIMEOUT: Duration = Duration::from_secs(300);

/// Runs `cmd` to completion like [`Command::output`] (stdin closed, stdout and stderr
/// captured), killing it and failing the test if it runs longer than `timeout`.
pub fn output_within(mut cmd: Command, timeout: Duration) -> Output {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            bytes
        })
    };
    let stdout = drain(Box::new(child.stdout.take().expect("piped stdout")));
    let stderr = drain(Box::new(child.stderr.take().expect("piped stderr")));
    let status = wait_within(&mut child, timeout);
    Output {
        status,
        stdout: stdout.join().expect("stdout reader"),
        stderr: stderr.join().expect("stderr reader"),
    }
}

/// Waits for `child` to exit; kills it and fails the test if it is still running after
/// `timeout`.
pub fn wait_within(child: &mut Child, timeout: Duration) -> ExitStatus {
    let deadline = Instant::now() + timeout;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(status) = child.try_wait().expect("wait for child") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("process {} still running after {timeout:?}", child.id());
        }
        std::thread::sleep(pause);
        pause = (pause * 2).min(Duration::from_millis(20));
    }
}

/// Asserts two snapshots are equal, naming the paths that differ.
pub fn assert_unchanged(before: &BTreeMap<PathBuf, Vec<u8>>, after: &BTreeMap<PathBuf, Vec<u8>>) {
    let mut diffs = Vec::new();
    for (p, b) in before {
        match after.get(p) {
            None => diffs.push(format!("removed {}", p.display())),
            Some(a) if a != b => diffs.push(format!("changed {}", p.display())),
            Some(_) => {}
        }
    }
    for p in after.keys().filter(|p| !before.contains_key(*p)) {
        diffs.push(format!("added {}", p.display()));
    }
    assert!(diffs.is_empty(), "files changed: {diffs:#?}");
}

fn walk(dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
    for entry in std::fs::read_dir(dir).unwrap() {
        let p = entry.unwrap().path();
        if p.is_dir() {
            walk(&p, out);
        } else {
            out.insert(p.clone(), std::fs::read(&p).unwrap());
        }
    }
}

pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    fn of(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }

    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }

    pub fn fails_with(self, code: i32) -> Self {
        assert_eq!(
            self.code, code,
            "stdout:\n{}\nstderr:\n{}",
            self.stdout, self.stderr
        );
        self
    }
}

/// `openssl verify -CAfile root-cert.pem -untrusted cert-chain.pem ca-cert.pem` in a cacerts
/// directory: the chain istiod's Go verifier builds, checked by OpenSSL.
pub fn openssl_verify_cacerts(dir: &Path) -> Run {
    openssl(
        dir,
        &[
            "verify",
            "-CAfile",
            "root-cert.pem",
            "-untrusted",
            "cert-chain.pem",
            "ca-cert.pem",
        ],
    )
}

/// Runs the real `openssl` CLI in `dir`.
pub fn openssl(dir: &Path, args: &[&str]) -> Run {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("the openssl CLI must be installed (.ci/run installs it)");
    Run::of(out)
}

/// The acceptance mesh (two primaries on directory targets, a remote) with its root in Vault at
/// `address`: `root` is the `[root]` body, `auth` the `[vault] auth` value.
pub fn vault_config(address: &str, timeout: &str, root: &str, auth: &str) -> String {
    format!(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[root]
{root}

[vault]
address = "{address}"
timeout = "{timeout}"
auth = {auth}

[[clusters]]
name = "cluster1"
role = "primary"
network = "network1"
target = {{ kind = "dir", path = "out/cluster1" }}

[[clusters]]
name = "cluster2"
role = "primary"
network = "network2"
target = {{ kind = "dir", path = "out/cluster2" }}

[[clusters]]
name = "cluster3"
role = "remote"
primary = "cluster1"
network = "network1"
"#
    )
}

/// Both primaries of the acceptance mesh hold intermediates OpenSSL verifies against their
/// root, the remote nothing, and a workload of one cluster talks mTLS with one of the other.
/// A second `issue` leaves both primaries of the acceptance mesh unchanged.
pub fn assert_reissue_changes_nothing(s: &Setup) {
    let again = s.cacertd(&["issue"]).ok();
    assert_eq!(
        again.stdout.matches("unchanged").count(),
        2,
        "{}",
        again.stdout
    );
}

pub fn assert_issued_and_trusted(s: &Setup) {
    for c in ["cluster1", "cluster2"] {
        let v = openssl_verify_cacerts(&s.path(&format!("out/{c}"))).ok();
        assert_eq!(v.stdout.trim(), "ca-cert.pem: OK");
    }
    assert!(!s.path("out/cluster3").exists());
    let ids = mtls::handshake(
        mtls::workload(&s.path("out/cluster1")),
        mtls::workload(&s.path("out/cluster2")),
    )
    .expect("mTLS");
    assert_eq!(ids, vec![mtls::SPIFFE_ID]);
}

/// A company's PKI, made with the `openssl` CLI: a self-signed anchor kept offline,
/// `corporate` intermediates below it, then the mesh CA cacertd is given.
pub struct CompanyPki {
    pub corporate: usize,
    pub corporate_pathlen: Option<u32>,
    pub mesh_pathlen: Option<u32>,
    /// The digest the anchor signs with (`sha256`, `sha512`…).
    pub anchor_digest: &'static str,
}

/// `root import` of the mesh CA [`CompanyPki::make`] wrote, with `chain` as its chain.
pub fn import_mesh_ca(chain: &str) -> [&str; 8] {
    [
        "root", "import", "--cert", "mesh.pem", "--key", "mesh.key", "--chain", chain,
    ]
}

impl CompanyPki {
    /// The usual shape: one corporate CA between the anchor and a mesh CA with pathlen:1.
    pub fn usual() -> Self {
        CompanyPki {
            corporate: 1,
            corporate_pathlen: None,
            mesh_pathlen: Some(1),
            anchor_digest: "sha256",
        }
    }

    /// Makes this PKI in `s`'s folder and imports its mesh CA with its chain.
    pub fn import_into(&self, s: &Setup) -> Run {
        self.make(s.path("").as_path());
        s.cacertd(&import_mesh_ca("chain.pem"))
    }

    /// Writes into `dir`: `anchor.pem`, `mesh.pem` and `mesh.key` (the mesh CA), and
    /// `chain.pem` (the certificates above the mesh CA, nearest first, the anchor last).
    pub fn make(&self, dir: &Path) {
        self.make_published(dir, None);
    }

    /// [`CompanyPki::make`], each certificate naming as its CRL distribution point
    /// `<base>/<issuer>.crl` when `base` is given (`anchor.crl`, `corp0.crl`…).
    pub fn make_published(&self, dir: &Path, base: Option<&str>) {
        self_signed_ca(dir, "anchor", "/O=Corp/CN=Offline Root", 3650);
        let mut issuer = "anchor".to_string();
        let mut above = vec!["anchor.pem".to_string()];
        for i in 0..self.corporate {
            let name = format!("corp{i}");
            let digest = if i == 0 { self.anchor_digest } else { "sha256" };
            let subject = format!("/O=Corp/CN=Corporate CA {i}");
            let cdp = base.map(|b| format!("{b}/{issuer}.crl"));
            sign_ca(
                dir,
                (&name, &subject),
                &issuer,
                self.corporate_pathlen,
                (digest, cdp.as_deref()),
            );
            above.insert(0, format!("{name}.pem"));
            issuer = name;
        }
        let (mesh_issuer, digest) = self.mesh_issuer();
        let cdp = base.map(|b| format!("{b}/{mesh_issuer}.crl"));
        sign_ca(
            dir,
            ("mesh", "/O=Corp/CN=Mesh CA"),
            &mesh_issuer,
            self.mesh_pathlen,
            (digest, cdp.as_deref()),
        );
        let chain: Vec<u8> = above
            .iter()
            .flat_map(|f| std::fs::read(dir.join(f)).unwrap())
            .collect();
        std::fs::write(dir.join("chain.pem"), chain).unwrap();
    }

    /// Writes `<name>.pem` and `<name>.key` into `dir`: another mesh CA, issued where
    /// [`CompanyPki::make`] issued `mesh` (so `chain.pem` is its chain too).
    pub fn sign_mesh_ca(&self, dir: &Path, name: &str) {
        let (issuer, digest) = self.mesh_issuer();
        let subject = match name {
            "mesh" => "/O=Corp/CN=Mesh CA".to_string(),
            _ => format!("/O=Corp/CN=Mesh CA {name}"),
        };
        sign_ca(
            dir,
            (name, &subject),
            &issuer,
            self.mesh_pathlen,
            (digest, None),
        );
    }
}

impl CompanyPki {
    /// Signs `<name>.csr` in `dir` as [`CompanyPki::make`] signed `mesh`: `<name>.pem`.
    pub fn sign_mesh_request(&self, dir: &Path, name: &str) {
        let (issuer, digest) = self.mesh_issuer();
        sign_request(dir, name, &issuer, self.mesh_pathlen, digest);
    }

    /// Who signs a mesh CA, and with which digest.
    fn mesh_issuer(&self) -> (String, &'static str) {
        match self.corporate {
            0 => ("anchor".to_string(), self.anchor_digest),
            n => (format!("corp{}", n - 1), "sha256"),
        }
    }
}

/// `<issuer>.pem`/`.key` in `dir` sign a new P-256 CA, `<name>.pem`/`.key`, with `digest`
/// and, if given, a CRL distribution point.
fn sign_ca(
    dir: &Path,
    (name, subject): (&str, &str),
    issuer: &str,
    pathlen: Option<u32>,
    (digest, cdp): (&str, Option<&str>),
) {
    let run = |args: &[&str]| openssl(dir, args).ok();
    run(&[
        "req",
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:P-256",
        "-nodes",
        "-keyout",
        &format!("{name}.key"),
        "-out",
        &format!("{name}.csr"),
        "-subj",
        subject,
    ]);
    sign_request_published(dir, name, issuer, pathlen, (digest, cdp));
}

/// `<issuer>.pem`/`.key` in `dir` sign the request `<name>.csr` as a CA: `<name>.pem`.
pub fn sign_request(dir: &Path, name: &str, issuer: &str, pathlen: Option<u32>, digest: &str) {
    sign_request_published(dir, name, issuer, pathlen, (digest, None));
}

/// [`sign_request`], naming `cdp` as the certificate's CRL distribution point if given.
fn sign_request_published(
    dir: &Path,
    name: &str,
    issuer: &str,
    pathlen: Option<u32>,
    (digest, cdp): (&str, Option<&str>),
) {
    let run = |args: &[&str]| openssl(dir, args).ok();
    let ext = format!(
        "[ca]\nbasicConstraints = critical, CA:TRUE{}\nkeyUsage = critical, keyCertSign, \
         cRLSign\nsubjectKeyIdentifier = hash\nauthorityKeyIdentifier = keyid\n{}",
        pathlen
            .map(|p| format!(", pathlen:{p}"))
            .unwrap_or_default(),
        cdp.map(|u| format!("crlDistributionPoints = URI:{u}\n"))
            .unwrap_or_default()
    );
    std::fs::write(dir.join(format!("{name}.ext")), ext).unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}.csr"),
        "-CA",
        &format!("{issuer}.pem"),
        "-CAkey",
        &format!("{issuer}.key"),
        "-set_serial",
        // Distinct per name: two CAs of one issuer never share a serial.
        &format!(
            "0x{:x}",
            name.bytes().fold(0x1234u64, |h, b| h
                .wrapping_mul(31)
                .wrapping_add(u64::from(b)))
        ),
        "-out",
        &format!("{name}.pem"),
        "-days",
        "2000",
        "-extfile",
        &format!("{name}.ext"),
        "-extensions",
        "ca",
        &format!("-{digest}"),
    ]);
}

/// Plays the operator of folders nobody observes: while a transition waits for its folders to
/// be applied (and, with `approvals`, for a phase's approval), `transition resume --approve
/// --wait`; after an interruption, `transition resume --wait`. Returns where it rests otherwise
/// (done, rolled back, a drain, a failure, an approval it was not to give): the status's
/// `next`.
pub fn drive_folders(s: &Setup, approvals: bool) -> String {
    for _ in 0..16 {
        let out = s
            .cacertd(&["transition", "status", "-o", "json"])
            .ok()
            .stdout;
        let Ok(v) = serde_json::from_str::<serde_json::Value>(&out) else {
            return out;
        };
        let next = v["next"].as_str().unwrap_or_default().to_string();
        let folders = next.starts_with("wait until the folders");
        let approval = next.starts_with("wait for an operator's approval");
        let rests = ["nothing", "drain", "stopped", "held"]
            .iter()
            .any(|r| next.starts_with(r));
        if rests || (approval && !approvals) {
            return next;
        }
        if folders || approval {
            s.cacertd(&["transition", "resume", "--approve", "--wait"])
                .ok();
        } else {
            s.cacertd(&["transition", "resume", "--wait"]).ok();
        }
    }
    panic!("the transition did not come to rest");
}

/// Serves the files of `dir` over plain HTTP on a free loopback port, as a company publishes
/// its revocation lists (GET /NAME: the file, or 404), until the test ends. Returns the base
/// URL.
pub fn serve_files(dir: PathBuf) -> String {
    use std::io::{BufRead, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            let mut line = String::new();
            let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            // The rest of the request head.
            let mut header = String::new();
            while reader.read_line(&mut header).is_ok_and(|n| n > 2) {
                header.clear();
            }
            let name = line
                .split_whitespace()
                .nth(1)
                .unwrap_or("/")
                .trim_start_matches('/');
            let body = (!name.contains('/'))
                .then(|| std::fs::read(dir.join(name)).ok())
                .flatten();
            let _ = match body {
                Some(body) => {
                    let head = format!(
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    stream
                        .write_all(head.as_bytes())
                        .and_then(|()| stream.write_all(&body))
                }
                None => stream.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                ),
            };
        }
    });
    base
}

/// `<name>.pem`/`.key` in `dir`: a self-signed P-384 CA named `subject`, valid `days` days.
pub fn self_signed_ca(dir: &Path, name: &str, subject: &str, days: u32) {
    let (key, cert, days) = (
        format!("{name}.key"),
        format!("{name}.pem"),
        days.to_string(),
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-384",
            "-nodes",
            "-keyout",
            &key,
            "-out",
            &cert,
            "-days",
            &days,
            "-subj",
            subject,
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    )
    .ok();
}

/// The four files of the `cacerts` in `from` (its signer, chain and bundle) copied into `to`,
/// which is created: a workload generation of that signer, before any lists are added.
pub fn copy_cacerts(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for f in [
        "ca-cert.pem",
        "ca-key.pem",
        "cert-chain.pem",
        "root-cert.pem",
    ] {
        std::fs::copy(from.join(f), to.join(f)).unwrap();
    }
}
