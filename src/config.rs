//! The command line: one clap-derived [`Cli`], every flag long, with a
//! `HERALD_*` environment variable and a default. The `///` docs here are
//! the `--help` text.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::hub::WriteDelay;

/// herald: real-time message publishing for Kubernetes. Backends publish over
/// gRPC; users receive over WebSocket; the pods are the broker.
#[derive(Debug, Parser)]
#[command(name = "herald", version, about, long_about = None)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// herald's subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run a pod: WebSocket gateway, gRPC API and peer broadcast.
    Serve(Box<ServeArgs>),
    /// Publish one message through a pod's gRPC API.
    Publish(PublishArgs),
    /// List the peers a pod knows and whether each stream is up.
    Peers(PeersArgs),
    /// Mint an HS256 user token from a shared secret file (for testing and
    /// for backends without a JWT library).
    Token(TokenArgs),
}

/// `herald token`.
#[derive(Debug, Clone, Args)]
pub struct TokenArgs {
    /// The HS256 shared secret, as given to `serve --jwt-secret-file`.
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: PathBuf,
    /// The user id (`sub`).
    #[arg(long)]
    pub sub: String,
    /// Topics or `prefix*` patterns the user may subscribe to.
    #[arg(long, value_delimiter = ',')]
    pub topics: Vec<String>,
    /// Topics or `prefix*` patterns the user may publish to.
    #[arg(long, value_delimiter = ',')]
    pub publish: Vec<String>,
    /// How long the token is valid.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub ttl: Duration,
    /// `iss`, when the server checks it.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub issuer: Option<String>,
    /// `aud`, when the server checks it.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub audience: Option<String>,
}

/// `herald serve`.
#[derive(Debug, Clone, Args)]
pub struct ServeArgs {
    /// Where to listen.
    #[command(flatten)]
    pub listen: ListenArgs,
    /// Limits on what clients may do.
    #[command(flatten)]
    pub limits: LimitArgs,
    /// Who may connect and publish.
    #[command(flatten)]
    pub auth: AuthArgs,
    /// TLS on the gRPC API and between pods.
    #[command(flatten)]
    pub tls: TlsArgs,
    /// How to find and talk to the other pods.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// What each pod keeps of every topic for resumes and `history`.
    #[command(flatten)]
    pub history: HistoryArgs,
    /// Who is in which topic, across the cluster.
    #[command(flatten)]
    pub presence: PresenceArgs,
    /// Logs and traces.
    #[command(flatten)]
    pub telemetry: TelemetryArgs,
    /// How long a draining pod (after SIGTERM) takes to close its WebSocket
    /// users, spread evenly so they do not all reconnect at once.
    #[arg(long, env = "HERALD_DRAIN_WINDOW", default_value = "10s", value_parser = humantime::parse_duration)]
    pub drain_window: Duration,
    /// Serve the demo chat at `GET /demo` (and a link to it at `GET /`);
    /// it needs `--client-publish` to send. `make run` turns it on.
    #[arg(long, env = "HERALD_DEMO")]
    pub demo: bool,
    /// Check the configuration, print it and exit without serving.
    #[arg(long, env = "HERALD_CHECK_CONFIG")]
    pub check_config: bool,
}

/// Listening addresses.
#[derive(Debug, Clone, Args)]
pub struct ListenArgs {
    /// HTTP listener: the WebSocket endpoint `/ws`, `/healthz` and `/readyz`.
    #[arg(long, env = "HERALD_HTTP_ADDR", default_value = "0.0.0.0:8080")]
    pub http_addr: SocketAddr,
    /// gRPC listener for the public Publisher API, health and reflection.
    #[arg(long, env = "HERALD_GRPC_ADDR", default_value = "0.0.0.0:9090")]
    pub grpc_addr: SocketAddr,
    /// Internal peer listener for the broadcast group between pods.
    #[arg(long, env = "HERALD_PEER_ADDR", default_value = "0.0.0.0:7070")]
    pub peer_addr: SocketAddr,
    /// Separate listener for `/metrics`, `/healthz` and `/readyz`; when
    /// unset they are served on the HTTP listener.
    #[arg(long, env = "HERALD_ADMIN_ADDR")]
    pub admin_addr: Option<SocketAddr>,
}

