//! `herald-bench`: a load generator and meter for herald.
//!
//! It opens `--users` WebSocket users spread round-robin over the `--ws`
//! pods at a bounded connect rate, subscribes them (one shared topic or one
//! topic each), publishes through `--grpc` at `--rate` (or flat out), waits
//! for the deliveries to drain, and reports rate, loss, duplicates,
//! latency, and the server processes' CPU and memory.
//!
//! ```text
//!   publisher ──gRPC──▶ pod A ──peer──▶ pod B
//!                         │               │
//!                         ▼               ▼
//!                  users 0, 2, 4 …   users 1, 3, 5 …   ──▶ counters, histograms
//! ```
//!
//! Modules: [`args`] (the flags), [`client`] (the users' WebSocket
//! client), [`load`] (users and publisher), [`micros`] (the histogram
//! every measure is kept in), [`scan`] (the payload and the frame scanner),
//! [`nats`] and [`socketio`] (the NATS and Socket.IO protocols, to measure
//! those servers the same way), [`procstat`] (`/proc` sampling), [`wakeup`]
//! (the machine's scheduling noise over the run), [`report`] (JSON line and
//! table).

mod args;
mod churn;
mod client;
mod load;
mod micros;
mod nats;
mod procstat;
mod report;
mod scan;
mod socketio;
mod wakeup;

use std::fs::File;
use std::io::{self, BufWriter};
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use herald::proto::v1::publisher_client::PublisherClient;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use crate::args::{Args, ServerKind, Topics};
use crate::load::{Publisher, Shared, Sink, Target, User};
use crate::report::{Connect, Latency, Report, Server};

/// How long users get to close after the run, before they are abandoned.
const STOP_GRACE: Duration = Duration::from_secs(10);

/// How often the drain loop checks progress.
const DRAIN_POLL: Duration = Duration::from_millis(20);

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the runtime")?;
    // The publisher has a thread of its own, as a backend would: the users'
    // reads never delay a publish call or its send timestamp.
    let publishing = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .thread_name("publisher")
        .enable_all()
        .build()
        .context("starting the publisher's runtime")?;
    let report = runtime.block_on(run(args.clone(), publishing.handle().clone()))?;
    match args.json.as_deref() {
        Some(path) if path.as_os_str() == "-" => {
            report.write_table(io::stderr().lock())?;
            report.write_json(io::stdout().lock())?;
        }
        Some(path) => {
            report.write_table(io::stdout().lock())?;
            let file = File::create(path).with_context(|| format!("creating {path:?}"))?;
            report.write_json(BufWriter::new(file))?;
        }
        None => {
            report.write_table(io::stdout().lock())?;
            report.write_json(io::stdout().lock())?;
        }
    }
    Ok(())
}

