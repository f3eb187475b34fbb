//! The chat server behind the `<ns>.server` queue.
//!
//! [`ChatServer`] (chat-core) does the chat: validation, `log.txt`, the
//! journal, per-recipient sequence numbers. This module moves its input and
//! output through the broker, in the order that loses nothing:
//!
//! 1. a `Send` request arrives (unacknowledged) on `<ns>.server`;
//! 2. `ChatServer::send` logs it durably and gives it the recipient's next
//!    `seq`; the sender gets its `SendReply` now ("accepted");
//! 3. the *forwarder* publishes it, persistent and `mandatory`, to the
//!    recipient's durable queue and waits for the publisher confirm;
//! 4. only then does it record `ChatServer::ack(recipient, seq)` (the next
//!    hop has it) and `basic_ack` the request.
//!
//! A crash anywhere in between leaves either the request in `<ns>.server`
//! (the broker redelivers it; `ChatServer::send` recognises the message ID
//! and returns the same message) or the message in the recipient's mailbox
//! (re-published by the forwarder when the server comes back). Repeats that
//! this may cause reach the recipient with a `seq` it has seen, and it drops
//! them.
//!
//! The forwarder publishes from the mailboxes, in `seq` order per recipient,
//! rather than from each request handler: handlers finish in any order, but
//! a recipient must see seq 4 before seq 5 (it drops anything at or below
//! the last seq it showed), and the cumulative `ack` must never pass an
//! unconfirmed message.
//!
//! `--max-pending` holds here as on gRPC: a message confirmed into a
//! recipient's queue still counts until the recipient consumed it. The
//! server cannot see that happen, so a *recount* task reads queue depths
//! back (`queue.declare` answers with the number of ready messages): every
//! client's once per connection, then once a second those of the recipients
//! whose count is within half of the limit ([`RECOUNT_EVERY`]). A send is
//! checked against the count in chat-core, with no broker round trip.
//!
//! Any broker error ends the connection's *generation*: everything is torn
//! down and rebuilt on a new connection (redeclare, reconsume, republish).
//! Unacknowledged requests go back to the queue by the broker's own rules.
//!
//! One server per namespace: `<ns>.server` is consumed with an *exclusive*
//! consumer, because a second server would silently compete for requests
//! with a state of its own (clients would get wrong answers). The broker
//! refuses a second one with ACCESS_REFUSED. At start that ends the process
//! (after [`TAKEN_GRACE`], in case the previous server just died and the
//! broker has not noticed yet). A server that has served already and meets
//! another one while reconnecting does not exit: it logs an error and keeps
//! retrying with backoff, and takes over once the other one is gone (its
//! own old connection, if it is the one that still holds the consumer, goes
//! when the broker notices it is dead).

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::{ChatError, ChatServer, ClientId, ClientInfo, Credentials, ErrorCode};
use chat_proto::v1 as pb;
use futures::{FutureExt, StreamExt, TryStreamExt};
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    BasicRejectOptions, ConfirmSelectOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ConnectionProperties};
use prost::Message as _;
use tokio::sync::{Notify, oneshot, watch};
use tokio::task::JoinSet;

use crate::AmqpConfig;
use crate::broker_users::{BrokerAuth, BrokerUsers};
use crate::brokers::{Brokers, Connected};
use crate::deadline::{bounded, op_timeout};
use crate::error::{AmqpError, error_reply, error_reply_with};
use crate::request;
use crate::topology::{self, Names};

