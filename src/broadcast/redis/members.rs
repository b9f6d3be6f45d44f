//! The other pods as this pod hears them on the Redis presence channel,
//! and presence carried there: what the mesh learns from its streams
//! coming and going, the Redis backend learns from beats.
//!
//! Every pod publishes a [`Beat`] every [`BEAT`]. A pod heard for the first
//! time is up (its presence is taken from then on) and is sent this pod's
//! whole state; a pod not heard for [`SILENCE`] is down, and its entries
//! go after presence's grace. A pod's own subscription coming up asks every
//! pod for its state (it may have missed deltas while it was down), and
//! sends its own. A pod that leaves says so ([`Gone`]) and its entries go at
//! once, and it says nothing more. Silence is judged only while this pod's own subscription has been
//! up for [`SILENCE`]: a pod that cannot hear anyone does not take everyone
//! for dead.
//!
//! Frames go out through the writer's bounded queue; a frame that does not
//! fit marks the state owed, and the next beat sends the whole state
//! instead, so a lost delta heals within half a second.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use bytes::Bytes;
use prost::Message as _;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::writer::Queued;
use crate::broadcast::PeerInfo;
use crate::cluster::presence::{state_frames, take_delta, take_state};
use crate::message::NodeId;
use crate::presence::Presence;
use crate::proto::v1::{Beat, BusFrame, Gone, StateRequest, bus_frame, peer_frame};

/// How often a pod says it is alive (and checks who went silent).
pub const BEAT: Duration = Duration::from_millis(500);

/// How long a pod may go unheard before it is taken for down: four beats.
pub const SILENCE: Duration = Duration::from_secs(2);

/// How long a pod taken for down keeps its presence entries: the silence
/// already waited for it, so about one more check.
pub const GRACE: Duration = Duration::from_millis(500);

/// The pods heard, and this pod's presence frames. Cheap to clone.
#[derive(Clone)]
pub struct Members {
    inner: Arc<Inner>,
}

struct Inner {
    node: NodeId,
    address: String,
    presence: Presence,
    frames: mpsc::Sender<Bytes>,
    queued: Arc<Queued>,
    owe_state: AtomicBool,
    /// Set once this pod said it is gone: it says nothing more.
    gone: AtomicBool,
    state: Mutex<State>,
}

#[derive(Default)]
struct State {
    heard: HashMap<NodeId, Heard>,
    /// Since when this pod's subscription is up.
    listening_since: Option<Instant>,
}

struct Heard {
    address: String,
    at: Instant,
}

