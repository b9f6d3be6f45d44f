//! Wiring: builds the parts of a pod from its configuration, serves the
//! three listeners, and drains on shutdown.
//!
//! Every long-lived task runs on one [`TaskTracker`] and stops with one
//! [`CancellationToken`], so tests run whole pods in-process on port 0 and
//! stop them cleanly.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use std::time::Instant;

use futures_util::future::Either;
use futures_util::{Stream, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_stream::wrappers::TcpListenerStream;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use crate::auth::TopicPatterns;
use crate::auth::{ApiTokens, JwtSettings, Verifier};
use crate::broadcast::intake::Intake;
use crate::broadcast::redis::writer::LogBounds;
use crate::broadcast::redis::{Redis, Settings as RedisSettings};
use crate::broadcast::{self, Broadcast};
use crate::cluster::discovery::dns::Dns;
use crate::cluster::discovery::fixed::Fixed;
use crate::cluster::discovery::index::Filter;
use crate::cluster::discovery::kubernetes::{Kubernetes, Target};
use crate::cluster::discovery::{Discovery as DiscoverySource, PeerSet};
use crate::cluster::inbound;
use crate::cluster::secret::ClusterSecret;
use crate::cluster::{Mesh, MeshSettings};
use crate::config::{
    AuthArgs, AuthMode, BroadcastKind, ClusterArgs, DiscoveryKind, HistoryArgs, ListenArgs,
    PresenceArgs, ServeArgs,
};
use crate::error::{Error, Result};
use crate::health::Health;
use crate::history::{History, Limits};
use crate::hub::Hub;
use crate::limit::TokenBucket;
use crate::local::Local;
use crate::message::NodeId;
use crate::metrics::{Metrics, Sources};
use crate::presence::{self, Presence};
use crate::publish::Publisher;
use crate::stats::Counters;
use crate::ws::fairness::{AddressRates, ClientAddress, UserConnections};
use crate::ws::socket::SharedListener;
use crate::ws::{EdgeLimits, Gateway, session};
use crate::{cluster, grpc, http, tls};

/// The cluster secret peers prove, watched for changes; without one, a
/// warning when the pod has peers to find.
fn cluster_secret(
    cluster: &ClusterArgs,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<Option<ClusterSecret>> {
    let Some(path) = &cluster.cluster_secret_file else {
        if cluster.discovery != DiscoveryKind::None {
            tracing::warn!(
                "no --cluster-secret-file: any pod that reaches the peer port and names this cluster can join it and publish to every topic"
            );
        }
        return Ok(None);
    };
    let secret = ClusterSecret::load(path)?;
    tracker.spawn(secret.clone().watch(stop.clone()));
    Ok(Some(secret))
}

/// How long the final shutdown waits for tasks after the servers stopped.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// How long a draining pod waits, after its drain window, for the last
/// closing handshakes.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// How long a stopping pod keeps sending what its peer queues still hold.
const PEER_FLUSH: Duration = Duration::from_secs(2);

/// How often history drops messages past their age.
const HISTORY_SWEEP: Duration = Duration::from_secs(5);

/// The pod's bound listeners.
pub struct Listeners {
    /// HTTP: WebSocket, and the probes and metrics unless `admin` is set.
    pub http: TcpListener,
    /// gRPC: the public API.
    pub grpc: TcpListener,
    /// The internal peer port.
    pub peer: TcpListener,
    /// Probes and metrics on their own port (`--admin-addr`).
    pub admin: Option<TcpListener>,
}

impl Listeners {
    /// Binds the addresses in `listen`.
    pub async fn bind(listen: &ListenArgs) -> Result<Self> {
        async fn one(what: &'static str, addr: SocketAddr) -> Result<TcpListener> {
            TcpListener::bind(addr)
                .await
                .map_err(|source| Error::Bind { what, addr, source })
        }
        let admin = match listen.admin_addr {
            Some(addr) => Some(one("admin", addr).await?),
            None => None,
        };
        Ok(Self {
            http: one("http", listen.http_addr).await?,
            grpc: one("grpc", listen.grpc_addr).await?,
            peer: one("peer", listen.peer_addr).await?,
            admin,
        })
    }
}

/// Runs a pod as node `node` on `listeners` until `shutdown` is cancelled,
/// then drains:
/// 1. readiness fails and new WebSocket upgrades are refused (503);
/// 2. every WebSocket user is closed with 1012 at a random moment within
///    `--drain-window`, while the pod keeps delivering to the rest, taking
///    publishes and receiving from peers;
/// 3. once no user is left (or the window and a short grace passed), the
///    servers stop, finishing in-flight calls;
/// 4. the topics this pod numbers are handed to their successors, behind
///    everything queued for each peer;
/// 5. what the peer queues still hold is sent (for up to 2 s), then the
///    streams close.
pub async fn run(
    args: ServeArgs,
    listeners: Listeners,
    node: NodeId,
    shutdown: CancellationToken,
) -> Result<()> {
    let ServeArgs {
        listen: _,
        limits,
        auth,
        tls,
        cluster,
        history,
        presence,
        telemetry: _,
        drain_window,
        demo,
        check_config: _,
    } = args;
    // `shutdown` starts the drain; `stop` ends serving; `stop_links` ends the
    // peer streams after their queues are flushed.
    let stop = CancellationToken::new();
    let stop_links = CancellationToken::new();
    let peer_local = listeners.peer.local_addr().ok();
    let peer_port = peer_local.map_or(0, |a| a.port());
    let own: Vec<String> = cluster
        .pod_ip
        .map(|ip| SocketAddr::new(ip, peer_port))
        .into_iter()
        .chain(peer_local.filter(|a| !a.ip().is_unspecified()))
        .map(|a| a.to_string())
        .collect();
    let address = own
        .first()
        .cloned()
        .unwrap_or_else(|| format!("0.0.0.0:{peer_port}"));

    let grpc_tls = tls::GrpcTls::load(&tls)?;
    let peer_tls = tls::PeerTls::load(&tls)?;
    let tracker = TaskTracker::new();
    if let Some(tls) = &grpc_tls {
        tracker.spawn(tls.clone().watch(stop.clone()));
    }
    if let Some(tls) = &peer_tls {
        tracker.spawn(tls.clone().watch(stop.clone()));
    }
    let secret = cluster_secret(&cluster, &tracker, &stop)?;
    let counters = Arc::new(Counters::default());
    let hub = Hub::with_write_delay(limits.write_delay);
    let bounds = LogBounds {
        messages: history.history_messages,
        age: history.history_age,
    };
    let history = History::new(history_limits(&history)?);
    let local = Local::new(hub.clone(), history.clone(), node);
    let PresenceArgs {
        presence_topics,
        presence_info_claim: info_claim,
    } = presence;
    let presence = Presence::new(presence::Settings {
        node,
        topics: TopicPatterns::parse(&presence_topics).map_err(Error::PresenceTopics)?,
        grace: match cluster.broadcast {
            BroadcastKind::Mesh => cluster::presence::GRACE,
            BroadcastKind::Redis => crate::broadcast::redis::members::GRACE,
        },
    });
    hub.watch(Arc::new(presence.clone()));
    let parts = Parts {
        local: &local,
        presence: &presence,
        counters: &counters,
        tracker: &tracker,
        stop: &stop,
        stop_links: &stop_links,
    };
    let backend = match cluster.broadcast {
        BroadcastKind::Mesh => {
            let mesh = MeshParts {
                cluster: &cluster,
                address,
                own: &own,
                peer_port,
                tls: peer_tls.clone(),
                secret,
                max_message_bytes: limits.max_message_bytes,
            };
            Backend::Mesh(mesh.start(&parts).await?)
        }
        BroadcastKind::Redis => Backend::Redis(start_redis(
            &cluster,
            bounds,
            address,
            limits.max_message_bytes,
            &parts,
        )?),
    };
    let backend_port = backend.port();
    tracker.spawn(
        broadcast::share_presence(backend_port.clone(), hub.clone(), stop.clone())
            .instrument(tracing::info_span!("presence")),
    );
    let metrics = Metrics::new(Sources {
        hub: hub.clone(),
        history: history.clone(),
        broadcast: backend_port.clone(),
        counters: counters.clone(),
    })?;
    let publisher = Publisher::new(
        local.clone(),
        backend_port.clone(),
        limits.max_message_bytes,
        counters.clone(),
    );
    tracker.spawn(sweep(history.clone(), stop.clone()));
    let (verifier, api_tokens) = load_auth(&auth, info_claim, &tracker, &stop)?;
    let health = Health::new(backend_port.clone(), verifier.clone());

    let gateway = Gateway {
        local: local.clone(),
        presence: presence.clone(),
        recall: backend_port.clone(),
        queue_capacity: limits.client_queue,
        max_subscriptions: limits.max_subscriptions,
        max_frame_bytes: limits.max_frame_bytes,
        heartbeat_interval: limits.heartbeat_interval,
        meters: session::Meters {
            counters: counters.clone(),
            latency: metrics.delivery_latency.clone(),
        },
        verifier,
        publisher: auth.client_publish.then(|| publisher.clone()),
        limits: Arc::new(EdgeLimits {
            max_connections: limits.max_connections,
            connection_rate: Mutex::new(TokenBucket::new(
                limits.max_connection_rate,
                limits.max_connection_rate,
                Instant::now(),
            )),
            client_publish_rate: limits.client_publish_rate,
            allowed_origins: limits.allowed_origins.clone(),
            address_rates: AddressRates::new(limits.max_connection_rate_per_ip),
            client_address: ClientAddress {
                header: limits.client_ip_header.clone(),
                trusted: limits.trusted_proxies.clone(),
            },
            user_connections: UserConnections::new(limits.max_connections_per_user),
        }),
        tracker: tracker.clone(),
        drain: shutdown.clone(),
        drain_window,
    };
    let grpc_routes = grpc::routes(
        publisher,
        local,
        backend_port.clone(),
        api_tokens,
        counters.clone(),
    )
    .await?;
    tracker.spawn(drain(
        shutdown.clone(),
        stop.clone(),
        health.clone(),
        backend_port.clone(),
        hub.clone(),
        counters.clone(),
        drain_window,
    ));

    tracing::info!(
        %node,
        cluster = %backend_port.identity().cluster,
        broadcast = ?cluster.broadcast,
        http = ?listeners.http.local_addr().ok(),
        grpc = ?listeners.grpc.local_addr().ok(),
        peer = ?peer_local,
        admin = ?listeners.admin.as_ref().and_then(|l| l.local_addr().ok()),
        discovery = ?cluster.discovery,
        write_delay = %limits.write_delay,
        "herald serving"
    );
    let admin_router = http::admin(health.clone(), metrics.clone());
    let (public_router, admin_listener) = match listeners.admin {
        Some(listener) => (http::public(gateway, demo), Some(listener)),
        None => (
            http::public(gateway, demo).merge(admin_router.clone()),
            None,
        ),
    };
    let edge = http::serve::Limits {
        header_read_timeout: limits.header_read_timeout,
        max_pending: limits.max_pending_handshakes,
    };
    let http = http::serve::serve(
        SharedListener::new(listeners.http),
        public_router,
        http::serve::Port::Http,
        edge,
        counters.clone(),
        stop.clone(),
    );
    let admin = async {
        if let Some(listener) = admin_listener {
            http::serve::serve(
                SharedListener::new(listener),
                admin_router,
                http::serve::Port::Admin,
                edge,
                counters.clone(),
                stop.clone(),
            )
            .await;
        }
    };
    let grpc_router = tonic::transport::Server::builder().add_routes(grpc_routes);
    let grpc = match grpc_tls {
        None => Either::Left(grpc_router.serve_with_incoming_shutdown(
            incoming(listeners.grpc),
            stop.clone().cancelled_owned(),
        )),
        Some(tls) => Either::Right(grpc_router.serve_with_incoming_shutdown(
            tls.accept(incoming(listeners.grpc)),
            stop.clone().cancelled_owned(),
        )),
    };
    // Inbound peer streams end with `stop`; outbound ones last until their
    // queues are flushed. Only the mesh takes peers on the peer port.
    // With Redis the peer port is closed here: nothing listens on it.
    let peer_listener = matches!(backend, Backend::Mesh(_)).then_some(listeners.peer);
    let peer = async {
        if let (Backend::Mesh(mesh), Some(listener)) = (&backend, peer_listener) {
            let accepted = inbound::Accepted::new(mesh.clone(), tracker.clone(), stop.clone());
            match peer_tls {
                None => accepted.serve(listener).await,
                Some(tls) => accepted.serve_tls(listener, tls).await,
            }
        }
        Ok::<(), Error>(())
    };
    health.set_serving();
    let served = tokio::try_join!(
        async {
            tokio::join!(http, admin);
            Ok(())
        },
        async { grpc.await.map_err(|e| serve_error("grpc", e)) },
        peer,
    );
    health.set_draining();
    shutdown.cancel();
    stop.cancel();
    backend_port.flush(PEER_FLUSH).await;
    stop_links.cancel();
    tracker.close();
    if tokio::time::timeout(SHUTDOWN_GRACE, tracker.wait())
        .await
        .is_err()
    {
        tracing::warn!(grace = ?SHUTDOWN_GRACE, "some sessions did not finish in time");
    }
    metrics.shutdown();
    served.map(|_| ())
}

/// The broadcast backend `--broadcast` chose.
enum Backend {
    /// The pods' own mesh, which also takes the peer port.
    Mesh(Mesh),
    /// Redis.
    Redis(Redis),
}

impl Backend {
    /// The backend behind the port the rest of the pod uses.
    fn port(&self) -> Arc<dyn Broadcast> {
        match self {
            Self::Mesh(mesh) => Arc::new(mesh.clone()),
            Self::Redis(redis) => Arc::new(redis.clone()),
        }
    }
}

/// What every backend is built over.
struct Parts<'a> {
    local: &'a Local,
    presence: &'a Presence,
    counters: &'a Arc<Counters>,
    tracker: &'a TaskTracker,
    /// Ends serving.
    stop: &'a CancellationToken,
    /// Ends the links to other pods (or Redis), after their queues are
    /// flushed.
    stop_links: &'a CancellationToken,
}

/// What the mesh is built from, beside the [`Parts`].
struct MeshParts<'a> {
    cluster: &'a ClusterArgs,
    address: String,
    own: &'a [String],
    peer_port: u16,
    tls: Option<tls::PeerTls>,
    secret: Option<ClusterSecret>,
    max_message_bytes: usize,
}