/// Consumer tag of the server on its request queue.
const CONSUMER_TAG: &str = "amqp-server";
/// How long a broker connection attempt may take before it counts as failed
/// (shorter than [`crate::deadline::OP_TIMEOUT`]: reconnecting should be prompt;
/// [`crate::deadline::OP_TIMEOUT_ENV`] shortens both).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long in-flight requests get to finish (the rest go
/// back to the queue and are handled after a restart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// Most messages the forwarder publishes before it waits for their confirms.
const FORWARD_BATCH: usize = 1024;
/// At start, how long an exclusive consumer of another server is retried
/// before the server gives up (a server killed a moment ago still holds it
/// until the broker sees its connection close).
const TAKEN_GRACE: Duration = Duration::from_secs(5);
/// How many `list` queue look-ups run at once (recounts too).
const LIST_CONCURRENCY: usize = 16;
/// How often the depth of the queues of recipients near `--max-pending` is
/// read back, so that a send refused because a recipient had not read is
/// accepted again about this long after it did.
const RECOUNT_EVERY: Duration = Duration::from_secs(1);

/// Serves the chat on the broker at `config.url` until `shutdown` resolves.
///
/// Waits for the broker at start and after losing it, retrying with backoff
/// and saying so in the log. Returns `Err` for a bad configuration, and
/// [`AmqpError::NamespaceTaken`] when another server serves the namespace
/// at start.
pub async fn run(
    config: AmqpConfig,
    server: ChatServer,
    shutdown: impl Future<Output = ()>,
) -> Result<(), AmqpError> {
    let names = config.names()?;
    let brokers = config.brokers();
    if let Err(e) = brokers.check() {
        server.shutdown();
        return Err(e);
    }
    let users = match config.broker_auth {
        BrokerAuth::Shared => None,
        BrokerAuth::PerClient => {
            let Some(management) = &config.management_url else {
                server.shutdown();
                return Err(AmqpError::Config(
                    "--broker-auth per-client needs --management-url (CHAT_AMQP_MANAGEMENT_URL), the RabbitMQ management API with an administrator account, e.g. http://guest:guest@127.0.0.1:15672".into(),
                ));
            };
            let setup =
                BrokerUsers::setup(management, &config.url, &names, &config.register_password);
            match setup.await {
                Ok(users) => Some(Arc::new(users)),
                Err(e) => {
                    server.shutdown();
                    return Err(e);
                }
            }
        }
    };
    let mut shutdown = pin!(shutdown.fuse());
    let mut backoff = Backoff::new();
    let mut served = false;
    let started = tokio::time::Instant::now();
    loop {
        let attempt = connect(&brokers, &names);
        let conn = tokio::select! {
            () = &mut shutdown => break,
            r = attempt => r,
        };
        let Connected { conn, index, url } = match conn {
            Ok(connected) => connected,
            Err(why) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "waiting for the broker at {}: {why}; retrying in {:.1}s",
                    brokers.redacted(),
                    delay.as_secs_f64()
                );
                tokio::select! {
                    () = &mut shutdown => break,
                    () = tokio::time::sleep(delay) => continue,
                }
            }
        };
        tracing::info!(
            broker = %url,
            namespace = names.namespace(),
            queue_type = %names.queue_type(),
            heartbeat_secs = conn.configuration().heartbeat(),
            "connected to the broker"
        );
        let outcome = serve(&conn, &server, &names, users.clone(), &url, &mut shutdown).await;
        if matches!(outcome, Outcome::Lost(_) | Outcome::SetupFailed(_)) {
            // The next attempt starts with the next node of the list.
            brokers.lost(index);
        }
        let delay = match outcome {
            Outcome::Shutdown => break,
            Outcome::Lost(reason) => {
                tracing::warn!("lost the broker connection ({url}): {reason}; reconnecting");
                served = true;
                backoff.reset();
                backoff.next_delay()
            }
            Outcome::SetupFailed(reason) => {
                let delay = backoff.next_delay();
                tracing::warn!(
                    "cannot set up on the broker at {url}: {reason}; retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                delay
            }
            Outcome::Taken => {
                let taken = taken_error(&names);
                if !served && started.elapsed() >= TAKEN_GRACE {
                    server.shutdown();
                    return Err(taken);
                }
                let delay = backoff.next_delay();
                let when = if served { "reconnecting" } else { "starting" };
                tracing::error!(
                    "{when}: {taken}; serving again once it is gone, retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                delay
            }
        };
        tokio::select! {
            () = &mut shutdown => break,
            () = tokio::time::sleep(delay) => {}
        }
    }
    server.shutdown();
    tracing::info!("amqp-server stopped");
    Ok(())
}

