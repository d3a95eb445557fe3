use super::*;
use crate::pki::{RootSpec, generate_root, issue_intermediate};
use std::path::Path;
use time::macros::datetime;

const DAY: u64 = 86400;

fn default_policy() -> Policy {
    PolicySet::embedded()
        .unwrap()
        .get("default")
        .unwrap()
        .clone()
}

fn now() -> OffsetDateTime {
    datetime!(2026-01-01 00:00 UTC)
}

#[test]
fn shipped_policies_load_with_their_documented_values() {
    let set = PolicySet::embedded().unwrap();
    let d = set.get("default").unwrap();
    assert_eq!(d.root.key_algorithm, KeyAlgorithm::EcdsaP256);
    assert_eq!(d.intermediate.validity, Duration::from_secs(365 * DAY));
    assert_eq!(d.intermediate.path_len, 0);
    let i = set.get("istio-compatible").unwrap();
    assert_eq!(i.root.key_algorithm, KeyAlgorithm::Rsa4096);
    assert_eq!(i.intermediate.key_algorithm, KeyAlgorithm::Rsa4096);
    let err = set.get("nope").unwrap_err().to_string();
    assert!(err.contains("default, istio-compatible"), "{err}");
}

#[test]
fn the_repo_policies_match_the_embedded_ones() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("policies");
    let from_dir = PolicySet::load_dir(&dir).unwrap();
    let embedded = PolicySet::embedded().unwrap();
    for name in ["default", "istio-compatible"] {
        assert_eq!(from_dir.get(name).unwrap(), embedded.get(name).unwrap());
    }
}

#[test]
fn renewal_is_at_two_thirds_of_life_by_default() {
    let p = default_policy();
    let root = generate_root(&p.root_spec("cluster.local"), now()).unwrap();
    let int =
        issue_intermediate(&root, &p.intermediate_spec("c1", "cluster.local"), now()).unwrap();
    let info = int.cert.info();
    let at = p.renew_at(info);
    let life = (info.not_after - info.not_before).whole_seconds() as f64;
    let elapsed = (at - info.not_before).whole_seconds() as f64;
    assert!((elapsed / life - 0.666).abs() < 0.001, "{}", elapsed / life);
}

#[test]
fn renewal_by_duration_and_clamping() {
    let mut p = default_policy();
    p.intermediate.renew_before = RenewBefore::Duration(Duration::from_secs(30 * DAY));
    let info = CertInfo {
        serial: String::new(),
        subject: String::new(),
        issuer: String::new(),
        not_before: now(),
        not_after: now() + time::Duration::days(100),
        fingerprint_sha256: String::new(),
        is_ca: true,
        path_len: Some(0),
        key_algorithm: String::new(),
    };
    assert_eq!(p.renew_at(&info), now() + time::Duration::days(70));
    p.intermediate.renew_before = RenewBefore::Duration(Duration::from_secs(300 * DAY));
    assert_eq!(p.renew_at(&info), now());
}

#[test]
fn templates_render_cluster_and_trust_domain() {
    let t = SubjectTemplate {
        organization: Some("{trust_domain}".into()),
        organizational_unit: None,
        common_name: "Intermediate CA {cluster}".into(),
        locality: Some("{cluster}".into()),
        country: None,
        serial_number: None,
    };
    let s = t.render("east", "example.org");
    assert_eq!(s.organization.as_deref(), Some("example.org"));
    assert_eq!(s.common_name, "Intermediate CA east");
    assert_eq!(s.locality.as_deref(), Some("east"));
}

#[test]
fn issuance_outside_the_policy_is_refused_with_the_rule() {
    let mut p = default_policy();
    let root = generate_root(&p.root_spec("td"), now()).unwrap();
    p.clusters = vec!["prod-*".into()];
    let spec = p.intermediate_spec("dev-1", "td");
    let v = p.check_issuance("dev-1", &spec, root.cert()).unwrap_err();
    assert_eq!(v.rule, "clusters");
    assert!(v.to_string().contains("dev-1"));
    assert!(
        p.check_issuance(
            "prod-eu",
            &p.intermediate_spec("prod-eu", "td"),
            root.cert()
        )
        .is_ok()
    );

    let mut spec = p.intermediate_spec("prod-eu", "td");
    spec.path_len = 1;
    assert_eq!(
        p.check_issuance("prod-eu", &spec, root.cert())
            .unwrap_err()
            .rule,
        "intermediate.path_len"
    );
    let mut spec = p.intermediate_spec("prod-eu", "td");
    spec.validity = Duration::from_secs(400 * DAY);
    assert_eq!(
        p.check_issuance("prod-eu", &spec, root.cert())
            .unwrap_err()
            .rule,
        "intermediate.validity"
    );
    let mut spec = p.intermediate_spec("prod-eu", "td");
    spec.key_algorithm = KeyAlgorithm::EcdsaP384;
    assert_eq!(
        p.check_issuance("prod-eu", &spec, root.cert())
            .unwrap_err()
            .rule,
        "intermediate.key_algorithm"
    );
}

#[test]
fn a_root_with_a_disallowed_algorithm_is_refused() {
    let p = PolicySet::embedded()
        .unwrap()
        .get("istio-compatible")
        .unwrap()
        .clone();
    let spec = RootSpec {
        key_algorithm: KeyAlgorithm::EcdsaP256,
        validity: Duration::from_secs(3650 * DAY),
        subject: Subject::istio_root(),
    };
    let root = generate_root(&spec, now()).unwrap();
    let v = p.check_root(root.cert()).unwrap_err();
    assert_eq!(v.rule, "root.allowed_key_algorithms");
    assert!(v.detail.contains("ecdsa-p256"), "{v}");
}

