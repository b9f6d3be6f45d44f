//! Only the right users get in, and they only hear what their token
//! allows: JWT checks at the upgrade, topic permissions from claims,
//! `user:<sub>` across pods, client publish, and API tokens on gRPC.

mod common;

use std::path::PathBuf;
use std::time::{SystemTime, UNIX_EPOCH};

use common::pod::Pod;
use common::process::{Ports, Process};
use common::user::User;
use herald::proto::v1::PublishRequest;
use jsonwebtoken::{EncodingKey, Header, encode};
use serde_json::{Value, json};

const SECRET: &str = "a test-only shared secret";

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs() as i64
}

fn claims(sub: &str, topics: &[&str]) -> Value {
    json!({"sub": sub, "topics": topics, "exp": now() + 600, "iss": "tests", "aud": "herald"})
}

fn sign(claims: &Value, secret: &str) -> String {
    encode(
        &Header::default(),
        claims,
        &EncodingKey::from_secret(secret.as_bytes()),
    )
    .expect("signs")
}

struct Secret {
    path: PathBuf,
    _dir: tempfile::TempDir,
}

fn secret_file(contents: &str) -> Secret {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("secret");
    std::fs::write(&path, contents).expect("written");
    Secret { path, _dir: dir }
}

fn jwt_flags(secret: &Secret) -> Vec<String> {
    vec![
        "--auth=jwt".into(),
        format!("--jwt-secret-file={}", secret.path.display()),
        "--jwt-issuer=tests".into(),
        "--jwt-audience=herald".into(),
    ]
}

async fn jwt_pod(secret: &Secret, extra: &[&str]) -> Pod {
    let mut flags = jwt_flags(secret);
    flags.extend(extra.iter().map(|f| f.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    Pod::start(&flags).await
}

async fn refused(pod: &Pod, token: &str) -> (u16, String) {
    let bearer = format!("Bearer {token}");
    match User::try_connect(&pod.ws_url(), &[("authorization", &bearer)]).await {
        Ok(_) => panic!("the upgrade should have been refused"),
        Err(refusal) => refusal,
    }
}

#[tokio::test]
async fn a_valid_token_is_accepted_from_the_header_the_query_or_the_subprotocol() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &[]).await;
    let token = sign(&claims("42", &["room:*"]), SECRET);

    let bearer = format!("Bearer {token}");
    let (mut user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("header token accepted");
    user.subscribe("room:1").await;

    let (mut user, _) = User::try_connect(&format!("{}?token={token}", pod.ws_url()), &[])
        .await
        .expect("query token accepted");
    user.subscribe("room:1").await;

    let offered = format!("herald.v1, bearer.{token}");
    let (mut user, selected) =
        User::try_connect(&pod.ws_url(), &[("sec-websocket-protocol", &offered)])
            .await
            .expect("subprotocol token accepted");
    assert_eq!(
        selected.as_deref(),
        Some("herald.v1"),
        "the token is never echoed"
    );
    user.subscribe("room:1").await;
}

#[tokio::test]
async fn bad_tokens_are_refused_with_401_and_a_reason() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &[]).await;
    let mut expired = claims("42", &[]);
    expired["exp"] = json!(now() - 3600);
    let mut early = claims("42", &[]);
    early["nbf"] = json!(now() + 3600);
    let mut audience = claims("42", &[]);
    audience["aud"] = json!("someone-else");
    let cases = [
        (sign(&expired, SECRET), "expired"),
        (sign(&claims("42", &[]), "not the secret"), "signature"),
        (sign(&early, SECRET), "not valid yet"),
        (sign(&audience, SECRET), "audience"),
        ("not.a.jwt".to_owned(), "malformed"),
    ];
    for (token, reason) in cases {
        let (status, body) = refused(&pod, &token).await;
        assert_eq!(status, 401, "{reason}");
        let body: Value = serde_json::from_str(&body).expect("JSON body");
        assert_eq!(body["error"]["code"], "unauthorized");
        let message = body["error"]["message"].as_str().expect("message");
        assert!(
            message.contains(reason),
            "{message:?} should say {reason:?}"
        );
        assert!(!message.contains(&token), "the token is never echoed");
    }
    match User::try_connect(&pod.ws_url(), &[]).await {
        Err((401, body)) => assert!(body.contains("a token is required"), "{body}"),
        other => panic!("expected 401 without a token, got {:?}", other.map(|_| ())),
    }
    let (_, metrics) = common::process::http_get(pod.http, "/metrics")
        .await
        .expect("metrics");
    for reason in [
        "expired",
        "bad_signature",
        "not_yet_valid",
        "wrong_audience",
        "malformed",
    ] {
        let name = format!("herald_token_refusals_total{{reason=\"{reason}\"}}");
        assert_eq!(common::process::sample(&metrics, &name), 1.0, "{name}");
    }
}