/// A healthcheck: the broker answers and some server consumes `<ns>.server`.
/// Returns the one line to print.
pub async fn health(config: &AmqpConfig) -> Result<String, AmqpError> {
    let names = config.names()?;
    let brokers = config.brokers();
    let conn = brokers
        .connect("amqp-server health", CONNECT_TIMEOUT)
        .await
        .map_err(|e| match e {
            AmqpError::Timeout { url, .. } => {
                AmqpError::Unhealthy(format!("broker at {url} did not answer"))
            }
            other => other,
        })?
        .conn;
    let ch = conn.create_channel().await?;
    let result = match topology::inspect_server_queue(&ch, &names).await {
        Ok(q) if q.consumer_count() > 0 => Ok(format!(
            "ok: {} has {} consumer(s), {} message(s) waiting",
            names.server_queue(),
            q.consumer_count(),
            q.message_count()
        )),
        Ok(_) => Err(AmqpError::Unhealthy(format!(
            "no amqp-server is consuming {}",
            names.server_queue()
        ))),
        Err(_) => Err(AmqpError::Unhealthy(format!(
            "queue {} does not exist: no amqp-server has run on this broker",
            names.server_queue()
        ))),
    };
    close_connection(&conn, "health check done").await;
    result
}

/// Most time a graceful connection close may take: lapin can wait for a
/// `close-ok` forever when the socket died while the close was being sent.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);

/// Closes `conn` politely if it is still up, without ever hanging.
pub(crate) async fn close_connection(conn: &Connection, why: &str) {
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, conn.close(200, why.into())).await;
}

pub(crate) fn connection_properties(name: &str) -> ConnectionProperties {
    ConnectionProperties::default().with_connection_name(name.into())
}

/// The URL without its password, for logs and error messages (each URL of
/// a comma-separated list).
pub fn redact(url: &str) -> String {
    if url.contains(',') {
        return url.split(',').map(redact).collect::<Vec<_>>().join(",");
    }
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    match rest.split_once('@') {
        Some((userinfo, host)) => {
            let user = userinfo.split(':').next().unwrap_or("");
            format!("{scheme}://{user}:***@{host}")
        }
        None => url.to_owned(),
    }
}

enum Outcome {
    Shutdown,
    /// The connection failed while serving.
    Lost(String),
    /// Declaring or consuming failed before serving began.
    SetupFailed(String),
    /// Another server holds the exclusive consumer on `<ns>.server`.
    Taken,
}

fn taken_error(names: &Names) -> AmqpError {
    AmqpError::NamespaceTaken {
        namespace: names.namespace().to_owned(),
        queue: names.server_queue(),
    }
}

/// The broker refused a consumer because another one is exclusive.
fn is_taken(e: &AmqpError) -> bool {
    use lapin::ErrorKind;
    use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
    matches!(e, AmqpError::Broker(e) if matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))))
}

/// Set once by whoever first sees the connection fail; ends the generation.
#[derive(Clone)]
struct Broken(Arc<watch::Sender<Option<String>>>);

impl Broken {
    fn new() -> Self {
        Self(Arc::new(watch::channel(None).0))
    }

    fn trigger(&self, reason: impl std::fmt::Display) {
        self.0.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    }

    async fn wait(&self) -> String {
        let mut rx = self.0.subscribe();
        let r = rx.wait_for(|v| v.is_some()).await;
        r.ok()
            .and_then(|v| v.clone())
            .unwrap_or_else(|| "closed".into())
    }
}

