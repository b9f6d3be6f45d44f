//! One WebSocket connection: requests in, replies and messages out.
//!
//! Each connection runs as a single task that owns its socket, its
//! [`Requests`] (subscriptions and permissions) and its [`Mailbox`]; no
//! lock is shared with other connections. The loop waits on whichever comes first: a client frame, a
//! queued message, the heartbeat timer, the slow-client mark or shutdown.
//!
//! Writing: when a message is ready, every other message already queued is
//! taken too (up to [`COALESCE_BYTES`]) and sent as one text frame with one
//! flush, so a client that is behind costs one syscall per batch, not per
//! message. Every write races the slow-client mark and shutdown, so a client
//! that stopped reading cannot pin the task. With a write delay
//! (`--write-delay`), a message that arrives sooner than that after the
//! previous write is held until the delay has passed and leaves with
//! everything queued meanwhile: busy connections trade a bounded wait for
//! fewer system calls; idle ones are written to at once.
//!
//! How a session ends, and what the client sees:
//! - the client closes, or the socket fails: the session ends;
//! - a client message over the size limit: close code 1009;
//! - its mailbox overflowed (slow client) or a write stalled for two
//!   heartbeat intervals: close code 1013;
//! - the pod drains (SIGTERM): close code 1012 (reconnect elsewhere), at a
//!   moment drawn at random within the drain window, so a pod's users do
//!   not all reconnect in the same second;
//! - nothing received for two heartbeat intervals: the socket is dropped.

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
use crate::hub::Mailbox;
use crate::message as herald_message;
use crate::stats::{self, Counters};

/// Most bytes of queued messages coalesced into one outgoing frame.
pub const COALESCE_BYTES: usize = 64 * 1024;

/// How long a closing handshake may take before the socket is dropped.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// WebSocket close codes herald sends (RFC 6455 §7.4.1 and the IANA
/// registry).
pub mod close_code {
    /// A client message was larger than the limit.
    pub const MESSAGE_TOO_BIG: u16 = 1009;
    /// The pod is restarting or draining: reconnect, to another pod.
    pub const SERVICE_RESTART: u16 = 1012;
    /// The client did not keep up with its messages: try again later.
    pub const TRY_AGAIN_LATER: u16 = 1013;
}

/// Per-connection settings.
#[derive(Debug, Clone, Copy)]
pub struct Settings {
    /// How often to ping; silence for two intervals ends the session.
    pub heartbeat_interval: Duration,
    /// How long after the drain starts this connection is closed.
    pub drain_delay: Duration,
    /// Shortest time between two writes of messages: a message that arrives
    /// sooner after the previous write waits for the rest of it, gathering
    /// whatever else arrives meanwhile into the same frame. Zero writes at
    /// once.
    pub write_delay: Duration,
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
}

