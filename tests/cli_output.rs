//! What the command line prints, as a newcomer and a log collector meet it: no escape codes
//! where stderr is not a terminal, JSON log lines on request, `version`, shell completions,
//! durations as people write them, and errors that say how to fix them.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::Setup;

/// A setup whose root key file is readable by others: `issue` warns about it.
fn warning_setup() -> Setup {
    use std::os::unix::fs::PermissionsExt;
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    std::fs::set_permissions(
        s.path("state/root/root-key.pem"),
        std::fs::Permissions::from_mode(0o644),
    )
    .unwrap();
    s
}

#[test]
fn log_lines_carry_no_escape_codes_when_stderr_is_not_a_terminal() {
    let s = warning_setup();
    let run = s.cacertd(&["issue"]).ok();
    assert!(
        run.stderr.contains("root key file is readable"),
        "{}",
        run.stderr
    );
    assert!(!run.stderr.contains('\u{1b}'), "{:?}", run.stderr);
}

#[test]
fn log_lines_are_json_objects_on_request() {
    let s = warning_setup();
    let text = s.cacertd(&["issue", "--force"]).ok();
    assert!(
        !text.stderr.trim_start().starts_with('{'),
        "{}",
        text.stderr
    );
    let config = std::fs::read_to_string(s.path("cacertd.toml")).unwrap();
    let with_json = Setup::with_config(&format!("{config}\n[daemon]\nlog_format = \"json\"\n"));
    with_json.cacertd(&["root", "init"]).ok();
    std::fs::set_permissions(
        with_json.path("state/root/root-key.pem"),
        std::os::unix::fs::PermissionsExt::from_mode(0o644),
    )
    .unwrap();
    for run in [
        s.cacertd(&["--log-format", "json", "issue", "--force"]),
        s.cacertd_env(&["issue", "--force"], &[("CACERTD_LOG_FORMAT", "json")]),
        with_json.cacertd(&["issue", "--force"]),
    ] {
        let run = run.ok();
        let lines: Vec<serde_json::Value> = run
            .stderr
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
            .collect();
        assert!(
            lines.iter().any(|l| l["level"] == "WARN"
                && l["message"]
                    .as_str()
                    .is_some_and(|m| m.contains("root key file is readable"))),
            "{}",
            run.stderr
        );
    }
    // The flag wins over the config; a bad value is named with its line.
    let run = with_json
        .cacertd(&["--log-format", "text", "issue", "--force"])
        .ok();
    assert!(!run.stderr.trim_start().starts_with('{'), "{}", run.stderr);
    let bad = Setup::with_config(&format!("{config}\n[daemon]\nlog_format = \"xml\"\n"));
    let run = bad.cacertd(&["status"]).fails_with(2);
    assert!(
        run.stderr.contains("daemon.log_format") && run.stderr.contains("\"xml\""),
        "{}",
        run.stderr
    );
}

#[test]
fn version_names_the_build() {
    let s = Setup::new();
    let run = s.cacertd(&["version"]).ok();
    assert!(
        run.stdout
            .contains(&format!("version: {}", env!("CARGO_PKG_VERSION")))
            && run.stdout.contains("rustc: rustc 1.")
            && run.stdout.contains("crypto_provider: aws-lc-rs"),
        "{}",
        run.stdout
    );
    let json: serde_json::Value =
        serde_json::from_str(&s.cacertd(&["version", "-o", "json"]).ok().stdout).unwrap();
    let commit = json["commit"].as_str().unwrap();
    assert!(!commit.is_empty(), "{json}");
    // It needs no configuration.
    std::fs::remove_file(s.path("cacertd.toml")).unwrap();
    s.cacertd(&["version"]).ok();
}

#[test]
fn shell_completions_are_generated_for_every_command() {
    let s = Setup::new();
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef cacertd"),
        ("fish", "complete -c cacertd"),
    ] {
        let run = s.cacertd(&["completion", shell]).ok();
        assert!(run.stdout.contains(marker), "{shell}: {}", run.stdout);
        assert!(
            run.stdout.contains("remove-root") && run.stdout.contains("rotate-root"),
            "{shell}"
        );
    }
    s.cacertd(&["completion", "powershell-9"]).fails_with(2);
}

