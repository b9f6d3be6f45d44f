//! Messages and their ids: what a publish produces and every part passes on.
//!
//! A [`Message`] is built once, at publish time (or when it arrives from a
//! peer), and then shared behind an `Arc`: its WebSocket frame is encoded once
//! and the same bytes go to every subscriber, so fan-out does no per-subscriber
//! JSON work.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use axum::extract::ws::Utf8Bytes;
use bytes::Bytes;
use serde::de::IgnoredAny;

use crate::topic::Topic;

/// The identity of one herald process, random at every start. It tells peers
/// apart (a restarted pod with the same IP is a new node) and lets a pod
/// recognise a stream to itself.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct NodeId(u64);

impl NodeId {
    /// A fresh random node id.
    pub fn random() -> Self {
        Self(rand::random())
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

/// One published message, shared by every part that handles it.
#[derive(Debug)]
pub struct Message {
    id: MessageId,
    topic: Topic,
    data: Bytes,
    origin: NodeId,
    frame: Utf8Bytes,
    received: Instant,
    trace: Option<Box<TraceContext>>,
}

impl Message {
    /// Builds a message from a compacted JSON document (see
    /// [`compact_json`]) and encodes its protocol v1 frame:
    /// `{"op":"message","topic":T,"id":I,"data":D}`.
    pub fn new(id: MessageId, topic: Topic, data: Bytes, origin: NodeId) -> Self {
        // Compacted JSON is UTF-8 (see `compact_json`), so this is lossless.
        let data_text = String::from_utf8_lossy(&data);
        let id_text = id.to_string();
        let mut frame =
            String::with_capacity(48 + topic.as_str().len() + id_text.len() + data_text.len());
        frame.push_str(r#"{"op":"message","topic":""#);
        // Topic characters need no JSON escaping (see `Topic`).
        frame.push_str(topic.as_str());
        frame.push_str(r#"","id":""#);
        frame.push_str(&id_text);
        frame.push_str(r#"","data":"#);
        frame.push_str(&data_text);
        frame.push('}');
        Self {
            id,
            topic,
            data,
            origin,
            frame: Utf8Bytes::from(frame),
            received: Instant::now(),
            trace: None,
        }
    }

    /// Attaches the trace context of the publish, when tracing is on.
    pub fn with_trace(mut self, trace: Option<TraceContext>) -> Self {
        self.trace = trace.map(Box::new);
        self
    }

    /// The trace context of the publish, if it was traced.
    pub fn trace(&self) -> Option<&TraceContext> {
        self.trace.as_deref()
    }

    /// The message id.
    pub fn id(&self) -> MessageId {
        self.id
    }

    /// The topic.
    pub fn topic(&self) -> &Topic {
        &self.topic
    }

    /// The compacted JSON document.
    pub fn data(&self) -> &Bytes {
        &self.data
    }

    /// The node where the message was published.
    pub fn origin(&self) -> NodeId {
        self.origin
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
        let ids = IdGenerator::new(NodeId::random());
        let id = ids.next_id();
        let topic = Topic::new("room:1").expect("valid topic");
        let msg = Message::new(
            id,
            topic,
            Bytes::from_static(br#"{"k":1}"#),
            NodeId::random(),
        );
        let value: serde_json::Value = serde_json::from_str(msg.frame()).expect("frame is JSON");
        assert_eq!(
            value,
            serde_json::json!({"op":"message","topic":"room:1","id":id.to_string(),"data":{"k":1}})
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
    fn ids_of_different_nodes_differ() {
        let a = IdGenerator::new(NodeId(1)).next_id();
        let b = IdGenerator::new(NodeId(2)).next_id();
        assert_ne!(a, b);
    }
}
