//! The one client abstraction: [`ChatClient`].
//!
//! `grpc-client`, `amqp-client` and `loadgen` all drive this trait, so the
//! CLI is written once and the load generator measures exactly the code that
//! users run. Incoming messages arrive on an [`Incoming`] stream that the
//! adapter keeps alive across reconnections; [`IncomingSink`] is the
//! adapter's end of it and drops repeats by sequence number, so a message
//! re-sent after a reconnect or a server restart is never shown twice.
//! Acknowledgements go back to the adapter as seqs ([`AckStream`]); what a
//! seq stands for on the wire (a cumulative ack, a delivery tag) is the
//! adapter's business.

use std::future::Future;

use tokio::sync::{mpsc, oneshot};

use crate::error::ErrorCode;
use crate::id::{ClientId, MessageId};
use crate::identity::Secret;
use crate::message::{ClientInfo, Message};

/// How many incoming events may wait for the consumer before the adapter
/// stops reading from the wire (back-pressure instead of unbounded memory).
pub const INCOMING_CAPACITY: usize = 1024;

/// A chat client over some transport.
pub trait ChatClient: Clone + Send + Sync + 'static {
    /// Where to connect (a gRPC URL, an AMQP URL, ...).
    type Config: Clone + Send + Sync + std::fmt::Debug + 'static;

    /// Opens the transport for client `id`, which proves itself with
    /// `secret` on every request (the first registration claims the ID with
    /// it). It neither registers nor goes online (one-shot commands need
    /// neither). Fails with [`ClientError::Unavailable`] when the server or
    /// broker cannot be reached.
    fn connect(
        config: &Self::Config,
        id: ClientId,
        secret: Secret,
    ) -> impl Future<Output = Result<Self, ClientError>> + Send;

    /// This client's ID.
    fn id(&self) -> &ClientId;

    /// Registers the ID without going online (one-shot commands), claiming
    /// it with this client's secret if it is new. Returns whether it was
    /// new. Fails with ALREADY_EXISTS while the ID is online, and with
    /// UNAUTHENTICATED when it was claimed with another secret.
    fn register(&self) -> impl Future<Output = Result<bool, ClientError>> + Send;

    /// Registers the ID (or resumes it), claims it online and starts pushing
    /// incoming messages. The returned stream survives reconnections and
    /// ends when the client is dropped or the ID is taken over.
    fn join(&self) -> impl Future<Output = Result<Incoming, ClientError>> + Send {
        self.join_after(0)
    }

    /// [`Self::join`], never passing on a message at or below `after_seq`
    /// (the last seq this client showed, as kept in its state file): such a
    /// message is acknowledged and dropped, so a client killed between
    /// showing a message and acknowledging it does not show it again.
    fn join_after(
        &self,
        after_seq: u64,
    ) -> impl Future<Output = Result<Incoming, ClientError>> + Send;

    /// Sends `text` to `to`. Resolves when the server has accepted (logged)
    /// it, never waiting for delivery; call it many times concurrently.
    fn send(
        &self,
        to: &ClientId,
        text: &str,
    ) -> impl Future<Output = Result<Accepted, ClientError>> + Send;

    /// Every registered client with its online status.
    fn list_clients(&self) -> impl Future<Output = Result<Vec<ClientInfo>, ClientError>> + Send;

    /// Every message this client sent, oldest first.
    fn history(&self) -> impl Future<Output = Result<Vec<Message>, ClientError>> + Send;
}

/// The server accepted a message.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub id: MessageId,
    pub timestamp_ms: i64,
}

#[derive(Clone, Debug, thiserror::Error)]
pub enum ClientError {
    /// The server refused the request; `message` says why.
    #[error("{message}")]
    Rejected { code: ErrorCode, message: String },
    /// The server or broker cannot be reached (it may come back).
    #[error("cannot reach {endpoint}: {reason}")]
    Unavailable { endpoint: String, reason: String },
    /// The peer answered something this client does not understand.
    #[error("protocol error: {0}")]
    Protocol(String),
    /// Something on this side (an incomplete `listen`, a closed stream).
    #[error("{0}")]
    Local(String),
    /// No answer in time.
    #[error("no answer from the server within {0:?}")]
    Timeout(std::time::Duration),
}

impl ClientError {
    /// Worth retrying later (as opposed to a refusal that will not change).
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable { .. } | Self::Timeout(_))
            || matches!(
                self,
                Self::Rejected {
                    code: ErrorCode::Unavailable,
                    ..
                }
            )
    }

    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            Self::Rejected { code, .. } => Some(*code),
            _ => None,
        }
    }
}

/// The client's view of an `Error` the server sent (an unknown code reads
/// as unspecified).
impl From<chat_proto::v1::Error> for ClientError {
    fn from(e: chat_proto::v1::Error) -> Self {
        Self::Rejected {
            code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
            message: e.message,
        }
    }
}

impl From<crate::error::ChatError> for ClientError {
    fn from(e: crate::error::ChatError) -> Self {
        Self::Rejected {
            code: e.code(),
            message: e.to_string(),
        }
    }
}

