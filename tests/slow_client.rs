//! A client that stops reading never delays the others: once its queue is
//! full it reads the topic from history at its own pace, is told with a
//! `gap` when the history no longer holds what it missed, and once its
//! socket stops taking writes it is disconnected with close code 1013. A
//! client that only fell behind its queue (a burst) is caught up, not cut
//! off.

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
    // Short heartbeats: a write that stalls for two of them ends the client.
    let pod = Pod::start(&["--client-queue=256", "--heartbeat-interval=1s"]).await;
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
        let deadline = std::time::Instant::now() + common::PATIENCE;
        while metric(
            metrics_addr,
            r#"herald_connections_closed_total{reason="slow"}"#,
        )
        .await
            == 0.0
        {
            assert!(std::time::Instant::now() < deadline, "never closed as slow");
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
    let mut user = User::from_socket(tiny_window(&pod).await);
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

/// A WebSocket to `pod` whose receive buffer is 4 KiB, so the kernel
/// cannot absorb a backlog for it.
async fn tiny_window(
    pod: &Pod,
) -> tokio_tungstenite::WebSocketStream<MaybeTlsStream<tokio::net::TcpStream>> {
    let socket = TcpSocket::new_v4().expect("socket");
    socket.set_recv_buffer_size(4096).expect("set rcvbuf");
    let stream = socket.connect(pod.http).await.expect("connect");
    let (ws, _) = tokio_tungstenite::client_async(pod.ws_url(), MaybeTlsStream::Plain(stream))
        .await
        .expect("handshake");
    ws
}

async fn metric(addr: std::net::SocketAddr, name: &str) -> f64 {
    let (_, body) = http_get(addr, "/metrics").await.expect("metrics answer");
    sample(&body, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_bigger_than_the_client_queue_is_caught_up_from_history_not_cut_off() {
    let pod = Pod::start(&["--client-queue=64", "--history-messages=5000"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("burst").await;
    const COUNT: u64 = 3000;
    pod.publish_batch("burst", (0..COUNT).map(|n| n.to_string().into_bytes()))
        .await;
    // One batch of 3,000 to a queue of 64: the user falls behind at once,
    // and reads the rest from history, every offset in order.
    for n in 0..COUNT {
        let frame = user.frame("burst").await;
        assert_eq!(
            (frame["offset"].clone(), frame["data"].clone()),
            (json!(n + 1), json!(n))
        );
    }
    pod.publish("burst", r#""live""#).await;
    assert_eq!(user.message("burst").await, json!("live"), "live again");
    user.still_usable().await;
    let closed = r#"herald_connections_closed_total{reason="slow"}"#;
    assert_eq!(metric(pod.http, closed).await, 0.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reader_slower_than_the_history_gets_a_gap_and_stays_connected() {
    let pod = Pod::start(&["--client-queue=16", "--history-messages=50"]).await;
    // A tiny receive window, so the backlog stays in the server's queue.
    let mut user = User::from_socket(tiny_window(&pod).await);
    user.subscribe("lagging").await;
    // 400 messages of 2 KB while the user reads nothing: far more than
    // its queue, its socket and the 50 the history keeps.
    const COUNT: u64 = 400;
    let data = (0..COUNT).map(|n| format!(r#"[{n},"{}"]"#, "x".repeat(2000)).into_bytes());
    pod.publish_batch("lagging", data).await;
    // Reading now: every offset follows the one before, or a gap that
    // says where the user stands.
    let (mut at, mut gaps) = (0, 0);
    while at < COUNT {
        let frame = user.next().await;
        match frame["op"].as_str() {
            Some("gap") => {
                gaps += 1;
                assert!(frame["offset"].as_u64() > Some(at), "{frame}");
                at = frame["offset"].as_u64().expect("offset");
            }
            Some("message") => {
                assert_eq!(frame["offset"], json!(at + 1), "{frame}");
                at += 1;
            }
            _ => panic!("unexpected {frame}"),
        }
    }
    assert!(gaps >= 1, "the history could not hold the backlog");
    pod.publish("lagging", r#""live""#).await;
    assert_eq!(user.message("lagging").await, json!("live"), "live again");
    user.still_usable().await;
    let dropped = r#"herald_messages_dropped_total{reason="slow_client"}"#;
    assert!(
        metric(pod.http, dropped).await > 0.0,
        "the missed ones are counted"
    );
    let closed = r#"herald_connections_closed_total{reason="slow"}"#;
    assert_eq!(metric(pod.http, closed).await, 0.0);
}
