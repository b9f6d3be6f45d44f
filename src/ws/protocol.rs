//! WebSocket protocol v1 (`docs/protocol.md`): parsing what clients send and
//! encoding the replies. Message frames are encoded once per message by
//! [`Message`](crate::message::Message), not here.
//!
//! A text frame holds one or more JSON objects separated by `\n`, in both
//! directions. Each client object is a request with an `op` and an optional
//! `ref` that the reply echoes verbatim.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::hub::Options;
use crate::message::{Message, Position};
use crate::presence::{self, Conn, EntryView};
use crate::topic::Topic;

/// The stable error codes of protocol v1. Clients branch on these strings;
/// never rename one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// The line is not a JSON object.
    InvalidJson,
    /// A required field (`op`, `topic`) is missing or has the wrong type.
    MissingField,
    /// `op` names no operation of this protocol.
    UnknownOp,
    /// The topic name is not valid.
    InvalidTopic,
    /// A binary frame: protocol v1 is JSON text only.
    UnsupportedFrame,
    /// The connection already holds the most subscriptions allowed.
    TooManySubscriptions,
    /// The user's token does not allow this topic (or client publish is
    /// off).
    Forbidden,
    /// The connection publishes faster than allowed.
    RateLimited,
    /// A client publish whose `data` is missing, too large or not valid.
    InvalidData,
    /// A `since` that is malformed, past the topic's last offset, or of
    /// another topic.
    InvalidPosition,
    /// A `history` `limit` that is not a whole number from 1 to 1,000.
    InvalidLimit,
    /// The topic's sequencer did not confirm a client publish in time: it
    /// may or may not have been published.
    Unavailable,
    /// A `refresh` whose token is not valid (the message says why), is for
    /// another user, or is sent to a server without token auth.
    InvalidToken,
    /// `presence` or `presence_stats` (or `subscribe` with `join_leave`)
    /// on a topic that keeps no presence (`--presence-topics`).
    PresenceDisabled,
    /// A `presence` `cursor` that no `presence` reply gave.
    InvalidCursor,
}

/// Most messages one `history` request may ask for.
pub const MAX_HISTORY_LIMIT: usize = 1_000;

/// Messages a `history` request without `limit` gets.
pub const DEFAULT_HISTORY_LIMIT: usize = 100;

/// A request the session understood.
#[derive(Debug)]
pub enum Op<'a> {
    /// Start receiving messages published to the topic, after `since` if
    /// given, and its presence events if asked.
    Subscribe(Topic, Option<Position>, Options),
    /// Ask who is in the topic: a page of entries after `cursor`.
    Presence {
        /// The topic.
        topic: Topic,
        /// Most entries.
        limit: usize,
        /// The entries after this one (the last of the previous page).
        cursor: Option<Conn>,
    },
    /// Ask how many connections and users are in the topic.
    PresenceStats(Topic),
    /// Ask for the topic's kept messages.
    History {
        /// The topic.
        topic: Topic,
        /// Most messages.
        limit: usize,
        /// The messages after this position instead of the last ones.
        since: Option<Position>,
    },
    /// Stop receiving messages published to the topic.
    Unsubscribe(Topic),
    /// Ask for a `pong` (an application-level liveness check).
    Ping,
    /// Publish `data` to the topic, as a backend would (when allowed).
    Publish {
        /// Where to publish.
        topic: Topic,
        /// The JSON value to publish, as the client wrote it.
        data: &'a RawValue,
    },
    /// Replace the connection's token with a fresh one before it expires.
    Refresh(Cow<'a, str>),
}

/// A request that could not be understood, with what to reply.
#[derive(Debug)]
pub struct Rejection<'a> {
    /// The request's `ref`, when it could be read.
    pub reference: Option<&'a RawValue>,
    /// The stable error code.
    pub code: ErrorCode,
    /// A human-readable explanation.
    pub message: String,
}

