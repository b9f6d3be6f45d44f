//! Messages, their ids and their places: what a publish produces and every
//! part passes on.
//!
//! A publish first makes a [`Draft`]; the topic's sequencer gives it a
//! [`Stamp`] (epoch and offset), and that makes the [`Message`], built once
//! and then shared behind an `Arc`: its WebSocket frame is encoded once and
//! the same bytes go to every subscriber, so fan-out does no per-subscriber
//! JSON work. A [`Position`] is where a reader stands in a topic.

use std::collections::HashMap;
use std::fmt::{self, Write as _};
use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::de::IgnoredAny;

use crate::topic::Topic;

/// The identity of one herald process, random at every start. It tells peers
/// apart (a restarted pod with the same IP is a new node) and lets a pod
/// recognise a stream to itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u64);

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        Self(rand::random())
    }

    /// The id's bits.
    pub fn as_u64(self) -> u64 {
        self.0
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl fmt::Debug for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "NodeId({self})")
    }
}

impl FromStr for NodeId {
    type Err = std::num::ParseIntError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(Self)
    }
}

/// A message id: 128 bits written as a 26-character ULID.
///
/// Layout: 48 bits of Unix milliseconds, 32 bits of the publishing node's id,
/// 48 bits of that node's sequence. Ids are unique across the cluster without
/// coordination and sort by publish time; history and resume key on them.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MessageId(u128);

impl MessageId {
    /// The id's 128 bits.
    pub fn as_u128(self) -> u128 {
        self.0
    }
}

impl fmt::Display for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&ulid::Ulid(self.0), f)
    }
}

impl fmt::Debug for MessageId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "MessageId({self})")
    }
}

impl FromStr for MessageId {
    type Err = ulid::DecodeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        ulid::Ulid::from_string(s).map(|u| Self(u.0))
    }
}

/// Hands out [`MessageId`]s for one node. Lock-free: one atomic increment
/// per id.
#[derive(Debug)]
pub struct IdGenerator {
    node_bits: u128,
    seq: AtomicU64,
}

const SEQ_BITS: u32 = 48;
const NODE_BITS: u32 = 32;

impl IdGenerator {
    /// A generator for ids published by `node`.
    pub fn new(node: NodeId) -> Self {
        Self {
            node_bits: u128::from(node.0 as u32) << SEQ_BITS,
            seq: AtomicU64::new(0),
        }
    }

    /// The next id.
    pub fn next_id(&self) -> MessageId {
        let millis = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        let seq = self.seq.fetch_add(1, Ordering::Relaxed) & ((1 << SEQ_BITS) - 1);
        let time_bits = u128::from(millis & ((1 << 48) - 1)) << (SEQ_BITS + NODE_BITS);
        MessageId(time_bits | self.node_bits | u128::from(seq))
    }
}

/// Why a payload is not one JSON document.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DataError {
    /// No bytes at all.
    #[error("data is empty")]
    Empty,
    /// The bytes are not UTF-8.
    #[error("data is not UTF-8: {0}")]
    NotUtf8(String),
    /// The text is not exactly one JSON document.
    #[error("data is not one JSON document: {0}")]
    NotJson(String),
}

/// Checks that `data` is exactly one UTF-8 JSON document and returns it
/// without insignificant whitespace.
///
/// Numbers, strings and key order are kept byte for byte: only the
/// whitespace between tokens goes, so the result holds no raw newline (JSON
/// strings cannot contain one unescaped) and fits the newline-separated
/// framing of protocol v1.
pub fn compact_json(data: &[u8]) -> Result<String, DataError> {
    if data.is_empty() {
        return Err(DataError::Empty);
    }
    let text = std::str::from_utf8(data).map_err(|e| DataError::NotUtf8(e.to_string()))?;
    serde_json::from_str::<IgnoredAny>(text).map_err(|e| DataError::NotJson(e.to_string()))?;
    let mut out = String::with_capacity(text.len());
    let mut in_string = false;
    let mut escaped = false;
    for c in text.chars() {
        if in_string {
            out.push(c);
            if escaped {
                escaped = false;
            } else if c == '\\' {
                escaped = true;
            } else if c == '"' {
                in_string = false;
            }
        } else if !matches!(c, ' ' | '\t' | '\n' | '\r') {
            in_string = c == '"';
            out.push(c);
        }
    }
    Ok(out)
}

