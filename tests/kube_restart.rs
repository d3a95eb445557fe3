//! `cacertd restart`: istiod, then gateways, then workloads, across a primary and its remotes,
//! each stage waiting for the previous one to roll out — against the test apiserver's
//! simulated controllers.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use cacertd_test_apiserver::{FakeCluster, TestApiServer, Value, json};
use common::kube::{CLUSTERS, setup};

fn workload(c: &FakeCluster, kind: &str, ns: &str, name: &str, labels: Value) {
    c.put(json!({
        "apiVersion": "apps/v1", "kind": kind,
        "metadata": {"name": name, "namespace": ns, "labels": labels},
        "spec": {"replicas": 1, "selector": {"matchLabels": {"app": name}},
                 "template": {"metadata": {"labels": {"app": name}},
                              "spec": {"containers": [{"name": "c", "image": "example/app:1"}]}}},
        "status": {"observedGeneration": 1, "replicas": 1, "updatedReplicas": 1, "readyReplicas": 1,
                   "availableReplicas": 1, "desiredNumberScheduled": 1, "updatedNumberScheduled": 1,
                   "numberAvailable": 1},
    }));
}

fn mesh(server: &TestApiServer) {
    let c1 = server.cluster("cluster1");
    workload(
        c1,
        "Deployment",
        "istio-system",
        "istiod",
        json!({"app": "istiod"}),
    );
    workload(
        c1,
        "Deployment",
        "istio-system",
        "istio-eastwestgateway",
        json!({"istio": "eastwestgateway"}),
    );
    c1.namespace("app", &[("istio-injection", "enabled")]);
    workload(c1, "Deployment", "app", "web", json!({}));
    workload(c1, "StatefulSet", "app", "db", json!({}));
    c1.namespace("plain", &[]);
    workload(c1, "Deployment", "plain", "other", json!({}));
    let c3 = server.cluster("cluster3");
    c3.namespace("istio-ingress", &[]);
    workload(
        c3,
        "Deployment",
        "istio-ingress",
        "istio-ingressgateway",
        json!({"istio": "ingressgateway"}),
    );
    c3.namespace("shop", &[("istio.io/rev", "default")]);
    workload(c3, "DaemonSet", "shop", "agent", json!({}));
    let c2 = server.cluster("cluster2");
    workload(
        c2,
        "Deployment",
        "istio-system",
        "istiod",
        json!({"app": "istiod"}),
    );
}

fn restarted(c: &FakeCluster, plural: &str, ns: &str, name: &str) -> bool {
    c.get(plural, ns, name).unwrap()["spec"]["template"]["metadata"]["annotations"]
        ["kubectl.kubernetes.io/restartedAt"]
        .is_string()
}

/// The arrival order of the restart PATCH of `name` in `c`.
fn patch_seq(c: &FakeCluster, name: &str) -> u64 {
    c.requests()
        .iter()
        .find(|r| r.method == "PATCH" && r.path.ends_with(&format!("/{name}")))
        .unwrap_or_else(|| panic!("{name} was not patched"))
        .seq
}

#[test]
fn restarts_go_istiod_then_gateways_then_workloads_across_primary_and_remotes() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    for c in CLUSTERS {
        server
            .cluster(c)
            .set_rollout_delay(std::time::Duration::from_millis(200));
    }
    let s = setup(&server, "");
    let run = s.cacertd(&["restart", "cluster1"]).ok();
    assert!(
        run.stdout.contains("deployment/istio-system/istiod"),
        "{}",
        run.stdout
    );
    let (c1, c2, c3) = (
        server.cluster("cluster1"),
        server.cluster("cluster2"),
        server.cluster("cluster3"),
    );
    for (c, plural, ns, name) in [
        (c1, "deployments", "istio-system", "istiod"),
        (c1, "deployments", "istio-system", "istio-eastwestgateway"),
        (c3, "deployments", "istio-ingress", "istio-ingressgateway"),
        (c1, "deployments", "app", "web"),
        (c1, "statefulsets", "app", "db"),
        (c3, "daemonsets", "shop", "agent"),
    ] {
        assert!(restarted(c, plural, ns, name), "{name} not restarted");
        // Every restart finished rolling out before the command returned.
        let obj = c.get(plural, ns, name).unwrap();
        assert_eq!(
            obj["status"]["observedGeneration"], obj["metadata"]["generation"],
            "{name}"
        );
    }
    assert!(
        !restarted(c1, "deployments", "plain", "other"),
        "not an injected namespace"
    );
    assert!(
        !restarted(c2, "deployments", "istio-system", "istiod"),
        "another primary's mesh"
    );

    let istiod = patch_seq(c1, "istiod");
    let gateways = [
        patch_seq(c1, "istio-eastwestgateway"),
        patch_seq(c3, "istio-ingressgateway"),
    ];
    let workloads = [
        patch_seq(c1, "web"),
        patch_seq(c1, "db"),
        patch_seq(c3, "agent"),
    ];
    assert!(
        gateways.iter().all(|g| *g > istiod),
        "gateways after istiod"
    );
    let last_gateway = gateways.iter().max().unwrap();
    assert!(
        workloads.iter().all(|w| w > last_gateway),
        "workloads after gateways"
    );
    // The gateway stage began only once istiod's rollout was seen complete.
    let istiod_done = c1
        .requests()
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/deployments/istiod"))
        .map(|r| r.seq)
        .max()
        .unwrap();
    assert!(
        istiod_done < gateways[0],
        "waited for istiod before the gateways"
    );
}

