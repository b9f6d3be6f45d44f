//! Sixteen herald processes on one machine (127.0.0.1 to .16, static
//! discovery): the group forms, stays whole while pods are killed and
//! started again, and converges, every pod streaming to every other and a
//! publish on any pod reaching the users of every pod exactly once. Idle
//! pods cost little, so this is how the mesh is tried at more than three.

mod common;

use std::time::Duration;

use common::process::{Ports, Process, wait_whole};
use common::user::User;
use serde_json::json;

const PODS: usize = 16;

fn ips() -> Vec<String> {
    (1..=PODS).map(|n| format!("127.0.0.{n}")).collect()
}

fn spawn(ip: &str, ports: Ports) -> Process {
    let peers: Vec<String> = ips()
        .iter()
        .map(|ip| format!("{ip}:{}", ports.peer))
        .collect();
    let flags = vec![
        "--discovery=static".to_owned(),
        format!("--peers={}", peers.join(",")),
    ];
    Process::spawn(ip, ports, &flags, &[])
}

/// One user subscribed to `topic` on each pod.
async fn users_on(pods: &[Process], topic: &str) -> Vec<User> {
    let mut users = Vec::new();
    for pod in pods {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe(topic).await;
        users.push(user);
    }
    users
}

/// Publishes `n` on `from`; every user gets it once. A `gap` may come
/// first: while the group forms, and after the topic's sequencer was
/// killed, the topic is numbered anew and its subscribers are told.
async fn reaches_everyone_once(from: &Process, users: &mut [User], topic: &str, n: usize) {
    from.publish(topic, &n.to_string()).await;
    for user in users.iter_mut() {
        assert_eq!(
            user.message_past_gaps(topic).await,
            json!(n),
            "from {}",
            from.ip
        );
    }
}

#[tokio::test]
async fn sixteen_pods_form_one_group_stay_whole_through_churn_and_converge() {
    let ips = ips();
    let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
    let ports = Ports::free_on(&refs);
    let mut pods: Vec<Process> = ips.iter().map(|ip| spawn(ip, ports)).collect();
    wait_whole(&pods).await;
    let mut users = users_on(&pods, "room:1").await;
    reaches_everyone_once(&pods[0], &mut users, "room:1", 0).await;
    reaches_everyone_once(&pods[PODS - 1], &mut users, "room:1", 1).await;

    // Churn: four pods killed at once; the twelve others carry on.
    let killed = [3, 7, 8, 12];
    for &k in &killed {
        pods[k].signal("KILL");
    }
    for &k in &killed {
        pods[k].wait_exit(common::PATIENCE).await;
    }
    let mut survivors: Vec<User> = users
        .into_iter()
        .enumerate()
        .filter(|(n, _)| !killed.contains(n))
        .map(|(_, user)| user)
        .collect();
    for (n, from) in [0, 5, 15].into_iter().enumerate() {
        reaches_everyone_once(&pods[from], &mut survivors, "room:1", 2 + n).await;
    }

    // They come back on the same addresses, and the group converges.
    for &k in &killed {
        pods[k] = spawn(&ips[k], ports);
    }
    wait_whole(&pods).await;
    let mut users = users_on(&pods, "room:2").await;
    for (n, from) in [3, 12, 0].into_iter().enumerate() {
        reaches_everyone_once(&pods[from], &mut users, "room:2", n).await;
    }
    for user in &mut users {
        user.expect_silence(Duration::from_millis(300)).await;
    }
}
