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
    /// Where the headless Service's endpoints live.
    namespace: &'static str,
    pods: Vec<Process>,
    dir: tempfile::TempDir,
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
            namespace: "default",
            pods: Vec::new(),
            dir,
        }
    }

    /// The stand-in and a kubeconfig whose context namespace is `namespace` and whose user
    /// reads its token from a `tokenFile` (holding [`kube_api::TOKEN`]); no pods yet.
    async fn api_with_token_file(namespace: &'static str) -> Self {
        let mut cluster = Self::api().await;
        std::fs::write(cluster.token_file(), kube_api::TOKEN).expect("write the token file");
        cluster.kubeconfig =
            cluster
                .api
                .write_kubeconfig_with(cluster.dir.path(), namespace, &cluster.token_file());
        cluster.namespace = namespace;
        cluster
    }

    fn token_file(&self) -> PathBuf {
        self.dir.path().join("token")
    }

    /// Lists `ips` as the headless Service's endpoints.
    fn list(&self, ips: &[&str]) {
        self.api.apply_endpoints(self.endpoints(ips));
    }

    /// The headless Service's endpoints listing `ips`, ready.
    fn endpoints(&self, ips: &[&str]) -> k8s_openapi::api::core::v1::Endpoints {
        let port = i32::from(self.ports.peer);
        kube_api::endpoints(self.namespace, SERVICE, ips, &[], "peer", port)
    }

    fn spawn(&self, ip: &str, extra: &[&str]) -> Process {
        let namespace = format!("--k8s-namespace={}", self.namespace);
        let mut flags = vec![namespace.as_str()];
        flags.extend_from_slice(extra);
        self.spawn_without_namespace(ip, &flags)
    }

    /// A pod told no namespace: neither `--k8s-namespace` nor `POD_NAMESPACE`.
    fn spawn_without_namespace(&self, ip: &str, extra: &[&str]) -> Process {
        let mut flags = vec![
            "--discovery=kubernetes".to_owned(),
            format!("--k8s-service={SERVICE}"),
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

/// The peers `pod` knows, with their stream state; `None` while its gRPC
/// port is not up yet.
async fn peers(pod: &Process) -> Option<Vec<(String, bool)>> {
    let reply = PublisherClient::connect(pod.grpc_url())
        .await
        .ok()?
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
    Some(peers)
}

async fn wait_peers(pod: &Process, expected: &[(String, bool)]) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        let now = peers(pod).await;
        if now.as_deref() == Some(expected) {
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
    // the group: before "after" (offset 2) its user gets it from what the
    // pod synced from its new peers, or, if "after" came first, is told of
    // a gap. Never nothing.
    let first = third.next().await;
    let told = first["op"] == "gap" || first["data"] == "before";
    assert!(told && first["offset"] == 1, "{first}");
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
async fn an_expired_watch_relists_and_takes_the_endpoints_that_changed_meanwhile() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS);
    cluster.start(&IPS, &[]).await;
    let lists = |api: &KubeApi| {
        api.requests()
            .iter()
            .filter(|r| !r.contains("watch="))
            .count()
    };
    let listed = lists(&cluster.api);

    // The watches end and the third pod leaves while no watch is open; the
    // history is compacted past it, so resuming can only get 410 Gone.
    let gone = cluster.endpoints(&IPS[..2]);
    cluster.api.apply_endpoints_behind_watches(gone);
    wait_peers(&cluster.pods[0], &[(cluster.peer(IPS[1]), true)]).await;

    assert!(lists(&cluster.api) > listed, "{:?}", cluster.api.requests());
    let logs = cluster.pods[0].logs();
    let left: Vec<&str> = logs.lines().filter(|l| l.contains("peer left")).collect();
    assert_eq!(left.len(), 1, "{logs}");
    assert!(left[0].contains(&cluster.peer(IPS[2])), "{logs}");
    assert!(logs.contains("watch expired (410 Gone)"), "{logs}");
    assert!(
        !logs.contains("peer discovery failing"),
        "410 is no failure: {logs}"
    );
}

#[tokio::test]
async fn a_persistent_403_is_logged_once_retried_ever_more_slowly_and_recovered_from_once() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS[..2]);
    cluster.api.forbid(true);
    let pod = cluster.spawn(
        IPS[0],
        &["--peer-ready-timeout=500ms", "--k8s-backoff-max=2s"],
    );
    pod.wait_for_log("RBAC forbids").await;
    pod.wait_ready().await;

    // Four refused lists: the waits between them double from 0.8 s (each
    // drawn from [half, all] of its step) and are capped at 2 s.
    let deadline = Instant::now() + PATIENCE;
    let times = loop {
        let times = cluster.api.request_times();
        if times.len() >= 4 {
            break times;
        }
        assert!(Instant::now() < deadline, "{:?}", cluster.api.requests());
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let waits: Vec<Duration> = times.windows(2).map(|w| w[1] - w[0]).collect();
    assert!(waits[0] <= Duration::from_millis(900), "{waits:?}");
    assert!(waits[1] >= Duration::from_millis(750), "{waits:?}");
    assert!(
        waits[2] >= Duration::from_millis(950),
        "thinning out: {waits:?}"
    );
    let logs = pod.logs();
    assert_eq!(logs.matches("peer discovery failing").count(), 1, "{logs}");
    assert!(!logs.contains("recovered"), "{logs}");
    assert!(
        !logs.contains("kube_runtime"),
        "kube's own per-retry warnings: {logs}"
    );
    assert!(
        logs.contains("peer discovery has not succeeded yet") && !logs.contains("missing=[]"),
        "{logs}"
    );

    cluster.api.forbid(false);
    wait_peers(&pod, &[(cluster.peer(IPS[1]), false)]).await;
    pod.wait_for_log("peer discovery recovered").await;
    cluster.list(&IPS);
    let both = [(cluster.peer(IPS[1]), false), (cluster.peer(IPS[2]), false)];
    wait_peers(&pod, &both).await;
    let logs = pod.logs();
    assert_eq!(
        logs.matches("peer discovery recovered").count(),
        1,
        "{logs}"
    );
    assert_eq!(logs.matches("peer discovery failing").count(), 1, "{logs}");
    cluster.pods.push(pod);
}

