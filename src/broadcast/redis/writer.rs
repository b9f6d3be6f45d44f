//! What this pod sends to Redis: drafts to number (in pipelines, so a
//! burst costs one round trip) and presence frames to publish, each from
//! its own bounded queue, on the shared command connection.
//!
//! A draft queue that is full refuses the publish at once (counted in
//! `herald_redis_refused_total`); so does a draft that finds no connection, or whose pipeline
//! fails: the publisher is told it is unconfirmed and may retry with its
//! idempotency key. A numbered draft's publish is answered when its
//! message comes back on the subscription (so the publishing pod holds it
//! when the publish returns), or here at once when its idempotency key was
//! used before.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use redis::aio::MultiplexedConnection;
use redis::{RedisError, ServerErrorKind, Value};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::keys::{Keys, draft_bytes, fresh_epoch, number_script};
use super::link::Link;
use crate::local::{KEY_WINDOW, Local, Receipt};
use crate::message::{Draft, Epoch, MessageId, NodeId, Stamp};
use crate::stats::{self, Counters};

/// Most drafts numbered in one pipeline.
const BATCH: usize = 256;

/// What the writer counts, shared with the handle that queues.
#[derive(Debug, Default)]
pub struct Queued {
    /// Drafts queued or being numbered.
    pub drafts: AtomicUsize,
    /// Presence frames queued or being published.
    pub frames: AtomicUsize,
}

impl Queued {
    /// Whether nothing is waiting to go out.
    pub fn is_idle(&self) -> bool {
        self.drafts.load(Ordering::Acquire) == 0 && self.frames.load(Ordering::Acquire) == 0
    }
}

/// The history bounds Redis keeps each topic's log to.
#[derive(Debug, Clone, Copy)]
pub struct LogBounds {
    /// About how many messages.
    pub messages: usize,
    /// How long after the topic's last message.
    pub age: Duration,
}

/// The task that sends.
pub struct Writer {
    /// The command connection.
    pub link: Link,
    /// Key names.
    pub keys: Keys,
    /// Where publishes wait for their receipts.
    pub local: Local,
    /// What the topic logs keep.
    pub bounds: LogBounds,
    /// Counters shared with the handle.
    pub queued: Arc<Queued>,
    /// Where refused publishes are counted.
    pub counters: Arc<Counters>,
}

impl Writer {
    /// Sends what `drafts` and `frames` bring until `stop`.
    pub async fn run(
        self,
        mut drafts: mpsc::Receiver<Draft>,
        mut frames: mpsc::Receiver<Bytes>,
        presence_channel: String,
        stop: CancellationToken,
    ) {
        let mut batch = Vec::with_capacity(BATCH);
        let script = number_script();
        loop {
            // Presence frames first: they are few and small, and a pod
            // whose beats wait behind a stream of publishes would be taken
            // for down by the others.
            tokio::select! {
                biased;
                () = stop.cancelled() => return,
                Some(frame) = frames.recv() => {
                    self.publish(&presence_channel, frame).await;
                    self.queued.frames.fetch_sub(1, Ordering::AcqRel);
                }
                n = drafts.recv_many(&mut batch, BATCH) => {
                    if n == 0 {
                        return;
                    }
                    let count = batch.len();
                    self.number(&script, std::mem::take(&mut batch)).await;
                    self.queued.drafts.fetch_sub(count, Ordering::AcqRel);
                }
            }
        }
    }

