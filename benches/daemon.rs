//! Benchmark (`cargo bench --bench daemon`): the daemon's idle footprint with 50 clusters
//! configured (resident memory, CPU per hour extrapolated from a measured idle window), and
//! the time of one full reconciliation pass over 500 clusters (directory targets).

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use cacertd::clock::SystemClock;
use cacertd::config::Config;
use cacertd::daemon::Daemon;

fn config_text(clusters: usize, port: u16) -> String {
    let mut text = format!(
        "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n[daemon]\nlisten = \"127.0.0.1:{port}\"\n"
    );
    for i in 0..clusters {
        text.push_str(&format!(
            "\n[[clusters]]\nname = \"c{i}\"\nrole = \"primary\"\ntarget = {{ kind = \"dir\", path = \"out/c{i}\" }}\n"
        ));
    }
    text
}

/// (resident KiB, CPU ticks user+system) of a process.
fn usage(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let rss = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let fields: Vec<&str> = stat
        .rsplit_once(')')
        .map(|(_, r)| r.split_whitespace().collect())
        .unwrap_or_default();
    let ticks = fields
        .get(11)
        .and_then(|u| u.parse::<u64>().ok())
        .unwrap_or(0)
        + fields
            .get(12)
            .and_then(|s| s.parse::<u64>().ok())
            .unwrap_or(0);
    (rss, ticks)
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let idle_window = Duration::from_secs(if quick { 3 } else { 30 });

    // Idle footprint: `cacertd serve` with 50 clusters, after its first pass.
    let dir = tempfile::tempdir().unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    std::fs::write(dir.path().join("cacertd.toml"), config_text(50, port)).unwrap();
    let bin = env!("CARGO_BIN_EXE_cacertd");
    let init = std::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["-c", "cacertd.toml", "root", "init"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let mut child = std::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["-c", "cacertd.toml", "serve"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    while !dir.path().join("out/c49/cacerts.yaml").exists() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_secs(1));
    let (_, ticks_before) = usage(child.id());
    std::thread::sleep(idle_window);
    let (rss, ticks_after) = usage(child.id());
    let _ = std::process::Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let _ = child.wait();
    let hz = 100.0; // USER_HZ on Linux
    let cpu_per_hour =
        (ticks_after - ticks_before) as f64 / hz * 3600.0 / idle_window.as_secs_f64();
    println!(
        "cacertd serve, 50 clusters, idle after the first pass ({}s window):",
        idle_window.as_secs()
    );
    println!(
        "  resident memory   {:>7.1} MiB   (target < 30 MiB)",
        rss as f64 / 1024.0
    );
    println!("  CPU per hour      {:>7.2} s", cpu_per_hour);

    // One full pass over 500 clusters.
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("cacertd.toml"),
        config_text(if quick { 20 } else { 500 }, 0),
    )
    .unwrap();
    let init = std::process::Command::new(bin)
        .current_dir(dir.path())
        .args(["-c", "cacertd.toml", "root", "init"])
        .output()
        .unwrap();
    assert!(init.status.success());
    let config = Config::load(&dir.path().join("cacertd.toml")).unwrap();
    let n = config.topology.clusters().len();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let d = Daemon::new(config, Arc::new(SystemClock));
        assert!(d.try_lead().await);
        let start = Instant::now();
        let reports = d.tick().await;
        let first = start.elapsed();
        assert_eq!(reports.len(), n);
        println!("\nreconciliation pass, {n} clusters (directory targets, fsynced writes):");
        println!(
            "  first pass (issue all)  {:>7.2} s   (target < 5 s)",
            first.as_secs_f64()
        );
    });
}
