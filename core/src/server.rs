//! [`ChatServer`]: the transport-independent chat server.
//!
//! It owns who is registered and online, every client's history, and every
//! recipient's *mailbox*: the accepted messages that have not yet reached
//! their next hop. Each recipient has its own gap-free sequence number; its
//! mailbox holds the messages above its acknowledged cursor.
//!
//! * gRPC: the next hop is the client. A [`Session`] streams the mailbox and
//!   the client acknowledges what it has shown.
//! * AMQP: the next hop is the recipient's durable queue. The server
//!   acknowledges once the broker confirmed the publish, and re-publishes
//!   whatever is still in a mailbox after a restart.
//!
//! Either way a crash between "accepted" and "delivered" loses nothing, and
//! recipients drop any repeat by its sequence number, so nothing shows twice.
//!
//! `--max-pending` bounds what waits for one recipient *unread*, whatever
//! the next hop: the mailbox, plus (AMQP) what its queue still holds. The
//! server does not see a client consume its queue, so the adapter keeps
//! that second part as an estimate: every confirmed publish adds one
//! ([`ChatServer::forwarded`]), and the adapter reads the real depth back
//! from the broker now and then ([`ChatServer::set_queued_downstream`]).
//! A send is checked against both without any broker round trip.
//!
//! Visibility follows durability: a message enters histories and mailboxes
//! only after the journal writer has appended it (see [`crate::journal`]).
//!
//! Identity is checked here, once, for both transports: [`ChatServer::register`]
//! and [`ChatServer::connect`] claim an ID with a secret (or verify it), and
//! [`ChatServer::authenticate`] turns [`Credentials`] into the [`Principal`]
//! that [`ChatServer::send`], [`ChatServer::ack`] and [`ChatServer::history`]
//! require; each of those refuses a request that names another ID.
//!
//! Presence is decided here too, for both transports: [`ChatServer::list`],
//! the `AlreadyOnline` refusal, the `chat_clients_online` gauge and the
//! "client online/offline" log lines all read one field per client. On gRPC
//! a [`Session`] holds the client online while its stream is open; on AMQP
//! the broker's exclusive consumer on the client's queue is the lock, and
//! the adapter reports what the broker says through
//! [`ChatServer::went_online`] and [`ChatServer::went_offline`].

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_proto::v1 as pb;
use tokio::sync::{Notify, oneshot};

use crate::error::ChatError;
use crate::id::{ClientId, MessageId};
use crate::identity::{Credentials, Principal, Secret, SecretHash};
use crate::journal::{self, Durability, Journal, LOG_FILE, Located, NotWritten, Queued, Record};
use crate::limits::Limits;
use crate::message::{ClientInfo, Message, Receipt, SendCommand, now_ms};
use crate::metrics::Metrics;
use crate::outbox::{Outbox, Pending, Sent, message_bytes};

/// Most messages a session takes from the mailbox in one go.
const SESSION_BATCH: usize = 256;

/// Most messages in one history page (a request may ask for fewer).
pub const MAX_HISTORY_PAGE: usize = 1000;

/// Server configuration.
#[derive(Clone, Debug)]
pub struct ServerConfig {
    pub data_dir: PathBuf,
    pub limits: Limits,
    pub durability: Durability,
}

impl ServerConfig {
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        Self {
            data_dir: data_dir.into(),
            limits: Limits::default(),
            durability: Durability::default(),
        }
    }
}

/// The chat server. Cheap to clone; all clones share one state.
#[derive(Clone)]
pub struct ChatServer {
    inner: Arc<Inner>,
}

struct Inner {
    state: Arc<Mutex<State>>,
    journal: Arc<Journal>,
    /// `log.txt`, opened for reading: histories are read back from it.
    log: Arc<std::fs::File>,
    /// Its path, for the errors of those reads.
    log_path: Arc<Path>,
    limits: Limits,
    data_dir: PathBuf,
    metrics: Arc<Metrics>,
    /// Held for the server's lifetime: one server per data directory.
    _lock: std::fs::File,
}

#[derive(Default)]
struct State {
    clients: BTreeMap<ClientId, Client>,
    /// The most recently accepted messages by ID, so that a retried send is
    /// accepted once (see [`Limits::dedupe_window`]).
    recent: Recent,
    /// Bytes of undelivered messages held in memory, over all mailboxes
    /// (bounded by [`Limits::mailbox_memory`]; the rest wait in `log.txt`).
    mailbox_bytes: usize,
    /// Recipients with messages not handed out yet, in the order they got
    /// them; kept only while a forwarder runs ([`ChatServer::start_forwarding`]).
    ready: VecDeque<ClientId>,
    forwarding: bool,
    /// Wakes the forwarder when [`Self::ready`] gets a recipient.
    forward_wake: Arc<Notify>,
    shutting_down: bool,
    /// Numbers spells online ([`Session`]s and [`Online`]s) uniquely.
    next_session: u64,
}

/// A bounded window of accepted messages by ID: the last `cap` of them.
#[derive(Default)]
struct Recent {
    by_id: HashMap<MessageId, Receipt>,
    order: VecDeque<MessageId>,
    cap: usize,
}

impl Recent {
    fn with_capacity(cap: usize) -> Self {
        Self {
            by_id: HashMap::with_capacity(cap.min(1 << 16)),
            order: VecDeque::with_capacity(cap.min(1 << 16)),
            cap,
        }
    }

    fn get(&self, id: &MessageId) -> Option<&Receipt> {
        self.by_id.get(id)
    }

    fn insert(&mut self, accepted: Receipt) {
        if self.cap == 0 {
            return;
        }
        if self.order.len() >= self.cap
            && let Some(oldest) = self.order.pop_front()
        {
            self.by_id.remove(&oldest);
        }
        self.order.push_back(accepted.id);
        self.by_id.insert(accepted.id, accepted);
    }
}

#[derive(Default)]
struct Client {
    /// When the ID was first registered (Unix ms), kept through compaction.
    registered_ms: i64,
    /// Hash of the secret that claimed the ID; `None` for an ID registered
    /// before IDs had secrets (the next registration claims it).
    secret: Option<SecretHash>,
    /// The spell online currently holding this ID online, if any: a
    /// [`Session`]'s number (gRPC) or an [`Online`]'s (AMQP).
    session: Option<u64>,
    /// Last seq assigned to a message for this client (committed or not).
    assigned_seq: u64,
    /// Its committed messages that have not reached their next hop.
    outbox: Outbox,
    /// Whether it is in [`State::ready`].
    ready: bool,
    /// Messages up to the outbox's ack that the next hop still holds unread
    /// for this client: on AMQP, what its queue holds (an upper estimate,
    /// see [`ChatServer::set_queued_downstream`]); always 0 when the next
    /// hop is the client itself (gRPC). Counts towards `--max-pending`.
    queued_downstream: usize,
    /// Where the messages this client sent are in `log.txt`, oldest first.
    history: Vec<Sent>,
}

impl Client {
    /// What waits for it unread, as `--max-pending` counts it.
    fn pending(&self) -> usize {
        (self.assigned_seq - self.outbox.acked()) as usize + self.queued_downstream
    }
}

impl State {
    /// Queues a committed message for its recipient `to`: in memory while
    /// the mailboxes' budget allows, else as its place in `log.txt`.
    fn enqueue(&mut self, to: &ClientId, m: Arc<Message>, at: Sent, budget: usize) {
        let bytes = message_bytes(&m);
        let pending = if self.mailbox_bytes + bytes <= budget {
            self.mailbox_bytes += bytes;
            Pending::Loaded(m)
        } else {
            Pending::Spilled(at)
        };
        if let Some(c) = self.clients.get_mut(to) {
            c.outbox.push(pending);
        }
        self.mark_ready(to);
    }

    /// Starts a spell online for the registered `id`, replacing any spell
    /// it had; returns the spell's number. The one place a client goes
    /// online (the gauge and the log line follow).
    fn mark_online(&mut self, id: &ClientId, metrics: &Metrics) -> u64 {
        self.next_session += 1;
        let spell = self.next_session;
        if let Some(c) = self.clients.get_mut(id)
            && c.session.replace(spell).is_none()
        {
            metrics.went_online();
            tracing::info!(client = %id, "client online");
        }
        spell
    }

    /// Ends `id`'s spell online `spell`, unless a later one replaced it.
    /// The one place a client goes offline. Whether it did.
    fn mark_offline(&mut self, id: &ClientId, spell: u64, metrics: &Metrics) -> bool {
        match self.clients.get_mut(id) {
            Some(c) if c.session == Some(spell) => {
                c.session = None;
                metrics.went_offline();
                tracing::info!(client = %id, "client offline");
                true
            }
            _ => false,
        }
    }

