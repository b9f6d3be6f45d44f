//! Criterion micro-benchmarks of herald's hot paths, through the public
//! library API only: topic validation, JSON compaction and frame encoding,
//! fan-out of one message to N local sessions, and delivery when the hub
//! holds many topics (the registry lookup); and, for scale, the floor under
//! all of them: one write of a message-sized frame to a loopback TCP socket,
//! which every unbatched delivery costs at least once.
//!
//! Run with `make bench-micro` (or `cargo bench --bench hot_paths`).

use std::hint::black_box;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::thread;

use bytes::Bytes;
use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use herald::history::{History, Limits};
use herald::hub::{Hub, Mailbox, Membership};
use herald::local::Local;
use herald::message::{Draft, Epoch, IdGenerator, Message, NodeId, Stamp, compact_json};
use herald::topic::Topic;

/// A 128-byte document, like the end-to-end bench's payload, with the
/// whitespace a backend's pretty-printer might leave in.
const DOCUMENT: &str = r#"{ "t": 1763719483000000000, "s": 42, "pad": "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx" }"#;

fn topic(name: &str) -> Topic {
    Topic::new(name).expect("bench topics are valid")
}

fn draft(ids: &IdGenerator, topic: Topic) -> Draft {
    let data = compact_json(DOCUMENT.as_bytes()).expect("valid JSON");
    Draft::new(ids.next_id(), topic, Bytes::from(data), NodeId::random())
}

fn message(ids: &IdGenerator, topic: Topic) -> Arc<Message> {
    let stamp = Stamp {
        epoch: Epoch::new_for(&topic),
        offset: 1,
        sequencer: NodeId::random(),
    };
    Arc::new(Message::new(draft(ids, topic), stamp))
}

fn topic_validation(c: &mut Criterion) {
    let mut group = c.benchmark_group("topic");
    for name in [
        "room:1",
        "tenant-42/orders/eu-west-1@v2=live",
        &"a".repeat(255),
    ] {
        group.bench_with_input(BenchmarkId::new("new", name.len()), name, |b, name| {
            b.iter(|| Topic::new(black_box(name)))
        });
    }
    group.finish();
}

fn frame_encoding(c: &mut Criterion) {
    let mut group = c.benchmark_group("message");
    group.throughput(Throughput::Bytes(DOCUMENT.len() as u64));
    group.bench_function("compact_json/128B", |b| {
        b.iter(|| compact_json(black_box(DOCUMENT.as_bytes())))
    });
    let ids = IdGenerator::new(NodeId::random());
    let data = Bytes::from(compact_json(DOCUMENT.as_bytes()).expect("valid JSON"));
    let room = topic("room:1");
    let stamp = Stamp {
        epoch: Epoch::new_for(&room),
        offset: 42,
        sequencer: NodeId::random(),
    };
    group.bench_function("new_frame/128B", |b| {
        b.iter(|| {
            let draft = Draft::new(
                ids.next_id(),
                room.clone(),
                black_box(data.clone()),
                NodeId::random(),
            );
            Message::new(draft, stamp)
        })
    });
    group.finish();
}

/// `n` sessions on `room`, each with a mailbox large enough for one
/// iteration's message.
fn sessions(hub: &Hub, room: &Topic, n: usize) -> Vec<(Membership, Mailbox)> {
    (0..n)
        .map(|_| {
            let (mut membership, mailbox) = hub.join(16, 10);
            membership
                .subscribe(room.clone())
                .expect("under the subscription limit");
            (membership, mailbox)
        })
        .collect()
}

fn drain(sessions: &mut [(Membership, Mailbox)]) {
    for (_, mailbox) in sessions {
        while mailbox.try_recv().is_some() {}
    }
}