/// One parsed request and its `ref`.
#[derive(Debug)]
pub struct Request<'a> {
    /// The `ref` to echo, verbatim.
    pub reference: Option<&'a RawValue>,
    /// What the client asks for.
    pub op: Op<'a>,
}

// NB: the fields whose type a client may get wrong are read as raw JSON
// first, so a request with a field of the wrong type still has its `ref`
// echoed in the error reply.
#[derive(Deserialize)]
struct RawRequest<'a> {
    #[serde(borrow)]
    op: Option<&'a RawValue>,
    #[serde(borrow)]
    topic: Option<&'a RawValue>,
    #[serde(borrow)]
    token: Option<&'a RawValue>,
    #[serde(rename = "ref", borrow)]
    reference: Option<&'a RawValue>,
    #[serde(borrow)]
    data: Option<&'a RawValue>,
    #[serde(borrow)]
    since: Option<&'a RawValue>,
    #[serde(borrow)]
    limit: Option<&'a RawValue>,
    #[serde(borrow)]
    join_leave: Option<&'a RawValue>,
    #[serde(borrow)]
    cursor: Option<&'a RawValue>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPosition<'a> {
    #[serde(borrow)]
    epoch: Cow<'a, str>,
    offset: u64,
}

/// Reads `since`: `{"epoch":E,"offset":N}`, `E` an epoch or `""` with
/// `N` 0 ("from the start").
fn position(raw: &RawValue) -> Result<Position, String> {
    let malformed =
        |why: &str| format!("`since` must be {{\"epoch\": string, \"offset\": integer}}: {why}");
    let parsed: RawPosition<'_> =
        serde_json::from_str(raw.get()).map_err(|e| malformed(&e.to_string()))?;
    Position::parse(&parsed.epoch, parsed.offset).map_err(|e| malformed(&e.to_string()))
}

/// Splits a client text frame into its non-empty lines.
pub fn lines(frame: &str) -> impl Iterator<Item = &str> {
    frame
        .split('\n')
        .map(|line| line.trim_end_matches('\r'))
        .filter(|line| !line.trim().is_empty())
}