    /// Puts `to` in the forwarder's queue if it has something to hand out.
    fn mark_ready(&mut self, to: &ClientId) {
        if !self.forwarding {
            return;
        }
        if let Some(c) = self.clients.get_mut(to)
            && !c.ready
            && c.outbox.has_unhanded()
        {
            c.ready = true;
            self.ready.push_back(to.clone());
            self.forward_wake.notify_one();
        }
    }

    /// Takes per-recipient batches of up to `max` messages in all, each
    /// recipient's in seq order, from the front of [`Self::ready`].
    fn take_round(&mut self, max: usize) -> Vec<(ClientId, Vec<Pending>)> {
        let mut round = Vec::new();
        let mut left = max;
        while left > 0
            && let Some(to) = self.ready.pop_front()
        {
            let Some(c) = self.clients.get_mut(&to) else {
                continue;
            };
            c.ready = false;
            let batch = c.outbox.take(left);
            left -= batch.len();
            if !batch.is_empty() {
                round.push((to.clone(), batch));
            }
            self.mark_ready(&to);
        }
        round
    }
}

impl ChatServer {
    /// Opens (or creates) the data directory and rebuilds the state from it.
    /// Fails with [`ChatError::DataDirInUse`] while another server has it
    /// (see [`crate::data_lock`]).
    pub fn open(config: ServerConfig) -> Result<Self, ChatError> {
        let lock = crate::data_lock::lock(&config.data_dir)?;
        let replay = journal::read_state(&config.data_dir)?;
        let state_lines = replay.state_lines;
        let state_path = config.data_dir.join(journal::STATE_FILE);
        let (mut state, ack_lines) =
            State::from_journal(replay, config.limits.dedupe_window, &state_path)?;
        let count = replay_log(&config.data_dir, &mut state, config.limits.mailbox_memory)?;
        state.check_acks_within_log(&state_path, &ack_lines)?;
        state.compact_journal(&config.data_dir, state_lines)?;
        let pending = state.report_rebuilt(&config.data_dir, count);

        let metrics = Arc::new(Metrics::new());
        metrics.registered.set(gauge(state.clients.len()));
        metrics.pending.set(gauge(pending));
        Self::start(config, state, metrics, lock)
    }

