//! A Kubernetes API stand-in: an in-process axum server that speaks enough of the real
//! list/watch protocol for the real `kube` client and `kube::runtime::watcher` to run against it.
//!
//! It serves `Endpoints` (core/v1) and `EndpointSlice` (discovery.k8s.io/v1) only:
//!
//! ```text
//!  test ── apply_*/delete_* ──▶ Store ── Change (rv N) ──┬─▶ history (replayed to watches resuming at rv < N)
//!                                 │                       └─▶ broadcast ──▶ live watch streams (one JSON event per line)
//!                                 └──▶ list / get handlers
//! ```
//!
//! Every change bumps one global resourceVersion, exactly like etcd behind a real API server.
//! Watches resume from `resourceVersion=N` by replaying the retained history; resuming from
//! before [`KubeApi::expire_history`] answers the in-stream `410 Expired` error real servers
//! send, so the client re-lists; [`KubeApi::apply_endpoints_behind_watches`] makes a change no
//! open watch sees and compacts past it, so the pods' own watchers get that 410 and must
//! re-list to learn of it. Requests must carry the expected bearer token
//! ([`KubeApi::set_token`] rotates it) or get `401`. [`KubeApi::stop`] and [`KubeApi::restart`] take the server
//! away (listener and every open connection) and bring it back on the same port with the same
//! objects, for "the API server goes away and comes back" tests.
//!
//! Concurrency: one std `Mutex` guards the store; it is never held across an `.await`. Changes
//! are recorded in the history and sent on the broadcast channel while that lock is held, so a
//! watch that snapshots the history and subscribes under the same lock sees every change exactly
//! once, in resourceVersion order.

use std::{
    collections::{BTreeMap, HashMap, VecDeque},
    future::Future,
    io,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    pin::Pin,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    task::{Context, Poll},
    time::Duration,
};

use axum::{
    Json, Router,
    body::{Body, Bytes},
    extract::{Path as UrlPath, Query, Request, State},
    http::{StatusCode, Uri, header},
    middleware::{self, Next},
    response::{IntoResponse, Response},
    routing::get,
};
use k8s_openapi::{
    api::{
        core::v1::{EndpointAddress, EndpointPort, EndpointSubset, Endpoints},
        discovery::v1::{Endpoint, EndpointConditions, EndpointPort as SlicePort, EndpointSlice},
    },
    apimachinery::pkg::apis::meta::v1::ObjectMeta,
};
use serde_json::{Value, json};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::broadcast::{self, error::TryRecvError},
    task::JoinHandle,
    time::{Instant, Interval},
};
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};

/// The bearer token written into the kubeconfig and expected at first; requests without the
/// expected token get `401 Unauthorized` ([`KubeApi::set_token`] changes it).
pub const TOKEN: &str = "herald-test-token";

/// The user named in `403 Forbidden` messages, as a real API server names a service account.
const USER: &str = "system:serviceaccount:default:herald";

/// How often a watch that asked for bookmarks gets one. Real servers send them about once a
/// minute; a second keeps tests fast while still exercising the client's bookmark handling.
const BOOKMARK_INTERVAL: Duration = Duration::from_secs(1);

/// Capacity of the change broadcast. A watch that falls this far behind has its stream ended
/// (as a real server drops a slow watcher); the client resumes from its last resourceVersion
/// and catches up from the history.
const CHANGE_CAPACITY: usize = 1024;

/// Label that ties an `EndpointSlice` to its `Service`.
const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// A running Kubernetes API stand-in; cheap to clone, all clones share one server and store.
///
/// The server task and its connections stop when the last clone is dropped, and in any case
/// when the test's tokio runtime shuts down.
#[derive(Clone)]
pub struct KubeApi {
    shared: Arc<Shared>,
    server: Arc<Server>,
}

/// The object store and the change feed, shared with the HTTP handlers.
struct Shared {
    store: Mutex<Store>,
    changes: broadcast::Sender<Arc<Change>>,
}

/// Everything behind the lock.
struct Store {
    /// The last resourceVersion handed out (0 before the first change).
    resource_version: u64,
    objects: BTreeMap<(Kind, String, String), Value>,
    /// Changes with a resourceVersion above `history_floor`, oldest first.
    history: Vec<Arc<Change>>,
    /// Watches resuming from below this resourceVersion get `410 Expired`.
    history_floor: u64,
    forbidden: bool,
    /// The bearer token requests must carry.
    token: String,
    /// Every request with when it arrived.
    requests: Vec<(Instant, String)>,
    /// Cancelled by [`KubeApi::drop_watches`]: watch streams end cleanly.
    watches: CancellationToken,
    /// Cancelled by [`KubeApi::stop`]: every connection of the current server is cut.
    connections: CancellationToken,
}

/// The serving side: a fixed address and, while serving, the accept task.
struct Server {
    addr: SocketAddr,
    running: Mutex<Option<Running>>,
}

