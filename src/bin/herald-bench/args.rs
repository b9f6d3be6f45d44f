//! The command line of `herald-bench`: one clap-derived [`Args`]. The `///`
//! docs here are the `--help` text.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};

/// herald-bench: open N WebSocket users on one or more pods, publish through
/// gRPC, and measure delivery (rate, loss, duplicates, latency) and the
/// server's CPU and memory. With `--server=nats`, the same load against a
/// NATS cluster's WebSocket listeners, publishing over NATS's TCP port; with
/// `--server=socketio`, against Socket.IO nodes (rooms as topics),
/// publishing as events to one node.
#[derive(Debug, Clone, Parser)]
#[command(name = "herald-bench", version, about, long_about = None)]
pub struct Args {
    /// WebSocket URL of a pod (`ws://host:port/ws`); repeat or separate with
    /// commas to spread users round-robin over several pods.
    #[arg(long, value_delimiter = ',', required = true)]
    pub ws: Vec<String>,
    /// gRPC address of the pod to publish to.
    #[arg(long, default_value = "http://127.0.0.1:9090")]
    pub grpc: String,
    /// What the users and the publisher talk to.
    #[arg(long, value_enum, default_value = "herald")]
    pub server: ServerKind,
    /// With `--server=nats`: the NATS client port (`host:port`) to publish
    /// to.
    #[arg(long, default_value = "127.0.0.1:4222")]
    pub nats: String,
    /// With `--server=socketio`: the Socket.IO node to publish to.
    #[arg(
        long,
        default_value = "ws://127.0.0.1:3000/socket.io/?EIO=4&transport=websocket"
    )]
    pub socketio: String,
    /// Number of WebSocket users.
    #[arg(long, default_value_t = 100)]
    pub users: usize,
    /// Most new connections opened per second.
    #[arg(long, default_value_t = 1000.0)]
    pub connect_rate: f64,
    /// Most connection attempts in flight at once.
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// `shared`: every user on one topic; `per-user`: one topic each,
    /// messages published round robin over them.
    #[arg(long, value_enum, default_value = "shared")]
    pub topics: Topics,
    /// Publish rate in messages per second.
    #[arg(long, conflicts_with = "flat_out")]
    pub rate: Option<f64>,
    /// Publish as fast as the pod accepts, in PublishBatch calls of
    /// `--batch` messages.
    #[arg(long)]
    pub flat_out: bool,
    /// Messages per PublishBatch call with `--flat-out`.
    #[arg(long, default_value_t = 100)]
    pub batch: usize,
    /// Messages to publish in total.
    #[arg(long, conflicts_with = "duration")]
    pub messages: Option<u64>,
    /// How long to publish (e.g. `10s`); with `--rate`, the message count is
    /// rate × duration.
    #[arg(long, value_parser = humantime::parse_duration)]
    pub duration: Option<Duration>,
    /// Size of each published JSON document in bytes (the send timestamp,
    /// a sequence number and padding).
    #[arg(long, default_value_t = 128)]
    pub payload_bytes: usize,
    /// How long to wait after the last publish for missing deliveries while
    /// nothing arrives.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub drain_timeout: Duration,
    /// Server process ids to sample: CPU seconds (utime + stime from
    /// /proc/PID/stat) and resident memory (VmRSS) before and after.
    #[arg(long, value_delimiter = ',')]
    pub pids: Vec<u32>,
    /// Idle mode: connect and subscribe every user, wait `--settle`, measure
    /// resident memory per connection; publish nothing.
    #[arg(long)]
    pub idle: bool,
    /// Churn: this many connections per second join `--churn-topic` and
    /// leave it again while the messages are published (herald only).
    #[arg(long, default_value_t = 0.0)]
    pub churn: f64,
    /// The topic the churn's connections subscribe to.
    #[arg(long, default_value = "room:churn")]
    pub churn_topic: String,
    /// How long idle mode waits before sampling memory.
    #[arg(long, default_value = "3s", value_parser = humantime::parse_duration)]
    pub settle: Duration,
    /// Spread client source addresses over this many loopback addresses
    /// (127.1.K.1) when the pod is on loopback, so 10,000s of connections
    /// never run out of ephemeral ports; 0 lets the kernel choose.
    #[arg(long, default_value_t = 8)]
    pub source_ips: u8,
    /// The prefix of the topics' names. Random by default, so that runs
    /// never share topics; a fixed one lets a warm-up run create the topics
    /// that a measured run then publishes to (a topic's first message
    /// costs more than the others on a mesh of many pods).
    #[arg(long)]
    pub topic_prefix: Option<String>,
    /// A label for this run, copied into the report.
    #[arg(long, default_value = "")]
    pub label: String,
    /// Write the JSON report line to this file; `-` for standard output (the
    /// human table then goes to standard error).
    #[arg(long)]
    pub json: Option<PathBuf>,
}

/// The kind of server under load.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ServerKind {
    /// herald: protocol v1 over WebSocket, publishing through gRPC.
    Herald,
    /// NATS: its protocol over its WebSocket listener, publishing over TCP;
    /// topics are subjects.
    Nats,
    /// Socket.IO (bench/socketio/server.js): Engine.IO 4 over WebSocket,
    /// topics are rooms, publishing as `publish` events to one node.
    #[value(name = "socketio")]
    #[serde(rename = "socketio")]
    SocketIo,
}

/// How users map to topics.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Topics {
    /// One topic for everyone.
    Shared,
    /// One topic per user.
    PerUser,
}

/// How many messages to publish and how fast, resolved from the flags.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Messages per second, or `None` for flat out.
    pub rate: Option<f64>,
    /// Stop after this many messages, if set.
    pub messages: Option<u64>,
    /// Stop after this long, if set.
    pub duration: Option<Duration>,
}

impl Args {
    /// Checks the flags that clap cannot and resolves the publish plan.
    pub fn plan(&self) -> anyhow::Result<Plan> {
        anyhow::ensure!(self.users > 0, "--users must be at least 1");
        anyhow::ensure!(self.connect_rate > 0.0, "--connect-rate must be positive");
        anyhow::ensure!(self.batch > 0, "--batch must be at least 1");
        anyhow::ensure!(
            self.churn >= 0.0 && (self.churn == 0.0 || self.server == ServerKind::Herald),
            "--churn takes a rate of 0 or more, against herald"
        );
        if self.idle {
            return Ok(Plan {
                rate: None,
                messages: Some(0),
                duration: None,
            });
        }
        let rate = match (self.rate, self.flat_out) {
            (Some(r), false) if r > 0.0 => Some(r),
            (None, true) => None,
            _ => anyhow::bail!("give --rate R (positive) or --flat-out, or --idle"),
        };
        let messages = match (self.messages, self.duration, rate) {
            (Some(m), None, _) => Some(m),
            (None, Some(d), Some(r)) => Some((d.as_secs_f64() * r).round() as u64),
            (None, Some(_), None) => None,
            _ => anyhow::bail!("give --messages M or --duration D"),
        };
        Ok(Plan {
            rate,
            messages,
            duration: self.duration,
        })
    }
}
