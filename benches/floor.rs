//! The machine's floor under S1 and S4: what an ideal server achieves here
//! with the same load shape, so herald's figures can be read against what
//! the machine allows rather than against a target alone.
//!
//! The ideal server is threads that do nothing but copy prepared
//! WebSocket frames to blocking loopback sockets: no parsing, no framing
//! per subscriber, no locks, no gRPC, no runtime. The users are what
//! herald-bench's users are: loopback TCP connections read by tasks on a
//! two-worker tokio runtime in the same process, scanning each frame for
//! its messages' send timestamps. Messages are 200 bytes, the size of
//! herald's frame for S1's 128-byte payload.
//!
//! - **S1 shape** (`fanout`): 1,000 users; every publish tick two writer
//!   threads (two pods' worth) each write one frame to their 500 users. A
//!   `batch` of k sends a frame every k ticks carrying the k messages held
//!   meanwhile, the best any write delay can do; each message's latency
//!   counts from its own tick.
//! - **S4 shape** (`chain`): 5,000 users, 2,000 messages a second round
//!   robin, one message per frame. With 0 hops a publisher thread writes
//!   the user's frame itself; with 1, it writes to a server thread that
//!   writes the frame; with 2, the server relays every other message over
//!   a second socket to another thread that writes it (two pods with users
//!   spread over both, as in `make bench`).
//!
//! Every case runs three times, interleaved with the others; the table
//! gives medians. Run with `make bench-floor` (or
//! `cargo bench --bench floor`); a run takes about four minutes. Under
//! `cargo test` and `cargo nextest` (as the test `smoke`) each case runs
//! once, small and short, and fails if a message is missing.

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::thread;
use std::time::{Duration, Instant};

use hdrhistogram::Histogram;
use tokio::io::AsyncReadExt;

// herald-bench's own measures, shared by file: the same histogram, the same
// wake-up probe and the same /proc reading as `make bench` reports. Their
// unit tests run with herald-bench's; here, without a test harness, their
// imports would be unused.
#[path = "../src/bin/herald-bench/micros.rs"]
mod micros;
#[path = "../src/bin/herald-bench/procstat.rs"]
#[allow(dead_code)] // herald-bench also samples other processes; this bench only itself
#[cfg_attr(test, allow(unused_imports))]
mod procstat;
#[path = "../src/bin/herald-bench/wakeup.rs"]
#[cfg_attr(test, allow(unused_imports))]
mod wakeup;

use micros::micros_histogram;

/// Bytes per message: a 20-digit send time in microseconds, then padding.
const MESSAGE: usize = 200;

/// Digits of the send time at the start of each message.
const STAMP: usize = 20;

/// How long a run waits for missing deliveries while none arrive.
const PATIENCE: Duration = Duration::from_secs(3);

/// How long and how big the runs are.
#[derive(Clone, Copy)]
struct Mode {
    /// How long each run publishes.
    run: Duration,
    /// Runs of each case.
    rounds: usize,
    /// Each case's users are divided by this.
    shrink: usize,
}

/// `cargo bench`: the cases at full size.
const FULL: Mode = Mode {
    run: Duration::from_secs(10),
    rounds: 3,
    shrink: 1,
};

/// `cargo test`: every case once, small and short, checking that every
/// message arrives, so the bench cannot rot unnoticed.
const SMOKE: Mode = Mode {
    run: Duration::from_millis(200),
    rounds: 1,
    shrink: 50,
};

/// One load shape with its parameters.
#[derive(Clone, Copy)]
enum Case {
    /// One topic with `users` subscribers, `rate` publishes a second,
    /// `batch` messages per frame.
    Fanout {
        users: usize,
        rate: u32,
        batch: usize,
    },
    /// One message per user in turn, `rate` a second, through `hops`
    /// server threads.
    Chain { users: usize, rate: u32, hops: u8 },
}

impl Case {
    fn name(self) -> String {
        match self {
            Case::Fanout { users, rate, batch } => {
                format!("fanout: {users} users, {rate} msg/s, {batch} per frame")
            }
            Case::Chain { users, rate, hops } => {
                format!("chain: {users} users, {rate} msg/s round robin, {hops} hops")
            }
        }
    }

    fn users(self) -> usize {
        match self {
            Case::Fanout { users, .. } | Case::Chain { users, .. } => users,
        }
    }

    fn shrunk(self, by: usize) -> Self {
        match self {
            Case::Fanout { users, rate, batch } => Case::Fanout {
                users: users / by,
                rate,
                batch,
            },
            Case::Chain { users, rate, hops } => Case::Chain {
                users: users / by,
                rate,
                hops,
            },
        }
    }
}