async fn run(args: Args, publishing: tokio::runtime::Handle) -> anyhow::Result<Report> {
    let plan = args.plan()?;
    let targets = resolve(&args.ws).await?;
    let shared = Arc::new(Shared::new(args.users));
    let run_id = args
        .topic_prefix
        .clone()
        .unwrap_or_else(|| format!("bench.{:08x}", rand::random::<u32>()));
    let stride = match args.topics {
        Topics::Shared => 1,
        Topics::PerUser => args.users as u64,
    };

    // The publisher connects first so a bad --grpc fails before the users.
    // Its connection's tasks run where it connects: on its own runtime.
    let sink = publishing
        .spawn(connect_publisher(args.clone()))
        .await
        .context("the publisher's runtime stopped")??;

    let before_connect = procstat::sample_all(&args.pids);
    let connect_started = Instant::now();
    let mut tasks = JoinSet::new();
    let slots = Arc::new(Semaphore::new(args.connect_concurrency.max(1)));
    let gap = Duration::from_secs_f64(1.0 / args.connect_rate);
    for index in 0..args.users {
        let at = connect_started + gap.mul_f64(index as f64);
        tokio::time::sleep_until(at.into()).await;
        let slot = Arc::clone(&slots).acquire_owned().await?;
        let target = targets[index % targets.len()].clone();
        let user = User {
            index,
            source: load::source_for(&target.addr, index, args.source_ips),
            target,
            server: args.server,
            topic: load::user_topic(&run_id, args.topics, index),
            stride,
        };
        tasks.spawn(load::run_user(user, Arc::clone(&shared), slot));
    }
    // Every slot back means every user has subscribed or failed.
    let _all = slots
        .acquire_many(args.connect_concurrency.max(1) as u32)
        .await?;
    let connect_seconds = connect_started.elapsed().as_secs_f64();
    let subscribed = shared.subscribed.load(Ordering::Relaxed);

    let window_start = procstat::sample_all(&args.pids);
    let bench_start = procstat::sample("self").unwrap_or_default();
    let probe = wakeup::Probe::start().context("starting the wake-up probe")?;
    let mut published = load::Published::default();
    let mut expected = 0;
    let mut deliveries_per_sec = 0.0;
    let churn_stop = tokio_util::sync::CancellationToken::new();
    let mut churn_report = None;
    match sink {
        None => tokio::time::sleep(args.settle).await,
        Some(sink) => {
            let publish_start = shared.start.elapsed();
            let churning = (args.churn > 0.0).then(|| {
                tokio::spawn(churn::run(
                    targets.clone(),
                    args.churn_topic.clone(),
                    args.churn,
                    args.source_ips,
                    churn_stop.clone(),
                ))
            });
            let publisher = Publisher {
                sink,
                topic: run_id.clone(),
                topics: args.topics,
                users: args.users,
                payload_bytes: args.payload_bytes,
                batch: args.batch as u64,
            };
            published = publishing
                .spawn(publisher.run(plan))
                .await
                .context("the publisher's runtime stopped")?;
            expected = expected_deliveries(&published, &shared, args.topics, args.users);
            if let Some(churning) = churning {
                churn_stop.cancel();
                churn_report = Some(churning.await.context("the churn stopped")?);
            }
            drain(&shared, expected, args.drain_timeout).await;
            let last = Duration::from_nanos(shared.last_rx_nanos.load(Ordering::Relaxed));
            let span = last.saturating_sub(publish_start).as_secs_f64();
            if span > 0.0 {
                deliveries_per_sec = shared.received.load(Ordering::Relaxed) as f64 / span;
            }
        }
    }
    let window_end = procstat::sample_all(&args.pids);
    let bench_end = procstat::sample("self").unwrap_or_default();
    let wakeup_late = probe.finish();

    shared.stop.cancel();
    let _ = tokio::time::timeout(STOP_GRACE, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;

    let received = shared.received.load(Ordering::Relaxed);
    let cpu_seconds_each: Vec<f64> = window_end
        .iter()
        .zip(&window_start)
        .map(|(after, before)| after.cpu_seconds - before.cpu_seconds)
        .collect();
    let cpu_seconds: f64 = cpu_seconds_each.iter().sum();
    let rss = |samples: &[procstat::Sample]| samples.iter().map(|s| s.rss_bytes).sum::<u64>();
    let (rss_before, rss_after) = if args.idle {
        (rss(&before_connect), rss(&window_end))
    } else {
        (rss(&window_start), rss(&window_end))
    };
    let has_pids = !args.pids.is_empty();
    let publish_seconds = published.elapsed.as_secs_f64();
    Ok(Report {
        label: args.label,
        server_kind: args.server,
        mode: if args.idle { "idle" } else { "publish" },
        users: args.users,
        pods: targets.len(),
        topics: args.topics,
        payload_bytes: args.payload_bytes,
        target_rate: plan.rate,
        connect: Connect {
            ok: subscribed,
            failed: shared.failed.load(Ordering::Relaxed),
            seconds: connect_seconds,
            time_ms: Latency::of(&load::lock(&shared.connect)),
        },
        published: published.sent,
        publish_errors: published.sent - published.accepted(),
        first_publish_error: published.first_error,
        publish_seconds,
        publish_rate: if publish_seconds > 0.0 {
            published.sent as f64 / publish_seconds
        } else {
            0.0
        },
        expected,
        received,
        lost: expected.saturating_sub(received),
        duplicates: shared.duplicates.load(Ordering::Relaxed),
        disconnects: shared.disconnects.load(Ordering::Relaxed),
        deliveries_per_sec,
        latency_ms: Latency::of(&shared.latency()),
        wakeup_late_ms: Latency::of(&wakeup_late),
        server: Server {
            pids: args.pids.clone(),
            cpu_seconds,
            cpu_seconds_each,
            rss_before_bytes: rss_before,
            rss_after_bytes: rss_after,
            cpu_us_per_delivery: (has_pids && received > 0)
                .then(|| cpu_seconds * 1e6 / received as f64),
            rss_per_connection_bytes: (has_pids && args.idle && subscribed > 0)
                .then(|| (rss_after as f64 - rss_before as f64) / subscribed as f64),
        },
        bench_cpu_seconds: bench_end.cpu_seconds - bench_start.cpu_seconds,
        churn: churn_report,
    })
}

/// Connects the publisher (none for an idle run).
async fn connect_publisher(args: Args) -> anyhow::Result<Option<Sink>> {
    Ok(match (args.idle, args.server) {
        (true, _) => None,
        (false, ServerKind::Herald) => Some(Sink::Grpc(
            PublisherClient::connect(args.grpc.clone())
                .await
                .with_context(|| format!("connecting to {}", args.grpc))?,
        )),
        (false, ServerKind::Nats) => Some(Sink::Nats(Arc::new(tokio::sync::Mutex::new(
            nats::Publisher::connect(&args.nats)
                .await
                .with_context(|| format!("connecting to NATS at {}", args.nats))?,
        )))),
        (false, ServerKind::SocketIo) => Some(Sink::SocketIo(Arc::new(tokio::sync::Mutex::new(
            socketio::Publisher::connect(&args.socketio)
                .await
                .with_context(|| format!("connecting to Socket.IO at {}", args.socketio))?,
        )))),
    })
}

/// Resolves each `ws://host:port/path` URL once, so users connect by address.
async fn resolve(urls: &[String]) -> anyhow::Result<Vec<Target>> {
    let mut targets = Vec::with_capacity(urls.len());
    for url in urls {
        let rest = url
            .strip_prefix("ws://")
            .with_context(|| format!("{url}: only ws:// URLs are supported"))?;
        let (authority, path) = rest
            .find(['/', '?'])
            .map_or((rest, ""), |at| rest.split_at(at));
        let addr: SocketAddr = tokio::net::lookup_host(authority)
            .await
            .with_context(|| format!("resolving {authority}"))?
            .next()
            .with_context(|| format!("{authority} has no address"))?;
        let path = if path.starts_with('/') {
            path.to_owned()
        } else {
            format!("/{path}")
        };
        targets.push(Target {
            host: authority.to_owned(),
            path,
            addr,
        });
    }
    Ok(targets)
}

/// Deliveries to expect: each accepted message once per subscribed user of
/// its topic.
fn expected_deliveries(
    published: &load::Published,
    shared: &Shared,
    topics: Topics,
    users: usize,
) -> u64 {
    let subscribed = shared.subscribed.load(Ordering::Relaxed) as u64;
    (0..published.sent)
        .filter(|&seq| published.was_accepted(seq))
        .map(|seq| match topics {
            Topics::Shared => subscribed,
            Topics::PerUser => {
                u64::from(shared.ok[(seq % users as u64) as usize].load(Ordering::Relaxed))
            }
        })
        .sum()
}

/// Waits until every expected delivery arrived, or nothing new arrived for
/// `patience`.
async fn drain(shared: &Shared, expected: u64, patience: Duration) {
    let mut last_count = shared.received.load(Ordering::Relaxed);
    let mut last_progress = Instant::now();
    loop {
        let count = shared.received.load(Ordering::Relaxed);
        if count >= expected || shared.stop.is_cancelled() {
            return;
        }
        if count != last_count {
            last_count = count;
            last_progress = Instant::now();
        } else if last_progress.elapsed() >= patience {
            return;
        }
        tokio::time::sleep(DRAIN_POLL).await;
    }
}
