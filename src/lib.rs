//! cacertd: owns the common trust root of an Istio multicluster mesh.
#![forbid(unsafe_code)]

pub mod pki;
pub mod policy;
pub mod config;
pub mod topology;
pub mod fsutil;
pub mod store;
pub mod target;
pub mod clock;
pub mod plan;
pub mod issuance;
pub mod cli;