impl MeshParts<'_> {
    /// The mesh, following the peers its discovery finds.
    async fn start(self, parts: &Parts<'_>) -> Result<Mesh> {
        let cluster = self.cluster;
        let kubernetes = match cluster.discovery {
            DiscoveryKind::Kubernetes => Some(Target::from_environment(namespace(cluster)).await?),
            _ => None,
        };
        let mesh = Mesh::new(
            MeshSettings {
                cluster: cluster_identity(cluster, kubernetes.as_ref()),
                node: parts.local.node(),
                address: self.address,
                peer_queue: cluster.peer_queue,
                max_message_bytes: self.max_message_bytes,
                ready_timeout: cluster.peer_ready_timeout,
                routing: cluster.peer_routing,
                tls: self.tls,
                secret: self.secret,
            },
            parts.local.clone(),
            parts.presence.clone(),
            parts.tracker.clone(),
            parts.stop_links.clone(),
            parts.counters.clone(),
        );
        let (peers_tx, peers_rx) = watch::channel(None);
        let discovery = Discovery {
            cluster,
            kubernetes,
            own: self.own,
            peer_port: self.peer_port,
            counters: parts.counters,
        };
        discovery.spawn(peers_tx, parts.tracker, parts.stop)?;
        parts.tracker.spawn(
            mesh.clone()
                .follow(peers_rx)
                .instrument(tracing::info_span!("mesh")),
        );
        Ok(mesh)
    }
}

