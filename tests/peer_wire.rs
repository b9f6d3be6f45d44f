//! The peer wire from the outside: a raw TCP client on the peer port that
//! speaks the preface and hello (and proves the cluster secret when the pod
//! has one) is a peer like any other, and one that then sends a frame that
//! is too long or not a frame at all is cut off alone — the pod keeps
//! serving its users and takes new peers. One that cannot prove the
//! secret is refused before anything it sends is taken.

mod common;

use bytes::{BufMut, BytesMut};
use common::process::{Ports, Process};
use common::user::User;
use herald::cluster::secret::{self, ClusterSecret, Role};
use herald::cluster::{handshake, wire};
use herald::message::{Epoch, NodeId};
use herald::proto::v1::{Envelope, Hello, PeerFrame, Proof, peer_frame};
use herald::topic::Topic;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Connects to the pod's peer port as a peer of its cluster, reads its
/// answer, which must be its own hello, and sends the proof of the cluster
/// secret (without one, an empty proof, which a pod without a secret
/// takes).
async fn join(pod_peer: u16) -> (TcpStream, BytesMut) {
    join_proving(pod_peer, None).await
}

/// The raw peer's side of a handshake up to the pod's hello: the stream,
/// what was read past the hello, the challenge it sent and the pod's hello.
async fn hellos(pod_peer: u16) -> (TcpStream, BytesMut, Vec<u8>, Hello) {
    let mut stream = TcpStream::connect(("127.0.0.1", pod_peer))
        .await
        .expect("the peer port accepts");
    let mut out = BytesMut::new();
    out.put_slice(wire::PREFACE);
    let challenge = secret::nonce();
    let hello = handshake::hello(
        "herald",
        NodeId::random(),
        "127.0.0.9:7070",
        challenge.clone(),
        Vec::new(),
    );
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
    let Some(peer_frame::Kind::Hello(theirs)) = answer.kind else {
        panic!("not a hello: {answer:?}");
    };
    assert_eq!(theirs.cluster, "herald");
    (stream, buf, challenge, theirs)
}

/// The raw peer's proof with `secret` (none: empty) over the pod's nonce.
fn proof(secret: Option<&ClusterSecret>, theirs: &Hello, challenge: &[u8]) -> PeerFrame {
    let mac = secret.map_or_else(Vec::new, |secret| {
        secret.prove(Role::Dialer, "herald", &theirs.nonce, challenge)
    });
    PeerFrame {
        kind: Some(peer_frame::Kind::Proof(Proof { mac })),
    }
}