/// Per-message and per-connection limits.
#[derive(Debug, Clone, Args)]
pub struct LimitArgs {
    /// Largest published `data`, in bytes, before compaction.
    #[arg(long, env = "HERALD_MAX_MESSAGE_BYTES", default_value_t = 64 * 1024)]
    pub max_message_bytes: usize,
    /// Largest WebSocket message a client may send, in bytes; a larger one
    /// closes the connection with code 1009.
    #[arg(long, env = "HERALD_MAX_FRAME_BYTES", default_value_t = 64 * 1024)]
    pub max_frame_bytes: usize,
    /// Most topics one connection may subscribe to.
    #[arg(long, env = "HERALD_MAX_SUBSCRIPTIONS", default_value_t = 1000)]
    pub max_subscriptions: usize,
    /// Messages queued for one connection; past it, the connection is
    /// behind on the topic and reads it from history at its own pace.
    #[arg(long, env = "HERALD_CLIENT_QUEUE", default_value_t = 1024)]
    pub client_queue: usize,
    /// How often the server pings each WebSocket; a connection that sends
    /// nothing (not even a pong) for two intervals is closed.
    #[arg(long, env = "HERALD_HEARTBEAT_INTERVAL", default_value = "30s", value_parser = humantime::parse_duration)]
    pub heartbeat_interval: Duration,
    /// Shortest time between two writes of messages to one connection:
    /// messages arriving sooner wait and go out together in one frame. Only
    /// busy connections wait; one idle for longer is written to at once.
    /// A duration (`0ms`: never wait), or `auto[:MAX]`: wait in proportion
    /// to how late the pod's writes start, up to MAX (default 20ms), so
    /// nothing waits while the pod keeps up.
    #[arg(long, env = "HERALD_WRITE_DELAY", default_value = "auto")]
    pub write_delay: WriteDelay,
    /// Most WebSocket connections this pod holds; more are refused with
    /// HTTP 503.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS", default_value_t = 100_000)]
    pub max_connections: u64,
    /// New WebSocket connections accepted per second (bursts of as many);
    /// more are refused with HTTP 429.
    #[arg(long, env = "HERALD_MAX_CONNECTION_RATE", default_value_t = 1000)]
    pub max_connection_rate: u32,
    /// New WebSocket connections accepted per second from one client
    /// address (bursts of twice as many), checked before the pod-wide rate:
    /// one address's flood leaves the others their reconnects. Many users
    /// behind one NAT share it. 0 turns it off.
    #[arg(long, env = "HERALD_MAX_CONNECTION_RATE_PER_IP", default_value_t = 50)]
    pub max_connection_rate_per_ip: u32,
    /// Most WebSocket connections one user (`sub`) holds on this pod; more
    /// are refused with HTTP 429. 0 turns it off.
    #[arg(long, env = "HERALD_MAX_CONNECTIONS_PER_USER", default_value_t = 20)]
    pub max_connections_per_user: usize,
    /// Longest a client may take to send the headers of a request on the
    /// HTTP port (and the admin port); a slower one is disconnected, so a
    /// client that trickles its request (slowloris) cannot hold a socket.
    /// An idle keep-alive connection is closed after as long. It cannot be
    /// turned off: 0 is refused (behind a proxy that times headers itself,
    /// a long one does no harm).
    #[arg(long, env = "HERALD_HEADER_READ_TIMEOUT", default_value = "10s", value_parser = positive_duration)]
    pub header_read_timeout: Duration,
    /// Most connections on the HTTP port (and, counted apart, the admin
    /// port) whose first request's headers are not in yet; a connection
    /// past it is closed at once (with a 503 when the socket takes it).
    #[arg(long, env = "HERALD_MAX_PENDING_HANDSHAKES", default_value_t = 1024, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pending_handshakes: u64,
    /// The request header a trusted proxy puts the client's address in
    /// (e.g. `X-Forwarded-For`); believed only from `--trusted-proxies`.
    #[arg(long, env = "HERALD_CLIENT_IP_HEADER")]
    pub client_ip_header: Option<String>,
    /// Addresses or networks (`10.0.0.0/8`) of the proxies whose
    /// `--client-ip-header` is believed, comma-separated.
    #[arg(long, env = "HERALD_TRUSTED_PROXIES", value_delimiter = ',')]
    pub trusted_proxies: Vec<crate::ws::fairness::Network>,
    /// Client publishes allowed per connection per second (bursts of as
    /// many); more get the error reply `rate_limited`.
    #[arg(long, env = "HERALD_CLIENT_PUBLISH_RATE", default_value_t = 10)]
    pub client_publish_rate: u32,
    /// Browser origins allowed to connect (`Origin` header), comma-separated;
    /// empty allows any. Requests without `Origin` (non-browser clients) are
    /// always allowed.
    #[arg(long, env = "HERALD_ALLOWED_ORIGINS", value_delimiter = ',')]
    pub allowed_origins: Vec<String>,
}

