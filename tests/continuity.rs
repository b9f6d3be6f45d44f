//! Continuity across pods, with pods as real processes on 127.0.0.x and
//! real WebSocket users, on the mesh and on Redis alike: a user who comes
//! back with `since`, on any pod, gets exactly what it missed, in order, or
//! is told it cannot; a rolling restart loses nothing; a SIGKILL loses
//! nothing silently; and no two messages ever share an offset. On the
//! mesh, a peer queue that overflows shows up as a `gap`, never as a
//! skipped offset (Redis's own faults are in tests/redis.rs).

mod common;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::time::{Duration, Instant};

use common::backend::Backend;
use common::process::{Ports, Process, spawn_ready};
use common::user::User;
use futures_util::{SinkExt, StreamExt};
use herald::proto::v1::publisher_client::PublisherClient;
use herald::proto::v1::{PublishBatchRequest, PublishRequest, PublishResponse};
use serde_json::{Value, json};
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const TOPIC: &str = "room:1";

/// `count` pods on 127.0.0.1.. in one group on `backend`.
struct Cluster {
    ips: Vec<String>,
    ports: Ports,
    flags: Vec<String>,
    pods: Vec<Process>,
    _backend: Backend,
}

impl Cluster {
    async fn start(backend: Backend, count: usize, extra: &[&str]) -> Self {
        let ips: Vec<String> = (1..=count).map(|i| format!("127.0.0.{i}")).collect();
        let refs: Vec<&str> = ips.iter().map(String::as_str).collect();
        let ports = Ports::free_on(&refs);
        let mut flags = backend.flags(&refs, ports);
        flags.extend([
            "--drain-window=1s".to_owned(),
            "--peer-ready-timeout=3s".to_owned(),
        ]);
        flags.extend(extra.iter().map(|f| (*f).to_owned()));
        let pods = spawn_ready(&refs, ports, &flags).await;
        Self {
            ips,
            ports,
            flags,
            pods,
            _backend: backend,
        }
    }

    fn urls(&self) -> Vec<String> {
        self.pods.iter().map(Process::ws_url).collect()
    }

    fn grpc_urls(&self) -> Vec<String> {
        self.pods.iter().map(Process::grpc_url).collect()
    }

    /// Starts pod `i` again (a new process: a new node id, the same IP).
    async fn restart(&mut self, i: usize) {
        let pod = Process::spawn(&self.ips[i], self.ports, &self.flags, &[]);
        pod.wait_ready().await;
        self.pods[i] = pod;
    }
}

