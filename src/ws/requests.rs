//! Answering what a client sends: subscribe (with or without `since`, with
//! or without presence events), unsubscribe, history, presence and its
//! counts, ping, refresh (a fresh token) and (when allowed) publish, each
//! checked against the connection's limits and its user's token.
//!
//! Every reply goes into the session's own queue, in request order, among
//! the messages queued for it: a subscribe's reply is queued under the
//! topic's lock, before its replay and before any live message, so the
//! client reads its position before the first message that follows it.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Message;

use super::protocol::{self, ErrorCode, Op, Request};
use crate::auth::{Identity, Verifier};
use crate::history::BadPosition;
use crate::history::Need;
use crate::hub::{Membership, Outgoing, Pending};
use crate::limit::TokenBucket;
use crate::local::{Local, Recall, SubscribeError};
use crate::presence::Presence;
use crate::publish::{self, PublishError, Publisher};
use crate::stats::{self, Counters};
use crate::topic::Topic;

/// How long a `subscribe` whose `since` is past this pod's head in the
/// same epoch waits for the pod to catch up before it is refused: the
/// client saw those messages on another pod, and they are on their way
/// here (a drained pod's users resume while its last messages cross).
pub const AHEAD_PATIENCE: std::time::Duration = std::time::Duration::from_secs(2);

/// How often such a `subscribe` looks again.
const AHEAD_POLL: std::time::Duration = std::time::Duration::from_millis(10);

/// Whether and how a connection may publish.
pub struct Publishing {
    /// The publish path (the same one gRPC uses).
    pub publisher: Publisher,
    /// The connection's publish rate limit.
    pub limit: TokenBucket,
}

/// One connection's request state.
pub struct Requests {
    /// Its subscriptions.
    pub membership: Membership,
    /// The pod's ordered topics.
    pub local: Local,
    /// Who is in which topic, cluster-wide.
    pub presence: Presence,
    /// Completes this pod's history of a topic before it answers.
    pub recall: Arc<dyn Recall>,
    /// Its user, when authentication is on.
    pub identity: Option<Identity>,
    /// Checks the tokens `refresh` brings, when authentication is on.
    pub verifier: Option<Verifier>,
    /// Client publish, when enabled.
    pub publishing: Option<Publishing>,
    /// Where refusals are counted.
    pub counters: Arc<Counters>,
}

