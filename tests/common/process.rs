//! herald pods as real processes of the built binary, each on its own
//! loopback address (127.0.0.1, 127.0.0.2, ...) with the same ports, like
//! pods in a cluster. Killed (SIGKILL) when dropped.

use std::net::{SocketAddr, TcpListener};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use herald::proto::v1::ListPeersRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::PATIENCE;

/// Ports shared by every pod of a test cluster.
#[derive(Debug, Clone, Copy)]
pub struct Ports {
    /// HTTP.
    pub http: u16,
    /// gRPC.
    pub grpc: u16,
    /// Peer.
    pub peer: u16,
}

impl Ports {
    /// Three ports free on every one of `ips` right now.
    pub fn free_on(ips: &[&str]) -> Self {
        let mut ports = Vec::new();
        while ports.len() < 3 {
            let probe = TcpListener::bind("127.0.0.1:0").expect("bind port 0");
            let port = probe.local_addr().expect("bound").port();
            drop(probe);
            let free = ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok());
            if free && !ports.contains(&port) {
                ports.push(port);
            }
        }
        Self {
            http: ports[0],
            grpc: ports[1],
            peer: ports[2],
        }
    }
}

/// One herald process.
pub struct Process {
    /// Its loopback address.
    pub ip: String,
    /// Its ports.
    pub ports: Ports,
    child: Child,
    log: PathBuf,
    _dir: tempfile::TempDir,
}

impl Process {
    /// Starts `herald serve` on `ip` with `ports` and extra `flags` and
    /// environment.
    pub fn spawn(ip: &str, ports: Ports, flags: &[String], env: &[(&str, String)]) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let log = dir.path().join("herald.log");
        let log_file = std::fs::File::create(&log).expect("log file");
        let mut command = Command::new(env!("CARGO_BIN_EXE_herald"));
        command
            .arg("serve")
            .arg(format!("--http-addr={ip}:{}", ports.http))
            .arg(format!("--grpc-addr={ip}:{}", ports.grpc))
            .arg(format!("--peer-addr={ip}:{}", ports.peer))
            .args(flags)
            .env("RUST_LOG", "info,herald=debug")
            .env_remove("KUBECONFIG")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = command.spawn().expect("herald starts");
        Self {
            ip: ip.to_owned(),
            ports,
            child,
            log,
            _dir: dir,
        }
    }

    /// `ws://ip:http/ws`.
    pub fn ws_url(&self) -> String {
        format!("ws://{}:{}/ws", self.ip, self.ports.http)
    }

    /// `http://ip:grpc`.
    pub fn grpc_url(&self) -> String {
        format!("http://{}:{}", self.ip, self.ports.grpc)
    }

    /// Publishes `data` to `topic` through this pod's gRPC API; returns the
    /// message id.
    pub async fn publish(&self, topic: &str, data: &str) -> String {
        super::publish(self.grpc_url(), topic, data).await
    }

    /// The HTTP status of `GET path`, or `None` if nothing answers.
    pub async fn http_status(&self, path: &str) -> Option<u16> {
        let addr: SocketAddr = format!("{}:{}", self.ip, self.ports.http).parse().ok()?;
        http_status(addr, path).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self) {
        let deadline = Instant::now() + PATIENCE;
        while self.http_status("/readyz").await != Some(200) {
            assert!(
                Instant::now() < deadline,
                "pod {} not ready; log:\n{}",
                self.ip,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until this pod reports a connected stream to each of `peers`
    /// (`ip:port` of their peer listeners).
    pub async fn wait_connected(&self, peers: &[String]) {
        let mut client = PublisherClient::connect(self.grpc_url())
            .await
            .expect("gRPC connects");
        let deadline = Instant::now() + PATIENCE;
        loop {
            let reply = client
                .list_peers(ListPeersRequest {})
                .await
                .expect("peers")
                .into_inner();
            let up = peers
                .iter()
                .all(|p| reply.peers.iter().any(|s| &s.address == p && s.connected));
            if up {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "{} never connected to {peers:?}: {reply:?}",
                self.ip
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits until the log holds a line containing `needle`.
    pub async fn wait_for_log(&self, needle: &str) -> String {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let logs = self.logs();
            if let Some(line) = logs.lines().find(|l| l.contains(needle)) {
                return line.to_owned();
            }
            assert!(
                Instant::now() < deadline,
                "no log line with {needle:?} from {}:\n{logs}",
                self.ip
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Everything the process logged so far.
    pub fn logs(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Sends a signal by name (`TERM`, `KILL`).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill runs");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns whether it exited cleanly.
    pub async fn wait_exit(&mut self, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().expect("wait works") {
                return status.success();
            }
            assert!(Instant::now() < deadline, "pod {} did not exit", self.ip);
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Waits until every pod of a mesh is ready and streams to every other.
pub async fn wait_whole(pods: &[Process]) {
    for pod in pods {
        pod.wait_ready().await;
    }
    for pod in pods {
        let others: Vec<String> = pods
            .iter()
            .filter(|p| p.ip != pod.ip)
            .map(|p| format!("{}:{}", p.ip, p.ports.peer))
            .collect();
        pod.wait_connected(&others).await;
    }
}

/// One pod per address of `ips`, sharing `ports` and `flags`, each waited
/// for until ready.
pub async fn spawn_ready(ips: &[&str], ports: Ports, flags: &[String]) -> Vec<Process> {
    let pods: Vec<Process> = ips
        .iter()
        .map(|ip| Process::spawn(ip, ports, flags, &[]))
        .collect();
    for pod in &pods {
        pod.wait_ready().await;
    }
    pods
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET, enough for the probes.
pub async fn http_status(addr: SocketAddr, path: &str) -> Option<u16> {
    http_get(addr, path).await.map(|(status, _)| status)
}

/// A minimal HTTP/1.0 GET: the status and the body.
pub async fn http_get(addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    let mut stream =
        tokio::time::timeout(Duration::from_secs(1), tokio::net::TcpStream::connect(addr))
            .await
            .ok()?
            .ok()?;
    stream
        .write_all(format!("GET {path} HTTP/1.0\r\nHost: herald\r\n\r\n").as_bytes())
        .await
        .ok()?;
    let mut response = Vec::new();
    tokio::time::timeout(Duration::from_secs(1), stream.read_to_end(&mut response))
        .await
        .ok()?
        .ok()?;
    let text = String::from_utf8_lossy(&response);
    let status = text.split_whitespace().nth(1)?.parse().ok()?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, body)| body);
    Some((status, body.to_owned()))
}

/// The value of the Prometheus sample `name` (with its labels, as written
/// in the exposition, e.g. `herald_x_total{reason="slow"}`), or 0.
pub fn sample(exposition: &str, name: &str) -> f64 {
    exposition
        .lines()
        .filter(|line| !line.starts_with('#'))
        .find_map(|line| {
            let (key, value) = line.rsplit_once(' ')?;
            (key == name).then(|| value.parse().ok())?
        })
        .unwrap_or(0.0)
}
