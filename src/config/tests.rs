use super::*;

/// The acceptance-check configuration, verbatim (shared with the integration tests).
const ACCEPTANCE: &str = include_str!("../../tests/data/acceptance.toml");

fn file() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("cacertd.toml")
}

fn parse(text: &str) -> Result<Config, ConfigError> {
    Config::parse(text, &file())
}

fn err(text: &str) -> String {
    parse(text).unwrap_err().to_string()
}

#[test]
fn a_vault_address_that_is_not_a_safe_url_is_refused_at_load() {
    for (address, why) in [
        ("not a url", "is not a URL"),
        ("HTTP://10.0.0.5:8200", "plain HTTP"),
    ] {
        let text = format!(
            "{ACCEPTANCE}\n[vault]\naddress = \"{address}\"\nauth = {{ method = \"token\" }}\n"
        );
        let e = err(&text);
        assert!(
            e.contains("vault.address") && e.contains(why),
            "{address}: {e}"
        );
    }
}

#[test]
fn the_acceptance_config_loads() {
    let c = parse(ACCEPTANCE).unwrap();
    assert_eq!(c.trust_domain, "cluster.local");
    assert_eq!(
        c.state_dir,
        Path::new(env!("CARGO_MANIFEST_DIR")).join("state")
    );
    let t = &c.topology;
    assert_eq!(
        t.primaries().map(|c| c.name.as_str()).collect::<Vec<_>>(),
        ["cluster1", "cluster2"]
    );
    assert_eq!(
        t.remotes_of("cluster1")
            .map(|c| c.name.as_str())
            .collect::<Vec<_>>(),
        ["cluster3"]
    );
    assert_eq!(t.remotes_of("cluster2").count(), 0);
    assert_eq!(t.networks(), ["network1", "network2"]);
    assert_eq!(
        t.get("cluster2").unwrap().target,
        Some(TargetConfig::Dir {
            path: Path::new(env!("CARGO_MANIFEST_DIR")).join("out/cluster2"),
            observe: None,
        })
    );
    assert_eq!(
        c.root,
        RootStoreConfig::File {
            dir: c.state_dir.join("root")
        }
    );
}

#[test]
fn a_remote_naming_an_unknown_primary_is_named_with_its_line() {
    let text = ACCEPTANCE.replace("primary = \"cluster1\"", "primary = \"cluster9\"");
    let e = err(&text);
    assert!(
        e.contains(":25: clusters[2].primary:") && e.contains("cluster9"),
        "{e}"
    );
}

#[test]
fn a_remote_naming_a_remote_is_refused() {
    let text = format!(
        "{ACCEPTANCE}\n[[clusters]]\nname = \"cluster4\"\nrole = \"remote\"\nprimary = \"cluster3\"\n"
    );
    assert!(err(&text).contains("is not a primary"), "{}", err(&text));
}

#[test]
fn duplicate_names_are_refused() {
    let text = ACCEPTANCE.replace("name = \"cluster2\"", "name = \"cluster1\"");
    let e = err(&text);
    assert!(
        e.contains(":17: clusters[1].name: duplicate cluster name \"cluster1\""),
        "{e}"
    );
}

#[test]
fn shape_errors_name_the_line() {
    let e = err(&ACCEPTANCE.replace("role = \"remote\"", "role = \"secondary\""));
    assert!(e.contains("line 24") && e.contains("secondary"), "{e}");
    let e = err(&ACCEPTANCE.replace("network = \"network2\"", "netwrk = \"network2\""));
    assert!(e.contains("netwrk") && e.contains("line 19"), "{e}");
    let e = err(&ACCEPTANCE.replace("store = \"file\"", "store = \"vault\""));
    assert!(e.contains("vault"), "{e}");
    let e = err(&ACCEPTANCE.replace("kind = \"dir\", path = \"out/cluster1\"", "kind = \"dir\""));
    assert!(e.contains("path"), "{e}");
    let e = err("trust_domain = \"x\"\n");
    assert!(e.contains("state_dir"), "{e}");
}

