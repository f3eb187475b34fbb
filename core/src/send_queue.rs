//! Adaptive batching of a client's sends (`CHAT_BATCHING`, on by default),
//! the same on both transports.
//!
//! A client's sends go through one queue. While fewer than [`IN_FLIGHT`]
//! send requests are in flight, a send goes out at once, alone, as a
//! `Send`: nothing waits for a batch to fill. When they are all in flight,
//! further sends wait in the queue, and the next request carries
//! everything that waits (up to [`MAX_SEND_BATCH`]) as one `SendBatch`. So
//! batches form only under backlog, and their size follows it.
//!
//! Each send keeps its own message ID, so a request retried after a
//! transient failure is accepted once per message (the server's dedupe by
//! ID), and each caller gets its own outcome. The transport is a
//! [`SendCarrier`]: it carries one request and retries as it sees fit.

use std::future::Future;
use std::sync::Arc;

use chat_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::client::{Accepted, ClientError};
use crate::id::{ClientId, MessageId};

/// Most sends a client puts in one `SendBatch`.
pub const MAX_SEND_BATCH: usize = 64;
/// Most sends a server takes in one `SendBatch` (a client sends at most
/// [`MAX_SEND_BATCH`]; the margin is for other clients of the protocol).
pub const MAX_SENDS_PER_REQUEST: usize = 1024;
/// Send requests in flight before sends start to wait and batch up.
pub const IN_FLIGHT: usize = 2;

/// Environment variable that turns adaptive batching off, for the clients
/// and the AMQP server: `CHAT_BATCHING=off`.
pub const BATCHING_ENV: &str = "CHAT_BATCHING";

/// Whether the environment leaves adaptive batching on (the default).
pub fn batching_from_env() -> bool {
    std::env::var(BATCHING_ENV).map_or(true, |v| v != "off")
}

/// One send's outcome: the server's reply, or why it was not accepted.
pub type SendOutcome = Result<pb::SendReply, ClientError>;

/// How a transport carries send requests to its server.
pub trait SendCarrier: Clone + Send + Sync + 'static {
    /// One `Send`.
    fn send_one(&self, request: pb::SendRequest) -> impl Future<Output = SendOutcome> + Send;

    /// One `SendBatch`: the server's reply, with one outcome per send.
    fn send_batch(
        &self,
        batch: pb::SendBatchRequest,
    ) -> impl Future<Output = Result<pb::SendBatchReply, ClientError>> + Send;
}

/// A client's sends: through the queue with batching on, else one request
/// per send.
#[derive(Clone, Debug)]
pub struct Sends<C> {
    carrier: C,
    queue: Option<SendQueue>,
}

impl<C: SendCarrier> Sends<C> {
    /// Starts the queue's task (on the current tokio runtime) if `batching`.
    pub fn new(carrier: C, batching: bool) -> Self {
        let queue = batching.then(|| SendQueue::start(carrier.clone()));
        Self { carrier, queue }
    }

    /// Sends `text` from `from` to `to` under a new message ID.
    pub async fn send(
        &self,
        from: &ClientId,
        to: &ClientId,
        text: &str,
    ) -> Result<Accepted, ClientError> {
        let request = pb::SendRequest {
            id: MessageId::generate().to_string(),
            from: from.to_string(),
            to: to.to_string(),
            text: text.to_owned(),
        };
        let reply = match &self.queue {
            Some(queue) => queue.send(request).await?,
            None => self.carrier.send_one(request).await?,
        };
        Ok(Accepted {
            id: MessageId::parse_or_generate(&reply.id)
                .map_err(|e| ClientError::Protocol(e.to_string()))?,
            timestamp_ms: reply.timestamp_ms,
        })
    }
}

struct Queued {
    request: pb::SendRequest,
    done: oneshot::Sender<SendOutcome>,
}

