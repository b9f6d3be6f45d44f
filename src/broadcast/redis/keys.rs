//! What the Redis backend keeps in Redis, under `herald:<cluster>:`, and the
//! one script that numbers a message.
//!
//! Per topic (the topic in braces, so that a topic's keys share a slot):
//! - `{topic}:meta`, a hash: `epoch` (the topic's epoch, set once) and
//!   `offset` (the last offset given). Kept [`META_TTL`] after the topic's
//!   last message.
//! - `{topic}:log`, a stream of the newest messages, entry id `<offset>-0`,
//!   field `m` the message as [`Stamped`] carries it: what a pod that missed
//!   messages (a broken subscription, a restart) reads back. Trimmed to about
//!   the history bound, and gone with the history's age.
//! - `{topic}:key:<key>`: an idempotency key's first message, for the key
//!   window.
//!
//! Two channels: `messages` carries every numbered message, in the order
//! the script gave them (Redis runs one script at a time, and a subscriber
//! receives a connection's messages in the order they were published), and
//! `presence` carries the pods' presence and liveness frames.
//!
//! A topic whose `meta` is gone (Redis lost its data, or the topic was idle
//! past [`META_TTL`]) starts a new epoch at offset 1 and its log is cleared:
//! a position of the old epoch is answered `recovered: false`, never
//! mistaken for one of the new.

use std::time::Duration;

use bytes::Bytes;
use prost::Message as _;

use crate::message::{Draft, Epoch};
use crate::proto::v1::Envelope;
use crate::topic::Topic;

/// How long a topic's epoch and last offset outlive its last message. Past
/// it, its next message starts a new epoch (the subscribers who knew the
/// old one hear of a gap).
pub const META_TTL: Duration = Duration::from_secs(7 * 24 * 3600);

/// Numbers one message: KEYS meta, log, key (the meta key again when there
/// is no idempotency key); ARGV a fresh epoch, the draft, the log's length
/// bound, the log's and the meta's lifetimes (seconds), the messages
/// channel, the draft's id, whether it has a key, the key window (seconds),
/// the pod that hands it over. Returns `{1, epoch, offset}`, or
/// `{0, "<id> <epoch> <offset> <pod>"}` for a key already used.
const NUMBER: &str = r#"
if ARGV[8] == '1' then
  local prior = redis.call('GET', KEYS[3])
  if prior then return {0, prior} end
end
if redis.call('HSETNX', KEYS[1], 'epoch', ARGV[1]) == 1 then
  redis.call('DEL', KEYS[2])
end
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local offset = string.format('%d', redis.call('HINCRBY', KEYS[1], 'offset', 1))
local stamped = epoch .. ' ' .. offset .. ' ' .. ARGV[2]
redis.call('XADD', KEYS[2], 'MAXLEN', '~', ARGV[3], offset .. '-0', 'm', stamped)
redis.call('EXPIRE', KEYS[2], ARGV[4])
redis.call('EXPIRE', KEYS[1], ARGV[5])
redis.call('PUBLISH', ARGV[6], stamped)
if ARGV[8] == '1' then
  redis.call('SET', KEYS[3], ARGV[7] .. ' ' .. epoch .. ' ' .. offset .. ' ' .. ARGV[10], 'EX', ARGV[9])
end
return {1, epoch, offset}
"#;

/// The numbering script, sent by its hash; loaded into Redis when Redis
/// says it does not know it (it restarted).
pub fn number_script() -> redis::Script {
    redis::Script::new(NUMBER)
}

/// The key and channel names of one cluster.
#[derive(Debug, Clone)]
pub struct Keys {
    prefix: String,
}

impl Keys {
    /// The names of cluster `cluster`.
    pub fn new(cluster: &str) -> Self {
        Self {
            prefix: format!("herald:{cluster}:"),
        }
    }

    /// The channel of numbered messages.
    pub fn messages(&self) -> String {
        format!("{}messages", self.prefix)
    }

