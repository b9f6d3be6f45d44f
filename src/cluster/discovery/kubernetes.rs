//! `--discovery kubernetes`: a watch (never polling) on the v1 `Endpoints`
//! object of the pods' headless Service, or on its discovery.k8s.io/v1
//! `EndpointSlices` (`--k8s-api endpointslices`). This module holds all the
//! Kubernetes I/O; what an object means is decided by the pure
//! [`index`](super::index).
//!
//! It needs RBAC for get, list and watch on the one resource, in its own
//! namespace, and nothing else. The client works in-cluster (the service
//! account token is re-read from disk as it is rotated) and from a
//! kubeconfig (`KUBECONFIG`) for development.
//!
//! Failures never stop the pod: an unreachable, slow or forbidding API
//! server is retried with kube's capped exponential backoff with jitter
//! (0.8 s doubling to 30 s), the last known peers stay in place, and one
//! line is logged per distinct failure (for 403, the verb, resource and
//! namespace that RBAC is missing). Watch expiry (410 Gone) and dropped
//! watches re-list, and the index swaps in a re-list only when complete.

use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use k8s_openapi::api::core::v1::Endpoints;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::watcher::{self, Event};
use kube::runtime::{WatchStreamExt, watcher as watch_objects};
use kube::{Api, Client, Resource, ResourceExt};
use serde::de::DeserializeOwned;
use tokio_util::sync::CancellationToken;

use super::index::{Filter, Index, Observation};
use super::{Discovery, FailureLog, PeerSetSender, publish};
use crate::cluster::backoff::Backoff;
use crate::config::K8sApi;
use crate::stats::Counters;

/// Peers from the Kubernetes API.
#[derive(Debug, Clone)]
pub struct Kubernetes {
    /// The headless Service.
    pub service: String,
    /// Its namespace; `None` takes the client's default (the service
    /// account's namespace in-cluster, the context's from a kubeconfig).
    pub namespace: Option<String>,
    /// Which API to watch.
    pub api: K8sApi,
    /// What to take from each object.
    pub filter: Filter,
    /// Where failures are counted.
    pub counters: Arc<Counters>,
}

impl Discovery for Kubernetes {
    async fn run(self, peers: PeerSetSender, shutdown: CancellationToken) {
        let Some(client) = connect(&shutdown, &self.counters).await else {
            return;
        };
        let namespace = self
            .namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned());
        tracing::info!(service = %self.service, %namespace, api = ?self.api, "watching Kubernetes for peers");
        let follow = Follow {
            counters: self.counters.clone(),
            namespace: namespace.clone(),
            peers,
            shutdown,
        };
        match self.api {
            K8sApi::Endpoints => {
                let config =
                    watcher::Config::default().fields(&format!("metadata.name={}", self.service));
                let filter = self.filter;
                follow
                    .run(
                        Api::<Endpoints>::namespaced(client, &namespace),
                        config,
                        move |o| filter.endpoints(o),
                    )
                    .await;
            }
            K8sApi::Endpointslices => {
                let config = watcher::Config::default()
                    .labels(&format!("kubernetes.io/service-name={}", self.service));
                let filter = self.filter;
                follow
                    .run(
                        Api::<EndpointSlice>::namespaced(client, &namespace),
                        config,
                        move |o| filter.slice(o),
                    )
                    .await;
            }
        }
    }
}

/// Builds a client from the environment, retrying until it works or the pod
/// shuts down. `None` on shutdown.
async fn connect(shutdown: &CancellationToken, counters: &Arc<Counters>) -> Option<Client> {
    let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(30));
    let mut failures = FailureLog::new(counters.clone());
    loop {
        match Client::try_default().await {
            Ok(client) => {
                failures.recovered("kubernetes");
                return Some(client);
            }
            Err(e) => failures.failed(
                "kubernetes",
                format!("no Kubernetes client configuration (in-cluster or KUBECONFIG): {e}"),
            ),
        }
        tokio::select! {
            () = shutdown.cancelled() => return None,
            () = tokio::time::sleep(backoff.next_delay()) => {}
        }
    }
}

struct Follow {
    counters: Arc<Counters>,
    namespace: String,
    peers: PeerSetSender,
    shutdown: CancellationToken,
}

impl Follow {
    async fn run<K, F>(self, api: Api<K>, config: watcher::Config, observe: F)
    where
        K: Resource<DynamicType = ()> + Clone + DeserializeOwned + std::fmt::Debug + Send + 'static,
        F: Fn(&K) -> Observation,
    {
        let resource = K::plural(&()).into_owned();
        let events = watch_objects(api, config).default_backoff();
        let mut events = std::pin::pin!(events);
        let mut index = Index::default();
        let mut failures = FailureLog::new(self.counters.clone());
        loop {
            let event = tokio::select! {
                () = self.shutdown.cancelled() => return,
                event = events.next() => event,
            };
            let changed = match event {
                None => return,
                Some(Err(e)) => {
                    failures.failed("kubernetes", describe(&e, &resource, &self.namespace));
                    continue;
                }
                Some(Ok(event)) => {
                    failures.recovered("kubernetes");
                    match event {
                        Event::Apply(o) => index.apply(o.name_any(), observe(&o)),
                        Event::Delete(o) => {
                            tracing::warn!(object = %o.name_any(), %resource, "peer object deleted; keeping the last known peers");
                            index.delete(&o.name_any())
                        }
                        Event::Init => {
                            index.relist_begin();
                            None
                        }
                        Event::InitApply(o) => {
                            index.relist_object(o.name_any(), observe(&o));
                            None
                        }
                        Event::InitDone => index.relist_done(),
                    }
                }
            };
            if let Some(set) = changed {
                publish(&self.peers, set);
            }
        }
    }
}

/// One clear line for a watch failure; for 403 it names what RBAC lacks.
fn describe(error: &watcher::Error, resource: &str, namespace: &str) -> String {
    let (verb, source) = match error {
        watcher::Error::InitialListFailed(e) => ("list", Some(e)),
        watcher::Error::WatchStartFailed(e) | watcher::Error::WatchFailed(e) => ("watch", Some(e)),
        watcher::Error::WatchError(status) if status.code == 403 => {
            return forbidden("watch", resource, namespace, &status.message);
        }
        watcher::Error::WatchError(_) | watcher::Error::NoResourceVersion => ("watch", None),
    };
    match source {
        Some(kube::Error::Api(status)) if status.code == 403 => {
            forbidden(verb, resource, namespace, &status.message)
        }
        _ => format!("cannot {verb} {resource} in namespace {namespace}: {error}"),
    }
}

fn forbidden(verb: &str, resource: &str, namespace: &str, message: &str) -> String {
    format!(
        "RBAC forbids {verb} on {resource} in namespace {namespace}: grant this pod's service account \
         get, list and watch on {resource} there (the Helm chart's Role does): {message}"
    )
}
