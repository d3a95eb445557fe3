//! Benchmark (`cargo bench --bench vault_pki`): 100 intermediates issued through vault-pki
//! against the test Vault on loopback — per-issuance latency (p50, p99) and how much of it is
//! Vault's (HTTP round trip and signing) versus cacertd's own work (key, CSR, checks).

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::{Duration, Instant};

use cacertd::config::Config;
use cacertd::pki::{CaKey, intermediate_params_for_csr};
use cacertd::root_store::{RootSource, Signer};
use cacertd_test_apiserver::vault::TestVault;

fn pct(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

fn main() {
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    let quick = std::env::args().any(|a| a == "--quick");
    let n = if quick { 5 } else { 100 };
    let vault = TestVault::start();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("token"), "root-token").unwrap();
    let config_path = dir.path().join("cacertd.toml");
    std::fs::write(
        &config_path,
        format!(
            "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n[root]\nstore = \"vault-pki\"\n\
             [vault]\naddress = \"{}\"\nauth = {{ method = \"token\", token_file = \"token\" }}\n",
            vault.url()
        ),
    )
    .unwrap();
    let config = Config::load(&config_path).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let policy = config.root_policy();
    let spec = policy.intermediate_spec("bench", &config.trust_domain);
    let signer = rt.block_on(async {
        let source = RootSource::open(&config).await.unwrap();
        let root_spec = policy.root_spec(&config.trust_domain);
        source
            .as_vault_pki()
            .unwrap()
            .generate_root(&root_spec)
            .await
            .unwrap();
        source.signer().await.unwrap()
    });
    assert!(matches!(signer, Signer::Vault { .. }));
    let now = time::OffsetDateTime::now_utc();

    let mut total = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let int = rt.block_on(signer.issue(&spec, now)).unwrap();
        total.push(start.elapsed());
        std::hint::black_box(int);
    }
    // cacertd's own main cost: generating the intermediate's key (CSR and checks are µs).
    let mut local = Vec::with_capacity(n);
    for _ in 0..n {
        let start = Instant::now();
        let key = CaKey::generate(spec.key_algorithm).unwrap();
        let csr = intermediate_params_for_csr(&spec).unwrap();
        std::hint::black_box(csr);
        local.push(start.elapsed());
        std::hint::black_box(key);
    }
    total.sort();
    local.sort();
    let avg = |v: &[Duration]| v.iter().sum::<Duration>() / v.len() as u32;
    let (t, l) = (avg(&total), avg(&local));
    println!("vault-pki issuance, {n} intermediates, test Vault on loopback (plain HTTP)\n");
    println!(
        "  per issuance  p50 {:>8.2} ms   p99 {:>8.2} ms   mean {:>8.2} ms",
        pct(&total, 0.5).as_secs_f64() * 1e3,
        pct(&total, 0.99).as_secs_f64() * 1e3,
        t.as_secs_f64() * 1e3
    );
    println!(
        "  local key generation        mean {:>8.2} ms   ({:.0} % of an issuance)",
        l.as_secs_f64() * 1e3,
        100.0 * l.as_secs_f64() / t.as_secs_f64()
    );
    println!(
        "  Vault (round trip + signing) mean {:>8.2} ms   ({:.0} %)",
        (t - l.min(t)).as_secs_f64() * 1e3,
        100.0 * (1.0 - l.as_secs_f64() / t.as_secs_f64())
    );
}