/// W3C trace context (`traceparent`, `tracestate`) as text key/value pairs,
/// carried with a message so one trace follows it across pods.
pub type TraceContext = HashMap<String, String>;

/// One run of a topic's offsets. A topic's messages are numbered 1, 2, 3 …
/// within an epoch; a new epoch starts only when the run that led up to it
/// cannot be continued without risk (the pod that numbered it vanished, or
/// the history is gone), so a position from an old epoch is never taken for
/// one of the new.
///
/// 50 bits, shown to clients as 10 characters of Crockford base32: 30
/// random ones, and 20 from the topic's name, so that a position of
/// another topic is told from an old one of this topic.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Epoch(u64);

const EPOCH_BITS: u32 = 50;
const EPOCH_TOPIC_BITS: u32 = 20;
const BASE32: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

impl Epoch {
    /// A fresh epoch of `topic`.
    pub fn new_for(topic: &Topic) -> Self {
        let random = rand::random::<u64>() & ((1 << (EPOCH_BITS - EPOCH_TOPIC_BITS)) - 1);
        Self((random | 1) << EPOCH_TOPIC_BITS | Self::topic_bits(topic))
    }

    /// Whether this epoch can be one of `topic`'s.
    pub fn belongs_to(self, topic: &Topic) -> bool {
        self.0 & ((1 << EPOCH_TOPIC_BITS) - 1) == Self::topic_bits(topic)
    }

    fn topic_bits(topic: &Topic) -> u64 {
        topic.stable_hash() & ((1 << EPOCH_TOPIC_BITS) - 1)
    }

    /// The epoch's bits, as carried between pods.
    pub fn as_u64(self) -> u64 {
        self.0
    }

    /// The epoch with these bits, as carried between pods; `None` for 0
    /// (no epoch).
    pub fn from_u64(bits: u64) -> Option<Self> {
        (bits != 0 && bits < (1 << EPOCH_BITS)).then_some(Self(bits))
    }
}

impl fmt::Display for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = [0u8; 10];
        for (i, c) in text.iter_mut().enumerate() {
            *c = BASE32[((self.0 >> (45 - 5 * i)) & 31) as usize];
        }
        f.write_str(std::str::from_utf8(&text).unwrap_or_default())
    }
}

impl fmt::Debug for Epoch {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Epoch({self})")
    }
}

/// A string that is not an epoch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("an epoch is 10 characters of 0-9 and a-z (without i, l, o, u)")]
pub struct BadEpoch;

impl FromStr for Epoch {
    type Err = BadEpoch;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if s.len() != 10 {
            return Err(BadEpoch);
        }
        let mut bits = 0u64;
        for b in s.bytes() {
            let digit = BASE32.iter().position(|c| *c == b).ok_or(BadEpoch)?;
            bits = bits << 5 | digit as u64;
        }
        Self::from_u64(bits).ok_or(BadEpoch)
    }
}

/// Where a reader stands in a topic: the last offset it holds, in an
/// epoch. `epoch: None` with offset 0 is the position before anything: a
/// topic with no messages yet, or a reader that holds none.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Position {
    /// The epoch, once the topic has one.
    pub epoch: Option<Epoch>,
    /// The last offset held; 0 before the first.
    pub offset: u64,
}

impl Position {
    /// The position at `offset` of `epoch`.
    pub fn at(epoch: Epoch, offset: u64) -> Self {
        Self {
            epoch: Some(epoch),
            offset,
        }
    }

    /// A position as clients write it: an epoch's 10 characters, or `""`
    /// for none.
    pub fn parse(epoch: &str, offset: u64) -> Result<Self, BadEpoch> {
        let epoch = (!epoch.is_empty()).then(|| epoch.parse()).transpose()?;
        Ok(Self { epoch, offset })
    }

    /// The epoch as clients read it: 10 characters, or `""` for none.
    pub fn epoch_text(&self) -> String {
        self.epoch.map(|e| e.to_string()).unwrap_or_default()
    }
}

/// The place one message got in its topic's order, and the pod that gave
/// it that place.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The epoch.
    pub epoch: Epoch,
    /// The offset within the epoch, from 1.
    pub offset: u64,
    /// The pod that numbered it (the topic's sequencer then).
    pub sequencer: NodeId,
}