/// The Redis backend, dialling Redis until it answers.
fn start_redis(
    cluster: &ClusterArgs,
    bounds: LogBounds,
    address: String,
    max_message_bytes: usize,
    parts: &Parts<'_>,
) -> Result<Redis> {
    if cluster.discovery != DiscoveryKind::None {
        tracing::warn!(discovery = ?cluster.discovery, "--broadcast redis needs no discovery: --discovery is ignored");
    }
    let settings = RedisSettings {
        url: cluster.redis_url.clone(),
        password_file: cluster.redis_password_file.clone(),
        identity: broadcast::Identity {
            cluster: cluster_identity(cluster, None),
            address,
        },
        queue: cluster.peer_queue,
        ready_timeout: cluster.peer_ready_timeout,
        bounds,
        counters: parts.counters.clone(),
    };
    let intake = Intake::new(parts.local.clone(), max_message_bytes);
    Ok(Redis::start(
        settings,
        intake,
        parts.presence.clone(),
        parts.tracker,
        parts.stop_links,
    )?)
}

/// Waits for the drain signal, then for the users to be closed over the
/// drain window, hands the topics this pod numbers to their successors,
/// then stops the servers.
async fn drain(
    shutdown: CancellationToken,
    stop: CancellationToken,
    health: Health,
    backend: Arc<dyn Broadcast>,
    hub: Hub,
    counters: Arc<Counters>,
    window: Duration,
) {
    tokio::select! {
        () = shutdown.cancelled() => {}
        () = stop.cancelled() => return,
    }
    health.set_draining();
    let users = counters.connections_open();
    tracing::info!(users, window = ?window, "draining: closing WebSocket users over the drain window");
    let deadline = tokio::time::Instant::now() + window + CLOSE_GRACE;
    while counters.connections_open() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    tracing::info!(
        left = counters.connections_open(),
        "drain done; handing topics on"
    );
    // The last users' leaves go out before the handover, which ends the
    // streams.
    broadcast::flush_presence(&*backend, &hub);
    backend.leave(PEER_FLUSH).await;
    stop.cancel();
}

