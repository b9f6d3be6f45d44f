//! The benchmark harness keeps working: `herald-bench` runs for about a
//! second against a real pod and its JSON report says every message reached
//! every user exactly once. No timing is asserted: CI machines vary.

mod common;

use std::process::Command;

use common::process::{Ports, Process};

#[tokio::test]
async fn herald_bench_delivers_every_message_to_every_user_once() {
    let pod = Process::spawn("127.0.0.1", Ports::free_on(&["127.0.0.1"]), &[], &[]);
    pod.wait_ready().await;

    let output = tokio::task::spawn_blocking({
        let (ws, grpc) = (pod.ws_url(), pod.grpc_url());
        move || {
            Command::new(env!("CARGO_BIN_EXE_herald-bench"))
                .args([
                    &format!("--ws={ws}"),
                    &format!("--grpc={grpc}"),
                    "--users=50",
                    "--rate=200",
                    "--duration=1s",
                    "--json=-",
                ])
                .output()
                .expect("herald-bench runs")
        }
    })
    .await
    .expect("the bench thread finishes");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "herald-bench failed:\n{}\npod log:\n{}",
        String::from_utf8_lossy(&output.stderr),
        pod.logs()
    );

    let line = stdout.lines().last().expect("a JSON line");
    let report: serde_json::Value = serde_json::from_str(line).expect("the report is JSON");
    assert_eq!(report["connect"]["ok"], 50, "{line}");
    assert_eq!(report["published"], 200, "{line}");
    assert_eq!(report["expected"], 50 * 200, "{line}");
    assert_eq!(report["received"], report["expected"], "{line}");
    assert_eq!(report["duplicates"], 0, "{line}");
}