/// Parses one line of a client frame.
pub fn parse(line: &str) -> Result<Request<'_>, Rejection<'_>> {
    let raw: RawRequest<'_> = serde_json::from_str(line).map_err(|e| Rejection {
        reference: None,
        code: if e.is_data() {
            ErrorCode::MissingField
        } else {
            ErrorCode::InvalidJson
        },
        message: describe_json_error(&e),
    })?;
    let reference = raw.reference;
    let reject = |code, message: String| Rejection {
        reference,
        code,
        message,
    };
    let string =
        |field: Option<&'_ RawValue>, name: &str| -> Result<Option<Cow<'_, str>>, Rejection<'_>> {
            field
                .map(|value| serde_json::from_str::<Cow<'_, str>>(value.get()))
                .transpose()
                .map_err(|_| {
                    reject(
                        ErrorCode::MissingField,
                        format!("`{name}` must be a string"),
                    )
                })
        };
    let topic = || -> Result<Topic, Rejection<'_>> {
        let name = string(raw.topic, "topic")?
            .ok_or_else(|| reject(ErrorCode::MissingField, "`topic` is required".into()))?;
        Topic::new(&name).map_err(|e| reject(ErrorCode::InvalidTopic, e.to_string()))
    };
    let since = || -> Result<Option<Position>, Rejection<'_>> {
        raw.since
            .map(position)
            .transpose()
            .map_err(|message| reject(ErrorCode::InvalidPosition, message))
    };
    let limit = |default: usize, max: usize| -> Result<usize, Rejection<'_>> {
        match raw.limit {
            None => Ok(default),
            Some(limit) => match limit.get().parse::<usize>() {
                Ok(n) if (1..=max).contains(&n) => Ok(n),
                _ => {
                    let message = format!(
                        "`limit` must be a whole number from 1 to {max}, not {}",
                        limit.get()
                    );
                    Err(reject(ErrorCode::InvalidLimit, message))
                }
            },
        }
    };
    let op = string(raw.op, "op")?;
    let op = match op.as_deref() {
        Some("subscribe") => {
            let join_leave = match raw.join_leave.map(|v| v.get()) {
                None | Some("false") => false,
                Some("true") => true,
                Some(_) => {
                    let message = "`join_leave` must be true or false".into();
                    return Err(reject(ErrorCode::MissingField, message));
                }
            };
            Op::Subscribe(topic()?, since()?, Options { join_leave })
        }
        Some("history") => Op::History {
            topic: topic()?,
            limit: limit(DEFAULT_HISTORY_LIMIT, MAX_HISTORY_LIMIT)?,
            since: since()?,
        },
        Some("presence") => {
            let topic = topic()?;
            let limit = limit(presence::DEFAULT_PAGE, presence::MAX_PAGE)?;
            let cursor = string(raw.cursor, "cursor")?
                .map(|cursor| cursor.parse::<Conn>())
                .transpose()
                .map_err(|_| {
                    let message = "`cursor` must be one a `presence` reply gave".into();
                    reject(ErrorCode::InvalidCursor, message)
                })?;
            Op::Presence {
                topic,
                limit,
                cursor,
            }
        }
        Some("presence_stats") => Op::PresenceStats(topic()?),
        Some("unsubscribe") => Op::Unsubscribe(topic()?),
        Some("ping") => Op::Ping,
        Some("publish") => {
            let topic = topic()?;
            let data = raw
                .data
                .ok_or_else(|| reject(ErrorCode::MissingField, "`data` is required".into()))?;
            Op::Publish { topic, data }
        }
        Some("refresh") => Op::Refresh(
            string(raw.token, "token")?
                .ok_or_else(|| reject(ErrorCode::MissingField, "`token` is required".into()))?,
        ),
        Some(other) => {
            return Err(reject(
                ErrorCode::UnknownOp,
                format!(
                    "unknown op {other:?}; expected subscribe, unsubscribe, history, presence, presence_stats, publish, refresh or ping"
                ),
            ));
        }
        None => return Err(reject(ErrorCode::MissingField, "`op` is required".into())),
    };
    Ok(Request { reference, op })
}

fn describe_json_error(e: &serde_json::Error) -> String {
    if e.is_data() {
        // A well-formed value of the wrong shape: say which field.
        format!("request has a field of the wrong type: {e}")
    } else if e.is_eof() {
        format!("request is truncated JSON: {e}")
    } else {
        format!("request is not a JSON object: {e}")
    }
}

#[derive(Serialize)]
struct Reply<'a> {
    op: &'static str,
    #[serde(rename = "ref", skip_serializing_if = "Option::is_none")]
    reference: Option<&'a RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    ok: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    epoch: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    offset: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    recovered: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    messages: Option<Vec<&'a RawValue>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<ReplyError<'a>>,
    /// When the connection's token expires (Unix seconds).
    #[serde(skip_serializing_if = "Option::is_none")]
    exp: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    entries: Option<Vec<EntryView<'a>>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    cursor: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    connections: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    users: Option<u64>,
}

impl<'a> Reply<'a> {
    fn new(op: &'static str, reference: Option<&'a RawValue>) -> Self {
        Self {
            op,
            reference,
            ok: None,
            id: None,
            epoch: None,
            offset: None,
            recovered: None,
            messages: None,
            error: None,
            exp: None,
            entries: None,
            cursor: None,
            connections: None,
            users: None,
        }
    }

    fn ok(reference: Option<&'a RawValue>) -> Self {
        Self {
            ok: Some(true),
            ..Self::new("reply", reference)
        }
    }

    fn at(self, position: Position) -> Self {
        Self {
            epoch: Some(position.epoch_text()),
            offset: Some(position.offset),
            ..self
        }
    }
}

#[derive(Serialize)]
struct ReplyError<'a> {
    code: ErrorCode,
    message: &'a str,
}

fn encode(reply: &Reply<'_>) -> String {
    // Serializing these plain structs cannot fail: every field is a string,
    // bool or already-valid raw JSON.
    serde_json::to_string(reply).unwrap_or_default()
}

