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

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use chat_proto::v1 as pb;
use tokio::sync::{Notify, oneshot};

use crate::error::ChatError;
use crate::id::{ClientId, MessageId};
use crate::identity::{Credentials, Principal, Secret, SecretHash};
use crate::journal::{self, Durability, Job, JobSender, Record};
use crate::limits::Limits;
use crate::message::{ClientInfo, Message, now_ms};

/// Most messages a session takes from the mailbox in one go.
const SESSION_BATCH: usize = 256;

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
    journal: JobSender,
    limits: Limits,
    data_dir: PathBuf,
    /// Held for the server's lifetime: one server per data directory.
    _lock: std::fs::File,
}

#[derive(Default)]
struct State {
    clients: BTreeMap<ClientId, Client>,
    /// Every accepted message by ID, so a retried send is accepted once.
    by_id: HashMap<MessageId, Arc<Message>>,
    shutting_down: bool,
    next_session: u64,
}

#[derive(Default)]
struct Client {
    /// When the ID was first registered (Unix ms), kept through compaction.
    registered_ms: i64,
    /// Hash of the secret that claimed the ID; `None` for an ID registered
    /// before IDs had secrets (the next registration claims it).
    secret: Option<SecretHash>,
    /// The session currently holding this ID online, if any.
    session: Option<u64>,
    /// Last seq assigned to a message for this client (committed or not).
    assigned_seq: u64,
    /// Everything up to here reached its next hop.
    acked: u64,
    /// Committed messages above `acked`, in seq order.
    mailbox: VecDeque<Arc<Message>>,
    /// Messages up to `acked` that the next hop still holds unread for
    /// this client: on AMQP, what its queue holds (an upper estimate, see
    /// [`ChatServer::set_queued_downstream`]); always 0 when the next hop
    /// is the client itself (gRPC). Counts towards `--max-pending`.
    queued_downstream: usize,
    /// Messages this client sent, oldest first.
    history: Vec<Arc<Message>>,
    /// Wakes this client's session when its mailbox grows.
    notify: Arc<Notify>,
}

impl Client {
    fn committed_seq(&self) -> u64 {
        self.mailbox.back().map_or(self.acked, |m| m.seq)
    }
}

