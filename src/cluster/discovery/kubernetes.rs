//! `--discovery kubernetes`: a watch (never polling) on the v1 `Endpoints`
//! object of the pods' headless Service, or on its discovery.k8s.io/v1
//! `EndpointSlices` (`--k8s-api endpointslices`). This module holds all the
//! Kubernetes I/O; what an object means is decided by the pure
//! [`index`](super::index).
//!
//! It needs RBAC for get, list and watch on the one resource, in its own
//! namespace, and nothing else. The client configuration is resolved once at
//! start ([`Target::from_environment`]: in-cluster, or a kubeconfig from
//! `KUBECONFIG`), so the namespace in the cluster identity is the one
//! watched. kube re-reads a token file (the service account's, or a
//! kubeconfig `tokenFile`) about once a minute; on a 401 the client is also
//! rebuilt from the environment at once, so a rotated token is picked up at
//! the next request.
//!
//! Failures never stop the pod: an unreachable, slow or forbidding API
//! server is retried with capped exponential backoff with jitter (0.8 s
//! doubling to `--k8s-backoff-max`, 30 s by default), the last known peers
//! stay in place, and one line is logged per distinct failure (for 403, the
//! verb, resource and namespace that RBAC is missing). Only a success resets
//! the backoff and logs "peer discovery recovered": a complete list, or a
//! watch event after the error. The watcher's `Init` (sent before the list
//! is even asked for) is neither. Watch expiry (410 Gone) is no failure: it
//! re-lists at once, and the index swaps in a re-list only when complete.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::index::{Filter, Index, OVER_CAPACITY, Observation};
use super::{Discovery, FailureLog, PeerSetSender, publish};
use crate::cluster::backoff::Backoff;
use crate::config::K8sApi;
use crate::stats::Counters;

/// The first retry of a failing API server waits up to this long (then
/// twice as long each time): what kube's own default backoff starts with.
const FIRST_RETRY: Duration = Duration::from_millis(800);

/// No Kubernetes client configuration could be found.
#[derive(Debug, thiserror::Error)]
#[error("no Kubernetes client configuration (in-cluster or KUBECONFIG): {0}")]
pub struct NoConfig(#[from] kube::config::InferConfigError);

/// Where discovery talks to: the API server's client configuration and
/// the namespace watched.
#[derive(Debug, Clone)]
pub struct Target {
    /// The client configuration, from the environment.
    pub config: kube::Config,
    /// `--k8s-namespace` or `POD_NAMESPACE` when given, else the client's
    /// default (the service account's namespace in-cluster, the context's
    /// from a kubeconfig).
    pub namespace: String,
}

impl Target {
    /// Resolves the client configuration from the environment, and the
    /// namespace: `namespace` if given, else the configuration's.
    pub async fn from_environment(namespace: Option<String>) -> Result<Self, NoConfig> {
        let config = kube::Config::infer().await?;
        let namespace = namespace.unwrap_or_else(|| config.default_namespace.clone());
        Ok(Self { config, namespace })
    }
}

/// Peers from the Kubernetes API.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// The headless Service.
    pub service: String,
    /// The API server and namespace.
    pub target: Target,
    /// Which API to watch.
    pub api: K8sApi,
    /// What to take from each object.
    pub filter: Filter,
    /// The longest wait between retries.
    pub backoff_max: Duration,
    /// Where failures are counted.
    pub counters: Arc<Counters>,
}

impl Discovery for Kubernetes {
    async fn run(self, peers: PeerSetSender, shutdown: CancellationToken) {
        let Kubernetes {
            service,
            target,
            api,
            filter,
            backoff_max,
            counters,
        } = self;
        let Target {
            mut config,
            namespace,
        } = target;
        tracing::info!(%service, %namespace, ?api, "watching Kubernetes for peers");
        let mut follow = Follow {
            namespace,
            peers,
            shutdown,
            index: Index::default(),
            truncated: false,
            retry: Retry {
                backoff: Backoff::new(FIRST_RETRY, backoff_max.max(FIRST_RETRY)),
                failures: FailureLog::new(counters),
            },
        };
        loop {
            let client = match Client::try_from(config.clone()) {
                Ok(client) => client,
                Err(e) => {
                    let line = format!("cannot build a Kubernetes client: {e}");
                    if !follow.retry.failed(line, &follow.shutdown).await {
                        return;
                    }
                    continue;
                }
            };
            let ended = match api {
                K8sApi::Endpoints => {
                    let selector =
                        watcher::Config::default().fields(&format!("metadata.name={service}"));
                    let api = Api::<Endpoints>::namespaced(client, &follow.namespace);
                    follow.run(api, selector, |o| filter.endpoints(o)).await
                }
                K8sApi::Endpointslices => {
                    let selector = watcher::Config::default()
                        .labels(&format!("kubernetes.io/service-name={service}"));
                    let api = Api::<EndpointSlice>::namespaced(client, &follow.namespace);
                    follow.run(api, selector, |o| filter.slice(o)).await
                }
            };
            match ended {
                Ended::Shutdown => return,
                // NB: kube re-reads a token file only about once a minute
                // and never because of a 401. A new client reads the token
                // file now; inferring the configuration again also picks up
                // a rewritten kubeconfig (an inline token, a new context).
                Ended::Unauthorized => match kube::Config::infer().await {
                    Ok(fresh) => config = fresh,
                    Err(e) => {
                        tracing::debug!(error = %e, "cannot re-read the Kubernetes client configuration; keeping the old one");
                    }
                },
            }
        }
    }
}

/// Why a watch loop ended.
enum Ended {
    /// The pod is shutting down.
    Shutdown,
    /// The API server refused the client's credentials: build a new client.
    Unauthorized,
}

