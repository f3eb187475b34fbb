//! The chat server behind the `<ns>.server` queue.
//!
//! [`ChatServer`] (chat-core) does the chat: validation, `log.txt`, the
//! journal, per-recipient sequence numbers. This module moves its input and
//! output through the broker, in the order that loses nothing:
//!
//! 1. a `Send` request arrives (unacknowledged) on `<ns>.server`;
//! 2. `ChatServer::send` logs it durably and gives it the recipient's next
//!    `seq`; the sender gets its `SendReply` now ("accepted");
//! 3. the *forwarder* (`forwarder`) takes it from the recipient's outbox
//!    in chat-core, publishes it, persistent and `mandatory`, to the
//!    recipient's durable queue (with other waiting messages for the same
//!    recipient in one `ChatMessageBatch`, when batching is on) and waits
//!    for the publisher confirm;
//! 4. only then does it record one cumulative `ChatServer::forwarded(
//!    recipient, seq)` per recipient and round (the next hop has
//!    everything up to `seq`), which releases the request handlers waiting
//!    on those seqs (`ChatServer::wait_forwarded`): they `basic_ack` their
//!    requests.
//!
//! A crash anywhere in between leaves either the request in `<ns>.server`
//! (the broker redelivers it; `ChatServer::send` recognises the message ID
//! and returns the same message) or the message in the recipient's outbox
//! (handed out again when the server comes back: a new connection starts
//! from the acknowledged cursors). Repeats that this may cause reach the
//! recipient with a `seq` it has seen, and it drops them.
//!
//! The forwarder publishes from the outboxes, in `seq` order per
//! recipient, rather than from each request handler: handlers finish in
//! any order, but a recipient must see seq 4 before seq 5 (it drops
//! anything at or below the last seq it showed), and the cumulative ack
//! must never pass an unconfirmed message. Each round only visits the
//! recipients that have something new (chat-core keeps them in a queue),
//! so its cost does not grow with everything that waits.
//!
//! The modules follow the parts: this one owns the connection's life
//! (connect, set up, serve, reconnect); `dispatch` decodes and answers
//! requests; `forwarder` and `recount` are the generation's background
//! tasks, with the event watcher of `presence` (who is online, in
//! chat-core, following the broker's consumers); `generation` is what
//! they share. A generation starts with `recount::survey`, which reads
//! every client queue once (depth and consumers) before requests and
//! events are served.
//!
//! `--max-pending` holds here as on gRPC: a message confirmed into a
//! recipient's queue still counts until the recipient consumed it. The
//! server cannot see that happen, so a *recount* task reads queue depths
//! back (`queue.declare` answers with the number of ready messages): every
//! client's once per connection, then once a second those of the recipients
//! whose count is within half of the limit (`RECOUNT_EVERY` in `recount`). A send is
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
//! (after `TAKEN_GRACE`, in case the previous server just died and the
//! broker has not noticed yet). A server that has served already and meets
//! another one while reconnecting does not exit: it logs an error and keeps
//! retrying with backoff, and takes over once the other one is gone (its
//! own old connection, if it is the one that still holds the consumer, goes
//! when the broker notices it is dead).

use std::collections::HashSet;
use std::future::Future;
use std::pin::pin;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use chat_core::ChatServer;
use chat_core::backoff::Backoff;
use futures::{FutureExt, StreamExt};
use lapin::options::{
    BasicCancelOptions, BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions,
};
use lapin::types::FieldTable;
use lapin::{Channel, Connection};
use tokio::task::{JoinHandle, JoinSet};

mod dispatch;
mod forwarder;
mod generation;
mod presence;
mod recount;

use crate::AmqpConfig;
use crate::broker_users::{BrokerAuth, BrokerUsers};
use crate::brokers::{Brokers, Connected};
use crate::connection::close_connection;
use crate::deadline::{bounded, op_timeout};
use crate::error::AmqpError;
use crate::topology::{self, Names};
use generation::{Broken, Generation};

