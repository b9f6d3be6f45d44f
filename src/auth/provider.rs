//! Verification keys from an identity provider over HTTPS: `--jwks-url`, or
//! `--oidc-issuer`, whose discovery document
//! (`<issuer>/.well-known/openid-configuration`) names the `jwks_uri`.
//!
//! - **Transport.** A rustls client (ring) over HTTP/1.1, trusting the
//!   system's roots (`SSL_CERT_FILE` is honoured) or `--jwks-ca-file`. Only
//!   `https://` is accepted, except `http://` to a loopback address for
//!   development: keys fetched in clear text could be replaced by anyone on
//!   the path. Each request has [`FETCH_TIMEOUT`], a body is read up to
//!   [`MAX_DOCUMENT_BYTES`], and anything but `200` is a failure.
//! - **Caching.** A key set is kept for the `max-age` of its
//!   `Cache-Control` header, within [`MIN_REFRESH`] and [`MAX_REFRESH`];
//!   without one (or with `no-cache`/`no-store`), for [`DEFAULT_REFRESH`].
//! - **Rotation.** A token naming a `kid` the set does not hold asks for an
//!   early fetch and waits for it (`Provider::refresh_for_unknown_key`), so
//!   a key the provider has just started signing with works on its first
//!   token. Such fetches are at most one per [`UNKNOWN_KEY_COOLDOWN`]: tokens
//!   with forged `kid`s cannot make herald hammer the provider.
//! - **Outages.** A failed fetch (unreachable, TLS, status, a document that
//!   does not parse) keeps the last good set in force, logs one warning per
//!   distinct failure and retries with backoff from [`RETRY_BASE`] up to
//!   [`RETRY_CAP`]. Until the first set arrives no token verifies
//!   (`unknown_key`) and the pod reports not ready.
//! - **Secrets stay files.** A symmetric (`oct`) key in a fetched set is
//!   skipped: a secret published at a URL lets anyone sign. HS256 keys with
//!   `kid`s belong in a `--jwks-file`.

use std::sync::Mutex;
use std::time::Duration;

use bytes::Bytes;
use http::header::{CACHE_CONTROL, HeaderMap};
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty, Limited};
use hyper_rustls::HttpsConnector;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::Deserialize;
use tokio::sync::{Notify, watch};
use tokio::time::Instant;
use tokio_rustls::rustls::{self, ClientConfig, RootCertStore};
use tokio_util::sync::CancellationToken;

use super::AuthError;
use crate::cluster::backoff::Backoff;

/// How long one request (connect, TLS, headers and body) may take.
pub const FETCH_TIMEOUT: Duration = Duration::from_secs(10);

/// The largest discovery document or key set read. Real sets hold a few
/// keys in a few kilobytes.
pub const MAX_DOCUMENT_BYTES: usize = 1024 * 1024;

/// The shortest time a key set is kept, whatever `Cache-Control` says.
pub const MIN_REFRESH: Duration = Duration::from_secs(60);

/// The longest time a key set is kept before it is fetched again.
pub const MAX_REFRESH: Duration = Duration::from_secs(24 * 60 * 60);

/// How long a key set is kept when the response says nothing usable.
pub const DEFAULT_REFRESH: Duration = Duration::from_secs(15 * 60);

/// The least time between two fetches asked for by unknown `kid`s.
pub const UNKNOWN_KEY_COOLDOWN: Duration = Duration::from_secs(10);

/// The first retry delay after a failed fetch.
pub const RETRY_BASE: Duration = Duration::from_secs(1);

/// The longest retry delay after repeated failures.
pub const RETRY_CAP: Duration = Duration::from_secs(60);

