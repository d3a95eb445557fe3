//! Benchmark (`cargo bench`): root generation, intermediate issuance and bundle validation per
//! key algorithm, and `issue` for 100 primaries end-to-end. Prints figures; asserts nothing —
//! timing targets belong here, not in tests, because the machines running tests are shared.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::time::{Duration, Instant};

use cacertd::config::Config;
use cacertd::issuance;
use cacertd::pki::{
    CaCertsFiles, ISTIOD_SAN, IntermediateSpec, KeyAlgorithm, RootSpec, Subject, TrustBundle,
    generate_root, issue_intermediate, verify_cacerts,
};
use cacertd::plan::PlanOptions;

fn per_op(total: Duration, n: u32) -> String {
    let us = total.as_secs_f64() * 1e6 / f64::from(n);
    if us >= 1000.0 {
        format!("{:>10.2} ms", us / 1000.0)
    } else {
        format!("{us:>10.1} µs")
    }
}

fn time<T>(n: u32, mut f: impl FnMut() -> T) -> Duration {
    let start = Instant::now();
    for _ in 0..n {
        std::hint::black_box(f());
    }
    start.elapsed()
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    // `cargo bench` passes --bench; `cargo test --benches` passes nothing we need.
    let quick = std::env::args().any(|a| a == "--quick");
    let now = time::OffsetDateTime::now_utc();

    println!("cacertd issuance benchmark (one core, wall time per operation)\n");
    println!(
        "{:<12} {:>13} {:>13} {:>13}",
        "algorithm", "root gen", "issue", "validate"
    );
    for alg in KeyAlgorithm::ALL {
        let rsa_big = matches!(alg, KeyAlgorithm::Rsa3072 | KeyAlgorithm::Rsa4096);
        let n: u32 = match (quick, rsa_big, alg) {
            (true, _, _) => 2,
            (_, true, _) => 5,
            (_, _, KeyAlgorithm::Rsa2048) => 20,
            _ => 500,
        };
        let spec = RootSpec {
            key_algorithm: alg,
            validity: Duration::from_secs(3650 * 86400),
            subject: Subject::istio_root(),
        };
        let root_time = time(n, || generate_root(&spec, now).unwrap());
        let root = generate_root(&spec, now).unwrap();
        let ispec = IntermediateSpec {
            key_algorithm: alg,
            validity: Duration::from_secs(365 * 86400),
            path_len: 0,
            subject: Subject::istio_intermediate("bench"),
            dns_names: vec![ISTIOD_SAN.to_string()],
        };
        let issue_time = time(n, || issue_intermediate(&root, &ispec, now).unwrap());
        let int = issue_intermediate(&root, &ispec, now).unwrap();
        let files = CaCertsFiles::for_intermediate(
            &int,
            &[],
            root.cert(),
            &TrustBundle::single(root.cert()),
        );
        let vn = if quick { 2 } else { 500 };
        let validate_time = time(vn, || verify_cacerts(&files, now).unwrap());
        println!(
            "{:<12} {} {} {}",
            alg.name(),
            per_op(root_time, n),
            per_op(issue_time, n),
            per_op(validate_time, vn)
        );
    }

    let clusters = if quick { 5 } else { 100 };
    let tmp = tempfile::tempdir().unwrap();
    let config_path = write_config(tmp.path(), clusters);
    let config = Config::load(&config_path).unwrap();
    let root = generate_root(&config.root_policy().root_spec(&config.trust_domain), now).unwrap();
    cacertd::root_store::FileRootStore::new(config.state_dir.join("root"))
        .create(&root)
        .unwrap();
    let primaries: Vec<_> = config.topology.primaries().collect();

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let signer = cacertd::root_store::Signer::Local(root);
    let audit = cacertd::audit::Audit::new(config.daemon.audit_log.clone());
    let run = |opts| {
        rt.block_on(issuance::run(
            &config, &signer, &audit, &primaries, opts, false, now,
        ))
    };
    let start = Instant::now();
    let reports = run(PlanOptions::default());
    let first = start.elapsed();
    assert!(
        reports
            .iter()
            .all(|r| r.outcome == issuance::Outcome::Issued)
    );
    let start = Instant::now();
    let reports = run(PlanOptions::default());
    let idle = start.elapsed();
    assert!(reports.iter().all(|r| r.outcome == issuance::Outcome::Kept));
    let start = Instant::now();
    run(PlanOptions {
        force: true,
        ..Default::default()
    });
    let forced = start.elapsed();
    println!("\nissue, {clusters} primaries, directory targets (fsync'd writes):");
    println!(
        "  first issuance          {:>8.1} ms",
        first.as_secs_f64() * 1e3
    );
    println!(
        "  re-run, nothing to do   {:>8.1} ms",
        idle.as_secs_f64() * 1e3
    );
    println!(
        "  --force (with backups)  {:>8.1} ms",
        forced.as_secs_f64() * 1e3
    );

    let start = Instant::now();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .arg("-c")
        .arg(&config_path)
        .args(["issue", "--force", "-o", "json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    println!(
        "  `cacertd issue --force` process, end to end: {:.1} ms",
        start.elapsed().as_secs_f64() * 1e3
    );
}

fn write_config(dir: &Path, clusters: usize) -> std::path::PathBuf {
    let mut text = String::from("trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n");
    for i in 0..clusters {
        text.push_str(&format!(
            "\n[[clusters]]\nname = \"c{i}\"\nrole = \"primary\"\ntarget = {{ kind = \"dir\", path = \"out/c{i}\" }}\n"
        ));
    }
    let path = dir.join("cacertd.toml");
    std::fs::write(&path, text).unwrap();
    path
}
