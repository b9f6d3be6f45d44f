//! Bad input from a WebSocket client gets an error reply with a stable code
//! and leaves the connection, the pod and the other users unharmed.

mod common;

use common::pod::Pod;
use common::user::{Ending, User};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn error_code_for(user: &mut User, frame: &str) -> serde_json::Value {
    user.send(Message::text(frame)).await;
    let reply = user.next().await;
    assert_eq!(reply["op"], "reply", "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    reply["error"]["code"].clone()
}

#[tokio::test]
async fn each_malformed_request_gets_its_code_and_the_connection_stays_usable() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let cases = [
        ("{not json", "invalid_json"),
        ("[1,2,3]", "missing_field"),
        (r#"{"topic":"t"}"#, "missing_field"),
        (r#"{"op":"subscribe","ref":"1"}"#, "missing_field"),
        (r#"{"op":"dance","ref":"1"}"#, "unknown_op"),
        (r#"{"op":"subscribe","topic":"has space"}"#, "invalid_topic"),
        (r#"{"op":"subscribe","topic":""}"#, "invalid_topic"),
    ];
    for (frame, code) in cases {
        assert_eq!(
            error_code_for(&mut user, frame).await,
            json!(code),
            "for {frame}"
        );
        user.still_usable().await;
    }
}

#[tokio::test]
async fn an_error_reply_echoes_the_ref() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user
        .request(json!({"op":"subscribe","topic":"a*b","ref":"r9"}))
        .await;
    assert_eq!(reply["ref"], "r9");
    assert_eq!(reply["error"]["code"], "invalid_topic");
}

#[tokio::test]
async fn a_binary_frame_is_refused_and_the_connection_stays_usable() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.send(Message::binary(vec![1, 2, 3])).await;
    let reply = user.next().await;
    assert_eq!(reply["error"]["code"], "unsupported_frame");
    user.still_usable().await;
}

#[tokio::test]
async fn several_requests_in_one_frame_get_their_replies_in_order() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let batch = "{\"op\":\"subscribe\",\"topic\":\"a\",\"ref\":\"1\"}\n{\"op\":\"oops\",\"ref\":\"2\"}\n{\"op\":\"ping\",\"ref\":\"3\"}";
    user.send(Message::text(batch)).await;
    assert_eq!(
        user.next().await,
        json!({"op":"reply","ref":"1","ok":true,"epoch":"","offset":0})
    );
    assert_eq!(user.next().await["error"]["code"], "unknown_op");
    assert_eq!(user.next().await, json!({"op":"pong","ref":"3"}));
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009_and_spares_the_others() {
    let pod = Pod::start(&["--max-frame-bytes=1024"]).await;
    let mut bystander = User::connect(&pod.ws_url()).await;
    bystander.subscribe("t").await;
    let mut offender = User::connect(&pod.ws_url()).await;
    let huge = format!(r#"{{"op":"ping","ref":"{}"}}"#, "x".repeat(2048));
    offender.send(Message::text(huge)).await;
    assert_eq!(offender.ending().await, Ending::Close(1009));
    pod.publish("t", "1").await;
    assert_eq!(bystander.message("t").await, json!(1));
}

#[tokio::test]
async fn subscriptions_past_the_limit_are_refused_with_too_many_subscriptions() {
    let pod = Pod::start(&["--max-subscriptions=3"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    for topic in ["a", "b", "c"] {
        user.subscribe(topic).await;
    }
    user.subscribe("a").await; // already held: still fine
    let reply = user
        .request(json!({"op":"subscribe","topic":"d","ref":"4"}))
        .await;
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "too_many_subscriptions");
    user.unsubscribe("a").await;
    user.subscribe("d").await;
    pod.publish("d", "1").await;
    assert_eq!(user.message("d").await, json!(1));
}