/// The sending end of a client's send queue; the task that empties it
/// stops when the last clone is dropped.
#[derive(Clone, Debug)]
struct SendQueue {
    tx: mpsc::UnboundedSender<Queued>,
}

impl std::fmt::Debug for Queued {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Queued")
            .field("id", &self.request.id)
            .finish()
    }
}

impl SendQueue {
    fn start<C: SendCarrier>(carrier: C) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, carrier));
        Self { tx }
    }

    /// Sends `request` (alone or in a batch) and returns its own outcome.
    async fn send(&self, request: pb::SendRequest) -> SendOutcome {
        let (done, rx) = oneshot::channel();
        let closed = || ClientError::Local("the client's send queue is closed".into());
        self.tx
            .send(Queued { request, done })
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn run<C: SendCarrier>(mut rx: mpsc::UnboundedReceiver<Queued>, carrier: C) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while every slot was busy goes in this request.
        let mut batch = vec![first];
        while batch.len() < MAX_SEND_BATCH
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        let carrier = carrier.clone();
        tokio::spawn(async move {
            carry(&carrier, batch).await;
            drop(slot);
        });
    }
}

/// One request for the batch: `Send` for one, `SendBatch` for several.
async fn carry<C: SendCarrier>(carrier: &C, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let Queued { request, done } = batch.remove(0);
        let _ = done.send(carrier.send_one(request).await);
        return;
    }
    let (sends, dones): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.request, q.done)).unzip();
    let reply = carrier.send_batch(pb::SendBatchRequest { sends }).await;
    let outcomes = outcomes(reply, dones.len());
    for (done, o) in dones.into_iter().zip(outcomes) {
        let _ = done.send(o);
    }
}

/// One outcome per send of a `SendBatch` of `n` sends, from its reply.
pub fn outcomes(reply: Result<pb::SendBatchReply, ClientError>, n: usize) -> Vec<SendOutcome> {
    match reply {
        Ok(r) if r.outcomes.len() == n => r.outcomes.into_iter().map(outcome).collect(),
        Ok(r) => {
            let e = ClientError::Protocol(format!(
                "SendBatch answered {} outcomes for {n} sends",
                r.outcomes.len()
            ));
            vec![Err(e); n]
        }
        Err(e) => vec![Err(e); n],
    }
}