/// Per-topic history: every pod keeps each topic's recent messages, so a
/// user who reconnects (to any pod) with `since` gets what they missed.
#[derive(Debug, Clone, Args)]
pub struct HistoryArgs {
    /// Most messages kept per topic (0 keeps none: resumes then recover
    /// only a position that missed nothing).
    #[arg(long, env = "HERALD_HISTORY_MESSAGES", default_value_t = 1000)]
    pub history_messages: usize,
    /// Longest a message is kept.
    #[arg(long, env = "HERALD_HISTORY_AGE", default_value = "5m", value_parser = humantime::parse_duration)]
    pub history_age: Duration,
    /// Most bytes of kept messages on this pod, over all topics; past it,
    /// the oldest messages go first.
    #[arg(long, env = "HERALD_HISTORY_BYTES", default_value_t = 256 << 20)]
    pub history_bytes: usize,
    /// Topics that keep no history, comma-separated names or `prefix*`
    /// patterns (a ticker whose old values nobody wants). Their messages
    /// still carry offsets.
    #[arg(long, env = "HERALD_HISTORY_OFF", value_delimiter = ',')]
    pub history_off: Vec<String>,
}

/// Presence: the connections in a topic, cluster-wide, with join and leave
/// events (docs/presence.md).
#[derive(Debug, Clone, Args)]
pub struct PresenceArgs {
    /// Topics that keep presence, comma-separated names or `prefix*`
    /// patterns (e.g. `room:*,user:*`). Every pod holds every entry of
    /// these topics and hears of every change, so none is the default:
    /// presence costs nothing until it is asked for. `user:*` answers
    /// "is this user connected anywhere" for users subscribed to their
    /// own topic.
    #[arg(long, env = "HERALD_PRESENCE_TOPICS", value_delimiter = ',')]
    pub presence_topics: Vec<String>,
    /// The JWT claim whose value is a user's presence `info` (any JSON, at
    /// most 512 bytes compact; a token with more is refused). Unset:
    /// entries carry no `info`.
    #[arg(long, env = "HERALD_PRESENCE_INFO_CLAIM")]
    pub presence_info_claim: Option<String>,
}

/// How WebSocket users authenticate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthMode {
    /// Anyone may connect and subscribe to any topic (logged loudly).
    None,
    /// A JWT is required at the upgrade; its claims decide the topics.
    Jwt,
}

/// Authentication of WebSocket users and of gRPC callers.
#[derive(Debug, Clone, Args)]
pub struct AuthArgs {
    /// How WebSocket users authenticate.
    #[arg(long, env = "HERALD_AUTH", value_enum, default_value = "none")]
    pub auth: AuthMode,
    /// HS256 shared secret for user tokens.
    #[arg(long, env = "HERALD_JWT_SECRET_FILE")]
    pub jwt_secret_file: Option<PathBuf>,
    /// PEM public key (RSA for RS256, P-256 for ES256) for user tokens.
    #[arg(long, env = "HERALD_JWT_PUBLIC_KEY_FILE")]
    pub jwt_public_key_file: Option<PathBuf>,
    /// JWKS file with the keys for user tokens, picked by `kid`.
    #[arg(long, env = "HERALD_JWKS_FILE")]
    pub jwks_file: Option<PathBuf>,
    /// JWKS URL of an identity provider (https://; http:// only to
    /// loopback): fetched at start, kept per its Cache-Control, fetched
    /// again for an unknown `kid`.
    #[arg(long, env = "HERALD_JWKS_URL")]
    pub jwks_url: Option<String>,
    /// OpenID Connect issuer URL: its discovery document names the JWKS URL,
    /// and user tokens must carry it as `iss` (unless --jwt-issuer says
    /// otherwise).
    #[arg(long, env = "HERALD_OIDC_ISSUER")]
    pub oidc_issuer: Option<String>,
    /// PEM CA bundle that the --jwks-url or --oidc-issuer server's
    /// certificate must chain to (default: the system's CA certificates).
    #[arg(long, env = "HERALD_JWKS_CA_FILE")]
    pub jwks_ca_file: Option<PathBuf>,
    /// Required `iss` of user tokens.
    #[arg(long, env = "HERALD_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Required `aud` of user tokens.
    #[arg(long, env = "HERALD_JWT_AUDIENCE")]
    pub jwt_audience: Option<String>,
    /// How long past `exp` (and before `nbf`) a user token is still
    /// accepted, for clocks that differ; a connection closes (4001) this
    /// long after its token's `exp` unless it sent a `refresh`.
    #[arg(long, env = "HERALD_JWT_LEEWAY", default_value = "30s", value_parser = humantime::parse_duration)]
    pub jwt_leeway: Duration,
    /// Bearer tokens accepted on the gRPC API, one per line; re-read when
    /// the file changes. Unset: the gRPC API is open.
    #[arg(long, env = "HERALD_API_TOKENS_FILE")]
    pub api_tokens_file: Option<PathBuf>,
    /// Let WebSocket users publish (`op: publish`) to the topics their
    /// token's `publish` claim lists (with `--auth none`: to any topic).
    #[arg(long, env = "HERALD_CLIENT_PUBLISH")]
    pub client_publish: bool,
}

