//! Test support shared by the integration tests: pods (in-process or as
//! real processes) and real clients.
#![allow(dead_code)]

pub mod backend;
pub mod kube_api;
pub mod otlp;
pub mod pki;
pub mod pod;
pub mod process;
pub mod proxy;
pub mod user;

/// How long any single expectation may take before a test fails.
pub const PATIENCE: std::time::Duration = std::time::Duration::from_secs(10);

/// Publishes `data` to `topic` through the gRPC API at `url` with the
/// generated client; returns the message id.
pub async fn publish(url: String, topic: &str, data: &str) -> String {
    herald::proto::v1::publisher_client::PublisherClient::connect(url)
        .await
        .expect("gRPC connects")
        .publish(herald::proto::v1::PublishRequest {
            topic: topic.into(),
            data: data.as_bytes().to_vec(),
            ..Default::default()
        })
        .await
        .expect("publish accepted")
        .into_inner()
        .id
}
