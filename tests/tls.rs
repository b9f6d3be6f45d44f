//! TLS on the gRPC API (with client certificates) and mutual TLS between
//! pods: callers and peers without a certificate from the right CA are
//! refused, and everything else works as without TLS.

mod common;

use std::path::Path;

use common::pki::{Issued, Pki};
use common::pod::Pod;
use common::process::{Ports, Process};
use common::user::User;
use serde_json::json;

fn flag(name: &str, path: &Path) -> String {
    format!("--{name}={}", path.display())
}

async fn herald_publish(addr: &str, extra: &[String]) -> std::process::Output {
    tokio::process::Command::new(env!("CARGO_BIN_EXE_herald"))
        .args(["publish", "--addr", addr, "--topic", "t", "--data", "1"])
        .args(extra)
        .output()
        .await
        .expect("herald publish runs")
}

#[tokio::test]
async fn the_grpc_api_over_mutual_tls_takes_only_callers_with_a_certificate() {
    let pki = Pki::new("herald test CA");
    let server = pki.issue("server", &["127.0.0.1"]);
    let backend = pki.issue("backend", &["backend"]);
    let flags = [
        flag("grpc-tls-cert-file", &server.cert),
        flag("grpc-tls-key-file", &server.key),
        flag("grpc-tls-client-ca-file", &pki.ca_file()),
    ];
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let pod = Pod::start(&flags).await;
    let mut user = User::connect(&pod.ws_url()).await;
    user.subscribe("t").await;
    let addr = format!("https://{}", pod.grpc);

    let with_cert = herald_publish(
        &addr,
        &[
            flag("ca-file", &pki.ca_file()),
            flag("cert-file", &backend.cert),
            flag("key-file", &backend.key),
        ],
    )
    .await;
    assert!(
        with_cert.status.success(),
        "{}",
        String::from_utf8_lossy(&with_cert.stderr)
    );
    assert_eq!(user.message("t").await, json!(1));

    let without_cert = herald_publish(&addr, &[flag("ca-file", &pki.ca_file())]).await;
    assert!(
        !without_cert.status.success(),
        "a caller without a certificate got in"
    );
    let plaintext = herald_publish(&format!("http://{}", pod.grpc), &[]).await;
    assert!(!plaintext.status.success(), "a plaintext caller got in");
}

fn peer_flags(pki: &Pki, issued: &Issued, peers: &str) -> Vec<String> {
    vec![
        "--discovery=static".into(),
        peers.to_owned(),
        flag("peer-tls-cert-file", &issued.cert),
        flag("peer-tls-key-file", &issued.key),
        flag("peer-tls-ca-file", &pki.ca_file()),
        "--peer-ready-timeout=1s".into(),
    ]
}

#[tokio::test]
async fn pods_with_certificates_from_the_cluster_ca_form_a_group_and_others_are_kept_out() {
    let ips = ["127.0.0.1", "127.0.0.2", "127.0.0.3"];
    let ports = Ports::free_on(&ips);
    let peers = format!(
        "--peers={}",
        ips.iter()
            .map(|ip| format!("{ip}:{}", ports.peer))
            .collect::<Vec<_>>()
            .join(",")
    );
    let cluster_ca = Pki::new("cluster CA");
    let rogue_ca = Pki::new("rogue CA");
    let a = Process::spawn(
        ips[0],
        ports,
        &peer_flags(
            &cluster_ca,
            &cluster_ca.issue("a", &["herald-peer"]),
            &peers,
        ),
        &[],
    );
    let b = Process::spawn(
        ips[1],
        ports,
        &peer_flags(
            &cluster_ca,
            &cluster_ca.issue("b", &["herald-peer"]),
            &peers,
        ),
        &[],
    );
    let rogue = Process::spawn(
        ips[2],
        ports,
        &peer_flags(&rogue_ca, &rogue_ca.issue("r", &["herald-peer"]), &peers),
        &[],
    );
    for pod in [&a, &b, &rogue] {
        pod.wait_ready().await;
    }
    // The rogue pod cannot complete a handshake with `a`, so a stream that
    // comes up on `a` is the one to `b`: on the peer wire, under TLS.
    a.wait_for_log("peer stream up").await;

    let mut member = User::connect(&b.ws_url()).await;
    let mut outsider = User::connect(&rogue.ws_url()).await;
    member.subscribe("t").await;
    outsider.subscribe("t").await;
    a.publish("t", r#""members only""#).await;
    assert_eq!(member.message("t").await, json!("members only"));
    outsider
        .expect_silence(std::time::Duration::from_millis(500))
        .await;
}