/// Publishes through `urls[first]`, then the next ones, with
/// `key` so that a retry never publishes twice; gives up after 10 s.
async fn publish_anywhere(
    urls: &[String],
    first: usize,
    data: String,
    key: String,
) -> Option<PublishResponse> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut at = first;
    while Instant::now() < deadline {
        let url = urls[at % urls.len()].clone();
        at += 1;
        let attempt = async {
            let mut client = PublisherClient::connect(url).await.ok()?;
            let request = PublishRequest {
                topic: TOPIC.into(),
                data: data.clone().into_bytes(),
                idempotency_key: key.clone(),
            };
            client.publish(request).await.ok().map(|r| r.into_inner())
        };
        if let Ok(Some(reply)) = tokio::time::timeout(Duration::from_secs(1), attempt).await {
            return Some(reply);
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    None
}

/// A backend publishing message after message through the pods in turn
/// until `stop`; returns what was acknowledged.
async fn steady_publisher(
    urls: Vec<String>,
    every: Duration,
    stop: watch::Receiver<bool>,
) -> Vec<PublishResponse> {
    let mut acked = Vec::new();
    let mut n = 0usize;
    while !*stop.borrow() {
        let data = json!({ "n": n }).to_string();
        if let Some(reply) = publish_anywhere(&urls, n, data, format!("k{n}")).await {
            acked.push(reply);
        }
        n += 1;
        tokio::time::sleep(every).await;
    }
    acked
}

/// What one user saw while it stayed subscribed across pods.
#[derive(Debug, Default)]
struct Seen {
    /// Message frames, in arrival order.
    messages: Vec<Value>,
    /// `gap` events.
    gaps: usize,
    /// Whether each resume (`since`) said it recovered.
    resumes: Vec<bool>,
    /// Offsets that did not follow the position held.
    disorder: Vec<String>,
    /// Pods it was connected to, in turn.
    pods: Vec<usize>,
}

/// The position a frame (reply, message or gap) states.
fn position(frame: &Value) -> (String, u64) {
    let epoch = frame["epoch"].as_str().expect("an epoch").to_owned();
    (epoch, frame["offset"].as_u64().expect("an offset"))
}

/// A user that stays subscribed to [`TOPIC`] across pods: whenever its
/// connection ends it connects to the next pod that takes it and resumes
/// with `since` = the last position it holds. Ends once `done` is set and
/// nothing arrived for a second.
async fn resuming_user(
    urls: Vec<String>,
    start: usize,
    ready: tokio::sync::mpsc::Sender<()>,
    done: watch::Receiver<bool>,
) -> Seen {
    let mut seen = Seen::default();
    let mut held: Option<(String, u64)> = None;
    let mut at = start;
    let mut ready = Some(ready);
    let deadline = Instant::now() + Duration::from_secs(60);
    'connections: while Instant::now() < deadline {
        let pod = at % urls.len();
        at += 1;
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(2),
            tokio_tungstenite::connect_async(&urls[pod]),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let mut request = json!({"op": "subscribe", "topic": TOPIC, "ref": "s"});
        if let Some((epoch, offset)) = &held {
            request["since"] = json!({"epoch": epoch, "offset": offset});
        }
        if socket
            .send(Message::text(request.to_string()))
            .await
            .is_err()
        {
            continue;
        }
        seen.pods.push(pod);
        let mut replied = false;
        loop {
            let next = match tokio::time::timeout(Duration::from_secs(1), socket.next()).await {
                Err(_) if *done.borrow() => break 'connections,
                Err(_) => continue,
                Ok(next) => next,
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => continue 'connections,
                Some(Ok(_)) => continue,
            };
            for line in text.split('\n') {
                let frame: Value = serde_json::from_str(line).expect("JSON from the server");
                match frame["op"].as_str() {
                    Some("reply") if !replied => {
                        replied = true;
                        assert_eq!(frame["ok"], true, "{frame}");
                        match frame.get("recovered") {
                            Some(recovered) => {
                                let recovered = recovered.as_bool().expect("a bool");
                                seen.resumes.push(recovered);
                                if !recovered {
                                    held = Some(position(&frame));
                                }
                            }
                            None => held = Some(position(&frame)),
                        }
                        if let Some(ready) = ready.take() {
                            let _ = ready.send(()).await;
                        }
                    }
                    Some("message") => {
                        let (epoch, offset) = position(&frame);
                        let follows = held.as_ref().is_some_and(|(e, o)| {
                            (*e == epoch && offset == o + 1) || (e.is_empty() && offset == 1)
                        });
                        if !follows {
                            seen.disorder
                                .push(format!("{held:?} then {epoch}/{offset}"));
                        }
                        held = Some((epoch, offset));
                        seen.messages.push(frame);
                    }
                    Some("gap") => {
                        seen.gaps += 1;
                        held = Some(position(&frame));
                    }
                    _ => panic!("unexpected frame {frame}"),
                }
            }
        }
    }
    seen
}

/// Ids in the order received; panics on a duplicate.
fn ids(seen: &Seen) -> HashSet<String> {
    let mut ids = HashSet::new();
    for message in &seen.messages {
        let id = message["id"].as_str().expect("an id").to_owned();
        assert!(
            ids.insert(id.clone()),
            "message {id} delivered twice: {seen:?}"
        );
    }
    ids
}

/// No two different messages with one (epoch, offset), across every user.
fn assert_no_fork<'a>(all: impl IntoIterator<Item = &'a Seen>) {
    let mut at: HashMap<(String, u64), String> = HashMap::new();
    for seen in all {
        for message in &seen.messages {
            let id = message["id"].as_str().expect("an id").to_owned();
            let place = position(message);
            if let Some(other) = at.insert(place.clone(), id.clone()) {
                assert_eq!(other, id, "two messages at {place:?}");
            }
        }
    }
}

