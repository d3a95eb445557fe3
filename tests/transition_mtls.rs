//! The phase machine's material keeps mTLS working at every step of a transition. After each
//! single write of the machine, the cluster just written has live workloads of two generations
//! — restarted ones holding the material it serves now, the rest still holding what it served
//! before — while every other cluster has settled on what it serves; every pair of these
//! workloads, across every pair of clusters that trusted each other before, must complete a
//! real mutual-TLS handshake (signed the way that cluster's istiod would sign with the material
//! then in its cacerts, each side trusting only its own root-cert.pem). Once done, every pair
//! of clusters must.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use cacertd::pki::{
    CaCertsFiles, IntermediateSpec, KeyAlgorithm, RootCa, RootSpec, Subject, TrustBundle,
    generate_root, issue_intermediate,
};
use cacertd::transition::{
    ClusterMaterial, MaterialOf, Options, Phase, Record, Step, StepOutcome, TransitionKind,
    from_self_signed, material, next_step,
};
use common::mtls::{handshake, workload};
use time::OffsetDateTime;
use zeroize::Zeroizing;

fn root(cn: &str) -> RootCa {
    let spec = RootSpec {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::from_secs(10 * 365 * 86_400),
        subject: Subject {
            common_name: cn.to_string(),
            ..Subject::istio_root()
        },
    };
    generate_root(&spec, OffsetDateTime::now_utc()).unwrap()
}

fn intermediate(root: &RootCa, cluster: &str) -> CaCertsFiles {
    let spec = IntermediateSpec {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::from_secs(365 * 86_400),
        path_len: 0,
        subject: Subject::istio_intermediate(cluster),
        dns_names: vec![],
    };
    let ica = issue_intermediate(root, &spec, OffsetDateTime::now_utc()).unwrap();
    CaCertsFiles::for_intermediate(&ica, &[], root.cert(), &TrustBundle::single(root.cert()))
}

/// istiod's `istio-ca-secret`: its self-signed certificate and key, an empty cert-chain.pem.
fn istio_ca_secret(cluster: &str) -> CaCertsFiles {
    let r = root(&format!("{cluster}.cluster.local self-signed"));
    CaCertsFiles {
        ca_cert: r.cert_pem().into_bytes(),
        ca_key: Zeroizing::new(r.key().to_pem().as_bytes().to_vec()),
        root_cert: r.cert_pem().into_bytes(),
        cert_chain: Vec::new(),
        ca_crl: Vec::new(),
    }
}

fn write(dir: &Path, files: &CaCertsFiles) {
    std::fs::create_dir_all(dir).unwrap();
    for (name, bytes) in files.entries() {
        std::fs::write(dir.join(name), bytes).unwrap();
    }
}

/// One mesh under transition: each primary's material, and which cluster each remote follows.
struct Mesh {
    primaries: BTreeMap<String, ClusterMaterial>,
    remotes: BTreeMap<String, String>,
    dir: tempfile::TempDir,
}

impl Mesh {
    /// Every cluster (primaries and remotes) with the primary whose istiod signs for it.
    fn clusters(&self) -> Vec<(String, String)> {
        let mut all: Vec<(String, String)> = self
            .primaries
            .keys()
            .map(|p| (p.clone(), p.clone()))
            .collect();
        all.extend(self.remotes.iter().map(|(r, p)| (r.clone(), p.clone())));
        all
    }

    /// Writes the cacerts `primary` serves for `of` to a folder and returns it.
    fn served(&self, primary: &str, of: MaterialOf, label: &str) -> PathBuf {
        let dir = self.dir.path().join(format!("{primary}-{label}"));
        write(&dir, &material(&self.primaries[primary], of).unwrap());
        dir
    }

    /// Handshakes between every live generation of every pair in `pairs`, both ways.
    fn check(&self, served: &BTreeMap<String, Vec<PathBuf>>, pairs: &[(String, String)], at: &str) {
        let clusters = self.clusters();
        for (a, b) in pairs {
            let pa = &clusters.iter().find(|(c, _)| c == a).unwrap().1;
            let pb = &clusters.iter().find(|(c, _)| c == b).unwrap().1;
            for ga in &served[pa] {
                for gb in &served[pb] {
                    handshake(workload(ga), workload(gb)).unwrap_or_else(|e| {
                        panic!("{at}: {b} ({gb:?}) → {a} ({ga:?}) failed: {e}")
                    });
                    handshake(workload(gb), workload(ga)).unwrap_or_else(|e| {
                        panic!("{at}: {a} ({ga:?}) → {b} ({gb:?}) failed: {e}")
                    });
                }
            }
        }
    }

