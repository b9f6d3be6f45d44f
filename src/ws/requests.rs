//! Answering what a client sends: subscribe, unsubscribe, ping and (when
//! allowed) publish, each checked against the connection's limits and its
//! user's token.

use std::sync::Arc;
use std::time::Instant;

use axum::extract::ws::Message;

use super::protocol::{self, ErrorCode, Op, Request};
use crate::auth::Identity;
use crate::hub::Membership;
use crate::limit::TokenBucket;
use crate::publish::Publisher;
use crate::stats::{self, Counters};

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
    /// Its user, when authentication is on.
    pub identity: Option<Identity>,
    /// Client publish, when enabled.
    pub publishing: Option<Publishing>,
    /// Where refusals are counted.
    pub counters: Arc<Counters>,
}

impl Requests {
    /// Answers one client message; returns the text frame to send back, if
    /// any. Several requests in one frame get their replies in one frame, in
    /// order.
    pub fn answer(&mut self, message: Message) -> Option<Message> {
        let text = match message {
            Message::Text(text) => text,
            Message::Binary(_) => {
                let reply = protocol::error(
                    None,
                    ErrorCode::UnsupportedFrame,
                    "binary frames are not supported; send JSON text frames",
                );
                return Some(Message::Text(reply.into()));
            }
            // Pings are answered by the WebSocket layer; pongs and closes
            // need nothing from us.
            Message::Ping(_) | Message::Pong(_) | Message::Close(_) => return None,
        };
        let mut replies = String::new();
        for line in protocol::lines(&text) {
            let reply = match protocol::parse(line) {
                Ok(request) => self.perform(request),
                Err(rejection) => {
                    protocol::error(rejection.reference, rejection.code, &rejection.message)
                }
            };
            if !replies.is_empty() {
                replies.push('\n');
            }
            replies.push_str(&reply);
        }
        (!replies.is_empty()).then(|| Message::Text(replies.into()))
    }

    fn perform(&mut self, request: Request<'_>) -> String {
        let reference = request.reference;
        let refused = &self.counters.refused;
        match request.op {
            Op::Subscribe(topic) => {
                if self
                    .identity
                    .as_ref()
                    .is_some_and(|id| !id.may_subscribe(topic.as_str()))
                {
                    stats::add(&refused.forbidden, 1);
                    let message = format!("your token does not allow subscribing to {topic}");
                    return protocol::error(reference, ErrorCode::Forbidden, &message);
                }
                match self.membership.subscribe(topic) {
                    Ok(_) => protocol::ok(reference),
                    Err(e) => {
                        stats::add(&refused.too_many_subscriptions, 1);
                        protocol::error(reference, ErrorCode::TooManySubscriptions, &e.to_string())
                    }
                }
            }
            Op::Unsubscribe(topic) => {
                self.membership.unsubscribe(&topic);
                protocol::ok(reference)
            }
            Op::Ping => protocol::pong(reference),
            Op::Publish { topic, data } => {
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
                    stats::add(&refused.forbidden, 1);
                    let message = format!("your token does not allow publishing to {topic}");
                    return protocol::error(reference, ErrorCode::Forbidden, &message);
                }
                if !publishing.limit.try_take(Instant::now()) {
                    stats::add(&refused.rate_limited, 1);
                    let message = "publishing too fast; slow down and retry";
                    return protocol::error(reference, ErrorCode::RateLimited, message);
                }
                match publishing
                    .publisher
                    .publish(topic.as_str(), data.get().as_bytes())
                {
                    Ok(id) => protocol::published(reference, &id.to_string()),
                    Err(e) => protocol::error(reference, ErrorCode::InvalidData, &e.to_string()),
                }
            }
        }
    }
}
