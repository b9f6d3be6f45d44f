//! What every backend does with what arrives from other pods: checks each
//! envelope as strictly as a local publish (id, origin, topic, data size
//! and JSON, epoch, offset, sequencer), drops an invalid one with a
//! warning (never the stream it came on), and delivers the rest into the
//! local hub under the publisher's trace. Duplicates (the same message
//! over two routes) are dropped by the topic's history, which knows every
//! offset it holds.

use std::sync::Arc;

use crate::local::Local;
use crate::message::{Draft, Epoch, Message, MessageId, NodeId, Stamp, TraceContext};
use crate::proto::v1::Envelope;
use crate::publish::validate;
use crate::telemetry::trace;

/// The highest offset another pod may send: 2^53, the largest integer every
/// JSON reader (JavaScript's numbers) holds exactly. A topic would take
/// 28,000 years at 10,000 messages a second to reach it.
pub const MAX_OFFSET: u64 = 1 << 53;

/// `offset` if it can be a message's place (1 to [`MAX_OFFSET`]).
pub fn valid_offset(offset: u64) -> Option<u64> {
    (1..=MAX_OFFSET).contains(&offset).then_some(offset)
}

/// The checks and the delivery, over one pod's [`Local`]. Cheap to clone.
#[derive(Clone)]
pub struct Intake {
    local: Local,
    max_message_bytes: usize,
}

impl Intake {
    /// Delivers into `local`, refusing `data` over `max_message_bytes` as a
    /// local publish would.
    pub fn new(local: Local, max_message_bytes: usize) -> Self {
        Self {
            local,
            max_message_bytes,
        }
    }

    /// The pod's ordering and delivery.
    pub fn local(&self) -> &Local {
        &self.local
    }

    /// A numbered message from `envelope`, or `None` (logged) if any part
    /// of it is invalid.
    pub fn numbered(&self, envelope: &Envelope) -> Option<Arc<Message>> {
        let parsed = self.draft(envelope).and_then(|draft| {
            let epoch = Epoch::from_u64(envelope.epoch)
                .ok_or_else(|| format!("bad epoch {}", envelope.epoch))?;
            let sequencer = envelope
                .sequencer
                .parse::<NodeId>()
                .map_err(|e| format!("bad sequencer {:?}: {e}", envelope.sequencer))?;
            if valid_offset(envelope.offset).is_none() {
                return Err(format!("offset {} out of range", envelope.offset));
            }
            let stamp = Stamp {
                epoch,
                offset: envelope.offset,
                sequencer,
            };
            Ok(Arc::new(Message::new(draft, stamp)))
        });
        parsed
            .map_err(|reason| tracing::warn!(%reason, "dropping an invalid message from a peer"))
            .ok()
    }

    /// A draft still to be numbered from `envelope`, with the trace it
    /// carries, or why it is invalid.
    pub fn forwarded(&self, envelope: &Envelope) -> Result<Draft, String> {
        let trace = (!envelope.trace_context.is_empty()).then(|| envelope.trace_context.clone());
        Ok(self.draft(envelope)?.with_trace(trace))
    }

    fn draft(&self, envelope: &Envelope) -> Result<Draft, String> {
        let id = envelope
            .id
            .parse::<MessageId>()
            .map_err(|e| format!("bad id {:?}: {e}", envelope.id))?;
        let origin = envelope
            .origin
            .parse::<NodeId>()
            .map_err(|e| format!("bad origin {:?}: {e}", envelope.origin))?;
        let (topic, data) = validate(&envelope.topic, &envelope.data, self.max_message_bytes)
            .map_err(|e| e.to_string())?;
        let key = (!envelope.idempotency_key.is_empty())
            .then(|| Arc::from(envelope.idempotency_key.as_str()));
        Ok(Draft::new(id, topic, data, origin).with_key(key))
    }

    /// Keeps and delivers `messages` (in order) here, in one span under
    /// `parent` when a publisher's trace came with them.
    pub fn deliver(&self, messages: Vec<Arc<Message>>, parent: Option<&TraceContext>) {
        let Some(first) = messages.first().cloned() else {
            return;
        };
        let count = messages.len();
        trace::in_deliver_span(parent, || {
            self.local.accept(messages);
            tracing::debug!(id = %first.id(), topic = %first.topic(), messages = count, "delivered messages from a peer");
        });
    }

    /// An empty run of arriving messages to fill and deliver.
    pub fn batch(&self) -> Batch<'_> {
        Batch {
            intake: self,
            together: Vec::new(),
        }
    }
}

/// Messages arriving in a row, delivered together: untraced ones in one
/// span, each traced one in its own. Invalid ones are dropped as they come.
pub struct Batch<'a> {
    intake: &'a Intake,
    together: Vec<Arc<Message>>,
}

impl Batch<'_> {
    /// Adds `envelope` (delivering what came before it first when it
    /// carries a trace of its own).
    pub fn push(&mut self, envelope: &Envelope) {
        let Some(message) = self.intake.numbered(envelope) else {
            return;
        };
        if envelope.trace_context.is_empty() {
            self.together.push(message);
            return;
        }
        self.flush();
        self.intake
            .deliver(vec![message], Some(&envelope.trace_context));
    }

    /// Delivers what the batch holds now.
    pub fn flush(&mut self) {
        self.intake
            .deliver(std::mem::take(&mut self.together), None);
    }
}