#[tokio::test]
async fn a_user_holds_at_most_max_connections_per_user_and_a_closed_one_frees_its_place() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &["--max-connections-per-user=2"]).await;
    let bearer = |sub: &str| format!("Bearer {}", sign(&claims(sub, &["room:*"]), SECRET));
    let connect = |bearer: String| {
        let url = pod.ws_url();
        async move { User::try_connect(&url, &[("authorization", &bearer)]).await }
    };
    let (first, _) = connect(bearer("42")).await.expect("first");
    let (mut second, _) = connect(bearer("42")).await.expect("second");
    let (status, body) = connect(bearer("42"))
        .await
        .err()
        .expect("a third is refused");
    assert_eq!(status, 429);
    assert!(
        body.contains("too_many_connections") && body.contains("2 connections"),
        "{body}"
    );
    connect(bearer("7"))
        .await
        .expect("another user is not affected");
    drop(first);
    // The pod frees the place once it sees the socket close.
    let deadline = std::time::Instant::now() + common::PATIENCE;
    while connect(bearer("42")).await.is_err() {
        assert!(
            std::time::Instant::now() < deadline,
            "the place was never freed"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    second.still_usable().await;
}

#[tokio::test]
async fn topics_outside_the_claims_are_forbidden_but_the_users_own_topic_is_not() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &[]).await;
    let token = sign(&claims("42", &["room:*", "news"]), SECRET);
    let bearer = format!("Bearer {token}");
    let (mut user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("accepted");
    user.subscribe("room:7").await;
    user.subscribe("news").await;
    user.subscribe("user:42").await;
    for topic in ["newsroom", "user:43", "roo", "admin"] {
        let reply = user
            .request(json!({"op":"subscribe","topic":topic,"ref":"x"}))
            .await;
        assert_eq!(reply["error"]["code"], "forbidden", "{topic}: {reply}");
    }
    user.still_usable().await;
}

#[tokio::test]
async fn publishing_to_user_sub_reaches_every_device_of_that_user_across_pods() {
    let secret = secret_file(SECRET);
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let mut flags = jwt_flags(&secret);
    flags.push("--discovery=static".into());
    flags.push(format!(
        "--peers={}:{p},{}:{p}",
        ips[0],
        ips[1],
        p = ports.peer
    ));
    let pods: Vec<_> = ips
        .iter()
        .map(|ip| Process::spawn(ip, ports, &flags, &[]))
        .collect();
    for pod in &pods {
        pod.wait_ready().await;
    }
    let bearer = format!("Bearer {}", sign(&claims("42", &[]), SECRET));
    let mut devices = Vec::new();
    for pod in &pods {
        let (mut device, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
            .await
            .expect("accepted");
        device.subscribe("user:42").await;
        devices.push(device);
    }
    pods[0].publish("user:42", r#"{"note":"for you"}"#).await;
    for device in &mut devices {
        assert_eq!(device.message("user:42").await, json!({"note":"for you"}));
    }
}

#[tokio::test]
async fn client_publish_follows_the_publish_claim_and_its_rate_limit() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &["--client-publish", "--client-publish-rate=2"]).await;
    let mut claims = claims("7", &["chat:*"]);
    claims["publish"] = json!(["chat:*"]);
    let bearer = format!("Bearer {}", sign(&claims, SECRET));
    let (mut user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("accepted");
    let mut listener = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("accepted")
        .0;
    listener.subscribe("chat:1").await;

    let reply = user
        .request(json!({"op":"publish","topic":"chat:1","data":{"hi":1},"ref":"p1"}))
        .await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["id"].as_str().map(str::len), Some(26));
    assert_eq!(listener.message("chat:1").await, json!({"hi":1}));

    let reply = user
        .request(json!({"op":"publish","topic":"news","data":1,"ref":"p2"}))
        .await;
    assert_eq!(reply["error"]["code"], "forbidden");

    let reply = user
        .request(json!({"op":"publish","topic":"chat:1","data":2,"ref":"p3"}))
        .await;
    assert_eq!(
        reply["ok"], true,
        "second publish is within the burst: {reply}"
    );
    let reply = user
        .request(json!({"op":"publish","topic":"chat:1","data":3,"ref":"p4"}))
        .await;
    assert_eq!(reply["error"]["code"], "rate_limited", "{reply}");
}

