//! The receiving side of the peer port: other pods' connections on the peer
//! wire ([`Accepted`]). The peer's hello is checked first, then each frame
//! is handed to the mesh: numbered messages for local delivery, drafts to
//! number, a leaving pod's handover. Numbered messages are never passed
//! on: each sequencer sends its messages directly to the pods that get them.

use std::time::Duration;

use bytes::BytesMut;
use tokio::io::AsyncReadExt;
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::handshake;
use super::mesh::{Mesh, SNAPSHOT_BYTES};
use super::secret::{self, Role};
use super::wire::{self, PeerIo};
use crate::message::NodeId;
use crate::proto::v1::{PeerFrame, Refusal, peer_frame};
use crate::stats;
use crate::tls::PeerTls;

/// How long a connecting peer has to send its hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Room in a frame for an envelope's id, topic, origin and trace context
/// beside its data.
const MAX_ENVELOPE_OVERHEAD: usize = 16 * 1024;

/// Most frames already received that are handled together.
const MAX_RECEIVED_TOGETHER: usize = 256;

/// Bytes read from a peer-wire connection at a time, at least.
const READ_BYTES: usize = 16 * 1024;

/// The peer port's accept loop: each connection speaks the peer wire and
/// is served on a task of its own. A connection that does not open with
/// the wire's preface and a hello within the hello timeout (or fails its
/// TLS handshake) is closed.
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

    /// Accepts plain TCP connections until shutdown.
    pub async fn serve(self, listener: TcpListener) {
        let this = self.clone();
        self.run(listener, move |stream: TcpStream| {
            let this = this.clone();
            async move { serve_wire(stream, this.mesh, this.shutdown).await }
        })
        .await;
    }

    /// Accepts connections under mutual TLS until shutdown, each with the
    /// certificates current when it arrives.
    pub async fn serve_tls(self, listener: TcpListener, tls: PeerTls) {
        let this = self.clone();
        self.run(listener, move |stream: TcpStream| {
            let (this, acceptor) = (this.clone(), tls.acceptor());
            async move {
                let remote = stream.peer_addr().ok();
                match tokio::time::timeout(HELLO_TIMEOUT, acceptor.accept(stream)).await {
                    Ok(Ok(stream)) => serve_wire(stream, this.mesh, this.shutdown).await,
                    Ok(Err(e)) => {
                        tracing::info!(?remote, error = %e, "TLS handshake on the peer port failed");
                    }
                    Err(_) => {}
                }
            }
        })
        .await;
    }

    /// Accepts until shutdown, serving each connection with `serve`.
    async fn run<F, Fut>(self, listener: TcpListener, serve: F)
    where
        F: Fn(TcpStream) -> Fut + Send + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
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
            self.tracker.spawn(serve(stream));
        }
    }
}

/// A proven stream from a peer, for presence: up while this lives.
struct StreamUp<'a> {
    mesh: &'a Mesh,
    from: NodeId,
}

impl<'a> StreamUp<'a> {
    fn new(mesh: &'a Mesh, from: NodeId, address: &str) -> Self {
        mesh.stream_up(from, address);
        Self { mesh, from }
    }
}

impl Drop for StreamUp<'_> {
    fn drop(&mut self) {
        self.mesh.stream_down(self.from);
    }
}

/// The frame that tells a peer why its stream is refused.
fn refusal_frame(refusal: &handshake::Refusal) -> PeerFrame {
    PeerFrame {
        kind: Some(peer_frame::Kind::Refusal(Refusal {
            reason: refusal.to_string(),
        })),
    }
}

/// Serves one peer-wire connection: the handshake, then every frame the
/// peer sends is handled here, on this task, until the connection ends or
/// the pod stops. A peer that sends bytes that are not frames is
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
    let checked = handshake::check(&theirs, &settings.cluster).and_then(|()| {
        theirs
            .node
            .parse::<NodeId>()
            .map_err(|_| handshake::Refusal::NoHello)
    });
    let from = match checked {
        Ok(from) => from,
        Err(refusal) => {
            tracing::warn!(peer = %theirs.address, %refusal, "refusing a peer stream");
            let _ = wire::answer(&mut stream, &refusal_frame(&refusal)).await;
            return;
        }
    };
    let nonce = secret::nonce();
    let proof = settings.prove(Role::Listener, &theirs.nonce, &nonce);
    let ours = PeerFrame::from(settings.hello(nonce.clone(), proof));
    if wire::answer(&mut stream, &ours).await.is_err() {
        return;
    }
    // Nothing is taken from the peer before it proved the secret.
    let proven =
        match tokio::time::timeout(HELLO_TIMEOUT, wire::read_proof(&mut stream, &mut buf)).await {
            Ok(Ok(mac)) => settings.proven(Role::Dialer, &nonce, &theirs.nonce, &mac),
            Ok(Err(_)) | Err(_) => false,
        };
    if !proven {
        stats::add(&mesh.counters().peer_auth_failures, 1);
        let refusal = handshake::Refusal::NoProof;
        tracing::warn!(peer = %theirs.address, %refusal, "refusing a peer stream");
        let _ = wire::send(&mut stream, &refusal_frame(&refusal)).await;
        return;
    }
    mesh.heard_from(&theirs.address);
    let _up = StreamUp::new(&mesh, from, &theirs.address);
    // A snapshot (one topic's newest history, in an interest ack or behind a
    // handover) is the largest frame a peer sends.
    let max = settings.max_message_bytes + MAX_ENVELOPE_OVERHEAD + 2 * SNAPSHOT_BYTES;
    let mut frames = Vec::new();
    loop {
        let mut ended = false;
        while frames.len() < MAX_RECEIVED_TOGETHER {
            match wire::decode(&mut buf, max) {
                Ok(Some(frame)) => frames.push(frame),
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(peer = %theirs.address, error = %e, "closing a peer connection that sent a bad frame");
                    ended = true;
                    break;
                }
            }
        }
        let full = frames.len() >= MAX_RECEIVED_TOGETHER;
        mesh.receive(from, frames.drain(..));
        if ended {
            return;
        }
        if full {
            continue;
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
