//! [`AmqpClient`]: the [`ChatClient`] over RabbitMQ.
//!
//! One connection with three channels: *publish* (requests, publisher
//! confirms on), *replies* (an exclusive, server-named reply queue consumed
//! with auto-ack: a reply is only useful to this connection) and, once
//! joined, *inbox* (the client's durable queue `<ns>.client.<id>`, consumed
//! with an **exclusive** consumer and manual acks).
//!
//! Online means "consumes its inbox": the exclusive consumer is what makes
//! a second client with the same ID fail even if it raced past the server's
//! check at registration, and the broker drops the consumer the moment the
//! connection dies (kill -9 included). After each successful consume (the
//! first, and every one after a reconnection) the client sends a `join`
//! request; the server lists it online from its answer on, and offline
//! once the broker reports the consumer gone (see `server::presence`).
//!
//! Every request carries the client's ID and secret in its `auth` field
//! (added in `Shared::request`, the one place requests are built).
//!
//! Requests are matched to replies by `correlation_id`. Every request in
//! flight keeps its encoded body until answered: after a reconnection it is
//! published again with the new reply queue. That is safe because every
//! request is idempotent (a send carries its client-chosen message ID; the
//! server answers a repeated ID with the same message).
//!
//! A *manager* task owns the connection: when it breaks it reports
//! `Reconnecting`, reconnects with backoff (to the next node, given a list
//! of broker URLs: [`crate::brokers`]), re-declares, re-consumes the inbox,
//! re-publishes pending requests and reports `Connected`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use chat_core::backoff::Backoff;
use chat_core::client::{AckStream, incoming_channel};
use chat_core::send_queue::SendOutcome;
use chat_core::{
    Accepted, ChatClient, ClientError, ClientId, ClientInfo, ConnectionState, Delivered, Incoming,
    IncomingSink, Message, Secret, SendCarrier, Sends,
};
use chat_proto::v1 as pb;
use futures::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::protocol::{AMQPErrorKind, AMQPSoftError};
use lapin::types::{FieldTable, ShortString};
use lapin::{Channel, Confirmation, Connection, ErrorKind};
use prost::Message as _;
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

use crate::AmqpConfig;
use crate::broker_users::{BrokerAuth, RELOGIN_TIMEOUT, client_login, register_login};
use crate::brokers::{Brokers, Connected};
use crate::connection::{close_connection, redact};
use crate::error::AmqpError;
use crate::topology::{self, Names};
use crate::unacked::Unacked;

/// How long one broker connection attempt may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// A chat client on the broker. Cheap to clone; the connection closes when
/// the last clone is dropped.
#[derive(Clone)]
pub struct AmqpClient {
    shared: Arc<Shared>,
    /// Sends, batched with batching on.
    sends: Sends<Requests>,
    _life: Arc<Life>,
}

impl std::fmt::Debug for AmqpClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AmqpClient")
            .field("id", &self.shared.id)
            .finish_non_exhaustive()
    }
}

/// How the client carries sends: `send` and `send_batch` requests on the
/// server's queue (batching itself is chat-core's `send_queue`).
#[derive(Clone)]
struct Requests(Arc<Shared>);

