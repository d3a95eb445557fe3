#![forbid(unsafe_code)]

fn main() -> std::process::ExitCode {
    // Exactly one rustls crypto provider for the whole process, chosen before anything can
    // build a TLS config: with kube and vaultrs in the tree, rustls would otherwise find two
    // candidates and panic.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    cacertd::cli::main()
}
