//! A pod of the previous release, played by the generated tonic code: it
//! speaks only the gRPC `Peer` service on its peer port (no peer wire), and
//! hands every envelope it receives to the test.

use std::net::SocketAddr;
use std::pin::Pin;

use herald::proto::v1::peer_server::{Peer, PeerServer};
use herald::proto::v1::{Envelope, Hello, PeerFrame, peer_frame};
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_stream::{Stream, StreamExt};
use tonic::transport::ServerTlsConfig;
use tonic::{Request, Response, Status, Streaming};

/// The hello of a pod of the previous release (peer protocol version 1).
pub fn hello(address: &str) -> PeerFrame {
    PeerFrame {
        kind: Some(peer_frame::Kind::Hello(Hello {
            cluster: "herald".into(),
            protocol_version: 1,
            min_protocol_version: 1,
            node: "00000000000000aa".into(),
            address: address.into(),
        })),
    }
}

/// Serves the old pod on an ephemeral port of `ip` (under `tls` when
/// given); returns its peer address and what it receives.
pub async fn serve(
    ip: &str,
    tls: Option<ServerTlsConfig>,
) -> (SocketAddr, mpsc::Receiver<Envelope>) {
    let listener = TcpListener::bind((ip, 0)).await.expect("binds");
    let address = listener.local_addr().expect("address");
    let (envelopes, received) = mpsc::channel(16);
    let mut server = tonic::transport::Server::builder();
    if let Some(tls) = tls {
        server = server.tls_config(tls).expect("TLS configured");
    }
    tokio::spawn(
        server
            .add_service(PeerServer::new(OldPod { envelopes }))
            .serve_with_incoming(TcpListenerStream::new(listener)),
    );
    (address, received)
}

struct OldPod {
    envelopes: mpsc::Sender<Envelope>,
}

type Frames = Pin<Box<dyn Stream<Item = Result<PeerFrame, Status>> + Send>>;

#[tonic::async_trait]
impl Peer for OldPod {
    type BroadcastStream = Frames;

    async fn broadcast(
        &self,
        request: Request<Streaming<PeerFrame>>,
    ) -> Result<Response<Frames>, Status> {
        let mut inbound = request.into_inner();
        match inbound.message().await? {
            Some(PeerFrame {
                kind: Some(peer_frame::Kind::Hello(_)),
            }) => {}
            other => return Err(Status::invalid_argument(format!("no hello: {other:?}"))),
        }
        let envelopes = self.envelopes.clone();
        tokio::spawn(async move {
            while let Ok(Some(frame)) = inbound.message().await {
                if let Some(peer_frame::Kind::Envelope(envelope)) = frame.kind {
                    let _ = envelopes.send(envelope).await;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::once(Ok(hello("127.0.0.2:0"))).chain(tokio_stream::pending()),
        )))
    }
}