struct Running {
    task: JoinHandle<()>,
    connections: CancellationToken,
}

impl Drop for Server {
    fn drop(&mut self) {
        let running = self
            .running
            .get_mut()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.connections.cancel();
            running.task.abort();
        }
    }
}

/// The resource kinds the stand-in serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Kind {
    Endpoints,
    EndpointSlice,
}

impl Kind {
    fn api_version(self) -> &'static str {
        match self {
            Kind::Endpoints => "v1",
            Kind::EndpointSlice => "discovery.k8s.io/v1",
        }
    }

    fn kind(self) -> &'static str {
        match self {
            Kind::Endpoints => "Endpoints",
            Kind::EndpointSlice => "EndpointSlice",
        }
    }

    fn plural(self) -> &'static str {
        match self {
            Kind::Endpoints => "endpoints",
            Kind::EndpointSlice => "endpointslices",
        }
    }
}

/// One stored change, kept in the history and fanned out to live watches.
struct Change {
    resource_version: u64,
    kind: Kind,
    action: Action,
    /// The object after the change (for a deletion: the last state, stamped with the deletion's
    /// resourceVersion, as real servers do).
    object: Value,
    /// The object before a modification, so label-selected watches can turn a change that
    /// moves an object out of (into) their selection into DELETED (ADDED).
    previous: Option<Value>,
}

#[derive(Clone, Copy)]
enum Action {
    Added,
    Modified,
    Deleted,
}

impl KubeApi {
    /// Binds `ip:0` and starts serving on a task of the current tokio runtime.
    pub async fn start(ip: IpAddr) -> KubeApi {
        let listener = TcpListener::bind(SocketAddr::new(ip, 0))
            .await
            .expect("bind the kube API stand-in");
        let addr = listener.local_addr().expect("stand-in local address");
        let (changes, _) = broadcast::channel(CHANGE_CAPACITY);
        let shared = Arc::new(Shared {
            store: Mutex::new(Store {
                resource_version: 0,
                objects: BTreeMap::new(),
                history: Vec::new(),
                history_floor: 0,
                forbidden: false,
                token: TOKEN.to_owned(),
                requests: Vec::new(),
                watches: CancellationToken::new(),
                connections: CancellationToken::new(),
            }),
            changes,
        });
        let running = serve(&shared, listener);
        KubeApi {
            shared,
            server: Arc::new(Server {
                addr,
                running: Mutex::new(Some(running)),
            }),
        }
    }

    /// The address the stand-in listens on (stable across [`KubeApi::restart`]).
    pub fn addr(&self) -> SocketAddr {
        self.server.addr
    }

    /// Takes the server away: closes the listener (new connections are refused) and cuts every
    /// open connection, including watch streams, mid-response. Stored objects are kept.
    pub async fn stop(&self) {
        let running = self
            .server
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .take();
        if let Some(running) = running {
            running.connections.cancel();
            running.task.abort();
            // NB: awaiting the aborted task is what guarantees the listener is closed when
            // `stop` returns, and that `restart` can bind the port again.
            let _ = running.task.await;
        }
    }

    /// Serves again on the same address with the same objects and resourceVersions; stops
    /// first if still running.
    pub async fn restart(&self) {
        self.stop().await;
        let listener = TcpListener::bind(self.server.addr)
            .await
            .expect("re-bind the kube API stand-in on its old port");
        let running = serve(&self.shared, listener);
        *self
            .server
            .running
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(running);
    }

    /// A kubeconfig whose current context points at this stand-in (plain `http://`), with
    /// namespace `default` and the static bearer token [`TOKEN`].
    pub fn kubeconfig_yaml(&self) -> String {
        self.kubeconfig_yaml_with("default", &format!("token: {TOKEN}"))
    }

    /// The kubeconfig with context namespace `namespace` and `user` as the user's one entry
    /// (`token: ...` or `tokenFile: ...`).
    fn kubeconfig_yaml_with(&self, namespace: &str, user: &str) -> String {
        format!(
            "apiVersion: v1
kind: Config
clusters:
- name: kube-api-standin
  cluster:
    server: http://{addr}
contexts:
- name: kube-api-standin
  context:
    cluster: kube-api-standin
    namespace: {namespace}
    user: herald
current-context: kube-api-standin
users:
- name: herald
  user:
    {user}
",
            addr = self.addr()
        )
    }