/// An incoming message, to be acknowledged once it has been shown/handled.
/// Unacknowledged messages come again after a reconnect.
#[derive(Debug)]
pub struct Delivery {
    pub message: Message,
    acks: mpsc::UnboundedSender<u64>,
}

impl Delivery {
    /// Acknowledges this message (it will not be delivered again).
    pub fn ack(self) {
        let _ = self.acks.send(self.message.seq);
    }
}

/// The connection as the user should hear about it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ConnectionState {
    Connected,
    Reconnecting {
        reason: String,
    },
    /// The adapter gave up (e.g. the ID was taken over); the stream ends.
    Closed {
        reason: String,
    },
}

#[derive(Debug)]
pub enum IncomingEvent {
    Message(Delivery),
    State(ConnectionState),
}

/// How long [`Incoming::close`] waits for the last acknowledgements to reach
/// the server before giving up (they would then be delivered again later).
pub const ACK_FLUSH_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The consumer's end: incoming messages and connection changes.
#[derive(Debug)]
pub struct Incoming {
    rx: mpsc::Receiver<IncomingEvent>,
    acks_flushed: oneshot::Receiver<()>,
}

impl Incoming {
    /// The next event; `None` once the client has stopped.
    pub async fn recv(&mut self) -> Option<IncomingEvent> {
        self.rx.recv().await
    }

    /// The next event if one is waiting already.
    pub fn try_recv(&mut self) -> Option<IncomingEvent> {
        self.rx.try_recv().ok()
    }

    /// Stops receiving and waits until every acknowledgement given so far has
    /// been carried to the server, so nothing shown is shown again next time.
    pub async fn close(self) {
        let Self { rx, acks_flushed } = self;
        drop(rx);
        let _ = tokio::time::timeout(ACK_FLUSH_TIMEOUT, acks_flushed).await;
    }
}

/// The adapter's stream of acknowledgements to carry to its transport: the
/// seq of each message acknowledged, by the consumer or by the sink itself
/// (a repeat, see [`Delivered::Repeat`]). What a seq stands for on the wire
/// (a cumulative ack, a delivery to release) is the adapter's business. It
/// ends once the consumer is gone and every delivery was acknowledged or
/// dropped; dropping it tells [`Incoming::close`] that all were carried.
#[derive(Debug)]
pub struct AckStream {
    rx: mpsc::UnboundedReceiver<u64>,
    _flushed: oneshot::Sender<()>,
}

impl AckStream {
    /// The seq of the next acknowledged message; `None` once none can come.
    pub async fn recv(&mut self) -> Option<u64> {
        self.rx.recv().await
    }

    /// The seq of an acknowledged message, if one is waiting already.
    pub fn try_recv(&mut self) -> Option<u64> {
        self.rx.try_recv().ok()
    }
}

/// What [`IncomingSink::deliver`] did with a message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Delivered {
    /// Passed on to the consumer, who acknowledges it once shown.
    Passed,
    /// A repeat (its seq was passed on already): dropped, and acknowledged
    /// by the sink on the [`AckStream`] straight away (even if the consumer
    /// is gone meanwhile). An adapter that releases deliveries by seq must
    /// not take that acknowledgement for the consumer's own one of the
    /// first copy.
    Repeat,
    /// The consumer is gone; nothing was passed on.
    Closed,
}

/// The adapter's end of [`Incoming`].
#[derive(Debug)]
pub struct IncomingSink {
    tx: mpsc::Sender<IncomingEvent>,
    acks: mpsc::UnboundedSender<u64>,
    last_seq: u64,
}

/// Creates the pair, plus the stream of acknowledgements the adapter must
/// carry to its transport. Seqs at or below `after_seq` count as shown
/// already.
pub fn incoming_channel(after_seq: u64) -> (IncomingSink, Incoming, AckStream) {
    let (tx, rx) = mpsc::channel(INCOMING_CAPACITY);
    let (acks, ack_rx) = mpsc::unbounded_channel();
    let (flushed, acks_flushed) = oneshot::channel();
    (
        IncomingSink {
            tx,
            acks,
            last_seq: after_seq,
        },
        Incoming { rx, acks_flushed },
        AckStream {
            rx: ack_rx,
            _flushed: flushed,
        },
    )
}

impl IncomingSink {
    /// Passes `message` on, unless its seq was passed on already, in which
    /// case it is acknowledged straight away and dropped (see [`Delivered`]).
    ///
    /// Neither case is silent: a repeat and a gap (a seq above the next one
    /// expected) are both logged at warn with the two numbers, so a message
    /// that was not shown can always be traced. A gap from 0 is not one:
    /// earlier seqs were shown by an earlier run of this client.
    pub async fn deliver(&mut self, message: Message) -> Delivered {
        if message.seq <= self.last_seq {
            tracing::warn!(
                seq = message.seq,
                last_shown = self.last_seq,
                "dropping a repeated delivery: seq {} is at or below the last shown seq {}; acknowledged, not shown again",
                message.seq,
                self.last_seq
            );
            let _ = self.acks.send(message.seq);
            return Delivered::Repeat;
        }
        if self.last_seq > 0 && message.seq > self.last_seq + 1 {
            tracing::warn!(
                seq = message.seq,
                last_shown = self.last_seq,
                "gap in deliveries: seq {} follows the last shown seq {}; showing it anyway",
                message.seq,
                self.last_seq
            );
        }
        self.last_seq = message.seq;
        let delivery = Delivery {
            message,
            acks: self.acks.clone(),
        };
        match self.tx.send(IncomingEvent::Message(delivery)).await {
            Ok(()) => Delivered::Passed,
            Err(_) => Delivered::Closed,
        }
    }