#[test]
fn a_missing_config_says_where_cacertd_looks() {
    let s = Setup::new();
    std::fs::remove_file(s.path("cacertd.toml")).unwrap();
    let run = s.cacertd(&["status"]).fails_with(2);
    assert!(
        run.stderr.contains("cacertd.toml")
            && run.stderr.contains("-c FILE")
            && run.stderr.contains("CACERTD_CONFIG"),
        "{}",
        run.stderr
    );
}

/// Plans print durations as people write them, and a dry run with nothing to do succeeds.
#[test]
fn plans_say_24h_and_a_dry_run_with_nothing_to_do_succeeds() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let plan = s.cacertd(&["rotate-root", "plan"]).ok().stdout;
    assert!(plan.contains("drain 24h; each gate may wait"), "{plan}");
    let run = s.cacertd(&["migrate", "start", "--dry-run"]).ok();
    assert!(run.stdout.contains("nothing to do"), "{}", run.stdout);
    assert!(!s.path("state/transition").exists());
}

/// `check --connect` on folder targets: a folder that can be written (or made) passes; one
/// that cannot — its parent is a file — is named, exit 1.
#[test]
fn check_connect_names_a_folder_that_cannot_be_written() {
    let s = Setup::new();
    let run = s.cacertd(&["check", "--connect"]).ok();
    assert!(
        run.stdout.contains("cluster1: ok") && run.stdout.contains("cluster2: ok"),
        "{}",
        run.stdout
    );
    std::fs::write(s.path("out"), b"a file where a folder should be").unwrap();
    let run = s.cacertd(&["check", "--connect"]).fails_with(1);
    assert!(
        run.stdout.contains("is not a folder cacertd can write"),
        "{}",
        run.stdout
    );
    // The same in JSON: every cluster, and what each lacks.
    let run = s
        .cacertd(&["check", "--connect", "-o", "json"])
        .fails_with(1);
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    assert_eq!(v["clusters"].as_array().unwrap().len(), 3, "{v}");
    let connect = v["connect"].as_array().unwrap();
    let c1 = connect.iter().find(|c| c["cluster"] == "cluster1").unwrap();
    assert!(
        c1["missing"][0]
            .as_str()
            .unwrap()
            .contains("is not a folder cacertd can write"),
        "{v}"
    );
    let c3 = connect.iter().find(|c| c["cluster"] == "cluster3").unwrap();
    assert!(
        c3.get("missing").is_none(),
        "a remote without a target: {v}"
    );
    let plain = s.cacertd(&["check", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&plain.stdout).unwrap();
    assert!(
        v["connect"].is_null() && v["trust_domain"] == "cluster.local",
        "{v}"
    );
}

/// `status CLUSTER...` shows just those clusters; an unknown name is a usage error.
#[test]
fn status_shows_the_clusters_named() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let all = s.cacertd(&["status", "-o", "json"]).ok().stdout;
    let all: serde_json::Value = serde_json::from_str(&all).unwrap();
    assert_eq!(all["clusters"].as_array().unwrap().len(), 3);
    let some = s
        .cacertd(&["status", "cluster2", "cluster3", "-o", "json"])
        .ok()
        .stdout;
    let some: serde_json::Value = serde_json::from_str(&some).unwrap();
    let names: Vec<&str> = some["clusters"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["cluster2", "cluster3"]);
    let run = s.cacertd(&["status", "cluster9"]).fails_with(2);
    assert!(
        run.stderr.contains("unknown cluster \"cluster9\""),
        "{}",
        run.stderr
    );
}

