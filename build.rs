//! Build facts for `cacertd version`: the git commit the binary was built from and the Rust
//! compiler that built it ("unknown" where they cannot be read, e.g. a source tarball).

use std::process::Command;

fn output(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (!text.is_empty()).then_some(text)
}

fn main() {
    let commit = output("git", &["rev-parse", "--short=12", "HEAD"])
        .map(
            |c| match output("git", &["status", "--porcelain", "--untracked-files=no"]) {
                Some(_) => format!("{c}-modified"),
                None => c,
            },
        )
        .unwrap_or_else(|| "unknown".into());
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let rustc = output(&rustc, &["--version"]).unwrap_or_else(|| "unknown".into());
    println!("cargo:rustc-env=CACERTD_GIT_COMMIT={commit}");
    println!("cargo:rustc-env=CACERTD_RUSTC_VERSION={rustc}");
    println!("cargo:rerun-if-changed=.git/HEAD");
    println!("cargo:rerun-if-changed=.git/index");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