    /// The server over the rebuilt `state`: starts the journal writer (which
    /// makes each durable batch visible through [`commit`]) and opens
    /// `log.txt` for reading histories back. `lock` is held for its lifetime.
    fn start(
        config: ServerConfig,
        state: State,
        metrics: Arc<Metrics>,
        lock: std::fs::File,
    ) -> Result<Self, ChatError> {
        let state = Arc::new(Mutex::new(state));
        let for_writer = (state.clone(), metrics.clone());
        let budget = config.limits.mailbox_memory;
        let journal = Journal::start(
            &config.data_dir,
            config.durability,
            metrics.clone(),
            Box::new(move |records, places| {
                commit(&for_writer.0, &for_writer.1, records, places, budget)
            }),
        )?;
        let log_path = config.data_dir.join(LOG_FILE);
        let log = std::fs::File::open(&log_path).map_err(|e| ChatError::storage(&log_path, e))?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                journal,
                log: Arc::new(log),
                log_path: log_path.into(),
                limits: config.limits,
                data_dir: config.data_dir,
                metrics,
                _lock: lock,
            }),
        })
    }

    pub fn limits(&self) -> Limits {
        self.inner.limits
    }

    pub fn data_dir(&self) -> &Path {
        &self.inner.data_dir
    }

    /// This server's metrics (see [`crate::metrics`]).
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.inner.metrics
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Queues `record` to the journal; call under the state lock, which
    /// orders records.
    fn queue(&self, record: Record) -> Queued {
        self.inner.journal.push(record)
    }

    async fn durable(&self, queued: Queued) -> Result<(), ChatError> {
        match queued.wait().await {
            Ok(()) => Ok(()),
            Err(NotWritten::Failed(e)) => Err(ChatError::storage(
                &self.inner.data_dir,
                std::io::Error::new(e.kind(), e.to_string()),
            )),
            Err(NotWritten::Closed) => Err(ChatError::ShuttingDown),
        }
    }

    /// Checks `creds`: the ID is registered and claimed with this secret.
    /// Unknown ID: NOT_FOUND (register first); no or wrong secret, or an ID
    /// not claimed yet: UNAUTHENTICATED.
    pub fn authenticate(&self, creds: &Credentials) -> Result<Principal, ChatError> {
        let (id, presented) = presented(creds)?;
        let st = self.lock();
        let Some((id, c)) = st.clients.get_key_value(&id) else {
            return Err(ChatError::UnknownSender(id));
        };
        match &c.secret {
            Some(stored) if stored.matches(&presented) => Ok(Principal { id: id.clone() }),
            Some(_) => Err(ChatError::WrongSecret(id.clone())),
            None => Err(ChatError::Unclaimed(id.clone())),
        }
    }

    /// Registers `raw_id` (claiming it with the secret in `creds`), or
    /// resumes it if it is registered, offline and the secret matches.
    /// Returns the principal and whether the ID was new.
    pub async fn register(
        &self,
        creds: &Credentials,
        raw_id: &str,
    ) -> Result<(Principal, bool), ChatError> {
        ClientId::validate(raw_id)?;
        let (id, presented) = presented(creds)?;
        check_same(&id, raw_id)?;
        let (principal, created, rx) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            let (principal, created, record) = claim(&mut st, id, presented)?;
            if created {
                self.inner.metrics.registered.inc();
            }
            if st.clients[&principal.id].session.is_some() {
                return Err(ChatError::AlreadyOnline(principal.id));
            }
            (principal, created, record.map(|r| self.queue(r)))
        };
        if let Some(rx) = rx {
            self.durable(rx).await?;
        }
        Ok((principal, created))
    }
    /// Accepts a message: appends it to `log.txt` and queues it for its
    /// recipient. Returns once it is durable; delivery happens later.
    /// Sender and recipient must both be registered.
    pub async fn send(
        &self,
        principal: &Principal,
        cmd: SendCommand,
    ) -> Result<Receipt, ChatError> {
        self.accept(principal, cmd)?.durable().await
    }

    /// The synchronous half of [`Self::send`]: checks the message, gives it
    /// the recipient's next seq and queues it to the journal, all before
    /// returning, so that two sends accepted one after the other keep that
    /// order. Await [`Admitted::durable`] before answering the sender.
    pub fn accept(&self, principal: &Principal, cmd: SendCommand) -> Result<Admitted, ChatError> {
        principal.acting_as(cmd.from.as_str())?;
        let mut st = self.lock();
        if st.shutting_down {
            return Err(ChatError::ShuttingDown);
        }
        if let Some(existing) = st.recent.get(&cmd.id) {
            return Ok(Admitted::already(self, existing.clone()));
        }
        // The message carries the registry's own IDs (an Arc clone).
        let Some((from, _)) = st.clients.get_key_value(&cmd.from) else {
            return Err(ChatError::UnknownSender(cmd.from));
        };
        let from = from.clone();
        let Some((to, _)) = st.clients.get_key_value(&cmd.to) else {
            return Err(ChatError::UnknownRecipient(cmd.to));
        };
        let to = to.clone();
        let recipient = st.clients.get_mut(&to).expect("looked up above");
        let (pending, max) = (recipient.pending(), self.inner.limits.max_pending);
        if pending >= max {
            return Err(ChatError::MailboxFull { to, pending, max });
        }
        recipient.assigned_seq += 1;
        let message = Arc::new(Message {
            id: cmd.id,
            from,
            to,
            text: cmd.text,
            timestamp_ms: now_ms(),
            seq: recipient.assigned_seq,
        });
        let receipt = Receipt::of(&message);
        st.recent.insert(receipt.clone());
        let rx = self.queue(Record::Message(message));
        Ok(Admitted {
            server: self.clone(),
            receipt,
            durable: Some(rx),
        })
    }

    /// Claims `raw_id` online and returns the session that streams its
    /// mailbox, starting after `after_seq` (or its acknowledged cursor, if
    /// higher). Registers (claims) the ID if it is new, like [`Self::register`].
    pub async fn connect(
        &self,
        creds: &Credentials,
        raw_id: &str,
        after_seq: u64,
    ) -> Result<Session, ChatError> {
        ClientId::validate(raw_id)?;
        let (id, presented) = presented(creds)?;
        check_same(&id, raw_id)?;
        let (session, rx) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            let (principal, created, record) = claim(&mut st, id, presented)?;
            if created {
                self.inner.metrics.registered.inc();
            }
            let id = principal.id;
            if st.clients[&id].session.is_some() {
                return Err(ChatError::AlreadyOnline(id));
            }
            let session_no = st.mark_online(&id, &self.inner.metrics);
            let c = st.clients.get_mut(&id).expect("claimed above");
            c.outbox.rewind(after_seq);
            let session = Session {
                server: self.clone(),
                id,
                session_no,
                notify: c.outbox.notify().clone(),
            };
            (session, record.map(|r| self.queue(r)))
        };
        if let Some(rx) = rx {
            self.durable(rx).await?;
        }
        tracing::debug!(client = %session.id, after = after_seq, "session streams the mailbox");
        Ok(session)
    }

    /// Records that the client `raw_id` (which must be `principal`) has
    /// shown every message up to `up_to_seq`.
    pub async fn ack(
        &self,
        principal: &Principal,
        raw_id: &str,
        up_to_seq: u64,
    ) -> Result<(), ChatError> {
        principal.acting_as(raw_id)?;
        self.advance(&principal.id, up_to_seq, false).await
    }

    /// Records that every message up to `up_to_seq` for `to` reached its
    /// next hop. For an adapter whose next hop is not the client itself
    /// (AMQP: the broker confirmed the publish into the client's queue);
    /// a client's own acknowledgement goes through [`Self::ack`]. The
    /// messages still count towards `--max-pending` as queued downstream
    /// until [`Self::set_queued_downstream`] says they were consumed.
    pub async fn forwarded(&self, to: &ClientId, up_to_seq: u64) -> Result<(), ChatError> {
        self.advance(to, up_to_seq, true).await
    }

    /// Makes this server hand its outboxes to a forwarder (AMQP), from
    /// their acknowledged cursors: whatever was handed out before and not
    /// acknowledged (on a previous connection) is handed out again. Returns
    /// what wakes the forwarder when [`Self::next_round`] has work.
    pub fn start_forwarding(&self) -> Arc<Notify> {
        let mut st = self.lock();
        st.forwarding = true;
        st.ready.clear();
        let ids: Vec<ClientId> = st.clients.keys().cloned().collect();
        for id in ids {
            if let Some(c) = st.clients.get_mut(&id) {
                c.ready = false;
                c.outbox.rewind(0);
            }
            st.mark_ready(&id);
        }
        st.forward_wake.notify_one();
        st.forward_wake.clone()
    }

    /// The next messages to forward: per-recipient batches, each in seq
    /// order and after what was handed out already, at most `max` in all.
    /// Recipients take turns, so one backlog does not hold up the rest.
    /// Empty when nothing waits (or the server shuts down).
    pub fn next_round(&self, max: usize) -> Result<Vec<Outgoing>, ChatError> {
        let round = {
            let mut st = self.lock();
            if st.shutting_down {
                return Ok(Vec::new());
            }
            st.take_round(max)
        };
        let recipients: Vec<ClientId> = round.iter().map(|(to, _)| to.clone()).collect();
        let loaded: Result<Vec<Outgoing>, ChatError> = round
            .into_iter()
            .map(|(to, batch)| {
                Ok(Outgoing {
                    to,
                    messages: self.load_all(batch)?,
                })
            })
            .collect();
        if loaded.is_err() {
            // Nothing of this round goes out: every recipient in it is
            // handed out again next round, not only the one that failed.
            for to in &recipients {
                self.rewind(to, 0);
            }
        }
        loaded
    }

    /// Hands `to`'s messages after `after` out again (a publish the next
    /// hop refused).
    pub fn rewind(&self, to: &ClientId, after: u64) {
        let mut st = self.lock();
        if let Some(c) = st.clients.get_mut(to) {
            c.outbox.rewind(after);
        }
        st.mark_ready(to);
    }

    /// Resolves once `to`'s message `seq` reached its next hop (through
    /// [`Self::forwarded`] or [`Self::ack`]).
    pub fn wait_forwarded(&self, to: &ClientId, seq: u64) -> oneshot::Receiver<()> {
        let mut st = self.lock();
        match st.clients.get_mut(to) {
            Some(c) => c.outbox.wait_acked(seq),
            // Not registered: nothing will be forwarded (dropped sender).
            None => oneshot::channel().1,
        }
    }

    /// Moves `to`'s cursor to `up_to_seq`; with `queued`, what it passes
    /// is now held unread by the next hop.
    async fn advance(&self, to: &ClientId, up_to_seq: u64, queued: bool) -> Result<(), ChatError> {
        let rx = {
            let mut st = self.lock();
            let Some(c) = st.clients.get_mut(to) else {
                return Err(ChatError::UnknownRecipient(to.clone()));
            };
            let before = c.outbox.acked();
            let Some(released) = c.outbox.ack(up_to_seq) else {
                return Ok(());
            };
            let up_to = c.outbox.acked();
            if queued {
                c.queued_downstream += (up_to - before) as usize;
            }
            self.inner.metrics.acked.inc_by(released.messages as u64);
            self.inner.metrics.pending.dec_by(gauge(released.messages));
            st.mailbox_bytes -= released.bytes;
            self.queue(Record::Ack(to.clone(), up_to))
        };
        self.durable(rx).await
    }

    /// The transport's own lock on `id` says the client is online (AMQP:
    /// its exclusive consumer holds its queue). Unlike [`Self::connect`]
    /// this does not refuse an ID that is online already: the transport
    /// decided who holds the ID, so the new spell replaces the old one, and
    /// a late [`Self::went_offline`] for the old one changes nothing.
    pub fn went_online(&self, id: &ClientId) -> Result<Online, ChatError> {
        let mut st = self.lock();
        if st.shutting_down {
            return Err(ChatError::ShuttingDown);
        }
        let Some((id, _)) = st.clients.get_key_value(id) else {
            return Err(ChatError::UnknownSender(id.clone()));
        };
        let id = id.clone();
        let spell = st.mark_online(&id, &self.inner.metrics);
        Ok(Online { id, spell })
    }

    /// Ends the spell online that [`Self::went_online`] (or
    /// [`Self::online`]) returned, unless a later one replaced it. Whether
    /// the client went offline.
    pub fn went_offline(&self, online: &Online) -> bool {
        self.lock()
            .mark_offline(&online.id, online.spell, &self.inner.metrics)
    }

    /// `id`'s current spell online, if it is online (on either transport).
    pub fn online(&self, id: &ClientId) -> Option<Online> {
        let st = self.lock();
        let (id, c) = st.clients.get_key_value(id)?;
        c.session.map(|spell| Online {
            id: id.clone(),
            spell,
        })
    }

    /// Every registered client with its online status, sorted by ID.
    pub fn list(&self) -> Vec<ClientInfo> {
        self.lock()
            .clients
            .iter()
            .map(|(id, c)| ClientInfo {
                id: id.clone(),
                online: c.session.is_some(),
            })
            .collect()
    }

    /// One page of the messages sent by `raw_id` (which must be
    /// `principal`), oldest first: at most `limit` of them (0, or more than
    /// [`MAX_HISTORY_PAGE`]: that many), starting after the first `after`,
    /// and no more than fit in [`Limits::max_reply_bytes`]. `more` says
    /// whether another page follows (ask again with `after` increased by
    /// the number of messages received). Read back from `log.txt`.
    pub async fn history_page(
        &self,
        principal: &Principal,
        raw_id: &str,
        after: u64,
        limit: u32,
    ) -> Result<pb::HistoryReply, ChatError> {
        principal.acting_as(raw_id)?;
        let limit = match limit as usize {
            0 => MAX_HISTORY_PAGE,
            n => n.min(MAX_HISTORY_PAGE),
        };
        let (entries, total) = {
            let st = self.lock();
            let sent = st
                .clients
                .get(&principal.id)
                .map_or(&[][..], |c| &c.history[..]);
            let start = usize::try_from(after).unwrap_or(usize::MAX).min(sent.len());
            let end = start.saturating_add(limit).min(sent.len());
            (sent[start..end].to_vec(), sent.len() as u64)
        };
        let log = self.inner.log.clone();
        let path = self.inner.log_path.clone();
        let max = self.inner.limits.max_reply_bytes;
        let id = principal.id.clone();
        tokio::task::spawn_blocking(move || {
            let mut reply = pb::HistoryReply::default();
            // The reply's own fields (`more`) and framing, kept free.
            let mut bytes = 16;
            for sent in &entries {
                let mut m = journal::read_logged(&log, &path, sent.offset, sent.len as usize)?;
                m.seq = sent.seq;
                let m = m.to_proto();
                let len = prost::Message::encoded_len(&m);
                let size = 1 + prost::encoding::encoded_len_varint(len as u64) as usize + len;
                if bytes + size > max {
                    if reply.messages.is_empty() {
                        return Err(ChatError::ReplyTooLarge {
                            id,
                            messages: 1,
                            bytes: bytes + size,
                            max,
                        });
                    }
                    break;
                }
                bytes += size;
                reply.messages.push(m);
            }
            reply.more = after.saturating_add(reply.messages.len() as u64) < total;
            Ok(reply)
        })
        .await
        .map_err(|_| ChatError::ShuttingDown)?
    }

    /// Every message sent by `raw_id` (which must be `principal`), oldest
    /// first: all pages of [`Self::history_page`].
    pub async fn history(
        &self,
        principal: &Principal,
        raw_id: &str,
    ) -> Result<Vec<Message>, ChatError> {
        let mut all = Vec::new();
        loop {
            let page = self
                .history_page(principal, raw_id, all.len() as u64, 0)
                .await?;
            let more = page.more;
            for m in page.messages {
                all.push(Message::from_proto(m)?);
            }
            if !more {
                return Ok(all);
            }
        }
    }

    /// Every registered client with its cursor, for
    /// [`Self::set_queued_downstream`]: the adapter recounts them all after
    /// (re)connecting, when it knows nothing of what waits downstream.
    pub fn downstream_marks(&self) -> Vec<(ClientId, u64)> {
        self.lock()
            .clients
            .iter()
            .map(|(id, c)| (id.clone(), c.outbox.acked()))
            .collect()
    }

    /// The recipients whose queued-downstream estimate matters now: it is
    /// not zero and brings them to half of `--max-pending` or more. Only
    /// these are worth a broker round trip; below half, the estimate grows
    /// by confirmed publishes alone, so it cannot refuse a send before it
    /// becomes a candidate. With each one's cursor, as
    /// [`Self::downstream_marks`].
    pub fn downstream_recount_candidates(&self) -> Vec<(ClientId, u64)> {
        let half = self.inner.limits.max_pending.div_ceil(2);
        self.lock()
            .clients
            .iter()
            .filter(|(_, c)| c.queued_downstream > 0 && c.pending() >= half)
            .map(|(id, c)| (id.clone(), c.outbox.acked()))
            .collect()
    }

    /// The next hop reports `depth` messages held unread for `to`, counted
    /// after the cursor was at `mark` (from [`Self::downstream_marks`] or
    /// [`Self::downstream_recount_candidates`], read *before* asking). What
    /// was forwarded since `mark` is added, in case the count missed it, so
    /// the estimate errs on the side of too many, never too few.
    pub fn set_queued_downstream(&self, to: &ClientId, mark: u64, depth: usize) {
        if let Some(c) = self.lock().clients.get_mut(to) {
            c.queued_downstream = depth + c.outbox.acked().saturating_sub(mark) as usize;
        }
    }

    /// Every committed, unacknowledged message, per recipient in seq order
    /// (spilled ones read back from `log.txt`).
    pub fn undelivered(&self) -> Vec<Arc<Message>> {
        let pending: Vec<Pending> = self
            .lock()
            .clients
            .values()
            .flat_map(|c| c.outbox.iter().cloned())
            .collect();
        pending
            .into_iter()
            .filter_map(|p| match self.load(p) {
                Ok(m) => Some(m),
                Err(e) => {
                    tracing::error!(error = %e, "cannot read an undelivered message back");
                    None
                }
            })
            .collect()
    }

    /// The message a mailbox slot stands for, read from `log.txt` if it
    /// was spilled.
    fn load(&self, pending: Pending) -> Result<Arc<Message>, ChatError> {
        match pending {
            Pending::Loaded(m) => Ok(m),
            Pending::Spilled(at) => {
                let mut m = journal::read_logged(
                    &self.inner.log,
                    &self.inner.log_path,
                    at.offset,
                    at.len as usize,
                )?;
                m.seq = at.seq;
                Ok(Arc::new(m))
            }
        }
    }

    /// [`Self::load`] for each slot of a batch.
    fn load_all(&self, batch: Vec<Pending>) -> Result<Vec<Arc<Message>>, ChatError> {
        batch.into_iter().map(|p| self.load(p)).collect()
    }

    /// How many committed messages have not reached their next hop.
    pub fn undelivered_count(&self) -> usize {
        self.lock().clients.values().map(|c| c.outbox.len()).sum()
    }

    /// Bytes of undelivered messages held in memory (the rest are spilled).
    pub fn mailbox_bytes(&self) -> usize {
        self.lock().mailbox_bytes
    }

    /// Refuses new work and ends every session's stream.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        for c in st.clients.values() {
            c.outbox.notify().notify_one();
        }
        st.forward_wake.notify_one();
    }
}

