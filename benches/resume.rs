//! Scenario R (resume): a rolling restart at a realistic size. Three pods
//! (release builds, as processes on 127.0.0.1-3, static discovery), 3,000
//! users on one topic spread over them, a backend publishing 200 msg/s
//! through whichever pods answer (retrying with an idempotency key). Each
//! pod in turn gets SIGTERM, drains its users over 5 s (close 1012) and is
//! started again; every user reconnects to another pod and resumes with
//! `since` = the last position it holds.
//!
//! Reported: messages acknowledged; deliveries lost (an acknowledged
//! message a user never got) and duplicated (an offset a user got twice,
//! or out of order); resumes that recovered and that did not; per drain,
//! the time from SIGTERM until the last of the pod's users had resumed and
//! received a message published after its resume; the other users' p99
//! latency meanwhile.
//!
//! The resume storm (`storm`): 5,000 users (`HERALD_STORM_USERS`) on one
//! pod, which is SIGKILLed;
//! 100 messages are published to their topic while they are away, then
//! they all reconnect at once to the two survivors and resume with `since`.
//! Reported: how long until every one has its 100 messages (recovered and
//! live), the survivors' peak memory, and the p99 latency of 1,000 other
//! users on another topic before and during the storm.
//!
//! Run with `make bench-resume` (or `cargo bench --bench resume`, with
//! `-- storm` for the storm); about a minute each. With `-- redis` the pods
//! use the Redis broadcast backend (`--broadcast=redis`) on a redis-server
//! the bench starts on 127.0.0.1 (`$REDIS_SERVER`, or what `make
//! redis-server` unpacked) instead of the mesh; `make bench-redis` runs R
//! both ways. Under test runners it does nothing (the behaviour is tested
//! by tests/continuity.rs).

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use futures_util::{SinkExt, StreamExt};
use herald::proto::v1::PublishRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use serde_json::json;
use tokio::sync::watch;
use tokio_tungstenite::tungstenite::Message;

const IPS: [&str; 3] = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
const HTTP: u16 = 38080;
const GRPC: u16 = 39090;
const PEER: u16 = 37070;
/// The redis-server's port with `-- redis`, on 127.0.0.1.
const REDIS_PORT: u16 = 36379;
const TOPIC: &str = "bench:r";
const USERS: usize = 3_000;
const RATE: u64 = 200;
const DRAIN_WINDOW: &str = "5s";

fn unix_micros() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_micros() as u64)
}

/// A pod process, killed if the run ends early (a panic), so no pod of a
/// failed run outlives it and holds the ports of the next.
struct Pod(Child);

impl Drop for Pod {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

impl std::ops::Deref for Pod {
    type Target = Child;
    fn deref(&self) -> &Child {
        &self.0
    }
}

impl std::ops::DerefMut for Pod {
    fn deref_mut(&mut self) -> &mut Child {
        &mut self.0
    }
}

/// What carries messages between the pods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Broadcast {
    /// The pods' own mesh, static discovery.
    Mesh,
    /// One redis-server on 127.0.0.1:[`REDIS_PORT`].
    Redis,
}

impl Broadcast {
    /// The `herald serve` flags that choose it.
    fn flags(self) -> Vec<String> {
        match self {
            Self::Mesh => {
                let peers: Vec<String> = IPS.iter().map(|ip| format!("{ip}:{PEER}")).collect();
                vec![
                    "--discovery=static".into(),
                    format!("--peers={}", peers.join(",")),
                ]
            }
            Self::Redis => vec![
                "--broadcast=redis".into(),
                format!("--redis-url=redis://127.0.0.1:{REDIS_PORT}"),
            ],
        }
    }
}

/// The redis-server of `-- redis` (empty, no persistence), killed on drop.
struct Redis(Child);

