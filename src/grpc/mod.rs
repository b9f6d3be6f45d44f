//! tonic adapters for the public API: proto in, domain calls, proto out.
//! Errors become `tonic::Status` here and nowhere else.

pub mod publisher;

use tonic::service::Routes;

use crate::cluster::Mesh;
use crate::proto;
use crate::proto::v1::publisher_server::PublisherServer;
use crate::publish::Publisher;

/// Why the gRPC services could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building gRPC reflection: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// The public services: `herald.v1.Publisher`, `grpc.health.v1.Health`
/// (reporting SERVING for the Publisher and the whole server) and server
/// reflection.
pub async fn routes(publisher: Publisher, mesh: Mesh) -> Result<Routes, ReflectionError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PublisherServer<publisher::PublisherService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let mut routes = Routes::default();
    routes = routes
        .add_service(publisher::PublisherService::server(publisher, mesh))
        .add_service(health)
        .add_service(reflection);
    Ok(routes)
}