#[test]
fn primaries_need_a_target_and_distinct_directories() {
    let e = err(&ACCEPTANCE.replace("target = { kind = \"dir\", path = \"out/cluster2\" }\n", ""));
    assert!(
        e.contains("clusters[1].target") && e.contains("needs a target"),
        "{e}"
    );
    for clash in [
        "out/./cluster1",
        "out/x/../cluster1",
        "out/cluster1/sub",
        "out",
    ] {
        let e = err(&ACCEPTANCE.replace("out/cluster2", clash));
        assert!(e.contains("same or nested directories"), "{clash}: {e}");
    }
    // Names that only share a prefix are apart.
    for apart in ["out/cluster10", "out/cluster1.d", "out2/cluster1", "ou"] {
        let text = ACCEPTANCE.replace("out/cluster2", apart);
        assert!(parse(&text).is_ok(), "{apart}");
    }
    for clash in ["state/root", "state", "."] {
        let e = err(&ACCEPTANCE.replace("out/cluster2", clash));
        assert!(e.contains("overlaps state_dir"), "{clash}: {e}");
    }
}

/// The root store's folder and the audit log, wherever they are configured, and folders
/// reached through symlinks, are kept apart from the targets.
#[test]
fn targets_live_apart_from_the_root_the_audit_log_and_what_symlinks_reach() {
    let root_in_target = ACCEPTANCE.replace(
        "store = \"file\"\n",
        "store = \"file\"\ndir = \"out/cluster2/root\"\n",
    );
    let e = err(&root_in_target);
    assert!(e.contains("overlaps the root store"), "{e}");
    let audit_in_target =
        format!("{ACCEPTANCE}\n[daemon]\naudit_log = \"out/cluster1/audit.log\"\n");
    let e = err(&audit_in_target);
    assert!(e.contains("overlaps the audit log"), "{e}");

    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("state")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("state"), dir.path().join("link")).unwrap();
    let text = ACCEPTANCE
        .replace("policies_dir = \"policies\"\n", "")
        .replace("out/cluster2", "link/cluster2");
    let e = Config::parse(&text, &dir.path().join("cacertd.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overlaps state_dir") && e.contains("resolves to"),
        "{e}"
    );
    // A symlink to a folder of its own is fine.
    std::fs::create_dir_all(dir.path().join("elsewhere")).unwrap();
    std::fs::remove_file(dir.path().join("link")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("elsewhere"), dir.path().join("link")).unwrap();
    Config::parse(&text, &dir.path().join("cacertd.toml")).unwrap();

    // A target folder that is itself a symlink into state_dir, beside a sibling that is not
    // (their parent folder is resolved once, for both).
    let own = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(own.path().join("state/inside")).unwrap();
    std::fs::create_dir_all(own.path().join("out/cluster1")).unwrap();
    std::os::unix::fs::symlink(
        own.path().join("state/inside"),
        own.path().join("out/cluster2"),
    )
    .unwrap();
    let text = ACCEPTANCE.replace("policies_dir = \"policies\"\n", "");
    let e = Config::parse(&text, &own.path().join("cacertd.toml"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("overlaps state_dir") && e.contains("state/inside"),
        "{e}"
    );
}

#[test]
fn unknown_policies_are_named() {
    let e = err(&ACCEPTANCE.replace("policy = \"default\"", "policy = \"strict\""));
    assert!(
        e.contains(":5: policy:") && e.contains("strict") && e.contains("istio-compatible"),
        "{e}"
    );
    let text = ACCEPTANCE.replace(
        "network = \"network2\"",
        "network = \"network2\"\npolicy = \"istio-compatible\"",
    );
    let c = parse(&text).unwrap();
    assert_eq!(
        c.topology.get("cluster2").unwrap().policy,
        "istio-compatible"
    );
    assert_eq!(
        c.policy_for(c.topology.get("cluster2").unwrap()).name,
        "istio-compatible"
    );
}