impl ChatServer {
    /// Opens (or creates) the data directory and rebuilds the state from it.
    /// Fails with [`ChatError::DataDirInUse`] while another server has it
    /// (see [`crate::data_lock`]).
    pub fn open(config: ServerConfig) -> Result<Self, ChatError> {
        let lock = crate::data_lock::lock(&config.data_dir)?;
        let replay = journal::replay(&config.data_dir)?;
        let mut state = State::default();
        for (id, ts, secret) in replay.registered {
            let c = state.clients.entry(id).or_default();
            c.registered_ms = ts;
            if secret.is_some() {
                c.secret = secret;
            }
        }
        for (id, seq) in replay.acks {
            let c = state.clients.entry(id).or_default();
            c.acked = c.acked.max(seq);
        }
        let count = replay.messages.len();
        for mut m in replay.messages {
            let to = state.clients.entry(m.to.clone()).or_default();
            to.assigned_seq += 1;
            m.seq = to.assigned_seq;
            let m = Arc::new(m);
            if m.seq > to.acked {
                to.mailbox.push_back(m.clone());
            }
            state
                .clients
                .entry(m.from.clone())
                .or_default()
                .history
                .push(m.clone());
            state.by_id.insert(m.id, m);
        }
        for c in state.clients.values_mut() {
            c.acked = c.acked.min(c.assigned_seq);
        }
        let snapshot: Vec<Record> = state
            .clients
            .iter()
            .flat_map(|(id, c)| {
                let ack = (c.acked > 0).then(|| Record::Ack(id.clone(), c.acked));
                std::iter::once(Record::Register(id.clone(), c.registered_ms, c.secret)).chain(ack)
            })
            .collect();
        if replay.state_lines > snapshot.len() {
            journal::compact_state(&config.data_dir, &snapshot)?;
        }
        let pending: usize = state.clients.values().map(|c| c.mailbox.len()).sum();
        tracing::info!(
            data_dir = %config.data_dir.display(),
            clients = state.clients.len(),
            messages = count,
            undelivered = pending,
            "state rebuilt from the data directory"
        );

        let state = Arc::new(Mutex::new(state));
        let for_writer = state.clone();
        let journal = journal::start_writer(
            &config.data_dir,
            config.durability,
            Box::new(move |records| commit(&for_writer, records)),
        )?;
        Ok(Self {
            inner: Arc::new(Inner {
                state,
                journal,
                limits: config.limits,
                data_dir: config.data_dir,
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

    fn lock(&self) -> MutexGuard<'_, State> {
        self.inner.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn queue(&self, record: Record) -> oneshot::Receiver<Result<(), Arc<std::io::Error>>> {
        let (done, rx) = oneshot::channel();
        // The writer only stops when the process does; a closed channel
        // shows up as an error on `rx`.
        let _ = self.inner.journal.send(Job { record, done });
        rx
    }

    async fn durable(
        &self,
        rx: oneshot::Receiver<Result<(), Arc<std::io::Error>>>,
    ) -> Result<(), ChatError> {
        let path = &self.inner.data_dir;
        match rx.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(e)) => Err(ChatError::storage(
                path,
                std::io::Error::new(e.kind(), e.to_string()),
            )),
            Err(_) => Err(ChatError::ShuttingDown),
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
    /// Accepts a message: validates it, appends it to `log.txt` and queues it
    /// for its recipient. Returns once it is durable; delivery happens later.
    /// Sender and recipient must both be registered.
    pub async fn send(
        &self,
        principal: &Principal,
        req: pb::SendRequest,
    ) -> Result<Arc<Message>, ChatError> {
        // Validated here, but the IDs the message carries are the registry's
        // own (an Arc clone), not two new allocations per message.
        ClientId::validate(&req.from)?;
        ClientId::validate(&req.to)?;
        let id = MessageId::parse_or_generate(&req.id)?;
        self.inner.limits.check_text(&req.text)?;
        principal.acting_as(&req.from)?;
        let (message, rx) = {
            let mut st = self.lock();
            if st.shutting_down {
                return Err(ChatError::ShuttingDown);
            }
            if let Some(existing) = st.by_id.get(&id) {
                return Ok(existing.clone());
            }
            let Some((from, _)) = st.clients.get_key_value(req.from.as_str()) else {
                return Err(ChatError::UnknownSender(ClientId::parse(&req.from)?));
            };
            let from = from.clone();
            let Some((to, _)) = st.clients.get_key_value(req.to.as_str()) else {
                return Err(ChatError::UnknownRecipient(ClientId::parse(&req.to)?));
            };
            let to = to.clone();
            let Some(recipient) = st.clients.get_mut(&to) else {
                return Err(ChatError::UnknownRecipient(to));
            };
            let pending =
                (recipient.assigned_seq - recipient.acked) as usize + recipient.queued_downstream;
            let max = self.inner.limits.max_pending;
            if pending >= max {
                return Err(ChatError::MailboxFull { to, pending, max });
            }
            recipient.assigned_seq += 1;
            let message = Arc::new(Message {
                id,
                from,
                to,
                text: req.text,
                timestamp_ms: now_ms(),
                seq: recipient.assigned_seq,
            });
            st.by_id.insert(id, message.clone());
            let rx = self.queue(Record::Message(message.clone()));
            (message, rx)
        };
        self.durable(rx).await?;
        Ok(message)
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
            let (principal, _, record) = claim(&mut st, id, presented)?;
            let id = principal.id;
            st.next_session += 1;
            let session_no = st.next_session;
            let c = st.clients.get_mut(&id).expect("claimed above");
            if c.session.is_some() {
                return Err(ChatError::AlreadyOnline(id));
            }
            c.session = Some(session_no);
            let session = Session {
                server: self.clone(),
                id,
                session_no,
                cursor: after_seq.max(c.acked),
                notify: c.notify.clone(),
            };
            (session, record.map(|r| self.queue(r)))
        };
        if let Some(rx) = rx {
            self.durable(rx).await?;
        }
        tracing::info!(client = %session.id, after = session.cursor, "client online");
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

    /// Moves `to`'s cursor to `up_to_seq`; with `queued`, what it passes
    /// is now held unread by the next hop.
    async fn advance(&self, to: &ClientId, up_to_seq: u64, queued: bool) -> Result<(), ChatError> {
        let rx = {
            let mut st = self.lock();
            let Some(c) = st.clients.get_mut(to) else {
                return Err(ChatError::UnknownRecipient(to.clone()));
            };
            let up_to = up_to_seq.min(c.committed_seq());
            if up_to <= c.acked {
                return Ok(());
            }
            if queued {
                c.queued_downstream += (up_to - c.acked) as usize;
            }
            c.acked = up_to;
            while c.mailbox.front().is_some_and(|m| m.seq <= up_to) {
                c.mailbox.pop_front();
            }
            self.queue(Record::Ack(to.clone(), up_to))
        };
        self.durable(rx).await
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

    /// Every message sent by `raw_id` (which must be `principal`), oldest first.
    pub fn history(
        &self,
        principal: &Principal,
        raw_id: &str,
    ) -> Result<Vec<Arc<Message>>, ChatError> {
        principal.acting_as(raw_id)?;
        Ok(self
            .lock()
            .clients
            .get(&principal.id)
            .map(|c| c.history.clone())
            .unwrap_or_default())
    }

    /// [`Self::history`] as one protobuf reply, refused with
    /// [`ChatError::ReplyTooLarge`] when it would exceed
    /// [`Limits::max_reply_bytes`] (both transports answer it this way).
    pub fn history_reply(
        &self,
        principal: &Principal,
        raw_id: &str,
    ) -> Result<pb::HistoryReply, ChatError> {
        let reply = pb::HistoryReply {
            messages: self
                .history(principal, raw_id)?
                .iter()
                .map(|m| m.to_proto())
                .collect(),
        };
        let bytes = prost::Message::encoded_len(&reply);
        let max = self.inner.limits.max_reply_bytes;
        if bytes > max {
            return Err(ChatError::ReplyTooLarge {
                id: principal.id.clone(),
                messages: reply.messages.len(),
                bytes,
                max,
            });
        }
        Ok(reply)
    }

    /// Every registered client with its cursor, for
    /// [`Self::set_queued_downstream`]: the adapter recounts them all after
    /// (re)connecting, when it knows nothing of what waits downstream.
    pub fn downstream_marks(&self) -> Vec<(ClientId, u64)> {
        self.lock()
            .clients
            .iter()
            .map(|(id, c)| (id.clone(), c.acked))
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
            .filter(|(_, c)| {
                c.queued_downstream > 0
                    && (c.assigned_seq - c.acked) as usize + c.queued_downstream >= half
            })
            .map(|(id, c)| (id.clone(), c.acked))
            .collect()
    }

    /// The next hop reports `depth` messages held unread for `to`, counted
    /// after the cursor was at `mark` (from [`Self::downstream_marks`] or
    /// [`Self::downstream_recount_candidates`], read *before* asking). What
    /// was forwarded since `mark` is added, in case the count missed it, so
    /// the estimate errs on the side of too many, never too few.
    pub fn set_queued_downstream(&self, to: &ClientId, mark: u64, depth: usize) {
        if let Some(c) = self.lock().clients.get_mut(to) {
            c.queued_downstream = depth + c.acked.saturating_sub(mark) as usize;
        }
    }

    /// Every committed, unacknowledged message, per recipient in seq order.
    pub fn undelivered(&self) -> Vec<Arc<Message>> {
        self.lock()
            .clients
            .values()
            .flat_map(|c| c.mailbox.iter().cloned())
            .collect()
    }

    /// Refuses new work and ends every session's stream.
    pub fn shutdown(&self) {
        let mut st = self.lock();
        st.shutting_down = true;
        for c in st.clients.values() {
            c.notify.notify_one();
        }
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

/// Makes a durable batch visible: messages enter the sender's history and
/// the recipient's mailbox, and the recipient's session is woken.
fn commit(state: &Mutex<State>, records: &[Record]) {
    let mut st = state.lock().unwrap_or_else(|p| p.into_inner());
    for record in records {
        if let Record::Message(m) = record {
            if let Some(from) = st.clients.get_mut(&m.from) {
                from.history.push(m.clone());
            }
            if let Some(to) = st.clients.get_mut(&m.to) {
                if m.seq > to.acked {
                    to.mailbox.push_back(m.clone());
                }
                to.notify.notify_one();
            }
        }
    }
}

/// A client's claim on its ID being online, and the cursor of what has been
/// handed to it. Dropping it takes the client offline.
pub struct Session {
    server: ChatServer,
    id: ClientId,
    session_no: u64,
    cursor: u64,
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
            {
                let st = self.server.lock();
                if st.shutting_down {
                    return None;
                }
                let c = st.clients.get(&self.id)?;
                let start = c.mailbox.front().map_or(0, |first| {
                    (self.cursor + 1).saturating_sub(first.seq) as usize
                });
                if start < c.mailbox.len() {
                    let batch: Vec<_> = c
                        .mailbox
                        .range(start..)
                        .take(SESSION_BATCH)
                        .cloned()
                        .collect();
                    self.cursor = batch.last().map_or(self.cursor, |m| m.seq);
                    return Some(batch);
                }
            }
            self.notify.notified().await;
        }
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        let mut st = self.server.lock();
        if let Some(c) = st.clients.get_mut(&self.id)
            && c.session == Some(self.session_no)
        {
            c.session = None;
            tracing::info!(client = %self.id, "client offline");
        }
    }
}

/// The server flags both transports share (`--data-dir`, limits, durability).
#[derive(Clone, Debug, clap::Args)]
pub struct ServerArgs {
    /// Directory for log.txt and the state journal (created if missing).
    #[arg(long, env = "CHAT_DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest accepted message text, in bytes.
    #[arg(long, env = "CHAT_MAX_TEXT_BYTES", default_value_t = crate::limits::DEFAULT_MAX_TEXT_BYTES)]
    pub max_text_bytes: usize,
    /// Most undelivered messages kept for one recipient.
    #[arg(long, env = "CHAT_MAX_PENDING", default_value_t = crate::limits::DEFAULT_MAX_PENDING)]
    pub max_pending: usize,
    /// Largest reply (a client's history), in encoded bytes; a larger one
    /// is refused with RESOURCE_EXHAUSTED. Keep it under the clients'
    /// decoding limit (4 MiB for gRPC) and the broker's max_message_size.
    #[arg(long, env = "CHAT_MAX_REPLY_BYTES", default_value_t = crate::limits::DEFAULT_MAX_REPLY_BYTES)]
    pub max_reply_bytes: usize,
    /// `os`: answer once written to the OS (survives a server crash);
    /// `fsync`: also flush to disk (survives a machine crash).
    #[arg(long, env = "CHAT_DURABILITY", value_enum, default_value_t = Durability::Os)]
    pub durability: Durability,
}

impl ServerArgs {
    pub fn config(&self) -> ServerConfig {
        ServerConfig {
            data_dir: self.data_dir.clone(),
            limits: Limits {
                max_text_bytes: self.max_text_bytes,
                max_pending: self.max_pending,
                max_reply_bytes: self.max_reply_bytes,
            },
            durability: self.durability,
        }
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

    async fn send(
        s: &ChatServer,
        from: &str,
        to: &str,
        text: &str,
    ) -> Result<Arc<Message>, ChatError> {
        let p = s.authenticate(&creds(from))?;
        s.send(&p, send_req(from, to, text)).await
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

    #[tokio::test]
    async fn messages_share_the_registry_ids() {
        let dir = tempfile::tempdir().unwrap();
        let s = open(dir.path()).await;
        register(&s, "alice").await.unwrap();
        register(&s, "bob").await.unwrap();
        let m = send(&s, "alice", "bob", "hi").await.unwrap();
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
        assert_eq!(s.history(&me(&s, "alice"), "alice").unwrap().len(), 1);
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
            s.send(&bob, send_req("alice", "bob", "forged"))
                .await
                .map(|_| ()),
        );
        denied(s.history(&bob, "alice").map(|_| ()));
        denied(s.ack(&bob, "alice", 1).await);
        denied(s.connect(&creds("bob"), "alice", 0).await.map(|_| ()));
        denied(s.register(&creds("bob"), "alice").await.map(|_| ()));
        // Nothing forged reached anyone.
        assert!(s.undelivered().is_empty());
        assert!(s.history(&me(&s, "alice"), "alice").unwrap().is_empty());

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
        assert_eq!(s.history(&me(&s, "alice"), "alice").unwrap().len(), 1);
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
            assert_eq!(s.history(&me(&s, "alice"), "alice").unwrap()[0].text, "old");
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
}
