//! chat-amqp: the chat over RabbitMQ (AMQP 0-9-1, lapin).
//!
//! An adapter, like the gRPC crate: everything that is *chat* lives in
//! `chat-core`; this crate only moves `chat.proto` messages through the
//! broker. `docs/amqp.md` is the wire contract; [`topology`] declares it,
//! [`server`] runs the chat server behind the `<ns>.server` queue and
//! [`client`] implements [`chat_core::ChatClient`] on top of it.
//!
//! Reliability follows what RabbitMQ documents for no loss: durable queues,
//! persistent messages, publisher confirms, manual acks after the work is
//! done, and a prefetch limit. The broker may restart and either side may be
//! killed; both reconnect by themselves. Given several broker URLs (the
//! nodes of a cluster, [`brokers`]), they reconnect to the next node, and
//! with `--queue-type quorum` the queues survive losing a node.

pub mod broker_users;
pub mod brokers;
pub mod client;
mod connection;
pub mod deadline;
pub mod error;
mod request;
pub mod server;
pub mod topology;
mod unacked;

pub use broker_users::BrokerAuth;
pub use client::AmqpClient;
pub use connection::redact;
pub use error::AmqpError;
pub use server::{health, run};
pub use topology::QueueType;

use std::time::Duration;

/// Default broker URL (a local RabbitMQ with its default account and vhost).
pub const DEFAULT_AMQP_URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";

/// Default prefix of every exchange and queue name.
pub const DEFAULT_NAMESPACE: &str = "chat";

/// How long a client waits for the server's reply to one request. Long
/// enough to ride out a broker or server restart; a request that times out
/// may still be processed later (see docs/amqp.md).
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// Default AMQP heartbeat, in seconds, that server and clients ask for.
/// RabbitMQ closes the connection of a peer that sent nothing for about two
/// heartbeats, so a frozen client (SIGSTOP, a paused VM, a dead network
/// path without a TCP reset) loses its exclusive consumer, and its ID goes
/// offline, within about 10-15 s; the broker's own default (60 s) would
/// keep it for two to three minutes. Much shorter is not advised: a peer
/// stalled for a few seconds (a loaded machine) would be disconnected.
pub const DEFAULT_HEARTBEAT_SECS: u16 = 5;

/// Where the broker is and which set of names to use on it.
#[derive(Clone, Debug)]
pub struct AmqpConfig {
    /// `amqp://user:pass@host:port/vhost` (vhost URL-encoded: `%2f` is `/`),
    /// or a comma-separated list of such URLs: the nodes of one cluster,
    /// tried in turn ([`brokers::Brokers`]).
    pub url: String,
    /// Prefix of every exchange and queue name, so several independent chats
    /// (or parallel tests) can share one broker.
    pub namespace: String,
    /// How long a client request waits for its reply.
    pub request_timeout: Duration,
    /// Type of the durable queues; everyone on a namespace must agree.
    pub queue_type: QueueType,
    /// AMQP heartbeat asked for, in seconds (0: the broker's value); a
    /// `?heartbeat=` in a URL wins ([`brokers::heartbeat_uri`]).
    pub heartbeat: u16,
    /// Shared broker account, or one broker user per client
    /// ([`broker_users`]).
    pub broker_auth: BrokerAuth,
    /// Server, per-client mode: the RabbitMQ management API, admin account
    /// in the userinfo (`http://guest:guest@127.0.0.1:15672`).
    pub management_url: Option<String>,
    /// Per-client mode: password of the bootstrap user `<ns>.register`.
    pub register_password: String,
    /// Adaptive batching, on unless the environment says
    /// `CHAT_BATCHING=off` (the server's `--batching` flag sets it too).
    /// Server: when several messages wait for one recipient, they go into
    /// its queue as one `ChatMessageBatch` delivery (up to
    /// [`MAX_DELIVERY_BATCH`]); a message that waits alone goes out at once
    /// as a `ChatMessage`, so nothing waits for a batch to fill. Client:
    /// sends that wait while two requests are in flight go as one
    /// `send_batch` request ([`chat_core::send_queue`]). Off: one delivery
    /// per message, one request per send.
    pub batching: bool,
}

/// Most chat messages in one `ChatMessageBatch` delivery.
pub const MAX_DELIVERY_BATCH: usize = 64;
/// Most text bytes in one `ChatMessageBatch` delivery (far below the
/// broker's `max_message_size`).
pub const MAX_DELIVERY_BATCH_BYTES: usize = 256 * 1024;

