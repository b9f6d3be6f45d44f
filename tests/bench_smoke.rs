//! The benchmark harness keeps working: `herald-bench` runs for about a
//! second against a real pod, and against a real NATS server the way
//! `make bench-nats` uses it, and its JSON report says every message
//! reached every user exactly once. No timing is asserted: CI machines
//! vary.

mod common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::process::{Ports, Process};

/// Users per run.
const USERS: u64 = 50;
/// Messages per run (`--rate` × `--duration`).
const MESSAGES: u64 = 200;

#[tokio::test]
async fn herald_bench_delivers_every_message_to_every_user_once() {
    let pod = Process::spawn("127.0.0.1", Ports::free_on(&["127.0.0.1"]), &[], &[]);
    pod.wait_ready().await;

    let args = vec![
        format!("--ws={}", pod.ws_url()),
        format!("--grpc={}", pod.grpc_url()),
    ];
    let report = bench(args, "shared", || pod.logs()).await;
    assert_eq!(report["expected"], USERS * MESSAGES, "{report}");
}

#[tokio::test]
async fn herald_bench_measures_nats_the_same_way() {
    let nats = Nats::start();
    let args = vec![
        "--server=nats".to_owned(),
        format!("--ws=ws://127.0.0.1:{}/", nats.ws_port),
        format!("--nats=127.0.0.1:{}", nats.client_port),
    ];
    // One subject per user: the messages are spread over them.
    let report = bench(args, "per-user", || nats.logs()).await;
    assert_eq!(report["expected"], MESSAGES, "{report}");
}

/// Runs herald-bench with `args` plus a fixed small load over `topics`,
/// and checks its report: every user subscribed, every message published
/// and delivered once. `logs` explains a failure.
async fn bench(
    mut args: Vec<String>,
    topics: &str,
    logs: impl Fn() -> String,
) -> serde_json::Value {
    args.extend([
        format!("--users={USERS}"),
        format!("--topics={topics}"),
        "--rate=200".into(),
        "--duration=1s".into(),
        "--json=-".into(),
    ]);
    let output = tokio::task::spawn_blocking(move || {
        Command::new(env!("CARGO_BIN_EXE_herald-bench"))
            .args(args)
            .output()
            .expect("herald-bench runs")
    })
    .await
    .expect("the bench thread finishes");
    assert!(
        output.status.success(),
        "herald-bench failed:\n{}\nserver log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        logs()
    );
    let stdout = String::from_utf8_lossy(&output.stdout);
    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).expect("the report is JSON");
    assert_eq!(report["connect"]["ok"], USERS, "{line}");
    assert_eq!(report["published"], MESSAGES, "{line}");
    assert_eq!(report["publish_errors"], 0, "{line}");
    assert_eq!(report["received"], report["expected"], "{line}");
    assert_eq!(report["duplicates"], 0, "{line}");
    // The wake-up probe ran over the publish window.
    let wakeups = report["wakeup_late_ms"]["count"].as_u64();
    assert!(wakeups.is_some_and(|n| n >= 1), "{line}");
    report
}

/// A NATS server on loopback with a WebSocket listener, killed on drop.
/// The binary is `$NATS_SERVER`, or what `make nats-server` unpacked.
struct Nats {
    child: Child,
    dir: tempfile::TempDir,
    client_port: u16,
    ws_port: u16,
}

impl Nats {
    fn start() -> Self {
        let binary = std::env::var_os("NATS_SERVER").map_or_else(
            || {
                PathBuf::from(env!("CARGO_MANIFEST_DIR"))
                    .join("target/tools/nats/usr/sbin/nats-server")
            },
            PathBuf::from,
        );
        assert!(
            binary.exists(),
            "{} not found: `make nats-server` fetches it (or set NATS_SERVER)",
            binary.display()
        );
        let ports = Ports::free_on(&["127.0.0.1"]);
        let dir = tempfile::tempdir().expect("temp dir");
        let config = dir.path().join("nats.conf");
        std::fs::write(
            &config,
            format!(
                "listen: 127.0.0.1:{}\nwebsocket {{ listen: \"127.0.0.1:{}\", no_tls: true }}\n",
                ports.http, ports.grpc
            ),
        )
        .expect("config written");
        let log = std::fs::File::create(dir.path().join("nats.log")).expect("log file");
        let child = Command::new(&binary)
            .arg("-c")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("nats-server starts");
        let nats = Self {
            child,
            dir,
            client_port: ports.http,
            ws_port: ports.grpc,
        };
        let deadline = Instant::now() + common::PATIENCE;
        while std::net::TcpStream::connect(("127.0.0.1", nats.ws_port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "NATS not listening:\n{}",
                nats.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        nats
    }

    fn logs(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