impl Members {
    /// This pod (`node` at `address`) sharing `presence` through `frames`,
    /// counted in `queued`.
    pub fn new(
        node: NodeId,
        address: String,
        presence: Presence,
        frames: mpsc::Sender<Bytes>,
        queued: Arc<Queued>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                node,
                address,
                presence,
                frames,
                queued,
                owe_state: AtomicBool::new(false),
                gone: AtomicBool::new(false),
                state: Mutex::default(),
            }),
        }
    }

    /// The presence shared.
    pub fn presence(&self) -> &Presence {
        &self.inner.presence
    }

    /// Sends a presence frame of this pod's; a delta that does not fit
    /// owes the whole state.
    pub fn send_presence(&self, kind: &peer_frame::Kind) {
        let kind = match kind {
            peer_frame::Kind::PresenceDelta(delta) => bus_frame::Kind::PresenceDelta(delta.clone()),
            peer_frame::Kind::PresenceState(state) => bus_frame::Kind::PresenceState(state.clone()),
            _ => return,
        };
        self.send(kind);
    }

    /// This pod's subscription came up: it asks for everyone's state and
    /// sends its own.
    pub fn listening(&self) {
        self.lock().listening_since = Some(Instant::now());
        self.send(bus_frame::Kind::StateRequest(StateRequest {}));
        self.send_state();
    }

    /// This pod's subscription went down: nobody is judged meanwhile.
    pub fn deaf(&self) {
        self.lock().listening_since = None;
    }

    /// This pod leaves: the others drop its entries now, and it sends
    /// nothing more (a beat after it would bring it back).
    pub fn leave(&self) {
        self.send(bus_frame::Kind::Gone(Gone {}));
        self.inner.gone.store(true, Ordering::Release);
    }

    /// Takes a frame from the presence channel.
    pub fn take(&self, bytes: &[u8]) {
        let frame = match BusFrame::decode(bytes) {
            Ok(frame) => frame,
            Err(error) => {
                tracing::warn!(%error, "dropping an unreadable frame from the presence channel");
                return;
            }
        };
        let Ok(node) = frame.node.parse::<NodeId>() else {
            tracing::warn!(node = %frame.node, "dropping a presence frame with a bad node id");
            return;
        };
        if node == self.inner.node {
            return;
        }
        let presence = &self.inner.presence;
        let Some(kind) = frame.kind else { return };
        if let bus_frame::Kind::Gone(_) = kind {
            tracing::info!(peer = %node, address = %frame.address, "a pod left the group");
            self.lock().heard.remove(&node);
            presence.peer_gone(node);
            return;
        }
        let new = {
            let mut state = self.lock();
            let heard = Heard {
                address: frame.address.clone(),
                at: Instant::now(),
            };
            state.heard.insert(node, heard).is_none()
        };
        if new {
            tracing::info!(peer = %node, address = %frame.address, "a pod joined the group");
            presence.peer_up(node, &frame.address);
            self.send_state();
        }
        match kind {
            bus_frame::Kind::PresenceDelta(delta) => take_delta(presence, node, delta),
            bus_frame::Kind::PresenceState(state) => take_state(presence, node, state),
            bus_frame::Kind::StateRequest(_) if !new => self.send_state(),
            _ => {}
        }
    }

    /// Beats every [`BEAT`] until `stop`, sending the whole state when it
    /// is owed, and takes pods silent too long for down.
    pub async fn beat(self, stop: CancellationToken) {
        let mut every = tokio::time::interval(BEAT);
        every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = stop.cancelled() => return,
                _ = every.tick() => {}
            }
            if self.inner.owe_state.swap(false, Ordering::AcqRel) {
                self.send_state();
            }
            self.send(bus_frame::Kind::Beat(Beat {}));
            for node in self.silent(Instant::now()) {
                tracing::info!(peer = %node, silence = ?SILENCE, "a pod went silent; its presence expires after the grace");
                self.inner.presence.peer_down(node);
            }
        }
    }

    /// The pods heard, for operators.
    pub fn pods(&self) -> Vec<PeerInfo> {
        self.lock()
            .heard
            .values()
            .map(|heard| PeerInfo {
                address: heard.address.clone(),
                connected: true,
                dropped: 0,
                connects: 1,
                last_error: None,
                transport: "redis",
            })
            .collect()
    }

    /// The pods unheard for [`SILENCE`] at `now`, forgotten here, while
    /// this pod has listened that long itself.
    fn silent(&self, now: Instant) -> Vec<NodeId> {
        let mut state = self.lock();
        if state
            .listening_since
            .is_none_or(|since| now.duration_since(since) < SILENCE)
        {
            return Vec::new();
        }
        let silent: Vec<NodeId> = state
            .heard
            .iter()
            .filter(|(_, heard)| now.duration_since(heard.at) >= SILENCE)
            .map(|(node, _)| *node)
            .collect();
        for node in &silent {
            state.heard.remove(node);
        }
        silent
    }

    fn send_state(&self) {
        for frame in state_frames(&self.inner.presence) {
            if let peer_frame::Kind::PresenceState(state) = frame {
                self.send(bus_frame::Kind::PresenceState(state));
            }
        }
    }

    fn send(&self, kind: bus_frame::Kind) {
        if self.inner.gone.load(Ordering::Acquire) {
            return;
        }
        let frame = BusFrame {
            node: self.inner.node.to_string(),
            address: self.inner.address.clone(),
            kind: Some(kind),
        };
        let inner = &self.inner;
        inner.queued.frames.fetch_add(1, Ordering::AcqRel);
        if inner
            .frames
            .try_send(Bytes::from(frame.encode_to_vec()))
            .is_err()
        {
            inner.queued.frames.fetch_sub(1, Ordering::AcqRel);
            inner.owe_state.store(true, Ordering::Release);
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::auth::TopicPatterns;
    use crate::presence::Settings;

    fn members() -> (Members, mpsc::Receiver<Bytes>) {
        let node = NodeId::random();
        let presence = Presence::new(Settings {
            node,
            topics: TopicPatterns::parse(&["room:*"]).expect("valid"),
            grace: GRACE,
        });
        let (frames, sent) = mpsc::channel(64);
        let members = Members::new(
            node,
            "10.0.0.1:7070".into(),
            presence,
            frames,
            Arc::default(),
        );
        (members, sent)
    }

    fn beat_of(node: NodeId) -> Vec<u8> {
        BusFrame {
            node: node.to_string(),
            address: "10.0.0.2:7070".into(),
            kind: Some(bus_frame::Kind::Beat(Beat {})),
        }
        .encode_to_vec()
    }

    fn kinds(sent: &mut mpsc::Receiver<Bytes>) -> Vec<&'static str> {
        std::iter::from_fn(|| sent.try_recv().ok())
            .map(
                |bytes| match BusFrame::decode(bytes).expect("decodes").kind {
                    Some(bus_frame::Kind::PresenceState(_)) => "state",
                    Some(bus_frame::Kind::StateRequest(_)) => "request",
                    Some(bus_frame::Kind::Gone(_)) => "gone",
                    Some(bus_frame::Kind::Beat(_)) => "beat",
                    _ => "other",
                },
            )
            .collect()
    }

    #[test]
    fn a_pod_heard_first_is_sent_this_pods_state_and_one_silent_too_long_is_down() {
        let (members, mut sent) = members();
        members.listening();
        assert_eq!(kinds(&mut sent), ["request", "state"]);
        let other = NodeId::random();
        members.take(&beat_of(other));
        assert_eq!(kinds(&mut sent), ["state"], "the new pod gets our state");
        members.take(&beat_of(other));
        assert_eq!(kinds(&mut sent), Vec::<&str>::new(), "once");
        assert_eq!(members.pods().len(), 1);

        let now = Instant::now();
        assert_eq!(members.silent(now), Vec::new());
        assert_eq!(members.silent(now + SILENCE), vec![other]);
        assert!(members.pods().is_empty(), "forgotten once down");
    }

    #[test]
    fn a_pod_that_said_it_is_gone_sends_nothing_more() {
        let (members, mut sent) = members();
        members.leave();
        members.listening();
        members.take(&beat_of(NodeId::random()));
        assert_eq!(kinds(&mut sent), ["gone"]);
    }

    #[test]
    fn nobody_is_taken_for_down_while_this_pod_cannot_hear() {
        let (members, _sent) = members();
        let other = NodeId::random();
        members.take(&beat_of(other));
        let later = Instant::now() + SILENCE * 4;
        assert_eq!(members.silent(later), Vec::new(), "never listened");
        members.listening();
        members.deaf();
        assert_eq!(members.silent(later), Vec::new(), "deaf now");
    }

    #[test]
    fn frames_that_do_not_decode_or_name_no_pod_are_dropped_and_this_pods_own_ignored() {
        let (members, mut sent) = members();
        members.take(b"\xff\xff not a frame");
        let nameless = BusFrame {
            node: "not a node".into(),
            ..BusFrame::default()
        };
        members.take(&nameless.encode_to_vec());
        members.take(&beat_of(members.inner.node));
        assert!(members.pods().is_empty());
        assert_eq!(kinds(&mut sent), Vec::<&str>::new());
    }
}