    /// Runs the machine to Done; after every write checks `before_pairs` across the two live
    /// generations, and at the end checks every pair.
    fn transition(&self, kind: TransitionKind, before_pairs: &[(String, String)]) {
        let options = Options {
            drain_seconds: 0,
            gate_timeout_seconds: 60,
            skip_workload_restarts: false,
            wait_for_renewal: false,
            approve_each_phase: false,
            exclude_namespaces: Vec::new(),
            max_parallel: 1,
            renewal_wait_seconds: None,
            list_propagation_seconds: None,
            emergency: false,
            lists_only: Vec::new(),
            directories: Default::default(),
        };
        let mut record = Record::new(kind, self.primaries.keys().cloned(), options);
        let mut serving: BTreeMap<String, MaterialOf> = self
            .primaries
            .keys()
            .map(|p| (p.clone(), MaterialOf::Original))
            .collect();
        let mut writes = 0;
        let now = OffsetDateTime::now_utc();
        loop {
            let step = next_step(&record, now);
            let outcome = match &step {
                Step::Write { cluster, material } => {
                    let previous = serving.insert(cluster.clone(), *material).unwrap();
                    writes += 1;
                    // The written cluster has both generations live; the others are settled
                    // (their restarts finished before this write) or, in the phase this write
                    // belongs to, were written earlier and have also restarted.
                    let served: BTreeMap<String, Vec<PathBuf>> = serving
                        .iter()
                        .map(|(p, of)| {
                            let mut gens = vec![self.served(p, *of, &format!("{writes}-now"))];
                            if p == cluster {
                                gens.push(self.served(p, previous, &format!("{writes}-before")));
                            }
                            (p.clone(), gens)
                        })
                        .collect();
                    self.check(
                        &served,
                        before_pairs,
                        &format!("write {writes} ({cluster} → {material:?})"),
                    );
                    StepOutcome::Written
                }
                Step::Restart { .. } => StepOutcome::Restarted,
                Step::CheckGate { .. } => StepOutcome::GateHeld,
                Step::Finished => break,
                other => panic!("unexpected step {other:?}"),
            };
            record.record(&step, outcome, now);
        }
        assert_eq!(record.phase, Phase::Done);
        assert_eq!(writes, 3 * self.primaries.len());
        let served: BTreeMap<String, Vec<PathBuf>> = serving
            .iter()
            .map(|(p, of)| (p.clone(), vec![self.served(p, *of, "done")]))
            .collect();
        let clusters = self.clusters();
        let mut all = Vec::new();
        for (i, (a, _)) in clusters.iter().enumerate() {
            for (b, _) in &clusters[i..] {
                all.push((a.clone(), b.clone()));
            }
        }
        self.check(&served, &all, "done");
        // Done: each primary serves exactly its new intermediate, trusting the new root only.
        for (p, m) in &self.primaries {
            assert_eq!(
                material(m, serving[p]).unwrap(),
                material(m, MaterialOf::Phase(Phase::Done)).unwrap()
            );
        }
    }
}

#[test]
fn migrating_two_self_signed_primaries_and_a_remote_keeps_mtls_at_every_step() {
    let common = root("common root");
    let mut primaries = BTreeMap::new();
    for p in ["east", "west"] {
        primaries.insert(
            p.to_string(),
            ClusterMaterial {
                original: from_self_signed(&istio_ca_secret(p)),
                new: intermediate(&common, p),
                lists_before: None,
            },
        );
    }
    let mesh = Mesh {
        primaries,
        remotes: BTreeMap::from([("east-remote".to_string(), "east".to_string())]),
        dir: tempfile::tempdir().unwrap(),
    };
    // Before: east and its remote trust each other (same self-signed root); west only itself.
    let before = [
        ("east", "east"),
        ("east", "east-remote"),
        ("east-remote", "east-remote"),
        ("west", "west"),
    ]
    .map(|(a, b)| (a.to_string(), b.to_string()));
    // Sanity: the two self-signed clusters do not trust each other to begin with.
    let e = mesh.served("east", MaterialOf::Original, "sanity");
    let w = mesh.served("west", MaterialOf::Original, "sanity");
    let err = handshake(workload(&e), workload(&w)).expect_err("two self-signed roots");
    assert_eq!(err, "client: invalid peer certificate: UnknownIssuer");
    mesh.transition(TransitionKind::Migrate, &before);
}

#[test]
fn rotating_the_common_root_keeps_mtls_between_all_clusters_at_every_step() {
    let (a, b) = (root("root A"), root("root B"));
    let mut primaries = BTreeMap::new();
    for p in ["east", "west"] {
        primaries.insert(
            p.to_string(),
            ClusterMaterial {
                original: intermediate(&a, p),
                new: intermediate(&b, p),
                lists_before: None,
            },
        );
    }
    let mesh = Mesh {
        primaries,
        remotes: BTreeMap::from([("west-remote".to_string(), "west".to_string())]),
        dir: tempfile::tempdir().unwrap(),
    };
    let clusters = mesh.clusters();
    let mut all = Vec::new();
    for (i, (x, _)) in clusters.iter().enumerate() {
        for (y, _) in &clusters[i..] {
            all.push((x.clone(), y.clone()));
        }
    }
    mesh.transition(TransitionKind::RotateRoot, &all);
}

#[test]
fn appending_the_new_root_keeps_the_old_bundle_bytes_verbatim() {
    let common = root("common root");
    let mut original = from_self_signed(&istio_ca_secret("east"));
    // A bundle as an operator might have written it: a comment line, CRLF line ends.
    let crlf = String::from_utf8(original.root_cert.clone())
        .unwrap()
        .replace('\n', "\r\n");
    original.root_cert = format!("# east's own root\r\n{crlf}").into_bytes();
    let m = ClusterMaterial {
        original: original.clone(),
        new: intermediate(&common, "east"),
        lists_before: None,
    };
    for of in [Phase::AddNewRoot, Phase::SwitchSigner] {
        let served = material(&m, MaterialOf::Phase(of)).unwrap();
        assert!(served.root_cert.starts_with(&original.root_cert), "{of}");
        assert!(
            served.root_cert.ends_with(common.cert_pem().as_bytes()),
            "{of}"
        );
    }
    assert_eq!(material(&m, MaterialOf::Original).unwrap(), original);
    // A self-signed cluster's empty cert-chain.pem becomes its certificate.
    let ss = from_self_signed(&istio_ca_secret("west"));
    assert_eq!(ss.cert_chain, ss.ca_cert);
}