/// `--dry-run` lists every stage's workloads in order, as the restart would find them, and
/// patches nothing.
#[test]
fn a_dry_run_lists_what_each_stage_would_restart_and_restarts_nothing() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    let s = setup(&server, "");
    let run = s.cacertd(&["restart", "cluster1", "--dry-run"]).ok();
    let out = &run.stdout;
    let at = |w: &str| out.find(w).unwrap_or_else(|| panic!("{w} missing: {out}"));
    assert!(
        at("deployment/istio-system/istiod") < at("deployment/istio-system/istio-eastwestgateway")
            && at("deployment/istio-ingress/istio-ingressgateway") < at("deployment/app/web"),
        "{out}"
    );
    assert!(
        out.contains("daemonset/shop/agent") && out.contains("would restart"),
        "{out}"
    );
    assert!(out.contains("dry run: nothing was restarted"), "{out}");
    assert!(!out.contains("plain/other"), "{out}");
    for c in CLUSTERS {
        let patches = server
            .cluster(c)
            .requests()
            .iter()
            .filter(|r| r.method == "PATCH")
            .count();
        assert_eq!(patches, 0, "{c}");
    }
    let json = s
        .cacertd(&["restart", "cluster1", "--dry-run", "-o", "json"])
        .ok();
    let v: serde_json::Value = serde_json::from_str(&json.stdout).unwrap();
    assert!(
        v.as_array().unwrap().iter().all(|r| r["dry_run"] == true),
        "{v}"
    );
    s.cacertd(&["restart", "cluster1", "--dry-run", "--no-wait"])
        .fails_with(2);
}

#[test]
fn a_restart_reads_each_kind_once_per_poll_not_each_workload() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    let c1 = server.cluster("cluster1");
    for i in 0..8 {
        let ns = format!("team{i}");
        c1.namespace(&ns, &[("istio-injection", "enabled")]);
        workload(c1, "Deployment", &ns, "api", json!({}));
        workload(c1, "Deployment", &ns, "worker", json!({}));
    }
    let s = setup(&server, "");
    let before = c1.requests().len();
    s.cacertd(&["restart", "cluster1", "--only", "workloads"])
        .ok();
    let requests = c1.requests().split_off(before);
    let of_one = |method: &str| {
        requests
            .iter()
            .filter(|r| r.method == method && r.path.contains("/deployments/"))
            .count()
    };
    // 17 Deployments (web and two per team) restarted: one patch each, none read before its
    // patch, and the waits read them by lists (a last straggler may be read on its own):
    // fewer reads of single Deployments than Deployments.
    assert_eq!(of_one("PATCH"), 17);
    for patch in requests.iter().filter(|r| r.method == "PATCH") {
        assert!(
            !requests
                .iter()
                .any(|r| r.method == "GET" && r.path == patch.path && r.seq < patch.seq),
            "{} read before its patch",
            patch.path
        );
    }
    assert!(of_one("GET") < 17, "{requests:#?}");
    let lists = requests
        .iter()
        .filter(|r| r.method == "GET" && r.path.ends_with("/deployments"))
        .count();
    assert!(lists < 17, "{lists} lists of deployments: {requests:#?}");
    for i in 0..8 {
        assert!(restarted(c1, "deployments", &format!("team{i}"), "worker"));
    }
}

#[test]
fn a_stage_that_does_not_roll_out_stops_the_run() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    server.cluster("cluster1").set_rollouts_stuck(true);
    let s = setup(&server, "rollout_timeout = \"1s\"");
    let run = s.cacertd(&["restart", "cluster1"]).fails_with(1);
    assert!(
        run.stderr.contains("deployment/istio-system/istiod"),
        "{}",
        run.stderr
    );
    assert!(
        run.stderr.contains("did not finish within 1s"),
        "{}",
        run.stderr
    );
    let c1 = server.cluster("cluster1");
    assert!(restarted(c1, "deployments", "istio-system", "istiod"));
    assert!(!restarted(
        c1,
        "deployments",
        "istio-system",
        "istio-eastwestgateway"
    ));
    assert!(!restarted(c1, "deployments", "app", "web"));
}