/// Why one fetch failed. Logged, never shown to users.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchError {
    /// No answer: connect, TLS or HTTP failed.
    #[error("request to {url} failed: {reason}")]
    Request {
        /// The URL asked.
        url: String,
        /// What failed.
        reason: String,
    },
    /// No answer within [`FETCH_TIMEOUT`].
    #[error("request to {url} took longer than {FETCH_TIMEOUT:?}")]
    Timeout {
        /// The URL asked.
        url: String,
    },
    /// An answer other than 200.
    #[error("{url} answered {status}")]
    Status {
        /// The URL asked.
        url: String,
        /// Its status.
        status: u16,
    },
    /// The discovery document is not usable.
    #[error("discovery document at {url}: {reason}")]
    Discovery {
        /// The URL asked.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where keys come from.
#[derive(Debug)]
enum Target {
    /// A JWKS URL.
    Jwks(Uri),
    /// An OIDC issuer and the discovery document's URL.
    Oidc { issuer: String, discovery: Uri },
}

/// Whether unknown-`kid` fetches may start, and one is under way.
#[derive(Debug, Default)]
struct Forced {
    last: Option<Instant>,
    in_flight: bool,
}

/// An identity provider's key set endpoint and the state of its fetches.
/// Shared by the [`Verifier`](super::Verifier) and its refresh task.
pub(crate) struct Provider {
    client: Client<HttpsConnector<HttpConnector>, Empty<Bytes>>,
    target: Target,
    wake: Notify,
    forced: Mutex<Forced>,
    /// Counts finished fetch attempts, so waiters see the next one end.
    attempts: watch::Sender<u64>,
}

impl std::fmt::Debug for Provider {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Provider")
            .field("target", &self.target)
            .finish_non_exhaustive()
    }
}

/// A checked URL: `https://`, or `http://` to a loopback host.
fn checked_url(flag: &'static str, text: &str) -> Result<Uri, String> {
    let uri: Uri = text
        .parse()
        .map_err(|e| format!("{flag} {text:?} is not a URL: {e}"))?;
    let host = uri
        .host()
        .ok_or_else(|| format!("{flag} {text:?} has no host"))?;
    match uri.scheme_str() {
        Some("https") => Ok(uri),
        Some("http") if is_loopback(host) => Ok(uri),
        Some("http") => Err(format!(
            "{flag} {text:?}: keys must come over https:// (http:// only to a loopback address)"
        )),
        _ => Err(format!("{flag} {text:?} must start with https://")),
    }
}

fn is_loopback(host: &str) -> bool {
    let bare = host.trim_start_matches('[').trim_end_matches(']');
    host == "localhost"
        || bare
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// The trust roots: the PEM bundle `ca_file`, or the system's.
fn trust_roots(ca_file: Option<&std::path::Path>) -> Result<RootCertStore, AuthError> {
    let invalid = |path: &std::path::Path, reason: String| AuthError::Invalid {
        path: path.to_owned(),
        reason,
    };
    if let Some(path) = ca_file {
        let pem = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_owned(),
            source,
        })?;
        let roots = crate::tls::roots(&pem, path).map_err(|e| invalid(path, e.to_string()))?;
        return Ok(roots.as_ref().clone());
    }
    let found = rustls_native_certs::load_native_certs();
    let mut roots = RootCertStore::empty();
    let (added, _) = roots.add_parsable_certificates(found.certs);
    if added == 0 {
        return Err(AuthError::NoTrustRoots);
    }
    Ok(roots)
}