    /// The channel of presence and liveness frames.
    pub fn presence(&self) -> String {
        format!("{}presence", self.prefix)
    }

    /// `topic`'s epoch and last offset.
    pub fn meta(&self, topic: &Topic) -> String {
        format!("{}{{{topic}}}:meta", self.prefix)
    }

    /// `topic`'s stream of newest messages.
    pub fn log(&self, topic: &Topic) -> String {
        format!("{}{{{topic}}}:log", self.prefix)
    }

    /// `topic`'s idempotency key `key`.
    pub fn key(&self, topic: &Topic, key: &str) -> String {
        format!("{}{{{topic}}}:key:{key}", self.prefix)
    }
}

/// The draft as the script takes it: an [`Envelope`] without its place.
pub fn draft_bytes(draft: &Draft) -> Vec<u8> {
    let trace_context = draft.trace.as_deref().cloned().unwrap_or_default();
    Envelope {
        id: draft.id.to_string(),
        topic: draft.topic.to_string(),
        data: draft.data.clone(),
        origin: draft.origin.to_string(),
        trace_context,
        offset: 0,
        epoch: 0,
        // Redis numbers it; the pod that handed it over stands in.
        sequencer: draft.origin.to_string(),
        idempotency_key: draft.key.as_deref().unwrap_or_default().to_owned(),
    }
    .encode_to_vec()
}

/// Why a stamped message from Redis was not read.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BadStamped {
    /// Not `<epoch> <offset> <envelope>`.
    #[error("not a stamped message")]
    Shape,
    /// The envelope does not decode.
    #[error("the envelope does not decode: {0}")]
    Envelope(String),
}

/// A message as the script publishes and logs it: `<epoch> <offset> `
/// (decimal) before the draft's envelope, read back into a whole
/// [`Envelope`].
pub fn stamped(bytes: &[u8]) -> Result<Envelope, BadStamped> {
    let mut parts = bytes.splitn(3, |b| *b == b' ');
    let mut number = || {
        parts
            .next()
            .and_then(|p| std::str::from_utf8(p).ok())
            .and_then(|p| p.parse::<u64>().ok())
            .ok_or(BadStamped::Shape)
    };
    let (epoch, offset) = (number()?, number()?);
    let body = parts.next().ok_or(BadStamped::Shape)?;
    let mut envelope = Envelope::decode(Bytes::copy_from_slice(body))
        .map_err(|e| BadStamped::Envelope(e.to_string()))?;
    envelope.epoch = epoch;
    envelope.offset = offset;
    Ok(envelope)
}

/// The epoch the script is offered for a topic it has not numbered yet.
pub fn fresh_epoch(topic: &Topic) -> u64 {
    Epoch::new_for(topic).as_u64()
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::message::{IdGenerator, NodeId};

    #[test]
    fn a_stamped_draft_reads_back_as_the_envelope_with_its_place() {
        let topic = Topic::new("room:1").expect("topic");
        let draft = Draft::new(
            IdGenerator::new(NodeId::random()).next_id(),
            topic,
            Bytes::from_static(b"{\"a\":\"b c\"}"),
            NodeId::random(),
        )
        .with_key(Some(Arc::from("k 1")));
        let mut bytes = b"1234 56 ".to_vec();
        bytes.extend(draft_bytes(&draft));
        let envelope = stamped(&bytes).expect("reads");
        assert_eq!((envelope.epoch, envelope.offset), (1234, 56));
        assert_eq!(&envelope.data[..], b"{\"a\":\"b c\"}");
        assert_eq!(envelope.idempotency_key, "k 1");
        assert_eq!(envelope.origin, draft.origin.to_string());
    }

    #[test]
    fn a_stamped_message_without_its_place_or_envelope_is_refused() {
        assert_eq!(stamped(b"12 nope x"), Err(BadStamped::Shape));
        assert_eq!(stamped(b"12"), Err(BadStamped::Shape));
        assert!(matches!(
            stamped(b"1 2 \xff\xff\xff"),
            Err(BadStamped::Envelope(_))
        ));
    }
}
