//! No client can hurt the others: connection count, connection rate and
//! origin limits refuse the upgrade with a clear HTTP error, and each
//! refusal is counted.

mod common;

use common::pod::Pod;
use common::process::{http_get, sample};
use common::user::User;
use serde_json::Value;

async fn refusals(pod: &Pod, reason: &str) -> f64 {
    let (_, body) = http_get(pod.http, "/metrics").await.expect("metrics");
    sample(
        &body,
        &format!("herald_refusals_total{{reason=\"{reason}\"}}"),
    )
}

fn code(body: &str) -> String {
    let body: Value = serde_json::from_str(body).expect("JSON error body");
    body["error"]["code"].as_str().expect("a code").to_owned()
}

#[tokio::test]
async fn connections_past_the_pod_limit_are_refused_with_503() {
    let pod = Pod::start(&["--max-connections=2"]).await;
    let mut first = User::connect(&pod.ws_url()).await;
    let _second = User::connect(&pod.ws_url()).await;
    let (status, body) = User::try_connect(&pod.ws_url(), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!(
        (status, code(&body).as_str()),
        (503, "too_many_connections")
    );
    assert_eq!(refusals(&pod, "max_connections").await, 1.0);
    first.still_usable().await;
}

#[tokio::test]
async fn new_connections_past_the_rate_are_refused_with_429() {
    let pod = Pod::start(&["--max-connection-rate=2"]).await;
    let _a = User::connect(&pod.ws_url()).await;
    let _b = User::connect(&pod.ws_url()).await;
    let (status, body) = User::try_connect(&pod.ws_url(), &[])
        .await
        .err()
        .expect("refused");
    assert_eq!((status, code(&body).as_str()), (429, "rate_limited"));
    assert_eq!(refusals(&pod, "connection_rate").await, 1.0);
}

#[tokio::test]
async fn only_allowed_browser_origins_may_connect() {
    let pod = Pod::start(&["--allowed-origins=https://app.example,https://admin.example"]).await;
    let (status, body) = User::try_connect(&pod.ws_url(), &[("origin", "https://evil.example")])
        .await
        .err()
        .expect("refused");
    assert_eq!((status, code(&body).as_str()), (403, "forbidden"));
    assert!(body.contains("evil.example"));
    User::try_connect(&pod.ws_url(), &[("origin", "https://admin.example")])
        .await
        .expect("an allowed origin connects");
    User::try_connect(&pod.ws_url(), &[])
        .await
        .expect("a client without Origin connects");
    assert_eq!(refusals(&pod, "origin").await, 1.0);
}

#[tokio::test]
async fn limit_hits_inside_a_connection_are_counted() {
    let pod = Pod::start(&["--max-subscriptions=1"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("a").await;
    let reply = user
        .request(serde_json::json!({"op":"subscribe","topic":"b"}))
        .await;
    assert_eq!(reply["error"]["code"], "too_many_subscriptions");
    assert_eq!(refusals(&pod, "too_many_subscriptions").await, 1.0);
}
