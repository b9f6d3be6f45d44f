//! herald processes with `--discovery kubernetes` find each other through
//! the real kube client, watching a Kubernetes API stand-in that speaks the
//! real list/watch protocol: peers come and go with the Endpoints object,
//! and an API server that fails or forbids never costs the pods their group.

mod common;

use std::net::IpAddr;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::kube_api::{self, KubeApi};
use common::process::{Ports, Process};
use common::user::User;
use herald::proto::v1::ListPeersRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use serde_json::json;

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
const SERVICE: &str = "herald-peers";

struct Cluster {
    api: KubeApi,
    ports: Ports,
    kubeconfig: PathBuf,
    pods: Vec<Process>,
    _dir: tempfile::TempDir,
}

impl Cluster {
    /// The stand-in and a kubeconfig for it; no pods yet.
    async fn api() -> Self {
        let api = KubeApi::start(IpAddr::from([127, 0, 0, 1])).await;
        let dir = tempfile::tempdir().expect("temp dir");
        let kubeconfig = api.write_kubeconfig(dir.path());
        Self {
            api,
            ports: Ports::free_on(&IPS),
            kubeconfig,
            pods: Vec::new(),
            _dir: dir,
        }
    }

    /// Lists `ips` as the headless Service's endpoints.
    fn list(&self, ips: &[&str]) {
        let port = i32::from(self.ports.peer);
        self.api.apply_endpoints(kube_api::endpoints(
            "default",
            SERVICE,
            ips,
            &[],
            "peer",
            port,
        ));
    }

    fn spawn(&self, ip: &str, extra: &[&str]) -> Process {
        let mut flags = vec![
            "--discovery=kubernetes".to_owned(),
            format!("--k8s-service={SERVICE}"),
            "--k8s-namespace=default".to_owned(),
        ];
        flags.extend(extra.iter().map(|f| f.to_string()));
        let env = [
            ("KUBECONFIG", self.kubeconfig.display().to_string()),
            ("POD_IP", ip.to_owned()),
        ];
        Process::spawn(ip, self.ports, &flags, &env)
    }

    async fn start(&mut self, ips: &[&str], extra: &[&str]) {
        let mut flags = vec!["--peer-ready-timeout=2s"];
        flags.extend_from_slice(extra);
        for ip in ips {
            let pod = self.spawn(ip, &flags);
            self.pods.push(pod);
        }
        for pod in &self.pods {
            pod.wait_ready().await;
        }
    }

    fn peer(&self, ip: &str) -> String {
        format!("{ip}:{}", self.ports.peer)
    }
}

/// The peers `pod` knows, with their stream state.
async fn peers(pod: &Process) -> Vec<(String, bool)> {
    let reply = PublisherClient::connect(pod.grpc_url())
        .await
        .expect("gRPC connects")
        .list_peers(ListPeersRequest {})
        .await
        .expect("peers")
        .into_inner();
    let mut peers: Vec<_> = reply
        .peers
        .into_iter()
        .map(|p| (p.address, p.connected))
        .collect();
    peers.sort();
    peers
}

async fn wait_peers(pod: &Process, expected: &[(String, bool)]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = peers(pod).await;
        if now == expected {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "{} has peers {now:?}, wanted {expected:?}",
            pod.ip
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn subscribed_users(cluster: &Cluster, topic: &str) -> Vec<User> {
    let mut users = Vec::new();
    for pod in &cluster.pods {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe(topic).await;
        users.push(user);
    }
    users
}

async fn assert_fan_out(cluster: &Cluster) {
    let mut users = subscribed_users(cluster, "room:1").await;
    for (n, pod) in cluster.pods.iter().enumerate() {
        pod.publish("room:1", &n.to_string()).await;
        for user in &mut users {
            assert_eq!(user.message("room:1").await, json!(n));
        }
    }
    for user in &mut users {
        user.expect_silence(Duration::from_millis(300)).await;
    }
}

#[tokio::test]
async fn pods_watching_endpoints_fan_out_to_every_pod_exactly_once() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS);
    cluster.start(&IPS, &[]).await;
    assert_fan_out(&cluster).await;
    let requests = cluster.api.requests();
    assert!(
        requests.iter().any(|r| r.contains("watch=true")),
        "{requests:?}"
    );
}