/// What one run measured.
struct Outcome {
    expected: u64,
    received: u64,
    /// Latencies in microseconds, sorted.
    latency: Histogram<u64>,
    cpu_seconds: f64,
    /// How late a thread sleeping 5 ms at a time woke, in microseconds,
    /// sorted.
    wakeup_late: Histogram<u64>,
}

/// The readers' side: counters and the latencies each user hands in when
/// its connection closes.
struct Users {
    base: Instant,
    received: AtomicU64,
    /// Users whose connection has ended and who handed in their latencies.
    finished: AtomicU64,
    latency: Mutex<Histogram<u64>>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|arg| arg == "--list") {
        // A test runner (cargo nextest) asks what to run: the smoke, which
        // is not an ignored test.
        if !args.iter().any(|arg| arg == "--ignored") {
            println!("smoke: test");
        }
        return;
    }
    let mode = if args.iter().any(|arg| arg == "--bench") {
        FULL
    } else {
        SMOKE
    };
    let cases = [
        Case::Fanout {
            users: 1000,
            rate: 20,
            batch: 1,
        },
        Case::Fanout {
            users: 1000,
            rate: 200,
            batch: 1,
        },
        Case::Fanout {
            users: 1000,
            rate: 200,
            batch: 2,
        },
        Case::Fanout {
            users: 1000,
            rate: 200,
            batch: 4,
        },
        Case::Chain {
            users: 5000,
            rate: 2000,
            hops: 0,
        },
        Case::Chain {
            users: 5000,
            rate: 2000,
            hops: 1,
        },
        Case::Chain {
            users: 5000,
            rate: 2000,
            hops: 2,
        },
    ];
    let cases = cases.map(|case| case.shrunk(mode.shrink));
    let mut outcomes: Vec<Vec<Outcome>> = cases.iter().map(|_| Vec::new()).collect();
    for round in 1..=mode.rounds {
        for (case, runs) in cases.iter().zip(&mut outcomes) {
            let outcome = run(*case, mode.run);
            eprintln!(
                "round {round}: {}: p50 {:.2} ms, p99 {:.2} ms, {}/{} delivered",
                case.name(),
                ms(quantile(&outcome.latency, 0.5)),
                ms(quantile(&outcome.latency, 0.99)),
                outcome.received,
                outcome.expected,
            );
            assert_eq!(
                outcome.received,
                outcome.expected,
                "{}: every message reaches every user",
                case.name()
            );
            runs.push(outcome);
        }
    }
    println!(
        "| case | delivered | p50 ms | p99 ms | max ms | CPU-µs per delivery | wake-up p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    for (case, runs) in cases.iter().zip(&outcomes) {
        let delivered: u64 = runs.iter().map(|o| o.received).sum();
        let expected: u64 = runs.iter().map(|o| o.expected).sum();
        println!(
            "| {} | {delivered}/{expected} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            case.name(),
            median(runs, |o| ms(quantile(&o.latency, 0.5))),
            median(runs, |o| ms(quantile(&o.latency, 0.99))),
            median(runs, |o| ms(quantile(&o.latency, 1.0))),
            median(runs, |o| o.cpu_seconds * 1e6 / o.received.max(1) as f64),
            median(runs, |o| ms(quantile(&o.wakeup_late, 0.99))),
        );
    }
    println!("\n## Every run\n");
    println!(
        "| case | run | delivered | p50 ms | p99 ms | max ms | CPU-µs per delivery | wake-up p99 ms |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    for (case, runs) in cases.iter().zip(&outcomes) {
        for (n, o) in runs.iter().enumerate() {
            println!(
                "| {} | {} | {}/{} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
                case.name(),
                n + 1,
                o.received,
                o.expected,
                ms(quantile(&o.latency, 0.5)),
                ms(quantile(&o.latency, 0.99)),
                ms(quantile(&o.latency, 1.0)),
                o.cpu_seconds * 1e6 / o.received.max(1) as f64,
                ms(quantile(&o.wakeup_late, 0.99)),
            );
        }
    }
}

