//! The peer wire from the outside: a raw TCP client on the peer port that
//! speaks the preface and hello is a peer like any other, and one that
//! then sends a frame that is too long or not a frame at all is cut off
//! alone — the pod keeps serving its users and takes new peers.

mod common;

use bytes::{BufMut, BytesMut};
use common::process::{Ports, Process};
use common::user::User;
use herald::cluster::{handshake, wire};
use herald::message::{Epoch, NodeId};
use herald::proto::v1::{Envelope, PeerFrame, peer_frame};
use herald::topic::Topic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to the pod's peer port as a peer of its cluster and reads its
/// answer, which must be its own hello.
async fn join(pod_peer: u16) -> (TcpStream, BytesMut) {
    let mut stream = TcpStream::connect(("127.0.0.1", pod_peer))
        .await
        .expect("the peer port accepts");
    let mut out = BytesMut::new();
    out.put_slice(wire::PREFACE);
    let hello = handshake::hello("herald", NodeId::random(), "127.0.0.9:7070");
    wire::encode(&PeerFrame::from(hello), &mut out);
    stream.write_all(&out).await.expect("sent");
    let mut preface = [0; 16];
    stream.read_exact(&mut preface).await.expect("a preface");
    assert_eq!(&preface, wire::PREFACE);
    let mut buf = BytesMut::new();
    let answer = wire::read_frame(&mut stream, &mut buf, 4096)
        .await
        .expect("reads")
        .expect("an answer");
    assert!(
        matches!(answer.kind, Some(peer_frame::Kind::Hello(ref h)) if h.cluster == "herald"),
        "{answer:?}"
    );
    (stream, buf)
}

/// Message `offset` of `topic`, numbered by the raw peer.
fn envelope(id: &str, topic: &str, offset: u64, data: &str) -> BytesMut {
    let mut out = BytesMut::new();
    let topic_name = Topic::new(topic).expect("valid");
    wire::encode(
        &PeerFrame {
            kind: Some(peer_frame::Kind::Envelope(Envelope {
                id: id.into(),
                topic: topic.into(),
                data: data.as_bytes().to_vec().into(),
                origin: "00000000000000bb".into(),
                offset,
                epoch: Epoch::new_for(&topic_name).as_u64(),
                sequencer: "00000000000000bb".into(),
                ..Envelope::default()
            })),
        },
        &mut out,
    );
    out
}

/// Waits for the pod to close `stream`: a read that returns nothing.
async fn closed_by_pod(stream: &mut TcpStream) {
    let mut rest = Vec::new();
    let read = tokio::time::timeout(common::PATIENCE, stream.read_to_end(&mut rest)).await;
    assert!(read.is_ok(), "the pod closes the connection");
}

#[tokio::test]
async fn a_peer_sending_a_bad_frame_is_cut_off_and_the_pod_serves_on() {
    let ports = Ports::free_on(&["127.0.0.1"]);
    let pod = Process::spawn("127.0.0.1", ports, &[], &[]);
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("wire").await;

    // A frame announcing 4 GiB is refused before its bytes arrive; the
    // envelope before it in the same write is delivered.
    let (mut greedy, _) = join(ports.peer).await;
    let mut out = envelope("01JDZ0000000000000000000AB", "wire", 1, r#"{"n":1}"#);
    out.put_u32(u32::MAX);
    greedy.write_all(&out).await.expect("sent");
    assert_eq!(user.message("wire").await["n"], 1);
    closed_by_pod(&mut greedy).await;
    pod.wait_for_log("closing a peer connection that sent a bad frame")
        .await;

    // Bytes that are not a PeerFrame end that connection too.
    let (mut garbled, _) = join(ports.peer).await;
    garbled
        .write_all(&[0, 0, 0, 3, 0xff, 0xff, 0xff])
        .await
        .expect("sent");
    closed_by_pod(&mut garbled).await;

    // The pod still takes peers, and its users still get their messages
    // from peers and from the API.
    let (mut good, _) = join(ports.peer).await;
    let out = envelope("01JDZ0000000000000000000AC", "wire", 1, r#"{"n":2}"#);
    good.write_all(&out).await.expect("sent");
    // Another epoch of the topic (each raw peer's envelope has its own):
    // the user is told of the gap first.
    assert_eq!(user.next().await["op"], "gap");
    assert_eq!(user.message("wire").await["n"], 2);
    // The raw peer is no live sequencer (this pod has no stream to it):
    // the pod numbers the topic itself, in an epoch of its own.
    pod.publish("wire", r#"{"n":3}"#).await;
    assert_eq!(user.next().await["op"], "gap");
    assert_eq!(user.message("wire").await["n"], 3);
}
