//! Who is in each topic, cluster-wide, as this pod knows it: a pure
//! structure with no I/O and no clock.
//!
//! Every entry is one connection ([`Conn`]: the pod that holds it and its
//! session there) in one topic, owned by that pod. Changes are made entry
//! by entry or by replacing one owner's entries whole; the table remembers
//! what each entry changed was before the first change since it was last
//! asked, so [`take_changes`](Table::take_changes) answers with the net
//! difference: an entry that came and went in between is no event at all,
//! and an owner's state replaced by the same state is none either.

use std::collections::{BTreeMap, HashMap, HashSet, hash_map};
use std::fmt;
use std::str::FromStr;
use std::sync::Arc;

use crate::hub::SessionId;
use crate::message::NodeId;
use crate::topic::Topic;

/// One connection, cluster-wide: the pod holding it and its session there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Conn {
    /// The pod.
    pub node: NodeId,
    /// Its session on that pod.
    pub session: SessionId,
}

impl fmt::Display for Conn {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}-{:x}", self.node, self.session)
    }
}

/// A string that is not a connection id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("not a connection id")]
pub struct BadConn;

impl FromStr for Conn {
    type Err = BadConn;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (node, session) = s.split_once('-').ok_or(BadConn)?;
        let hex = |part: &str| {
            !part.is_empty() && part.len() <= 16 && part.bytes().all(|b| b.is_ascii_hexdigit())
        };
        if !hex(node) || !hex(session) {
            return Err(BadConn);
        }
        Ok(Self {
            node: node.parse().map_err(|_| BadConn)?,
            session: u64::from_str_radix(session, 16).map_err(|_| BadConn)?,
        })
    }
}

/// What is known of one connection in a topic.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Its user (`sub`); `None` without authentication.
    pub sub: Option<Arc<str>>,
    /// The user's small JSON `info`, compact.
    pub info: Option<Arc<str>>,
}

/// A net change of one entry since the changes were last taken.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    /// The connection is in the topic now.
    Join(Conn, Entry),
    /// The connection left the topic.
    Leave(Conn, Entry),
}

impl Event {
    /// The connection it is about.
    pub fn conn(&self) -> Conn {
        match self {
            Self::Join(conn, _) | Self::Leave(conn, _) => *conn,
        }
    }
}

/// Every topic's entries, and which owner holds which.
#[derive(Debug, Default)]
pub struct Table {
    topics: HashMap<Topic, Members>,
    owned: HashMap<NodeId, HashSet<(Topic, SessionId)>>,
    /// What each entry changed since the last `take_changes` was before.
    touched: HashMap<Topic, HashMap<Conn, Option<Entry>>>,
    /// Entries in all topics.
    len: usize,
}

/// One topic's entries, and how many of them each user holds, so that
/// its counts are read without a pass over them.
#[derive(Debug, Default)]
struct Members {
    entries: BTreeMap<Conn, Entry>,
    users: HashMap<Arc<str>, usize>,
    /// Entries with a user.
    named: usize,
}

impl Members {
    fn insert(&mut self, conn: Conn, entry: Entry) -> Option<Entry> {
        self.count(&entry);
        let before = self.entries.insert(conn, entry);
        if let Some(before) = &before {
            self.uncount(before);
        }
        before
    }

    fn remove(&mut self, conn: &Conn) -> Option<Entry> {
        let before = self.entries.remove(conn)?;
        self.uncount(&before);
        Some(before)
    }

    fn count(&mut self, entry: &Entry) {
        if let Some(sub) = &entry.sub {
            *self.users.entry(Arc::clone(sub)).or_default() += 1;
            self.named += 1;
        }
    }

    fn uncount(&mut self, entry: &Entry) {
        let Some(sub) = &entry.sub else {
            return;
        };
        self.named -= 1;
        if let hash_map::Entry::Occupied(mut held) = self.users.entry(Arc::clone(sub)) {
            *held.get_mut() -= 1;
            if *held.get() == 0 {
                held.remove();
            }
        }
    }

    fn stats(&self) -> Stats {
        let anonymous = self.entries.len() - self.named;
        Stats {
            connections: self.entries.len() as u64,
            users: (self.users.len() + anonymous) as u64,
        }
    }
}

/// How many entries a topic holds and how many users they belong to.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Connections.
    pub connections: u64,
    /// Distinct users (connections without a user count as one each).
    pub users: u64,
}

