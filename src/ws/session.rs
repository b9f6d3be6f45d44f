//! One WebSocket connection: requests in, replies and messages out.
//!
//! Each connection runs as a single task that owns its socket's reading
//! side, its [`Requests`] (subscriptions and permissions) and its
//! [`Mailbox`]. The loop waits on whichever comes first: a client frame, its
//! turn to write messages, the heartbeat timer, the slow-client mark or
//! shutdown.
//!
//! Writing messages: while the client keeps up, the hub's delivering
//! threads write them straight to the socket (see [`crate::hub`]'s
//! mailbox) and this task is not woken at all. The session's turn comes
//! when the socket is full: it then waits for the socket, writes what is
//! queued as one text frame (up to
//! [`COALESCE_BYTES`](crate::hub::COALESCE_BYTES)), and hands writing
//! back once its queue is empty; a client that is behind costs one syscall
//! per batch, not per message. Every write races the slow-client mark and
//! shutdown, so a client that stopped reading cannot pin the task. With a
//! write delay (`--write-delay`), messages that arrive sooner than that
//! after the previous write wait for the rest of it and leave together:
//! busy connections trade a bounded wait for fewer system calls; idle ones
//! are written to at once.
//!
//! How a session ends, and what the client sees:
//! - the client closes, or the socket fails: the session ends;
//! - a client message over the size limit: close code 1009;
//! - a frame that breaks the WebSocket protocol (unmasked, a reserved
//!   opcode or bit, a bad close): 1002; a text frame that is not UTF-8:
//!   1007;
//! - a write stalled for two heartbeat intervals, or a frame of its own
//!   found its queue full: close code 1013; a client merely behind its
//!   queue is caught up from history instead, and told with a `gap` if the
//!   history no longer holds what it missed;
//! - the pod drains (SIGTERM): close code 1012 (reconnect elsewhere), at a
//!   moment drawn at random within the drain window, so a pod's users do
//!   not all reconnect in the same second;
//! - nothing received for two heartbeat intervals: the socket is dropped
//!   (or, when messages wait for it, closed with 1013: it stopped reading);
//! - its token expired without a `refresh`: close code 4001. A minute
//!   before (or half the token's remaining lifetime, if shorter) the
//!   client gets an `expiring` event saying when.

use std::time::Duration;

use axum::Error;
use axum::extract::ws::{CloseFrame, Message, Utf8Bytes};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use opentelemetry::metrics::Histogram;
use tokio::time::{Instant, MissedTickBehavior, interval_at, timeout};
use tokio_tungstenite::tungstenite;
use tokio_util::sync::CancellationToken;

use super::requests::Requests;
use super::socket::Outlet;
use crate::hub::{Mailbox, Outgoing, Wire, Written};
use crate::stats::{self, Counters};

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// WebSocket close codes herald sends (RFC 6455 §7.4.1 and the IANA
/// registry).
pub mod close_code {
    /// The client broke the WebSocket protocol.
    pub const PROTOCOL_ERROR: u16 = 1002;
    /// A text frame's payload is not UTF-8.
    pub const INVALID_PAYLOAD: u16 = 1007;
    /// A client message was larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The pod is restarting or draining: reconnect, to another pod.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not keep up with its messages: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
    /// The connection's token expired: reconnect with a fresh one.
    pub const TOKEN_EXPIRED: u16 = 4001;
}

/// How long before its token expires a connection is told (at most; half
/// the remaining lifetime when that is shorter).
const EXPIRY_NOTICE: Duration = Duration::from_secs(60);

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often to ping; silence for two intervals ends the session.
    pub heartbeat_interval: Duration,
    /// How long after the drain starts this connection is closed.
    pub drain_delay: Duration,
}

/// Where a session counts what it does.
#[derive(Clone)]
pub struct Meters {
    /// The pod's counters (bytes out, connections closed by reason).
    pub counters: Arc<Counters>,
    /// Arrival-to-write latency, one sample per frame of messages.
    pub latency: Histogram<f64>,
}

/// Why a session ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The client closed the connection or the socket failed.
    Client,
    /// A client message exceeded the size limit.
    TooBig,
    /// The mailbox overflowed or a write stalled.
    Slow,
    /// The pod is draining.
    Shutdown,
    /// The client sent nothing for two heartbeat intervals.
    HeartbeatTimeout,
    /// The connection's token expired.
    TokenExpired,
    /// The client broke the WebSocket protocol (an unmasked or reserved
    /// frame, a bad close): close code 1002.
    ProtocolError,
    /// A text frame that is not UTF-8: close code 1007.
    InvalidText,
}

