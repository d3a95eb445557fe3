//! The target-cluster RBAC as shipped (deploy/kubernetes/target-cluster/rbac.yaml) works on a
//! real kube-apiserver, not only on the in-repo test apiserver: Debian's kube-apiserver 1.20
//! (built once per machine by tests/real-apiserver/build.sh) runs on etcd with RBAC
//! authorization and an audit log; the manifest is applied with kubectl exactly as shipped; the
//! service account it binds is granted every permission cacertd uses and denied what it must
//! not have (SelfSubjectAccessReviews), and may open the daemon's watch on `cacerts` but not on
//! every Secret; the real `cacertd` binary, authenticated as that service account, issues,
//! keeps, force-replaces (with a backup) and reports `istio-system/cacerts`, and restarts
//! istiod and an injected workload through the shipped `patch` rule (a stand-in controller
//! completes the rollouts), with no request refused — the APIs 1.20 lacks (ClusterTrustBundle,
//! Argo Rollouts) answer 404 and are taken for "none"; and once the RoleBinding that grants the
//! Secrets is deleted, the same forced issue fails at its first read, naming the forbidden
//! access, and changes nothing.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine;
use common::{Run, Setup, assert_unchanged, openssl, openssl_verify_cacerts, output_within};
use serde_json::{Value, json};

/// The shipped manifest, relative to the repository.
const RBAC: &str = "deploy/kubernetes/target-cluster/rbac.yaml";
/// etcd as Debian's etcd-server package installs it.
const ETCD: &str = "/usr/bin/etcd";
/// How long etcd and kube-apiserver may take to become ready (5–7 s on two busy cores).
const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long one kubectl call may take.
const KUBECTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long an RBAC change may take to reach the apiserver's authorizer (its informer cache).
const RBAC_PROPAGATION: Duration = Duration::from_secs(10);

const ADMIN_TOKEN: &str = "cacertd-test-admin-token";
const SA_TOKEN: &str = "cacertd-test-service-account-token";

/// The kube-apiserver binary: `$CACERTD_KUBE_APISERVER`, else where build.sh puts it.
fn apiserver_binary() -> PathBuf {
    let path = match std::env::var_os("CACERTD_KUBE_APISERVER") {
        Some(p) => PathBuf::from(p),
        None => {
            let cache = std::env::var_os("CACERTD_KUBE_CACHE")
                .map(PathBuf::from)
                .unwrap_or_else(|| {
                    let home = std::env::var_os("HOME").expect("HOME or CACERTD_KUBE_CACHE");
                    Path::new(&home).join(".cache/cacertd/kube-apiserver")
                });
            cache.join("kube-apiserver")
        }
    };
    assert!(
        path.is_file(),
        "no kube-apiserver at {}: run tests/real-apiserver/build.sh first (it builds Debian's \
         kube-apiserver from source once per machine, ~10 minutes), or point \
         CACERTD_KUBE_APISERVER at one",
        path.display()
    );
    assert!(
        Path::new(ETCD).is_file(),
        "no {ETCD}: run tests/real-apiserver/build.sh (it installs Debian's etcd-server)"
    );
    path
}

/// `n` distinct free loopback ports (held together while chosen, so they differ).
fn free_ports<const N: usize>() -> [u16; N] {
    let listeners: Vec<TcpListener> = (0..N)
        .map(|_| TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap())
        .collect();
    std::array::from_fn(|i| listeners[i].local_addr().unwrap().port())
}