impl Table {
    /// Puts `conn` in `topic`. False if it was there already, as it is.
    pub fn insert(&mut self, topic: &Topic, conn: Conn, entry: Entry) -> bool {
        let members = self.topics.entry(topic.clone()).or_default();
        let before = members.insert(conn, entry.clone());
        self.len += usize::from(before.is_none());
        let changed = before.as_ref() != Some(&entry);
        if changed {
            touch(&mut self.touched, topic, conn, before);
        }
        self.owned
            .entry(conn.node)
            .or_default()
            .insert((topic.clone(), conn.session));
        changed
    }

    /// Takes `conn` out of `topic`. False if it was not there.
    pub fn remove(&mut self, topic: &Topic, conn: Conn) -> bool {
        let Some(members) = self.topics.get_mut(topic) else {
            return false;
        };
        let Some(before) = members.remove(&conn) else {
            return false;
        };
        self.len -= 1;
        if members.entries.is_empty() {
            self.topics.remove(topic);
        }
        touch(&mut self.touched, topic, conn, Some(before));
        if let hash_map::Entry::Occupied(mut owned) = self.owned.entry(conn.node) {
            owned.get_mut().remove(&(topic.clone(), conn.session));
            if owned.get().is_empty() {
                owned.remove();
            }
        }
        true
    }

    /// Makes `node`'s entries exactly `entries`, whatever it held before.
    pub fn replace(&mut self, node: NodeId, entries: Vec<(Topic, SessionId, Entry)>) {
        let keep: HashSet<(Topic, SessionId)> = entries
            .iter()
            .map(|(topic, session, _)| (topic.clone(), *session))
            .collect();
        let gone: Vec<(Topic, SessionId)> = self
            .owned
            .get(&node)
            .map(|held| held.difference(&keep).cloned().collect())
            .unwrap_or_default();
        for (topic, session) in gone {
            self.remove(&topic, Conn { node, session });
        }
        for (topic, session, entry) in entries {
            self.insert(&topic, Conn { node, session }, entry);
        }
    }

    /// Takes every entry `node` holds out.
    pub fn drop_owner(&mut self, node: NodeId) {
        self.replace(node, Vec::new());
    }

    /// Every entry `node` holds.
    pub fn owned_by(&self, node: NodeId) -> Vec<(Topic, SessionId, Entry)> {
        let Some(held) = self.owned.get(&node) else {
            return Vec::new();
        };
        held.iter()
            .filter_map(|(topic, session)| {
                let conn = Conn {
                    node,
                    session: *session,
                };
                let entry = self.topics.get(topic)?.entries.get(&conn)?;
                Some((topic.clone(), *session, entry.clone()))
            })
            .collect()
    }

    /// The net changes since they were last taken, by topic, each topic's
    /// leaves then joins, in connection order.
    pub fn take_changes(&mut self) -> Vec<(Topic, Vec<Event>)> {
        let touched = std::mem::take(&mut self.touched);
        touched
            .into_iter()
            .filter_map(|(topic, conns)| {
                let now = self.topics.get(&topic);
                let mut events: Vec<Event> = conns
                    .into_iter()
                    .filter_map(|(conn, before)| {
                        let after = now.and_then(|members| members.entries.get(&conn));
                        match (before, after) {
                            (None, Some(after)) => Some(Event::Join(conn, after.clone())),
                            (Some(before), None) => Some(Event::Leave(conn, before)),
                            (Some(before), Some(after)) if before != *after => {
                                Some(Event::Join(conn, after.clone()))
                            }
                            _ => None,
                        }
                    })
                    .collect();
                // Leaves first: a user who left and came back on another
                // connection within one flush reads as left, then joined.
                events.sort_by_key(|e| (matches!(e, Event::Join(..)), e.conn()));
                (!events.is_empty()).then_some((topic, events))
            })
            .collect()
    }

    /// Up to `limit` entries of `topic` after `after`, in connection
    /// order, and whether more follow.
    pub fn page(
        &self,
        topic: &Topic,
        after: Option<Conn>,
        limit: usize,
    ) -> (Vec<(Conn, Entry)>, bool) {
        let Some(Members { entries, .. }) = self.topics.get(topic) else {
            return (Vec::new(), false);
        };
        let range = match after {
            Some(after) => {
                entries.range((std::ops::Bound::Excluded(after), std::ops::Bound::Unbounded))
            }
            None => entries.range(..),
        };
        let mut page: Vec<(Conn, Entry)> = range
            .take(limit + 1)
            .map(|(conn, entry)| (*conn, entry.clone()))
            .collect();
        let more = page.len() > limit;
        page.truncate(limit);
        (page, more)
    }

