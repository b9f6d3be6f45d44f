//! The one publish path. Both front doors (gRPC, and client publish over
//! WebSocket) call [`Publisher`]: it validates once, gives the message its
//! id, and has it numbered by its topic's sequencer: here, through
//! [`Local`] (which keeps it, delivers it to this pod's subscribers and
//! hands it to the [`Relay`] for the other pods), or on the pod the relay
//! names, to which the draft is forwarded and from which the numbered
//! message comes back like any other.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use crate::local::{Local, Receipt};
use crate::message::{DataError, Draft, IdGenerator, Message, NodeId, compact_json};
use crate::stats::{self, Counters};
use crate::telemetry::trace;
use crate::topic::{Topic, TopicError};

/// How long a publish forwarded to its topic's sequencer waits for the
/// numbered message to come back before it is refused as unavailable.
pub const FORWARD_TIMEOUT: Duration = Duration::from_secs(5);

/// Longest idempotency key accepted, in bytes.
pub const MAX_KEY_BYTES: usize = 128;

/// Which pod numbers a topic's next message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// This pod.
    Here,
    /// Another pod: forward the draft to it.
    To(NodeId),
    /// A store all pods share (Redis): submit the draft to it.
    Store,
    /// No pod can number it now (this one has not learnt the cluster's
    /// topics yet, and no peer is reachable): refuse, to be retried.
    Unavailable,
}

/// Carries messages between this pod and the others: the seam for
/// broadcast backends (the peer mesh implements it).
pub trait Relay: Send + Sync + 'static {
    /// Hands `message`, numbered here, over for delivery on every other
    /// pod. Called under the topic's lock: must not wait.
    fn relay(&self, message: &Arc<Message>);

    /// Which pod numbers `topic` now.
    fn route(&self, topic: &Topic) -> Route;

    /// Sends `draft` to `to`, its topic's sequencer, without waiting.
    /// False if there is no stream to it.
    fn forward(&self, to: NodeId, draft: Draft) -> bool;

    /// Hands `draft` to the shared store that numbers its topic, without
    /// waiting. False if the store cannot take it now.
    fn submit(&self, draft: Draft) -> bool;
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
    /// The idempotency key is too long.
    #[error("the idempotency key is {0} bytes; the limit is {MAX_KEY_BYTES}")]
    KeyTooLong(usize),
    /// One message of a batch is invalid, so none of the batch was published.
    #[error("message {index} of the batch: {source}")]
    InBatch {
        /// The message's position in the batch, from 0.
        index: usize,
        /// What is wrong with it.
        source: Box<PublishError>,
    },
    /// The topic's sequencer (a pod, or Redis) did not answer in time (it
    /// may have gone) or could not be reached: the message may or may not
    /// have been published; retry with the same idempotency key to be sure
    /// it is published once.
    #[error(
        "what orders topic {0} (its sequencer pod, or Redis) did not confirm the message; retry"
    )]
    Unconfirmed(Topic),
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

/// One message to publish.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    /// The topic.
    pub topic: &'a str,
    /// The JSON document.
    pub data: &'a [u8],
    /// The publisher's idempotency key; empty for none.
    pub key: &'a str,
}

impl<'a> Request<'a> {
    /// `data` for `topic`, without a key.
    pub fn new(topic: &'a str, data: &'a [u8]) -> Self {
        Self {
            topic,
            data,
            key: "",
        }
    }
}

/// A handle to the publish path. Cheap to clone.
#[derive(Clone)]
pub struct Publisher {
    inner: Arc<Inner>,
}

struct Inner {
    local: Local,
    relay: Arc<dyn Relay>,
    ids: IdGenerator,
    max_data_bytes: usize,
    counters: Arc<Counters>,
}

impl Publisher {
    /// A publish path that orders and delivers through `local` and
    /// reaches the other pods through `relay`, refusing data over
    /// `max_data_bytes` and counting into `counters`.
    pub fn new(
        local: Local,
        relay: Arc<dyn Relay>,
        max_data_bytes: usize,
        counters: Arc<Counters>,
    ) -> Self {
        Self {
            inner: Arc::new(Inner {
                ids: IdGenerator::new(local.node()),
                local,
                relay,
                max_data_bytes,
                counters,
            }),
        }
    }