/// Drops history past its age now and then, until `stop`.
async fn sweep(history: History, stop: CancellationToken) {
    let mut every = tokio::time::interval(HISTORY_SWEEP);
    loop {
        tokio::select! {
            () = stop.cancelled() => return,
            _ = every.tick() => history.sweep(),
        }
    }
}

/// History's bounds from the command line.
fn history_limits(args: &HistoryArgs) -> Result<Limits> {
    let HistoryArgs {
        history_messages,
        history_age,
        history_bytes,
        history_off,
    } = args;
    Ok(Limits {
        max_messages: *history_messages,
        max_age: *history_age,
        max_bytes: *history_bytes,
        off: TopicPatterns::parse(history_off).map_err(Error::HistoryOff)?,
        ..Limits::default()
    })
}

/// The token checks `auth` asks for, with their file watchers running.
fn load_auth(
    auth: &AuthArgs,
    info_claim: Option<String>,
    tracker: &TaskTracker,
    stop: &CancellationToken,
) -> Result<(Option<Verifier>, Option<ApiTokens>)> {
    let verifier = match auth.auth {
        AuthMode::None => {
            tracing::warn!(
                "--auth none: anyone may connect and subscribe to any topic; use --auth jwt in production"
            );
            None
        }
        AuthMode::Jwt => {
            let verifier = Verifier::load(&JwtSettings {
                secret_file: auth.jwt_secret_file.clone(),
                public_key_file: auth.jwt_public_key_file.clone(),
                jwks_file: auth.jwks_file.clone(),
                jwks_url: auth.jwks_url.clone(),
                oidc_issuer: auth.oidc_issuer.clone(),
                jwks_ca_file: auth.jwks_ca_file.clone(),
                issuer: auth.jwt_issuer.clone(),
                audience: auth.jwt_audience.clone(),
                leeway: auth.jwt_leeway,
                info_claim,
            })?;
            tracker.spawn(verifier.clone().watch(stop.clone()));
            Some(verifier)
        }
    };
    let api_tokens = match &auth.api_tokens_file {
        Some(path) => {
            let tokens = ApiTokens::load(path)?;
            tracker.spawn(tokens.clone().watch(stop.clone()));
            Some(tokens)
        }
        None => {
            tracing::warn!(
                "no --api-tokens-file: the gRPC publish API is open to anyone who reaches it"
            );
            None
        }
    };
    Ok((verifier, api_tokens))
}