async fn join_proving(pod_peer: u16, secret: Option<&ClusterSecret>) -> (TcpStream, BytesMut) {
    let (mut stream, buf, challenge, theirs) = hellos(pod_peer).await;
    if let Some(secret) = secret {
        let proven = secret.verify(
            Role::Listener,
            "herald",
            &challenge,
            &theirs.nonce,
            &theirs.proof,
        );
        assert!(proven, "the pod proves the secret too");
    }
    let proof = proof(secret, &theirs, &challenge);
    wire::send(&mut stream, &proof).await.expect("proof sent");
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

/// A pod with the cluster secret `secret`, and the file holding it.
fn pod_with_secret(secret: &str) -> (Process, Ports, tempfile::NamedTempFile) {
    let mut file = tempfile::NamedTempFile::new().expect("secret file");
    std::io::Write::write_all(&mut file, secret.as_bytes()).expect("written");
    let ports = Ports::free_on(&["127.0.0.1"]);
    let flag = format!("--cluster-secret-file={}", file.path().display());
    (
        Process::spawn("127.0.0.1", ports, &[flag], &[]),
        ports,
        file,
    )
}

#[tokio::test]
async fn a_peer_that_cannot_prove_the_cluster_secret_is_refused_before_it_can_publish() {
    let (pod, ports, _secret) = pod_with_secret("the-cluster-secret-0123456789\n");
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("wire").await;

    // It names the cluster and speaks the protocol, but holds another
    // secret: the pod refuses it, and the envelope it sends anyway is
    // never taken.
    let mut wrong = tempfile::NamedTempFile::new().expect("file");
    std::io::Write::write_all(&mut wrong, b"a-guessed-secret-0123456789").expect("written");
    let guessed = ClusterSecret::load(wrong.path()).expect("loads");
    let (mut stream, mut buf, challenge, theirs) = hellos(ports.peer).await;
    assert!(
        !guessed.verify(
            Role::Listener,
            "herald",
            &challenge,
            &theirs.nonce,
            &theirs.proof
        ),
        "the pod's proof is of its own secret"
    );
    let mut out = BytesMut::new();
    wire::encode(&proof(Some(&guessed), &theirs, &challenge), &mut out);
    out.extend_from_slice(&envelope(
        "01JDZ0000000000000000000AD",
        "wire",
        1,
        r#"{"n":1}"#,
    ));
    stream.write_all(&out).await.expect("sent");
    let refusal = tokio::time::timeout(
        common::PATIENCE,
        wire::read_frame(&mut stream, &mut buf, 4096),
    )
    .await
    .expect("the pod answers the proof")
    .expect("reads")
    .expect("a refusal");
    assert!(
        matches!(refusal.kind, Some(peer_frame::Kind::Refusal(ref r)) if r.reason.contains("cluster secret")),
        "{refusal:?}"
    );
    closed_by_pod(&mut stream).await;
    pod.wait_for_log("did not prove that it holds the cluster secret")
        .await;
    user.expect_silence(std::time::Duration::from_millis(300))
        .await;
    let (_, metrics) = common::process::http_get(
        format!("127.0.0.1:{}", ports.http).parse().expect("addr"),
        "/metrics",
    )
    .await
    .expect("metrics");
    assert_eq!(
        common::process::sample(&metrics, "herald_peer_auth_failures_total"),
        1.0
    );

    // One that holds the secret (and checks the pod's proof) is a peer.
    let mut right = tempfile::NamedTempFile::new().expect("file");
    std::io::Write::write_all(&mut right, b"the-cluster-secret-0123456789").expect("written");
    let shared = ClusterSecret::load(right.path()).expect("loads");
    let (mut good, _) = join_proving(ports.peer, Some(&shared)).await;
    let out = envelope("01JDZ0000000000000000000AE", "wire", 1, r#"{"n":2}"#);
    good.write_all(&out).await.expect("sent");
    assert_eq!(user.message("wire").await["n"], 2);
}

#[tokio::test]
async fn pods_with_different_cluster_secrets_never_join_and_each_says_why() {
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let peers = format!("--peers={}:{p},{}:{p}", ips[0], ips[1], p = ports.peer);
    let mut files = Vec::new();
    let pods: Vec<Process> = ips
        .iter()
        .enumerate()
        .map(|(i, ip)| {
            let mut file = tempfile::NamedTempFile::new().expect("secret file");
            std::io::Write::write_all(
                &mut file,
                format!("secret-of-pod-{i}-0123456789").as_bytes(),
            )
            .expect("written");
            let flags = [
                "--discovery=static".to_owned(),
                peers.clone(),
                format!("--cluster-secret-file={}", file.path().display()),
                "--peer-ready-timeout=1s".to_owned(),
            ];
            files.push(file);
            Process::spawn(ip, ports, &flags, &[])
        })
        .collect();
    for pod in &pods {
        // Each refuses the other as a listener, and is refused as a dialler.
        pod.wait_for_log("refusing a peer stream").await;
        pod.wait_for_log("did not prove that it holds the cluster secret")
            .await;
        // Ready alone, once the wait for its peer's stream ran out.
        pod.wait_ready().await;
    }
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe("apart").await;
    pods[0].publish("apart", r#"{"n":1}"#).await;
    user.expect_silence(std::time::Duration::from_millis(500))
        .await;
}

#[tokio::test]
async fn pods_that_share_the_cluster_secret_form_a_group() {
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let peers = format!("--peers={}:{p},{}:{p}", ips[0], ips[1], p = ports.peer);
    let mut file = tempfile::NamedTempFile::new().expect("secret file");
    std::io::Write::write_all(&mut file, b"one-secret-for-all-0123456789").expect("written");
    let flags = [
        "--discovery=static".to_owned(),
        peers,
        format!("--cluster-secret-file={}", file.path().display()),
    ];
    let pods: Vec<Process> = ips
        .iter()
        .map(|ip| Process::spawn(ip, ports, &flags, &[]))
        .collect();
    for pod in &pods {
        pod.wait_ready().await;
    }
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe("together").await;
    pods[0].publish("together", r#"{"n":1}"#).await;
    assert_eq!(user.message("together").await["n"], 1);
    assert!(
        !pods[0].logs().contains("did not prove"),
        "{}",
        pods[0].logs()
    );
}