#[tokio::test]
async fn pods_watching_endpoint_slices_fan_out_to_every_pod_exactly_once() {
    let mut cluster = Cluster::api().await;
    let port = i32::from(cluster.ports.peer);
    let ready: Vec<(&str, bool)> = vec![(IPS[0], true), (IPS[1], true)];
    cluster.api.apply_endpoint_slice(kube_api::endpoint_slice(
        "default",
        "herald-peers-a",
        SERVICE,
        &ready,
        "peer",
        port,
    ));
    cluster.api.apply_endpoint_slice(kube_api::endpoint_slice(
        "default",
        "herald-peers-b",
        SERVICE,
        &[(IPS[2], false)],
        "peer",
        port,
    ));
    cluster.start(&IPS, &["--k8s-api=endpointslices"]).await;
    assert_fan_out(&cluster).await;
    assert!(
        cluster
            .api
            .requests()
            .iter()
            .any(|r| r.contains("endpointslices") && r.contains("watch=true"))
    );
}

#[tokio::test]
async fn a_pod_added_to_endpoints_starts_receiving_and_a_removed_one_is_no_longer_sent_to() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS[..2]);
    cluster.start(&IPS, &[]).await;
    let mut third = User::connect(&cluster.pods[2].ws_url()).await;
    third.subscribe("t").await;

    cluster.pods[0].publish("t", r#""before""#).await;
    third.expect_silence(Duration::from_millis(300)).await;

    cluster.list(&IPS);
    let joined = [(cluster.peer(IPS[1]), true), (cluster.peer(IPS[2]), true)];
    wait_peers(&cluster.pods[0], &joined).await;
    cluster.pods[0].publish("t", r#""after""#).await;
    // "before" (offset 1) never reached the third pod while it was out of
    // the group: its user is told before "after" (offset 2).
    let gap = third.next().await;
    assert_eq!(
        (gap["op"].clone(), gap["offset"].clone()),
        (json!("gap"), json!(1)),
        "{gap}"
    );
    assert_eq!(third.message("t").await, json!("after"));

    cluster.list(&IPS[..2]);
    wait_peers(&cluster.pods[0], &[(cluster.peer(IPS[1]), true)]).await;
    cluster.pods[0].wait_for_log("peer left").await;
    cluster.pods[0].publish("t", r#""gone""#).await;
    third.expect_silence(Duration::from_millis(300)).await;
}

#[tokio::test]
async fn the_api_server_going_away_and_coming_back_keeps_the_peer_set() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS);
    cluster.start(&IPS, &[]).await;
    let mut users = subscribed_users(&cluster, "t").await;

    cluster.api.stop().await;
    cluster.pods[0].wait_for_log("peer discovery failing").await;
    cluster.pods[0].publish("t", r#""while down""#).await;
    for user in &mut users {
        assert_eq!(user.message("t").await, json!("while down"));
    }

    cluster.api.restart().await;
    cluster.list(&IPS[..2]);
    wait_peers(&cluster.pods[0], &[(cluster.peer(IPS[1]), true)]).await;
    cluster.pods[0]
        .wait_for_log("peer discovery recovered")
        .await;
}

#[tokio::test]
async fn an_expired_watch_relists_without_emptying_the_group() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS);
    cluster.start(&IPS, &[]).await;
    cluster.api.expire_history();
    cluster.api.drop_watches();
    // Removing and re-adding a pod while the watch is gone exercises the
    // re-list path; at no point may the group be emptied.
    let all = [(cluster.peer(IPS[1]), true), (cluster.peer(IPS[2]), true)];
    cluster.list(&IPS);
    wait_peers(&cluster.pods[0], &all).await;
    let mut user = User::connect(&cluster.pods[2].ws_url()).await;
    user.subscribe("t").await;
    cluster.pods[0].publish("t", "1").await;
    assert_eq!(user.message("t").await, json!(1));
    assert!(
        !cluster.pods[0].logs().contains("peer left"),
        "{}",
        cluster.pods[0].logs()
    );
}

#[tokio::test]
async fn a_forbidden_watch_logs_what_rbac_is_missing_and_the_pod_still_serves() {
    let mut cluster = Cluster::api().await;
    cluster.api.forbid(true);
    let pod = cluster.spawn(IPS[0], &["--peer-ready-timeout=500ms"]);
    let line = pod.wait_for_log("RBAC forbids").await;
    assert!(
        line.contains("list on endpoints in namespace default"),
        "{line}"
    );
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("local").await;
    pod.publish("local", "1").await;
    assert_eq!(user.message("local").await, json!(1));
    cluster.pods.push(pod);
}
