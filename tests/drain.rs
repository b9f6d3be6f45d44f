//! A rolling deploy does not drop a pod's users all at once: on SIGTERM the
//! pod fails readiness, refuses new users, closes the ones it has with 1012
//! spread over the drain window, and exits; a second pod keeps serving and
//! the users reconnect there.

mod common;

use std::time::{Duration, Instant};

use common::process::{Ports, Process};
use common::user::{Ending, User};
use serde_json::json;

#[tokio::test]
async fn a_drain_closes_every_user_with_1012_within_the_window_while_another_pod_serves() {
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let flags = vec![
        "--discovery=static".to_owned(),
        format!("--peers={}:{p},{}:{p}", ips[0], ips[1], p = ports.peer),
        "--drain-window=2s".to_owned(),
    ];
    let mut draining = Process::spawn(ips[0], ports, &flags, &[]);
    let staying = Process::spawn(ips[1], ports, &flags, &[]);
    draining.wait_ready().await;
    staying.wait_ready().await;

    let mut users = Vec::new();
    for _ in 0..20 {
        let mut user = User::connect(&draining.ws_url()).await;
        user.subscribe("t").await;
        users.push(user);
    }
    let started = Instant::now();
    draining.signal("TERM");
    let endings = futures_util::future::join_all(users.iter_mut().map(|user| async {
        let ending = user.ending().await;
        (ending, started.elapsed())
    }))
    .await;
    for (ending, _) in &endings {
        assert_eq!(*ending, Ending::Close(1012));
    }
    let times: Vec<Duration> = endings.iter().map(|(_, at)| *at).collect();
    let (first, last) = (times.iter().min().copied(), times.iter().max().copied());
    let (first, last) = (first.expect("20 users"), last.expect("20 users"));
    assert!(last <= Duration::from_millis(3500), "closes took {last:?}");
    assert!(
        last - first >= Duration::from_millis(500),
        "closes not spread: {first:?}..{last:?}"
    );

    assert_ne!(
        draining.http_status("/readyz").await,
        Some(200),
        "a draining pod is not ready"
    );
    assert!(
        draining.wait_exit(Duration::from_secs(10)).await,
        "{}",
        draining.logs()
    );

    let mut returned = User::connect(&staying.ws_url()).await;
    returned.subscribe("t").await;
    staying.publish("t", r#""still here""#).await;
    assert_eq!(returned.message("t").await, json!("still here"));
}

#[tokio::test]
async fn a_draining_pod_refuses_new_users_with_503() {
    let ports = Ports::free_on(&["127.0.0.1"]);
    let pod = Process::spawn("127.0.0.1", ports, &["--drain-window=3s".to_owned()], &[]);
    pod.wait_ready().await;
    let _holder = User::connect(&pod.ws_url()).await;
    pod.signal("TERM");
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        match User::try_connect(&pod.ws_url(), &[]).await {
            Err((503, body)) => {
                assert!(body.contains("draining"), "{body}");
                break;
            }
            Ok(_) => assert!(Instant::now() < deadline, "still accepting while draining"),
            Err(other) => panic!("unexpected refusal {other:?}"),
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
