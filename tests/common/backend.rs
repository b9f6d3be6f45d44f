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

/// A `redis-server` on 127.0.0.1 with no persistence, killed on drop.
pub struct RedisServer {
    /// Its port.
    pub port: u16,
    child: Option<Child>,
    dir: tempfile::TempDir,
}

impl RedisServer {
    /// Starts one on a free port and waits until it answers.
    pub async fn start() -> Self {
        let probe = std::net::TcpListener::bind("127.0.0.1:0").expect("bind port 0");
        let port = probe.local_addr().expect("bound").port();
        drop(probe);
        let mut server = Self {
            port,
            child: None,
            dir: tempfile::tempdir().expect("temp dir"),
        };
        server.spawn(&[]);
        server.wait_up().await;
        server
    }

    /// `redis://127.0.0.1:port`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills it (SIGKILL): whatever it held is gone.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts it again on the same port, empty, with extra `args`.
    pub async fn restart(&mut self, args: &[&str]) {
        self.kill();
        self.spawn(args);
        self.wait_up().await;
    }

    /// Sends one command (inline form) and returns the first line of the
    /// reply.
    pub async fn command(&self, line: &str) -> String {
        let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", self.port))
            .await
            .expect("redis answers");
        stream
            .write_all(format!("{line}\r\n").as_bytes())
            .await
            .expect("written");
        let mut reply = vec![0; 4096];
        let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut reply))
            .await
            .expect("a reply in time")
            .expect("read");
        String::from_utf8_lossy(&reply[..n])
            .lines()
            .next()
            .unwrap_or_default()
            .to_owned()
    }

    fn spawn(&mut self, args: &[&str]) {
        let log = std::fs::File::create(self.dir.path().join("redis.log")).expect("log file");
        let child = Command::new(binary())
            .args(["--bind", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(self.dir.path())
            .args(args)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
    }

    async fn wait_up(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            if let Ok(mut stream) = tokio::net::TcpStream::connect(("127.0.0.1", self.port)).await {
                let mut pong = [0; 7];
                if stream.write_all(b"PING\r\n").await.is_ok()
                    && stream.read_exact(&mut pong).await.is_ok()
                    && &pong == b"+PONG\r\n"
                {
                    return;
                }
            }
            assert!(Instant::now() < deadline, "redis-server never answered");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
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
