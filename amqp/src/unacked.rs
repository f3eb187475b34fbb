//! [`Unacked`]: the inbox deliveries one consumer still owes the broker an
//! acknowledgement for, and which acknowledged seq releases each.
//!
//! Core's acknowledgements are seqs; the broker wants delivery tags, which
//! are only valid on the channel that received them and must never be
//! acknowledged twice (the broker closes the channel with
//! PRECONDITION_FAILED). One `Unacked` lives in the task that owns one inbox
//! channel, so a tag can only ever be acknowledged there; a seq it does not
//! know (shown on an older connection, a message of a batch but its last,
//! an acknowledgement repeated) releases nothing.
//!
//! A delivery waits for the seq of its last message passed on to the
//! consumer (a `ChatMessageBatch` is acknowledged once, with that message).
//! The sink acknowledges a repeat itself, under the same seq as the first
//! copy, which may still wait here for the consumer: the same message put
//! twice in the queue by a server that published it again. So each repeat
//! is counted, and that many acknowledgements of its seq release nothing;
//! whichever of them comes first, the waiting delivery is released only
//! once the consumer's own acknowledgement was given.

use std::collections::HashMap;

#[derive(Debug, Default)]
pub(crate) struct Unacked {
    /// Delivery tag of each delivery waiting for the consumer, by the seq
    /// that releases it. Bounded by the prefetch (unacknowledged deliveries).
    waiting: HashMap<u64, u64>,
    /// How many acknowledgements of each seq the sink gave for repeats and
    /// have not come off the ack stream yet.
    repeats: HashMap<u64, u32>,
}

impl Unacked {
    /// The delivery `tag` is released by the acknowledgement of `seq`.
    pub(crate) fn wait_for(&mut self, seq: u64, tag: u64) {
        if let Some(old) = self.waiting.insert(seq, tag) {
            // The sink passes each seq on once, so this cannot happen; the
            // old delivery comes again after a reconnection if it does.
            tracing::warn!(
                seq,
                old_tag = old,
                tag,
                "two inbox deliveries wait for the same seq; the first is left unacknowledged"
            );
        }
    }

    /// The sink dropped a repeat of `seq` and acknowledged it itself.
    pub(crate) fn repeat(&mut self, seq: u64) {
        *self.repeats.entry(seq).or_default() += 1;
    }

    /// `seq` came off the ack stream: the delivery tag to acknowledge now,
    /// if it releases one.
    pub(crate) fn acked(&mut self, seq: u64) -> Option<u64> {
        if let Some(n) = self.repeats.get_mut(&seq) {
            *n -= 1;
            if *n == 0 {
                self.repeats.remove(&seq);
            }
            return None;
        }
        self.waiting.remove(&seq)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seq_releases_its_delivery_once() {
        let mut u = Unacked::default();
        u.wait_for(3, 7);
        assert_eq!(u.acked(1), None, "a message of the batch but its last");
        assert_eq!(u.acked(3), Some(7));
        assert_eq!(u.acked(3), None, "never the same tag twice");
    }

    #[test]
    fn seqs_of_an_older_connection_release_nothing() {
        let mut u = Unacked::default();
        u.wait_for(9, 1);
        assert_eq!(u.acked(4), None);
        assert_eq!(u.acked(9), Some(1));
    }

    #[test]
    fn the_sinks_ack_of_a_repeat_does_not_release_the_first_copy() {
        // seq 5 waits for the consumer; a second copy of it came and the
        // sink acknowledged that one at once.
        let mut u = Unacked::default();
        u.wait_for(5, 1);
        u.repeat(5);
        assert_eq!(u.acked(5), None, "the sink's acknowledgement");
        assert_eq!(u.acked(5), Some(1), "the consumer's");

        // The consumer's acknowledgement may come off the stream first.
        u.wait_for(6, 2);
        u.repeat(6);
        assert_eq!(u.acked(6), None);
        assert_eq!(u.acked(6), Some(2));
        assert_eq!(u.acked(6), None);
    }
}
