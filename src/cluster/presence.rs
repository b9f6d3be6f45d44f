//! The cluster's side of presence: this pod's deltas out to every peer on
//! the peer streams, its whole state first on every new stream, and the
//! peers' frames checked and handed to [`Presence`].
//!
//! A delta that finds a peer's queue full is dropped for that peer, and the
//! link is marked: its stream sends the whole state again on its next tick
//! (see `link`), so a peer that missed deltas heals within a second.

use std::time::Duration;

use super::wire::KEEPALIVE_INTERVAL;
use crate::hub::SessionId;
use crate::message::NodeId;
use crate::presence::{Delta, Entries, Entry, MAX_INFO_BYTES, Presence};
use crate::proto::v1::{
    PeerPresenceEntry, PeerPresenceLeft, PresenceDelta, PresenceState, peer_frame,
};
use crate::topic::Topic;

/// How long a peer's entries outlive its last stream: three keepalive
/// probe intervals. A flap (the stream breaks and the peer dials again,
/// 100 ms into its backoff) costs no churn; a pod that died with its
/// kernel up (a crash, SIGKILL: its connections are closed at once) is
/// out of every survivor's presence this long after, plus a flush.
pub const GRACE: Duration = Duration::from_secs(3 * KEEPALIVE_INTERVAL.as_secs());

/// Bytes of entries one state frame carries, about.
const STATE_PART_BYTES: usize = 256 * 1024;

/// Longest `sub` accepted from a peer: a token's whole size.
const MAX_SUB_BYTES: usize = crate::auth::MAX_TOKEN_BYTES;

fn entry(topic: &Topic, session: SessionId, entry: &Entry) -> PeerPresenceEntry {
    PeerPresenceEntry {
        topic: topic.to_string(),
        session,
        sub: entry.sub.as_deref().map(str::to_owned),
        info: entry.info.as_deref().unwrap_or_default().to_owned(),
    }
}

/// A delta as it travels.
pub fn delta_frame(delta: Delta) -> peer_frame::Kind {
    peer_frame::Kind::PresenceDelta(PresenceDelta {
        version: delta.version,
        joined: delta
            .joined
            .iter()
            .map(|(topic, session, e)| entry(topic, *session, e))
            .collect(),
        left: delta
            .left
            .iter()
            .map(|(topic, session)| PeerPresenceLeft {
                topic: topic.to_string(),
                session: *session,
            })
            .collect(),
    })
}

/// This pod's whole state as it travels: one frame or more, the first
/// marked `first` and the last `last`.
pub fn state_frames(presence: &Presence) -> Vec<peer_frame::Kind> {
    let (version, entries) = presence.state();
    let mut parts: Vec<PresenceState> = Vec::new();
    let mut part = PresenceState {
        version,
        first: true,
        ..PresenceState::default()
    };
    let mut bytes = 0;
    for (topic, session, e) in &entries {
        let one = entry(topic, *session, e);
        bytes += one.topic.len() + one.info.len() + one.sub.as_ref().map_or(0, String::len) + 16;
        part.entries.push(one);
        if bytes >= STATE_PART_BYTES {
            parts.push(std::mem::replace(
                &mut part,
                PresenceState {
                    version,
                    ..PresenceState::default()
                },
            ));
            bytes = 0;
        }
    }
    parts.push(part);
    if let Some(last) = parts.last_mut() {
        last.last = true;
    }
    parts
        .into_iter()
        .map(peer_frame::Kind::PresenceState)
        .collect()
}

/// A peer's entry, if it is one this pod keeps: a valid topic that keeps
/// presence here, a `sub` and `info` within bounds, `info` valid JSON.
fn parse(presence: &Presence, entry: PeerPresenceEntry) -> Option<(Topic, SessionId, Entry)> {
    let topic = Topic::new(&entry.topic)
        .ok()
        .filter(|t| presence.covers(t))?;
    if entry
        .sub
        .as_ref()
        .is_some_and(|sub| sub.len() > MAX_SUB_BYTES)
        || entry.info.len() > MAX_INFO_BYTES
    {
        return None;
    }
    let info = if entry.info.is_empty() {
        None
    } else {
        serde_json::from_str::<&serde_json::value::RawValue>(&entry.info).ok()?;
        Some(entry.info.into())
    };
    Some((
        topic,
        entry.session,
        Entry {
            sub: entry.sub.map(Into::into),
            info,
        },
    ))
}

