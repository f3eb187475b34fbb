//! Presence on AMQP: who is online, as chat-core's registry has it, fed
//! with what the broker says.
//!
//! The lock is the broker's: a client is online while it holds the
//! exclusive consumer on its queue `<ns>.client.<id>` (the broker refuses a
//! second one, whichever process asks). The state is chat-core's, as on
//! gRPC: `ChatServer::list`, the `AlreadyOnline` refusal, the
//! `chat_clients_online` gauge and the "client online/offline" log lines
//! all come from it. This module keeps it following the lock:
//!
//! * **going online** is deterministic: after its consume succeeds, the
//!   client sends a `join` request, and [`join`] marks it online once the
//!   broker confirms the queue has a consumer;
//! * **going offline** is the broker's news: RabbitMQ's event exchange
//!   plugin (`rabbitmq_event_exchange`) publishes `consumer.deleted` when a
//!   consumer is cancelled or its connection dies (`kill -9` included).
//!   [`watch`] takes those of this namespace's client queues and asks the
//!   broker again ([`gone`]): a rejoin on a new connection may have beaten
//!   the news, and then the client stays online;
//! * **what happened while the server was not listening** (at start, and
//!   on each new broker connection) is read back once from every client
//!   queue's consumer count: [`follow`], from `recount::survey`.
//!
//! Each report of the broker names the spell online it ends
//! (`chat_core::Online`), so a late one never takes a newer spell offline.

use std::sync::Arc;

use chat_core::{ChatError, ClientId, Credentials};
use chat_proto::v1 as pb;
use futures::StreamExt;
use lapin::options::{
    BasicConsumeOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{Channel, ErrorKind, ExchangeKind};

use super::generation::Generation;
use crate::error::AmqpError;

/// The exchange of RabbitMQ's event exchange plugin (a topic exchange in
/// the plugin's vhost, by default `/`).
pub(super) const EVENT_EXCHANGE: &str = "amq.rabbitmq.event";
/// The event of a consumer that is gone (cancelled, channel or connection
/// closed); its headers name the `queue` and the `vhost`.
const CONSUMER_DELETED: &str = "consumer.deleted";
/// Consumer tag of the server on its event queue.
const EVENTS_TAG: &str = "amqp-server-presence";

/// Subscribes to the broker's `consumer.deleted` events: a server-named,
/// exclusive, auto-delete queue bound to [`EVENT_EXCHANGE`], consumed
/// without acks (events lost with a connection are covered by the survey
/// of the next one). Fails with [`AmqpError::EventsMissing`] when the
/// plugin is not enabled.
pub(super) async fn subscribe(
    ch: &Channel,
    url: &str,
    vhost: &str,
) -> Result<lapin::Consumer, AmqpError> {
    let passive = ExchangeDeclareOptions {
        passive: true,
        ..ExchangeDeclareOptions::default()
    };
    let exists = ch
        .exchange_declare(
            EVENT_EXCHANGE.into(),
            ExchangeKind::Topic,
            passive,
            FieldTable::default(),
        )
        .await;
    match exists {
        Ok(()) => {}
        Err(e) if not_found(&e) => {
            return Err(AmqpError::EventsMissing {
                url: url.to_owned(),
                vhost: vhost.to_owned(),
            });
        }
        Err(e) => return Err(e.into()),
    }
    let own = QueueDeclareOptions {
        exclusive: true,
        auto_delete: true,
        ..QueueDeclareOptions::default()
    };
    let queue = ch
        .queue_declare("".into(), own, FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.name().clone(),
        EVENT_EXCHANGE.into(),
        CONSUMER_DELETED.into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    let options = BasicConsumeOptions {
        no_ack: true,
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let consumer = ch
        .basic_consume(
            queue.name().clone(),
            EVENTS_TAG.into(),
            options,
            FieldTable::default(),
        )
        .await?;
    Ok(consumer)
}

fn not_found(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::NOTFOUND)))
}

/// Takes this namespace's clients offline as the broker reports their
/// consumers gone, for one generation.
pub(super) async fn watch(g: Arc<Generation>, mut events: lapin::Consumer) {
    while let Some(next) = events.next().await {
        let event = match next {
            Ok(event) => event,
            Err(e) => {
                g.broken.trigger(e);
                return;
            }
        };
        let Some(id) = client_of(&g, event.properties.headers().as_ref()) else {
            continue;
        };
        if let Err(e) = gone(&g, &id).await {
            g.broken.trigger(e);
            return;
        }
    }
    g.broken
        .trigger("the broker cancelled the consumer of its events");
}

/// The client whose queue a `consumer.deleted` event is about, if it is a
/// client queue of this namespace and vhost (the exchange carries the
/// events of the whole broker).
fn client_of(g: &Generation, headers: Option<&FieldTable>) -> Option<ClientId> {
    let headers = headers?.inner();
    let text = |key: &str| match headers.get(key)? {
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok(),
        AMQPValue::ShortString(s) => Some(s.as_str()),
        _ => None,
    };
    if text("vhost")? != g.vhost {
        return None;
    }
    let prefix = g.names.client_queue_prefix();
    let raw = text("queue")?.strip_prefix(prefix.as_str())?;
    ClientId::parse(raw).ok()
}

/// Whether the broker has a consumer on `id`'s queue (declaring it, which
/// is idempotent and answers with the count).
async fn consumed(g: &Generation, id: &ClientId) -> Result<bool, AmqpError> {
    Ok(g.declare_client_queue(id).await?.consumer_count() > 0)
}

/// `join`: the client consumes its queue now and asks to be listed online.
/// Marked online first and checked with the broker after, so that a
/// consumer that dies in between is reported against this spell.
pub(super) async fn join(
    g: &Generation,
    creds: &Credentials,
    raw_id: &str,
) -> Result<pb::reply::Body, AmqpError> {
    let principal = g.server.authenticate(creds)?;
    principal.acting_as(raw_id)?;
    let id = principal.id();
    let online = g.server.went_online(id)?;
    if !consumed(g, id).await? {
        g.server.went_offline(&online);
        return Err(ChatError::InboxNotConsumed {
            id: id.clone(),
            inbox: g.names.client_queue(id),
        }
        .into());
    }
    Ok(pb::reply::Body::Join(pb::JoinReply {}))
}

/// The broker reported a consumer of `id`'s queue gone (or core says it is
/// online and something doubts it): if the queue has no consumer now, the
/// client's spell online read *before* asking ends. Whether it went offline.
pub(super) async fn gone(g: &Generation, id: &ClientId) -> Result<bool, AmqpError> {
    let Some(online) = g.server.online(id) else {
        return Ok(false);
    };
    Ok(!consumed(g, id).await? && g.server.went_offline(&online))
}

/// Makes core agree with a consumer count read from the broker while
/// nothing else changes presence (the survey at the start of a generation,
/// before events and requests are served).
pub(super) fn follow(g: &Generation, id: &ClientId, consumed: bool) {
    match (g.server.online(id), consumed) {
        (None, true) => {
            if let Err(e) = g.server.went_online(id) {
                tracing::debug!(client = %id, "not marked online: {e}");
            }
        }
        (Some(online), false) => {
            g.server.went_offline(&online);
        }
        _ => {}
    }
}
