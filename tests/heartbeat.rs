//! The server pings every connection and drops the ones that stay silent.

mod common;

use std::time::{Duration, Instant};

use common::pod::Pod;
use futures_util::StreamExt;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn the_server_pings_and_a_client_that_answers_stays_connected() {
    let pod = Pod::start(&["--heartbeat-interval=100ms"]).await;
    let (mut socket, _) = tokio_tungstenite::connect_async(pod.ws_url())
        .await
        .expect("connects");
    // Reading lets tungstenite answer each ping with a pong.
    let mut pings = 0;
    let deadline = Instant::now() + Duration::from_millis(800);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(300), socket.next()).await {
            Ok(Some(Ok(Message::Ping(_)))) => pings += 1,
            Ok(Some(Ok(other))) => panic!("unexpected {other:?}"),
            Ok(Some(Err(e))) => panic!("connection failed: {e}"),
            Ok(None) => panic!("connection closed though the client answered pings"),
            Err(_) => {}
        }
    }
    assert!(pings >= 3, "only {pings} pings");
}

#[tokio::test]
async fn a_client_that_never_answers_is_dropped_after_two_intervals() {
    let pod = Pod::start(&["--heartbeat-interval=100ms"]).await;
    let (socket, _) = tokio_tungstenite::connect_async(pod.ws_url())
        .await
        .expect("connects");
    // Not reading means no pongs go back.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let (_, mut read) = socket.split();
    let ended = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match read.next().await {
                Some(Ok(Message::Ping(_))) => {}
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
    .await;
    assert!(ended.is_ok(), "the silent connection was not dropped");
}
