//! User tokens checked against an identity provider's keys over HTTPS
//! (`--jwks-url`, `--oidc-issuer`): a local HTTPS server plays the
//! provider, rotates its keys, fails and recovers, and herald follows it
//! without a restart and without hammering it.

mod common;

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use common::PATIENCE;
use common::pki::Pki;
use common::pod::Pod;
use common::process::http_status;
use common::user::User;
use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header, encode};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::ServerConfig;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};

// Test-only keys, shared with the unit tests; see src/auth/testdata.
const RSA_A: &str = include_str!("../src/auth/testdata/rsa_a.key.pem");
const RSA_B: &str = include_str!("../src/auth/testdata/rsa_b.key.pem");

/// What the provider answers on `/keys`.
struct Answer {
    status: u16,
    jwks: String,
}

/// A local HTTPS identity provider: an OIDC discovery document at
/// `/.well-known/openid-configuration` and a JWKS at `/keys`, each request
/// recorded.
struct Provider {
    issuer: String,
    answer: Arc<Mutex<Answer>>,
    requests: Arc<Mutex<Vec<String>>>,
    pki: Pki,
    task: tokio::task::JoinHandle<()>,
}

/// A JWKS of the given RSA private keys' public halves.
fn jwks(keys: &[(&str, &str)]) -> String {
    let keys = keys
        .iter()
        .map(|(kid, pem)| {
            let key = EncodingKey::from_rsa_pem(pem.as_bytes()).expect("RSA key");
            let mut jwk = Jwk::from_encoding_key(&key, Algorithm::RS256).expect("jwk");
            jwk.common.key_id = Some((*kid).to_owned());
            jwk
        })
        .collect();
    serde_json::to_string(&JwkSet { keys }).expect("json")
}

impl Provider {
    async fn start(keys: &[(&str, &str)]) -> Self {
        let pki = Pki::new("identity provider CA");
        let issued = pki.issue("idp", &["127.0.0.1"]);
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&issued.cert)
            .expect("cert file")
            .collect::<Result<_, _>>()
            .expect("certs");
        let key = PrivateKeyDer::from_pem_file(&issued.key).expect("key");
        let config = ServerConfig::builder()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .expect("server config");
        let acceptor = TlsAcceptor::from(Arc::new(config));
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let issuer = format!("https://{}", listener.local_addr().expect("bound"));
        let answer = Arc::new(Mutex::new(Answer {
            status: 200,
            jwks: jwks(keys),
        }));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let task = tokio::spawn({
            let (issuer, answer, requests) = (issuer.clone(), answer.clone(), requests.clone());
            async move {
                loop {
                    let Ok((tcp, _)) = listener.accept().await else {
                        continue;
                    };
                    let (acceptor, issuer, answer, requests) = (
                        acceptor.clone(),
                        issuer.clone(),
                        answer.clone(),
                        requests.clone(),
                    );
                    tokio::spawn(async move {
                        let Ok(mut tls) = acceptor.accept(tcp).await else {
                            return;
                        };
                        let mut head = Vec::new();
                        let mut buf = [0u8; 1024];
                        while !head.windows(4).any(|w| w == b"\r\n\r\n") {
                            match tls.read(&mut buf).await {
                                Ok(0) | Err(_) => return,
                                Ok(n) => head.extend_from_slice(&buf[..n]),
                            }
                        }
                        let text = String::from_utf8_lossy(&head);
                        let path = text.split_whitespace().nth(1).unwrap_or("").to_owned();
                        requests.lock().expect("lock").push(path.clone());
                        let (status, body) = match path.as_str() {
                            "/.well-known/openid-configuration" => (
                                200,
                                json!({"issuer": issuer, "jwks_uri": format!("{issuer}/keys")})
                                    .to_string(),
                            ),
                            "/keys" => {
                                let answer = answer.lock().expect("lock");
                                (answer.status, answer.jwks.clone())
                            }
                            _ => (404, String::new()),
                        };
                        let response = format!(
                            "HTTP/1.1 {status} X\r\ncontent-type: application/json\r\n\
                             cache-control: public, max-age=3600\r\n\
                             content-length: {}\r\nconnection: close\r\n\r\n{body}",
                            body.len()
                        );
                        let _ = tls.write_all(response.as_bytes()).await;
                        let _ = tls.shutdown().await;
                    });
                }
            }
        });
        Self {
            issuer,
            answer,
            requests,
            pki,
            task,
        }
    }

    fn serve(&self, status: u16, keys: &[(&str, &str)]) {
        *self.answer.lock().expect("lock") = Answer {
            status,
            jwks: jwks(keys),
        };
    }

    fn key_fetches(&self) -> usize {
        let requests = self.requests.lock().expect("lock");
        requests.iter().filter(|path| *path == "/keys").count()
    }

    fn ca_flag(&self) -> String {
        format!("--jwks-ca-file={}", self.pki.ca_file().display())
    }

    /// A pod checking tokens against this provider's `--jwks-url`, trusting
    /// its CA when `trusted`.
    async fn pod(&self, trusted: bool) -> Pod {
        let url = format!("--jwks-url={}/keys", self.issuer);
        let ca = self.ca_flag();
        let mut flags = vec!["--auth=jwt", url.as_str()];
        if trusted {
            flags.push(&ca);
        }
        Pod::start(&flags).await
    }
}

