//! A published message reaches every local subscriber of its topic, exactly
//! once, in publish order, and nobody else.

mod common;

use std::time::Duration;

use common::pod::Pod;
use common::user::User;
use herald::proto::v1::{PublishBatchRequest, PublishRequest};
use serde_json::json;

#[tokio::test]
async fn a_subscriber_receives_what_is_published_to_its_topic() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("room:1").await;
    let id = pod.publish("room:1", r#"{"k":1}"#).await;
    let frame = user.next().await;
    let epoch = frame["epoch"].clone();
    assert!(epoch.as_str().is_some_and(|e| e.len() == 10), "{frame}");
    assert_eq!(
        frame,
        json!({"op":"message","topic":"room:1","id":id,"offset":1,"epoch":epoch,"data":{"k":1}})
    );
}

#[tokio::test]
async fn published_json_arrives_compacted_with_its_key_order_and_numbers_intact() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("t").await;
    pod.publish("t", "{\n  \"z\": 1,\n  \"a\": [1.50, \"x y\"]\n}")
        .await;
    let frame = user.next_raw().await;
    assert!(
        frame.ends_with(r#","data":{"z":1,"a":[1.50,"x y"]}}"#),
        "{frame}"
    );
}

#[tokio::test]
async fn other_topics_receive_nothing() {
    let pod = Pod::start(&[]).await;
    let mut near = User::connect(&pod.ws_url()).await;
    let mut far = User::connect(&pod.ws_url()).await;
    near.subscribe("room:1").await;
    far.subscribe("room:2").await;
    pod.publish("room:1", "1").await;
    assert_eq!(near.message("room:1").await, json!(1));
    far.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn unsubscribing_stops_delivery() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("t").await;
    user.unsubscribe("t").await;
    pod.publish("t", "1").await;
    user.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn subscribing_twice_still_delivers_each_message_once() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("t").await;
    user.subscribe("t").await;
    pod.publish("t", "1").await;
    pod.publish("t", "2").await;
    assert_eq!(user.message("t").await, json!(1));
    assert_eq!(user.message("t").await, json!(2));
    user.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn a_thousand_messages_arrive_in_publish_order() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("seq").await;
    let mut client = pod.publisher().await;
    for n in 0..1000 {
        client
            .publish(PublishRequest {
                topic: "seq".into(),
                data: n.to_string().into_bytes(),
                ..PublishRequest::default()
            })
            .await
            .expect("publish accepted");
    }
    for n in 0..1000 {
        assert_eq!(user.message("seq").await, json!(n));
    }
}

#[tokio::test]
async fn five_hundred_subscribers_all_receive_every_message() {
    // 500 users from one test address: past the per-address rate.
    let pod = Pod::start(&["--max-connection-rate-per-ip=0"]).await;
    let mut users = Vec::new();
    for _ in 0..500 {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe("crowd").await;
        users.push(user);
    }
    pod.publish("crowd", r#""one""#).await;
    pod.publish("crowd", r#""two""#).await;
    for user in &mut users {
        assert_eq!(user.message("crowd").await, json!("one"));
        assert_eq!(user.message("crowd").await, json!("two"));
    }
}

#[tokio::test]
async fn a_batch_is_delivered_in_order_and_answered_with_one_id_per_message() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("a").await;
    user.subscribe("b").await;
    let messages = [("a", "1"), ("b", "2"), ("a", "3")]
        .map(|(topic, data)| PublishRequest {
            topic: topic.into(),
            data: data.into(),
            ..PublishRequest::default()
        })
        .to_vec();
    let results = pod
        .publisher()
        .await
        .publish_batch(PublishBatchRequest { messages })
        .await
        .expect("batch accepted")
        .into_inner()
        .results;
    assert_eq!(results.len(), 3);
    for ((topic, data), result) in [("a", 1), ("b", 2), ("a", 3)].into_iter().zip(&results) {
        let frame = user.next().await;
        assert_eq!(
            frame,
            json!({"op":"message","topic":topic,"id":result.id,"offset":result.offset,
                "epoch":result.epoch,"data":data})
        );
    }
}

#[tokio::test]
async fn a_batch_with_one_bad_message_delivers_nothing() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("a").await;
    let messages = vec![
        PublishRequest {
            topic: "a".into(),
            data: b"1".to_vec(),
            ..PublishRequest::default()
        },
        PublishRequest {
            topic: "a".into(),
            data: b"{oops".to_vec(),
            ..PublishRequest::default()
        },
    ];
    let status = pod
        .publisher()
        .await
        .publish_batch(PublishBatchRequest { messages })
        .await
        .expect_err("second message is not JSON");
    assert_eq!(status.code(), tonic::Code::InvalidArgument);
    assert!(
        status.message().starts_with("message 1 of the batch"),
        "{}",
        status.message()
    );
    user.expect_silence(Duration::from_millis(200)).await;
}

#[tokio::test]
async fn queued_messages_for_one_client_may_share_a_frame_as_newline_separated_objects() {
    let pod = Pod::start(&["--client-queue=4096"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("burst").await;
    pod.publish_batch("burst", (0..2000).map(|n: u32| n.to_string().into_bytes()))
        .await;
    for n in 0..2000 {
        assert_eq!(user.message("burst").await, json!(n));
    }
    // Each frame is counted once however many objects it carries; the
    // delivery stays correct whether or not the server coalesced.
    assert!(user.frames >= 1 && user.frames <= 2000);
}

#[tokio::test]
async fn with_a_write_delay_messages_arriving_soon_after_a_write_share_the_next_frame() {
    let pod = Pod::start(&["--write-delay=1s"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("paced").await;
    // Idle until now, so the first message goes out at once, alone.
    pod.publish("paced", "1").await;
    assert_eq!(user.message("paced").await, json!(1));
    let after_first = user.frames;
    // These arrive within the delay after that write: they wait for it to
    // pass and leave together.
    pod.publish("paced", "2").await;
    pod.publish("paced", "3").await;
    assert_eq!(user.message("paced").await, json!(2));
    assert_eq!(user.message("paced").await, json!(3));
    assert_eq!(user.frames, after_first + 1, "2 and 3 share one frame");
}
