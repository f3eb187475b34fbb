//! The broker-side layout of the chat (docs/amqp.md is the prose version).
//!
//! ```text
//!  client --Request--> <ns>.requests (direct) --"<ns>.server"--> <ns>.server --> amqp-server
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
//!   Clients publish to it through the exchange `<ns>.requests`, so that
//!   with per-client broker users ([`crate::broker_users`]) no client needs
//!   write access to the default exchange (which reaches every queue).
//! * Replies go to a per-connection, exclusive, server-named queue: it
//!   disappears with the connection, so nothing piles up for a client that
//!   is gone, and the `correlation_id` matches a reply to its request.
//! * Every declaration is made with exactly the arguments below by every
//!   party that makes it (server, Rust client), because RabbitMQ refuses a
//!   redeclaration with different arguments. That includes the queue type
//!   ([`QueueType`], `--queue-type`): it is part of [`Names`], so every
//!   declaration of one process uses the same, and a process started with
//!   another type than the queues have gets [`AmqpError::QueueTypeMismatch`].
//! * Quorum queues (replicated with Raft over the nodes of a cluster) hold
//!   the durable state: `<ns>.server`, `<ns>.client.<id>` and `<ns>.dead`.
//!   What they lack in RabbitMQ 3.10 does not matter here: the chat uses no
//!   message priorities, no TTL, no global QoS, and `<ns>.dead`'s length
//!   limit uses the default `drop-head` overflow, the one quorum queues
//!   implement. Exclusive *consumers* work on them; exclusive *queues* do
//!   not exist, which is why the per-connection reply queue stays classic
//!   whatever the type (it dies with its connection anyway).

use chat_core::ClientId;
use lapin::options::{ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString, ShortString};
use lapin::{BasicProperties, Channel, ExchangeKind, Queue};

use crate::error::AmqpError;

/// The type of the chat's durable queues (`x-queue-type`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum QueueType {
    /// One copy, on the node that declared it (a single broker).
    #[default]
    Classic,
    /// Replicated on (up to) three nodes with Raft; survives losing a
    /// minority of them. For a cluster.
    Quorum,
}

impl QueueType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Classic => "classic",
            Self::Quorum => "quorum",
        }
    }
}

impl std::fmt::Display for QueueType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for QueueType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "classic" => Ok(Self::Classic),
            "quorum" => Ok(Self::Quorum),
            other => Err(format!(
                "unknown queue type {other:?} (use classic or quorum)"
            )),
        }
    }
}

/// `content_type` of every chat message body: protobuf of chat.proto.
pub const CONTENT_TYPE: &str = "application/x-protobuf";
/// `type` property of a request (body: `chat.v1.Request`).
pub const TYPE_REQUEST: &str = "chat.v1.Request";
/// `type` property of a reply (body: `chat.v1.Reply`).
pub const TYPE_REPLY: &str = "chat.v1.Reply";
/// `type` property of a delivered message (body: `chat.v1.ChatMessage`).
pub const TYPE_MESSAGE: &str = "chat.v1.ChatMessage";
/// `type` of a delivery that holds several chat messages (see
/// [`batch_properties`]).
pub const TYPE_MESSAGE_BATCH: &str = "chat.v1.ChatMessageBatch";

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

