//! The Redis broadcast backend (`--broadcast redis`): every pod talks to one
//! Redis, which numbers each topic's messages and carries them, with
//! presence, to every pod. No discovery and no Kubernetes API are needed.
//!
//! ```text
//!   publish ──draft──▶ writer ──EVALSHA (pipelined)──▶ Redis: number, log, PUBLISH
//!                                                         │ messages channel
//!   local ◀── intake ◀── reader (after a break: missed ones from the log) ◀┘ (every pod, one order)
//!   presence ◀─▶ members ◀──────── presence channel ────────▶ every pod
//! ```
//!
//! - [`keys`]: what Redis holds and the numbering script.
//! - [`link`]: the shared command connection, dialled again when it breaks.
//! - [`writer`]: drafts to number and presence frames to publish.
//! - [`reader`]: the subscription, and what it missed read back.
//! - [`store`]: reads of a topic's head and log.
//! - [`members`]: the other pods, heard through beats, and presence.
//!
//! Guarantees (docs/continuity.md): offsets and epochs are Redis's, the
//! same on every pod; a publish returns once Redis numbered and logged the
//! message and it came back to the publishing pod; while Redis is
//! unreachable publishes are refused at once and users keep their
//! connections and what this pod holds; a pod whose subscription broke
//! reads what it missed from the topics' logs before it reads on, and what
//! the log no longer holds (or a Redis that lost its data: a new epoch)
//! reaches subscribers as a gap.

pub mod keys;
pub mod link;
pub mod members;
pub mod reader;
pub mod store;
pub mod writer;

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures_util::future::BoxFuture;
use redis::{Client, IntoConnectionInfo};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use self::keys::Keys;
use self::link::{Link, RESPONSE_TIMEOUT};
use self::members::Members;
use self::reader::Reader;
use self::writer::{LogBounds, Queued, Writer};
use super::intake::Intake;
use super::{Broadcast, Identity, PeerInfo};
use crate::history::Need;
use crate::local::Recall;
use crate::message::{Draft, Epoch, Message, NodeId, Position};
use crate::presence::Presence;
use crate::proto::v1::peer_frame;
use crate::publish::{Relay, Route};
use crate::stats::{self, Counters};
use crate::topic::Topic;

/// Presence frames queued for Redis before the whole state is owed
/// instead.
const FRAME_QUEUE: usize = 1024;

/// Why the Redis backend could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum RedisSetupError {
    /// `--broadcast redis` without `--redis-url`.
    #[error("--broadcast redis needs --redis-url")]
    MissingUrl,
    /// The URL is not one the client takes.
    #[error("--redis-url: {0}")]
    Url(redis::RedisError),
    /// The password file could not be read.
    #[error("--redis-password-file {path}: {source}")]
    PasswordFile {
        /// The file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
}

/// How the backend is set up.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--redis-url`.
    pub url: Option<String>,
    /// `--redis-password-file`.
    pub password_file: Option<PathBuf>,
    /// This pod's place in the group: the cluster name prefixes every key.
    pub identity: Identity,
    /// Drafts waiting for Redis before publishes are refused.
    pub queue: usize,
    /// Longest a pod waits for its subscription before it reports ready
    /// anyway.
    pub ready_timeout: Duration,
    /// What each topic's log in Redis keeps.
    pub bounds: LogBounds,
    /// Where refused publishes are counted.
    pub counters: Arc<Counters>,
}

/// A handle to the backend. Clones share it.
#[derive(Clone)]
pub struct Redis {
    inner: Arc<Inner>,
}

struct Inner {
    identity: Identity,
    link: Link,
    keys: Keys,
    intake: Intake,
    members: Members,
    drafts: mpsc::Sender<Draft>,
    queued: Arc<Queued>,
    counters: Arc<Counters>,
    up: Arc<AtomicBool>,
    settled: Arc<AtomicBool>,
    started: Instant,
    ready_timeout: Duration,
    bounds: LogBounds,
}

impl Redis {
    /// Starts the backend's tasks on `tracker` (they end with `stop`, which
    /// should come after a [`flush`](Broadcast::flush)):
    /// delivering into `intake`, sharing `presence`. Redis need not be up:
    /// the tasks dial it until it is.
    pub fn start(
        settings: Settings,
        intake: Intake,
        presence: Presence,
        tracker: &TaskTracker,
        stop: &CancellationToken,
    ) -> Result<Self, RedisSetupError> {
        let client = client(&settings)?;
        let link = Link::new(client);
        let keys = Keys::new(&settings.identity.cluster);
        let (drafts_tx, drafts_rx) = mpsc::channel(settings.queue.max(1));
        let (frames_tx, frames_rx) = mpsc::channel::<Bytes>(FRAME_QUEUE);
        let node = intake.local().node();
        let queued = Arc::new(Queued::default());
        let members = Members::new(
            node,
            settings.identity.address.clone(),
            presence,
            frames_tx,
            queued.clone(),
        );
        let up = Arc::new(AtomicBool::new(false));
        let settled = Arc::new(AtomicBool::new(false));
        let span = || tracing::info_span!("redis", redis = %link.address());
        tracker.spawn(link.clone().maintain(stop.clone()).instrument(span()));
        let writer = Writer {
            link: link.clone(),
            keys: keys.clone(),
            local: intake.local().clone(),
            bounds: settings.bounds,
            queued: queued.clone(),
            counters: settings.counters.clone(),
        };
        tracker.spawn(
            writer
                .run(drafts_rx, frames_rx, keys.presence(), stop.clone())
                .instrument(span()),
        );
        let reader = Reader {
            link: link.clone(),
            keys: keys.clone(),
            intake: intake.clone(),
            members: members.clone(),
            up: up.clone(),
            settled: settled.clone(),
        };
        tracker.spawn(reader.run(stop.clone()).instrument(span()));
        tracker.spawn(members.clone().beat(stop.clone()).instrument(span()));
        Ok(Self {
            inner: Arc::new(Inner {
                identity: settings.identity,
                link,
                keys,
                intake,
                members,
                drafts: drafts_tx,
                queued,
                counters: settings.counters,
                up,
                settled,
                started: Instant::now(),
                ready_timeout: settings.ready_timeout,
                bounds: settings.bounds,
            }),
        })
    }

