//! tonic adapters for the public API: proto in, domain calls, proto out.
//! Errors become `tonic::Status` here and nowhere else.
//!
//! With `--api-tokens-file`, every `herald.v1.Publisher` call must carry
//! `authorization: Bearer <token>` with a token from that file: a missing
//! one is `UNAUTHENTICATED` ("missing bearer token"), an unknown one
//! `UNAUTHENTICATED` ("unknown API token"). A token limited to some topics
//! gets `PERMISSION_DENIED` for a call on any other (a batch is refused
//! whole) and for `ListPeers`. Health and reflection stay open for probes
//! and tooling.

pub mod publisher;

use std::sync::Arc;

use tonic::service::Routes;
use tonic::{Request, Status};

use crate::auth::api_tokens::parse_bearer;
use crate::auth::{ApiTokens, TokenScope};
use crate::broadcast::Broadcast;
use crate::local::Local;
use crate::proto;
use crate::proto::v1::publisher_server::PublisherServer;
use crate::publish::Publisher;
use crate::stats::{self, Counters};

/// Why the gRPC services could not be built.
#[derive(Debug, thiserror::Error)]
#[error("building gRPC reflection: {0}")]
pub struct ReflectionError(#[from] tonic_reflection::server::Error);

/// Checks one call's bearer token against `tokens`; what it may do.
fn authenticate(request: &Request<()>, tokens: &ApiTokens) -> Result<TokenScope, Status> {
    let presented = request
        .metadata()
        .get("authorization")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_bearer);
    match presented {
        None => Err(Status::unauthenticated(
            "missing bearer token: send the metadata authorization: Bearer <token>",
        )),
        Some(token) => tokens
            .check(token)
            .ok_or_else(|| Status::unauthenticated("unknown API token")),
    }
}

/// The public services: `herald.v1.Publisher` (behind the API tokens, when
/// configured), `grpc.health.v1.Health` (reporting SERVING for the
/// Publisher and the whole server) and server reflection.
pub async fn routes(
    publisher: Publisher,
    local: Local,
    broadcast: Arc<dyn Broadcast>,
    tokens: Option<ApiTokens>,
    counters: Arc<Counters>,
) -> Result<Routes, ReflectionError> {
    let (health_reporter, health) = tonic_health::server::health_reporter();
    health_reporter
        .set_serving::<PublisherServer<publisher::PublisherService>>()
        .await;
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(proto::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()?;
    let service = publisher::PublisherService::new(publisher, local, broadcast);
    let api = PublisherServer::with_interceptor(service, move |mut request: Request<()>| {
        if let Some(tokens) = &tokens {
            match authenticate(&request, tokens) {
                Ok(scope) => {
                    request.extensions_mut().insert(scope);
                }
                Err(status) => {
                    stats::add(&counters.refused.api_unauthenticated, 1);
                    return Err(status);
                }
            }
        }
        Ok(request)
    });
    Ok(Routes::new(api).add_service(health).add_service(reflection))
}