/// The names derived from one namespace, and the type of its queues.
#[derive(Clone, Debug)]
pub struct Names {
    ns: String,
    /// Declared on every durable queue of the namespace.
    queue_type: QueueType,
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
                queue_type: QueueType::Classic,
            })
        } else {
            Err(AmqpError::InvalidNamespace(
                namespace.chars().take(80).collect(),
            ))
        }
    }

    /// The same names, with durable queues of type `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    pub fn namespace(&self) -> &str {
        &self.ns
    }

    pub fn queue_type(&self) -> QueueType {
        self.queue_type
    }

    /// Direct exchange that routes a message to its recipient's queue.
    pub fn deliver_exchange(&self) -> String {
        format!("{}.deliver", self.ns)
    }

    /// The server's request queue (clients publish to it through
    /// [`Self::requests_exchange`], routing key = this name).
    pub fn server_queue(&self) -> String {
        format!("{}.server", self.ns)
    }

    /// Exchange (direct, durable) that clients publish requests to, routing
    /// key = [`Self::server_queue`]; bound to the request queue. A client
    /// needs write access to it only, not to the default exchange.
    pub fn requests_exchange(&self) -> String {
        format!("{}.requests", self.ns)
    }

    /// The bootstrap broker user (per-client mode): may only register.
    pub fn register_user(&self) -> String {
        format!("{}.register", self.ns)
    }

    /// A client's own broker user (per-client mode); same name as its inbox.
    pub fn client_user(&self, id: &ClientId) -> String {
        self.client_queue(id)
    }

    /// Where rejected (poison) requests end up.
    pub fn dead_queue(&self) -> String {
        format!("{}.dead", self.ns)
    }

    /// The durable inbox of one client.
    pub fn client_queue(&self, id: &ClientId) -> String {
        format!("{}{id}", self.client_queue_prefix())
    }

    /// What every client's inbox name starts with (the ID follows).
    pub fn client_queue_prefix(&self) -> String {
        format!("{}.client.", self.ns)
    }
}

fn durable() -> QueueDeclareOptions {
    QueueDeclareOptions {
        durable: true,
        ..QueueDeclareOptions::default()
    }
}

/// The arguments every durable queue of `names` starts from: none for a
/// classic queue (as before queue types were configurable, so that queues
/// declared by older versions stay equivalent), `x-queue-type` otherwise.
fn base_args(names: &Names) -> FieldTable {
    let mut args = FieldTable::default();
    if names.queue_type != QueueType::Classic {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from(names.queue_type.as_str())),
        );
    }
    args
}

/// Declares the durable queue `queue` with `args`; a refusal because the
/// queue exists with other arguments says which flag to align.
async fn declare_durable(
    ch: &Channel,
    names: &Names,
    queue: &str,
    args: FieldTable,
) -> Result<Queue, AmqpError> {
    ch.queue_declare(queue.into(), durable(), args)
        .await
        .map_err(|e| mismatch(e, names, queue))
}

/// PRECONDITION_FAILED on a declare: the queue exists with other arguments
/// (in practice another `x-queue-type`).
fn mismatch(e: lapin::Error, names: &Names, queue: &str) -> AmqpError {
    use lapin::ErrorKind;
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    match e.kind() {
        ErrorKind::ProtocolError(amqp)
            if matches!(
                amqp.kind(),
                AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED)
            ) =>
        {
            AmqpError::QueueTypeMismatch {
                queue: queue.to_owned(),
                queue_type: names.queue_type,
                detail: amqp.get_message().to_string(),
            }
        }
        _ => AmqpError::Broker(e),
    }
}

fn server_queue_args(names: &Names) -> FieldTable {
    let mut args = base_args(names);
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
    declare_durable(ch, names, &names.server_queue(), server_queue_args(names)).await
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
    let mut dead_args = base_args(names);
    dead_args.insert(
        "x-max-length".into(),
        AMQPValue::LongLongInt(DEAD_LETTER_MAX),
    );
    declare_durable(ch, names, &names.dead_queue(), dead_args).await?;
    declare_server_queue(ch, names).await?;
    declare_request_route(ch, names).await?;
    Ok(())
}

/// Declares the request exchange `<ns>.requests` and binds the request
/// queue to it (routing key `<ns>.server`). The server does it at start;
/// a client with a shared broker account does it too (after declaring the
/// queue), so that its requests wait even if no server ever ran.
pub async fn declare_request_route(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    declare_direct_exchange(ch, &names.requests_exchange()).await?;
    ch.queue_bind(
        names.server_queue().into(),
        names.requests_exchange().into(),
        names.server_queue().into(),
        QueueBindOptions::default(),
        FieldTable::default(),
    )
    .await?;
    Ok(())
}

