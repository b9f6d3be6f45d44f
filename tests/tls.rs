//! TLS on the gRPC API (with client certificates) and mutual TLS between
//! pods: callers and peers without a certificate from the right CA are
//! refused, everything else works as without TLS, and rotated certificates
//! and CAs take effect without a restart.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::PATIENCE;
use common::pki::{Issued, Pki};
use common::pod::Pod;
use common::process::{Ports, Process};
use common::user::User;
use herald::cluster::wire;
use serde_json::json;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};

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

/// Copies `from` over `to`, as a Secret update rewrites a mounted file.
fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).expect("copied");
}

/// Writes a CA bundle holding every one of `cas`.
fn bundle(path: &Path, cas: &[&Pki]) {
    let pem: String = cas.iter().map(|ca| ca.ca_pem()).collect();
    std::fs::write(path, pem).expect("written");
}

/// The certificate the TLS server at `addr` presents to a new connection
/// that trusts `ca`, names `name`, offers `alpn` and, when given, presents
/// `client`.
async fn presented(
    addr: SocketAddr,
    ca: &Path,
    name: &str,
    alpn: &[u8],
    client: Option<&Issued>,
) -> Vec<u8> {
    let mut roots = RootCertStore::empty();
    for ca in CertificateDer::pem_file_iter(ca).expect("CA file") {
        roots.add(ca.expect("a CA")).expect("a root");
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_root_certificates(roots);
    let mut config = match client {
        Some(issued) => builder
            .with_client_auth_cert(
                vec![CertificateDer::from_pem_file(&issued.cert).expect("cert")],
                PrivateKeyDer::from_pem_file(&issued.key).expect("key"),
            )
            .expect("client cert"),
        None => builder.with_no_client_auth(),
    };
    config.alpn_protocols = vec![alpn.to_vec()];
    let tcp = tokio::net::TcpStream::connect(addr)
        .await
        .expect("connects");
    let name = ServerName::try_from(name.to_owned()).expect("a name");
    let tls = tokio::time::timeout(
        PATIENCE,
        TlsConnector::from(Arc::new(config)).connect(name, tcp),
    )
    .await
    .expect("handshake in time")
    .expect("TLS handshake");
    let (_, session) = tls.get_ref();
    session.peer_certificates().expect("a certificate")[0].to_vec()
}

/// Waits until the log of `pod` holds `needle` at least `times` times.
async fn wait_for_log_times(pod: &Process, needle: &str, times: usize) {
    let deadline = Instant::now() + PATIENCE;
    while pod.logs().matches(needle).count() < times {
        assert!(
            Instant::now() < deadline,
            "{needle:?} not logged {times} times by {}:\n{}",
            pod.ip,
            pod.logs()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn a_rotated_grpc_certificate_serves_new_connections_and_a_broken_one_keeps_the_last_good() {
    let pki = Pki::new("herald test CA");
    let a = pki.issue("a", &["127.0.0.1"]);
    let b = pki.issue("b", &["127.0.0.1"]);
    let (cert, key) = (pki.dir().join("tls.crt"), pki.dir().join("tls.key"));
    copy(&a.cert, &cert);
    copy(&a.key, &key);
    let ports = Ports::free_on(&["127.0.0.1"]);
    let pod = Process::spawn(
        "127.0.0.1",
        ports,
        &[
            flag("grpc-tls-cert-file", &cert),
            flag("grpc-tls-key-file", &key),
        ],
        &[],
    );
    pod.wait_ready().await;
    let grpc: SocketAddr = format!("127.0.0.1:{}", ports.grpc).parse().expect("addr");
    let ca = pki.ca_file();
    let seen = || presented(grpc, &ca, "127.0.0.1", b"h2", None);
    assert!(seen().await == a.der, "the pod starts with certificate a");

    copy(&b.cert, &cert);
    copy(&b.key, &key);
    let deadline = Instant::now() + PATIENCE;
    while seen().await != b.der {
        assert!(
            Instant::now() < deadline,
            "certificate b never served:\n{}",
            pod.logs()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let publish = herald_publish(
        &format!("https://127.0.0.1:{}", ports.grpc),
        &[flag("ca-file", &pki.ca_file())],
    )
    .await;
    assert!(
        publish.status.success(),
        "{}",
        String::from_utf8_lossy(&publish.stderr)
    );

    // A key that is not the certificate's, then a file that is no
    // certificate: each is one warning, and b stays.
    copy(&a.cert, &cert);
    wait_for_log_times(&pod, "gRPC TLS changed but is invalid", 1).await;
    assert!(seen().await == b.der, "a mismatched pair replaced b");
    std::fs::write(&cert, "not a certificate").expect("written");
    wait_for_log_times(&pod, "gRPC TLS changed but is invalid", 2).await;
    assert!(seen().await == b.der, "a broken file replaced b");
}

/// One pod's peer TLS files, in a directory of its own.
struct PeerFiles {
    dir: tempfile::TempDir,
}

impl PeerFiles {
    fn new(issued: &Issued, cas: &[&Pki]) -> Self {
        let files = Self {
            dir: tempfile::tempdir().expect("temp dir"),
        };
        files.present(issued);
        files.trust(cas);
        files
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    fn present(&self, issued: &Issued) {
        copy(&issued.cert, &self.path("tls.crt"));
        copy(&issued.key, &self.path("tls.key"));
    }

    fn trust(&self, cas: &[&Pki]) {
        bundle(&self.path("ca.crt"), cas);
    }

    fn flags(&self, peers: &str) -> Vec<String> {
        vec![
            "--discovery=static".into(),
            peers.to_owned(),
            flag("peer-tls-cert-file", &self.path("tls.crt")),
            flag("peer-tls-key-file", &self.path("tls.key")),
            flag("peer-tls-ca-file", &self.path("ca.crt")),
            "--peer-ready-timeout=1s".into(),
        ]
    }
}

#[tokio::test]
async fn peers_follow_a_certificate_and_ca_rotation_without_a_restart_and_the_group_stays_whole() {
    let ips = ["127.0.0.1", "127.0.0.2"];
    let ports = Ports::free_on(&ips);
    let peers = format!("--peers={0}:{2},{1}:{2}", ips[0], ips[1], ports.peer);
    let (old, new) = (Pki::new("old cluster CA"), Pki::new("new cluster CA"));
    let a_files = PeerFiles::new(&old.issue("a", &["herald-peer"]), &[&old]);
    let b_files = PeerFiles::new(&old.issue("b", &["herald-peer"]), &[&old]);
    let a = Process::spawn(ips[0], ports, &a_files.flags(&peers), &[]);
    let b = Process::spawn(ips[1], ports, &b_files.flags(&peers), &[]);
    for pod in [&a, &b] {
        pod.wait_ready().await;
        pod.wait_for_log("peer stream up").await;
    }
    let mut on_a = User::connect(&a.ws_url()).await;
    let mut on_b = User::connect(&b.ws_url()).await;
    on_a.subscribe("t").await;
    on_b.subscribe("t").await;

    // Every pod trusts both CAs, then every pod moves to a certificate of
    // the new one; the streams open all along carry on.
    a_files.trust(&[&old, &new]);
    b_files.trust(&[&old, &new]);
    for pod in [&a, &b] {
        wait_for_log_times(pod, "reloaded peer TLS", 1).await;
    }
    let a_new = new.issue("a-new", &["herald-peer"]);
    a_files.present(&a_new);
    b_files.present(&new.issue("b-new", &["herald-peer"]));
    for pod in [&a, &b] {
        wait_for_log_times(pod, "reloaded peer TLS", 2).await;
    }
    a.publish("t", "1").await;
    assert_eq!(on_b.message_past_gaps("t").await, json!(1));
    b.publish("t", "2").await;
    assert_eq!(on_a.message_past_gaps("t").await, json!(1));
    assert_eq!(on_a.message_past_gaps("t").await, json!(2));

    let probe = new.issue("probe", &["probe"]);
    let a_peer: SocketAddr = format!("{}:{}", ips[0], ports.peer).parse().expect("addr");
    let seen = presented(
        a_peer,
        &new.ca_file(),
        "herald-peer",
        wire::ALPN,
        Some(&probe),
    )
    .await;
    assert!(
        seen == a_new.der,
        "a new peer connection gets a's new certificate"
    );

    // The old CA goes; b comes back trusting only the new one. Its streams
    // to and from `a` come up only if `a` presents its new certificate and
    // trusts the new CA, both without a restart.
    a_files.trust(&[&new]);
    wait_for_log_times(&a, "reloaded peer TLS", 3).await;
    drop(on_b);
    drop(b);
    b_files.trust(&[&new]);
    let b = Process::spawn(ips[1], ports, &b_files.flags(&peers), &[]);
    b.wait_for_log("peer stream up").await;
    a.wait_for_log("peer stream up again").await;
    let mut on_b = User::connect(&b.ws_url()).await;
    on_b.subscribe("t").await;
    a.publish("t", "3").await;
    assert_eq!(on_b.message_past_gaps("t").await, json!(3));
    b.publish("t", "4").await;
    assert_eq!(on_a.message_past_gaps("t").await, json!(3));
    assert_eq!(on_a.message_past_gaps("t").await, json!(4));
}