/// `serve --listen ADDR` serves where it is told, whatever the configuration says.
#[test]
fn serve_listens_where_the_flag_says() {
    use std::io::{Read, Write};
    let s = Setup::new();
    s.cacertd(&["root", "init"]).ok();
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_cacertd"))
        .current_dir(s.dir.path())
        .args(["-c", "cacertd.toml", "serve", "--listen", &addr])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let answer = loop {
        if let Ok(mut c) = std::net::TcpStream::connect(&addr) {
            c.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            let _ = c.read_to_string(&mut out);
            break out;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "nothing listens on {addr}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    };
    let _ = child.kill();
    let _ = child.wait();
    assert!(answer.starts_with("HTTP/1.1 200"), "{answer}");
}

/// `root init --dry-run` says what it would make and makes nothing.
#[test]
fn root_init_has_a_dry_run() {
    let s = Setup::new();
    let before = s.snapshot();
    let run = s.cacertd(&["root", "init", "--dry-run"]).ok();
    assert!(
        run.stdout.contains("would create a root in file store")
            && run.stdout.contains("ecdsa-p256")
            && run.stdout.contains("CN=Root CA")
            && run.stdout.contains("valid 3650d"),
        "{}",
        run.stdout
    );
    common::assert_unchanged(&before, &s.snapshot());
    s.cacertd(&["root", "init"]).ok();
    s.cacertd(&["root", "init", "--dry-run"]).fails_with(5);
}

/// JSON says what the table says (`unchanged`), with times to the second.
#[test]
fn json_uses_the_tables_words_and_whole_seconds() {
    let s = Setup::new();
    s.cacertd(&["issue", "--init-root"]).ok();
    let run = s.cacertd(&["issue", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&run.stdout).unwrap();
    let table = s.cacertd(&["issue"]).ok().stdout;
    assert!(table.contains("unchanged"), "{table}");
    let reports = v.as_array().unwrap();
    assert!(reports.iter().all(|r| r["outcome"] == "unchanged"), "{v}");
    for r in reports {
        for field in ["not_before", "not_after", "renew_at"] {
            let t = r[field].as_str().unwrap();
            assert!(t.ends_with('Z') && !t.contains('.'), "{field}: {t}");
        }
    }
}

/// `-o yaml` is the JSON document as YAML, wherever there is `-o`; and with `--init-root`, the
/// new root is announced on stderr so that stdout stays one document.
#[test]
fn yaml_is_the_json_document_and_stdout_stays_one_document() {
    let s = Setup::new();
    let first = s.cacertd(&["issue", "--init-root", "-o", "json"]).ok();
    let v: serde_json::Value = serde_json::from_str(&first.stdout).unwrap();
    assert_eq!(v[0]["outcome"], "issued", "{v}");
    assert!(first.stderr.contains("created root"), "{}", first.stderr);
    for args in [
        &["issue"][..],
        &["status"],
        &["plan"],
        &["root", "show"],
        &["check"],
        &["version"],
        &["migrate", "plan"],
    ] {
        let json = s.cacertd(&[args, &["-o", "json"]].concat()).ok().stdout;
        let yaml = s.cacertd(&[args, &["-o", "yaml"]].concat()).ok().stdout;
        let from_json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let from_yaml: serde_json::Value = serde_saphyr::from_str(&yaml)
            .unwrap_or_else(|e| panic!("{args:?}: not YAML ({e}):\n{yaml}"));
        assert!(!yaml.trim_start().starts_with('{'), "{args:?}: {yaml}");
        // Times and days move on between the two runs; the documents' shapes do not.
        assert_eq!(shape(&from_yaml), shape(&from_json), "{args:?}");
    }
}

/// A document with every leaf replaced by its kind.
fn shape(v: &serde_json::Value) -> serde_json::Value {
    match v {
        serde_json::Value::Object(m) => m.iter().map(|(k, v)| (k.clone(), shape(v))).collect(),
        serde_json::Value::Array(a) => a.iter().map(shape).collect(),
        serde_json::Value::String(_) => "string".into(),
        serde_json::Value::Number(_) => "number".into(),
        other => other.clone(),
    }
}

/// A cluster that cannot be reached fails once, in the table's row: no log line says it again.
#[test]
fn a_failure_is_reported_once() {
    let s = Setup::with_config(
        "trust_domain = \"cluster.local\"\nstate_dir = \"state\"\n\n[[clusters]]\nname = \"c1\"\nrole = \"primary\"\ntarget = { kind = \"kube\", kubeconfig = \"c1.yaml\" }\n",
    );
    std::fs::write(
        s.path("c1.yaml"),
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         contexts:\n- name: c1\n  context: {cluster: c1, user: u}\ncurrent-context: c1\n\
         users:\n- name: u\n  user: {token: abc}\n",
    )
    .unwrap();
    let run = s.cacertd(&["issue", "--init-root"]).fails_with(1);
    let all = format!("{}{}", run.stdout, run.stderr);
    assert!(run.stdout.contains("c1       FAILED"), "{all}");
    assert_eq!(
        all.matches("nothing listens at that address").count(),
        1,
        "{all}"
    );
    assert!(run.stderr.contains("1 cluster(s) failed"), "{all}");
}
