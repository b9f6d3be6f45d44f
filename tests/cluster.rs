//! Three herald processes on 127.0.0.1-3 form one broadcast group, on the
//! mesh (static discovery) and on Redis alike: a publish on any pod reaches
//! the subscribers on every pod exactly once, in order, and the group
//! survives a pod being killed. The mesh's own stream handshake is tested
//! here too.

mod common;

use std::time::Duration;

use common::PATIENCE;
use common::backend::Backend;
use common::process::{Ports, Process, http_get, sample, spawn_ready};
use common::user::User;
use herald::proto::v1::PublishRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use serde_json::json;

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];

async fn start_cluster(backend: &Backend) -> (Ports, Vec<Process>) {
    let ports = Ports::free_on(&IPS);
    (
        ports,
        spawn_ready(&IPS, ports, &backend.flags(&IPS, ports)).await,
    )
}

on_both_backends!(a_publish_on_any_pod_reaches_subscribers_on_every_pod_exactly_once);
async fn a_publish_on_any_pod_reaches_subscribers_on_every_pod_exactly_once(backend: Backend) {
    let (_, pods) = start_cluster(&backend).await;
    let mut users = Vec::new();
    for pod in &pods {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe("room:1").await;
        users.push(user);
    }
    let mut epoch = None;
    for (n, pod) in pods.iter().enumerate() {
        let id = pod.publish("room:1", &format!(r#"{{"from":{n}}}"#)).await;
        for user in &mut users {
            let frame = user.next().await;
            // One order for the topic, whichever pod took the publish.
            let epoch = epoch.get_or_insert_with(|| frame["epoch"].clone()).clone();
            assert_eq!(
                frame,
                json!({"op":"message","topic":"room:1","id":id,"offset":n + 1,"epoch":epoch,"data":{"from":n}})
            );
        }
    }
    for user in &mut users {
        user.expect_silence(Duration::from_millis(300)).await;
    }
}

on_both_backends!(messages_from_one_publisher_arrive_in_order_on_every_pod);
async fn messages_from_one_publisher_arrive_in_order_on_every_pod(backend: Backend) {
    let (_, pods) = start_cluster(&backend).await;
    let mut users = Vec::new();
    for pod in &pods {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe("seq").await;
        users.push(user);
    }
    let mut client = PublisherClient::connect(pods[0].grpc_url())
        .await
        .expect("connects");
    for n in 0..300 {
        client
            .publish(PublishRequest {
                topic: "seq".into(),
                data: n.to_string().into_bytes(),
                ..PublishRequest::default()
            })
            .await
            .expect("publish accepted");
    }
    for user in &mut users {
        for n in 0..300 {
            assert_eq!(user.message("seq").await, json!(n));
        }
    }
    if let Backend::Redis(_) = backend {
        return;
    }
    // The topic's sequencer sent each message to the two other pods: an
    // envelope carries at least its id, topic and data.
    let mut sent = 0.0;
    for pod in &pods {
        let addr = format!("{}:{}", pod.ip, pod.ports.http)
            .parse()
            .expect("address");
        let (_, body) = http_get(addr, "/metrics").await.expect("metrics");
        sent += sample(&body, "herald_peer_bytes_sent_total");
    }
    assert!(sent >= 2.0 * 300.0 * 20.0, "peer bytes sent: {sent}");
}

#[tokio::test]
async fn herald_peers_lists_each_peer_and_its_stream_state() {
    let (ports, pods) = start_cluster(&Backend::mesh()).await;
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["peers", "--addr", &pods[0].grpc_url()])
        .output()
        .expect("herald peers runs");
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).expect("utf-8");
    assert!(text.contains("2 peer(s)"), "{text}");
    for ip in &IPS[1..] {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{ip}:{}", ports.peer)))
            .unwrap_or_else(|| panic!("{ip} missing from:\n{text}"));
        assert!(line.contains("\ttrue\t"), "{line}");
        // Pods of this release stream to each other on the peer wire.
        assert!(line.ends_with("\twire"), "{line}");
    }
}

on_both_backends!(a_killed_pod_does_not_disturb_the_others_and_rejoins_when_restarted);
async fn a_killed_pod_does_not_disturb_the_others_and_rejoins_when_restarted(backend: Backend) {
    let (ports, mut pods) = start_cluster(&backend).await;
    let mut survivor = User::connect(&pods[1].ws_url()).await;
    survivor.subscribe("t").await;

    pods[2].signal("KILL");
    pods[2].wait_exit(PATIENCE).await;
    for n in 0..20 {
        pods[0].publish("t", &n.to_string()).await;
        assert_eq!(survivor.message("t").await, json!(n));
    }

    let joins = |pod: &Process| {
        pod.logs()
            .lines()
            .filter(|l| l.contains(backend.joined_log()))
            .count()
    };
    let before = joins(&pods[0]);
    pods[2] = Process::spawn(IPS[2], ports, &backend.flags(&IPS, ports), &[]);
    pods[2].wait_ready().await;
    let third = format!("{}:{}", IPS[2], ports.peer);
    pods[0].wait_connected(std::slice::from_ref(&third)).await;
    let mut returner = User::connect(&pods[2].ws_url()).await;
    returner.subscribe("t").await;
    pods[0].publish("t", r#""back""#).await;
    assert_eq!(returner.message("t").await, json!("back"));
    assert_eq!(survivor.message("t").await, json!("back"));
    // The restarted pod is a new member of the group: a fresh arrival in
    // the first pod's log.
    let deadline = std::time::Instant::now() + PATIENCE;
    while joins(&pods[0]) == before {
        assert!(
            std::time::Instant::now() < deadline,
            "expected the restarted pod to join afresh:\n{}",
            pods[0].logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_pod_of_another_cluster_is_refused_with_a_clear_log_line() {
    let ports = Ports::free_on(&IPS[..2]);
    let peers = format!("--peers={}:{p},{}:{p}", IPS[0], IPS[1], p = ports.peer);
    let ours = Process::spawn(
        IPS[0],
        ports,
        &[
            "--discovery=static".into(),
            peers.clone(),
            "--cluster-name=prod/herald".into(),
            "--peer-ready-timeout=1s".into(),
        ],
        &[],
    );
    let theirs = Process::spawn(
        IPS[1],
        ports,
        &[
            "--discovery=static".into(),
            peers,
            "--cluster-name=staging/herald".into(),
            "--peer-ready-timeout=1s".into(),
        ],
        &[],
    );
    let line = ours.wait_for_log("refusing a peer stream").await;
    assert!(line.contains("staging/herald"), "{line}");
    theirs.wait_for_log("peer refused the handshake").await;
    // With no peer of its own cluster, a pod publishes once its wait for
    // peers is over (before, it refuses: it may not know the topics yet).
    theirs.wait_ready().await;
    // Neither delivers the other's messages.
    let mut user = User::connect(&ours.ws_url()).await;
    user.subscribe("t").await;
    theirs.publish("t", "1").await;
    user.expect_silence(Duration::from_millis(300)).await;
}