/// `{"op":"reply","ref":R,"ok":true}`.
pub fn ok(reference: Option<&RawValue>) -> String {
    encode(&Reply::ok(reference))
}

/// `{"op":"reply","ref":R,"ok":false,"error":{"code":C,"message":M}}`.
pub fn error(reference: Option<&RawValue>, code: ErrorCode, message: &str) -> String {
    encode(&Reply {
        ok: Some(false),
        error: Some(ReplyError { code, message }),
        ..Reply::new("reply", reference)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"id":I,"offset":N,"epoch":E}`: a client
/// publish was accepted as message `I` at offset `N` of epoch `E`.
pub fn published(reference: Option<&RawValue>, id: &str, at: Position) -> String {
    encode(&Reply {
        id: Some(id),
        ..Reply::ok(reference).at(at)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"epoch":E,"offset":N}` and, for a
/// `subscribe` with `since`, `"recovered":true|false`.
pub fn subscribed(reference: Option<&RawValue>, head: Position, recovered: Option<bool>) -> String {
    encode(&Reply {
        recovered,
        ..Reply::ok(reference).at(head)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"epoch":E,"offset":N,"messages":[…]}`
/// (and `recovered` with `since`): each message as the object a
/// subscriber receives.
pub fn history(
    reference: Option<&RawValue>,
    head: Position,
    messages: &[std::sync::Arc<Message>],
    recovered: Option<bool>,
) -> String {
    let frames = messages
        .iter()
        .filter_map(|m| serde_json::from_str::<&RawValue>(m.frame().as_str()).ok())
        .collect();
    encode(&Reply {
        recovered,
        messages: Some(frames),
        ..Reply::ok(reference).at(head)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"exp":T}`: the connection's token was
/// replaced by one that expires at `T` (Unix seconds).
pub fn refreshed(reference: Option<&RawValue>, exp: u64) -> String {
    encode(&Reply {
        exp: Some(exp),
        ..Reply::ok(reference)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"entries":[{"conn":C,"sub":S,"node":N,"info":I},…],"cursor":K}`:
/// a page of a topic's presence; `cursor` (only when more follow) asks for
/// the next.
pub fn presence(
    reference: Option<&RawValue>,
    entries: &[(Conn, presence::Entry)],
    cursor: Option<Conn>,
) -> String {
    encode(&Reply {
        entries: Some(
            entries
                .iter()
                .map(|(conn, entry)| EntryView::of(*conn, entry))
                .collect(),
        ),
        cursor: cursor.map(|c| c.to_string()),
        ..Reply::ok(reference)
    })
}

/// `{"op":"reply","ref":R,"ok":true,"connections":N,"users":M}`.
pub fn presence_stats(reference: Option<&RawValue>, stats: presence::Stats) -> String {
    encode(&Reply {
        connections: Some(stats.connections),
        users: Some(stats.users),
        ..Reply::ok(reference)
    })
}

/// `{"op":"expiring","exp":T}`: the connection's token expires at `T` (Unix
/// seconds) and the connection closes then (code 4001) unless the client
/// sends a `refresh` first.
pub fn expiring(exp: u64) -> String {
    encode(&Reply {
        exp: Some(exp),
        ..Reply::new("expiring", None)
    })
}

/// `{"op":"unsubscribed","topic":T,"reason":"forbidden"}`: a refreshed token
/// no longer allows `topic`, so the connection no longer receives it.
pub fn unsubscribed(topic: &Topic) -> String {
    serde_json::json!({"op": "unsubscribed", "topic": topic.as_str(), "reason": "forbidden"})
        .to_string()
}

/// `{"op":"pong","ref":R}`.
pub fn pong(reference: Option<&RawValue>) -> String {
    encode(&Reply::new("pong", reference))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn code_of(line: &str) -> ErrorCode {
        parse(line).expect_err("should be rejected").code
    }

    #[test]
    fn parses_the_three_operations() {
        let sub = parse(r#"{"op":"subscribe","topic":"room:1","ref":"1"}"#).expect("valid");
        assert!(
            matches!(sub.op, Op::Subscribe(t, None, o) if t.as_str() == "room:1" && !o.join_leave)
        );
        assert_eq!(sub.reference.map(RawValue::get), Some(r#""1""#));
        let unsub = parse(r#"{"op":"unsubscribe","topic":"room:1"}"#).expect("valid");
        assert!(matches!(unsub.op, Op::Unsubscribe(t) if t.as_str() == "room:1"));
        assert!(unsub.reference.is_none());
        assert!(matches!(
            parse(r#"{"op":"ping","ref":3}"#).expect("valid").op,
            Op::Ping
        ));
        let publish = parse(r#"{"op":"publish","topic":"t","data":{"a": [1, 2]}}"#).expect("valid");
        assert!(
            matches!(publish.op, Op::Publish { topic, data } if topic.as_str() == "t" && data.get() == r#"{"a": [1, 2]}"#)
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_refused_with_the_ref_kept() {
        for line in [
            r#"{"op":"subscribe","topic":7,"ref":"a"}"#,
            r#"{"op":["subscribe"],"topic":"t","ref":"a"}"#,
            r#"{"op":"refresh","token":false,"ref":"a"}"#,
        ] {
            let rejected = parse(line).expect_err("wrong type");
            assert_eq!(rejected.code, ErrorCode::MissingField, "{line}");
            assert_eq!(
                rejected.reference.map(RawValue::get),
                Some(r#""a""#),
                "{line}"
            );
            assert!(
                rejected.message.contains("must be a string"),
                "{}",
                rejected.message
            );
        }
        let refresh = parse(r#"{"op":"refresh","token":"a.b.c"}"#).expect("valid");
        assert!(matches!(refresh.op, Op::Refresh(token) if token == "a.b.c"));
    }

    #[test]
    fn parses_since_and_history() {
        let epoch = crate::message::Epoch::new_for(&Topic::new("t").expect("valid"));
        let line =
            format!(r#"{{"op":"subscribe","topic":"t","since":{{"epoch":"{epoch}","offset":7}}}}"#);
        let sub = parse(&line).expect("valid");
        assert!(matches!(sub.op, Op::Subscribe(_, Some(p), _) if p == Position::at(epoch, 7)));
        let start = parse(r#"{"op":"subscribe","topic":"t","since":{"epoch":"","offset":0}}"#)
            .expect("valid");
        assert!(matches!(start.op, Op::Subscribe(_, Some(p), _) if p == Position::default()));
        let history = parse(r#"{"op":"history","topic":"t","limit":5}"#).expect("valid");
        assert!(matches!(
            history.op,
            Op::History {
                limit: 5,
                since: None,
                ..
            }
        ));
        let default = parse(r#"{"op":"history","topic":"t"}"#).expect("valid");
        assert!(matches!(
            default.op,
            Op::History {
                limit: DEFAULT_HISTORY_LIMIT,
                ..
            }
        ));
    }

    #[test]
    fn a_bad_since_or_limit_gets_its_code_and_keeps_the_ref() {
        for since in [
            r#""x""#,
            r#"{"epoch":"zz","offset":1}"#,
            r#"{"epoch":"0000000000","offset":1}"#,
            r#"{"epoch":"","offset":-1}"#,
            r#"{"epoch":"","offset":1.5}"#,
            r#"{"offset":1}"#,
            r#"{"epoch":"","offset":0,"extra":1}"#,
        ] {
            let line = format!(r#"{{"op":"subscribe","topic":"t","ref":9,"since":{since}}}"#);
            let rejection = parse(&line).expect_err(since);
            assert_eq!(rejection.code, ErrorCode::InvalidPosition, "{since}");
            assert_eq!(rejection.reference.map(RawValue::get), Some("9"));
        }
        for limit in [
            "0",
            "1001",
            "-1",
            "2.5",
            r#""10""#,
            "100000000000000000000000",
        ] {
            let line = format!(r#"{{"op":"history","topic":"t","ref":9,"limit":{limit}}}"#);
            assert_eq!(code_of(&line), ErrorCode::InvalidLimit, "{limit}");
        }
    }

    #[test]
    fn parses_presence_requests_and_join_leave() {
        let sub = parse(r#"{"op":"subscribe","topic":"t","join_leave":true}"#).expect("valid");
        assert!(matches!(sub.op, Op::Subscribe(_, None, o) if o.join_leave));
        let page =
            parse(r#"{"op":"presence","topic":"t","limit":5,"cursor":"ab-1"}"#).expect("valid");
        assert!(matches!(
            page.op,
            Op::Presence { limit: 5, cursor: Some(c), .. } if c.session == 1
        ));
        let first = parse(r#"{"op":"presence","topic":"t"}"#).expect("valid");
        assert!(matches!(
            first.op,
            Op::Presence {
                limit: presence::DEFAULT_PAGE,
                cursor: None,
                ..
            }
        ));
        assert!(matches!(
            parse(r#"{"op":"presence_stats","topic":"t"}"#)
                .expect("valid")
                .op,
            Op::PresenceStats(_)
        ));
        assert_eq!(
            code_of(r#"{"op":"presence","topic":"t","cursor":"nope"}"#),
            ErrorCode::InvalidCursor
        );
        assert_eq!(
            code_of(r#"{"op":"presence","topic":"t","limit":1001}"#),
            ErrorCode::InvalidLimit
        );
        assert_eq!(
            code_of(r#"{"op":"subscribe","topic":"t","join_leave":1}"#),
            ErrorCode::MissingField
        );
    }

    #[test]
    fn ignores_unknown_fields_for_forward_compatibility() {
        assert!(parse(r#"{"op":"ping","future":{"x":1}}"#).is_ok());
    }

    #[test]
    fn each_bad_request_gets_its_stable_code() {
        assert_eq!(code_of("{"), ErrorCode::InvalidJson);
        assert_eq!(code_of("not json"), ErrorCode::InvalidJson);
        assert_eq!(code_of("[1,2]"), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"topic":"a"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"op":"subscribe"}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"op":5}"#), ErrorCode::MissingField);
        assert_eq!(code_of(r#"{"op":"shout"}"#), ErrorCode::UnknownOp);
        assert_eq!(
            code_of(r#"{"op":"publish","topic":"t"}"#),
            ErrorCode::MissingField
        );
        assert_eq!(
            code_of(r#"{"op":"subscribe","topic":"a b"}"#),
            ErrorCode::InvalidTopic
        );
        assert_eq!(
            code_of(r#"{"op":"subscribe","topic":""}"#),
            ErrorCode::InvalidTopic
        );
    }

    #[test]
    fn a_rejection_echoes_the_ref_when_it_could_be_read() {
        let rejection = parse(r#"{"op":"shout","ref":"7"}"#).expect_err("unknown op");
        assert_eq!(rejection.reference.map(RawValue::get), Some(r#""7""#));
    }

    #[test]
    fn replies_are_single_line_json_objects() {
        let r = RawValue::from_string(r#""1""#.into()).expect("valid raw");
        assert_eq!(ok(Some(&r)), r#"{"op":"reply","ref":"1","ok":true}"#);
        assert_eq!(pong(None), r#"{"op":"pong"}"#);
        let err = error(Some(&r), ErrorCode::InvalidTopic, "bad \"topic\"\nhere");
        assert_eq!(
            err,
            r#"{"op":"reply","ref":"1","ok":false,"error":{"code":"invalid_topic","message":"bad \"topic\"\nhere"}}"#
        );
        assert!(!err.contains('\n'));
    }

    #[test]
    fn lines_skips_blank_lines_and_carriage_returns() {
        let got: Vec<_> = lines("{\"a\":1}\r\n\n  \n{\"b\":2}").collect();
        assert_eq!(got, [r#"{"a":1}"#, r#"{"b":2}"#]);
    }
}
