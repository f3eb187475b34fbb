//! Adaptive batching of sends (`CHAT_BATCHING`, on by default).
//!
//! A client's sends go through one queue. While fewer than [`IN_FLIGHT`]
//! send calls are in flight, a send goes out at once, alone, as a `Send`:
//! nothing waits for a batch to fill. When they are all in flight, further
//! sends wait in the queue, and the next call carries everything that
//! waits (up to [`MAX_SEND_BATCH`]) as one `SendBatch`. So batches form
//! only under backlog, and their size follows it.
//!
//! Each send keeps its own message ID, so a call retried after a transient
//! failure is accepted once per message (the server's dedupe by ID), and
//! each caller gets its own outcome.

use std::future::Future;
use std::sync::Arc;

use chat_core::ClientError;
use chat_core::backoff::Backoff;
use chat_proto::v1 as pb;
use tokio::sync::{Semaphore, mpsc, oneshot};

use crate::client::{Rpc, SEND_RETRY_WINDOW};
use crate::status::from_status;

/// Most sends in one `SendBatch` call.
pub const MAX_SEND_BATCH: usize = 64;
/// Send calls in flight before sends start to wait and batch up.
pub const IN_FLIGHT: usize = 2;

type Outcome = Result<pb::SendReply, ClientError>;

struct Queued {
    request: pb::SendRequest,
    done: oneshot::Sender<Outcome>,
}

/// The sending end of a client's send queue; the task that empties it
/// stops when the last clone of the client is dropped.
#[derive(Clone)]
pub(crate) struct Batcher {
    tx: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    pub fn start(rpc: Rpc, endpoint: String) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(run(rx, rpc, endpoint));
        Self { tx }
    }

    /// Sends `request` (alone or in a batch) and returns its own outcome.
    pub async fn send(&self, request: pb::SendRequest) -> Outcome {
        let (done, rx) = oneshot::channel();
        let closed = || ClientError::Local("the client's send queue is closed".into());
        self.tx
            .send(Queued { request, done })
            .map_err(|_| closed())?;
        rx.await.map_err(|_| closed())?
    }
}

async fn run(mut rx: mpsc::UnboundedReceiver<Queued>, rpc: Rpc, endpoint: String) {
    let slots = Arc::new(Semaphore::new(IN_FLIGHT));
    while let Some(first) = rx.recv().await {
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        // Whatever queued while every slot was busy goes in this call.
        let mut batch = vec![first];
        while batch.len() < MAX_SEND_BATCH
            && let Ok(next) = rx.try_recv()
        {
            batch.push(next);
        }
        let (rpc, endpoint) = (rpc.clone(), endpoint.clone());
        tokio::spawn(async move {
            carry(rpc, &endpoint, batch).await;
            drop(slot);
        });
    }
}

/// One call for the batch: `Send` for one, `SendBatch` for several.
async fn carry(rpc: Rpc, endpoint: &str, mut batch: Vec<Queued>) {
    if batch.len() == 1 {
        let Queued { request, done } = batch.remove(0);
        let _ = done.send(send_one(rpc, endpoint, request).await);
        return;
    }
    let (sends, dones): (Vec<_>, Vec<_>) = batch.into_iter().map(|q| (q.request, q.done)).unzip();
    let request = pb::SendBatchRequest { sends };
    let reply = retrying(endpoint, || {
        let mut rpc = rpc.clone();
        let request = request.clone();
        async move { rpc.send_batch(request).await }
    })
    .await;
    let outcomes = match reply {
        Ok(r) if r.outcomes.len() == dones.len() => r.outcomes.into_iter().map(outcome).collect(),
        Ok(r) => {
            let e = ClientError::Protocol(format!(
                "SendBatch answered {} outcomes for {} sends",
                r.outcomes.len(),
                dones.len()
            ));
            vec![Err(e); dones.len()]
        }
        Err(e) => vec![Err(e); dones.len()],
    };
    for (done, o) in dones.into_iter().zip(outcomes) {
        let _ = done.send(o);
    }
}

/// A single send, as the client sends without batching.
pub(crate) async fn send_one(rpc: Rpc, endpoint: &str, request: pb::SendRequest) -> Outcome {
    retrying(endpoint, || {
        let mut rpc = rpc.clone();
        let request = request.clone();
        async move { rpc.send(request).await }
    })
    .await
}

/// Makes a call, retrying transient failures with backoff for up to
/// [`SEND_RETRY_WINDOW`] (the same message IDs each time).
async fn retrying<T, F, Fut>(endpoint: &str, mut call: F) -> Result<T, ClientError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<tonic::Response<T>, tonic::Status>>,
{
    let give_up = tokio::time::Instant::now() + SEND_RETRY_WINDOW;
    let mut backoff = Backoff::new();
    loop {
        match call().await {
            Ok(r) => return Ok(r.into_inner()),
            Err(s) => {
                let e = from_status(s, endpoint);
                if !e.is_transient() || tokio::time::Instant::now() >= give_up {
                    return Err(e);
                }
                backoff.wait().await;
            }
        }
    }
}

fn outcome(o: pb::SendOutcome) -> Outcome {
    match o.result {
        Some(pb::send_outcome::Result::Accepted(reply)) => Ok(reply),
        Some(pb::send_outcome::Result::Error(e)) => Err(e.into()),
        None => Err(ClientError::Protocol(
            "a SendBatch outcome without a result".into(),
        )),
    }
}