    /// Reads what Redis holds of `topic` into this pod's history, when this
    /// pod's log cannot answer `need` as fully as Redis (it knows nothing
    /// of the topic, or started after the messages asked for).
    async fn fill(&self, topic: &Topic, need: Need) {
        let inner = &*self.inner;
        let local = inner.intake.local();
        if local.history().answers(topic, need) {
            return;
        }
        let Some(mut connection) = inner.link.connection() else {
            return;
        };
        let read = store::newest(&mut connection, &inner.keys, topic, inner.bounds.messages);
        let held = match tokio::time::timeout(RESPONSE_TIMEOUT, read).await {
            Ok(Ok(held)) => held,
            Ok(Err(error)) => {
                inner.link.failed(&error);
                return;
            }
            Err(_) => return,
        };
        let Some((epoch, offset)) = held.head else {
            return;
        };
        let Some(epoch) = Epoch::from_u64(epoch) else {
            return;
        };
        let kept: Vec<Arc<Message>> = held
            .kept
            .iter()
            .filter_map(|envelope| inner.intake.numbered(envelope))
            .filter(|message| message.stamp().epoch == epoch)
            .collect();
        local.restore(topic, Position::at(epoch, offset), local.node(), &kept);
    }
}

/// The client `settings` describe, with the password file's password.
fn client(settings: &Settings) -> Result<Client, RedisSetupError> {
    let url = settings.url.as_deref().ok_or(RedisSetupError::MissingUrl)?;
    let mut info = url.into_connection_info().map_err(RedisSetupError::Url)?;
    if let Some(path) = &settings.password_file {
        let text =
            std::fs::read_to_string(path).map_err(|source| RedisSetupError::PasswordFile {
                path: path.clone(),
                source,
            })?;
        let password = text.lines().next().unwrap_or_default().to_owned();
        let redis = info.redis_settings().clone().set_password(password);
        info = info.set_redis_settings(redis);
    }
    Client::open(info).map_err(RedisSetupError::Url)
}

impl Relay for Redis {
    /// Redis numbers every message (the route is never here), so nothing
    /// numbered here is relayed.
    fn relay(&self, _message: &Arc<Message>) {}

    fn route(&self, _topic: &Topic) -> Route {
        Route::Store
    }

    fn forward(&self, _to: NodeId, _draft: Draft) -> bool {
        false
    }

    /// Queues `draft` for Redis, unless this pod cannot hear Redis now
    /// (its publish would never come back to answer the publisher) or the
    /// queue is full.
    fn submit(&self, draft: Draft) -> bool {
        let inner = &*self.inner;
        inner.queued.drafts.fetch_add(1, Ordering::AcqRel);
        if inner.up.load(Ordering::Acquire) && inner.drafts.try_send(draft).is_ok() {
            return true;
        }
        inner.queued.drafts.fetch_sub(1, Ordering::AcqRel);
        stats::add(&inner.counters.redis_refused, 1);
        false
    }
}

impl Recall for Redis {
    fn recall<'a>(&'a self, topic: &'a Topic, need: Need) -> BoxFuture<'a, ()> {
        Box::pin(self.fill(topic, need))
    }
}

impl Broadcast for Redis {
    fn identity(&self) -> Identity {
        self.inner.identity.clone()
    }

    /// Settled once the subscription came up (or the ready wait passed):
    /// a Redis outage later leaves the pod ready, serving its users, with
    /// publishes refused until Redis is back.
    fn is_settled(&self) -> bool {
        let inner = &self.inner;
        inner.settled.load(Ordering::Acquire) || inner.started.elapsed() >= inner.ready_timeout
    }

    fn peers(&self) -> Vec<PeerInfo> {
        let inner = &self.inner;
        let status = inner.link.status();
        let redis = PeerInfo {
            address: format!("redis {}", status.address),
            connected: status.connected && inner.up.load(Ordering::Acquire),
            dropped: inner.counters.redis_refused.load(Ordering::Relaxed),
            connects: status.connects,
            last_error: status.last_error,
            transport: "redis",
        };
        std::iter::once(redis).chain(inner.members.pods()).collect()
    }

    fn presence(&self) -> &Presence {
        self.inner.members.presence()
    }

    fn broadcast_presence(&self, kind: &peer_frame::Kind) {
        self.inner.members.send_presence(kind);
    }

    /// Says this pod is gone, so the others drop its presence now. Redis
    /// holds every topic's order: nothing is handed on.
    fn leave(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        self.inner.members.leave();
        self.flush(timeout)
    }

    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()> {
        Box::pin(async move {
            let deadline = Instant::now() + timeout;
            while !self.inner.queued.is_idle() && Instant::now() < deadline {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        })
    }
}