impl Provider {
    /// A provider for `--jwks-url` or `--oidc-issuer` (exactly one is
    /// given), trusting `ca_file` or the system's roots. Nothing is fetched
    /// yet.
    pub(crate) fn new(
        jwks_url: Option<&str>,
        oidc_issuer: Option<&str>,
        ca_file: Option<&std::path::Path>,
    ) -> Result<Self, AuthError> {
        let target = match (jwks_url, oidc_issuer) {
            (Some(url), None) => {
                Target::Jwks(checked_url("--jwks-url", url).map_err(AuthError::Url)?)
            }
            (None, Some(issuer)) => {
                checked_url("--oidc-issuer", issuer).map_err(AuthError::Url)?;
                let discovery = format!(
                    "{}/.well-known/openid-configuration",
                    issuer.trim_end_matches('/')
                );
                Target::Oidc {
                    issuer: issuer.to_owned(),
                    discovery: checked_url("--oidc-issuer", &discovery).map_err(AuthError::Url)?,
                }
            }
            _ => return Err(AuthError::NoKeySource),
        };
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let tls = ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| AuthError::Url(format!("TLS for the identity provider: {e}")))?
            .with_root_certificates(trust_roots(ca_file)?)
            .with_no_client_auth();
        let connector = hyper_rustls::HttpsConnectorBuilder::new()
            .with_tls_config(tls)
            .https_or_http()
            .enable_http1()
            .build();
        Ok(Self {
            client: Client::builder(TokioExecutor::new()).build(connector),
            target,
            wake: Notify::new(),
            forced: Mutex::new(Forced::default()),
            attempts: watch::Sender::new(0),
        })
    }

    /// The URL keys are fetched from, or the issuer, for log lines.
    pub(crate) fn describe(&self) -> String {
        match &self.target {
            Target::Jwks(uri) => format!("JWKS at {uri}"),
            Target::Oidc { issuer, .. } => format!("OIDC issuer {issuer}"),
        }
    }

    /// One GET: the body and how long it may be kept.
    async fn get(&self, uri: &Uri) -> Result<(Bytes, Duration), FetchError> {
        let url = uri.to_string();
        let request = Request::get(uri.clone())
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("herald/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FetchError::Request {
                url: url.clone(),
                reason: e.to_string(),
            })?;
        let exchange = async {
            let response = self
                .client
                .request(request)
                .await
                .map_err(|e| FetchError::Request {
                    url: url.clone(),
                    reason: error_chain(&e),
                })?;
            if response.status() != StatusCode::OK {
                return Err(FetchError::Status {
                    url: url.clone(),
                    status: response.status().as_u16(),
                });
            }
            let keep = refresh_after(response.headers());
            let body = Limited::new(response.into_body(), MAX_DOCUMENT_BYTES)
                .collect()
                .await
                .map_err(|e| FetchError::Request {
                    url: url.clone(),
                    reason: format!("reading the body: {e}"),
                })?;
            Ok((body.to_bytes(), keep))
        };
        tokio::time::timeout(FETCH_TIMEOUT, exchange)
            .await
            .map_err(|_| FetchError::Timeout { url: url.clone() })?
    }

    /// The key set's URL: the configured one, or the discovery document's
    /// `jwks_uri` (looked up once, then remembered in `found`).
    async fn jwks_uri(&self, found: &mut Option<Uri>) -> Result<Uri, FetchError> {
        let (issuer, discovery) = match &self.target {
            Target::Jwks(uri) => return Ok(uri.clone()),
            Target::Oidc { issuer, discovery } => (issuer, discovery),
        };
        if let Some(uri) = found {
            return Ok(uri.clone());
        }
        #[derive(Deserialize)]
        struct Document {
            issuer: String,
            jwks_uri: String,
        }
        let (body, _) = self.get(discovery).await?;
        let broken = |reason: String| FetchError::Discovery {
            url: discovery.to_string(),
            reason,
        };
        let document: Document = serde_json::from_slice(&body)
            .map_err(|e| broken(format!("not a discovery document: {e}")))?;
        // OpenID Connect Discovery 1.0 §4.3: the document must name exactly
        // the issuer it was fetched for.
        if document.issuer != *issuer {
            return Err(broken(format!(
                "it names the issuer {:?}, not {issuer:?}",
                document.issuer
            )));
        }
        let uri = checked_url("jwks_uri", &document.jwks_uri).map_err(broken)?;
        *found = Some(uri.clone());
        Ok(uri)
    }

    /// Fetches the key set, then `apply`s it; returns how long to keep it.
    async fn fetch<F>(&self, found: &mut Option<Uri>, apply: &mut F) -> Result<Duration, String>
    where
        F: FnMut(&[u8]) -> Result<String, String> + Send,
    {
        let uri = self.jwks_uri(found).await.map_err(|e| e.to_string())?;
        let (body, keep) = match self.get(&uri).await {
            Ok(answer) => answer,
            Err(e) => {
                // The provider may have moved its keys: look the URL up
                // again next time.
                *found = None;
                return Err(e.to_string());
            }
        };
        apply(&body).map_err(|reason| format!("key set at {uri} is unusable: {reason}"))?;
        Ok(keep)
    }

    /// Fetches the key set now and then until `shutdown`: at once, again
    /// when the kept set's time is up or an unknown `kid` asks, and with
    /// backoff after failures. `apply` parses and installs a set, returning
    /// a summary (logged when it changes) or why the set is unusable.
    pub(crate) async fn run<F>(&self, shutdown: CancellationToken, mut apply: F)
    where
        F: FnMut(&[u8]) -> Result<String, String> + Send,
    {
        let mut found = None;
        let mut backoff = Backoff::new(RETRY_BASE, RETRY_CAP);
        let mut last_summary: Option<String> = None;
        let mut last_failure: Option<String> = None;
        let mut wait = Duration::ZERO;
        loop {
            tokio::select! {
                () = shutdown.cancelled() => return,
                () = tokio::time::sleep(wait) => {}
                () = self.wake.notified() => {}
            }
            let mut summary = None;
            let outcome = self
                .fetch(&mut found, &mut |body: &[u8]| {
                    let said = apply(body)?;
                    summary = Some(said.clone());
                    Ok(said)
                })
                .await;
            match outcome {
                Ok(keep) => {
                    if summary != last_summary {
                        tracing::info!(source = %self.describe(), "JWT keys: {}", summary.as_deref().unwrap_or(""));
                        last_summary = summary;
                    }
                    if last_failure.take().is_some() {
                        tracing::info!(source = %self.describe(), "identity provider reachable again");
                    }
                    backoff.reset();
                    wait = keep;
                }
                Err(reason) => {
                    if last_failure.as_ref() != Some(&reason) {
                        tracing::warn!(source = %self.describe(), %reason, "cannot fetch the JWT keys; keeping the last good ones");
                        last_failure = Some(reason);
                    }
                    wait = backoff.next_delay();
                }
            }
            self.attempt_finished();
        }
    }

    /// Wakes those waiting in [`Provider::refresh_for_unknown_key`].
    fn attempt_finished(&self) {
        self.lock_forced().in_flight = false;
        self.attempts.send_modify(|n| *n += 1);
    }

    fn lock_forced(&self) -> std::sync::MutexGuard<'_, Forced> {
        self.forced
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// For a token with an unknown `kid`: starts a fetch (or joins one under
    /// way) and waits for it to end. Returns `false` at once when the last
    /// such fetch was less than [`UNKNOWN_KEY_COOLDOWN`] ago and none is
    /// under way: the caller refuses the token without asking again.
    pub(crate) async fn refresh_for_unknown_key(&self) -> bool {
        let mut attempts = self.attempts.subscribe();
        {
            let mut forced = self.lock_forced();
            if !forced.in_flight {
                let now = Instant::now();
                if forced
                    .last
                    .is_some_and(|last| now.duration_since(last) < UNKNOWN_KEY_COOLDOWN)
                {
                    return false;
                }
                forced.last = Some(now);
                forced.in_flight = true;
                self.wake.notify_one();
            }
        }
        // The refresh task may be mid-fetch of its own: the wait ends with
        // that fetch, and the bound covers it and the one asked for.
        let bound = FETCH_TIMEOUT * 2 + Duration::from_secs(1);
        tokio::time::timeout(bound, attempts.changed())
            .await
            .is_ok_and(|changed| changed.is_ok())
    }
}

