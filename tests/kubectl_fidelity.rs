//! The test apiserver, driven by a real `kubectl`: if kubectl's get, apply, replace, rollout
//! restart and rollout status behave against it as against a real cluster, the semantics the
//! cacertd tests rely on are the real ones. (The server publishes no OpenAPI schemas, so
//! `kubectl apply` runs with `--validate=false`.)

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

use cacertd_test_apiserver::{FakeCluster, Rule, TestApiServer, json};

struct Kubectl {
    kubeconfig: tempfile::NamedTempFile,
}

impl Kubectl {
    fn new(cluster: &FakeCluster, token: &str) -> Self {
        let kubeconfig = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(kubeconfig.path(), cluster.kubeconfig(token)).unwrap();
        Kubectl { kubeconfig }
    }

    /// Runs kubectl; returns (exit code, stdout, stderr).
    fn run(&self, args: &[&str]) -> (i32, String, String) {
        let out = Command::new("kubectl")
            .arg("--kubeconfig")
            .arg(self.kubeconfig.path())
            .args(args)
            .env("KUBECACHEDIR", self.kubeconfig.path().with_extension("cache"))
            .output()
            .expect("kubectl must be installed (.ci/run installs kubernetes-client where it is missing)");
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    fn ok(&self, args: &[&str]) -> String {
        let (code, out, err) = self.run(args);
        assert_eq!(code, 0, "kubectl {args:?} failed:\n{out}\n{err}");
        out
    }
}

fn write(dir: &Path, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn kubectl_get_apply_and_replace_behave_as_on_a_real_cluster() {
    let server = TestApiServer::start_tls(&["c1"]);
    let c1 = server.cluster("c1");
    let k = Kubectl::new(c1, &c1.admin_token());
    let dir = tempfile::tempdir().unwrap();

    let ns = k.ok(&["get", "namespaces", "-o", "name"]);
    assert_eq!(
        ns.lines().collect::<Vec<_>>(),
        [
            "namespace/default",
            "namespace/istio-system",
            "namespace/kube-system"
        ]
    );

    let secret = |value: &str| {
        format!(
            "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: istio-system\ntype: Opaque\ndata:\n  root-cert.pem: {value}\n"
        )
    };
    let f = write(dir.path(), "s1.yaml", &secret("b25l"));
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &f]).trim(),
        "secret/cacerts created"
    );
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &f]).trim(),
        "secret/cacerts unchanged"
    );
    let f2 = write(dir.path(), "s2.yaml", &secret("dHdv"));
    assert_eq!(
        k.ok(&["apply", "--validate=false", "-f", &f2]).trim(),
        "secret/cacerts configured"
    );
    let got = k.ok(&[
        "get",
        "secret",
        "cacerts",
        "-n",
        "istio-system",
        "-o",
        "jsonpath={.data.root-cert\\.pem}",
    ]);
    assert_eq!(got, "dHdv");
    assert_eq!(
        c1.get("secrets", "istio-system", "cacerts").unwrap()["data"]["root-cert.pem"],
        "dHdv"
    );

    // A replace carrying a stale resourceVersion is a conflict, worded as Kubernetes words it.
    let stale = "apiVersion: v1\nkind: Secret\nmetadata:\n  name: cacerts\n  namespace: istio-system\n  resourceVersion: \"1\"\ntype: Opaque\ndata:\n  root-cert.pem: dGhyZWU=\n".to_string();
    let f3 = write(dir.path(), "s3.yaml", &stale);
    let (code, _, err) = k.run(&["replace", "--validate=false", "-f", &f3]);
    assert_ne!(code, 0);
    assert!(err.contains("the object has been modified"), "{err}");

    let (code, _, err) = k.run(&["get", "secret", "nope", "-n", "istio-system"]);
    assert_ne!(code, 0);
    assert!(err.contains("secrets \"nope\" not found"), "{err}");
}

