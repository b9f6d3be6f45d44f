//! A client that stops reading never delays the others: once its queue is
//! full it is disconnected with close code 1013.

mod common;

use common::pod::Pod;
use common::process::{http_get, sample};
use common::user::{Ending, User};
use futures_util::SinkExt;
use herald::proto::v1::PublishRequest;
use serde_json::json;
use tokio::net::TcpSocket;
use tokio_tungstenite::MaybeTlsStream;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_never_reads_is_closed_with_1013_and_the_others_get_everything() {
    let pod = Pod::start(&["--client-queue=256"]).await;
    let mut fast = User::connect(&pod.ws_url()).await;
    fast.subscribe("firehose").await;

    // A tiny receive window so the kernel cannot absorb the backlog for it.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set rcvbuf");
    let stream = socket.connect(pod.http).await.expect("connect");
    let (mut slow, _) =
        tokio_tungstenite::client_async(pod.ws_url(), MaybeTlsStream::Plain(stream))
            .await
            .expect("handshake");
    slow.send(Message::text(r#"{"op":"subscribe","topic":"firehose"}"#))
        .await
        .expect("subscribe sent");
    // Let the subscription land before publishing (its reply is never read).
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;

    // 4,000 messages of 4 KB: far more than the slow client's queue plus
    // every socket buffer between it and the server.
    const COUNT: usize = 4000;
    let payload = format!(r#""{}""#, "x".repeat(4000));
    let reader = tokio::spawn(async move {
        for n in 0..COUNT {
            assert_eq!(
                fast.message("firehose").await,
                json!("x".repeat(4000)),
                "message {n}"
            );
        }
        fast
    });
    // As soon as the pod gives up on the slow client, the client starts
    // reading again, and finds the close frame after what was in flight.
    let metrics_addr = pod.http;
    let slow_reader = tokio::spawn(async move {
        while metric(
            metrics_addr,
            r#"herald_messages_dropped_total{reason="slow_client"}"#,
        )
        .await
            == 0.0
        {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        User::from_socket(slow).ending().await
    });
    let mut client = pod.publisher().await;
    for _ in 0..COUNT {
        client
            .publish(PublishRequest {
                topic: "firehose".into(),
                data: payload.clone().into_bytes(),
                ..PublishRequest::default()
            })
            .await
            .expect("publish accepted");
    }
    let mut fast = reader.await.expect("the fast client got every message");

    assert_eq!(
        slow_reader.await.expect("slow reader joins"),
        Ending::Close(1013)
    );
    fast.still_usable().await;
    let closed = r#"herald_connections_closed_total{reason="slow"}"#;
    assert_eq!(metric(pod.http, closed).await, 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_pauses_catches_up_with_every_message_in_order() {
    let pod = Pod::start(&["--client-queue=4096"]).await;
    // A tiny receive window: while the client pauses, the server's writes
    // stop part-way through a frame and the session takes over writing.
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set rcvbuf");
    let stream = socket.connect(pod.http).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(pod.ws_url(), MaybeTlsStream::Plain(stream))
        .await
        .expect("handshake");
    let mut user = User::from_socket(ws);
    user.subscribe("paused").await;

    const COUNT: usize = 1000;
    let mut client = pod.publisher().await;
    for n in 0..COUNT {
        client
            .publish(PublishRequest {
                topic: "paused".into(),
                data: format!(r#"[{n},"{}"]"#, "x".repeat(2000)).into_bytes(),
                ..PublishRequest::default()
            })
            .await
            .expect("publish accepted");
    }
    // Only now does the client read: everything is there, in order.
    for n in 0..COUNT {
        assert_eq!(user.message("paused").await[0], json!(n));
    }
    user.still_usable().await;
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.expect("metrics answer");
    sample(&body, name)
}