/// The service account the shipped manifest's bindings name: (namespace, name).
fn bound_service_account(manifest: &Value) -> (String, String) {
    let mut subjects: Vec<(String, String)> = manifest["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| {
            matches!(
                i["kind"].as_str(),
                Some("RoleBinding" | "ClusterRoleBinding")
            )
        })
        .flat_map(|b| b["subjects"].as_array().unwrap().iter())
        .map(|s| {
            assert_eq!(s["kind"], "ServiceAccount", "{s}");
            (
                s["namespace"].as_str().unwrap().to_string(),
                s["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    subjects.sort();
    subjects.dedup();
    assert_eq!(subjects.len(), 1, "one service account: {subjects:?}");
    subjects.remove(0)
}

/// The RoleBindings whose Role grants anything on Secrets: (namespace, name).
fn secret_bindings(manifest: &Value) -> Vec<(String, String)> {
    let items = manifest["items"].as_array().unwrap();
    let secret_roles: Vec<(&str, &str)> = items
        .iter()
        .filter(|i| i["kind"] == "Role")
        .filter(|r| {
            r["rules"].as_array().unwrap().iter().any(|rule| {
                rule["resources"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|x| x == "secrets")
            })
        })
        .map(|r| {
            (
                r["metadata"]["namespace"].as_str().unwrap(),
                r["metadata"]["name"].as_str().unwrap(),
            )
        })
        .collect();
    let bindings: Vec<(String, String)> = items
        .iter()
        .filter(|i| i["kind"] == "RoleBinding" && i["roleRef"]["kind"] == "Role")
        .filter(|b| {
            let ns = b["metadata"]["namespace"].as_str().unwrap();
            secret_roles.contains(&(ns, b["roleRef"]["name"].as_str().unwrap()))
        })
        .map(|b| {
            (
                b["metadata"]["namespace"].as_str().unwrap().to_string(),
                b["metadata"]["name"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert!(!bindings.is_empty(), "no RoleBinding grants Secrets");
    bindings
}

/// One access to ask the apiserver about, written as `kubectl auth can-i` takes it:
/// `VERB RESOURCE[.GROUP][/NAME] [in NAMESPACE]` (no namespace: every namespace, or a
/// cluster-scoped resource).
fn review(access: &str) -> Value {
    let (what, namespace) = access.split_once(" in ").unwrap_or((access, ""));
    let (verb, what) = what.split_once(' ').unwrap();
    let (resource, name) = what.split_once('/').unwrap_or((what, ""));
    let (resource, group) = resource.split_once('.').unwrap_or((resource, ""));
    json!({
        "apiVersion": "authorization.k8s.io/v1",
        "kind": "SelfSubjectAccessReview",
        "spec": {"resourceAttributes": {
            "verb": verb, "group": group, "resource": resource,
            "namespace": namespace, "name": name,
        }},
    })
}

/// Everything cacertd does in a target cluster (src/cluster/kube/): `cacerts` read, watched
/// (daemon), replaced; istiod's own CA read; `cacerts` and its backups created; istiod's
/// bundles listed (ConfigMaps in every namespace, or the ClusterTrustBundle read); namespaces
/// and pods listed (proxies); workloads read, listed and restarted (patch) in every namespace.
const NEEDED: &[&str] = &[
    "get secrets/cacerts in istio-system",
    "update secrets/cacerts in istio-system",
    "watch secrets/cacerts in istio-system",
    "get secrets/istio-ca-secret in istio-system",
    "create secrets in istio-system",
    "list configmaps",
    "list namespaces",
    "list pods",
    "get clustertrustbundles.certificates.k8s.io/istio.io:istiod-ca:root-cert",
    "list deployments.apps",
    "get deployments.apps/istiod in istio-system",
    "patch deployments.apps/istiod in istio-system",
    "list daemonsets.apps",
    "get daemonsets.apps in app",
    "patch daemonsets.apps in app",
    "list statefulsets.apps",
    "get statefulsets.apps in app",
    "patch statefulsets.apps in app",
    "list rollouts.argoproj.io",
    "get rollouts.argoproj.io in app",
    "patch rollouts.argoproj.io in app",
];

/// What cacertd does in the management cluster (deploy/kubernetes/management/overlays): the leader
/// Lease, and the transition record and material Secrets of the shipped cacertd.toml.
const MANAGEMENT_NEEDED: &[&str] = &[
    "create leases.coordination.k8s.io in cacertd",
    "get leases.coordination.k8s.io/cacertd-leader in cacertd",
    "update leases.coordination.k8s.io/cacertd-leader in cacertd",
    "patch leases.coordination.k8s.io/cacertd-leader in cacertd",
    "create secrets in cacertd",
    "get secrets/cacertd-transition in cacertd",
    "update secrets/cacertd-transition in cacertd",
    "delete secrets/cacertd-transition in cacertd",
    "get secrets/cacertd-transition-cluster1 in cacertd",
    "update secrets/cacertd-transition-cluster2 in cacertd",
    "delete secrets/cacertd-transition-cluster2 in cacertd",
];

/// And what it may not: the kubeconfigs Secret (mounted, never read through the API), any
/// other Secret, a list of them, other Leases.
const MANAGEMENT_DENIED: &[&str] = &[
    "get secrets/cacertd-kubeconfigs in cacertd",
    "update secrets/cacertd-kubeconfigs in cacertd",
    "delete secrets/cacertd-kubeconfigs in cacertd",
    "list secrets in cacertd",
    "get secrets in cacertd",
    "delete secrets in cacertd",
    "update leases.coordination.k8s.io/other in cacertd",
];

/// Renders each overlay of deploy/kubernetes/management with kustomize and has the apiserver
/// validate every object (a server-side dry run); applies the file store's, and checks the
/// service account's rights.
fn management_manifests(server: &RealApiserver) {
    let overlays =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/management/overlays");
    let mut rendered_file = String::new();
    for (overlay, extra) in [
        ("vault", "deployment.apps/cacertd"),
        ("file", "persistentvolumeclaim/cacertd-state"),
    ] {
        let dir = overlays.join(overlay);
        let rendered = server.kubectl(&["kustomize", dir.to_str().unwrap()]).ok();
        // This apiserver (1.20) predates policy/v1 (1.21): the vault overlay's
        // PodDisruptionBudget is left out here (tests/kube_rbac.rs checks it is rendered).
        let objects: Vec<&str> = rendered
            .stdout
            .split("\n---\n")
            .filter(|o| !o.lines().any(|l| l == "kind: PodDisruptionBudget"))
            .collect();
        let file = server.path(&format!("management-{overlay}.yaml"));
        std::fs::write(&file, objects.join("\n---\n")).unwrap();
        let dry = server
            .kubectl(&["apply", "--dry-run=server", "-f", file.to_str().unwrap()])
            .ok();
        for kind in [
            "deployment.apps/cacertd",
            "networkpolicy.networking.k8s.io/cacertd",
            extra,
        ] {
            assert!(
                dry.stdout.contains(kind),
                "{overlay}: {kind}: {}",
                dry.stdout
            );
        }
        rendered_file = file.to_str().unwrap().to_string();
    }
    let file = rendered_file.as_str();
    server.kubectl(&["apply", "-f", file]).ok();
    server.wait_until(MANAGEMENT_NEEDED[5], true);
    let granted = server.allowed(MANAGEMENT_NEEDED);
    let missing: Vec<_> = MANAGEMENT_NEEDED
        .iter()
        .zip(&granted)
        .filter(|(_, g)| !**g)
        .collect();
    assert!(
        missing.is_empty(),
        "the management RBAC does not grant {missing:#?}"
    );
    let denied = server.allowed(MANAGEMENT_DENIED);
    let extra: Vec<_> = MANAGEMENT_DENIED
        .iter()
        .zip(&denied)
        .filter(|(_, d)| **d)
        .collect();
    assert!(extra.is_empty(), "the management RBAC grants {extra:#?}");
}

/// What the manifest deliberately leaves out: no Secret but `cacerts` and istiod's CA may be
/// read, none listed (every Secret in istio-system would be readable), none deleted, none
/// touched outside istio-system; istiod's CA is never written; workloads are only patched;
/// nothing about RBAC itself.
const DENIED: &[&str] = &[
    "delete secrets/cacerts in istio-system",
    "delete secrets",
    "list secrets in istio-system",
    "get secrets/istio-remote-secret-cluster2 in istio-system",
    "update secrets/istio-ca-secret in istio-system",
    "get secrets/cacerts in default",
    "create secrets in default",
    "get secrets",
    "get configmaps/istio-ca-root-cert in istio-system",
    "update deployments.apps/istiod in istio-system",
    "delete deployments.apps/istiod in istio-system",
    "create pods in istio-system",
    "update clustertrustbundles.certificates.k8s.io/istio.io:istiod-ca:root-cert",
    "create rolebindings.rbac.authorization.k8s.io in istio-system",
];

/// A child process killed (and reaped) on drop, also when the test panics.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// etcd and kube-apiserver on loopback, in a scratch directory. Fields drop in order: the
/// apiserver is killed, then etcd, then the directory is removed.
struct RealApiserver {
    apiserver: KillOnDrop,
    etcd: KillOnDrop,
    dir: tempfile::TempDir,
    port: u16,
}

impl RealApiserver {
    fn start(service_account: &(String, String)) -> RealApiserver {
        let binary = apiserver_binary();
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let [etcd_client, etcd_peer, port] = free_ports();
        // The service-account key 1.20 requires (verification and signing key; SEC1 EC, as
        // its key parser does not read an EC key in PKCS#8).
        let key = d.join("sa.key");
        openssl(
            d,
            &[
                "ecparam",
                "-name",
                "prime256v1",
                "-genkey",
                "-noout",
                "-out",
                key.to_str().unwrap(),
            ],
        )
        .ok();
        let (ns, name) = service_account;
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "{ADMIN_TOKEN},cacertd-test-admin,admin-uid,\"system:masters\"\n\
                 {SA_TOKEN},system:serviceaccount:{ns}:{name},sa-uid,\
                 \"system:serviceaccounts,system:serviceaccounts:{ns}\"\n"
            ),
        )
        .unwrap();
        let policy = d.join("audit-policy.json");
        let rules = json!({"apiVersion": "audit.k8s.io/v1", "kind": "Policy",
                           "omitStages": ["RequestReceived"], "rules": [{"level": "Metadata"}]});
        std::fs::write(&policy, rules.to_string()).unwrap();
        let log = |name: &str| std::fs::File::create(d.join(name)).unwrap();
        let etcd_client_url = format!("http://127.0.0.1:{etcd_client}");
        let etcd_peer_url = format!("http://127.0.0.1:{etcd_peer}");
        let etcd = Command::new(ETCD)
            .arg(format!("--data-dir={}", d.join("etcd").display()))
            .arg(format!("--listen-client-urls={etcd_client_url}"))
            .arg(format!("--advertise-client-urls={etcd_client_url}"))
            .arg(format!("--listen-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-advertise-peer-urls={etcd_peer_url}"))
            .arg(format!("--initial-cluster=default={etcd_peer_url}"))
            .stdin(Stdio::null())
            .stdout(log("etcd.log"))
            .stderr(log("etcd.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {ETCD}: {e}"));
        // Owned from here on: a failure below kills etcd too.
        let etcd = KillOnDrop(etcd);
        let apiserver = Command::new(&binary)
            .arg(format!("--etcd-servers={etcd_client_url}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={port}"))
            .arg(format!("--cert-dir={}", d.join("certs").display()))
            .arg("--authorization-mode=RBAC")
            .arg(format!(
                "--token-auth-file={}",
                d.join("tokens.csv").display()
            ))
            .arg("--service-account-issuer=https://kubernetes.default.svc.cluster.local")
            .arg(format!("--service-account-key-file={}", key.display()))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key.display()
            ))
            .arg("--service-cluster-ip-range=10.96.0.0/16")
            .arg("--profiling=false")
            // Every request with its user, verb, URI and answer, written before it returns.
            .arg(format!("--audit-policy-file={}", policy.display()))
            .arg(format!(
                "--audit-log-path={}",
                d.join("audit.log").display()
            ))
            .stdin(Stdio::null())
            .stdout(log("apiserver.log"))
            .stderr(log("apiserver.log"))
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {}: {e}", binary.display()));
        let mut server = RealApiserver {
            apiserver: KillOnDrop(apiserver),
            etcd,
            dir,
            port,
        };
        server.wait_ready();
        server
    }

    fn path(&self, rel: &str) -> PathBuf {
        self.dir.path().join(rel)
    }

    /// The last lines of a log in the scratch directory, for failure messages.
    fn tail(&self, log: &str) -> String {
        let text = std::fs::read_to_string(self.path(log)).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(25)..].join("\n")
    }

    fn check_alive(&mut self) {
        for (name, log) in [("etcd", "etcd.log"), ("kube-apiserver", "apiserver.log")] {
            let child = if name == "etcd" {
                &mut self.etcd.0
            } else {
                &mut self.apiserver.0
            };
            if let Some(status) = child.try_wait().unwrap() {
                panic!("{name} exited ({status}):\n{}", self.tail(log));
            }
        }
    }

    /// Waits for the self-signed serving certificate, writes the two kubeconfigs, then waits
    /// for `/readyz`.
    fn wait_ready(&mut self) {
        let deadline = Instant::now() + READY_TIMEOUT;
        let cert = self.path("certs/apiserver.crt");
        // The file holds the serving certificate, then the CA that signed it.
        let ca = loop {
            self.check_alive();
            let text = std::fs::read_to_string(&cert).unwrap_or_default();
            if let [_, ca] = pem::parse_many(&text).unwrap_or_default().as_slice() {
                break pem::encode(ca);
            }
            assert!(
                Instant::now() < deadline,
                "no serving certificate after {READY_TIMEOUT:?}:\n{}",
                self.tail("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(100));
        };
        let ca = base64::engine::general_purpose::STANDARD.encode(ca);
        for (file, user, token) in [
            ("admin.kubeconfig", "cacertd-test-admin", ADMIN_TOKEN),
            ("sa.kubeconfig", "cacertd", SA_TOKEN),
        ] {
            std::fs::write(self.path(file), kubeconfig(self.port, &ca, user, token)).unwrap();
        }
        loop {
            self.check_alive();
            let run = self.kubectl(&["get", "--raw", "/readyz"]);
            if run.code == 0 && run.stdout.trim() == "ok" {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "kube-apiserver not ready after {READY_TIMEOUT:?}: {}{}\n{}",
                run.stdout,
                run.stderr,
                self.tail("apiserver.log")
            );
            std::thread::sleep(Duration::from_millis(250));
        }
    }

    /// `kubectl ARGS` as the admin (group system:masters).
    fn kubectl(&self, args: &[&str]) -> Run {
        self.kubectl_as("admin.kubeconfig", args)
    }

    /// `kubectl ARGS` as the service account the manifest binds.
    fn kubectl_sa(&self, args: &[&str]) -> Run {
        self.kubectl_as("sa.kubeconfig", args)
    }

    fn kubectl_as(&self, kubeconfig: &str, args: &[&str]) -> Run {
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBECONFIG")
            .arg(format!("--kubeconfig={}", self.path(kubeconfig).display()))
            .arg(format!(
                "--cache-dir={}",
                self.path("kubectl-cache").display()
            ))
            .args(args);
        let out = output_within(cmd, KUBECTL_TIMEOUT);
        Run {
            code: out.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// An object as the admin reads it; `None` when it does not exist.
    fn get(&self, kind: &str, ns: &str, name: &str) -> Option<Value> {
        let run = self.kubectl(&[
            "get",
            kind,
            name,
            "-n",
            ns,
            "-o",
            "json",
            "--ignore-not-found",
        ]);
        let run = run.ok();
        (!run.stdout.trim().is_empty()).then(|| serde_json::from_str(&run.stdout).unwrap())
    }

    /// The requests `user` made, answered, in order (the audit log's ResponseComplete events):
    /// (verb, URI, status code, user agent).
    fn requests_of(&self, user: &str) -> Vec<(String, String, i64, String)> {
        let text = std::fs::read_to_string(self.path("audit.log")).unwrap_or_default();
        text.lines()
            .map(|l| serde_json::from_str::<Value>(l).unwrap())
            .filter(|e| e["stage"] == "ResponseComplete" && e["user"]["username"] == user)
            .map(|e| {
                let s = |v: &Value| v.as_str().unwrap_or_default().to_string();
                (
                    s(&e["verb"]),
                    s(&e["requestURI"]),
                    e["responseStatus"]["code"].as_i64().unwrap_or(0),
                    s(&e["userAgent"]),
                )
            })
            .collect()
    }

    /// The backups cacertd made of `cacerts`.
    fn backups(&self) -> Vec<Value> {
        let run = self
            .kubectl(&[
                "get",
                "secrets",
                "-n",
                "istio-system",
                "-l",
                "cacertd.io/backup-of=cacerts",
                "-o",
                "json",
            ])
            .ok();
        let list: Value = serde_json::from_str(&run.stdout).unwrap();
        list["items"].as_array().unwrap().clone()
    }

    /// Whether the service account may do each of `accesses` (see [`review`]): one
    /// SelfSubjectAccessReview each, created with its own credentials.
    fn allowed(&self, accesses: &[&str]) -> Vec<bool> {
        let reviews: Vec<Value> = accesses.iter().map(|a| review(a)).collect();
        let list = json!({"apiVersion": "v1", "kind": "List", "items": reviews});
        let file = self.path("reviews.json");
        std::fs::write(&file, list.to_string()).unwrap();
        let run = self
            .kubectl_sa(&["create", "-f", file.to_str().unwrap(), "-o", "json"])
            .ok();
        let answers: Vec<Value> = serde_json::Deserializer::from_str(&run.stdout)
            .into_iter::<Value>()
            .map(Result::unwrap)
            .collect();
        assert_eq!(answers.len(), accesses.len(), "{}", run.stdout);
        answers
            .iter()
            .zip(&reviews)
            .map(|(answer, asked)| {
                let attributes = |v: &Value| {
                    let a = &v["spec"]["resourceAttributes"];
                    ["verb", "group", "resource", "namespace", "name"]
                        .map(|k| a[k].as_str().unwrap_or_default().to_string())
                };
                assert_eq!(attributes(answer), attributes(asked), "answers in order");
                answer["status"]["allowed"].as_bool().unwrap()
            })
            .collect()
    }

    /// Waits until the authorizer's answer to `access` is `allowed` (RBAC objects reach it
    /// through an informer, a moment after they are written).
    fn wait_until(&self, access: &str, allowed: bool) {
        let deadline = Instant::now() + RBAC_PROPAGATION;
        while self.allowed(&[access]) != [allowed] {
            assert!(
                Instant::now() < deadline,
                "{access:?} still {} after {RBAC_PROPAGATION:?}",
                if allowed { "denied" } else { "allowed" }
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A kubeconfig with one cluster (the apiserver, verified with its CA), one user (a bearer
/// token) and one context, named after the user.
fn kubeconfig(port: u16, ca_base64: &str, user: &str, token: &str) -> String {
    json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "real", "cluster": {
            "server": format!("https://127.0.0.1:{port}"),
            "certificate-authority-data": ca_base64,
        }}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": user, "context": {"cluster": "real", "user": user}}],
        "current-context": user,
    })
    .to_string()
}

/// A stand-in for the Deployment controller (there is no kube-controller-manager): every
/// Deployment whose spec changed gets a status saying its new generation rolled out, written by
/// the admin through the status subresource. Stops on drop.
struct RolloutController {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<u32>>,
}

impl RolloutController {
    fn start(server: &RealApiserver) -> RolloutController {
        let stop = Arc::new(AtomicBool::new(false));
        let kubeconfig = server.path("admin.kubeconfig");
        let cache = server.path("kubectl-cache");
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let kubectl = |args: &[&str]| {
                let mut cmd = Command::new("kubectl");
                cmd.env_remove("KUBECONFIG")
                    .arg(format!("--kubeconfig={}", kubeconfig.display()))
                    .arg(format!("--cache-dir={}", cache.display()))
                    .args(args);
                output_within(cmd, KUBECTL_TIMEOUT)
            };
            let mut rolled_out = 0;
            while !flag.load(Ordering::Relaxed) {
                let out = kubectl(&["get", "deployments", "-A", "-o", "json"]);
                let list: Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
                for d in list["items"].as_array().into_iter().flatten() {
                    let generation = d["metadata"]["generation"].as_i64().unwrap_or(0);
                    if d["status"]["observedGeneration"].as_i64().unwrap_or(0) >= generation {
                        continue;
                    }
                    let replicas = d["spec"]["replicas"].as_i64().unwrap_or(1);
                    let status = json!({"status": {
                        "observedGeneration": generation, "replicas": replicas,
                        "updatedReplicas": replicas, "readyReplicas": replicas,
                        "availableReplicas": replicas,
                    }});
                    let out = kubectl(&[
                        "patch",
                        "deployment",
                        d["metadata"]["name"].as_str().unwrap_or_default(),
                        "-n",
                        d["metadata"]["namespace"].as_str().unwrap_or_default(),
                        "--subresource=status",
                        "--type=merge",
                        "-p",
                        &status.to_string(),
                    ]);
                    if out.status.success() {
                        rolled_out += 1;
                    }
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            rolled_out
        });
        RolloutController {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the controller; how many rollouts it completed.
    fn finish(mut self) -> u32 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.take().unwrap().join().unwrap()
    }
}

impl Drop for RolloutController {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A Deployment as a chart would create it: one container, `container`, with `env`.
fn deployment(
    ns: &str,
    name: &str,
    labels: Value,
    container: &str,
    image: &str,
    env: Value,
) -> Value {
    json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [
                                  {"name": container, "image": image, "env": env}]}}},
    })
}

fn decode(secret: &Value, key: &str) -> Vec<u8> {
    let b64 = secret["data"][key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in cacerts"));
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

fn resource_version(secret: &Value) -> String {
    secret["metadata"]["resourceVersion"]
        .as_str()
        .unwrap()
        .to_string()
}

#[test]
fn the_shipped_rbac_works_on_a_real_apiserver() {
    let started = Instant::now();
    let manifest_path = Path::new(env!("CARGO_MANIFEST_DIR")).join(RBAC);
    let manifest = common::kube::target_rbac();
    let service_account = bound_service_account(&manifest);
    let server = RealApiserver::start(&service_account);
    let ready = started.elapsed();

    // The namespace the manifest's Role lives in (Istio's), then the manifest as shipped.
    server
        .kubectl(&["create", "namespace", "istio-system"])
        .ok();
    server.kubectl(&["create", "namespace", "app"]).ok();
    server
        .kubectl(&["apply", "-f", manifest_path.to_str().unwrap()])
        .ok();
    server.wait_until(NEEDED[0], true);

    // Every permission cacertd uses is granted; what the manifest leaves out is denied.
    let granted = server.allowed(NEEDED);
    let missing: Vec<&&str> = NEEDED
        .iter()
        .zip(&granted)
        .filter(|(_, g)| !**g)
        .map(|(a, _)| a)
        .collect();
    assert!(
        missing.is_empty(),
        "the shipped RBAC does not grant {missing:#?}"
    );
    let denied = server.allowed(DENIED);
    let extra: Vec<&&str> = DENIED
        .iter()
        .zip(&denied)
        .filter(|(_, d)| **d)
        .map(|(a, _)| a)
        .collect();
    assert!(extra.is_empty(), "the shipped RBAC grants {extra:#?}");

    // cacertd, authenticated as that service account.
    let s = Setup::with_config(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[root]
store = "file"

[kubernetes]
timeout = "10s"
rollout_timeout = "30s"

[[clusters]]
name = "cluster1"
role = "primary"
network = "network1"
target = { kind = "kube", kubeconfig = "kube/cluster1.yaml", context = "cacertd" }
"#,
    );
    std::fs::create_dir(s.path("kube")).unwrap();
    std::fs::copy(server.path("sa.kubeconfig"), s.path("kube/cluster1.yaml")).unwrap();

    // No istiod yet: its bundles are looked for as ConfigMaps in every namespace.
    let run = s.cacertd(&["issue", "--init-root"]).ok();
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    let first = server
        .get("secret", "istio-system", "cacerts")
        .expect("cacerts written");
    assert_eq!(first["type"], "Opaque");
    assert_eq!(
        first["metadata"]["labels"]["app.kubernetes.io/managed-by"],
        "cacertd"
    );
    let exported = s.path("exported");
    std::fs::create_dir(&exported).unwrap();
    for key in [
        "ca-cert.pem",
        "ca-key.pem",
        "root-cert.pem",
        "cert-chain.pem",
    ] {
        std::fs::write(exported.join(key), decode(&first, key)).unwrap();
    }
    assert_eq!(
        openssl_verify_cacerts(&exported).ok().stdout.trim(),
        "ca-cert.pem: OK"
    );

    // The daemon's watch (src/daemon/watch.rs): `cacerts` alone, by field selector, which the
    // name-restricted `watch` rule allows; a watch on every Secret there is forbidden.
    let watch =
        "/api/v1/namespaces/istio-system/secrets?watch=1&resourceVersion=0&timeoutSeconds=1";
    let run = server
        .kubectl_sa(&[
            "get",
            "--raw",
            &format!("{watch}&fieldSelector=metadata.name%3Dcacerts"),
        ])
        .ok();
    assert!(
        run.stdout.contains(r#""type":"ADDED""#) && run.stdout.contains(r#""name":"cacerts""#),
        "{}",
        run.stdout
    );
    let run = server.kubectl_sa(&["get", "--raw", watch]);
    assert!(
        run.code != 0 && run.stderr.contains("Forbidden"),
        "{}{}",
        run.stdout,
        run.stderr
    );

    // Nothing to do: nothing written.
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster1  unchanged"), "{}", run.stdout);
    let kept = server.get("secret", "istio-system", "cacerts").unwrap();
    assert_eq!(resource_version(&kept), resource_version(&first));
    assert!(server.backups().is_empty());

    // An istiod that publishes a ClusterTrustBundle, an API 1.20 does not serve (neither
    // v1beta1 nor v1alpha1): its 404 reads as "not published yet".
    let objects = s.path("mesh.json");
    let mesh = json!({"apiVersion": "v1", "kind": "List", "items": [
        deployment("istio-system", "istiod", json!({"app": "istiod"}), "discovery",
                   "docker.io/istio/pilot:1.26.2",
                   json!([{"name": "ENABLE_CLUSTER_TRUST_BUNDLE_API", "value": "true"}])),
        deployment("app", "web", json!({}), "web", "example/web:1", json!([])),
    ]});
    std::fs::write(&objects, mesh.to_string()).unwrap();
    server
        .kubectl(&["label", "namespace", "app", "istio-injection=enabled"])
        .ok();
    server
        .kubectl(&["create", "-f", objects.to_str().unwrap()])
        .ok();
    let controller = RolloutController::start(&server);
    let run = s.cacertd(&["issue"]).ok();
    assert!(run.stdout.contains("cluster1  unchanged"), "{}", run.stdout);

    // A forced replacement keeps the replaced version in a backup Secret.
    let run = s.cacertd(&["issue", "--force"]).ok();
    assert!(run.stdout.contains("cluster1  issued"), "{}", run.stdout);
    let backups = server.backups();
    assert_eq!(backups.len(), 1, "{backups:#?}");
    let backup_name = backups[0]["metadata"]["name"].as_str().unwrap();
    assert!(
        run.stdout.contains(&format!(
            "previous cacerts kept in secret istio-system/{backup_name}"
        )),
        "{}",
        run.stdout
    );
    assert_eq!(backups[0]["data"], first["data"]);
    let forced = server.get("secret", "istio-system", "cacerts").unwrap();
    assert_ne!(
        decode(&forced, "ca-cert.pem"),
        decode(&first, "ca-cert.pem")
    );

    let run = s.cacertd(&["status", "-o", "json"]).ok();
    let status: Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(
        status["clusters"][0]["cacerts"]["state"], "valid",
        "{status:#}"
    );

    // A restart patches istiod, then the injected workload, through the shipped `patch` rule,
    // and waits for each rollout (completed by the stand-in controller).
    let run = s.cacertd(&["restart", "cluster1"]).ok();
    for (ns, name) in [("istio-system", "istiod"), ("app", "web")] {
        let workload = format!("deployment/{ns}/{name}");
        assert!(
            run.stdout
                .lines()
                .any(|l| l.contains(&workload) && l.ends_with("rolled out")),
            "{}",
            run.stdout
        );
        let d = server.get("deployment", ns, name).unwrap();
        assert!(
            d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
                .is_string(),
            "{ns}/{name} not restarted: {}{}",
            run.stdout,
            run.stderr
        );
    }
    // Two Deployments created, then two restarted.
    assert_eq!(controller.finish(), 4);

    // Every request cacertd made (the audit log's; kubectl's, and its dispatcher's, aside) was
    // allowed. What 1.20
    // does not serve answered 404, which cacertd took for "none": istiod's ClusterTrustBundle
    // (certificates.k8s.io has neither v1beta1 nor v1alpha1 of it) and Argo Rollouts.
    let (ns, name) = &service_account;
    let user = format!("system:serviceaccount:{ns}:{name}");
    let of_cacertd = |requests: Vec<(String, String, i64, String)>| -> Vec<_> {
        requests
            .into_iter()
            .filter(|r| !r.3.contains("kubectl"))
            .collect()
    };
    let requests = of_cacertd(server.requests_of(&user));
    let refused: Vec<_> = requests
        .iter()
        .filter(|r| r.2 >= 400 && r.2 != 404)
        .collect();
    assert!(refused.is_empty(), "{refused:#?}");
    let mut not_found: Vec<&str> = requests
        .iter()
        .filter(|r| r.2 == 404)
        .map(|r| r.1.split('?').next().unwrap())
        .collect();
    not_found.sort_unstable();
    not_found.dedup();
    let ctb = "clustertrustbundles/istio.io:istiod-ca:root-cert";
    assert_eq!(
        not_found,
        [
            "/api/v1/namespaces/istio-system/secrets/cacerts".to_string(),
            "/api/v1/namespaces/istio-system/secrets/istio-ca-secret".to_string(),
            "/apis/argoproj.io/v1alpha1/rollouts".to_string(),
            format!("/apis/certificates.k8s.io/v1alpha1/{ctb}"),
            format!("/apis/certificates.k8s.io/v1beta1/{ctb}"),
        ],
        "{requests:#?}"
    );
    let mut writes: Vec<String> = requests
        .iter()
        .filter(|r| !["get", "list", "watch"].contains(&r.0.as_str()))
        .map(|r| {
            let dry_run = if r.1.contains("dryRun=All") {
                " (dry run)"
            } else {
                ""
            };
            format!("{} {}{dry_run}", r.0, r.1.split('?').next().unwrap())
        })
        .collect();
    writes.sort_unstable();
    assert_eq!(
        writes,
        [
            "create /api/v1/namespaces/istio-system/secrets",
            "create /api/v1/namespaces/istio-system/secrets",
            "patch /apis/apps/v1/namespaces/app/deployments/web",
            "patch /apis/apps/v1/namespaces/istio-system/deployments/istiod",
            "update /api/v1/namespaces/istio-system/secrets/cacerts",
            "update /api/v1/namespaces/istio-system/secrets/cacerts (dry run)",
        ],
        "cacerts, its backup, its replacement (tried first as a dry run), two restarts"
    );
    let seen = server.requests_of(&user).len();

    // Without the RoleBinding that grants Secrets, the same forced issue is refused by the
    // apiserver, cacertd says what was forbidden, and nothing changes.
    for (ns, name) in secret_bindings(&manifest) {
        server
            .kubectl(&["delete", "rolebinding", &name, "-n", &ns])
            .ok();
    }
    server.wait_until(NEEDED[0], false);
    let before = s.snapshot();
    let run = s.cacertd(&["issue", "--force"]);
    assert_eq!(run.code, 1, "{}{}", run.stdout, run.stderr);
    let said = format!("{}{}", run.stdout, run.stderr);
    for expected in [
        "cluster1  FAILED",
        "get secret istio-system/cacerts",
        &format!("User \"{user}\" cannot get resource \"secrets\""),
        "in the namespace \"istio-system\" (403)",
    ] {
        assert!(said.contains(expected), "{expected:?} not in:\n{said}");
    }
    assert_unchanged(&before, &s.snapshot());
    let after = server.get("secret", "istio-system", "cacerts").unwrap();
    assert_eq!(resource_version(&after), resource_version(&forced));
    assert_eq!(server.backups().len(), 1);
    // It stopped at the refused read: it tried no write.
    let deadline = Instant::now() + RBAC_PROPAGATION;
    let refused = loop {
        let requests = of_cacertd(server.requests_of(&user)[seen..].to_vec());
        if requests.iter().any(|r| r.2 == 403) || Instant::now() > deadline {
            break requests;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert_eq!(
        refused
            .iter()
            .map(|r| (r.0.as_str(), r.1.as_str(), r.2))
            .collect::<Vec<_>>(),
        [(
            "get",
            "/api/v1/namespaces/istio-system/secrets/cacerts",
            403
        )]
    );

    eprintln!(
        "real apiserver ready after {ready:?}; whole test {:?}",
        started.elapsed()
    );

    // The management cluster's manifests, as kustomize renders them: every object validates
    // against the apiserver, and the service account may touch only the Secrets it names.
    management_manifests(&server);

    // Onboarding: the script applies rbac.yaml again (unchanged) and writes a kubeconfig for
    // the ServiceAccount with a token from TokenRequest, 0600, that may do what cacertd needs
    // and nothing the manifest leaves out.
    onboard(&server);
}

fn onboard(server: &RealApiserver) {
    use std::os::unix::fs::PermissionsExt;
    let script =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy/kubernetes/target-cluster/onboard.sh");
    let out = server.path("onboarded.yaml");
    let mut cmd = Command::new(&script);
    cmd.env("KUBECONFIG", server.path("admin.kubeconfig"))
        .args([
            "--context",
            "cacertd-test-admin",
            "--duration",
            "1h",
            "--out",
        ])
        .arg(&out);
    let run = output_within(cmd, Duration::from_secs(120));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(run.status.success(), "{stderr}");
    assert!(stderr.contains("token valid for 1h"), "{stderr}");
    let mode = std::fs::metadata(&out).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    let kubeconfig = std::fs::read_to_string(&out).unwrap();
    assert!(kubeconfig.contains("server: https://") && kubeconfig.contains("token: "));
    let can = |args: &[&str]| {
        let mut cmd = Command::new("kubectl");
        cmd.env_remove("KUBECONFIG")
            .arg(format!("--kubeconfig={}", out.display()))
            .args(["auth", "can-i"])
            .args(args);
        String::from_utf8_lossy(&output_within(cmd, KUBECTL_TIMEOUT).stdout)
            .trim()
            .to_string()
    };
    assert_eq!(
        can(&["update", "secrets/cacerts", "-n", "istio-system"]),
        "yes"
    );
    assert_eq!(
        can(&["get", "secrets/cacertd-kubeconfigs", "-n", "cacertd"]),
        "no"
    );
    assert_eq!(
        can(&["delete", "secrets/cacerts", "-n", "istio-system"]),
        "no"
    );
}
