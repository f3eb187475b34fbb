//! The broker-side layout of the chat (docs/amqp.md is the prose version).
//!
//! ```text
//!  client --Request--> [default exchange] --"<ns>.server"--> <ns>.server --> amqp-server
//!  amqp-server --ChatMessage--> <ns>.deliver (direct) --"<client id>"--> <ns>.client.<id> --> that client
//!  amqp-server --Reply--> [default exchange] --reply_to--> the client's exclusive reply queue
//!  poison requests (dead-lettered) --> <ns>.dead
//! ```
//!
//! Why this shape:
//! * One durable queue per client, bound to a direct exchange by the client
//!   ID: messages for an offline client wait in *its* queue, and a client
//!   receives only what is addressed to it (no broadcast-and-filter). The
//!   exchange (rather than publishing straight to the queue name) keeps the
//!   address (the client ID) separate from the storage (the queue), and a
//!   `mandatory` publish tells the server when no queue is bound, instead of
//!   the broker silently dropping the message.
//! * One durable request queue for the server: requests sent while the
//!   server is down wait there, and a restarted server picks them up.
//! * Replies go to a per-connection, exclusive, server-named queue: it
//!   disappears with the connection, so nothing piles up for a client that
//!   is gone, and the `correlation_id` matches a reply to its request.
//! * Every declaration is made with exactly the arguments below by every
//!   party that makes it (server, Rust client), because RabbitMQ refuses a
//!   redeclaration with different arguments.

use chat_core::ClientId;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind, Queue};

use crate::error::AmqpError;

/// `content_type` of every chat message body: protobuf of chat.proto.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `type` property of a request (body: `chat.v1.Request`).
pub const TYPE_REQUEST: &str = "chat.v1.Request";
/// `type` property of a reply (body: `chat.v1.Reply`).
pub const TYPE_REPLY: &str = "chat.v1.Reply";
/// `type` property of a delivered message (body: `chat.v1.ChatMessage`).
pub const TYPE_MESSAGE: &str = "chat.v1.ChatMessage";

/// AMQP `delivery_mode` 2: the broker writes the message to disk.
pub const PERSISTENT: u8 = 2;
/// AMQP `delivery_mode` 1: replies are worthless after a crash.
pub const TRANSIENT: u8 = 1;

/// Unacknowledged requests the server takes at once. Bounds the work (and
/// memory) in flight; sends are acknowledged only once forwarded, so this
/// is also the most sends one server pipelines.
pub const SERVER_PREFETCH: u16 = 256;
/// Unacknowledged messages a client takes at once from its queue.
pub const CLIENT_PREFETCH: u16 = 256;
/// Most poison messages kept in `<ns>.dead` for inspection; older ones are
/// dropped, so a flood of garbage cannot fill the broker's disk.
pub const DEAD_LETTER_MAX: i64 = 10_000;

/// The names derived from one namespace.
#[derive(Clone, Debug)]
pub struct Names {
    ns: String,
}

impl Names {
    /// Validates `namespace`: it becomes part of every queue name.
    pub fn new(namespace: &str) -> Result<Self, AmqpError> {
        let ok = (1..=64).contains(&namespace.len())
            && namespace
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'-' | b'.'));
        if ok {
            Ok(Self {
                ns: namespace.to_owned(),
            })
        } else {
            Err(AmqpError::InvalidNamespace(
                namespace.chars().take(80).collect(),
            ))
        }
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    /// Direct exchange that routes a message to its recipient's queue.
    pub fn deliver_exchange(&self) -> String {
        format!("{}.deliver", self.ns)
    }

    /// The server's request queue (clients publish to it through the
    /// default exchange, routing key = this name).
    pub fn server_queue(&self) -> String {
        format!("{}.server", self.ns)
    }

    /// Where rejected (poison) requests end up.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// The durable inbox of one client.
    pub fn client_queue(&self, id: &ClientId) -> String {
        format!("{}.client.{}", self.ns, id)
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

fn server_queue_args(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(names.dead_queue().as_str())),
    );
    args
}

/// Declares the server's request queue (clients do it too, so that a
/// request sent before any server ever ran waits instead of being dropped).
pub async fn declare_server_queue(ch: &Channel, names: &Names) -> Result<Queue, AmqpError> {
    Ok(ch
        .queue_declare(
            names.server_queue().into(),
            durable(),
            server_queue_args(names),
        )
        .await?)
}

/// Checks the server's request queue without creating it (health checks).
pub async fn inspect_server_queue(ch: &Channel, names: &Names) -> Result<Queue, AmqpError> {
    Ok(ch
        .queue_declare(
            names.server_queue().into(),
            QueueDeclareOptions {
                passive: true,
                ..durable()
            },
            FieldTable::default(),
        )
        .await?)
}

