//! The command connection to Redis, shared by everything that sends
//! commands (numbering, presence frames, reads), and what the pod knows of
//! its link to Redis for `herald peers` and readiness.
//!
//! One task ([`Link::maintain`]) dials, with capped backoff, whenever there
//! is no connection; a caller whose command failed on the connection itself
//! reports it ([`failed`](Link::failed)) and the task dials again. Commands
//! never wait for a connection: without one they fail at once, so a
//! publish while Redis is down is refused rather than held.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError};
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;

use crate::cluster::backoff::Backoff;

/// Longest wait for Redis to accept a connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);

/// Longest wait for one reply: past it the connection counts as broken.
pub const RESPONSE_TIMEOUT: Duration = Duration::from_secs(2);

/// First and longest wait between connection attempts (the subscription's
/// too): short enough that pods are back within two seconds of Redis.
pub const BACKOFF: (Duration, Duration) = (Duration::from_millis(100), Duration::from_secs(2));

/// A handle to the command connection. Clones share it.
#[derive(Clone)]
pub struct Link {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client,
    /// Where the pod reaches Redis, without credentials, for operators.
    address: String,
    state: Mutex<State>,
    broken: Notify,
}

#[derive(Default)]
struct State {
    connection: Option<MultiplexedConnection>,
    connects: u64,
    last_error: Option<String>,
}

/// What an operator sees of the link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Status {
    /// Redis, as `host:port`.
    pub address: String,
    /// Whether the command connection is up.
    pub connected: bool,
    /// Connections made since start.
    pub connects: u64,
    /// The last connection or command error.
    pub last_error: Option<String>,
}

impl Link {
    /// A link through `client`, not connected yet.
    pub fn new(client: Client) -> Self {
        let info = client.get_connection_info();
        let address = info.addr().to_string();
        Self {
            inner: Arc::new(Inner {
                client,
                address,
                state: Mutex::default(),
                broken: Notify::new(),
            }),
        }
    }

    /// The client, for the connections that are not shared (the
    /// subscription).
    pub fn client(&self) -> &Client {
        &self.inner.client
    }

    /// Redis, as operators see it.
    pub fn address(&self) -> &str {
        &self.inner.address
    }

    /// The connection, if it is up.
    pub fn connection(&self) -> Option<MultiplexedConnection> {
        self.state().connection.clone()
    }

    /// The connection, waiting up to `patience` for it to come up (the
    /// subscription may come back before it after a break).
    pub async fn connection_within(&self, patience: Duration) -> Option<MultiplexedConnection> {
        let deadline = tokio::time::Instant::now() + patience;
        loop {
            if let Some(connection) = self.connection() {
                return Some(connection);
            }
            if tokio::time::Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// A command failed with `error`: if the connection itself failed it is
    /// dropped and dialled again.
    pub fn failed(&self, error: &RedisError) {
        let mut state = self.state();
        state.last_error = Some(error.to_string());
        if error.is_io_error()
            || error.is_connection_dropped()
            || error.is_timeout()
            || error.is_unrecoverable_error()
        {
            if state.connection.take().is_some() {
                tracing::warn!(%error, redis = %self.inner.address, "the Redis connection broke; dialling again");
            }
            self.inner.broken.notify_one();
        }
    }

    /// Records a problem (a failed dial here, or the subscription's).
    pub fn note(&self, error: String) {
        self.state().last_error = Some(error);
    }

    /// The link as operators see it.
    pub fn status(&self) -> Status {
        let state = self.state();
        Status {
            address: self.inner.address.clone(),
            connected: state.connection.is_some(),
            connects: state.connects,
            last_error: state.last_error.clone(),
        }
    }

    /// Keeps a connection up until `stop`.
    pub async fn maintain(self, stop: CancellationToken) {
        let mut backoff = Backoff::new(BACKOFF.0, BACKOFF.1);
        let mut warned: Option<String> = None;
        loop {
            if self.connection().is_none() {
                match self.dial().await {
                    Ok(connection) => {
                        backoff.reset();
                        warned = None;
                        let mut state = self.state();
                        state.connection = Some(connection);
                        state.connects += 1;
                        tracing::info!(redis = %self.inner.address, "connected to Redis");
                    }
                    Err(error) => {
                        let text = error.to_string();
                        // One warning per distinct problem, not per retry.
                        if warned.as_ref() != Some(&text) {
                            tracing::warn!(%error, redis = %self.inner.address, "cannot reach Redis; trying again");
                        }
                        self.note(text.clone());
                        warned = Some(text);
                        tokio::select! {
                            () = stop.cancelled() => return,
                            () = tokio::time::sleep(backoff.next_delay()) => continue,
                        }
                    }
                }
            }
            tokio::select! {
                () = stop.cancelled() => return,
                () = self.inner.broken.notified() => {}
            }
        }
    }

    async fn dial(&self) -> Result<MultiplexedConnection, RedisError> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(CONNECT_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        self.inner
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await
    }

    fn state(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}
