//! A bounded memory of recently delivered message ids, so that no pod
//! delivers the same message twice even if it reaches it over two streams
//! (a pod reachable under two addresses, a stream replaced mid-flight).

use std::collections::{HashSet, VecDeque};

use crate::message::MessageId;

/// How many recent ids are remembered. Duplicates can only arrive within a
/// short span of the original (no peer forwards or retries), so this covers
/// seconds of traffic at high rates for about 2 MiB.
pub const WINDOW: usize = 65_536;

/// The most recent [`WINDOW`] ids seen.
#[derive(Debug, Default)]
pub struct Dedup {
    seen: HashSet<MessageId>,
    order: VecDeque<MessageId>,
}

impl Dedup {
    /// Records `id`; false if it was already among the recent ids.
    pub fn first_sighting(&mut self, id: MessageId) -> bool {
        if !self.seen.insert(id) {
            return false;
        }
        self.order.push_back(id);
        if self.order.len() > WINDOW
            && let Some(oldest) = self.order.pop_front()
        {
            self.seen.remove(&oldest);
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::message::{IdGenerator, NodeId};

    #[test]
    fn a_repeated_id_is_caught_and_old_ids_are_forgotten() {
        let ids = IdGenerator::new(NodeId::random());
        let mut dedup = Dedup::default();
        let first = ids.next_id();
        assert!(dedup.first_sighting(first));
        assert!(!dedup.first_sighting(first));
        for _ in 0..WINDOW {
            assert!(dedup.first_sighting(ids.next_id()));
        }
        assert!(dedup.first_sighting(first), "forgotten after a full window");
        assert!(dedup.seen.len() <= WINDOW);
    }
}
