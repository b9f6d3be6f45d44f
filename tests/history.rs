//! History and resume on one pod: the `history` op and the gRPC `History`
//! RPC read the same kept messages; `subscribe` with `since` replays exactly
//! what followed, or says it cannot; every bad position or limit gets its
//! documented error and leaves the connection, the pod and other users as
//! they were; bounds evict whole messages and a resume past them is not
//! recovered.

mod common;

use common::pod::Pod;
use common::user::User;
use herald::message::Epoch;
use herald::proto::v1::{HistoryRequest, Position};
use herald::topic::Topic;
use serde_json::{Value, json};

/// Publishes `count` messages `0..count` to `topic`; returns the frames a
/// subscriber saw.
async fn published(pod: &Pod, user: &mut User, topic: &str, count: usize) -> Vec<Value> {
    let mut frames = Vec::new();
    for n in 0..count {
        pod.publish(topic, &n.to_string()).await;
        frames.push(user.frame(topic).await);
    }
    frames
}

fn since(frame: &Value) -> Value {
    json!({"epoch": frame["epoch"], "offset": frame["offset"]})
}

#[tokio::test]
async fn history_gives_the_last_messages_or_those_after_a_position_with_the_head() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("room:1").await;
    let frames = published(&pod, &mut user, "room:1", 5).await;

    let last = user
        .request(json!({"op": "history", "topic": "room:1", "limit": 3, "ref": 1}))
        .await;
    assert_eq!(last["ok"], true, "{last}");
    assert_eq!(last["offset"], 5);
    assert_eq!(last["epoch"], frames[0]["epoch"]);
    assert!(last.get("recovered").is_none());
    assert_eq!(
        last["messages"],
        json!(frames[2..]),
        "the last 3, oldest first"
    );

    let after = user
        .request(json!({"op": "history", "topic": "room:1", "limit": 2, "since": since(&frames[0]), "ref": 2}))
        .await;
    assert_eq!(after["recovered"], true, "{after}");
    assert_eq!(after["messages"], json!(frames[1..3]));

    let empty = user
        .request(json!({"op": "history", "topic": "room:2", "ref": 3}))
        .await;
    assert_eq!(
        empty,
        json!({"op":"reply","ref":3,"ok":true,"epoch":"","offset":0,"messages":[]})
    );
}

#[tokio::test]
async fn grpc_history_answers_what_the_history_op_answers() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("room:1").await;
    let frames = published(&pod, &mut user, "room:1", 4).await;
    let mut client = pod.publisher().await;
    let reply = client
        .history(HistoryRequest {
            topic: "room:1".into(),
            limit: 2,
            since: Some(Position {
                epoch: frames[0]["epoch"].as_str().expect("epoch").into(),
                offset: 1,
            }),
        })
        .await
        .expect("answered")
        .into_inner();
    assert_eq!(reply.recovered, Some(true));
    let head = reply.head.expect("a head");
    assert_eq!(
        (head.epoch.as_str(), head.offset),
        (frames[0]["epoch"].as_str().expect("epoch"), 4)
    );
    let got: Vec<_> = reply
        .messages
        .iter()
        .map(|m| (m.id.clone(), m.offset))
        .collect();
    let want: Vec<_> = frames[1..3]
        .iter()
        .map(|f| {
            (
                f["id"].as_str().expect("id").to_owned(),
                f["offset"].as_u64().expect("offset"),
            )
        })
        .collect();
    assert_eq!(got, want);
    assert_eq!(reply.messages[0].data, b"1");

    for (request, why) in [
        (
            HistoryRequest {
                topic: "bad topic".into(),
                ..HistoryRequest::default()
            },
            "topic",
        ),
        (
            HistoryRequest {
                topic: "room:1".into(),
                limit: 1001,
                ..HistoryRequest::default()
            },
            "limit",
        ),
        (
            HistoryRequest {
                topic: "room:1".into(),
                since: Some(Position {
                    epoch: "nonsense".into(),
                    offset: 1,
                }),
                ..HistoryRequest::default()
            },
            "since",
        ),
        (
            HistoryRequest {
                topic: "room:1".into(),
                since: Some(Position {
                    epoch: frames[0]["epoch"].as_str().expect("epoch").into(),
                    offset: 99,
                }),
                ..HistoryRequest::default()
            },
            "since",
        ),
    ] {
        let status = client.history(request).await.expect_err(why);
        assert_eq!(
            status.code(),
            tonic::Code::InvalidArgument,
            "{why}: {status:?}"
        );
        assert!(status.message().contains(why), "{why}: {status:?}");
    }
}

