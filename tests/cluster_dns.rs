//! `--discovery dns`: a pod finds its peers from the A records of a name.
//! `localhost` resolves to 127.0.0.1 through the system resolver, so a pod
//! on 127.0.0.2 discovers the pod on 127.0.0.1 by DNS.

mod common;

use common::process::{Ports, Process};
use common::user::User;
use serde_json::json;

#[tokio::test]
async fn a_pod_discovers_its_peer_by_dns_and_messages_flow_both_ways() {
    let ports = Ports::free_on(&["127.0.0.1", "127.0.0.2"]);
    let resolved = Process::spawn(
        "127.0.0.1",
        ports,
        &[
            "--discovery=static".into(),
            format!("--peers=127.0.0.2:{}", ports.peer),
        ],
        &[],
    );
    let resolver = Process::spawn(
        "127.0.0.2",
        ports,
        &[
            "--discovery=dns".into(),
            "--dns-name=localhost".into(),
            "--dns-interval=200ms".into(),
        ],
        &[("POD_IP", "127.0.0.2".into())],
    );
    resolved.wait_ready().await;
    resolver.wait_ready().await;
    resolver.wait_for_log("peer stream up").await;

    let mut near = User::connect(&resolved.ws_url()).await;
    let mut far = User::connect(&resolver.ws_url()).await;
    near.subscribe("t").await;
    far.subscribe("t").await;
    resolver.publish("t", "1").await;
    resolved.publish("t", "2").await;
    for user in [&mut near, &mut far] {
        assert_eq!(user.message("t").await, json!(1));
        assert_eq!(user.message("t").await, json!(2));
    }
}
