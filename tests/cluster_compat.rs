//! Pods of the previous release speak only the gRPC `Peer` service on the
//! peer port; pods of this one dial the peer wire first. During a rolling
//! upgrade both must keep delivering: this pod accepts a gRPC stream from an
//! older pod, and falls back to gRPC when it dials one. The older pod is
//! played here by the generated tonic client and server.

mod common;

use std::time::Duration;

use common::PATIENCE;
use common::old_pod;
use common::process::{Ports, Process};
use common::user::User;
use herald::proto::v1::peer_client::PeerClient;
use herald::proto::v1::{Envelope, PeerFrame, peer_frame};
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;

#[tokio::test]
async fn a_pod_of_the_previous_release_streaming_over_grpc_reaches_this_pods_users() {
    let ports = Ports::free_on(&["127.0.0.1"]);
    let pod = Process::spawn("127.0.0.1", ports, &[], &[]);
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("upgrade").await;

    let (frames, outbound) = mpsc::channel(4);
    frames
        .send(old_pod::hello("127.0.0.9:7070"))
        .await
        .expect("queued");
    let mut client = PeerClient::connect(format!("http://127.0.0.1:{}", ports.peer))
        .await
        .expect("the peer port takes HTTP/2");
    let mut replies = client
        .broadcast(ReceiverStream::new(outbound))
        .await
        .expect("the gRPC Peer service answers")
        .into_inner();
    let reply = replies.message().await.expect("a reply").expect("a frame");
    assert!(
        matches!(reply.kind, Some(peer_frame::Kind::Hello(ref h)) if h.cluster == "herald"),
        "{reply:?}"
    );
    frames
        .send(PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(Envelope {
                id: "01JDZ0000000000000000000AA".into(),
                topic: "upgrade".into(),
                data: br#"{"from":"old"}"#.to_vec().into(),
                origin: "00000000000000aa".into(),
                trace_context: Default::default(),
            })),
        })
        .await
        .expect("queued");
    let got = user.message("upgrade").await;
    assert_eq!(got["from"], "old");
}

#[tokio::test]
async fn this_pod_dials_a_pod_of_the_previous_release_over_grpc() {
    let (old, mut received) = old_pod::serve("127.0.0.2", None).await;

    let ports = Ports::free_on(&["127.0.0.1"]);
    let pod = Process::spawn(
        "127.0.0.1",
        ports,
        &["--discovery=static".into(), format!("--peers={old}")],
        &[],
    );
    let line = pod.wait_for_log("peer stream up").await;
    assert!(line.contains("transport=grpc"), "{line}");
    pod.publish("upgrade", r#"{"from":"new"}"#).await;
    let envelope = tokio::time::timeout(PATIENCE, received.recv())
        .await
        .expect("the old pod receives the message in time")
        .expect("an envelope");
    assert_eq!(envelope.topic, "upgrade");
    assert_eq!(&envelope.data[..], br#"{"from":"new"}"#);
    // Nothing else was sent for it.
    assert!(
        tokio::time::timeout(Duration::from_millis(200), received.recv())
            .await
            .is_err()
    );
}
