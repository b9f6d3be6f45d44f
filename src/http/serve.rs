//! Serving a router on an HTTP listener (the public one, and the admin one
//! when it has its own port) with two limits that hold before any request
//! is read, so that clients which connect and then say little cannot use up
//! the pod's sockets (slowloris):
//!
//! - a connection counts as *in its handshake* from its accept until hyper
//!   has read the head of its first request. At most
//!   `--max-pending-handshakes` are, per listener; a connection past it is
//!   closed at once, after a 503 written only if the socket takes it
//!   without waiting (`herald_refusals_total{reason="handshakes"}`);
//! - every request's headers must be in within `--header-read-timeout`, or
//!   hyper closes the connection. One still in its handshake is counted
//!   (`reason="header_timeout"`); an idle keep-alive connection closed
//!   after as long is not.
//!
//! `herald_handshakes_pending{listener}` says how many are in their
//! handshake now.
//!
//! ```text
//! accept ─► pending < cap? ─no─► 503 (best effort), close
//!              │ yes
//!              ▼
//!   hyper HTTP/1.1 (header timer) ─► first request head: no longer pending
//!              │                          │
//!        headers too slow:          router (a `/ws` upgrade leaves
//!        closed, counted            hyper and runs as a session)
//! ```
//!
//! Only HTTP/1.1 is served: WebSocket upgrades and the probes need nothing
//! else. When `stop` is cancelled no connection is accepted any more, open
//! ones finish their request (hyper's graceful shutdown), and serving
//! returns once they are closed; upgraded sessions live on their own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use axum::extract::ConnectInfo;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tower::ServiceExt;

use crate::stats::{self, Counters};
use crate::ws::socket::{Conn, SharedListener};

/// What a connection past the cap is told, when its socket takes it.
const TOO_MANY_HANDSHAKES: &[u8] = b"HTTP/1.1 503 Service Unavailable\r\n\
content-type: application/json\r\n\
content-length: 92\r\n\
connection: close\r\n\
\r\n\
{\"error\":{\"code\":\"too_many_handshakes\",\"message\":\"too many connections in their handshake\"}}";

/// Which listener is served, for its gauge and its cap.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Port {
    /// The HTTP port (`--http-addr`).
    Http,
    /// The admin port (`--admin-addr`).
    Admin,
}

impl Port {
    fn pending(self, counters: &Counters) -> &AtomicU64 {
        match self {
            Self::Http => &counters.handshakes.http,
            Self::Admin => &counters.handshakes.admin,
        }
    }
}

/// The limits on connections before their first request.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    /// Longest a request's headers may take (`--header-read-timeout`).
    pub header_read_timeout: Duration,
    /// Most connections in their handshake (`--max-pending-handshakes`).
    pub max_pending: u64,
}

/// Serves `router` on `listener` as `port` until `stop`, then waits for
/// the open connections to finish.
pub async fn serve(
    mut listener: SharedListener,
    router: Router,
    port: Port,
    limits: Limits,
    counters: Arc<Counters>,
    stop: CancellationToken,
) {
    let connections = TaskTracker::new();
    loop {
        let (conn, _) = tokio::select! {
            () = stop.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let pending = port.pending(&counters);
        // Only this loop adds to `pending`, so the check and the add below
        // cannot race each other; connections only leave it meanwhile.
        if stats::read(pending) >= limits.max_pending {
            stats::add(&counters.refused.handshakes, 1);
            tracing::debug!(
                ?port,
                "too many connections in their handshake; closing a new one"
            );
            let _ = conn.try_write(TOO_MANY_HANDSHAKES);
            continue;
        }
        stats::add(pending, 1);
        let handshake = Arc::new(InHandshake {
            counters: counters.clone(),
            port,
            done: AtomicBool::new(false),
        });
        connections.spawn(serve_connection(
            conn,
            router.clone(),
            handshake,
            limits.header_read_timeout,
            stop.clone(),
        ));
    }
    drop(listener);
    connections.close();
    connections.wait().await;
}

/// Serves one connection's requests, and its upgrade if it asks for one.
async fn serve_connection(
    conn: Conn,
    router: Router,
    handshake: Arc<InHandshake>,
    header_read_timeout: Duration,
    stop: CancellationToken,
) {
    let connection = conn.connection();
    let on_request = handshake.clone();
    let service = service_fn(move |mut request: hyper::Request<Incoming>| {
        on_request.finish();
        request
            .extensions_mut()
            .insert(ConnectInfo(connection.clone()));
        router.clone().oneshot(request)
    });
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(header_read_timeout);
    let served = builder
        .serve_connection(TokioIo::new(conn), service)
        .with_upgrades();
    tokio::pin!(served);
    let result = tokio::select! {
        result = served.as_mut() => result,
        () = stop.cancelled() => {
            served.as_mut().graceful_shutdown();
            served.await
        }
    };
    // Leaves the count before the socket closes (when `served` drops), so
    // a client that saw its connection end sees the count without it.
    let in_handshake = handshake.is_pending();
    handshake.finish();
    match result {
        Err(e) if e.is_timeout() && in_handshake => {
            stats::add(&handshake.counters.refused.header_timeout, 1);
            tracing::debug!(timeout = ?header_read_timeout, "request headers too slow; connection closed");
        }
        Err(e) => tracing::trace!(error = %e, "connection ended"),
        Ok(()) => {}
    }
}

/// A connection's place among those in their handshake, left when its
/// first request arrives or, at the latest, when it closes.
struct InHandshake {
    counters: Arc<Counters>,
    port: Port,
    done: AtomicBool,
}

impl InHandshake {
    fn finish(&self) {
        if !self.done.swap(true, Ordering::Relaxed) {
            self.port
                .pending(&self.counters)
                .fetch_sub(1, Ordering::Relaxed);
        }
    }

    fn is_pending(&self) -> bool {
        !self.done.load(Ordering::Relaxed)
    }
}

impl Drop for InHandshake {
    fn drop(&mut self) {
        self.finish();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_answer_past_the_cap_is_a_whole_http_response_with_the_json_error_body() {
        let text = std::str::from_utf8(TOO_MANY_HANDSHAKES).expect("ASCII");
        let (head, body) = text.split_once("\r\n\r\n").expect("a head and a body");
        let length = head
            .lines()
            .find_map(|line| line.strip_prefix("content-length: "))
            .expect("a length");
        assert_eq!(length.parse::<usize>().ok(), Some(body.len()));
        let body: serde_json::Value = serde_json::from_str(body).expect("JSON");
        assert_eq!(body["error"]["code"], "too_many_handshakes");
    }
}