#[test]
fn kubectl_sees_rbac_denials() {
    let server = TestApiServer::start_tls(&["c1"]);
    let c1 = server.cluster("c1");
    c1.add_token(
        "reader",
        "system:serviceaccount:istio-system:cacertd",
        vec![
            Rule::new(&["get"], &["secrets"])
                .in_namespace("istio-system")
                .named(&["cacerts"]),
        ],
    );
    let k = Kubectl::new(c1, "reader");
    let (code, _, err) = k.run(&["get", "secrets", "-n", "istio-system"]);
    assert_ne!(code, 0);
    assert!(
        err.contains("User \"system:serviceaccount:istio-system:cacertd\" cannot list resource \"secrets\" in API group \"\" in the namespace \"istio-system\""),
        "{err}"
    );

    // A server-side apply that would create the object needs `create`, not only `patch`.
    c1.add_token(
        "patcher",
        "patcher",
        vec![Rule::new(&["get", "patch"], &["configmaps"]).in_namespace("default")],
    );
    let k = Kubectl::new(c1, "patcher");
    let dir = tempfile::tempdir().unwrap();
    let f = write(
        dir.path(),
        "cm.yaml",
        "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: settings\n  namespace: default\ndata:\n  a: b\n",
    );
    let (code, _, err) = k.run(&["apply", "--server-side", "--validate=false", "-f", &f]);
    assert_ne!(code, 0);
    assert!(
        err.contains("User \"patcher\" cannot create resource \"configmaps\""),
        "{err}"
    );
    assert!(c1.get("configmaps", "default", "settings").is_none());
    // Once it exists, `patch` is enough.
    c1.put(json!({"apiVersion": "v1", "kind": "ConfigMap",
                  "metadata": {"name": "settings", "namespace": "default"}, "data": {"a": "a"}}));
    k.ok(&["apply", "--server-side", "--validate=false", "-f", &f]);
    assert_eq!(
        c1.get("configmaps", "default", "settings").unwrap()["data"]["a"],
        "b"
    );
}

#[test]
fn kubectl_rollout_restart_and_status() {
    let server = TestApiServer::start_tls(&["c1"]);
    let c1 = server.cluster("c1");
    c1.put(json!({
        "apiVersion": "apps/v1", "kind": "Deployment",
        "metadata": {"name": "istiod", "namespace": "istio-system", "labels": {"app": "istiod"}},
        "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "istiod"}},
                 "template": {"metadata": {"labels": {"app": "istiod"}},
                              "spec": {"containers": [{"name": "discovery", "image": "istio/pilot:1.27.0"}]}}},
        "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2, "availableReplicas": 2},
    }));
    c1.set_rollout_delay(std::time::Duration::from_millis(300));
    let k = Kubectl::new(c1, &c1.admin_token());
    let out = k.ok(&[
        "rollout",
        "restart",
        "deployment/istiod",
        "-n",
        "istio-system",
    ]);
    assert_eq!(out.trim(), "deployment.apps/istiod restarted");
    let d = c1.get("deployments", "istio-system", "istiod").unwrap();
    assert!(
        d["spec"]["template"]["metadata"]["annotations"]["kubectl.kubernetes.io/restartedAt"]
            .is_string(),
        "{d}"
    );
    assert_eq!(d["metadata"]["generation"], 2);
    assert_eq!(
        d["spec"]["template"]["spec"]["containers"][0]["image"],
        "istio/pilot:1.27.0"
    );
    let out = k.ok(&[
        "rollout",
        "status",
        "deployment/istiod",
        "-n",
        "istio-system",
        "--timeout=30s",
    ]);
    assert!(out.contains("successfully rolled out"), "{out}");
    assert_eq!(
        c1.get("deployments", "istio-system", "istiod").unwrap()["status"]["observedGeneration"],
        2
    );

    // A restart kubectl's rollout status does not see through: its error. (kubectl refuses
    // two restarts within one second: the annotation would not change.)
    let failed_rollout = |timeout: &str| {
        std::thread::sleep(std::time::Duration::from_millis(1100));
        let deployment = ["deployment/istiod", "-n", "istio-system"];
        k.ok(&[&["rollout", "restart"][..], &deployment].concat());
        let status = [&["rollout", "status"][..], &deployment, &[timeout]].concat();
        let (code, _, err) = k.run(&status);
        assert_ne!(code, 0, "{err}");
        err
    };
    // A rollout that never finishes: kubectl's own timeout fires.
    c1.set_rollouts_stuck(true);
    let err = failed_rollout("--timeout=2s");
    assert!(err.contains("timed out"), "{err}");

    // The controller gives up on the rollout (ProgressDeadlineExceeded): kubectl says so at
    // once instead of waiting for its own timeout.
    c1.set_rollouts_stuck(false);
    c1.set_rollouts_deadline_exceeded(true);
    let err = failed_rollout("--timeout=60s");
    assert!(err.contains("exceeded its progress deadline"), "{err}");
}
