//! The gRPC API refuses bad publishes with INVALID_ARGUMENT and a message
//! that says what is wrong, and serves health and reflection.

mod common;

use common::pod::Pod;
use herald::proto::v1::PublishRequest;
use tonic::Code;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;

async fn refusal(pod: &Pod, topic: &str, data: &[u8]) -> tonic::Status {
    pod.publisher()
        .await
        .publish(PublishRequest {
            topic: topic.into(),
            data: data.to_vec(),
            ..PublishRequest::default()
        })
        .await
        .expect_err("publish should be refused")
}

#[tokio::test]
async fn bad_publishes_are_invalid_argument_with_a_reason() {
    let pod = Pod::start(&["--max-message-bytes=100"]).await;
    let cases: [(&str, &[u8], &str); 6] = [
        ("bad topic", b"1", "invalid topic"),
        ("", b"1", "topic is empty"),
        ("t", b"", "data is empty"),
        ("t", b"not json", "not one JSON document"),
        ("t", b"\xff\xfe", "not UTF-8"),
        ("t", &[b'1'; 101], "the limit is 100"),
    ];
    for (topic, data, reason) in cases {
        let status = refusal(&pod, topic, data).await;
        assert_eq!(status.code(), Code::InvalidArgument, "{topic:?}");
        assert!(
            status.message().contains(reason),
            "{:?} lacks {reason:?}",
            status.message()
        );
    }
}

#[tokio::test]
async fn the_health_service_reports_serving() {
    let pod = Pod::start(&[]).await;
    let channel = tonic::transport::Endpoint::from_shared(format!("http://{}", pod.grpc))
        .expect("valid uri")
        .connect()
        .await
        .expect("connects");
    let mut health = HealthClient::new(channel);
    for service in ["", "herald.v1.Publisher"] {
        let reply = health
            .check(HealthCheckRequest {
                service: service.into(),
            })
            .await
            .expect("health answers")
            .into_inner();
        assert_eq!(
            reply.status(),
            ServingStatus::Serving,
            "service {service:?}"
        );
    }
}

#[tokio::test]
async fn the_probes_answer_on_the_http_port() {
    let pod = Pod::start(&[]).await;
    assert_eq!(
        common::process::http_status(pod.http, "/healthz").await,
        Some(200)
    );
    assert_eq!(
        common::process::http_status(pod.http, "/readyz").await,
        Some(200)
    );
    assert_eq!(
        common::process::http_status(pod.http, "/nope").await,
        Some(404)
    );
}
