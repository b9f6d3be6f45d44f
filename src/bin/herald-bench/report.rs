//! The run's report: one JSON line (for scripts) and a human table.

use std::io::{self, Write};

use hdrhistogram::Histogram;
use serde::Serialize;

use crate::args::{ServerKind, Topics};

/// Everything one run measured.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    /// The `--label` given.
    pub label: String,
    /// The kind of server measured.
    pub server_kind: ServerKind,
    /// `publish` or `idle`.
    pub mode: &'static str,
    /// Users asked for.
    pub users: usize,
    /// Pods the users were spread over.
    pub pods: usize,
    /// Topic layout.
    pub topics: Topics,
    /// Size of each published document.
    pub payload_bytes: usize,
    /// `--rate`, or `null` when flat out or idle.
    pub target_rate: Option<f64>,
    /// Connection figures.
    pub connect: Connect,
    /// Messages published.
    pub published: u64,
    /// Messages in calls the pod refused or that failed.
    pub publish_errors: u64,
    /// The first publish error, if any.
    pub first_publish_error: Option<String>,
    /// Seconds from the first publish to the last reply.
    pub publish_seconds: f64,
    /// Messages per second achieved.
    pub publish_rate: f64,
    /// Deliveries expected: every accepted message to every subscribed user
    /// of its topic.
    pub expected: u64,
    /// Distinct deliveries received.
    pub received: u64,
    /// `expected - received`, at least 0.
    pub lost: u64,
    /// Deliveries of a message the user already had (by the message's
    /// sequence number, one-to-one with its id).
    pub duplicates: u64,
    /// Users whose connection ended during the run.
    pub disconnects: usize,
    /// Distinct deliveries per second, from the first publish to the last
    /// delivery.
    pub deliveries_per_sec: f64,
    /// Publish→delivery latency.
    pub latency_ms: Latency,
    /// How late a thread sleeping 5 ms at a time woke over the same window:
    /// the machine's scheduling noise, which every hop is exposed to.
    pub wakeup_late_ms: Latency,
    /// The sampled server processes.
    pub server: Server,
    /// CPU seconds the bench itself used over the same window.
    pub bench_cpu_seconds: f64,
    /// The churn beside the load, with `--churn`.
    pub churn: Option<crate::churn::ChurnReport>,
}

/// Connection figures.
#[derive(Debug, Clone, Serialize)]
pub struct Connect {
    /// Users subscribed.
    pub ok: usize,
    /// Users that could not connect or subscribe.
    pub failed: usize,
    /// Wall time to connect and subscribe everyone.
    pub seconds: f64,
    /// Per-user connect + upgrade + subscribe time.
    pub time_ms: Latency,
}

/// Percentiles of a histogram of microseconds, in milliseconds.
#[derive(Debug, Clone, Serialize)]
pub struct Latency {
    /// Samples.
    pub count: u64,
    /// Median.
    pub p50: f64,
    /// 90th percentile.
    pub p90: f64,
    /// 99th percentile.
    pub p99: f64,
    /// 99.9th percentile.
    pub p999: f64,
    /// Largest.
    pub max: f64,
    /// Mean.
    pub mean: f64,
}

impl Latency {
    /// Summarises a histogram of microseconds.
    pub fn of(h: &Histogram<u64>) -> Self {
        let ms = |micros: u64| micros as f64 / 1000.0;
        let empty = h.is_empty();
        let q = |q: f64| {
            if empty {
                0.0
            } else {
                ms(h.value_at_quantile(q))
            }
        };
        Self {
            count: h.len(),
            p50: q(0.50),
            p90: q(0.90),
            p99: q(0.99),
            p999: q(0.999),
            max: if empty { 0.0 } else { ms(h.max()) },
            mean: if empty { 0.0 } else { h.mean() / 1000.0 },
        }
    }
}

