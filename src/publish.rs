//! The one publish path. Both front doors (gRPC today, client publish over
//! WebSocket later) call [`Publisher`]: it validates once, gives the message
//! its id, delivers it to this pod's subscribers and hands it to the
//! [`Relay`] that carries it to the other pods.

use std::sync::Arc;

use bytes::Bytes;

use crate::hub::Hub;
use crate::message::{DataError, IdGenerator, Message, MessageId, NodeId, compact_json};
use crate::stats::{self, Counters};
use crate::telemetry::trace;
use crate::topic::{Topic, TopicError};

/// Carries locally published messages to the other pods of the cluster.
///
/// This is the seam for broadcast backends: the peer mesh implements it
/// today; a Redis or NATS adapter would too. `relay` must not wait: it is
/// called on the publish path.
pub trait Relay: Send + Sync + 'static {
    /// Hands `message` over for delivery on every other pod.
    fn relay(&self, message: &Arc<Message>);
}

/// Why a publish was refused. Nothing is delivered when it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PublishError {
    /// The topic name is invalid.
    #[error("invalid topic: {0}")]
    Topic(#[from] TopicError),
    /// The data is not one UTF-8 JSON document.
    #[error("invalid data: {0}")]
    Data(#[from] DataError),
    /// The data is larger than the configured limit.
    #[error("data is {size} bytes; the limit is {limit}")]
    TooLarge {
        /// The data's size.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// One message of a batch is invalid, so none of the batch was published.
    #[error("message {index} of the batch: {source}")]
    InBatch {
        /// The message's position in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        source: Box<PublishError>,
    },
}

/// Checks a topic and its data against the limits and returns them ready to
/// build a [`Message`]: the topic validated, the data compacted.
pub fn validate(
    topic: &str,
    data: &[u8],
    max_data_bytes: usize,
) -> Result<(Topic, Bytes), PublishError> {
    let topic = Topic::new(topic)?;
    if data.len() > max_data_bytes {
        return Err(PublishError::TooLarge {
            size: data.len(),
            limit: max_data_bytes,
        });
    }
    let data = compact_json(data)?;
    Ok((topic, Bytes::from(data)))
}

/// A handle to the publish path. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    hub: Hub,
    relay: Arc<dyn Relay>,
    node: NodeId,
    ids: IdGenerator,
    max_data_bytes: usize,
    counters: Arc<Counters>,
}

impl Publisher {
    /// A publish path for `node` that delivers into `hub` and hands messages
    /// to `relay`, refusing data over `max_data_bytes` and counting into
    /// `counters`.
    pub fn new(
        hub: Hub,
        relay: Arc<dyn Relay>,
        node: NodeId,
        max_data_bytes: usize,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                relay,
                node,
                ids: IdGenerator::new(node),
                max_data_bytes,
                counters,
            }),
        }
    }

    /// Publishes one message and returns its id.
    pub fn publish(&self, topic: &str, data: &[u8]) -> Result<MessageId, PublishError> {
        let valid = self.counted(validate(topic, data, self.inner.max_data_bytes))?;
        Ok(self.dispatch(vec![valid])[0])
    }

    /// Publishes several messages in order. The batch is validated as a
    /// whole first: if any message is invalid, none is published.
    pub fn publish_batch<'a, I>(&self, messages: I) -> Result<Vec<MessageId>, PublishError>
    where
        I: IntoIterator<Item = (&'a str, &'a [u8])>,
    {
        let valid = messages
            .into_iter()
            .enumerate()
            .map(|(index, (topic, data))| {
                validate(topic, data, self.inner.max_data_bytes).map_err(|source| {
                    PublishError::InBatch {
                        index,
                        source: Box::new(source),
                    }
                })
            })
            .collect::<Result<Vec<_>, _>>();
        Ok(self.dispatch(self.counted(valid)?))
    }

    fn counted<T>(&self, result: Result<T, PublishError>) -> Result<T, PublishError> {
        if result.is_err() {
            stats::add(&self.inner.counters.publish_refused, 1);
        }
        result
    }

    /// Sends valid messages to the peers, then to this pod's subscribers
    /// (so the hop to other pods overlaps with local writes), and returns
    /// their ids.
    fn dispatch(&self, valid: Vec<(Topic, Bytes)>) -> Vec<MessageId> {
        let inner = &self.inner;
        let messages: Vec<Arc<Message>> = valid
            .into_iter()
            .map(|(topic, data)| {
                let message = Message::new(inner.ids.next_id(), topic, data, inner.node);
                Arc::new(message.with_trace(trace::inject_current()))
            })
            .collect();
        for message in &messages {
            inner.relay.relay(message);
        }
        trace::in_deliver_span(None, || inner.hub.deliver_all(&messages));
        stats::add(&inner.counters.published, messages.len() as u64);
        messages.iter().map(|m| m.id()).collect()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    #[derive(Default)]
    struct Recorder(Mutex<Vec<Arc<Message>>>);

    impl Relay for Recorder {
        fn relay(&self, message: &Arc<Message>) {
            self.0.lock().expect("not poisoned").push(message.clone());
        }
    }

    fn publisher(limit: usize) -> (Publisher, Hub, Arc<Recorder>) {
        let hub = Hub::new();
        let recorder = Arc::new(Recorder::default());
        let counters = Arc::new(Counters::default());
        let publisher = Publisher::new(
            hub.clone(),
            recorder.clone(),
            NodeId::random(),
            limit,
            counters,
        );
        (publisher, hub, recorder)
    }

    #[test]
    fn a_publish_is_delivered_locally_and_relayed_once() {
        let (publisher, hub, recorder) = publisher(1024);
        let (mut member, mut mailbox) = hub.join(8, 8);
        member
            .subscribe(Topic::new("t").expect("valid"))
            .expect("under limit");
        let id = publisher
            .publish("t", b" { \"k\" : 1 } ")
            .expect("valid publish");
        let relayed = recorder.0.lock().expect("not poisoned").clone();
        assert_eq!(relayed.len(), 1);
        assert_eq!(relayed[0].id(), id);
        assert_eq!(&relayed[0].data()[..], br#"{"k":1}"#);
        assert!(
            mailbox
                .try_recv()
                .is_some_and(|m| Arc::ptr_eq(&m, &relayed[0]))
        );
    }

    #[test]
    fn data_over_the_limit_is_refused_before_parsing() {
        let (publisher, _, recorder) = publisher(4);
        assert_eq!(
            publisher.publish("t", b"12345"),
            Err(PublishError::TooLarge { size: 5, limit: 4 })
        );
        assert!(recorder.0.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn one_bad_message_refuses_the_whole_batch() {
        let (publisher, _, recorder) = publisher(1024);
        let batch: [(&str, &[u8]); 3] = [("a", b"1"), ("b c", b"2"), ("d", b"3")];
        let err = publisher
            .publish_batch(batch)
            .expect_err("second topic is invalid");
        assert!(
            matches!(err, PublishError::InBatch { index: 1, .. }),
            "{err:?}"
        );
        assert!(recorder.0.lock().expect("not poisoned").is_empty());
    }

    #[test]
    fn a_batch_is_published_in_order() {
        let (publisher, _, recorder) = publisher(1024);
        let batch: [(&str, &[u8]); 3] = [("a", b"1"), ("b", b"2"), ("a", b"3")];
        let ids = publisher.publish_batch(batch).expect("valid batch");
        let relayed: Vec<_> = recorder
            .0
            .lock()
            .expect("not poisoned")
            .iter()
            .map(|m| m.id())
            .collect();
        assert_eq!(relayed, ids);
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