fn parse_all(presence: &Presence, entries: Vec<PeerPresenceEntry>) -> Entries {
    let count = entries.len();
    let parsed: Entries = entries
        .into_iter()
        .filter_map(|e| parse(presence, e))
        .collect();
    if parsed.len() < count {
        tracing::debug!(
            dropped = count - parsed.len(),
            "ignoring presence entries from a peer this pod does not keep"
        );
    }
    parsed
}

/// A peer's delta.
pub fn take_delta(presence: &Presence, from: NodeId, delta: PresenceDelta) {
    let joined = parse_all(presence, delta.joined);
    let left = delta
        .left
        .into_iter()
        .filter_map(|left| Some((Topic::new(&left.topic).ok()?, left.session)))
        .collect();
    presence.take_delta(
        from,
        Delta {
            version: delta.version,
            joined,
            left,
        },
    );
}

/// A part of a peer's state.
pub fn take_state(presence: &Presence, from: NodeId, state: PresenceState) {
    let entries = parse_all(presence, state.entries);
    presence.take_state(from, state.version, state.first, state.last, entries);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TopicPatterns;
    use crate::presence::Settings;

    fn presence() -> Presence {
        Presence::new(Settings {
            node: NodeId::random(),
            topics: TopicPatterns::parse(&["room:*"]).expect("valid"),
            grace: GRACE,
        })
    }

    #[test]
    fn a_peers_bad_entries_are_dropped_and_the_good_ones_kept() {
        let presence = presence();
        let good = PeerPresenceEntry {
            topic: "room:1".into(),
            session: 1,
            sub: Some("42".into()),
            info: r#"{"name":"Ada"}"#.into(),
        };
        let bad = [
            PeerPresenceEntry {
                topic: "news".into(),
                ..good.clone()
            },
            PeerPresenceEntry {
                topic: "bad topic".into(),
                ..good.clone()
            },
            PeerPresenceEntry {
                info: "{not json".into(),
                ..good.clone()
            },
            PeerPresenceEntry {
                info: format!("\"{}\"", "x".repeat(MAX_INFO_BYTES)),
                ..good.clone()
            },
        ];
        let mut entries = vec![good];
        entries.extend(bad);
        let peer = NodeId::random();
        presence.peer_up(peer, "10.0.0.2:7070");
        take_state(
            &presence,
            peer,
            PresenceState {
                version: 1,
                first: true,
                last: true,
                entries,
            },
        );
        let room = Topic::new("room:1").expect("valid");
        assert_eq!(presence.stats(&room).connections, 1);
    }

    #[test]
    fn a_big_state_travels_in_parts_that_come_back_whole() {
        let sender = presence();
        let hub = crate::hub::Hub::new();
        hub.watch(std::sync::Arc::new(sender.clone()));
        let members: Vec<_> = (0..3000)
            .map(|i| {
                let (mut member, mailbox) = hub.join(1, 1);
                let topic = Topic::new(&format!("room:{:0>200}", i)).expect("valid");
                member.subscribe(topic).expect("under limit");
                (member, mailbox)
            })
            .collect();
        let frames = state_frames(&sender);
        assert!(frames.len() > 1, "{} frames", frames.len());
        let receiver = presence();
        receiver.peer_up(sender.node(), "10.0.0.2:7070");
        for frame in frames {
            let peer_frame::Kind::PresenceState(state) = frame else {
                panic!("a state");
            };
            take_state(&receiver, sender.node(), state);
        }
        let (page, _) = receiver.page(
            &Topic::new(&format!("room:{:0>200}", 7)).expect("valid"),
            None,
            10,
        );
        assert_eq!(page.len(), 1);
        drop(members);
    }
}