/// Runs one session to its end over `socket`, whose messages go out
/// through `outlet` (by the hub's delivering threads, or on the session's
/// own turn). `drain` is cancelled when the pod starts draining.
pub async fn run<S>(
    mut socket: S,
    outlet: Arc<Outlet>,
    mut requests: Requests,
    mut mailbox: Mailbox,
    settings: Settings,
    drain: CancellationToken,
) -> End
where
    S: Stream<Item = Result<Message, Error>> + Sink<Message, Error = Error> + Unpin,
{
    let period = settings.heartbeat_interval;
    let meters = outlet.meters();
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // The session's turn came while the write delay holds messages back:
    // when they may go.
    let mut held: Option<Instant> = None;
    let mut batch = Vec::new();
    // The token's expiry as last seen, when to tell the client, and when
    // to close; a `refresh` moves them.
    let mut expiry = Expiry::of(requests.expiry());
    let closing = async {
        drain.cancelled().await;
        tokio::time::sleep(settings.drain_delay).await;
    };
    tokio::pin!(closing);

    let end = loop {
        let outcome = tokio::select! {
            biased;
            () = &mut closing => Err(End::Shutdown),
            incoming = socket.next() => {
                last_heard = Instant::now();
                match incoming {
                    Some(Ok(message)) => {
                        requests.answer(message).await;
                        if requests.expiry() != expiry.token {
                            expiry = Expiry::of(requests.expiry());
                        }
                        Ok(())
                    }
                    Some(Err(e)) if is_too_big(&e) => Err(End::TooBig),
                    Some(Err(e)) => Err(violation(&e).unwrap_or(End::Client)),
                    None => Err(End::Client),
                }
            }
            turn = mailbox.turn(), if held.is_none() => {
                if !turn {
                    Err(End::Slow)
                } else if let Some(until) = mailbox.held_until() {
                    held = Some(Instant::from_std(until));
                    Ok(())
                } else {
                    write_turn(&outlet, &mut mailbox, &mut batch, closing.as_mut(), period).await
                }
            }
            () = tokio::time::sleep_until(held.unwrap_or_else(Instant::now)), if held.is_some() => {
                held = None;
                write_turn(&outlet, &mut mailbox, &mut batch, closing.as_mut(), period).await
            }
            () = tokio::time::sleep_until(expiry.notice.unwrap_or_else(Instant::now)), if expiry.notice.is_some() => {
                expiry.notice = None;
                if let Some(token) = expiry.token {
                    requests.tell_expiring(token);
                }
                Ok(())
            }
            () = tokio::time::sleep_until(expiry.close.unwrap_or_else(Instant::now)), if expiry.close.is_some() => {
                Err(End::TokenExpired)
            }
            () = mailbox.catch_up_due() => {
                requests.catch_up();
                Ok(())
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= 2 * period {
                    // Silent and not reading what it is sent: it stopped
                    // reading (1013), not just talking.
                    if mailbox.is_backed_up() {
                        Err(End::Slow)
                    } else {
                        Err(End::HeartbeatTimeout)
                    }
                } else {
                    let ping = Some(Message::Ping(Bytes::new()));
                    write(&mut socket, ping, &mailbox, closing.as_mut(), period, meters).await
                }
            }
        };
        if let Err(end) = outcome {
            break end;
        }
    };
    drop(requests);
    outlet.socket().close_messages();
    let closed = &meters.counters.connections_closed;
    stats::add(
        match end {
            End::Client => &closed.client,
            End::TooBig => &closed.too_big,
            End::Slow => &closed.slow,
            End::Shutdown => &closed.shutdown,
            End::HeartbeatTimeout => &closed.heartbeat_timeout,
            End::TokenExpired => &closed.token_expired,
            End::ProtocolError | End::InvalidText => &closed.protocol_error,
        },
        1,
    );
    let close = match end {
        End::Client | End::HeartbeatTimeout => None,
        End::TooBig => Some((close_code::MESSAGE_TOO_BIG, "message too big")),
        End::Slow => Some((close_code::TRY_AGAIN_LATER, "slow client: send queue full")),
        End::Shutdown => Some((close_code::SERVICE_RESTART, "server restarting")),
        End::TokenExpired => Some((close_code::TOKEN_EXPIRED, "token expired")),
        End::ProtocolError => Some((close_code::PROTOCOL_ERROR, "websocket protocol error")),
        End::InvalidText => Some((close_code::INVALID_PAYLOAD, "text frame is not UTF-8")),
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        // The closing handshake: send ours, then read (and drop) until the
        // client's answer, so the socket is not reset under frames the
        // client has yet to read (a pong, a request) and it sees the code.
        let _ = timeout(CLOSE_TIMEOUT, async {
            if socket.send(Message::Close(Some(frame))).await.is_ok() {
                while let Some(Ok(message)) = socket.next().await {
                    if matches!(message, Message::Close(_)) {
                        break;
                    }
                }
            }
        })
        .await;
    } else if end == End::Client {
        // Completes the closing handshake if the client started one.
        let _ = timeout(CLOSE_TIMEOUT, socket.close()).await;
    }
    end
}

