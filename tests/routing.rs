//! Interest-based routing on the mesh, with pods as real processes on
//! 127.0.0.x: a topic's messages go only to the pods that follow it (and
//! to its publisher and backup), yet a user whose subscribe was answered
//! never misses a later message, a resume or a history read on a pod that
//! did not follow the topic recovers everything, and a topic whose
//! sequencer was killed with its only subscribers is still recovered from
//! the backup.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::backend::Backend;
use common::process::{Ports, Process, http_get, sample, spawn_ready, wait_whole};
use common::user::User;
use herald::cluster::mesh::first_ranked;
use herald::message::NodeId;
use herald::proto::v1::HistoryRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use herald::topic::Topic;
use serde_json::{Value, json};

/// `count` mesh pods on 127.0.0.1.., every one streaming to every other.
async fn cluster(count: usize, extra: &[&str]) -> Vec<Process> {
    let ips: Vec<String> = (1..=count).map(|i| format!("127.0.0.{i}")).collect();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let ports = Ports::free_on(&refs);
    let mut flags = Backend::mesh().flags(&refs, ports);
    flags.push("--peer-ready-timeout=5s".to_owned());
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    let pods = spawn_ready(&refs, ports, &flags).await;
    wait_whole(&pods).await;
    pods
}

/// The pod's node id, from its start line.
async fn node_of(pod: &Process) -> NodeId {
    let line = pod.wait_for_log("herald serving").await;
    let at = line.find("node").expect("the start line names the node");
    let hex: String = line[at + 4..]
        .chars()
        .skip_while(|c| !c.is_ascii_hexdigit())
        .take_while(char::is_ascii_hexdigit)
        .collect();
    hex.parse().expect("a node id")
}

/// The value of counter `name` on `pod`.
async fn counter(pod: &Process, name: &str) -> f64 {
    let addr = SocketAddr::new(pod.ip.parse().expect("ip"), pod.ports.http);
    let (_, body) = http_get(addr, "/metrics").await.expect("metrics");
    sample(&body, name)
}

/// The position of a message frame, as `since` takes it.
fn position(frame: &Value) -> Value {
    json!({"epoch": frame["epoch"], "offset": frame["offset"]})
}

