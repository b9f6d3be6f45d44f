//! No client can hurt the others: connection count, connection rate and
//! origin limits refuse the upgrade with a clear HTTP error, connections
//! that stall before their request are cut off, and each refusal is
//! counted.

mod common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::pod::Pod;
use common::process::{http_get, sample};
use common::user::User;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

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

/// The `Retry-After` header and the body of a raw upgrade request's answer.
async fn raw_upgrade(pod: &Pod) -> (Option<u64>, Value) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(pod.http)
        .await
        .expect("connects");
    let request = "GET /ws HTTP/1.1\r\nHost: herald\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
                   Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n";
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut response = Vec::new();
    let mut buf = [0u8; 4096];
    let text = loop {
        let n = stream.read(&mut buf).await.expect("read");
        assert!(n > 0, "the pod answered {response:?}");
        response.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&response).into_owned();
        if let Some((head, body)) = text.split_once("\r\n\r\n") {
            let length: usize = head
                .lines()
                .find_map(|l| {
                    l.to_ascii_lowercase()
                        .strip_prefix("content-length:")
                        .map(|v| v.trim().parse().expect("length"))
                })
                .expect("content-length");
            if body.len() >= length {
                break text;
            }
        }
    };
    let (head, body) = text.split_once("\r\n\r\n").expect("a head");
    let retry_after = head.lines().find_map(|l| {
        l.to_ascii_lowercase()
            .strip_prefix("retry-after:")
            .map(|v| v.trim().parse().expect("seconds"))
    });
    (retry_after, serde_json::from_str(body).expect("JSON body"))
}

