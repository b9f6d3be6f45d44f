//! The `Peer` gRPC service: accepts other pods' streams after checking their
//! hello, and hands each envelope to the mesh for local delivery. It never
//! forwards: every pod sends its own messages to every peer directly.

use std::pin::Pin;
use std::time::Duration;

use futures_util::{FutureExt, Stream};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::handshake;
use super::mesh::Mesh;
use crate::proto::v1::peer_server::{Peer, PeerServer};
use crate::proto::v1::{Envelope, PeerFrame, peer_frame};

/// How long a connecting peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Most envelopes already received that are delivered together.
const MAX_RECEIVED_TOGETHER: usize = 256;

/// The service behind the peer port.
pub struct PeerService {
    mesh: Mesh,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl PeerService {
    /// The service, ready to add to a tonic server. Receiving tasks run on
    /// `tracker` and stop with `shutdown`.
    pub fn server(
        mesh: Mesh,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) -> PeerServer<Self> {
        PeerServer::new(Self {
            mesh,
            tracker,
            shutdown,
        })
    }
}

type FrameStream = Pin<Box<dyn Stream<Item = Result<PeerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for PeerService {
    type BroadcastStream = FrameStream;

    async fn broadcast(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<Self::BroadcastStream>, Status> {
        let remote = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 5s"))??;
        let Some(PeerFrame {
            kind: Some(peer_frame::Kind::Hello(theirs)),
        }) = first
        else {
            return Err(Status::invalid_argument(
                handshake::Refusal::NoHello.to_string(),
            ));
        };
        let settings = self.mesh.settings();
        if let Err(refusal) = handshake::check(&theirs, &settings.cluster) {
            tracing::warn!(?remote, peer = %theirs.address, %refusal, "refusing a peer stream");
            return Err(Status::failed_precondition(refusal.to_string()));
        }
        let ours = handshake::hello(&settings.cluster, settings.node, &settings.address);
        // The reply stream carries our hello, then stays open for as long as
        // the receiving task holds `reply`.
        let (reply, replies) = mpsc::channel(1);
        let _ = reply.try_send(Ok(PeerFrame {
            kind: Some(peer_frame::Kind::Hello(ours)),
        }));
        let mesh = self.mesh.clone();
        let shutdown = self.shutdown.clone();
        let span = tracing::debug_span!("peer_inbound", peer = %theirs.address);
        self.tracker.spawn(
            async move {
                let mut envelopes = Vec::new();
                loop {
                    let frame = tokio::select! {
                        () = shutdown.cancelled() => break,
                        frame = inbound.message() => frame,
                    };
                    // Whatever else has already arrived is delivered with
                    // it: a pod that falls behind catches up in fewer,
                    // larger frames to its users.
                    let mut ended = take(frame, &mut envelopes);
                    while !ended && envelopes.len() < MAX_RECEIVED_TOGETHER {
                        let Some(frame) = inbound.message().now_or_never() else {
                            break;
                        };
                        ended = take(frame, &mut envelopes);
                    }
                    mesh.receive(envelopes.drain(..));
                    if ended {
                        break;
                    }
                }
                drop(reply);
            }
            .instrument(span),
        );
        Ok(Response::new(Box::pin(ReceiverStream::new(replies))))
    }
}

/// Keeps the envelope in one received frame. Returns true once the stream
/// has ended (or failed).
fn take(frame: Result<Option<PeerFrame>, Status>, envelopes: &mut Vec<Envelope>) -> bool {
    match frame {
        Ok(Some(PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(envelope)),
        })) => envelopes.push(envelope),
        Ok(Some(_)) => tracing::debug!("ignoring an unexpected frame from a peer"),
        Ok(None) => return true,
        Err(status) => {
            tracing::debug!(error = %status, "peer stream ended");
            return true;
        }
    }
    false
}
