//! cacertd: owns the common trust root of an Istio multicluster mesh.
#![forbid(unsafe_code)]

/// `println!` that never panics: with stdout closed (`cacertd … | head -2`) the output is lost,
/// not the command — a transition being driven goes on, and nothing exits with a panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod audit;
pub mod cli;
pub mod clock;
pub mod cluster;
pub mod config;
pub mod daemon;
pub mod fsutil;
pub mod harden;
pub mod issuance;
pub mod istio_version;
pub mod net_error;
pub mod pki;
pub mod plan;
pub mod policy;
pub mod revocation;
pub mod rollout;
pub mod root_store;
pub mod status;
pub mod topology;
pub mod transition;