    /// Reports a connection change. Returns `false` once the consumer is gone.
    pub async fn state(&self, state: ConnectionState) -> bool {
        self.tx.send(IncomingEvent::State(state)).await.is_ok()
    }

    /// Highest seq passed on so far (resume point after a reconnect).
    pub fn last_seq(&self) -> u64 {
        self.last_seq
    }

    pub fn is_closed(&self) -> bool {
        self.tx.is_closed()
    }

    /// Resolves when the consumer has dropped its [`Incoming`].
    pub async fn closed(&self) {
        self.tx.closed().await
    }
}

/// Fetches a whole history page by page (see `HistoryRequest` in
/// `chat.proto`): `page(after)` asks for the page that follows the first
/// `after` messages. Both transports' clients use it.
pub async fn all_history_pages<F, Fut>(mut page: F) -> Result<Vec<Message>, ClientError>
where
    F: FnMut(u64) -> Fut,
    Fut: std::future::Future<Output = Result<chat_proto::v1::HistoryReply, ClientError>>,
{
    let mut all = Vec::new();
    loop {
        let reply = page(all.len() as u64).await?;
        if reply.more && reply.messages.is_empty() {
            return Err(ClientError::Protocol(
                "the server said more history follows but sent an empty page".into(),
            ));
        }
        for m in reply.messages {
            all.push(Message::from_proto(m).map_err(|e| ClientError::Protocol(e.to_string()))?);
        }
        if !reply.more {
            return Ok(all);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(seq: u64) -> Message {
        Message {
            id: MessageId::generate(),
            from: ClientId::parse("a").unwrap(),
            to: ClientId::parse("b").unwrap(),
            text: format!("m{seq}"),
            timestamp_ms: 0,
            seq,
        }
    }

    fn acked(acks: &mut AckStream) -> Vec<u64> {
        std::iter::from_fn(|| acks.try_recv()).collect()
    }

    #[tokio::test]
    async fn repeats_are_dropped_and_acknowledged() {
        let (mut sink, mut incoming, mut acks) = incoming_channel(0);
        assert_eq!(sink.deliver(msg(1)).await, Delivered::Passed);
        assert_eq!(sink.deliver(msg(2)).await, Delivered::Passed);
        // a repeat after a reconnect, before the consumer acknowledged seq 1
        assert_eq!(sink.deliver(msg(1)).await, Delivered::Repeat);
        assert_eq!(acked(&mut acks), [1], "the sink acknowledged the repeat");
        assert_eq!(sink.deliver(msg(3)).await, Delivered::Passed);
        let mut seen = Vec::new();
        for _ in 0..3 {
            match incoming.recv().await {
                Some(IncomingEvent::Message(d)) => {
                    seen.push(d.message.seq);
                    d.ack();
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, vec![1, 2, 3]);
        assert!(incoming.try_recv().is_none(), "the repeat was not shown");
        assert_eq!(acked(&mut acks), [1, 2, 3], "the consumer's own acks");
        assert_eq!(sink.last_seq(), 3);
        drop(incoming);
        assert_eq!(sink.deliver(msg(4)).await, Delivered::Closed);
        // a repeat is still acknowledged once the consumer is gone
        assert_eq!(sink.deliver(msg(2)).await, Delivered::Repeat);
        assert_eq!(acked(&mut acks), [2]);
    }

    #[tokio::test]
    async fn seqs_shown_by_an_earlier_run_are_acknowledged_not_shown() {
        let (mut sink, mut incoming, mut acks) = incoming_channel(2);
        // shown before a crash, never acked
        assert_eq!(sink.deliver(msg(2)).await, Delivered::Repeat);
        assert_eq!(sink.deliver(msg(3)).await, Delivered::Passed);
        match incoming.recv().await {
            Some(IncomingEvent::Message(d)) => assert_eq!(d.message.seq, 3),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(acked(&mut acks), [2], "the repeat was acknowledged");
    }

    #[tokio::test]
    async fn a_gap_is_passed_on() {
        let (mut sink, mut incoming, _acks) = incoming_channel(0);
        assert_eq!(sink.deliver(msg(1)).await, Delivered::Passed);
        assert_eq!(sink.deliver(msg(4)).await, Delivered::Passed); // 2 and 3 missing
        let mut seen = Vec::new();
        for _ in 0..2 {
            match incoming.recv().await {
                Some(IncomingEvent::Message(d)) => seen.push(d.message.seq),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(seen, vec![1, 4]);
        assert_eq!(sink.last_seq(), 4);
    }
}
