//! Test support shared by the integration tests: pods (in-process or as
//! real processes) and real clients.
#![allow(dead_code)]

pub mod kube_api;
pub mod otlp;
pub mod pod;
pub mod process;
pub mod user;

/// How long any single expectation may take before a test fails.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);
