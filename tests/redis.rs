//! The Redis backend's faults, against a real `redis-server`: Redis down
//! when pods start, Redis restarted with and without its data, a pod whose
//! link to Redis was down while others published, a slow Redis, and a
//! failover to a replica. What each promises is in docs/continuity.md
//! ("Redis backend"); the behaviour both backends share is tested by the
//! cluster, continuity and presence tests on both.

mod common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::backend::{RedisServer, command_at};
use common::pki::Pki;
use common::process::{Ports, Process, http_get, sample, spawn_ready};
use common::proxy::Proxy;
use common::user::User;
use herald::proto::v1::publisher_client::PublisherClient;
use herald::proto::v1::{ListPeersRequest, PublishRequest, PublishResponse};
use serde_json::{Value, json};

const TOPIC: &str = "room:1";
const IPS: [&str; 2] = ["127.0.0.1", "127.0.0.2"];

/// Pods on `ips` that reach Redis at `redis` (`host:port`), ready (after
/// the short ready wait, whether Redis answers or not).
async fn pods(ips: &[&str], redis: &str, extra: &[&str]) -> Vec<Process> {
    let mut flags = vec![
        "--broadcast=redis".to_owned(),
        format!("--redis-url=redis://{redis}"),
        "--peer-ready-timeout=1s".to_owned(),
    ];
    flags.extend(extra.iter().map(|f| (*f).to_owned()));
    spawn_ready(ips, Ports::free_on(ips), &flags).await
}

/// Publishes `data` through `pod` with `key` as its idempotency key.
async fn try_publish(
    pod: &Process,
    data: &str,
    key: &str,
) -> Result<PublishResponse, tonic::Status> {
    let mut client = PublisherClient::connect(pod.grpc_url())
        .await
        .expect("gRPC connects");
    client
        .publish(PublishRequest {
            topic: TOPIC.into(),
            data: data.as_bytes().to_vec(),
            idempotency_key: key.into(),
        })
        .await
        .map(tonic::Response::into_inner)
}

