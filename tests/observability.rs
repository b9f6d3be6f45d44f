//! What an operator sees: `/metrics` in Prometheus text whose counters move
//! with real traffic, probes and metrics on their own port when asked, and
//! one trace following a message from its publish on one pod to its
//! delivery on another.

mod common;

use std::time::{Duration, Instant};

use common::PATIENCE;
use common::otlp::Collector;
use common::pod::Pod;
use common::process::{Ports, Process, http_get, sample};
use common::user::User;
use herald::proto::v1::PublishRequest;
use herald::proto::v1::publisher_client::PublisherClient;
use serde_json::json;

async fn metrics(pod: &Pod) -> String {
    let (status, body) = http_get(pod.http, "/metrics")
        .await
        .expect("metrics answer");
    assert_eq!(status, 200);
    for line in body
        .lines()
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
    {
        let (name, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad sample line {line:?}"));
        assert!(name.starts_with("herald_"), "unprefixed metric {name}");
        assert!(!name.contains("topic="), "a topic label leaked: {line}");
        value
            .parse::<f64>()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
    }
    body
}

#[tokio::test]
async fn metrics_parse_as_prometheus_text_and_move_with_traffic() {
    let pod = Pod::start(&[]).await;
    let before = metrics(&pod).await;
    assert_eq!(sample(&before, "herald_connections_open"), 0.0);

    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("room:1").await;
    pod.publish("room:1", r#"{"k":1}"#).await;
    assert_eq!(user.message("room:1").await, json!({"k":1}));
    let refused = pod
        .publisher()
        .await
        .publish(PublishRequest {
            topic: "room:1".into(),
            data: b"not json".to_vec(),
            ..PublishRequest::default()
        })
        .await;
    assert!(refused.is_err());

    let during = metrics(&pod).await;
    assert_eq!(sample(&during, "herald_connections_open"), 1.0);
    assert_eq!(sample(&during, "herald_connections_opened_total"), 1.0);
    assert_eq!(sample(&during, "herald_subscriptions"), 1.0);
    assert_eq!(sample(&during, "herald_topics"), 1.0);
    assert_eq!(
        sample(
            &during,
            r#"herald_messages_published_total{result="accepted"}"#
        ),
        1.0
    );
    assert_eq!(
        sample(
            &during,
            r#"herald_messages_published_total{result="refused"}"#
        ),
        1.0
    );
    assert_eq!(sample(&during, "herald_messages_delivered_total"), 1.0);
    assert!(sample(&during, "herald_bytes_out_total") > 0.0);
    assert_eq!(
        sample(&during, "herald_delivery_latency_seconds_count"),
        1.0
    );
    assert_eq!(sample(&during, "herald_peers_known"), 0.0);
    let delay = sample(&during, "herald_write_delay_seconds");
    assert!(
        (0.0..=0.02).contains(&delay),
        "`auto` holds busy users for 0 to 20 ms, not {delay} s"
    );

    drop(user);
    let deadline = Instant::now() + PATIENCE;
    loop {
        let after = metrics(&pod).await;
        if sample(
            &after,
            r#"herald_connections_closed_total{reason="client"}"#,
        ) == 1.0
        {
            assert_eq!(sample(&after, "herald_connections_open"), 0.0);
            assert_eq!(sample(&after, "herald_subscriptions"), 0.0);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the closed connection was never counted:\n{after}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

#[tokio::test]
async fn admin_addr_moves_probes_and_metrics_off_the_public_port() {
    let ports = Ports::free_on(&["127.0.0.1"]);
    let admin = Ports::free_on(&["127.0.0.1"]).http;
    let pod = Process::spawn(
        "127.0.0.1",
        ports,
        &[format!("--admin-addr=127.0.0.1:{admin}")],
        &[],
    );
    let admin_addr = format!("127.0.0.1:{admin}").parse().expect("valid addr");
    let deadline = Instant::now() + PATIENCE;
    while common::process::http_status(admin_addr, "/readyz").await != Some(200) {
        assert!(
            Instant::now() < deadline,
            "admin port never ready:\n{}",
            pod.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        http_get(admin_addr, "/metrics").await.map(|r| r.0),
        Some(200)
    );
    assert_eq!(pod.http_status("/metrics").await, Some(404));
    assert_eq!(pod.http_status("/readyz").await, Some(404));
    User::connect(&pod.ws_url()).await.still_usable().await;
}

#[tokio::test]
async fn one_trace_covers_a_publish_on_one_pod_and_its_delivery_on_another() {
    let (collector, otlp) = Collector::start().await;
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let peers = format!("--peers={}:{p},{}:{p}", ips[0], ips[1], p = ports.peer);
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", format!("http://{otlp}")),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_owned()),
    ];
    let flags = [
        "--discovery=static".to_owned(),
        peers,
        "--log-format=json".to_owned(),
    ];
    let publisher_pod = Process::spawn(ips[0], ports, &flags, &env);
    let delivering_pod = Process::spawn(ips[1], ports, &flags, &env);
    publisher_pod.wait_ready().await;
    delivering_pod.wait_ready().await;
    let mut user = User::connect(&delivering_pod.ws_url()).await;
    user.subscribe("traced").await;

    // The backend's own trace: herald's spans must join it.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let mut request = tonic::Request::new(PublishRequest {
        topic: "traced".into(),
        data: b"1".to_vec(),
        ..PublishRequest::default()
    });
    let traceparent = format!("00-{trace_id}-00f067aa0ba902b7-01");
    request
        .metadata_mut()
        .insert("traceparent", traceparent.parse().expect("valid metadata"));
    PublisherClient::connect(publisher_pod.grpc_url())
        .await
        .expect("connects")
        .publish(request)
        .await
        .expect("publish accepted");
    assert_eq!(user.message("traced").await, json!(1));

    let deadline = Instant::now() + PATIENCE;
    let spans = loop {
        let spans: Vec<_> = collector
            .spans()
            .into_iter()
            .filter(|s| s.trace_id == trace_id)
            .collect();
        let names: Vec<_> = spans.iter().map(|s| s.name.as_str()).collect();
        if ["publish", "peer_send", "deliver"]
            .iter()
            .all(|n| names.contains(n))
            && spans.iter().filter(|s| s.name == "deliver").count() == 2
        {
            break spans;
        }
        assert!(Instant::now() < deadline, "incomplete trace: {spans:#?}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let publish = spans
        .iter()
        .find(|s| s.name == "publish")
        .expect("publish span");
    // The topic's sequencer is either pod: the hop under the publish
    // carries the numbered message, or the draft to the sequencer.
    let hop = spans
        .iter()
        .find(|s| s.name == "peer_send" && s.parent_id == publish.span_id)
        .expect("hop span under the publish");
    assert_eq!(
        publish.parent_id, "00f067aa0ba902b7",
        "publish joins the caller's trace"
    );
    let remote = spans
        .iter()
        .find(|s| s.name == "deliver" && s.parent_id == hop.span_id)
        .expect("a delivery under the hop");
    assert_ne!(
        remote.instance, publish.instance,
        "delivered by the other pod"
    );

    // The delivering pod's JSON log line for it carries the same trace id.
    let line = delivering_pod.wait_for_log("from a peer").await;
    let logged: serde_json::Value = serde_json::from_str(&line).expect("a JSON log line");
    assert_eq!(logged["trace_id"], trace_id, "{line}");
}