    /// Publishes one message and returns where it landed.
    pub async fn publish(&self, request: Request<'_>) -> Result<Receipt, PublishError> {
        let draft = self.counted(self.draft(request))?;
        let mut receipts = self.dispatch(vec![draft]).await?;
        Ok(receipts.remove(0))
    }

    /// Publishes several messages in order. The batch is validated as a
    /// whole first: if any message is invalid, none is published.
    pub async fn publish_batch<'a, I>(&self, requests: I) -> Result<Vec<Receipt>, PublishError>
    where
        I: IntoIterator<Item = Request<'a>>,
    {
        let drafts = requests
            .into_iter()
            .enumerate()
            .map(|(index, request)| {
                self.draft(request).map_err(|source| PublishError::InBatch {
                    index,
                    source: Box::new(source),
                })
            })
            .collect::<Result<Vec<_>, _>>();
        self.dispatch(self.counted(drafts)?).await
    }

    fn draft(&self, request: Request<'_>) -> Result<Draft, PublishError> {
        let (topic, data) = validate(request.topic, request.data, self.inner.max_data_bytes)?;
        if request.key.len() > MAX_KEY_BYTES {
            return Err(PublishError::KeyTooLong(request.key.len()));
        }
        let key = (!request.key.is_empty()).then(|| Arc::from(request.key));
        let draft = Draft::new(
            self.inner.ids.next_id(),
            topic,
            data,
            self.inner.local.node(),
        );
        Ok(draft.with_key(key).with_trace(trace::inject_current()))
    }

    fn counted<T>(&self, result: Result<T, PublishError>) -> Result<T, PublishError> {
        if result.is_err() {
            stats::add(&self.inner.counters.publish_refused, 1);
        }
        result
    }

    /// Forwards `draft` (the `index`th of its call) to `node`, or submits
    /// it to the shared store when `node` is `None`, and returns what to
    /// wait on for its receipt.
    fn forward(
        &self,
        node: Option<NodeId>,
        index: usize,
        draft: Draft,
        guard: &mut Waiting<'_>,
    ) -> Result<(usize, Topic, tokio::sync::oneshot::Receiver<Receipt>), PublishError> {
        let inner = &self.inner;
        let (id, topic) = (draft.id, draft.topic.clone());
        let wait = inner.local.expect(id);
        guard.ids.push(id);
        let sent = match node {
            Some(node) => inner.relay.forward(node, draft),
            None => inner.relay.submit(draft),
        };
        if !sent {
            return Err(PublishError::Unconfirmed(topic));
        }
        Ok((index, topic, wait))
    }

    /// Numbers the drafts whose topics this pod orders (they reach the
    /// peers, then this pod's subscribers, so the hop to other pods
    /// overlaps with local writes), forwards the others to their
    /// sequencers and waits for them to come back numbered. Receipts are in
    /// request order.
    async fn dispatch(&self, drafts: Vec<Draft>) -> Result<Vec<Receipt>, PublishError> {
        let inner = &self.inner;
        let count = drafts.len();
        let mut receipts: Vec<Option<Receipt>> = vec![None; count];
        let mut here = Vec::new();
        let mut waits = Vec::new();
        // Whatever ends this call (an error, the caller going away), no
        // forwarded publish stays registered as waiting.
        let mut guard = Waiting {
            local: &inner.local,
            ids: Vec::new(),
        };
        for (index, draft) in drafts.into_iter().enumerate() {
            if let Some(key) = &draft.key
                && let Some(earlier) = inner.local.receipt_for(&draft.topic, key)
            {
                receipts[index] = Some(earlier);
                continue;
            }
            match inner.relay.route(&draft.topic) {
                Route::Here => here.push((index, draft)),
                Route::To(node) => {
                    waits.push(self.forward(Some(node), index, draft, &mut guard)?)
                }
                Route::Store => waits.push(self.forward(None, index, draft, &mut guard)?),
                Route::Unavailable => return Err(PublishError::Unconfirmed(draft.topic)),
            }
        }
        if !here.is_empty() {
            let (indices, drafts): (Vec<_>, Vec<_>) = here.into_iter().unzip();
            let relay = &inner.relay;
            let numbered = trace::in_deliver_span(None, || {
                inner
                    .local
                    .sequence(drafts, &|message| relay.relay(message))
            });
            for (index, numbered) in indices.into_iter().zip(numbered) {
                match numbered {
                    Ok(receipt) => receipts[index] = Some(receipt),
                    // Handed on meanwhile: the successor numbers it.
                    Err(draft) => match inner.relay.route(&draft.topic) {
                        Route::To(node) => {
                            waits.push(self.forward(Some(node), index, draft, &mut guard)?)
                        }
                        Route::Here | Route::Store | Route::Unavailable => {
                            return Err(PublishError::Unconfirmed(draft.topic));
                        }
                    },
                }
            }
        }
        let deadline = tokio::time::Instant::now() + FORWARD_TIMEOUT;
        for (index, topic, wait) in waits {
            match tokio::time::timeout_at(deadline, wait).await {
                Ok(Ok(receipt)) => receipts[index] = Some(receipt),
                _ => return Err(PublishError::Unconfirmed(topic)),
            }
        }
        stats::add(&inner.counters.published, count as u64);
        Ok(receipts.into_iter().flatten().collect())
    }
}

