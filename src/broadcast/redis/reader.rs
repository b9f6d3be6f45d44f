//! The subscription: every numbered message and presence frame from Redis,
//! delivered here in the order Redis published them.
//!
//! Messages that arrive together are delivered together. A subscription
//! loses nothing while it is up (Redis sends one connection's messages in
//! order and whole; the client library reads them off the socket as they
//! come and holds what this task has not taken yet, so a pod that falls
//! behind holds its backlog in memory rather than lose it), so messages
//! are missed only while it is down. When it
//! comes (back) up, every topic this pod holds a log of is checked against
//! Redis before anything else is read: messages published meanwhile are
//! read from the topic's log and delivered in their place, what the log no
//! longer holds reaches the topic's subscribers as a `gap`, and a topic
//! whose order Redis lost (a new epoch) is reported as a gap too.
//!
//! A subscription that hears nothing for [`QUIET_LIMIT`] (not even this
//! pod's own beat) counts as broken and is dialled again.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures_util::{FutureExt, StreamExt};
use redis::RedisError;
use tokio_util::sync::CancellationToken;

use super::keys::{Keys, stamped};
use super::link::{BACKOFF, CONNECT_TIMEOUT, Link, RESPONSE_TIMEOUT};
use super::members::Members;
use super::store;
use crate::broadcast::intake::Intake;
use crate::cluster::backoff::Backoff;
use crate::message::{Epoch, Position};
use crate::proto::v1::Envelope;
use crate::topic::Topic;

/// Longest the subscription may stay silent: several beats.
pub const QUIET_LIMIT: Duration = Duration::from_secs(5);

/// Most messages taken off the subscription before they are delivered.
const BATCH: usize = 256;

/// Topics checked against Redis in one pipeline after a reconnect.
const CHECK_BATCH: usize = 256;

/// The task that reads.
pub struct Reader {
    /// The command connection, for reads of missed messages.
    pub link: Link,
    /// Key names.
    pub keys: Keys,
    /// Where messages are delivered.
    pub intake: Intake,
    /// Where presence frames go.
    pub members: Members,
    /// Whether the subscription is up now.
    pub up: Arc<AtomicBool>,
    /// Whether it has ever been up.
    pub settled: Arc<AtomicBool>,
}

/// Why a subscription ended.
#[derive(Debug, thiserror::Error)]
enum Broke {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error("no answer from Redis within {0:?}")]
    Timeout(Duration),
    #[error("Redis closed the subscription")]
    Closed,
    #[error("no command connection to read missed messages with")]
    NoLink,
}