#[tokio::test]
async fn readyz_answers_503_while_a_discovered_peer_is_unreachable_and_200_after_the_wait() {
    let mut cluster = Cluster::api().await;
    cluster.list(&IPS[..2]);
    let spawned = Instant::now();
    let pod = cluster.spawn(IPS[0], &["--peer-ready-timeout=3s"]);
    wait_peers(&pod, &[(cluster.peer(IPS[1]), false)]).await;
    assert_eq!(pod.http_status("/readyz").await, Some(503));

    pod.wait_ready().await;
    assert!(spawned.elapsed() >= Duration::from_secs(3));
    let line = pod
        .wait_for_log("ready without streams to every peer")
        .await;
    assert!(line.contains(&cluster.peer(IPS[1])), "{line}");
    cluster.pods.push(pod);
}

#[tokio::test]
async fn a_rotated_kubeconfig_token_file_is_used_at_once_and_discovery_carries_on() {
    let mut cluster = Cluster::api_with_token_file("default").await;
    cluster.list(&IPS[..2]);
    let pod = cluster.spawn(IPS[0], &["--peer-ready-timeout=500ms"]);
    wait_peers(&pod, &[(cluster.peer(IPS[1]), false)]).await;

    // The old token stops working at once; the watch ends, as at a real
    // server's watch timeout, and the next request must carry the new one.
    std::fs::write(cluster.token_file(), "rotated-token").expect("rotate the token file");
    cluster.api.set_token("rotated-token");
    cluster.api.drop_watches();
    cluster.list(&IPS);
    let both = [(cluster.peer(IPS[1]), false), (cluster.peer(IPS[2]), false)];
    wait_peers(&pod, &both).await;
    let logs = pod.logs();
    assert_eq!(logs.matches("401 Unauthorized").count(), 1, "{logs}");
    cluster.pods.push(pod);
}

#[tokio::test]
async fn without_a_namespace_flag_the_identity_names_the_namespace_discovery_watches() {
    let mut cluster = Cluster::api_with_token_file("herald").await;
    cluster.list(&IPS[..2]);
    let told = cluster.spawn(IPS[0], &["--peer-ready-timeout=2s"]);
    let untold = cluster.spawn_without_namespace(IPS[1], &["--peer-ready-timeout=2s"]);
    cluster.pods.extend([told, untold]);
    for pod in &cluster.pods {
        pod.wait_ready().await;
    }
    let line = cluster.pods[1].wait_for_log("watching Kubernetes").await;
    assert!(line.contains("namespace=herald"), "{line}");
    assert!(
        cluster.pods[1]
            .logs()
            .contains("cluster=herald/herald-peers"),
        "{}",
        cluster.pods[1].logs()
    );
    wait_peers(&cluster.pods[1], &[(cluster.peer(IPS[0]), true)]).await;
    assert_fan_out(&cluster).await;
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

#[tokio::test]
async fn a_service_of_twelve_hundred_pods_in_twelve_endpoint_slices_is_one_peer_set() {
    let mut cluster = Cluster::api().await;
    let port = i32::from(cluster.ports.peer);
    // Beside the three real pods, 1,197 that never answer: nothing listens
    // on 127.1.x.y.
    let absent: Vec<String> = (0..1197)
        .map(|n| format!("127.1.{}.{}", n / 250, n % 250 + 1))
        .collect();
    let mut all: Vec<&str> = IPS.to_vec();
    all.extend(absent.iter().map(String::as_str));
    for (n, chunk) in all.chunks(100).enumerate() {
        let ready: Vec<(&str, bool)> = chunk.iter().map(|ip| (*ip, true)).collect();
        let name = format!("herald-peers-{n}");
        cluster.api.apply_endpoint_slice(kube_api::endpoint_slice(
            "default", &name, SERVICE, &ready, "peer", port,
        ));
    }
    cluster.start(&IPS, &["--k8s-api=endpointslices"]).await;
    for pod in &cluster.pods {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let known = peers(pod).await.map_or(0, |p| p.len());
            if known == 1199 {
                break;
            }
            assert!(Instant::now() < deadline, "{} knows {known} peers", pod.ip);
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    assert_fan_out(&cluster).await;
}

#[tokio::test]
async fn a_truncated_endpoints_object_is_warned_about_and_endpoint_slices_are_named() {
    let mut cluster = Cluster::api().await;
    let mut endpoints = cluster.endpoints(&IPS[..1]);
    endpoints.metadata.annotations = Some(
        [(
            "endpoints.kubernetes.io/over-capacity".to_owned(),
            "truncated".to_owned(),
        )]
        .into(),
    );
    cluster.api.apply_endpoints(endpoints);
    cluster.start(&IPS[..1], &[]).await;
    let line = cluster.pods[0].wait_for_log("over-capacity").await;
    assert!(line.contains("--k8s-api endpointslices"), "{line}");
}
