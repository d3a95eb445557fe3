//! Benchmark (`cargo bench --bench issuance`): root + 100 intermediates against the OpenSSL
//! steps of Istio's `tools/certs` Makefile, beside what this disk alone needs to make the same
//! files durable; root generation, intermediate issuance and bundle validation per key
//! algorithm; `issue` for 100 primaries end-to-end; 5,000 primaries as a whole process (time
//! and peak memory). Prints figures; asserts nothing —
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

    // First, before the other runs create and delete thousands of files: ext4 then skips
    // recently deleted inodes one by one for a while, which slows every file created, the
    // OpenSSL script's as well as cacertd's.
    versus_istio_makefile(if quick { 5 } else { 100 });

    println!("\ncacertd issuance benchmark (one core, wall time per operation)\n");
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
        // Distinct sets: a signature already checked once is remembered, and validating the
        // same set again would time the memory, not the check.
        let vn: u32 = if quick { 2 } else { n.min(200) };
        let sets: Vec<CaCertsFiles> = (0..vn)
            .map(|_| {
                let int = issue_intermediate(&root, &ispec, now).unwrap();
                let bundle = TrustBundle::single(root.cert());
                CaCertsFiles::for_intermediate(&int, &[], root.cert(), &bundle)
            })
            .collect();
        let mut next = sets.iter();
        let validate_time = time(vn, || verify_cacerts(next.next().unwrap(), now).unwrap());
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

    let (took, _) = process(tmp.path(), &["issue", "--force", "-o", "json"]);
    println!(
        "  `cacertd issue --force` process, end to end: {:.1} ms",
        took.as_secs_f64() * 1e3
    );

    many_primaries(if quick { 50 } else { 5000 });
}

/// Runs `cacertd -c cacertd.toml ARGS` in `dir` as its own process: wall time and peak
/// resident memory (MiB). Output goes to a file, so a long table never blocks it.
fn process(dir: &Path, args: &[&str]) -> (Duration, f64) {
    let out = std::fs::File::create(dir.join("out.txt")).unwrap();
    let start = Instant::now();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .current_dir(dir)
        .args(["-c", "cacertd.toml"])
        .args(args)
        .stdout(out)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let mut peak_kib = 0u64;
    // VmHWM only grows: sample it until the process exits.
    while child.try_wait().unwrap().is_none() {
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
        let hwm = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok());
        peak_kib = peak_kib.max(hwm.unwrap_or(0));
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = start.elapsed();
    let done = child.wait_with_output().unwrap();
    assert!(
        done.status.success(),
        "cacertd {args:?}: {}",
        String::from_utf8_lossy(&done.stderr)
    );
    (took, peak_kib as f64 / 1024.0)
}