/// Publishes `data` through `pod`, retrying (with one idempotency key, as a
/// backend should) while Redis is not reachable yet.
async fn publish_once_up(pod: &Process, data: &str) -> PublishResponse {
    let deadline = Instant::now() + PATIENCE;
    let key = format!("{}-{data}", pod.ip);
    loop {
        match try_publish(pod, data, &key).await {
            Ok(reply) => return reply,
            Err(status) => {
                assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
                assert!(
                    Instant::now() < deadline,
                    "Redis never came back: {status:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    }
}

/// A user who held `epoch`'s offset 1 resumes on `pod`, is told it
/// recovered, and gets offsets 2 to `head` (whose data are their offsets).
async fn resumes_from_the_first(pod: &Process, epoch: &str, head: u64) {
    let mut back = User::connect(&pod.ws_url()).await;
    let reply = back
        .resume(TOPIC, json!({"epoch": epoch, "offset": 1}))
        .await;
    assert_eq!(reply["recovered"], true, "{reply}");
    for n in 2..=head {
        assert_eq!(back.message(TOPIC).await, json!(n));
    }
}

fn position(frame: &Value) -> (String, u64) {
    let epoch = frame["epoch"].as_str().expect("an epoch").to_owned();
    (epoch, frame["offset"].as_u64().expect("an offset"))
}

async fn metric(pod: &Process, name: &str) -> f64 {
    let addr = format!("{}:{}", pod.ip, pod.ports.http)
        .parse()
        .expect("address");
    let (_, body) = http_get(addr, "/metrics").await.expect("metrics");
    sample(&body, name)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_started_while_redis_is_down_serve_users_refuse_publishes_at_once_and_recover() {
    let mut redis = RedisServer::reserve(&[]);
    // Ready after the bounded wait, though Redis never answered.
    let pods = pods(&IPS, &redis.address(), &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    let reply = user.subscribe(TOPIC).await;
    assert_eq!(reply["ok"], true, "{reply}");

    let asked = Instant::now();
    let refused = try_publish(&pods[0], "1", "").await.expect_err("no Redis");
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert!(refused.message().contains("Redis"), "{refused:?}");
    assert!(asked.elapsed() < Duration::from_secs(1), "refused at once");
    assert!(metric(&pods[0], "herald_redis_refused_total").await >= 1.0);
    let peers = PublisherClient::connect(pods[0].grpc_url())
        .await
        .expect("gRPC connects")
        .list_peers(ListPeersRequest {})
        .await
        .expect("peers")
        .into_inner()
        .peers;
    let row = peers
        .iter()
        .find(|p| p.address.starts_with("redis "))
        .expect("a Redis row");
    assert!(!row.connected, "{row:?}");
    assert!(!row.last_error.is_empty(), "{row:?}");

    redis.up().await;
    let id = publish_once_up(&pods[0], "2").await.id;
    let frame = user.frame(TOPIC).await;
    assert_eq!(
        (frame["id"].as_str(), &frame["data"]),
        (Some(id.as_str()), &json!(2))
    );
    assert_eq!(frame["offset"], 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_lost_its_data_is_a_gap_for_subscribers_and_old_positions_are_not_recovered() {
    let mut redis = RedisServer::start().await;
    let pods = pods(&IPS, &redis.address(), &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    for n in 1..=3 {
        publish_once_up(&pods[0], &n.to_string()).await;
    }
    let mut last = Value::Null;
    for n in 1..=3 {
        last = user.frame(TOPIC).await;
        assert_eq!(last["offset"], n);
    }
    let old = position(&last);

    redis.restart().await;
    let reply = publish_once_up(&pods[0], "4").await;
    assert_ne!(reply.epoch, old.0, "a new epoch");
    assert_eq!(reply.offset, 1);
    let gap = user.next().await;
    assert_eq!(gap["op"], "gap", "{gap}");
    assert_eq!(position(&gap), (reply.epoch.clone(), 0), "{gap}");
    let frame = user.frame(TOPIC).await;
    assert_eq!(position(&frame), (reply.epoch.clone(), 1));

    // A user who held a position of the lost epoch is told, on any pod.
    for pod in &pods {
        let mut back = User::connect(&pod.ws_url()).await;
        let since = json!({"epoch": old.0, "offset": 2});
        let reply = back.resume(TOPIC, since).await;
        assert_eq!(reply["recovered"], false, "{reply}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_kept_its_data_across_a_restart_keeps_every_position() {
    let mut redis =
        RedisServer::start_with(&["--appendonly", "yes", "--appendfsync", "always"]).await;
    let pods = pods(&IPS, &redis.address(), &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    let first = publish_once_up(&pods[0], "1").await;
    publish_once_up(&pods[0], "2").await;

    redis.restart().await;
    for n in 3..=4 {
        publish_once_up(&pods[0], &n.to_string()).await;
    }
    for n in 1..=4 {
        let frame = user.frame(TOPIC).await;
        assert_eq!(
            position(&frame),
            (first.epoch.clone(), n),
            "no gap: {frame}"
        );
    }
    resumes_from_the_first(&pods[0], &first.epoch, 4).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_that_came_back_with_fewer_messages_than_pods_saw_starts_a_new_epoch_not_a_reuse() {
    let redis = RedisServer::start().await;
    let pods = pods(&IPS, &redis.address(), &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    let mut last = None;
    for n in 1..=3 {
        last = Some(publish_once_up(&pods[0], &n.to_string()).await);
        user.message(TOPIC).await;
    }
    let old = last.expect("published").epoch;
    // As if Redis had persisted only the first message before a restart:
    // its counter is behind what the pods saw, and the pods reconnect.
    let meta = format!("herald:herald:{{{TOPIC}}}:meta");
    assert_eq!(
        redis
            .command(&format!("HSET {meta} offset 1"))
            .await
            .as_deref(),
        Some(":0")
    );
    assert!(redis.command("CLIENT KILL TYPE pubsub").await.is_some());
    // The first pod to check after its reconnect sees it (then the topic
    // is gone from Redis, and the other finds nothing to compare).
    let deadline = Instant::now() + PATIENCE;
    while !pods.iter().any(|pod| {
        pod.logs()
            .contains("Redis lost the last messages of a topic")
    }) {
        assert!(
            Instant::now() < deadline,
            "nobody noticed:\n{}",
            pods[1].logs()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    let next = publish_once_up(&pods[0], "4").await;
    assert_ne!(next.epoch, old, "offsets 2 and 3 are never given again");
    assert_eq!(next.offset, 1);
    let gap = user.next().await;
    assert_eq!(
        (gap["op"].as_str(), position(&gap)),
        (Some("gap"), (next.epoch.clone(), 0))
    );
    assert_eq!(user.message(TOPIC).await, json!(4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_started_after_a_topics_first_messages_answers_history_like_the_others() {
    let redis = RedisServer::start().await;
    let ports = Ports::free_on(&IPS);
    let flags = [
        "--broadcast=redis".to_owned(),
        format!("--redis-url={}", redis.url()),
    ];
    let first = Process::spawn(IPS[0], ports, &flags, &[]);
    first.wait_ready().await;
    for n in 1..=5 {
        publish_once_up(&first, &n.to_string()).await;
    }
    // The late pod hears 6 and 7 live: its own log starts at 6.
    let late = Process::spawn(IPS[1], ports, &flags, &[]);
    late.wait_ready().await;
    let mut user = User::connect(&first.ws_url()).await;
    user.subscribe(TOPIC).await;
    for n in 6..=7 {
        publish_once_up(&first, &n.to_string()).await;
        user.message(TOPIC).await;
    }
    late.wait_for_log("delivered messages from a peer").await;
    for pod in [&first, &late] {
        let mut reader = User::connect(&pod.ws_url()).await;
        let page = reader
            .request(json!({"op": "history", "topic": TOPIC, "limit": 10, "ref": "h"}))
            .await;
        let data: Vec<Value> = page["messages"]
            .as_array()
            .unwrap_or_else(|| panic!("{page}"))
            .iter()
            .map(|m| m["data"].clone())
            .collect();
        assert_eq!(
            data,
            (1..=7).map(|n| json!(n)).collect::<Vec<_>>(),
            "{}",
            pod.ip
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_published_on_the_clusters_channels_is_dropped_and_the_pods_carry_on() {
    let redis = RedisServer::start().await;
    let pods = pods(&IPS, &redis.address(), &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    for line in [
        "PUBLISH herald:herald:messages garbage",
        "PUBLISH herald:herald:messages \"1 2 \\xff\\xff\"",
        "PUBLISH herald:herald:presence \"\\xff\\x00 not a frame\"",
    ] {
        assert!(
            redis
                .command(line)
                .await
                .is_some_and(|r| r.starts_with(':')),
            "{line}"
        );
    }
    pods[1]
        .wait_for_log("dropping an unreadable message from Redis")
        .await;
    pods[1]
        .wait_for_log("dropping an unreadable frame from the presence channel")
        .await;
    publish_once_up(&pods[0], "1").await;
    assert_eq!(user.message(TOPIC).await, json!(1));
    assert_eq!(pods[1].http_status("/readyz").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_was_published_while_a_pods_redis_link_was_down_reaches_its_users_in_place() {
    let redis = RedisServer::start().await;
    let proxy = Proxy::to(redis.address()).await;
    let ports = Ports::free_on(&IPS);
    let flags = |to: &str| {
        vec![
            "--broadcast=redis".to_owned(),
            format!("--redis-url=redis://{to}"),
        ]
    };
    let pods = [
        Process::spawn(IPS[0], ports, &flags(&redis.address()), &[]),
        Process::spawn(IPS[1], ports, &flags(&proxy.address), &[]),
    ];
    for pod in &pods {
        pod.wait_ready().await;
    }
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    let first = publish_once_up(&pods[0], "0").await;
    assert_eq!(user.message(TOPIC).await, json!(0));

    // The far pod's link goes down, and stays down while 20 messages are
    // published through the near one.
    let nowhere = RedisServer::reserve(&[]).address();
    proxy.retarget(nowhere);
    proxy.cut();
    pods[1].wait_for_log("the Redis subscription broke").await;
    for n in 1..=20 {
        publish_once_up(&pods[0], &n.to_string()).await;
    }
    proxy.retarget(redis.address());
    for n in 1..=20u64 {
        let frame = user.frame(TOPIC).await;
        assert_eq!(
            position(&frame),
            (first.epoch.clone(), n + 1),
            "in place, no gap: {frame}"
        );
        assert_eq!(frame["data"], json!(n));
    }
    publish_once_up(&pods[0], "21").await;
    assert_eq!(user.message(TOPIC).await, json!(21));
    user.expect_silence(Duration::from_millis(200)).await;
    assert!(
        pods[1]
            .logs()
            .contains("caught up on messages published while unsubscribed")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_redis_fills_the_bounded_queue_and_publishes_past_it_are_refused_and_counted() {
    let redis = RedisServer::start_with(&["--enable-debug-command", "yes"]).await;
    let pods = pods(&IPS[..1], &redis.address(), &["--peer-queue=4"]).await;
    let pod = &pods[0];
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe(TOPIC).await;
    publish_once_up(pod, "0").await;
    user.message(TOPIC).await;

    // Redis stalls for a second while 40 publishes come in at once.
    let stall = tokio::spawn(command_at(redis.port, "DEBUG SLEEP 1".into()));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let data: Vec<String> = (1..=40).map(|n| n.to_string()).collect();
    let attempts =
        futures_util::future::join_all(data.iter().map(|n| try_publish(pod, n, ""))).await;
    stall.await.expect("the stall ends");
    let refused = attempts.iter().filter(|a| a.is_err()).count();
    let taken = attempts.len() - refused;
    assert!(refused > 0, "a queue of 4 overflowed under 40 publishes");
    assert!(taken > 0, "the queued ones were published once Redis woke");
    for attempt in attempts.iter().filter_map(|a| a.as_ref().err()) {
        assert_eq!(attempt.code(), tonic::Code::Unavailable, "{attempt:?}");
    }
    assert_eq!(
        metric(pod, "herald_redis_refused_total").await,
        refused as f64
    );
    // The pod stayed up and its user whole: every taken publish arrives.
    for _ in 0..taken {
        user.frame(TOPIC).await;
    }
    assert_eq!(pod.http_status("/readyz").await, Some(200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failover_to_a_replica_keeps_every_position() {
    let mut primary = RedisServer::start().await;
    let replica_of = format!("127.0.0.1 {}", primary.port);
    let replica_args = ["--replicaof", replica_of.as_str()];
    let replica = RedisServer::start_with(&replica_args).await;
    // What the pods reach Redis at: a Service, in a cluster.
    let service = Proxy::to(primary.address()).await;
    let pods = pods(&IPS, &service.address, &[]).await;
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    let first = publish_once_up(&pods[0], "1").await;
    publish_once_up(&pods[0], "2").await;
    for n in 1..=2 {
        assert_eq!(user.message(TOPIC).await, json!(n));
    }
    let synced = primary.command("WAIT 1 5000").await;
    assert_eq!(
        synced.as_deref(),
        Some(":1"),
        "the replica holds every write"
    );

    primary.kill();
    assert_eq!(
        replica.command("REPLICAOF NO ONE").await.as_deref(),
        Some("+OK")
    );
    service.retarget(replica.address());
    service.cut();
    let third = publish_once_up(&pods[0], "3").await;
    assert_eq!(
        (third.epoch.as_str(), third.offset),
        (first.epoch.as_str(), 3)
    );
    let frame = user.frame(TOPIC).await;
    assert_eq!(
        position(&frame),
        (first.epoch.clone(), 3),
        "no gap: {frame}"
    );
    resumes_from_the_first(&pods[0], &first.epoch, 3).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pods_reach_redis_over_tls_with_the_password_from_a_file_and_a_wrong_one_is_a_clear_error()
{
    let pki = Pki::new("redis test CA");
    let issued = pki.issue("redis", &["127.0.0.1"]);
    let tls_port = RedisServer::reserve(&[]).port.to_string();
    let files = [&issued.cert, &issued.key, &pki.ca_file()].map(|p| p.display().to_string());
    let _redis = RedisServer::start_with(&[
        "--tls-port",
        &tls_port,
        "--tls-cert-file",
        &files[0],
        "--tls-key-file",
        &files[1],
        "--tls-ca-cert-file",
        &files[2],
        "--tls-auth-clients",
        "no",
        "--requirepass",
        "s3cret hush",
    ])
    .await;
    let password = |name: &str, text: &str| {
        let path = pki.dir().join(name);
        std::fs::write(&path, text).expect("written");
        path.display().to_string()
    };
    let (right, wrong) = (
        password("right", "s3cret hush\n"),
        password("wrong", "guess\n"),
    );
    let ports = Ports::free_on(&IPS);
    let flags = |file: &str| {
        vec![
            "--broadcast=redis".to_owned(),
            format!("--redis-url=rediss://127.0.0.1:{tls_port}"),
            format!("--redis-password-file={file}"),
            "--peer-ready-timeout=1s".to_owned(),
        ]
    };
    // The test CA is the only one the pods trust.
    let trust = [("SSL_CERT_FILE", files[2].clone())];
    let pods = [
        Process::spawn(IPS[0], ports, &flags(&right), &trust),
        Process::spawn(IPS[1], ports, &flags(&right), &trust),
    ];
    for pod in &pods {
        pod.wait_ready().await;
    }
    let mut user = User::connect(&pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    publish_once_up(&pods[0], "1").await;
    assert_eq!(user.message(TOPIC).await, json!(1));

    let ips = ["127.0.0.3"];
    let refused = Process::spawn(ips[0], Ports::free_on(&ips), &flags(&wrong), &trust);
    refused.wait_ready().await;
    refused.wait_for_log("Password authentication failed").await;
    let status = try_publish(&refused, "2", "")
        .await
        .expect_err("not connected");
    assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
    user.expect_silence(Duration::from_millis(200)).await;
}

#[test]
fn a_redis_backend_without_a_usable_url_is_refused_at_start_with_the_reason() {
    let serve = |extra: &[&str]| {
        let output = std::process::Command::new(env!("CARGO_BIN_EXE_herald"))
            .args([
                "serve",
                "--http-addr=127.0.0.1:0",
                "--grpc-addr=127.0.0.1:0",
                "--peer-addr=127.0.0.1:0",
                "--broadcast=redis",
            ])
            .args(extra)
            .output()
            .expect("herald runs");
        assert!(!output.status.success(), "{extra:?} was accepted");
        String::from_utf8_lossy(&output.stderr).into_owned()
    };
    assert!(serve(&[]).contains("--broadcast redis needs --redis-url"));
    assert!(serve(&["--redis-url=http://127.0.0.1:6379"]).contains("--redis-url"));
    let missing = serve(&[
        "--redis-url=redis://127.0.0.1:6379",
        "--redis-password-file=/nonexistent/password",
    ]);
    assert!(
        missing.contains("--redis-password-file /nonexistent/password"),
        "{missing}"
    );
}