/// Whether `reply_to` names a queue that only its own connection can use:
/// a server-named queue (`amq.gen-…`) or RabbitMQ's direct reply-to
/// (`amq.rabbitmq.reply-to…`). The server answers nothing else, so that a
/// request cannot make it publish into someone's inbox (or any other
/// durable queue) through the default exchange.
pub fn is_reply_queue(reply_to: &str) -> bool {
    reply_to.starts_with("amq.gen-") || reply_to.starts_with("amq.rabbitmq.reply-to")
}

pub async fn declare_deliver_exchange(ch: &Channel, names: &Names) -> Result<(), AmqpError> {
    declare_direct_exchange(ch, &names.deliver_exchange()).await
}

/// A durable direct exchange, without arguments (both of the chat's).
async fn declare_direct_exchange(ch: &Channel, name: &str) -> Result<(), AmqpError> {
    ch.exchange_declare(
        name.into(),
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
/// the consumer count, which is how the server checks with the broker
/// whether the client is online (a client consumes its inbox with an
/// exclusive consumer; see `server::presence`).
pub async fn declare_client_queue(
    ch: &Channel,
    names: &Names,
    id: &ClientId,
) -> Result<Queue, AmqpError> {
    let queue = names.client_queue(id);
    let q = declare_durable(ch, names, &queue, base_args(names)).await?;
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

/// Deletes from the broker at `url` (one URL or a list) what a chat left under `names`: the
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
    let conn = crate::brokers::Brokers::new(url)
        .connect(
            &format!("cleanup {}", names.namespace()),
            crate::deadline::op_timeout(),
        )
        .await?
        .conn;
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
        for exchange in [names.deliver_exchange(), names.requests_exchange()] {
            ch.exchange_delete(exchange.as_str().into(), ExchangeDeleteOptions::default())
                .await?;
        }
    }
    crate::connection::close_connection(&conn, "cleanup done").await;
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

/// Properties of a delivery of several chat messages: `message_id` and
/// `timestamp` are those of the first.
pub fn batch_properties(first_id: &str, timestamp_ms: i64) -> BasicProperties {
    props(TYPE_MESSAGE_BATCH, PERSISTENT)
        .with_message_id(first_id.into())
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
        assert_eq!(n.requests_exchange(), "t-1.x.requests");
    }

    #[test]
    fn only_connection_owned_queues_are_answered() {
        assert!(is_reply_queue("amq.gen-JzTY20BRgKO-HjmUJj0wLg"));
        assert!(is_reply_queue("amq.rabbitmq.reply-to"));
        assert!(is_reply_queue("amq.rabbitmq.reply-to.g1h2AA.abc"));
        for bad in ["t.client.bob", "t.server", "", "amq.gen", "xamq.gen-1"] {
            assert!(!is_reply_queue(bad), "{bad:?}");
        }
    }

    #[test]
    fn classic_queues_keep_the_arguments_they_always_had() {
        let n = Names::new("t").unwrap();
        assert_eq!(base_args(&n), FieldTable::default());
        let args = server_queue_args(&n);
        assert!(!args.inner().contains_key("x-queue-type"));
        assert!(args.inner().contains_key("x-dead-letter-exchange"));
    }

    #[test]
    fn quorum_queues_say_so_on_every_durable_queue() {
        let n = Names::new("t").unwrap().with_queue_type(QueueType::Quorum);
        let quorum = Some(&AMQPValue::LongString(LongString::from("quorum")));
        assert_eq!(base_args(&n).inner().get("x-queue-type"), quorum);
        let server = server_queue_args(&n);
        assert_eq!(server.inner().get("x-queue-type"), quorum);
        assert!(server.inner().contains_key("x-dead-letter-routing-key"));
    }

    #[test]
    fn queue_types_parse_from_their_names() {
        for t in [QueueType::Classic, QueueType::Quorum] {
            assert_eq!(t.as_str().parse::<QueueType>(), Ok(t));
        }
        assert!("stream".parse::<QueueType>().is_err());
    }

    #[test]
    fn bad_namespaces_are_refused() {
        for bad in ["", "a b", "a/b", &"x".repeat(65)] {
            assert!(Names::new(bad).is_err(), "{bad:?}");
        }
    }
}
