//! The server's side of a `SendBatch`: several sends in one request (see
//! [`crate::send_queue`] for when clients send one), handled the same on
//! both transports.
//!
//! Each send is accepted as a `Send` of its own, in the batch's order;
//! then all are awaited durable together (usually one group commit), and
//! the reply has one outcome per send, in the same order.

use std::collections::HashMap;

use chat_proto::v1 as pb;
use tokio::sync::oneshot;

use crate::error::ChatError;
use crate::id::ClientId;
use crate::identity::Principal;
use crate::message::{Receipt, SendCommand};
use crate::send_queue::MAX_SENDS_PER_REQUEST;
use crate::server::{Admitted, ChatServer};

/// The sends of one `SendBatch`, each accepted or refused.
pub struct AdmittedBatch {
    server: ChatServer,
    admitted: Vec<Result<Admitted, ChatError>>,
}

/// What became of each send of a `SendBatch`, in its order.
pub struct BatchOutcome {
    server: ChatServer,
    results: Vec<Result<Receipt, ChatError>>,
}

impl ChatServer {
    /// Accepts the sends of one `SendBatch` from `principal`, one after the
    /// other (each gets its recipient's seq before the next is looked at).
    /// A send that is refused does not stop the others. The whole request
    /// is refused only when it carries more than [`MAX_SENDS_PER_REQUEST`].
    pub fn accept_batch(
        &self,
        principal: &Principal,
        sends: Vec<pb::SendRequest>,
    ) -> Result<AdmittedBatch, ChatError> {
        if sends.len() > MAX_SENDS_PER_REQUEST {
            return Err(ChatError::Malformed(format!(
                "a SendBatch carries at most {MAX_SENDS_PER_REQUEST} sends, this one {}",
                sends.len()
            )));
        }
        self.metrics().send_batch(sends.len());
        let limits = self.limits();
        let admitted = sends
            .into_iter()
            .map(|req| self.accept(principal, SendCommand::parse(req, &limits)?))
            .collect();
        Ok(AdmittedBatch {
            server: self.clone(),
            admitted,
        })
    }

    /// A send's outcome as the wire carries it (counted in the metrics
    /// when refused).
    pub fn send_outcome(&self, r: &Result<Receipt, ChatError>) -> pb::SendOutcome {
        let result = match r {
            Ok(m) => pb::send_outcome::Result::Accepted(m.to_reply()),
            Err(e) => {
                self.metrics().refused(e.code());
                pb::send_outcome::Result::Error(e.to_proto())
            }
        };
        pb::SendOutcome {
            result: Some(result),
        }
    }
}

impl AdmittedBatch {
    /// Waits until every accepted send is in `log.txt` (and, with
    /// `--durability fsync`, on disk).
    pub async fn durable(self) -> BatchOutcome {
        let durable = self
            .admitted
            .into_iter()
            .map(|a| async move { a?.durable().await });
        BatchOutcome {
            server: self.server,
            results: futures::future::join_all(durable).await,
        }
    }
}

impl BatchOutcome {
    /// The server began to shut down before some send was accepted: leave
    /// the request to the next run (the sends accepted already are
    /// recognised by their IDs then).
    pub fn shutting_down(&self) -> bool {
        self.results
            .iter()
            .any(|r| matches!(r, Err(ChatError::ShuttingDown)))
    }

    /// Resolves once every accepted message of the batch reached its next
    /// hop ([`ChatServer::forwarded`]); fails if one never will.
    pub fn forwarded(&self) -> impl Future<Output = Result<(), oneshot::error::RecvError>> + use<> {
        let mut last: HashMap<&ClientId, u64> = HashMap::new();
        for r in self.results.iter().flatten() {
            let seq = last.entry(&r.to).or_default();
            *seq = (*seq).max(r.seq);
        }
        let waits: Vec<_> = last
            .into_iter()
            .map(|(to, seq)| self.server.wait_forwarded(to, seq))
            .collect();
        async move {
            for w in waits {
                w.await?;
            }
            Ok(())
        }
    }

    /// The reply: one outcome per send. Refusals are counted in the
    /// server's metrics.
    pub fn reply(&self) -> pb::SendBatchReply {
        let outcomes = self
            .results
            .iter()
            .map(|r| self.server.send_outcome(r))
            .collect();
        pb::SendBatchReply { outcomes }
    }
}
