//! One recipient's outbox: the committed messages that have not reached
//! their next hop yet, with the two cursors that every transport drives.
//!
//! ```text
//!   acked          handed                     committed
//!     |  handed out,  |  waiting to be handed   |
//!     |  not acked    |                         |
//! ----+---------------+-------------------------+----> seq
//! ```
//!
//! * `take` hands out what lies after `handed` (a gRPC session writes it to
//!   the client's stream; the AMQP forwarder publishes it to the client's
//!   queue) and moves `handed`.
//! * `ack` is cumulative: everything up to a seq reached the next hop (the
//!   client showed it; the broker confirmed it). It frees those messages
//!   and wakes whoever waits for one of them to get there.
//! * `rewind` hands again from a seq on: a publish the broker refused, a
//!   new connection, a client that reconnects after some seq.
//!
//! What the transport's acknowledgement token is (a gRPC seq, an AMQP
//! delivery tag) is the adapter's business: core only sees seqs.

use std::collections::VecDeque;
use std::sync::Arc;

use tokio::sync::{Notify, oneshot};

use crate::message::Message;

/// What an undelivered message held in memory is counted as, besides its
/// text (the `Message`, its `Arc` and its outbox slot).
pub(crate) const MESSAGE_OVERHEAD: usize = 128;

/// Where a message is in `log.txt`, and the seq it got: 24 bytes per
/// message, instead of the whole message in memory.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Sent {
    pub offset: u64,
    pub seq: u64,
    pub len: u32,
}

impl Sent {
    pub fn new(offset: u64, len: usize, seq: u64) -> Self {
        Self {
            offset,
            seq,
            // A log line is bounded by the text limit, far below 4 GiB.
            len: u32::try_from(len).unwrap_or(u32::MAX),
        }
    }
}

/// An undelivered message: in memory, or only in `log.txt` (spilled, when
/// the outboxes already hold `--mailbox-memory` bytes).
#[derive(Clone, Debug)]
pub(crate) enum Pending {
    Loaded(Arc<Message>),
    Spilled(Sent),
}

impl Pending {
    pub fn seq(&self) -> u64 {
        match self {
            Self::Loaded(m) => m.seq,
            Self::Spilled(s) => s.seq,
        }
    }

    /// Memory it accounts for in the server's mailbox budget.
    pub fn bytes(&self) -> usize {
        match self {
            Self::Loaded(m) => message_bytes(m),
            Self::Spilled(_) => 0,
        }
    }
}

pub(crate) fn message_bytes(m: &Message) -> usize {
    m.text.len() + MESSAGE_OVERHEAD
}

/// What a cumulative [`Outbox::ack`] released.
#[derive(Debug, Default, PartialEq, Eq)]
pub(crate) struct Released {
    /// Messages that left the outbox.
    pub messages: usize,
    /// Memory they held (see [`Pending::bytes`]).
    pub bytes: usize,
}

#[derive(Default)]
pub(crate) struct Outbox {
    /// Everything up to here reached the next hop.
    acked: u64,
    /// Everything up to here was handed to the transport (`>= acked`).
    handed: u64,
    /// Committed messages above `acked`, in seq order.
    mailbox: VecDeque<Pending>,
    /// Who waits for a seq to be acknowledged, in seq order.
    waiters: VecDeque<(u64, oneshot::Sender<()>)>,
    /// Wakes whoever hands messages out when the outbox grows.
    notify: Arc<Notify>,
}

impl Outbox {
    pub fn acked(&self) -> u64 {
        self.acked
    }

    /// Sets the cursor read back from the journal (before any message).
    pub fn restore_acked(&mut self, seq: u64) {
        self.acked = self.acked.max(seq);
        self.handed = self.acked;
    }

    pub fn notify(&self) -> &Arc<Notify> {
        &self.notify
    }

    pub fn len(&self) -> usize {
        self.mailbox.len()
    }

    pub fn iter(&self) -> impl Iterator<Item = &Pending> {
        self.mailbox.iter()
    }

    /// Highest committed seq (the cursor, if nothing waits).
    pub fn committed_seq(&self) -> u64 {
        self.mailbox.back().map_or(self.acked, Pending::seq)
    }

    /// Whether some committed message was not handed out yet.
    pub fn has_unhanded(&self) -> bool {
        self.committed_seq() > self.handed
    }

    /// Queues a committed message (seqs arrive in order) and wakes the
    /// transport.
    pub fn push(&mut self, pending: Pending) {
        self.mailbox.push_back(pending);
        self.notify.notify_one();
    }

