//! The broadcast port: everything the rest of herald needs from whatever
//! carries messages between its pods. The peer [`Mesh`](crate::cluster::Mesh)
//! is one implementation; health, metrics, gRPC `ListPeers`, presence and
//! the drain reach the backend only through [`Broadcast`], so another
//! backend ([`redis`]) plugs in without touching them.
//!
//! What is common to every backend lives here too: [`intake`] validates
//! what arrives from other pods and delivers it into the local hub, with
//! its trace, in one place.

pub mod intake;
pub mod redis;

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::future::BoxFuture;
use tokio_util::sync::CancellationToken;

use crate::cluster::presence::delta_frame;
use crate::hub::Hub;
use crate::local::Recall;
use crate::presence::{FLUSH_EVERY, Presence};
use crate::proto::v1::peer_frame;
use crate::publish::Relay;

/// What a backend knows of one other pod (or of its link to a shared
/// store), for `herald peers` and the metrics.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    /// The peer's address.
    pub address: String,
    /// Whether the outgoing stream is up.
    pub connected: bool,
    /// Messages dropped because its queue was full.
    pub dropped: u64,
    /// Times its stream has been established.
    pub connects: u64,
    /// The last stream error, if any.
    pub last_error: Option<String>,
    /// How it travels: `wire` (the mesh's peer wire) or `redis`.
    pub transport: &'static str,
}

/// How this pod is known within its broadcast group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The group's name: pods share messages only within one.
    pub cluster: String,
    /// The address this pod is reached at by the others.
    pub address: String,
}

/// A broadcast backend. [`Relay`] carries and orders messages, [`Recall`]
/// completes a pod's history from the group's; the rest is what the pod
/// around it needs: readiness, status, presence and the drain.
pub trait Broadcast: Relay + Recall {
    /// This pod's place in the group.
    fn identity(&self) -> Identity;

    /// Whether this pod has joined the group far enough to take users:
    /// readiness waits for it (a bounded wait, per backend).
    fn is_settled(&self) -> bool;

    /// What this pod knows of the others, one row each.
    fn peers(&self) -> Vec<PeerInfo>;

    /// The presence this pod shares through the group.
    fn presence(&self) -> &Presence;

    /// Sends a presence frame (this pod's delta) to every other pod,
    /// without waiting; one that cannot take it is healed later with the
    /// whole state.
    fn broadcast_presence(&self, kind: &peer_frame::Kind);

    /// The drain's last step: hands what this pod orders to the pods that
    /// stay, within `timeout`.
    fn leave(&self, timeout: Duration) -> BoxFuture<'_, ()>;

    /// Waits up to `timeout` for what is queued for other pods to go out.
    fn flush(&self, timeout: Duration) -> BoxFuture<'_, ()>;
}

/// Flushes presence every [`FLUSH_EVERY`] until `shutdown`: `hub`'s
/// listeners hear what changed, and the other pods get this pod's deltas.
pub async fn share_presence(broadcast: Arc<dyn Broadcast>, hub: Hub, shutdown: CancellationToken) {
    let mut every = tokio::time::interval(FLUSH_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            () = shutdown.cancelled() => return,
            _ = every.tick() => flush_presence(&*broadcast, &hub),
        }
    }
}

/// One presence flush: events to `hub`'s listeners, deltas to the group.
pub fn flush_presence(broadcast: &dyn Broadcast, hub: &Hub) {
    for delta in broadcast.presence().flush(hub, Instant::now()) {
        broadcast.broadcast_presence(&delta_frame(delta));
    }
}