/// Sets `TCP_NODELAY`: herald writes whole frames and batches them itself,
/// so Nagle's algorithm would only add delay (up to a delayed-ACK timeout
/// of 40 ms on Linux) to small messages.
fn no_delay(stream: &mut TcpStream) {
    if let Err(e) = stream.set_nodelay(true) {
        tracing::debug!(error = %e, "TCP_NODELAY not set");
    }
}

/// Accepted connections of `listener`, with [`no_delay`] applied.
fn incoming(listener: TcpListener) -> impl Stream<Item = std::io::Result<TcpStream>> {
    TcpListenerStream::new(listener).map(|accepted| {
        accepted.map(|mut stream| {
            no_delay(&mut stream);
            stream
        })
    })
}

fn serve_error(what: &'static str, e: impl std::error::Error + Send + Sync + 'static) -> Error {
    Error::Serve {
        what,
        source: Box::new(e),
    }
}

/// The identity peers must share: `--cluster-name`, else
/// `<namespace>/<service>` in kubernetes mode (the namespace discovery
/// watches), else `herald`.
fn cluster_identity(cluster: &ClusterArgs, kubernetes: Option<&Target>) -> String {
    if let Some(name) = &cluster.cluster_name {
        return name.clone();
    }
    match kubernetes {
        Some(target) => format!("{}/{}", target.namespace, cluster.k8s_service),
        None => "herald".into(),
    }
}

