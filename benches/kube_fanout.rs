//! Benchmark (`cargo bench --bench kube_fanout`): `cacertd issue` fanning out to 200 simulated
//! clusters on the test apiserver — wall time and peak resident memory of the cacertd process.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cacertd_test_apiserver::TestApiServer;

fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

fn run(dir: &std::path::Path, args: &[&str]) -> (Duration, u64, String) {
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .current_dir(dir)
        .args(["-c", "cacertd.toml"])
        .args(args)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak = 0;
    // Sample the high-water mark until the process exits (VmHWM only grows).
    while child.try_wait().unwrap().is_none() {
        if let Some(kib) = peak_rss_kib(pid) {
            peak = peak.max(kib);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    (
        start.elapsed(),
        peak,
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 10 } else { 200 };
    let names: Vec<String> = (0..n).map(|i| format!("c{i}")).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    let server = TestApiServer::start(&refs);
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("kube")).unwrap();
    let mut config = String::from(
        "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n\n[kubernetes]\nconcurrency = 16\ndanger_insecure_transport = true\n",
    );
    for c in server.clusters() {
        std::fs::write(
            dir.path().join(format!("kube/{}.yaml", c.name)),
            c.kubeconfig(&c.admin_token()),
        )
        .unwrap();
        config.push_str(&format!(
            "\n[[clusters]]\nname = \"{0}\"\nrole = \"primary\"\ntarget = {{ kind = \"kube\", kubeconfig = \"kube/{0}.yaml\" }}\n",
            c.name
        ));
    }
    std::fs::write(dir.path().join("cacertd.toml"), config).unwrap();
    run(dir.path(), &["root", "init"]);

    println!(
        "cacertd issue, {n} Kubernetes clusters on the test apiserver (loopback HTTP, concurrency 16)\n"
    );
    let (t, rss, out) = run(dir.path(), &["issue"]);
    assert_eq!(out.matches(" issued ").count(), n, "{out}");
    println!(
        "  first issuance (create {n} Secrets)   {:>7.2} s   peak RSS {:>6.1} MiB",
        t.as_secs_f64(),
        rss as f64 / 1024.0
    );
    let (t, rss, out) = run(dir.path(), &["issue"]);
    assert_eq!(out.matches("unchanged").count(), n, "{out}");
    println!(
        "  re-run, nothing to do               {:>7.2} s   peak RSS {:>6.1} MiB",
        t.as_secs_f64(),
        rss as f64 / 1024.0
    );
    let (t, rss, _) = run(dir.path(), &["issue", "--force"]);
    println!(
        "  --force (backup + replace each)     {:>7.2} s   peak RSS {:>6.1} MiB",
        t.as_secs_f64(),
        rss as f64 / 1024.0
    );
    let requests: usize = server.clusters().iter().map(|c| c.requests().len()).sum();
    println!(
        "\n  API requests in all: {requests} ({:.1} per cluster)",
        requests as f64 / n as f64
    );
}
