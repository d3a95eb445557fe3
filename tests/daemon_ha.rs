//! Two `cacertd serve` replicas contending for a Kubernetes Lease in a management cluster of
//! the test apiserver: only the leader ever writes; when it dies without a word (its runtime is
//! torn down, as a killed process would be), the standby takes over within the lease duration
//! and finishes the work — and nothing is issued twice.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use cacertd::clock::SystemClock;
use cacertd::config::Config;
use cacertd::daemon::Daemon;
use cacertd_test_apiserver::{FaultAction, TestApiServer};
use common::Setup;

struct Replica {
    stop: Arc<AtomicU8>,
    leading: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

const RUN: u8 = 0;
const KILL: u8 = 1;
const STOP: u8 = 2;

impl Replica {
    fn start(config: &std::path::Path) -> Self {
        let config = Config::load(config).unwrap();
        let stop = Arc::new(AtomicU8::new(RUN));
        let leading = Arc::new(AtomicBool::new(false));
        let (s, l) = (stop.clone(), leading.clone());
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .unwrap();
            let d = Daemon::new(config, Arc::new(SystemClock));
            let how = rt.block_on(async {
                loop {
                    let how = s.load(Ordering::SeqCst);
                    if how != RUN {
                        if how == STOP {
                            d.step_down().await;
                        }
                        return how;
                    }
                    let lead = d.try_lead().await;
                    l.store(lead, Ordering::SeqCst);
                    if lead {
                        d.tick().await;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            });
            if how == KILL {
                // Like a killed process: every task stops where it is; the Lease is not released.
                rt.shutdown_background();
                std::mem::forget(d);
            }
        });
        Replica {
            stop,
            leading,
            thread: Some(thread),
        }
    }