#[tokio::test]
async fn client_publish_is_refused_unless_enabled() {
    let pod = Pod::start(&[]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user
        .request(json!({"op":"publish","topic":"t","data":1,"ref":"p"}))
        .await;
    assert_eq!(reply["error"]["code"], "forbidden");
}

#[tokio::test]
async fn grpc_calls_need_a_token_from_the_api_tokens_file() {
    let tokens = secret_file("# backends\nbackend-token-1\nbackend-token-2\n");
    let flag = format!("--api-tokens-file={}", tokens.path.display());
    let pod = Pod::start(&[&flag]).await;
    let request = |token: Option<&str>| {
        let mut request = tonic::Request::new(PublishRequest {
            topic: "t".into(),
            data: b"1".to_vec(),
            ..PublishRequest::default()
        });
        if let Some(token) = token {
            let value = format!("Bearer {token}").parse().expect("ascii");
            request.metadata_mut().insert("authorization", value);
        }
        request
    };
    let mut client = pod.publisher().await;
    let missing = client.publish(request(None)).await.expect_err("no token");
    assert_eq!(missing.code(), tonic::Code::Unauthenticated);
    assert!(missing.message().contains("missing bearer token"));
    let wrong = client
        .publish(request(Some("guess")))
        .await
        .expect_err("wrong token");
    assert_eq!(wrong.code(), tonic::Code::Unauthenticated);
    assert!(wrong.message().contains("unknown API token"));
    client
        .publish(request(Some("backend-token-2")))
        .await
        .expect("a listed token works");

    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "publish",
            "--addr",
            &format!("http://{}", pod.grpc),
            "--topic",
            "t",
            "--data",
            "1",
        ])
        .args(["--token", "backend-token-1"])
        .output()
        .await
        .expect("herald publish runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[tokio::test]
async fn an_api_token_limited_to_topics_is_denied_every_other_topic_and_the_operator_calls() {
    let tokens = secret_file("orders-backend-token orders:*, audit\nadmin-backend-token\n");
    let flag = format!("--api-tokens-file={}", tokens.path.display());
    let pod = Pod::start(&[&flag]).await;
    fn with_token<T>(message: T, token: &str) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        let value = format!("Bearer {token}").parse().expect("ascii");
        request.metadata_mut().insert("authorization", value);
        request
    }
    let publish = |topic: &str| PublishRequest {
        topic: topic.into(),
        data: b"1".to_vec(),
        ..PublishRequest::default()
    };
    let mut client = pod.publisher().await;
    let limited = "orders-backend-token";
    client
        .publish(with_token(publish("orders:7"), limited))
        .await
        .expect("a listed pattern");
    client
        .publish(with_token(publish("audit"), limited))
        .await
        .expect("a listed name");
    let denied = client
        .publish(with_token(publish("room:1"), limited))
        .await
        .expect_err("another topic");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    assert!(denied.message().contains("room:1"), "{denied:?}");
    // A batch with one topic outside the token is refused whole.
    let batch = herald::proto::v1::PublishBatchRequest {
        messages: vec![publish("orders:8"), publish("room:1")],
    };
    let denied = client
        .publish_batch(with_token(batch, limited))
        .await
        .expect_err("one topic outside");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let history = herald::proto::v1::HistoryRequest {
        topic: "orders:7".into(),
        ..Default::default()
    };
    let page = client
        .history(with_token(history, limited))
        .await
        .expect("its own topic's history")
        .into_inner();
    assert_eq!(
        page.messages.len(),
        1,
        "the refused batch published nothing"
    );
    let history = herald::proto::v1::HistoryRequest {
        topic: "room:1".into(),
        ..Default::default()
    };
    let denied = client
        .history(with_token(history, limited))
        .await
        .expect_err("another topic's history");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    let peers = herald::proto::v1::ListPeersRequest::default();
    let denied = client
        .list_peers(with_token(peers, limited))
        .await
        .expect_err("an operator call");
    assert_eq!(denied.code(), tonic::Code::PermissionDenied);
    client
        .list_peers(with_token(peers, "admin-backend-token"))
        .await
        .expect("an unlimited token may");
    client
        .publish(with_token(publish("room:1"), "admin-backend-token"))
        .await
        .expect("an unlimited token publishes anywhere");
}

/// A user connected with a token that expires `ttl` seconds from now, on
/// a pod that allows no leeway past `exp`.
async fn expiring_user(pod: &Pod, topics: &[&str], ttl: i64) -> User {
    let mut short = claims("42", topics);
    short["exp"] = json!(now() + ttl);
    let bearer = format!("Bearer {}", sign(&short, SECRET));
    let (user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("a valid token");
    user
}

#[tokio::test]
async fn a_connection_is_told_before_its_token_expires_and_closed_with_4001_when_it_does() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &["--jwt-leeway=0s"]).await;
    let mut user = expiring_user(&pod, &["room:*"], 3).await;
    user.subscribe("room:1").await;
    let notice = user.next().await;
    assert_eq!(notice["op"], "expiring", "{notice}");
    let exp = notice["exp"].as_i64().expect("exp");
    assert!((now()..=now() + 3).contains(&exp), "{notice}");
    assert_eq!(user.ending().await, common::user::Ending::Close(4001));
    let closed = r#"herald_connections_closed_total{reason="token_expired"}"#;
    let (_, metrics) = common::process::http_get(pod.http, "/metrics")
        .await
        .expect("metrics");
    assert_eq!(common::process::sample(&metrics, closed), 1.0);
}

