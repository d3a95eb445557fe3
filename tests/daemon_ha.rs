//! Two `cacertd serve` replicas contending for a Kubernetes Lease in a management cluster of
//! the test apiserver: only the holder of an unexpired Lease ever writes; when the leader dies
//! without a word (its runtime is torn down, as a killed process would be), the standby takes
//! over once the dead leader's Lease has expired and finishes the work — and nothing is issued
//! twice. Every claim is checked against the Lease's own versions (holder, renew time,
//! duration) and the times the test apiserver answered each write.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use cacertd::clock::SystemClock;
use cacertd::config::Config;
use cacertd::daemon::Daemon;
use cacertd_test_apiserver::{FakeCluster, FaultAction, Rule, TestApiServer, Value};
use common::Setup;

struct Replica {
    stop: Arc<AtomicU8>,
    leading: Arc<AtomicBool>,
    /// Passes of the loop so far (each a leadership check and, when leading, a tick).
    passes: Arc<AtomicU64>,
    /// When this replica started or stopped acting, in order.
    changes: Arc<Mutex<Vec<(SystemTime, bool)>>>,
    identity: Arc<Mutex<Option<String>>>,
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
        let passes = Arc::new(AtomicU64::new(0));
        let changes = Arc::new(Mutex::new(Vec::new()));
        let identity = Arc::new(Mutex::new(None));
        let (s, l, p, c, i) = (
            stop.clone(),
            leading.clone(),
            passes.clone(),
            changes.clone(),
            identity.clone(),
        );
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
                    if lead != l.swap(lead, Ordering::SeqCst) {
                        c.lock().unwrap().push((SystemTime::now(), lead));
                    }
                    if i.lock().unwrap().is_none() {
                        *i.lock().unwrap() = d.lease_identity().await;
                    }
                    if lead {
                        d.tick().await;
                    }
                    p.fetch_add(1, Ordering::SeqCst);
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
            passes,
            changes,
            identity,
            thread: Some(thread),
        }
    }

    fn leads(&self) -> bool {
        self.leading.load(Ordering::SeqCst)
    }

    fn identity(&self) -> String {
        wait_until("contending for the Lease", Duration::from_secs(60), || {
            self.identity.lock().unwrap().is_some()
        });
        self.identity.lock().unwrap().clone().unwrap_or_default()
    }

    /// Waits until this replica has run two more passes: one may have begun before the call.
    fn two_more_passes(&self) {
        let from = self.passes.load(Ordering::SeqCst);
        wait_until("two more passes", Duration::from_secs(60), || {
            self.passes.load(Ordering::SeqCst) >= from + 2
        });
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
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// One version of the Lease: who held it and until when.
#[derive(Debug)]
struct LeaseVersion {
    holder: Option<String>,
    acquired: Option<SystemTime>,
    renewed: SystemTime,
    expires: SystemTime,
    transitions: i64,
}

fn lease_versions(mgmt: &FakeCluster) -> Vec<LeaseVersion> {
    let micro = |v: &Value| -> Option<SystemTime> {
        let t = time::OffsetDateTime::parse(
            v.as_str()?,
            &time::format_description::well_known::Rfc3339,
        )
        .ok()?;
        Some(SystemTime::UNIX_EPOCH + Duration::from_nanos(t.unix_timestamp_nanos() as u64))
    };
    mgmt.history("leases", "cacertd", "cacertd-leader")
        .iter()
        .filter_map(|l| {
            let spec = &l["spec"];
            let renewed = micro(&spec["renewTime"])?;
            Some(LeaseVersion {
                holder: spec["holderIdentity"].as_str().map(str::to_string),
                acquired: micro(&spec["acquireTime"]),
                renewed,
                expires: renewed
                    + Duration::from_secs(spec["leaseDurationSeconds"].as_u64().unwrap_or(0)),
                transitions: spec["leaseTransitions"].as_i64().unwrap_or(0),
            })
        })
        .collect()
}

const HA_CONFIG: &str = r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[kubernetes]
# The test apiserver speaks plain HTTP on loopback.
danger_insecure_transport = true

[daemon]
listen = "127.0.0.1:0"
interval = "1h"
lease = { kubeconfig = "KUBE/mgmt.yaml", namespace = "cacertd", name = "cacertd-leader", duration = "3s", grace = "1s" }

[[clusters]]
name = "cluster1"
role = "primary"
target = { kind = "kube", kubeconfig = "KUBE/cluster1.yaml" }

[[clusters]]
name = "cluster2"
role = "primary"
target = { kind = "kube", kubeconfig = "KUBE/cluster2.yaml" }
"#;

#[test]
fn only_the_leader_writes_and_a_standby_takes_over_when_it_dies() {
    let server = TestApiServer::start(&["mgmt", "cluster1", "cluster2"]);
    server.cluster("mgmt").namespace("cacertd", &[]);
    // Each replica reaches every cluster as a user of its own, so that the test apiserver
    // tells whose every write was.
    let s = Setup::with_config(&HA_CONFIG.replace("KUBE", "kube-a"));
    for replica in ["a", "b"] {
        let dir = format!("kube-{replica}");
        std::fs::create_dir(s.path(&dir)).unwrap();
        for name in ["mgmt", "cluster1", "cluster2"] {
            let c = server.cluster(name);
            c.add_token(replica, replica, vec![Rule::admin()]);
            std::fs::write(s.path(&format!("{dir}/{name}.yaml")), c.kubeconfig(replica)).unwrap();
        }
        std::fs::write(
            s.path(&format!("cacertd-{replica}.toml")),
            HA_CONFIG.replace("KUBE", &dir),
        )
        .unwrap();
    }
    s.cacertd(&["root", "init"]).ok();
    let mut a = Replica::start(&s.path("cacertd-a.toml"));
    let mut b = Replica::start(&s.path("cacertd-b.toml"));
    let (mgmt, c1, c2) = (
        server.cluster("mgmt"),
        server.cluster("cluster1"),
        server.cluster("cluster2"),
    );
    let cacerts = |c: &FakeCluster| c.get("secrets", "istio-system", "cacerts");
    wait_until("both clusters issued", Duration::from_secs(60), || {
        cacerts(c1).is_some() && cacerts(c2).is_some()
    });
    // (A leader also stands aside for a pass when its Lease is close to expiry, so there can
    // be a moment with none.)
    wait_until("exactly one leader", Duration::from_secs(60), || {
        a.leads() ^ b.leads()
    });
    let ids = (a.identity(), b.identity());
    let (leader, standby) = if a.leads() {
        (&mut a, &mut b)
    } else {
        (&mut b, &mut a)
    };
    let writes = |c: &FakeCluster| {
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
    let dead = leader.identity();
    leader.end(KILL);
    c2.delete("secrets", "istio-system", "cacerts");
    wait_until("the standby to take over", Duration::from_secs(60), || {
        standby.leads()
    });
    let heir = standby.identity();
    assert_ne!(dead, heir);
    let versions = lease_versions(mgmt);
    let last_dead = versions
        .iter()
        .rposition(|v| v.holder.as_deref() == Some(&dead))
        .expect("the dead leader held the Lease");
    let taken = versions[last_dead..]
        .iter()
        .find(|v| v.holder.as_deref() == Some(&heir))
        .expect("the standby took the Lease");
    assert!(
        taken.acquired.expect("acquireTime set on takeover") >= versions[last_dead].expires,
        "taken before the dead leader's Lease expired: {versions:#?}"
    );
    // The change of holder is counted in the Lease.
    let heir_transitions = versions
        .iter()
        .filter(|v| v.holder.as_deref() == Some(&heir))
        .map(|v| v.transitions)
        .max();
    assert!(
        heir_transitions > Some(versions[last_dead].transitions),
        "{versions:#?}"
    );
    wait_until("cluster2 repaired", Duration::from_secs(60), || {
        cacerts(c2).is_some()
    });
    // A full pass after the repair: nothing more is written.
    standby.two_more_passes();
    assert_eq!(writes(c1), 1, "cluster1 never issued twice");
    assert_eq!(
        writes(c2),
        2,
        "cluster2 issued again only after losing its cacerts"
    );
    let lease = mgmt
        .get("leases", "cacertd", "cacertd-leader")
        .expect("the Lease exists");
    assert_eq!(lease["spec"]["holderIdentity"], heir.as_str(), "{lease}");

    // Never two leaders: every write to a target cluster was made by the replica that held an
    // unexpired Lease at that moment.
    let versions = lease_versions(mgmt);
    for c in [c1, c2] {
        for w in c
            .requests()
            .iter()
            .filter(|r| r.method != "GET" && r.status < 300)
        {
            let id = match w.user.as_str() {
                "a" => &ids.0,
                "b" => &ids.1,
                other => panic!("a write by {other:?}"),
            };
            assert!(
                versions
                    .iter()
                    .any(|v| v.holder.as_deref() == Some(id.as_str())
                        && v.renewed <= w.at
                        && w.at < v.expires),
                "{} {} by {} at {:?} outside its Lease: {versions:#?}",
                w.method,
                w.path,
                w.user,
                w.at
            );
        }
    }

    // The new leader is cut off from the management cluster: it stops acting before its
    // Lease could be taken; once it reaches the Lease again, it leads again.
    mgmt.inject(FaultAction::Status(503), 1_000_000, false);
    let cut_at = SystemTime::now();
    wait_until(
        "the cut-off leader to stop acting",
        Duration::from_secs(60),
        || !standby.leads(),
    );
    let stopped = standby
        .changes
        .lock()
        .unwrap()
        .iter()
        .rev()
        .find(|(_, leading)| !leading)
        .map(|(at, _)| *at)
        .expect("a change to not leading");
    let versions = lease_versions(mgmt);
    let last = versions.last().expect("a Lease version");
    assert_eq!(last.holder.as_deref(), Some(heir.as_str()));
    assert!(last.renewed <= cut_at);
    assert!(
        stopped < last.expires,
        "still acting when its Lease expired: stopped at {stopped:?}, {last:#?}"
    );
    mgmt.clear_faults();
    wait_until("leading again", Duration::from_secs(60), || standby.leads());
}

#[test]
fn a_watched_cacerts_that_disappears_is_restored_at_once() {
    let server = TestApiServer::start(&["cluster1", "cluster2"]);
    let s = Setup::with_config(
        r#"trust_domain = "cluster.local"
state_dir = "state"
policies_dir = "policies"

[kubernetes]
# The test apiserver speaks plain HTTP on loopback.
danger_insecure_transport = true

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
        common::kube::grant_target_rbac(c, "least");
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
    let cacerts = |c: &FakeCluster| c.get("secrets", "istio-system", "cacerts");
    wait_until("first pass", Duration::from_secs(60), || {
        cacerts(server.cluster("cluster1")).is_some() && cacerts(c2).is_some()
    });
    wait_until(
        "the watch on cluster2's cacerts",
        Duration::from_secs(60),
        || c2.requests().iter().any(|r| r.query.contains("watch=true")),
    );
    c2.delete("secrets", "istio-system", "cacerts");
    // The interval is an hour: only the watch can bring it back this soon.
    wait_until(
        "cacerts restored by the watch",
        Duration::from_secs(60),
        || cacerts(c2).is_some(),
    );
    // The watch ends with 410 Expired (as after an etcd compaction) and cacerts disappears
    // before a new watch is open: a new watch replays nothing for a deleted object, so only
    // looking at the cluster again finds it gone.
    let watches = |c: &FakeCluster| {
        c.requests()
            .iter()
            .filter(|r| r.query.contains("watch=true"))
            .count()
    };
    // The watch saw cacertd's own write too; wait for the look that answers it, so that only
    // a re-opened watch can notice what follows.
    let written = c2
        .requests()
        .iter()
        .rev()
        .find(|r| r.method == "POST" && r.status == 201)
        .map(|r| r.seq)
        .expect("the restoring write");
    wait_until(
        "the look after cacertd's own write",
        Duration::from_secs(60),
        || {
            c2.requests()
                .iter()
                .any(|r| r.seq > written && r.path.ends_with("/secrets/cacerts") && r.status == 200)
        },
    );
    let before = watches(c2);
    c2.expire_watches();
    c2.delete("secrets", "istio-system", "cacerts");
    wait_until("a new watch", Duration::from_secs(60), || {
        watches(c2) > before
    });
    wait_until(
        "cacerts restored after the watch was re-opened",
        Duration::from_secs(60),
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

/// `cacertd serve` itself, twice, as the replicas of a Deployment would run it: the same service
/// account with exactly the shipped management and target-cluster RBAC. The leader, stopped
/// with SIGTERM, releases the Lease on its way out, so the standby takes over long before the
/// Lease would have expired — and nothing is written twice.
#[test]
fn serve_replicas_hand_over_the_lease_on_sigterm_with_the_shipped_rbac() {
    let server = TestApiServer::start(&["mgmt", "cluster1", "cluster2"]);
    let mgmt = server.cluster("mgmt");
    mgmt.namespace("cacertd", &[]);
    let config = HA_CONFIG.replace("KUBE", "kube").replace(
        "duration = \"3s\", grace = \"1s\"",
        "duration = \"20s\", grace = \"5s\"",
    );
    let s = Setup::with_config(&config);
    std::fs::create_dir(s.path("kube")).unwrap();
    common::kube::grant_management_rbac(mgmt, "sa");
    for name in ["cluster1", "cluster2"] {
        common::kube::grant_target_rbac(server.cluster(name), "sa");
    }
    for name in ["mgmt", "cluster1", "cluster2"] {
        let kubeconfig = server.cluster(name).kubeconfig("sa");
        std::fs::write(s.path(&format!("kube/{name}.yaml")), kubeconfig).unwrap();
    }
    s.cacertd(&["root", "init"]).ok();
    // Each replica's log lines arrive on a channel.
    let serve = |host: &str| {
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
            .current_dir(s.dir.path())
            .args(["-c", "cacertd.toml", "-v", "serve"])
            // The Lease identity starts with the host name, as a pod's does.
            .env("HOSTNAME", host)
            .env_remove("RUST_LOG")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            use std::io::BufRead;
            for line in std::io::BufReader::new(stderr)
                .lines()
                .map_while(Result::ok)
            {
                let _ = tx.send(line);
            }
        });
        (child, rx)
    };
    let logged = |rx: &std::sync::mpsc::Receiver<String>, what: &str| loop {
        let line = rx
            .recv_timeout(Duration::from_secs(60))
            .unwrap_or_else(|e| panic!("no log line with {what:?}: {e}"));
        if line.contains(what) {
            break;
        }
    };
    let (mut a, _a_log) = serve("replica-a");
    let (c1, c2) = (server.cluster("cluster1"), server.cluster("cluster2"));
    let cacerts = |c: &FakeCluster| c.get("secrets", "istio-system", "cacerts");
    wait_until("both clusters issued", Duration::from_secs(60), || {
        cacerts(c1).is_some() && cacerts(c2).is_some()
    });
    let (mut b, b_log) = serve("replica-b");
    let holder = || {
        mgmt.get("leases", "cacertd", "cacertd-leader")
            .and_then(|l| l["spec"]["holderIdentity"].as_str().map(str::to_string))
    };
    assert!(holder().is_some_and(|h| h.starts_with("replica-a-")));
    // b contends but does not lead.
    logged(&b_log, "contending for the leader Lease");
    assert!(holder().is_some_and(|h| h.starts_with("replica-a-")));

    std::process::Command::new("kill")
        .args(["-TERM", &a.id().to_string()])
        .status()
        .unwrap();
    let status = common::wait_within(&mut a, Duration::from_secs(60));
    assert!(status.success(), "{status:?}");
    let released_at = SystemTime::now();
    // b may already have taken the Lease by now: the write after a's last one must be a's
    // release (no holder), whatever came after it.
    let versions = mgmt.history("leases", "cacertd", "cacertd-leader");
    let held_by_a = |l: &Value| {
        l["spec"]["holderIdentity"]
            .as_str()
            .is_some_and(|h| h.starts_with("replica-a-"))
    };
    let a_last = versions
        .iter()
        .rposition(held_by_a)
        .expect("a held the Lease");
    assert!(
        versions
            .get(a_last + 1)
            .is_some_and(|l| l["spec"]["holderIdentity"].is_null()),
        "released on the way out: {versions:#?}"
    );
    let a_expires = lease_versions(mgmt)
        .iter()
        .filter(|v| {
            v.holder
                .as_deref()
                .is_some_and(|h| h.starts_with("replica-a-"))
        })
        .map(|v| v.expires)
        .max()
        .expect("a held the Lease");
    assert!(
        released_at < a_expires,
        "released before it would have expired"
    );
    wait_until("replica b takes over", Duration::from_secs(60), || {
        holder().is_some_and(|h| h.starts_with("replica-b-"))
    });
    let taken = lease_versions(mgmt)
        .into_iter()
        .find(|v| {
            v.holder
                .as_deref()
                .is_some_and(|h| h.starts_with("replica-b-"))
        })
        .expect("b holds the Lease");
    assert!(
        taken.acquired.expect("acquireTime") < a_expires,
        "b waited for the expiry instead of taking the released Lease"
    );

    // b acts: cluster2 loses its cacerts and gets it back; nothing else is written again.
    c2.delete("secrets", "istio-system", "cacerts");
    wait_until("cluster2 repaired by b", Duration::from_secs(60), || {
        cacerts(c2).is_some()
    });
    std::process::Command::new("kill")
        .args(["-TERM", &b.id().to_string()])
        .status()
        .unwrap();
    assert!(common::wait_within(&mut b, Duration::from_secs(60)).success());
    let cacerts_writes = |c: &FakeCluster| {
        c.requests()
            .iter()
            .filter(|r| r.status < 300 && r.method != "GET")
            .filter(|r| r.path.ends_with("/secrets") || r.path.ends_with("/secrets/cacerts"))
            .count()
    };
    assert_eq!(cacerts_writes(c1), 1, "{:#?}", c1.requests());
    assert_eq!(cacerts_writes(c2), 2, "{:#?}", c2.requests());
    for c in [mgmt, c1, c2] {
        let denied: Vec<_> = c
            .requests()
            .into_iter()
            .filter(|r| r.status == 403)
            .collect();
        assert!(denied.is_empty(), "{}: {denied:#?}", c.name);
    }
}