/// TLS for the gRPC API and mutual TLS between pods. The files are re-read
/// when they change: new connections use the new certificate, key and CA,
/// open ones carry on; a set that does not parse or match keeps the old.
#[derive(Debug, Clone, Args)]
pub struct TlsArgs {
    /// PEM certificate chain the gRPC API presents (turns TLS on there).
    #[arg(
        long,
        env = "HERALD_GRPC_TLS_CERT_FILE",
        requires = "grpc_tls_key_file"
    )]
    pub grpc_tls_cert_file: Option<PathBuf>,
    /// PEM private key of that certificate.
    #[arg(
        long,
        env = "HERALD_GRPC_TLS_KEY_FILE",
        requires = "grpc_tls_cert_file"
    )]
    pub grpc_tls_key_file: Option<PathBuf>,
    /// PEM CA bundle; when set, gRPC callers must present a certificate it
    /// signed (mutual TLS).
    #[arg(
        long,
        env = "HERALD_GRPC_TLS_CLIENT_CA_FILE",
        requires = "grpc_tls_cert_file"
    )]
    pub grpc_tls_client_ca_file: Option<PathBuf>,
    /// PEM certificate this pod presents to its peers, as server and as
    /// client (turns mutual TLS on for the peer port).
    #[arg(long, env = "HERALD_PEER_TLS_CERT_FILE", requires_all = ["peer_tls_key_file", "peer_tls_ca_file"])]
    pub peer_tls_cert_file: Option<PathBuf>,
    /// PEM private key of the peer certificate.
    #[arg(
        long,
        env = "HERALD_PEER_TLS_KEY_FILE",
        requires = "peer_tls_cert_file"
    )]
    pub peer_tls_key_file: Option<PathBuf>,
    /// PEM CA bundle that signs every pod's peer certificate.
    #[arg(long, env = "HERALD_PEER_TLS_CA_FILE", requires = "peer_tls_cert_file")]
    pub peer_tls_ca_file: Option<PathBuf>,
    /// The DNS name every peer certificate carries (pods are dialled by IP,
    /// so their certificates are checked against this name instead).
    #[arg(
        long,
        env = "HERALD_PEER_TLS_SERVER_NAME",
        default_value = "herald-peer"
    )]
    pub peer_tls_server_name: String,
}

/// How `herald publish` and `herald peers` reach a TLS gRPC API.
#[derive(Debug, Clone, Args)]
pub struct ClientTlsArgs {
    /// PEM CA bundle to trust for the pod's certificate (use an `https://`
    /// address).
    #[arg(long, env = "HERALD_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// PEM client certificate, for a pod that requires mutual TLS.
    #[arg(long, env = "HERALD_CERT_FILE", requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM private key of the client certificate.
    #[arg(long, env = "HERALD_KEY_FILE", requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

/// The broadcast backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BroadcastKind {
    /// The pods stream to each other (found by `--discovery`); each topic
    /// is numbered by one of them.
    Mesh,
    /// Every pod talks to one Redis (`--redis-url`), which numbers each
    /// topic and carries messages and presence; no discovery is needed.
    Redis,
}

/// Where peers come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DiscoveryKind {
    /// A single pod: no peers.
    None,
    /// A fixed list, `--peers`.
    Static,
    /// The A/AAAA records of `--dns-name`, re-resolved every `--dns-interval`.
    Dns,
    /// A watch on the Kubernetes Endpoints (or EndpointSlices) of the
    /// headless Service `--k8s-service`.
    Kubernetes,
}