/// Runs one session to its end over `socket`. `drain` is cancelled when
/// the pod starts draining.
pub async fn run<S>(
    mut socket: S,
    mut requests: Requests,
    mut mailbox: Mailbox,
    settings: Settings,
    drain: CancellationToken,
    meters: Meters,
) -> End
where
    S: Stream<Item = Result<Message, Error>> + Sink<Message, Error = Error> + Unpin,
{
    let period = settings.heartbeat_interval;
    let mut heartbeat = interval_at(Instant::now() + period, period);
    heartbeat.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut last_heard = Instant::now();
    // A message waiting out the write delay, and when it may go.
    let mut held: Option<Arc<herald_message::Message>> = None;
    let mut next_write = Instant::now();
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
                        let out = requests.answer(message);
                        write(&mut socket, out, &mailbox, closing.as_mut(), period, &meters).await
                    }
                    Some(Err(e)) if is_too_big(&e) => Err(End::TooBig),
                    Some(Err(_)) | None => Err(End::Client),
                }
            }
            queued = mailbox.recv(), if held.is_none() => match queued {
                Some(first) if Instant::now() < next_write => {
                    held = Some(first);
                    Ok(())
                }
                Some(first) => {
                    let written = send_messages(first, &mut socket, &mut mailbox, closing.as_mut(), period, &meters).await;
                    next_write = Instant::now() + settings.write_delay;
                    written
                }
                None => Err(End::Slow),
            },
            () = tokio::time::sleep_until(next_write), if held.is_some() => {
                let first = held.take().expect("guarded by the branch condition");
                let written = send_messages(first, &mut socket, &mut mailbox, closing.as_mut(), period, &meters).await;
                next_write = Instant::now() + settings.write_delay;
                written
            }
            _ = heartbeat.tick() => {
                if last_heard.elapsed() >= 2 * period {
                    Err(End::HeartbeatTimeout)
                } else {
                    let ping = Some(Message::Ping(Bytes::new()));
                    write(&mut socket, ping, &mailbox, closing.as_mut(), period, &meters).await
                }
            }
        };
        if let Err(end) = outcome {
            break end;
        }
    };
    drop(requests);
    let closed = &meters.counters.connections_closed;
    stats::add(
        match end {
            End::Client => &closed.client,
            End::TooBig => &closed.too_big,
            End::Slow => &closed.slow,
            End::Shutdown => &closed.shutdown,
            End::HeartbeatTimeout => &closed.heartbeat_timeout,
        },
        1,
    );
    let close = match end {
        End::Client | End::HeartbeatTimeout => None,
        End::TooBig => Some((close_code::MESSAGE_TOO_BIG, "message too big")),
        End::Slow => Some((close_code::TRY_AGAIN_LATER, "slow client: send queue full")),
        End::Shutdown => Some((close_code::SERVICE_RESTART, "server restarting")),
    };
    if let Some((code, reason)) = close {
        let frame = CloseFrame {
            code,
            reason: Utf8Bytes::from_static(reason),
        };
        let _ = timeout(CLOSE_TIMEOUT, socket.send(Message::Close(Some(frame)))).await;
    } else if end == End::Client {
        // Completes the closing handshake if the client started one.
        let _ = timeout(CLOSE_TIMEOUT, socket.close()).await;
    }
    end
}

/// Writes `first` and whatever else is queued as one frame, and records
/// how long `first` waited.
async fn send_messages<S>(
    first: Arc<herald_message::Message>,
    socket: &mut S,
    mailbox: &mut Mailbox,
    closing: Pin<&mut impl Future<Output = ()>>,
    period: Duration,
    meters: &Meters,
) -> Result<(), End>
where
    S: Sink<Message, Error = Error> + Unpin,
{
    let arrived = first.received();
    let frame = Some(coalesce(first, mailbox));
    let written = write(socket, frame, mailbox, closing, period, meters).await;
    if written.is_ok() {
        meters.latency.record(arrived.elapsed().as_secs_f64(), &[]);
    }
    written
}

/// Joins `first` and whatever else is already queued, up to
/// [`COALESCE_BYTES`], into one newline-separated text frame. A lone
/// message goes out as its shared frame, without a copy.
fn coalesce(first: Arc<herald_message::Message>, mailbox: &mut Mailbox) -> Message {
    let mut batch: Option<String> = None;
    let mut size = first.frame().len();
    while size < COALESCE_BYTES {
        let Some(next) = mailbox.try_recv() else {
            break;
        };
        let buf = batch.get_or_insert_with(|| {
            let mut buf = String::with_capacity(COALESCE_BYTES.min(4 * size) + next.frame().len());
            buf.push_str(first.frame());
            buf
        });
        buf.push('\n');
        buf.push_str(next.frame());
        size = buf.len();
    }
    Message::Text(match batch {
        None => first.frame().clone(),
        Some(buf) => buf.into(),
    })
}

/// Sends `message` (if any) and flushes, unless the session is marked slow
/// or the pod shuts down first, or the write stalls for two heartbeat
/// periods (the client stopped reading).
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
    // The send goes first: it usually completes at once, and then the
    // other two are never polled (nor registered as waiters).
    tokio::select! {
        biased;
        sent = timeout(2 * period, socket.send(message)) => match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(End::Client),
            Err(_) => Err(End::Slow),
        },
        () = closing => Err(End::Shutdown),
        () = mailbox.slow() => Err(End::Slow),
    }
}

fn is_too_big(error: &Error) -> bool {
    let source = std::error::Error::source(error);
    matches!(
        source.and_then(|e| e.downcast_ref::<tungstenite::Error>()),
        Some(tungstenite::Error::Capacity(_))
    )
}
