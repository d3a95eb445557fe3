//! README's five-minute walkthrough, run as written after README's first command (as a
//! newcomer would): every `cacertd`, `rm`, `cp` and `openssl` line of its shell blocks, in
//! order, against a copy of `deploy/local` (the `kubectl` lines need a cluster and are
//! skipped). A line whose comment says `(exit N)` must exit N, every other
//! line 0, and a quoted word in a comment (`"unchanged"`) must appear in what it printed — so
//! the walkthrough cannot drift from what cacertd does.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;

/// The shell lines of README's "Five-minute walkthrough" section, joined across `\`.
fn walkthrough() -> Vec<String> {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("## Five-minute walkthrough").unwrap();
    let section = &readme[start..];
    let end = section[3..].find("\n## ").map_or(section.len(), |i| i + 3);
    let mut lines = Vec::new();
    let mut in_sh = false;
    for line in section[..end].lines() {
        match line.trim() {
            "```sh" => in_sh = true,
            "```" => in_sh = false,
            l if in_sh && !l.is_empty() => lines.push(l.to_string()),
            _ => {}
        }
    }
    lines
}

#[test]
fn the_readme_walkthrough_runs_as_written() {
    let lines = walkthrough();
    assert!(lines.len() >= 10, "{lines:#?}");
    let scratch = tempfile::tempdir().unwrap();
    let local = scratch.path().join("deploy/local");
    std::fs::create_dir_all(&local).unwrap();
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let config = std::fs::read_to_string(repo.join("deploy/local/cacertd.toml")).unwrap();
    // Its policies, relative to the file, are the repository's.
    let policies = repo.join("policies");
    std::fs::write(
        local.join("cacertd.toml"),
        config.replace(
            "policies_dir = \"../../policies\"",
            &format!("policies_dir = {:?}", policies.display().to_string()),
        ),
    )
    .unwrap();

    // README's first command, `cargo run -- ARGS`, as the binary.
    let readme = std::fs::read_to_string(repo.join("README.md")).unwrap();
    let first = readme
        .lines()
        .find(|l| l.starts_with("cargo run -- "))
        .unwrap();
    let args: Vec<&str> = first["cargo run -- ".len()..]
        .split("  #")
        .next()
        .unwrap()
        .split_whitespace()
        .collect();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_cacertd"));
    cmd.args(&args).current_dir(scratch.path());
    let out = common::output_within(cmd, common::RUN_TIMEOUT);
    assert!(
        out.status.success(),
        "{first}: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let mut cwd = scratch.path().to_path_buf();
    let mut ran = 0;
    for line in &lines {
        let (command, comment) = match line.split_once("  #") {
            Some((c, comment)) => (c.trim(), comment.trim()),
            None => (line.trim(), ""),
        };
        for part in command.split("&&").map(str::trim) {
            let words: Vec<&str> = part.split_whitespace().collect();
            let Some((program, args)) = words.split_first() else {
                continue;
            };
            let mut cmd = match *program {
                "alias" | "kubectl" => continue,
                "cd" => {
                    cwd = match args {
                        ["-"] => scratch.path().to_path_buf(),
                        [dir] => cwd.join(dir),
                        _ => panic!("{line}"),
                    };
                    continue;
                }
                "cacertd" => {
                    let mut c = Command::new(env!("CARGO_BIN_EXE_cacertd"));
                    c.arg("-c")
                        .arg(scratch.path().join("deploy/local/cacertd.toml"));
                    c
                }
                // Only below the copy of deploy/local.
                "rm" => {
                    assert!(
                        args.iter().skip(1).all(|a| a.starts_with("deploy/local/")),
                        "{line}"
                    );
                    Command::new(program)
                }
                "cp" | "openssl" => Command::new(program),
                other => {
                    panic!("the walkthrough runs {other}, which this test does not know: {line}")
                }
            };
            // `openssl … | grep …`: only the command before the pipe.
            let args: Vec<&str> = args.iter().take_while(|a| **a != "|").copied().collect();
            cmd.args(&args)
                .current_dir(&cwd)
                .env_remove("CACERTD_CONFIG")
                .env_remove("RUST_LOG");
            let out = common::output_within(cmd, common::RUN_TIMEOUT);
            let printed = format!(
                "{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            let want = comment
                .split("(exit ")
                .nth(1)
                .and_then(|r| r.split(')').next())
                .map_or(0, |n| n.parse::<i32>().unwrap());
            assert_eq!(out.status.code(), Some(want), "{line}\n{printed}");
            for quoted in comment.split('"').skip(1).step_by(2) {
                assert!(
                    printed.contains(quoted),
                    "{line}: {quoted:?} not in\n{printed}"
                );
            }
            ran += 1;
        }
    }
    assert!(ran >= 10, "only {ran} commands ran");
}