/// How long a response may be kept, from its `Cache-Control`.
fn refresh_after(headers: &HeaderMap) -> Duration {
    let mut max_age = None;
    for value in headers.get_all(CACHE_CONTROL) {
        let Ok(text) = value.to_str() else { continue };
        for directive in text.split(',').map(str::trim) {
            let lower = directive.to_ascii_lowercase();
            if lower == "no-cache" || lower == "no-store" {
                return MIN_REFRESH;
            }
            if let Some(secs) = lower.strip_prefix("max-age=") {
                max_age = secs.trim_matches('"').parse::<u64>().ok().or(max_age);
            }
        }
    }
    max_age
        .map(Duration::from_secs)
        .unwrap_or(DEFAULT_REFRESH)
        .clamp(MIN_REFRESH, MAX_REFRESH)
}

/// An error with its sources, which name the real cause (a TLS alert, a
/// refused connection) that hyper's outer error hides.
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(inner) = source {
        text.push_str(": ");
        text.push_str(&inner.to_string());
        source = inner.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use http::HeaderValue;

    use super::*;

    fn headers(values: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for v in values {
            map.append(CACHE_CONTROL, HeaderValue::from_str(v).expect("header"));
        }
        map
    }

    #[test]
    fn max_age_sets_the_refresh_within_its_bounds() {
        assert_eq!(
            refresh_after(&headers(&["public, max-age=3600"])),
            Duration::from_secs(3600)
        );
        assert_eq!(refresh_after(&headers(&["max-age=5"])), MIN_REFRESH);
        assert_eq!(refresh_after(&headers(&["max-age=99999999"])), MAX_REFRESH);
        assert_eq!(refresh_after(&headers(&[])), DEFAULT_REFRESH);
        assert_eq!(refresh_after(&headers(&["max-age=bogus"])), DEFAULT_REFRESH);
        assert_eq!(
            refresh_after(&headers(&["private", "Max-Age=7200"])),
            Duration::from_secs(7200)
        );
    }

    #[test]
    fn no_cache_and_no_store_refresh_as_soon_as_allowed() {
        assert_eq!(refresh_after(&headers(&["no-cache"])), MIN_REFRESH);
        assert_eq!(
            refresh_after(&headers(&["max-age=3600, no-store"])),
            MIN_REFRESH
        );
    }

    #[test]
    fn keys_come_over_https_and_plain_http_only_to_loopback() {
        for ok in [
            "https://idp.example.com/keys",
            "http://127.0.0.1:8080/keys",
            "http://localhost/keys",
            "http://[::1]:9000/keys",
        ] {
            assert!(checked_url("--jwks-url", ok).is_ok(), "{ok}");
        }
        for bad in [
            "http://idp.example.com/keys",
            "ftp://idp.example.com/keys",
            "idp.example.com/keys",
            "https:///keys",
            "not a url",
        ] {
            let error = checked_url("--jwks-url", bad).expect_err(bad);
            assert!(error.starts_with("--jwks-url"), "{error}");
        }
    }

    #[test]
    fn the_discovery_document_is_looked_up_under_the_issuer() {
        let provider = Provider::new(None, Some("https://idp.example.com/realms/app/"), None)
            .expect("provider");
        let Target::Oidc { discovery, issuer } = &provider.target else {
            panic!("an OIDC target");
        };
        assert_eq!(
            discovery.to_string(),
            "https://idp.example.com/realms/app/.well-known/openid-configuration"
        );
        assert_eq!(issuer, "https://idp.example.com/realms/app/");
    }

    #[tokio::test(start_paused = true)]
    async fn unknown_key_fetches_are_at_most_one_per_cooldown_and_waiters_share_it() {
        let provider = std::sync::Arc::new(
            Provider::new(Some("https://idp.example.com/keys"), None, None).expect("provider"),
        );
        let fetches = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        // Stands in for `run`: every wake is one fetch, which takes a second.
        let task = tokio::spawn({
            let (provider, fetches) = (provider.clone(), fetches.clone());
            async move {
                loop {
                    provider.wake.notified().await;
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    fetches.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    provider.attempt_finished();
                }
            }
        });
        let asks: Vec<_> = (0..10)
            .map(|_| {
                let provider = provider.clone();
                tokio::spawn(async move { provider.refresh_for_unknown_key().await })
            })
            .collect();
        for ask in asks {
            assert!(ask.await.expect("ask"), "every ask waits for the one fetch");
        }
        assert_eq!(fetches.load(std::sync::atomic::Ordering::Relaxed), 1);
        for _ in 0..100 {
            assert!(
                !provider.refresh_for_unknown_key().await,
                "refused within the cooldown"
            );
        }
        tokio::time::advance(UNKNOWN_KEY_COOLDOWN).await;
        assert!(provider.refresh_for_unknown_key().await);
        assert_eq!(fetches.load(std::sync::atomic::Ordering::Relaxed), 2);
        task.abort();
    }
}