    /// Writes [`KubeApi::kubeconfig_yaml`] to `dir/kubeconfig` and returns that path, for
    /// `KUBECONFIG` or `Kubeconfig::read_from`.
    pub fn write_kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(&path, self.kubeconfig_yaml()).expect("write the stand-in kubeconfig");
        path
    }

    /// Writes a kubeconfig to `dir/kubeconfig` whose context namespace is `namespace` and whose
    /// user reads its token from `token_file` (`tokenFile`), and returns its path.
    pub fn write_kubeconfig_with(&self, dir: &Path, namespace: &str, token_file: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        let user = format!("tokenFile: {}", token_file.display());
        std::fs::write(&path, self.kubeconfig_yaml_with(namespace, &user))
            .expect("write the stand-in kubeconfig");
        path
    }

    /// A real `kube::Client` built from this stand-in's kubeconfig, without touching the
    /// process environment.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::from_yaml(&self.kubeconfig_yaml())
            .expect("parse the stand-in kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(
            kubeconfig,
            &kube::config::KubeConfigOptions::default(),
        )
        .await
        .expect("kube config from the stand-in kubeconfig");
        kube::Client::try_from(config).expect("kube client for the stand-in")
    }

    /// Creates or replaces an `Endpoints` (namespace defaults to `default`), emitting ADDED or
    /// MODIFIED; returns the stored object with its new resourceVersion.
    pub fn apply_endpoints(&self, endpoints: Endpoints) -> Endpoints {
        self.shared.apply_typed(Kind::Endpoints, &endpoints)
    }

    /// Ends every open watch, applies `endpoints` and forgets the history up to that change,
    /// all at once: a watcher resuming from the resourceVersion it had can only get
    /// `410 Expired` and re-list, as after a watch that was down across an etcd compaction.
    pub fn apply_endpoints_behind_watches(&self, endpoints: Endpoints) -> Endpoints {
        let value = serde_json::to_value(&endpoints).expect("serialize Endpoints");
        let mut store = self.shared.lock();
        store.watches.cancel();
        store.watches = CancellationToken::new();
        let stored = self.shared.apply_locked(&mut store, Kind::Endpoints, value);
        store.history.clear();
        store.history_floor = store.resource_version;
        serde_json::from_value(stored).expect("deserialize the stored Endpoints")
    }

    /// Deletes an `Endpoints`, emitting DELETED; returns whether it existed.
    pub fn delete_endpoints(&self, namespace: &str, name: &str) -> bool {
        self.shared.delete(Kind::Endpoints, namespace, name)
    }

    /// Creates or replaces an `EndpointSlice` (namespace defaults to `default`), emitting ADDED
    /// or MODIFIED; returns the stored object with its new resourceVersion.
    pub fn apply_endpoint_slice(&self, slice: EndpointSlice) -> EndpointSlice {
        self.shared.apply_typed(Kind::EndpointSlice, &slice)
    }

    /// Deletes an `EndpointSlice`, emitting DELETED; returns whether it existed.
    pub fn delete_endpoint_slice(&self, namespace: &str, name: &str) -> bool {
        self.shared.delete(Kind::EndpointSlice, namespace, name)
    }

    /// The last resourceVersion handed out.
    pub fn resource_version(&self) -> u64 {
        self.shared.lock().resource_version
    }

    /// While on, every request is answered `403 Forbidden` with a real RBAC `Status` body.
    pub fn forbid(&self, forbidden: bool) {
        self.shared.lock().forbidden = forbidden;
    }

    /// From now on only `Bearer <token>` is accepted; other tokens get `401 Unauthorized`.
    pub fn set_token(&self, token: &str) {
        self.shared.lock().token = token.to_owned();
    }

    /// Forgets the event history: a watch resuming from any resourceVersion older than now
    /// gets a `410 Expired` error event, and the client has to re-list.
    pub fn expire_history(&self) {
        let mut store = self.shared.lock();
        store.history.clear();
        store.history_floor = store.resource_version;
    }

    /// Ends every open watch stream cleanly (as a real server does at its watch timeout), so
    /// clients reconnect from their last resourceVersion.
    pub fn drop_watches(&self) {
        let mut store = self.shared.lock();
        store.watches.cancel();
        store.watches = CancellationToken::new();
    }

    /// Every request served so far, as `METHOD /path?query` exactly as the client sent it
    /// (query still percent-encoded), oldest first.
    pub fn requests(&self) -> Vec<String> {
        let store = self.shared.lock();
        store.requests.iter().map(|(_, r)| r.clone()).collect()
    }

    /// When each request of [`KubeApi::requests`] arrived, oldest first.
    pub fn request_times(&self) -> Vec<Instant> {
        let store = self.shared.lock();
        store.requests.iter().map(|(at, _)| *at).collect()
    }
}

/// An `Endpoints` named `name` with one subset holding the given ready and not-ready
/// addresses on one named TCP port.
pub fn endpoints(
    namespace: &str,
    name: &str,
    ready_ips: &[&str],
    not_ready_ips: &[&str],
    port_name: &str,
    port: i32,
) -> Endpoints {
    let addresses = |ips: &[&str]| {
        (!ips.is_empty()).then(|| {
            ips.iter()
                .map(|ip| EndpointAddress {
                    ip: (*ip).to_owned(),
                    ..EndpointAddress::default()
                })
                .collect()
        })
    };
    // Like the endpoints controller, an Endpoints without addresses has no subsets at all.
    let subsets = (!ready_ips.is_empty() || !not_ready_ips.is_empty()).then(|| {
        vec![EndpointSubset {
            addresses: addresses(ready_ips),
            not_ready_addresses: addresses(not_ready_ips),
            ports: Some(vec![EndpointPort {
                name: Some(port_name.to_owned()),
                port,
                protocol: Some("TCP".to_owned()),
                ..EndpointPort::default()
            }]),
        }]
    });
    Endpoints {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            ..ObjectMeta::default()
        },
        subsets,
    }
}

