//! Criterion benchmarks of presence through the public library API: what a
//! join and a leave cost the pod that holds the connection (the subscribe,
//! its entry, its share of the flush that sends the delta) beside the same
//! subscribe with presence off; and a topic of 10,000 members: answering a
//! `presence` page and `presence_stats`. Printed once before them: the
//! resident memory one entry takes on a pod that holds it for a peer, and
//! the bytes one join puts on each peer stream.
//!
//! Run with `cargo bench --bench presence`. Not part of `make bench`: the
//! issue's end-to-end churn scenario (1,000 joins a second across three
//! pods, delivery p99 meanwhile) is still to be written.

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, criterion_group, criterion_main};
use herald::auth::TopicPatterns;
use herald::cluster::presence::{GRACE, delta_frame};
use herald::hub::{Hub, Mailbox, Membership};
use herald::message::NodeId;
use herald::presence::{Delta, Entry, Presence, Settings};
use herald::proto::v1::PeerFrame;
use herald::topic::Topic;
use prost::Message as _;

/// This process's resident memory, from `/proc/self/statm` (0 elsewhere).
fn resident_bytes() -> usize {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|statm| statm.split_whitespace().nth(1)?.parse::<usize>().ok())
        .map_or(0, |pages| pages * 4096)
}

/// Entries weighed at once: enough that page granularity does not matter.
const WEIGHED: usize = 200_000;

const MEMBERS: usize = 10_000;

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("bench topics are valid")
}

fn presence(hub: &Hub) -> Presence {
    let presence = Presence::new(Settings {
        node: NodeId::random(),
        topics: TopicPatterns::parse(&["room:*"]).expect("valid"),
        grace: GRACE,
    });
    hub.watch(Arc::new(presence.clone()));
    presence
}

/// An entry as a user with a short name and info has it.
fn entry(i: usize) -> Entry {
    Entry {
        sub: Some(format!("user-{i}").into()),
        info: Some(format!(r#"{{"name":"User {i}"}}"#).into()),
    }
}

/// The memory one peer's entry takes, and the bytes of one join's delta.
fn weigh() {
    let room = topic("room:big");
    let peer = NodeId::random();
    let entries: Vec<_> = (0..WEIGHED)
        .map(|i| (room.clone(), i as u64, entry(i)))
        .collect();
    let holder = Presence::new(Settings {
        node: NodeId::random(),
        topics: TopicPatterns::parse(&["room:*"]).expect("valid"),
        grace: GRACE,
    });
    holder.peer_up(peer, "10.0.0.2:7070");
    let before = resident_bytes();
    holder.take_state(peer, 1, true, true, entries);
    let hub = Hub::new();
    // The first flush takes the changes the state made (they are events).
    holder.flush(&hub, Instant::now());
    let after = resident_bytes();
    eprintln!(
        "presence: about {} bytes of resident memory per entry held for a peer ({WEIGHED} entries of a {}-byte sub and a {}-byte info in one topic)",
        (after.saturating_sub(before)) / WEIGHED,
        "user-1234".len(),
        r#"{"name":"User 1234"}"#.len(),
    );
    let one = Delta {
        version: 2,
        joined: vec![(room, 12_345, entry(1234))],
        left: Vec::new(),
    };
    let frame = PeerFrame {
        kind: Some(delta_frame(one)),
    };
    eprintln!(
        "presence: one join is a {}-byte frame (plus a 4-byte length) on each peer stream",
        frame.encoded_len()
    );
}

/// One session's subscribe and unsubscribe, with each one's flush when
/// presence is on.
fn join_and_leave(c: &mut Criterion) {
    weigh();
    let mut group = c.benchmark_group("presence/join_leave");
    let room = topic("room:1");
    for on in [false, true] {
        let hub = Hub::new();
        let presence = on.then(|| presence(&hub));
        // Others in the room, so the table is not empty.
        let _others: Vec<(Membership, Mailbox)> = (0..100)
            .map(|_| {
                let (mut member, mailbox) = hub.join(16, 10);
                member.subscribe(room.clone()).expect("under limit");
                (member, mailbox)
            })
            .collect();
        if let Some(presence) = &presence {
            presence.flush(&hub, Instant::now());
        }
        let (mut member, _mailbox) = hub.join(16, 10);
        let name = if on { "on" } else { "off" };
        group.bench_function(BenchmarkId::from_parameter(name), |b| {
            b.iter(|| {
                member.subscribe(room.clone()).expect("under limit");
                if let Some(presence) = &presence {
                    black_box(presence.flush(&hub, Instant::now()));
                }
                member.unsubscribe(&room);
                if let Some(presence) = &presence {
                    black_box(presence.flush(&hub, Instant::now()));
                }
            })
        });
    }
    group.finish();
}

/// Answering a topic of 10,000 members.
fn big_topic(c: &mut Criterion) {
    let hub = Hub::new();
    let presence = presence(&hub);
    let room = topic("room:big");
    let peer = NodeId::random();
    presence.peer_up(peer, "10.0.0.2:7070");
    let entries: Vec<_> = (0..MEMBERS)
        .map(|i| (room.clone(), i as u64, entry(i)))
        .collect();
    presence.take_state(peer, 1, true, true, entries);
    presence.flush(&hub, Instant::now());
    let mut group = c.benchmark_group("presence/10k_members");
    group.measurement_time(Duration::from_secs(3));
    for limit in [100, 1_000] {
        group.bench_function(BenchmarkId::new("page", limit), |b| {
            b.iter(|| black_box(presence.page(&room, None, limit)))
        });
    }
    let middle = presence.page(&room, None, MEMBERS / 2).1;
    group.bench_function("page_100_from_the_middle", |b| {
        b.iter(|| black_box(presence.page(&room, middle, 100)))
    });
    group.bench_function("stats", |b| b.iter(|| black_box(presence.stats(&room))));
    group.finish();
}

criterion_group!(benches, join_and_leave, big_topic);
criterion_main!(benches);
