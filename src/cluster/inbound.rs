//! The receiving side of the peer port: other pods' connections on the peer
//! wire ([`Accepted`]) and, for pods of an earlier release, streams to the
//! `Peer` gRPC service ([`PeerService`]). Either way the peer's hello is
//! checked first, and each envelope is handed to the mesh for local
//! delivery. Nothing is forwarded: every pod sends its own messages to
//! every peer directly.

use std::io;
use std::pin::Pin;
use std::time::Duration;

use bytes::BytesMut;
use futures_util::{FutureExt, Stream};
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tonic::{Request, Response, Status, Streaming};
use tracing::Instrument;

use super::handshake;
use super::mesh::Mesh;
use super::wire::{self, PeerIo};
use crate::proto::v1::peer_server::{Peer, PeerServer};
use crate::proto::v1::{Envelope, PeerFrame, Refusal, peer_frame};

/// How long a connecting peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Room in a frame for an envelope's id, topic, origin and trace context
/// beside its data.
const MAX_ENVELOPE_OVERHEAD: usize = 16 * 1024;

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
        // The reply stream carries our hello, then stays open for as long as
        // the receiving task holds `reply`.
        let (reply, replies) = mpsc::channel(1);
        let _ = reply.try_send(Ok(PeerFrame::from(settings.hello())));
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

/// Bytes read from a peer-wire connection at a time, at least.
const READ_BYTES: usize = 16 * 1024;

/// The peer port's accept loop: connections speaking the peer wire are
/// served here, one task each; the others (HTTP/2, from pods of an earlier
/// release that dial the gRPC `Peer` service) come out of the stream that
/// [`split`](Self::split) or [`split_tls`](Self::split_tls) returns, for
/// tonic. A connection that does not show which it is within the hello
/// timeout (or fails its TLS handshake) is closed.
#[derive(Clone)]
pub struct Accepted {
    mesh: Mesh,
    tracker: TaskTracker,
    shutdown: CancellationToken,
}

impl Accepted {
    /// Accepting for `mesh`; tasks run on `tracker` and stop with
    /// `shutdown`.
    pub fn new(mesh: Mesh, tracker: TaskTracker, shutdown: CancellationToken) -> Self {
        Self {
            mesh,
            tracker,
            shutdown,
        }
    }

    /// Plain TCP: the first byte tells the wire from HTTP/2.
    pub fn split(self, listener: TcpListener) -> impl Stream<Item = io::Result<TcpStream>> {
        let this = self.clone();
        self.run(listener, move |stream: TcpStream| {
            let this = this.clone();
            async move {
                let mut first = [0];
                match tokio::time::timeout(HELLO_TIMEOUT, stream.peek(&mut first)).await {
                    Ok(Ok(1)) if wire::is_wire(first[0]) => {
                        serve_wire(stream, this.mesh, this.shutdown).await;
                        None
                    }
                    Ok(Ok(1)) => Some(stream),
                    _ => None,
                }
            }
        })
    }

    /// Mutual TLS: ALPN tells the wire from HTTP/2.
    pub fn split_tls(
        self,
        listener: TcpListener,
        acceptor: TlsAcceptor,
    ) -> impl Stream<Item = io::Result<TlsStream<TcpStream>>> {
        let this = self.clone();
        self.run(listener, move |stream: TcpStream| {
            let (this, acceptor) = (this.clone(), acceptor.clone());
            async move {
                let remote = stream.peer_addr().ok();
                let stream =
                    match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(stream)) => stream,
                        Ok(Err(e)) => {
                            tracing::info!(?remote, error = %e, "TLS handshake on the peer port failed");
                            return None;
                        }
                        Err(_) => return None,
                    };
                if stream.get_ref().1.alpn_protocol() == Some(wire::ALPN) {
                    serve_wire(stream, this.mesh, this.shutdown).await;
                    return None;
                }
                Some(stream)
            }
        })
    }

    /// Accepts until shutdown; `sort` serves a connection on the wire (and
    /// returns `None`) or gives it back for gRPC.
    fn run<IO, F, Fut>(self, listener: TcpListener, sort: F) -> ReceiverStream<io::Result<IO>>
    where
        IO: Send + 'static,
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = Option<IO>> + Send + 'static,
    {
        let (grpc, connections) = mpsc::channel(16);
        let tracker = self.tracker.clone();
        tracker.spawn(async move {
            loop {
                let accepted = tokio::select! {
                    () = self.shutdown.cancelled() => return,
                    accepted = listener.accept() => accepted,
                };
                let stream = match accepted {
                    Ok((stream, _)) => stream,
                    Err(e) => {
                        // Out of file descriptors, most likely: the next
                        // accept may succeed once some are closed.
                        tracing::warn!(error = %e, "accepting a peer connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                wire::tune(&stream);
                let sorted = sort(stream);
                let grpc = grpc.clone();
                self.tracker.spawn(async move {
                    if let Some(stream) = sorted.await {
                        let _ = grpc.send(Ok(stream)).await;
                    }
                });
            }
        });
        ReceiverStream::new(connections)
    }
}

/// Serves one peer-wire connection: the handshake, then every envelope
/// the peer sends is delivered here, on this task, until the connection
/// ends or the pod stops. A peer that sends bytes that are not frames is
/// disconnected (it will reconnect); what it sent before is kept.
async fn serve_wire<IO: PeerIo>(mut stream: IO, mesh: Mesh, shutdown: CancellationToken) {
    let mut buf = BytesMut::with_capacity(READ_BYTES);
    let theirs =
        match tokio::time::timeout(HELLO_TIMEOUT, wire::read_hello(&mut stream, &mut buf)).await {
            Ok(Ok(theirs)) => theirs,
            Ok(Err(e)) => {
                tracing::debug!(error = %e, "no hello on a peer connection");
                return;
            }
            Err(_) => {
                tracing::debug!("no hello on a peer connection within 5s");
                return;
            }
        };
    let settings = mesh.settings();
    if let Err(refusal) = handshake::check(&theirs, &settings.cluster) {
        tracing::warn!(peer = %theirs.address, %refusal, "refusing a peer stream");
        let refused = PeerFrame {
            kind: Some(peer_frame::Kind::Refusal(Refusal {
                reason: refusal.to_string(),
            })),
        };
        let _ = wire::answer(&mut stream, &refused).await;
        return;
    }
    let ours = PeerFrame::from(settings.hello());
    if wire::answer(&mut stream, &ours).await.is_err() {
        return;
    }
    let max = settings.max_message_bytes + MAX_ENVELOPE_OVERHEAD;
    let mut envelopes = Vec::new();
    loop {
        let mut ended = false;
        loop {
            match wire::decode(&mut buf, max) {
                Ok(Some(frame)) => ended = take(Ok(Some(frame)), &mut envelopes),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %theirs.address, error = %e, "closing a peer connection that sent a bad frame");
                    ended = true;
                    break;
                }
            }
        }
        mesh.receive(envelopes.drain(..));
        if ended {
            return;
        }
        if buf.capacity() - buf.len() < READ_BYTES / 4 {
            buf.reserve(READ_BYTES);
        }
        let read = tokio::select! {
            () = shutdown.cancelled() => return,
            read = stream.read_buf(&mut buf) => read,
        };
        match read {
            Ok(0) => return,
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(peer = %theirs.address, error = %e, "peer connection ended");
                return;
            }
        }
    }
}