/// The OpenSSL steps of Istio's `tools/certs` Makefile (`Makefile.selfsigned.mk` and
/// `common.mk`): root key, CSR and self-signed certificate from `root-ca.conf`; per cluster
/// `intermediate.conf`, a key, a CSR, the certificate signed by the root, `cert-chain.pem`
/// and `root-cert.pem` — with ECDSA P-256 keys instead of RSA 4096, run as one shell script
/// (no `make` overhead, one shell for the config lines where make starts one per line),
/// against one `cacertd issue --init-root` process, for root + `n` intermediates. OpenSSL
/// writes without fsync; cacertd fsyncs every file.
fn versus_istio_makefile(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    let root_conf = "[ req ]\nencrypt_key = no\nprompt = no\nutf8 = yes\ndefault_md = sha256\n\
        req_extensions = req_ext\nx509_extensions = req_ext\ndistinguished_name = req_dn\n\
        [ req_ext ]\nsubjectKeyIdentifier = hash\nbasicConstraints = critical, CA:true\n\
        keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign\n\
        [ req_dn ]\nO = Istio\nCN = Root CA\n";
    std::fs::write(tmp.path().join("root-ca.conf"), root_conf).unwrap();
    let script = format!(
        r#"set -e
openssl ecparam -name prime256v1 -genkey -noout -out root-key.pem
openssl req -sha256 -new -key root-key.pem -config root-ca.conf -out root-cert.csr
openssl x509 -req -sha256 -days 3650 -signkey root-key.pem -extensions req_ext \
  -extfile root-ca.conf -in root-cert.csr -out root-cert.pem 2>/dev/null
for i in $(seq 1 {n}); do
  L=cluster$i
  mkdir -p $L
  {{
    echo "[ req ]"; echo "encrypt_key = no"; echo "prompt = no"; echo "utf8 = yes"
    echo "default_md = sha256"; echo "req_extensions = req_ext"
    echo "x509_extensions = req_ext"; echo "distinguished_name = req_dn"
    echo "[ req_ext ]"; echo "subjectKeyIdentifier = hash"
    echo "basicConstraints = critical, CA:true, pathlen:0"
    echo "keyUsage = critical, digitalSignature, nonRepudiation, keyEncipherment, keyCertSign"
    echo "subjectAltName=@san"; echo "[ san ]"; echo "DNS.1 = istiod.istio-system.svc"
    echo "[ req_dn ]"; echo "O = Istio"; echo "CN = Intermediate CA"; echo "L = $L"
  }} > $L/intermediate.conf
  openssl ecparam -name prime256v1 -genkey -noout -out $L/ca-key.pem
  openssl req -sha256 -new -config $L/intermediate.conf -key $L/ca-key.pem -out $L/cluster-ca.csr
  openssl x509 -req -sha256 -days 730 -CA root-cert.pem -CAkey root-key.pem -CAcreateserial \
    -extensions req_ext -extfile $L/intermediate.conf -in $L/cluster-ca.csr \
    -out $L/ca-cert.pem 2>/dev/null
  cat $L/ca-cert.pem root-cert.pem > $L/cert-chain.pem
  cp root-cert.pem $L/root-cert.pem
done
"#
    );
    let start = Instant::now();
    let out = std::process::Command::new("bash")
        .current_dir(tmp.path())
        .args(["-c", &script])
        .output()
        .unwrap();
    let openssl = start.elapsed();
    if !out.status.success() {
        println!(
            "\nIstio Makefile steps could not run (is openssl installed?): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return;
    }
    let ours = tempfile::tempdir().unwrap();
    write_config(ours.path(), n);
    let (cacertd, _) = process(ours.path(), &["issue", "--init-root"]);
    let floor = durable_files_alone(n);
    println!("root + {n} ECDSA P-256 intermediates, whole processes:");
    println!(
        "  Istio tools/certs Makefile steps (OpenSSL)  {:>8.1} ms",
        openssl.as_secs_f64() * 1e3
    );
    println!(
        "  cacertd issue --init-root (fsynced)         {:>8.1} ms   ({:.0}x faster)",
        cacertd.as_secs_f64() * 1e3,
        openssl.as_secs_f64() / cacertd.as_secs_f64()
    );
    println!(
        "  of which this disk's floor: {} files and their {n} folders made durable, nothing else  {:>6.1} ms",
        n * 5,
        floor.as_secs_f64() * 1e3
    );
}

/// What making `n` clusters' files durable costs on this disk with no cacertd at all: `n`
/// folders of five small files, created, each fsynced (32 at once), then the folders and
/// their parent fsynced. No writer that fsyncs every file and folder can go below this.
fn durable_files_alone(n: usize) -> Duration {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let start = Instant::now();
    let mut files = Vec::new();
    let mut dirs = vec![tmp.path().to_path_buf()];
    for i in 0..n {
        let dir = tmp.path().join(format!("c{i}"));
        std::fs::create_dir(&dir).unwrap();
        for name in ["a", "b", "c", "d", "e"] {
            let mut f = std::fs::File::create(dir.join(name)).unwrap();
            f.write_all(&[b'x'; 700]).unwrap();
            files.push(f);
        }
        dirs.push(dir);
    }
    let chunk = files.len().div_ceil(32);
    std::thread::scope(|s| {
        for part in files.chunks(chunk) {
            s.spawn(move || part.iter().for_each(|f| f.sync_all().unwrap()));
        }
    });
    let chunk = dirs.len().div_ceil(32);
    std::thread::scope(|s| {
        for part in dirs.chunks(chunk) {
            s.spawn(move || {
                for d in part {
                    std::fs::File::open(d).unwrap().sync_all().unwrap();
                }
            });
        }
    });
    start.elapsed()
}

/// `n` primaries on directory targets, `cacertd issue` as a process: the first issuance,
/// then a run with nothing to do; wall time and peak resident memory.
fn many_primaries(n: usize) {
    let tmp = tempfile::tempdir().unwrap();
    write_config(tmp.path(), n);
    process(tmp.path(), &["root", "init"]);
    let (first, first_rss) = process(tmp.path(), &["issue"]);
    let (idle, idle_rss) = process(tmp.path(), &["issue"]);
    println!("\nissue, {n} primaries, directory targets, whole process:");
    println!(
        "  first issuance          {:>8.2} s   peak RSS {:>6.1} MiB",
        first.as_secs_f64(),
        first_rss
    );
    println!(
        "  re-run, nothing to do   {:>8.2} s   peak RSS {:>6.1} MiB",
        idle.as_secs_f64(),
        idle_rss
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
