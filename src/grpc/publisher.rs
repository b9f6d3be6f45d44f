//! `herald.v1.Publisher`: Publish, PublishBatch, History, ListPeers and
//! presence (Presence, PresenceStats, UserPresence).

use std::sync::Arc;

use tonic::metadata::MetadataMap;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::auth::TokenScope;
use crate::broadcast::Broadcast;
use crate::history::{BadPosition, Need};
use crate::local::{Local, Receipt};
use crate::message::{Position, TraceContext};
use crate::presence::{self, Conn};
use crate::proto::v1::publisher_server::Publisher as PublisherApi;
use crate::proto::v1::{
    HistoryMessage, HistoryRequest, HistoryResponse, ListPeersRequest, ListPeersResponse,
    PeerStatus, Position as ProtoPosition, PresenceEntry, PresenceRequest, PresenceResponse,
    PresenceStatsRequest, PresenceStatsResponse, PublishBatchRequest, PublishBatchResponse,
    PublishRequest, PublishResponse, UserPresenceRequest, UserPresenceResponse,
};
use crate::publish::{self, PublishError, Publisher};
use crate::telemetry::trace;
use crate::topic::Topic;

/// Most messages one History call returns.
pub const MAX_HISTORY_LIMIT: u32 = 1_000;

/// Messages a History call returns when it names no limit.
pub const DEFAULT_HISTORY_LIMIT: u32 = 100;

/// The Publisher service over the publish path.
pub struct PublisherService {
    publisher: Publisher,
    local: Local,
    broadcast: Arc<dyn Broadcast>,
}

impl PublisherService {
    /// The service over `publisher`, answering History from `local` and
    /// reporting `broadcast`'s peers and presence.
    pub fn new(publisher: Publisher, local: Local, broadcast: Arc<dyn Broadcast>) -> Self {
        Self {
            publisher,
            local,
            broadcast,
        }
    }
}

fn response(receipt: Receipt) -> PublishResponse {
    PublishResponse {
        id: receipt.id.to_string(),
        offset: receipt.stamp.offset,
        epoch: receipt.stamp.epoch.to_string(),
    }
}

/// A position from the API; `INVALID_ARGUMENT` if malformed.
/// A page's `limit` field: 0 asks for `default`; more than `max` is
/// `INVALID_ARGUMENT`.
fn page_limit(limit: u32, default: usize, max: usize) -> Result<usize, Status> {
    match limit as usize {
        0 => Ok(default),
        n if n <= max => Ok(n),
        n => Err(Status::invalid_argument(format!(
            "limit is {n}; at most {max}"
        ))),
    }
}

fn position(proto: &ProtoPosition) -> Result<Position, Status> {
    Position::parse(&proto.epoch, proto.offset)
        .map_err(|e| Status::invalid_argument(format!("since.epoch: {e}")))
}