/// The ID and the hash of the secret that `creds` present (hashed here,
/// outside the state lock).
fn presented(creds: &Credentials) -> Result<(ClientId, SecretHash), ChatError> {
    if creds.client_id.is_empty() {
        return Err(ChatError::Unauthenticated(
            "the request carries no client ID and secret (credentials)".into(),
        ));
    }
    let id = ClientId::parse(&creds.client_id)?;
    if creds.secret.is_empty() {
        return Err(ChatError::Unauthenticated(format!(
            "no secret given for ID {id}; pass --secret (or CHAT_SECRET)"
        )));
    }
    Ok((id, Secret::parse(&creds.secret)?.hash()))
}

/// A registration must be for the ID the credentials are for.
fn check_same(id: &ClientId, raw_id: &str) -> Result<(), ChatError> {
    Principal { id: id.clone() }.acting_as(raw_id)
}

/// Registers `id` claimed by `presented`, claims it if it was unclaimed, or
/// verifies the secret. Returns the principal, whether the ID is new, and
/// the journal record to make durable, if any.
fn claim(
    st: &mut State,
    id: ClientId,
    presented: SecretHash,
) -> Result<(Principal, bool, Option<Record>), ChatError> {
    if let Some((key, c)) = st.clients.get_key_value(&id) {
        let key = key.clone();
        return match c.secret {
            Some(stored) if stored.matches(&presented) => Ok((Principal { id: key }, false, None)),
            Some(_) => Err(ChatError::WrongSecret(key)),
            None => {
                let registered_ms = c.registered_ms;
                st.clients.get_mut(&key).expect("present").secret = Some(presented);
                tracing::info!(client = %key, "unclaimed ID claimed with a secret");
                let record = Record::Register(key.clone(), registered_ms, Some(presented));
                Ok((Principal { id: key }, false, Some(record)))
            }
        };
    }
    let now = now_ms();
    let c = st.clients.entry(id.clone()).or_default();
    c.registered_ms = now;
    c.secret = Some(presented);
    let record = Record::Register(id.clone(), now, Some(presented));
    Ok((Principal { id }, true, Some(record)))
}

/// Rebuilding the state in [`ChatServer::open`]: `state.journal` first
/// ([`State::from_journal`]), then `log.txt` on top ([`replay_log`]), then
/// the checks and the compaction that need both.
impl State {
    /// A state holding the registrations and acknowledged cursors of
    /// `state.journal` (`replay`, read from `state_path`), ready for
    /// `log.txt` to be replayed on top. Refuses an ack for an ID that no
    /// line registers. Also returns the line of each client's highest ack,
    /// for [`State::check_acks_within_log`] to name.
    fn from_journal(
        replay: journal::Replay,
        dedupe_window: usize,
        state_path: &Path,
    ) -> Result<(Self, HashMap<ClientId, usize>), ChatError> {
        let mut state = State {
            recent: Recent::with_capacity(dedupe_window),
            ..State::default()
        };
        for (id, ts, secret) in replay.registered {
            let c = state.clients.entry(id).or_default();
            c.registered_ms = ts;
            if secret.is_some() {
                c.secret = secret;
            }
        }
        // The line of each client's highest ack, to name it if it is wrong.
        let mut ack_lines: HashMap<ClientId, usize> = HashMap::new();
        for (id, seq, line) in replay.acks {
            let Some(c) = state.clients.get_mut(&id) else {
                return Err(journal::corrupt_because(
                    state_path,
                    line,
                    &format!("ack {id} {seq}"),
                    &format!("an ack for {id}, which no line of the file registers"),
                ));
            };
            if seq >= c.outbox.acked() {
                c.outbox.restore_acked(seq);
                ack_lines.insert(id, line);
            }
        }
        Ok((state, ack_lines))
    }

    /// Refuses a client acknowledged beyond the messages `log.txt` holds
    /// for it, naming the ack's line of `state_path` (from `ack_lines`).
    fn check_acks_within_log(
        &self,
        state_path: &Path,
        ack_lines: &HashMap<ClientId, usize>,
    ) -> Result<(), ChatError> {
        for (id, c) in &self.clients {
            if c.outbox.acked() > c.assigned_seq {
                let line = ack_lines.get(id).copied().unwrap_or(0);
                return Err(journal::corrupt_because(
                    state_path,
                    line,
                    &format!("ack {id} {}", c.outbox.acked()),
                    &format!(
                        "{id} acknowledged up to seq {} but log.txt has only {} messages \
                         for {id}: log.txt is shorter than the journal says (restored \
                         from an older copy?), and acknowledging messages that are not \
                         there would hide any that arrive",
                        c.outbox.acked(),
                        c.assigned_seq
                    ),
                ));
            }
        }
        Ok(())
    }