/// An `EndpointSlice` named `name` belonging to Service `service` (label
/// `kubernetes.io/service-name`), with one endpoint per `(ip, ready)` on one named TCP port.
/// The address type follows the first IP (IPv4 when there is none).
pub fn endpoint_slice(
    namespace: &str,
    name: &str,
    service: &str,
    ips_ready: &[(&str, bool)],
    port_name: &str,
    port: i32,
) -> EndpointSlice {
    let ipv6 = ips_ready
        .first()
        .and_then(|(ip, _)| ip.parse::<IpAddr>().ok())
        .is_some_and(|ip| ip.is_ipv6());
    EndpointSlice {
        metadata: ObjectMeta {
            namespace: Some(namespace.to_owned()),
            name: Some(name.to_owned()),
            labels: Some(BTreeMap::from([(
                SERVICE_NAME_LABEL.to_owned(),
                service.to_owned(),
            )])),
            ..ObjectMeta::default()
        },
        address_type: if ipv6 { "IPv6" } else { "IPv4" }.to_owned(),
        endpoints: ips_ready
            .iter()
            .map(|(ip, ready)| Endpoint {
                addresses: vec![(*ip).to_owned()],
                conditions: Some(EndpointConditions {
                    ready: Some(*ready),
                    serving: Some(*ready),
                    terminating: Some(false),
                }),
                ..Endpoint::default()
            })
            .collect(),
        ports: Some(vec![SlicePort {
            name: Some(port_name.to_owned()),
            port: Some(port),
            protocol: Some("TCP".to_owned()),
            ..SlicePort::default()
        }]),
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Store> {
        // A test that panicked mid-assertion must not take every later request down with it.
        self.store.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn apply_typed<T>(&self, kind: Kind, object: &T) -> T
    where
        T: serde::Serialize + serde::de::DeserializeOwned,
    {
        let value = serde_json::to_value(object).expect("serialize a Kubernetes object");
        let stored = self.apply(kind, value);
        serde_json::from_value(stored).expect("deserialize the stored Kubernetes object")
    }

    fn apply(&self, kind: Kind, object: Value) -> Value {
        let mut store = self.lock();
        self.apply_locked(&mut store, kind, object)
    }

    fn apply_locked(&self, store: &mut Store, kind: Kind, mut object: Value) -> Value {
        let metadata = &mut object["metadata"];
        let name = metadata["name"]
            .as_str()
            .expect("applied objects need metadata.name")
            .to_owned();
        let namespace = match metadata["namespace"].as_str() {
            Some(namespace) => namespace.to_owned(),
            None => {
                metadata["namespace"] = json!("default");
                "default".to_owned()
            }
        };
        store.resource_version += 1;
        let resource_version = store.resource_version;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        let previous = store
            .objects
            .insert((kind, namespace, name), object.clone());
        let action = if previous.is_some() {
            Action::Modified
        } else {
            Action::Added
        };
        self.record(
            store,
            Change {
                resource_version,
                kind,
                action,
                object: object.clone(),
                previous,
            },
        );
        object
    }

    fn delete(&self, kind: Kind, namespace: &str, name: &str) -> bool {
        let mut store = self.lock();
        let key = (kind, namespace.to_owned(), name.to_owned());
        let Some(mut object) = store.objects.remove(&key) else {
            return false;
        };
        store.resource_version += 1;
        let resource_version = store.resource_version;
        object["metadata"]["resourceVersion"] = json!(resource_version.to_string());
        self.record(
            &mut store,
            Change {
                resource_version,
                kind,
                action: Action::Deleted,
                object,
                previous: None,
            },
        );
        true
    }

    /// Appends to the history and fans out; the caller holds the store lock (see module docs).
    fn record(&self, store: &mut Store, change: Change) {
        let change = Arc::new(change);
        store.history.push(Arc::clone(&change));
        // An error only means no watch is open right now.
        let _ = self.changes.send(change);
    }
}

/// Spawns the accept loop for `listener` with a fresh connection token.
fn serve(shared: &Arc<Shared>, listener: TcpListener) -> Running {
    let connections = CancellationToken::new();
    shared.lock().connections = connections.clone();
    let app = router(Arc::clone(shared));
    let listener = StoppableListener {
        listener,
        connections: connections.clone(),
    };
    let task = tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            eprintln!("kube API stand-in stopped serving: {error}");
        }
    });
    Running { task, connections }
}

fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/version", get(version))
        .route("/api", get(core_versions))
        .route("/apis", get(api_groups))
        .route(
            "/api/v1/endpoints",
            get(|state, query| collection(state, Kind::Endpoints, None, query)),
        )
        .route(
            "/api/v1/namespaces/{namespace}/endpoints",
            get(|state, UrlPath(namespace), query| {
                collection(state, Kind::Endpoints, Some(namespace), query)
            }),
        )
        .route(
            "/api/v1/namespaces/{namespace}/endpoints/{name}",
            get(|state, UrlPath(target)| item(state, Kind::Endpoints, target)),
        )
        .route(
            "/apis/discovery.k8s.io/v1/endpointslices",
            get(|state, query| collection(state, Kind::EndpointSlice, None, query)),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices",
            get(|state, UrlPath(namespace), query| {
                collection(state, Kind::EndpointSlice, Some(namespace), query)
            }),
        )
        .route(
            "/apis/discovery.k8s.io/v1/namespaces/{namespace}/endpointslices/{name}",
            get(|state, UrlPath(target)| item(state, Kind::EndpointSlice, target)),
        )
        .fallback(|| async {
            status(
                StatusCode::NOT_FOUND,
                "NotFound",
                "the server could not find the requested resource".to_owned(),
                json!({}),
            )
        })
        .layer(middleware::from_fn_with_state(
            Arc::clone(&shared),
            gatekeeper,
        ))
        .with_state(shared)
}

/// Records the request, then authenticates (401) and authorizes (403) it like a real server.
async fn gatekeeper(State(shared): State<Arc<Shared>>, request: Request, next: Next) -> Response {
    let (forbidden, expected) = {
        let mut store = shared.lock();
        let line = format!("{} {}", request.method(), request.uri());
        store.requests.push((Instant::now(), line));
        (store.forbidden, format!("Bearer {}", store.token))
    };
    let authenticated = request
        .headers()
        .get(header::AUTHORIZATION)
        .is_some_and(|value| value.as_bytes() == expected.as_bytes());
    if !authenticated {
        return status(
            StatusCode::UNAUTHORIZED,
            "Unauthorized",
            "Unauthorized".to_owned(),
            json!({}),
        );
    }
    if forbidden {
        return forbidden_response(request.uri());
    }
    next.run(request).await
}

/// The RBAC denial a real API server gives for this request.
fn forbidden_response(uri: &Uri) -> Response {
    let watching = uri
        .query()
        .unwrap_or_default()
        .split('&')
        .any(|pair| pair == "watch=true" || pair == "watch=1");
    let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
    let (group, rest) = match segments.as_slice() {
        ["api", "v1", rest @ ..] => ("", rest),
        ["apis", group, _version, rest @ ..] => (*group, rest),
        _ => (".", &[][..]),
    };
    let (namespace, rest) = match rest {
        ["namespaces", namespace, rest @ ..] if !rest.is_empty() => (Some(*namespace), rest),
        _ => (None, rest),
    };
    let (resource, name) = match rest {
        [resource] if group != "." => (*resource, None),
        [resource, name] if group != "." => (*resource, Some(*name)),
        _ => {
            let message = format!(
                "forbidden: User \"{USER}\" cannot get path \"{}\"",
                uri.path()
            );
            return status(StatusCode::FORBIDDEN, "Forbidden", message, json!({}));
        }
    };
    let verb = match (name, watching) {
        (Some(_), _) => "get",
        (None, true) => "watch",
        (None, false) => "list",
    };
    let subject = match name {
        Some(name) => format!("{resource} \"{name}\""),
        None => resource.to_owned(),
    };
    let scope = match namespace {
        Some(namespace) => format!("in the namespace \"{namespace}\""),
        None => "at the cluster scope".to_owned(),
    };
    let message = format!(
        "{subject} is forbidden: User \"{USER}\" cannot {verb} resource \"{resource}\" in API group \"{group}\" {scope}"
    );
    let mut details = json!({ "kind": resource });
    if !group.is_empty() {
        details["group"] = json!(group);
    }
    if let Some(name) = name {
        details["name"] = json!(name);
    }
    status(StatusCode::FORBIDDEN, "Forbidden", message, details)
}

/// A `metav1.Status` failure response.
fn status(code: StatusCode, reason: &str, message: String, details: Value) -> Response {
    let body = status_body(code.as_u16(), reason, message, details);
    (code, Json(body)).into_response()
}

fn status_body(code: u16, reason: &str, message: String, details: Value) -> Value {
    json!({
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "details": details,
        "code": code,
    })
}

async fn version() -> Json<Value> {
    Json(json!({
        "major": "1",
        "minor": "33",
        "gitVersion": "v1.33.0-herald-standin",
        "gitCommit": "0000000000000000000000000000000000000000",
        "gitTreeState": "clean",
        "buildDate": "2025-01-01T00:00:00Z",
        "goVersion": "go1.24.0",
        "compiler": "gc",
        "platform": "linux/amd64",
    }))
}