fn proto_position(position: Position) -> ProtoPosition {
    ProtoPosition {
        epoch: position.epoch_text(),
        offset: position.offset,
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

/// A refused publish is the caller's (`INVALID_ARGUMENT`, with the
/// reason); an unconfirmed one is `UNAVAILABLE` (retry, with the same
/// idempotency key).
impl From<PublishError> for Status {
    fn from(error: PublishError) -> Self {
        match error {
            PublishError::Unconfirmed(_) => Status::unavailable(error.to_string()),
            PublishError::InBatch { ref source, .. }
                if matches!(**source, PublishError::Unconfirmed(_)) =>
            {
                Status::unavailable(error.to_string())
            }
            _ => Status::invalid_argument(error.to_string()),
        }
    }
}

impl From<BadPosition> for Status {
    fn from(error: BadPosition) -> Self {
        Status::invalid_argument(format!("since: {error}"))
    }
}

/// Refuses a call whose API token (when the gRPC API takes tokens) does not
/// allow every one of `topics`.
fn allowed<'a, T>(
    request: &Request<T>,
    topics: impl IntoIterator<Item = &'a str>,
) -> Result<(), Status> {
    let Some(scope) = request.extensions().get::<TokenScope>() else {
        return Ok(());
    };
    match topics.into_iter().find(|topic| !scope.allows(topic)) {
        Some(topic) => Err(Status::permission_denied(format!(
            "this API token may not use topic {topic:?}"
        ))),
        None => Ok(()),
    }
}

impl PublisherService {
    /// `topic` if it is one and keeps presence.
    fn presence_topic(&self, topic: &str) -> Result<Topic, Status> {
        let topic = Topic::new(topic).map_err(|e| Status::invalid_argument(e.to_string()))?;
        if !self.broadcast.presence().covers(&topic) {
            return Err(Status::failed_precondition(format!(
                "{topic} keeps no presence on this server (--presence-topics)"
            )));
        }
        Ok(topic)
    }
}

#[tonic::async_trait]
impl PublisherApi for PublisherService {
    async fn publish(
        &self,
        request: Request<PublishRequest>,
    ) -> Result<Response<PublishResponse>, Status> {
        let span = trace::publish_span(&caller_trace(request.metadata()), false);
        allowed(&request, [request.get_ref().topic.as_str()])?;
        let PublishRequest {
            topic,
            data,
            idempotency_key,
        } = request.into_inner();
        let request = publish::Request {
            topic: &topic,
            data: &data,
            key: &idempotency_key,
        };
        let receipt = self.publisher.publish(request).instrument(span).await?;
        tracing::debug!(id = %receipt.id, %topic, offset = receipt.stamp.offset, "published");
        Ok(Response::new(response(receipt)))
    }

    async fn publish_batch(
        &self,
        request: Request<PublishBatchRequest>,
    ) -> Result<Response<PublishBatchResponse>, Status> {
        let span = trace::publish_span(&caller_trace(request.metadata()), true);
        let topics = request.get_ref().messages.iter().map(|m| m.topic.as_str());
        allowed(&request, topics)?;
        let PublishBatchRequest { messages } = request.into_inner();
        let batch = messages.iter().map(|m| publish::Request {
            topic: &m.topic,
            data: &m.data,
            key: &m.idempotency_key,
        });
        let receipts = self.publisher.publish_batch(batch).instrument(span).await?;
        let results = receipts.into_iter().map(response).collect();
        Ok(Response::new(PublishBatchResponse { results }))
    }

    async fn history(
        &self,
        request: Request<HistoryRequest>,
    ) -> Result<Response<HistoryResponse>, Status> {
        allowed(&request, [request.get_ref().topic.as_str()])?;
        let HistoryRequest {
            topic,
            limit,
            since,
        } = request.into_inner();
        let topic = Topic::new(&topic).map_err(|e| Status::invalid_argument(e.to_string()))?;
        let limit = page_limit(
            limit,
            DEFAULT_HISTORY_LIMIT as usize,
            MAX_HISTORY_LIMIT as usize,
        )?;
        let since = since.as_ref().map(position).transpose()?;
        let need = since.map_or(Need::Last(limit), Need::Since);
        self.broadcast.recall(&topic, need).await;
        let page = self.local.page(&topic, since, limit)?;
        let messages = page
            .messages
            .iter()
            .map(|m| HistoryMessage {
                id: m.id().to_string(),
                offset: m.stamp().offset,
                epoch: m.stamp().epoch.to_string(),
                data: m.data().to_vec(),
            })
            .collect();
        Ok(Response::new(HistoryResponse {
            head: Some(proto_position(page.head)),
            messages,
            recovered: page.recovered,
        }))
    }

    async fn presence(
        &self,
        request: Request<PresenceRequest>,
    ) -> Result<Response<PresenceResponse>, Status> {
        allowed(&request, [request.get_ref().topic.as_str()])?;
        let PresenceRequest {
            topic,
            limit,
            cursor,
        } = request.into_inner();
        let topic = self.presence_topic(&topic)?;
        let limit = page_limit(limit, presence::DEFAULT_PAGE, presence::MAX_PAGE)?;
        let cursor = (!cursor.is_empty())
            .then(|| cursor.parse::<Conn>())
            .transpose()
            .map_err(|_| Status::invalid_argument("cursor: not one a Presence reply gave"))?;
        let (entries, next) = self.broadcast.presence().page(&topic, cursor, limit);
        let entries = entries
            .into_iter()
            .map(|(conn, entry)| PresenceEntry {
                conn: conn.to_string(),
                sub: entry.sub.as_deref().map(str::to_owned),
                node: conn.node.to_string(),
                info: entry.info.as_deref().unwrap_or_default().to_owned(),
            })
            .collect();
        Ok(Response::new(PresenceResponse {
            entries,
            cursor: next.map(|c| c.to_string()).unwrap_or_default(),
        }))
    }

    async fn presence_stats(
        &self,
        request: Request<PresenceStatsRequest>,
    ) -> Result<Response<PresenceStatsResponse>, Status> {
        allowed(&request, [request.get_ref().topic.as_str()])?;
        let topic = self.presence_topic(&request.get_ref().topic)?;
        let stats = self.broadcast.presence().stats(&topic);
        Ok(Response::new(PresenceStatsResponse {
            connections: stats.connections,
            users: stats.users,
        }))
    }

    async fn user_presence(
        &self,
        request: Request<UserPresenceRequest>,
    ) -> Result<Response<UserPresenceResponse>, Status> {
        let topic = format!(
            "{}{}",
            crate::auth::USER_TOPIC_PREFIX,
            request.get_ref().sub
        );
        allowed(&request, [topic.as_str()])?;
        let topic = self.presence_topic(&topic)?;
        let connections = self.broadcast.presence().stats(&topic).connections;
        Ok(Response::new(UserPresenceResponse {
            connected: connections > 0,
            connections,
        }))
    }

    async fn list_peers(
        &self,
        request: Request<ListPeersRequest>,
    ) -> Result<Response<ListPeersResponse>, Status> {
        if request
            .extensions()
            .get::<TokenScope>()
            .is_some_and(TokenScope::is_limited)
        {
            return Err(Status::permission_denied(
                "ListPeers needs an API token without topic limits",
            ));
        }
        let identity = self.broadcast.identity();
        let peers = self
            .broadcast
            .peers()
            .into_iter()
            .map(|p| PeerStatus {
                address: p.address,
                connected: p.connected,
                dropped: p.dropped,
                connects: p.connects,
                last_error: p.last_error.unwrap_or_default(),
                transport: if p.connected {
                    p.transport.into()
                } else {
                    String::new()
                },
            })
            .collect();
        Ok(Response::new(ListPeersResponse {
            self_address: identity.address,
            cluster: identity.cluster,
            peers,
        }))
    }
}