/// Everything the server needs before it consumes: the delivery exchange,
/// the request queue and the dead-letter queue.
pub async fn declare_server_side(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    declare_deliver_exchange(ch, names).await?;
    let mut dead_args = FieldTable::default();
    dead_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX),
    );
    ch.queue_declare(names.dead_queue().into(), durable(), dead_args)
        .await?;
    declare_server_queue(ch, names).await?;
    Ok(())
}

pub async fn declare_deliver_exchange(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    ch.exchange_declare(
        names.deliver_exchange().into(),
        ExchangeKind::Direct,
        ExchangeDeclareOptions {
            durable: true,
            ..ExchangeDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Declares (idempotently) a client's durable inbox and binds it to the
/// delivery exchange under the client's ID. The returned [`Queue`] carries
/// the consumer count, which is how the server tells whether the client is
/// online (a client consumes its inbox with an exclusive consumer).
pub async fn declare_client_queue(
    ch: &Channel,
    names: &Names,
    id: &ClientId,
) -> Result<Queue, AmqpError> {
    let queue = names.client_queue(id);
    let q = ch
        .queue_declare(queue.as_str().into(), durable(), FieldTable::default())
        .await?;
    ch.queue_bind(
        queue.into(),
        names.deliver_exchange().into(),
        id.as_str().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(q)
}

/// Deletes from the broker at `url` what a chat left under `names`: the
/// queues of `clients` and, with `server_side`, the request and dead-letter
/// queues and the delivery exchange. For runs that must leave nothing
/// behind (tests, benchmarks, loadgen); a queue that is not there is fine.
pub async fn delete(
    url: &str,
    names: &Names,
    clients: &[String],
    server_side: bool,
) -> Result<(), AmqpError> {
    use lapin::options::{ExchangeDeleteOptions, QueueDeleteOptions};
    let conn = lapin::Connection::connect(
        url,
        crate::server::connection_properties(&format!("cleanup {}", names.namespace())),
    )
    .await?;
    let ch = conn.create_channel().await?;
    let mut queues: Vec<String> = clients
        .iter()
        .filter_map(|c| ClientId::parse(c).ok())
        .map(|id| names.client_queue(&id))
        .collect();
    if server_side {
        queues.push(names.server_queue());
        queues.push(names.dead_queue());
    }
    for q in queues {
        ch.queue_delete(q.as_str().into(), QueueDeleteOptions::default())
            .await?;
    }
    if server_side {
        ch.exchange_delete(
            names.deliver_exchange().as_str().into(),
            ExchangeDeleteOptions::default(),
        )
        .await?;
    }
    crate::server::close_connection(&conn, "cleanup done").await;
    Ok(())
}

fn props(kind: &str, mode: u8) -> BasicProperties {
    BasicProperties::default()
        .with_content_type(CONTENT_TYPE.into())
        .with_type(kind.into())
        .with_delivery_mode(mode)
}

/// Properties of a request: persistent (it may wait for a server restart),
/// with the queue to answer to and the ID to answer with.
pub fn request_properties(reply_to: &str, correlation_id: &str) -> BasicProperties {
    props(TYPE_REQUEST, PERSISTENT)
        .with_reply_to(reply_to.into())
        .with_correlation_id(correlation_id.into())
}

/// Properties of a reply: transient, tagged with the request's correlation ID.
pub fn reply_properties(correlation_id: Option<&ShortString>) -> BasicProperties {
    let p = props(TYPE_REPLY, TRANSIENT);
    match correlation_id {
        Some(c) => p.with_correlation_id(c.clone()),
        None => p,
    }
}

/// Properties of a delivered chat message: persistent, `message_id` = the
/// chat message ID, `timestamp` = acceptance time in seconds.
pub fn message_properties(message_id: &str, timestamp_ms: i64) -> BasicProperties {
    props(TYPE_MESSAGE, PERSISTENT)
        .with_message_id(message_id.into())
        .with_timestamp(u64::try_from(timestamp_ms / 1000).unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_follow_the_namespace() {
        let n = Names::new("t-1.x").unwrap();
        let id = ClientId::parse("alice").unwrap();
        assert_eq!(n.server_queue(), "t-1.x.server");
        assert_eq!(n.deliver_exchange(), "t-1.x.deliver");
        assert_eq!(n.client_queue(&id), "t-1.x.client.alice");
        assert_eq!(n.dead_queue(), "t-1.x.dead");
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