/// Which Kubernetes API the discovery watches.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum K8sApi {
    /// core/v1 Endpoints (deprecated from Kubernetes 1.33, still served).
    Endpoints,
    /// discovery.k8s.io/v1 EndpointSlices.
    Endpointslices,
}

/// Cluster membership and the peer mesh.
#[derive(Debug, Clone, Args)]
pub struct ClusterArgs {
    /// What carries messages, their order and presence between pods: the
    /// pods' own mesh, or a Redis server they all reach.
    #[arg(long, env = "HERALD_BROADCAST", value_enum, default_value = "mesh")]
    pub broadcast: BroadcastKind,
    /// The Redis server for `--broadcast redis`: `redis://[user:password@]host[:port][/db]`,
    /// or `rediss://` for TLS (checked against the system's roots).
    #[arg(long, env = "HERALD_REDIS_URL")]
    pub redis_url: Option<String>,
    /// A file holding the Redis password (its first line), which wins over
    /// one in `--redis-url`.
    #[arg(long, env = "HERALD_REDIS_PASSWORD_FILE")]
    pub redis_password_file: Option<PathBuf>,
    /// How this pod finds its peers.
    #[arg(long, env = "HERALD_DISCOVERY", value_enum, default_value = "none")]
    pub discovery: DiscoveryKind,
    /// Peer addresses (host:port of their peer listener) for static discovery.
    #[arg(long, env = "HERALD_PEERS", value_delimiter = ',')]
    pub peers: Vec<String>,
    /// Name whose A/AAAA records are the peers, for dns discovery (usually
    /// the headless Service).
    #[arg(long, env = "HERALD_DNS_NAME")]
    pub dns_name: Option<String>,
    /// How often dns discovery resolves the name again.
    #[arg(long, env = "HERALD_DNS_INTERVAL", default_value = "5s", value_parser = humantime::parse_duration)]
    pub dns_interval: Duration,
    /// The headless Service whose endpoints are the peers.
    #[arg(long, env = "HERALD_K8S_SERVICE", default_value = "herald-peers")]
    pub k8s_service: String,
    /// Namespace of that Service; defaults to `POD_NAMESPACE`, then to the
    /// client configuration's (the service account's in-cluster, the
    /// context's from `KUBECONFIG`). The cluster identity names it too.
    #[arg(long, env = "HERALD_K8S_NAMESPACE")]
    pub k8s_namespace: Option<String>,
    /// This pod's namespace, from the Downward API.
    #[arg(long, env = "POD_NAMESPACE", hide = true)]
    pub pod_namespace: Option<String>,
    /// Name of the endpoint port that is the peer listener.
    #[arg(long, env = "HERALD_K8S_PEER_PORT_NAME", default_value = "peer")]
    pub k8s_peer_port_name: String,
    /// Which Kubernetes API to watch.
    #[arg(long, env = "HERALD_K8S_API", value_enum, default_value = "endpoints")]
    pub k8s_api: K8sApi,
    /// Longest wait between retries while the Kubernetes API fails or
    /// forbids: the wait starts at 0.8 s and doubles up to this, and only a
    /// successful list or watch event starts it over.
    #[arg(long, env = "HERALD_K8S_BACKOFF_MAX", default_value = "30s", value_parser = humantime::parse_duration)]
    pub k8s_backoff_max: Duration,
    /// This pod's IP (from the Downward API), left out of its own peer set.
    #[arg(long, env = "POD_IP")]
    pub pod_ip: Option<IpAddr>,
    /// The cluster identity in the peer handshake; defaults to
    /// `<namespace>/<k8s-service>` in kubernetes mode, else `herald`. Pods
    /// join only peers with the same identity.
    #[arg(long, env = "HERALD_CLUSTER_NAME")]
    pub cluster_name: Option<String>,
    /// A file holding the cluster's shared secret: pods prove to each other
    /// that they hold it in the peer handshake (a fresh challenge each way;
    /// the secret never crosses the wire), and refuse a peer that does not.
    /// Re-read when the file changes. Unset: the peer port accepts any pod
    /// of the same cluster name (logged as a warning at start).
    #[arg(long, env = "HERALD_CLUSTER_SECRET_FILE")]
    pub cluster_secret_file: Option<PathBuf>,
    /// Longest a new pod waits for streams to all discovered peers before it
    /// reports ready anyway.
    #[arg(long, env = "HERALD_PEER_READY_TIMEOUT", default_value = "10s", value_parser = humantime::parse_duration)]
    pub peer_ready_timeout: Duration,
    /// Messages queued for one peer before new ones are dropped for it.
    #[arg(long, env = "HERALD_PEER_QUEUE", default_value_t = 65536)]
    pub peer_queue: usize,
    /// Which pods a topic's messages go to on the mesh: those that follow
    /// the topic, or every pod (the cost of routing measured against).
    #[arg(
        long,
        env = "HERALD_PEER_ROUTING",
        value_enum,
        default_value = "interest"
    )]
    pub peer_routing: PeerRouting,
}