#[tokio::test]
async fn a_user_subscribed_on_one_pod_gets_a_message_published_on_another_right_after_the_reply() {
    let pods = cluster(3, &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    // Each topic has one message already (a topic's first message goes to
    // every pod) and no follower when the subscribe comes: the next one
    // is published the moment the reply is read.
    for round in 0..40 {
        let topic = format!("race:{round}");
        let publisher = &pods[round % 2 * 2];
        publisher.publish(&topic, "\"first\"").await;
        user.subscribe(&topic).await;
        publisher.publish(&topic, &round.to_string()).await;
        assert_eq!(
            user.message_past_gaps(&topic).await,
            json!(round),
            "round {round}"
        );
    }
}

#[tokio::test]
async fn messages_of_a_topic_followed_on_one_pod_are_not_sent_to_pods_that_do_not_follow_it() {
    let pods = cluster(4, &[]).await;
    let mut user = User::connect(&pods[0].ws_url()).await;
    user.subscribe("user:42").await;
    for n in 0..50 {
        pods[0].publish("user:42", &n.to_string()).await;
        assert_eq!(user.message_past_gaps("user:42").await, json!(n));
    }
    // Of four pods, at most three get each message (the follower, which is
    // also the publisher, and the backup): at least one is skipped.
    let mut skipped = 0.0;
    for pod in &pods {
        skipped += counter(pod, "herald_peer_messages_skipped_total").await;
    }
    assert!(skipped >= 49.0, "skipped {skipped}");
}

#[tokio::test]
async fn every_pod_gets_every_message_with_peer_routing_all() {
    let pods = cluster(4, &["--peer-routing=all"]).await;
    let mut user = User::connect(&pods[0].ws_url()).await;
    user.subscribe("user:42").await;
    for n in 0..20 {
        pods[0].publish("user:42", &n.to_string()).await;
        assert_eq!(user.message_past_gaps("user:42").await, json!(n));
    }
    for pod in &pods {
        let skipped = counter(pod, "herald_peer_messages_skipped_total").await;
        assert_eq!(skipped, 0.0, "on {}", pod.ip);
    }
}

#[tokio::test]
async fn a_resume_and_a_history_read_on_pods_that_did_not_follow_the_topic_recover_everything() {
    let pods = cluster(4, &[]).await;
    let mut user = User::connect(&pods[0].ws_url()).await;
    user.subscribe("user:7").await;
    let mut frames = Vec::new();
    for n in 1..=20 {
        pods[n % 2].publish("user:7", &n.to_string()).await;
        frames.push(user.frame("user:7").await);
    }
    drop(user);

    // Every other pod resumes from the tenth message: each gets all after
    // it (the live ones of the pods before included), then a live one.
    for (i, pod) in pods.iter().enumerate().skip(1) {
        let mut user = User::connect(&pod.ws_url()).await;
        let reply = user.resume("user:7", position(&frames[9])).await;
        assert_eq!(reply["recovered"], true, "on pod {i}: {reply}");
        let last = frames.last().expect("published");
        assert_eq!(reply["offset"], last["offset"], "on pod {i}: {reply}");
        for expected in &frames[10..] {
            let frame = user.frame("user:7").await;
            assert_eq!(frame["id"], expected["id"], "on pod {i}");
        }
        pods[0].publish("user:7", &format!("\"live {i}\"")).await;
        let live = user.frame("user:7").await;
        assert_eq!(live["data"], json!(format!("live {i}")));
        frames.push(live);
    }

    // A history read on a pod that never had a subscriber of another
    // topic returns all of it.
    for n in 1..=5 {
        pods[1].publish("user:8", &n.to_string()).await;
    }
    let mut client = PublisherClient::connect(pods[3].grpc_url())
        .await
        .expect("grpc");
    let page = client
        .history(HistoryRequest {
            topic: "user:8".into(),
            limit: 10,
            since: None,
        })
        .await
        .expect("history")
        .into_inner();
    let data: Vec<String> = page
        .messages
        .iter()
        .map(|m| String::from_utf8_lossy(&m.data).into_owned())
        .collect();
    assert_eq!(data, ["1", "2", "3", "4", "5"]);
}

#[tokio::test]
async fn a_topic_whose_sequencer_died_with_its_only_subscribers_is_recovered_from_its_backup() {
    let mut pods = cluster(3, &[]).await;
    let mut nodes = Vec::new();
    for pod in &pods {
        nodes.push(node_of(pod).await);
    }
    // A topic pod 0 numbers (it ranks first) and only pod 0 follows.
    let topic = (0..)
        .map(|n| format!("user:{n}"))
        .find(|name| first_ranked(&Topic::new(name).expect("topic"), &nodes) == Some(nodes[0]))
        .expect("some topic ranks pod 0 first");
    let mut user = User::connect(&pods[0].ws_url()).await;
    user.subscribe(&topic).await;
    let mut frames = Vec::new();
    for n in 1..=10 {
        pods[0].publish(&topic, &n.to_string()).await;
        frames.push(user.frame(&topic).await);
    }
    drop(user);
    pods[0].signal("KILL");
    pods[0].wait_exit(Duration::from_secs(5)).await;
    let survivors = pods.split_off(1);

    for (i, pod) in survivors.iter().enumerate() {
        let mut user = User::connect(&pod.ws_url()).await;
        let reply = user.resume(&topic, position(&frames[4])).await;
        assert_eq!(reply["recovered"], true, "on survivor {i}: {reply}");
        for expected in &frames[5..] {
            let frame = user.frame(&topic).await;
            assert_eq!(frame["id"], expected["id"], "on survivor {i}");
        }
    }
}

#[tokio::test]
async fn users_subscribing_to_their_own_topics_all_at_once_on_one_pod_each_get_the_next_message() {
    const USERS: usize = 200;
    let pods = cluster(3, &["--max-connection-rate-per-ip=0"]).await;
    let topics: Vec<String> = (0..USERS).map(|n| format!("user:{n}")).collect();
    // Each topic exists (its first message went to every pod) and nobody
    // follows it.
    for topic in &topics {
        pods[0].publish(topic, "\"first\"").await;
    }
    // Every user subscribes at once: the rounds that make pod 1 follow the
    // topics run side by side and their deltas reach the peers in any
    // order.
    let subscribing = topics.iter().map(|topic| {
        let (url, topic) = (pods[1].ws_url(), topic.clone());
        tokio::spawn(async move {
            let mut user = User::connect(&url).await;
            user.subscribe(&topic).await;
            (user, topic)
        })
    });
    let mut users = Vec::new();
    for joined in subscribing.collect::<Vec<_>>() {
        users.push(joined.await.expect("subscribes"));
    }
    for topic in &topics {
        pods[2].publish(topic, "\"second\"").await;
    }
    for (user, topic) in &mut users {
        assert_eq!(
            user.message_past_gaps(topic).await,
            json!("second"),
            "{topic}"
        );
    }
}