/// Consumer tag of the server on its request queue.
const CONSUMER_TAG: &str = "amqp-server";
/// How long a broker connection attempt may take before it counts as failed
/// (shorter than [`crate::deadline::OP_TIMEOUT`]: reconnecting should be prompt;
/// [`crate::deadline::OP_TIMEOUT_ENV`] shortens both).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// On shutdown, how long in-flight requests get to finish (the rest go
/// back to the queue and are handled after a restart).
const DRAIN_TIMEOUT: Duration = Duration::from_secs(5);
/// At start, how long an exclusive consumer of another server is retried
/// before the server gives up (a server killed a moment ago still holds it
/// until the broker sees its connection close).
const TAKEN_GRACE: Duration = Duration::from_secs(5);
/// How many `list` queue look-ups run at once (recounts too).
const LIST_CONCURRENCY: usize = 16;

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
    let (brokers, users) = match prepare(&config, &names).await {
        Ok(prepared) => prepared,
        Err(e) => {
            server.shutdown();
            return Err(e);
        }
    };
    let service = Service {
        server: &server,
        users,
        batching: config.batching,
    };
    let mut shutdown = pin!(shutdown.fuse());
    let mut retry = Retry::new();
    loop {
        let attempt = connect_with_backoff(&brokers, &names, &mut retry.backoff, &mut shutdown);
        let Some(connected) = attempt.await else {
            break;
        };
        let outcome = service.serve_on(&connected, &names, &mut shutdown).await;
        if matches!(outcome, Outcome::Lost(_) | Outcome::SetupFailed(_)) {
            // The next attempt starts with the next node of the list.
            brokers.lost(connected.index);
        }
        let delay = match retry.after(outcome, &names, &connected.url) {
            Next::Stop => break,
            Next::Fail(e) => {
                server.shutdown();
                return Err(e);
            }
            Next::Wait(delay) => delay,
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

/// Checks the broker list and, in per-client mode, sets up the broker
/// users (see `broker_users`): what the server needs before it connects.
async fn prepare(
    config: &AmqpConfig,
    names: &Names,
) -> Result<(Brokers, Option<Arc<BrokerUsers>>), AmqpError> {
    let brokers = config.brokers();
    brokers.check()?;
    let users = match config.broker_auth {
        BrokerAuth::Shared => None,
        BrokerAuth::PerClient => {
            let Some(management) = &config.management_url else {
                return Err(AmqpError::Config(
                    "--broker-auth per-client needs --management-url (CHAT_AMQP_MANAGEMENT_URL), the RabbitMQ management API with an administrator account, e.g. http://guest:guest@127.0.0.1:15672".into(),
                ));
            };
            let setup =
                BrokerUsers::setup(management, &config.url, names, &config.register_password);
            Some(Arc::new(setup.await?))
        }
    };
    Ok((brokers, users))
}

/// Connects to a broker of the list, retrying with `backoff` and saying so
/// in the log until one answers. `None` once `shutdown` resolves first.
async fn connect_with_backoff(
    brokers: &Brokers,
    names: &Names,
    backoff: &mut Backoff,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Option<Connected> {
    loop {
        let attempt = connect(brokers, names);
        let conn = tokio::select! {
            () = &mut *shutdown => return None,
            r = attempt => r,
        };
        let why = match conn {
            Ok(connected) => return Some(connected),
            Err(why) => why,
        };
        let delay = backoff.next_delay();
        tracing::warn!(
            "waiting for the broker at {}: {why}; retrying in {:.1}s",
            brokers.redacted(),
            delay.as_secs_f64()
        );
        tokio::select! {
            () = &mut *shutdown => return None,
            () = tokio::time::sleep(delay) => {}
        }
    }
}

/// What every generation serves with, whatever broker it is on.
struct Service<'a> {
    server: &'a ChatServer,
    /// Per-client mode: creates a client's broker user at registration.
    users: Option<Arc<BrokerUsers>>,
    /// Adaptive batching of deliveries (`--batching`).
    batching: bool,
}

impl Service<'_> {
    /// Serves one generation on a fresh connection, saying in the log
    /// where it is connected.
    async fn serve_on(
        &self,
        connected: &Connected,
        names: &Names,
        shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
    ) -> Outcome {
        let conn = &connected.conn;
        tracing::info!(
            broker = %connected.url,
            namespace = names.namespace(),
            queue_type = %names.queue_type(),
            heartbeat_secs = conn.configuration().heartbeat(),
            "connected to the broker"
        );
        let place = Place {
            names,
            url: &connected.url,
            vhost: &connected.vhost,
        };
        serve(conn, self, place, shutdown).await
    }
}

/// What the server does after a generation ended.
enum Next {
    /// Shut down.
    Stop,
    /// Give up: the server cannot serve (at start).
    Fail(AmqpError),
    /// Connect again after this delay.
    Wait(Duration),
}

/// The reconnection policy: the backoff between connections, and whether
/// the server has served already (a server that has gives nothing up).
struct Retry {
    backoff: Backoff,
    /// A generation has served requests (its connection was lost after).
    served: bool,
    /// When the server started: a namespace taken at start is retried for
    /// [`TAKEN_GRACE`].
    started: tokio::time::Instant,
}

impl Retry {
    fn new() -> Self {
        Self {
            backoff: Backoff::new(),
            served: false,
            started: tokio::time::Instant::now(),
        }
    }

    /// Decides, and logs, what follows a generation that ended with
    /// `outcome` on the broker at `url`.
    fn after(&mut self, outcome: Outcome, names: &Names, url: &str) -> Next {
        match outcome {
            Outcome::Shutdown => Next::Stop,
            Outcome::Lost(reason) => {
                tracing::warn!("lost the broker connection ({url}): {reason}; reconnecting");
                self.served = true;
                self.backoff.reset();
                Next::Wait(self.backoff.next_delay())
            }
            Outcome::SetupFailed(reason) => {
                let delay = self.backoff.next_delay();
                tracing::warn!(
                    "cannot set up on the broker at {url}: {reason}; retrying in {:.1}s",
                    delay.as_secs_f64()
                );
                Next::Wait(delay)
            }
            Outcome::NoEvents(e) => {
                if !self.served {
                    return Next::Fail(e);
                }
                let delay = self.backoff.next_delay();
                tracing::error!("reconnecting: {e}; retrying in {:.1}s", delay.as_secs_f64());
                Next::Wait(delay)
            }
            Outcome::Taken => self.after_taken(names),
        }
    }

    /// Another server holds the namespace: fatal at start once
    /// [`TAKEN_GRACE`] has passed, retried otherwise.
    fn after_taken(&mut self, names: &Names) -> Next {
        let taken = taken_error(names);
        if !self.served && self.started.elapsed() >= TAKEN_GRACE {
            return Next::Fail(taken);
        }
        let delay = self.backoff.next_delay();
        let when = if self.served {
            "reconnecting"
        } else {
            "starting"
        };
        tracing::error!(
            "{when}: {taken}; serving again once it is gone, retrying in {:.1}s",
            delay.as_secs_f64()
        );
        Next::Wait(delay)
    }
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

enum Outcome {
    Shutdown,
    /// The connection failed while serving.
    Lost(String),
    /// Declaring or consuming failed before serving began.
    SetupFailed(String),
    /// Another server holds the exclusive consumer on `<ns>.server`.
    Taken,
    /// The broker does not publish consumer events
    /// ([`AmqpError::EventsMissing`]).
    NoEvents(AmqpError),
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

/// Opens a connection to a broker of the list, each attempt within
/// [`CONNECT_TIMEOUT`].
async fn connect(brokers: &Brokers, names: &Names) -> Result<Connected, AmqpError> {
    let name = format!("amqp-server {}", names.namespace());
    brokers
        .connect(&name, CONNECT_TIMEOUT.min(op_timeout()))
        .await
}

/// Where a generation serves: the namespace, and the broker it is
/// connected to (its URL without password, its vhost).
#[derive(Clone, Copy)]
struct Place<'a> {
    names: &'a Names,
    url: &'a str,
    vhost: &'a str,
}

/// What a generation works with, once set up.
struct Parts {
    consume: Channel,
    publish: Channel,
    replies: Channel,
    admin: Channel,
    consumer: lapin::Consumer,
    /// The broker's `consumer.deleted` events (see `presence`).
    events: lapin::Consumer,
}

/// Opens the channels, subscribes to the broker's consumer events,
/// declares the server side and consumes `<ns>.server` (exclusively). Each
/// step is bounded by [`op_timeout`].
async fn setup(conn: &Connection, place: Place<'_>) -> Result<Parts, AmqpError> {
    let (names, url) = (place.names, place.url);
    let t = op_timeout();
    let channel = || bounded("opening a channel", url, t, conn.create_channel());
    let (consume, publish, admin) = (channel().await?, channel().await?, channel().await?);
    let replies = channel().await?;
    // First: without events the server cannot serve, so it fails before
    // it takes the namespace.
    let what = format!("subscribing to {}", presence::EVENT_EXCHANGE);
    let events_channel = channel().await?;
    let subscribe = presence::subscribe(&events_channel, url, place.vhost);
    let events = bounded(what, url, t, subscribe).await?;
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
        events,
    })
}