async fn core_versions() -> Json<Value> {
    Json(json!({
        "kind": "APIVersions",
        "versions": ["v1"],
        "serverAddressByClientCIDRs": [],
    }))
}

async fn api_groups() -> Json<Value> {
    Json(json!({
        "kind": "APIGroupList",
        "apiVersion": "v1",
        "groups": [{
            "name": "discovery.k8s.io",
            "versions": [{ "groupVersion": "discovery.k8s.io/v1", "version": "v1" }],
            "preferredVersion": { "groupVersion": "discovery.k8s.io/v1", "version": "v1" },
        }],
    }))
}

/// `GET` of one object.
async fn item(
    State(shared): State<Arc<Shared>>,
    kind: Kind,
    (namespace, name): (String, String),
) -> Response {
    let found = shared
        .lock()
        .objects
        .get(&(kind, namespace, name.clone()))
        .cloned();
    match found {
        Some(object) => Json(object).into_response(),
        None => status(
            StatusCode::NOT_FOUND,
            "NotFound",
            format!("{} \"{name}\" not found", kind.plural()),
            json!({ "name": name, "kind": kind.plural() }),
        ),
    }
}

/// `GET` of a collection: a list, or a watch with `watch=true`.
async fn collection(
    State(shared): State<Arc<Shared>>,
    kind: Kind,
    namespace: Option<String>,
    Query(params): Query<HashMap<String, String>>,
) -> Response {
    let selector = match Selector::parse(kind, namespace, &params) {
        Ok(selector) => selector,
        Err(message) => return status(StatusCode::BAD_REQUEST, "BadRequest", message, json!({})),
    };
    let watching = matches!(params.get("watch").map(String::as_str), Some("true" | "1"));
    if watching {
        watch(shared, selector, &params)
    } else {
        list(&shared, &selector)
    }
}

/// Lists ignore `limit`/`continue` (everything fits in one page) and `resourceVersion`
/// (always the latest state).
fn list(shared: &Shared, selector: &Selector) -> Response {
    let store = shared.lock();
    let items: Vec<&Value> = store
        .objects
        .iter()
        .filter(|((kind, _, _), object)| *kind == selector.kind && selector.matches(object))
        .map(|(_, object)| object)
        .collect();
    Json(json!({
        "apiVersion": selector.kind.api_version(),
        "kind": format!("{}List", selector.kind.kind()),
        "metadata": { "resourceVersion": store.resource_version.to_string() },
        "items": items,
    }))
    .into_response()
}

/// Starts a watch stream: one JSON `WatchEvent` per line over a chunked response.
///
/// Without a `resourceVersion` (or with `0`) the stream starts with the current objects as
/// ADDED; with `N` it replays the retained history after `N`, or answers `410 Expired` in-stream
/// when `N` predates it. `sendInitialEvents=true` (streaming lists) sends the current objects
/// followed by the `k8s.io/initial-events-end` bookmark.
fn watch(shared: Arc<Shared>, selector: Selector, params: &HashMap<String, String>) -> Response {
    let since = match params.get("resourceVersion").map(String::as_str) {
        None | Some("" | "0") => None,
        Some(raw) => match raw.parse::<u64>() {
            Ok(since) => Some(since),
            Err(_) => {
                let message = format!("invalid resource version: {raw}");
                return status(StatusCode::BAD_REQUEST, "BadRequest", message, json!({}));
            }
        },
    };
    let deadline = params
        .get("timeoutSeconds")
        .and_then(|seconds| seconds.parse::<u64>().ok())
        .map(|seconds| Instant::now() + Duration::from_secs(seconds));
    let bookmarks = params.get("allowWatchBookmarks").map(String::as_str) == Some("true");
    let initial_events = params.get("sendInitialEvents").map(String::as_str) == Some("true");

    let session = {
        let store = shared.lock();
        let mut pending = VecDeque::new();
        let mut finished = false;
        match since {
            _ if initial_events => {
                pending.extend(selector.current(&store));
                pending.push_back(bookmark_line(selector.kind, store.resource_version, true));
            }
            None => pending.extend(selector.current(&store)),
            Some(since) if since < store.history_floor => {
                let message = format!(
                    "too old resource version: {since} ({})",
                    store.history_floor
                );
                let error = status_body(410, "Expired", message, json!({}));
                pending.push_back(line(&json!({ "type": "ERROR", "object": error })));
                finished = true;
            }
            Some(since) => pending.extend(
                store
                    .history
                    .iter()
                    .filter(|change| change.resource_version > since)
                    .filter_map(|change| selector.render(change)),
            ),
        }
        WatchSession {
            changes: shared.changes.subscribe(),
            watches: store.watches.clone(),
            connections: store.connections.clone(),
            shared: Arc::clone(&shared),
            selector,
            pending,
            finished,
            deadline,
            bookmarks: bookmarks.then(|| {
                tokio::time::interval_at(Instant::now() + BOOKMARK_INTERVAL, BOOKMARK_INTERVAL)
            }),
        }
    };
    let stream = futures_util::stream::unfold(session, WatchSession::next_chunk);
    (
        [(header::CONTENT_TYPE, "application/json")],
        Body::from_stream(stream),
    )
        .into_response()
}

