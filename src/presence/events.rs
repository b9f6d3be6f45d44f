//! `join`, `leave` and `presence_reset` for the connections that asked for
//! them (`subscribe` with `"join_leave": true`), and the limit on how many
//! a topic sends.
//!
//! Each flush, a topic's net changes go to its listeners in one queue item
//! (the events one per line), without the listener's own connection. A
//! topic with more than [`MAX_EVENTS`] changes in one flush sends one
//! `presence_reset` instead and then stays *quiet* for [`RESET_QUIET`]:
//! changes meanwhile are folded into one more `presence_reset` at its end.
//! A listener whose queue has no room for an item is owed a
//! `presence_reset` of the topic instead, offered again every flush until
//! it fits; events of the topic skip it meanwhile. So a listener either
//! sees every net change or is told to ask again, never a wrong picture.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use serde::Serialize;
use serde_json::value::RawValue;

use super::table::{Conn, Entry, Event};
use crate::hub::{Outgoing, Pending, Sender, SessionId};
use crate::message::NodeId;
use crate::topic::Topic;

/// Most events one topic sends per flush; more become a `presence_reset`.
pub const MAX_EVENTS: usize = 20;

/// How long a topic that sent a `presence_reset` for too many changes
/// sends no events: changes meanwhile become one more reset at its end.
pub const RESET_QUIET: Duration = Duration::from_secs(1);

/// One entry as clients read it, in replies and events.
#[derive(Serialize)]
pub struct EntryView<'a> {
    /// The connection id.
    pub conn: String,
    /// The user, `null` without authentication.
    pub sub: Option<&'a str>,
    /// The node id of the pod holding the connection.
    pub node: String,
    /// The user's `info`, when their token has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub info: Option<&'a RawValue>,
}

impl<'a> EntryView<'a> {
    /// The view of `entry` of `conn`.
    pub fn of(conn: Conn, entry: &'a Entry) -> Self {
        Self {
            conn: conn.to_string(),
            sub: entry.sub.as_deref(),
            node: conn.node.to_string(),
            info: entry
                .info
                .as_deref()
                .and_then(|info| serde_json::from_str(info).ok()),
        }
    }
}

#[derive(Serialize)]
struct EventFrame<'a> {
    op: &'static str,
    topic: &'a str,
    conn: String,
    sub: Option<&'a str>,
    node: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    info: Option<&'a RawValue>,
}

/// `{"op":"join"|"leave","topic":T,"conn":C,"sub":S,"node":N,"info":I}`.
fn event_frame(topic: &Topic, event: &Event) -> String {
    let (op, conn, entry) = match event {
        Event::Join(conn, entry) => ("join", *conn, entry),
        Event::Leave(conn, entry) => ("leave", *conn, entry),
    };
    let view = EntryView::of(conn, entry);
    let frame = EventFrame {
        op,
        topic: topic.as_str(),
        conn: view.conn,
        sub: view.sub,
        node: view.node,
        info: view.info,
    };
    // Strings, numbers and JSON already checked: it cannot fail.
    serde_json::to_string(&frame).unwrap_or_default()
}

/// `{"op":"presence_reset","topic":T}`: the picture the client holds of
/// the topic may be wrong; ask `presence` again.
pub fn reset_frame(topic: &Topic) -> String {
    serde_json::json!({"op": "presence_reset", "topic": topic.as_str()}).to_string()
}

/// The connections listening for a topic's events, and what is owed to
/// them.
#[derive(Default)]
pub struct Listeners {
    by_topic: HashMap<Topic, HashMap<SessionId, Sender>>,
    /// Listeners owed a `presence_reset` of a topic.
    owed: HashSet<(SessionId, Topic)>,
    /// Topics quiet after a reset: until when, and whether anything
    /// changed meanwhile.
    quiet: HashMap<Topic, (Instant, bool)>,
}