/// Connects the case's users, runs its load for `length`, waits for the
/// deliveries and measures.
fn run(case: Case, length: Duration) -> Outcome {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("the users' runtime");
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let addr = listener.local_addr().expect("listener address");
    let users = Arc::new(Users {
        base: Instant::now(),
        received: AtomicU64::new(0),
        finished: AtomicU64::new(0),
        latency: Mutex::new(micros_histogram()),
    });
    let sockets: Vec<TcpStream> = (0..case.users())
        .map(|_| {
            runtime.spawn(read_user(addr, Arc::clone(&users)));
            let (socket, _) = listener.accept().expect("accept a user");
            socket.set_nodelay(true).expect("TCP_NODELAY");
            socket
        })
        .collect();
    thread::sleep(Duration::from_millis(200));

    let probe = wakeup::Probe::start().expect("starting the wake-up probe");
    let cpu_before = cpu_seconds();
    let expected = match case {
        Case::Fanout { rate, batch, .. } => fanout(&users, sockets, rate, length, batch),
        Case::Chain { rate, hops, .. } => chain(&users, sockets, rate, length, hops),
    };
    let mut last = (users.received.load(Ordering::Relaxed), Instant::now());
    while last.0 < expected && last.1.elapsed() < PATIENCE {
        thread::sleep(Duration::from_millis(20));
        let now = users.received.load(Ordering::Relaxed);
        if now != last.0 {
            last = (now, Instant::now());
        }
    }
    let cpu_seconds = cpu_seconds() - cpu_before;
    let wakeup_late = probe.finish();
    // The server ends are closed by now, so every user hands in its
    // latencies and ends.
    let deadline = Instant::now() + PATIENCE;
    while users.finished.load(Ordering::Relaxed) < case.users() as u64 && Instant::now() < deadline
    {
        thread::sleep(Duration::from_millis(20));
    }
    runtime.shutdown_timeout(Duration::from_secs(1));
    let latency = std::mem::replace(
        &mut *users.latency.lock().unwrap_or_else(PoisonError::into_inner),
        micros_histogram(),
    );
    Outcome {
        expected,
        received: users.received.load(Ordering::Relaxed),
        latency,
        cpu_seconds,
        wakeup_late,
    }
}

/// One user: reads frames until the server closes, recording each message's
/// latency.
async fn read_user(addr: SocketAddr, users: Arc<Users>) {
    let mut socket = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connect a user");
    socket.set_nodelay(true).expect("TCP_NODELAY");
    let mut buffer = vec![0u8; 64 * 1024];
    let mut filled = 0;
    let mut latency = micros_histogram();
    while let Ok(read) = socket.read(&mut buffer[filled..]).await {
        if read == 0 {
            break;
        }
        let now = users.base.elapsed().as_micros() as u64;
        filled += read;
        let mut at = 0;
        while filled - at >= 4 {
            let length = usize::from(u16::from_be_bytes([buffer[at + 2], buffer[at + 3]]));
            if filled - at < 4 + length {
                break;
            }
            for message in buffer[at + 4..at + 4 + length].chunks(MESSAGE) {
                latency.saturating_record(now.saturating_sub(stamp(message)));
                users.received.fetch_add(1, Ordering::Relaxed);
            }
            at += 4 + length;
        }
        buffer.copy_within(at..filled, 0);
        filled -= at;
    }
    users
        .latency
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .add(&latency)
        .expect("histograms of the same bounds add");
    users.finished.fetch_add(1, Ordering::Relaxed);
}

/// The S1 shape; returns the deliveries to expect.
fn fanout(
    users: &Users,
    sockets: Vec<TcpStream>,
    rate: u32,
    length: Duration,
    batch: usize,
) -> u64 {
    let messages = (f64::from(rate) * length.as_secs_f64()) as usize;
    let tick = Duration::from_secs(1) / rate;
    let start = users.base.elapsed() + Duration::from_millis(10);
    let count = sockets.len() as u64;
    let half = sockets.len() / 2;
    let mut sockets = sockets;
    let second = sockets.split_off(half);
    thread::scope(|scope| {
        for group in [sockets, second] {
            scope.spawn(move || {
                let mut held = Vec::new();
                for n in 0..messages {
                    let due = start + tick * n as u32;
                    sleep_until(users.base, due);
                    held.push(due.as_micros() as u64);
                    if held.len() < batch && n + 1 < messages {
                        continue;
                    }
                    let frame = frame(&held);
                    held.clear();
                    for mut socket in &group {
                        socket.write_all(&frame).expect("write a frame");
                    }
                }
            });
        }
    });
    count * messages as u64
}

