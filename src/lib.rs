//! cacertd: owns the common trust root of an Istio multicluster mesh.
#![forbid(unsafe_code)]

pub mod pki;
pub mod policy;
pub mod config;
pub mod topology;