async fn users(
    cluster: &Cluster,
    count: usize,
    done: &watch::Receiver<bool>,
) -> Vec<tokio::task::JoinHandle<Seen>> {
    let (ready, mut readied) = tokio::sync::mpsc::channel(count);
    let users: Vec<_> = (0..count)
        .map(|i| {
            tokio::spawn(resuming_user(
                cluster.urls(),
                i,
                ready.clone(),
                done.clone(),
            ))
        })
        .collect();
    for _ in 0..count {
        readied.recv().await.expect("every user subscribes");
    }
    users
}

on_both_backends!(
    a_user_who_resumes_on_another_pod_gets_exactly_what_was_published_meanwhile_then_live_ones
);
async fn a_user_who_resumes_on_another_pod_gets_exactly_what_was_published_meanwhile_then_live_ones(
    backend: Backend,
) {
    let cluster = Cluster::start(backend, 3, &[]).await;
    let [a, b, c] = [0, 1, 2].map(|i| &cluster.pods[i]);
    let mut user = User::connect(&a.ws_url()).await;
    user.subscribe(TOPIC).await;
    a.publish(TOPIC, r#""before""#).await;
    let last = user.frame(TOPIC).await;
    drop(user);

    let mut published = Vec::new();
    for n in 0..100 {
        let pod = if n % 2 == 0 { b } else { c };
        published.push(pod.publish(TOPIC, &format!("{n}")).await);
    }
    let mut user = User::connect(&c.ws_url()).await;
    let since = json!({"epoch": last["epoch"], "offset": last["offset"]});
    let reply = user.resume(TOPIC, since).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(
        reply["offset"],
        last["offset"].as_u64().expect("offset") + 100,
        "{reply}"
    );
    for (n, id) in published.iter().enumerate() {
        let frame = user.frame(TOPIC).await;
        assert_eq!(frame["id"], *id, "message {n} in order");
        assert_eq!(frame["data"], n);
        assert_eq!(
            frame["offset"],
            last["offset"].as_u64().expect("offset") + 1 + n as u64
        );
        assert_eq!(frame["epoch"], last["epoch"]);
    }
    b.publish(TOPIC, r#""live""#).await;
    assert_eq!(user.message(TOPIC).await, json!("live"));
    user.expect_silence(Duration::from_millis(200)).await;
}

on_both_backends!(
    a_resume_ahead_of_its_new_pod_waits_for_the_messages_on_their_way_and_replays_none_twice
);
async fn a_resume_ahead_of_its_new_pod_waits_for_the_messages_on_their_way_and_replays_none_twice(
    backend: Backend,
) {
    let cluster = Cluster::start(backend, 2, &[]).await;
    let [a, b] = [0, 1].map(|i| &cluster.pods[i]);
    let mut first = User::connect(&a.ws_url()).await;
    first.subscribe(TOPIC).await;
    a.publish(TOPIC, r#""first""#).await;
    let seen = first.frame(TOPIC).await;
    let next = seen["offset"].as_u64().expect("offset") + 1;
    // The client claims the next message too, as one would that saw it on
    // a pod which then drained before pod b received it.
    let since = json!({"epoch": seen["epoch"], "offset": next});
    let publisher = a.grpc_url();
    let late = tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(300)).await;
        common::publish(publisher, TOPIC, r#""second""#).await
    });
    let mut user = User::connect(&b.ws_url()).await;
    let reply = user.resume(TOPIC, since).await;
    late.await.expect("published");
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["recovered"], true, "{reply}");
    assert_eq!(reply["offset"], next, "{reply}");
    a.publish(TOPIC, r#""third""#).await;
    assert_eq!(
        user.message(TOPIC).await,
        json!("third"),
        "nothing replayed twice"
    );
    user.expect_silence(Duration::from_millis(200)).await;
}

on_both_backends!(
    a_rolling_restart_delivers_every_acknowledged_message_once_and_every_resume_recovers
);
async fn a_rolling_restart_delivers_every_acknowledged_message_once_and_every_resume_recovers(
    backend: Backend,
) {
    let mut cluster = Cluster::start(backend, 3, &["--history-messages=100000"]).await;
    let (done_tx, done) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let users = users(&cluster, 60, &done).await;
    let publishing = tokio::spawn(steady_publisher(
        cluster.grpc_urls(),
        Duration::from_millis(10),
        stop,
    ));
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..3 {
        cluster.pods[i].signal("TERM");
        assert!(
            cluster.pods[i].wait_exit(Duration::from_secs(15)).await,
            "pod {i} drains and exits cleanly"
        );
        cluster.restart(i).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    stop_tx.send(true).expect("backend listens");
    let acked = publishing.await.expect("backend ends");
    done_tx.send(true).expect("users listen");
    assert!(
        acked.len() > 100,
        "the backend kept publishing: {}",
        acked.len()
    );
    let mut all = Vec::new();
    for user in users {
        all.push(user.await.expect("user ends"));
    }
    for seen in &all {
        assert!(
            seen.pods.len() > 1,
            "every user moved at least once: {:?}",
            seen.pods
        );
        assert!(
            seen.resumes.iter().all(|r| *r),
            "every resume recovered: {:?}",
            seen.resumes
        );
        assert_eq!(seen.gaps, 0, "no gap");
        assert!(
            seen.disorder.is_empty(),
            "offsets follow one another: {:?}",
            seen.disorder
        );
        let received = ids(seen);
        let missing: Vec<_> = acked.iter().filter(|a| !received.contains(&a.id)).collect();
        assert!(
            missing.is_empty(),
            "acknowledged but not received: {missing:?}"
        );
    }
    assert_no_fork(&all);
    let epochs: BTreeMap<String, usize> =
        all[0]
            .messages
            .iter()
            .fold(BTreeMap::new(), |mut epochs, m| {
                *epochs.entry(position(m).0).or_default() += 1;
                epochs
            });
    assert_eq!(
        epochs.len(),
        1,
        "a rolling restart keeps the epoch: {epochs:?}"
    );

    // The pod restarted last answers for the topic from its first message:
    // it synced it from a peer when it started (mesh), or reads what it
    // lacks from Redis.
    let mut late = User::connect(&cluster.pods[2].ws_url()).await;
    let reply = late.resume(TOPIC, json!({"epoch": "", "offset": 0})).await;
    assert_eq!(reply["recovered"], true, "{reply}");
    let head = reply["offset"].as_u64().expect("an offset");
    let mut replayed = HashSet::new();
    for offset in 1..=head {
        let frame = late.frame(TOPIC).await;
        assert_eq!(frame["offset"], offset);
        replayed.insert(frame["id"].as_str().expect("an id").to_owned());
    }
    assert!(
        acked.iter().all(|a| replayed.contains(&a.id)),
        "the whole topic is replayed"
    );
}

on_both_backends!(after_a_sigkill_nothing_is_lost_silently_and_no_offset_is_reused);
async fn after_a_sigkill_nothing_is_lost_silently_and_no_offset_is_reused(backend: Backend) {
    let cluster = Cluster::start(backend, 3, &[]).await;
    let (done_tx, done) = watch::channel(false);
    let (stop_tx, stop) = watch::channel(false);
    let users = users(&cluster, 30, &done).await;
    // The backend publishes through the pods that survive; the killed one
    // may be the topic's sequencer, or not.
    let survivors = cluster.grpc_urls()[1..].to_vec();
    let publishing = tokio::spawn(steady_publisher(survivors, Duration::from_millis(10), stop));
    tokio::time::sleep(Duration::from_millis(500)).await;
    cluster.pods[0].signal("KILL");
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stop_tx.send(true).expect("backend listens");
    let acked = publishing.await.expect("backend ends");
    done_tx.send(true).expect("users listen");
    let mut all = Vec::new();
    for user in users {
        all.push(user.await.expect("user ends"));
    }
    for seen in &all {
        let received = ids(seen);
        let missing = acked.iter().filter(|a| !received.contains(&a.id)).count();
        let told = seen.gaps > 0 || seen.resumes.contains(&false);
        assert!(
            missing == 0 || told,
            "{missing} acknowledged messages missing and the user was not told: {seen:?}"
        );
        assert!(
            seen.disorder.is_empty(),
            "a message never follows a position it does not continue: {:?}",
            seen.disorder
        );
        if seen.pods == [1] || seen.pods == [2] {
            assert!(
                seen.resumes.is_empty(),
                "users of the survivors stay where they are"
            );
        }
    }
    assert_no_fork(&all);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_queue_overflow_reaches_subscribers_as_a_gap_and_never_as_a_skipped_offset() {
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let flags = vec![
        "--discovery=static".to_owned(),
        format!("--peers={}:{p},{}:{p}", ips[0], ips[1], p = ports.peer),
        "--peer-queue=1".to_owned(),
        "--peer-ready-timeout=1s".to_owned(),
        "--client-queue=10000".to_owned(),
    ];
    // Pod a numbers the topic: it is alone when the topic starts.
    let a = Process::spawn(ips[0], ports, &flags, &[]);
    a.wait_ready().await;
    a.publish(TOPIC, "0").await;
    let b = Process::spawn(ips[1], ports, &flags, &[]);
    b.wait_ready().await;
    let mut near = User::connect(&a.ws_url()).await;
    let mut far = User::connect(&b.ws_url()).await;
    let start = position(&near.subscribe(TOPIC).await);
    assert_eq!(position(&far.subscribe(TOPIC).await), start);

    let messages = (1..=2000)
        .map(|n| PublishRequest {
            topic: TOPIC.into(),
            data: n.to_string().into_bytes(),
            ..PublishRequest::default()
        })
        .collect();
    let mut client = PublisherClient::connect(a.grpc_url())
        .await
        .expect("connects");
    let results = client
        .publish_batch(PublishBatchRequest { messages })
        .await
        .expect("batch accepted")
        .into_inner()
        .results;
    let last = results.last().expect("2000 results").offset;

    // The sequencer's own user gets everything; the other pod's user gets
    // each message in order or a gap that says where it stands.
    for offset in start.1 + 1..=last {
        assert_eq!(near.frame(TOPIC).await["offset"], offset);
    }
    let mut held = start.1;
    let mut gaps = 0;
    while held < last {
        let frame = far.next().await;
        let (epoch, offset) = position(&frame);
        assert_eq!(epoch, start.0);
        match frame["op"].as_str() {
            Some("message") => assert_eq!(offset, held + 1, "no offset skipped"),
            Some("gap") => {
                assert!(offset > held, "{frame}");
                gaps += 1;
            }
            _ => panic!("unexpected {frame}"),
        }
        held = offset;
    }
    assert!(gaps > 0, "a queue of 1 overflowed under a batch of 2000");
    assert!(a.logs().contains("peer queue full"), "{}", a.logs());
    let admin = format!("{}:{}", a.ip, a.ports.http)
        .parse()
        .expect("address");
    let (_, metrics) = common::process::http_get(admin, "/metrics")
        .await
        .expect("metrics");
    let dropped = r#"herald_messages_dropped_total{reason="peer_queue_full"}"#;
    assert!(
        common::process::sample(&metrics, dropped) >= 1.0,
        "{metrics}"
    );
}

on_both_backends!(a_retried_publish_with_the_same_key_lands_once_whichever_pod_takes_the_retry);
async fn a_retried_publish_with_the_same_key_lands_once_whichever_pod_takes_the_retry(
    backend: Backend,
) {
    let cluster = Cluster::start(backend, 2, &[]).await;
    let mut user = User::connect(&cluster.pods[1].ws_url()).await;
    user.subscribe(TOPIC).await;
    let urls = cluster.grpc_urls();
    let first = publish_anywhere(&urls, 0, "1".into(), "order-17".into())
        .await
        .expect("published");
    let retry = publish_anywhere(&urls, 1, "1".into(), "order-17".into())
        .await
        .expect("answered");
    assert_eq!(first, retry, "the retry gets the first one's id and offset");
    let frame = user.frame(TOPIC).await;
    assert_eq!(frame["id"], first.id);
    user.expect_silence(Duration::from_millis(300)).await;
}