/// The session's turn to write: whatever is left of a frame, then one
/// frame of queued messages, waiting for the socket as needed. The turn
/// ends once nothing more is queued.
async fn write_turn(
    outlet: &Outlet,
    mailbox: &mut Mailbox,
    batch: &mut Vec<Outgoing>,
    closing: Pin<&mut impl Future<Output = ()>>,
    period: Duration,
) -> Result<(), End> {
    mailbox.take(batch);
    let sending = async {
        loop {
            outlet.socket().flush().await?;
            if batch.is_empty() {
                return Ok(());
            }
            match outlet.write_now(batch) {
                Written::All | Written::Partly => return outlet.socket().flush().await,
                Written::Busy => outlet.socket().writable().await?,
            }
        }
    };
    guard(sending, mailbox, closing, period).await?;
    if batch.is_empty() {
        // Only the rest of a frame went out: no new write to pace.
        mailbox.release();
    } else {
        batch.clear();
        mailbox.written();
    }
    Ok(())
}

/// Sends `message` (if any) and flushes.
async fn write<S>(
    socket: &mut S,
    message: Option<Message>,
    mailbox: &Mailbox,
    closing: Pin<&mut impl Future<Output = ()>>,
    period: Duration,
    meters: &Meters,
) -> Result<(), End>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let Some(message) = message else {
        return Ok(());
    };
    if let Message::Text(text) = &message {
        stats::add(&meters.counters.bytes_out, text.len() as u64);
    }
    guard(socket.send(message), mailbox, closing, period).await
}

/// Runs a write unless the session is marked slow or the pod shuts down
/// first, or the write stalls for two heartbeat periods (the client
/// stopped reading).
async fn guard<E>(
    writing: impl Future<Output = Result<(), E>>,
    mailbox: &Mailbox,
    closing: Pin<&mut impl Future<Output = ()>>,
    period: Duration,
) -> Result<(), End> {
    // The write goes first: it usually completes at once, and then the
    // other two are never polled (nor registered as waiters).
    tokio::select! {
        biased;
        written = timeout(2 * period, writing) => match written {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::Slow),
        },
        () = closing => Err(End::Shutdown),
        () = mailbox.slow() => Err(End::Slow),
    }
}

/// How a read error the client caused ends the session, if it did.
fn violation(error: &Error) -> Option<End> {
    let source = std::error::Error::source(error)?;
    match source.downcast_ref::<tungstenite::Error>()? {
        // A client that vanishes without a closing handshake broke nothing
        // worth a close frame: it is gone.
        tungstenite::Error::Protocol(
            tungstenite::error::ProtocolError::ResetWithoutClosingHandshake,
        ) => None,
        tungstenite::Error::Protocol(_) => Some(End::ProtocolError),
        tungstenite::Error::Utf8(_) => Some(End::InvalidText),
        _ => None,
    }
}

fn is_too_big(error: &Error) -> bool {
    let source = std::error::Error::source(error);
    matches!(
        source.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}

/// When a connection's token expires, and the two moments that follow
/// from it.
struct Expiry {
    token: Option<std::time::SystemTime>,
    notice: Option<Instant>,
    close: Option<Instant>,
}

impl Expiry {
    fn of(token: Option<std::time::SystemTime>) -> Self {
        let left = |at: std::time::SystemTime| {
            at.duration_since(std::time::SystemTime::now())
                .unwrap_or_default()
        };
        let now = Instant::now();
        Self {
            token,
            notice: token.map(|at| now + left(at).saturating_sub(EXPIRY_NOTICE.min(left(at) / 2))),
            close: token.map(|at| now + left(at)),
        }
    }
}