/// The server processes over the measured window.
#[derive(Debug, Clone, Serialize)]
pub struct Server {
    /// Their pids.
    pub pids: Vec<u32>,
    /// CPU seconds used (all pids) over the window.
    pub cpu_seconds: f64,
    /// CPU seconds used by each pid over the window, in `pids`' order.
    pub cpu_seconds_each: Vec<f64>,
    /// Resident memory (all pids) before the window.
    pub rss_before_bytes: u64,
    /// Resident memory (all pids) after it.
    pub rss_after_bytes: u64,
    /// Server CPU microseconds per distinct delivery.
    pub cpu_us_per_delivery: Option<f64>,
    /// Growth in resident memory per subscribed connection (idle mode:
    /// before connecting to after settling).
    pub rss_per_connection_bytes: Option<f64>,
}

impl Report {
    /// Writes the report as one JSON line.
    pub fn write_json(&self, mut out: impl Write) -> io::Result<()> {
        serde_json::to_writer(&mut out, self)?;
        writeln!(out)
    }

    /// Writes the human table.
    pub fn write_table(&self, mut out: impl Write) -> io::Result<()> {
        let rows: Vec<(&str, String)> = vec![
            ("run", format!("{} ({})", self.label, self.mode)),
            (
                "users",
                format!(
                    "{} on {} pod(s), topics {:?}, payload {} B",
                    self.users, self.pods, self.topics, self.payload_bytes
                ),
            ),
            (
                "connect",
                format!(
                    "{} ok, {} failed in {:.2} s; per user p50 {:.1} ms, p99 {:.1} ms, max {:.1} ms",
                    self.connect.ok,
                    self.connect.failed,
                    self.connect.seconds,
                    self.connect.time_ms.p50,
                    self.connect.time_ms.p99,
                    self.connect.time_ms.max
                ),
            ),
            (
                "published",
                format!(
                    "{} in {:.2} s = {:.0} msg/s (target {}), {} errors",
                    self.published,
                    self.publish_seconds,
                    self.publish_rate,
                    self.target_rate
                        .map_or("flat out".to_owned(), |r| format!("{r:.0}")),
                    self.publish_errors
                ),
            ),
            (
                "deliveries",
                format!(
                    "{} of {} expected, lost {}, duplicates {}, disconnects {}",
                    self.received, self.expected, self.lost, self.duplicates, self.disconnects
                ),
            ),
            (
                "throughput",
                format!("{:.0} deliveries/s", self.deliveries_per_sec),
            ),
            (
                "latency",
                format!(
                    "p50 {:.2} ms, p90 {:.2}, p99 {:.2}, p99.9 {:.2}, max {:.2}",
                    self.latency_ms.p50,
                    self.latency_ms.p90,
                    self.latency_ms.p99,
                    self.latency_ms.p999,
                    self.latency_ms.max
                ),
            ),
            (
                "wake-ups",
                format!(
                    "a sleeping thread woke late by p50 {:.2} ms, p99 {:.2}, max {:.2}",
                    self.wakeup_late_ms.p50, self.wakeup_late_ms.p99, self.wakeup_late_ms.max
                ),
            ),
            (
                "server cpu",
                format!(
                    "{:.2} s{}; bench itself {:.2} s",
                    self.server.cpu_seconds,
                    self.server
                        .cpu_us_per_delivery
                        .map_or(String::new(), |c| format!(" = {c:.2} µs per delivery")),
                    self.bench_cpu_seconds
                ),
            ),
            (
                "server rss",
                format!(
                    "{:.1} MiB → {:.1} MiB{}",
                    mib(self.server.rss_before_bytes),
                    mib(self.server.rss_after_bytes),
                    self.server
                        .rss_per_connection_bytes
                        .map_or(String::new(), |b| format!(
                            " = {:.1} KiB per connection",
                            b / 1024.0
                        ))
                ),
            ),
        ];
        for (key, value) in rows {
            writeln!(out, "{key:>12}  {value}")?;
        }
        Ok(())
    }
}

fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}