/// Forwarded publishes of one call still registered as waiting; dropping
/// it forgets them.
struct Waiting<'a> {
    local: &'a Local,
    ids: Vec<crate::message::MessageId>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        for id in self.ids.drain(..) {
            self.local.forget(id);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;
    use crate::history::History;
    use crate::hub::Hub;

    /// A relay that records what it relays and routes as told: every
    /// topic here, or every topic to one other pod (whose forwards it
    /// records and never answers).
    #[derive(Default)]
    struct Recorder {
        relayed: Mutex<Vec<Arc<Message>>>,
        forwarded: Mutex<Vec<Draft>>,
        elsewhere: Option<NodeId>,
    }

    impl Relay for Recorder {
        fn relay(&self, message: &Arc<Message>) {
            self.relayed.lock().expect("lock").push(message.clone());
        }

        fn route(&self, _: &Topic) -> Route {
            self.elsewhere.map_or(Route::Here, Route::To)
        }

        fn forward(&self, _: NodeId, draft: Draft) -> bool {
            self.forwarded.lock().expect("lock").push(draft);
            true
        }

        fn submit(&self, _: Draft) -> bool {
            false
        }
    }

    fn publisher(limit: usize, recorder: Recorder) -> (Publisher, Local, Arc<Recorder>) {
        let local = Local::new(
            Hub::new(),
            History::new(Default::default()),
            NodeId::random(),
        );
        let recorder = Arc::new(recorder);
        let counters = Arc::new(Counters::default());
        let publisher = Publisher::new(local.clone(), recorder.clone(), limit, counters);
        (publisher, local, recorder)
    }

    fn relayed(recorder: &Recorder) -> Vec<Arc<Message>> {
        recorder.relayed.lock().expect("lock").clone()
    }

    #[tokio::test]
    async fn a_publish_is_numbered_delivered_locally_and_relayed_once() {
        let (publisher, local, recorder) = publisher(1024, Recorder::default());
        let (mut member, mut mailbox) = local.hub().join(8, 8);
        member
            .subscribe(Topic::new("t").expect("valid"))
            .expect("under limit");
        let receipt = publisher
            .publish(Request::new("t", b" { \"k\" : 1 } "))
            .await
            .expect("valid publish");
        let relayed = relayed(&recorder);
        assert_eq!(relayed.len(), 1);
        assert_eq!(relayed[0].id(), receipt.id);
        assert_eq!(receipt.stamp.offset, 1);
        assert_eq!(&relayed[0].data()[..], br#"{"k":1}"#);
        assert!(
            mailbox
                .try_recv()
                .and_then(|m| m.message().cloned())
                .is_some_and(|m| Arc::ptr_eq(&m, &relayed[0]))
        );
    }

    #[tokio::test]
    async fn data_over_the_limit_is_refused_before_parsing() {
        let (publisher, _, recorder) = publisher(4, Recorder::default());
        assert_eq!(
            publisher.publish(Request::new("t", b"12345")).await,
            Err(PublishError::TooLarge { size: 5, limit: 4 })
        );
        assert!(relayed(&recorder).is_empty());
    }

    #[tokio::test]
    async fn one_bad_message_refuses_the_whole_batch() {
        let (publisher, _, recorder) = publisher(1024, Recorder::default());
        let batch = [("a", b"1"), ("b c", b"2"), ("d", b"3")].map(|(t, d)| Request::new(t, d));
        let err = publisher
            .publish_batch(batch)
            .await
            .expect_err("second topic is invalid");
        assert!(
            matches!(err, PublishError::InBatch { index: 1, .. }),
            "{err:?}"
        );
        assert!(relayed(&recorder).is_empty());
    }

    #[tokio::test]
    async fn a_batch_is_published_in_order_with_offsets_per_topic() {
        let (publisher, _, recorder) = publisher(1024, Recorder::default());
        let batch = [("a", b"1"), ("b", b"2"), ("a", b"3")].map(|(t, d)| Request::new(t, d));
        let receipts = publisher.publish_batch(batch).await.expect("valid batch");
        let ids: Vec<_> = relayed(&recorder).iter().map(|m| m.id()).collect();
        assert_eq!(ids, receipts.iter().map(|r| r.id).collect::<Vec<_>>());
        let offsets: Vec<_> = receipts.iter().map(|r| r.stamp.offset).collect();
        assert_eq!(offsets, [1, 1, 2]);
        assert_eq!(receipts[0].stamp.epoch, receipts[2].stamp.epoch);
    }

    #[tokio::test]
    async fn a_retry_with_the_same_key_gets_the_first_receipt_and_is_not_published_again() {
        let (publisher, _, recorder) = publisher(1024, Recorder::default());
        let keyed = Request {
            key: "order-17",
            ..Request::new("t", b"1")
        };
        let first = publisher.publish(keyed).await.expect("published");
        let again = publisher.publish(keyed).await.expect("answered");
        assert_eq!(first, again);
        assert_eq!(relayed(&recorder).len(), 1);
        let other_topic = Request {
            topic: "u",
            ..keyed
        };
        assert_ne!(
            publisher.publish(other_topic).await.expect("published").id,
            first.id
        );
        let long = "k".repeat(MAX_KEY_BYTES + 1);
        assert_eq!(
            publisher
                .publish(Request {
                    key: &long,
                    ..keyed
                })
                .await,
            Err(PublishError::KeyTooLong(MAX_KEY_BYTES + 1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_forward_that_never_comes_back_numbered_is_unconfirmed() {
        let elsewhere = NodeId::random();
        let recorder = Recorder {
            elsewhere: Some(elsewhere),
            ..Recorder::default()
        };
        let (publisher, _, recorder) = publisher(1024, recorder);
        let result = publisher.publish(Request::new("t", b"1")).await;
        assert!(
            matches!(result, Err(PublishError::Unconfirmed(_))),
            "{result:?}"
        );
        assert_eq!(recorder.forwarded.lock().expect("lock").len(), 1);
        assert!(relayed(&recorder).is_empty(), "nothing numbered here");
    }

    #[tokio::test]
    async fn a_forward_is_answered_when_its_message_comes_back_numbered() {
        let elsewhere = NodeId::random();
        let recorder = Recorder {
            elsewhere: Some(elsewhere),
            ..Recorder::default()
        };
        let (publisher, local, recorder) = publisher(1024, recorder);
        let publishing = tokio::spawn({
            let publisher = publisher.clone();
            async move { publisher.publish(Request::new("t", b"1")).await }
        });
        let draft = loop {
            if let Some(draft) = recorder.forwarded.lock().expect("lock").pop() {
                break draft;
            }
            tokio::task::yield_now().await;
        };
        let stamp = crate::message::Stamp {
            epoch: crate::message::Epoch::new_for(&draft.topic),
            offset: 1,
            sequencer: elsewhere,
        };
        local.accept([Arc::new(Message::new(draft.clone(), stamp))]);
        let receipt = publishing.await.expect("joined").expect("confirmed");
        assert_eq!((receipt.id, receipt.stamp), (draft.id, stamp));
    }
}
