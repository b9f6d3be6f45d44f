//! Errors that stop a pod from starting or serving. Everything after
//! startup is handled where it happens and never takes the pod down.

use std::net::SocketAddr;

/// Why `herald serve` could not run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A listener could not be bound.
    #[error("cannot listen on {addr} ({what}): {source}")]
    Bind {
        /// Which listener.
        what: &'static str,
        /// The address.
        addr: SocketAddr,
        /// Why.
        source: std::io::Error,
    },
    /// `--peers` holds an entry that is not host:port.
    #[error("--peers: {0}")]
    Peers(#[from] crate::cluster::discovery::fixed::BadPeer),
    /// `--history-off` holds an entry that is not a topic or `prefix*`.
    #[error("--history-off: {0}")]
    HistoryOff(crate::auth::PatternError),
    /// `--presence-topics` holds an entry that is not a topic or `prefix*`.
    #[error("--presence-topics: {0}")]
    PresenceTopics(crate::auth::PatternError),
    /// `--discovery dns` without `--dns-name`.
    #[error("--discovery dns needs --dns-name")]
    MissingDnsName,
    /// `--discovery kubernetes` without a client configuration.
    #[error(transparent)]
    Kubernetes(#[from] crate::cluster::discovery::kubernetes::NoConfig),
    /// The Redis backend could not be set up.
    #[error(transparent)]
    Redis(#[from] crate::broadcast::redis::RedisSetupError),
    /// Authentication could not be set up (keys or token files).
    #[error("auth: {0}")]
    Auth(#[from] crate::auth::AuthError),
    /// A TLS file could not be read or its material was refused.
    #[error(transparent)]
    Tls(#[from] crate::tls::TlsError),
    /// Metrics could not be set up.
    #[error(transparent)]
    Metrics(#[from] crate::metrics::MetricsError),
    /// The gRPC services could not be built.
    #[error(transparent)]
    Grpc(#[from] crate::grpc::ReflectionError),
    /// A server stopped with an error.
    #[error("{what} server failed: {source}")]
    Serve {
        /// Which server.
        what: &'static str,
        /// Why.
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

/// The result of starting and running a pod.
pub type Result<T, E = Error> = std::result::Result<T, E>;
