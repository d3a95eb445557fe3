//! `cacertd verify` refuses what istiod's Go verifier refuses, on material made by the real
//! `openssl` CLI rather than by cacertd itself: an intermediate signed with SHA-1, one with a
//! negative serial number, and one whose extendedKeyUsage lacks serverAuth. Each case has a
//! twin that differs only in the rule under test and verifies, so a refusal is for that rule.

// A test or benchmark: a panic here is a failed assertion, not an outage.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;

use common::{Setup, openssl};

/// How the intermediate of a test cacerts set is signed.
struct Variant {
    digest: &'static str,
    serial: &'static str,
    /// Extra lines for the intermediate's extensions.
    extensions: &'static str,
}

const GOOD: Variant = Variant {
    digest: "-sha256",
    serial: "4660",
    extensions: "",
};

/// Writes a complete cacerts set (ECDSA P-256 root and intermediate) into `dir`.
fn cacerts(dir: &Path, v: &Variant) {
    std::fs::create_dir_all(dir).unwrap();
    let run = |args: &[&str]| openssl(dir, args).ok();
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "root-key.pem",
    ]);
    run(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "root-key.pem",
        "-sha256",
        "-days",
        "3650",
        "-subj",
        "/O=Test/CN=Root CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign,cRLSign",
        "-out",
        "root-cert.pem",
    ]);
    run(&[
        "ecparam",
        "-name",
        "prime256v1",
        "-genkey",
        "-noout",
        "-out",
        "ca-key.pem",
    ]);
    run(&[
        "req",
        "-new",
        "-key",
        "ca-key.pem",
        "-subj",
        "/O=Test/CN=Intermediate CA",
        "-out",
        "ca.csr",
    ]);
    std::fs::write(
        dir.join("ext.cnf"),
        format!(
            "[v3]\nbasicConstraints=critical,CA:TRUE,pathlen:0\n\
             keyUsage=critical,keyCertSign,cRLSign\n{}\n",
            v.extensions
        ),
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        "ca.csr",
        "-CA",
        "root-cert.pem",
        "-CAkey",
        "root-key.pem",
        "-days",
        "365",
        v.digest,
        "-set_serial",
        v.serial,
        "-extfile",
        "ext.cnf",
        "-extensions",
        "v3",
        "-out",
        "ca-cert.pem",
    ]);
    let chain = [
        std::fs::read(dir.join("ca-cert.pem")).unwrap(),
        std::fs::read(dir.join("root-cert.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(dir.join("cert-chain.pem"), chain).unwrap();
    for scratch in ["root-key.pem", "ca.csr", "ext.cnf"] {
        std::fs::remove_file(dir.join(scratch)).unwrap();
    }
}

/// `cacertd verify` of a set made with `v`: its exit code and output.
fn verify(s: &Setup, name: &str, v: &Variant) -> common::Run {
    cacerts(&s.path(name), v);
    s.cacertd(&["verify", name])
}

#[test]
fn the_control_set_verifies_with_openssl_and_cacertd() {
    let s = Setup::new();
    let run = verify(&s, "good", &GOOD).ok();
    assert!(run.stdout.contains("OK"), "{}", run.stdout);
    common::openssl_verify_cacerts(&s.path("good")).ok();
    // serverAuth in the EKU is what Go's verifier asks of a CA that has one.
    let server_auth = Variant {
        extensions: "extendedKeyUsage=serverAuth,clientAuth",
        ..GOOD
    };
    verify(&s, "server-auth", &server_auth).ok();
}

/// A set made with `v` is refused by `cacertd verify` (exit 3), for the reason `expected`.
fn refused(name: &str, v: &Variant, expected: &str) {
    let s = Setup::new();
    let run = verify(&s, name, v).fails_with(3);
    assert!(
        run.stdout.contains(expected),
        "{}\n{}",
        run.stdout,
        run.stderr
    );
}

#[test]
fn an_intermediate_signed_with_sha1_is_refused() {
    let sha1 = Variant {
        digest: "-sha1",
        ..GOOD
    };
    refused("sha1", &sha1, "signed with SHA-1");
}

#[test]
fn an_intermediate_with_a_negative_serial_is_refused() {
    let negative = Variant {
        serial: "-4660",
        ..GOOD
    };
    refused("negative", &negative, "negative serial");
}

#[test]
fn an_intermediate_whose_eku_lacks_server_auth_is_refused() {
    let client_only = Variant {
        extensions: "extendedKeyUsage=clientAuth",
        ..GOOD
    };
    refused(
        "client-only",
        &client_only,
        "extendedKeyUsage without serverAuth",
    );
}