impl AmqpConfig {
    pub fn new(url: impl Into<String>, namespace: impl Into<String>) -> Self {
        Self {
            url: url.into(),
            namespace: namespace.into(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            queue_type: QueueType::Classic,
            heartbeat: DEFAULT_HEARTBEAT_SECS,
            broker_auth: BrokerAuth::Shared,
            management_url: None,
            register_password: broker_users::DEFAULT_REGISTER_PASSWORD.to_owned(),
            batching: chat_core::send_queue::batching_from_env(),
        }
    }

    /// The same configuration asking for a `secs` heartbeat.
    pub fn with_heartbeat(mut self, secs: u16) -> Self {
        self.heartbeat = secs;
        self
    }

    /// The broker list of this configuration, with its heartbeat.
    pub fn brokers(&self) -> brokers::Brokers {
        brokers::Brokers::new(&self.url).with_heartbeat(self.heartbeat)
    }

    /// The same configuration in per-client broker-user mode; the server
    /// also needs [`Self::with_management_url`].
    pub fn with_broker_auth(mut self, broker_auth: BrokerAuth) -> Self {
        self.broker_auth = broker_auth;
        self
    }

    /// Where the server manages broker users (per-client mode).
    pub fn with_management_url(mut self, url: impl Into<String>) -> Self {
        self.management_url = Some(url.into());
        self
    }

    /// The same configuration with durable queues of type `queue_type`.
    pub fn with_queue_type(mut self, queue_type: QueueType) -> Self {
        self.queue_type = queue_type;
        self
    }

    /// The namespace's names, with this configuration's queue type.
    pub fn names(&self) -> Result<topology::Names, AmqpError> {
        Ok(topology::Names::new(&self.namespace)?.with_queue_type(self.queue_type))
    }
}

impl Default for AmqpConfig {
    fn default() -> Self {
        Self::new(DEFAULT_AMQP_URL, DEFAULT_NAMESPACE)
    }
}

/// The broker flags every AMQP binary takes.
#[derive(Clone, Debug, clap::Args)]
pub struct AmqpArgs {
    /// Broker URL (vhost URL-encoded: %2f is "/"), or a comma-separated
    /// list of the nodes of one cluster: the first that answers is used, and
    /// after losing it the next one.
    #[arg(long, env = "AMQP_URL", default_value = DEFAULT_AMQP_URL, global = true)]
    pub amqp_url: String,
    /// Prefix of every exchange and queue name; chats with different
    /// namespaces share a broker without seeing each other (clients and
    /// server must agree on it).
    #[arg(long, env = "CHAT_AMQP_NAMESPACE", default_value = DEFAULT_NAMESPACE, global = true)]
    pub namespace: String,
    /// Type of the chat's durable queues: classic (one broker) or quorum
    /// (replicated over a cluster). Server and clients must agree on it.
    #[arg(long, env = "CHAT_AMQP_QUEUE_TYPE", value_enum, default_value_t = QueueType::Classic, global = true)]
    pub queue_type: QueueType,
    /// AMQP heartbeat to ask the broker for, in seconds: a peer that sends
    /// nothing for about two heartbeats is disconnected (a frozen client
    /// loses its ID, a silent broker is left for the next node). 0 takes
    /// the broker's value (RabbitMQ: 60). A `heartbeat=` in the URL wins.
    #[arg(long, env = "CHAT_AMQP_HEARTBEAT", value_name = "SECS", default_value_t = DEFAULT_HEARTBEAT_SECS, global = true)]
    pub heartbeat: u16,
    /// Broker accounts: `shared` (everyone uses the account of the AMQP
    /// URL; the broker enforces nothing per client) or `per-client` (the
    /// server creates a broker user per client through the management API,
    /// whose permissions reach only its own queue; a client then logs in as
    /// that user, with its secret, and ignores the URL's user). Server and
    /// clients must agree on it.
    #[arg(long, env = "CHAT_AMQP_BROKER_AUTH", value_enum, default_value_t = BrokerAuth::Shared, global = true)]
    pub broker_auth: BrokerAuth,
    /// Per-client mode: password of the bootstrap broker user
    /// `<namespace>.register`, which may only register (public by design;
    /// server and clients must agree on it).
    #[arg(long, env = "CHAT_AMQP_REGISTER_PASSWORD", default_value = broker_users::DEFAULT_REGISTER_PASSWORD, global = true)]
    pub register_password: String,
}

impl AmqpArgs {
    pub fn config(&self) -> AmqpConfig {
        let mut config = AmqpConfig::new(self.amqp_url.clone(), self.namespace.clone())
            .with_queue_type(self.queue_type)
            .with_heartbeat(self.heartbeat)
            .with_broker_auth(self.broker_auth);
        config.register_password = self.register_password.clone();
        config
    }
}