impl Drop for Provider {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn token(issuer: &str, kid: &str, pem: &str) -> String {
    let exp = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
        + 600;
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some(kid.into());
    let claims = json!({"sub": "42", "iss": issuer, "exp": exp, "topics": ["room:*"]});
    encode(
        &header,
        &claims,
        &EncodingKey::from_rsa_pem(pem.as_bytes()).expect("key"),
    )
    .expect("signs")
}

/// The upgrade's status with `token`: 101 when it connected.
async fn upgrade_status(pod: &Pod, token: &str) -> u16 {
    let bearer = format!("Bearer {token}");
    match User::try_connect(&pod.ws_url(), &[("authorization", &bearer)]).await {
        Ok(_) => 101,
        Err((status, _)) => status,
    }
}

async fn wait_for_readyz(pod: &Pod, status: u16) {
    let deadline = Instant::now() + PATIENCE;
    while http_status(pod.http, "/readyz").await != Some(status) {
        assert!(Instant::now() < deadline, "/readyz never answered {status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test]
async fn an_oidc_issuer_supplies_the_keys_and_a_rotated_key_works_on_its_first_token() {
    let idp = Provider::start(&[("a", RSA_A)]).await;
    let issuer = format!("--oidc-issuer={}", idp.issuer);
    let pod = Pod::start(&["--auth=jwt", &issuer, &idp.ca_flag()]).await;
    wait_for_readyz(&pod, 200).await;
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        101
    );
    assert_eq!(
        upgrade_status(&pod, &token("https://someone.else", "a", RSA_A)).await,
        401,
        "tokens must name the issuer as iss"
    );
    assert_eq!(idp.key_fetches(), 1);

    idp.serve(200, &[("b", RSA_B)]);
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "b", RSA_B)).await,
        101,
        "the first token with the new kid fetches the new set"
    );
    assert_eq!(idp.key_fetches(), 2);
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        401,
        "the retired key no longer verifies"
    );
}

#[tokio::test]
async fn tokens_with_forged_key_ids_cannot_make_herald_hammer_the_provider() {
    let idp = Provider::start(&[("a", RSA_A)]).await;
    let pod = idp.pod(true).await;
    wait_for_readyz(&pod, 200).await;
    for n in 0..30 {
        let forged = token(&idp.issuer, &format!("forged-{n}"), RSA_B);
        assert_eq!(upgrade_status(&pod, &forged).await, 401);
    }
    assert_eq!(
        idp.key_fetches(),
        2,
        "one fetch at start and one for the first unknown kid, then the cooldown"
    );
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        101
    );
}

#[tokio::test]
async fn while_the_provider_is_down_the_last_good_keys_stay_in_force() {
    let idp = Provider::start(&[("a", RSA_A)]).await;
    let pod = idp.pod(true).await;
    wait_for_readyz(&pod, 200).await;
    idp.serve(503, &[]);
    // An unknown kid makes herald ask, and the provider fails.
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "b", RSA_B)).await,
        401
    );
    assert_eq!(idp.key_fetches(), 2);
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        101
    );
    assert_eq!(http_status(pod.http, "/readyz").await, Some(200));
}

#[tokio::test]
async fn a_pod_is_not_ready_until_its_provider_first_answers() {
    let idp = Provider::start(&[]).await;
    idp.serve(503, &[("a", RSA_A)]);
    let pod = idp.pod(true).await;
    let deadline = Instant::now() + PATIENCE;
    while idp.key_fetches() < 2 {
        assert!(Instant::now() < deadline, "herald retries a failed fetch");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(http_status(pod.http, "/readyz").await, Some(503));
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        401
    );

    idp.serve(200, &[("a", RSA_A)]);
    wait_for_readyz(&pod, 200).await;
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        101
    );
}

#[tokio::test]
async fn a_provider_whose_certificate_herald_does_not_trust_is_never_used() {
    let idp = Provider::start(&[("a", RSA_A)]).await;
    // The system's CA certificates do not include the test CA.
    let pod = idp.pod(false).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        idp.key_fetches(),
        0,
        "no request gets past the TLS handshake"
    );
    assert_eq!(http_status(pod.http, "/readyz").await, Some(503));
    assert_eq!(
        upgrade_status(&pod, &token(&idp.issuer, "a", RSA_A)).await,
        401
    );
}