/// The S4 shape; returns the deliveries to expect.
fn chain(users: &Users, sockets: Vec<TcpStream>, rate: u32, length: Duration, hops: u8) -> u64 {
    let messages = (f64::from(rate) * length.as_secs_f64()) as usize;
    let tick = Duration::from_secs(1) / rate;
    let start = users.base.elapsed() + Duration::from_millis(10);
    let sockets = &sockets;
    let base = users.base;
    thread::scope(|scope| {
        // Each hop is a thread reading raw messages from a socket pair.
        let first = (hops >= 1).then(|| {
            let (mut into_server, from_publisher) = socket_pair();
            let relay = (hops >= 2).then(|| {
                let (into_relay, from_server) = socket_pair();
                scope.spawn(move || serve(from_server, None, sockets));
                into_relay
            });
            scope.spawn(move || serve(from_publisher, relay, sockets));
            move |message: &[u8]| into_server.write_all(message).expect("write to the server")
        });
        let mut first = first;
        let mut message = [b' '; MESSAGE];
        for n in 0..messages {
            sleep_until(base, start + tick * n as u32);
            let user = n % sockets.len();
            let sent = format!("{:>STAMP$}{user:>10}", base.elapsed().as_micros());
            message[..sent.len()].copy_from_slice(sent.as_bytes());
            match first.as_mut() {
                Some(send) => send(&message),
                None => (&sockets[user])
                    .write_all(&frame_of(&message))
                    .expect("write a frame"),
            }
        }
        // Dropping the publisher's socket ends the server threads in turn.
        drop(first);
    });
    messages as u64
}

/// A server thread: reads raw messages, relays odd users' to `relay` when
/// there is one, and writes the rest to their users as frames.
fn serve(from: TcpStream, mut relay: Option<TcpStream>, sockets: &[TcpStream]) {
    let mut from = BufReader::new(from);
    let mut message = [0u8; MESSAGE];
    while from.read_exact(&mut message).is_ok() {
        let user: usize = std::str::from_utf8(&message[STAMP..STAMP + 10])
            .ok()
            .and_then(|digits| digits.trim().parse().ok())
            .expect("a user index");
        match relay.as_mut() {
            Some(relay) if user % 2 == 1 => relay.write_all(&message).expect("relay"),
            _ => (&sockets[user])
                .write_all(&frame_of(&message))
                .expect("write a frame"),
        }
    }
}

/// A connected pair of loopback sockets with `TCP_NODELAY`: (writer end,
/// reader end).
fn socket_pair() -> (TcpStream, TcpStream) {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind loopback");
    let writer = TcpStream::connect(listener.local_addr().expect("address")).expect("connect");
    let (reader, _) = listener.accept().expect("accept");
    writer.set_nodelay(true).expect("TCP_NODELAY");
    (writer, reader)
}

/// One unmasked text frame holding a message for each send time.
fn frame(stamps: &[u64]) -> Vec<u8> {
    let mut body = Vec::with_capacity(stamps.len() * MESSAGE);
    for stamp in stamps {
        body.extend_from_slice(
            format!("{stamp:>STAMP$}{:>w$}", "", w = MESSAGE - STAMP).as_bytes(),
        );
    }
    frame_of(&body)
}

/// Wraps `body` (under 64 KiB) in a text frame with a 16-bit length.
fn frame_of(body: &[u8]) -> Vec<u8> {
    let length = u16::try_from(body.len()).expect("a frame under 64 KiB");
    let mut frame = vec![0x81, 126];
    frame.extend_from_slice(&length.to_be_bytes());
    frame.extend_from_slice(body);
    frame
}

/// The send time at the start of a message, in microseconds.
fn stamp(message: &[u8]) -> u64 {
    std::str::from_utf8(&message[..STAMP])
        .ok()
        .and_then(|digits| digits.trim().parse().ok())
        .expect("a send time")
}

fn sleep_until(base: Instant, due: Duration) {
    if let Some(wait) = due.checked_sub(base.elapsed()) {
        thread::sleep(wait);
    }
}

/// This process's CPU seconds so far (writers, readers and all).
fn cpu_seconds() -> f64 {
    procstat::sample("self").map_or(0.0, |s| s.cpu_seconds)
}

/// The value at quantile `q` of `histogram`, in microseconds.
fn quantile(histogram: &Histogram<u64>, q: f64) -> u64 {
    histogram.value_at_quantile(q)
}

fn ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

fn median(runs: &[Outcome], pick: impl Fn(&Outcome) -> f64) -> f64 {
    let mut values: Vec<f64> = runs.iter().map(pick).collect();
    values.sort_by(f64::total_cmp);
    values[values.len() / 2]
}