#[test]
fn issued_certificates_are_checked_against_the_policy() {
    let p = default_policy();
    let root = generate_root(&p.root_spec("td"), now()).unwrap();
    let int = issue_intermediate(&root, &p.intermediate_spec("c", "td"), now()).unwrap();
    assert!(p.check_issued("c", &int.cert).is_ok());
    assert!(p.drift(&int.cert, "c", "td").is_none());
    assert!(p.drift(&int.cert, "other", "td").is_some());
    let mut spec = p.intermediate_spec("c", "td");
    spec.path_len = 1;
    let wide = issue_intermediate(&root, &spec, now()).unwrap();
    assert_eq!(
        p.check_issued("c", &wide.cert).unwrap_err().rule,
        "intermediate.path_len"
    );
    assert!(p.drift(&wide.cert, "c", "td").is_some());
}

#[test]
fn bad_policy_files_name_the_field() {
    let good = EMBEDDED[0].1;
    // (text replaced, replacement, what the error names)
    let cases = [
        (
            r#"validity = "365d""#,
            r#"validity = "forever""#,
            "intermediate.validity",
        ),
        (r#""33.4%""#, r#""140%""#, "intermediate.renew_before"),
        (r#""33.4%""#, r#""400d""#, "intermediate.renew_before"),
        (
            r#"validity = "365d""#,
            r#"validity = "4000d""#,
            "intermediate.validity",
        ),
        (r#"clusters = ["*"]"#, "clusters = []", "clusters"),
        (
            r#"validity = "3650d""#,
            r#"validity = "3000000d""#,
            "at most 100 years",
        ),
        (
            "key_algorithm = \"ecdsa-p256\"\nvalidity = \"3650d\"",
            "key_algorithm = \"ed25519\"\nvalidity = \"3650d\"",
            "ed25519",
        ),
        ("path_len = 0", "path_len = 0\ncolour = \"blue\"", "colour"),
    ];
    for (from, to, expect) in cases {
        let text = good.replace(from, to);
        assert_ne!(text, good, "{from} is in the embedded policy");
        let err = Policy::parse("x", &text, "policies/x.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("policies/x.toml") && err.contains(expect),
            "{expect}: {err}"
        );
    }
}

#[test]
fn glob_patterns() {
    assert!(glob_match("*", "anything"));
    assert!(glob_match("prod-*", "prod-eu"));
    assert!(!glob_match("prod-*", "dev-eu"));
    assert!(glob_match("*-eu", "prod-eu"));
    assert!(glob_match("a*b*c", "axxbyyc"));
    assert!(!glob_match("cluster1", "cluster10"));
}

#[test]
fn an_intermediate_renewed_with_less_life_left_than_a_workload_certificate_is_refused() {
    let good = EMBEDDED[0].1;
    for (validity, renew_before, ok) in [
        ("\"72h\"", "\"33.4%\"", true),  // 24h 2m left
        ("\"48h\"", "\"33.4%\"", false), // 16h left
        ("\"365d\"", "\"23h\"", false),
        ("\"365d\"", "\"24h\"", true),
    ] {
        let text = good
            .replace("validity = \"365d\"", &format!("validity = {validity}"))
            .replace(
                "renew_before = \"33.4%\"",
                &format!("renew_before = {renew_before}"),
            );
        let parsed = Policy::parse("p", &text, "p.toml");
        assert_eq!(parsed.is_ok(), ok, "{validity} {renew_before}: {parsed:?}");
        if let Err(e) = parsed {
            let e = e.to_string();
            assert!(
                e.contains("intermediate.renew_before") && e.contains("istio/istio#59768"),
                "{e}"
            );
        }
    }
}

#[test]
fn a_policy_may_say_the_mesh_gives_workloads_longer_certificates() {
    let good = EMBEDDED[0].1;
    let with = |ttl: &str, renew_before: &str| {
        let text = good
            .replace(
                "renew_before = \"33.4%\"",
                &format!("renew_before = {renew_before}\nworkload_cert_ttl = {ttl}"),
            )
            .to_string();
        Policy::parse("p", &text, "p.toml")
    };
    let week = with("\"7d\"", "\"30d\"").unwrap();
    assert_eq!(
        week.intermediate.workload_cert_ttl,
        Duration::from_secs(7 * DAY)
    );
    assert_eq!(
        default_policy().intermediate.workload_cert_ttl,
        WORKLOAD_CERT_TTL
    );
    let e = with("\"40d\"", "\"30d\"").unwrap_err().to_string();
    assert!(
        e.contains("intermediate.workload_cert_ttl") && e.contains("40d"),
        "{e}"
    );
    let e = with("\"a week\"", "\"30d\"").unwrap_err().to_string();
    assert!(
        e.contains("intermediate.workload_cert_ttl") && e.contains("a week"),
        "{e}"
    );
    assert!(with("\"1s\"", "\"30d\"").is_err());
}

#[test]
fn what_the_mesh_signs_is_held_to_the_renewal_point() {
    // One-year intermediates renewed with a third of their life left: about 122 days.
    let p = default_policy();
    let day = |n: u64| Duration::from_secs(n * DAY);
    assert!(
        p.check_workload_certs("c1", day(1), "istiod's default")
            .is_ok()
    );
    assert!(p.check_workload_certs("c1", day(120), "x").is_ok());
    let v = p
        .check_workload_certs("c1", day(125), "pod ns/web asks SECRET_TTL=3000h")
        .unwrap_err();
    let text = v.to_string();
    assert_eq!(v.cluster, "c1");
    assert!(
        text.contains("SECRET_TTL=3000h") && text.contains("125d") && text.contains("#59768"),
        "{text}"
    );
}