/// The state of one open watch response.
struct WatchSession {
    shared: Arc<Shared>,
    selector: Selector,
    changes: broadcast::Receiver<Arc<Change>>,
    /// Lines ready to send, in order.
    pending: VecDeque<Bytes>,
    /// End the stream once `pending` is drained.
    finished: bool,
    deadline: Option<Instant>,
    bookmarks: Option<Interval>,
    watches: CancellationToken,
    connections: CancellationToken,
}

enum Wake {
    Cut,
    End,
    Change(Arc<Change>),
    Bookmark,
}

impl WatchSession {
    async fn next_chunk(mut self) -> Option<(io::Result<Bytes>, Self)> {
        loop {
            if let Some(line) = self.pending.pop_front() {
                return Some((Ok(line), self));
            }
            if self.finished {
                return None;
            }
            match self.wake().await {
                Wake::Cut => {
                    self.finished = true;
                    let error = io::Error::new(
                        io::ErrorKind::ConnectionAborted,
                        "kube API stand-in stopped",
                    );
                    return Some((Err(error), self));
                }
                Wake::End => return None,
                Wake::Change(change) => self.pending.extend(self.selector.render(&change)),
                Wake::Bookmark => self.bookmark(),
            }
        }
    }

    async fn wake(&mut self) -> Wake {
        let deadline = self.deadline;
        let bookmarks = &mut self.bookmarks;
        tokio::select! {
            biased;
            () = self.connections.cancelled() => Wake::Cut,
            () = self.watches.cancelled() => Wake::End,
            () = sleep_until(deadline) => Wake::End,
            received = self.changes.recv() => match received {
                Ok(change) => Wake::Change(change),
                // Lagged: end the stream and let the client resume from the history.
                Err(_) => Wake::End,
            },
            () = tick(bookmarks) => Wake::Bookmark,
        }
    }