#[tokio::test]
async fn refusals_for_load_carry_a_random_retry_after_that_spreads_the_refused_out() {
    let pod = Pod::start(&["--max-connection-rate=1", "--max-connection-rate-per-ip=0"]).await;
    let _first = User::connect(&pod.ws_url()).await;
    let mut hints = std::collections::BTreeSet::new();
    for _ in 0..40 {
        let (header, body) = raw_upgrade(&pod).await;
        assert_eq!(body["error"]["code"], "rate_limited");
        let seconds = header.expect("a Retry-After header");
        assert!((1..=5).contains(&seconds), "{seconds}");
        assert_eq!(
            body["error"]["retry_after"], seconds,
            "the body says the same"
        );
        hints.insert(seconds);
    }
    assert!(
        hints.len() >= 3,
        "forty refusals at once should not share one hint: {hints:?}"
    );

    let full = Pod::start(&["--max-connections=1"]).await;
    let _only = User::connect(&full.ws_url()).await;
    let (header, body) = raw_upgrade(&full).await;
    assert_eq!(body["error"]["code"], "too_many_connections");
    assert!((5..=30).contains(&header.expect("a Retry-After header")));
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

/// Upgrades from `source` until one is refused; how many got in, and the
/// refusal.
async fn until_refused(
    pod: &Pod,
    source: &str,
    headers: &[(&str, &str)],
) -> (usize, (u16, String)) {
    let source = source.parse().expect("an address");
    let mut kept = Vec::new();
    loop {
        match User::try_connect_from(Some(source), &pod.ws_url(), headers).await {
            Ok((user, _)) => kept.push(user),
            Err(refusal) => return (kept.len(), refusal),
        }
        assert!(kept.len() < 100, "never refused");
    }
}

#[tokio::test]
async fn a_flood_from_one_address_leaves_other_addresses_their_connections() {
    let pod = Pod::start(&[
        "--max-connection-rate-per-ip=5",
        "--max-connection-rate=1000",
    ])
    .await;
    let (admitted, (status, body)) = until_refused(&pod, "127.0.0.7", &[]).await;
    assert!(
        (10..=12).contains(&admitted),
        "a burst of about twice the rate: {admitted}"
    );
    assert_eq!((status, code(&body).as_str()), (429, "rate_limited"));
    assert!(body.contains("127.0.0.7"), "{body}");
    assert_eq!(refusals(&pod, "connection_rate_ip").await, 1.0);
    assert_eq!(refusals(&pod, "connection_rate").await, 0.0);
    let other = "127.0.0.8".parse().ok();
    for _ in 0..5 {
        User::try_connect_from(other, &pod.ws_url(), &[])
            .await
            .expect("another address still gets in");
    }
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_client_address_comes_from_its_header_and_only_then() {
    let pod = Pod::start(&[
        "--max-connection-rate-per-ip=2",
        "--client-ip-header=x-forwarded-for",
        "--trusted-proxies=127.0.0.20/31",
    ])
    .await;
    // Two clients behind one proxy: each has its own rate.
    let one = [("x-forwarded-for", "198.51.100.1, 203.0.113.1")];
    let (admitted, _) = until_refused(&pod, "127.0.0.20", &one).await;
    assert_eq!(admitted, 4);
    let two = [("x-forwarded-for", "203.0.113.2")];
    User::try_connect_from("127.0.0.21".parse().ok(), &pod.ws_url(), &two)
        .await
        .expect("the other client, through the other proxy address");
    // A client that is no trusted proxy cannot pick its address.
    let (admitted, _) =
        until_refused(&pod, "127.0.0.30", &[("x-forwarded-for", "203.0.113.3")]).await;
    assert_eq!(admitted, 4);
    let (status, _) = User::try_connect_from(
        "127.0.0.30".parse().ok(),
        &pod.ws_url(),
        &[("x-forwarded-for", "203.0.113.4")],
    )
    .await
    .err()
    .expect("still its own address's rate");
    assert_eq!(status, 429);
}

/// Waits until the pod's metrics answer and `name` reads `value`.
async fn wait_for_sample(pod: &Pod, name: &str, value: f64) {
    let deadline = Instant::now() + PATIENCE;
    loop {
        // While the cap of pending handshakes is reached, the metrics
        // request itself is refused; it is asked again.
        if let Some((200, body)) = http_get(pod.http, "/metrics").await
            && sample(&body, name) == value
        {
            return;
        }
        assert!(Instant::now() < deadline, "{name} never read {value}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A socket on `pod`'s HTTP port that has sent the start of a request line.
async fn stalled(pod: &Pod) -> TcpStream {
    let mut socket = TcpStream::connect(pod.http).await.expect("connects");
    socket.write_all(b"GET /ws HTT").await.expect("written");
    socket
}

#[tokio::test]
async fn a_client_that_trickles_its_request_is_cut_off_after_the_header_timeout_while_others_are_served()
 {
    let pod = Pod::start(&["--header-read-timeout=1s"]).await;
    let mut slow = stalled(&pod).await;
    let cut_off = async {
        // One more byte of a header every 200 ms: trickling does not
        // restart the timeout.
        let mut read = [0u8; 64];
        let mut trickle = tokio::time::interval(Duration::from_millis(200));
        loop {
            tokio::select! {
                n = slow.read(&mut read) => {
                    assert!(matches!(n, Ok(0) | Err(_)), "an answer to half a request: {n:?}");
                    return;
                }
                _ = trickle.tick() => {
                    let _ = slow.write_all(b"x").await;
                }
            }
        }
    };
    let others = async {
        let mut user = User::connect(&pod.ws_url()).await;
        user.subscribe("t").await;
        pod.publish("t", r#""meanwhile""#).await;
        assert_eq!(user.message("t").await, json!("meanwhile"));
        user
    };
    let (within, mut user) = tokio::join!(
        tokio::time::timeout(Duration::from_secs(5), cut_off),
        others
    );
    within.expect("the trickling client is cut off within a few seconds of a 1 s timeout");
    assert_eq!(refusals(&pod, "header_timeout").await, 1.0);
    user.still_usable().await;
}

#[tokio::test]
async fn past_the_cap_of_pending_handshakes_a_connection_is_refused_and_counted_and_upgrades_work_once_they_are_gone()
 {
    let pod = Pod::start(&["--max-pending-handshakes=3", "--header-read-timeout=60s"]).await;
    let mut held = vec![stalled(&pod).await, stalled(&pod).await];
    wait_for_sample(&pod, r#"herald_handshakes_pending{listener="http"}"#, 2.0).await;
    held.push(stalled(&pod).await);

    // The fourth is closed at once, well before the header timeout, with
    // a 503 since it has sent nothing the socket would have to discard.
    let mut refused = TcpStream::connect(pod.http).await.expect("connects");
    let mut answer = Vec::new();
    tokio::time::timeout(PATIENCE, refused.read_to_end(&mut answer))
        .await
        .expect("closed at once")
        .expect("read");
    let answer = String::from_utf8_lossy(&answer);
    assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
    assert!(answer.contains("too_many_handshakes"), "{answer}");

    for mut socket in held {
        // Ends the request half-way; once the pod has closed its side, the
        // connection has left the count.
        socket.shutdown().await.expect("shut down");
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(PATIENCE, socket.read_to_end(&mut rest)).await;
    }
    wait_for_sample(&pod, r#"herald_handshakes_pending{listener="http"}"#, 0.0).await;
    assert_eq!(refusals(&pod, "handshakes").await, 1.0);
    let mut user = User::connect(&pod.ws_url()).await;
    user.still_usable().await;
}