impl Requests {
    /// Answers one client message: its replies go into the session's
    /// queue, in order.
    pub async fn answer(&mut self, message: Message) {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let reply = protocol::error(
                    None,
                    ErrorCode::UnsupportedFrame,
                    "binary frames are not supported; send JSON text frames",
                );
                return self.reply(reply);
            }
            // Pings are answered by the WebSocket layer; pongs and closes
            // need nothing from us.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return,
        };
        for line in protocol::lines(&text) {
            match protocol::parse(line) {
                Ok(request) => self.perform(request).await,
                Err(rejection) => self.reply(protocol::error(
                    rejection.reference,
                    rejection.code,
                    &rejection.message,
                )),
            }
        }
    }

    /// Tells the client its token expires at `at` (the `expiring` event).
    pub fn tell_expiring(&self, at: std::time::SystemTime) {
        self.reply(protocol::expiring(unix_seconds(at)));
    }

    /// When the connection's token stops being accepted (its `exp` plus
    /// the verifier's leeway), when authentication is on: the connection
    /// closes then unless it refreshed.
    pub fn expiry(&self) -> Option<std::time::SystemTime> {
        let leeway = self
            .verifier
            .as_ref()
            .map(Verifier::leeway)
            .unwrap_or_default();
        self.identity.as_ref().map(|id| id.expires_at + leeway)
    }

    /// One step of catching up on the topics the connection fell behind on
    /// (see [`Local::catch_up`]).
    pub fn catch_up(&self) {
        self.local.catch_up(&self.membership);
    }

    /// Queues one reply.
    fn reply(&self, reply: String) {
        let mut pending = Pending::default();
        self.membership.push([Outgoing::text(reply)], &mut pending);
        self.local.hub().write_out(pending);
    }

    fn forbidden(&self, topic: &Topic) -> bool {
        self.identity
            .as_ref()
            .is_some_and(|id| !id.may_subscribe(topic.as_str()))
    }

    async fn perform(&mut self, request: Request<'_>) {
        let reference = request.reference;
        let refused = &self.counters.refused;
        let reply = match request.op {
            Op::Subscribe(topic, since, options) => {
                if self.forbidden(&topic) {
                    forbidden_reply(refused, reference, "subscribing to", &topic)
                } else if options.join_leave && !self.presence.covers(&topic) {
                    presence_disabled(reference, &topic)
                } else {
                    let need = since.map_or(Need::Head, Need::Since);
                    self.recall.recall(&topic, need).await;
                    // A resume from a pod that was ahead of this one (the
                    // client saw messages still on their way here) waits
                    // for them rather than being refused.
                    let patience = Instant::now() + AHEAD_PATIENCE;
                    let subscribed = loop {
                        let attempt = self.local.subscribe(
                            &mut self.membership,
                            topic.clone(),
                            since,
                            options,
                            |resume| {
                                Outgoing::text(protocol::subscribed(
                                    reference,
                                    resume.head,
                                    resume.recovered,
                                ))
                            },
                        );
                        match attempt {
                            Err(SubscribeError::Position(BadPosition::Future { .. }))
                                if Instant::now() < patience =>
                            {
                                tokio::time::sleep(AHEAD_POLL).await;
                            }
                            attempt => break attempt,
                        }
                    };
                    match subscribed {
                        Ok(_) => return,
                        Err(SubscribeError::Position(e)) => {
                            protocol::error(reference, ErrorCode::InvalidPosition, &e.to_string())
                        }
                        Err(SubscribeError::Limit(e)) => {
                            stats::add(&refused.too_many_subscriptions, 1);
                            protocol::error(
                                reference,
                                ErrorCode::TooManySubscriptions,
                                &e.to_string(),
                            )
                        }
                    }
                }
            }
            Op::History {
                topic,
                limit,
                since,
            } => {
                if self.forbidden(&topic) {
                    forbidden_reply(refused, reference, "reading", &topic)
                } else {
                    let need = since.map_or(Need::Last(limit), Need::Since);
                    self.recall.recall(&topic, need).await;
                    match self.local.page(&topic, since, limit) {
                        Ok(page) => {
                            protocol::history(reference, page.head, &page.messages, page.recovered)
                        }
                        Err(e) => {
                            protocol::error(reference, ErrorCode::InvalidPosition, &e.to_string())
                        }
                    }
                }
            }
            Op::Presence {
                topic,
                limit,
                cursor,
            } => {
                if self.forbidden(&topic) {
                    forbidden_reply(refused, reference, "subscribing to", &topic)
                } else if !self.presence.covers(&topic) {
                    presence_disabled(reference, &topic)
                } else {
                    let (entries, next) = self.presence.page(&topic, cursor, limit);
                    protocol::presence(reference, &entries, next)
                }
            }
            Op::PresenceStats(topic) => {
                if self.forbidden(&topic) {
                    forbidden_reply(refused, reference, "subscribing to", &topic)
                } else if !self.presence.covers(&topic) {
                    presence_disabled(reference, &topic)
                } else {
                    protocol::presence_stats(reference, self.presence.stats(&topic))
                }
            }
            Op::Unsubscribe(topic) => {
                self.membership.unsubscribe(&topic);
                protocol::ok(reference)
            }
            Op::Ping => protocol::pong(reference),
            Op::Publish { topic, data } => self.publish(reference, topic, data).await,
            Op::Refresh(token) => self.refresh(reference, &token).await,
        };
        self.reply(reply);
    }

    /// Replaces the connection's token with `token` after the checks of an
    /// upgrade, for the same user; the topics it no longer allows are left
    /// (each with an `unsubscribed` event, before the reply).
    async fn refresh(
        &mut self,
        reference: Option<&serde_json::value::RawValue>,
        token: &str,
    ) -> String {
        let refused = &self.counters.refused;
        let (Some(verifier), Some(current)) = (&self.verifier, &self.identity) else {
            let message = "this server does not use tokens (--auth none)";
            return protocol::error(reference, ErrorCode::InvalidToken, message);
        };
        let fresh = match verifier.authenticate(token).await {
            Ok(fresh) => fresh,
            Err(e) => {
                stats::add(&refused.invalid_token, 1);
                self.counters.token_refused(e.reason());
                return protocol::error(reference, ErrorCode::InvalidToken, &e.to_string());
            }
        };
        if fresh.sub != current.sub {
            stats::add(&refused.invalid_token, 1);
            let message = "the token is for another user; a connection keeps its user";
            return protocol::error(reference, ErrorCode::InvalidToken, message);
        }
        let lost: Vec<_> = self
            .membership
            .topics()
            .filter(|topic| !fresh.may_subscribe(topic.as_str()))
            .cloned()
            .collect();
        for topic in &lost {
            self.membership.unsubscribe(topic);
            self.reply(protocol::unsubscribed(topic));
        }
        self.identity = Some(fresh);
        let closes = self.expiry().map_or(0, unix_seconds);
        protocol::refreshed(reference, closes)
    }

    async fn publish(
        &mut self,
        reference: Option<&serde_json::value::RawValue>,
        topic: crate::topic::Topic,
        data: &serde_json::value::RawValue,
    ) -> String {
        let refused = &self.counters.refused;
        let Some(publishing) = self.publishing.as_mut() else {
            stats::add(&refused.forbidden, 1);
            let message = "client publish is not enabled on this server";
            return protocol::error(reference, ErrorCode::Forbidden, message);
        };
        if self
            .identity
            .as_ref()
            .is_some_and(|id| !id.may_publish(topic.as_str()))
        {
            return forbidden_reply(refused, reference, "publishing to", &topic);
        }
        if !publishing.limit.try_take(Instant::now()) {
            stats::add(&refused.rate_limited, 1);
            let message = "publishing too fast; slow down and retry";
            return protocol::error(reference, ErrorCode::RateLimited, message);
        }
        let request = publish::Request::new(topic.as_str(), data.get().as_bytes());
        match publishing.publisher.publish(request).await {
            Ok(receipt) => {
                let at = crate::message::Position::at(receipt.stamp.epoch, receipt.stamp.offset);
                protocol::published(reference, &receipt.id.to_string(), at)
            }
            Err(e @ PublishError::Unconfirmed(_)) => {
                protocol::error(reference, ErrorCode::Unavailable, &e.to_string())
            }
            Err(e) => protocol::error(reference, ErrorCode::InvalidData, &e.to_string()),
        }
    }
}

/// The `forbidden` reply to a request for `topic` that the token does not
/// allow `doing` to, counted.
fn forbidden_reply(
    refused: &stats::Refusals,
    reference: Option<&serde_json::value::RawValue>,
    doing: &str,
    topic: &Topic,
) -> String {
    stats::add(&refused.forbidden, 1);
    let message = format!("your token does not allow {doing} {topic}");
    protocol::error(reference, ErrorCode::Forbidden, &message)
}

/// The error reply for presence asked of a topic that keeps none.
fn presence_disabled(reference: Option<&serde_json::value::RawValue>, topic: &Topic) -> String {
    let message = format!("{topic} keeps no presence on this server (--presence-topics)");
    protocol::error(reference, ErrorCode::PresenceDisabled, &message)
}

/// `at` as whole seconds since the Unix epoch (0 before it).
pub fn unix_seconds(at: std::time::SystemTime) -> u64 {
    at.duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}
