//! The broadcast backends a cluster test runs against, so that one test
//! body holds for both: the mesh (the pods find each other by static
//! discovery) or Redis (a real `redis-server` started for the test on
//! 127.0.0.1, killed when dropped).
//!
//! [`on_both_backends!`](crate::on_both_backends) turns `async fn
//! name(backend: Backend)` into the tests `name::mesh` and `name::redis`.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PATIENCE;
use super::process::Ports;

/// Runs a test body `async fn $name(backend: Backend)` once per backend,
/// as the tests `$name::mesh` and `$name::redis`.
#[macro_export]
macro_rules! on_both_backends {
    ($name:ident) => {
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn mesh() {
                super::$name($crate::common::backend::Backend::mesh()).await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn redis() {
                super::$name($crate::common::backend::Backend::redis().await).await;
            }
        }
    };
}

/// What carries messages between a test's pods.
pub enum Backend {
    /// The pods' own mesh.
    Mesh,
    /// A Redis server of the test's own.
    Redis(RedisServer),
}

impl Backend {
    /// The mesh.
    pub fn mesh() -> Self {
        Self::Mesh
    }

    /// A fresh Redis, up.
    pub async fn redis() -> Self {
        Self::Redis(RedisServer::start().await)
    }

    /// The `herald serve` flags that put pods on `ips` (sharing `ports`)
    /// in one group.
    pub fn flags(&self, ips: &[&str], ports: Ports) -> Vec<String> {
        match self {
            Self::Mesh => {
                let peers: Vec<String> = ips
                    .iter()
                    .map(|ip| format!("{ip}:{}", ports.peer))
                    .collect();
                vec![
                    "--discovery=static".into(),
                    format!("--peers={}", peers.join(",")),
                ]
            }
            Self::Redis(redis) => vec![
                "--broadcast=redis".into(),
                format!("--redis-url={}", redis.url()),
            ],
        }
    }

    /// The link the first pod's peers (mesh) or every pod (Redis) dial:
    /// the first pod's peer port, or Redis.
    pub fn first_link(&self, ips: &[&str], ports: Ports) -> String {
        match self {
            Self::Mesh => format!("{}:{}", ips[0], ports.peer),
            Self::Redis(redis) => format!("127.0.0.1:{}", redis.port),
        }
    }

    /// [`flags`](Self::flags) for a pod that reaches [`first_link`](Self::first_link)
    /// through `via` instead.
    pub fn flags_through(&self, ips: &[&str], ports: Ports, via: &str) -> Vec<String> {
        let first = self.first_link(ips, ports);
        self.flags(ips, ports)
            .into_iter()
            .map(|flag| flag.replace(&first, via))
            .collect()
    }

    /// The log line a pod writes when a broken link to the group is up
    /// again.
    pub fn relinked_log(&self) -> &'static str {
        match self {
            Self::Mesh => "peer stream up again",
            Self::Redis(_) => "subscribed to the cluster's channels",
        }
    }

    /// The log line a pod writes when it first hears of another.
    pub fn joined_log(&self) -> &'static str {
        match self {
            Self::Mesh => "peer stream up",
            Self::Redis(_) => "a pod joined the group",
        }
    }

    /// The Redis server, for the tests that need it.
    pub fn redis_server(&mut self) -> &mut RedisServer {
        match self {
            Self::Redis(redis) => redis,
            Self::Mesh => panic!("not a Redis backend"),
        }
    }
}

/// A `redis-server` on 127.0.0.1 (no persistence unless its arguments ask
/// for it), killed on drop.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    args: Vec<String>,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Self {
        Self::start_with(&[]).await
    }

    /// [`start`](Self::start) with extra `redis-server` arguments, kept for
    /// its restarts.
    pub async fn start_with(args: &[&str]) -> Self {
        let mut server = Self::reserve(args);
        server.up().await;
        server
    }

    /// One on a free port, not started yet.
    pub fn reserve(args: &[&str]) -> Self {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = probe.local_addr().expect("bound").port();
        drop(probe);
        Self {
            port,
            args: args.iter().map(|a| (*a).to_owned()).collect(),
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        }
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// `127.0.0.1:port`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): what it did not persist is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Kills it and starts it again on the same port and directory: empty,
    /// unless its arguments persist data.
    pub async fn restart(&mut self) {
        self.kill();
        self.up().await;
    }

    /// Starts it (it is not running) and waits until it answers.
    pub async fn up(&mut self) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(&self.args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        let deadline = Instant::now() + PATIENCE;
        // Any answer will do: one that asks for a password is up too.
        while self.command("PING").await.is_none() {
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Sends one command (inline form) and returns the first line of the
    /// reply, or `None` if the server does not answer.
    pub async fn command(&self, line: &str) -> Option<String> {
        command_at(self.port, line.to_owned()).await
    }
}

/// Sends one command (inline form) to the Redis on 127.0.0.1:`port` and
/// returns the first line of the reply, or `None` if nothing answers.
pub async fn command_at(port: u16, line: String) -> Option<String> {
    let exchange = async {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .ok()?;
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .ok()?;
        let mut reply = vec![0; 4096];
        let n = stream.read(&mut reply).await.ok()?;
        let text = String::from_utf8_lossy(&reply[..n]).into_owned();
        text.lines().next().map(str::to_owned)
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .ok()
        .flatten()
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// `$REDIS_SERVER`, or what `make redis-server` unpacked.
fn binary() -> PathBuf {
    let path = std::env::var_os("REDIS_SERVER").map_or_else(
        || PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/tools/redis/redis-server"),
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "{} not found: `make redis-server` fetches it (or set REDIS_SERVER)",
        path.display()
    );
    path
}