fn outcome(o: pb::SendOutcome) -> SendOutcome {
    match o.result {
        Some(pb::send_outcome::Result::Accepted(reply)) => Ok(reply),
        Some(pb::send_outcome::Result::Error(e)) => Err(e.into()),
        None => Err(ClientError::Protocol(
            "a SendBatch outcome without a result".into(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    /// Records the sends of every request it is given, and answers only as
    /// the test lets it (one permit per request). A send whose text is
    /// "refuse" is refused.
    #[derive(Clone)]
    struct Recorder {
        calls: Arc<Mutex<Vec<Vec<String>>>>,
        gate: Arc<Semaphore>,
        /// Answers a `SendBatch` with one outcome too few.
        short_reply: bool,
    }

    impl Recorder {
        fn new(short_reply: bool) -> Self {
            Self {
                calls: Arc::default(),
                gate: Arc::new(Semaphore::new(0)),
                short_reply,
            }
        }

        fn calls(&self) -> Vec<Vec<String>> {
            self.calls.lock().unwrap().clone()
        }

        async fn wait_for_calls(&self, n: usize) {
            while self.calls.lock().unwrap().len() < n {
                tokio::time::sleep(std::time::Duration::from_millis(5)).await;
            }
        }

        async fn answer(&self, r: &pb::SendRequest) -> SendOutcome {
            if r.text == "refuse" {
                return Err(ClientError::Protocol(format!("refused {}", r.id)));
            }
            Ok(pb::SendReply {
                id: r.id.clone(),
                timestamp_ms: 1,
            })
        }
    }

    impl SendCarrier for Recorder {
        async fn send_one(&self, r: pb::SendRequest) -> SendOutcome {
            self.calls.lock().unwrap().push(vec![r.id.clone()]);
            self.gate.acquire().await.unwrap().forget();
            self.answer(&r).await
        }

        async fn send_batch(
            &self,
            b: pb::SendBatchRequest,
        ) -> Result<pb::SendBatchReply, ClientError> {
            let ids = b.sends.iter().map(|s| s.id.clone()).collect();
            self.calls.lock().unwrap().push(ids);
            self.gate.acquire().await.unwrap().forget();
            let mut outcomes = Vec::new();
            for s in &b.sends {
                let result = match self.answer(s).await {
                    Ok(reply) => pb::send_outcome::Result::Accepted(reply),
                    Err(e) => pb::send_outcome::Result::Error(pb::Error {
                        code: 1,
                        message: e.to_string(),
                    }),
                };
                outcomes.push(pb::SendOutcome {
                    result: Some(result),
                });
            }
            if self.short_reply {
                outcomes.pop();
            }
            Ok(pb::SendBatchReply { outcomes })
        }
    }

    fn send(id: &str, text: &str) -> pb::SendRequest {
        pb::SendRequest {
            id: id.into(),
            from: "alice".into(),
            to: "bob".into(),
            text: text.into(),
        }
    }

    /// Five sends: the first two go alone, each as soon as it is made;
    /// while both are in flight the other three wait, and then go
    /// together, in order, as one `SendBatch`.
    async fn five_sends(carrier: &Recorder, texts: [&'static str; 5]) -> Vec<SendOutcome> {
        let queue = SendQueue::start(carrier.clone());
        let send_at = |i: usize| {
            let queue = queue.clone();
            tokio::spawn(async move { queue.send(send(&format!("m{i}"), texts[i])).await })
        };
        let mut sends = vec![send_at(0)];
        carrier.wait_for_calls(1).await;
        sends.push(send_at(1));
        carrier.wait_for_calls(IN_FLIGHT).await;
        sends.extend((2..5).map(send_at));
        // Lets the three queue up (this runtime has one thread).
        for _ in 0..10 {
            tokio::task::yield_now().await;
        }
        carrier.gate.add_permits(10);
        let mut outcomes = Vec::new();
        for s in sends {
            outcomes.push(s.await.unwrap());
        }
        outcomes
    }

    #[tokio::test]
    async fn sends_go_alone_until_every_slot_is_busy_then_together() {
        let carrier = Recorder::new(false);
        let outcomes = five_sends(&carrier, ["a"; 5]).await;
        assert_eq!(
            carrier.calls(),
            vec![vec!["m0"], vec!["m1"], vec!["m2", "m3", "m4"]]
        );
        let ids: Vec<String> = outcomes.into_iter().map(|o| o.unwrap().id).collect();
        assert_eq!(ids, ["m0", "m1", "m2", "m3", "m4"]);
    }

    #[tokio::test]
    async fn each_send_of_a_batch_gets_its_own_outcome() {
        let carrier = Recorder::new(false);
        let outcomes = five_sends(&carrier, ["a", "a", "a", "refuse", "a"]).await;
        assert_eq!(carrier.calls().len(), 3, "{:?}", carrier.calls());
        let refused: Vec<bool> = outcomes.iter().map(Result::is_err).collect();
        assert_eq!(refused, [false, false, false, true, false]);
        assert!(outcomes[3].as_ref().unwrap_err().to_string().contains("m3"));
    }

    #[tokio::test]
    async fn a_reply_with_the_wrong_number_of_outcomes_fails_every_send_of_it() {
        let carrier = Recorder::new(true);
        let outcomes = five_sends(&carrier, ["a"; 5]).await;
        assert!(outcomes[0].is_ok() && outcomes[1].is_ok());
        for o in &outcomes[2..] {
            let e = o.as_ref().unwrap_err().to_string();
            assert!(e.contains("2 outcomes for 3 sends"), "{e}");
        }
    }
}