#[test]
fn kube_targets_and_settings_parse() {
    let text = ACCEPTANCE.replace(
        "target = { kind = \"dir\", path = \"out/cluster2\" }",
        "target = { kind = \"kube\", kubeconfig = \"kc/c2.yaml\", context = \"c2\" }",
    ) + "\n[kubernetes]\ntimeout = \"2s\"\nconcurrency = 3\n";
    let c = parse(&text).unwrap();
    assert_eq!(
        c.topology.get("cluster2").unwrap().target,
        Some(TargetConfig::Kube {
            kubeconfig: Some(Path::new(env!("CARGO_MANIFEST_DIR")).join("kc/c2.yaml")),
            context: Some("c2".into()),
        })
    );
    assert_eq!(c.kubernetes.timeout, Duration::from_secs(2));
    assert_eq!(c.kubernetes.concurrency, 3);
    assert_eq!(c.kubernetes.retries, 3);
    let rs = text.replace(
        "target = { kind = \"dir\", path = \"out/cluster1\" }",
        "target = { kind = \"kube\", remote_secret_from = \"cluster2\" }",
    );
    let c = parse(&rs).unwrap();
    assert_eq!(
        c.topology.get("cluster1").unwrap().target,
        Some(TargetConfig::KubeRemoteSecret {
            source: "cluster2".into(),
            pin: Default::default(),
        })
    );
    let bad = rs.replace(
        "remote_secret_from = \"cluster2\"",
        "remote_secret_from = \"cluster3\"",
    );
    assert!(err(&bad).contains("remote_secret_from"), "{}", err(&bad));
    let e = err(&format!("{ACCEPTANCE}\n[kubernetes]\nconcurrency = 0\n"));
    assert!(e.contains("kubernetes.concurrency"), "{e}");
    let e = err(&format!("{ACCEPTANCE}\n[kubernetes]\ntimeout = \"soon\"\n"));
    assert!(e.contains("kubernetes.timeout"), "{e}");
}

#[test]
fn bad_names_and_trust_domains_are_refused() {
    assert!(
        err(&ACCEPTANCE.replace("\"cluster2\"", "\"../evil\""))
            .contains("not a valid cluster name")
    );
    assert!(
        err(&ACCEPTANCE.replace("\"cluster.local\"", "\"spiffe://x\"")).contains("trust_domain")
    );
}

#[test]
fn the_transition_record_follows_the_lease_unless_told() {
    let lease = "\n[daemon]\nlease = { namespace = \"mesh-ca\" }\n";
    let c = parse(ACCEPTANCE).unwrap();
    assert_eq!(c.transition.record, RecordLocation::StateDir);
    let c = parse(&format!("{ACCEPTANCE}{lease}")).unwrap();
    assert!(
        matches!(&c.transition.record, RecordLocation::Kubernetes { namespace, name, .. }
                if namespace == "mesh-ca" && name == "cacertd-transition"),
        "{:?}",
        c.transition.record
    );
    let c = parse(&format!(
        "{ACCEPTANCE}{lease}[transition]\nrecord = \"state_dir\"\nexclude_namespaces = [\"db\"]\n"
    ))
    .unwrap();
    assert_eq!(c.transition.record, RecordLocation::StateDir);
    assert_eq!(c.transition.exclude_namespaces, ["db"]);
    for (bad, field) in [
        ("record = \"kubernetes\"", "transition.record"),
        ("record = \"etcd\"", "transition.record"),
        ("record_secret = \"Not_A_Name\"", "transition.record_secret"),
        (
            "exclude_namespaces = [\"a/b\"]",
            "transition.exclude_namespaces",
        ),
        ("max_parallel = 0", "transition.max_parallel"),
    ] {
        let e = err(&format!("{ACCEPTANCE}\n[transition]\n{bad}\n"));
        assert!(e.contains(field), "{bad}: {e}");
    }
}

#[test]
fn without_policies_dir_the_built_in_policies_are_used() {
    let text = ACCEPTANCE.replace("policies_dir = \"policies\"\n", "");
    let c = Config::parse(&text, Path::new("/nonexistent/cacertd.toml")).unwrap();
    assert_eq!(c.root_policy().name, "default");
    let e = Config::parse(ACCEPTANCE, Path::new("/nonexistent/cacertd.toml"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("/nonexistent/policies"), "{e}");
}