#[test]
fn paused_deployments_are_refused_and_remotes_cannot_be_named() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    let c1 = server.cluster("cluster1");
    let mut istiod = c1.get("deployments", "istio-system", "istiod").unwrap();
    istiod["spec"]["paused"] = json!(true);
    c1.put(istiod);
    let s = setup(&server, "");
    let run = s.cacertd(&["restart", "cluster1"]).fails_with(1);
    assert!(run.stderr.contains("paused"), "{}", run.stderr);
    assert!(!restarted(c1, "deployments", "istio-system", "istiod"));
    let run = s.cacertd(&["restart", "cluster3"]).fails_with(2);
    assert!(
        run.stderr.contains("cluster3 is a remote"),
        "{}",
        run.stderr
    );
    // Only one stage, no waiting.
    let c2 = server.cluster("cluster2");
    s.cacertd(&["restart", "cluster2", "--only", "istiod", "--no-wait"])
        .ok();
    assert!(restarted(c2, "deployments", "istio-system", "istiod"));
}

#[test]
fn what_kubectl_would_not_roll_out_is_refused_or_judged_like_kubectl() {
    let server = TestApiServer::start(&CLUSTERS);
    mesh(&server);
    let c3 = server.cluster("cluster3");
    let s = setup(&server, "rollout_timeout = \"60s\"");

    // OnDelete: a restart annotation would replace no pod.
    let mut agent = c3.get("daemonsets", "shop", "agent").unwrap();
    agent["spec"]["updateStrategy"] = json!({"type": "OnDelete"});
    c3.put(agent);
    let run = s
        .cacertd(&["restart", "cluster1", "--only", "workloads"])
        .fails_with(1);
    assert!(run.stderr.contains("OnDelete"), "{}", run.stderr);
    // Refused before anything of the stage restarted, in the primary either.
    let c1 = server.cluster("cluster1");
    assert!(!restarted(c1, "deployments", "app", "web"));
    let mut agent = c3.get("daemonsets", "shop", "agent").unwrap();
    agent["spec"]["updateStrategy"] = json!({"type": "RollingUpdate"});
    c3.put(agent);

    // A partitioned StatefulSet is done once the ordinals above the partition are updated:
    // the simulated controller updates only those (1 of 3), and the wait must accept that
    // well before the timeout.
    let c1 = server.cluster("cluster1");
    let mut db = c1.get("statefulsets", "app", "db").unwrap();
    db["spec"]["replicas"] = json!(3);
    db["spec"]["updateStrategy"] =
        json!({"type": "RollingUpdate", "rollingUpdate": {"partition": 2}});
    c1.put(db);
    let started = std::time::Instant::now();
    let run = s
        .cacertd(&["restart", "cluster1", "--only", "workloads"])
        .ok();
    assert!(restarted(c1, "statefulsets", "app", "db"));
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "done when the ordinals above the partition were updated, not at the 60 s timeout:\n{}",
        run.stderr
    );

    // A progress deadline exceeded by the previous rollout is not a failure of this one:
    // until the controller observes the new generation, the condition is stale.
    let mut web = c1.get("deployments", "app", "web").unwrap();
    web["status"]["conditions"] = json!([{"type": "Progressing", "status": "False",
        "reason": "ProgressDeadlineExceeded", "message": "ReplicaSet web-1 has timed out progressing."}]);
    c1.put(web);
    c1.set_rollout_delay(std::time::Duration::from_millis(500));
    s.cacertd(&["restart", "cluster1", "--only", "workloads"])
        .ok();
    c1.set_rollout_delay(std::time::Duration::from_millis(50));

    // A Deployment whose controller reports this rollout past its progress deadline fails at
    // once rather than at the timeout.
    c1.set_rollouts_deadline_exceeded(true);
    let started = std::time::Instant::now();
    let run = s
        .cacertd(&["restart", "cluster1", "--only", "workloads"])
        .fails_with(1);
    assert!(
        run.stderr.contains("progress deadline exceeded")
            && run.stderr.contains("has timed out progressing"),
        "{}",
        run.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(30),
        "failed fast, not at the 60 s timeout"
    );
    c1.set_rollouts_deadline_exceeded(false);

    // Not waiting is only allowed for a single stage.
    let run = s
        .cacertd(&["restart", "cluster1", "--no-wait"])
        .fails_with(2);
    assert!(run.stderr.contains("--no-wait"), "{}", run.stderr);
}