/// A published message before it has its place in the topic's order: what
/// the publish path checked, and what a pod that does not number the
/// topic sends to the one that does.
#[derive(Debug, Clone)]
pub struct Draft {
    /// The message id.
    pub id: MessageId,
    /// The topic.
    pub topic: Topic,
    /// The compacted JSON document.
    pub data: Bytes,
    /// The pod where it was published.
    pub origin: NodeId,
    /// The publisher's idempotency key, if it gave one.
    pub key: Option<Arc<str>>,
    /// The trace context of the publish, when tracing is on.
    pub trace: Option<Box<TraceContext>>,
}

/// One published message with its place in the topic's order, shared by
/// every part that handles it.
#[derive(Debug)]
pub struct Message {
    draft: Draft,
    stamp: Stamp,
    frame: Utf8Bytes,
    received: Instant,
}

impl Message {
    /// Gives `draft` its place and encodes its protocol v1 frame:
    /// `{"op":"message","topic":T,"id":I,"offset":N,"epoch":E,"data":D}`.
    pub fn new(draft: Draft, stamp: Stamp) -> Self {
        // Compacted JSON is UTF-8 (see `compact_json`), so this is lossless.
        let data_text = String::from_utf8_lossy(&draft.data);
        let topic = draft.topic.as_str();
        let mut frame = String::with_capacity(96 + topic.len() + data_text.len());
        // Topic characters need no JSON escaping (see `Topic`), nor do ids,
        // offsets and epochs.
        let _ = write!(
            frame,
            r#"{{"op":"message","topic":"{topic}","id":"{}","offset":{},"epoch":"{}","data":{data_text}}}"#,
            draft.id, stamp.offset, stamp.epoch
        );
        Self {
            draft,
            stamp,
            frame: Utf8Bytes::from(frame),
            received: Instant::now(),
        }
    }

    /// The trace context of the publish, if it was traced.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.draft.trace.as_deref()
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.draft.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.draft.topic
    }

    /// The compacted JSON document.
    pub fn data(&self) -> &Bytes {
        &self.draft.data
    }

    /// The node where the message was published.
    pub fn origin(&self) -> NodeId {
        self.draft.origin
    }

    /// The publisher's idempotency key, if any.
    pub fn key(&self) -> Option<&Arc<str>> {
        self.draft.key.as_ref()
    }

    /// Its place in the topic's order.
    pub fn stamp(&self) -> Stamp {
        self.stamp
    }

    /// The position a reader holds once it has this message.
    pub fn position(&self) -> Position {
        Position::at(self.stamp.epoch, self.stamp.offset)
    }

    /// The encoded protocol v1 frame: JSON without a newline, kept as
    /// WebSocket text so that sending it needs neither a copy nor another
    /// UTF-8 check.
    pub fn frame(&self) -> &Utf8Bytes {
        &self.frame
    }

    /// When this pod built the message (publish or arrival from a peer).
    pub fn received(&self) -> Instant {
        self.received
    }

    /// The size this message takes in memory, roughly: what history
    /// budgets count.
    pub fn footprint(&self) -> usize {
        std::mem::size_of::<Self>() + self.frame.len() + self.draft.data.len()
    }
}

/// The `gap` event: the topic's messages up to `at` may not all have
/// reached this connection; its position is now `at`, and the next message
/// follows it. `{"op":"gap","topic":T,"epoch":E,"offset":N}`.
pub fn gap_frame(topic: &Topic, at: Position) -> String {
    let epoch = at.epoch_text();
    format!(
        r#"{{"op":"gap","topic":"{topic}","epoch":"{epoch}","offset":{}}}"#,
        at.offset
    )
}

impl Draft {
    /// A draft of `data` for `topic`, published on `origin` as `id`.
    pub fn new(id: MessageId, topic: Topic, data: Bytes, origin: NodeId) -> Self {
        Self {
            id,
            topic,
            data,
            origin,
            key: None,
            trace: None,
        }
    }

    /// Attaches the trace context of the publish, when tracing is on.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace.map(Box::new);
        self
    }

    /// Attaches the publisher's idempotency key.
    pub fn with_key(mut self, key: Option<Arc<str>>) -> Self {
        self.key = key;
        self
    }
}