    /// Queues a bookmark at the current resourceVersion, after every change up to it: the
    /// broadcast is drained under the store lock, which every change is sent under.
    fn bookmark(&mut self) {
        let store = self.shared.lock();
        loop {
            match self.changes.try_recv() {
                Ok(change) => self.pending.extend(self.selector.render(&change)),
                Err(TryRecvError::Empty) => break,
                Err(TryRecvError::Lagged(_) | TryRecvError::Closed) => {
                    self.finished = true;
                    return;
                }
            }
        }
        let line = bookmark_line(self.selector.kind, store.resource_version, false);
        self.pending.push_back(line);
    }
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

async fn tick(interval: &mut Option<Interval>) {
    match interval {
        Some(interval) => {
            interval.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn line(event: &Value) -> Bytes {
    let mut line = serde_json::to_vec(event).expect("serialize a watch event");
    line.push(b'\n');
    Bytes::from(line)
}

fn bookmark_line(kind: Kind, resource_version: u64, initial_events_end: bool) -> Bytes {
    let mut metadata = json!({ "resourceVersion": resource_version.to_string() });
    if initial_events_end {
        metadata["annotations"] = json!({ "k8s.io/initial-events-end": "true" });
    }
    line(&json!({
        "type": "BOOKMARK",
        "object": {
            "apiVersion": kind.api_version(),
            "kind": kind.kind(),
            "metadata": metadata,
        },
    }))
}

/// Which objects a list or watch covers: kind, namespace and field/label selectors.
///
/// Field selectors support `metadata.name` and `metadata.namespace` with `=`, `==`, `!=`;
/// label selectors support `k=v`, `k==v`, `k!=v`, `k` and `!k`, comma-separated (no set-based
/// `in (...)` terms).
struct Selector {
    kind: Kind,
    namespace: Option<String>,
    fields: Vec<Requirement>,
    labels: Vec<Requirement>,
}

enum Requirement {
    Equals(String, String),
    NotEquals(String, String),
    Exists(String),
    Absent(String),
}

impl Requirement {
    fn parse(term: &str) -> Requirement {
        if let Some((key, value)) = term.split_once("!=") {
            Requirement::NotEquals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some((key, value)) = term.split_once("==").or_else(|| term.split_once('=')) {
            Requirement::Equals(key.trim().to_owned(), value.trim().to_owned())
        } else if let Some(key) = term.strip_prefix('!') {
            Requirement::Absent(key.trim().to_owned())
        } else {
            Requirement::Exists(term.to_owned())
        }
    }

    fn matches(&self, lookup: impl Fn(&str) -> Option<String>) -> bool {
        match self {
            Requirement::Equals(key, value) => lookup(key).as_deref() == Some(value),
            Requirement::NotEquals(key, value) => lookup(key).as_deref() != Some(value),
            Requirement::Exists(key) => lookup(key).is_some(),
            Requirement::Absent(key) => lookup(key).is_none(),
        }
    }
}

impl Selector {
    fn parse(
        kind: Kind,
        namespace: Option<String>,
        params: &HashMap<String, String>,
    ) -> Result<Selector, String> {
        let terms = |key: &str| -> Vec<Requirement> {
            params
                .get(key)
                .map(|raw| {
                    raw.split(',')
                        .map(str::trim)
                        .filter(|term| !term.is_empty())
                        .map(Requirement::parse)
                        .collect()
                })
                .unwrap_or_default()
        };
        let fields = terms("fieldSelector");
        for field in &fields {
            match field {
                Requirement::Equals(key, _) | Requirement::NotEquals(key, _)
                    if key == "metadata.name" || key == "metadata.namespace" => {}
                Requirement::Equals(key, _) | Requirement::NotEquals(key, _) => {
                    return Err(format!("field label not supported: {key}"));
                }
                _ => return Err("invalid field selector".to_owned()),
            }
        }
        Ok(Selector {
            kind,
            namespace,
            fields,
            labels: terms("labelSelector"),
        })
    }

    fn matches(&self, object: &Value) -> bool {
        let metadata = &object["metadata"];
        let namespace = metadata["namespace"].as_str();
        if self
            .namespace
            .as_deref()
            .is_some_and(|wanted| Some(wanted) != namespace)
        {
            return false;
        }
        let field = |key: &str| {
            let value = match key {
                "metadata.name" => &metadata["name"],
                _ => &metadata["namespace"],
            };
            value.as_str().map(str::to_owned)
        };
        let label = |key: &str| metadata["labels"][key].as_str().map(str::to_owned);
        self.fields
            .iter()
            .all(|requirement| requirement.matches(field))
            && self
                .labels
                .iter()
                .all(|requirement| requirement.matches(label))
    }

    /// The current matching objects as ADDED events.
    fn current<'a>(&'a self, store: &'a Store) -> impl Iterator<Item = Bytes> + 'a {
        store
            .objects
            .iter()
            .filter(|((kind, _, _), object)| *kind == self.kind && self.matches(object))
            .map(|(_, object)| line(&json!({ "type": "ADDED", "object": object })))
    }

    /// The watch event this selection sees for `change`, if any.
    fn render(&self, change: &Change) -> Option<Bytes> {
        if change.kind != self.kind {
            return None;
        }
        let now = self.matches(&change.object);
        let before = change
            .previous
            .as_ref()
            .is_some_and(|previous| self.matches(previous));
        let event_type = match (change.action, before, now) {
            (Action::Added, _, true) | (Action::Modified, false, true) => "ADDED",
            (Action::Modified, true, true) => "MODIFIED",
            (Action::Modified, true, false) | (Action::Deleted, _, true) => "DELETED",
            _ => return None,
        };
        Some(line(
            &json!({ "type": event_type, "object": change.object }),
        ))
    }
}

/// A listener whose connections can all be cut at once, which `axum::serve` alone cannot do:
/// its connection tasks outlive an aborted serve task.
struct StoppableListener {
    listener: TcpListener,
    connections: CancellationToken,
}

impl axum::serve::Listener for StoppableListener {
    type Io = StoppableStream;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            match self.listener.accept().await {
                Ok((stream, addr)) => {
                    let cut = Box::pin(self.connections.clone().cancelled_owned());
                    return (StoppableStream { stream, cut }, addr);
                }
                // Out of file descriptors and the like: back off briefly, as axum does.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.listener.local_addr()
    }
}

/// A TCP stream that fails every read and write once its server is stopped, so hyper drops
/// the connection (and the socket) even while it is idle or streaming a watch.
struct StoppableStream {
    stream: TcpStream,
    cut: Pin<Box<WaitForCancellationFutureOwned>>,
}

impl StoppableStream {
    fn poll_cut(&mut self, cx: &mut Context<'_>) -> Option<io::Error> {
        self.cut.as_mut().poll(cx).is_ready().then(|| {
            io::Error::new(
                io::ErrorKind::ConnectionAborted,
                "kube API stand-in stopped",
            )
        })
    }
}

impl AsyncRead for StoppableStream {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.stream).poll_read(cx, buf)
    }
}

impl AsyncWrite for StoppableStream {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let this = self.get_mut();
        if let Some(error) = this.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.stream).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(error) = this.poll_cut(cx) {
            return Poll::Ready(Err(error));
        }
        Pin::new(&mut this.stream).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().stream).poll_shutdown(cx)
    }
}