    /// What `state.journal` holds when written afresh: every client's
    /// registration and, once it acknowledged anything, its cursor.
    fn snapshot(&self) -> Vec<Record> {
        self.clients
            .iter()
            .flat_map(|(id, c)| {
                let acked = c.outbox.acked();
                let ack = (acked > 0).then(|| Record::Ack(id.clone(), acked));
                std::iter::once(Record::Register(id.clone(), c.registered_ms, c.secret)).chain(ack)
            })
            .collect()
    }

    /// Rewrites `state.journal` in `dir` as [`State::snapshot`] when the
    /// file's `state_lines` lines are more than the snapshot's.
    fn compact_journal(&self, dir: &Path, state_lines: usize) -> Result<(), ChatError> {
        let snapshot = self.snapshot();
        if state_lines > snapshot.len() {
            journal::compact_state(dir, &snapshot)?;
        }
        Ok(())
    }

    /// Logs what was rebuilt from `data_dir` (`messages` lines of
    /// `log.txt`) and returns how many messages are undelivered.
    fn report_rebuilt(&self, data_dir: &Path, messages: usize) -> usize {
        let pending: usize = self.clients.values().map(|c| c.outbox.len()).sum();
        let spilled: usize = self
            .clients
            .values()
            .flat_map(|c| c.outbox.iter())
            .filter(|p| matches!(p, Pending::Spilled(_)))
            .count();
        tracing::info!(
            data_dir = %data_dir.display(),
            clients = self.clients.len(),
            messages,
            undelivered = pending,
            undelivered_in_log_only = spilled,
            "state rebuilt from the data directory"
        );
        pending
    }
}

/// Rebuilds histories, mailboxes and the dedupe window from `log.txt`,
/// refusing a file that contradicts itself or `state.journal`. Returns the
/// number of messages.
fn replay_log(dir: &Path, state: &mut State, budget: usize) -> Result<usize, ChatError> {
    let path = dir.join(LOG_FILE);
    let mut repeats = Repeats::default();
    let mut count = 0;
    journal::scan_log(dir, |at, line, m| {
        let bad = |why: String| journal::corrupt_because(&path, at.line, line, &why);
        if let Some(first) = repeats.check(m.id, at.line, line) {
            return Err(bad(format!(
                "it repeats line {first} exactly (message {}); replaying it would deliver \
                 that message twice (was a line copied, or a file restored twice?)",
                m.id
            )));
        }
        count += 1;
        state.replay_message(at, m, budget).map_err(bad)
    })?;
    Ok(count)
}

/// Every message ID of `log.txt` with its line and a hash of the line, to
/// find a line repeated exactly; dropped after replay. The same ID on two
/// *different* lines is legitimate: a send retried after its ID left the
/// dedupe window was accepted (and delivered) twice, and replay reproduces
/// that.
#[derive(Default)]
struct Repeats(HashMap<MessageId, (usize, u64)>);

impl Repeats {
    /// The earlier line that `line` (line number `n`, message `id`) repeats.
    fn check(&mut self, id: MessageId, n: usize, line: &str) -> Option<usize> {
        use std::hash::{BuildHasher as _, BuildHasherDefault};
        let hash = BuildHasherDefault::<std::collections::hash_map::DefaultHasher>::default()
            .hash_one(line);
        match self.0.insert(id, (n, hash)) {
            Some((first, first_hash)) if first_hash == hash => Some(first),
            _ => None,
        }
    }
}

impl State {
    /// Gives a message read back from `log.txt` (at `at`) its recipient's
    /// next seq, and puts it in the dedupe window, its sender's history
    /// and, unless acknowledged, its recipient's mailbox. Why not, when its
    /// sender or recipient is not registered.
    fn replay_message(&mut self, at: Located, m: Message, budget: usize) -> Result<(), String> {
        let registered = |id: &ClientId, role: &str| match self.clients.get_key_value(id) {
            Some((id, _)) => Ok(id.clone()),
            None => Err(format!(
                "the {role} {id} is not registered in {}",
                journal::STATE_FILE
            )),
        };
        let from = registered(&m.from, "sender")?;
        let to = registered(&m.to, "recipient")?;
        let c = self.clients.get_mut(&to).expect("looked up above");
        c.assigned_seq += 1;
        let seq = c.assigned_seq;
        let acked = c.outbox.acked();
        let message = Message {
            seq,
            from: from.clone(),
            to,
            ..m
        };
        self.recent.insert(Receipt::of(&message));
        let sent = Sent::new(at.offset, at.len, seq);
        if seq > acked {
            let to = message.to.clone();
            self.enqueue(&to, Arc::new(message), sent, budget);
        }
        self.clients
            .get_mut(&from)
            .expect("looked up above")
            .history
            .push(sent);
        Ok(())
    }
}

/// Makes a durable batch visible: messages enter the sender's history and
/// the recipient's mailbox, and the recipient's session is woken.
fn commit(
    state: &Mutex<State>,
    metrics: &Metrics,
    records: &[Record],
    places: &[(u64, usize)],
    budget: usize,
) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    let messages = records.iter().filter_map(|r| match r {
        Record::Message(m) => Some(m),
        _ => None,
    });
    for (m, &(offset, len)) in messages.zip(places) {
        metrics.accepted.inc();
        let sent = Sent::new(offset, len, m.seq);
        if let Some(from) = st.clients.get_mut(&m.from) {
            from.history.push(sent);
        }
        let unacked = st
            .clients
            .get(&m.to)
            .is_some_and(|to| m.seq > to.outbox.acked());
        if unacked {
            st.enqueue(&m.to, m.clone(), sent, budget);
            metrics.pending.inc();
        }
    }
}

/// A count as a gauge value.
fn gauge(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A message [`ChatServer::accept`] took, on its way to the journal.
#[must_use = "the sender may only be answered once the message is durable"]
pub struct Admitted {
    server: ChatServer,
    receipt: Receipt,
    /// `None`: accepted before (a retried send), durable already.
    durable: Option<Queued>,
}

impl Admitted {
    fn already(server: &ChatServer, receipt: Receipt) -> Self {
        Self {
            server: server.clone(),
            receipt,
            durable: None,
        }
    }

    /// Waits until the message is in `log.txt` (and, with
    /// `--durability fsync`, on disk).
    pub async fn durable(self) -> Result<Receipt, ChatError> {
        if let Some(rx) = self.durable {
            self.server.durable(rx).await?;
        }
        Ok(self.receipt)
    }
}

/// Messages for one recipient, in seq order, to forward in one go.
#[derive(Debug)]
pub struct Outgoing {
    pub to: ClientId,
    pub messages: Vec<Arc<Message>>,
}

/// One spell of a client being online, for a transport whose own lock
/// decides presence (AMQP): [`ChatServer::went_offline`] ends it, unless a
/// later spell replaced it (a rejoin that beat the news of the old
/// consumer's end).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Online {
    id: ClientId,
    /// Unique per spell (shared with [`Session`] numbers).
    spell: u64,
}

impl Online {
    pub fn client_id(&self) -> &ClientId {
        &self.id
    }
}

/// A client's claim on its ID being online; it hands the client's outbox
/// to its stream. Dropping it takes the client offline.
pub struct Session {
    server: ChatServer,
    id: ClientId,
    session_no: u64,
    notify: Arc<Notify>,
}

impl Session {
    pub fn client_id(&self) -> &ClientId {
        &self.id
    }