#[tokio::test]
async fn a_resume_replays_exactly_what_followed_its_position_before_any_live_message() {
    let pod = Pod::start(&[]).await;
    let mut watcher = User::connect(&pod.ws_url()).await;
    watcher.subscribe("room:1").await;
    let frames = published(&pod, &mut watcher, "room:1", 6).await;

    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user.resume("room:1", since(&frames[2])).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], 6);
    pod.publish("room:1", r#""live""#).await;
    for frame in &frames[3..] {
        assert_eq!(user.frame("room:1").await, *frame);
    }
    assert_eq!(user.message("room:1").await, json!("live"));

    let mut up_to_date = User::connect(&pod.ws_url()).await;
    let reply = up_to_date
        .resume("room:1", since(&watcher.frame("room:1").await))
        .await;
    assert_eq!(reply["recovered"], true, "nothing missed is recovered too");
    up_to_date
        .expect_silence(std::time::Duration::from_millis(200))
        .await;
}

#[tokio::test]
async fn a_position_no_longer_kept_or_of_a_gone_epoch_is_not_recovered_and_nothing_is_replayed() {
    let pod = Pod::start(&["--history-messages=3"]).await;
    let mut watcher = User::connect(&pod.ws_url()).await;
    watcher.subscribe("room:1").await;
    let frames = published(&pod, &mut watcher, "room:1", 6).await;

    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user.resume("room:1", since(&frames[1])).await;
    assert_eq!(
        reply["recovered"], false,
        "offset 3 is no longer kept: {reply}"
    );
    assert_eq!(reply["offset"], 6, "the reply says where to continue from");
    let mut again = User::connect(&pod.ws_url()).await;
    let reply = again.resume("room:1", since(&frames[2])).await;
    assert_eq!(reply["recovered"], true, "offsets 4 to 6 are kept");

    let gone = Epoch::new_for(&Topic::new("room:2").expect("valid")).to_string();
    let mut other = User::connect(&pod.ws_url()).await;
    let reply = other
        .resume("room:2", json!({"epoch": gone, "offset": 4}))
        .await;
    assert_eq!(reply["recovered"], false, "{reply}");
    assert_eq!(
        (reply["epoch"].clone(), reply["offset"].clone()),
        (json!(""), json!(0))
    );
    pod.publish("room:2", "1").await;
    assert_eq!(
        other.frame("room:2").await["offset"],
        1,
        "live messages follow"
    );
}

#[tokio::test]
async fn bad_positions_and_limits_get_their_codes_and_change_nothing() {
    let pod = Pod::start(&[]).await;
    let mut watcher = User::connect(&pod.ws_url()).await;
    watcher.subscribe("room:1").await;
    let frames = published(&pod, &mut watcher, "room:1", 2).await;
    let epoch = frames[0]["epoch"].clone();
    let other = Epoch::new_for(&Topic::new("room:2").expect("valid")).to_string();

    let mut user = User::connect(&pod.ws_url()).await;
    for (since, why) in [
        (
            json!({"epoch": epoch, "offset": 3}),
            "past the topic's last offset",
        ),
        (json!({"epoch": other, "offset": 1}), "of another topic"),
        (
            json!({"epoch": "", "offset": 2}),
            "an offset without its epoch",
        ),
        (
            json!({"epoch": "not-an-epoch", "offset": 1}),
            "malformed epoch",
        ),
        (json!({"epoch": epoch, "offset": -1}), "negative offset"),
        (json!({"epoch": epoch}), "no offset"),
        (json!("yesterday"), "not an object"),
    ] {
        for op in ["subscribe", "history"] {
            let reply = user
                .request(json!({"op": op, "topic": "room:1", "since": since, "ref": why}))
                .await;
            assert_eq!(
                reply["error"]["code"], "invalid_position",
                "{op} {why}: {reply}"
            );
            assert_eq!(reply["ref"], why, "the ref is kept: {reply}");
        }
    }
    for limit in [
        json!(0),
        json!(1001),
        json!(1_000_000_000_000u64),
        json!("10"),
        json!(2.5),
    ] {
        let reply = user
            .request(json!({"op": "history", "topic": "room:1", "limit": limit, "ref": "l"}))
            .await;
        assert_eq!(reply["error"]["code"], "invalid_limit", "{limit}: {reply}");
    }
    // Nothing was subscribed by the refused requests; the connection, the
    // pod and the other user carry on.
    pod.publish("room:1", r#""after""#).await;
    assert_eq!(watcher.message("room:1").await, json!("after"));
    user.expect_silence(std::time::Duration::from_millis(200))
        .await;
    user.subscribe("room:1").await;
    user.still_usable().await;
}