/// Runs one generation on `conn`: sets up, reads the client queues back,
/// starts the background tasks and serves requests until the connection
/// fails or `shutdown` resolves. Closes the connection in every case.
async fn serve(
    conn: &Connection,
    service: &Service<'_>,
    place: Place<'_>,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Outcome {
    let Parts {
        consume,
        publish,
        replies,
        admin,
        mut consumer,
        events,
    } = match set_up(conn, place, shutdown).await {
        Ok(parts) => parts,
        Err(outcome) => return outcome,
    };
    let generation = Arc::new(Generation {
        server: service.server.clone(),
        names: place.names.clone(),
        publish,
        replies,
        admin,
        vhost: place.vhost.to_owned(),
        declared: Mutex::new(HashSet::new()),
        broken: Broken::new(),
        batching: service.batching,
        users: service.users.clone(),
    });
    if let Err(outcome) = survey(conn, &generation, shutdown).await {
        return outcome;
    }
    let mut tasks = JoinSet::new();
    let background = Background::spawn(&generation, events);
    tracing::info!(
        queue = %place.names.server_queue(),
        undelivered = service.server.undelivered_count(),
        "serving requests"
    );
    let outcome = serve_requests(&generation, &consume, &mut consumer, &mut tasks, shutdown).await;
    tasks.abort_all();
    drop(background);
    // Closed while the channels are still open, so that lapin does not see
    // them close underneath a closing connection.
    close_connection(conn, "amqp-server closing").await;
    outcome
}

