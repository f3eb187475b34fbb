//! What lives as long as one broker connection: its channels, what was
//! declared on it, and the signal that ends it.

use std::collections::HashSet;
use std::sync::{Arc, Mutex, MutexGuard};

use chat_core::{ChatServer, ClientId};
use chat_proto::v1 as pb;
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicPublishOptions, BasicRejectOptions};
use lapin::types::ShortString;
use lapin::{Channel, Queue};
use prost::Message as _;
use tokio::sync::watch;

use crate::broker_users::BrokerUsers;
use crate::error::AmqpError;
use crate::topology::{self, Names};

/// Set once by whoever first sees the connection fail; ends the generation.
#[derive(Clone)]
pub(super) struct Broken(Arc<watch::Sender<Option<String>>>);

impl Broken {
    pub(super) fn new() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }

    pub(super) fn trigger(&self, reason: impl std::fmt::Display) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    }

    pub(super) async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        let r = rx.wait_for(|v| v.is_some()).await;
        r.ok()
            .and_then(|v| v.clone())
            .unwrap_or_else(|| "closed".into())
    }
}

/// Everything that lives as long as one broker connection.
pub(super) struct Generation {
    pub(super) server: ChatServer,
    pub(super) names: Names,
    /// Publishes chat messages; publisher confirms are on.
    pub(super) publish: Channel,
    /// Publishes replies, without publisher confirms: a reply is not worth
    /// a round trip (a lost one is covered by the client's timeout and
    /// retry), and lapin keeps every confirm that is dropped unawaited until
    /// `wait_for_confirms`, which grew the server by ~0.6 KB per request.
    pub(super) replies: Channel,
    /// Declarations and queue look-ups (consumer counts).
    pub(super) admin: Channel,
    /// The connection's virtual host: events of the others are not ours.
    pub(super) vhost: String,
    /// Client queues declared on this connection (declared again on the next).
    pub(super) declared: Mutex<HashSet<ClientId>>,
    pub(super) broken: Broken,
    /// Adaptive batching of deliveries (`--batching`).
    pub(super) batching: bool,
    /// Per-client mode: creates a client's broker user at registration.
    pub(super) users: Option<Arc<BrokerUsers>>,
}

impl Generation {
    pub(super) fn declared(&self) -> MutexGuard<'_, HashSet<ClientId>> {
        self.declared.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(super) async fn ensure_client_queue(&self, id: &ClientId) -> Result<(), AmqpError> {
        if !self.declared().contains(id) {
            self.declare_client_queue(id).await?;
        }
        Ok(())
    }

    /// Declares `id`'s queue and binding (idempotent: the answer carries
    /// its ready messages and its consumers) and notes that this
    /// connection has declared it.
    pub(super) async fn declare_client_queue(&self, id: &ClientId) -> Result<Queue, AmqpError> {
        let q = topology::declare_client_queue(&self.admin, &self.names, id).await?;
        self.declared().insert(id.clone());
        Ok(q)
    }

    /// Answers a request, if it said where to.
    pub(super) async fn reply(&self, to: &Request, body: pb::Reply) {
        let Some(reply_to) = &to.reply_to else {
            return;
        };
        let sent = self
            .replies
            .basic_publish(
                "".into(),
                reply_to.clone(),
                BasicPublishOptions::default(),
                &body.encode_to_vec(),
                topology::reply_properties(to.correlation_id.as_ref()),
            )
            .await;
        if let Err(e) = sent {
            self.broken.trigger(e);
        }
    }
}

/// The parts of a request delivery a handler needs besides its body.
pub(super) struct Request {
    pub(super) delivery: Delivery,
    pub(super) reply_to: Option<ShortString>,
    pub(super) correlation_id: Option<ShortString>,
}

impl Request {
    pub(super) async fn ack(&self, generation: &Generation) {
        if let Err(e) = self.delivery.acker.ack(BasicAckOptions::default()).await {
            generation.broken.trigger(e);
        }
    }

    /// Rejects the request without requeueing it: it goes to `<ns>.dead`
    /// and can never loop.
    pub(super) async fn dead_letter(&self, generation: &Generation) {
        let rejected = self
            .delivery
            .acker
            .reject(BasicRejectOptions { requeue: false })
            .await;
        if let Err(e) = rejected {
            generation.broken.trigger(e);
        }
    }
}
