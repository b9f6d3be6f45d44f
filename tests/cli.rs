//! The `herald` binary: `herald serve` as a real process, and `herald
//! publish` as the operators' client of the gRPC API.

mod common;

use std::io::Write;
use std::process::{Command, Stdio};

use common::process::{Ports, Process};
use common::user::User;
use serde_json::json;

fn herald(args: &[&str], stdin: Option<&str>) -> std::process::Output {
    let mut child = Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("herald runs");
    let mut input = child.stdin.take().expect("stdin piped");
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).expect("stdin written");
    }
    drop(input);
    child.wait_with_output().expect("herald exits")
}

#[tokio::test]
async fn herald_publish_reaches_a_subscriber_of_a_real_herald_process() {
    let pod = Process::spawn("127.0.0.1", Ports::free_on(&["127.0.0.1"]), &[], &[]);
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("room:1").await;

    let addr = pod.grpc_url();
    let with_flag = herald(
        &[
            "publish",
            "--addr",
            &addr,
            "--topic",
            "room:1",
            "--data",
            r#"{"k":1}"#,
        ],
        None,
    );
    assert!(
        with_flag.status.success(),
        "{}",
        String::from_utf8_lossy(&with_flag.stderr)
    );
    let id = String::from_utf8(with_flag.stdout).expect("utf-8");
    let frame = user.frame("room:1").await;
    assert_eq!(frame["id"], id.trim());
    assert_eq!(frame["offset"], 1);
    assert_eq!(frame["data"], json!({"k":1}));

    let from_stdin = herald(
        &["publish", "--addr", &addr, "--topic", "room:1"],
        Some("[1, 2]\n"),
    );
    assert!(
        from_stdin.status.success(),
        "{}",
        String::from_utf8_lossy(&from_stdin.stderr)
    );
    assert_eq!(user.message("room:1").await, json!([1, 2]));
}

#[tokio::test]
async fn herald_publish_says_why_a_publish_was_refused_and_exits_non_zero() {
    let pod = Process::spawn("127.0.0.1", Ports::free_on(&["127.0.0.1"]), &[], &[]);
    pod.wait_ready().await;
    let out = herald(
        &[
            "publish",
            "--addr",
            &pod.grpc_url(),
            "--topic",
            "room 1",
            "--data",
            "1",
        ],
        None,
    );
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("invalid topic"), "{stderr}");
}

#[tokio::test]
async fn herald_publish_to_nothing_fails_clearly() {
    let port = Ports::free_on(&["127.0.0.1"]).grpc;
    let addr = format!("http://127.0.0.1:{port}");
    let out = herald(
        &["publish", "--addr", &addr, "--topic", "t", "--data", "1"],
        None,
    );
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot reach"));
}

#[tokio::test]
async fn sigterm_closes_users_with_1012_and_the_process_exits_cleanly() {
    let mut pod = Process::spawn(
        "127.0.0.1",
        Ports::free_on(&["127.0.0.1"]),
        &["--drain-window=500ms".to_owned()],
        &[],
    );
    pod.wait_ready().await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("t").await;
    pod.signal("TERM");
    assert_eq!(user.ending().await, common::user::Ending::Close(1012));
    assert!(
        pod.wait_exit(std::time::Duration::from_secs(15)).await,
        "{}",
        pod.logs()
    );
}

#[test]
fn check_config_accepts_real_flags_and_refuses_unknown_ones() {
    let ok = herald(
        &[
            "serve",
            "--discovery=static",
            "--peers=10.0.0.1:7070",
            "--check-config",
        ],
        None,
    );
    assert!(ok.status.success());
    let bad = herald(&["serve", "--no-such-flag", "--check-config"], None);
    assert!(!bad.status.success());
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--no-such-flag"));
}

#[test]
fn a_write_delay_that_is_neither_a_duration_nor_auto_is_refused_at_start() {
    for good in [
        "--write-delay=20ms",
        "--write-delay=auto",
        "--write-delay=auto:50ms",
    ] {
        let ok = herald(&["serve", good, "--check-config"], None);
        assert!(ok.status.success(), "{good} was refused");
    }
    for bad in ["--write-delay=soon", "--write-delay=auto:soon"] {
        let refused = herald(&["serve", bad, "--check-config"], None);
        assert!(!refused.status.success(), "{bad} was accepted");
        assert!(String::from_utf8_lossy(&refused.stderr).contains("--write-delay"));
    }
}