    /// The next messages for this client, waiting until there are some.
    /// `None` once the server shuts down.
    pub async fn next_batch(&mut self) -> Option<Vec<Arc<Message>>> {
        loop {
            let batch = {
                let mut st = self.server.lock();
                if st.shutting_down {
                    return None;
                }
                st.clients.get_mut(&self.id)?.outbox.take(SESSION_BATCH)
            };
            if !batch.is_empty() {
                // Spilled messages are read back outside the lock. A read
                // error ends this session; the client reconnects and
                // nothing was acknowledged.
                return match self.server.load_all(batch) {
                    Ok(out) => Some(out),
                    Err(e) => {
                        tracing::error!(client = %self.id, error = %e, "cannot read an undelivered message back");
                        None
                    }
                };
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.server.lock();
        st.mark_offline(&self.id, self.session_no, &self.server.inner.metrics);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::ErrorCode;
    use std::io::Write as _;

    fn send_req(from: &str, to: &str, text: &str) -> pb::SendRequest {
        pb::SendRequest {
            id: String::new(),
            from: from.into(),
            to: to.into(),
            text: text.into(),
        }
    }

    async fn open(dir: &Path) -> ChatServer {
        ChatServer::open(ServerConfig::new(dir)).unwrap()
    }

    fn creds(name: &str) -> Credentials {
        Credentials::new(name, format!("secret-of-{name}"))
    }

    /// Registers `name` with its test secret; whether it was new.
    async fn register(s: &ChatServer, name: &str) -> Result<bool, ChatError> {
        s.register(&creds(name), name).await.map(|(_, new)| new)
    }

    fn me(s: &ChatServer, name: &str) -> Principal {
        s.authenticate(&creds(name)).unwrap()
    }

    async fn send(s: &ChatServer, from: &str, to: &str, text: &str) -> Result<Receipt, ChatError> {
        let p = s.authenticate(&creds(from))?;
        let cmd = SendCommand::parse(send_req(from, to, text), &s.limits())?;
        s.send(&p, cmd).await
    }

    #[tokio::test]
    async fn replay_restores_registrations_histories_and_unacked_mail() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).await;
            register(&s, "alice").await.unwrap();
            assert!(register(&s, "bob").await.unwrap());
            assert!(!register(&s, "bob").await.unwrap(), "resumed, not new");
            for text in ["one", "two", "three"] {
                send(&s, "alice", "bob", text).await.unwrap();
            }
            s.ack(&me(&s, "bob"), "bob", 1).await.unwrap();
        }
        let s = open(dir.path()).await;
        let ids: Vec<_> = s.list().into_iter().map(|c| c.id.to_string()).collect();
        assert_eq!(ids, ["alice", "bob"]);
        let texts: Vec<_> = s
            .history(&me(&s, "alice"), "alice")
            .await
            .unwrap()
            .iter()
            .map(|m| m.text.clone())
            .collect();
        assert_eq!(texts, ["one", "two", "three"]);
        let pending: Vec<_> = s
            .undelivered()
            .iter()
            .map(|m| (m.seq, m.text.clone()))
            .collect();
        assert_eq!(pending, [(2, "two".to_owned()), (3, "three".to_owned())]);

        let mut session = s.connect(&creds("bob"), "bob", 0).await.unwrap();
        let batch = session.next_batch().await.unwrap();
        assert_eq!(batch.iter().map(|m| m.seq).collect::<Vec<_>>(), [2, 3]);
        // After a restart, seqs continue where they were.
        let m = send(&s, "alice", "bob", "four").await.unwrap();
        assert_eq!(m.seq, 4);
    }

    /// Pages: each within `max_reply_bytes` and `limit`, `more` until the
    /// last, and together every message once, in order.
    #[tokio::test]
    async fn history_pages_fit_the_reply_limit_and_cover_everything() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        config.limits.max_reply_bytes = 1500;
        let s = ChatServer::open(config).unwrap();
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        let sent: Vec<String> = (0..40)
            .map(|i| format!("{i:02} {}", "y".repeat(90)))
            .collect();
        for text in &sent {
            send(&s, "alice", "bob", text).await.unwrap();
        }
        let alice = me(&s, "alice");
        let mut got = Vec::new();
        let mut pages = 0;
        loop {
            let page = s
                .history_page(&alice, "alice", got.len() as u64, 0)
                .await
                .unwrap();
            assert!(prost::Message::encoded_len(&page) <= 1500);
            assert!(!page.messages.is_empty());
            pages += 1;
            got.extend(page.messages.into_iter().map(|m| m.text));
            if !page.more {
                break;
            }
        }
        assert_eq!(got, sent);
        assert!(pages > 3, "{pages} pages");