fn namespace(cluster: &ClusterArgs) -> Option<String> {
    cluster
        .k8s_namespace
        .clone()
        .or_else(|| cluster.pod_namespace.clone())
}

/// What the discovery source is built from.
struct Discovery<'a> {
    cluster: &'a ClusterArgs,
    /// Resolved at start in kubernetes mode.
    kubernetes: Option<Target>,
    own: &'a [String],
    peer_port: u16,
    counters: &'a Arc<Counters>,
}

impl Discovery<'_> {
    /// Starts the source `--discovery` names, publishing into `peers`.
    fn spawn(
        &self,
        peers: watch::Sender<Option<PeerSet>>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) -> Result<()> {
        let cluster = self.cluster;
        match cluster.discovery {
            DiscoveryKind::None => start(Fixed::alone(), peers, tracker, shutdown),
            DiscoveryKind::Static => {
                start(
                    Fixed::new(&cluster.peers, self.own)?,
                    peers,
                    tracker,
                    shutdown,
                );
            }
            DiscoveryKind::Dns => {
                let name = cluster.dns_name.clone().ok_or(Error::MissingDnsName)?;
                let dns = Dns {
                    name,
                    port: self.peer_port,
                    interval: cluster.dns_interval,
                    self_ip: cluster.pod_ip,
                    counters: self.counters.clone(),
                };
                start(dns, peers, tracker, shutdown);
            }
            // `run` resolves the target whenever the mode is kubernetes.
            DiscoveryKind::Kubernetes => {
                if let Some(target) = self.kubernetes.clone() {
                    let kubernetes = Kubernetes {
                        service: cluster.k8s_service.clone(),
                        target,
                        api: cluster.k8s_api,
                        filter: Filter {
                            port_name: cluster.k8s_peer_port_name.clone(),
                            self_ip: cluster.pod_ip,
                        },
                        backoff_max: cluster.k8s_backoff_max,
                        counters: self.counters.clone(),
                    };
                    start(kubernetes, peers, tracker, shutdown);
                }
            }
        }
        Ok(())
    }
}

/// Runs `source` on the tracker.
fn start<D: DiscoverySource>(
    source: D,
    peers: watch::Sender<Option<PeerSet>>,
    tracker: &TaskTracker,
    shutdown: &CancellationToken,
) {
    let span = tracing::info_span!("discovery");
    tracker.spawn(source.run(peers, shutdown.clone()).instrument(span));
}