fn fan_out(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub/fan_out");
    let ids = IdGenerator::new(NodeId::random());
    for n in [1usize, 100, 1000] {
        let hub = Hub::new();
        let room = topic("room:1");
        let mut sessions = sessions(&hub, &room, n);
        let msg = message(&ids, room);
        group.throughput(Throughput::Elements(n as u64));
        group.bench_with_input(BenchmarkId::from_parameter(n), &n, |b, _| {
            b.iter_batched(
                || drain(&mut sessions),
                |()| hub.deliver(black_box(&msg)),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

fn many_topics(c: &mut Criterion) {
    let mut group = c.benchmark_group("hub/many_topics");
    let ids = IdGenerator::new(NodeId::random());
    for topics in [10usize, 10_000, 100_000] {
        let hub = Hub::new();
        // One session per topic, like S4's users on their own topics.
        let mut sessions: Vec<(Membership, Mailbox)> = (0..topics)
            .map(|i| {
                let (mut membership, mailbox) = hub.join(16, 10);
                membership
                    .subscribe(topic(&format!("user.{i}")))
                    .expect("under the subscription limit");
                (membership, mailbox)
            })
            .collect();
        let messages: Vec<_> = (0..64)
            .map(|i| message(&ids, topic(&format!("user.{}", i * topics / 64))))
            .collect();
        let mut next = 0;
        group.bench_with_input(BenchmarkId::from_parameter(topics), &topics, |b, _| {
            b.iter(|| {
                next = (next + 1) % messages.len();
                let delivery = hub.deliver(black_box(&messages[next]));
                // Keep the mailboxes from filling: each holds 16.
                if next == 0 {
                    for i in 0..64 {
                        while sessions[i * topics / 64].1.try_recv().is_some() {}
                    }
                }
                delivery
            })
        });
        drop(sessions.drain(..));
    }
    group.throughput(Throughput::Elements(1));
    let hub = Hub::new();
    let msg = message(&ids, topic("nobody.listens"));
    group.bench_function("no_subscribers", |b| {
        b.iter(|| hub.deliver(black_box(&msg)))
    });
    group.finish();
}

/// Numbering, keeping and delivering one message to 100 subscribers, as
/// the sequencer does, with history on (the default bounds) and off
/// (`--history-messages 0`): the cost of keeping history on the publish
/// path.
fn sequencing(c: &mut Criterion) {
    let mut group = c.benchmark_group("local/sequence");
    let node = NodeId::random();
    let ids = IdGenerator::new(node);
    for (name, max_messages) in [
        ("history_on", Limits::default().max_messages),
        ("history_off", 0),
    ] {
        let hub = Hub::new();
        let room = topic("room:1");
        let mut sessions = sessions(&hub, &room, 100);
        let limits = Limits {
            max_messages,
            ..Limits::default()
        };
        let local = Local::new(hub, History::new(limits), node);
        group.throughput(Throughput::Elements(1));
        group.bench_function(name, |b| {
            b.iter_batched(
                || {
                    drain(&mut sessions);
                    vec![draft(&ids, room.clone())]
                },
                |drafts| local.sequence(black_box(drafts), &|_| {}),
                BatchSize::PerIteration,
            )
        });
    }
    group.finish();
}

/// One blocking `write` of a 200-byte frame (an S1 delivery: the message
/// object around a 128-byte payload, plus the WebSocket header) to a
/// loopback TCP connection whose other end a thread drains. This is the
/// system call an unbatched delivery cannot avoid; the kernel's loopback
/// receive path runs inside it.
fn loopback_write(c: &mut Criterion) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let mut writer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    writer.set_nodelay(true).expect("TCP_NODELAY");
    let (mut reader, _) = listener.accept().expect("accept");
    let drain = thread::spawn(move || {
        let mut buf = vec![0u8; 64 * 1024];
        while reader.read(&mut buf).is_ok_and(|n| n > 0) {}
    });
    let frame = [b'x'; 200];
    c.bench_function("loopback_tcp_write_200B", |b| {
        b.iter(|| writer.write_all(black_box(&frame)).expect("write"));
    });
    drop(writer);
    drain.join().expect("drain thread");
}

criterion_group!(
    benches,
    topic_validation,
    frame_encoding,
    fan_out,
    many_topics,
    sequencing,
    loopback_write
);
criterion_main!(benches);