    /// Numbers `drafts` in one pipeline, in order, with `script`.
    async fn number(&self, script: &redis::Script, drafts: Vec<Draft>) {
        let Some(mut connection) = self.link.connection() else {
            self.refuse(&drafts, "no connection to Redis");
            return;
        };
        // Each reply on its own: one script that fails (Redis out of
        // memory) refuses its own publish, not the others, which did land.
        let mut pipe = redis::pipe();
        pipe.ignore_errors();
        let channel = self.keys.messages();
        for draft in &drafts {
            let key = draft.key.as_deref();
            let meta = self.keys.meta(&draft.topic);
            // Without a key, the meta key stands in for it (never read).
            let key_name = key.map(|k| self.keys.key(&draft.topic, k));
            pipe.cmd("EVALSHA")
                .arg(script.get_hash())
                .arg(3)
                .arg(&meta)
                .arg(self.keys.log(&draft.topic))
                .arg(key_name.as_ref().unwrap_or(&meta))
                .arg(fresh_epoch(&draft.topic))
                .arg(draft_bytes(draft))
                .arg(self.bounds.messages.max(1))
                .arg(self.bounds.age.as_secs().max(1))
                .arg(super::keys::META_TTL.as_secs())
                .arg(&channel)
                .arg(draft.id.to_string())
                .arg(if key.is_some() { "1" } else { "0" })
                .arg(KEY_WINDOW.as_secs())
                .arg(draft.origin.to_string());
        }
        let mut replies = pipe.query_async::<Vec<Value>>(&mut connection).await;
        // A Redis that restarted has forgotten the script: none of the
        // pipeline ran. Load it and send the pipeline again.
        if matches!(&replies, Ok(replies) if replies.first().is_some_and(no_script)) {
            replies = match script.prepare_invoke().load_async(&mut connection).await {
                Ok(_) => pipe.query_async(&mut connection).await,
                Err(e) => Err(e),
            };
        }
        match replies {
            Ok(replies) => {
                for (draft, reply) in drafts.iter().zip(replies) {
                    self.answer(draft, reply);
                }
            }
            Err(error) => {
                self.link.failed(&error);
                self.refuse(&drafts, &error.to_string());
            }
        }
    }

    /// Answers `draft`'s publish at once when its key was used before; a
    /// new message's publish is answered when it comes back.
    fn answer(&self, draft: &Draft, reply: Value) {
        let reply = match redis::from_redis_value::<Vec<String>>(reply) {
            Ok(reply) => reply,
            Err(error) => {
                tracing::warn!(%error, topic = %draft.topic, "Redis did not number a message");
                return self.refuse(std::slice::from_ref(draft), "a failed script");
            }
        };
        match reply.as_slice() {
            [new, ..] if new == "1" => {}
            [_, prior] => match repeat(prior) {
                Some(receipt) => self.local.answer_repeat(draft.id, receipt),
                None => self.refuse(
                    std::slice::from_ref(draft),
                    "an unreadable idempotency record",
                ),
            },
            _ => self.refuse(std::slice::from_ref(draft), "an unexpected reply"),
        }
    }

    /// Refuses the publishes of `drafts` now: their callers hear that the
    /// message is unconfirmed.
    fn refuse(&self, drafts: &[Draft], why: &str) {
        if drafts.is_empty() {
            return;
        }
        tracing::debug!(
            drafts = drafts.len(),
            why,
            "publishes refused: Redis did not number them"
        );
        stats::add(&self.counters.redis_refused, drafts.len() as u64);
        for draft in drafts {
            self.local.forget(draft.id);
        }
    }

    async fn publish(&self, channel: &str, frame: Bytes) {
        let Some(mut connection) = self.link.connection() else {
            return;
        };
        if let Err(error) = publish(&mut connection, channel, &frame).await {
            self.link.failed(&error);
        }
    }
}

async fn publish(
    connection: &mut MultiplexedConnection,
    channel: &str,
    frame: &[u8],
) -> Result<(), RedisError> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(frame)
        .query_async(connection)
        .await
}

/// Whether `reply` says Redis does not know the script.
fn no_script(reply: &Value) -> bool {
    matches!(reply, Value::ServerError(error) if error.kind() == Some(ServerErrorKind::NoScript))
}

/// An idempotency record, `<id> <epoch> <offset> <pod>`, as a receipt.
fn repeat(record: &str) -> Option<Receipt> {
    let mut parts = record.split(' ');
    let id = parts.next()?.parse::<MessageId>().ok()?;
    let epoch = Epoch::from_u64(parts.next()?.parse().ok()?)?;
    let offset = parts.next()?.parse().ok()?;
    let sequencer = parts.next()?.parse::<NodeId>().ok()?;
    Some(Receipt {
        id,
        stamp: Stamp {
            epoch,
            offset,
            sequencer,
        },
    })
}