impl Redis {
    /// Starts it and waits until it answers `PING`.
    async fn start() -> Self {
        let binary = std::env::var_os("REDIS_SERVER").map_or_else(
            || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/redis/redis-server"),
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "{} not found: `make redis-server` fetches it (or set REDIS_SERVER)",
            binary.display()
        );
        let log = std::fs::File::create("target/bench/resume-redis.log").expect("log file");
        let child = Command::new(binary)
            .args(["--bind", "127.0.0.1", "--port", &REDIS_PORT.to_string()])
            .args(["--save", "", "--appendonly", "no", "--dir", "target/bench"])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        let redis = Self(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !redis.pong().await {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        redis
    }

    async fn pong(&self) -> bool {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let exchange = async {
            let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", REDIS_PORT))
                .await
                .ok()?;
            stream.write_all(b"PING\r\n").await.ok()?;
            let mut reply = [0; 16];
            let n = stream.read(&mut reply).await.ok()?;
            Some(reply[..n].starts_with(b"+PONG"))
        };
        tokio::time::timeout(Duration::from_secs(1), exchange)
            .await
            .ok()
            .flatten()
            == Some(true)
    }
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn(i: usize, broadcast: Broadcast) -> Pod {
    let ip = IPS[i];
    let log =
        std::fs::File::create(format!("target/bench/resume-pod{}.log", i + 1)).expect("log file");
    Command::new(env!("CARGO_BIN_EXE_herald"))
        .arg("serve")
        .arg(format!("--http-addr={ip}:{HTTP}"))
        .arg(format!("--grpc-addr={ip}:{GRPC}"))
        .arg(format!("--peer-addr={ip}:{PEER}"))
        .args(broadcast.flags())
        .arg(format!("--drain-window={DRAIN_WINDOW}"))
        .arg("--max-connection-rate=100000")
        // One bench process on one address stands for thousands of users.
        .arg("--max-connection-rate-per-ip=0")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .map(Pod)
        .expect("herald starts")
}

async fn ready(i: usize) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let probe = async {
            let mut stream = tokio::net::TcpStream::connect((IPS[i], HTTP)).await.ok()?;
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            stream
                .write_all(b"GET /readyz HTTP/1.0\r\n\r\n")
                .await
                .ok()?;
            let mut out = Vec::new();
            stream.read_to_end(&mut out).await.ok()?;
            Some(out.starts_with(b"HTTP/1.0 200") || out.starts_with(b"HTTP/1.1 200"))
        };
        if tokio::time::timeout(Duration::from_secs(1), probe)
            .await
            .ok()
            .flatten()
            == Some(true)
        {
            return;
        }
        assert!(Instant::now() < deadline, "pod {i} not ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// What one user saw.
#[derive(Default)]
struct Seen {
    first: Option<u64>,
    last: u64,
    count: u64,
    disorder: u64,
    gaps: u64,
    recovered: u64,
    not_recovered: u64,
    /// When it resumed and then got a live message, per connection after
    /// the first: (pod left, microseconds when caught up).
    caught_up: Vec<(usize, u64)>,
    latencies: Vec<u64>,
}

/// One user: subscribed to the topic across pods until `done`, resuming
/// with `since` after every reconnect.
async fn user(n: usize, done: watch::Receiver<bool>) -> Seen {
    let mut seen = Seen::default();
    let mut held: Option<(String, u64)> = None;
    let mut at = n;
    let mut left: Option<usize> = None;
    loop {
        let pod = at % IPS.len();
        at += 1;
        let url = format!("ws://{}:{HTTP}/ws", IPS[pod]);
        let Ok(Ok((mut socket, _))) = tokio::time::timeout(
            Duration::from_secs(3),
            tokio_tungstenite::connect_async(&url),
        )
        .await
        else {
            tokio::time::sleep(Duration::from_millis(100 + (n as u64 % 400))).await;
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
        let mut waiting_live = left.is_some();
        let mut resumed_at = 0;
        loop {
            let next = match tokio::time::timeout(Duration::from_secs(2), socket.next()).await {
                Err(_) if *done.borrow() => return seen,
                Err(_) => continue,
                Ok(next) => next,
            };
            let text = match next {
                Some(Ok(Message::Text(text))) => text,
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => {
                    left = Some(pod);
                    break;
                }
                Some(Ok(_)) => continue,
            };
            for line in text.split('\n') {
                match field(line, "op") {
                    Some("\"reply\"") => {
                        let position = (string(line, "epoch").to_owned(), number(line, "offset"));
                        match field(line, "recovered") {
                            Some("true") => {
                                seen.recovered += 1;
                                resumed_at = position.1;
                            }
                            Some(_) => {
                                seen.not_recovered += 1;
                                held = Some(position);
                            }
                            None => held = Some(position),
                        }
                    }
                    Some("\"message\"") => {
                        let epoch = string(line, "epoch");
                        let offset = number(line, "offset");
                        let follows = held.as_ref().is_some_and(|(e, o)| {
                            (e == epoch && offset == o + 1) || (e.is_empty() && offset == 1)
                        });
                        if !follows {
                            seen.disorder += 1;
                        }
                        seen.first.get_or_insert(offset);
                        seen.last = offset;
                        seen.count += 1;
                        if held.as_ref().is_none_or(|(e, _)| e != epoch) {
                            held = Some((epoch.to_owned(), offset));
                        } else if let Some(held) = held.as_mut() {
                            held.1 = offset;
                        }
                        if waiting_live && offset > resumed_at {
                            waiting_live = false;
                            seen.caught_up.push((left.unwrap_or(0), unix_micros()));
                        }
                        if !waiting_live && n.is_multiple_of(10) {
                            let sent = number(line, "t");
                            seen.latencies.push(unix_micros().saturating_sub(sent));
                        }
                    }
                    Some("\"gap\"") => {
                        // Told: the position it holds is now the gap's.
                        seen.gaps += 1;
                        held = Some((string(line, "epoch").to_owned(), number(line, "offset")));
                    }
                    _ => {}
                }
            }
        }
    }
}

/// The raw JSON value of `"key":` in a one-line object (up to the next
/// `,` or `}`): the users read frames without building a document, so
/// that 3,000 of them do not take the cores from the pods.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!("\"{key}\":"))? + key.len() + 3;
    let rest = &line[at..];
    let end = rest.find([',', '}']).unwrap_or(rest.len());
    Some(&rest[..end])
}

fn string<'a>(line: &'a str, key: &str) -> &'a str {
    field(line, key).map_or("", |v| v.trim_matches('"'))
}

fn number(line: &str, key: &str) -> u64 {
    field(line, key).and_then(|v| v.parse().ok()).unwrap_or(0)
}

/// The backend: one publish every 1/RATE s through the pods in turn;
/// returns the highest offset acknowledged and how many were.
async fn backend(stop: watch::Receiver<bool>) -> (u64, u64, u64) {
    let mut clients: Vec<Option<PublisherClient<tonic::transport::Channel>>> =
        vec![None, None, None];
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / RATE));
    let (mut acked, mut highest, mut failed) = (0, 0, 0);
    let mut n = 0u64;
    while !*stop.borrow() {
        every.tick().await;
        let key = format!("r{n}");
        let mut done = false;
        for attempt in 0..30 {
            let pod = ((n + attempt) % 3) as usize;
            if clients[pod].is_none() {
                clients[pod] = PublisherClient::connect(format!("http://{}:{GRPC}", IPS[pod]))
                    .await
                    .ok();
            }
            let Some(client) = clients[pod].as_mut() else {
                continue;
            };
            let request = PublishRequest {
                topic: TOPIC.into(),
                data: json!({"n": n, "t": unix_micros()}).to_string().into_bytes(),
                idempotency_key: key.clone(),
            };
            match tokio::time::timeout(Duration::from_secs(1), client.publish(request)).await {
                Ok(Ok(reply)) => {
                    acked += 1;
                    highest = highest.max(reply.into_inner().offset);
                    done = true;
                    break;
                }
                _ => clients[pod] = None,
            }
        }
        if !done {
            failed += 1;
        }
        n += 1;
    }
    (acked, highest, failed)
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

fn main() {
    if !std::env::args().any(|arg| arg == "--bench") {
        // Test runners list and run bench targets: there is nothing to
        // test here (tests/continuity.rs holds the behaviour).
        return;
    }
    std::fs::create_dir_all("target/bench").expect("log dir");
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    let broadcast = if std::env::args().any(|arg| arg == "redis") {
        Broadcast::Redis
    } else {
        Broadcast::Mesh
    };
    runtime.block_on(async {
        // Dropped (killed) after the pods are gone.
        let _redis = match broadcast {
            Broadcast::Redis => Some(Redis::start().await),
            Broadcast::Mesh => None,
        };
        if std::env::args().any(|arg| arg == "storm") {
            storm(broadcast).await;
        } else {
            run(broadcast).await;
        }
    });
}

async fn run(broadcast: Broadcast) {
    let mut pods: Vec<Pod> = (0..3).map(|i| spawn(i, broadcast)).collect();
    for i in 0..3 {
        ready(i).await;
    }
    let (done_tx, done) = watch::channel(false);
    let started = Instant::now();
    let users: Vec<_> = (0..USERS)
        .map(|n| tokio::spawn(user(n, done.clone())))
        .collect();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let (stop_tx, stop) = watch::channel(false);
    // The backend runs on a thread of its own, so the users' reading never
    // delays a publish or its timestamp.
    let publishing = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(backend(stop))
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut drain_starts = Vec::new();
    for (i, pod) in pods.iter_mut().enumerate() {
        drain_starts.push(unix_micros());
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pod.id().to_string())
            .status();
        let exit = Instant::now();
        while pod.try_wait().ok().flatten().is_none() {
            assert!(
                exit.elapsed() < Duration::from_secs(30),
                "pod {i} did not exit"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        *pod = spawn(i, broadcast);
        ready(i).await;
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_tx.send(true).expect("backend listens");
    let (acked, highest, failed) = publishing.join().expect("backend ends");
    tokio::time::sleep(Duration::from_secs(2)).await;
    done_tx.send(true).expect("users listen");
    let mut all = Vec::new();
    for user in users {
        all.push(user.await.expect("user ends"));
    }
    let elapsed = started.elapsed();
    for pod in &mut pods {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pod.id().to_string())
            .status();
        let _ = pod.wait();
    }

    // Every user subscribed before the first publish and got a contiguous
    // run of offsets (disorder is counted apart): what it lacks of 1 to the
    // highest acknowledged offset is lost.
    let lost: u64 = all
        .iter()
        .map(|s| {
            let received = match s.first {
                Some(first) if first <= highest => s.last.min(highest) + 1 - first,
                _ => 0,
            };
            highest - received
        })
        .sum();
    let duplicated: u64 = all.iter().map(|s| s.disorder).sum();
    let gaps: u64 = all.iter().map(|s| s.gaps).sum();
    let recovered: u64 = all.iter().map(|s| s.recovered).sum();
    let not_recovered: u64 = all.iter().map(|s| s.not_recovered).sum();
    let mut latencies: Vec<u64> = all
        .iter()
        .flat_map(|s| s.latencies.iter().copied())
        .collect();
    latencies.sort_unstable();
    let on = match broadcast {
        Broadcast::Mesh => "",
        Broadcast::Redis => " on Redis",
    };
    println!("# Scenario R (resume){on}: rolling restart of 3 pods, {USERS} users, {RATE} msg/s\n");
    println!(
        "- Machine: {} CPUs; loopback; pods are release builds as processes; the users and the backend share the cores.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if broadcast == Broadcast::Redis {
        println!(
            "- Broadcast: Redis (`--broadcast=redis`, one redis-server on 127.0.0.1, no discovery)."
        );
    }
    println!(
        "- Drain window {DRAIN_WINDOW}; each pod restarted in turn, 3 s apart; run took {:.0} s.\n",
        elapsed.as_secs_f64()
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| messages acknowledged (highest offset) | {acked} ({highest}); {failed} not acknowledged after 30 tries |"
    );
    println!("| deliveries lost (acknowledged, never received) | {lost} |");
    println!("| deliveries duplicated or out of order | {duplicated} |");
    println!("| gap events | {gaps} |");
    println!("| resumes recovered / not recovered | {recovered} / {not_recovered} |");
    for (i, start) in drain_starts.iter().enumerate() {
        let last = all
            .iter()
            .flat_map(|s| {
                s.caught_up
                    .iter()
                    .filter(|(pod, _)| *pod == i)
                    .map(|(_, at)| *at)
            })
            .max();
        let users = all
            .iter()
            .filter(|s| s.caught_up.iter().any(|(pod, _)| *pod == i))
            .count();
        if let Some(last) = last {
            println!(
                "| drain of pod {}: SIGTERM → last of its {users} users resumed and live | {:.2} s |",
                i + 1,
                last.saturating_sub(*start) as f64 / 1e6
            );
        }
    }
    println!(
        "| latency of a tenth of the users over the whole run (publish → parsed), p50 / p99 / max | {:.2} / {:.2} / {:.2} ms |",
        percentile(&latencies, 0.5),
        percentile(&latencies, 0.99),
        percentile(&latencies, 1.0)
    );
}

/// Users of the storm's killed pod (by default; `HERALD_STORM_USERS`
/// sets another count), the messages each recovers, and the users on the
/// survivors who watch their latency meanwhile.
const STORM_USERS: usize = 5_000;
const STORM_BACKLOG: u64 = 100;
const STORM_OTHERS: usize = 1_000;
const STORM_TOPIC: &str = "bench:storm";
const OTHER_TOPIC: &str = "bench:others";
/// The others' topic's publish rate during the storm.
const OTHER_RATE: u64 = 50;

/// A WebSocket to `url`. Thousands dialling at once overflow a listen
/// backlog now and then: a user tries again (20 times, 100 ms apart)
/// rather than leaving the bench waiting for it.
async fn dial(
    url: &str,
) -> Option<
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>,
> {
    for _ in 0..20 {
        if let Ok((socket, _)) = tokio_tungstenite::connect_async(url).await {
            return Some(socket);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    None
}

/// A storm user: subscribes on pod 1, holds its position when the pod
/// dies, waits for `go`, then resumes on a survivor; returns when it holds
/// `STORM_BACKLOG` messages after its position, with whether the resume
/// recovered.
async fn storm_user(
    n: usize,
    subscribed: tokio::sync::mpsc::Sender<()>,
    mut go: watch::Receiver<bool>,
) -> Option<(bool, u64)> {
    let url = format!("ws://{}:{HTTP}/ws", IPS[0]);
    let mut socket = dial(&url).await?;
    let request = json!({"op": "subscribe", "topic": STORM_TOPIC, "ref": "s"});
    socket.send(Message::text(request.to_string())).await.ok()?;
    let mut held = None;
    while let Some(Ok(frame)) = socket.next().await {
        if let Message::Text(text) = frame
            && text.contains("\"reply\"")
        {
            held = Some((string(&text, "epoch").to_owned(), number(&text, "offset")));
            let _ = subscribed.send(()).await;
        }
    }
    // The pod is gone (its socket is let go: a storm near the open-file
    // limit needs the room): wait for everyone's signal, then all at once.
    drop(socket);
    let (epoch, offset) = held?;
    let _ = go.wait_for(|go| *go).await;
    let survivor = IPS[1 + n % 2];
    let mut socket = dial(&format!("ws://{survivor}:{HTTP}/ws")).await?;
    let request = json!({"op": "subscribe", "topic": STORM_TOPIC, "ref": "s",
        "since": {"epoch": epoch, "offset": offset}});
    socket.send(Message::text(request.to_string())).await.ok()?;
    let (mut recovered, mut got) = (false, 0);
    while let Some(Ok(frame)) = socket.next().await {
        let Message::Text(text) = frame else { continue };
        for line in text.split('\n') {
            match field(line, "op") {
                Some("\"reply\"") => recovered = field(line, "recovered") == Some("true"),
                Some("\"message\"") => got += 1,
                _ => {}
            }
        }
        if got >= STORM_BACKLOG || (!recovered && got == 0) {
            return Some((recovered, unix_micros()));
        }
    }
    None
}

/// One of the survivors' other users: latencies of its topic's messages,
/// each with when it arrived.
async fn other_user(n: usize, done: watch::Receiver<bool>) -> Vec<(u64, u64)> {
    let mut seen = Vec::new();
    let url = format!("ws://{}:{HTTP}/ws", IPS[1 + n % 2]);
    let Ok((mut socket, _)) = tokio_tungstenite::connect_async(&url).await else {
        return seen;
    };
    let request = json!({"op": "subscribe", "topic": OTHER_TOPIC});
    if socket
        .send(Message::text(request.to_string()))
        .await
        .is_err()
    {
        return seen;
    }
    while !*done.borrow() {
        let Ok(Some(Ok(Message::Text(text)))) =
            tokio::time::timeout(Duration::from_millis(500), socket.next()).await
        else {
            continue;
        };
        let now = unix_micros();
        for line in text.split('\n') {
            if field(line, "op") == Some("\"message\"") {
                seen.push((now, now.saturating_sub(number(line, "t"))));
            }
        }
    }
    seen
}

/// Publishes `count` messages to `topic` through pod `pod`, `rate` a
/// second (0: as fast as each is acknowledged), until `stop`.
async fn publish(pod: usize, topic: &str, count: u64, rate: u64, stop: watch::Receiver<bool>) {
    let mut client = PublisherClient::connect(format!("http://{}:{GRPC}", IPS[pod]))
        .await
        .expect("publisher connects");
    let mut every = tokio::time::interval(Duration::from_micros(1_000_000 / rate.max(1)));
    for n in 0..count {
        if *stop.borrow() {
            return;
        }
        if rate > 0 {
            every.tick().await;
        }
        let request = PublishRequest {
            topic: topic.into(),
            data: json!({"n": n, "t": unix_micros()}).to_string().into_bytes(),
            ..PublishRequest::default()
        };
        client.publish(request).await.expect("publish accepted");
    }
}

/// Peak resident memory of a process, in MiB.
fn peak_mib(pod: &Pod) -> f64 {
    let status = std::fs::read_to_string(format!("/proc/{}/status", pod.id())).unwrap_or_default();
    let kib: f64 = status
        .lines()
        .find_map(|line| line.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    kib / 1024.0
}

fn p99_ms(latencies: impl Iterator<Item = u64>) -> (f64, usize) {
    let mut sorted: Vec<u64> = latencies.collect();
    sorted.sort_unstable();
    (percentile(&sorted, 0.99), sorted.len())
}

/// How many users the storm's killed pod holds.
fn storm_users() -> usize {
    std::env::var("HERALD_STORM_USERS")
        .ok()
        .and_then(|count| count.parse().ok())
        .unwrap_or(STORM_USERS)
}

async fn storm(broadcast: Broadcast) {
    let storm_users = storm_users();
    // The survivors first: one of them numbers the storm's topic from its
    // first message on (the sequencer sticks to the pod that numbered the
    // last message), so killing pod 1 does not start a new epoch.
    let mut pods: Vec<Option<Pod>> =
        vec![None, Some(spawn(1, broadcast)), Some(spawn(2, broadcast))];
    ready(1).await;
    ready(2).await;
    let (_never, quiet) = watch::channel(false);
    publish(1, STORM_TOPIC, 1, 0, quiet.clone()).await;
    pods[0] = Some(spawn(0, broadcast));
    ready(0).await;

    let (done_tx, done) = watch::channel(false);
    let others: Vec<_> = (0..STORM_OTHERS)
        .map(|n| tokio::spawn(other_user(n, done.clone())))
        .collect();
    let (go_tx, go) = watch::channel(false);
    let (subscribed_tx, mut subscribed) = tokio::sync::mpsc::channel(storm_users);
    let users: Vec<_> = (0..storm_users)
        .map(|n| tokio::spawn(storm_user(n, subscribed_tx.clone(), go.clone())))
        .collect();
    for _ in 0..storm_users {
        subscribed
            .recv()
            .await
            .expect("every storm user subscribes");
    }
    let (stop_tx, stop) = watch::channel(false);
    // On a thread of its own, as in scenario R: the users' reading never
    // delays a publish or its timestamp.
    let live = std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
            .block_on(publish(1, OTHER_TOPIC, u64::MAX, OTHER_RATE, stop))
    });
    tokio::time::sleep(Duration::from_secs(3)).await;
    let baseline_end = unix_micros();

    if let Some(mut victim) = pods[0].take() {
        let _ = victim.kill();
        let _ = victim.wait();
    }
    publish(2, STORM_TOPIC, STORM_BACKLOG, 0, quiet).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let storm_start = unix_micros();
    go_tx.send(true).expect("users wait");
    let mut ends = Vec::new();
    let mut recovered = 0;
    for user in users {
        let ended = tokio::time::timeout(Duration::from_secs(120), user).await;
        if let Ok(Ok(Some((was_recovered, at)))) = ended {
            recovered += usize::from(was_recovered);
            ends.push(at.saturating_sub(storm_start));
        }
    }
    let storm_end = unix_micros();
    tokio::time::sleep(Duration::from_secs(1)).await;
    stop_tx.send(true).expect("publisher listens");
    live.join().expect("publisher ends");
    done_tx.send(true).expect("others listen");
    let mut seen = Vec::new();
    for other in others {
        seen.extend(other.await.expect("other ends"));
    }
    let peaks: Vec<f64> = pods.iter().flatten().map(peak_mib).collect();
    for pod in pods.iter_mut().flatten() {
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(pod.id().to_string())
            .status();
        let _ = pod.wait();
    }

    ends.sort_unstable();
    // By when each message was published, so one held up by the storm
    // counts in it however late it arrives.
    let sent = |(at, latency): &(u64, u64)| (at - latency, *latency);
    let before = p99_ms(
        seen.iter()
            .map(sent)
            .filter(|(t, _)| *t < baseline_end)
            .map(|(_, l)| l),
    );
    let during = p99_ms(
        seen.iter()
            .map(sent)
            .filter(|(t, _)| (storm_start..=storm_end).contains(t))
            .map(|(_, l)| l),
    );
    println!(
        "# Resume storm: {storm_users} users of a SIGKILLed pod resume {STORM_BACKLOG} messages each at once\n"
    );
    println!(
        "- Machine: {} CPUs; loopback; pods are release builds as processes; the users and the publishers share the cores.",
        std::thread::available_parallelism().map_or(0, |n| n.get())
    );
    if broadcast == Broadcast::Redis {
        println!(
            "- Broadcast: Redis (`--broadcast=redis`, one redis-server on 127.0.0.1, no discovery)."
        );
    }
    println!(
        "- 3 pods; the storm's users reconnect to the 2 survivors (half each); {STORM_OTHERS} other users on the survivors, on a topic published at {OTHER_RATE} msg/s.\n"
    );
    println!("| measure | value |");
    println!("|---|---|");
    println!(
        "| resumes recovered (of {storm_users}) | {recovered} ({} completed) |",
        ends.len()
    );
    println!(
        "| from \"all reconnect\" until all have their {STORM_BACKLOG} messages, p50 / max | {:.2} / {:.2} s |",
        percentile(&ends, 0.5) * 1e-3,
        percentile(&ends, 1.0) * 1e-3
    );
    println!(
        "| other users' latency p99, before / during the storm | {:.2} ms ({} messages) / {:.2} ms ({} messages) |",
        before.0, before.1, during.0, during.1
    );
    println!(
        "| survivors' peak resident memory | {} |",
        peaks
            .iter()
            .map(|m| format!("{m:.0} MiB"))
            .collect::<Vec<_>>()
            .join(", ")
    );
}
