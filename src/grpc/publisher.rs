//! `herald.v1.Publisher`: Publish, PublishBatch and ListPeers.

use tonic::{Request, Response, Status};

use crate::cluster::Mesh;
use crate::proto::v1::publisher_server::{Publisher as PublisherApi, PublisherServer};
use crate::proto::v1::{
    ListPeersRequest, ListPeersResponse, PeerStatus, PublishBatchRequest, PublishBatchResponse,
    PublishRequest, PublishResponse,
};
use crate::publish::{PublishError, Publisher};

/// The Publisher service over the publish path.
pub struct PublisherService {
    publisher: Publisher,
    mesh: Mesh,
}

impl PublisherService {
    /// The service, ready to add to a tonic server.
    pub fn server(publisher: Publisher, mesh: Mesh) -> PublisherServer<Self> {
        PublisherServer::new(Self { publisher, mesh })
    }
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
        let PublishRequest { topic, data } = request.into_inner();
        let id = self.publisher.publish(&topic, &data)?;
        Ok(Response::new(PublishResponse { id: id.to_string() }))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let PublishBatchRequest { messages } = request.into_inner();
        let ids = self.publisher.publish_batch(
            messages
                .iter()
                .map(|m| (m.topic.as_str(), m.data.as_slice())),
        )?;
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
            })
            .collect();
        Ok(Response::new(ListPeersResponse {
            self_address: settings.address.clone(),
            cluster: settings.cluster.clone(),
            peers,
        }))
    }
}