        let page = s.history_page(&alice, "alice", 5, 2).await.unwrap();
        let texts: Vec<_> = page.messages.iter().map(|m| m.text.as_str()).collect();
        assert_eq!(texts, [sent[5].as_str(), sent[6].as_str()]);
        assert!(page.more);
        let page = s.history_page(&alice, "alice", 40, 0).await.unwrap();
        assert!(
            page.messages.is_empty() && !page.more,
            "after the end: empty, last"
        );
        let page = s.history_page(&alice, "alice", u64::MAX, 0).await.unwrap();
        assert!(page.messages.is_empty() && !page.more);
    }

    /// A send retried with the same ID is accepted once while the ID is
    /// among the last `dedupe_window` accepted (also after a restart: the
    /// window is rebuilt from log.txt); past the window it is a new message,
    /// as documented, and memory stays bounded.
    #[tokio::test]
    async fn a_retried_send_is_accepted_once_within_the_dedupe_window() {
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            let mut c = ServerConfig::new(dir.path());
            c.limits.dedupe_window = 3;
            c
        };
        let with_id = |id: &str, text: &str| {
            let req = pb::SendRequest {
                id: id.into(),
                ..send_req("alice", "bob", text)
            };
            SendCommand::parse(req, &Limits::default()).unwrap()
        };
        let retried = "0193f0c6-8a1e-7cc2-9d1a-3b7e4f5a6b7c";
        {
            let s = ChatServer::open(config()).unwrap();
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            let alice = me(&s, "alice");
            let first = s.send(&alice, with_id(retried, "once")).await.unwrap();
            let again = s.send(&alice, with_id(retried, "once")).await.unwrap();
            assert_eq!(again, first);
            assert_eq!(s.undelivered().len(), 1);
        }
        let s = ChatServer::open(config()).unwrap();
        let alice = me(&s, "alice");
        let again = s.send(&alice, with_id(retried, "once")).await.unwrap();
        assert_eq!(again.seq, 1, "recognised after a restart");
        for text in ["a", "b", "c"] {
            send(&s, "alice", "bob", text).await.unwrap();
        }
        // A later millisecond, as a real retry past the window always is
        // (its log line then differs from the first one's).
        tokio::time::sleep(std::time::Duration::from_millis(2)).await;
        let late = s.send(&alice, with_id(retried, "once")).await.unwrap();
        assert_eq!(late.seq, 5, "out of the window: accepted as new");
        assert!(s.lock().recent.by_id.len() <= 3);
        drop(s);
        // Both lines carry the ID; replay reproduces both deliveries.
        let s = ChatServer::open(config()).unwrap();
        let seqs: Vec<_> = s.undelivered().iter().map(|m| m.seq).collect();
        assert_eq!(seqs, [1, 2, 3, 4, 5]);
    }

    /// Past the mailboxes' memory budget, undelivered messages wait only in
    /// log.txt: the budget holds, a session still gets every message in
    /// order (read back), also after a restart, and memory is given back
    /// once they are acknowledged.
    #[tokio::test]
    async fn a_backlog_over_the_memory_budget_waits_in_the_log() {
        let dir = tempfile::tempdir().unwrap();
        let config = || {
            let mut c = ServerConfig::new(dir.path());
            c.limits.mailbox_memory = 2000;
            c
        };
        let texts: Vec<String> = (0..50)
            .map(|i| format!("{i:02} {}", "z".repeat(40)))
            .collect();
        {
            let s = ChatServer::open(config()).unwrap();
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            for text in &texts {
                send(&s, "alice", "bob", text).await.unwrap();
                assert!(s.mailbox_bytes() <= 2000);
            }
            let spilled = s.lock().clients[&ClientId::parse("bob").unwrap()]
                .outbox
                .iter()
                .filter(|p| matches!(p, Pending::Spilled(_)))
                .count();
            assert!(spilled > 30, "{spilled} spilled");
        }
        let s = ChatServer::open(config()).unwrap();
        assert!(s.mailbox_bytes() <= 2000, "the budget holds at replay too");
        let mut session = s.connect(&creds("bob"), "bob", 0).await.unwrap();
        let mut got = Vec::new();
        while got.len() < texts.len() {
            got.extend(session.next_batch().await.unwrap());
        }
        let seen: Vec<_> = got.iter().map(|m| (m.seq, m.text.clone())).collect();
        let want: Vec<_> = (1..).zip(texts.iter().cloned()).collect();
        assert_eq!(seen, want);
        s.ack(&me(&s, "bob"), "bob", 50).await.unwrap();
        assert_eq!(s.mailbox_bytes(), 0);
        assert!(s.undelivered().is_empty());
    }

    #[tokio::test]
    async fn messages_share_the_registry_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        send(&s, "alice", "bob", "hi").await.unwrap();
        let m = s.undelivered()[0].clone();
        let registry = s.list();
        // The same allocation as the registry's key, not an equal copy.
        assert_eq!(m.from.as_str().as_ptr(), registry[0].id.as_str().as_ptr());
        assert_eq!(m.to.as_str().as_ptr(), registry[1].id.as_str().as_ptr());
        let err = send(&s, "alice", "bad id", "hi").await.unwrap_err();
        assert!(matches!(err, ChatError::InvalidClientId(_)), "{err}");
        let err = send(&s, "alice", "carol", "hi").await.unwrap_err();
        assert!(matches!(err, ChatError::UnknownRecipient(ref id) if id.as_str() == "carol"));
    }

    #[tokio::test]
    async fn the_state_journal_is_compacted_at_start_and_keeps_its_meaning() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join(journal::STATE_FILE);
        {
            let s = open(dir.path()).await;
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            for i in 1..=10 {
                send(&s, "alice", "bob", &format!("m{i}")).await.unwrap();
                s.ack(&me(&s, "bob"), "bob", i).await.unwrap();
            }
            send(&s, "alice", "bob", "unread").await.unwrap();
        }
        let before = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(before.lines().count(), 12);
        let registered_alice = before.lines().next().unwrap().to_owned();

        let s = open(dir.path()).await;
        let after = std::fs::read_to_string(&journal).unwrap();
        assert_eq!(
            after.lines().collect::<Vec<_>>(),
            [
                registered_alice.as_str(),
                before.lines().nth(1).unwrap(),
                "ack bob 10"
            ]
        );
        let pending: Vec<_> = s.undelivered().iter().map(|m| m.text.clone()).collect();
        assert_eq!(pending, ["unread"]);
        drop(s);
        // Nothing to gain the second time: the file is left as it is.
        let again = open(dir.path()).await;
        assert_eq!(std::fs::read_to_string(&journal).unwrap(), after);
        assert_eq!(again.list().len(), 2);
        assert!(!dir.path().join("state.journal.tmp").exists());
    }

    #[tokio::test]
    async fn a_torn_last_line_is_dropped_and_the_rest_kept() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).await;
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            send(&s, "alice", "bob", "kept").await.unwrap();
        }
        let log = dir.path().join(journal::LOG_FILE);
        let mut f = std::fs::OpenOptions::new().append(true).open(&log).unwrap();
        f.write_all(b"2026-11-27T09:00:00.000Z 0193").unwrap();
        drop(f);

        let s = open(dir.path()).await;
        assert_eq!(s.history(&me(&s, "alice"), "alice").await.unwrap().len(), 1);
        let text = std::fs::read_to_string(&log).unwrap();
        assert_eq!(text.lines().count(), 1);
        assert!(text.ends_with('\n'), "file cut back to the last full line");
        send(&s, "alice", "bob", "next").await.unwrap();
        assert_eq!(std::fs::read_to_string(&log).unwrap().lines().count(), 2);
    }

    #[tokio::test]
    async fn a_corrupt_line_stops_the_server_with_a_clear_error() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(journal::LOG_FILE),
            "this is not a log line\n",
        )
        .unwrap();
        let err = ChatServer::open(ServerConfig::new(dir.path()))
            .err()
            .expect("refuses to guess");
        let msg = err.to_string();
        assert!(msg.contains("log.txt") && msg.contains("line 1"), "{msg}");
    }

    #[tokio::test]
    async fn the_forwarder_gets_fair_batches_and_cumulative_acks_resolve_waiters() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        for name in ["alice", "bob", "carol"] {
            register(&s, name).await.unwrap();
        }
        for i in 0..5 {
            send(&s, "alice", "bob", &format!("b{i}")).await.unwrap();
        }
        send(&s, "alice", "carol", "c0").await.unwrap();
        s.start_forwarding();
        let bob = ClientId::parse("bob").unwrap();
        let waiter = s.wait_forwarded(&bob, 5);

        // Three per round: bob's first three, then the rest of bob and carol.
        let round = s.next_round(3).unwrap();
        let seqs = |r: &[Outgoing]| -> Vec<(String, Vec<u64>)> {
            r.iter()
                .map(|o| (o.to.to_string(), o.messages.iter().map(|m| m.seq).collect()))
                .collect()
        };
        assert_eq!(seqs(&round), [("bob".into(), vec![1, 2, 3])]);
        let round = s.next_round(10).unwrap();
        assert_eq!(
            seqs(&round),
            [("carol".into(), vec![1]), ("bob".into(), vec![4, 5])]
        );
        assert!(s.next_round(10).unwrap().is_empty(), "each handed out once");

        // The broker refused bob's 4: handed out again from there.
        s.forwarded(&bob, 3).await.unwrap();
        s.rewind(&bob, 3);
        assert_eq!(
            seqs(&s.next_round(10).unwrap()),
            [("bob".into(), vec![4, 5])]
        );
        s.forwarded(&bob, 5).await.unwrap();
        waiter.await.expect("resolved by the cumulative ack");
        assert_eq!(s.undelivered_count(), 1, "carol's is not acknowledged yet");

        // A new connection hands out what was not acknowledged.
        s.start_forwarding();
        assert_eq!(
            seqs(&s.next_round(10).unwrap()),
            [("carol".into(), vec![1])]
        );
        drop(s);
        let s = open(dir.path()).await;
        s.start_forwarding();
        assert_eq!(
            seqs(&s.next_round(10).unwrap()),
            [("carol".into(), vec![1])],
            "the cumulative acks were journaled"
        );
    }

    #[tokio::test]
    async fn a_round_that_cannot_be_read_back_is_handed_out_again_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        // Nothing stays in memory: every message is read back from log.txt.
        config.limits.mailbox_memory = 0;
        let s = ChatServer::open(config).unwrap();
        for name in ["alice", "bob", "carol"] {
            register(&s, name).await.unwrap();
        }
        send(&s, "alice", "bob", "to bob").await.unwrap();
        send(&s, "alice", "carol", "to carol").await.unwrap();
        s.start_forwarding();
        let log = dir.path().join(LOG_FILE);
        let kept = std::fs::read(&log).unwrap();
        std::fs::write(&log, b"").unwrap();
        assert!(s.next_round(10).is_err(), "log.txt cannot be read back");
        std::fs::write(&log, &kept).unwrap();
        let mut to: Vec<String> = s
            .next_round(10)
            .unwrap()
            .iter()
            .map(|o| format!("{} {}", o.to, o.messages[0].text))
            .collect();
        to.sort();
        assert_eq!(to, ["bob to bob", "carol to carol"]);
    }

    #[tokio::test]
    async fn mailbox_limit_and_online_claims() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        config.limits.max_pending = 2;
        let s = ChatServer::open(config).unwrap();
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        let err = send(&s, "stranger", "bob", "hi").await.unwrap_err();
        assert!(matches!(err, ChatError::UnknownSender(_)), "{err}");
        send(&s, "alice", "bob", "1").await.unwrap();
        send(&s, "alice", "bob", "2").await.unwrap();
        let err = send(&s, "alice", "bob", "3").await.unwrap_err();
        assert_eq!(err.code(), ErrorCode::ResourceExhausted);
        s.ack(&me(&s, "bob"), "bob", 1).await.unwrap();
        send(&s, "alice", "bob", "3").await.unwrap();

        let session = s.connect(&creds("bob"), "bob", 0).await.unwrap();
        assert!(matches!(
            s.connect(&creds("bob"), "bob", 0).await,
            Err(ChatError::AlreadyOnline(_))
        ));
        assert!(matches!(
            register(&s, "bob").await,
            Err(ChatError::AlreadyOnline(_))
        ));
        drop(session);
        assert!(
            s.connect(&creds("bob"), "bob", 0).await.is_ok(),
            "free again once it left"
        );
    }

    /// AMQP's presence: the transport reports spells online; a late report
    /// of an old spell's end leaves the newer one alone; list, register and
    /// the gauge read the same state as on gRPC.
    #[tokio::test]
    async fn spells_online_reported_by_a_transport() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        register(&s, "bob").await.unwrap();
        let bob = ClientId::parse("bob").unwrap();
        let online_gauge = || {
            let scrape = crate::metrics::Scrape::parse(&s.metrics().encode()).unwrap();
            scrape.value("chat_clients_online")
        };
        let listed = || s.list().iter().any(|c| c.id == bob && c.online);
        assert!(matches!(
            s.went_online(&ClientId::parse("nobody").unwrap()),
            Err(ChatError::UnknownSender(_))
        ));

        let first = s.went_online(&bob).unwrap();
        assert!(listed());
        assert_eq!(s.online(&bob).as_ref(), Some(&first));
        assert_eq!(online_gauge(), Some(1.0));
        assert!(matches!(
            register(&s, "bob").await,
            Err(ChatError::AlreadyOnline(_))
        ));
        assert!(matches!(
            s.connect(&creds("bob"), "bob", 0).await,
            Err(ChatError::AlreadyOnline(_))
        ));

        // A rejoin on a new connection before the old consumer's end was seen.
        let second = s.went_online(&bob).unwrap();
        assert_eq!(online_gauge(), Some(1.0), "still one client online");
        assert!(!s.went_offline(&first), "the old spell's end is stale");
        assert!(listed());
        assert!(s.went_offline(&second));
        assert!(!listed());
        assert_eq!(online_gauge(), Some(0.0));
        assert!(s.online(&bob).is_none());
        assert!(!s.went_offline(&second), "ended once");
        register(&s, "bob").await.unwrap();
    }

    /// AMQP's view: what was forwarded into a queue still counts until the
    /// adapter reports the queue drained; a recount never forgets what was
    /// forwarded while it was under way.
    #[tokio::test]
    async fn the_mailbox_limit_counts_what_waits_downstream() {
        let dir = tempfile::tempdir().unwrap();
        let mut config = ServerConfig::new(dir.path());
        config.limits.max_pending = 4;
        let s = ChatServer::open(config).unwrap();
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        let bob = ClientId::parse("bob").unwrap();
        for i in 1..=4 {
            send(&s, "alice", "bob", &format!("m{i}")).await.unwrap();
        }
        assert!(
            s.downstream_recount_candidates().is_empty(),
            "nothing forwarded yet"
        );
        s.forwarded(&bob, 3).await.unwrap();
        assert_eq!(s.undelivered().len(), 1, "the server holds only m4");
        let err = send(&s, "alice", "bob", "m5").await.unwrap_err();
        assert!(
            matches!(
                err,
                ChatError::MailboxFull {
                    pending: 4,
                    max: 4,
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("--max-pending 4"), "{err}");
        assert_eq!(s.downstream_recount_candidates(), [(bob.clone(), 3)]);

        // A recount started at cursor 3 reports 1 left (bob read two); m4
        // was forwarded meanwhile and is counted on top.
        let (_, mark) = s.downstream_recount_candidates()[0].clone();
        s.forwarded(&bob, 4).await.unwrap();
        s.set_queued_downstream(&bob, mark, 1);
        send(&s, "alice", "bob", "m5").await.unwrap();
        send(&s, "alice", "bob", "m6").await.unwrap();
        assert!(
            send(&s, "alice", "bob", "m7").await.is_err(),
            "1 + m4 + m5 + m6"
        );

        s.set_queued_downstream(&bob, 4, 0);
        send(&s, "alice", "bob", "m7").await.unwrap();
        // A client's own acknowledgement (gRPC) adds nothing downstream.
        s.ack(&me(&s, "bob"), "bob", 7).await.unwrap();
        assert!(s.downstream_recount_candidates().is_empty());
        let marks = s.downstream_marks();
        assert!(marks.contains(&(bob, 7)), "{marks:?}");
    }

    #[tokio::test]
    async fn an_id_is_its_claimers_and_nobody_acts_as_another() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        let thief = Credentials::new("alice", "not-alices-secret");
        let code = |e: ChatError| e.code();

        let err = s.register(&thief, "alice").await.unwrap_err();
        assert!(matches!(err, ChatError::WrongSecret(_)), "{err}");
        assert!(
            err.to_string().contains("--secret"),
            "says what to do: {err}"
        );
        assert_eq!(
            code(s.authenticate(&thief).unwrap_err()),
            ErrorCode::Unauthenticated
        );
        let no_secret = Credentials::new("alice", "");
        assert_eq!(
            code(s.authenticate(&no_secret).unwrap_err()),
            ErrorCode::Unauthenticated
        );
        let nobody = Credentials::default();
        assert_eq!(
            code(s.authenticate(&nobody).unwrap_err()),
            ErrorCode::Unauthenticated
        );
        let err = s.connect(&thief, "alice", 0).await.err().unwrap();
        assert_eq!(code(err), ErrorCode::Unauthenticated);

        // Bob, authenticated, acting as alice.
        let bob = me(&s, "bob");
        let denied = |r: Result<(), ChatError>| {
            let e = r.unwrap_err();
            assert_eq!(e.code(), ErrorCode::PermissionDenied, "{e}");
        };
        denied(
            s.send(
                &bob,
                SendCommand::parse(send_req("alice", "bob", "forged"), &Limits::default()).unwrap(),
            )
            .await
            .map(|_| ()),
        );
        denied(s.history(&bob, "alice").await.map(|_| ()));
        denied(s.ack(&bob, "alice", 1).await);
        denied(s.connect(&creds("bob"), "alice", 0).await.map(|_| ()));
        denied(s.register(&creds("bob"), "alice").await.map(|_| ()));
        // Nothing forged reached anyone.
        assert!(s.undelivered().is_empty());
        assert!(
            s.history(&me(&s, "alice"), "alice")
                .await
                .unwrap()
                .is_empty()
        );

        // A new ID claimed through connect (gRPC subscribe) is protected too.
        let session = s.connect(&creds("carol"), "carol", 0).await.unwrap();
        drop(session);
        let err = s
            .register(&Credentials::new("carol", "guess"), "carol")
            .await
            .unwrap_err();
        assert!(matches!(err, ChatError::WrongSecret(_)), "{err}");
    }

    #[tokio::test]
    async fn claims_survive_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        {
            let s = open(dir.path()).await;
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            send(&s, "alice", "bob", "hi").await.unwrap();
        }
        let journal = std::fs::read_to_string(dir.path().join(journal::STATE_FILE)).unwrap();
        assert!(!journal.contains("secret-of-alice"), "only a hash is kept");
        let hash = SecretHash::of("secret-of-alice").to_hex();
        assert!(journal.contains(&format!(" alice {hash}\n")), "{journal}");

        let s = open(dir.path()).await;
        assert!(
            !register(&s, "alice").await.unwrap(),
            "resumed with its secret"
        );
        assert_eq!(s.history(&me(&s, "alice"), "alice").await.unwrap().len(), 1);
        let err = s
            .register(&Credentials::new("alice", "wrong"), "alice")
            .await
            .unwrap_err();
        assert!(matches!(err, ChatError::WrongSecret(_)), "{err}");
    }

    #[tokio::test]
    async fn an_old_journal_without_hashes_loads_and_the_next_registration_claims() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(
            dir.path().join(journal::STATE_FILE),
            "register 1764237000000 alice\nregister 1764237000001 bob\nack bob 1\n",
        )
        .unwrap();
        std::fs::write(
            dir.path().join(journal::LOG_FILE),
            "2026-11-27T09:49:12.926Z 01a21c68-b15d-766f-b36a-0eb7b8f799d0 alice -> bob: old\n",
        )
        .unwrap();
        {
            let s = open(dir.path()).await;
            assert_eq!(s.list().len(), 2);
            let err = s.authenticate(&creds("alice")).unwrap_err();
            assert!(matches!(err, ChatError::Unclaimed(_)), "{err}");
            assert!(err.to_string().contains("claim"), "{err}");
            assert!(!register(&s, "alice").await.unwrap(), "claimed, not new");
            assert_eq!(
                s.history(&me(&s, "alice"), "alice").await.unwrap()[0].text,
                "old"
            );
        }
        let s = open(dir.path()).await;
        let err = s
            .register(&Credentials::new("alice", "late-comer"), "alice")
            .await
            .unwrap_err();
        assert!(matches!(err, ChatError::WrongSecret(_)), "{err}");
        assert!(s.authenticate(&creds("alice")).is_ok());
        // Bob is still unclaimed, and the registration time was kept.
        let err = s.authenticate(&creds("bob")).unwrap_err();
        assert!(matches!(err, ChatError::Unclaimed(_)), "{err}");
        let journal = std::fs::read_to_string(dir.path().join(journal::STATE_FILE)).unwrap();
        assert!(
            journal.starts_with("register 1764237000000 alice "),
            "{journal}"
        );
        assert!(
            journal.contains("register 1764237000001 bob\n"),
            "{journal}"
        );
    }

    /// With `--durability fsync` a batch of acks is synced beside the
    /// messages of the same batch, and a batch with a registration in
    /// order: whatever mix the writer saw, everything answered is replayed.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn fsync_batches_of_sends_acks_and_registrations_all_replay() {
        let dir = tempfile::tempdir().unwrap();
        let config = || ServerConfig {
            durability: Durability::Fsync,
            ..ServerConfig::new(dir.path())
        };
        {
            let s = Arc::new(ChatServer::open(config()).unwrap());
            register(&s, "alice").await.unwrap();
            register(&s, "bob").await.unwrap();
            let mut tasks = tokio::task::JoinSet::new();
            for n in 1..=200u64 {
                let s = s.clone();
                tasks.spawn(async move {
                    send(&s, "alice", "bob", &format!("m{n}")).await.unwrap();
                    if n % 10 == 0 {
                        s.ack(&me(&s, "bob"), "bob", n / 2).await.unwrap();
                    }
                    if n % 50 == 0 {
                        register(&s, &format!("late-{n}")).await.unwrap();
                        send(&s, &format!("late-{n}"), "bob", "hi").await.unwrap();
                    }
                });
            }
            while let Some(done) = tasks.join_next().await {
                done.unwrap();
            }
            s.ack(&me(&s, "bob"), "bob", 150).await.unwrap();
        }
        let s = ChatServer::open(config()).unwrap();
        assert_eq!(s.list().len(), 6, "alice, bob and four late clients");
        let history = s.history(&me(&s, "alice"), "alice").await.unwrap();
        assert_eq!(history.len(), 200);
        let pending: Vec<_> = s.undelivered().iter().map(|m| m.seq).collect();
        assert_eq!(pending, (151..=204).collect::<Vec<_>>());
    }
}
