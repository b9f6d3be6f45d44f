//! Bad input from a WebSocket client gets an error reply with a stable code
//! and leaves the connection, the pod and the other users unharmed.

mod common;

use common::pod::Pod;
use common::user::{Ending, User};
use serde_json::json;
use tokio_tungstenite::tungstenite::Message;

async fn error_code_for(user: &mut User, frame: &str) -> serde_json::Value {
    user.send(Message::text(frame)).await;
    let reply = user.next().await;
    assert_eq!(reply["op"], "reply", "{reply}");
    assert_eq!(reply["ok"], false, "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{reply}"
    );
    reply["error"]["code"].clone()
}

#[tokio::test]
async fn each_malformed_request_gets_its_code_and_the_connection_stays_usable() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let cases = [
        ("{not json", "invalid_json"),
        ("[1,2,3]", "missing_field"),
        (r#"{"topic":"t"}"#, "missing_field"),
        (r#"{"op":"subscribe","ref":"1"}"#, "missing_field"),
        (r#"{"op":"dance","ref":"1"}"#, "unknown_op"),
        (r#"{"op":"subscribe","topic":"has space"}"#, "invalid_topic"),
        (r#"{"op":"subscribe","topic":""}"#, "invalid_topic"),
    ];
    for (frame, code) in cases {
        assert_eq!(
            error_code_for(&mut user, frame).await,
            json!(code),
            "for {frame}"
        );
        user.still_usable().await;
    }
}

#[tokio::test]
async fn an_error_reply_echoes_the_ref() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user
        .request(json!({"op":"subscribe","topic":"a*b","ref":"r9"}))
        .await;
    assert_eq!(reply["ref"], "r9");
    assert_eq!(reply["error"]["code"], "invalid_topic");
}

#[tokio::test]
async fn a_binary_frame_is_refused_and_the_connection_stays_usable() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.send(Message::binary(vec![1, 2, 3])).await;
    let reply = user.next().await;
    assert_eq!(reply["error"]["code"], "unsupported_frame");
    user.still_usable().await;
}

#[tokio::test]
async fn several_requests_in_one_frame_get_their_replies_in_order() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let batch = "{\"op\":\"subscribe\",\"topic\":\"a\",\"ref\":\"1\"}\n{\"op\":\"oops\",\"ref\":\"2\"}\n{\"op\":\"ping\",\"ref\":\"3\"}";
    user.send(Message::text(batch)).await;
    assert_eq!(
        user.next().await,
        json!({"op":"reply","ref":"1","ok":true,"epoch":"","offset":0})
    );
    assert_eq!(user.next().await["error"]["code"], "unknown_op");
    assert_eq!(user.next().await, json!({"op":"pong","ref":"3"}));
}

#[tokio::test]
async fn a_frame_over_the_limit_closes_with_1009_and_spares_the_others() {
    let pod = Pod::start(&["--max-frame-bytes=1024"]).await;
    let mut bystander = User::connect(&pod.ws_url()).await;
    bystander.subscribe("t").await;
    let mut offender = User::connect(&pod.ws_url()).await;
    let huge = format!(r#"{{"op":"ping","ref":"{}"}}"#, "x".repeat(2048));
    offender.send(Message::text(huge)).await;
    assert_eq!(offender.ending().await, Ending::Close(1009));
    pod.publish("t", "1").await;
    assert_eq!(bystander.message("t").await, json!(1));
}

#[tokio::test]
async fn subscriptions_past_the_limit_are_refused_with_too_many_subscriptions() {
    let pod = Pod::start(&["--max-subscriptions=3"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    for topic in ["a", "b", "c"] {
        user.subscribe(topic).await;
    }
    user.subscribe("a").await; // already held: still fine
    let reply = user
        .request(json!({"op":"subscribe","topic":"d","ref":"4"}))
        .await;
    assert_eq!(reply["ok"], false);
    assert_eq!(reply["error"]["code"], "too_many_subscriptions");
    user.unsubscribe("a").await;
    user.subscribe("d").await;
    pod.publish("d", "1").await;
    assert_eq!(user.message("d").await, json!(1));
}

/// A WebSocket opened by hand on raw TCP, so a test can send frames no
/// client library would.
async fn raw_socket(pod: &Pod) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(pod.http)
        .await
        .expect("connects");
    let request = format!(
        "GET /ws HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        pod.http
    );
    stream.write_all(request.as_bytes()).await.expect("sent");
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let mut byte = [0u8; 1];
        stream.read_exact(&mut byte).await.expect("a response");
        head.push(byte[0]);
    }
    assert!(
        head.starts_with(b"HTTP/1.1 101"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    stream
}

/// A client frame (`first` = FIN, RSV and opcode), masked when `masked`.
fn frame(first: u8, payload: &[u8], masked: bool) -> Vec<u8> {
    let mask = [0x12, 0x34, 0x56, 0x78];
    let len = u8::try_from(payload.len()).expect("a short payload");
    let mut out = vec![first, if masked { 0x80 | len } else { len }];
    if masked {
        out.extend_from_slice(&mask);
    }
    out.extend(
        payload
            .iter()
            .enumerate()
            .map(|(i, b)| if masked { b ^ mask[i % 4] } else { *b }),
    );
    out
}

/// The close code of the server's close frame, skipping frames before it.
async fn close_code(stream: &mut tokio::net::TcpStream) -> u16 {
    use tokio::io::AsyncReadExt;
    let read = async {
        loop {
            let mut head = [0u8; 2];
            stream.read_exact(&mut head).await.expect("a frame");
            let len = usize::from(head[1] & 0x7f);
            assert!(len < 126, "short frames only");
            let mut payload = vec![0u8; len];
            stream.read_exact(&mut payload).await.expect("its payload");
            if head[0] & 0x0f == 0x8 {
                return u16::from_be_bytes([payload[0], payload[1]]);
            }
        }
    };
    tokio::time::timeout(common::PATIENCE, read)
        .await
        .expect("closed in time")
}

#[tokio::test]
async fn protocol_violations_close_with_1002_and_text_that_is_not_utf8_with_1007() {
    use tokio::io::AsyncWriteExt;
    let pod = Pod::start(&[]).await;
    let mut bystander = User::connect(&pod.ws_url()).await;
    let cases: [(&str, Vec<u8>, u16); 3] = [
        ("an unmasked frame", frame(0x81, b"{}", false), 1002),
        ("a reserved opcode", frame(0x83, b"{}", true), 1002),
        (
            "text that is not UTF-8",
            frame(0x81, &[0xff, 0xfe, 0xfd], true),
            1007,
        ),
    ];
    for (what, bytes, expected) in cases {
        let mut socket = raw_socket(&pod).await;
        socket.write_all(&bytes).await.expect("sent");
        assert_eq!(close_code(&mut socket).await, expected, "{what}");
    }
    bystander.still_usable().await;
}

#[tokio::test]
async fn a_request_to_ws_that_is_no_upgrade_gets_the_json_error_body() {
    let (status, body) = common::process::http_get(Pod::start(&[]).await.http, "/ws")
        .await
        .expect("an answer");
    assert_eq!(status, 400);
    let body: serde_json::Value = serde_json::from_str(&body).expect("a JSON body");
    assert_eq!(body["error"]["code"], "invalid_upgrade", "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "{body}"
    );
}