    /// Entries in all topics.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether no topic holds an entry.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// How many connections and users `topic` holds.
    pub fn stats(&self, topic: &Topic) -> Stats {
        self.topics
            .get(topic)
            .map(Members::stats)
            .unwrap_or_default()
    }
}

/// Books the first change of `conn` in `topic` since the changes were
/// last taken, with what it was before.
fn touch(
    touched: &mut HashMap<Topic, HashMap<Conn, Option<Entry>>>,
    topic: &Topic,
    conn: Conn,
    before: Option<Entry>,
) {
    touched
        .entry(topic.clone())
        .or_default()
        .entry(conn)
        .or_insert(before);
}

#[cfg(test)]
mod tests {
    use super::*;

    fn topic(name: &str) -> Topic {
        Topic::new(name).expect("valid")
    }

    fn entry(sub: &str) -> Entry {
        Entry {
            sub: Some(sub.into()),
            info: None,
        }
    }

    fn conn(node: u64, session: SessionId) -> Conn {
        Conn {
            node: format!("{node:x}").parse().expect("hex"),
            session,
        }
    }

    #[test]
    fn a_join_and_a_leave_in_between_are_no_event_at_all() {
        let mut table = Table::default();
        let room = topic("room:1");
        table.insert(&room, conn(1, 1), entry("a"));
        table.remove(&room, conn(1, 1));
        assert_eq!(table.take_changes(), []);
        table.insert(&room, conn(1, 2), entry("b"));
        assert_eq!(
            table.take_changes(),
            [(room.clone(), vec![Event::Join(conn(1, 2), entry("b"))])]
        );
        table.remove(&room, conn(1, 2));
        table.insert(&room, conn(1, 2), entry("b"));
        assert_eq!(table.take_changes(), [], "left and came back: no change");
    }

    #[test]
    fn replacing_an_owner_with_the_same_state_changes_nothing_and_with_another_only_the_difference()
    {
        let mut table = Table::default();
        let room = topic("room:1");
        let node = conn(7, 0).node;
        let state = vec![(room.clone(), 1, entry("a")), (room.clone(), 2, entry("b"))];
        table.replace(node, state.clone());
        assert_eq!(table.take_changes()[0].1.len(), 2);
        table.replace(node, state);
        assert_eq!(table.take_changes(), [], "a flap's state: no churn");
        table.replace(
            node,
            vec![(room.clone(), 2, entry("b")), (room.clone(), 3, entry("c"))],
        );
        assert_eq!(
            table.take_changes(),
            [(
                room.clone(),
                vec![
                    Event::Leave(conn(7, 1), entry("a")),
                    Event::Join(conn(7, 3), entry("c"))
                ]
            )]
        );
        assert_eq!(table.len(), 2);
        table.drop_owner(node);
        assert_eq!(table.take_changes()[0].1.len(), 2);
        assert!(table.is_empty());
        assert_eq!(table.stats(&room), Stats::default());
        assert!(table.owned_by(node).is_empty());
    }

    #[test]
    fn pages_follow_connection_order_and_say_whether_more_follow() {
        let mut table = Table::default();
        let room = topic("room:1");
        for session in 0..5 {
            table.insert(&room, conn(1, session), entry("same"));
        }
        table.insert(&room, conn(2, 0), entry("other"));
        let (first, more) = table.page(&room, None, 4);
        assert!(more);
        assert_eq!(first.len(), 4);
        let (rest, more) = table.page(&room, Some(first[3].0), 4);
        assert!(!more);
        assert_eq!(
            rest.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            [conn(1, 4), conn(2, 0)]
        );
        assert_eq!(
            table.stats(&room),
            Stats {
                connections: 6,
                users: 2
            }
        );
        table.remove(&room, conn(2, 0));
        let anonymous = Entry {
            sub: None,
            info: None,
        };
        table.insert(&room, conn(3, 0), anonymous.clone());
        table.insert(&room, conn(3, 1), anonymous);
        assert_eq!(
            table.stats(&room),
            Stats {
                connections: 7,
                users: 3
            },
            "one user left; two connections without one count one each"
        );
    }

    #[test]
    fn connection_ids_read_back_and_nothing_else_does() {
        let c = conn(0xabc, 0x1f);
        assert_eq!(c.to_string().parse::<Conn>(), Ok(c));
        for bad in [
            "",
            "-",
            "abc",
            "abc-",
            "-1",
            "x-1",
            "1-1-1",
            "11111111111111111-1",
        ] {
            assert_eq!(bad.parse::<Conn>(), Err(BadConn), "{bad:?}");
        }
    }
}