impl Reader {
    /// Keeps the subscription up until `stop`.
    pub async fn run(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF.0, BACKOFF.1);
        let mut warned: Option<String> = None;
        loop {
            let outcome = tokio::select! {
                () = stop.cancelled() => return,
                outcome = self.listen() => outcome,
            };
            if self.up.swap(false, Ordering::AcqRel) {
                // It was up: the next attempt need not wait long, and its
                // failure is news.
                backoff.reset();
                warned = None;
            }
            self.members.deaf();
            if let Err(error) = outcome {
                let text = error.to_string();
                // One warning per distinct problem, not per retry.
                if warned.as_ref() != Some(&text) {
                    tracing::warn!(%error, redis = %self.link.address(), "the Redis subscription broke; subscribing again");
                }
                self.link.note(text.clone());
                warned = Some(text);
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = tokio::time::sleep(backoff.next_delay()) => {}
            }
        }
    }

    async fn listen(&self) -> Result<(), Broke> {
        let client = self.link.client();
        let mut pubsub = tokio::time::timeout(CONNECT_TIMEOUT, client.get_async_pubsub())
            .await
            .map_err(|_| Broke::Timeout(CONNECT_TIMEOUT))??;
        let (messages, presence) = (self.keys.messages(), self.keys.presence());
        tokio::time::timeout(RESPONSE_TIMEOUT, pubsub.subscribe(&[&messages, &presence]))
            .await
            .map_err(|_| Broke::Timeout(RESPONSE_TIMEOUT))??;
        let mut stream = pubsub.into_on_message();
        self.catch_up().await?;
        // Only now is this pod listening: silence was not judged while it
        // caught up.
        self.members.listening();
        self.up.store(true, Ordering::Release);
        self.settled.store(true, Ordering::Release);
        tracing::info!(redis = %self.link.address(), "subscribed to the cluster's channels");
        loop {
            let first = tokio::time::timeout(QUIET_LIMIT, stream.next())
                .await
                .map_err(|_| Broke::Timeout(QUIET_LIMIT))?
                .ok_or(Broke::Closed)?;
            let mut batch = self.intake.batch();
            let mut next = Some(first);
            let mut taken = 0;
            while let Some(msg) = next {
                let payload = msg.get_payload_bytes();
                if msg.get_channel_name() == messages {
                    match stamped(payload) {
                        Ok(envelope) => batch.push(&envelope),
                        Err(error) => {
                            tracing::warn!(%error, "dropping an unreadable message from Redis")
                        }
                    }
                } else {
                    self.members.take(payload);
                }
                taken += 1;
                next = if taken < BATCH {
                    stream.next().now_or_never().flatten()
                } else {
                    None
                };
            }
            batch.flush();
        }
    }

    /// The kept messages of `topic` from `from` on, or none if Redis
    /// cannot say now (the topic's subscribers then hear of a gap).
    async fn read(&self, topic: &Topic, from: u64) -> Vec<Envelope> {
        let Some(mut connection) = self.link.connection_within(RESPONSE_TIMEOUT).await else {
            return Vec::new();
        };
        match store::range(&mut connection, &self.keys, topic, from).await {
            Ok(missed) => missed,
            Err(error) => {
                self.link.failed(&error);
                Vec::new()
            }
        }
    }

    /// Checks every topic this pod knows against Redis: delivers what was
    /// missed, and tells subscribers of a topic whose order Redis lost.
    /// Fails (and the subscription is made again) when Redis cannot be
    /// asked: nothing is read live before the topics are checked.
    async fn catch_up(&self) -> Result<(), Broke> {
        let local = self.intake.local();
        let known = local.history().heads();
        if known.is_empty() {
            return Ok(());
        }
        let mut connection = self
            .link
            .connection_within(CONNECT_TIMEOUT)
            .await
            .ok_or(Broke::NoLink)?;
        let mut behind = 0;
        for chunk in known.chunks(CHECK_BATCH) {
            let topics: Vec<Topic> = chunk.iter().map(|(topic, _)| topic.clone()).collect();
            let heads = store::heads(&mut connection, &self.keys, &topics)
                .await
                .inspect_err(|error| self.link.failed(error))?;
            for ((topic, here), there) in chunk.iter().zip(heads) {
                let Some((epoch, offset)) = there else {
                    continue;
                };
                let Some(epoch) = Epoch::from_u64(epoch) else {
                    continue;
                };
                let from = match here.epoch {
                    // Subscribers who stood at "nothing yet" get the topic
                    // from its start.
                    None => 1,
                    // Redis came back with less than this pod saw (it
                    // persisted only part, or a replica lagged): its next
                    // offsets would repeat ones already delivered. The
                    // topic starts a new epoch at its next message, which
                    // every subscriber hears of as a gap.
                    Some(known) if known == epoch && offset < here.offset => {
                        tracing::error!(%topic, redis = offset, here = here.offset, "Redis lost the last messages of a topic; it starts a new epoch");
                        store::forget(&mut connection, &self.keys, topic, epoch, here.offset)
                            .await
                            .inspect_err(|error| self.link.failed(error))?;
                        continue;
                    }
                    Some(known) if known == epoch => here.offset + 1,
                    // Redis lost the order this pod knew: subscribers hear
                    // of a gap, then get the new epoch from its start.
                    Some(_) => {
                        local.skip_to(topic, Position::at(epoch, 0));
                        1
                    }
                };
                if offset >= from {
                    behind += 1;
                    let mut batch = self.intake.batch();
                    for missed in self.read(topic, from).await {
                        batch.push(&missed);
                    }
                    batch.flush();
                    // What the log no longer held (or could not be read)
                    // is a gap, not a head left behind.
                    local.skip_to(topic, Position::at(epoch, offset));
                }
            }
        }
        if behind > 0 {
            tracing::info!(
                topics = behind,
                "caught up on messages published while unsubscribed"
            );
        }
        Ok(())
    }
}
