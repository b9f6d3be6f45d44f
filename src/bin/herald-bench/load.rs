//! The load: WebSocket users that subscribe and count what they receive,
//! and the gRPC publisher.
//!
//! Each user is one task owning one connection. It subscribes, then reads
//! frames until told to stop; for every bench message in a frame it checks
//! the sequence number against its own bitset (duplicates), and records the
//! publish→delivery latency into one of a few shared histograms, taking that
//! shard's lock once per frame. Nothing is allocated per message.
//!
//! The publisher sends one message per call at low rates and a PublishBatch
//! of whatever is due at higher ones (the timer ticks at most every
//! millisecond), with several calls in flight; users therefore track seen
//! sequence numbers in a bitset rather than expecting them in order.
//!
//! Against NATS (`--server=nats`) users speak the NATS protocol over the
//! same WebSocket client and the publisher writes the same documents as
//! `PUB`s on one TCP connection, so both servers carry identical load.
//! Against Socket.IO (`--server=socketio`) users join a room per topic and
//! the publisher emits the same documents as `publish` events on one
//! WebSocket to one node.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;
use herald::proto::v1::publisher_client::PublisherClient;
use herald::proto::v1::{PublishBatchRequest, PublishRequest};
use tokio::net::{TcpSocket, TcpStream};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tonic::transport::Channel;

use crate::args::{Plan, ServerKind, Topics};
use crate::client::{Client, Frame};
use crate::micros::micros_histogram;
use crate::nats;
use crate::scan::{self, Seen};
use crate::socketio;

/// Latency histogram shards; users pick one by index so two tasks rarely
/// meet on a lock.
const LATENCY_SHARDS: usize = 16;

/// Most messages in one PublishBatch call.
const MAX_BATCH: u64 = 1000;

/// Most publish calls in flight. More than one, because a reply can sit
/// 40 ms in the server's send buffer (Nagle's algorithm against the
/// client's delayed ACK), which would stall a one-at-a-time publisher.
const MAX_IN_FLIGHT: usize = 64;

/// A pod to connect users to.
#[derive(Debug, Clone)]
pub struct Target {
    /// The URL's authority (`host:port`), for the `Host` header.
    pub host: String,
    /// The URL's path and query.
    pub path: String,
    /// Its resolved address.
    pub addr: SocketAddr,
}

/// What users share: counters, histograms and the stop signal.
pub struct Shared {
    /// When the run started; `last_rx_nanos` counts from here.
    pub start: Instant,
    /// Deliveries of messages a user had not seen before.
    pub received: AtomicU64,
    /// Deliveries of messages a user had already seen.
    pub duplicates: AtomicU64,
    /// Users subscribed.
    pub subscribed: AtomicUsize,
    /// Users that could not connect or subscribe.
    pub failed: AtomicUsize,
    /// Users whose connection ended before the run did.
    pub disconnects: AtomicUsize,
    /// Nanoseconds from `start` to the latest delivery.
    pub last_rx_nanos: AtomicU64,
    /// Which users are subscribed, by index.
    pub ok: Vec<AtomicBool>,
    /// Publish→delivery latency, microseconds.
    pub latency: Vec<Mutex<Histogram<u64>>>,
    /// Connect + upgrade + subscribe time per user, microseconds.
    pub connect: Mutex<Histogram<u64>>,
    /// Tells every user to disconnect.
    pub stop: CancellationToken,
}

impl Shared {
    /// Fresh state for `users` users.
    pub fn new(users: usize) -> Self {
        Self {
            start: Instant::now(),
            received: AtomicU64::new(0),
            duplicates: AtomicU64::new(0),
            subscribed: AtomicUsize::new(0),
            failed: AtomicUsize::new(0),
            disconnects: AtomicUsize::new(0),
            last_rx_nanos: AtomicU64::new(0),
            ok: (0..users).map(|_| AtomicBool::new(false)).collect(),
            latency: (0..LATENCY_SHARDS)
                .map(|_| Mutex::new(micros_histogram()))
                .collect(),
            connect: Mutex::new(micros_histogram()),
            stop: CancellationToken::new(),
        }
    }

    /// All latency shards merged.
    pub fn latency(&self) -> Histogram<u64> {
        let mut all = micros_histogram();
        for shard in &self.latency {
            // Merging histograms of identical bounds cannot fail.
            let _ = all.add(&*lock(shard));
        }
        all
    }
}

/// Locks a histogram, ignoring poisoning (a panicked user only loses its
/// own samples).
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// One user's instructions.
pub struct User {
    /// Its index, 0-based.
    pub index: usize,
    /// The pod it connects to.
    pub target: Target,
    /// Source address to bind, if spreading.
    pub source: Option<IpAddr>,
    /// What it talks to.
    pub server: ServerKind,
    /// The topic it subscribes to.
    pub topic: String,
    /// Sequence numbers of its messages are `k * stride + offset`; the bitset
    /// index is `seq / stride`.
    pub stride: u64,
}