    /// Up to `max` messages after `handed`, moving `handed` past them.
    pub fn take(&mut self, max: usize) -> Vec<Pending> {
        let start = self.mailbox.front().map_or(0, |first| {
            (self.handed + 1).saturating_sub(first.seq()) as usize
        });
        let batch: Vec<Pending> = self
            .mailbox
            .range(start.min(self.mailbox.len())..)
            .take(max)
            .cloned()
            .collect();
        if let Some(last) = batch.last() {
            self.handed = last.seq();
        }
        batch
    }

    /// Hands out again everything after `after` (never below the
    /// acknowledged cursor).
    pub fn rewind(&mut self, after: u64) {
        self.handed = after.max(self.acked);
        if self.has_unhanded() {
            self.notify.notify_one();
        }
    }

    /// Everything up to `up_to` (capped at what is committed) reached the
    /// next hop. Returns what left the outbox; `None` if the cursor did
    /// not move.
    pub fn ack(&mut self, up_to: u64) -> Option<Released> {
        let up_to = up_to.min(self.committed_seq());
        if up_to <= self.acked {
            return None;
        }
        self.acked = up_to;
        self.handed = self.handed.max(up_to);
        let mut released = Released::default();
        while self.mailbox.front().is_some_and(|m| m.seq() <= up_to) {
            released.bytes += self.mailbox.pop_front().map_or(0, |p| p.bytes());
            released.messages += 1;
        }
        if self.mailbox.is_empty() && self.mailbox.capacity() > 1024 {
            // A drained backlog gives its memory back.
            self.mailbox = VecDeque::new();
        }
        while self.waiters.front().is_some_and(|(seq, _)| *seq <= up_to) {
            if let Some((_, done)) = self.waiters.pop_front() {
                let _ = done.send(());
            }
        }
        Some(released)
    }

    /// Resolves once `seq` is acknowledged (at once if it is already).
    pub fn wait_acked(&mut self, seq: u64) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        if seq <= self.acked {
            let _ = done.send(());
        } else {
            // Senders wait in about seq order; keep the queue sorted.
            let at = self.waiters.partition_point(|(s, _)| *s <= seq);
            self.waiters.insert(at, (seq, done));
        }
        rx
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::id::{ClientId, MessageId};

    fn message(seq: u64) -> Pending {
        Pending::Loaded(Arc::new(Message {
            id: MessageId::generate(),
            from: ClientId::parse("alice").unwrap(),
            to: ClientId::parse("bob").unwrap(),
            text: "hi".into(),
            timestamp_ms: 0,
            seq,
        }))
    }

    fn seqs(batch: &[Pending]) -> Vec<u64> {
        batch.iter().map(Pending::seq).collect()
    }

    fn outbox(n: u64) -> Outbox {
        let mut o = Outbox::default();
        for seq in 1..=n {
            o.push(message(seq));
        }
        o
    }

    #[test]
    fn take_hands_out_each_message_once_in_order() {
        let mut o = outbox(5);
        assert_eq!(seqs(&o.take(2)), [1, 2]);
        assert_eq!(seqs(&o.take(10)), [3, 4, 5]);
        assert!(o.take(10).is_empty());
        assert!(!o.has_unhanded());
        o.push(message(6));
        assert!(o.has_unhanded());
        assert_eq!(seqs(&o.take(10)), [6]);
    }

    #[test]
    fn a_cumulative_ack_frees_everything_up_to_it() {
        let mut o = outbox(5);
        o.take(10);
        let released = o.ack(3).unwrap();
        assert_eq!(released.messages, 3);
        assert_eq!(released.bytes, 3 * (2 + MESSAGE_OVERHEAD));
        assert_eq!(o.acked(), 3);
        assert_eq!(seqs(&o.iter().cloned().collect::<Vec<_>>()), [4, 5]);
        assert_eq!(o.ack(2), None, "a cursor never goes back");
        assert_eq!(
            o.ack(99).unwrap().messages,
            2,
            "capped at what is committed"
        );
        assert_eq!(o.acked(), 5);
    }

    #[test]
    fn rewind_hands_out_again_but_never_below_the_ack() {
        let mut o = outbox(5);
        o.take(10);
        o.ack(2);
        o.rewind(3);
        assert_eq!(seqs(&o.take(10)), [4, 5]);
        o.rewind(0);
        assert_eq!(seqs(&o.take(10)), [3, 4, 5]);
    }

    #[test]
    fn waiters_resolve_when_their_seq_is_acked() {
        let mut o = outbox(4);
        let mut w3 = o.wait_acked(3);
        let mut w1 = o.wait_acked(1);
        o.ack(2);
        assert!(w1.try_recv().is_ok());
        assert!(w3.try_recv().is_err(), "seq 3 is not acked yet");
        o.ack(3);
        assert!(w3.try_recv().is_ok());
        assert!(o.wait_acked(3).try_recv().is_ok(), "already acked");
    }
}