impl Listeners {
    /// `session` listens to `topic`'s events (`listen`) or not.
    pub fn set(&mut self, topic: &Topic, session: &Sender, listen: bool) {
        if listen {
            self.by_topic
                .entry(topic.clone())
                .or_default()
                .insert(session.id(), session.clone());
        } else {
            self.remove(topic, session.id());
        }
    }

    /// `session` no longer listens to `topic`.
    pub fn remove(&mut self, topic: &Topic, session: SessionId) {
        if let Some(listeners) = self.by_topic.get_mut(topic) {
            listeners.remove(&session);
            if listeners.is_empty() {
                self.by_topic.remove(topic);
                self.quiet.remove(topic);
            }
        }
        self.owed.remove(&(session, topic.clone()));
    }

    /// Offers this flush's frames at `now`: resets owed, resets of quiet
    /// topics that changed, then each topic's `changes` (made on `node`).
    pub fn deliver(
        &mut self,
        node: NodeId,
        changes: &[(Topic, Vec<Event>)],
        now: Instant,
        pending: &mut Pending,
    ) {
        let owed: Vec<(SessionId, Topic)> = self.owed.drain().collect();
        for (session, topic) in owed {
            if let Some(sender) = self.by_topic.get(&topic).and_then(|l| l.get(&session)) {
                let sender = sender.clone();
                self.offer(
                    &sender,
                    &topic,
                    &Outgoing::text(reset_frame(&topic)),
                    pending,
                );
            }
        }
        let ended: Vec<Topic> = self
            .quiet
            .iter()
            .filter(|(_, (until, _))| now >= *until)
            .map(|(topic, _)| topic.clone())
            .collect();
        for topic in ended {
            if let Some((_, true)) = self.quiet.remove(&topic) {
                self.reset(&topic, now, pending);
            }
        }
        for (topic, events) in changes {
            if !self.by_topic.contains_key(topic) {
                continue;
            }
            if let Some((_, changed)) = self.quiet.get_mut(topic) {
                *changed = true;
                continue;
            }
            if events.len() > MAX_EVENTS {
                self.reset(topic, now, pending);
                continue;
            }
            self.events(node, topic, events, pending);
        }
    }

    /// Tells every listener of `topic` to ask again, and quiets it.
    fn reset(&mut self, topic: &Topic, now: Instant, pending: &mut Pending) {
        self.quiet.insert(topic.clone(), (now + RESET_QUIET, false));
        let listeners: Vec<Sender> = self
            .by_topic
            .get(topic)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        let reset = Outgoing::text(reset_frame(topic));
        for sender in listeners {
            self.offer(&sender, topic, &reset, pending);
        }
    }

    /// `events` of `topic` to each of its listeners, but for the
    /// listener's own connection.
    fn events(&mut self, node: NodeId, topic: &Topic, events: &[Event], pending: &mut Pending) {
        let frames: Vec<String> = events.iter().map(|e| event_frame(topic, e)).collect();
        // One frame shared by every listener not named in it.
        let all = Outgoing::text(frames.join("\n"));
        let listeners: Vec<Sender> = self
            .by_topic
            .get(topic)
            .map(|l| l.values().cloned().collect())
            .unwrap_or_default();
        for sender in listeners {
            if self.owed.contains(&(sender.id(), topic.clone())) {
                continue;
            }
            let own = Conn {
                node,
                session: sender.id(),
            };
            let frame = match events.iter().position(|e| e.conn() == own) {
                None => all.clone(),
                Some(at) => {
                    let others: Vec<&str> = frames
                        .iter()
                        .enumerate()
                        .filter(|(i, _)| *i != at)
                        .map(|(_, f)| f.as_str())
                        .collect();
                    if others.is_empty() {
                        continue;
                    }
                    Outgoing::text(others.join("\n"))
                }
            };
            self.offer(&sender, topic, &frame, pending);
        }
    }