/// [`setup`], unless `shutdown` comes first. Either way short of success
/// closes the connection and says what follows.
async fn set_up(
    conn: &Connection,
    place: Place<'_>,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Result<Parts, Outcome> {
    let set_up = tokio::select! {
        () = &mut *shutdown => {
            close_connection(conn, "amqp-server closing").await;
            return Err(Outcome::Shutdown);
        }
        r = setup(conn, place) => r,
    };
    match set_up {
        Ok(parts) => Ok(parts),
        Err(e) => {
            close_connection(conn, "amqp-server closing").await;
            Err(match e {
                e if is_taken(&e) => Outcome::Taken,
                e @ AmqpError::EventsMissing { .. } => Outcome::NoEvents(e),
                e => Outcome::SetupFailed(e.to_string()),
            })
        }
    }
}

/// [`recount::survey`], unless `shutdown` comes first. Requests and events
/// wait in their queues until it is done. Either way short of success
/// closes the connection and says what follows.
async fn survey(
    conn: &Connection,
    generation: &Generation,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Result<(), Outcome> {
    let surveyed = tokio::select! {
        () = &mut *shutdown => Err(None),
        r = recount::survey(generation) => r.map_err(Some),
    };
    if let Err(e) = surveyed {
        close_connection(conn, "amqp-server closing").await;
        return Err(match e {
            None => Outcome::Shutdown,
            Some(e) => Outcome::Lost(format!("reading the client queues back: {e}")),
        });
    }
    Ok(())
}

/// The generation's background tasks: `forwarder`, `recount` and the
/// event watcher of `presence`; aborted when dropped, so that they end
/// with the generation even when the server's own future is dropped (an
/// in-process server's task aborted): a watcher left running would go on
/// declaring client queues (presence checks consumers that way) for a
/// server that is gone.
struct Background {
    forwarder: JoinHandle<()>,
    recounter: JoinHandle<()>,
    watcher: JoinHandle<()>,
}

impl Background {
    /// Starts them, the forwarder first: whatever was accepted but never
    /// confirmed (by the previous process or connection) goes out first.
    fn spawn(generation: &Arc<Generation>, events: lapin::Consumer) -> Self {
        Self {
            forwarder: tokio::spawn(forwarder::forward(generation.clone())),
            recounter: tokio::spawn(recount::recount(generation.clone())),
            watcher: tokio::spawn(presence::watch(generation.clone(), events)),
        }
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        self.forwarder.abort();
        self.recounter.abort();
        self.watcher.abort();
    }
}

/// Hands each request to `dispatch` until the generation breaks, the
/// broker cancels the consumer or `shutdown` resolves (then [`drain`]).
async fn serve_requests(
    generation: &Arc<Generation>,
    consume: &Channel,
    consumer: &mut lapin::Consumer,
    tasks: &mut JoinSet<()>,
    shutdown: &mut (impl futures::future::FusedFuture<Output = ()> + Unpin),
) -> Outcome {
    loop {
        tokio::select! {
            () = &mut *shutdown => {
                drain(consume, tasks).await;
                break Outcome::Shutdown;
            }
            reason = generation.broken.wait() => break Outcome::Lost(reason),
            next = consumer.next() => match next {
                Some(Ok(delivery)) => dispatch::dispatch(generation, delivery, tasks),
                Some(Err(e)) => break Outcome::Lost(e.to_string()),
                None => break Outcome::Lost("the broker cancelled the request consumer".into()),
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => {}
        }
    }
}

/// On shutdown: stops taking requests and gives those in flight
/// [`DRAIN_TIMEOUT`] to finish.
async fn drain(consume: &Channel, tasks: &mut JoinSet<()>) {
    let _ = consume
        .basic_cancel(CONSUMER_TAG.into(), BasicCancelOptions::default())
        .await;
    let drained = tokio::time::timeout(DRAIN_TIMEOUT, async {
        while tasks.join_next().await.is_some() {}
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            left = tasks.len(),
            "shutting down with requests in flight; the broker will redeliver them"
        );
    }
}