/// The source address for user `index` when spreading over `count`
/// loopback addresses towards `target`.
pub fn source_for(target: &SocketAddr, index: usize, count: u8) -> Option<IpAddr> {
    (count > 0 && target.ip().is_loopback() && target.is_ipv4())
        .then(|| IpAddr::V4(Ipv4Addr::new(127, 1, (index % usize::from(count)) as u8, 1)))
}

/// Runs one user until `shared.stop`. `connected` is dropped once the user
/// has subscribed (or failed), freeing its connect slot.
pub async fn run_user<P: Send>(user: User, shared: Arc<Shared>, connected: P) {
    let began = Instant::now();
    let client = tokio::select! {
        () = shared.stop.cancelled() => None,
        client = connect_and_subscribe(&user) => client.ok(),
    };
    let Some((mut client, mut nats)) = client else {
        shared.failed.fetch_add(1, Ordering::Relaxed);
        drop(connected);
        return;
    };
    let micros = began.elapsed().as_micros() as u64;
    lock(&shared.connect).saturating_record(micros.max(1));
    shared.ok[user.index].store(true, Ordering::Relaxed);
    shared.subscribed.fetch_add(1, Ordering::Relaxed);
    // Only now: the connect phase ends when every slot is back.
    drop(connected);

    let shard = &shared.latency[user.index % LATENCY_SHARDS];
    let mut seen = Bitset::default();
    let mut found = Vec::new();
    let stop = shared.stop.cancelled();
    tokio::pin!(stop);
    loop {
        let frame = tokio::select! {
            biased;
            () = &mut stop => break,
            frame = client.next_frame() => frame,
        };
        let pings = match frame {
            Ok(Frame::Data(frame)) => match user.server {
                ServerKind::Herald => {
                    found.extend(scan::lines(frame).filter_map(scan::message));
                    Ok(0)
                }
                ServerKind::Nats => {
                    let mut pings = 0;
                    nats.feed(frame, |op| match op {
                        nats::Op::Msg(payload) => found.extend(scan::document(payload)),
                        nats::Op::Ping => pings += 1,
                        nats::Op::Pong | nats::Op::Other => {}
                    })
                    .map(|()| pings)
                    .map_err(drop)
                }
                ServerKind::SocketIo => match socketio::parse(frame) {
                    Ok(socketio::Packet::Message(payload)) => {
                        found.extend(scan::document(payload));
                        Ok(0)
                    }
                    Ok(socketio::Packet::Ping) => Ok(1),
                    Ok(_) => Ok(0),
                    Err(_) => Err(()),
                },
            },
            Ok(Frame::Close(_)) | Err(_) => Err(()),
        };
        receive(found.drain(..), &user, &shared, shard, &mut seen);
        let answered = match pings {
            Ok(0) => Ok(()),
            Ok(n) => answer_pings(&mut client, user.server, n)
                .await
                .map_err(drop),
            Err(()) => Err(()),
        };
        if answered.is_err() {
            shared.disconnects.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
}

/// Answers `n` pings the way `server` expects.
async fn answer_pings(
    client: &mut Client,
    server: ServerKind,
    n: usize,
) -> Result<(), crate::client::Error> {
    match server {
        // One Engine.IO packet per frame.
        ServerKind::SocketIo => {
            client
                .send_texts(std::iter::repeat_n(socketio::PONG, n))
                .await
        }
        ServerKind::Herald | ServerKind::Nats => client.send_text(&b"PONG\r\n".repeat(n)).await,
    }
}

/// Counts and times the bench messages found in one frame.
fn receive(
    found: impl Iterator<Item = Seen>,
    user: &User,
    shared: &Shared,
    shard: &Mutex<Histogram<u64>>,
    seen: &mut Bitset,
) {
    let now = unix_nanos();
    let mut fresh = 0;
    let mut dups = 0;
    let mut histogram = None;
    for seen_msg in found {
        if !seen.insert(seen_msg.seq / user.stride) {
            dups += 1;
            continue;
        }
        fresh += 1;
        let micros = now.saturating_sub(seen_msg.sent_nanos) / 1000;
        histogram
            .get_or_insert_with(|| lock(shard))
            .saturating_record(micros.max(1));
    }
    drop(histogram);
    if fresh > 0 {
        shared.received.fetch_add(fresh, Ordering::Relaxed);
        let since_start = shared.start.elapsed().as_nanos() as u64;
        shared
            .last_rx_nanos
            .fetch_max(since_start, Ordering::Relaxed);
    }
    if dups > 0 {
        shared.duplicates.fetch_add(dups, Ordering::Relaxed);
    }
}

/// Connects, upgrades and subscribes `user` and waits for the
/// confirmation; returns the client and, for NATS, the reader holding
/// whatever followed the subscription's confirmation.
pub async fn connect_and_subscribe(user: &User) -> anyhow::Result<(Client, nats::Reader)> {
    let socket = match user.target.addr {
        SocketAddr::V4(_) => TcpSocket::new_v4()?,
        SocketAddr::V6(_) => TcpSocket::new_v6()?,
    };
    if let Some(ip) = user.source {
        socket.bind(SocketAddr::new(ip, 0))?;
    }
    let stream: TcpStream = socket.connect(user.target.addr).await?;
    stream.set_nodelay(true)?;
    let mut client = Client::upgrade(stream, &user.target.host, &user.target.path).await?;
    let mut reader = nats::Reader::default();
    match user.server {
        ServerKind::Herald => {
            let request = format!(
                r#"{{"op":"subscribe","topic":"{}","ref":"bench"}}"#,
                user.topic
            );
            client.send_text(request.as_bytes()).await?;
            loop {
                let frame = confirmation_frame(&mut client).await?;
                let reply = scan::lines(frame).find(|line| line.starts_with(br#"{"op":"reply""#));
                if let Some(line) = reply {
                    anyhow::ensure!(
                        line.windows(9).any(|w| w == br#""ok":true"#),
                        "subscribe refused: {}",
                        String::from_utf8_lossy(line)
                    );
                    break;
                }
            }
        }
        ServerKind::Nats => {
            client
                .send_text(nats::subscribe(&user.topic).as_bytes())
                .await?;
            loop {
                let frame = confirmation_frame(&mut client).await?;
                let mut confirmed = false;
                reader.feed(frame, |op| confirmed |= op == nats::Op::Pong)?;
                if confirmed {
                    break;
                }
            }
        }
        // Nothing comes before the join's ack but the handshake.
        ServerKind::SocketIo => socketio::subscribe(&mut client, &user.topic).await?,
    }
    Ok((client, reader))
}

/// The next data frame while waiting for a subscription's confirmation.
async fn confirmation_frame(client: &mut Client) -> anyhow::Result<&[u8]> {
    match client.next_frame().await? {
        Frame::Data(frame) => Ok(frame),
        Frame::Close(_) => {
            anyhow::bail!("connection closed before the subscription was confirmed")
        }
    }
}

/// Which message indexes a user has seen; grows as needed.
#[derive(Default)]
struct Bitset(Vec<u64>);

impl Bitset {
    /// Marks `i`; false if it was already marked.
    fn insert(&mut self, i: u64) -> bool {
        let (word, bit) = ((i / 64) as usize, 1u64 << (i % 64));
        if word >= self.0.len() {
            self.0.resize(word + 1, 0);
        }
        let fresh = self.0[word] & bit == 0;
        self.0[word] |= bit;
        fresh
    }
}

/// Now, in Unix nanoseconds.
pub fn unix_nanos() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos() as u64)
}

/// What the publisher did.
#[derive(Debug, Default)]
pub struct Published {
    /// Messages sent (accepted or not).
    pub sent: u64,
    /// Sequence ranges `[from, to)` of calls the pod refused or that failed.
    pub failed: Vec<(u64, u64)>,
    /// Calls made.
    pub calls: u64,
    /// First error seen, for the report.
    pub first_error: Option<String>,
    /// From the first call to the last reply.
    pub elapsed: Duration,
}

impl Published {
    /// Messages the pod accepted.
    pub fn accepted(&self) -> u64 {
        self.sent - self.failed.iter().map(|(a, b)| b - a).sum::<u64>()
    }

    /// Whether message `seq` was accepted.
    pub fn was_accepted(&self, seq: u64) -> bool {
        !self.failed.iter().any(|&(a, b)| (a..b).contains(&seq))
    }
}

/// Where publishes go.
#[derive(Clone)]
pub enum Sink {
    /// A herald pod's gRPC Publisher service.
    Grpc(PublisherClient<Channel>),
    /// A NATS server's client port, shared by the calls in flight.
    Nats(Arc<tokio::sync::Mutex<nats::Publisher>>),
    /// A Socket.IO node's WebSocket, shared by the calls in flight.
    SocketIo(Arc<tokio::sync::Mutex<socketio::Publisher>>),
}

/// Where and what to publish.
pub struct Publisher {
    /// Where to.
    pub sink: Sink,
    /// The shared topic, or the prefix of per-user topics.
    pub topic: String,
    /// Topic layout.
    pub topics: Topics,
    /// Number of users (per-user topics).
    pub users: usize,
    /// Document size.
    pub payload_bytes: usize,
    /// Messages per call when flat out.
    pub batch: u64,
}

/// The topic of user `index` for a run whose topic prefix is `prefix`.
pub fn user_topic(prefix: &str, topics: Topics, index: usize) -> String {
    match topics {
        Topics::Shared => prefix.to_owned(),
        Topics::PerUser => format!("{prefix}.u{index}"),
    }
}

impl Publisher {
    /// Publishes according to `plan`, at most [`MAX_IN_FLIGHT`] calls at a
    /// time.
    pub async fn run(self, plan: Plan) -> Published {
        let mut out = Published::default();
        let mut calls = JoinSet::new();
        let start = Instant::now();
        loop {
            let elapsed = start.elapsed();
            if plan.messages.is_some_and(|m| out.sent >= m)
                || (plan.rate.is_none() && plan.duration.is_some_and(|d| elapsed >= d))
            {
                break;
            }
            let mut due = match plan.rate {
                Some(rate) => (elapsed.as_secs_f64() * rate) as u64 + 1,
                None => out.sent + self.batch,
            };
            if let Some(m) = plan.messages {
                due = due.min(m);
            }
            if let Some(rate) = plan.rate.filter(|_| due <= out.sent) {
                let next = Duration::from_secs_f64(out.sent as f64 / rate);
                tokio::time::sleep_until((start + next).into()).await;
                continue;
            }
            while calls.len() >= MAX_IN_FLIGHT {
                collect(calls.join_next().await, &mut out);
            }
            let count = (due - out.sent).min(MAX_BATCH);
            calls.spawn(self.send(out.sent, count));
            out.sent += count;
            out.calls += 1;
        }
        while let Some(done) = calls.join_next().await {
            collect(Some(done), &mut out);
        }
        // Neither NATS nor Socket.IO answers a publish: a PING's PONG, or
        // a flush event's ack, says every one of them was taken.
        let flushed = match &self.sink {
            Sink::Grpc(_) => Ok(()),
            Sink::Nats(publisher) => publisher
                .lock()
                .await
                .flush()
                .await
                .map_err(|e| e.to_string()),
            Sink::SocketIo(publisher) => publisher
                .lock()
                .await
                .flush()
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = flushed {
            out.first_error.get_or_insert(e);
        }
        out.elapsed = start.elapsed();
        out
    }

    /// One call publishing messages `from..from + count`; resolves to that
    /// range and the call's outcome.
    fn send(&self, from: u64, count: u64) -> impl Future<Output = CallOutcome> + Send + 'static {
        let now = unix_nanos();
        let mut requests: Vec<PublishRequest> = (from..from + count)
            .map(|seq| PublishRequest {
                topic: user_topic(&self.topic, self.topics, (seq % self.users as u64) as usize),
                data: scan::payload(now, seq, self.payload_bytes),
                ..PublishRequest::default()
            })
            .collect();
        let sink = self.sink.clone();
        async move {
            let outcome = match sink {
                Sink::Grpc(mut client) => match requests.pop() {
                    Some(request) if requests.is_empty() => client.publish(request).await.map(drop),
                    Some(last) => {
                        requests.push(last);
                        client
                            .publish_batch(PublishBatchRequest { messages: requests })
                            .await
                            .map(drop)
                    }
                    None => Ok(()),
                }
                .map_err(|status| status.to_string()),
                Sink::Nats(publisher) => {
                    let mut operations = Vec::new();
                    for request in &requests {
                        nats::publish(&mut operations, &request.topic, &request.data);
                    }
                    let result = publisher.lock().await.write(&operations).await;
                    result.map_err(|e| e.to_string())
                }
                Sink::SocketIo(publisher) => {
                    let events: Vec<Vec<u8>> = requests
                        .iter()
                        .map(|request| socketio::publish(&request.topic, &request.data))
                        .collect();
                    let result = publisher.lock().await.write(&events).await;
                    result.map_err(|e| e.to_string())
                }
            };
            ((from, from + count), outcome)
        }
    }
}

/// What one publish call resolves to: its sequence range and outcome.
type CallOutcome = ((u64, u64), Result<(), String>);

/// Books one finished call.
fn collect(done: Option<Result<CallOutcome, tokio::task::JoinError>>, out: &mut Published) {
    match done {
        Some(Ok((_, Ok(())))) | None => {}
        Some(Ok((range, Err(error)))) => {
            out.failed.push(range);
            out.first_error.get_or_insert(error);
        }
        Some(Err(e)) => {
            out.first_error.get_or_insert_with(|| e.to_string());
        }
    }
}