impl SendCarrier for Requests {
    async fn send_one(&self, request: pb::SendRequest) -> SendOutcome {
        match self.0.request(pb::request::Body::Send(request)).await? {
            pb::reply::Body::Send(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    async fn send_batch(
        &self,
        batch: pb::SendBatchRequest,
    ) -> Result<pb::SendBatchReply, ClientError> {
        match self.0.request(pb::request::Body::SendBatch(batch)).await? {
            pb::reply::Body::SendBatch(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }
}

/// Dropped with the last clone: tells the manager to close the connection.
struct Life {
    _stop: watch::Sender<()>,
}

struct Shared {
    config: AmqpConfig,
    /// The broker URL(s) of `config`, and which node to try first.
    brokers: Brokers,
    names: Names,
    id: ClientId,
    /// Proves `id` on every request.
    secret: Secret,
    /// The current connection; `None` while reconnecting.
    link: watch::Sender<Option<Arc<Link>>>,
    /// Requests waiting for their reply, by correlation ID.
    pending: Mutex<HashMap<String, Pending>>,
    /// Set by `join`: where incoming messages go, across reconnections.
    joined: Mutex<Option<Joined>>,
    next_generation: AtomicU64,
}

struct Pending {
    body: Vec<u8>,
    reply: oneshot::Sender<pb::Reply>,
}

/// The adapter's ends of [`Incoming`]; each is `None` once the consumer
/// closed it and every acknowledgement was carried.
#[derive(Clone)]
struct Joined {
    sink: Arc<tokio::sync::Mutex<Option<IncomingSink>>>,
    acks: Arc<tokio::sync::Mutex<Option<AckStream>>>,
}

impl Joined {
    async fn state(&self, state: ConnectionState) {
        if let Some(sink) = &*self.sink.lock().await {
            sink.state(state).await;
        }
    }
}

/// The inbox consumed on one connection, not yet handed to its task.
struct Inbox {
    ch: Channel,
    consumer: lapin::Consumer,
}

/// One broker connection and what hangs off it.
struct Link {
    conn: Connection,
    /// Per-client mode: logged in as the bootstrap user `<ns>.register`
    /// (this ID has no broker user yet), which may only register.
    bootstrap: bool,
    publish: Channel,
    reply_queue: ShortString,
    /// Counts the connections of this client, so that a relogin can wait
    /// for the link that replaces this one.
    generation: u64,
    /// Which URL of [`Shared::brokers`] this connection went to.
    node: usize,
    /// Set when anything on this connection fails.
    broken: watch::Sender<Option<String>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl Link {
    fn trigger(&self, reason: impl std::fmt::Display) {
        self.broken.send_if_modified(|v| {
            if v.is_none() {
                *v = Some(reason.to_string());
                true
            } else {
                false
            }
        });
    }

    async fn wait_broken(&self) -> String {
        let mut rx = self.broken.subscribe();
        let r = rx.wait_for(|v| v.is_some()).await;
        r.ok()
            .and_then(|v| v.clone())
            .unwrap_or_else(|| "closed".into())
    }

    fn spawn(&self, task: impl std::future::Future<Output = ()> + Send + 'static) {
        self.tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push(tokio::spawn(task));
    }

    async fn close(&self) {
        for t in self
            .tasks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            t.abort();
        }
        close_connection(&self.conn, "amqp-client closing").await;
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Shared {
    fn unavailable(&self, reason: impl std::fmt::Display) -> ClientError {
        ClientError::Unavailable {
            endpoint: redact(&self.config.url),
            reason: reason.to_string(),
        }
    }

    fn joined(&self) -> Option<Joined> {
        lock(&self.joined).clone()
    }

    fn per_client(&self) -> bool {
        self.config.broker_auth == BrokerAuth::PerClient
    }

    /// Connects with the shared account of the URL, or in per-client mode
    /// as this ID's own broker user, falling back to the bootstrap user
    /// when the broker refuses that login (the ID has no user yet).
    async fn connect_broker(&self, name: &str) -> Result<(Connected, bool), AmqpError> {
        if !self.per_client() {
            return Ok((self.brokers.connect(name, CONNECT_TIMEOUT).await?, false));
        }
        let own = client_login(&self.names, &self.id, self.secret.expose());
        match self
            .brokers
            .connect_as(name, CONNECT_TIMEOUT, Some(&own))
            .await
        {
            Ok(c) => return Ok((c, false)),
            Err(e) if login_refused(&e) => {}
            Err(e) => return Err(e),
        }
        let bootstrap = register_login(&self.names, &self.config.register_password);
        tracing::debug!(
            user = %bootstrap.user,
            "the broker refuses the login as {}; connecting as the bootstrap user to register",
            own.user
        );
        match self
            .brokers
            .connect_as(name, CONNECT_TIMEOUT, Some(&bootstrap))
            .await
        {
            Ok(c) => Ok((c, true)),
            Err(e) if login_refused(&e) => Err(AmqpError::Config(format!(
                "the broker refuses the logins of both broker users {} and {} (--broker-auth per-client): is an amqp-server running with --broker-auth per-client on namespace {} of this broker, with the same --register-password?",
                own.user,
                bootstrap.user,
                self.names.namespace()
            ))),
            Err(e) => Err(e),
        }
    }

    /// Opens a connection: publish channel with confirms, the request queue
    /// and its exchange (shared account: so requests wait even if no server
    /// ever ran) and the reply queue.
    async fn open_link(self: &Arc<Self>) -> Result<Arc<Link>, AmqpError> {
        let name = format!("amqp-client {}/{}", self.names.namespace(), self.id);
        let (
            Connected {
                conn, index, url, ..
            },
            bootstrap,
        ) = self.connect_broker(&name).await?;
        tracing::debug!(broker = %url, bootstrap, "connected");
        let publish = self.open_publish(&conn).await?;
        let (reply_queue, replies) = open_replies(&conn).await?;
        let link = Arc::new(Link {
            conn,
            bootstrap,
            publish,
            reply_queue,
            generation: self.next_generation.fetch_add(1, Ordering::Relaxed) + 1,
            node: index,
            broken: watch::channel(None).0,
            tasks: Mutex::new(Vec::new()),
        });
        self.read_replies(&link, replies);
        Ok(link)
    }

    /// The channel that publishes requests, with publisher confirms on;
    /// with the shared account, it declares the request queue and route.
    async fn open_publish(&self, conn: &Connection) -> Result<Channel, AmqpError> {
        let publish = conn.create_channel().await?;
        publish
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
        if !self.per_client() {
            // A per-client user may not declare them; the server has.
            topology::declare_server_queue(&publish, &self.names).await?;
            topology::declare_request_route(&publish, &self.names).await?;
        }
        Ok(publish)
    }

    /// Hands the replies that arrive on `link` to their requests, in a task
    /// of the link; a broker failure ends the link.
    fn read_replies(self: &Arc<Self>, link: &Arc<Link>, mut replies: lapin::Consumer) {
        let (me, l) = (self.clone(), link.clone());
        link.spawn(async move {
            // Replies; the stream ends when the connection does.
            while let Some(next) = replies.next().await {
                match next {
                    Ok(d) => me.on_reply(d),
                    Err(e) => {
                        l.trigger(e);
                        return;
                    }
                }
            }
            l.trigger("the reply consumer was cancelled");
        });
    }

    fn on_reply(&self, d: lapin::message::Delivery) {
        let Some(corr) = d.properties.correlation_id() else {
            tracing::warn!("reply without correlation_id ignored");
            return;
        };
        let Some(p) = lock(&self.pending).remove(corr.as_str()) else {
            // A repeat (the request was published again) or a late answer.
            tracing::debug!(correlation_id = corr.as_str(), "unmatched reply ignored");
            return;
        };
        match pb::Reply::decode(d.data.as_slice()) {
            Ok(reply) => {
                let _ = p.reply.send(reply);
            }
            Err(e) => {
                tracing::warn!(error = %e, "undecodable reply ignored");
            }
        }
    }

    async fn publish_request(&self, link: &Link, correlation_id: &str, body: &[u8]) {
        let sent = link
            .publish
            .basic_publish(
                self.names.requests_exchange().into(),
                self.names.server_queue().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..BasicPublishOptions::default()
                },
                body,
                topology::request_properties(link.reply_queue.as_str(), correlation_id),
            )
            .await;
        match sent {
            Ok(confirm) => match confirm.await {
                Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => {}
                Ok(other) => {
                    tracing::warn!(?other, "the broker did not store a request");
                }
                Err(e) => link.trigger(e),
            },
            // The manager publishes it again on the next connection.
            Err(e) => link.trigger(e),
        }
    }

    async fn request(&self, body: pb::request::Body) -> Result<pb::reply::Body, ClientError> {
        let correlation_id = uuid::Uuid::new_v4().to_string();
        let auth = pb::Auth {
            client_id: self.id.to_string(),
            secret: self.secret.expose().to_owned(),
        };
        let bytes = pb::Request {
            body: Some(body),
            auth: Some(auth),
        }
        .encode_to_vec();
        let (tx, rx) = oneshot::channel();
        lock(&self.pending).insert(
            correlation_id.clone(),
            Pending {
                body: bytes.clone(),
                reply: tx,
            },
        );
        let link = self.link.borrow().clone();
        if let Some(link) = link {
            self.publish_request(&link, &correlation_id, &bytes).await;
        }
        let answer = tokio::time::timeout(self.config.request_timeout, rx).await;
        lock(&self.pending).remove(&correlation_id);
        match answer {
            Ok(Ok(reply)) => match reply.body {
                Some(pb::reply::Body::Error(e)) => Err(e.into()),
                Some(body) => Ok(body),
                None => Err(ClientError::Protocol("empty reply".into())),
            },
            Ok(Err(_)) => Err(ClientError::Protocol("client closed".into())),
            Err(_) if self.link.borrow().is_none() => {
                Err(self.unavailable("the broker is unreachable (still retrying)"))
            }
            Err(_) => Err(ClientError::Timeout(self.config.request_timeout)),
        }
    }

    /// Per-client mode, after a successful `register` on a bootstrap link:
    /// the server has created this ID's broker user, so the link is
    /// replaced by one logged in as that user. Returns once it is up.
    async fn relogin(&self) -> Result<(), ClientError> {
        let Some(old) = self.link.borrow().clone() else {
            return Ok(());
        };
        if !old.bootstrap {
            return Ok(());
        }
        let mut links = self.link.subscribe();
        old.trigger(RELOGIN);
        let next = tokio::time::timeout(
            RELOGIN_TIMEOUT,
            links.wait_for(|l| l.as_ref().is_some_and(|l| l.generation > old.generation)),
        )
        .await;
        let link = match next {
            Ok(Ok(l)) => l.clone(),
            Ok(Err(_)) => return Err(self.unavailable("client closed")),
            Err(_) => {
                return Err(self.unavailable(format!(
                    "registered, but no connection as broker user {} within {RELOGIN_TIMEOUT:?}",
                    self.names.client_user(&self.id)
                )));
            }
        };
        match link {
            Some(l) if !l.bootstrap => Ok(()),
            _ => Err(self.unavailable(format!(
                "registered, but the broker still refuses the login as {}: is the amqp-server of namespace {} running with --broker-auth per-client?",
                self.names.client_user(&self.id),
                self.names.namespace()
            ))),
        }
    }

    /// Starts consuming the inbox on `link`; [`Self::run_inbox`] moves
    /// what arrives once the server has answered the join. `Err(None)`:
    /// the ID is online elsewhere; `Err(Some(e))`: a broker failure.
    async fn open_inbox(&self, link: &Link) -> Result<Inbox, Option<AmqpError>> {
        if link.bootstrap {
            return Err(Some(AmqpError::Config(format!(
                "client {} has no broker user (the broker refuses its login): register again, with an amqp-server in --broker-auth per-client mode",
                self.id
            ))));
        }
        let setup = async {
            let ch = link.conn.create_channel().await?;
            ch.basic_qos(topology::CLIENT_PREFETCH, BasicQosOptions::default())
                .await?;
            if !self.per_client() {
                // The server declared and bound it at registration; a
                // per-client user may not declare anything durable.
                topology::declare_deliver_exchange(&ch, &self.names).await?;
                topology::declare_client_queue(&ch, &self.names, &self.id).await?;
            }
            let consumer = ch
                .basic_consume(
                    self.names.client_queue(&self.id).into(),
                    self.id.as_str().into(),
                    BasicConsumeOptions {
                        exclusive: true,
                        ..BasicConsumeOptions::default()
                    },
                    FieldTable::default(),
                )
                .await?;
            Ok::<_, AmqpError>((ch, consumer))
        };
        match setup.await {
            Ok((ch, consumer)) => Ok(Inbox { ch, consumer }),
            Err(AmqpError::Broker(e)) if taken(&e) => Err(None),
            Err(e) => Err(Some(e)),
        }
    }

    /// Tells the server that this connection consumes the inbox now, so
    /// that it lists the client online; returns once it answered.
    async fn send_join(&self) -> Result<(), ClientError> {
        let join = pb::request::Body::Join(pb::JoinRequest {
            client_id: self.id.to_string(),
        });
        match self.request(join).await? {
            pb::reply::Body::Join(_) => Ok(()),
            other => Err(unexpected(other)),
        }
    }

    /// Hands the inbox to a task of `link` that runs it.
    fn start_inbox(self: &Arc<Self>, link: &Arc<Link>, inbox: Inbox, joined: Joined) {
        let me = self.clone();
        let l = link.clone();
        link.spawn(async move { me.drive_inbox(&l, inbox, joined).await });
    }

    /// After a reconnection: joins again (so the server lists the client
    /// online before anything new shows), says `Connected` and runs the
    /// inbox. A join the server does not answer (none runs) is logged and
    /// the inbox runs anyway: the server reads the consumer back when it
    /// starts.
    fn rejoin(self: &Arc<Self>, link: &Arc<Link>, inbox: Inbox, joined: Joined) {
        let me = self.clone();
        let l = link.clone();
        link.spawn(async move {
            if let Err(e) = me.send_join().await {
                tracing::warn!("back online, but the server did not confirm the join: {e}");
            }
            // Said before the inbox takes the sink for itself.
            joined.state(ConnectionState::Connected).await;
            me.drive_inbox(&l, inbox, joined).await;
        });
    }

    /// Runs the inbox; a broker failure ends the link.
    async fn drive_inbox(&self, link: &Link, inbox: Inbox, joined: Joined) {
        let Inbox { ch, mut consumer } = inbox;
        if let Err(e) = self.run_inbox(link, &ch, &mut consumer, joined).await {
            link.trigger(e);
        }
    }

    /// Moves inbox deliveries to the sink and acknowledgements back to the
    /// broker, until the connection breaks or the consumer closes `Incoming`.
    /// The delivery tags of this channel stay in this task ([`Unacked`]).
    async fn run_inbox(
        &self,
        link: &Link,
        ch: &Channel,
        consumer: &mut lapin::Consumer,
        joined: Joined,
    ) -> Result<(), lapin::Error> {
        let mut sink_slot = joined.sink.lock().await;
        let mut acks_slot = joined.acks.lock().await;
        let (Some(sink), Some(acks)) = (sink_slot.as_mut(), acks_slot.as_mut()) else {
            return Ok(());
        };
        let mut unacked = Unacked::default();
        loop {
            tokio::select! {
                next = consumer.next() => match next {
                    Some(Ok(d)) => {
                        if !take_delivery(sink, &mut unacked, ch, d).await? {
                            break;
                        }
                    }
                    Some(Err(e)) => return Err(e),
                    None => {
                        link.trigger("the broker cancelled the inbox consumer");
                        return Ok(());
                    }
                },
                Some(seq) = acks.recv() => carry_ack(ch, &mut unacked, seq).await?,
                () = sink.closed() => break,
            }
        }
        // The consumer is gone: stop taking messages, then carry the last
        // acknowledgements so `Incoming::close` knows they reached the broker.
        ch.basic_cancel(self.id.as_str().into(), BasicCancelOptions::default())
            .await?;
        lock(&self.joined).take();
        *sink_slot = None;
        if let Some(acks) = acks_slot.as_mut() {
            while let Some(seq) = acks.recv().await {
                carry_ack(ch, &mut unacked, seq).await?;
            }
        }
        *acks_slot = None;
        Ok(())
    }

    /// Keeps the connection up until the client is dropped.
    async fn manage(self: Arc<Self>, mut link: Arc<Link>, mut stop: watch::Receiver<()>) {
        let mut backoff = Backoff::new();
        loop {
            let reason = tokio::select! {
                _ = stop.changed() => break,
                r = link.wait_broken() => r,
            };
            let relogin = self.drop_link(&link, &reason).await;
            let Some(next) = self.reconnect(relogin, &mut backoff, &mut stop).await else {
                return;
            };
            link = next;
            let reopened = match self.reopen_inbox(&link).await {
                Ok(reopened) => reopened,
                Err(e) => {
                    link.trigger(e);
                    continue;
                }
            };
            if !link.bootstrap {
                backoff.reset();
            }
            self.link.send_replace(Some(link.clone()));
            self.publish_pending(&link).await;
            if let Some((inbox, joined)) = reopened {
                self.rejoin(&link, inbox, joined);
            }
            if link.bootstrap && self.joined().is_some() {
                self.register_again(&link);
            }
        }
        link.close().await;
    }

    /// Takes down `link`, broken for `reason`, and tells the consumer of
    /// `Incoming` (unless it is a relogin, which it does not see). True for
    /// a relogin.
    async fn drop_link(&self, link: &Link, reason: &str) -> bool {
        let relogin = reason == RELOGIN;
        if relogin {
            tracing::debug!("registered: logging in again as the own broker user");
        } else {
            // Info, not warn: the CLI shows the Reconnecting state itself.
            tracing::info!("lost the broker connection: {reason}; reconnecting");
            self.brokers.lost(link.node);
        }
        self.link.send_replace(None);
        link.close().await;
        let joined = self.joined();
        if let Some(j) = &joined
            && !relogin
        {
            j.state(ConnectionState::Reconnecting {
                reason: reason.to_owned(),
            })
            .await;
        }
        relogin
    }

    /// Opens a new link, retrying with `backoff` (a relogin tries the first
    /// time at once). `None` once the client is dropped, even when that
    /// happened while a connection attempt was under way: a dropped client
    /// must do nothing more on the broker (re-opening its inbox declares
    /// the queue again, which would bring back a queue deleted since, as
    /// a test's clean-up does).
    async fn reconnect(
        self: &Arc<Self>,
        mut relogin: bool,
        backoff: &mut Backoff,
        stop: &mut watch::Receiver<()>,
    ) -> Option<Arc<Link>> {
        loop {
            if dropped(stop) {
                return None;
            }
            if !std::mem::take(&mut relogin) {
                let delay = backoff.next_delay();
                tokio::select! {
                    _ = stop.changed() => return None,
                    () = tokio::time::sleep(delay) => {}
                }
            }
            match self.open_link().await {
                Ok(l) if dropped(stop) => {
                    l.close().await;
                    return None;
                }
                Ok(l) => return Some(l),
                Err(e) => tracing::info!(
                    "cannot reach the broker at {}: {e}; retrying",
                    self.brokers.redacted()
                ),
            }
        }
    }

    /// After a reconnection, if the client has joined (and `link` is not a
    /// bootstrap one): consumes the inbox again, to be run by
    /// [`Self::rejoin`]. If the ID is online elsewhere now, `Incoming` ends
    /// instead. `Err`: a broker failure.
    async fn reopen_inbox(&self, link: &Link) -> Result<Option<(Inbox, Joined)>, AmqpError> {
        let Some(j) = self.joined().filter(|_| !link.bootstrap) else {
            return Ok(None);
        };
        match self.open_inbox(link).await {
            Ok(inbox) => Ok(Some((inbox, j))),
            Err(None) => {
                let reason = format!("client {} is online elsewhere now", self.id);
                tracing::warn!("{reason}");
                lock(&self.joined).take();
                j.state(ConnectionState::Closed { reason }).await;
                // Ends the stream; nothing is left to acknowledge here.
                *j.sink.lock().await = None;
                *j.acks.lock().await = None;
                Ok(None)
            }
            Err(Some(e)) => Err(e),
        }
    }

    /// Publishes every request still waiting for its reply again, on the
    /// new `link` (with its reply queue).
    async fn publish_pending(&self, link: &Link) {
        let again: Vec<(String, Vec<u8>)> = lock(&self.pending)
            .iter()
            .map(|(c, p)| (c.clone(), p.body.clone()))
            .collect();
        if !again.is_empty() {
            tracing::info!(
                requests = again.len(),
                "publishing unanswered requests again"
            );
        }
        for (corr, body) in again {
            self.publish_request(link, &corr, &body).await;
        }
    }

    /// Joined, but the broker refuses our own login: the user is gone
    /// (deleted by an operator, which also closed our connection, or lost
    /// by the broker). Registers again, in a task of the bootstrap `link`;
    /// the server recreates the user, and the relogin that follows re-opens
    /// the inbox.
    fn register_again(self: &Arc<Self>, link: &Arc<Link>) {
        tracing::warn!(
            "the broker refuses the login as {}: registering again to get the broker user back",
            self.names.client_user(&self.id)
        );
        let (me, l) = (self.clone(), link.clone());
        link.spawn(async move {
            let register = pb::request::Body::Register(pb::RegisterRequest {
                client_id: me.id.to_string(),
            });
            match me.request(register).await {
                Ok(_) => l.trigger(RELOGIN),
                Err(e) => l.trigger(format!("registering {} again failed: {e}", me.id)),
            }
        });
    }
}

/// Whether the client is gone: [`Life`], dropped with its last clone,
/// holds the only sender of `stop`.
fn dropped(stop: &watch::Receiver<()>) -> bool {
    stop.has_changed().is_err()
}

/// Declares this connection's reply queue (exclusive, server-named) and
/// consumes it with auto-ack; returns its name and the consumer.
async fn open_replies(conn: &Connection) -> Result<(ShortString, lapin::Consumer), AmqpError> {
    let replies = conn.create_channel().await?;
    let queue = replies
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..QueueDeclareOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    let consumer = replies
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                exclusive: true,
                ..BasicConsumeOptions::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok((queue.name().clone(), consumer))
}

/// The reason a bootstrap link is closed after a registration: the manager
/// opens the next one at once, as the client's own broker user.
const RELOGIN: &str = "registered: logging in as the own broker user";

/// The broker refused the login (wrong user or password): in per-client
/// mode, an ID without a broker user yet.
fn login_refused(e: &AmqpError) -> bool {
    match e {
        AmqpError::Broker(e) => matches!(e.kind(), ErrorKind::ProtocolError(amqp)
            if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED))),
        _ => false,
    }
}

/// The broker refused the exclusive consumer: someone else consumes the inbox.
fn taken(e: &lapin::Error) -> bool {
    matches!(e.kind(), ErrorKind::ProtocolError(amqp)
        if matches!(amqp.kind(), AMQPErrorKind::Soft(AMQPSoftError::ACCESSREFUSED | AMQPSoftError::RESOURCELOCKED)))
}

/// Hands one inbox delivery to the sink: acknowledged at once if it holds
/// nothing to show (malformed, or only repeats), else left to wait in
/// `unacked` for the consumer's acknowledgement of its last message passed
/// on. False once the consumer is gone.
async fn take_delivery(
    sink: &mut IncomingSink,
    unacked: &mut Unacked,
    ch: &Channel,
    d: lapin::message::Delivery,
) -> Result<bool, lapin::Error> {
    let messages = match decode_messages(&d) {
        Ok(messages) => messages,
        Err(why) => {
            tracing::warn!("dropping a malformed message from the inbox: {why}");
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await?;
            return Ok(true);
        }
    };
    let mut last_passed = None;
    for m in messages {
        let seq = m.seq;
        match sink.deliver(m).await {
            Delivered::Passed => last_passed = Some(seq),
            Delivered::Repeat => unacked.repeat(seq),
            // Not acknowledged: what was not passed on comes again.
            Delivered::Closed => return Ok(false),
        }
    }
    match last_passed {
        Some(seq) => unacked.wait_for(seq, d.delivery_tag),
        None => {
            ch.basic_ack(d.delivery_tag, BasicAckOptions::default())
                .await?
        }
    }
    Ok(true)
}

/// Acknowledges to the broker the delivery that `seq` releases, if any.
async fn carry_ack(ch: &Channel, unacked: &mut Unacked, seq: u64) -> Result<(), lapin::Error> {
    if let Some(tag) = unacked.acked(seq) {
        ch.basic_ack(tag, BasicAckOptions::default()).await?;
    }
    Ok(())
}

/// The chat messages in one inbox delivery: a `ChatMessage`, or several
/// in a `ChatMessageBatch` (by its `type`), in seq order.
fn decode_messages(d: &lapin::message::Delivery) -> Result<Vec<Message>, String> {
    let kind = d.properties.kind().as_ref().map(|k| k.as_str());
    let protos = if kind == Some(topology::TYPE_MESSAGE_BATCH) {
        pb::ChatMessageBatch::decode(d.data.as_slice())
            .map_err(|e| e.to_string())?
            .messages
    } else {
        vec![pb::ChatMessage::decode(d.data.as_slice()).map_err(|e| e.to_string())?]
    };
    if protos.is_empty() {
        return Err("an empty ChatMessageBatch".into());
    }
    protos
        .into_iter()
        .map(|m| Message::from_proto(m).map_err(|e| e.to_string()))
        .collect()
}

fn unexpected(body: pb::reply::Body) -> ClientError {
    ClientError::Protocol(format!("unexpected reply {body:?}"))
}

impl ChatClient for AmqpClient {
    type Config = AmqpConfig;

    async fn connect(
        config: &AmqpConfig,
        id: ClientId,
        secret: Secret,
    ) -> Result<Self, ClientError> {
        let names = config
            .names()
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        let brokers = config.brokers();
        brokers
            .check()
            .map_err(|e| ClientError::Local(e.to_string()))?;
        let shared = Arc::new(Shared {
            config: config.clone(),
            brokers,
            names,
            id,
            secret,
            link: watch::channel(None).0,
            pending: Mutex::new(HashMap::new()),
            joined: Mutex::new(None),
            next_generation: AtomicU64::new(0),
        });
        let link = shared
            .open_link()
            .await
            .map_err(|e| shared.unavailable(e))?;
        shared.link.send_replace(Some(link.clone()));
        let (stop, stop_rx) = watch::channel(());
        tokio::spawn(shared.clone().manage(link, stop_rx));
        Ok(Self {
            sends: Sends::new(Requests(shared.clone()), config.batching),
            shared,
            _life: Arc::new(Life { _stop: stop }),
        })
    }

    fn id(&self) -> &ClientId {
        &self.shared.id
    }

    async fn register(&self) -> Result<bool, ClientError> {
        let reply = self
            .shared
            .request(pb::request::Body::Register(pb::RegisterRequest {
                client_id: self.shared.id.to_string(),
            }))
            .await?;
        let created = match reply {
            pb::reply::Body::Register(r) => r.created,
            other => return Err(unexpected(other)),
        };
        self.shared.relogin().await?;
        Ok(created)
    }

    async fn join_after(&self, after_seq: u64) -> Result<Incoming, ClientError> {
        let s = &self.shared;
        if s.joined().is_some() {
            return Err(ClientError::Protocol("joined already".into()));
        }
        self.register().await?;
        let (sink, incoming, acks) = incoming_channel(after_seq);
        let joined = Joined {
            sink: Arc::new(tokio::sync::Mutex::new(Some(sink))),
            acks: Arc::new(tokio::sync::Mutex::new(Some(acks))),
        };
        let mut links = s.link.subscribe();
        let link = links
            .wait_for(|l| l.is_some())
            .await
            .ok()
            .and_then(|l| l.clone())
            .ok_or_else(|| s.unavailable("client closed"))?;
        // Published before the consumer starts, so that a reconnection
        // racing with this join re-opens the inbox too.
        *lock(&s.joined) = Some(joined.clone());
        let inbox = match s.open_inbox(&link).await {
            Ok(inbox) => inbox,
            Err(None) => {
                lock(&s.joined).take();
                return Err(chat_core::ChatError::AlreadyOnline(s.id.clone()).into());
            }
            Err(Some(e)) => {
                lock(&s.joined).take();
                link.trigger(&e);
                return Err(s.unavailable(e));
            }
        };
        // Online once the server says so: a list that follows shows it.
        if let Err(e) = s.send_join().await {
            lock(&s.joined).take();
            let cancel = inbox
                .ch
                .basic_cancel(s.id.as_str().into(), BasicCancelOptions::default());
            if let Err(why) = cancel.await {
                link.trigger(why);
            }
            return Err(e);
        }
        s.start_inbox(&link, inbox, joined);
        Ok(incoming)
    }

    async fn send(&self, to: &ClientId, text: &str) -> Result<Accepted, ClientError> {
        self.sends.send(&self.shared.id, to, text).await
    }

    async fn list_clients(&self) -> Result<Vec<ClientInfo>, ClientError> {
        match self
            .shared
            .request(pb::request::Body::ListClients(pb::ListClientsRequest {}))
            .await?
        {
            pb::reply::Body::ListClients(r) => r
                .clients
                .into_iter()
                .map(|c| {
                    ClientInfo::from_proto(c).map_err(|e| ClientError::Protocol(e.to_string()))
                })
                .collect(),
            other => Err(unexpected(other)),
        }
    }

    async fn history(&self) -> Result<Vec<Message>, ClientError> {
        chat_core::client::all_history_pages(|after| async move {
            let body = pb::request::Body::History(pb::HistoryRequest {
                client_id: self.shared.id.to_string(),
                after,
                limit: 0,
            });
            match self.shared.request(body).await? {
                pb::reply::Body::History(r) => Ok(r),
                other => Err(unexpected(other)),
            }
        })
        .await
    }
}