/// A message for tests: `data` on `topic` at `offset` of one fixed epoch.
#[cfg(test)]
pub fn sample(topic: &str, offset: u64, data: &str) -> Arc<Message> {
    let node = NodeId(7);
    let id = IdGenerator::new(node).next_id();
    let topic = Topic::new(topic).expect("valid topic");
    let draft = Draft::new(id, topic, Bytes::from(data.to_owned()), node);
    let stamp = Stamp {
        epoch: Epoch(1 << EPOCH_TOPIC_BITS),
        offset,
        sequencer: node,
    };
    Arc::new(Message::new(draft, stamp))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn compaction_drops_whitespace_between_tokens_only() {
        let input = b" {\n \"a b\" : [ 1 , 2.50 ,\t\"x \\\" y\\n\" ] ,\r\n \"k\":null } ";
        assert_eq!(
            compact_json(input).as_deref(),
            Ok(r#"{"a b":[1,2.50,"x \" y\n"],"k":null}"#)
        );
    }

    #[test]
    fn compaction_keeps_key_order_and_number_spelling() {
        let input = br#"{"z":1,"a":123456789012345678901234567890,"m":1e3}"#;
        assert_eq!(
            compact_json(input).as_deref(),
            Ok(r#"{"z":1,"a":123456789012345678901234567890,"m":1e3}"#)
        );
    }

    #[test]
    fn compaction_keeps_escaped_backslash_before_quote() {
        assert_eq!(
            compact_json(br#"["a\\", 1]"#).as_deref(),
            Ok(r#"["a\\",1]"#)
        );
    }

    #[test]
    fn scalars_are_documents_too() {
        assert_eq!(compact_json(b" 42 ").as_deref(), Ok("42"));
        assert_eq!(compact_json(br#""hi""#).as_deref(), Ok(r#""hi""#));
    }

    #[test]
    fn refuses_empty_non_utf8_and_non_json() {
        assert_eq!(compact_json(b""), Err(DataError::Empty));
        assert!(matches!(compact_json(b"\xff"), Err(DataError::NotUtf8(_))));
        assert!(matches!(compact_json(b"{"), Err(DataError::NotJson(_))));
        assert!(matches!(compact_json(b"hello"), Err(DataError::NotJson(_))));
        assert!(matches!(compact_json(b"1 2"), Err(DataError::NotJson(_))));
        assert!(matches!(compact_json(b"   "), Err(DataError::NotJson(_))));
    }

    #[test]
    fn frame_is_the_protocol_v1_message_object() {
        let msg = sample("room:1", 42, r#"{"k":1}"#);
        let value: serde_json::Value = serde_json::from_str(msg.frame()).expect("frame is JSON");
        assert_eq!(
            value,
            serde_json::json!({"op":"message","topic":"room:1","id":msg.id().to_string(),
                "offset":42,"epoch":msg.stamp().epoch.to_string(),"data":{"k":1}})
        );
    }

    #[test]
    fn ids_are_unique_ordered_and_round_trip_as_ulids() {
        let ids = IdGenerator::new(NodeId::random());
        let a = ids.next_id();
        let b = ids.next_id();
        assert!(a < b);
        assert_eq!(a.to_string().len(), 26);
        assert_eq!(a.to_string().parse::<MessageId>().ok(), Some(a));
    }

    #[test]
    fn epochs_round_trip_as_ten_characters_and_reject_anything_else() {
        let topic = Topic::new("room:1").expect("valid");
        for _ in 0..100 {
            let epoch = Epoch::new_for(&topic);
            assert!(epoch.belongs_to(&topic));
            assert!(!epoch.belongs_to(&Topic::new("room:2").expect("valid")));
            let text = epoch.to_string();
            assert_eq!(text.len(), 10);
            assert_eq!(text.parse::<Epoch>(), Ok(epoch));
        }
        assert_eq!(
            "0000000000".parse::<Epoch>(),
            Err(BadEpoch),
            "zero is no epoch"
        );
        assert_eq!("abc".parse::<Epoch>(), Err(BadEpoch));
        assert_eq!("0000000o01".parse::<Epoch>(), Err(BadEpoch));
        assert_eq!("ABCDEFGHJK".parse::<Epoch>(), Err(BadEpoch));
    }

    #[test]
    fn ids_of_different_nodes_differ() {
        let a = IdGenerator::new(NodeId(1)).next_id();
        let b = IdGenerator::new(NodeId(2)).next_id();
        assert_ne!(a, b);
    }
}