/// Everything that lives as long as one broker connection.
struct Generation {
    server: ChatServer,
    names: Names,
    /// Publishes chat messages; publisher confirms are on.
    publish: Channel,
    /// Publishes replies, without publisher confirms: a reply is not worth
    /// a round trip (a lost one is covered by the client's timeout and
    /// retry), and lapin keeps every confirm that is dropped unawaited until
    /// `wait_for_confirms`, which grew the server by ~0.6 KB per request.
    replies: Channel,
    /// Declarations and queue look-ups (consumer counts).
    admin: Channel,
    /// Client queues declared on this connection (declared again on the next).
    declared: Mutex<HashSet<ClientId>>,
    forwarder: ForwardQueue,
    broken: Broken,
    /// Per-client mode: creates a client's broker user at registration.
    users: Option<Arc<BrokerUsers>>,
}

impl Generation {
    fn declared(&self) -> MutexGuard<'_, HashSet<ClientId>> {
        self.declared.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn ensure_client_queue(&self, id: &ClientId) -> Result<(), AmqpError> {
        if !self.declared().contains(id) {
            topology::declare_client_queue(&self.admin, &self.names, id).await?;
            self.declared().insert(id.clone());
        }
        Ok(())
    }

    /// Answers a request, if it said where to.
    async fn reply(&self, to: &Request, body: pb::Reply) {
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
struct Request {
    delivery: Delivery,
    reply_to: Option<ShortString>,
    correlation_id: Option<ShortString>,
}

impl Request {
    async fn ack(&self, generation: &Generation) {
        if let Err(e) = self.delivery.acker.ack(BasicAckOptions::default()).await {
            generation.broken.trigger(e);
        }
    }

    /// Rejects the request without requeueing it: it goes to `<ns>.dead`
    /// and can never loop.
    async fn dead_letter(&self, generation: &Generation) {
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

/// Opens a connection to a broker of the list, each attempt within
/// [`CONNECT_TIMEOUT`].
async fn connect(brokers: &Brokers, names: &Names) -> Result<Connected, AmqpError> {
    let name = format!("amqp-server {}", names.namespace());
    brokers
        .connect(&name, CONNECT_TIMEOUT.min(op_timeout()))
        .await
}

/// What a generation works with, once set up.
struct Parts {
    consume: Channel,
    publish: Channel,
    replies: Channel,
    admin: Channel,
    consumer: lapin::Consumer,
}

/// Opens the channels, declares the server side and consumes `<ns>.server`
/// (exclusively). Each step is bounded by [`op_timeout`].
async fn setup(conn: &Connection, names: &Names, url: &str) -> Result<Parts, AmqpError> {
    let t = op_timeout();
    let channel = || bounded("opening a channel", url, t, conn.create_channel());
    let (consume, publish, admin) = (channel().await?, channel().await?, channel().await?);
    let replies = channel().await?;
    let confirms = publish.confirm_select(ConfirmSelectOptions::default());
    bounded("enabling publisher confirms", url, t, confirms).await?;
    let what = format!(
        "declaring exchange {} and queues {}, {}",
        names.deliver_exchange(),
        names.dead_queue(),
        names.server_queue()
    );
    bounded(what, url, t, topology::declare_server_side(&admin, names)).await?;
    let qos = consume.basic_qos(topology::SERVER_PREFETCH, BasicQosOptions::default());
    bounded("setting the prefetch (basic.qos)", url, t, qos).await?;
    let options = BasicConsumeOptions {
        exclusive: true,
        ..BasicConsumeOptions::default()
    };
    let consume_op = consume.basic_consume(
        names.server_queue().into(),
        CONSUMER_TAG.into(),
        options,
        FieldTable::default(),
    );
    let what = format!("consuming queue {}", names.server_queue());
    let consumer = bounded(what, url, t, consume_op).await?;
    Ok(Parts {
        consume,
        publish,
        replies,
        admin,
        consumer,
    })
}

async fn serve(
    conn: &Connection,
    server: &ChatServer,
    names: &Names,
    users: Option<Arc<BrokerUsers>>,
    url: &str,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Outcome {
    let set_up = tokio::select! {
        () = &mut *shutdown => {
            close_connection(conn, "amqp-server closing").await;
            return Outcome::Shutdown;
        }
        r = setup(conn, names, url) => r,
    };
    let Parts {
        consume,
        publish,
        replies,
        admin,
        mut consumer,
    } = match set_up {
        Ok(parts) => parts,
        Err(e) => {
            close_connection(conn, "amqp-server closing").await;
            return if is_taken(&e) {
                Outcome::Taken
            } else {
                Outcome::SetupFailed(e.to_string())
            };
        }
    };
    let generation = Arc::new(Generation {
        server: server.clone(),
        names: names.clone(),
        publish,
        replies,
        admin,
        declared: Mutex::new(HashSet::new()),
        forwarder: ForwardQueue::default(),
        broken: Broken::new(),
        users,
    });
    let mut tasks = JoinSet::new();
    let forwarder = tokio::spawn(forward(generation.clone()));
    let recounter = tokio::spawn(recount(generation.clone()));
    // Whatever was accepted but never confirmed (by the previous process or
    // connection) goes out first.
    generation.forwarder.notify.notify_one();
    tracing::info!(
        queue = %names.server_queue(),
        undelivered = server.undelivered().len(),
        "serving requests"
    );

    let outcome = loop {
        tokio::select! {
            () = &mut *shutdown => {
                let _ = consume.basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default()).await;
                let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
                    while tasks.join_next().await.is_some() {}
                }).await;
                if drained.is_err() {
                    tracing::warn!(left = tasks.len(), "shutting down with requests in flight; the broker will redeliver them");
                }
                break Outcome::Shutdown;
            }
            reason = generation.broken.wait() => break Outcome::Lost(reason),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => dispatch(&generation, delivery, &mut tasks),
                Some(Err(e)) => break Outcome::Lost(e.to_string()),
                None => break Outcome::Lost("the broker cancelled the request consumer".into()),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    };
    tasks.abort_all();
    forwarder.abort();
    recounter.abort();
    // Closed while the channels are still open, so that lapin does not see
    // them close underneath a closing connection.
    close_connection(conn, "amqp-server closing").await;
    outcome
}

fn dispatch(generation: &Arc<Generation>, delivery: Delivery, tasks: &mut JoinSet<()>) {
    let kind = delivery.properties.kind().as_ref().map(|k| k.as_str());
    let body = request::decode(kind, &delivery.data);
    let request = Request {
        reply_to: delivery.properties.reply_to().clone(),
        correlation_id: delivery.properties.correlation_id().clone(),
        delivery,
    };
    let g = generation.clone();
    if let Some(reply_to) = &request.reply_to
        && !topology::is_reply_queue(reply_to.as_str())
    {
        // Answering would publish into that queue through the default
        // exchange: into someone's inbox, say. Not carried out either (its
        // sender could not learn the outcome); dead-lettered for inspection.
        tracing::warn!(
            reply_to = reply_to.as_str(),
            "rejecting a request whose reply_to is not a server-named reply queue (amq.gen-*, amq.rabbitmq.reply-to)"
        );
        tasks.spawn(async move { request.dead_letter(&g).await });
        return;
    }
    match body {
        Err(why) => {
            tracing::warn!(
                bytes = request.delivery.data.len(),
                reply_to = ?request.reply_to,
                "rejecting a request: {why}"
            );
            tasks.spawn(async move {
                g.server.metrics().refused(why.code());
                let reply = error_reply(&why);
                g.reply(&request, reply).await;
                request.dead_letter(&g).await;
            });
        }
        Ok((pb::request::Body::Send(send), creds)) => {
            // Polled once here, in delivery order: `ChatServer::send` assigns
            // the recipient's seq before its first await, so messages from
            // one sender keep the order in which they were queued.
            let server = g.server.clone();
            let mut accepted = Box::pin(async move {
                let principal = server.authenticate(&creds)?;
                server.send(&principal, send).await
            });
            let early = (&mut accepted).now_or_never();
            tasks.spawn(async move {
                let result = match early {
                    Some(r) => r,
                    None => accepted.await,
                };
                finish_send(&g, request, result).await;
            });
        }
        Ok((other, creds)) => {
            tasks.spawn(async move {
                let result = match other {
                    pb::request::Body::Register(r) => register(&g, &creds, &r.client_id).await,
                    pb::request::Body::ListClients(_) => list(&g).await,
                    pb::request::Body::History(h) => history(&g, &creds, h).await,
                    pb::request::Body::Send(_) => unreachable!("handled above"),
                };
                match result {
                    Ok(body) => {
                        g.reply(&request, pb::Reply { body: Some(body) }).await;
                        request.ack(&g).await;
                    }
                    Err(AmqpError::Chat(ChatError::ShuttingDown)) => {}
                    Err(AmqpError::Chat(e)) => {
                        g.server.metrics().refused(e.code());
                        g.reply(&request, error_reply(&e)).await;
                        request.ack(&g).await;
                    }
                    Err(e @ (AmqpError::Management(_) | AmqpError::ManagementUnreachable(_))) => {
                        // The ID is registered; its broker user is not (yet).
                        // The client may register again (idempotent).
                        tracing::error!("{e}");
                        // The details (the management URL) stay in the log.
                        let why = "the server cannot create this client's broker user right now (its log says why); register again later".to_owned();
                        g.server.metrics().refused(ErrorCode::Unavailable);
                        g.reply(&request, error_reply_with(ErrorCode::Unavailable, why)).await;
                        request.ack(&g).await;
                    }
                    Err(e) => g.broken.trigger(e),
                }
            });
        }
    }
}

async fn finish_send(
    g: &Generation,
    request: Request,
    result: Result<chat_core::Receipt, ChatError>,
) {
    match result {
        Ok(message) => {
            let forwarded = g.forwarder.track(&message);
            let reply = pb::reply::Body::Send(pb::SendReply {
                id: message.id.to_string(),
                timestamp_ms: message.timestamp_ms,
            });
            g.reply(&request, pb::Reply { body: Some(reply) }).await;
            // The request stays unacknowledged until the recipient's queue
            // has the message; if this generation ends first, the broker
            // redelivers the request and the dedupe by ID takes over.
            if forwarded.await.is_ok() {
                request.ack(g).await;
            }
        }
        // Left unacknowledged: handled again after the restart.
        Err(ChatError::ShuttingDown) => {}
        Err(e) => {
            tracing::info!(error = %e, "send refused");
            g.server.metrics().refused(e.code());
            g.reply(&request, error_reply(&e)).await;
            request.ack(g).await;
        }
    }
}

/// Registers (claims) or resumes an ID. The secret is checked first, so
/// that nobody else learns anything about the ID or touches its queue.
async fn register(
    g: &Generation,
    creds: &Credentials,
    raw_id: &str,
) -> Result<pb::reply::Body, AmqpError> {
    let (principal, created) = g.server.register(creds, raw_id).await?;
    let id = principal.id().clone();
    let queue = topology::declare_client_queue(&g.admin, &g.names, &id).await?;
    g.declared().insert(id.clone());
    if queue.consumer_count() > 0 {
        return Err(ChatError::AlreadyOnline(id).into());
    }
    if let Some(users) = &g.users {
        // The secret was verified above: it becomes the broker password.
        users.grant(&id, &creds.secret).await?;
    }
    tracing::info!(client = %id, created, "client registered");
    Ok(pb::reply::Body::Register(pb::RegisterReply {
        client_id: id.to_string(),
        created,
    }))
}

/// Registered clients; online = someone consumes the client's queue.
async fn list(g: &Generation) -> Result<pb::reply::Body, AmqpError> {
    let clients: Vec<ClientInfo> = futures::stream::iter(g.server.list())
        .map(|c| async move {
            let q = topology::declare_client_queue(&g.admin, &g.names, &c.id).await?;
            Ok::<_, AmqpError>(ClientInfo {
                id: c.id,
                online: q.consumer_count() > 0,
            })
        })
        .buffered(LIST_CONCURRENCY)
        .try_collect()
        .await?;
    // Presence lives in the broker: this is the server's freshest count.
    let online = clients.iter().filter(|c| c.online).count();
    g.server.metrics().set_online(online);
    Ok(pb::reply::Body::ListClients(pb::ListClientsReply {
        clients: clients.iter().map(ClientInfo::to_proto).collect(),
    }))
}

/// One page of the asker's history (see `HistoryRequest` in chat.proto).
async fn history(
    g: &Generation,
    creds: &Credentials,
    req: pb::HistoryRequest,
) -> Result<pb::reply::Body, AmqpError> {
    let principal = g.server.authenticate(creds)?;
    let page = g
        .server
        .history_page(&principal, &req.client_id, req.after, req.limit)
        .await?;
    Ok(pb::reply::Body::History(page))
}

/// Keeps chat-core's count of what waits unread in the client queues
/// (`ChatServer::set_queued_downstream`) close to the truth for the
/// recipients where it decides anything. Runs for one generation.
async fn recount(g: Arc<Generation>) {
    if let Err(e) = recount_loop(&g).await {
        g.broken.trigger(e);
    }
}

async fn recount_loop(g: &Generation) -> Result<(), AmqpError> {
    // After a (re)start the server knows nothing of what waits downstream.
    recount_queues(g, g.server.downstream_marks()).await?;
    let mut every = tokio::time::interval(RECOUNT_EVERY);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        every.tick().await;
        let candidates = g.server.downstream_recount_candidates();
        if !candidates.is_empty() {
            recount_queues(g, candidates).await?;
        }
    }
}

/// Reads the depth of each client's queue (declaring it, which is
/// idempotent and answers with its ready messages) and hands it to
/// chat-core with the cursor read before asking. Deliveries a connected
/// client holds unacknowledged (at most its prefetch) are not in that count.
async fn recount_queues(g: &Generation, marks: Vec<(ClientId, u64)>) -> Result<(), AmqpError> {
    futures::stream::iter(marks)
        .map(|(id, mark)| async move {
            let q = topology::declare_client_queue(&g.admin, &g.names, &id).await?;
            g.declared().insert(id.clone());
            g.server
                .set_queued_downstream(&id, mark, q.message_count() as usize);
            Ok::<_, AmqpError>(())
        })
        .buffer_unordered(LIST_CONCURRENCY)
        .try_collect::<()>()
        .await
}

/// Handlers waiting for "your message reached its recipient's queue".
#[derive(Default)]
struct ForwardQueue {
    notify: Notify,
    waiters: Mutex<Vec<Waiter>>,
}

struct Waiter {
    to: ClientId,
    seq: u64,
    done: oneshot::Sender<()>,
}

impl ForwardQueue {
    /// Wakes the forwarder for a newly accepted message and returns what
    /// resolves once it is confirmed (or was already).
    fn track(&self, m: &chat_core::Receipt) -> oneshot::Receiver<()> {
        let (done, rx) = oneshot::channel();
        self.waiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(Waiter {
                to: m.to.clone(),
                seq: m.seq,
                done,
            });
        self.notify.notify_one();
        rx
    }
}

/// Publishes every undelivered message, per recipient in seq order, waits
/// for the confirms and moves the recipients' cursors. Runs for one
/// generation; any broker error ends it.
async fn forward(g: Arc<Generation>) {
    if let Err(e) = forward_loop(&g).await {
        g.broken.trigger(e);
    }
}

async fn forward_loop(g: &Generation) -> Result<(), AmqpError> {
    // Highest seq published on this connection, per recipient.
    let mut published: HashMap<ClientId, u64> = HashMap::new();
    let mut retry = Backoff::new();
    loop {
        g.forwarder.notify.notified().await;
        // Waiters are taken before the snapshot: a message whose handler
        // registered here was committed before it, so the snapshot shows
        // whether it is still undelivered.
        let waiters = std::mem::take(
            &mut *g
                .forwarder
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner()),
        );
        let undelivered = g.server.undelivered();
        let pending: HashSet<(ClientId, u64)> =
            undelivered.iter().map(|m| (m.to.clone(), m.seq)).collect();

        let mut inflight = Vec::new();
        let mut more = false;
        for m in undelivered {
            if published.get(&m.to).is_some_and(|&s| m.seq <= s) {
                continue;
            }
            if inflight.len() >= FORWARD_BATCH {
                more = true;
                break;
            }
            g.ensure_client_queue(&m.to).await?;
            let confirm = g
                .publish
                .basic_publish(
                    g.names.deliver_exchange().into(),
                    m.to.as_str().into(),
                    BasicPublishOptions {
                        mandatory: true,
                        ..BasicPublishOptions::default()
                    },
                    &m.to_proto().encode_to_vec(),
                    topology::message_properties(&m.id.to_string(), m.timestamp_ms),
                )
                .await?;
            published.insert(m.to.clone(), m.seq);
            inflight.push((m, confirm));
        }

        let mut failed: HashSet<ClientId> = HashSet::new();
        for (m, confirm) in inflight {
            if failed.contains(&m.to) {
                continue;
            }
            let why = match confirm.await? {
                Confirmation::Ack(None) | Confirmation::NotRequested => None,
                Confirmation::Ack(Some(returned)) => Some(format!(
                    "returned by the broker: {}",
                    returned.reply_text.as_str()
                )),
                Confirmation::Nack(_) => Some("refused (nack) by the broker".to_owned()),
            };
            match why {
                None => {
                    g.server.metrics().delivered(1);
                    if let Err(e) = g.server.forwarded(&m.to, m.seq).await {
                        tracing::error!(error = %e, "cannot record a delivery");
                    }
                }
                Some(why) => {
                    tracing::warn!(to = %m.to, seq = m.seq, "message not stored by the broker ({why}); will publish it again");
                    // Publish again from this one on, after re-declaring the queue.
                    published.insert(m.to.clone(), m.seq - 1);
                    g.declared().remove(&m.to);
                    failed.insert(m.to.clone());
                }
            }
        }

        let mut still_waiting = Vec::new();
        for w in waiters {
            // Every publish of this round was confirmed or rolled back, so
            // `published` only covers messages the broker has stored.
            let done = !pending.contains(&(w.to.clone(), w.seq))
                || published.get(&w.to).is_some_and(|&s| w.seq <= s);
            if done {
                let _ = w.done.send(());
            } else {
                still_waiting.push(w);
            }
        }
        if !still_waiting.is_empty() {
            g.forwarder
                .waiters
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend(still_waiting);
        }
        if !failed.is_empty() {
            retry.wait().await;
            g.forwarder.notify.notify_one();
        } else {
            retry.reset();
            if more {
                g.forwarder.notify.notify_one();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwords_stay_out_of_logs() {
        assert_eq!(
            redact("amqp://guest:secret@host:5672/%2f"),
            "amqp://guest:***@host:5672/%2f"
        );
        assert_eq!(redact("amqp://host/%2f"), "amqp://host/%2f");
        assert_eq!(
            redact("amqp://a:x@h1/%2f,amqp://b:y@h2/%2f"),
            "amqp://a:***@h1/%2f,amqp://b:***@h2/%2f"
        );
    }
}