    /// Offers `frame` to `sender` if it has room, else owes it a reset.
    fn offer(&mut self, sender: &Sender, topic: &Topic, frame: &Outgoing, pending: &mut Pending) {
        match sender.offer_spare(topic, frame) {
            Some(offer) => pending.record_own(sender, offer),
            None => {
                self.owed.insert((sender.id(), topic.clone()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::Hub;

    fn topic() -> Topic {
        Topic::new("room:1").expect("valid")
    }

    fn join(node: NodeId, session: SessionId, sub: &str) -> Event {
        Event::Join(
            Conn { node, session },
            Entry {
                sub: Some(sub.into()),
                info: Some(r#"{"name":"A"}"#.into()),
            },
        )
    }

    fn lines(mailbox: &mut crate::hub::Mailbox) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| mailbox.try_recv())
            .flat_map(|item| {
                item.frame()
                    .as_str()
                    .split('\n')
                    .map(|l| serde_json::from_str(l).expect("JSON"))
                    .collect::<Vec<_>>()
            })
            .collect()
    }

    #[test]
    fn a_listener_hears_others_but_not_itself() {
        let hub = Hub::new();
        let node = NodeId::random();
        let (me, mut my_box) = hub.join(8, 8);
        let mut listeners = Listeners::default();
        let sender = me.sender().clone();
        listeners.set(&topic(), &sender, true);
        let changes = vec![(
            topic(),
            vec![join(node, sender.id(), "me"), join(node, 99, "you")],
        )];
        let mut pending = Pending::default();
        listeners.deliver(node, &changes, Instant::now(), &mut pending);
        let got = lines(&mut my_box);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["op"], "join");
        assert_eq!(got[0]["sub"], "you");
        assert_eq!(got[0]["info"]["name"], "A");
        assert_eq!(got[0]["conn"], format!("{node}-63"));
    }

    #[test]
    fn too_many_changes_become_one_reset_and_a_quiet_second() {
        let hub = Hub::new();
        let node = NodeId::random();
        let (me, mut my_box) = hub.join(64, 8);
        let sender = me.sender().clone();
        let mut listeners = Listeners::default();
        listeners.set(&topic(), &sender, true);
        let many: Vec<Event> = (0..=MAX_EVENTS as u64)
            .map(|s| join(node, 1000 + s, "x"))
            .collect();
        let now = Instant::now();
        let mut pending = Pending::default();
        listeners.deliver(node, &[(topic(), many.clone())], now, &mut pending);
        listeners.deliver(node, &[(topic(), many[..1].to_vec())], now, &mut pending);
        let got = lines(&mut my_box);
        assert_eq!(got.len(), 1, "{got:?}");
        assert_eq!(got[0]["op"], "presence_reset");
        listeners.deliver(node, &[], now + RESET_QUIET, &mut pending);
        assert_eq!(
            lines(&mut my_box)[0]["op"],
            "presence_reset",
            "changed while quiet"
        );
        listeners.deliver(node, &[], now + 3 * RESET_QUIET, &mut pending);
        listeners.deliver(
            node,
            &[(topic(), many[..1].to_vec())],
            now + 3 * RESET_QUIET,
            &mut pending,
        );
        assert_eq!(lines(&mut my_box)[0]["op"], "join", "events again");
    }

    #[test]
    fn a_listener_without_room_is_owed_a_reset_instead_of_events() {
        let hub = Hub::new();
        let node = NodeId::random();
        let (me, mut my_box) = hub.join(1, 8);
        let sender = me.sender().clone();
        let mut listeners = Listeners::default();
        listeners.set(&topic(), &sender, true);
        let mut pending = Pending::default();
        for s in 0..3 {
            listeners.deliver(
                node,
                &[(topic(), vec![join(node, 100 + s, "x")])],
                Instant::now(),
                &mut pending,
            );
        }
        assert_eq!(
            lines(&mut my_box).len(),
            1,
            "the first fit; the rest did not"
        );
        listeners.deliver(node, &[], Instant::now(), &mut pending);
        let got = lines(&mut my_box);
        assert_eq!(got.len(), 1);
        assert_eq!(got[0]["op"], "presence_reset");
        assert!(!my_box.is_slow(), "never marked slow for events");
    }
}