/// Which pods the mesh sends a topic's messages to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PeerRouting {
    /// The pods that follow the topic (hold subscribers for it, or read it
    /// lately), the pod that published it and the topic's backup; every
    /// pod while its interest is unknown.
    Interest,
    /// Every pod.
    All,
}

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Logs and traces.
#[derive(Debug, Clone, Args)]
pub struct TelemetryArgs {
    /// Log format.
    #[arg(long, env = "HERALD_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
    /// Log filter (e.g. `info` or `herald=debug,info`); `RUST_LOG` wins when
    /// set.
    #[arg(long, env = "HERALD_LOG_LEVEL", default_value = "info")]
    pub log_level: String,
    /// Share of new traces kept (0 to 1) when traces are exported
    /// (`OTEL_EXPORTER_OTLP_ENDPOINT` set); a caller's sampling decision
    /// always wins.
    #[arg(long, env = "HERALD_TRACE_SAMPLE_RATIO", default_value_t = 1.0)]
    pub trace_sample_ratio: f64,
}

/// `herald publish`.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// The pod's gRPC API.
    #[arg(long, env = "HERALD_ADDR", default_value = "http://127.0.0.1:9090")]
    pub addr: String,
    /// Bearer token for the gRPC API, when it requires one.
    #[arg(long, env = "HERALD_API_TOKEN")]
    pub token: Option<String>,
    /// TLS towards the pod.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
    /// Topic to publish to.
    #[arg(long)]
    pub topic: String,
    /// The JSON document to publish; read from standard input when absent.
    #[arg(long)]
    pub data: Option<String>,
    /// A key that makes a retry of this publish (same topic, within 5
    /// minutes, on any pod) return the first one's id instead of
    /// publishing again.
    #[arg(long)]
    pub idempotency_key: Option<String>,
}

/// `herald peers`.
#[derive(Debug, Clone, Args)]
pub struct PeersArgs {
    /// The pod's gRPC API.
    #[arg(long, env = "HERALD_ADDR", default_value = "http://127.0.0.1:9090")]
    pub addr: String,
    /// Bearer token for the gRPC API, when it requires one.
    #[arg(long, env = "HERALD_API_TOKEN")]
    pub token: Option<String>,
    /// TLS towards the pod.
    #[command(flatten)]
    pub tls: ClientTlsArgs,
}

/// A duration above zero, for timeouts that cannot be turned off.
fn positive_duration(text: &str) -> Result<Duration, String> {
    match humantime::parse_duration(text) {
        Ok(duration) if duration.is_zero() => {
            Err("must be above zero; there is no turning it off".into())
        }
        Ok(duration) => Ok(duration),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_command_line_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn serve_defaults_match_the_documented_ports() {
        let cli = Cli::try_parse_from(["herald", "serve"]).expect("defaults parse");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.listen.http_addr.port(), 8080);
        assert_eq!(args.listen.grpc_addr.port(), 9090);
        assert_eq!(args.listen.peer_addr.port(), 7070);
        assert_eq!(args.cluster.discovery, DiscoveryKind::None);
        assert_eq!(args.limits.heartbeat_interval, Duration::from_secs(30));
    }

    #[test]
    fn a_header_read_timeout_of_zero_is_refused_rather_than_turning_it_off() {
        let parse = |value: &str| {
            Cli::try_parse_from(["herald", "serve", &format!("--header-read-timeout={value}")])
        };
        let error = parse("0s").expect_err("0 refused").to_string();
        assert!(error.contains("above zero"), "{error}");
        assert!(parse("1s").is_ok());
    }

    #[test]
    fn static_peers_split_on_commas() {
        let cli = Cli::try_parse_from([
            "herald",
            "serve",
            "--discovery=static",
            "--peers=127.0.0.2:7070,127.0.0.3:7070",
        ])
        .expect("parses");
        let Command::Serve(args) = cli.command else {
            panic!("expected serve");
        };
        assert_eq!(args.cluster.peers, ["127.0.0.2:7070", "127.0.0.3:7070"]);
    }
}
