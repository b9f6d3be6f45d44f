//! `herald.v1.Publisher`: Publish, PublishBatch and ListPeers.

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};

use crate::cluster::Mesh;
use crate::message::TraceContext;
use crate::proto::v1::publisher_server::Publisher as PublisherApi;
use crate::proto::v1::{
    ListPeersRequest, ListPeersResponse, PeerStatus, PublishBatchRequest, PublishBatchResponse,
    PublishRequest, PublishResponse,
};
use crate::publish::{PublishError, Publisher};
use crate::telemetry::trace;

/// The Publisher service over the publish path.
pub struct PublisherService {
    publisher: Publisher,
    mesh: Mesh,
}

impl PublisherService {
    /// The service over `publisher`, reporting `mesh`'s peers.
    pub fn new(publisher: Publisher, mesh: Mesh) -> Self {
        Self { publisher, mesh }
    }
}

/// The W3C trace context a caller sent in its request metadata.
fn caller_trace(metadata: &MetadataMap) -> TraceContext {
    if !trace::is_tracing() {
        return TraceContext::new();
    }
    ["traceparent", "tracestate"]
        .into_iter()
        .filter_map(|key| {
            let value = metadata.get(key)?.to_str().ok()?;
            Some((key.to_owned(), value.to_owned()))
        })
        .collect()
}

/// Every publish error is the caller's: `INVALID_ARGUMENT`, with the reason.
impl From<PublishError> for Status {
    fn from(error: PublishError) -> Self {
        Status::invalid_argument(error.to_string())
    }
}

#[tonic::async_trait]
impl PublisherApi for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let span = trace::publish_span(&caller_trace(request.metadata()), false);
        let PublishRequest { topic, data } = request.into_inner();
        let id = span.in_scope(|| {
            let id = self.publisher.publish(&topic, &data)?;
            tracing::debug!(%id, %topic, "published");
            Ok::<_, PublishError>(id)
        })?;
        Ok(Response::new(PublishResponse { id: id.to_string() }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let span = trace::publish_span(&caller_trace(request.metadata()), true);
        let PublishBatchRequest { messages } = request.into_inner();
        let batch = messages
            .iter()
            .map(|m| (m.topic.as_str(), m.data.as_slice()));
        let ids = span.in_scope(|| self.publisher.publish_batch(batch))?;
        let results = ids
            .into_iter()
            .map(|id| PublishResponse { id: id.to_string() })
            .collect();
        Ok(Response::new(PublishBatchResponse { results }))
    }

    async fn list_peers(
        &self,
        _: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        let settings = self.mesh.settings();
        let peers = self
            .mesh
            .peers()
            .into_iter()
            .map(|p| PeerStatus {
                address: p.address,
                connected: p.connected,
                dropped: p.dropped,
                connects: p.connects,
                last_error: p.last_error.unwrap_or_default(),
                transport: p.transport.map(|t| t.to_string()).unwrap_or_default(),
            })
            .collect();
        Ok(Response::new(ListPeersResponse {
            self_address: settings.address.clone(),
            cluster: settings.cluster.clone(),
            peers,
        }))
    }
}
