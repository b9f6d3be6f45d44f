//! A herald pod running in the test process, on ephemeral ports.

use std::net::SocketAddr;

use clap::Parser;
use herald::app::{self, Listeners};
use herald::config::{Cli, Command};
use herald::message::NodeId;
use herald::proto::v1::publisher_client::PublisherClient;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

/// A pod served by `herald::app::run` on 127.0.0.1, port 0.
pub struct Pod {
    /// HTTP (WebSocket and probes).
    pub http: SocketAddr,
    /// gRPC.
    pub grpc: SocketAddr,
    /// Peer port.
    pub peer: SocketAddr,
    shutdown: CancellationToken,
    task: Option<JoinHandle<herald::error::Result<()>>>,
}

impl Pod {
    /// Starts a single pod; `flags` are extra `herald serve` flags.
    pub async fn start(flags: &[&str]) -> Self {
        let mut argv = vec!["herald", "serve"];
        argv.extend_from_slice(flags);
        let Command::Serve(args) = Cli::try_parse_from(argv).expect("flags parse").command else {
            unreachable!("serve was given");
        };
        let bind = || async { TcpListener::bind("127.0.0.1:0").await.expect("bind port 0") };
        let listeners = Listeners {
            http: bind().await,
            grpc: bind().await,
            peer: bind().await,
            admin: None,
        };
        let http = listeners.http.local_addr().expect("bound");
        let grpc = listeners.grpc.local_addr().expect("bound");
        let peer = listeners.peer.local_addr().expect("bound");
        let shutdown = CancellationToken::new();
        let task = tokio::spawn(app::run(
            *args,
            listeners,
            NodeId::random(),
            shutdown.clone(),
        ));
        Self {
            http,
            grpc,
            peer,
            shutdown,
            task: Some(task),
        }
    }

    /// `ws://.../ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}/ws", self.http)
    }

    /// A generated gRPC client connected to this pod.
    pub async fn publisher(&self) -> PublisherClient<Channel> {
        PublisherClient::connect(format!("http://{}", self.grpc))
            .await
            .expect("gRPC connects")
    }

    /// Publishes `data` to `topic` and returns the message id.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        super::publish(format!("http://{}", self.grpc), topic, data).await
    }

    /// Publishes every one of `data` to `topic` in one `PublishBatch`.
    pub async fn publish_batch(&self, topic: &str, data: impl IntoIterator<Item = Vec<u8>>) {
        let messages = data
            .into_iter()
            .map(|data| herald::proto::v1::PublishRequest {
                topic: topic.into(),
                data,
                ..Default::default()
            })
            .collect();
        self.publisher()
            .await
            .publish_batch(herald::proto::v1::PublishBatchRequest { messages })
            .await
            .expect("batch accepted");
    }

    /// Cancels the pod and waits for it to finish draining.
    pub async fn stop(mut self) {
        self.shutdown.cancel();
        if let Some(task) = self.task.take() {
            task.await
                .expect("pod task joins")
                .expect("pod ran cleanly");
        }
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}