/// Retries of a failing API server: one log line per distinct failure and a
/// delay that doubles, both reset only by a success.
struct Retry {
    backoff: Backoff,
    failures: FailureLog,
}

impl Retry {
    /// Logs (once per distinct `line`) and counts a failure, then waits the
    /// next delay. `false` if the pod shut down meanwhile.
    async fn failed(&mut self, line: String, shutdown: &CancellationToken) -> bool {
        self.failures.failed("kubernetes", line);
        tokio::select! {
            () = shutdown.cancelled() => false,
            () = tokio::time::sleep(self.backoff.next_delay()) => true,
        }
    }

    /// The API server answered a list or a watch event.
    fn succeeded(&mut self) {
        self.failures.recovered("kubernetes");
        self.backoff.reset();
    }
}

/// One watch, and what it has built so far.
struct Follow {
    namespace: String,
    peers: PeerSetSender,
    shutdown: CancellationToken,
    /// Kept across rebuilt clients: the last known peers stay in place.
    index: Index,
    retry: Retry,
    /// Whether the last object seen said it was truncated, so the warning
    /// is logged once per time it becomes so.
    truncated: bool,
}

impl Follow {
    /// Feeds the watch into the index until shutdown or a 401.
    async fn run<K, F>(&mut self, api: Api<K>, config: watcher::Config, observe: F) -> Ended
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        F: Fn(&K) -> Observation,
    {
        let resource = K::plural(&()).into_owned();
        // NB: no `default_backoff()`: it resets on every `Ok` event, and
        // the `Init` event sent before each list attempt is one, so a
        // forbidden list was retried every 0.8 s forever.
        let events = watcher::watcher(api, config);
        let mut events = std::pin::pin!(events);
        loop {
            let event = tokio::select! {
                () = self.shutdown.cancelled() => return Ended::Shutdown,
                event = events.next() => event,
            };
            let changed = match event {
                None => return Ended::Shutdown,
                Some(Err(e)) => {
                    let code = status_code(&e);
                    if code == Some(410) {
                        // The history moved past our resourceVersion: the
                        // watcher re-lists on its next poll.
                        tracing::debug!(%resource, "watch expired (410 Gone); re-listing");
                        continue;
                    }
                    let line = describe(&e, &resource, &self.namespace);
                    if !self.retry.failed(line, &self.shutdown).await {
                        return Ended::Shutdown;
                    }
                    if code == Some(401) {
                        return Ended::Unauthorized;
                    }
                    continue;
                }
                Some(Ok(Event::Init)) => {
                    self.index.relist_begin();
                    None
                }
                Some(Ok(Event::InitApply(o))) => {
                    let observation = self.observed(&o, &observe);
                    self.index.relist_object(o.name_any(), observation);
                    None
                }
                Some(Ok(Event::InitDone)) => {
                    self.retry.succeeded();
                    self.index.relist_done()
                }
                Some(Ok(Event::Apply(o))) => {
                    self.retry.succeeded();
                    let observation = self.observed(&o, &observe);
                    self.index.apply(o.name_any(), observation)
                }
                Some(Ok(Event::Delete(o))) => {
                    self.retry.succeeded();
                    tracing::warn!(object = %o.name_any(), %resource, "peer object deleted; keeping the last known peers");
                    self.index.delete(&o.name_any())
                }
            };
            if let Some(set) = changed {
                publish(&self.peers, set);
            }
        }
    }
}

impl Follow {
    /// What `object` lists, warning when it lists only part of the Service.
    fn observed<K: ResourceExt>(
        &mut self,
        object: &K,
        observe: impl Fn(&K) -> Observation,
    ) -> Observation {
        let observation = observe(object);
        if observation.truncated && !self.truncated {
            tracing::warn!(
                object = %object.name_any(),
                listed = observation.addresses,
                "the Endpoints object is truncated ({OVER_CAPACITY}): the Service has more pods than it \
                 can list, and those beyond are not peers; use --k8s-api endpointslices"
            );
        }
        self.truncated = observation.truncated;
        observation
    }
}

/// The HTTP status the API server answered with, if it answered.
fn status_code(error: &watcher::Error) -> Option<u16> {
    match error {
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status))
        | watcher::Error::WatchError(status) => Some(status.code),
        _ => None,
    }
}

/// One clear line for a watch failure; for 403 it names what RBAC lacks.
fn describe(error: &watcher::Error, resource: &str, namespace: &str) -> String {
    let (verb, status) = match error {
        watcher::Error::InitialListFailed(e) => ("list", api_status(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => {
            ("watch", api_status(e))
        }
        watcher::Error::WatchError(status) => ("watch", Some(&**status)),
        watcher::Error::NoResourceVersion => ("watch", None),
    };
    match status {
        Some(status) if status.code == 403 => format!(
            "RBAC forbids {verb} on {resource} in namespace {namespace}: grant this pod's service \
             account get, list and watch on {resource} there (the Helm chart's Role does): {}",
            status.message
        ),
        Some(status) if status.code == 401 => format!(
            "the API server refused this pod's credentials to {verb} {resource} in namespace \
             {namespace} (401 Unauthorized); building a new client, which re-reads the token"
        ),
        Some(status) => format!(
            "cannot {verb} {resource} in namespace {namespace}: {} {}: {}",
            status.code, status.reason, status.message
        ),
        None => format!("cannot {verb} {resource} in namespace {namespace}: {error}"),
    }
}

fn api_status(error: &kube::Error) -> Option<&kube::core::Status> {
    match error {
        kube::Error::Api(status) => Some(status),
        _ => None,
    }
}