#[tokio::test]
async fn a_refresh_keeps_the_connection_and_leaves_the_topics_the_new_token_no_longer_allows() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &["--jwt-leeway=0s"]).await;
    let mut user = expiring_user(&pod, &["room:*", "news"], 3).await;
    user.subscribe("room:1").await;
    user.subscribe("news").await;

    let refresh = |token: String| json!({"op": "refresh", "token": token, "ref": "r"});
    let mut other = claims("7", &["room:*"]);
    other["exp"] = json!(now() + 600);
    let reply = user.request(refresh(sign(&other, SECRET))).await;
    assert_eq!(
        reply["error"]["code"], "invalid_token",
        "another user: {reply}"
    );
    let mut stale = claims("42", &["room:*"]);
    stale["exp"] = json!(now() - 10);
    let reply = user.request(refresh(sign(&stale, SECRET))).await;
    assert_eq!(reply["error"]["code"], "invalid_token", "expired: {reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("expired")),
        "{reply}"
    );
    let reply = user
        .request(refresh(sign(&claims("42", &[]), "forged")))
        .await;
    assert_eq!(reply["error"]["code"], "invalid_token", "forged: {reply}");

    let fresh = claims("42", &["room:*"]);
    let left = user.request(refresh(sign(&fresh, SECRET))).await;
    assert_eq!(
        left,
        json!({"op": "unsubscribed", "topic": "news", "reason": "forbidden"})
    );
    let reply = user.next().await;
    assert_eq!(reply["ok"], true, "{reply}");
    assert_eq!(reply["exp"], fresh["exp"], "{reply}");

    // Past the first token's expiry: still connected, still on room:1,
    // no longer on news.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    pod.publish("news", r#""gone""#).await;
    pod.publish("room:1", r#""still here""#).await;
    assert_eq!(user.message("room:1").await, json!("still here"));
    user.still_usable().await;
}

#[tokio::test]
async fn herald_token_mints_a_token_the_server_accepts() {
    let secret = secret_file(&format!("{SECRET}\n"));
    let pod = jwt_pod(&secret, &[]).await;
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args([
            "token", "--sub", "42", "--topics", "room:*", "--issuer", "tests",
        ])
        .args(["--audience", "herald", "--ttl", "5m"])
        .arg(format!("--jwt-secret-file={}", secret.path.display()))
        .output()
        .await
        .expect("herald token runs");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let token = String::from_utf8(out.stdout).expect("utf-8");
    let bearer = format!("Bearer {}", token.trim());
    let (mut user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("the minted token is accepted");
    user.subscribe("room:9").await;
    user.subscribe("user:42").await;
}

#[tokio::test]
async fn a_client_publish_with_bad_data_gets_invalid_data_and_the_connection_stays_usable() {
    let pod = Pod::start(&["--auth=none", "--client-publish", "--max-message-bytes=16"]).await;
    let mut user = User::connect(&pod.ws_url()).await;
    let reply = user
        .request(json!({"op":"publish","topic":"t","data":"far more than sixteen bytes","ref":"p"}))
        .await;
    assert_eq!(reply["error"]["code"], "invalid_data", "{reply}");
    assert!(
        reply["error"]["message"]
            .as_str()
            .is_some_and(|m| m.contains("limit"))
    );
    user.still_usable().await;
}

#[tokio::test]
async fn history_needs_the_permission_subscribe_needs() {
    let secret = secret_file(SECRET);
    let pod = jwt_pod(&secret, &[]).await;
    pod.publish("secret:1", "1").await;
    let token = sign(&claims("42", &["room:*"]), SECRET);
    let bearer = format!("Bearer {token}");
    let (mut user, _) = User::try_connect(&pod.ws_url(), &[("authorization", &bearer)])
        .await
        .expect("token accepted");
    for topic in ["secret:1", "user:7"] {
        let reply = user
            .request(json!({"op": "history", "topic": topic, "ref": "h"}))
            .await;
        assert_eq!(reply["error"]["code"], "forbidden", "{reply}");
        assert!(reply.get("messages").is_none(), "{reply}");
    }
    let own = user
        .request(json!({"op": "history", "topic": "user:42", "ref": "h"}))
        .await;
    assert_eq!(own["ok"], true, "{own}");
    user.still_usable().await;
}
