//! cacertd: owns the common trust root of an Istio multicluster mesh.
#![forbid(unsafe_code)]

pub mod pki;