    fn end(&mut self, how: u8) {
        self.stop.store(how, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            t.join().unwrap();
        }
    }
}

impl Drop for Replica {
    fn drop(&mut self) {
        self.end(STOP);
    }
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn only_the_leader_writes_and_a_standby_takes_over_when_it_dies() {
    let server = TestApiServer::start(&["mgmt", "cluster1", "cluster2"]);
    server.cluster("mgmt").namespace("cacertd", &[]);
    let s = Setup::with_config(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[daemon]
listen = "127.0.0.1:0"
interval = "1h"
lease = { kubeconfig = "kube/mgmt.yaml", namespace = "cacertd", name = "cacertd-leader", duration = "3s", grace = "1s" }

[[clusters]]
name = "cluster1"
role = "primary"
target = { kind = "kube", kubeconfig = "kube/cluster1.yaml" }

[[clusters]]
name = "cluster2"
role = "primary"
target = { kind = "kube", kubeconfig = "kube/cluster2.yaml" }
"#,
    );
    std::fs::create_dir(s.path("kube")).unwrap();
    for name in ["mgmt", "cluster1", "cluster2"] {
        let c = server.cluster(name);
        std::fs::write(
            s.path(&format!("kube/{name}.yaml")),
            c.kubeconfig(&c.admin_token()),
        )
        .unwrap();
    }
    s.cacertd(&["root", "init"]).ok();
    let config = s.path("cacertd.toml");
    let mut a = Replica::start(&config);
    let mut b = Replica::start(&config);
    let (c1, c2) = (server.cluster("cluster1"), server.cluster("cluster2"));
    let cacerts =
        |c: &cacertd_test_apiserver::FakeCluster| c.get("secrets", "istio-system", "cacerts");
    wait_until("both clusters issued", Duration::from_secs(30), || {
        cacerts(c1).is_some() && cacerts(c2).is_some()
    });
    // Never two leaders: sample for a while.
    for _ in 0..20 {
        assert!(
            !(a.leading.load(Ordering::SeqCst) && b.leading.load(Ordering::SeqCst)),
            "two leaders"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // (A leader also stands aside for a pass when its Lease is close to expiry, so there can
    // be a moment with none.)
    wait_until("exactly one leader", Duration::from_secs(5), || {
        a.leading.load(Ordering::SeqCst) ^ b.leading.load(Ordering::SeqCst)
    });
    let a_leads = a.leading.load(Ordering::SeqCst);
    let (leader, standby) = if a_leads {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let writes = |c: &cacertd_test_apiserver::FakeCluster| {
        c.requests()
            .iter()
            .filter(|r| {
                (r.method == "POST" && r.path.ends_with("/secrets"))
                    || (r.method == "PUT" && r.path.ends_with("/cacerts"))
            })
            .filter(|r| r.status < 300)
            .count()
    };
    assert_eq!(
        (writes(c1), writes(c2)),
        (1, 1),
        "each cluster written once"
    );

    // The leader dies without releasing the Lease; cluster2 loses its cacerts meanwhile.
    leader.end(KILL);
    let killed_at = Instant::now();
    c2.delete("secrets", "istio-system", "cacerts");
    wait_until("the standby to take over", Duration::from_secs(20), || {
        standby.leading.load(Ordering::SeqCst)
    });
    assert!(
        killed_at.elapsed() >= Duration::from_secs(1),
        "not before the dead leader's lease ran out"
    );
    wait_until("cluster2 repaired", Duration::from_secs(20), || {
        cacerts(c2).is_some()
    });
    std::thread::sleep(Duration::from_secs(1));
    assert_eq!(writes(c1), 1, "cluster1 never issued twice");
    assert_eq!(
        writes(c2),
        2,
        "cluster2 issued again only after losing its cacerts"
    );
    let lease = server
        .cluster("mgmt")
        .get("leases", "cacertd", "cacertd-leader")
        .expect("the Lease exists");
    assert!(lease["spec"]["holderIdentity"].is_string(), "{lease}");

    // The new leader is cut off from the management cluster: it stops acting at once, well
    // before its lease could be taken; once it reaches the Lease again, it leads again.
    let mgmt = server.cluster("mgmt");
    mgmt.inject(FaultAction::Status(503), 1_000_000, false);
    wait_until(
        "the cut-off leader to stop acting",
        Duration::from_secs(2),
        || !standby.leading.load(Ordering::SeqCst),
    );
    mgmt.clear_faults();
    wait_until("leading again", Duration::from_secs(20), || {
        standby.leading.load(Ordering::SeqCst)
    });
}

#[test]
fn a_watched_cacerts_that_disappears_is_restored_at_once() {
    let server = TestApiServer::start(&["cluster1", "cluster2"]);
    let s = Setup::with_config(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[daemon]
listen = "127.0.0.1:0"
interval = "1h"

[[clusters]]
name = "cluster1"
role = "primary"
target = { kind = "kube", kubeconfig = "kube/cluster1.yaml" }

[[clusters]]
name = "cluster2"
role = "primary"
target = { kind = "kube", kubeconfig = "kube/cluster2.yaml" }
"#,
    );
    std::fs::create_dir(s.path("kube")).unwrap();
    // With exactly the shipped least-privilege RBAC: it must allow the watch.
    for name in ["cluster1", "cluster2"] {
        let c = server.cluster(name);
        c.add_token(
            "least",
            "system:serviceaccount:cacertd:cacertd",
            common::kube::manifest_rules(),
        );
        std::fs::write(s.path(&format!("kube/{name}.yaml")), c.kubeconfig("least")).unwrap();
    }
    s.cacertd(&["root", "init"]).ok();
    let config = Config::load(&s.path("cacertd.toml")).unwrap();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let d = Daemon::new(config, Arc::new(SystemClock));
        rt.block_on(d.run(async {
            let _ = stop_rx.await;
        }))
        .unwrap();
    });
    let c2 = server.cluster("cluster2");
    let cacerts =
        |c: &cacertd_test_apiserver::FakeCluster| c.get("secrets", "istio-system", "cacerts");
    wait_until("first pass", Duration::from_secs(30), || {
        cacerts(server.cluster("cluster1")).is_some() && cacerts(c2).is_some()
    });
    std::thread::sleep(Duration::from_millis(500));
    c2.delete("secrets", "istio-system", "cacerts");
    // The interval is an hour: only the watch can bring it back this soon.
    wait_until(
        "cacerts restored by the watch",
        Duration::from_secs(20),
        || cacerts(c2).is_some(),
    );
    stop_tx.send(()).unwrap();
    thread.join().unwrap();
    for c in [server.cluster("cluster1"), c2] {
        let reqs = c.requests();
        assert!(reqs.iter().all(|r| r.status != 403), "{reqs:#?}");
        assert!(
            reqs.iter().any(|r| r.query.contains("watch=true")),
            "{reqs:#?}"
        );
    }
}
